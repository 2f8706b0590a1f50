//! Failed-login counters and the audit log on SQLite.

use async_trait::async_trait;
use sqlx::{Row, sqlite::SqliteRow};

use super::{SqliteStore, account_id};
use crate::store::{
    AuditEvent, AuditRecord, AuditScope, AuditStore, FailureCounter, FailureUpdate, LockoutStore, Result, UnixTime,
    corrupt,
};

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
    })
}

#[async_trait]
impl LockoutStore for SqliteStore {
    async fn failure_counters(&self, subjects: &[String]) -> Result<Vec<(String, FailureCounter)>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; subjects.len()].join(", ");
        let sql = format!(
            "SELECT subject, failures, strikes, last_failure_at, locked_until FROM login_failures \
             WHERE subject IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql);
        for subject in subjects {
            query = query.bind(subject);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("subject")?, counter(row)?))).collect()
    }

    async fn record_failure(&self, subject: &str, update: FailureUpdate<'_>) -> Result<FailureCounter> {
        // IMMEDIATE takes the write lock before the read, so two replicas counting a failure
        // for the same subject at once serialise instead of both writing `n + 1`.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT failures, strikes, last_failure_at, locked_until FROM login_failures WHERE subject = ?",
        )
        .bind(subject)
        .fetch_optional(&mut *tx)
        .await?;
        let current = row.as_ref().map(counter).transpose()?;
        let next = update(current);
        sqlx::query(
            "INSERT INTO login_failures (subject, failures, strikes, last_failure_at, locked_until) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (subject) DO UPDATE SET failures = excluded.failures, strikes = excluded.strikes, \
             last_failure_at = excluded.last_failure_at, locked_until = excluded.locked_until",
        )
        .bind(subject)
        .bind(i64::from(next.failures))
        .bind(i64::from(next.strikes))
        .bind(next.last_failure_at)
        .bind(next.locked_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn clear_failures(&self, subject: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE subject = ?").bind(subject).execute(&self.pool).await?;
        Ok(())
    }

    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM login_failures WHERE last_failure_at < ? AND locked_until <= ?")
            .bind(idle_since)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn audit_record(row: &SqliteRow) -> Result<AuditRecord> {
    let account: Option<String> = row.try_get("account_id")?;
    let action: String = row.try_get("action")?;
    Ok(AuditRecord {
        id: row.try_get("id")?,
        event: AuditEvent {
            at: row.try_get("at")?,
            account_id: match account {
                Some(_) => Some(account_id(row, "account_id")?),
                None => None,
            },
            action: action.parse().map_err(|()| crate::store::StoreError::Corrupt(format!("audit action {action}")))?,
            actor: row.try_get("actor")?,
            source: row.try_get("source")?,
            target: row.try_get("target")?,
        },
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEvent) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, account_id, action, actor, source, target) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(e.at)
            .bind(e.account_id.map(|a| a.to_string()))
            .bind(e.action.as_str())
            .bind(&e.actor)
            .bind(&e.source)
            .bind(&e.target)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        const COLUMNS: &str = "l.id, l.at, l.account_id, l.action, l.actor, l.source, l.target";
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::from(limit);
        let rows =
            match scope {
                AuditScope::All => {
                    sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log l WHERE l.id < ? ORDER BY l.id DESC LIMIT ?"))
                        .bind(before)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
                AuditScope::Account(account) => sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM audit_log l WHERE l.account_id = ? AND l.id < ? ORDER BY l.id DESC LIMIT ?"
                ))
                .bind(account.to_string())
                .bind(before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                AuditScope::AccountNamed(name) => {
                    sqlx::query(&format!(
                        "SELECT {COLUMNS} FROM audit_log l JOIN accounts a ON a.id = l.account_id \
                     WHERE a.name = ? AND l.id < ? ORDER BY l.id DESC LIMIT ?"
                    ))
                    .bind(name.as_str())
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        rows.iter().map(audit_record).collect()
    }
}
