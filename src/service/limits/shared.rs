//! The state replicas share for their limits. Strict limits and credits are decided there,
//! atomically, for each request; fast limits only send their counts and read back everyone's,
//! in batches. On PostgreSQL the database itself is enough: `StoreCounters`.

use std::sync::Arc;

use async_trait::async_trait;

use crate::store::{CounterTake, CreditTake, Store, StoreError, Taken, UnixTime};

#[async_trait]
pub trait SharedCounters: Send + Sync {
    /// Every counter within its limit with `cost` more, and every balance at least `cost`:
    /// then all counted, else none.
    async fn take(
        &self,
        counters: &[CounterTake<'_>],
        credits: &[CreditTake<'_>],
        cost: i64,
    ) -> Result<Taken, StoreError>;
    /// Adds each (counter, window start, hits, expires at); the totals afterwards.
    async fn add_hits(&self, hits: &[(&str, UnixTime, i64, UnixTime)]) -> Result<Vec<i64>, StoreError>;
    /// Forgets the windows that no longer count.
    async fn purge(&self, now: UnixTime) -> Result<u64, StoreError>;
    /// A cheap round trip: whether the shared state answers.
    async fn probe(&self) -> Result<(), StoreError>;
}

/// The counters in the store's own tables (PostgreSQL's `limit_counters`, and the credit
/// columns beside the keys and owners).
pub struct StoreCounters(pub Arc<dyn Store>);

#[async_trait]
impl SharedCounters for StoreCounters {
    async fn take(
        &self,
        counters: &[CounterTake<'_>],
        credits: &[CreditTake<'_>],
        cost: i64,
    ) -> Result<Taken, StoreError> {
        self.0.take(counters, credits, cost).await
    }

    async fn add_hits(&self, hits: &[(&str, UnixTime, i64, UnixTime)]) -> Result<Vec<i64>, StoreError> {
        self.0.add_hits(hits).await
    }

    async fn purge(&self, now: UnixTime) -> Result<u64, StoreError> {
        self.0.purge_counters(now).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
}
