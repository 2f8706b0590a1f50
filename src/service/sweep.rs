//! The periodic sweep: deletes what has outlived its use, so that no table grows with time
//! alone. Failed-login counters idle for a whole lockout window (locked ones stay), admin
//! sessions that have ended (absolute or idle expiry), and audit entries older than the
//! retention.
//!
//! Every server sweeps, and the sweeps of several replicas may meet: each deletion is a
//! condition on the row itself, so a row another sweep deleted first is neither deleted nor
//! counted again. (On PostgreSQL sessions and audit entries are claimed with SKIP LOCKED,
//! so two sweeps split them instead of waiting on each other.)

use std::{future::Future, time::Duration};

use super::{AuthService, Result};
use crate::store::{self, UnixTime};

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
}

impl AuthService {
    /// One sweep, judged at `now`.
    pub async fn sweep(&self, now: UnixTime) -> Result<Swept> {
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
        Ok(Swept { counters, sessions, audit })
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
    use std::sync::Arc;

    use super::*;
    use crate::{
        crypto::{
            AdminPasswordHasher, ApiPasswordHasher,
            signing::{KeyRing, KeySealer, SigningAlg},
        },
        service::{Policy, lockout::LockoutPolicy},
        store::{AuditAction, AuditEvent, AuditScope, sqlite::SqliteStore},
    };

    async fn service(dir: &tempfile::TempDir, audit_retention: Option<Duration>) -> AuthService {
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let sealer = KeySealer::new([2; 32]);
        let ring = KeyRing::new(&sealer, &sealer.generate(SigningAlg::Es256).unwrap(), &[]).unwrap();
        let policy = Policy {
            issuer: "https://keygate.test".into(),
            audience: "keygate".into(),
            token_ttl: 900,
            session_idle_timeout: 1_800,
            session_lifetime: 43_200,
            lockout: LockoutPolicy::default(),
            revocations: Default::default(),
            audit_retention,
        };
        AuthService::new(store, policy, ApiPasswordHasher::new([1; 32]), AdminPasswordHasher::new(1, 0), ring, sealer)
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
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let auth = service(&dir, Some(30 * day)).await;
        let now = 100 * 86_400;
        let cutoff = now - 30 * 86_400;
        audit_at(&auth, cutoff - 1, 2 * BATCH + 7).await;
        audit_at(&auth, cutoff, 3).await;
        let swept = auth.sweep(now).await.unwrap();
        assert_eq!(swept.audit, u64::from(2 * BATCH + 7));
        assert_eq!(audit_ats(&auth).await, [cutoff; 3]);
    }

    #[tokio::test]
    async fn without_a_retention_the_audit_log_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let auth = service(&dir, None).await;
        audit_at(&auth, 0, 5).await;
        assert_eq!(auth.sweep(100 * 86_400).await.unwrap(), Swept::default());
        assert_eq!(audit_ats(&auth).await.len(), 5);
    }
}
