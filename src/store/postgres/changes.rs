//! The change log on PostgreSQL, with LISTEN/NOTIFY as the wake-up: the trigger that
//! writes the log also notifies `keygate_cache`, so replicas read a change as soon as it
//! commits instead of at their next periodic read.

use async_trait::async_trait;
use sqlx::postgres::PgListener;

use super::PgStore;
use crate::store::{Change, ChangeFeed, ChangeSignal, Result, UnixTime, changes::change_from_row};

/// The channel the `keygate_cache_event` trigger notifies (migrations/postgres/0004_perf.sql).
const CHANNEL: &str = "keygate_cache";

#[async_trait]
impl ChangeFeed for PgStore {
    async fn last_change(&self) -> Result<i64> {
        let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM cache_events").fetch_one(&self.pool).await?;
        Ok(last.unwrap_or(0))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, Change)>> {
        let rows = sqlx::query(
            "SELECT seq, kind, key_ref::text AS key_ref, api_key, jti, expires_at, subject FROM cache_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn live_revocations(&self, now: UnixTime) -> Result<Vec<(String, UnixTime)>> {
        Ok(sqlx::query_as("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn purge_changes(&self, before: UnixTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM cache_events WHERE at < $1").bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>> {
        // Holds one of the pool's connections for as long as the signal lives.
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Box::new(Listener(listener))))
    }
}

struct Listener(PgListener);

#[async_trait]
impl ChangeSignal for Listener {
    async fn changed(&mut self) -> Result<()> {
        // `try_recv` answers `None` when the connection was lost (it reconnects and listens
        // again by itself): notifications may have been missed, so that is a wake-up too.
        self.0.try_recv().await?;
        Ok(())
    }
}
