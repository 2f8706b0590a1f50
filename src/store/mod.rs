//! Persistence behind narrow traits, one implementation per backend, chosen once at
//! start-up from the database URL. Query methods never branch on the backend.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    crypto::{session::SessionHash, signing::SealedKey},
    domain::{AccountId, AccountName, ApiKeyId, Email, KeyRef},
};

mod security;
pub mod sqlite;

pub use security::{
    AuditAction, AuditEvent, AuditRecord, AuditScope, AuditStore, FailureCounter, FailureUpdate, LockoutStore,
};

/// Seconds since the Unix epoch. Integers compare the same way in every backend.
pub type UnixTime = i64;

pub fn now() -> UnixTime {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule refused the write; nothing was changed.
    #[error("already exists")]
    Conflict,
    /// The database cannot be reached or is too busy right now; worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A stored row does not parse back into a domain value.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::Database(ref db) if db.is_unique_violation() => Self::Conflict,
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => Self::Unavailable(e),
            // SQLite answers SQLITE_BUSY (5) / SQLITE_LOCKED (6) when another writer holds
            // the file past busy_timeout: transient, like a lost connection.
            E::Database(ref db) if matches!(db.code().as_deref(), Some("5" | "6")) => Self::Unavailable(e),
            other => Self::Other(other),
        }
    }
}

fn corrupt<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdminId(pub Uuid);

/// An admin to be created. The password is already an argon2 PHC string.
#[derive(Debug, Clone)]
pub struct NewAdmin {
    pub id: AdminId,
    pub email: Email,
    pub password_hash: String,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone)]
pub struct AdminRecord {
    pub id: AdminId,
    pub account_id: AccountId,
    pub email: Email,
    pub password_hash: String,
}

/// An API key as stored: never the password, only its keyed hash.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_ref: KeyRef,
    pub account_id: AccountId,
    pub api_key: ApiKeyId,
    pub secret_hash: Vec<u8>,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    pub key_ref: KeyRef,
    pub api_key: ApiKeyId,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub admin_id: AdminId,
    pub account_id: AccountId,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
    pub expires_at: UnixTime,
}

#[derive(Debug, Clone)]
pub struct SigningKeyRecord {
    pub key: SealedKey,
    pub created_at: UnixTime,
    /// When it stopped signing; `None` for the active key.
    pub retired_at: Option<UnixTime>,
}

#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Adds an admin to the named account, creating the account if it is new.
    /// `Conflict` if the email is taken (in any account).
    async fn create_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<AccountId>;
    /// Creates the account and admin only if the store has no admin at all, atomically,
    /// so that of several first starts exactly one succeeds. Returns whether it did.
    async fn bootstrap_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<bool>;
    async fn find_admin(&self, email: &Email) -> Result<Option<AdminRecord>>;
    async fn any_admin(&self) -> Result<bool>;
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// `Conflict` if the API key or ref already exists.
    async fn insert_key(&self, key: &KeyRecord) -> Result<()>;
    async fn find_key(&self, api_key: &ApiKeyId) -> Result<Option<KeyRecord>>;
    /// The account's keys, oldest first.
    async fn list_keys(&self, account: AccountId) -> Result<Vec<KeySummary>>;
    /// Deletes the key if it belongs to `account`; false when there is no such key there.
    async fn delete_key(&self, account: AccountId, key_ref: KeyRef) -> Result<bool>;
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_session(&self, hash: &SessionHash, session: &SessionRecord) -> Result<()>;
    async fn find_session(&self, hash: &SessionHash) -> Result<Option<SessionRecord>>;
    async fn touch_session(&self, hash: &SessionHash, now: UnixTime) -> Result<()>;
    /// Returns whether a session was deleted.
    async fn delete_session(&self, hash: &SessionHash) -> Result<bool>;
}

#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    /// All signing keys, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Stores `key` as the active key only if there is none, atomically: of several
    /// replicas starting at once, one key wins and all load it.
    async fn insert_first_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()>;
    /// Makes `key` the active key and retires the previous one, in one transaction.
    async fn rotate_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()>;
}

/// Everything the service needs from a backend.
#[async_trait]
pub trait Store: AdminStore + KeyStore + SessionStore + SigningKeyStore + LockoutStore + AuditStore {
    /// Cheap round trip, for readiness.
    async fn ping(&self) -> Result<()>;
}

/// Opens the backend named by `url` and brings its schema up to date.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Store>, ConnectError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else {
        Err(ConnectError::UnsupportedScheme)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL scheme (expected sqlite://…)")]
    UnsupportedScheme,
    #[error(transparent)]
    Store(#[from] StoreError),
}
