//! The time keygate judges by: token lifetimes, session expiry, lockouts, signing-key
//! windows, retention. It is a parameter, never read from the system where it is used: the
//! service, the caches and the commands are each given a `Clock`, so that a test can move
//! time forward instead of sleeping through it.
//!
//! Only this module reads the system's wall clock (clippy's `disallowed-methods` refuses
//! `SystemTime::now` everywhere else). Waiting and timeouts (`Instant`, tokio's timers) are
//! a different matter, measured on the monotonic clock where they happen.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

/// Seconds since the Unix epoch. Integers compare the same way in every backend.
pub type UnixTime = i64;

/// Where the time comes from: the system's wall clock, or a manual clock a test moves. Cheap
/// to clone; clones of a manual clock all follow it.
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// The system's wall clock: what a server and the commands run on.
    pub fn system() -> Self {
        Self(Source::System)
    }

    pub fn now(&self) -> UnixTime {
        match &self.0 {
            Source::System => system_now(),
            Source::Manual(now) => now.load(Ordering::Acquire),
        }
    }
}

/// A clock that stands still until it is set or advanced: for tests. Start it at the system
/// time (`ManualClock::new(Clock::system().now())`) when the test also meets times that
/// something else stamped, such as the database's own or another process's.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: UnixTime) -> Self {
        Self(Arc::new(AtomicI64::new(start)))
    }

    /// The `Clock` to hand to what is tested; it reads whatever this one is set to.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(self.0.clone()))
    }

    pub fn now(&self) -> UnixTime {
        self.0.load(Ordering::Acquire)
    }

    pub fn set(&self, now: UnixTime) {
        self.0.store(now, Ordering::Release);
    }

    /// Moves the clock on by `by`, in whole seconds (the fraction is dropped, as every time
    /// keygate keeps is in whole seconds).
    pub fn advance(&self, by: Duration) {
        let seconds = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| Some(now.saturating_add(seconds)));
    }
}

// The one reading of the wall clock. A system clock set before 1970 reads as the epoch.
#[allow(clippy::disallowed_methods)]
fn system_now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_every_clone_follows() {
        let manual = ManualClock::new(1_000);
        let clock = manual.clock();
        let copy = clock.clone();
        assert_eq!((clock.now(), copy.now()), (1_000, 1_000));
        manual.advance(Duration::from_millis(61_900));
        assert_eq!((clock.now(), copy.now(), manual.now()), (1_061, 1_061, 1_061));
        manual.set(5);
        assert_eq!((manual.clock().now(), copy.now()), (5, 5));
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock() {
        // Later than when this was written: a reading of the real clock, not the epoch.
        let before = Clock::system().now();
        assert!(before > 1_700_000_000, "{before}");
        assert!(Clock::system().now() >= before);
    }
}
