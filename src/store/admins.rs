//! What admins need to recover: listing them, changing a password, ending sessions,
//! removing an admin (`keygate admin …`, `POST /auth/password`).

use async_trait::async_trait;

use super::{AdminId, AdminRecord, Result, UnixTime, corrupt, rows::Columns};
use crate::{
    crypto::session::SessionHash,
    domain::{AccountName, Email},
};

/// An admin as `keygate admin list` shows them: never the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSummary {
    pub email: Email,
    pub account: AccountName,
    pub created_at: UnixTime,
}

/// What `delete_admin` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDeletion {
    /// The admin and every session of theirs are gone.
    Deleted,
    NotFound,
    /// Refused: nobody could manage the account's keys any more.
    LastOfAccount,
}

#[async_trait]
pub trait AdminManagementStore: Send + Sync {
    /// Every admin, or those of one account, ordered by account name, then email.
    async fn list_admins(&self, account: Option<&AccountName>) -> Result<Vec<AdminSummary>>;
    async fn admin_by_id(&self, id: AdminId) -> Result<Option<AdminRecord>>;
    /// Replaces the admin's password hash and ends every session of theirs except `keep`,
    /// in one transaction: no session opened with the old password outlives the change.
    /// The number of sessions ended; `None` when there is no such admin.
    async fn set_admin_password(
        &self,
        id: AdminId,
        password_hash: &str,
        keep: Option<&SessionHash>,
    ) -> Result<Option<u64>>;
    /// Ends every session of the admin; returns how many there were.
    async fn delete_admin_sessions(&self, id: AdminId) -> Result<u64>;
    /// Deletes the admin with their sessions, unless they are the last admin of their
    /// account. Atomic with respect to concurrent deletions: two admins of a two-admin
    /// account deleted at once leave one.
    async fn delete_admin(&self, id: AdminId) -> Result<AdminDeletion>;
}

/// `email, account, created_at`.
pub(super) fn admin_summary(row: &impl Columns) -> Result<AdminSummary> {
    Ok(AdminSummary {
        email: Email::parse(&row.text("email")?).map_err(corrupt("email"))?,
        account: AccountName::parse(&row.text("account")?).map_err(corrupt("account name"))?,
        created_at: row.int("created_at")?,
    })
}
