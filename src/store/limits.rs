//! Rate limits and credits in the store: owners' limits, credit balances (durable), and the
//! rate-limit counters replicas share on PostgreSQL.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Result, UnixTime};
use crate::domain::{AccountId, KeyRef, Limits, OwnerId, Refill};

/// A credit balance as stored: what is left, the refill, and the refill period the balance
/// belongs to (an earlier one is refilled before use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCredits {
    pub remaining: i64,
    pub refill: Option<Refill>,
    pub period: i64,
}

/// What verification must know of a key's limits, from the key's row and its owner's.
/// Carried with the key's status (and so cached with it): `None` there for a key that
/// nothing limits, which costs verification one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub key_ref: KeyRef,
    pub account_id: AccountId,
    pub limits: Limits,
    /// `Some` when the key has credits: its refill, if any.
    pub credits: Option<Option<Refill>>,
    pub owner: Option<OwnerId>,
    pub owner_limits: Limits,
    pub owner_credits: Option<Option<Refill>>,
}

impl Quota {
    /// `None` when nothing limits the key.
    pub fn of(self) -> Option<Arc<Self>> {
        let limited = !self.limits.is_empty()
            || self.credits.is_some()
            || !self.owner_limits.is_empty()
            || self.owner_credits.is_some();
        limited.then(|| Arc::new(self))
    }
}

/// Whose credit balance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CreditScope {
    Key(KeyRef),
    Owner(AccountId, OwnerId),
}

/// An owner's limits and credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecord {
    pub limits: Limits,
    pub credits: Option<StoredCredits>,
}

/// One counter of a strict take: all of a request's counters pass, and are counted, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterTake<'a> {
    pub counter: &'a str,
    pub window_start: UnixTime,
    pub window: i64,
    /// Seconds into the window: the previous window's hits weigh `(window - elapsed) / window`.
    pub elapsed: i64,
    pub limit: i64,
    pub expires_at: UnixTime,
}

/// One balance of a strict take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditTake<'a> {
    pub scope: &'a CreditScope,
    /// The refill period now and its amount: a balance of an earlier period becomes
    /// `amount` first. Without a refill, 0 and 0.
    pub period: i64,
    pub amount: i64,
}

/// What a strict take found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Everything passed and was counted: each counter's hits in its window, and each
    /// balance's remainder, in the order asked.
    All { hits: Vec<i64>, remaining: Vec<i64> },
    /// The counter at this index would pass its limit: nothing was counted.
    Counter(usize),
    /// The balance at this index has too little left (or is gone): nothing was counted.
    Credits(usize),
}

/// Owners' limits, set by admins.
#[async_trait]
pub trait OwnerStore: Send + Sync {
    /// Sets the owner's limits and credits (replacing both), creating the owner if new.
    async fn put_owner(
        &self,
        account: AccountId,
        owner: &OwnerId,
        limits: &Limits,
        credits: Option<&StoredCredits>,
        now: UnixTime,
    ) -> Result<()>;
    async fn owner(&self, account: AccountId, owner: &OwnerId) -> Result<Option<OwnerRecord>>;
}

/// What runs while balances stay locked (`CreditStore::spend_credits_locked`,
/// `credit_balance_locked`), before the transaction commits.
pub type WhileLocked<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Credit balances, the durable half of credits.
#[async_trait]
pub trait CreditStore: Send + Sync {
    /// The balance as stored; `None` when the key or owner has no credits (or is gone).
    async fn credit_balance(&self, scope: &CreditScope) -> Result<Option<StoredCredits>>;
    /// Writes the balances a single server keeps in memory, as they are now.
    async fn write_balances(&self, balances: &[(CreditScope, i64, i64)]) -> Result<()>;
    /// Spends credits counted while they could not be checked (shared state unreachable),
    /// never below zero: (scope, spent, period, refill amount).
    async fn spend_credits(&self, spent: &[(CreditScope, i64, i64, i64)]) -> Result<()>;
    /// As `spend_credits`, with `then` run after the spends and before they commit: the
    /// balances stay locked meanwhile, so no `credit_balance_locked` reads between the two.
    async fn spend_credits_locked(&self, spent: &[(CreditScope, i64, i64, i64)], then: WhileLocked<'_>) -> Result<()>;
    /// The balance as stored, with `then` run on it while it stays locked.
    async fn credit_balance_locked<'a>(
        &'a self,
        scope: &'a CreditScope,
        then: Box<dyn FnOnce(Option<StoredCredits>) -> WhileLocked<'a> + Send + 'a>,
    ) -> Result<()>;
}

/// The rate-limit counters replicas share through the store.
#[async_trait]
pub trait CounterStore: Send + Sync {
    /// The strict decision for one request, atomically: every counter (with the request's
    /// `cost`) within its limit and every balance at least `cost`, and then all counted;
    /// or nothing counted.
    async fn take(&self, counters: &[CounterTake<'_>], credits: &[CreditTake<'_>], cost: i64) -> Result<Taken>;
    /// Adds each (counter, window start, hits, expires at), in one transaction; each
    /// counter's total afterwards, in the order given.
    async fn add_hits(&self, hits: &[(&str, UnixTime, i64, UnixTime)]) -> Result<Vec<i64>>;
    /// Deletes the counters of windows that no longer count; returns how many.
    async fn purge_counters(&self, now: UnixTime) -> Result<u64>;
}
