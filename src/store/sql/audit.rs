//! The audit log: appended to, and read newest first within a scope.

use async_trait::async_trait;

use super::{Dialect, SqlStore, query::Exec, sql};
use crate::store::{AuditEvent, AuditRecord, AuditScope, AuditStore, Result, rows::audit_record};

/// What `rows::audit_record` reads, from `audit_log l`.
const AUDIT_COLUMNS: &str = "l.id, l.at, l.account_id::text AS account_id, l.action, l.actor, l.source, l.target";

/// One audit row; also how `keygate migrate` writes the copied log, inside its transaction.
pub(super) async fn insert_audit<D: Dialect>(on: Exec<'_, D>, e: &AuditEvent) -> Result<()> {
    D::query(sql!(
        "INSERT INTO audit_log (at, account_id, action, actor, source, target) VALUES ($1, $2::uuid, $3, $4, $5, $6)"
    ))
    .bind(e.at)
    .bind(e.account_id.map(|a| a.to_string()))
    .bind(e.action.as_str())
    .bind(&e.actor)
    .bind(&e.source)
    .bind(&e.target)
    .execute(on)
    .await?;
    Ok(())
}

#[async_trait]
impl<D: Dialect> AuditStore for SqlStore<D> {
    async fn append_audit(&self, e: &AuditEvent) -> Result<()> {
        insert_audit::<D>((&self.pool).into(), e).await
    }

    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        // Every scope binds `before` and `limit` first.
        let (sql, scope_value) = match scope {
            AuditScope::All => {
                (sql!("SELECT ", AUDIT_COLUMNS, " FROM audit_log l WHERE l.id < $1 ORDER BY l.id DESC LIMIT $2"), None)
            }
            AuditScope::Account(account) => (
                sql!(
                    "SELECT ",
                    AUDIT_COLUMNS,
                    " FROM audit_log l WHERE l.account_id = $3::uuid AND l.id < $1 ORDER BY l.id DESC LIMIT $2"
                ),
                Some(account.to_string()),
            ),
            AuditScope::AccountNamed(name) => (
                sql!(
                    "SELECT ",
                    AUDIT_COLUMNS,
                    " FROM audit_log l JOIN accounts a ON a.id = l.account_id \
                     WHERE a.name = $3 AND l.id < $1 ORDER BY l.id DESC LIMIT $2"
                ),
                Some(name.as_str().to_owned()),
            ),
        };
        let mut query = D::query(sql).bind(before.unwrap_or(i64::MAX)).bind(i64::from(limit));
        if let Some(value) = scope_value {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(audit_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        domain::{AccountId, AccountName},
        store::{AdminStore, AuditAction, AuditEvent, AuditScope, AuditStore, sqlite::SqliteStore},
    };

    #[tokio::test]
    async fn audit_pages_newest_first_within_scope() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::connect(&format!("sqlite://{}", dir.path().join("k.db").display())).await.unwrap();
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
