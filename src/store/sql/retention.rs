//! Sweeping ended sessions and old audit entries.
//!
//! Every replica sweeps. On PostgreSQL, SKIP LOCKED lets two sweeps that meet split the
//! rows between them instead of one waiting on the other's row locks (and perhaps
//! deadlocking with it): each row is deleted once, by whichever sweep locked it first.

use async_trait::async_trait;

use super::{Dialect, SqlStore, sql};
use crate::store::{Result, RetentionStore, UnixTime};

#[async_trait]
impl<D: Dialect> RetentionStore for SqlStore<D> {
    async fn delete_ended_sessions(&self, now: UnixTime, idle_since: UnixTime, limit: u32) -> Result<u64> {
        D::query(sql!(
            "DELETE FROM sessions WHERE id_hash IN \
             (SELECT id_hash FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2 \
              LIMIT $3 FOR UPDATE SKIP LOCKED)"
        ))
        .bind(now)
        .bind(idle_since)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
    }

    async fn delete_audit_before(&self, before: UnixTime, limit: u32) -> Result<u64> {
        D::query(sql!(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
        ))
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
    }
}
