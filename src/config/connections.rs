//! Settings of client connections: how long a client may take and how many may be open.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, bad, seconds};

#[derive(Debug, Default, Clone, Args)]
pub struct ConnectionArgs {
    /// Seconds a client has to send a request's headers (from connecting for the first
    /// request, from its first byte for later ones), and then its body; 1 to 300 [default: 10].
    #[arg(long, env = "KEYGATE_HEADER_READ_TIMEOUT", global = true, value_name = "SECONDS")]
    pub header_read_timeout: Option<String>,
    /// Seconds a keep-alive connection may sit idle between requests, and a request may go
    /// without a byte moving either way; 1 to 3600 [default: 60].
    #[arg(long, env = "KEYGATE_IDLE_TIMEOUT", global = true, value_name = "SECONDS")]
    pub idle_timeout: Option<String>,
    /// Client connections open at once; further ones wait until one closes [default: the
    /// open-file limit, raised to its maximum, less 256 kept for the store and logs].
    #[arg(long, env = "KEYGATE_MAX_CONNECTIONS", global = true, value_name = "N")]
    pub max_connections: Option<String>,
}

/// The same settings as they come from the TOML file.
#[derive(Debug, Default)]
pub(super) struct ConnectionFile {
    pub header_read_timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// `None`: below the process's open-file limit, which only start-up knows.
    pub max_connections: Option<u64>,
}

pub(super) fn load(args: &ConnectionArgs, file: ConnectionFile) -> Result<ConnectionSettings, ConfigError> {
    let header_read_timeout = seconds(
        "KEYGATE_HEADER_READ_TIMEOUT",
        args.header_read_timeout.as_deref(),
        file.header_read_timeout,
        10,
        1..=300,
    )?;
    let idle_timeout = seconds("KEYGATE_IDLE_TIMEOUT", args.idle_timeout.as_deref(), file.idle_timeout, 60, 1..=3_600)?;
    let max_connections = match (args.max_connections.as_deref(), file.max_connections) {
        (None, None) => None,
        (arg, file) => Some(
            seconds("KEYGATE_MAX_CONNECTIONS", arg, file, 0, 1..=10_000_000)
                .map_err(|_| bad("KEYGATE_MAX_CONNECTIONS", "expected a whole number from 1 to 10000000"))?,
        ),
    };
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

    fn load(connections: ConnectionArgs) -> Result<ConnectionSettings, ConfigError> {
        Settings::load(&SettingsArgs { connections, ..Default::default() }, |_| None).map(|s| s.connections)
    }

    #[test]
    fn defaults_and_good_values() {
        let s = load(ConnectionArgs::default()).unwrap();
        assert_eq!(
            s,
            ConnectionSettings {
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_connections: None
            }
        );
        let s = load(ConnectionArgs {
            header_read_timeout: Some("2".into()),
            idle_timeout: Some("5".into()),
            max_connections: Some("20".into()),
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
                ConnectionArgs { header_read_timeout: Some("0".into()), ..Default::default() },
                "KEYGATE_HEADER_READ_TIMEOUT",
            ),
            (
                ConnectionArgs { header_read_timeout: Some("301".into()), ..Default::default() },
                "KEYGATE_HEADER_READ_TIMEOUT",
            ),
            (ConnectionArgs { idle_timeout: Some("soon".into()), ..Default::default() }, "KEYGATE_IDLE_TIMEOUT"),
            (ConnectionArgs { max_connections: Some("0".into()), ..Default::default() }, "KEYGATE_MAX_CONNECTIONS"),
            (ConnectionArgs { max_connections: Some("-1".into()), ..Default::default() }, "KEYGATE_MAX_CONNECTIONS"),
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
