//! Admin management on SQLite.

use async_trait::async_trait;

use super::{SqliteStore, admin_record};
use crate::{
    crypto::session::SessionHash,
    domain::AccountName,
    store::{AdminDeletion, AdminId, AdminManagementStore, AdminRecord, AdminSummary, Result, admins::admin_summary},
};

#[async_trait]
impl AdminManagementStore for SqliteStore {
    async fn list_admins(&self, account: Option<&AccountName>) -> Result<Vec<AdminSummary>> {
        let rows = sqlx::query(
            "SELECT a.email, c.name AS account, a.created_at FROM admins a JOIN accounts c ON c.id = a.account_id \
             WHERE ?1 IS NULL OR c.name = ?1 ORDER BY c.name, a.email",
        )
        .bind(account.map(AccountName::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(admin_summary).collect()
    }

    async fn admin_by_id(&self, id: AdminId) -> Result<Option<AdminRecord>> {
        let row = sqlx::query("SELECT id, account_id, email, password_hash FROM admins WHERE id = ?")
            .bind(id.0.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(admin_record).transpose()
    }

    async fn set_admin_password(
        &self,
        id: AdminId,
        password_hash: &str,
        keep: Option<&SessionHash>,
    ) -> Result<Option<u64>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query("UPDATE admins SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(id.0.to_string())
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        // No session id hashes to the empty blob, so without `keep` every session goes.
        let ended = sqlx::query("DELETE FROM sessions WHERE admin_id = ? AND id_hash <> ?")
            .bind(id.0.to_string())
            .bind(keep.map_or(&[][..], |h| h.as_slice()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(ended.rows_affected()))
    }

    async fn delete_admin_sessions(&self, id: AdminId) -> Result<u64> {
        let ended =
            sqlx::query("DELETE FROM sessions WHERE admin_id = ?").bind(id.0.to_string()).execute(&self.pool).await?;
        Ok(ended.rows_affected())
    }

    async fn delete_admin(&self, id: AdminId) -> Result<AdminDeletion> {
        // IMMEDIATE: the count and the deletion see no interleaved writer, so two deletions
        // at once cannot both find a colleague and leave the account with nobody.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let others: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM admins o WHERE o.account_id = a.account_id AND o.id <> a.id) \
             FROM admins a WHERE a.id = ?",
        )
        .bind(id.0.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        match others {
            None => return Ok(AdminDeletion::NotFound),
            Some(0) => return Ok(AdminDeletion::LastOfAccount),
            Some(_) => {}
        }
        // Sessions go by the foreign key's cascade too; said here so it holds without it.
        sqlx::query("DELETE FROM sessions WHERE admin_id = ?").bind(id.0.to_string()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM admins WHERE id = ?").bind(id.0.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(AdminDeletion::Deleted)
    }
}
