//! `keygate config check`: the settings judged as `serve` judges them (loaded, then what only
//! start-up looks at: the master key, the issuer on PostgreSQL, the connection limit, the TLS
//! files), and printed as they would be used, with where each came from. Secrets are never
//! printed: the master key and the bootstrap password are said to be set, the database
//! URL's password is masked.

use crate::{
    bootstrap,
    config::{Origin, Settings},
    startup::{self, Preflight},
};

pub fn check(settings: &Settings) -> anyhow::Result<()> {
    // In `serve`'s order, so that the first error is the one `serve` would give.
    let master_key = bootstrap::check_master_key(settings)?;
    let Preflight { limits, tls } = startup::preflight(settings)?;

    let s = settings;
    let scheme = startup::scheme(s);
    let seconds = |n: u64| format!("{n} s");
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "(none)".to_owned());
    let mut rows: Vec<(&str, String)> = vec![
        ("KEYGATE_CONFIG", or_none(s.config_file.as_ref().map(|p| p.display().to_string()))),
        ("KEYGATE_LISTEN", s.listen.to_string()),
        ("KEYGATE_DATA_DIR", s.data_dir.display().to_string()),
        ("KEYGATE_DATABASE_URL", mask_url(&s.database_url)),
        ("KEYGATE_MASTER_KEY", master_key),
        ("KEYGATE_ISSUER", s.issuer.clone().unwrap_or_else(|| format!("{scheme}://<the address bound>"))),
        ("KEYGATE_AUDIENCE", s.audience.clone()),
        ("KEYGATE_TOKEN_TTL", seconds(s.token_ttl)),
        ("KEYGATE_SIGNING_ALG", s.signing_alg.to_string()),
        ("KEYGATE_KEY_RELOAD_INTERVAL", seconds(s.key_reload_interval)),
        ("KEYGATE_PIN_WORKERS", s.pin_workers.to_string()),
        ("KEYGATE_COOKIE_SECURE", s.cookie_secure.to_string()),
        ("KEYGATE_SESSION_IDLE_TIMEOUT", seconds(s.session_idle_timeout)),
        ("KEYGATE_SESSION_LIFETIME", seconds(s.session_lifetime)),
        ("KEYGATE_AUDIT_RETENTION_DAYS", s.audit_retention_days.to_string()),
        ("KEYGATE_SWEEP_INTERVAL", seconds(s.sweep_interval)),
        ("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", or_none(s.bootstrap_admin.as_ref().map(|(email, _)| email.to_string()))),
        ("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", or_none(s.bootstrap_admin.as_ref().map(|_| "(set, hidden)".to_owned()))),
        ("KEYGATE_TRUSTED_PROXIES", or_none(Some(s.defences.http.trusted_proxies.to_list()).filter(|l| !l.is_empty()))),
        (
            "KEYGATE_PUBLIC_ORIGIN",
            s.defences
                .http
                .public_origin
                .as_ref()
                .map_or_else(|| "(the request's Host)".to_owned(), ToString::to_string),
        ),
        ("KEYGATE_LOCKOUT_THRESHOLD", s.defences.lockout.identity_threshold.to_string()),
        ("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", s.defences.lockout.address_threshold.to_string()),
        ("KEYGATE_LOCKOUT_DURATION", seconds(s.defences.lockout.base_lock)),
        ("KEYGATE_REVOCATIONS_PER_KEY", s.defences.revocations.per_key.to_string()),
        ("KEYGATE_REVOCATIONS_PER_ACCOUNT", s.defences.revocations.per_account.to_string()),
        ("KEYGATE_HEADER_READ_TIMEOUT", seconds(limits.header_read_timeout.as_secs())),
        ("KEYGATE_IDLE_TIMEOUT", seconds(limits.idle_timeout.as_secs())),
        ("KEYGATE_MAX_CONNECTIONS", limits.max_connections.to_string()),
        (
            "KEYGATE_METRICS_LISTEN",
            s.operations.metrics_listen.map_or_else(|| "(the main listener)".to_owned(), |a| a.to_string()),
        ),
        ("KEYGATE_ACCESS_LOG", s.operations.access_log.to_string()),
        ("KEYGATE_SHUTDOWN_TIMEOUT", seconds(s.operations.shutdown_timeout.as_secs())),
        ("KEYGATE_DB_CONNECT_TIMEOUT", seconds(s.operations.db_connect_timeout.as_secs())),
        ("KEYGATE_REDIS_URL", or_none(s.redis_url.as_deref().map(mask_url))),
        ("KEYGATE_LIMITS_ON_FAILURE", format!("{:?}", s.limits_on_failure).to_lowercase()),
        ("KEYGATE_TLS_CERT", or_none(s.tls.as_ref().map(|f| f.cert.display().to_string()))),
        ("KEYGATE_TLS_KEY", or_none(s.tls.as_ref().map(|f| f.key.display().to_string()))),
        ("KEYGATE_LOG", s.log_filter.clone()),
        ("KEYGATE_LOG_FORMAT", format!("{:?}", s.log_format).to_lowercase()),
    ];
    if let Some(tls) = &tls {
        rows.push(("(TLS certificate SHA-256)", tls.fingerprint()));
    }

    println!("the settings are valid: `keygate serve` would start with these");
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|(_, value)| value.chars().count()).max().unwrap_or(0).min(48);
    for (name, value) in rows {
        let from = from(settings, name);
        println!("{}", format!("{name:width$}  {value:value_width$}  {from}").trim_end());
    }
    Ok(())
}

/// Where a setting's value came from, as the table says it.
fn from(settings: &Settings, name: &str) -> String {
    let secret = match name {
        "KEYGATE_MASTER_KEY" => Some(settings.master_key.is_some()),
        "KEYGATE_BOOTSTRAP_ADMIN_EMAIL" | "KEYGATE_BOOTSTRAP_ADMIN_PASSWORD" => {
            Some(settings.bootstrap_admin.is_some())
        }
        _ => None,
    };
    match (secret, settings.origin(name)) {
        (Some(true), _) => "environment".to_owned(),
        (Some(false), _) | (None, None) if name.starts_with('(') => String::new(),
        (Some(false), _) | (None, None) => "default".to_owned(),
        (None, Some(Origin::Flag)) => {
            format!("flag --{}", name.trim_start_matches("KEYGATE_").to_lowercase().replace('_', "-"))
        }
        (None, Some(Origin::Variable)) => "environment".to_owned(),
        (None, Some(Origin::File { path, line, .. })) => format!("{}:{line}", path.display()),
    }
}

/// `url` with its password, if any, replaced by `****`: in the user info
/// (`postgres://user:secret@host/db`) and in a `password` query parameter.
fn mask_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority_end, _) = rest.char_indices().find(|&(_, c)| c == '/' || c == '?').unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:****@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => format!("{key}=****"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    if scheme.is_empty() { format!("{authority}{tail}") } else { format!("{scheme}://{authority}{tail}") }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn database_passwords_are_masked() {
        assert_eq!(mask_url("postgres://kg:s3cret@db:5432/keygate"), "postgres://kg:****@db:5432/keygate");
        assert_eq!(mask_url("postgres://kg:p%40ss@db/k?sslmode=require"), "postgres://kg:****@db/k?sslmode=require");
        assert_eq!(mask_url("postgres://db/k?user=kg&password=s3cret"), "postgres://db/k?user=kg&password=****");
        assert_eq!(mask_url("postgresql://kg@db/k"), "postgresql://kg@db/k");
        assert_eq!(mask_url("sqlite://./data/keygate.db"), "sqlite://./data/keygate.db");
        assert_eq!(mask_url("postgres://a:b@c@d/e"), "postgres://a:****@d/e");
        assert_eq!(mask_url("postgres://:x@h/d"), "postgres://:****@h/d");
    }
}
