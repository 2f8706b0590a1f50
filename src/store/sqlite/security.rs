//! Failed-login counters and the audit log on SQLite.

use async_trait::async_trait;
use sqlx::{Row, sqlite::SqliteRow};

use super::{SqliteStore, audit_record};
use crate::store::{
    AuditEvent, AuditRecord, AuditScope, AuditStore, CounterUpdate, FailureCounter, LockoutStore, Result, UnixTime,
    corrupt,
};

const COUNTER_COLUMNS: &str = "subject, failures, strikes, last_failure_at, locked_until, in_flight, in_flight_at";

fn counter(row: &SqliteRow) -> Result<FailureCounter> {
    let small = |col: &str| -> Result<u32> {
        let v: i64 = row.try_get(col)?;
        u32::try_from(v).map_err(corrupt("failure count"))
    };
    Ok(FailureCounter {
        failures: small("failures")?,
        strikes: small("strikes")?,
        last_failure_at: row.try_get("last_failure_at")?,
        locked_until: row.try_get("locked_until")?,
        in_flight: small("in_flight")?,
        in_flight_at: row.try_get("in_flight_at")?,
    })
}

async fn select_counters<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    subjects: &[String],
) -> Result<Vec<(String, FailureCounter)>> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders = vec!["?"; subjects.len()].join(", ");
    let sql = format!("SELECT {COUNTER_COLUMNS} FROM login_failures WHERE subject IN ({placeholders})");
    let mut query = sqlx::query(&sql);
    for subject in subjects {
        query = query.bind(subject);
    }
    let rows = query.fetch_all(executor).await?;
    rows.iter().map(|row| Ok((row.try_get("subject")?, counter(row)?))).collect()
}

#[async_trait]
impl LockoutStore for SqliteStore {
    async fn failure_counters(&self, subjects: &[String]) -> Result<Vec<(String, FailureCounter)>> {
        select_counters(&self.pool, subjects).await
    }

    async fn all_failure_counters(&self, limit: u32) -> Result<Vec<(String, FailureCounter)>> {
        let rows = sqlx::query(&format!("SELECT {COUNTER_COLUMNS} FROM login_failures LIMIT ?"))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("subject")?, counter(row)?))).collect()
    }

    async fn update_counters(&self, subjects: &[String], update: CounterUpdate<'_>) -> Result<Vec<FailureCounter>> {
        // IMMEDIATE takes the write lock before the read, so two processes counting for the
        // same subject at once serialise instead of both writing `n + 1`.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = select_counters(&mut *tx, subjects).await?;
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
                sqlx::query("DELETE FROM login_failures WHERE subject = ?").bind(subject).execute(&mut *tx).await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO login_failures (subject, failures, strikes, last_failure_at, locked_until, in_flight, \
                 in_flight_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (subject) DO UPDATE SET failures = excluded.failures, strikes = excluded.strikes, \
                 last_failure_at = excluded.last_failure_at, locked_until = excluded.locked_until, \
                 in_flight = excluded.in_flight, in_flight_at = excluded.in_flight_at",
            )
            .bind(subject)
            .bind(i64::from(c.failures))
            .bind(i64::from(c.strikes))
            .bind(c.last_failure_at)
            .bind(c.locked_until)
            .bind(i64::from(c.in_flight))
            .bind(c.in_flight_at)
            .execute(&mut *tx)
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM login_failures WHERE subject = ?").bind(subject).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO cache_events (kind, subject, at) \
             VALUES ('failures_cleared', ?, CAST(strftime('%s', 'now') AS INTEGER))",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM login_failures WHERE last_failure_at < ? AND locked_until <= ? \
             AND (in_flight = 0 OR in_flight_at < ?)",
        )
        .bind(idle_since)
        .bind(now)
        .bind(idle_since)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// One audit row; also how `keygate migrate` writes the copied log, inside its transaction.
pub(super) async fn insert_audit<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    e: &AuditEvent,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (at, account_id, action, actor, source, target) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(e.at)
        .bind(e.account_id.map(|a| a.to_string()))
        .bind(e.action.as_str())
        .bind(&e.actor)
        .bind(&e.source)
        .bind(&e.target)
        .execute(executor)
        .await?;
    Ok(())
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEvent) -> Result<()> {
        insert_audit(&self.pool, e).await
    }

    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        const COLUMNS: &str = "l.id, l.at, l.account_id, l.action, l.actor, l.source, l.target";
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::from(limit);
        // Numbered parameters, so every scope binds `before` and `limit` first.
        let (sql, scope_value) = match scope {
            AuditScope::All => {
                (format!("SELECT {COLUMNS} FROM audit_log l WHERE l.id < ?1 ORDER BY l.id DESC LIMIT ?2"), None)
            }
            AuditScope::Account(account) => (
                format!(
                    "SELECT {COLUMNS} FROM audit_log l WHERE l.account_id = ?3 AND l.id < ?1 ORDER BY l.id DESC LIMIT ?2"
                ),
                Some(account.to_string()),
            ),
            AuditScope::AccountNamed(name) => (
                format!(
                    "SELECT {COLUMNS} FROM audit_log l JOIN accounts a ON a.id = l.account_id \
                     WHERE a.name = ?3 AND l.id < ?1 ORDER BY l.id DESC LIMIT ?2"
                ),
                Some(name.as_str().to_owned()),
            ),
        };
        let mut query = sqlx::query(&sql).bind(before).bind(limit);
        if let Some(value) = scope_value {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(audit_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{AccountId, AccountName},
        store::{AdminStore, AuditAction, UnixTime},
    };

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

    #[tokio::test]
    async fn audit_pages_newest_first_within_scope() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let admin = crate::store::NewAdmin {
            id: crate::store::AdminId(uuid::Uuid::new_v4()),
            email: crate::domain::Email::parse("a@b.io").unwrap(),
            password_hash: "x".into(),
            created_at: 1,
        };
        let account = s.create_admin(&AccountName::parse("acme").unwrap(), &admin).await.unwrap();
        let other = AccountId::generate();
        for i in 0..5 {
            for acc in [Some(account), Some(other), None] {
                let event = AuditEvent {
                    at: i,
                    account_id: acc,
                    action: AuditAction::KeyGenerated,
                    actor: "cli".into(),
                    source: None,
                    target: Some(format!("t{i}")),
                };
                s.append_audit(&event).await.unwrap();
            }
        }
        let mine = s.audit_events(&AuditScope::Account(account), None, 3).await.unwrap();
        assert_eq!(mine.iter().map(|r| r.event.at).collect::<Vec<_>>(), [4, 3, 2]);
        let rest = s.audit_events(&AuditScope::Account(account), Some(mine[2].id), 10).await.unwrap();
        assert_eq!(rest.iter().map(|r| r.event.at).collect::<Vec<_>>(), [1, 0]);
        assert!(rest.iter().all(|r| r.event.account_id == Some(account)));
        let named = s.audit_events(&AuditScope::AccountNamed(AccountName::parse("acme").unwrap()), None, 10).await;
        assert_eq!(named.unwrap().len(), 5);
        assert_eq!(s.audit_events(&AuditScope::All, None, 100).await.unwrap().len(), 15);
    }
}
