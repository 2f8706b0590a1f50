//! `CachedStore`: any store, with the reads on the hot paths answered from memory.
//!
//! What is cached, and why it stays right:
//! - **Keys.** A key's account (for every token verification) is kept after the first read
//!   (read-through): only existing keys are cached, so a key created anywhere is read from
//!   the store on first use. Deleted keys leave a tombstone (key refs are random and never
//!   reused), so a deleted key's tokens cost no database read either. On the embedded
//!   store the login records (for every API login) are loaded *all at once*, and used only
//!   while memory holds every key: then an unknown key is answered from memory exactly like
//!   a known one. A read-through login cache would answer known keys faster than unknown
//!   ones, which tells an attacker which keys exist; so with more than `MAX_LOGINS` keys every
//!   login reads the store instead.
//! - **The revocation set, complete.** Every live revoked `jti`, loaded at start and kept
//!   current, so "is this token revoked?" never needs the store.
//!
//! Both follow the store's change log (`ChangeFeed`): this process applies its own
//! deletions and revocations at once; everyone else's arrive through the log, read every
//! `POLL_EVERY` and, on PostgreSQL, as soon as they commit (LISTEN/NOTIFY). The cache
//! answers only while that reading works: each successful read extends a lease of `LEASE`,
//! and when the lease runs out (database away, reader stuck) every call goes to the store
//! again, exactly as without a cache. So a change committed anywhere is seen here within
//! `LEASE` (under 1 s), or the cache is not used at all.
//!
//! API logins are answered from memory only on the embedded store, whose only writer of
//! keys is this process: there a deleted key stops logging in the moment its deletion
//! returns. With PostgreSQL another replica may delete a key, and a login must fail at once
//! on every replica after that, which no notification can promise; so logins there read
//! the store (one indexed point read), and only token verification, which has a 1 s bound,
//! is served from memory.
//!
//! Failed-login counters are mirrored the same way, and for the same reason only on the
//! embedded store: there this process is their only writer, so a write-through copy is
//! exact and an API login's lockout check costs no database read. The attempts in flight
//! (see `service::lockout`) live only in that copy, so admitting and ending a login that
//! changes no count costs no write either. With PostgreSQL a lock set or an attempt
//! admitted by another replica must count here at once, so every update goes to the store.
//!
//! Memory is bounded: at most `MAX_LOGINS` login records, `MAX_KEYS` accounts and `MAX_TOMBSTONES` tombstones (random
//! entries make room when full), and `MAX_REVOCATIONS` revocations, past which the set is
//! marked incomplete and revocation checks go to the store until a full reload fits again.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::*;
use crate::{clock::Clock, domain::API_KEY_LEN};

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
/// While the revocation set is incomplete (too large for memory), a full reload is tried
/// this often, to start using it again once it fits.
const RETRY_INCOMPLETE_EVERY: Duration = Duration::from_secs(60);
/// Rows read per query while catching up.
const BATCH: u32 = 1000;

/// At most this many keys' accounts in memory, for verification (about 40 bytes each).
const MAX_KEYS: usize = 1 << 16;
/// At most this many keys' login records in memory (about 100 bytes each); with more,
/// every login reads the store.
const MAX_LOGINS: usize = 1 << 18;
/// At most this many tombstones of deleted keys (about 20 bytes each).
const MAX_TOMBSTONES: usize = 1 << 16;
/// At most this many live revocations in memory (about 35 bytes each); beyond, the store
/// answers. Revocations are bounded per account (`RevocationLimits`), so filling this takes
/// many accounts at their limit, not one tenant.
const MAX_REVOCATIONS: usize = 1 << 18;

/// What the cache keeps of a key for logins: the `KeyRecord`, with the key and hash inline.
#[derive(Clone)]
struct Login {
    key_ref: KeyRef,
    account_id: AccountId,
    secret_hash: [u8; 32],
    created_at: UnixTime,
    scopes: Scopes,
}

#[derive(Default)]
struct Keys {
    /// By API key, for logins (embedded store only): every key there is, or unused.
    logins: HashMap<[u8; API_KEY_LEN], Login>,
    /// Whether `logins` holds every key, so that a key missing from it does not exist.
    logins_complete: bool,
    /// A full load lost a race with a change, or a change left `logins` incomplete: load
    /// again at the next poll.
    reload_soon: bool,
    /// By ref, for token verification.
    accounts: HashMap<KeyRef, AccountId>,
    /// Refs known to be deleted.
    deleted: HashSet<KeyRef>,
}

impl Keys {
    fn add(&mut self, key: &KeyRecord) {
        let Ok(secret_hash) = <[u8; 32]>::try_from(key.secret_hash.as_slice()) else { return };
        let login = Login {
            key_ref: key.key_ref,
            account_id: key.account_id,
            secret_hash,
            created_at: key.created_at,
            scopes: key.scopes.clone(),
        };
        self.logins.insert(key.api_key.to_bytes(), login);
    }

    fn forget(&mut self, key_ref: KeyRef, api_key: Option<&ApiKeyId>) {
        self.accounts.remove(&key_ref);
        match api_key {
            Some(api_key) => {
                self.logins.remove(&api_key.to_bytes());
            }
            // Rare (a deletion made here, by ref): a scan of at most MAX_KEYS entries.
            None => self.logins.retain(|_, login| login.key_ref != key_ref),
        }
    }
}

struct Revoked {
    /// jti (as `jti_key`) → when the revocation lapses.
    jtis: HashMap<u128, UnixTime>,
    /// False when revocations were left out for lack of room: then only the store knows.
    complete: bool,
}

pub struct CachedStore {
    inner: Arc<dyn Store>,
    /// Whether API logins may be answered from memory (see the module comment).
    serve_logins: bool,
    keys: RwLock<Keys>,
    revoked: RwLock<Revoked>,
    /// Bumped whenever entries are dropped because the store changed. A read-through fill
    /// records it before reading the store and is discarded if it moved meanwhile, so a
    /// read that raced a deletion can never put the deleted key back.
    epoch: AtomicU64,
    /// Milliseconds after `origin` until which the cache may answer.
    trusted_until: AtomicU64,
    origin: Instant,
    /// The change-log position applied so far; only the reader task moves it.
    cursor: tokio::sync::Mutex<Cursor>,
    /// Whether a failure to read the change log has been logged since the last success.
    complained: AtomicBool,
    /// Embedded store only: each subject's counter (`None`: none), with the attempts in
    /// flight, which only this process can have and so are kept here alone. Every update
    /// holds the lock from its read to its write, so updates of one subject never interleave.
    counters: tokio::sync::Mutex<Counters>,
    /// The service's time, which revocations' expiries are written in.
    clock: Clock,
}

/// The embedded store's failure counters, as this process knows them.
#[derive(Default)]
struct Counters {
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

impl Counters {
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

/// At most this many subjects' counters are mirrored; past it the mirror starts afresh.
const MAX_COUNTERS: usize = 100_000;

#[derive(Default)]
struct Cursor {
    seq: i64,
    /// None until the first full load.
    loaded_at: Option<Instant>,
}

impl CachedStore {
    /// Wraps `inner`, on the system clock. `serve_logins` only for a store no other process
    /// deletes keys from. The cache answers nothing until `keep_in_sync` has loaded it.
    pub fn new(inner: Arc<dyn Store>, serve_logins: bool) -> Self {
        Self {
            inner,
            serve_logins,
            keys: RwLock::default(),
            revoked: RwLock::new(Revoked { jtis: HashMap::new(), complete: false }),
            epoch: AtomicU64::new(0),
            trusted_until: AtomicU64::new(0),
            origin: Instant::now(),
            cursor: tokio::sync::Mutex::default(),
            complained: AtomicBool::new(false),
            counters: tokio::sync::Mutex::default(),
            clock: Clock::system(),
        }
    }

    /// The same, judging revocations' expiry by `clock`: the service's.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Whether the change log was read recently enough for the cache to answer.
    pub fn is_trusted(&self) -> bool {
        self.now_ms() < self.trusted_until.load(Ordering::Acquire)
    }

    fn keys(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn keys_mut(&self) -> RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn revoked(&self) -> RwLockReadGuard<'_, Revoked> {
        self.revoked.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn revoked_mut(&self) -> RwLockWriteGuard<'_, Revoked> {
        self.revoked.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops a key's entries (and the fills racing with it) after a change in the store. A
    /// key that may still exist (changed, or a deletion whose outcome is unknown) leaves the
    /// logins incomplete until the next full load.
    fn forget_key(&self, key_ref: KeyRef, api_key: Option<&ApiKeyId>, deleted: bool) {
        let mut keys = self.keys_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        keys.forget(key_ref, api_key);
        if deleted {
            make_room(&mut keys.deleted, MAX_TOMBSTONES);
            keys.deleted.insert(key_ref);
        } else if keys.logins_complete {
            keys.logins_complete = false;
            keys.reload_soon = true;
        }
    }

    fn forget_all_keys(&self) {
        let mut keys = self.keys_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        keys.logins = HashMap::new();
        keys.accounts = HashMap::new();
        keys.logins_complete = false;
        keys.reload_soon = self.serve_logins;
    }

    /// A key this process just created: with every key in memory, it joins them, so that
    /// it logs in at once.
    fn key_added(&self, key: &KeyRecord) {
        let mut keys = self.keys_mut();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if !keys.logins_complete {
            return;
        }
        if keys.logins.len() >= MAX_LOGINS {
            tracing::warn!(max = MAX_LOGINS, "too many keys to keep in memory; logins read the store");
            keys.logins_complete = false;
            return;
        }
        keys.add(key);
    }

    fn remember_revocation(&self, jti: &str, expires_at: UnixTime) {
        let key = jti_key(jti);
        let mut revoked = self.revoked_mut();
        if revoked.jtis.len() >= MAX_REVOCATIONS && !revoked.jtis.contains_key(&key) {
            let now = self.clock.now();
            revoked.jtis.retain(|_, until| *until > now);
            if revoked.jtis.len() >= MAX_REVOCATIONS {
                if revoked.complete {
                    tracing::warn!(
                        max = MAX_REVOCATIONS,
                        "too many live revocations to keep in memory; asking the store"
                    );
                }
                revoked.complete = false;
                return;
            }
        }
        revoked.jtis.insert(key, expires_at);
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
                match self.inner.change_signal().await {
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
        let started = self.now_ms();
        let mut cursor = self.cursor.lock().await;
        let lapsed_for = Duration::from_millis(started.saturating_sub(self.trusted_until.load(Ordering::Acquire)));
        let reload = match cursor.loaded_at {
            None => true,
            Some(at) => {
                let complete = self.revoked().complete && (!self.serve_logins || self.keys().logins_complete);
                let every = if complete { FULL_RELOAD_EVERY } else { RETRY_INCOMPLETE_EVERY };
                at.elapsed() >= every || lapsed_for >= RELOAD_AFTER_LAPSE || self.keys().reload_soon
            }
        };
        let done = if reload { self.reload(&mut cursor).await } else { self.catch_up(&mut cursor).await };
        match done {
            Ok(()) => {
                self.trusted_until.fetch_max(started + LEASE.as_millis() as u64, Ordering::AcqRel);
                if self.complained.swap(false, Ordering::Relaxed) {
                    tracing::info!("reading the change log again; caches in use");
                }
            }
            Err(e) => {
                if !self.complained.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read the change log; caches unused until it works again");
                }
            }
        }
    }

    /// Everything from scratch: the log position, every live revocation; key entries are
    /// dropped (and refilled on use), except that logins on the embedded store load every
    /// key when they fit. Also purges old log rows.
    async fn reload(&self, cursor: &mut Cursor) -> Result<()> {
        // The position first: changes committed after it are read by the next catch-up,
        // even those the reload below already reflects (applying one twice is harmless).
        let seq = self.inner.last_change().await?;
        let live = self.inner.live_revocations(self.clock.now()).await?;
        let epoch = self.epoch.load(Ordering::Acquire);
        let all = match self.serve_logins {
            true => Some(self.inner.all_keys(MAX_LOGINS as u32 + 1).await?),
            false => None,
        };
        self.forget_all_keys();
        if let Some(all) = all {
            let mut keys = self.keys_mut();
            // Any key created or deleted meanwhile moved the epoch: the load may miss it.
            if self.epoch.load(Ordering::Acquire) != epoch + 1 {
                keys.reload_soon = true;
            } else if all.len() <= MAX_LOGINS {
                for key in &all {
                    keys.add(key);
                }
                keys.logins_complete = true;
                keys.reload_soon = false;
            } else {
                keys.reload_soon = false;
                if cursor.loaded_at.is_none() {
                    tracing::warn!(max = MAX_LOGINS, "too many keys to keep in memory; logins read the store");
                }
            }
        }
        {
            let mut revoked = self.revoked_mut();
            revoked.complete = live.len() <= MAX_REVOCATIONS;
            revoked.jtis = live.iter().take(MAX_REVOCATIONS).map(|(jti, until)| (jti_key(jti), *until)).collect();
        }
        // The change log's rows are stamped by the database's own clock (its triggers), so
        // their age is told by the wall clock, whatever the service's says.
        if let Err(e) = self.inner.purge_changes(Clock::system().now() - CHANGE_RETENTION).await {
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
            let batch = self.inner.changes_after(cursor.seq, BATCH).await?;
            for (seq, change) in &batch {
                match change {
                    Change::KeyDeleted { key_ref, api_key } => self.forget_key(*key_ref, Some(api_key), true),
                    Change::KeyChanged { key_ref, api_key } => self.forget_key(*key_ref, Some(api_key), false),
                    Change::TokenRevoked { jti, expires_at } => self.remember_revocation(jti, *expires_at),
                    Change::FailuresCleared { subject } => {
                        if self.serve_logins {
                            self.counters.lock().await.stale.insert(subject.clone());
                        }
                    }
                    Change::Unreadable => self.forget_all_keys(),
                }
                cursor.seq = *seq;
            }
            if batch.len() < BATCH as usize {
                return Ok(());
            }
        }
    }

    fn fill_account(&self, epoch: u64, key_ref: KeyRef, account: Option<AccountId>) {
        let mut keys = self.keys_mut();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        match account {
            Some(account) if !keys.deleted.contains(&key_ref) => {
                make_room(&mut keys.accounts, MAX_KEYS);
                keys.accounts.insert(key_ref, account);
            }
            Some(_) => {}
            // Refs are random and never reused: not there now means deleted for good.
            None => {
                make_room(&mut keys.deleted, MAX_TOMBSTONES);
                keys.deleted.insert(key_ref);
            }
        }
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

/// A jti as a 128-bit map key: ours are 32 lowercase hex digits, kept as their value;
/// any other string (never issued by us) by the first 128 bits of its SHA-256.
fn jti_key(jti: &str) -> u128 {
    if jti.len() == 32 && jti.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        if let Ok(v) = u128::from_str_radix(jti, 16) {
            return v;
        }
    }
    let digest = Sha256::digest(jti.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

#[async_trait]
impl KeyStore for CachedStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        self.inner.insert_key(key).await?;
        if self.serve_logins {
            self.key_added(key);
        }
        Ok(())
    }

    async fn find_key(&self, api_key: &ApiKeyId) -> Result<Option<KeyRecord>> {
        // Known or unknown, a key costs the same to look up: from memory when memory holds
        // every key, from the store otherwise. A cache that held only some keys would
        // answer known ones faster, and so tell which keys exist.
        if self.serve_logins && self.is_trusted() {
            let keys = self.keys();
            if keys.logins_complete {
                return Ok(keys.logins.get(&api_key.to_bytes()).map(|login| KeyRecord {
                    key_ref: login.key_ref,
                    account_id: login.account_id,
                    api_key: api_key.clone(),
                    secret_hash: login.secret_hash.to_vec(),
                    created_at: login.created_at,
                    scopes: login.scopes.clone(),
                }));
            }
        }
        self.inner.find_key(api_key).await
    }

    async fn all_keys(&self, limit: u32) -> Result<Vec<KeyRecord>> {
        self.inner.all_keys(limit).await
    }

    async fn list_keys(&self, account: AccountId) -> Result<Vec<KeySummary>> {
        self.inner.list_keys(account).await
    }

    async fn delete_key(&self, account: AccountId, key_ref: KeyRef) -> Result<bool> {
        let deleted = self.inner.delete_key(account, key_ref).await;
        // Forgotten whatever the answer: on an error the deletion may still have been
        // committed, and forgetting a live key costs only a read.
        self.forget_key(key_ref, None, matches!(deleted, Ok(true)));
        deleted
    }
}

#[async_trait]
impl KeyLookupStore for CachedStore {
    async fn key_account(&self, key_ref: KeyRef) -> Result<Option<AccountId>> {
        if !self.is_trusted() {
            return self.inner.key_account(key_ref).await;
        }
        {
            let keys = self.keys();
            if keys.deleted.contains(&key_ref) {
                return Ok(None);
            }
            if let Some(account) = keys.accounts.get(&key_ref) {
                return Ok(Some(*account));
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let account = self.inner.key_account(key_ref).await?;
        self.fill_account(epoch, key_ref, account);
        Ok(account)
    }
}

#[async_trait]
impl RevocationStore for CachedStore {
    async fn revoke_token(&self, revocation: &Revocation) -> Result<()> {
        let stored = self.inner.revoke_token(revocation).await;
        // Remembered whatever the answer: the caller asked for it, and on an error it may
        // have been stored anyway. Refusing a token someone wanted dead is the safe side.
        self.remember_revocation(&revocation.jti, revocation.expires_at);
        stored
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool> {
        if self.is_trusted() {
            let revoked = self.revoked();
            if revoked.complete {
                return Ok(revoked.jtis.contains_key(&jti_key(jti)));
            }
        }
        self.inner.is_token_revoked(jti).await
    }

    async fn live_revocations_of(&self, key_ref: KeyRef, account: AccountId, now: UnixTime) -> Result<(u64, u64)> {
        self.inner.live_revocations_of(key_ref, account, now).await
    }

    async fn purge_revocations(&self, now: UnixTime) -> Result<u64> {
        self.revoked_mut().jtis.retain(|_, until| *until > now);
        self.inner.purge_revocations(now).await
    }
}

// Everything below passes straight through.

#[async_trait]
impl AdminStore for CachedStore {
    async fn create_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<AccountId> {
        self.inner.create_admin(account, admin).await
    }
    async fn bootstrap_admin(&self, account: &AccountName, admin: &NewAdmin) -> Result<bool> {
        self.inner.bootstrap_admin(account, admin).await
    }
    async fn find_admin(&self, email: &Email) -> Result<Option<AdminRecord>> {
        self.inner.find_admin(email).await
    }
    async fn any_admin(&self) -> Result<bool> {
        self.inner.any_admin().await
    }
}

#[async_trait]
impl AdminManagementStore for CachedStore {
    async fn list_admins(&self, account: Option<&AccountName>) -> Result<Vec<AdminSummary>> {
        self.inner.list_admins(account).await
    }
    async fn admin_by_id(&self, id: AdminId) -> Result<Option<AdminRecord>> {
        self.inner.admin_by_id(id).await
    }
    async fn set_admin_password(
        &self,
        id: AdminId,
        password_hash: &str,
        keep: Option<&SessionHash>,
    ) -> Result<Option<u64>> {
        self.inner.set_admin_password(id, password_hash, keep).await
    }
    async fn delete_admin_sessions(&self, id: AdminId) -> Result<u64> {
        self.inner.delete_admin_sessions(id).await
    }
    async fn delete_admin(&self, id: AdminId) -> Result<AdminDeletion> {
        self.inner.delete_admin(id).await
    }
}

#[async_trait]
impl LockoutStore for CachedStore {
    async fn failure_counters(&self, subjects: &[String]) -> Result<Vec<(String, FailureCounter)>> {
        if !self.serve_logins {
            return self.inner.failure_counters(subjects).await;
        }
        let mut counters = self.counters.lock().await;
        self.fill_counters(&mut counters, subjects).await?;
        Ok(subjects.iter().filter_map(|s| counters.get(s).flatten().map(|c| (s.clone(), c))).collect())
    }

    async fn all_failure_counters(&self, limit: u32) -> Result<Vec<(String, FailureCounter)>> {
        self.inner.all_failure_counters(limit).await
    }

    async fn update_counters(&self, subjects: &[String], update: CounterUpdate<'_>) -> Result<Vec<FailureCounter>> {
        if !self.serve_logins {
            return self.inner.update_counters(subjects, update).await;
        }
        let mut counters = self.counters.lock().await;
        self.fill_counters(&mut counters, subjects).await?;
        let current: Vec<FailureCounter> =
            subjects.iter().map(|s| counters.get(s).flatten().unwrap_or_default()).collect();
        let next = update(&current);
        // The store keeps what outlives this process; attempts in flight do not, so admitting
        // and ending an attempt that changes nothing else costs no write.
        let stored: Vec<FailureCounter> = next.iter().map(|c| c.without_attempts()).collect();
        if current.iter().zip(&stored).any(|(c, s)| c.without_attempts() != *s) {
            self.inner.update_counters(subjects, &|_| stored.clone()).await?;
        }
        for (subject, c) in subjects.iter().zip(&next) {
            counters.set(subject, Some(*c));
        }
        if counters.map.len() > MAX_COUNTERS {
            counters.keep_in_flight();
        }
        Ok(next)
    }

    async fn clear_failures(&self, subject: &str) -> Result<()> {
        if !self.serve_logins {
            return self.inner.clear_failures(subject).await;
        }
        let mut counters = self.counters.lock().await;
        self.inner.clear_failures(subject).await?;
        // Attempts in flight stay counted: they are still running.
        counters.take_stored(subject.to_owned(), None);
        Ok(())
    }

    async fn prune_failures(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        if !self.serve_logins {
            return self.inner.prune_failures(idle_since, now).await;
        }
        let mut counters = self.counters.lock().await;
        let pruned = self.inner.prune_failures(idle_since, now).await;
        // Loaded again when next needed (also picking up what else changed the store, such
        // as `keygate admin unlock`), except the attempts in flight, which only we know.
        counters.keep_in_flight();
        counters.loaded = false;
        pruned
    }
}

impl CachedStore {
    /// Makes the mirror know `subjects`: at first use (and after each prune) by loading
    /// every counter, when they fit; otherwise by reading those it does not know.
    async fn fill_counters(&self, counters: &mut Counters, subjects: &[String]) -> Result<()> {
        if !counters.loaded {
            counters.loaded = true;
            let all = self.inner.all_failure_counters(MAX_COUNTERS as u32 + 1).await?;
            if all.len() <= MAX_COUNTERS {
                for (subject, c) in all {
                    counters.take_stored(subject, Some(c));
                }
                counters.complete = true;
            } else {
                tracing::warn!(max = MAX_COUNTERS, "too many failed-login counters to keep in memory; reading them");
            }
        }
        if counters.map.len() + subjects.len() > MAX_COUNTERS {
            counters.keep_in_flight();
        }
        let missing: Vec<String> = subjects.iter().filter(|s| counters.get(s).is_none()).cloned().collect();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = self.inner.failure_counters(&missing).await?;
        for subject in missing {
            let found = rows.iter().find(|(s, _)| *s == subject).map(|(_, c)| *c);
            counters.take_stored(subject, found);
        }
        Ok(())
    }
}

#[async_trait]
impl AuditStore for CachedStore {
    async fn append_audit(&self, event: &AuditEvent) -> Result<()> {
        self.inner.append_audit(event).await
    }
    async fn audit_events(&self, scope: &AuditScope, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        self.inner.audit_events(scope, before, limit).await
    }
}

#[async_trait]
impl SessionStore for CachedStore {
    async fn insert_session(&self, hash: &SessionHash, session: &SessionRecord) -> Result<()> {
        self.inner.insert_session(hash, session).await
    }
    async fn find_session(&self, hash: &SessionHash) -> Result<Option<SessionRecord>> {
        self.inner.find_session(hash).await
    }
    async fn touch_session(&self, hash: &SessionHash, now: UnixTime) -> Result<()> {
        self.inner.touch_session(hash, now).await
    }
    async fn delete_session(&self, hash: &SessionHash) -> Result<bool> {
        self.inner.delete_session(hash).await
    }
}

#[async_trait]
impl SigningKeyStore for CachedStore {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.inner.signing_keys().await
    }
    async fn insert_first_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()> {
        self.inner.insert_first_signing_key(key, now).await
    }
    async fn rotate_signing_key(&self, key: &SealedKey, now: UnixTime) -> Result<()> {
        self.inner.rotate_signing_key(key, now).await
    }
}

#[async_trait]
impl TransferStore for CachedStore {
    async fn export(&self) -> Result<Snapshot> {
        self.inner.export().await
    }
    async fn import(&self, snapshot: &Snapshot) -> Result<()> {
        self.inner.import(snapshot).await
    }
    async fn counts(&self) -> Result<Counts> {
        self.inner.counts().await
    }
}

#[async_trait]
impl KeyPageStore for CachedStore {
    async fn list_keys_page(
        &self,
        account: AccountId,
        after: Option<KeyRef>,
        limit: u32,
    ) -> Result<Option<Vec<KeySummary>>> {
        self.inner.list_keys_page(account, after, limit).await
    }
}

#[async_trait]
impl ChangeFeed for CachedStore {
    async fn last_change(&self) -> Result<i64> {
        self.inner.last_change().await
    }
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, Change)>> {
        self.inner.changes_after(after, limit).await
    }
    async fn live_revocations(&self, now: UnixTime) -> Result<Vec<(String, UnixTime)>> {
        self.inner.live_revocations(now).await
    }
    async fn purge_changes(&self, before: UnixTime) -> Result<u64> {
        self.inner.purge_changes(before).await
    }
    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>> {
        self.inner.change_signal().await
    }
}

#[async_trait]
impl RetentionStore for CachedStore {
    async fn delete_ended_sessions(&self, now: UnixTime, idle_since: UnixTime, limit: u32) -> Result<u64> {
        self.inner.delete_ended_sessions(now, idle_since, limit).await
    }
    async fn delete_audit_before(&self, before: UnixTime, limit: u32) -> Result<u64> {
        self.inner.delete_audit_before(before, limit).await
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_keys_tell_hex_and_other_strings_apart() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(jti_key(hex), 0x0123456789abcdef0123456789abcdef);
        // Not our format: hashed, so no two strings share a key by parsing alike.
        assert_ne!(jti_key(hex), jti_key(&hex.to_uppercase()));
        assert_ne!(jti_key("a"), jti_key("b"));
        assert_ne!(jti_key("x".repeat(32).as_str()), jti_key(hex));
    }

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
        };
        store.insert_key(&key).await.unwrap();
        let cache = CachedStore::new(store.clone(), true);
        cache.sync_once().await;

        // Every key is in memory for logins.
        assert!(cache.keys().logins_complete && cache.keys().logins.contains_key(&key.api_key.to_bytes()));
        // A verification read the key's account from the store; before it could fill the
        // cache, another server deleted the key and this one heard of it.
        let epoch = cache.epoch.load(Ordering::Acquire);
        let other = CachedStore::new(store.clone(), true);
        assert!(other.delete_key(account, key.key_ref).await.unwrap());
        cache.sync_once().await;
        cache.fill_account(epoch, key.key_ref, Some(account));
        assert!(cache.keys().logins.is_empty() && cache.keys().accounts.is_empty(), "a stale read was cached");
        assert!(cache.find_key(&key.api_key).await.unwrap().is_none());
        assert_eq!(cache.key_account(key.key_ref).await.unwrap(), None);
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
