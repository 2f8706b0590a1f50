//! The store's change log, as the in-memory caches (`store::cache`) read it: every key
//! deletion or change and every revocation, in commit order, numbered. Triggers write it
//! (migrations `0004_perf.sql`), so nothing that changes the store can bypass it.

use async_trait::async_trait;

use super::{Result, UnixTime, rows::Columns};
use crate::domain::{ApiKeyId, KeyRef};

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key is gone: its logins and tokens must fail from now on.
    KeyDeleted { key_ref: KeyRef, api_key: ApiKeyId },
    /// A stored field of the key changed (nothing in keygate updates keys today; an
    /// operator's SQL might): cached copies are stale.
    KeyChanged { key_ref: KeyRef, api_key: ApiKeyId },
    /// A token was revoked until `expires_at`.
    TokenRevoked { jti: String, expires_at: UnixTime },
    /// An owner's limits or credits changed: every key's status may name them.
    OwnerChanged,
    /// A failed-login counter was cleared from outside the server (`keygate admin unlock`).
    FailuresCleared { subject: String },
    /// A row this version cannot read (written by a newer one, or by hand). A cache that
    /// meets one forgets every key it holds, which is always safe.
    Unreadable,
}

/// Reading the change log.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// The number of the newest change, 0 if there is none.
    async fn last_change(&self) -> Result<i64>;
    /// At most `limit` changes numbered after `after`, oldest first.
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, Change)>>;
    /// Every revocation still in force at `now`, as (jti, expires_at).
    async fn live_revocations(&self, now: UnixTime) -> Result<Vec<(String, UnixTime)>>;
    /// Forgets changes logged before `before`; returns how many.
    async fn purge_changes(&self, before: UnixTime) -> Result<u64>;
    /// Something that wakes a reader as soon as a change is committed, on backends that
    /// can (PostgreSQL: LISTEN); `None` where readers must poll. Only ever an early
    /// wake-up: the log itself is the truth, so a lost signal delays, never loses, a change.
    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>>;
}

/// A wake-up source from `ChangeFeed::change_signal`.
#[async_trait]
pub trait ChangeSignal: Send {
    /// Resolves when a change may have been committed. An error means the signal is
    /// broken; ask the feed for a new one.
    async fn changed(&mut self) -> Result<()>;
}

/// A log row (`seq, kind, key_ref, api_key, jti, expires_at, subject`) as its number and `Change`;
/// `Unreadable` when the columns do not parse.
pub(super) fn change_from_row(row: &impl Columns) -> Result<(i64, Change)> {
    let (key_ref, api_key) = (row.opt_text("key_ref")?, row.opt_text("api_key")?);
    let key = || Some((KeyRef::parse(key_ref.as_deref()?).ok()?, ApiKeyId::parse(api_key.as_deref()?).ok()?));
    let change = match row.text("kind")?.as_str() {
        "key_deleted" => key().map_or(Change::Unreadable, |(key_ref, api_key)| Change::KeyDeleted { key_ref, api_key }),
        "key_changed" => key().map_or(Change::Unreadable, |(key_ref, api_key)| Change::KeyChanged { key_ref, api_key }),
        "owner_changed" => Change::OwnerChanged,
        "failures_cleared" => {
            row.opt_text("subject")?.map_or(Change::Unreadable, |subject| Change::FailuresCleared { subject })
        }
        "token_revoked" => match (row.opt_text("jti")?, row.opt_int("expires_at")?) {
            (Some(jti), Some(expires_at)) => Change::TokenRevoked { jti, expires_at },
            _ => Change::Unreadable,
        },
        _ => Change::Unreadable,
    };
    Ok((row.int("seq")?, change))
}
