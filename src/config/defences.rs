//! Settings of the abuse defences: trusted proxies and the public origin (who is asking,
//! from where), lockout thresholds, revocation limits.

use super::{ConfigError, Given, Layers, bad, seconds};
use crate::{
    domain::{Origin, TrustedProxies},
    http::SecurityPolicy,
    service::{RevocationLimits, lockout::LockoutPolicy},
};

#[derive(Debug, Clone, Default)]
pub struct DefenceSettings {
    /// Trusted proxies and the public origin, as the HTTP layer applies them.
    pub http: SecurityPolicy,
    pub lockout: LockoutPolicy,
    pub revocations: RevocationLimits,
}

pub(super) fn load(layers: &Layers) -> Result<DefenceSettings, ConfigError> {
    let proxies = match layers.get(|s| &s.trusted_proxies) {
        Some(Given::Text(list)) => list,
        Some(Given::Value(list)) => list.join(","),
        None => String::new(),
    };
    let trusted_proxies = TrustedProxies::parse(&proxies).map_err(|e| bad("KEYGATE_TRUSTED_PROXIES", e.0))?;
    let public_origin = layers
        .get(|s| &s.public_origin)
        .filter(|s| !s.trim().is_empty())
        .map(|raw| Origin::parse(&raw))
        .transpose()
        .map_err(|e| bad("KEYGATE_PUBLIC_ORIGIN", e.0))?;
    let count = |name, given, default: u32, max| {
        seconds(name, given, u64::from(default), 1..=max)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .map_err(|_| bad(name, format!("expected a whole number from 1 to {max}")))
    };
    let defaults = LockoutPolicy::default();
    let lockout = LockoutPolicy {
        identity_threshold: count(
            "KEYGATE_LOCKOUT_THRESHOLD",
            layers.get(|s| &s.lockout_threshold),
            defaults.identity_threshold,
            1_000,
        )?,
        address_threshold: count(
            "KEYGATE_LOCKOUT_ADDRESS_THRESHOLD",
            layers.get(|s| &s.lockout_address_threshold),
            defaults.address_threshold,
            100_000,
        )?,
        base_lock: seconds(
            "KEYGATE_LOCKOUT_DURATION",
            layers.get(|s| &s.lockout_duration),
            defaults.base_lock,
            1..=3_600,
        )?,
    };
    let limits = RevocationLimits::default();
    let revocations = RevocationLimits {
        per_key: count("KEYGATE_REVOCATIONS_PER_KEY", layers.get(|s| &s.revocations_per_key), limits.per_key, 100_000)?,
        per_account: count(
            "KEYGATE_REVOCATIONS_PER_ACCOUNT",
            layers.get(|s| &s.revocations_per_account),
            limits.per_account,
            100_000,
        )?,
    };
    Ok(DefenceSettings { http: SecurityPolicy { trusted_proxies, public_origin, https: false }, lockout, revocations })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, SettingsArgs};

    fn load(args: SettingsArgs) -> Result<Settings, ConfigError> {
        Settings::load(&args, |_| None)
    }

    #[test]
    fn defaults_trust_no_proxy() {
        let s = load(SettingsArgs::default()).unwrap().defences;
        assert!(s.http.trusted_proxies.is_empty());
        assert!(s.http.public_origin.is_none());
        assert_eq!(s.lockout, LockoutPolicy::default());
    }

    #[test]
    fn parses_good_values() {
        let s = load(SettingsArgs {
            trusted_proxies: Some("10.0.0.0/8, 192.168.1.1, ::1".into()),
            public_origin: Some("https://Auth.Example.com/".into()),
            lockout_threshold: Some("3".into()),
            lockout_address_threshold: Some("100".into()),
            lockout_duration: Some("30".into()),
            revocations_per_key: Some("7".into()),
            revocations_per_account: Some("70".into()),
            ..Default::default()
        })
        .unwrap()
        .defences;
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
                SettingsArgs { revocations_per_key: Some("0".into()), ..Default::default() },
                "KEYGATE_REVOCATIONS_PER_KEY",
            ),
            (
                SettingsArgs { revocations_per_account: Some("100001".into()), ..Default::default() },
                "KEYGATE_REVOCATIONS_PER_ACCOUNT",
            ),
            (
                SettingsArgs { trusted_proxies: Some("10.0.0.0/40".into()), ..Default::default() },
                "KEYGATE_TRUSTED_PROXIES",
            ),
            (
                SettingsArgs { trusted_proxies: Some("proxy.local".into()), ..Default::default() },
                "KEYGATE_TRUSTED_PROXIES",
            ),
            (
                SettingsArgs { public_origin: Some("auth.example.com".into()), ..Default::default() },
                "KEYGATE_PUBLIC_ORIGIN",
            ),
            (
                SettingsArgs { public_origin: Some("https://a.io/console".into()), ..Default::default() },
                "KEYGATE_PUBLIC_ORIGIN",
            ),
            (SettingsArgs { lockout_threshold: Some("0".into()), ..Default::default() }, "KEYGATE_LOCKOUT_THRESHOLD"),
            (
                SettingsArgs { lockout_threshold: Some("many".into()), ..Default::default() },
                "KEYGATE_LOCKOUT_THRESHOLD",
            ),
            (
                SettingsArgs { lockout_address_threshold: Some("100001".into()), ..Default::default() },
                "KEYGATE_LOCKOUT_ADDRESS_THRESHOLD",
            ),
            (SettingsArgs { lockout_duration: Some("7200".into()), ..Default::default() }, "KEYGATE_LOCKOUT_DURATION"),
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
        assert!(s.defences.http.trusted_proxies.contains("::1".parse().unwrap()));
        assert_eq!(s.defences.lockout.identity_threshold, 7);
    }
}
