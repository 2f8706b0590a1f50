//! `CachedStore`: the store reads of the hot paths (every API login, every token
//! verification) answered from memory, in front of any store. It has four parts, each
//! keeping one consistency rule, stated in its own module:
//! - `keys`: key lookups, read through; logins from memory only while memory holds every key.
//! - `revocations`: the revocation set, used only while complete.
//! - `counters`: the failed-login counters, mirrored on the embedded store only.
//! - `follower`: reads the change log under a lease; without the lease nothing is answered
//!   from memory.
//!
//! The cache implements only the store traits those paths use (`HotPath`); the service
//! sends every other call to the store itself.

use std::sync::Arc;

use async_trait::async_trait;

use super::{KeyLookupStore, KeyStore, LockoutStore, OwnerRecord, OwnerStore, RevocationStore, Store, StoredCredits};
use crate::clock::Clock;
use crate::domain::{AccountId, Limits, OwnerId};

mod counters;
mod follower;
mod keys;
mod revocations;

pub use follower::LEASE;

/// The store traits on the hot paths, each answered by the cache where the server has one
/// and by the store itself where not. Four handles rather than one: the store itself is a
/// `dyn Store`, which can be viewed as each of its traits but not as a trait of our own.
#[derive(Clone)]
pub struct HotPath {
    /// Logins (`find_key`), and key creation and deletion, which the login set must see.
    pub keys: Arc<dyn KeyStore>,
    /// Every token verification: is its key still there?
    pub key_lookup: Arc<dyn KeyLookupStore>,
    /// Every token verification: is it revoked? And the revocations the set must see.
    pub revocations: Arc<dyn RevocationStore>,
    /// Every login's admission and outcome.
    pub lockout: Arc<dyn LockoutStore>,
    /// Owners' limits, which the key statuses carry.
    pub owners: Arc<dyn OwnerStore>,
}

impl HotPath {
    /// Every call to the store: for a service without a cache.
    pub fn direct(store: &Arc<dyn Store>) -> Self {
        Self {
            keys: store.clone(),
            key_lookup: store.clone(),
            revocations: store.clone(),
            lockout: store.clone(),
            owners: store.clone(),
        }
    }
}

pub struct CachedStore {
    keys: keys::KeyCache,
    revocations: revocations::RevocationSet,
    counters: counters::FailureCounters,
    follower: follower::Follower,
    owners: Arc<dyn OwnerStore>,
    /// The service's time, which revocations' expiries are written in.
    clock: Clock,
}

impl CachedStore {
    /// In front of `store`, on the system clock. `serve_logins` only for a store no other process writes keys or
    /// counters to (the embedded one). Nothing is answered from memory until `keep_in_sync`
    /// (or `sync_once`) has loaded the cache.
    pub fn new(store: Arc<dyn Store>, serve_logins: bool) -> Self {
        Self {
            keys: keys::KeyCache::new(store.clone(), store.clone(), serve_logins),
            revocations: revocations::RevocationSet::new(store.clone()),
            counters: counters::FailureCounters::new(store.clone(), serve_logins),
            owners: store.clone(),
            follower: follower::Follower::new(store),
            clock: Clock::system(),
        }
    }

    /// The same, judging revocations' expiry by `clock`: the service's.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// The hot paths, answered by this cache.
    pub fn hot_path(self: &Arc<Self>) -> HotPath {
        HotPath {
            keys: self.clone(),
            key_lookup: self.clone(),
            revocations: self.clone(),
            lockout: self.clone(),
            owners: self.clone(),
        }
    }
}

#[async_trait]
impl OwnerStore for CachedStore {
    async fn put_owner(
        &self,
        account: AccountId,
        owner: &OwnerId,
        limits: &Limits,
        credits: Option<&StoredCredits>,
        now: crate::store::UnixTime,
    ) -> crate::store::Result<()> {
        let put = self.owners.put_owner(account, owner, limits, credits, now).await;
        // Whatever the answer: on an error the change may still have been committed.
        self.keys.forget_statuses();
        put
    }

    async fn owner(&self, account: AccountId, owner: &OwnerId) -> crate::store::Result<Option<OwnerRecord>> {
        self.owners.owner(account, owner).await
    }
}
