//! The periodic sweep: deletes what has outlived its use, so that no table grows with time
//! alone. Failed-login counters idle for a whole lockout window (locked ones stay), admin
//! sessions that have ended (absolute or idle expiry), and audit entries older than the
//! retention. It also reports keys whose expiry has passed to the audit log, once each.
//!
//! Every server sweeps, and the sweeps of several replicas may meet: each deletion is a
//! condition on the row itself, so a row another sweep deleted first is neither deleted nor
//! counted again. (On PostgreSQL sessions and audit entries are claimed with SKIP LOCKED,
//! so two sweeps split them instead of waiting on each other.)

use std::{future::Future, sync::Arc, time::Duration};

use super::{AuthService, Result};
use crate::store;

/// Rows deleted per statement: a batch holds SQLite's single write lock, or PostgreSQL's
/// row locks, only briefly, however many rows are due.
const BATCH: u32 = 1_000;
/// Between batches, so that logins waiting for the write lock get it.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How many rows one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub counters: u64,
    pub sessions: u64,
    pub audit: u64,
    /// Keys whose expiry was reported to the audit log.
    pub expired_keys: u64,
}

impl AuthService {
    /// One sweep, judged at the clock's time.
    pub async fn sweep(&self) -> Result<Swept> {
        let now = self.clock.now();
        let policy = &self.policy;
        let counters = self.hot.lockout.prune_failures(now - policy.lockout.window(), now).await?;
        let idle_since = now.saturating_sub(i64::try_from(policy.session_idle_timeout).unwrap_or(i64::MAX));
        let sessions = in_batches(|| self.store.delete_ended_sessions(now, idle_since, BATCH)).await?;
        let audit = match policy.audit_retention {
            Some(keep) => {
                let before = now.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
                in_batches(|| self.store.delete_audit_before(before, BATCH)).await?
            }
            None => 0,
        };
        let expired_keys = self.audit_expired_keys(BATCH).await?;
        Ok(Swept { counters, sessions, audit, expired_keys })
    }

    /// Sweeps every `every`, from the start on, so that counters, sessions and the audit log
    /// hold only what is still of use however long the server runs. Errors are logged and
    /// the sweep tried again next time.
    pub async fn keep_swept(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.sweep().await {
                Ok(swept) if swept.audit > 0 => {
                    tracing::info!(audit = swept.audit, sessions = swept.sessions, counters = swept.counters, "swept")
                }
                Ok(swept) => tracing::debug!(sessions = swept.sessions, counters = swept.counters, "swept"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep expired rows; retrying at the next sweep"),
            }
        }
    }
}

/// Repeats `delete` (one batch) until a batch comes back short; the total deleted.
async fn in_batches<F, Fut>(mut delete: F) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = store::Result<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = delete().await?;
        total += deleted;
        if deleted < u64::from(BATCH) {
            return Ok(total);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        service::{
            AuthError,
            testing::{ADMIN_EMAIL, ADMIN_PASSWORD, TestService, client, policy},
        },
        store::{AuditAction, AuditEvent, AuditScope, UnixTime},
    };

    async fn service(audit_retention: Option<Duration>) -> TestService {
        TestService::new(super::super::Policy { audit_retention, ..policy() }).await
    }

    async fn audit_at(auth: &AuthService, at: UnixTime, n: u32) {
        for _ in 0..n {
            let event = AuditEvent {
                at,
                account_id: None,
                action: AuditAction::AdminLogin,
                actor: "cli".into(),
                source: None,
                target: None,
            };
            auth.store().append_audit(&event).await.unwrap();
        }
    }

    async fn audit_ats(auth: &AuthService) -> Vec<UnixTime> {
        let rows = auth.store().audit_events(&AuditScope::All, None, 10_000).await.unwrap();
        rows.iter().map(|r| r.event.at).collect()
    }

    #[tokio::test]
    async fn one_sweep_deletes_every_expired_audit_entry_batch_after_batch() {
        let day = Duration::from_secs(86_400);
        let t = service(Some(30 * day)).await;
        let now = 100 * 86_400;
        let cutoff = now - 30 * 86_400;
        audit_at(&t.auth, cutoff - 1, 2 * BATCH + 7).await;
        audit_at(&t.auth, cutoff, 3).await;
        t.clock.set(now);
        let swept = t.auth.sweep().await.unwrap();
        assert_eq!(swept.audit, u64::from(2 * BATCH + 7));
        assert_eq!(audit_ats(&t.auth).await, [cutoff; 3]);
    }

    #[tokio::test]
    async fn without_a_retention_the_audit_log_stays_whole() {
        let t = service(None).await;
        audit_at(&t.auth, 0, 5).await;
        t.clock.set(100 * 86_400);
        assert_eq!(t.auth.sweep().await.unwrap(), Swept::default());
        assert_eq!(audit_ats(&t.auth).await.len(), 5);
    }

    #[tokio::test]
    async fn a_session_is_swept_once_idle_for_the_timeout_and_not_before() {
        let t = service(None).await;
        t.admin().await;
        let login = t.auth.admin_login(ADMIN_EMAIL, ADMIN_PASSWORD, None, client()).await.unwrap();
        let idle = t.auth.policy().session_idle_timeout;
        t.clock.advance(Duration::from_secs(idle - 1));
        assert_eq!(t.auth.sweep().await.unwrap().sessions, 0);
        t.clock.advance(Duration::from_secs(1));
        assert_eq!(t.auth.sweep().await.unwrap().sessions, 1);
        let token = secrecy::ExposeSecret::expose_secret(&login.token).to_owned();
        assert!(matches!(t.auth.session(&token, client()).await, Err(AuthError::NoSession)));
    }
}
