//! `keygate backup` and `keygate restore`: a consistent copy of the embedded store, taken
//! while the server runs, and that copy put in place in an empty data directory.
//!
//! A backup holds what the store holds (password hashes, sealed signing keys), never the
//! master key: keep that apart from the backups, since together they are everything. The
//! PostgreSQL store is backed up with `pg_dump`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::{InputError, StoreArgs};
use crate::{bootstrap, clock::Clock, config::Settings, service, startup, store};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The file to write the copy to; it must not exist yet.
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to restore, a file written by `keygate backup`.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn backup(args: BackupArgs, settings: &Settings) -> anyhow::Result<()> {
    embedded_only(settings, "back up the PostgreSQL store with pg_dump")?;
    if args.to.symlink_metadata().is_ok() {
        return Err(InputError(format!("{} exists: a backup never overwrites a file", args.to.display())).into());
    }
    let store = startup::open_existing_store(settings).await?;
    store.backup_into(&args.to).await.with_context(|| format!("cannot write the backup {}", args.to.display()))?;
    // Counted in the copy itself, which is the store as of one instant.
    let counts = store::open_backup(&args.to).await?.counts().await?;
    println!("wrote {}: {counts}", args.to.display());
    println!(
        "the backup does not hold the master key: keep KEYGATE_MASTER_KEY (or {}) safe and apart from it; \
         a restore needs both",
        settings.data_dir.join("master.key").display()
    );
    Ok(())
}

pub async fn restore(args: RestoreArgs, settings: &Settings, clock: Clock) -> anyhow::Result<()> {
    embedded_only(settings, "restore the PostgreSQL store with pg_restore or psql")?;
    let target = store::sqlite_path(&settings.database_url)
        .ok_or_else(|| InputError("KEYGATE_DATABASE_URL names no SQLite file".into()))?;
    if !is_empty_dir(&settings.data_dir)? {
        return Err(InputError(format!(
            "{} is not empty: restore only into an empty (or new) data directory",
            settings.data_dir.display()
        ))
        .into());
    }
    if target.symlink_metadata().is_ok() {
        return Err(InputError(format!("{} exists: a restore never overwrites a store", target.display())).into());
    }
    let backup =
        store::open_backup(&args.from).await.with_context(|| format!("cannot read {}", args.from.display()))?;
    let counts = backup.counts().await?;
    // A master key given must be the backup's: with another, no signing key would open.
    if settings.master_key.is_some() {
        let master = bootstrap::master_key(settings)?;
        service::read_key_ring(backup.as_ref(), &startup::key_sealer(&master), settings.token_ttl, clock.now())
            .await
            .context("KEYGATE_MASTER_KEY does not open this backup's signing keys: give the master key of the store it was taken from")?;
    }
    bootstrap::create_private_dir(&settings.data_dir)?;
    backup.backup_into(&target).await.with_context(|| format!("cannot write {}", target.display()))?;
    drop(backup);
    // Opened as the server will open it: the schema brought up to date, the log merged.
    let restored = store::open_existing(&settings.database_url).await.context("cannot open the restored store")?;
    restored.checkpoint().await?;
    println!("restored {counts} into {}", target.display());
    if settings.master_key.is_none() {
        println!(
            "start keygate with the master key of the store the backup was taken from: set KEYGATE_MASTER_KEY, \
             or write it to {} (mode 0600)",
            settings.data_dir.join("master.key").display()
        );
    }
    Ok(())
}

fn embedded_only(settings: &Settings, instead: &str) -> Result<(), InputError> {
    if settings.is_embedded() {
        Ok(())
    } else {
        Err(InputError(format!("this command works on the embedded SQLite store; {instead}")))
    }
}

/// Whether `dir` is missing or holds nothing.
fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", dir.display()))),
    }
}
