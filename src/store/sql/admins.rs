//! Admins and their accounts: creation, the first start's bootstrap, look-ups and the
//! recovery commands.

use async_trait::async_trait;
use sqlx::Transaction;

use super::{Dialect, SqlStore, dialect::Lock, query::Exec, sql};
use crate::{
    crypto::session::SessionHash,
    domain::{AccountId, AccountName, Email},
    store::{
        AdminDeletion, AdminId, AdminManagementStore, AdminRecord, AdminStore, AdminSummary, NewAdmin, Result,
        admins::admin_summary,
        rows::{Columns, account_id, admin_record},
    },
};

/// What `rows::admin_record` reads.
const ADMIN_COLUMNS: &str = "id::text AS id, account_id::text AS account_id, email, password_hash";

async fn insert_account_admin<D: Dialect>(
    tx: &mut Transaction<'static, D>,
    account: &AccountName,
    admin: &NewAdmin,
) -> Result<AccountId> {
    // ON CONFLICT DO NOTHING rather than look-then-insert: two admins created at once for
    // the same new account both end up in the one account instead of one failing.
    D::query(sql!(
        "INSERT INTO accounts (id, name, created_at) VALUES ($1::uuid, $2, $3) ON CONFLICT (name) DO NOTHING"
    ))
    .bind(AccountId::generate().to_string())
    .bind(account.as_str())
    .bind(admin.created_at)
    .execute(&mut *tx)
    .await?;
    let row = D::query(sql!("SELECT id::text AS id FROM accounts WHERE name = $1"))
        .bind(account.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let account_id = account_id(&row, "id")?;
    insert_admin::<D>(tx.into(), account_id, admin).await?;
    Ok(account_id)
}

/// One admin row; also how `keygate migrate` writes the copied admins.
pub(super) async fn insert_admin<D: Dialect>(on: Exec<'_, D>, account_id: AccountId, admin: &NewAdmin) -> Result<()> {
    D::query(sql!(
        "INSERT INTO admins (id, account_id, email, password_hash, created_at) \
         VALUES ($1::uuid, $2::uuid, $3, $4, $5)"
    ))
    .bind(admin.id.0.to_string())
    .bind(account_id.to_string())
    .bind(admin.email.as_str())
    .bind(&admin.password_hash)
    .bind(admin.created_at)
    .execute(on)
    .await?;
    Ok(())
}

#[async_trait]
impl<D: Dialect> AdminStore for SqlStore<D> {
    async fn create_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<AccountId> {
        let mut tx = D::begin_write(&self.pool).await?;
        let id = insert_account_admin(&mut tx, account, admin).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn bootstrap_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<bool> {
        let mut tx = D::begin_write(&self.pool).await?;
        D::lock(&mut tx, Lock::Bootstrap).await?;
        if D::query(sql!("SELECT 1 FROM admins LIMIT 1")).exists(&mut tx).await? {
            return Ok(false);
        }
        insert_account_admin(&mut tx, account, admin).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn find_admin(&self, email: &Email) -> Result<Option<AdminRecord>> {
        let row = D::query(sql!("SELECT ", ADMIN_COLUMNS, " FROM admins WHERE email = $1"))
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(admin_record).transpose()
    }

    async fn any_admin(&self) -> Result<bool> {
        D::query(sql!("SELECT 1 FROM admins LIMIT 1")).exists(&self.pool).await
    }
}

#[async_trait]
impl<D: Dialect> AdminManagementStore for SqlStore<D> {
    async fn list_admins(&self, account: Option<&AccountName>) -> Result<Vec<AdminSummary>> {
        let rows = D::query(sql!(
            "SELECT a.email, c.name AS account, a.created_at FROM admins a JOIN accounts c ON c.id = a.account_id \
             WHERE $1::text IS NULL OR c.name = $1 ORDER BY c.name, a.email"
        ))
        .bind(account.map(AccountName::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(admin_summary).collect()
    }

    async fn admin_by_id(&self, id: AdminId) -> Result<Option<AdminRecord>> {
        let row = D::query(sql!("SELECT ", ADMIN_COLUMNS, " FROM admins WHERE id = $1::uuid"))
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
        let mut tx = D::begin_write(&self.pool).await?;
        let updated = D::query(sql!("UPDATE admins SET password_hash = $1 WHERE id = $2::uuid"))
            .bind(password_hash)
            .bind(id.0.to_string())
            .execute(&mut tx)
            .await?;
        if updated == 0 {
            return Ok(None);
        }
        // No session id hashes to the empty string, so without `keep` every session goes.
        let ended = D::query(sql!("DELETE FROM sessions WHERE admin_id = $1::uuid AND id_hash <> $2"))
            .bind(id.0.to_string())
            .bind(keep.map_or(&[][..], |h| h.as_slice()))
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(Some(ended))
    }

    async fn delete_admin_sessions(&self, id: AdminId) -> Result<u64> {
        D::query(sql!("DELETE FROM sessions WHERE admin_id = $1::uuid"))
            .bind(id.0.to_string())
            .execute(&self.pool)
            .await
    }

    async fn delete_admin(&self, id: AdminId) -> Result<AdminDeletion> {
        let mut tx = D::begin_write(&self.pool).await?;
        // The account's row lock serialises deletions within one account, so two at once
        // cannot both count a colleague and leave the account with nobody.
        let account = D::query(sql!(
            "SELECT c.id::text AS id FROM accounts c JOIN admins a ON a.account_id = c.id WHERE a.id = $1::uuid \
             FOR UPDATE OF c"
        ))
        .bind(id.0.to_string())
        .fetch_optional(&mut tx)
        .await?;
        let Some(account) = account else { return Ok(AdminDeletion::NotFound) };
        let others =
            D::query(sql!("SELECT count(*) AS others FROM admins WHERE account_id = $1::uuid AND id <> $2::uuid"))
                .bind(account.text("id")?)
                .bind(id.0.to_string())
                .fetch_one(&mut tx)
                .await?;
        if others.int("others")? == 0 {
            return Ok(AdminDeletion::LastOfAccount);
        }
        // Sessions go by the foreign key's cascade too; said here so it holds without it.
        D::query(sql!("DELETE FROM sessions WHERE admin_id = $1::uuid"))
            .bind(id.0.to_string())
            .execute(&mut tx)
            .await?;
        let deleted =
            D::query(sql!("DELETE FROM admins WHERE id = $1::uuid")).bind(id.0.to_string()).execute(&mut tx).await?;
        if deleted == 0 {
            // Deleted by someone else between the look-up and now.
            return Ok(AdminDeletion::NotFound);
        }
        tx.commit().await?;
        Ok(AdminDeletion::Deleted)
    }
}
