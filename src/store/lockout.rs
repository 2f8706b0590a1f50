//! Failed-login counters, kept in the store so that a lockout holds across replicas and
//! restarts.

use async_trait::async_trait;

use super::{Result, UnixTime};

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
