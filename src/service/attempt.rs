//! One login attempt's passage through the lockout: admitted (a place taken in each
//! subject's count) before its secret is checked, then ended as a success or a failure.
//! The rules are `lockout`'s; this is where they meet the store.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::{
    AuthError, Result, audit,
    lockout::{BUSY_RETRY_AFTER, LockoutPolicy, Refusal, Subject},
};
use crate::{
    clock::Clock,
    domain::{AccountId, ClientAddr},
    store::{AuditAction, AuditStore, FailureCounter, LockoutStore, Store, StoreError, UnixTime},
};

/// An admitted attempt. End it with `succeeded`, `failed` or `abandon`; dropped without an
/// outcome (the request was cancelled, e.g. the client hung up mid-check), it counts as a
/// failure, so nobody gets a free guess by disconnecting.
pub(super) struct Attempt {
    end: Option<Ending>,
}

struct Ending {
    counters: Arc<dyn LockoutStore>,
    audit: Arc<dyn AuditStore>,
    policy: LockoutPolicy,
    clock: Clock,
    ended: Arc<Notify>,
    subjects: Vec<Subject>,
    keys: Vec<String>,
    client: ClientAddr,
}

/// How long an attempt waits for a place before it is refused.
const ADMISSION_WAIT: Duration = Duration::from_secs(5);
/// The longest pause between two looks at a full count: places taken on other replicas
/// are given back without a word to this one.
const MAX_PAUSE: Duration = Duration::from_millis(50);

impl Attempt {
    /// Admits an attempt against `subjects`: at once when each has room, after waiting for
    /// a place when one is full of attempts in flight, and never while one is locked (then
    /// `Locked`). `ended` is notified whenever an attempt of this process ends. Counted in
    /// `counters`; each lock it starts is audited in `audit`.
    pub(super) async fn admit(
        counters: &Arc<dyn LockoutStore>,
        audit: &Arc<dyn Store>,
        policy: &LockoutPolicy,
        clock: &Clock,
        ended: &Arc<Notify>,
        subjects: Vec<Subject>,
        client: ClientAddr,
    ) -> Result<Self> {
        let keys: Vec<String> = subjects.iter().map(Subject::key).collect();
        let deadline = Instant::now() + ADMISSION_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            // Registered before looking, so that an end between the look and the wait wakes us.
            let notified = ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match try_admit(counters.as_ref(), policy, clock.now(), &subjects, &keys).await? {
                Ok(()) => {
                    let end = Ending {
                        counters: counters.clone(),
                        audit: audit.clone(),
                        policy: policy.clone(),
                        clock: clock.clone(),
                        ended: ended.clone(),
                        subjects,
                        keys,
                        client,
                    };
                    return Ok(Self { end: Some(end) });
                }
                Err(Refusal::Locked(retry_after)) => return Err(AuthError::Locked { retry_after }),
                Err(Refusal::Busy) if Instant::now() >= deadline => {
                    return Err(AuthError::Locked { retry_after: BUSY_RETRY_AFTER });
                }
                Err(Refusal::Busy) => {}
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
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
        let now = self.clock.now();
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
        let next = self.counters.update_counters(&self.keys, &update).await?;
        self.ended.notify_waiters();
        let started = lock(&started).clone();
        let mut longest = None;
        for (((subject, key), c), started) in self.subjects.iter().zip(&self.keys).zip(&next).zip(started) {
            if c.locked_until > now {
                longest = longest.max(Some(u64::try_from(c.locked_until - now).unwrap_or(1)));
            }
            if started {
                tracing::warn!(subject = %key, until = c.locked_until, "login lockout");
                metrics::counter!(crate::monitoring::LOCKOUTS).increment(1);
                let account = if subject.is_identity() { account } else { None };
                audit::record(
                    self.audit.as_ref(),
                    now,
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
        self.counters.update_counters(&self.keys, &update).await?;
        self.ended.notify_waiters();
        Ok(())
    }
}

/// One look, at `now`: admitted (a place taken in every subject's count), or why not. A
/// plain read first: a subject locked or full is refused at the cost of that read alone (an
/// attacker's usual case); only an admission needs the atomic update, which decides again
/// on what it reads itself.
async fn try_admit(
    store: &dyn LockoutStore,
    policy: &LockoutPolicy,
    now: UnixTime,
    subjects: &[Subject],
    keys: &[String],
) -> Result<Result<(), Refusal>> {
    let stored = store.failure_counters(keys).await?;
    let current: Vec<FailureCounter> =
        keys.iter().map(|k| stored.iter().find(|(s, _)| s == k).map(|(_, c)| *c).unwrap_or_default()).collect();
    if let Err(refusal) = policy.admit(subjects, &current, now) {
        return Ok(Err(refusal));
    }
    let outcome = Mutex::new(Ok(()));
    let update = |current: &[FailureCounter]| match policy.admit(subjects, current, now) {
        Ok(next) => {
            *lock(&outcome) = Ok(());
            next
        }
        Err(refusal) => {
            *lock(&outcome) = Err(refusal);
            current.to_vec()
        }
    };
    store.update_counters(keys, &update).await?;
    Ok(*lock(&outcome))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        domain::ApiPassword,
        service::{
            AuthError, Policy,
            lockout::LockoutPolicy,
            testing::{TestService, client, policy},
        },
    };

    #[tokio::test]
    async fn a_lock_ends_when_its_time_is_up_and_the_next_lasts_twice_as_long() {
        let lockout = LockoutPolicy { identity_threshold: 3, address_threshold: 1_000, base_lock: 60 };
        let t = TestService::new(Policy { lockout, ..policy() }).await;
        let (key, password) = t.api_key().await;
        let other = ApiPassword::generate();
        let wrong = other.expose();
        // `None` for a success, else how long the answer says to wait (0: not locked).
        let login = async |password: &str| match t.auth.authenticate_key(key.as_str(), password, client()).await {
            Ok(_) => None,
            Err(AuthError::InvalidCredentials) => Some(0),
            Err(AuthError::Locked { retry_after }) => Some(retry_after),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(login(wrong).await, Some(0));
        assert_eq!(login(wrong).await, Some(0));
        assert_eq!(login(wrong).await, Some(60), "the third failure locks");
        // While locked even the right password is refused, for what is left of the lock.
        t.clock.advance(Duration::from_secs(59));
        assert_eq!(login(password.expose()).await, Some(1));
        t.clock.advance(Duration::from_secs(1));
        // Over: the next failure locks again at once, for twice as long.
        assert_eq!(login(wrong).await, Some(120));
        t.clock.advance(Duration::from_secs(119));
        assert_eq!(login(password.expose()).await, Some(1));
        t.clock.advance(Duration::from_secs(1));
        assert_eq!(login(password.expose()).await, None);
        // A success clears the key's count: failing again starts from the beginning.
        assert_eq!(login(wrong).await, Some(0));
    }
}
