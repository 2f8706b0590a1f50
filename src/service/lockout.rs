//! Brute-force lockout: failed logins are counted per identity (admin email, API key) and
//! per client address, in the store so every replica sees the same counts; past a
//! threshold the subject is locked for a while, each lock longer than the last.
//!
//! Why these rules:
//! - Every attempt takes a place in its subjects' counts *before* its secret is checked,
//!   atomically with the lock check, and gives it back when it ends: a failure turns the
//!   place into a counted failure, a success clears the identity's count. Only as many
//!   attempts as the threshold has room for are admitted at once, so a burst of any size,
//!   on one replica or many, gets at most the threshold checked per lock period; the rest
//!   wait for a place (a client logging in with one key from many threads is served, a
//!   few at a time) and are refused like a lock once one of those admitted has locked the
//!   subject. An attempt abandoned mid-check (the client hung up) counts as a failure, and
//!   one whose server died is forgotten after `IN_FLIGHT_TTL`.
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
/// An attempt still in flight after this long is presumed lost with the server that ran it.
pub const IN_FLIGHT_TTL: i64 = 60;
/// What an attempt that found no place in time is told to wait.
pub const BUSY_RETRY_AFTER: u64 = 1;

/// Why an attempt was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A subject is locked for this many more seconds.
    Locked(u64),
    /// A subject has as many attempts in flight as failures left before its lock: wait.
    Busy,
}

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

    /// The counter as it stands at `now`: failures past the window forgotten (unless locked), and attempts
    /// in flight for longer than `IN_FLIGHT_TTL` no longer counted.
    fn current(&self, c: FailureCounter, now: UnixTime) -> FailureCounter {
        // A lock in force is kept whatever the window says: only its end frees the subject.
        let mut c = if now.saturating_sub(c.last_failure_at) <= self.window() || c.locked_until > now {
            c
        } else {
            c.attempts_only()
        };
        if now.saturating_sub(c.in_flight_at) > IN_FLIGHT_TTL {
            c.in_flight = 0;
        }
        c
    }

    /// Admits one attempt against `subjects` (whose counters are `counters`, in order) at
    /// `now`: their counters with the attempt in flight, or why not. A lock anywhere wins
    /// over a full count (the caller may wait for a place, not for a lock). All or nothing:
    /// a refused attempt takes no place in any count.
    pub fn admit(
        &self,
        subjects: &[Subject],
        counters: &[FailureCounter],
        now: UnixTime,
    ) -> Result<Vec<FailureCounter>, Refusal> {
        let mut locked = None::<u64>;
        let mut busy = false;
        let next = subjects
            .iter()
            .zip(counters)
            .map(|(subject, c)| {
                let mut c = self.current(*c, now);
                if c.locked_until > now {
                    locked = locked.max(Some(u64::try_from(c.locked_until - now).unwrap_or(1).max(1)));
                } else if c.failures.saturating_add(c.in_flight) >= self.threshold(subject).max(1) {
                    busy = true;
                }
                c.in_flight += 1;
                c.in_flight_at = now;
                c
            })
            .collect();
        match (locked, busy) {
            (Some(wait), _) => Err(Refusal::Locked(wait)),
            (None, true) => Err(Refusal::Busy),
            (None, false) => Ok(next),
        }
    }

    /// The counter after an admitted attempt ended at `now`: its place is given back; a
    /// failure is counted (and may lock), and a success clears an identity's count (never
    /// an address's; see the module comment).
    pub fn finish(&self, subject: &Subject, c: FailureCounter, failed: bool, now: UnixTime) -> FailureCounter {
        let mut c = self.current(c, now);
        c.in_flight = c.in_flight.saturating_sub(1);
        if failed {
            self.after_failure(c, self.threshold(subject), now)
        } else if subject.is_identity() {
            c.attempts_only()
        } else {
            c
        }
    }

    /// The counter after one more failure at `now`.
    fn after_failure(&self, current: FailureCounter, threshold: u32, now: UnixTime) -> FailureCounter {
        let threshold = threshold.max(1);
        let mut c = self.current(current, now);
        if c.locked_until > now {
            // An attempt that was admitted before the lock began: it does not extend the
            // lock, or hammering could keep a subject locked indefinitely.
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
        let mut c = FailureCounter::default();
        let mut now = 1_000;
        for _ in 0..2 {
            let next = p.after_failure(c, 3, now);
            assert!(next.locked_until <= now);
            c = next;
        }
        let locked = p.after_failure(c, 3, now);
        assert_eq!(locked.locked_until, now + 60);
        // Failures during the lock change nothing.
        assert_eq!(p.after_failure(locked, 3, now + 10), locked);
        // After it, one failure locks again, twice as long; and so on up to 16x.
        let mut c = locked;
        let mut durations = vec![60];
        for _ in 0..6 {
            now = c.locked_until + 1;
            c = p.after_failure(c, 3, now);
            durations.push(c.locked_until - now);
        }
        assert_eq!(durations, [60, 120, 240, 480, 960, 960, 960]);
    }

    #[test]
    fn quiet_time_forgets() {
        let p = policy();
        let c = p.after_failure(FailureCounter::default(), 3, 0);
        let c = p.after_failure(c, 3, 1);
        let later = p.after_failure(c, 3, 1 + p.window() + 1);
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
            let mut c = FailureCounter::default();
            let mut now = 0i64;
            for step in steps {
                now += step;
                let next = p.after_failure(c, threshold, now);
                prop_assert!(next.locked_until - now <= p.max_lock() as i64);
                if c.locked_until > now {
                    prop_assert_eq!(next.locked_until, c.locked_until);
                }
                prop_assert!(next.failures < threshold);
                c = next;
            }
        }

        /// Any interleaving of admissions and failed endings within one lock period: at most
        /// `threshold` attempts are ever admitted, whatever the order.
        #[test]
        fn a_burst_gets_at_most_the_threshold_checked(
            ops in proptest::collection::vec(any::<bool>(), 1..200),
            threshold in 1u32..8,
        ) {
            let p = LockoutPolicy { identity_threshold: threshold, address_threshold: 1000, base_lock: 60 };
            let subjects = [Subject::ApiKey(ApiKeyId::parse("46SQZ49LT100U2QWQ3SI").unwrap())];
            let now = 1_000;
            let mut c = FailureCounter::default();
            let mut in_flight = 0u32;
            let mut admitted = 0u32;
            for admit in ops {
                if admit || in_flight == 0 {
                    if let Ok(next) = p.admit(&subjects, &[c], now) {
                        c = next[0];
                        in_flight += 1;
                        admitted += 1;
                    }
                } else {
                    // Every guess is wrong: the attacker's burst.
                    c = p.finish(&subjects[0], c, true, now);
                    in_flight -= 1;
                }
                prop_assert!(admitted <= threshold);
            }
        }
    }

    #[test]
    fn admission_is_all_or_nothing_and_ends_give_places_back() {
        let p = policy();
        let key = Subject::ApiKey(ApiKeyId::parse("46SQZ49LT100U2QWQ3SI").unwrap());
        let addr = Subject::Address(ClientAddr::new("192.0.2.1".parse().unwrap()));
        let subjects = [key.clone(), addr.clone()];
        let now = 1_000;
        // The address has one place left; the key has three.
        let full_addr = FailureCounter { failures: 9, last_failure_at: now, ..FailureCounter::default() };
        let admitted = p.admit(&subjects, &[FailureCounter::default(), full_addr], now).unwrap();
        assert_eq!((admitted[0].in_flight, admitted[1].in_flight), (1, 1));
        // A second attempt at once is refused and takes no place in either count.
        assert_eq!(p.admit(&subjects, &admitted, now), Err(Refusal::Busy));
        // A success gives both places back and clears the key's count, not the address's.
        let key_after = p.finish(&key, admitted[0], false, now);
        let addr_after = p.finish(&addr, admitted[1], false, now);
        assert!(key_after.is_empty());
        assert_eq!((addr_after.failures, addr_after.in_flight), (9, 0));
        // A failure turns the place into a failure, which locks the address.
        let failed = p.finish(&addr, admitted[1], true, now);
        assert_eq!(failed.in_flight, 0);
        assert_eq!(failed.locked_until, now + 60);
        assert_eq!(p.admit(&subjects, &[key_after, failed], now + 1), Err(Refusal::Locked(59)));
        // An attempt whose server died holds its place only for a while.
        let stale = FailureCounter { in_flight: 3, in_flight_at: now, ..FailureCounter::default() };
        assert!(p.admit(std::slice::from_ref(&key), &[stale], now + 1).is_err());
        assert!(p.admit(&[key], &[stale], now + IN_FLIGHT_TTL + 1).is_ok());
    }
}
