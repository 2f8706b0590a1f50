//! Settings of client connections: how long a client may take and how many may be open.

use std::time::Duration;

use super::{ConfigError, Layers, bad, seconds};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// `None`: below the process's open-file limit, which only start-up knows.
    pub max_connections: Option<u64>,
}

pub(super) fn load(layers: &Layers) -> Result<ConnectionSettings, ConfigError> {
    let header_read_timeout =
        seconds("KEYGATE_HEADER_READ_TIMEOUT", layers.get(|s| &s.header_read_timeout), 10, 1..=300)?;
    let idle_timeout = seconds("KEYGATE_IDLE_TIMEOUT", layers.get(|s| &s.idle_timeout), 60, 1..=3_600)?;
    let max_connections = layers
        .get(|s| &s.max_connections)
        .map(|given| {
            seconds("KEYGATE_MAX_CONNECTIONS", Some(given), 0, 1..=10_000_000)
                .map_err(|_| bad("KEYGATE_MAX_CONNECTIONS", "expected a whole number from 1 to 10000000"))
        })
        .transpose()?;
    Ok(ConnectionSettings {
        header_read_timeout: Duration::from_secs(header_read_timeout),
        idle_timeout: Duration::from_secs(idle_timeout),
        max_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, SettingsArgs};

    fn load(args: SettingsArgs) -> Result<ConnectionSettings, ConfigError> {
        Settings::load(&args, |_| None).map(|s| s.connections)
    }

    #[test]
    fn defaults_and_good_values() {
        let s = load(SettingsArgs::default()).unwrap();
        assert_eq!(
            s,
            ConnectionSettings {
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_connections: None
            }
        );
        let s = load(SettingsArgs {
            header_read_timeout: Some("2".into()),
            idle_timeout: Some("5".into()),
            max_connections: Some("20".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.header_read_timeout, Duration::from_secs(2));
        assert_eq!(s.idle_timeout, Duration::from_secs(5));
        assert_eq!(s.max_connections, Some(20));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (
                SettingsArgs { header_read_timeout: Some("0".into()), ..Default::default() },
                "KEYGATE_HEADER_READ_TIMEOUT",
            ),
            (
                SettingsArgs { header_read_timeout: Some("301".into()), ..Default::default() },
                "KEYGATE_HEADER_READ_TIMEOUT",
            ),
            (SettingsArgs { idle_timeout: Some("soon".into()), ..Default::default() }, "KEYGATE_IDLE_TIMEOUT"),
            (SettingsArgs { max_connections: Some("0".into()), ..Default::default() }, "KEYGATE_MAX_CONNECTIONS"),
            (SettingsArgs { max_connections: Some("-1".into()), ..Default::default() }, "KEYGATE_MAX_CONNECTIONS"),
        ];
        for (args, name) in cases {
            let err = load(args).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().starts_with(&format!("invalid setting {name}")), "{err}");
        }
    }

    #[test]
    fn file_takes_them_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, "header_read_timeout = 3\nidle_timeout = 30\nmax_connections = 100\n").unwrap();
        let s = Settings::load(&SettingsArgs { config: Some(path), ..Default::default() }, |_| None).unwrap();
        assert_eq!(s.connections.header_read_timeout, Duration::from_secs(3));
        assert_eq!(s.connections.idle_timeout, Duration::from_secs(30));
        assert_eq!(s.connections.max_connections, Some(100));
    }
}
