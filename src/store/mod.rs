//! Persistence behind narrow traits (this module and one file per concern: `admins`,
//! `audit`, `changes`, `lockout`, `paging`, `retention`, `transfer`), chosen once at start-up
//! from the database URL. Query methods never branch on the backend.
//!
//! One implementation serves both backends: `sql::SqlStore<D>`, generic over a `Dialect`
//! implemented for sqlx's `Sqlite` and `Postgres`, a file per concern in `sql/`. Each query
//! is written once, in PostgreSQL's form, and `sql!` renders SQLite's at compile time (it
//! drops the `::type` casts and `FOR UPDATE` clauses SQLite has no use for). What really
//! differs sits behind `sql/dialect.rs`: pool setup and migrations, how a writing
//! transaction begins and what it locks (`BEGIN IMMEDIATE`; advisory and table locks),
//! arrays (`IN (…)`; `ANY($1)`) and the change-log wake-up (polling; LISTEN/NOTIFY). Rows
//! are decoded once (`rows`). Adding a store method is one trait method and one
//! implementation.
//!
//! Why this way: monomorphised per backend, every query still runs on sqlx's native
//! driver and row type, so it costs what a hand-written backend's query does. sqlx's `Any`
//! driver would have made one concrete type, but converts every row it returns (listings
//! were measurably slower), has no uuid or array types and still needs the casts; a query
//! builder would build each statement's text at run time, and neither would remove the
//! dialect seam for locking.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    crypto::{session::SessionHash, signing::SealedKey},
    domain::{AccountId, AccountName, ApiKeyId, Email, KeyName, KeyRef, Limits, Metadata, OwnerId, Scopes},
};

mod admins;
mod audit;
pub mod cache;
mod changes;
mod limits;
mod lockout;
mod paging;
mod retention;
mod rows;
mod sql;
mod transfer;
mod usage;

pub use admins::{AdminDeletion, AdminManagementStore, AdminSummary};
pub use cache::{CachedStore, HotPath};
pub use changes::{Change, ChangeFeed, ChangeSignal};
pub use limits::{
    CounterStore, CounterTake, CreditScope, CreditStore, CreditTake, OwnerRecord, OwnerStore, Quota, QuotaCredits,
    QuotaLimit, StoredCredits, Taken, WhileLocked,
};
pub use paging::KeyPageStore;
pub use retention::RetentionStore;
pub use transfer::{
    AccountRecord, AdminExport, Counts, KeyExport, OwnerExport, SessionExport, Snapshot, TransferError, TransferStore,
    copy,
};
pub use usage::KeyUsageStore;

pub use audit::{AuditAction, AuditEvent, AuditRecord, AuditScope, AuditStore};
pub use lockout::{CounterUpdate, FailureCounter, LockoutStore};
pub(crate) use sql::{postgres, sqlite};

/// The stored times' type; the time itself comes from the caller's `Clock`.
pub use crate::clock::UnixTime;

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
    /// An import found rows already there; nothing was written.
    #[error("the target store is not empty")]
    NotEmpty,
    /// The file is not a keygate store (a backup, say): missing, or not keygate's schema.
    #[error("{0} is not a keygate store")]
    NotAStore(String),
    /// This store cannot do that; the text says what to do instead.
    #[error("{0}")]
    Unsupported(&'static str),
    /// Opening an existing store found none at this location (a path, or a database name).
    #[error(
        "no keygate store at {0}: start `keygate serve` with these settings once to create it, or point \
         KEYGATE_DATA_DIR or KEYGATE_DATABASE_URL at the existing one"
    )]
    NoStore(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::Database(ref db) if db.is_unique_violation() => Self::Conflict,
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => Self::Unavailable(e),
            E::Database(ref db) if db.code().as_deref().is_some_and(is_transient) => Self::Unavailable(e),
            other => Self::Other(other),
        }
    }
}

/// Database error codes that mean "not now" rather than "never": the same request may
/// succeed once the database is back or less busy. SQLite's are numeric result codes,
/// PostgreSQL's five-character SQLSTATEs, so one list serves both without asking which
/// backend answered.
fn is_transient(code: &str) -> bool {
    matches!(
        code,
        // SQLite: SQLITE_BUSY / SQLITE_LOCKED, another writer held the file past busy_timeout.
        "5" | "6"
        // PostgreSQL: the server is shutting down or restarting, or an operator ended the
        // session (pg_terminate_backend), or it cannot accept a connection yet.
        | "57P01" | "57P02" | "57P03"
        // The database refuses new connections (ALTER DATABASE … ALLOW_CONNECTIONS false,
        // as during maintenance). Our queries raise this code in no other case.
        | "55000"
        // statement_timeout cut a query short: the server is overloaded or a lock is stuck.
        | "57014"
        // Serialization failure and deadlock: retrying the transaction is the documented cure.
        | "40001" | "40P01"
    ) || code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources: too many connections, disk full
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

/// An API key as logins and verifications read it: never the password, only its keyed
/// hash. What only admins read (name, metadata, last use) is in `KeyDetails`.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_ref: KeyRef,
    pub account_id: AccountId,
    pub api_key: ApiKeyId,
    pub secret_hash: Vec<u8>,
    pub created_at: UnixTime,
    pub scopes: Scopes,
    /// `None`: never expires.
    pub expires_at: Option<UnixTime>,
    pub enabled: bool,
    /// The password before the last roll, while its grace period lasts.
    pub previous: Option<PreviousSecret>,
}

impl KeyRecord {
    /// Whether the key may log in, or its tokens pass, at `now`.
    pub fn is_usable(&self, now: UnixTime) -> bool {
        self.enabled && self.expires_at.is_none_or(|at| now < at)
    }
}

/// A rolled key's old password: it keeps logging in until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub hash: Vec<u8>,
    pub until: UnixTime,
}

/// What a new key carries besides its `KeyRecord`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAbout {
    pub name: Option<KeyName>,
    pub metadata: Option<Metadata>,
    /// The admin who generated it.
    pub created_by: Option<AdminId>,
    pub limits: Limits,
    pub owner: Option<OwnerId>,
    pub credits: Option<StoredCredits>,
}

/// A key as admins see it: no secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDetails {
    pub key_ref: KeyRef,
    pub api_key: ApiKeyId,
    pub name: Option<KeyName>,
    pub scopes: Scopes,
    pub created_at: UnixTime,
    pub expires_at: Option<UnixTime>,
    pub last_used_at: Option<UnixTime>,
    pub enabled: bool,
    /// The email of the admin who generated it, while that admin exists.
    pub created_by: Option<Email>,
    /// Read for one key, not for listings.
    pub metadata: Option<Metadata>,
    pub limits: Limits,
    pub owner: Option<OwnerId>,
    /// As stored: a single server's latest spending may not be written yet.
    pub credits: Option<StoredCredits>,
}

/// The changes `PATCH /auth/keys/{ref}` asks for; `None` leaves a field as it is, and an
/// inner `None` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    pub name: Option<Option<KeyName>>,
    pub scopes: Option<Scopes>,
    pub expires_at: Option<Option<UnixTime>>,
    pub metadata: Option<Option<Metadata>>,
    pub enabled: Option<bool>,
    pub limits: Option<Limits>,
    pub owner: Option<Option<OwnerId>>,
    pub credits: Option<CreditsChange>,
}

/// What a change does to a key's credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditsChange {
    /// This balance and refill from now on.
    Set(StoredCredits),
    /// A top-up of the current balance (refilled first, if its period is over).
    Add { amount: i64, period: i64, refill_amount: i64 },
    /// No credits any more.
    Clear,
}

/// What every token verification must know of its key, from the store or its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub account_id: AccountId,
    pub enabled: bool,
    pub expires_at: Option<UnixTime>,
    /// The key's scopes now: a token is worth no more than these, whatever it was issued with.
    pub scopes: Scopes,
    /// Its limits and credits, and its owner's; `None` when nothing limits it.
    pub quota: Option<std::sync::Arc<Quota>>,
}

impl KeyStatus {
    pub fn is_usable(&self, now: UnixTime) -> bool {
        self.enabled && self.expires_at.is_none_or(|at| now < at)
    }
}

impl From<&KeyRecord> for KeyStatus {
    fn from(key: &KeyRecord) -> Self {
        Self {
            account_id: key.account_id,
            enabled: key.enabled,
            expires_at: key.expires_at,
            scopes: key.scopes.clone(),
            quota: None,
        }
    }
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
    async fn insert_key(&self, key: &KeyRecord, about: &KeyAbout) -> Result<()>;
    async fn find_key(&self, api_key: &ApiKeyId) -> Result<Option<KeyRecord>>;
    /// Every key of every account, at most `limit`: what a cache loads to answer for all.
    async fn all_keys(&self, limit: u32) -> Result<Vec<KeyRecord>>;
    /// Deletes the key if it belongs to `account`; false when there is no such key there.
    async fn delete_key(&self, account: AccountId, key_ref: KeyRef) -> Result<bool>;
    /// Applies `update` to the key if it belongs to `account`, disabling it as of `now`;
    /// the key as it is afterwards, or `None` when there is no such key there.
    async fn update_key(
        &self,
        account: AccountId,
        key_ref: KeyRef,
        update: &KeyUpdate,
        now: UnixTime,
    ) -> Result<Option<KeyRecord>>;
    /// Gives the key the password hashed as `secret_hash`. The current one becomes the
    /// previous, logging in until `previous_until`, or ends at once when that is `None`;
    /// any older previous password ends at once either way.
    async fn roll_key(
        &self,
        account: AccountId,
        key_ref: KeyRef,
        secret_hash: &[u8],
        previous_until: Option<UnixTime>,
    ) -> Result<Option<KeyRecord>>;
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

/// A revoked access token (RFC 7009), remembered until the token would have expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub jti: String,
    /// The key the token was issued to, for the audit trail.
    pub key_ref: KeyRef,
    /// After this the token fails its `exp` check anyway, and the row may be purged.
    pub expires_at: UnixTime,
    pub revoked_at: UnixTime,
}

/// The look-up made for every token a gateway presents: is its key still there, and
/// usable? A point read by primary key.
#[async_trait]
pub trait KeyLookupStore: Send + Sync {
    /// The key `key_ref` as verification needs it while it exists; `None` once deleted.
    async fn key_status(&self, key_ref: KeyRef) -> Result<Option<KeyStatus>>;
}

/// Revoked token ids (`jti`), kept until the tokens expire.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Records a revocation. Revoking the same `jti` again changes nothing and is no error.
    async fn revoke_token(&self, revocation: &Revocation) -> Result<()>;
    async fn is_token_revoked(&self, jti: &str) -> Result<bool>;
    /// How many revocations with `expires_at > now` name the key `key_ref`, and how many name
    /// any key of `account`.
    async fn live_revocations_of(&self, key_ref: KeyRef, account: AccountId, now: UnixTime) -> Result<(u64, u64)>;
    /// Forgets revocations with `expires_at <= now`; returns how many.
    async fn purge_revocations(&self, now: UnixTime) -> Result<u64>;
}

/// Everything the service needs from a backend.
#[async_trait]
pub trait Store:
    AdminStore
    + AdminManagementStore
    + KeyStore
    + SessionStore
    + SigningKeyStore
    + TransferStore
    + KeyLookupStore
    + RevocationStore
    + LockoutStore
    + AuditStore
    + KeyPageStore
    + KeyUsageStore
    + ChangeFeed
    + RetentionStore
    + OwnerStore
    + CreditStore
    + CounterStore
{
    /// Cheap round trip, for readiness.
    async fn ping(&self) -> Result<()>;
    /// The connection pool right now, for the metrics.
    fn pool_state(&self) -> PoolState;
    /// Makes the store whole in its main file, for a copy of that file alone to hold
    /// everything: SQLite merges its write-ahead log in and empties it; PostgreSQL has
    /// nothing to do. The one checkpoint there is: at shutdown, and on a `migrate` target.
    async fn checkpoint(&self) -> Result<()>;
    /// A consistent copy of the whole store, written while others use it, into the new file
    /// `path` (the embedded store only).
    async fn backup_into(&self, path: &std::path::Path) -> Result<()>;
}

/// A pool's connections: open, and of those idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub open: u32,
    pub idle: u32,
}

/// The storage engines keygate runs on, told apart by the database URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file on local disk: the embedded default, for a single server.
    Sqlite,
    /// A shared server, for several stateless replicas.
    Postgres,
}

impl Backend {
    /// The backend a database URL names, if keygate has one for it.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// Opens the backend named by `url` and brings its schema up to date. This is the one
/// place that looks at the backend; everything after it talks to `dyn Store`.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Store>, ConnectError> {
    match Backend::of(url) {
        Some(Backend::Sqlite) => Ok(std::sync::Arc::new(sqlite::SqliteStore::connect(url).await?)),
        Some(Backend::Postgres) => Ok(std::sync::Arc::new(postgres::PgStore::connect(url).await?)),
        None => Err(ConnectError::UnsupportedScheme),
    }
}

/// Like `connect`, but refuses (with `StoreError::NoStore`) a location that holds no keygate
/// store yet, rather than creating one: for every command but `serve`, where a mistyped path
/// or URL must not become a fresh, empty store. An existing store is brought up to date.
pub async fn open_existing(url: &str) -> Result<std::sync::Arc<dyn Store>, ConnectError> {
    match Backend::of(url) {
        Some(Backend::Sqlite) => Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url, false).await?)),
        Some(Backend::Postgres) => Ok(std::sync::Arc::new(postgres::PgStore::open(url, false).await?)),
        None => Err(ConnectError::UnsupportedScheme),
    }
}

/// A backup file written by `Store::backup_into`, opened read-only and as it is (its schema
/// is not brought up to date): to count what it holds, check it, and restore it.
pub async fn open_backup(path: &std::path::Path) -> Result<std::sync::Arc<dyn Store>, ConnectError> {
    Ok(std::sync::Arc::new(sqlite::SqliteStore::open_backup(path).await?))
}

/// The file of a `sqlite://` database URL.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    (Backend::of(url) == Some(Backend::Sqlite)).then(|| options.get_filename().to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL scheme (expected sqlite://… or postgres://…)")]
    UnsupportedScheme,
    #[error(transparent)]
    Store(#[from] StoreError),
}
