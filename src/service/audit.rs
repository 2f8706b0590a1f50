//! The audit log: who did what, to what, from where. Admin logins (both outcomes),
//! logouts, key generation and deletion, lockouts, admin creation and signing-key rotation.
//!
//! Recording is best effort: the action it describes has already happened, so a failed
//! write is logged loudly rather than turned into an error for an action that succeeded.
//! Successful API logins are not audited: they are the hot path, and the token itself is
//! the record a gateway keeps. Failed ones are counted for lockout, and a lockout is
//! audited.

use crate::{
    crypto::signing::SigningAlg,
    domain::{AccountId, ClientAddr},
    store::{AdminId, AuditAction, AuditEvent, AuditStore, UnixTime},
};

/// Who did it, as the audit log names them.
pub fn admin_actor(admin: AdminId) -> String {
    format!("admin:{}", admin.0)
}

/// The actor for the command line, which runs with the store's own rights.
pub const CLI_ACTOR: &str = "cli";
/// The actor for what keygate does by itself (a lockout).
pub const SYSTEM_ACTOR: &str = "keygate";

/// Appends one event, which happened `at`, logging (never returning) a failure.
pub async fn record(
    store: &dyn AuditStore,
    at: UnixTime,
    action: AuditAction,
    account_id: Option<AccountId>,
    actor: String,
    source: Option<ClientAddr>,
    target: Option<String>,
) {
    let event = AuditEvent { at, account_id, action, actor, source: source.map(|s| s.to_string()), target };
    if let Err(e) = store.append_audit(&event).await {
        tracing::error!(error = %e, action = %action, "cannot write the audit log");
    }
}

/// For `keygate signing-key rotate`: records that `new_kid`, of `alg`, replaced `old_kid` `at`.
pub async fn record_signing_key_rotation(
    store: &dyn AuditStore,
    at: UnixTime,
    old_kid: Option<&str>,
    new_kid: &str,
    alg: SigningAlg,
) {
    let target = match old_kid {
        Some(old) => format!("{old} -> {new_kid} ({alg})"),
        None => format!("{new_kid} ({alg})"),
    };
    record(store, at, AuditAction::SigningKeyRotated, None, CLI_ACTOR.to_owned(), None, Some(target)).await;
}
