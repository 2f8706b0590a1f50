//! The audit log: security-relevant events, identifiers and addresses only.

use std::{fmt, str::FromStr};

use async_trait::async_trait;

use super::{Result, UnixTime};
use crate::domain::{AccountId, AccountName};

/// What happened. Stored as the text of `as_str`, which is also what the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    AdminLogin,
    AdminLoginFailed,
    AdminLogout,
    AdminCreated,
    KeyGenerated,
    KeyDeleted,
    Lockout,
    SigningKeyRotated,
    AdminPasswordChanged,
    /// `POST /auth/password` with a wrong current password (counted like a failed login).
    AdminPasswordChangeFailed,
    AdminDeleted,
    AdminSessionsRevoked,
    /// An operator cleared an identity's failed-login counter (`keygate admin unlock`).
    LockoutCleared,
    /// A key's name, scopes, expiry or metadata changed.
    KeyUpdated,
    KeyDisabled,
    KeyEnabled,
    /// A key got a new password; the old one lives on for the grace period.
    KeyRolled,
    /// A key's expiry passed (recorded by the sweep, by whichever server saw it first).
    KeyExpired,
    /// A key's limits, credits or owner changed.
    KeyLimitsChanged,
    /// An owner's limits or credits were set.
    OwnerLimitsChanged,
}

impl AuditAction {
    pub const ALL: [Self; 20] = [
        Self::AdminLogin,
        Self::AdminLoginFailed,
        Self::AdminLogout,
        Self::AdminCreated,
        Self::KeyGenerated,
        Self::KeyDeleted,
        Self::Lockout,
        Self::SigningKeyRotated,
        Self::AdminPasswordChanged,
        Self::AdminPasswordChangeFailed,
        Self::AdminDeleted,
        Self::AdminSessionsRevoked,
        Self::LockoutCleared,
        Self::KeyUpdated,
        Self::KeyDisabled,
        Self::KeyEnabled,
        Self::KeyRolled,
        Self::KeyExpired,
        Self::KeyLimitsChanged,
        Self::OwnerLimitsChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdminLogin => "admin.login",
            Self::AdminLoginFailed => "admin.login_failed",
            Self::AdminLogout => "admin.logout",
            Self::AdminCreated => "admin.created",
            Self::KeyGenerated => "key.generated",
            Self::KeyDeleted => "key.deleted",
            Self::Lockout => "lockout",
            Self::SigningKeyRotated => "signing_key.rotated",
            Self::AdminPasswordChanged => "admin.password_changed",
            Self::AdminPasswordChangeFailed => "admin.password_change_failed",
            Self::AdminDeleted => "admin.deleted",
            Self::AdminSessionsRevoked => "admin.sessions_revoked",
            Self::LockoutCleared => "lockout.cleared",
            Self::KeyUpdated => "key.updated",
            Self::KeyDisabled => "key.disabled",
            Self::KeyEnabled => "key.enabled",
            Self::KeyRolled => "key.rolled",
            Self::KeyExpired => "key.expired",
            Self::KeyLimitsChanged => "key.limits_changed",
            Self::OwnerLimitsChanged => "owner.limits_changed",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored action name this build does not know.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit action {0:?}")]
pub struct UnknownAuditAction(String);

impl FromStr for AuditAction {
    type Err = UnknownAuditAction;
    fn from_str(s: &str) -> Result<Self, UnknownAuditAction> {
        Self::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| UnknownAuditAction(s.to_owned()))
    }
}

/// One audit entry. Every field is an identifier or an address, never a secret: no
/// password, token, session id or hash ever reaches this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: UnixTime,
    /// The account it concerns; `None` for events that belong to none (a failed login for
    /// an unknown email, a signing-key rotation).
    pub account_id: Option<AccountId>,
    pub action: AuditAction,
    /// Who did it: `admin:<id>`, the email a login was attempted for, `cli`, `keygate`.
    pub actor: String,
    /// The client address, when it came over the network.
    pub source: Option<String>,
    /// What it was done to: a key ref, an admin email, a locked subject, a signing kid.
    pub target: Option<String>,
}

/// A stored audit entry: the event and its position in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Increases with every entry: the cursor for paging backwards.
    pub id: i64,
    pub event: AuditEvent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    All,
    Account(AccountId),
    AccountNamed(AccountName),
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, event: &AuditEvent) -> Result<()>;
    /// Entries of `scope` with an id below `before` (all when `None`), newest first, at
    /// most `limit`.
    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(a.as_str().parse::<AuditAction>(), Ok(a));
        }
        assert!("nope".parse::<AuditAction>().is_err());
    }
}
