//! Failed-login counters, updated atomically across replicas.

use async_trait::async_trait;

use super::{Dialect, SqlStore, dialect::Lock, sql};
use crate::{
    clock::Clock,
    store::{CounterUpdate, FailureCounter, LockoutStore, Result, UnixTime, corrupt, rows::Columns},
};

/// The counters' query, without its condition. PostgreSQL keeps the counts as INTEGER:
/// widened here, so that one decoder reads both backends' rows.
pub(super) const SELECT_COUNTERS: &str = "SELECT subject, failures::bigint AS failures, strikes::bigint AS strikes, \
     last_failure_at, locked_until, in_flight::bigint AS in_flight, in_flight_at FROM login_failures";

fn counter(row: &impl Columns) -> Result<(String, FailureCounter)> {
    let small = |col: &str| -> Result<u32> { u32::try_from(row.int(col)?).map_err(corrupt("failure count")) };
    let counter = FailureCounter {
        failures: small("failures")?,
        strikes: small("strikes")?,
        last_failure_at: row.int("last_failure_at")?,
        locked_until: row.int("locked_until")?,
        in_flight: small("in_flight")?,
        in_flight_at: row.int("in_flight_at")?,
    };
    Ok((row.text("subject")?, counter))
}

/// A count as stored: PostgreSQL's INTEGER column bounds it.
fn stored(n: u32) -> i64 {
    i64::from(n.min(i32::MAX as u32))
}

#[async_trait]
impl<D: Dialect> LockoutStore for SqlStore<D> {
    async fn failure_counters(&self, subjects: &[String]) -> Result<Vec<(String, FailureCounter)>> {
        D::counter_rows((&self.pool).into(), subjects).await?.iter().map(counter).collect()
    }

    async fn all_failure_counters(&self, limit: u32) -> Result<Vec<(String, FailureCounter)>> {
        let rows = D::query(sql!(SELECT_COUNTERS, " LIMIT $1")).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(counter).collect()
    }

    async fn update_counters(&self, subjects: &[String], update: CounterUpdate<'_>) -> Result<Vec<FailureCounter>> {
        let mut tx = D::begin_write(&self.pool).await?;
        // Two processes counting for the same subject at once serialise instead of both
        // writing `n + 1`.
        D::lock(&mut tx, Lock::Counters(subjects)).await?;
        let rows = D::counter_rows((&mut tx).into(), subjects).await?;
        let rows = rows.iter().map(counter).collect::<Result<Vec<_>>>()?;
        let current: Vec<FailureCounter> =
            subjects.iter().map(|s| rows.iter().find(|(r, _)| r == s).map(|(_, c)| *c).unwrap_or_default()).collect();
        let next = update(&current);
        let mut changed = false;
        for ((subject, c), was) in subjects.iter().zip(&next).zip(&current) {
            if c == was {
                continue;
            }
            changed = true;
            if c.is_empty() {
                D::query(sql!("DELETE FROM login_failures WHERE subject = $1")).bind(subject).execute(&mut tx).await?;
                continue;
            }
            D::query(sql!(
                "INSERT INTO login_failures (subject, failures, strikes, last_failure_at, locked_until, in_flight, \
                 in_flight_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (subject) DO UPDATE SET failures = excluded.failures, strikes = excluded.strikes, \
                 last_failure_at = excluded.last_failure_at, locked_until = excluded.locked_until, \
                 in_flight = excluded.in_flight, in_flight_at = excluded.in_flight_at"
            ))
            .bind(subject)
            .bind(stored(c.failures))
            .bind(stored(c.strikes))
            .bind(c.last_failure_at)
            .bind(c.locked_until)
            .bind(stored(c.in_flight))
            .bind(c.in_flight_at)
            .execute(&mut tx)
            .await?;
        }
        if changed {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(next)
    }

    async fn clear_failures(&self, subject: &str) -> Result<()> {
        let mut tx = D::begin_write(&self.pool).await?;
        D::query(sql!("DELETE FROM login_failures WHERE subject = $1")).bind(subject).execute(&mut tx).await?;
        D::query(sql!("INSERT INTO cache_events (kind, subject, at) VALUES ('failures_cleared', $1, $2)"))
            .bind(subject)
            // Stamped by the wall clock, like the rows the triggers write: only their purge reads it.
            .bind(Clock::system().now())
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        D::query(sql!(
            "DELETE FROM login_failures WHERE last_failure_at < $1 AND locked_until <= $2 \
             AND (in_flight = 0 OR in_flight_at < $1)"
        ))
        .bind(idle_since)
        .bind(now)
        .execute(&self.pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{FailureCounter, LockoutStore, UnixTime, sqlite::SqliteStore};

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::connect(&format!("sqlite://{}", dir.path().join("k.db").display())).await.unwrap()
    }

    fn plus_one(current: &[FailureCounter]) -> Vec<FailureCounter> {
        current.iter().map(|c| FailureCounter { failures: c.failures + 1, ..*c }).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_failures_from_two_replicas_are_all_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(&dir).await, store(&dir).await);
        let mut tasks = Vec::new();
        for i in 0..40 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { s.update_counters(&["key:X".into()], &plus_one).await.unwrap() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let counters = a.failure_counters(&["key:X".into(), "key:Y".into()]).await.unwrap();
        assert_eq!(counters.len(), 1);
        assert_eq!(counters[0].1.failures, 40);
        b.clear_failures("key:X").await.unwrap();
        assert!(a.failure_counters(&["key:X".into()]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn prune_keeps_recent_and_locked_counters() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let at = |last: UnixTime, until: UnixTime| {
            move |_: &[FailureCounter]| {
                vec![FailureCounter { failures: 1, last_failure_at: last, locked_until: until, ..Default::default() }]
            }
        };
        s.update_counters(&["old".into()], &at(100, 0)).await.unwrap();
        s.update_counters(&["old-but-locked".into()], &at(100, 10_000)).await.unwrap();
        s.update_counters(&["recent".into()], &at(900, 0)).await.unwrap();
        // An attempt in flight keeps an old counter; one presumed lost does not.
        let in_flight = |at: UnixTime| {
            move |_: &[FailureCounter]| vec![FailureCounter { in_flight: 1, in_flight_at: at, ..Default::default() }]
        };
        s.update_counters(&["old-in-flight".into()], &in_flight(800)).await.unwrap();
        s.update_counters(&["old-lost-attempt".into()], &in_flight(100)).await.unwrap();
        assert_eq!(s.prune_failures(500, 1_000).await.unwrap(), 2);
        let subjects = ["old", "old-but-locked", "recent", "old-in-flight", "old-lost-attempt"].map(String::from);
        let left = s.failure_counters(&subjects).await.unwrap();
        assert_eq!(left.len(), 3);
        // An update to nothing removes the row.
        s.update_counters(&["recent".into()], &|_| vec![FailureCounter::default()]).await.unwrap();
        assert!(s.failure_counters(&["recent".into()]).await.unwrap().is_empty());
    }
}
