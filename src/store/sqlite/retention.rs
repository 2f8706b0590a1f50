//! Sweeping ended sessions and old audit entries on SQLite.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::{Result, RetentionStore, UnixTime};

#[async_trait]
impl RetentionStore for SqliteStore {
    async fn delete_ended_sessions(&self, now: UnixTime, idle_since: UnixTime, limit: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM sessions WHERE rowid IN \
             (SELECT rowid FROM sessions WHERE expires_at <= ? OR last_seen_at <= ? LIMIT ?)",
        )
        .bind(now)
        .bind(idle_since)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn delete_audit_before(&self, before: UnixTime, limit: u32) -> Result<u64> {
        let done = sqlx::query("DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < ? LIMIT ?)")
            .bind(before)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
