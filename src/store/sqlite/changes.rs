//! The change log on SQLite, read by polling: there is no notification channel between
//! processes sharing a file, and a local query for "anything after n" costs microseconds.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::{Change, ChangeFeed, ChangeSignal, Result, UnixTime, changes::change_from_row};

#[async_trait]
impl ChangeFeed for SqliteStore {
    async fn last_change(&self) -> Result<i64> {
        let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM cache_events").fetch_one(&self.pool).await?;
        Ok(last.unwrap_or(0))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, Change)>> {
        let rows = sqlx::query(
            "SELECT seq, kind, key_ref, api_key, jti, expires_at, subject FROM cache_events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn live_revocations(&self, now: UnixTime) -> Result<Vec<(String, UnixTime)>> {
        Ok(sqlx::query_as("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > ?")
            .bind(now)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn purge_changes(&self, before: UnixTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM cache_events WHERE at < ?").bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>> {
        Ok(None)
    }
}
