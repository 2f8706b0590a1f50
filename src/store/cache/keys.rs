//! Keys, read through. Why the answers stay right:
//! - A key's status (account, scopes, expiry, enabled; for every token verification) is
//!   kept after its first read, and dropped when the key changes anywhere. Only
//!   existing keys are kept, so a key created anywhere is read from the store on first use;
//!   a deleted key leaves a tombstone (refs are random and never reused), so its tokens
//!   cost no database read either. A read that raced a deletion is dropped, never kept
//!   (`epoch`).
//! - Login records (for every API login) are kept only on the embedded store, whose only
//!   writer of keys is this process, so a deleted key stops logging in the moment its
//!   deletion returns. They are loaded *all at once* and used only while memory holds every
//!   key: then an unknown key is answered from memory exactly like a known one. A
//!   read-through login cache would answer known keys faster than unknown ones, which tells
//!   an attacker which keys exist; so with more than `MAX_LOGINS` keys every login reads the
//!   store. With PostgreSQL another replica may delete a key, and its logins must fail at
//!   once on every replica, which no notification can promise: there logins read the store
//!   (one indexed point read), and only verification, which has a 1 s bound, uses memory.
//!
//! This process's own deletions apply at once; everyone else's come from the follower.
//! Memory holds at most `MAX_LOGINS` login records, `MAX_KEYS` accounts and
//! `MAX_TOMBSTONES` tombstones; random entries make room when full.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;

use super::CachedStore;
use crate::{
    domain::{API_KEY_LEN, AccountId, ApiKeyId, KeyRef, Scopes},
    store::{KeyAbout, KeyLookupStore, KeyRecord, KeyStatus, KeyStore, KeyUpdate, PreviousSecret, Result, UnixTime},
};

/// At most this many keys' statuses in memory, for verification (about 80 bytes each).
const MAX_KEYS: usize = 1 << 16;
/// At most this many keys' login records in memory (about 130 bytes each); with more,
/// every login reads the store.
pub(super) const MAX_LOGINS: usize = 1 << 18;
/// At most this many tombstones of deleted keys (about 20 bytes each).
const MAX_TOMBSTONES: usize = 1 << 16;

/// What the cache keeps of a key for logins: the `KeyRecord`, with the key and hash inline.
#[derive(Clone)]
struct Login {
    key_ref: KeyRef,
    account_id: AccountId,
    secret_hash: [u8; 32],
    created_at: UnixTime,
    scopes: Scopes,
    expires_at: Option<UnixTime>,
    enabled: bool,
    /// Boxed: most keys are not in a roll's grace period.
    previous: Option<Box<([u8; 32], UnixTime)>>,
}

#[derive(Default)]
struct Entries {
    /// By API key, for logins (embedded store only): every key there is, or unused.
    logins: HashMap<[u8; API_KEY_LEN], Login>,
    /// Whether `logins` holds every key, so that a key missing from it does not exist.
    logins_complete: bool,
    /// A full load lost a race with a change, or a change left `logins` incomplete: load
    /// again at the next poll.
    reload_soon: bool,
    /// By ref, for token verification.
    statuses: HashMap<KeyRef, KeyStatus>,
    /// Refs known to be deleted.
    deleted: HashSet<KeyRef>,
}

impl Entries {
    fn add(&mut self, key: &KeyRecord) {
        let Ok(secret_hash) = <[u8; 32]>::try_from(key.secret_hash.as_slice()) else { return };
        let previous = key
            .previous
            .as_ref()
            .and_then(|p| Some(Box::new((<[u8; 32]>::try_from(p.hash.as_slice()).ok()?, p.until))));
        let login = Login {
            key_ref: key.key_ref,
            account_id: key.account_id,
            secret_hash,
            created_at: key.created_at,
            scopes: key.scopes.clone(),
            expires_at: key.expires_at,
            enabled: key.enabled,
            previous,
        };
        self.logins.insert(key.api_key.to_bytes(), login);
    }

    fn forget(&mut self, key_ref: KeyRef, api_key: Option<&ApiKeyId>) {
        self.statuses.remove(&key_ref);
        match api_key {
            Some(api_key) => {
                self.logins.remove(&api_key.to_bytes());
            }
            // Rare (a deletion made here, by ref): a scan of at most MAX_LOGINS entries.
            None => self.logins.retain(|_, login| login.key_ref != key_ref),
        }
    }
}

pub(super) struct KeyCache {
    store: Arc<dyn KeyStore>,
    lookup: Arc<dyn KeyLookupStore>,
    /// Whether API logins may be answered from memory (see the module comment).
    serve_logins: bool,
    entries: RwLock<Entries>,
    /// Bumped whenever entries are dropped because the store changed. A read-through fill
    /// records it before reading the store and is discarded if it moved meanwhile, so a
    /// read that raced a deletion can never put the deleted key back.
    epoch: AtomicU64,
}

/// What a full reload read: every key when logins are served, and the epoch before.
pub(super) struct Loaded {
    epoch: u64,
    all: Option<Vec<KeyRecord>>,
}

impl KeyCache {
    pub(super) fn new(store: Arc<dyn KeyStore>, lookup: Arc<dyn KeyLookupStore>, serve_logins: bool) -> Self {
        Self { store, lookup, serve_logins, entries: RwLock::default(), epoch: AtomicU64::new(0) }
    }

    fn entries(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn entries_mut(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether this part holds all it can: every key for logins, where logins are served.
    pub(super) fn is_complete(&self) -> bool {
        !self.serve_logins || self.entries().logins_complete
    }

    /// Whether a change made the login set incomplete, so a full reload is due now.
    pub(super) fn reload_soon(&self) -> bool {
        self.entries().reload_soon
    }

    /// Drops a key's entries (and the fills racing with it) after a change in the store. A
    /// key that may still exist (changed, or a deletion whose outcome is unknown) leaves the
    /// logins incomplete until the next full load.
    pub(super) fn forget_key(&self, key_ref: KeyRef, api_key: Option<&ApiKeyId>, deleted: bool) {
        let mut entries = self.entries_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.forget(key_ref, api_key);
        if deleted {
            make_room(&mut entries.deleted, MAX_TOMBSTONES);
            entries.deleted.insert(key_ref);
        } else if entries.logins_complete {
            entries.logins_complete = false;
            entries.reload_soon = true;
        }
    }

    /// Every key's status is read again on next use (an owner's limits changed), logins kept.
    pub(super) fn forget_statuses(&self) {
        let mut entries = self.entries_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.statuses = HashMap::new();
    }

    pub(super) fn forget_all(&self) {
        let mut entries = self.entries_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.logins = HashMap::new();
        entries.statuses = HashMap::new();
        entries.logins_complete = false;
        entries.reload_soon = self.serve_logins;
    }

    /// The first half of a full reload: every key, when logins are served.
    pub(super) async fn load(&self) -> Result<Loaded> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let all = match self.serve_logins {
            true => Some(self.store.all_keys(MAX_LOGINS as u32 + 1).await?),
            false => None,
        };
        Ok(Loaded { epoch, all })
    }

    /// The second half: every entry dropped, and the logins replaced by what `load` read if
    /// nothing changed meanwhile and they fit. Returns whether there were too many keys.
    pub(super) fn reload(&self, loaded: Loaded) -> bool {
        self.forget_all();
        let Some(all) = loaded.all else { return false };
        let mut entries = self.entries_mut();
        // Any key created or deleted meanwhile moved the epoch: the load may miss it.
        if self.epoch.load(Ordering::Acquire) != loaded.epoch + 1 {
            entries.reload_soon = true;
        } else if all.len() <= MAX_LOGINS {
            for key in &all {
                entries.add(key);
            }
            entries.logins_complete = true;
            entries.reload_soon = false;
        } else {
            entries.reload_soon = false;
            return true;
        }
        false
    }

    /// A key this process just created: with every key in memory, it joins them, so that
    /// it logs in at once.
    fn key_added(&self, key: &KeyRecord) {
        let mut entries = self.entries_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if !entries.logins_complete {
            return;
        }
        if entries.logins.len() >= MAX_LOGINS {
            tracing::warn!(max = MAX_LOGINS, "too many keys to keep in memory; logins read the store");
            entries.logins_complete = false;
            return;
        }
        entries.add(key);
    }

    /// A key whose change this process just committed, or read back after hearing of
    /// another's: its status is read again on next use, and its login record replaced.
    fn key_replaced(&self, key: &KeyRecord) {
        let mut entries = self.entries_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.statuses.remove(&key.key_ref);
        if entries.logins_complete {
            entries.add(key);
        }
    }

    /// Another process changed a key. Logins served from memory take the key as the store
    /// has it now, unless something else changed meanwhile; otherwise it is forgotten.
    pub(super) async fn changed_elsewhere(&self, key_ref: KeyRef, api_key: &ApiKeyId) {
        if self.serve_logins && self.entries().logins_complete {
            let epoch = self.epoch.load(Ordering::Acquire);
            if let Ok(Some(key)) = self.store.find_key(api_key).await {
                if key.key_ref == key_ref && self.epoch.load(Ordering::Acquire) == epoch {
                    self.key_replaced(&key);
                    return;
                }
            }
        }
        self.forget_key(key_ref, Some(api_key), false);
    }

    /// The login record of `api_key` from memory (`Some(None)`: there is none), or `None`
    /// when memory does not hold every key.
    fn login(&self, api_key: &ApiKeyId) -> Option<Option<KeyRecord>> {
        let entries = self.entries();
        if !entries.logins_complete {
            return None;
        }
        Some(entries.logins.get(&api_key.to_bytes()).map(|login| KeyRecord {
            key_ref: login.key_ref,
            account_id: login.account_id,
            api_key: api_key.clone(),
            secret_hash: login.secret_hash.to_vec(),
            created_at: login.created_at,
            scopes: login.scopes.clone(),
            expires_at: login.expires_at,
            enabled: login.enabled,
            previous: login.previous.as_ref().map(|p| PreviousSecret { hash: p.0.to_vec(), until: p.1 }),
        }))
    }

    /// The status of `key_ref` from memory (`Some(None)`: deleted), or `None` when unknown.
    fn status(&self, key_ref: KeyRef) -> Option<Option<KeyStatus>> {
        let entries = self.entries();
        if entries.deleted.contains(&key_ref) {
            return Some(None);
        }
        entries.statuses.get(&key_ref).map(|status| Some(status.clone()))
    }

    fn fill_status(&self, epoch: u64, key_ref: KeyRef, status: Option<&KeyStatus>) {
        let mut entries = self.entries_mut();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        match status {
            Some(status) if !entries.deleted.contains(&key_ref) => {
                make_room(&mut entries.statuses, MAX_KEYS);
                entries.statuses.insert(key_ref, status.clone());
            }
            Some(_) => {}
            // Refs are random and never reused: not there now means deleted for good.
            None => {
                make_room(&mut entries.deleted, MAX_TOMBSTONES);
                entries.deleted.insert(key_ref);
            }
        }
    }
}

#[async_trait]
impl KeyStore for CachedStore {
    async fn insert_key(&self, key: &KeyRecord, about: &KeyAbout) -> Result<()> {
        self.keys.store.insert_key(key, about).await?;
        if self.keys.serve_logins {
            self.keys.key_added(key);
        }
        Ok(())
    }

    async fn find_key(&self, api_key: &ApiKeyId) -> Result<Option<KeyRecord>> {
        // Known or unknown, a key costs the same to look up: from memory when memory holds
        // every key, from the store otherwise. A cache that held only some keys would
        // answer known ones faster, and so tell which keys exist.
        if self.keys.serve_logins && self.is_trusted() {
            if let Some(found) = self.keys.login(api_key) {
                return Ok(found);
            }
        }
        self.keys.store.find_key(api_key).await
    }

    async fn all_keys(&self, limit: u32) -> Result<Vec<KeyRecord>> {
        self.keys.store.all_keys(limit).await
    }

    async fn delete_key(&self, account: AccountId, key_ref: KeyRef) -> Result<bool> {
        let deleted = self.keys.store.delete_key(account, key_ref).await;
        // Forgotten whatever the answer: on an error the deletion may still have been
        // committed, and forgetting a live key costs only a read.
        self.keys.forget_key(key_ref, None, matches!(deleted, Ok(true)));
        deleted
    }

    async fn update_key(
        &self,
        account: AccountId,
        key_ref: KeyRef,
        update: &KeyUpdate,
        now: UnixTime,
    ) -> Result<Option<KeyRecord>> {
        let updated = self.keys.store.update_key(account, key_ref, update, now).await;
        self.keys.applied(key_ref, &updated);
        updated
    }

    async fn roll_key(
        &self,
        account: AccountId,
        key_ref: KeyRef,
        secret_hash: &[u8],
        previous_until: Option<UnixTime>,
    ) -> Result<Option<KeyRecord>> {
        let rolled = self.keys.store.roll_key(account, key_ref, secret_hash, previous_until).await;
        self.keys.applied(key_ref, &rolled);
        rolled
    }
}

impl KeyCache {
    /// After this process changed a key: memory takes the key as committed, at once. On an
    /// error the change may still have been committed, so the key is forgotten.
    fn applied(&self, key_ref: KeyRef, outcome: &Result<Option<KeyRecord>>) {
        match outcome {
            Ok(Some(key)) => self.key_replaced(key),
            Ok(None) => {}
            Err(_) => self.forget_key(key_ref, None, false),
        }
    }
}

#[async_trait]
impl KeyLookupStore for CachedStore {
    async fn key_status(&self, key_ref: KeyRef) -> Result<Option<KeyStatus>> {
        if !self.is_trusted() {
            return self.keys.lookup.key_status(key_ref).await;
        }
        if let Some(status) = self.keys.status(key_ref) {
            return Ok(status);
        }
        let epoch = self.keys.epoch.load(Ordering::Acquire);
        let status = self.keys.lookup.key_status(key_ref).await?;
        self.keys.fill_status(epoch, key_ref, status.as_ref());
        Ok(status)
    }
}

/// Frees about 1/16 of a full map, taking entries in the map's own (hash, so effectively
/// random) order: cheap, and no key can be kept resident by anyone's access pattern.
fn make_room<C: Evict>(map: &mut C, max: usize) {
    if map.len() >= max {
        map.evict(max / 16 + 1);
    }
}

trait Evict {
    fn len(&self) -> usize;
    fn evict(&mut self, n: usize);
}

impl<K: std::hash::Hash + Eq + Clone, V> Evict for HashMap<K, V> {
    fn len(&self) -> usize {
        HashMap::len(self)
    }
    fn evict(&mut self, n: usize) {
        let victims: Vec<K> = self.keys().take(n).cloned().collect();
        for k in victims {
            self.remove(&k);
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Evict for HashSet<K> {
    fn len(&self) -> usize {
        HashSet::len(self)
    }
    fn evict(&mut self, n: usize) {
        let victims: Vec<K> = self.iter().take(n).cloned().collect();
        for k in victims {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{AccountName, Email},
        store::{AdminId, NewAdmin, Store},
    };

    async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        Arc::new(crate::store::sqlite::SqliteStore::connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn a_read_that_raced_a_deletion_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
        let admin = NewAdmin {
            id: AdminId(uuid::Uuid::new_v4()),
            email: Email::parse("a@example.com").unwrap(),
            password_hash: "x".into(),
            created_at: 0,
        };
        let account = store.create_admin(&AccountName::parse("acme").unwrap(), &admin).await.unwrap();
        let key = KeyRecord {
            key_ref: KeyRef::generate(),
            account_id: account,
            api_key: ApiKeyId::generate(),
            secret_hash: vec![7; 32],
            created_at: 0,
            scopes: Scopes::default(),
            expires_at: None,
            enabled: true,
            previous: None,
        };
        store.insert_key(&key, &KeyAbout::default()).await.unwrap();
        let cache = CachedStore::new(store.clone(), true);
        cache.sync_once().await;

        // Every key is in memory for logins.
        let entries = || cache.keys.entries();
        assert!(entries().logins_complete && entries().logins.contains_key(&key.api_key.to_bytes()));
        // A verification read the key's account from the store; before it could fill the
        // cache, another server deleted the key and this one heard of it.
        let epoch = cache.keys.epoch.load(Ordering::Acquire);
        let other = CachedStore::new(store.clone(), true);
        assert!(other.delete_key(account, key.key_ref).await.unwrap());
        cache.sync_once().await;
        cache.keys.fill_status(epoch, key.key_ref, Some(&KeyStatus::from(&key)));
        assert!(entries().logins.is_empty() && entries().statuses.is_empty(), "a stale read was cached");
        assert!(cache.find_key(&key.api_key).await.unwrap().is_none());
        assert_eq!(cache.key_status(key.key_ref).await.unwrap(), None);
    }

    #[test]
    fn full_maps_make_room() {
        let mut map: HashMap<u32, ()> = (0..64).map(|i| (i, ())).collect();
        make_room(&mut map, 64);
        assert_eq!(map.len(), 64 - 5);
        make_room(&mut map, 64);
        assert_eq!(map.len(), 59, "not full: nothing evicted");
    }
}
