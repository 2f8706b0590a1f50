//! Admin management on PostgreSQL.

use async_trait::async_trait;

use super::{PgStore, admin_record};
use crate::{
    crypto::session::SessionHash,
    domain::AccountName,
    store::{AdminDeletion, AdminId, AdminManagementStore, AdminRecord, AdminSummary, Result, admins::admin_summary},
};

#[async_trait]
impl AdminManagementStore for PgStore {
    async fn list_admins(&self, account: Option<&AccountName>) -> Result<Vec<AdminSummary>> {
        let rows = sqlx::query(
            "SELECT a.email, c.name AS account, a.created_at FROM admins a JOIN accounts c ON c.id = a.account_id \
             WHERE $1::text IS NULL OR c.name = $1 ORDER BY c.name, a.email",
        )
        .bind(account.map(AccountName::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(admin_summary).collect()
    }

    async fn admin_by_id(&self, id: AdminId) -> Result<Option<AdminRecord>> {
        let row = sqlx::query(
            "SELECT id::text AS id, account_id::text AS account_id, email, password_hash FROM admins \
             WHERE id = $1::uuid",
        )
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
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE admins SET password_hash = $1 WHERE id = $2::uuid")
            .bind(password_hash)
            .bind(id.0.to_string())
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        // No session id hashes to the empty string, so without `keep` every session goes.
        let ended = sqlx::query("DELETE FROM sessions WHERE admin_id = $1::uuid AND id_hash <> $2")
            .bind(id.0.to_string())
            .bind(keep.map_or(&[][..], |h| h.as_slice()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(ended.rows_affected()))
    }

    async fn delete_admin_sessions(&self, id: AdminId) -> Result<u64> {
        let ended = sqlx::query("DELETE FROM sessions WHERE admin_id = $1::uuid")
            .bind(id.0.to_string())
            .execute(&self.pool)
            .await?;
        Ok(ended.rows_affected())
    }

    async fn delete_admin(&self, id: AdminId) -> Result<AdminDeletion> {
        let mut tx = self.pool.begin().await?;
        // The account's row lock serialises deletions within one account, so two at once
        // cannot both count a colleague and leave the account with nobody.
        let account: Option<String> = sqlx::query_scalar(
            "SELECT c.id::text FROM accounts c JOIN admins a ON a.account_id = c.id WHERE a.id = $1::uuid \
             FOR UPDATE OF c",
        )
        .bind(id.0.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(account) = account else { return Ok(AdminDeletion::NotFound) };
        let others: i64 =
            sqlx::query_scalar("SELECT count(*) FROM admins WHERE account_id = $1::uuid AND id <> $2::uuid")
                .bind(&account)
                .bind(id.0.to_string())
                .fetch_one(&mut *tx)
                .await?;
        if others == 0 {
            return Ok(AdminDeletion::LastOfAccount);
        }
        // Sessions go by the foreign key's cascade too; said here so it holds without it.
        sqlx::query("DELETE FROM sessions WHERE admin_id = $1::uuid").bind(id.0.to_string()).execute(&mut *tx).await?;
        let deleted =
            sqlx::query("DELETE FROM admins WHERE id = $1::uuid").bind(id.0.to_string()).execute(&mut *tx).await?;
        if deleted.rows_affected() == 0 {
            // Deleted by someone else between the look-up and now.
            return Ok(AdminDeletion::NotFound);
        }
        tx.commit().await?;
        Ok(AdminDeletion::Deleted)
    }
}
