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
    #[arg(long, env = "KEYGATE_CONFIG", global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYGATE_LISTEN", global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for the embedded store and generated secrets [default: ./data].
    #[arg(long, env = "KEYGATE_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [default: a SQLite file in the data dir].
    #[arg(long, env = "KEYGATE_DATABASE_URL", global = true, value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The tokens' `iss` claim; required with PostgreSQL, the same on every replica
    /// [default: http://<listen>].
    #[arg(long, env = "KEYGATE_ISSUER", global = true, value_name = "URL")]
    pub issuer: Option<String>,
    /// The tokens' `aud` claim [default: keygate].
    #[arg(long, env = "KEYGATE_AUDIENCE", global = true)]
    pub audience: Option<String>,
    /// Access-token lifetime in seconds, 60 to 86400 [default: 900].
    #[arg(long, env = "KEYGATE_TOKEN_TTL", global = true, value_name = "SECONDS")]
    pub token_ttl: Option<Given<u64>>,
    /// Mark the admin session cookie `Secure` [default: true].
    #[arg(long, env = "KEYGATE_COOKIE_SECURE", global = true, value_name = "BOOL")]
    pub cookie_secure: Option<Given<bool>>,
    /// Admin sessions end after this many idle seconds [default: 1800].
    #[arg(long, env = "KEYGATE_SESSION_IDLE_TIMEOUT", global = true, value_name = "SECONDS")]
    pub session_idle_timeout: Option<Given<u64>>,
    /// Admin sessions end this many seconds after login, however active [default: 43200].
    #[arg(long, env = "KEYGATE_SESSION_LIFETIME", global = true, value_name = "SECONDS")]
    pub session_lifetime: Option<Given<u64>>,
    /// JWT signature algorithm of the first signing key, made on an empty store: ES256 or
    /// EdDSA. Later changes are `keygate signing-key rotate --alg` [default: ES256].
    #[arg(long, env = "KEYGATE_SIGNING_ALG", global = true, value_name = "ALG")]
    pub signing_alg: Option<String>,
    /// How often a running server re-reads the signing keys from the store, to pick up a
    /// rotation made by the CLI or another replica; 1 to 60 [default: 10].
    #[arg(long, env = "KEYGATE_KEY_RELOAD_INTERVAL", global = true, value_name = "SECONDS")]
    pub key_reload_interval: Option<Given<u64>>,
    /// Audit entries are deleted this many days after they were recorded, 0 to 36500; 0
    /// keeps them all [default: 365].
    #[arg(long, env = "KEYGATE_AUDIT_RETENTION_DAYS", global = true, value_name = "DAYS")]
    pub audit_retention_days: Option<Given<u64>>,
    /// How often the store is swept of ended sessions, idle failed-login counters and audit
    /// entries past their retention; 1 to 86400 [default: 600].
    #[arg(long, env = "KEYGATE_SWEEP_INTERVAL", global = true, value_name = "SECONDS")]
    pub sweep_interval: Option<Given<u64>>,
    /// Keep each async worker on a CPU of its own when the process has whole CPUs to
    /// itself [default: true].
    #[arg(long, env = "KEYGATE_PIN_WORKERS", global = true, value_name = "BOOL")]
    pub pin_workers: Option<Given<bool>>,
    /// Log filter, in tracing's EnvFilter syntax [default: info].
    #[arg(long, env = "KEYGATE_LOG", global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "KEYGATE_LOG_FORMAT", global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,

    // The abuse defences (`defences`).
    /// Proxies whose X-Forwarded-For names the client: addresses or CIDR blocks,
    /// comma-separated, e.g. 10.0.0.0/8,::1 [default: none, the header is ignored].
    #[arg(long, env = "KEYGATE_TRUSTED_PROXIES", global = true, value_name = "CIDRS")]
    pub trusted_proxies: Option<Given<Vec<String>>>,
    /// The origin browsers use to reach keygate, e.g. https://auth.example.com; cookie
    /// requests from any other origin are refused [default: the request's own Host].
    #[arg(long, env = "KEYGATE_PUBLIC_ORIGIN", global = true, value_name = "ORIGIN")]
    pub public_origin: Option<String>,
    /// Failed logins per admin email or API key before a lockout, 1 to 1000 [default: 5].
    #[arg(long, env = "KEYGATE_LOCKOUT_THRESHOLD", global = true, value_name = "N")]
    pub lockout_threshold: Option<Given<u64>>,
    /// Failed logins per client address before a lockout, 1 to 100000 [default: 50].
    #[arg(long, env = "KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", global = true, value_name = "N")]
    pub lockout_address_threshold: Option<Given<u64>>,
    /// Seconds the first lockout lasts, 1 to 3600; each further one doubles, up to 16
    /// times this [default: 60].
    #[arg(long, env = "KEYGATE_LOCKOUT_DURATION", global = true, value_name = "SECONDS")]
    pub lockout_duration: Option<Given<u64>>,
    /// Live (unexpired) revoked tokens one API key may hold, 1 to 100000; past it the key's
    /// revocations are refused with 429 [default: 1000].
    #[arg(long, env = "KEYGATE_REVOCATIONS_PER_KEY", global = true, value_name = "N")]
    pub revocations_per_key: Option<Given<u64>>,
    /// Live revoked tokens all keys of one account may hold, 1 to 100000 [default: 10000].
    #[arg(long, env = "KEYGATE_REVOCATIONS_PER_ACCOUNT", global = true, value_name = "N")]
    pub revocations_per_account: Option<Given<u64>>,

    // Client connections (`connections`).
    /// Seconds a client has to send a request's headers (from connecting for the first
    /// request, from its first byte for later ones), and then its body; 1 to 300 [default: 10].
    #[arg(long, env = "KEYGATE_HEADER_READ_TIMEOUT", global = true, value_name = "SECONDS")]
    pub header_read_timeout: Option<Given<u64>>,
    /// Seconds a keep-alive connection may sit idle between requests, and a request may go
    /// without a byte moving either way; 1 to 3600 [default: 60].
    #[arg(long, env = "KEYGATE_IDLE_TIMEOUT", global = true, value_name = "SECONDS")]
    pub idle_timeout: Option<Given<u64>>,
    /// Client connections open at once; further ones wait until one closes [default: the
    /// open-file limit, raised to its maximum, less 256 kept for the store and logs].
    #[arg(long, env = "KEYGATE_MAX_CONNECTIONS", global = true, value_name = "N")]
    pub max_connections: Option<Given<u64>>,

    // Operations (`operations`).
    /// Serve `/metrics` (Prometheus) on this address only, and not on the main listener
    /// [default: on the main listener].
    #[arg(long, env = "KEYGATE_METRICS_LISTEN", global = true, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Log one line per request at info: method, route, status, latency, client address and
    /// request id [default: true].
    #[arg(long, env = "KEYGATE_ACCESS_LOG", global = true, value_name = "BOOL")]
    pub access_log: Option<Given<bool>>,
    /// Seconds that requests in flight at SIGTERM or SIGINT may take to finish before they are
    /// cut, 1 to 3600 [default: 30].
    #[arg(long, env = "KEYGATE_SHUTDOWN_TIMEOUT", global = true, value_name = "SECONDS")]
    pub shutdown_timeout: Option<Given<u64>>,
    /// Seconds `serve` keeps retrying a database it cannot reach at start-up before it gives
    /// up, 0 to 3600; 0 tries once [default: 60].
    #[arg(long, env = "KEYGATE_DB_CONNECT_TIMEOUT", global = true, value_name = "SECONDS")]
    pub db_connect_timeout: Option<Given<u64>>,
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

/// What is given over the defaults: flags and environment (merged by clap, flags winning)
/// over the file.
struct Layers<'a> {
    flags: &'a SettingsArgs,
    file: SettingsArgs,
}

impl Layers<'_> {
    /// The setting `field` from the uppermost layer that gives it.
    fn get<T: Clone>(&self, field: impl Fn(&SettingsArgs) -> &Option<T>) -> Option<T> {
        field(self.flags).clone().or_else(|| field(&self.file).clone())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The settings, judged and typed.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// `None`: `http://<bound address>`, known only once the listener is bound.
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
    pub defences: DefenceSettings,
    pub connections: ConnectionSettings,
    pub operations: OperationSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

fn bad(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { name, reason: reason.into() }
}

impl Settings {
    /// Builds settings from `args` (flags and environment already merged by clap), the
    /// optional file they name, and the secrets read from `env`.
    pub fn load(args: &SettingsArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => SettingsArgs::default(),
        };
        let layers = Layers { flags: args, file };

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

        let defences = defences::load(&layers)?;
        let connections = connections::load(&layers)?;
        let operations = operations::load(&layers)?;

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
            defences,
            connections,
            operations,
        })
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

fn read_file(path: &Path) -> Result<SettingsArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad("KEYGATE_CONFIG", format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| bad("KEYGATE_CONFIG", format!("{}: {}", path.display(), e.message())))
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
