//! What keys' use leaves behind: when each was last used, written in batches, and which
//! have expired since the sweep last looked.

use async_trait::async_trait;

use super::{Result, UnixTime};
use crate::domain::{AccountId, KeyRef};

#[async_trait]
pub trait KeyUsageStore: Send + Sync {
    /// Records each key's latest use, in one transaction; a time older than the one
    /// stored (another replica's later use) leaves it.
    async fn record_key_use(&self, uses: &[(KeyRef, UnixTime)]) -> Result<()>;
    /// The keys whose expiry has passed by `now` and was not reported yet, each reported
    /// once whichever replica asks: for the audit log.
    async fn take_expired_keys(&self, now: UnixTime, limit: u32) -> Result<Vec<(KeyRef, AccountId)>>;
}
