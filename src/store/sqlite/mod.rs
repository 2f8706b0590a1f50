//! The embedded default: one SQLite file in WAL mode, so the CLI can add admins while the
//! server runs and readers never wait for the writer.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
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
pub struct SqliteStore {
    pool: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(url, true).await
    }

    /// Opens the store at `url`. Without `create`, a missing file, or one without keygate's
    /// schema, is `NoStore` and left as it was.
    pub async fn open(url: &str, create: bool) -> Result<Self> {
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
        MIGRATOR.run(&pool).await?;
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

async fn insert_account_admin(
    tx: &mut sqlx::SqliteConnection,
    account: &AccountName,
    admin: &NewAdmin,
) -> Result<AccountId> {
    let existing: Option<String> = sqlx::query_scalar("SELECT id FROM accounts WHERE name = ?")
        .bind(account.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let account_id = match existing {
        Some(id) => AccountId::parse(&id).map_err(corrupt("account id"))?,
        None => {
            let id = AccountId::generate();
            sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES (?, ?, ?)")
                .bind(id.to_string())
                .bind(account.as_str())
                .bind(admin.created_at)
                .execute(&mut *tx)
                .await?;
            id
        }
    };
    sqlx::query("INSERT INTO admins (id, account_id, email, password_hash, created_at) VALUES (?, ?, ?, ?, ?)")
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
impl AdminStore for SqliteStore {
    async fn create_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<AccountId> {
        // IMMEDIATE takes the write lock up front, so the account look-up and the inserts
        // see no interleaved writer.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let id = insert_account_admin(&mut tx, account, admin).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn bootstrap_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM admins LIMIT 1").fetch_optional(&mut *tx).await?;
        if any.is_some() {
            return Ok(false);
        }
        insert_account_admin(&mut tx, account, admin).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn find_admin(&self, email: &Email) -> Result<Option<AdminRecord>> {
        let row = sqlx::query("SELECT id, account_id, email, password_hash FROM admins WHERE email = ?")
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(admin_record).transpose()
    }

    async fn any_admin(&self) -> Result<bool> {
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM admins LIMIT 1").fetch_optional(&self.pool).await?;
        Ok(any.is_some())
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_ref, account_id, api_key, secret_hash, created_at, scopes) VALUES (?, ?, ?, ?, ?, ?)",
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
            "SELECT key_ref, account_id, api_key, secret_hash, created_at, scopes FROM api_keys WHERE api_key = ?",
        )
        .bind(api_key_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_record).transpose()
    }

    async fn all_keys(&self, limit: u32) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(
            "SELECT key_ref, account_id, api_key, secret_hash, created_at, scopes FROM api_keys ORDER BY key_ref LIMIT ?",
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
        let done = sqlx::query("DELETE FROM api_keys WHERE key_ref = ? AND account_id = ?")
            .bind(key_ref.to_string())
            .bind(account.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert_session(&self, hash: &SessionHash, s: &SessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, admin_id, account_id, created_at, last_seen_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
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
            "SELECT admin_id, account_id, created_at, last_seen_at, expires_at FROM sessions WHERE id_hash = ?",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_record).transpose()
    }

    async fn touch_session(&self, hash: &SessionHash, now: UnixTime) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?")
            .bind(now)
            .bind(hash.as_slice())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, hash: &SessionHash) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM sessions WHERE id_hash = ?").bind(hash.as_slice()).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl SigningKeyStore for SqliteStore {
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
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at) \
             SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
        )
        .bind(&key.kid)
        .bind(key.alg.as_str())
        .bind(&key.sealed_private)
        .bind(&key.public_key)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn rotate_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at) VALUES (?, ?, ?, ?, ?)",
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
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
