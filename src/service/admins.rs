//! Managing admins: creating them (the first one too, at a first start), recovering from a
//! lost password or a stolen session, and removing them. `AdminDirectory` is what the
//! operator's CLI and start-up call; a signed-in admin's own
//! password change (`POST /auth/password`) is `AuthService::change_password`, because it is
//! checked and counted like a login.

use std::sync::Arc;

use secrecy::SecretString;
use uuid::Uuid;

use super::{AdminSession, AuthError, AuthService, MAX_PASSWORD_LEN, Result, audit, lockout::Subject, login_subjects};
use crate::{
    clock::Clock,
    crypto::{AdminPasswordHasher, HashPoolError},
    domain::{AccountId, AccountName, AdminPassword, Email},
    store::{AdminDeletion, AdminId, AdminRecord, AdminSummary, AuditAction, NewAdmin, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no admin with email {0}")]
    NotFound(Email),
    #[error("an admin with email {0} already exists")]
    Exists(Email),
    #[error("{0} is the last admin of their account; create another admin there first")]
    LastOfAccount(Email),
    #[error(transparent)]
    Hashing(#[from] HashPoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The admins of every account, as the operator (the CLI, with the store's own rights)
/// manages them. Every change is audited with the actor `cli`.
pub struct AdminDirectory {
    store: Arc<dyn Store>,
    hasher: AdminPasswordHasher,
    clock: Clock,
}

impl AdminDirectory {
    pub fn new(store: Arc<dyn Store>, hasher: AdminPasswordHasher, clock: Clock) -> Self {
        Self { store, hasher, clock }
    }

    /// For one operator command, which hashes at most one password: one hashing thread.
    pub fn for_command(store: Arc<dyn Store>, clock: Clock) -> Self {
        Self::new(store, AdminPasswordHasher::new(1, 0), clock)
    }

    /// Whether the store has any admin at all.
    pub async fn any(&self) -> Result<bool, AdminError> {
        Ok(self.store.any_admin().await?)
    }

    /// Adds an admin to the named account, creating the account if it is new.
    pub async fn create(
        &self,
        email: &Email,
        account: &AccountName,
        password: AdminPassword,
    ) -> Result<AccountId, AdminError> {
        let admin = self.new_admin(email, password).await?;
        let account_id = match self.store.create_admin(account, &admin).await {
            Ok(id) => id,
            Err(StoreError::Conflict) => return Err(AdminError::Exists(email.clone())),
            Err(e) => return Err(e.into()),
        };
        self.audit(AuditAction::AdminCreated, Some(account_id), email.to_string()).await;
        Ok(account_id)
    }

    /// The first admin, in a new account: created only if the store has no admin at all,
    /// atomically, so that of several replicas starting at once exactly one does. Returns
    /// whether this call created it. Not audited: there is nobody yet to have done it.
    pub async fn create_first(
        &self,
        email: &Email,
        account: &AccountName,
        password: AdminPassword,
    ) -> Result<bool, AdminError> {
        let admin = self.new_admin(email, password).await?;
        Ok(self.store.bootstrap_admin(account, &admin).await?)
    }

    async fn new_admin(&self, email: &Email, password: AdminPassword) -> Result<NewAdmin, AdminError> {
        Ok(NewAdmin {
            id: AdminId(Uuid::new_v4()),
            email: email.clone(),
            password_hash: self.hasher.hash(password.into_secret()).await?,
            created_at: self.clock.now(),
        })
    }

    pub async fn list(&self, account: Option<&AccountName>) -> Result<Vec<AdminSummary>, AdminError> {
        Ok(self.store.list_admins(account).await?)
    }

    /// Sets a new password and ends every session of the admin: whoever knew the old one
    /// may be signed in. Returns how many sessions ended.
    pub async fn set_password(&self, email: &Email, password: AdminPassword) -> Result<u64, AdminError> {
        let admin = self.find(email).await?;
        let hash = self.hasher.hash(password.into_secret()).await?;
        let ended = self
            .store
            .set_admin_password(admin.id, &hash, None)
            .await?
            .ok_or_else(|| AdminError::NotFound(email.clone()))?;
        self.audit(AuditAction::AdminPasswordChanged, Some(admin.account_id), email.to_string()).await;
        Ok(ended)
    }

    /// Deletes the admin and their sessions, unless nobody else could manage their account.
    pub async fn delete(&self, email: &Email) -> Result<(), AdminError> {
        let admin = self.find(email).await?;
        match self.store.delete_admin(admin.id).await? {
            AdminDeletion::Deleted => {}
            AdminDeletion::NotFound => return Err(AdminError::NotFound(email.clone())),
            AdminDeletion::LastOfAccount => return Err(AdminError::LastOfAccount(email.clone())),
        }
        self.audit(AuditAction::AdminDeleted, Some(admin.account_id), email.to_string()).await;
        Ok(())
    }

    /// Ends every session of the admin, wherever it was opened. Returns how many.
    pub async fn revoke_sessions(&self, email: &Email) -> Result<u64, AdminError> {
        let admin = self.find(email).await?;
        let ended = self.store.delete_admin_sessions(admin.id).await?;
        self.audit(AuditAction::AdminSessionsRevoked, Some(admin.account_id), email.to_string()).await;
        Ok(ended)
    }

    /// Clears the failed-login counter of an admin email or an API key, ending its lock.
    /// Returns whether there was one. Audited either way: an operator acted.
    pub async fn unlock(&self, subject: &Subject) -> Result<bool, AdminError> {
        let key = subject.key();
        let had = !self.store.failure_counters(std::slice::from_ref(&key)).await?.is_empty();
        self.store.clear_failures(&key).await?;
        let account = match subject {
            Subject::Email(email) => self.store.find_admin(email).await?.map(|a| a.account_id),
            Subject::ApiKey(api_key) => self.store.find_key(api_key).await?.map(|k| k.account_id),
            Subject::Address(_) => None,
        };
        self.audit(AuditAction::LockoutCleared, account, key).await;
        Ok(had)
    }

    async fn find(&self, email: &Email) -> Result<AdminRecord, AdminError> {
        self.store.find_admin(email).await?.ok_or_else(|| AdminError::NotFound(email.clone()))
    }

    async fn audit(&self, action: AuditAction, account: Option<AccountId>, target: String) {
        let at = self.clock.now();
        audit::record(self.store.as_ref(), at, action, account, audit::CLI_ACTOR.to_owned(), None, Some(target)).await;
    }
}

impl AuthService {
    /// A signed-in admin changes their own password. The current one is checked on the
    /// argon2 pool and counted like a login (per email and per address, refused while
    /// locked), so a stolen session cannot be turned into the password by guessing. Every
    /// other session of the admin ends; the one making the change stays.
    pub async fn change_password(&self, session: &AdminSession, current: &str, new: AdminPassword) -> Result<()> {
        let admin = self.store.admin_by_id(session.admin_id).await?.ok_or(AuthError::NoSession)?;
        let subjects = login_subjects(Some(Subject::Email(admin.email.clone())), session.client);
        // Counted like a login, before the password is checked (see `lockout`).
        let attempt = self.admit(subjects, session.client).await?;
        let ok = if current.len() > MAX_PASSWORD_LEN {
            false
        } else {
            match self.admin_hasher.verify(Some(admin.password_hash.clone()), SecretString::from(current)).await {
                Ok(ok) => ok,
                Err(e) => return Err(attempt.abandon(e.into()).await),
            }
        };
        if !ok {
            tracing::info!(account = %admin.account_id, admin = %admin.id.0, "password change refused");
            self.audit_admin_action(session, AuditAction::AdminPasswordChangeFailed, Some(admin.email.to_string()))
                .await;
            return Err(match attempt.failed(Some(admin.account_id)).await {
                AuthError::InvalidCredentials => AuthError::WrongPassword,
                other => other,
            });
        }
        attempt.succeeded().await?;
        let hash = self.admin_hasher.hash(new.into_secret()).await?;
        let ended = self.store.set_admin_password(admin.id, &hash, Some(&session.hash)).await?;
        if ended.is_none() {
            // Deleted meanwhile: nothing changed, and this session is gone with it.
            return Err(AuthError::NoSession);
        }
        tracing::info!(account = %admin.account_id, admin = %admin.id.0, "admin password changed");
        self.audit_admin_action(session, AuditAction::AdminPasswordChanged, Some(admin.email.to_string())).await;
        Ok(())
    }
}
