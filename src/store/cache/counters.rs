//! The failed-login counters, mirrored on the embedded store only. Why the mirror stays
//! right: there this process is the counters' only writer, so a write-through copy is exact
//! and an API login's lockout check costs no database read. The one outside writer, an
//! operator's `keygate admin unlock`, is heard of through the change log, and its subject
//! read again at next use. The attempts in flight (see `service::lockout`) live only in this
//! copy, so admitting and ending a login that changes no count costs no write either. With
//! PostgreSQL a lock set or an attempt admitted by another replica must count here at once,
//! so every call goes to the store.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::CachedStore;
use crate::store::{CounterUpdate, FailureCounter, LockoutStore, Result, UnixTime};

/// At most this many subjects' counters are mirrored; past it the mirror starts afresh.
const MAX_COUNTERS: usize = 100_000;

pub(super) struct FailureCounters {
    store: Arc<dyn LockoutStore>,
    /// Embedded store only. Every update holds the lock from its read to its write, so
    /// updates of one subject never interleave.
    mirror: Option<Mutex<Mirror>>,
}

/// The embedded store's failure counters, as this process knows them.
#[derive(Default)]
struct Mirror {
    /// By subject; `None`: known to have none.
    map: HashMap<String, Option<FailureCounter>>,
    /// Whether `map` holds every counter the store has, so that a subject missing from it
    /// has none. Then an identity never tried before costs what a known one costs: no read.
    complete: bool,
    /// Whether a full load was tried since the last prune.
    loaded: bool,
    /// Subjects changed behind our back (the change log says so): read again at next use.
    stale: HashSet<String>,
}

impl Mirror {
    /// What is known of `subject`: `None` when it must be read from the store.
    fn get(&self, subject: &str) -> Option<Option<FailureCounter>> {
        if self.stale.contains(subject) {
            return None;
        }
        match self.map.get(subject) {
            Some(c) => Some(*c),
            None if self.complete => Some(None),
            None => None,
        }
    }

    fn set(&mut self, subject: &str, counter: Option<FailureCounter>) {
        let counter = counter.filter(|c| !c.is_empty());
        if counter.is_none() && self.complete {
            self.map.remove(subject);
        } else {
            self.map.insert(subject.to_owned(), counter);
        }
    }

    /// Takes the store's counter for `subject` (`None`: it has none), keeping the attempts
    /// in flight here, which only this process knows of.
    fn take_stored(&mut self, subject: String, stored: Option<FailureCounter>) {
        let here = self.map.get(&subject).copied().flatten().map(FailureCounter::attempts_only).unwrap_or_default();
        let stored = stored.map(FailureCounter::without_attempts).unwrap_or_default();
        let counter = FailureCounter { in_flight: here.in_flight, in_flight_at: here.in_flight_at, ..stored };
        self.stale.remove(&subject);
        self.set(&subject, Some(counter));
    }

    /// Forgets everything but the attempts in flight, which only this process knows.
    fn keep_in_flight(&mut self) {
        self.map.retain(|_, c| c.is_some_and(|c| c.in_flight > 0));
        self.complete = false;
    }
}

impl FailureCounters {
    pub(super) fn new(store: Arc<dyn LockoutStore>, mirrored: bool) -> Self {
        Self { store, mirror: mirrored.then(Mutex::default) }
    }

    /// The change log says `subject`'s counter was changed from outside.
    pub(super) async fn changed_elsewhere(&self, subject: &str) {
        if let Some(mirror) = &self.mirror {
            mirror.lock().await.stale.insert(subject.to_owned());
        }
    }

    /// Makes the mirror know `subjects`: at first use (and after each prune) by loading
    /// every counter, when they fit; otherwise by reading those it does not know.
    async fn fill(&self, mirror: &mut Mirror, subjects: &[String]) -> Result<()> {
        if !mirror.loaded {
            mirror.loaded = true;
            let all = self.store.all_failure_counters(MAX_COUNTERS as u32 + 1).await?;
            if all.len() <= MAX_COUNTERS {
                for (subject, c) in all {
                    mirror.take_stored(subject, Some(c));
                }
                mirror.complete = true;
            } else {
                tracing::warn!(max = MAX_COUNTERS, "too many failed-login counters to keep in memory; reading them");
            }
        }
        if mirror.map.len() + subjects.len() > MAX_COUNTERS {
            mirror.keep_in_flight();
        }
        let missing: Vec<String> = subjects.iter().filter(|s| mirror.get(s).is_none()).cloned().collect();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = self.store.failure_counters(&missing).await?;
        for subject in missing {
            let found = rows.iter().find(|(s, _)| *s == subject).map(|(_, c)| *c);
            mirror.take_stored(subject, found);
        }
        Ok(())
    }
}

#[async_trait]
impl LockoutStore for CachedStore {
    async fn failure_counters(&self, subjects: &[String]) -> Result<Vec<(String, FailureCounter)>> {
        let counters = &self.counters;
        let Some(mirror) = &counters.mirror else { return counters.store.failure_counters(subjects).await };
        let mut mirror = mirror.lock().await;
        counters.fill(&mut mirror, subjects).await?;
        Ok(subjects.iter().filter_map(|s| mirror.get(s).flatten().map(|c| (s.clone(), c))).collect())
    }

    async fn all_failure_counters(&self, limit: u32) -> Result<Vec<(String, FailureCounter)>> {
        self.counters.store.all_failure_counters(limit).await
    }

    async fn update_counters(&self, subjects: &[String], update: CounterUpdate<'_>) -> Result<Vec<FailureCounter>> {
        let counters = &self.counters;
        let Some(mirror) = &counters.mirror else { return counters.store.update_counters(subjects, update).await };
        let mut mirror = mirror.lock().await;
        counters.fill(&mut mirror, subjects).await?;
        let current: Vec<FailureCounter> =
            subjects.iter().map(|s| mirror.get(s).flatten().unwrap_or_default()).collect();
        let next = update(&current);
        // The store keeps what outlives this process; attempts in flight do not, so admitting
        // and ending an attempt that changes nothing else costs no write.
        let stored: Vec<FailureCounter> = next.iter().map(|c| c.without_attempts()).collect();
        if current.iter().zip(&stored).any(|(c, s)| c.without_attempts() != *s) {
            counters.store.update_counters(subjects, &|_| stored.clone()).await?;
        }
        for (subject, c) in subjects.iter().zip(&next) {
            mirror.set(subject, Some(*c));
        }
        if mirror.map.len() > MAX_COUNTERS {
            mirror.keep_in_flight();
        }
        Ok(next)
    }

    async fn clear_failures(&self, subject: &str) -> Result<()> {
        let counters = &self.counters;
        let Some(mirror) = &counters.mirror else { return counters.store.clear_failures(subject).await };
        let mut mirror = mirror.lock().await;
        counters.store.clear_failures(subject).await?;
        // Attempts in flight stay counted: they are still running.
        mirror.take_stored(subject.to_owned(), None);
        Ok(())
    }

    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        let counters = &self.counters;
        let Some(mirror) = &counters.mirror else { return counters.store.prune_failures(idle_since, now).await };
        let mut mirror = mirror.lock().await;
        let pruned = counters.store.prune_failures(idle_since, now).await;
        // Loaded again when next needed (also picking up what else changed the store, such
        // as `keygate admin unlock`), except the attempts in flight, which only we know.
        mirror.keep_in_flight();
        mirror.loaded = false;
        pruned
    }
}
