//! Failed-login counters and the audit log on PostgreSQL (twin of `sqlite/security.rs`).

use async_trait::async_trait;
use sqlx::{Row, postgres::PgRow};

use super::{PgStore, audit_record};
use crate::store::{
    AuditEvent, AuditRecord, AuditScope, AuditStore, FailureCounter, FailureUpdate, LockoutStore, Result, UnixTime,
    corrupt,
};

fn counter(row: &PgRow) -> Result<FailureCounter> {
    let small = |col: &str| -> Result<u32> {
        let v: i32 = row.try_get(col)?;
        u32::try_from(v).map_err(corrupt("failure count"))
    };
    Ok(FailureCounter {
        failures: small("failures")?,
        strikes: small("strikes")?,
        last_failure_at: row.try_get("last_failure_at")?,
        locked_until: row.try_get("locked_until")?,
    })
}

fn small_int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[async_trait]
impl LockoutStore for PgStore {
    async fn failure_counters(&self, subjects: &[String]) -> Result<Vec<(String, FailureCounter)>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT subject, failures, strikes, last_failure_at, locked_until FROM login_failures WHERE subject = ANY($1)",
        )
        .bind(subjects)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("subject")?, counter(row)?))).collect()
    }

    async fn record_failure(&self, subject: &str, update: FailureUpdate<'_>) -> Result<FailureCounter> {
        // The row is created if missing, then locked (our insert holds its lock; otherwise
        // FOR UPDATE takes it), so replicas counting a failure for the same subject at once
        // serialise instead of both writing `n + 1`.
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO login_failures (subject, failures, strikes, last_failure_at, locked_until) \
             VALUES ($1, 0, 0, 0, 0) ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let current = if created {
            None
        } else {
            let row = sqlx::query(
                "SELECT failures, strikes, last_failure_at, locked_until FROM login_failures \
                 WHERE subject = $1 FOR UPDATE",
            )
            .bind(subject)
            .fetch_one(&mut *tx)
            .await?;
            Some(counter(&row)?)
        };
        let next = update(current);
        sqlx::query(
            "UPDATE login_failures SET failures = $2, strikes = $3, last_failure_at = $4, locked_until = $5 \
             WHERE subject = $1",
        )
        .bind(subject)
        .bind(small_int(next.failures))
        .bind(small_int(next.strikes))
        .bind(next.last_failure_at)
        .bind(next.locked_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn clear_failures(&self, subject: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE subject = $1").bind(subject).execute(&self.pool).await?;
        Ok(())
    }

    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM login_failures WHERE last_failure_at < $1 AND locked_until <= $2")
            .bind(idle_since)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// One audit row; also how `keygate migrate` writes the copied log, inside its transaction.
pub(super) async fn insert_audit<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    e: &AuditEvent,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, account_id, action, actor, source, target) VALUES ($1, $2::uuid, $3, $4, $5, $6)",
    )
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
impl AuditStore for PgStore {
    async fn append_audit(&self, e: &AuditEvent) -> Result<()> {
        insert_audit(&self.pool, e).await
    }

    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        const COLUMNS: &str = "l.id, l.at, l.account_id::text AS account_id, l.action, l.actor, l.source, l.target";
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::from(limit);
        let (sql, scope_value) = match scope {
            AuditScope::All => {
                (format!("SELECT {COLUMNS} FROM audit_log l WHERE l.id < $1 ORDER BY l.id DESC LIMIT $2"), None)
            }
            AuditScope::Account(account) => (
                format!(
                    "SELECT {COLUMNS} FROM audit_log l WHERE l.account_id = $3::uuid AND l.id < $1 \
                     ORDER BY l.id DESC LIMIT $2"
                ),
                Some(account.to_string()),
            ),
            AuditScope::AccountNamed(name) => (
                format!(
                    "SELECT {COLUMNS} FROM audit_log l JOIN accounts a ON a.id = l.account_id \
                     WHERE a.name = $3 AND l.id < $1 ORDER BY l.id DESC LIMIT $2"
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
