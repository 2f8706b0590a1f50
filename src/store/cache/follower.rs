//! The change follower, with its lease and cursor. Why the other parts may trust memory:
//! this process applies its own deletions and revocations at once; everyone else's arrive
//! through the store's change log (`ChangeFeed`), read from the cursor every `POLL_EVERY`
//! and, on PostgreSQL, as soon as they commit (LISTEN/NOTIFY). Each successful read extends
//! a lease of `LEASE`, and the parts answer from memory only while it holds: when it runs
//! out (database away, reader stuck) every call goes to the store again, exactly as without
//! a cache. So a change committed anywhere is seen here within `LEASE` (under 1 s), or the
//! cache is not used at all. A full reload now and then, and after a long lapse, is the
//! safety net for anything the log could miss.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{CachedStore, keys::MAX_LOGINS};
use crate::{
    clock::Clock,
    store::{Change, ChangeFeed, ChangeSignal, Result},
};

/// How often the change log is read when nothing wakes the reader earlier.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long one successful read of the change log lets the cache answer. Three polls'
/// worth, so one slow poll does not send every request to the store, and well under the
/// 1 s within which a deletion or revocation must be honoured everywhere.
pub const LEASE: Duration = Duration::from_millis(750);
/// A full reload (revocations re-read, key entries dropped) this often, as a safety net
/// against anything the change log could ever miss.
const FULL_RELOAD_EVERY: Duration = Duration::from_secs(600);
/// Change-log rows are purged after this long. A server whose lease lapsed for half of it
/// reloads in full instead of trusting that the rows it missed are still there.
const CHANGE_RETENTION: i64 = 3600;
const RELOAD_AFTER_LAPSE: Duration = Duration::from_secs(CHANGE_RETENTION as u64 / 2);
/// While a part is incomplete (too large for memory), a full reload is tried this often,
/// to start using it again once it fits.
const RETRY_INCOMPLETE_EVERY: Duration = Duration::from_secs(60);
/// Rows read per query while catching up.
const BATCH: u32 = 1000;

pub(super) struct Follower {
    feed: Arc<dyn ChangeFeed>,
    /// Milliseconds after `origin` until which the cache may answer.
    trusted_until: AtomicU64,
    origin: Instant,
    /// The change-log position applied so far; only the reader moves it.
    cursor: tokio::sync::Mutex<Cursor>,
    /// Whether a failure to read the change log has been logged since the last success.
    complained: AtomicBool,
}

#[derive(Default)]
struct Cursor {
    seq: i64,
    /// None until the first full load.
    loaded_at: Option<Instant>,
}

impl Follower {
    pub(super) fn new(feed: Arc<dyn ChangeFeed>) -> Self {
        Self {
            feed,
            trusted_until: AtomicU64::new(0),
            origin: Instant::now(),
            cursor: tokio::sync::Mutex::default(),
            complained: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

impl CachedStore {
    /// Whether the change log was read recently enough for the cache to answer.
    pub fn is_trusted(&self) -> bool {
        self.follower.now_ms() < self.follower.trusted_until.load(Ordering::Acquire)
    }

    /// Keeps the cache in step with the store for as long as the server runs: reads the
    /// change log every `POLL_EVERY`, or at once when the backend signals a change, and
    /// reloads in full now and then. Each successful read extends the lease.
    pub async fn keep_in_sync(self: Arc<Self>) {
        let mut signal: Option<Box<dyn ChangeSignal>> = None;
        let mut retry_signal_at = Instant::now();
        loop {
            self.sync_once().await;
            if signal.is_none() && Instant::now() >= retry_signal_at {
                match self.follower.feed.change_signal().await {
                    Ok(s) => signal = s,
                    Err(e) => {
                        tracing::debug!(error = %e, "no change notifications for now; polling");
                        retry_signal_at = Instant::now() + Duration::from_secs(5);
                    }
                }
            }
            match signal.as_mut() {
                Some(s) => {
                    tokio::select! {
                        woke = s.changed() => if woke.is_err() {
                            signal = None;
                            retry_signal_at = Instant::now() + Duration::from_secs(1);
                        },
                        () = tokio::time::sleep(POLL_EVERY) => {}
                    }
                }
                None => tokio::time::sleep(POLL_EVERY).await,
            }
        }
    }

    /// One read of the change log (or a full reload when due), extending the lease on success.
    pub async fn sync_once(&self) {
        let follower = &self.follower;
        let started = follower.now_ms();
        let mut cursor = follower.cursor.lock().await;
        let lapsed_for = Duration::from_millis(started.saturating_sub(follower.trusted_until.load(Ordering::Acquire)));
        let reload = match cursor.loaded_at {
            None => true,
            Some(at) => {
                let complete = self.revocations.is_complete() && self.keys.is_complete();
                let every = if complete { FULL_RELOAD_EVERY } else { RETRY_INCOMPLETE_EVERY };
                at.elapsed() >= every || lapsed_for >= RELOAD_AFTER_LAPSE || self.keys.reload_soon()
            }
        };
        let done = if reload { self.reload(&mut cursor).await } else { self.catch_up(&mut cursor).await };
        match done {
            Ok(()) => {
                follower.trusted_until.fetch_max(started + LEASE.as_millis() as u64, Ordering::AcqRel);
                if follower.complained.swap(false, Ordering::Relaxed) {
                    tracing::info!("reading the change log again; caches in use");
                }
            }
            Err(e) => {
                if !follower.complained.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read the change log; caches unused until it works again");
                }
            }
        }
    }

    /// Everything from scratch: the log position, every live revocation; key entries are
    /// dropped (and refilled on use), except that logins on the embedded store load every
    /// key when they fit. Also purges old log rows.
    async fn reload(&self, cursor: &mut Cursor) -> Result<()> {
        let feed = &self.follower.feed;
        // The position first: changes committed after it are read by the next catch-up,
        // even those the reload below already reflects (applying one twice is harmless).
        let seq = feed.last_change().await?;
        let live = feed.live_revocations(self.clock.now()).await?;
        let keys = self.keys.load().await?;
        if self.keys.reload(keys) && cursor.loaded_at.is_none() {
            tracing::warn!(max = MAX_LOGINS, "too many keys to keep in memory; logins read the store");
        }
        self.revocations.reload(&live);
        // The change log's rows are stamped by the database's own clock (its triggers), so
        // their age is told by the wall clock, whatever the service's says.
        if let Err(e) = feed.purge_changes(Clock::system().now() - CHANGE_RETENTION).await {
            tracing::debug!(error = %e, "cannot purge old change-log rows; next time");
        }
        if cursor.loaded_at.is_none() {
            tracing::info!(revocations = live.len(), "caches loaded; following the change log");
        }
        *cursor = Cursor { seq, loaded_at: Some(Instant::now()) };
        Ok(())
    }

    /// Applies every change after the cursor.
    async fn catch_up(&self, cursor: &mut Cursor) -> Result<()> {
        loop {
            let batch = self.follower.feed.changes_after(cursor.seq, BATCH).await?;
            for (seq, change) in &batch {
                match change {
                    Change::KeyDeleted { key_ref, api_key } => self.keys.forget_key(*key_ref, Some(api_key), true),
                    Change::KeyChanged { key_ref, api_key } => self.keys.changed_elsewhere(*key_ref, api_key).await,
                    Change::TokenRevoked { jti, expires_at } => {
                        self.revocations.remember(jti, *expires_at, self.clock.now())
                    }
                    Change::FailuresCleared { subject } => self.counters.changed_elsewhere(subject).await,
                    Change::OwnerChanged => self.keys.forget_statuses(),
                    Change::Unreadable => self.keys.forget_all(),
                }
                cursor.seq = *seq;
            }
            if batch.len() < BATCH as usize {
                return Ok(());
            }
        }
    }
}
