//! The state replicas share for their limits. Strict limits and credits are decided there,
//! atomically, for each request; fast limits only send their counts and read back everyone's,
//! in batches. On PostgreSQL the database itself is enough (`StoreCounters`); with
//! `KEYGATE_REDIS_URL`, Redis (`redis_state::RedisCounters`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;

use crate::{
    domain::Refill,
    store::{CounterTake, CreditScope, CreditTake, Store, StoreError, Taken, UnixTime},
};

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something keygate's scripts never return.
    #[error("redis: {0}")]
    Reply(String),
    #[error("no answer in time")]
    Timeout,
    /// The task recording credit spends ended without finishing (it panicked).
    #[error("credit spends: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

pub type SharedResult<T> = Result<T, SharedError>;

#[async_trait]
pub trait SharedCounters: Send + Sync {
    /// Every counter within its limit with `cost` more, and every balance at least `cost`:
    /// then all counted, else none.
    async fn take(&self, counters: &[CounterTake<'_>], credits: &[CreditTake<'_>], cost: i64) -> SharedResult<Taken>;
    /// Adds each (counter, window start, hits, expires at), at `now`; the totals afterwards.
    async fn add_hits(&self, hits: &[(&str, UnixTime, i64, UnixTime)], now: UnixTime) -> SharedResult<Vec<i64>>;
    /// Credits spent (a negative cost: given back) that the shared state did not decide,
    /// while it could not be reached; kept until `flush` records them.
    fn defer_spend(&self, scope: CreditScope, period: i64, amount: i64, cost: i64);
    /// Records in the store what it must keep: the deferred spends, and (Redis) the credits
    /// the shared state spent. What cannot be recorded now is kept for the next round.
    async fn flush(&self) -> SharedResult<()>;
    /// An admin changed the balance in the store: any copy the shared state holds is stale.
    async fn balance_changed(&self, _scope: &CreditScope) -> SharedResult<()> {
        Ok(())
    }
    /// The balance as the shared state holds it, when it is newer than the store's.
    async fn balance(&self, _scope: &CreditScope, _refill: Option<Refill>, _now: UnixTime) -> Option<i64> {
        None
    }
    /// Forgets the windows that no longer count.
    async fn purge(&self, now: UnixTime) -> SharedResult<u64>;
    /// A cheap round trip: whether the shared state answers.
    async fn probe(&self) -> SharedResult<()>;
    /// How many strict takes one server sends at once.
    fn takes_in_flight(&self) -> usize;
}

/// Spends waiting to be recorded: (spent, refill period, refill amount) per balance. A spend
/// of an earlier period than the one waiting is void: the balance was refilled since.
#[derive(Default)]
pub struct Deferred(Mutex<HashMap<CreditScope, (i64, i64, i64)>>);

impl Deferred {
    pub fn add(&self, scope: CreditScope, period: i64, amount: i64, cost: i64) {
        let mut spends = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = spends.entry(scope).or_insert((0, period, amount));
        if entry.1 == period {
            entry.0 += cost;
        } else if entry.1 < period {
            *entry = (cost, period, amount);
        }
    }

    /// (scope, spent, period, amount), as `CreditStore::spend_credits` takes them.
    pub fn drain(&self) -> Vec<(CreditScope, i64, i64, i64)> {
        let mut spends = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        spends.drain().filter(|(_, (spent, _, _))| *spent != 0).map(|(s, (spent, p, a))| (s, spent, p, a)).collect()
    }

    pub fn restore(&self, spends: Vec<(CreditScope, i64, i64, i64)>) {
        for (scope, spent, period, amount) in spends {
            self.add(scope, period, amount, spent);
        }
    }
}

/// The counters in the store's own tables (PostgreSQL's `limit_counters`, and the credit
/// columns beside the keys and owners).
pub struct StoreCounters {
    store: Arc<dyn Store>,
    deferred: Deferred,
}

impl StoreCounters {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, deferred: Deferred::default() }
    }
}

#[async_trait]
impl SharedCounters for StoreCounters {
    async fn take(&self, counters: &[CounterTake<'_>], credits: &[CreditTake<'_>], cost: i64) -> SharedResult<Taken> {
        Ok(self.store.take(counters, credits, cost).await?)
    }

    async fn add_hits(&self, hits: &[(&str, UnixTime, i64, UnixTime)], _now: UnixTime) -> SharedResult<Vec<i64>> {
        Ok(self.store.add_hits(hits).await?)
    }

    fn defer_spend(&self, scope: CreditScope, period: i64, amount: i64, cost: i64) {
        self.deferred.add(scope, period, amount, cost);
    }

    async fn flush(&self) -> SharedResult<()> {
        let spends = self.deferred.drain();
        if spends.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(super::SHARED_TIMEOUT * 10, self.store.spend_credits(&spends)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.deferred.restore(spends);
                Err(e.into())
            }
            Err(_) => {
                self.deferred.restore(spends);
                Err(SharedError::Timeout)
            }
        }
    }

    async fn purge(&self, now: UnixTime) -> SharedResult<u64> {
        Ok(self.store.purge_counters(now).await?)
    }

    async fn probe(&self) -> SharedResult<()> {
        Ok(self.store.ping().await?)
    }

    /// Fewer than the database pool's connections, which other requests need too.
    fn takes_in_flight(&self) -> usize {
        2
    }
}
