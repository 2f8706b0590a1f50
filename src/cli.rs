//! The command line: `keygate serve`, `keygate config check`, `keygate admin …`,
//! `keygate signing-key …`, `keygate audit`, `keygate migrate`, `keygate backup`,
//! `keygate restore`, `keygate healthcheck`.
//!
//! The server's settings are `serve`'s options (and `config check`'s, which judges them as
//! `serve` would). Every other command has only its own options, and those that work on the
//! servers' store the few that say where it is (`StoreArgs`); the rest of the servers'
//! settings reach them from the environment and the settings file, as they reach `serve`.
//!
//! Exit codes: 0 done; 1 failed; 2 refused input (a setting, a flag, an argument).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

mod admin;
mod audit;
mod backup;
mod config;
mod healthcheck;
mod signing_key;

use crate::{
    clock::Clock,
    config::{ConfigError, Origins, Settings, SettingsArgs},
    runtime,
    startup::Application,
    store, telemetry,
};

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "API keys in, signed JWTs out.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Check the server's settings without starting it.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage admins.
    Admin(admin::AdminArgs),
    /// Manage the JWT signing keys.
    SigningKey(signing_key::SigningKeyArgs),
    /// Copy every account, admin, API key, session and signing key from one store into a
    /// new, empty one (e.g. from the embedded SQLite file to PostgreSQL). Stop the servers
    /// on the source first.
    Migrate {
        /// The store to copy from, e.g. sqlite://./data/keygate.db
        #[arg(long, value_name = "URL")]
        from: String,
        /// The empty store to copy into, e.g. postgres://keygate@db/keygate
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Show the audit log, newest first: logins, logouts, key changes, lockouts, rotations.
    Audit(audit::AuditArgs),
    /// Copy the embedded store, consistent and whole, while the server runs.
    Backup(backup::BackupArgs),
    /// Put a backup in place as the embedded store of an empty data directory.
    Restore(backup::RestoreArgs),
    /// Ask the server on this machine whether it is up (GET /healthz): exit code 0 if so,
    /// 1 if not. For container health checks.
    Healthcheck(healthcheck::HealthcheckArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Judge the settings (file, environment, flags) exactly as `serve` would, print the
    /// result with secrets hidden, and exit: 0 if `serve` would accept them, 2 with its
    /// error if not. Neither the database nor the listen address is touched.
    Check {
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

/// Where the servers' store is, for a command that works on it: these three of the servers'
/// settings, as flags or variables. The others come from the environment and the file.
#[derive(Debug, Default, Clone, Args)]
pub(crate) struct StoreArgs {
    /// The servers' TOML settings file.
    #[arg(long, env = "KEYGATE_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The servers' data directory [default: ./data].
    #[arg(long, env = "KEYGATE_DATA_DIR", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The servers' store, sqlite://… or postgres://… [default: the SQLite file in the data
    /// directory].
    #[arg(long, env = "KEYGATE_DATABASE_URL", value_name = "URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
}

impl StoreArgs {
    /// The servers' settings, with these over the environment.
    fn settings(&self) -> Result<SettingsArgs, ConfigError> {
        let mut args = SettingsArgs::from_env()?;
        args.config = self.config.clone().or(args.config);
        args.data_dir = self.data_dir.clone().or(args.data_dir);
        args.database_url = self.database_url.clone().or(args.database_url);
        Ok(args)
    }
}

impl Command {
    /// The settings this command runs with, before they are judged.
    fn settings(&self) -> Result<SettingsArgs, ConfigError> {
        match self {
            Self::Serve { settings } | Self::Config(ConfigCommand::Check { settings }) => Ok(settings.clone()),
            Self::Admin(admin::AdminArgs { store, .. })
            | Self::SigningKey(signing_key::SigningKeyArgs { store, .. })
            | Self::Audit(audit::AuditArgs { store, .. })
            | Self::Backup(backup::BackupArgs { store, .. })
            | Self::Restore(backup::RestoreArgs { store, .. }) => store.settings(),
            Self::Migrate { .. } | Self::Healthcheck(_) => SettingsArgs::from_env(),
        }
    }
}

/// Refused input (an argument, a password): exit code 2, as for a bad setting or flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub String);

pub fn main() -> ExitCode {
    // Everything keygate writes (the database and SQLite's own -wal and -shm files, the
    // master key, the first admin's password, a backup) is for this user alone, whatever
    // the umask it was started with.
    #[cfg(target_os = "linux")]
    rustix::process::umask(rustix::fs::Mode::RWXG | rustix::fs::Mode::RWXO);
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A health check answers "up" or "down", nothing else (2 is reserved by Docker).
    let refused = if matches!(cli.command, Command::Healthcheck(_)) { ExitCode::FAILURE } else { ExitCode::from(2) };
    let loaded = cli.command.settings().and_then(|mut args| {
        args.origins.extend(Origins::of(&matches));
        Settings::load(&args, |name| std::env::var(name).ok())
    });
    let settings = match loaded {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return refused;
        }
    };
    let pin_workers = settings.pin_workers && matches!(cli.command, Command::Serve { .. });
    let runtime = match runtime::build(pin_workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one place the commands' time comes from.
    match runtime.block_on(run(cli.command, &settings, Clock::system())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = settings.attribute(e);
            eprintln!("error: {}", telemetry::Chain(&e));
            // A setting only start-up can judge (the master key file) is a setting error too.
            let setting = e.is::<InputError>() || e.chain().any(|cause| cause.is::<ConfigError>());
            if setting { refused } else { ExitCode::FAILURE }
        }
    }
}

async fn run(command: Command, settings: &Settings, clock: Clock) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } => {
            let _log = telemetry::init(&settings.log_filter, settings.log_format);
            let app = Application::build_with_clock(settings, clock).await?;
            // Always listened for: SIGHUP's default would end the server (`systemctl reload`).
            let certificates = app.certificates();
            tokio::spawn(reload_on_hangup(move || match &certificates {
                Some(certificates) => {
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    certificates.reload_now();
                }
                None => tracing::info!("SIGHUP: nothing to reload (no TLS certificate)"),
            }));
            app.run_until(shutdown_signal()).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Config(ConfigCommand::Check { .. }) => config::check(settings),
        Command::Audit(args) => audit::run(args, settings).await,
        Command::Admin(args) => admin::run(args.command, settings, clock).await,
        Command::SigningKey(args) => signing_key::run(args.command, settings, clock).await,
        Command::Migrate { from, to } => migrate(&from, &to).await,
        Command::Backup(args) => backup::backup(args, settings).await,
        Command::Restore(args) => backup::restore(args, settings, clock).await,
        Command::Healthcheck(args) => healthcheck::run(args, settings).await,
    }
}

/// `keygate migrate`: the rows move as stored (hashes and sealed keys byte for byte), so
/// no secret is needed here, and the target works with the source's master key.
async fn migrate(from: &str, to: &str) -> anyhow::Result<()> {
    if from == to {
        anyhow::bail!("--from and --to name the same store");
    }
    // URLs are not echoed: they may carry a database password.
    let source = store::open_existing(from).await.context("cannot open the source store (--from)")?;
    let target = store::connect(to).await.context("cannot open the target store (--to)")?;
    let copied = store::copy(source.as_ref(), target.as_ref()).await.context("migration failed")?;
    // A SQLite target is then one whole file, which can be copied as it is.
    target.checkpoint().await.context("cannot write the target store's journal into it")?;
    println!("copied and verified {copied}");
    println!(
        "start keygate on the new store with the same KEYGATE_MASTER_KEY as before (for the embedded \
         default without one, the key is in <data dir>/master.key): it encrypts the signing keys and \
         keys the API password hashes"
    );
    Ok(())
}

/// Calls `reload` at each SIGHUP, for as long as the server runs.
async fn reload_on_hangup(reload: impl Fn()) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: a TLS certificate reloads only when its files change");
            return;
        };
        while hangups.recv().await.is_some() {
            reload();
        }
    }
    #[cfg(not(unix))]
    let _ = reload;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
