//! The command line: `keygate serve`, `keygate admin …`, `keygate signing-key …`,
//! `keygate audit`, `keygate migrate`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod admin;
mod audit;

use crate::{
    clock::Clock,
    config::{ConfigError, Settings, SettingsArgs},
    runtime,
    startup::Application,
    store, telemetry,
};

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "API keys in, signed JWTs out.")]
pub struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve,
    /// Manage admins.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Manage the JWT signing keys.
    #[command(subcommand)]
    SigningKey(signing_key::SigningKeyCommand),
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
}

mod signing_key;

/// Refused input (an argument, a password): exit code 2, as for a bad setting or flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub String);

pub fn main() -> ExitCode {
    // Everything keygate writes (the database and SQLite's own -wal and -shm files, the
    // master key, the first admin's password) is for this user alone, whatever the umask
    // it was started with.
    #[cfg(target_os = "linux")]
    rustix::process::umask(rustix::fs::Mode::RWXG | rustix::fs::Mode::RWXO);
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.settings, |name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime::build(settings.pin_workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one place the commands' time comes from.
    match runtime.block_on(run(cli.command, settings, Clock::system())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A setting only start-up can judge (the master key file) is a setting error too.
            let setting = e.is::<InputError>() || e.chain().any(|cause| cause.is::<ConfigError>());
            if setting { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

async fn run(command: Command, settings: Settings, clock: Clock) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let _log = telemetry::init(&settings.log_filter, settings.log_format);
            let app = Application::build_with_clock(&settings, clock).await?;
            app.run_until(shutdown_signal()).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Audit(args) => audit::run(args, &settings).await,
        Command::Admin(command) => admin::run(command, &settings, clock).await,
        Command::SigningKey(command) => signing_key::run(command, &settings, clock).await,
        Command::Migrate { from, to } => migrate(&from, &to).await,
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
    println!("copied and verified {copied}");
    println!(
        "start keygate on the new store with the same KEYGATE_MASTER_KEY as before (for the embedded \
         default without one, the key is in <data dir>/master.key): it encrypts the signing keys and \
         keys the API password hashes"
    );
    Ok(())
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
