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
//! One file per feature keeps this easy to extend: the core traits here, `transfer.rs` for
//! export and import.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{rows::*, *};

mod admins;
mod changes;
mod gateway;
mod paging;
mod retention;
mod security;
mod transfer;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(url, true).await
    }

    /// Connects to the database at `url` and brings its schema up to date. Without
    /// `create`, a database where keygate never ran (no migrations table) is `NoStore` and
    /// left empty: connecting never creates a database, but migrating would fill one.
    pub async fn open(url: &str, create: bool) -> Result<Self> {
        let mut options = PgConnectOptions::from_str(url)?;
        // Name our sessions in pg_stat_activity, unless the URL already does.
        if options.get_application_name().is_none() {
            options = options.application_name("keygate");
        }

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
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;

        let options = options.options([
            // A query stuck behind a lock or on an overloaded server fails instead of
            // holding a request (and a connection) indefinitely.
            ("statement_timeout", "10s"),
            // A replica that stalls mid-transaction cannot hold locks against the others.
            ("idle_in_transaction_session_timeout", "30s"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // The default, said out loud: a pooled connection is checked before use, so
            // connections killed during an outage are replaced, not handed to a request.
            .test_before_acquire(true)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }
}

/// Takes a transaction-scoped advisory lock: held until commit or rollback, so it cannot
/// outlive the transaction even if the replica dies.
async fn xact_lock(tx: &mut PgConnection, id: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(id).execute(&mut *tx).await?;
    Ok(())
}

async fn insert_account_admin(tx: &mut PgConnection, account: &AccountName, admin: &NewAdmin) -> Result<AccountId> {
    // ON CONFLICT DO NOTHING rather than look-then-insert: two admins created at once for
    // the same new account both end up in the one account instead of one failing.
    sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1::uuid, $2, $3) ON CONFLICT (name) DO NOTHING")
        .bind(AccountId::generate().to_string())
        .bind(account.as_str())
        .bind(admin.created_at)
        .execute(&mut *tx)
        .await?;
    let id: String = sqlx::query_scalar("SELECT id::text FROM accounts WHERE name = $1")
        .bind(account.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let account_id = AccountId::parse(&id).map_err(corrupt("account id"))?;
    sqlx::query(
        "INSERT INTO admins (id, account_id, email, password_hash, created_at) VALUES ($1::uuid, $2::uuid, $3, $4, $5)",
    )
    .bind(admin.id.0.to_string())
    .bind(account_id.to_string())
    .bind(admin.email.as_str())
    .bind(&admin.password_hash)
    .bind(admin.created_at)
    .execute(&mut *tx)
    .await?;
    Ok(account_id)
}

#[async_trait]
impl AdminStore for PgStore {
    async fn create_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<AccountId> {
        let mut tx = self.pool.begin().await?;
        let id = insert_account_admin(&mut tx, account, admin).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn bootstrap_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Replicas starting at once queue here. In READ COMMITTED each statement sees what
        // was committed before it began, so once the winner commits and releases the lock,
        // the next one's check below sees its admin and does nothing.
        xact_lock(&mut tx, BOOTSTRAP_ADMIN_LOCK).await?;
        let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM admins LIMIT 1").fetch_optional(&mut *tx).await?;
        if any.is_some() {
            return Ok(false);
        }
        insert_account_admin(&mut tx, account, admin).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn find_admin(&self, email: &Email) -> Result<Option<AdminRecord>> {
        let row = sqlx::query(
            "SELECT id::text AS id, account_id::text AS account_id, email, password_hash FROM admins WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(admin_record).transpose()
    }

    async fn any_admin(&self) -> Result<bool> {
        let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM admins LIMIT 1").fetch_optional(&self.pool).await?;
        Ok(any.is_some())
    }
}

#[async_trait]
impl KeyStore for PgStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_ref, account_id, api_key, secret_hash, created_at, scopes) \
             VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6)",
        )
        .bind(key.key_ref.to_string())
        .bind(key.account_id.to_string())
        .bind(key.api_key.as_str())
        .bind(&key.secret_hash)
        .bind(key.created_at)
        .bind(key.scopes.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_key(&self, api_key_id: &ApiKeyId) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(
            "SELECT key_ref::text AS key_ref, account_id::text AS account_id, api_key, secret_hash, created_at, scopes \
             FROM api_keys WHERE api_key = $1",
        )
        .bind(api_key_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_record).transpose()
    }

    async fn all_keys(&self, limit: u32) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(
            "SELECT key_ref::text AS key_ref, account_id::text AS account_id, api_key, secret_hash, created_at, scopes \
             FROM api_keys ORDER BY key_ref LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_record).collect()
    }

    async fn list_keys(&self, account: AccountId) -> Result<Vec<KeySummary>> {
        // The first page of the keyset listing, with no limit worth the name.
        Ok(self.list_keys_page(account, None, u32::MAX).await?.unwrap_or_default())
    }

    async fn delete_key(&self, account: AccountId, key_ref: KeyRef) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_keys WHERE key_ref = $1::uuid AND account_id = $2::uuid")
            .bind(key_ref.to_string())
            .bind(account.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn insert_session(&self, hash: &SessionHash, s: &SessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, admin_id, account_id, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6)",
        )
        .bind(hash.as_slice())
        .bind(s.admin_id.0.to_string())
        .bind(s.account_id.to_string())
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_session(&self, hash: &SessionHash) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT admin_id::text AS admin_id, account_id::text AS account_id, created_at, last_seen_at, expires_at \
             FROM sessions WHERE id_hash = $1",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_record).transpose()
    }

    async fn touch_session(&self, hash: &SessionHash, now: UnixTime) -> Result<()> {
        // GREATEST: replicas with slightly different clocks never move activity backwards.
        sqlx::query("UPDATE sessions SET last_seen_at = GREATEST(last_seen_at, $1) WHERE id_hash = $2")
            .bind(now)
            .bind(hash.as_slice())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, hash: &SessionHash) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(hash.as_slice()).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl SigningKeyStore for PgStore {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let rows = sqlx::query(
            "SELECT kid, alg, sealed_private, public_key, created_at, retired_at FROM signing_keys \
             ORDER BY retired_at IS NOT NULL, created_at DESC, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(signing_key).collect()
    }

    async fn insert_first_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The lock orders concurrent first starts; the unique index on the active key is
        // the backstop should anything ever write without it.
        xact_lock(&mut tx, SIGNING_KEY_LOCK).await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at) \
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
        )
        .bind(&key.kid)
        .bind(key.alg.as_str())
        .bind(&key.sealed_private)
        .bind(&key.public_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Without the lock, two rotations at once would both retire the old key and then
        // collide on the unique active-key index; with it they apply one after the other.
        xact_lock(&mut tx, SIGNING_KEY_LOCK).await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.kid)
        .bind(key.alg.as_str())
        .bind(&key.sealed_private)
        .bind(&key.public_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
