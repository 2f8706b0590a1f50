//! What the abuse defences keep in the store: failed-login counters (so a lockout holds
//! across replicas and restarts) and the audit log.

use std::{fmt, str::FromStr};

use async_trait::async_trait;

use super::{Result, UnixTime};
use crate::domain::{AccountId, AccountName};

/// Failed-login bookkeeping for one subject: an admin email, an API key or a client address.
/// A subject without a row reads as the default (all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureCounter {
    /// Failures counted towards the next lockout.
    pub failures: u32,
    /// Lockouts so far; each one lasts longer than the last, up to a cap.
    pub strikes: u32,
    pub last_failure_at: UnixTime,
    /// Until when logins for this subject are refused; in the past when not locked.
    pub locked_until: UnixTime,
    /// Attempts admitted whose secret is being checked right now.
    pub in_flight: u32,
    /// When the latest of those was admitted.
    pub in_flight_at: UnixTime,
}

impl FailureCounter {
    /// Nothing worth a row: no failure, no lock history, nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.failures == 0 && self.strikes == 0 && self.in_flight == 0
    }

    /// Only the attempts in flight: the counter with its failures and locks forgotten.
    pub fn attempts_only(self) -> Self {
        Self { in_flight: self.in_flight, in_flight_at: self.in_flight_at, ..Self::default() }
    }

    /// Without the attempts in flight: what outlives the process that runs them.
    pub fn without_attempts(self) -> Self {
        Self { in_flight: 0, in_flight_at: 0, ..self }
    }
}

/// The next counters of a set of subjects given their current ones, in the same order.
pub type CounterUpdate<'a> = &'a (dyn Fn(&[FailureCounter]) -> Vec<FailureCounter> + Send + Sync);

#[async_trait]
pub trait LockoutStore: Send + Sync {
    /// The counters of those of `subjects` that have one.
    async fn failure_counters(&self, subjects: &[String]) -> Result<Vec<(String, FailureCounter)>>;
    /// Every subject's counter, at most `limit`: what a cache loads to answer for all.
    async fn all_failure_counters(&self, limit: u32) -> Result<Vec<(String, FailureCounter)>>;
    /// Replaces the counters of `subjects` (distinct) with `update(current)`, atomically with
    /// respect to every other caller on every replica, and returns what was stored; an empty
    /// counter removes the row. The policy lives in the caller; the store only guarantees
    /// that no two updates of the same subject interleave. `update` may run more than once.
    async fn update_counters(&self, subjects: &[String], update: CounterUpdate<'_>) -> Result<Vec<FailureCounter>>;
    async fn clear_failures(&self, subject: &str) -> Result<()>;
    /// Deletes counters with no failure since `idle_since` that are not locked at `now` and
    /// hold no live attempt; returns how many. Keeps the table from growing with every
    /// address ever seen.
    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64>;
}

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
}

impl AuditAction {
    pub const ALL: [Self; 13] = [
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
