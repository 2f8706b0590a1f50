//! Rate limits and credits in the store: owners' limits, credit balances (durable), and the
//! rate-limit counters replicas share on PostgreSQL.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Result, UnixTime};
use crate::domain::{AccountId, CREDITS, KeyRef, Limit, Limits, OwnerId, Refill};

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
///
/// Each limit's counter id and the names the headers give are derived here, once, rather
/// than by the limiter on every verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota {
    limits: Box<[QuotaLimit]>,
    credits: Box<[QuotaCredits]>,
}

/// One limit of a quota, the key's or its owner's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaLimit {
    /// Its counter, in memory and in the shared state: the key's limits by key, name and
    /// window; an owner's by account, window, name and owner. The shared state keeps counts
    /// under these ids, so their spelling must stay.
    pub counter: Arc<str>,
    /// As the headers name it: the limit's name, `owner.<name>` for an owner's.
    pub name: Arc<str>,
    pub limit: Limit,
}

/// One credit balance of a quota, the key's or its owner's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCredits {
    pub scope: CreditScope,
    /// `credits`, or `owner.credits` for the owner's.
    pub name: Arc<str>,
    pub refill: Option<Refill>,
}

impl Quota {
    /// The key's own limits, and its credits (`Some` when it has any: their refill, if any).
    pub fn key(key_ref: KeyRef, limits: &Limits, credits: Option<Option<Refill>>) -> Self {
        let limits = limits
            .iter()
            .map(|limit| QuotaLimit {
                counter: format!("k/{}/{}/{}", key_ref, limit.name, limit.window_seconds).into(),
                name: limit.name.as_str().into(),
                limit: limit.clone(),
            })
            .collect();
        let credits =
            credits.map(|refill| QuotaCredits { scope: CreditScope::Key(key_ref), name: CREDITS.into(), refill });
        Self { limits, credits: credits.into_iter().collect() }
    }

    /// With the limits and credits of the key's owner too, shared by the owner's keys.
    pub fn with_owner(
        self,
        account: AccountId,
        owner: &OwnerId,
        limits: &Limits,
        credits: Option<Option<Refill>>,
    ) -> Self {
        let owner_limits = limits.iter().map(|limit| QuotaLimit {
            counter: format!("o/{}/{}/{}/{}", account, limit.window_seconds, limit.name, owner).into(),
            name: format!("owner.{}", limit.name).into(),
            limit: limit.clone(),
        });
        let owner_credits = credits.map(|refill| QuotaCredits {
            scope: CreditScope::Owner(account, owner.clone()),
            name: "owner.credits".into(),
            refill,
        });
        Self {
            limits: self.limits.into_iter().chain(owner_limits).collect(),
            credits: self.credits.into_iter().chain(owner_credits).collect(),
        }
    }

    /// `None` when nothing limits the key.
    pub fn of(self) -> Option<Arc<Self>> {
        (!self.limits.is_empty() || !self.credits.is_empty()).then(|| Arc::new(self))
    }

    /// The key's limits, then its owner's.
    pub fn limits(&self) -> &[QuotaLimit] {
        &self.limits
    }

    /// The key's balance, then its owner's; each only where there are credits.
    pub fn credits(&self) -> &[QuotaCredits] {
        &self.credits
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Consistency, LimitInput};

    fn limits(names: &[&str]) -> Limits {
        let input = |name: &&str| LimitInput {
            name: (*name).into(),
            limit: 10,
            window_seconds: 60,
            consistency: Consistency::Fast,
        };
        Limits::parse(&names.iter().map(input).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn counters_keep_the_ids_the_shared_state_knows_and_policies_their_names() {
        let key = KeyRef::parse("6f1c8e0a-3f5b-4c2e-9a7d-1b2c3d4e5f60").unwrap();
        let account = AccountId::parse("0b6e2a4c-8d1f-4e3a-b5c7-9d0e1f2a3b4c").unwrap();
        let owner = OwnerId::parse("cus 42").unwrap();
        let quota = Quota::key(key, &limits(&["burst"]), Some(None)).with_owner(
            account,
            &owner,
            &limits(&["monthly"]),
            Some(None),
        );
        let ids: Vec<(&str, &str)> = quota.limits().iter().map(|l| (&*l.counter, &*l.name)).collect();
        assert_eq!(
            ids,
            [
                ("k/6f1c8e0a-3f5b-4c2e-9a7d-1b2c3d4e5f60/burst/60", "burst"),
                ("o/0b6e2a4c-8d1f-4e3a-b5c7-9d0e1f2a3b4c/60/monthly/cus 42", "owner.monthly"),
            ]
        );
        let credits: Vec<&str> = quota.credits().iter().map(|c| &*c.name).collect();
        assert_eq!(credits, ["credits", "owner.credits"]);
        assert_eq!(quota.credits()[1].scope, CreditScope::Owner(account, owner));
        assert!(Quota::key(key, &Limits::default(), None).of().is_none(), "nothing limits the key");
        assert!(Quota::key(key, &Limits::default(), Some(None)).of().is_some(), "credits limit it");
    }
}
