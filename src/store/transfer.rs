//! Moving a whole store from one backend to another (`keygate migrate`): each backend
//! exports a consistent snapshot of every table and imports one into an empty store, so
//! the copy needs no knowledge of either backend.
//!
//! Rows travel as they are stored: password hashes, key HMACs, session digests and sealed
//! signing keys are copied byte for byte, never opened. The target therefore works with the
//! same `KEYGATE_MASTER_KEY` as the source, and the copy itself needs no secret at all.

use std::fmt;

use async_trait::async_trait;

use super::{
    AuditEvent, KeyAbout, KeyRecord, NewAdmin, Result, Revocation, SessionRecord, SigningKeyRecord, Store, StoreError,
    UnixTime,
};
use crate::{
    crypto::session::SessionHash,
    domain::{AccountId, AccountName, OwnerId},
    store::OwnerRecord,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub id: AccountId,
    pub name: AccountName,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone)]
pub struct AdminExport {
    pub account_id: AccountId,
    pub admin: NewAdmin,
}

/// A key with everything stored about it.
#[derive(Debug, Clone)]
pub struct KeyExport {
    pub record: KeyRecord,
    pub about: KeyAbout,
    pub last_used_at: Option<UnixTime>,
    pub expiry_audited: bool,
    pub disabled_at: Option<UnixTime>,
}

/// An owner's limits and credits.
#[derive(Debug, Clone)]
pub struct OwnerExport {
    pub account_id: AccountId,
    pub owner: OwnerId,
    pub record: OwnerRecord,
    pub updated_at: UnixTime,
}

#[derive(Debug, Clone)]
pub struct SessionExport {
    pub hash: SessionHash,
    pub session: SessionRecord,
}

/// Every row of a store at one instant. Held in memory: even a large deployment's
/// accounts, admins and keys are megabytes, and one snapshot keeps the copy consistent.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub accounts: Vec<AccountRecord>,
    pub admins: Vec<AdminExport>,
    pub keys: Vec<KeyExport>,
    pub owners: Vec<OwnerExport>,
    pub sessions: Vec<SessionExport>,
    pub signing_keys: Vec<SigningKeyRecord>,
    /// Revoked tokens: copied so that a migration cannot bring a revoked token back.
    pub revocations: Vec<Revocation>,
    /// The audit log, oldest first: the record of what happened moves with the data.
    /// (Failed-login counters are not copied: they describe the last few minutes only.)
    pub audit: Vec<AuditEvent>,
}

impl Snapshot {
    pub fn counts(&self) -> Counts {
        Counts {
            accounts: self.accounts.len() as u64,
            admins: self.admins.len() as u64,
            keys: self.keys.len() as u64,
            owners: self.owners.len() as u64,
            sessions: self.sessions.len() as u64,
            signing_keys: self.signing_keys.len() as u64,
            revocations: self.revocations.len() as u64,
            audit: self.audit.len() as u64,
        }
    }
}

/// Rows per table, to verify a copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub accounts: u64,
    pub admins: u64,
    pub keys: u64,
    pub owners: u64,
    pub sessions: u64,
    pub signing_keys: u64,
    pub revocations: u64,
    pub audit: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.accounts
            + self.admins
            + self.keys
            + self.owners
            + self.sessions
            + self.signing_keys
            + self.revocations
            + self.audit
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accounts, {} admins, {} API keys, {} owners, {} sessions, {} signing keys, {} revoked tokens, {} audit \
             events",
            self.accounts,
            self.admins,
            self.keys,
            self.owners,
            self.sessions,
            self.signing_keys,
            self.revocations,
            self.audit
        )
    }
}

#[async_trait]
pub trait TransferStore: Send + Sync {
    /// Every row, read in one transaction so the snapshot is consistent.
    async fn export(&self) -> Result<Snapshot>;
    /// Writes `snapshot` in one transaction, refusing with `NotEmpty` (and writing nothing)
    /// if the store holds any row already.
    async fn import(&self, snapshot: &Snapshot) -> Result<()>;
    async fn counts(&self) -> Result<Counts>;
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the source store is empty: nothing to copy (check --from)")]
    EmptySource,
    #[error("the target store is not empty; migrate only into a fresh database")]
    TargetNotEmpty,
    #[error("copied {expected}, but the target holds {found}")]
    Mismatch { expected: Counts, found: Counts },
    #[error(
        "the source changed during the copy (is a server still running on it?): copied {copied}, source now has {now}"
    )]
    SourceChanged { copied: Counts, now: Counts },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for TransferError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotEmpty => Self::TargetNotEmpty,
            other => Self::Store(other),
        }
    }
}

/// Copies every row of `from` into the empty store `to`, then checks that both hold the
/// same number of rows per table. Returns the counts copied.
pub async fn copy(from: &dyn Store, to: &dyn Store) -> Result<Counts, TransferError> {
    let snapshot = from.export().await?;
    let expected = snapshot.counts();
    if expected.total() == 0 {
        return Err(TransferError::EmptySource);
    }
    to.import(&snapshot).await?;
    let found = to.counts().await?;
    if found != expected {
        return Err(TransferError::Mismatch { expected, found });
    }
    let now = from.counts().await?;
    if now != expected {
        return Err(TransferError::SourceChanged { copied: expected, now });
    }
    Ok(expected)
}
