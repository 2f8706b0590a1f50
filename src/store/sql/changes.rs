//! The change log, as the in-memory caches read it (`store::changes`).

use async_trait::async_trait;

use super::{Dialect, SqlStore, sql};
use crate::store::{Change, ChangeFeed, ChangeSignal, Result, UnixTime, changes::change_from_row, rows::Columns};

#[async_trait]
impl<D: Dialect> ChangeFeed for SqlStore<D> {
    async fn last_change(&self) -> Result<i64> {
        let row = D::query(sql!("SELECT max(seq) AS seq FROM cache_events")).fetch_one(&self.pool).await?;
        Ok(row.opt_int("seq")?.unwrap_or(0))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, Change)>> {
        let rows = D::query(sql!(
            "SELECT seq, kind, key_ref::text AS key_ref, api_key, jti, expires_at, subject FROM cache_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn live_revocations(&self, now: UnixTime) -> Result<Vec<(String, UnixTime)>> {
        let rows = D::query(sql!("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1"))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.text("jti")?, row.int("expires_at")?))).collect()
    }

    async fn purge_changes(&self, before: UnixTime) -> Result<u64> {
        D::query(sql!("DELETE FROM cache_events WHERE at < $1")).bind(before).execute(&self.pool).await
    }

    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>> {
        D::change_signal(&self.pool).await
    }
}
