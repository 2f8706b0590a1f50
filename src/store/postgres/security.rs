//! Failed-login counters and the audit log on PostgreSQL (twin of `sqlite/security.rs`).

use async_trait::async_trait;
use sqlx::{Row, postgres::PgRow};

use super::{PgStore, audit_record};
use crate::store::{
    AuditEvent, AuditRecord, AuditScope, AuditStore, CounterUpdate, FailureCounter, LockoutStore, Result, UnixTime,
    corrupt,
};

const COUNTER_COLUMNS: &str = "subject, failures, strikes, last_failure_at, locked_until, in_flight, in_flight_at";

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
        in_flight: small("in_flight")?,
        in_flight_at: row.try_get("in_flight_at")?,
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
        let rows = sqlx::query(&format!("SELECT {COUNTER_COLUMNS} FROM login_failures WHERE subject = ANY($1)"))
            .bind(subjects)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("subject")?, counter(row)?))).collect()
    }

    async fn all_failure_counters(&self, limit: u32) -> Result<Vec<(String, FailureCounter)>> {
        let rows = sqlx::query(&format!("SELECT {COUNTER_COLUMNS} FROM login_failures LIMIT $1"))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("subject")?, counter(row)?))).collect()
    }

    async fn update_counters(&self, subjects: &[String], update: CounterUpdate<'_>) -> Result<Vec<FailureCounter>> {
        let mut tx = self.pool.begin().await?;
        // Every updater of a subject holds its advisory lock, taken in one order (sorted),
        // so replicas counting for the same subjects at once serialise instead of both
        // writing `n + 1`, and never deadlock. Counters are not worth a synchronous commit:
        // a crash of the database loses at most its last fraction of a second of them.
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true), \
             (SELECT count(pg_advisory_xact_lock(k)) FROM \
               (SELECT DISTINCT hashtextextended(s, 0) AS k FROM UNNEST($1::text[]) AS s ORDER BY k) AS ks)",
        )
        .bind(subjects)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(&format!("SELECT {COUNTER_COLUMNS} FROM login_failures WHERE subject = ANY($1)"))
            .bind(subjects)
            .fetch_all(&mut *tx)
            .await?;
        let rows: Vec<(String, FailureCounter)> =
            rows.iter().map(|row| Ok((row.try_get("subject")?, counter(row)?))).collect::<Result<_>>()?;
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
                sqlx::query("DELETE FROM login_failures WHERE subject = $1").bind(subject).execute(&mut *tx).await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO login_failures (subject, failures, strikes, last_failure_at, locked_until, in_flight, \
                 in_flight_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (subject) DO UPDATE SET failures = $2, strikes = $3, last_failure_at = $4, \
                 locked_until = $5, in_flight = $6, in_flight_at = $7",
            )
            .bind(subject)
            .bind(small_int(c.failures))
            .bind(small_int(c.strikes))
            .bind(c.last_failure_at)
            .bind(c.locked_until)
            .bind(small_int(c.in_flight))
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM login_failures WHERE subject = $1").bind(subject).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO cache_events (kind, subject, at) \
             VALUES ('failures_cleared', $1, extract(epoch FROM now())::bigint)",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM login_failures WHERE last_failure_at < $1 AND locked_until <= $2 \
             AND (in_flight = 0 OR in_flight_at < $1)",
        )
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
