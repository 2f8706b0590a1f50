//! The embedded default: one SQLite file in WAL mode, so the CLI can add admins while the
//! server runs and readers never wait for the writer.
//!
//! One writer at a time holds the whole file: a transaction that writes takes that lock at
//! its start (`BEGIN IMMEDIATE`), so it needs no lock of its own, and change-log readers
//! poll, since processes sharing a file have no channel to notify each other on.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Pool, Sqlite, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    SqlStore,
    dialect::{Dialect, Lock},
    lockout::SELECT_COUNTERS,
    query::{Exec, Run, Sql, sql},
};
use crate::store::{ChangeSignal, Result, StoreError};

impl Dialect for Sqlite {
    fn text(sql: &'static Sql) -> &'static str {
        sql.sqlite
    }

    async fn open(url: &str, create: bool) -> Result<Pool<Self>> {
        let options = SqliteConnectOptions::from_str(url)?;
        let path = options.get_filename().to_owned();
        if !create && !path.exists() {
            return Err(StoreError::NoStore(path.display().to_string()));
        }
        let options = options
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable in WAL mode except for the last commits before a power cut.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // Before SQLite opens the file (it gives the -wal and -shm files it creates the
        // database file's mode, whatever the umask), and after, for the files it just made.
        keep_private(&path)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        keep_private(&path)?;
        if !create {
            let migrated: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                    .fetch_optional(&pool)
                    .await?;
            if migrated.is_none() {
                pool.close().await;
                return Err(StoreError::NoStore(path.display().to_string()));
            }
        }
        static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
        MIGRATOR.run(&pool).await?;
        Ok(pool)
    }

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>> {
        // IMMEDIATE takes the write lock up front, so what the transaction reads no other
        // writer changes before it commits.
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn begin_snapshot(pool: &Pool<Self>) -> Result<Transaction<'static, Self>> {
        // A read transaction in WAL mode sees one committed state throughout, even while
        // a server writes.
        Ok(pool.begin().await?)
    }

    async fn lock(_: &mut Transaction<'static, Self>, _: Lock<'_>) -> Result<()> {
        // `begin_write` already holds the only write lock there is.
        Ok(())
    }

    async fn counter_rows<'c>(on: Exec<'c, Self>, subjects: &'c [String]) -> Result<Vec<Self::Row>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        // SQLite binds no arrays: one placeholder per subject.
        let placeholders = vec!["?"; subjects.len()].join(", ");
        let sql = format!("{} WHERE subject IN ({placeholders})", Self::text(sql!(SELECT_COUNTERS)));
        let mut query = sqlx::query(&sql);
        for subject in subjects {
            query = query.bind(subject);
        }
        Self::fetch_all(query, on).await
    }

    async fn checkpoint(pool: &Pool<Self>) -> Result<()> {
        // TRUNCATE: every frame copied into the database file and the log emptied, so the
        // `.db` alone is the whole store. A reader elsewhere (the CLI) may hold frames back:
        // then SQLite reports busy, and the log stays for the next checkpoint to merge.
        let (busy, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(pool).await?;
        if busy != 0 {
            tracing::warn!(frames, copied, "the write-ahead log is not fully merged: another process is reading");
        }
        Ok(())
    }

    async fn backup_into(pool: &Pool<Self>, path: &std::path::Path) -> Result<()> {
        // One read transaction: the copy is the store as of one commit, whatever the server
        // writes meanwhile, and it is compacted and complete (no log of its own). SQLite
        // refuses to write into a file that exists and is not empty.
        let target = path.to_str().ok_or_else(|| {
            StoreError::Other(sqlx::Error::Protocol(format!("{} is not a UTF-8 path", path.display())))
        })?;
        sqlx::query("VACUUM INTO ?").bind(target).execute(pool).await?;
        Ok(())
    }

    async fn change_signal(_: &Pool<Self>) -> Result<Option<Box<dyn ChangeSignal>>> {
        Ok(None)
    }
}

impl SqlStore<Sqlite> {
    /// A backup file (`VACUUM INTO`'s), read-only and immutable: nothing is written beside
    /// it, not even a journal. `NotAStore` if it is not a keygate store.
    pub async fn open_backup(path: &std::path::Path) -> Result<Self> {
        if !path.is_file() {
            return Err(StoreError::NotAStore(path.display().to_string()));
        }
        let options = SqliteConnectOptions::new().filename(path).read_only(true).immutable(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
        let keygate: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                .fetch_optional(&pool)
                .await
                .map_err(|_| StoreError::NotAStore(path.display().to_string()))?;
        if keygate.is_none() {
            return Err(StoreError::NotAStore(path.display().to_string()));
        }
        Ok(Self { pool })
    }
}

/// Makes the database file and its -wal and -shm companions, those that exist, readable by
/// their owner alone: they hold admin password hashes, sealed keys and the audit log.
#[cfg(unix)]
fn keep_private(db: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let companion = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    for path in [db.to_owned(), companion("-wal"), companion("-shm")] {
        let mode = match std::fs::metadata(&path) {
            Ok(meta) => meta.permissions().mode() & 0o777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(private_error(&path, e)),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| private_error(&path, e))?;
            tracing::warn!(file = %path.display(), was = format!("{mode:o}"), "database file was open to other users: made it 0600");
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn keep_private(_db: &std::path::Path) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
fn private_error(path: &std::path::Path, e: std::io::Error) -> StoreError {
    let e = std::io::Error::new(e.kind(), format!("cannot make {} private (chmod 600): {e}", path.display()));
    StoreError::Other(sqlx::Error::Io(e))
}

/// The store on this backend.
pub type SqliteStore = SqlStore<Sqlite>;
