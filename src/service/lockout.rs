//! Brute-force lockout: failed logins are counted per identity (admin email, API key) and
//! per client address, in the store so every replica sees the same counts; past a
//! threshold the subject is locked for a while, each lock longer than the last.
//!
//! Why these rules:
//! - While a subject is locked, its logins are refused before any password is checked, so
//!   a locked account answers the same whether the guess was right or wrong (no oracle),
//!   and a locked attacker costs us one indexed read per attempt, not an argon2 run.
//! - Unknown emails and keys are counted exactly like known ones: a lockout that only
//!   happened to real accounts would itself reveal which accounts exist.
//! - Locks are bounded (at most 16 × the base duration) and failures during a lock are not
//!   counted, so nobody can lock an identity "forever" by hammering it: keeping one locked
//!   takes a fresh failure per lock period, from an address that is not itself locked, and
//!   each address is locked after its own threshold. That is the price of per-identity
//!   lockout; docs/security.md discusses it.
//! - A success clears the identity's counter but never the address's: otherwise an attacker
//!   holding one valid key could reset their address between guesses at other accounts.

use crate::{
    domain::{ApiKeyId, ClientAddr, Email},
    store::{FailureCounter, UnixTime},
};

/// Each lock doubles the previous one, at most this many times (1, 2, 4, 8, 16 × base).
const MAX_DOUBLINGS: u32 = 4;
/// Failures are forgotten after this long without one, so old mistakes do not add up.
const MIN_WINDOW: i64 = 15 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures per admin email or API key before a lock.
    pub identity_threshold: u32,
    /// Failures per client address before a lock. Higher: many people may share one
    /// address behind a NAT or a corporate proxy.
    pub address_threshold: u32,
    /// Seconds the first lock lasts.
    pub base_lock: u64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self { identity_threshold: 5, address_threshold: 50, base_lock: 60 }
    }
}

/// Who failed to log in. The key it is stored under names the kind, so an email can never
/// collide with an API key or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Email(Email),
    ApiKey(ApiKeyId),
    Address(ClientAddr),
}

impl Subject {
    pub fn key(&self) -> String {
        match self {
            Self::Email(e) => format!("email:{}", e.as_str()),
            Self::ApiKey(k) => format!("key:{}", k.as_str()),
            Self::Address(a) => format!("addr:{}", a.lockout_key()),
        }
    }

    pub fn is_identity(&self) -> bool {
        !matches!(self, Self::Address(_))
    }
}

impl LockoutPolicy {
    pub fn max_lock(&self) -> u64 {
        self.base_lock.saturating_mul(1 << MAX_DOUBLINGS)
    }

    /// How long a counter is remembered after its last failure: long enough that strikes
    /// survive the longest lock, so back-off keeps growing for a persistent attacker.
    pub fn window(&self) -> i64 {
        i64::try_from(self.max_lock().saturating_mul(2)).unwrap_or(i64::MAX).max(MIN_WINDOW)
    }

    pub fn threshold(&self, subject: &Subject) -> u32 {
        if subject.is_identity() { self.identity_threshold } else { self.address_threshold }
    }

    fn lock_for(&self, strikes: u32) -> i64 {
        let doublings = strikes.saturating_sub(1).min(MAX_DOUBLINGS);
        i64::try_from(self.base_lock.saturating_mul(1 << doublings)).unwrap_or(i64::MAX)
    }

    /// The counter after one more failure at `now`.
    pub fn after_failure(&self, current: Option<FailureCounter>, threshold: u32, now: UnixTime) -> FailureCounter {
        let threshold = threshold.max(1);
        let mut c = current.filter(|c| now.saturating_sub(c.last_failure_at) <= self.window()).unwrap_or_default();
        if c.locked_until > now {
            // A request that was already past the lock check when the lock began: it does
            // not extend the lock, or hammering could keep a subject locked indefinitely.
            return c;
        }
        c.failures = c.failures.saturating_add(1);
        c.last_failure_at = now;
        if c.failures >= threshold {
            c.strikes = c.strikes.saturating_add(1);
            c.locked_until = now.saturating_add(self.lock_for(c.strikes));
            // Once a lock has ended, the next failure locks again, for longer: after the
            // first `threshold` guesses an attacker gets one guess per lock period.
            c.failures = threshold - 1;
        }
        c
    }
}

/// Seconds until the latest lock among `counters` ends, if any is locked at `now`.
pub fn retry_after(counters: &[(String, FailureCounter)], now: UnixTime) -> Option<u64> {
    counters
        .iter()
        .map(|(_, c)| c.locked_until)
        .filter(|&until| until > now)
        .max()
        .map(|until| u64::try_from(until - now).unwrap_or(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy { identity_threshold: 3, address_threshold: 10, base_lock: 60 }
    }

    #[test]
    fn locks_at_the_threshold_and_backs_off() {
        let p = policy();
        let mut c = None;
        let mut now = 1_000;
        for _ in 0..2 {
            let next = p.after_failure(c, 3, now);
            assert!(next.locked_until <= now);
            c = Some(next);
        }
        let locked = p.after_failure(c, 3, now);
        assert_eq!(locked.locked_until, now + 60);
        assert_eq!(retry_after(&[("s".into(), locked)], now), Some(60));
        // Failures during the lock change nothing.
        assert_eq!(p.after_failure(Some(locked), 3, now + 10), locked);
        // After it, one failure locks again, twice as long; and so on up to 16x.
        let mut c = locked;
        let mut durations = vec![60];
        for _ in 0..6 {
            now = c.locked_until + 1;
            c = p.after_failure(Some(c), 3, now);
            durations.push(c.locked_until - now);
        }
        assert_eq!(durations, [60, 120, 240, 480, 960, 960, 960]);
    }

    #[test]
    fn quiet_time_forgets() {
        let p = policy();
        let c = p.after_failure(None, 3, 0);
        let c = p.after_failure(Some(c), 3, 1);
        let later = p.after_failure(Some(c), 3, 1 + p.window() + 1);
        assert_eq!(later.failures, 1);
        assert_eq!(later.strikes, 0);
    }

    #[test]
    fn subjects_do_not_collide() {
        let e = Subject::Email(Email::parse("a@b.io").unwrap());
        let k = Subject::ApiKey(ApiKeyId::parse("46SQZ49LT100U2QWQ3SI").unwrap());
        let a = Subject::Address(ClientAddr::new("192.0.2.1".parse().unwrap()));
        assert_eq!(e.key(), "email:a@b.io");
        assert_eq!(k.key(), "key:46SQZ49LT100U2QWQ3SI");
        assert_eq!(a.key(), "addr:192.0.2.1");
        assert_eq!(policy().threshold(&a), 10);
        assert_eq!(policy().threshold(&e), 3);
    }

    proptest! {
        #[test]
        fn locks_are_bounded_and_never_shrink_a_live_lock(
            steps in proptest::collection::vec(0i64..2_000, 1..60),
            threshold in 1u32..8,
            base in 1u64..3_600,
        ) {
            let p = LockoutPolicy { identity_threshold: threshold, address_threshold: threshold, base_lock: base };
            let mut c = None::<FailureCounter>;
            let mut now = 0i64;
            for step in steps {
                now += step;
                let next = p.after_failure(c, threshold, now);
                prop_assert!(next.locked_until - now <= p.max_lock() as i64);
                if let Some(prev) = c {
                    if prev.locked_until > now {
                        prop_assert_eq!(next.locked_until, prev.locked_until);
                    }
                }
                prop_assert!(next.failures < threshold);
                c = Some(next);
            }
        }
    }
}
