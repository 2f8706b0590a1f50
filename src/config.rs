//! Typed settings, validated once at start-up. Precedence: defaults < TOML file
//! (`--config`) < environment (`KEYGATE_…`) < flags. Unknown file keys are an error, and a
//! bad value stops start-up with one line naming the setting.
//!
//! Each setting is declared once, as a field of `SettingsArgs`: its flag, its variable, its
//! file key and its help. clap fills one copy from the flags and the environment, serde
//! another from the file; `Settings::load` takes each setting from the upper layer that
//! gives it, judges it, and keeps it with its type in `Settings`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use clap::Args;
use secrecy::SecretString;
use serde::Deserialize;

use crate::{
    crypto::signing::SigningAlg,
    domain::{AdminPassword, Email},
    store::Backend,
};

mod connections;
mod defences;
mod operations;
pub use connections::ConnectionSettings;
pub use defences::DefenceSettings;
pub use operations::OperationSettings;

/// Every setting that may be given as a flag, a variable or a file key. Secrets are
/// deliberately none of these but variables alone (see `Settings::load`): command lines are
/// visible to every user of the machine (`ps`), and files get copied around.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsArgs {
    /// TOML settings file.
    #[arg(long, env = "KEYGATE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for the embedded store and generated secrets [default: ./data].
    #[arg(long, env = "KEYGATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [default: a SQLite file in the data dir].
    #[arg(long, env = "KEYGATE_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The tokens' `iss` claim; required with PostgreSQL, the same on every replica
    /// [default: http://<listen>, https:// with TLS].
    #[arg(long, env = "KEYGATE_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// The tokens' `aud` claim [default: keygate].
    #[arg(long, env = "KEYGATE_AUDIENCE")]
    pub audience: Option<String>,
    /// Access-token lifetime in seconds, 60 to 86400 [default: 900].
    #[arg(long, env = "KEYGATE_TOKEN_TTL", value_name = "SECONDS")]
    pub token_ttl: Option<Given<u64>>,
    /// Mark the admin session cookie `Secure` [default: true].
    #[arg(long, env = "KEYGATE_COOKIE_SECURE", value_name = "BOOL")]
    pub cookie_secure: Option<Given<bool>>,
    /// Admin sessions end after this many idle seconds [default: 1800].
    #[arg(long, env = "KEYGATE_SESSION_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub session_idle_timeout: Option<Given<u64>>,
    /// Admin sessions end this many seconds after login, however active [default: 43200].
    #[arg(long, env = "KEYGATE_SESSION_LIFETIME", value_name = "SECONDS")]
    pub session_lifetime: Option<Given<u64>>,
    /// JWT signature algorithm of the first signing key, made on an empty store: ES256 or
    /// EdDSA. Later changes are `keygate signing-key rotate --alg` [default: ES256].
    #[arg(long, env = "KEYGATE_SIGNING_ALG", value_name = "ALG")]
    pub signing_alg: Option<String>,
    /// How often a running server re-reads the signing keys from the store, to pick up a
    /// rotation made by the CLI or another replica; 1 to 60 [default: 10].
    #[arg(long, env = "KEYGATE_KEY_RELOAD_INTERVAL", value_name = "SECONDS")]
    pub key_reload_interval: Option<Given<u64>>,
    /// Audit entries are deleted this many days after they were recorded, 0 to 36500; 0
    /// keeps them all [default: 365].
    #[arg(long, env = "KEYGATE_AUDIT_RETENTION_DAYS", value_name = "DAYS")]
    pub audit_retention_days: Option<Given<u64>>,
    /// How often the store is swept of ended sessions, idle failed-login counters and audit
    /// entries past their retention; 1 to 86400 [default: 600].
    #[arg(long, env = "KEYGATE_SWEEP_INTERVAL", value_name = "SECONDS")]
    pub sweep_interval: Option<Given<u64>>,
    /// Keep each async worker on a CPU of its own when the process has whole CPUs to
    /// itself [default: true].
    #[arg(long, env = "KEYGATE_PIN_WORKERS", value_name = "BOOL")]
    pub pin_workers: Option<Given<bool>>,
    /// Redis for the limits' shared state, instead of the database: redis://[:password@]host[:port][/db]
    /// or rediss://… for TLS [default: none].
    #[arg(long, env = "KEYGATE_REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Strict limits and credits while shared state is unreachable: open or closed [default: open].
    #[arg(long, env = "KEYGATE_LIMITS_ON_FAILURE", value_name = "MODE")]
    pub limits_on_failure: Option<String>,
    /// Log filter, in tracing's EnvFilter syntax [default: info].
    #[arg(long, env = "KEYGATE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    // The abuse defences (`defences`).
    /// Proxies whose X-Forwarded-For names the client: addresses or CIDR blocks,
    /// comma-separated, e.g. 10.0.0.0/8,::1 [default: none, the header is ignored].
    #[arg(long, env = "KEYGATE_TRUSTED_PROXIES", value_name = "CIDRS")]
    pub trusted_proxies: Option<Given<Vec<String>>>,
    /// The origin browsers use to reach keygate, e.g. https://auth.example.com; cookie
    /// requests from any other origin are refused [default: the request's own Host].
    #[arg(long, env = "KEYGATE_PUBLIC_ORIGIN", value_name = "ORIGIN")]
    pub public_origin: Option<String>,
    /// Failed logins per admin email or API key before a lockout, 1 to 1000 [default: 5].
    #[arg(long, env = "KEYGATE_LOCKOUT_THRESHOLD", value_name = "N")]
    pub lockout_threshold: Option<Given<u64>>,
    /// Failed logins per client address before a lockout, 1 to 100000 [default: 50].
    #[arg(long, env = "KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", value_name = "N")]
    pub lockout_address_threshold: Option<Given<u64>>,
    /// Seconds the first lockout lasts, 1 to 3600; each further one doubles, up to 16
    /// times this [default: 60].
    #[arg(long, env = "KEYGATE_LOCKOUT_DURATION", value_name = "SECONDS")]
    pub lockout_duration: Option<Given<u64>>,
    /// Live (unexpired) revoked tokens one API key may hold, 1 to 100000; past it the key's
    /// revocations are refused with 429 [default: 1000].
    #[arg(long, env = "KEYGATE_REVOCATIONS_PER_KEY", value_name = "N")]
    pub revocations_per_key: Option<Given<u64>>,
    /// Live revoked tokens all keys of one account may hold, 1 to 100000 [default: 10000].
    #[arg(long, env = "KEYGATE_REVOCATIONS_PER_ACCOUNT", value_name = "N")]
    pub revocations_per_account: Option<Given<u64>>,

    // Client connections (`connections`).
    /// Seconds a client has to send a request's headers (from connecting for the first
    /// request, from its first byte for later ones), and then its body; 1 to 300 [default: 10].
    #[arg(long, env = "KEYGATE_HEADER_READ_TIMEOUT", value_name = "SECONDS")]
    pub header_read_timeout: Option<Given<u64>>,
    /// Seconds a keep-alive connection may sit idle between requests, and a request may go
    /// without a byte moving either way; 1 to 3600 [default: 60].
    #[arg(long, env = "KEYGATE_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub idle_timeout: Option<Given<u64>>,
    /// Client connections open at once; further ones wait until one closes [default: the
    /// open-file limit, raised to its maximum, less 256 kept for the store and logs].
    #[arg(long, env = "KEYGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<Given<u64>>,

    // Operations (`operations`).
    /// Serve `/metrics` (Prometheus) on this address only, and not on the main listener
    /// [default: on the main listener].
    #[arg(long, env = "KEYGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Log one line per request at info: method, route, status, latency, client address and
    /// request id [default: true].
    #[arg(long, env = "KEYGATE_ACCESS_LOG", value_name = "BOOL")]
    pub access_log: Option<Given<bool>>,
    /// Seconds that requests in flight at SIGTERM or SIGINT may take to finish before they are
    /// cut, 1 to 3600 [default: 30].
    #[arg(long, env = "KEYGATE_SHUTDOWN_TIMEOUT", value_name = "SECONDS")]
    pub shutdown_timeout: Option<Given<u64>>,
    /// Seconds `serve` keeps retrying a database it cannot reach at start-up before it gives
    /// up, 0 to 3600; 0 tries once [default: 60].
    #[arg(long, env = "KEYGATE_DB_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub db_connect_timeout: Option<Given<u64>>,

    // Native TLS (`tls`).
    /// PEM file of the certificate chain to serve HTTPS with (TLS 1.2 and 1.3), leaf first;
    /// with --tls-key. Re-read on SIGHUP and when it changes [default: plain HTTP].
    #[arg(long, env = "KEYGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1); with --tls-cert.
    #[arg(long, env = "KEYGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Where each of the values above came from: a flag or a variable (see `Origins`).
    #[arg(skip)]
    #[serde(skip)]
    pub origins: Origins,
}

/// A setting's value as one layer gives it. A flag or a variable gives text, judged with
/// the rest in `Settings::load` so that a bad value is reported naming its setting; the
/// file gives a value of the setting's own TOML type, or is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given<T> {
    Text(String),
    Value(T),
}

// How clap makes one from a flag or a variable: as it is, judged later.
impl<T> From<String> for Given<T> {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl<T> From<&str> for Given<T> {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Given<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::Value)
    }
}

/// Where the values of a `SettingsArgs` filled by clap came from, by field (`token_ttl`):
/// a flag or a variable. Empty for one built in code, whose values then count as variables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Origins(std::collections::BTreeMap<String, Origin>);

impl Origins {
    /// The origins of the values in `matches`, or in the deepest subcommand's matches it
    /// holds: the command that runs, where every argument it takes (its parents' global
    /// ones too) is known.
    pub fn of(matches: &clap::ArgMatches) -> Self {
        let mut leaf = matches;
        while let Some((_, sub)) = leaf.subcommand() {
            leaf = sub;
        }
        let mut origins = Self::default();
        for id in leaf.ids() {
            let origin = match leaf.value_source(id.as_str()) {
                Some(clap::parser::ValueSource::CommandLine) => Origin::Flag,
                Some(clap::parser::ValueSource::EnvVariable) => Origin::Variable,
                _ => continue,
            };
            origins.0.insert(id.as_str().to_owned(), origin);
        }
        origins
    }

    pub fn extend(&mut self, other: Origins) {
        self.0.extend(other.0);
    }
}

impl SettingsArgs {
    /// Every setting from the environment alone (`KEYGATE_…`), as `serve` would read it
    /// without flags: for the commands whose own options are a few of the settings.
    pub fn from_env() -> Result<Self, ConfigError> {
        use clap::FromArgMatches;
        let command = <Self as Args>::augment_args(clap::Command::new("keygate").no_binary_name(true));
        let matches = command
            .try_get_matches_from(std::iter::empty::<String>())
            .map_err(|e| bad("KEYGATE_…", clap_reason(&e)))?;
        let mut args = Self::from_arg_matches(&matches).map_err(|e| bad("KEYGATE_…", clap_reason(&e)))?;
        args.origins = Origins::of(&matches);
        Ok(args)
    }
}

/// clap's message on one line, without its own `error: `.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where a setting's value came from, to name it in an error the way it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Variable,
    /// A key of the settings file, at this line and column (from 1).
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
}

/// What is given over the defaults: flags and environment (merged by clap, flags winning)
/// over the file.
struct Layers<'a> {
    flags: &'a SettingsArgs,
    file: SettingsArgs,
    /// Where each key of the file is, by key.
    file_keys: std::collections::BTreeMap<String, Origin>,
}

impl Layers<'_> {
    /// The setting `field` from the uppermost layer that gives it.
    fn get<T: Clone>(&self, field: impl Fn(&SettingsArgs) -> &Option<T>) -> Option<T> {
        field(self.flags).clone().or_else(|| field(&self.file).clone())
    }

    /// Where each given setting came from: the flags layer's over the file's.
    fn origins(&self) -> std::collections::BTreeMap<String, Origin> {
        let mut origins = self.file_keys.clone();
        origins.extend(self.flags.origins.0.clone());
        origins
    }

    /// Names the source of the value `error` refuses, as the layers gave it.
    fn attribute(&self, mut error: ConfigError) -> ConfigError {
        if error.origin.is_none() {
            let field = field_of(error.name);
            error.origin = self.flags.origins.0.get(&field).or_else(|| self.file_keys.get(&field)).cloned();
        }
        error
    }
}

/// The field, flag and file key of the setting whose variable is `name`: `KEYGATE_TOKEN_TTL`
/// is `token_ttl`, `--token-ttl`, `token_ttl = …`.
fn field_of(name: &str) -> String {
    name.strip_prefix("KEYGATE_").unwrap_or(name).to_ascii_lowercase()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The settings, judged and typed.
#[derive(Debug)]
pub struct Settings {
    /// The settings file read, if any.
    pub config_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// `None`: `http://<bound address>` (`https://` with TLS), known only once the
    /// listener is bound.
    pub issuer: Option<String>,
    pub audience: String,
    pub token_ttl: u64,
    pub cookie_secure: bool,
    pub session_idle_timeout: u64,
    pub session_lifetime: u64,
    pub signing_alg: SigningAlg,
    pub key_reload_interval: u64,
    /// 0 keeps the audit log whole.
    pub audit_retention_days: u64,
    pub sweep_interval: u64,
    pub pin_workers: bool,
    /// `KEYGATE_MASTER_KEY`, if given; otherwise the embedded default keeps one in the data dir.
    pub master_key: Option<SecretString>,
    /// `KEYGATE_BOOTSTRAP_ADMIN_EMAIL` / `_PASSWORD`, used only on a store with no admin.
    pub bootstrap_admin: Option<(Email, AdminPassword)>,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub limits_on_failure: crate::service::limits::OnFailure,
    /// `KEYGATE_REDIS_URL`: the limits' shared state in Redis.
    pub redis_url: Option<String>,
    pub defences: DefenceSettings,
    pub connections: ConnectionSettings,
    pub operations: OperationSettings,
    /// The certificate and key files to serve HTTPS with; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Where each given setting came from, by field, for errors found after loading.
    origins: std::collections::BTreeMap<String, Origin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A setting refused: one line naming it as it was given (its flag, its variable, or its
/// place in the file) and what is wrong with it.
#[derive(Debug)]
pub struct ConfigError {
    /// The setting's variable, `KEYGATE_…`, however it was given.
    pub name: &'static str,
    /// Where the refused value came from; `None` for a setting judged as missing or as a
    /// whole, named by its variable.
    pub origin: Option<Origin>,
    pub reason: String,
}

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = field_of(self.name);
        match &self.origin {
            None | Some(Origin::Variable) => write!(f, "invalid setting {}", self.name)?,
            Some(Origin::Flag) => write!(f, "invalid setting --{}", field.replace('_', "-"))?,
            Some(Origin::File { path, line, column }) if self.name == "KEYGATE_CONFIG" => {
                write!(f, "invalid settings file {}:{line}:{column}", path.display())?
            }
            Some(Origin::File { path, line, column }) => {
                write!(f, "invalid setting {field} at {}:{line}:{column}", path.display())?
            }
        }
        write!(f, ": {}", self.reason)
    }
}

impl ConfigError {
    /// `name`'s value refused for `reason`; its origin is found by `Settings::load`.
    pub fn new(name: &'static str, reason: impl Into<String>) -> Self {
        Self { name, origin: None, reason: reason.into() }
    }
}

fn bad(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(name, reason)
}

impl Settings {
    /// Builds settings from `args` (flags and environment already merged by clap), the
    /// optional file they name, and the secrets read from `env`.
    pub fn load(args: &SettingsArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let (file, file_keys) = match &args.config {
            Some(path) => read_file(path).map_err(|e| match e.origin {
                Some(_) => e,
                // The file itself cannot be read: named as its path was given.
                None => ConfigError { origin: args.origins.0.get("config").cloned(), ..e },
            })?,
            None => Default::default(),
        };
        let layers = Layers { flags: args, file, file_keys };
        Self::judge(&layers, env).map_err(|e| layers.attribute(e))
    }

    fn judge(layers: &Layers, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let listen_raw = layers.get(|s| &s.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = SocketAddr::from_str(&listen_raw)
            .map_err(|_| bad("KEYGATE_LISTEN", "expected IP:PORT, e.g. 127.0.0.1:8080"))?;

        let data_dir = layers.get(|s| &s.data_dir).unwrap_or_else(|| PathBuf::from("./data"));
        let database_url = layers
            .get(|s| &s.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("keygate.db").display()));
        if Backend::of(&database_url).is_none() {
            return Err(bad("KEYGATE_DATABASE_URL", "expected sqlite://… or postgres://…"));
        }

        let issuer = layers.get(|s| &s.issuer);
        if issuer.as_ref().is_some_and(|i| i.is_empty() || i.len() > 512) {
            return Err(bad("KEYGATE_ISSUER", "must be 1 to 512 characters"));
        }
        let audience = layers.get(|s| &s.audience).unwrap_or_else(|| "keygate".into());
        if audience.is_empty() || audience.len() > 512 {
            return Err(bad("KEYGATE_AUDIENCE", "must be 1 to 512 characters"));
        }

        let token_ttl = seconds("KEYGATE_TOKEN_TTL", layers.get(|s| &s.token_ttl), 900, 60..=86_400)?;
        let session_idle_timeout =
            seconds("KEYGATE_SESSION_IDLE_TIMEOUT", layers.get(|s| &s.session_idle_timeout), 1_800, 1..=604_800)?;
        let session_lifetime =
            seconds("KEYGATE_SESSION_LIFETIME", layers.get(|s| &s.session_lifetime), 43_200, 1..=2_592_000)?;

        let cookie_secure = flag("KEYGATE_COOKIE_SECURE", layers.get(|s| &s.cookie_secure), true)?;

        let signing_alg = layers
            .get(|s| &s.signing_alg)
            .map(|raw| SigningAlg::from_str(&raw))
            .transpose()
            .map_err(|_| bad("KEYGATE_SIGNING_ALG", "expected ES256 or EdDSA"))?
            .unwrap_or(SigningAlg::Es256);

        // Bounded above because retired keys verify only that much past their tokens' TTL.
        let key_reload_interval = seconds(
            "KEYGATE_KEY_RELOAD_INTERVAL",
            layers.get(|s| &s.key_reload_interval),
            10,
            1..=crate::service::MAX_KEY_RELOAD_INTERVAL,
        )?;

        let audit_retention_days = whole_number(
            "KEYGATE_AUDIT_RETENTION_DAYS",
            "days",
            layers.get(|s| &s.audit_retention_days),
            365,
            0..=36_500,
        )?;
        let sweep_interval = seconds("KEYGATE_SWEEP_INTERVAL", layers.get(|s| &s.sweep_interval), 600, 1..=86_400)?;

        let pin_workers = flag("KEYGATE_PIN_WORKERS", layers.get(|s| &s.pin_workers), true)?;

        let log_filter = layers.get(|s| &s.log).unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_filter)
            .map_err(|_| bad("KEYGATE_LOG", "not a valid filter (e.g. info, keygate=debug)"))?;
        let log_format = match layers.get(|s| &s.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(bad("KEYGATE_LOG_FORMAT", "expected text or json")),
        };

        let limits_on_failure = match layers.get(|s| &s.limits_on_failure).as_deref().map(str::trim) {
            None | Some("open") => crate::service::limits::OnFailure::Open,
            Some("closed") => crate::service::limits::OnFailure::Closed,
            Some(_) => return Err(bad("KEYGATE_LIMITS_ON_FAILURE", "expected open or closed")),
        };

        let redis_url = layers.get(|s| &s.redis_url).map(|url| url.trim().to_owned()).filter(|url| !url.is_empty());
        if let Some(url) = &redis_url {
            redis::Client::open(url.as_str())
                .map_err(|_| bad("KEYGATE_REDIS_URL", "expected redis://[:password@]host[:port][/db] or rediss://…"))?;
        }

        let tls = match (layers.get(|s| &s.tls_cert), layers.get(|s| &s.tls_key)) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (Some(_), None) => return Err(bad("KEYGATE_TLS_KEY", "required with KEYGATE_TLS_CERT")),
            (None, Some(_)) => return Err(bad("KEYGATE_TLS_CERT", "required with KEYGATE_TLS_KEY")),
        };
        let mut defences = defences::load(layers)?;
        // Served over TLS, keygate knows its origin's scheme: only https:// is its own.
        defences.http.https = tls.is_some();
        let connections = connections::load(layers)?;
        let operations = operations::load(layers)?;

        let master_key = env("KEYGATE_MASTER_KEY").filter(|s| !s.is_empty()).map(SecretString::from);
        let bootstrap_admin = match (env("KEYGATE_BOOTSTRAP_ADMIN_EMAIL"), env("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD")) {
            (None, None) => None,
            (Some(email), Some(password)) => {
                let email = Email::parse(&email).map_err(|e| bad("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", e.0))?;
                let password =
                    AdminPassword::parse(&password).map_err(|e| bad("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", e.0))?;
                Some((email, password))
            }
            (Some(_), None) => {
                return Err(bad("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", "required with KEYGATE_BOOTSTRAP_ADMIN_EMAIL"));
            }
            (None, Some(_)) => {
                return Err(bad("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "required with KEYGATE_BOOTSTRAP_ADMIN_PASSWORD"));
            }
        };

        Ok(Self {
            config_file: layers.flags.config.clone(),
            listen,
            data_dir,
            database_url,
            issuer,
            audience,
            token_ttl,
            cookie_secure,
            session_idle_timeout,
            session_lifetime,
            signing_alg,
            key_reload_interval,
            audit_retention_days,
            sweep_interval,
            pin_workers,
            master_key,
            bootstrap_admin,
            log_filter,
            log_format,
            limits_on_failure,
            redis_url,
            defences,
            connections,
            operations,
            tls,
            origins: layers.origins(),
        })
    }

    /// Names the source of a setting that start-up refused after loading (the master key
    /// file, the connection limit, the TLS files), as `load` names the ones it refuses.
    pub fn attribute(&self, error: anyhow::Error) -> anyhow::Error {
        match error.downcast::<ConfigError>() {
            Ok(mut e) => {
                if e.origin.is_none() {
                    e.origin = self.origins.get(&field_of(e.name)).cloned();
                }
                anyhow::Error::new(e)
            }
            Err(other) => other,
        }
    }

    /// Where the setting whose variable is `name` came from; `None`: its default.
    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.origins.get(&field_of(name))
    }

    /// How long audit entries are kept; `None` keeps them all.
    pub fn audit_retention(&self) -> Option<std::time::Duration> {
        (self.audit_retention_days > 0).then(|| std::time::Duration::from_secs(self.audit_retention_days * 86_400))
    }

    /// Whether the store is the embedded one, which keeps its files in the data directory.
    pub fn is_embedded(&self) -> bool {
        Backend::of(&self.database_url) == Some(Backend::Sqlite)
    }
}

/// The file's settings, and where each of its keys is (for errors naming `file:line:column`).
fn read_file(path: &Path) -> Result<(SettingsArgs, std::collections::BTreeMap<String, Origin>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("KEYGATE_CONFIG", format!("cannot read {}: {e}", path.display())))?;
    let at = |offset: usize| {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Origin::File { path: path.to_owned(), line, column }
    };
    let settings: SettingsArgs = toml::from_str(&text).map_err(|e| ConfigError {
        name: "KEYGATE_CONFIG",
        origin: Some(at(e.span().map_or(0, |span| span.start))),
        reason: e.message().trim().to_owned(),
    })?;
    // Parsed again for the keys' places: a file that parsed above parses here too.
    let keys: std::collections::BTreeMap<toml::Spanned<String>, toml::Value> =
        toml::from_str(&text).unwrap_or_default();
    let keys = keys.into_keys().map(|key| (key.get_ref().clone(), at(key.span().start))).collect();
    Ok((settings, keys))
}

fn seconds(
    name: &'static str,
    given: Option<Given<u64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    whole_number(name, "seconds", given, default, range)
}

fn whole_number(
    name: &'static str,
    unit: &str,
    given: Option<Given<u64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let value = match given {
        Some(Given::Text(raw)) => raw.trim().parse::<u64>().ok(),
        Some(Given::Value(value)) => Some(value),
        None => Some(default),
    };
    value.filter(|v| range.contains(v)).ok_or_else(|| {
        bad(name, format!("expected a whole number of {unit} from {} to {}", range.start(), range.end()))
    })
}

fn flag(name: &'static str, given: Option<Given<bool>>, default: bool) -> Result<bool, ConfigError> {
    let raw = match given {
        Some(Given::Text(raw)) => raw,
        Some(Given::Value(value)) => return Ok(value),
        None => return Ok(default),
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(name, "expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: SettingsArgs) -> Result<Settings, ConfigError> {
        Settings::load(&args, |_| None)
    }

    #[test]
    fn defaults() {
        let s = load(SettingsArgs::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.token_ttl, 900);
        assert!(s.cookie_secure);
        assert_eq!(s.database_url, "sqlite://./data/keygate.db");
        assert_eq!(s.issuer, None);
        assert_eq!(s.signing_alg, SigningAlg::Es256);
        assert_eq!(s.key_reload_interval, 10);
        assert!(s.pin_workers);
        assert_eq!(s.audit_retention(), Some(std::time::Duration::from_secs(365 * 86_400)));
        assert_eq!(s.sweep_interval, 600);
    }

    #[test]
    fn audit_retention_zero_keeps_everything() {
        let s = load(SettingsArgs { audit_retention_days: Some("0".into()), ..Default::default() }).unwrap();
        assert_eq!(s.audit_retention(), None);
        let s = load(SettingsArgs { audit_retention_days: Some("30".into()), ..Default::default() }).unwrap();
        assert_eq!(s.audit_retention(), Some(std::time::Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (SettingsArgs { listen: Some("nope".into()), ..Default::default() }, "KEYGATE_LISTEN"),
            (SettingsArgs { token_ttl: Some("5".into()), ..Default::default() }, "KEYGATE_TOKEN_TTL"),
            (SettingsArgs { token_ttl: Some("abc".into()), ..Default::default() }, "KEYGATE_TOKEN_TTL"),
            (SettingsArgs { cookie_secure: Some("maybe".into()), ..Default::default() }, "KEYGATE_COOKIE_SECURE"),
            (SettingsArgs { signing_alg: Some("HS256".into()), ..Default::default() }, "KEYGATE_SIGNING_ALG"),
            (SettingsArgs { pin_workers: Some("always".into()), ..Default::default() }, "KEYGATE_PIN_WORKERS"),
            (
                SettingsArgs { key_reload_interval: Some("61".into()), ..Default::default() },
                "KEYGATE_KEY_RELOAD_INTERVAL",
            ),
            (SettingsArgs { database_url: Some("mysql://x".into()), ..Default::default() }, "KEYGATE_DATABASE_URL"),
            (
                SettingsArgs { audit_retention_days: Some("-1".into()), ..Default::default() },
                "KEYGATE_AUDIT_RETENTION_DAYS",
            ),
            (SettingsArgs { sweep_interval: Some("0".into()), ..Default::default() }, "KEYGATE_SWEEP_INTERVAL"),
        ];
        for (args, name) in cases {
            let err = load(args).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().starts_with(&format!("invalid setting {name}")));
        }
    }

    #[test]
    fn database_url_picks_a_backend() {
        for url in ["sqlite:///tmp/k.db", "postgres://u@db:5432/keygate", "postgresql://db/keygate"] {
            let s = load(SettingsArgs { database_url: Some(url.into()), ..Default::default() }).unwrap();
            assert_eq!(s.is_embedded(), url.starts_with("sqlite:"), "{url}");
        }
        let err = load(SettingsArgs { database_url: Some("postgres:/x".into()), ..Default::default() }).unwrap_err();
        assert_eq!(err.name, "KEYGATE_DATABASE_URL");
    }

    #[test]
    fn file_is_below_flags_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, "token_ttl = 120\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let s = load(SettingsArgs { config: Some(path.clone()), token_ttl: Some("300".into()), ..Default::default() })
            .unwrap();
        assert_eq!(s.token_ttl, 300);
        assert_eq!(s.listen.port(), 9000);

        std::fs::write(&path, "tokn_ttl = 120\n").unwrap();
        let err = load(SettingsArgs { config: Some(path), ..Default::default() }).unwrap_err();
        assert_eq!(err.name, "KEYGATE_CONFIG");
        assert!(err.reason.contains("tokn_ttl"), "{}", err.reason);
    }

    /// Flags parsed as the command line parses them, with their origins.
    fn flags(argv: &[&str]) -> SettingsArgs {
        use clap::FromArgMatches;
        let command = <SettingsArgs as Args>::augment_args(clap::Command::new("keygate"));
        let command = command.mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.try_get_matches_from(std::iter::once("keygate").chain(argv.iter().copied())).unwrap();
        let mut args = SettingsArgs::from_arg_matches(&matches).unwrap();
        args.origins = Origins::of(&matches);
        args
    }

    #[test]
    fn a_bad_value_is_named_by_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        let file = path.display();
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n\n  token_ttl = 5\n").unwrap();
        let err = load(SettingsArgs { config: Some(path.clone()), ..Default::default() }).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid setting token_ttl at {file}:3:3: expected a whole number of seconds from 60 to 86400")
        );
        // The same setting given above the file is named as it was given.
        let mut args = flags(&["--token-ttl", "abc"]);
        args.config = Some(path.clone());
        let err = load(args).unwrap_err();
        assert!(err.to_string().starts_with("invalid setting --token-ttl: expected"), "{err}");
        let mut args = SettingsArgs { token_ttl: Some("abc".into()), config: Some(path.clone()), ..Default::default() };
        args.origins.0.insert("token_ttl".into(), Origin::Variable);
        assert!(load(args).unwrap_err().to_string().starts_with("invalid setting KEYGATE_TOKEN_TTL: expected"));
        // A file that does not parse: where, and why.
        std::fs::write(&path, "audience = \"k\"\ntoken_ttl = \"soon\"\n").unwrap();
        let err = load(SettingsArgs { config: Some(path.clone()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().starts_with(&format!("invalid settings file {file}:2:13: invalid type")), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        std::fs::write(&path, "audience = [\n").unwrap();
        let err = load(SettingsArgs { config: Some(path.clone()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().starts_with(&format!("invalid settings file {file}:")), "{err}");
        let err = load(flags(&["--config", "/nonexistent/keygate.toml"])).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid setting --config: cannot read /nonexistent/keygate.toml"),
            "{err}"
        );
    }

    #[test]
    fn tls_needs_both_files() {
        let err = load(SettingsArgs { tls_cert: Some("c.pem".into()), ..Default::default() }).unwrap_err();
        assert_eq!(err.name, "KEYGATE_TLS_KEY");
        let err = load(flags(&["--tls-key", "k.pem"])).unwrap_err();
        assert_eq!(err.to_string(), "invalid setting KEYGATE_TLS_CERT: required with KEYGATE_TLS_KEY");
        let s = load(flags(&["--tls-key", "k.pem", "--tls-cert", "c.pem"])).unwrap();
        assert_eq!(s.tls, Some(TlsFiles { cert: "c.pem".into(), key: "k.pem".into() }));
        assert!(s.defences.http.https);
        assert_eq!(s.origin("KEYGATE_TLS_KEY"), Some(&Origin::Flag));
        assert_eq!(s.origin("KEYGATE_TOKEN_TTL"), None);
    }

    #[test]
    fn the_file_gives_typed_values_and_flags_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, "cookie_secure = false\npin_workers = false\naudit_retention_days = 0\n").unwrap();
        let args = SettingsArgs { config: Some(path), pin_workers: Some(" On ".into()), ..Default::default() };
        let s = load(args).unwrap();
        assert!(!s.cookie_secure);
        assert!(s.pin_workers);
        assert_eq!(s.audit_retention(), None);
    }

    #[test]
    fn bootstrap_admin_needs_both_and_a_long_password() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let args = SettingsArgs::default();
        assert!(Settings::load(&args, env(&[("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "a@b.io")])).is_err());
        let short = [("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "a@b.io"), ("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", "short")];
        assert!(Settings::load(&args, env(Box::leak(Box::new(short)))).is_err());
        let ok =
            [("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "A@b.io"), ("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", "long enough pass")];
        let s = Settings::load(&args, env(Box::leak(Box::new(ok)))).unwrap();
        assert_eq!(s.bootstrap_admin.unwrap().0.as_str(), "a@b.io");
    }

    #[test]
    fn bootstrap_password_follows_the_one_password_rule() {
        let load = |password: String| {
            Settings::load(&SettingsArgs::default(), move |k: &str| match k {
                "KEYGATE_BOOTSTRAP_ADMIN_EMAIL" => Some("a@b.io".to_owned()),
                "KEYGATE_BOOTSTRAP_ADMIN_PASSWORD" => Some(password.clone()),
                _ => None,
            })
        };
        // Each would be stored and then refused at every login.
        for bad in ["x".repeat(1100), "é".repeat(600), " ".repeat(16)] {
            let err = load(bad).unwrap_err();
            assert_eq!(err.name, "KEYGATE_BOOTSTRAP_ADMIN_PASSWORD");
        }
        assert!(load("x".repeat(1024)).is_ok());
    }
}
