//! PostgreSQL: the shared store behind several stateless replicas. Every replica keeps a
//! small pool; all state (admins, keys, sessions, signing keys) lives in the database, so
//! any replica can answer any request.
//!
//! Three rules make replicas safe together:
//! - start-up races are settled by the database, not by timing: migrations run under
//!   sqlx's advisory lock, and first-start writes under transaction-scoped advisory locks
//!   backed by unique indexes;
//! - nothing waits for long: connections are acquired with a short timeout and queries
//!   carry a `statement_timeout`, so an outage becomes a quick 503 instead of a hang;
//! - every multi-row write is one transaction, so a lost connection leaves no half record.
//!
//! Change-log readers are woken by LISTEN/NOTIFY: the trigger that writes the log also
//! notifies `keygate_cache`, so replicas read a change as soon as it commits.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Connection, PgConnection, Pool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};

use super::{
    SqlStore,
    dialect::{Dialect, Lock},
    lockout::SELECT_COUNTERS,
    query::{Exec, Run, Sql, sql},
};
use crate::store::{ChangeSignal, Result, StoreError};

/// How long a request may wait for a connection (including opening one) before it gets a
/// 503. Short, because a load balancer or client retry does better than a queue of stuck
/// requests while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Opening the connection that applies migrations at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per replica. N replicas need N times this below the server's `max_connections`.
const MAX_CONNECTIONS: u32 = 10;

/// Advisory lock ids (per database, so several keygate databases on one server do not
/// contend). Each serialises one kind of first-start write across replicas.
const BOOTSTRAP_ADMIN_LOCK: i64 = 0x6b67_0001; // "kg" 1
const SIGNING_KEY_LOCK: i64 = 0x6b67_0002; // "kg" 2

/// The channel the `keygate_cache_event` trigger notifies (migrations/postgres/0004_perf.sql).
const CHANNEL: &str = "keygate_cache";

impl Dialect for Postgres {
    fn text(sql: &'static Sql) -> &'static str {
        sql.postgres
    }

    async fn open(url: &str, create: bool) -> Result<Pool<Self>> {
        let mut options = PgConnectOptions::from_str(url)?;
        // Name our sessions in pg_stat_activity, unless the URL already does.
        if options.get_application_name().is_none() {
            options = options.application_name("keygate");
        }
        // The server's NOTICEs ("relation … already exists, skipping" from the migrator's
        // `CREATE TABLE IF NOT EXISTS`, at every start) are not news; warnings still are.
        options = options.options([("client_min_messages", "warning")]);

        // Migrations run on a connection of their own. sqlx's PostgreSQL migrator takes a
        // session-level advisory lock (pg_advisory_lock, keyed by the database name) around
        // its work, so replicas starting at once apply each migration exactly once and the
        // others wait. If a migration fails, closing this connection is what releases the
        // lock; a pooled connection would go back to the pool still holding it.
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))??;
        if !create {
            let migrated: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut conn).await?;
            if !migrated {
                conn.close().await?;
                // The database's name only: the URL may carry a password.
                let name = options.get_database().unwrap_or("(the user's default database)");
                return Err(StoreError::NoStore(format!("PostgreSQL database {name}")));
            }
        }
        // What `run` does on a connection, without its higher-ranked `Acquire` bound, through
        // which the compiler cannot see that this future is `Send`.
        static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
        MIGRATOR.run_direct(&mut conn).await?;
        conn.close().await?;

        let options = options.options([
            // A query stuck behind a lock or on an overloaded server fails instead of
            // holding a request (and a connection) indefinitely.
            ("statement_timeout", "10s"),
            // A replica that stalls mid-transaction cannot hold locks against the others.
            ("idle_in_transaction_session_timeout", "30s"),
        ]);
        Ok(PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // The default, said out loud: a pooled connection is checked before use, so
            // connections killed during an outage are replaced, not handed to a request.
            .test_before_acquire(true)
            .connect_with(options)
            .await?)
    }

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>> {
        // READ COMMITTED: each statement sees what was committed before it began. The
        // `Lock`s and row locks (`FOR UPDATE`) order the writers that must not interleave.
        Ok(pool.begin().await?)
    }

    async fn begin_snapshot(pool: &Pool<Self>) -> Result<Transaction<'static, Self>> {
        Ok(pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?)
    }

    async fn lock(tx: &mut Transaction<'static, Self>, lock: Lock<'_>) -> Result<()> {
        match lock {
            // Transaction-scoped advisory locks: held until commit or rollback, so they
            // cannot outlive the transaction even if the replica dies. Replicas starting
            // at once queue here; once the winner commits, the next one's reads see its
            // admin or key and it writes nothing. The unique index on the active signing
            // key is the backstop should anything ever write without the lock.
            Lock::Bootstrap | Lock::SigningKey => {
                let id = if matches!(lock, Lock::Bootstrap) { BOOTSTRAP_ADMIN_LOCK } else { SIGNING_KEY_LOCK };
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(id).execute(&mut **tx).await?;
            }
            // One advisory lock per subject, taken in one order (sorted), so replicas
            // counting for the same subjects at once serialise instead of both writing
            // `n + 1`, and never deadlock. Counters are not worth a synchronous commit: a
            // crash of the database loses at most its last fraction of a second of them.
            Lock::Counters(subjects) => {
                sqlx::query(
                    "SELECT set_config('synchronous_commit', 'off', true), \
                     (SELECT count(pg_advisory_xact_lock(k)) FROM \
                       (SELECT DISTINCT hashtextextended(s, 0) AS k FROM UNNEST($1::text[]) AS s ORDER BY k) AS ks)",
                )
                .bind(subjects)
                .execute(&mut **tx)
                .await?;
            }
            // Held to commit: a replica starting on this database meanwhile waits, then
            // finds the imported admin and signing key instead of creating its own; and no
            // second import can pass its emptiness check at the same time. The import may
            // be large: no statement timeout inside this one transaction.
            Lock::Store => {
                sqlx::query(
                    "LOCK TABLE accounts, admins, api_keys, sessions, signing_keys, revoked_tokens, audit_log \
                     IN EXCLUSIVE MODE",
                )
                .execute(&mut **tx)
                .await?;
                sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut **tx).await?;
            }
        }
        Ok(())
    }

    async fn counter_rows<'c>(on: Exec<'c, Self>, subjects: &'c [String]) -> Result<Vec<Self::Row>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let query = sqlx::query(Self::text(sql!(SELECT_COUNTERS, " WHERE subject = ANY($1)"))).bind(subjects);
        Self::fetch_all(query, on).await
    }

    async fn checkpoint(_: &Pool<Self>) -> Result<()> {
        // The server keeps its own files whole; a copy is `pg_dump`'s.
        Ok(())
    }

    async fn backup_into(_: &Pool<Self>, _: &std::path::Path) -> Result<()> {
        Err(StoreError::Unsupported(
            "keygate backup copies the embedded SQLite store; back PostgreSQL up with pg_dump, and keep the \
             master key (KEYGATE_MASTER_KEY) beside it",
        ))
    }

    async fn change_signal(pool: &Pool<Self>) -> Result<Option<Box<dyn ChangeSignal>>> {
        // Holds one of the pool's connections for as long as the signal lives.
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Box::new(Listener(listener))))
    }
}

struct Listener(PgListener);

#[async_trait]
impl ChangeSignal for Listener {
    async fn changed(&mut self) -> Result<()> {
        // `try_recv` answers `None` when the connection was lost (it reconnects and listens
        // again by itself): notifications may have been missed, so that is a wake-up too.
        self.0.try_recv().await?;
        Ok(())
    }
}

/// The store on this backend.
pub type PgStore = SqlStore<Postgres>;
