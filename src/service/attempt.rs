//! One login attempt's passage through the lockout: admitted (a place taken in each
//! subject's count) before its secret is checked, then ended as a success or a failure.
//! The rules are `lockout`'s; this is where they meet the store.

use std::sync::{Arc, Mutex};

use super::{
    AuthError, Result, audit,
    lockout::{LockoutPolicy, Subject},
};
use crate::{
    domain::{AccountId, ClientAddr},
    store::{self, AuditAction, FailureCounter, Store, StoreError},
};

/// An admitted attempt. End it with `succeeded`, `failed` or `abandon`; dropped without an
/// outcome (the request was cancelled, e.g. the client hung up mid-check), it counts as a
/// failure, so nobody gets a free guess by disconnecting.
pub(super) struct Attempt {
    end: Option<Ending>,
}

struct Ending {
    store: Arc<dyn Store>,
    policy: LockoutPolicy,
    subjects: Vec<Subject>,
    keys: Vec<String>,
    client: ClientAddr,
}

impl Attempt {
    /// Admits an attempt against `subjects`, or refuses it with `Locked` when any of them is
    /// locked or has no room for another attempt in flight.
    pub(super) async fn admit(
        store: &Arc<dyn Store>,
        policy: &LockoutPolicy,
        subjects: Vec<Subject>,
        client: ClientAddr,
    ) -> Result<Self> {
        let keys: Vec<String> = subjects.iter().map(Subject::key).collect();
        let now = store::now();
        // A plain read first: a subject that is locked, or full, now is refused at the cost
        // of that read alone (an attacker's usual case). Only an admission needs the
        // atomic update, which decides again on what it reads itself.
        let stored = store.failure_counters(&keys).await?;
        let current: Vec<FailureCounter> =
            keys.iter().map(|k| stored.iter().find(|(s, _)| s == k).map(|(_, c)| *c).unwrap_or_default()).collect();
        if let Err(retry_after) = policy.admit(&subjects, &current, now) {
            return Err(AuthError::Locked { retry_after });
        }
        let refused = Mutex::new(None);
        let update = |current: &[FailureCounter]| match policy.admit(&subjects, current, now) {
            Ok(next) => {
                *lock(&refused) = None;
                next
            }
            Err(wait) => {
                *lock(&refused) = Some(wait);
                current.to_vec()
            }
        };
        store.update_counters(&keys, &update).await?;
        if let Some(retry_after) = *lock(&refused) {
            return Err(AuthError::Locked { retry_after });
        }
        let end = Ending { store: store.clone(), policy: policy.clone(), subjects, keys, client };
        Ok(Self { end: Some(end) })
    }

    /// The secret was right: the places are given back and the identity's count cleared.
    pub(super) async fn succeeded(mut self) -> Result<()> {
        match self.end.take() {
            Some(end) => end.finish(false, None).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// The secret was wrong (or named nothing): counted against every subject, each lock it
    /// starts audited. The error to answer with: `Locked` when this failure locked a
    /// subject (so the caller learns the lock and its duration at once),
    /// `InvalidCredentials` otherwise. Either way the guess was wrong, so the difference
    /// reveals nothing about the password.
    pub(super) async fn failed(mut self, account: Option<AccountId>) -> AuthError {
        let Some(end) = self.end.take() else { return AuthError::InvalidCredentials };
        match end.finish(true, account).await {
            Ok(Some(retry_after)) => AuthError::Locked { retry_after },
            Ok(None) => AuthError::InvalidCredentials,
            Err(e) => e,
        }
    }

    /// The check itself could not be made (a store or hashing error): the places are given
    /// back without counting anything, and `error` is passed on.
    pub(super) async fn abandon(mut self, error: AuthError) -> AuthError {
        if let Some(end) = self.end.take() {
            if let Err(e) = end.release().await {
                tracing::warn!(error = %e, "cannot end a login attempt; its place lapses by itself");
            }
        }
        error
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(end) = self.end.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if let Err(e) = end.finish(true, None).await {
                tracing::warn!(error = %e, "cannot count an abandoned login attempt");
            }
        });
    }
}

impl Ending {
    /// Ends the attempt in every subject's count; with `failed`, audits each lock it started
    /// and returns the longest lock now in force.
    async fn finish(self, failed: bool, account: Option<AccountId>) -> Result<Option<u64>> {
        // One clock reading for the whole attempt, so the Retry-After we answer is exactly
        // the lock we stored.
        let now = store::now();
        // Which subjects this failure locked, judged on the rows as the store's transaction
        // saw them, so that of two replicas exactly one audits a lock.
        let started = Mutex::new(vec![false; self.subjects.len()]);
        let update = |current: &[FailureCounter]| {
            let mut started = lock(&started);
            self.subjects
                .iter()
                .zip(current)
                .zip(started.iter_mut())
                .map(|((subject, c), started)| {
                    let next = self.policy.finish(subject, *c, failed, now);
                    *started = c.locked_until <= now && next.locked_until > now;
                    next
                })
                .collect()
        };
        let next = self.store.update_counters(&self.keys, &update).await?;
        let started = lock(&started).clone();
        let mut longest = None;
        for (((subject, key), c), started) in self.subjects.iter().zip(&self.keys).zip(&next).zip(started) {
            if c.locked_until > now {
                longest = longest.max(Some(u64::try_from(c.locked_until - now).unwrap_or(1)));
            }
            if started {
                tracing::warn!(subject = %key, until = c.locked_until, "login lockout");
                let account = if subject.is_identity() { account } else { None };
                let store = self.store.as_ref();
                audit::record(
                    store,
                    AuditAction::Lockout,
                    account,
                    audit::SYSTEM_ACTOR.to_owned(),
                    Some(self.client),
                    Some(key.clone()),
                )
                .await;
            }
        }
        Ok(if failed { longest } else { None })
    }

    /// Gives the places back and counts nothing.
    async fn release(self) -> Result<(), StoreError> {
        let update = |current: &[FailureCounter]| {
            current.iter().map(|c| FailureCounter { in_flight: c.in_flight.saturating_sub(1), ..*c }).collect()
        };
        self.store.update_counters(&self.keys, &update).await.map(|_| ())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
