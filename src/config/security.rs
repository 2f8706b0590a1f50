//! Settings of the abuse defences: trusted proxies, the public origin, lockout thresholds,
//! revocation limits.

use clap::Args;

use super::{ConfigError, bad, seconds};
use crate::{
    domain::{Origin, TrustedProxies},
    http::SecurityPolicy,
    service::{RevocationLimits, lockout::LockoutPolicy},
};

#[derive(Debug, Default, Clone, Args)]
pub struct SecurityArgs {
    /// Proxies whose X-Forwarded-For names the client: addresses or CIDR blocks,
    /// comma-separated, e.g. 10.0.0.0/8,::1 [default: none, the header is ignored].
    #[arg(long, env = "KEYGATE_TRUSTED_PROXIES", global = true, value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// The origin browsers use to reach keygate, e.g. https://auth.example.com; cookie
    /// requests from any other origin are refused [default: the request's own Host].
    #[arg(long, env = "KEYGATE_PUBLIC_ORIGIN", global = true, value_name = "ORIGIN")]
    pub public_origin: Option<String>,
    /// Failed logins per admin email or API key before a lockout, 1 to 1000 [default: 5].
    #[arg(long, env = "KEYGATE_LOCKOUT_THRESHOLD", global = true, value_name = "N")]
    pub lockout_threshold: Option<String>,
    /// Failed logins per client address before a lockout, 1 to 100000 [default: 50].
    #[arg(long, env = "KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", global = true, value_name = "N")]
    pub lockout_address_threshold: Option<String>,
    /// Seconds the first lockout lasts, 1 to 3600; each further one doubles, up to 16
    /// times this [default: 60].
    #[arg(long, env = "KEYGATE_LOCKOUT_DURATION", global = true, value_name = "SECONDS")]
    pub lockout_duration: Option<String>,
    /// Live (unexpired) revoked tokens one API key may hold, 1 to 100000; past it the key's
    /// revocations are refused with 429 [default: 1000].
    #[arg(long, env = "KEYGATE_REVOCATIONS_PER_KEY", global = true, value_name = "N")]
    pub revocations_per_key: Option<String>,
    /// Live revoked tokens all keys of one account may hold, 1 to 100000 [default: 10000].
    #[arg(long, env = "KEYGATE_REVOCATIONS_PER_ACCOUNT", global = true, value_name = "N")]
    pub revocations_per_account: Option<String>,
}

/// The same settings as they come from the TOML file.
#[derive(Debug, Default)]
pub(super) struct SecurityFile {
    pub trusted_proxies: Option<Vec<String>>,
    pub public_origin: Option<String>,
    pub lockout_threshold: Option<u64>,
    pub lockout_address_threshold: Option<u64>,
    pub lockout_duration: Option<u64>,
    pub revocations_per_key: Option<u64>,
    pub revocations_per_account: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    /// Trusted proxies and the public origin, as the HTTP layer applies them.
    pub http: SecurityPolicy,
    pub lockout: LockoutPolicy,
    pub revocations: RevocationLimits,
}

pub(super) fn load(args: &SecurityArgs, file: SecurityFile) -> Result<SecuritySettings, ConfigError> {
    let proxies = args.trusted_proxies.clone().or(file.trusted_proxies.map(|list| list.join(","))).unwrap_or_default();
    let trusted_proxies = TrustedProxies::parse(&proxies).map_err(|e| bad("KEYGATE_TRUSTED_PROXIES", e.0))?;
    let public_origin = args
        .public_origin
        .clone()
        .or(file.public_origin)
        .filter(|s| !s.trim().is_empty())
        .map(|raw| Origin::parse(&raw))
        .transpose()
        .map_err(|e| bad("KEYGATE_PUBLIC_ORIGIN", e.0))?;
    let defaults = LockoutPolicy::default();
    let count = |name, arg: &Option<String>, file, default: u32, max| {
        seconds(name, arg.as_deref(), file, u64::from(default), 1..=max)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .map_err(|_| bad(name, format!("expected a whole number from 1 to {max}")))
    };
    let lockout = LockoutPolicy {
        identity_threshold: count(
            "KEYGATE_LOCKOUT_THRESHOLD",
            &args.lockout_threshold,
            file.lockout_threshold,
            defaults.identity_threshold,
            1_000,
        )?,
        address_threshold: count(
            "KEYGATE_LOCKOUT_ADDRESS_THRESHOLD",
            &args.lockout_address_threshold,
            file.lockout_address_threshold,
            defaults.address_threshold,
            100_000,
        )?,
        base_lock: seconds(
            "KEYGATE_LOCKOUT_DURATION",
            args.lockout_duration.as_deref(),
            file.lockout_duration,
            defaults.base_lock,
            1..=3_600,
        )?,
    };
    let limits = RevocationLimits::default();
    let revocations = RevocationLimits {
        per_key: count(
            "KEYGATE_REVOCATIONS_PER_KEY",
            &args.revocations_per_key,
            file.revocations_per_key,
            limits.per_key,
            100_000,
        )?,
        per_account: count(
            "KEYGATE_REVOCATIONS_PER_ACCOUNT",
            &args.revocations_per_account,
            file.revocations_per_account,
            limits.per_account,
            100_000,
        )?,
    };
    Ok(SecuritySettings { http: SecurityPolicy { trusted_proxies, public_origin }, lockout, revocations })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, SettingsArgs};

    fn load(security: SecurityArgs) -> Result<Settings, ConfigError> {
        Settings::load(&SettingsArgs { security, ..Default::default() }, |_| None)
    }

    #[test]
    fn defaults_trust_no_proxy() {
        let s = load(SecurityArgs::default()).unwrap().security;
        assert!(s.http.trusted_proxies.is_empty());
        assert!(s.http.public_origin.is_none());
        assert_eq!(s.lockout, LockoutPolicy::default());
    }

    #[test]
    fn parses_good_values() {
        let s = load(SecurityArgs {
            trusted_proxies: Some("10.0.0.0/8, 192.168.1.1, ::1".into()),
            public_origin: Some("https://Auth.Example.com/".into()),
            lockout_threshold: Some("3".into()),
            lockout_address_threshold: Some("100".into()),
            lockout_duration: Some("30".into()),
            revocations_per_key: Some("7".into()),
            revocations_per_account: Some("70".into()),
        })
        .unwrap()
        .security;
        assert!(s.http.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
        assert!(!s.http.trusted_proxies.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(s.http.public_origin.unwrap().to_string(), "https://auth.example.com");
        assert_eq!(s.lockout, LockoutPolicy { identity_threshold: 3, address_threshold: 100, base_lock: 30 });
        assert_eq!(s.revocations, RevocationLimits { per_key: 7, per_account: 70 });
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (
                SecurityArgs { revocations_per_key: Some("0".into()), ..Default::default() },
                "KEYGATE_REVOCATIONS_PER_KEY",
            ),
            (
                SecurityArgs { revocations_per_key: Some("0".into()), ..Default::default() },
                "KEYGATE_REVOCATIONS_PER_KEY",
            ),
            (
                SecurityArgs { trusted_proxies: Some("10.0.0.0/40".into()), ..Default::default() },
                "KEYGATE_TRUSTED_PROXIES",
            ),
            (
                SecurityArgs { trusted_proxies: Some("proxy.local".into()), ..Default::default() },
                "KEYGATE_TRUSTED_PROXIES",
            ),
            (
                SecurityArgs { public_origin: Some("auth.example.com".into()), ..Default::default() },
                "KEYGATE_PUBLIC_ORIGIN",
            ),
            (
                SecurityArgs { public_origin: Some("https://a.io/console".into()), ..Default::default() },
                "KEYGATE_PUBLIC_ORIGIN",
            ),
            (SecurityArgs { lockout_threshold: Some("0".into()), ..Default::default() }, "KEYGATE_LOCKOUT_THRESHOLD"),
            (
                SecurityArgs { lockout_threshold: Some("many".into()), ..Default::default() },
                "KEYGATE_LOCKOUT_THRESHOLD",
            ),
            (
                SecurityArgs { lockout_address_threshold: Some("100001".into()), ..Default::default() },
                "KEYGATE_LOCKOUT_ADDRESS_THRESHOLD",
            ),
            (SecurityArgs { lockout_duration: Some("7200".into()), ..Default::default() }, "KEYGATE_LOCKOUT_DURATION"),
        ];
        for (args, name) in cases {
            let err = load(args).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().starts_with(&format!("invalid setting {name}")), "{err}");
        }
    }

    #[test]
    fn file_takes_a_list_of_proxies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nlockout_threshold = 7\n").unwrap();
        let s = Settings::load(&SettingsArgs { config: Some(path), ..Default::default() }, |_| None).unwrap();
        assert!(s.security.http.trusted_proxies.contains("::1".parse().unwrap()));
        assert_eq!(s.security.lockout.identity_threshold, 7);
    }
}
