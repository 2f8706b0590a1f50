//! Settings for running keygate in production: where metrics are served, the access log,
//! how long shutdown and the first database connection may take.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use super::{ConfigError, Layers, bad, flag, seconds};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationSettings {
    /// `None`: `/metrics` on the main listener; otherwise on this address only.
    pub metrics_listen: Option<SocketAddr>,
    pub access_log: bool,
    pub shutdown_timeout: Duration,
    pub db_connect_timeout: Duration,
}

pub(super) fn load(layers: &Layers) -> Result<OperationSettings, ConfigError> {
    let metrics_listen = layers
        .get(|s| &s.metrics_listen)
        .map(|raw| {
            SocketAddr::from_str(raw.trim())
                .map_err(|_| bad("KEYGATE_METRICS_LISTEN", "expected IP:PORT, e.g. 127.0.0.1:9090"))
        })
        .transpose()?;
    let access_log = flag("KEYGATE_ACCESS_LOG", layers.get(|s| &s.access_log), true)?;
    let shutdown_timeout = seconds("KEYGATE_SHUTDOWN_TIMEOUT", layers.get(|s| &s.shutdown_timeout), 30, 1..=3_600)?;
    let db_connect_timeout =
        seconds("KEYGATE_DB_CONNECT_TIMEOUT", layers.get(|s| &s.db_connect_timeout), 60, 0..=3_600)?;
    Ok(OperationSettings {
        metrics_listen,
        access_log,
        shutdown_timeout: Duration::from_secs(shutdown_timeout),
        db_connect_timeout: Duration::from_secs(db_connect_timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, SettingsArgs};

    fn load(args: SettingsArgs) -> Result<OperationSettings, ConfigError> {
        Settings::load(&args, |_| None).map(|s| s.operations)
    }

    #[test]
    fn defaults_and_good_values() {
        let s = load(SettingsArgs::default()).unwrap();
        assert_eq!(
            s,
            OperationSettings {
                metrics_listen: None,
                access_log: true,
                shutdown_timeout: Duration::from_secs(30),
                db_connect_timeout: Duration::from_secs(60),
            }
        );
        let s = load(SettingsArgs {
            metrics_listen: Some("127.0.0.1:9090".into()),
            access_log: Some("false".into()),
            shutdown_timeout: Some("5".into()),
            db_connect_timeout: Some("0".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(!s.access_log);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(s.db_connect_timeout, Duration::ZERO);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (SettingsArgs { metrics_listen: Some("9090".into()), ..Default::default() }, "KEYGATE_METRICS_LISTEN"),
            (SettingsArgs { access_log: Some("loud".into()), ..Default::default() }, "KEYGATE_ACCESS_LOG"),
            (SettingsArgs { shutdown_timeout: Some("0".into()), ..Default::default() }, "KEYGATE_SHUTDOWN_TIMEOUT"),
            (
                SettingsArgs { db_connect_timeout: Some("3601".into()), ..Default::default() },
                "KEYGATE_DB_CONNECT_TIMEOUT",
            ),
        ];
        for (args, name) in cases {
            let err = load(args).unwrap_err();
            assert_eq!(err.name, name);
        }
    }
}
