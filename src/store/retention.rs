//! Deleting what has outlived its use: admin sessions that have ended and audit entries past
//! their retention. (Idle failed-login counters: `LockoutStore::prune_failures`.)
//!
//! Each call deletes at most `limit` rows, so that one statement never holds the write lock
//! for long however large the table; the caller repeats it until less than `limit` go.

use async_trait::async_trait;

use super::{Result, UnixTime};

#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes at most `limit` sessions that have ended: past their absolute expiry at `now`
    /// (`expires_at <= now`), or last seen at or before `idle_since`. Returns how many.
    async fn delete_ended_sessions(&self, now: UnixTime, idle_since: UnixTime, limit: u32) -> Result<u64>;
    /// Deletes at most `limit` audit entries recorded before `before`; returns how many.
    async fn delete_audit_before(&self, before: UnixTime, limit: u32) -> Result<u64>;
}
