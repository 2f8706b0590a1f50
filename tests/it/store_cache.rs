//! The store side of the caches, on every backend: the trigger-written change log, keyset
//! pages, and `CachedStore` over a real store with a second store (another replica's pool)
//! changing things behind its back.

use std::{sync::Arc, time::Duration};

use crate::common::fixture::*;
use keygate::{
    domain::{AccountId, AccountName, KeyRef},
    store::{self, CachedStore, Change, KeyLookupStore, KeyRecord, KeyStore, Revocation, RevocationStore, Store},
};

async fn account(store: &dyn Store, name: &str) -> AccountId {
    let admin = new_admin(&format!("{name}@example.com"));
    store.create_admin(&AccountName::parse(name).unwrap(), &admin).await.unwrap()
}

async fn new_key(store: &dyn Store, account_id: AccountId, created_at: i64) -> KeyRecord {
    let key = key_record(account_id, created_at);
    store.insert_key(&key, &Default::default()).await.unwrap();
    key
}

fn revocation(key: &KeyRecord, jti: &str, expires_at: i64) -> Revocation {
    Revocation { jti: jti.into(), key_ref: key.key_ref, expires_at, revoked_at: keygate::clock::Clock::system().now() }
}

/// A cache over its own pool, loaded and trusted.
async fn loaded_cache(fx: &Fixture, serve_logins: bool) -> Arc<CachedStore> {
    let cache = Arc::new(CachedStore::new(fx.open().await, serve_logins));
    cache.sync_once().await;
    assert!(cache.is_trusted());
    cache
}

store_cases! {
async fn the_change_log_records_deletions_and_revocations_in_order(fx: Fixture) {
    let store = fx.open().await;
    let acme = account(store.as_ref(), "acme").await;
    let first = new_key(store.as_ref(), acme, 100).await;
    let second = new_key(store.as_ref(), acme, 100).await;
    let start = store.last_change().await.unwrap();
    assert!(store.changes_after(start, 100).await.unwrap().is_empty(), "creating keys is no change to hear of");

    assert!(store.delete_key(acme, first.key_ref).await.unwrap());
    let future = keygate::clock::Clock::system().now() + 600;
    store.revoke_token(&revocation(&second, "0123456789abcdef0123456789abcdef", future)).await.unwrap();
    // Revoking again changes nothing, so it logs nothing.
    store.revoke_token(&revocation(&second, "0123456789abcdef0123456789abcdef", future)).await.unwrap();
    // A refused deletion (wrong account) neither.
    let other = account(store.as_ref(), "other").await;
    assert!(!store.delete_key(other, second.key_ref).await.unwrap());

    let changes = store.changes_after(start, 100).await.unwrap();
    let kinds: Vec<Change> = changes.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            Change::KeyDeleted { key_ref: first.key_ref, api_key: first.api_key.clone() },
            Change::TokenRevoked { jti: "0123456789abcdef0123456789abcdef".into(), expires_at: future },
        ]
    );
    assert!(changes[0].0 < changes[1].0);
    assert_eq!(store.last_change().await.unwrap(), changes[1].0);
    // Paged reads resume where they stopped.
    let one = store.changes_after(start, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(store.changes_after(one[0].0, 100).await.unwrap(), changes[1..]);

    // Live revocations only; purging the log keeps recent rows.
    store.revoke_token(&revocation(&second, "ffffffffffffffffffffffffffffffff", keygate::clock::Clock::system().now() - 1)).await.unwrap();
    let live = store.live_revocations(keygate::clock::Clock::system().now()).await.unwrap();
    assert_eq!(live, vec![("0123456789abcdef0123456789abcdef".to_owned(), future)]);
    assert_eq!(store.purge_changes(keygate::clock::Clock::system().now() - 60).await.unwrap(), 0);
    assert_eq!(store.purge_changes(keygate::clock::Clock::system().now() + 60).await.unwrap(), 3);
    assert!(store.changes_after(start, 100).await.unwrap().is_empty());
}

async fn pages_are_ordered_by_creation_then_ref(fx: Fixture) {
    let store = fx.open().await;
    let acme = account(store.as_ref(), "acme").await;
    let other = account(store.as_ref(), "other").await;
    // Several keys per second, and out of order, so both sort keys matter.
    let mut keys = Vec::new();
    for created_at in [300, 100, 200, 100, 300, 100] {
        keys.push(new_key(store.as_ref(), acme, created_at).await);
    }
    new_key(store.as_ref(), other, 150).await;
    let all = store.list_keys_page(acme, None, None, u32::MAX).await.unwrap().unwrap();
    let mut expected: Vec<(i64, String)> = keys.iter().map(|k| (k.created_at, k.key_ref.to_string())).collect();
    expected.sort();
    assert_eq!(all.iter().map(|k| (k.created_at, k.key_ref.to_string())).collect::<Vec<_>>(), expected);

    let first = store.list_keys_page(acme, None, None, 4).await.unwrap().unwrap();
    assert_eq!(first, all[..4]);
    let rest = store.list_keys_page(acme, None, Some(first[3].key_ref), 4).await.unwrap().unwrap();
    assert_eq!(rest, all[4..]);
    assert_eq!(store.list_keys_page(acme, None, Some(all[5].key_ref), 4).await.unwrap().unwrap(), vec![]);
    // A cursor outside the account, or gone, is no cursor.
    let foreign = store.list_keys_page(other, None, None, u32::MAX).await.unwrap().unwrap()[0].key_ref;
    assert!(store.list_keys_page(acme, None, Some(foreign), 4).await.unwrap().is_none());
    assert!(store.list_keys_page(acme, None, Some(KeyRef::generate()), 4).await.unwrap().is_none());
}

async fn the_cache_follows_changes_made_through_another_pool(fx: Fixture) {
    let other = fx.open().await;
    let acme = account(other.as_ref(), "acme").await;
    let key = new_key(other.as_ref(), acme, 100).await;
    let kept = new_key(other.as_ref(), acme, 100).await;
    let cache = loaded_cache(&fx, true).await;

    // Read once: cached.
    assert_eq!(cache.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), Some(acme));
    assert_eq!(cache.find_key(&key.api_key).await.unwrap().unwrap().key_ref, key.key_ref);
    assert!(!cache.is_token_revoked("0123456789abcdef0123456789abcdef").await.unwrap());

    // Changed behind its back: the cache still answers from memory (this is the window
    // the change log closes)...
    assert!(other.delete_key(acme, key.key_ref).await.unwrap());
    other.revoke_token(&revocation(&kept, "0123456789abcdef0123456789abcdef", keygate::clock::Clock::system().now() + 600)).await.unwrap();
    let stale = cache.key_status(key.key_ref).await.unwrap().map(|s| s.account_id);
    // (Unless this machine stalled for a whole lease since the load: then the store
    // answered, correctly, and there is no window to see.)
    if cache.is_trusted() {
        assert_eq!(stale, Some(acme), "the cache was not in use");
    }
    // ...until it reads the log.
    cache.sync_once().await;
    assert_eq!(cache.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), None);
    assert!(cache.find_key(&key.api_key).await.unwrap().is_none());
    assert!(cache.is_token_revoked("0123456789abcdef0123456789abcdef").await.unwrap());
    assert_eq!(cache.key_status(kept.key_ref).await.unwrap().map(|s| s.account_id), Some(acme));
    assert!(cache.find_key(&kept.api_key).await.unwrap().is_some());
}

async fn an_unloaded_or_lapsed_cache_asks_the_store(fx: Fixture) {
    let other = fx.open().await;
    let acme = account(other.as_ref(), "acme").await;
    let key = new_key(other.as_ref(), acme, 100).await;
    let cache = Arc::new(CachedStore::new(fx.open().await, true));
    assert!(!cache.is_trusted());
    assert_eq!(cache.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), Some(acme));
    assert!(other.delete_key(acme, key.key_ref).await.unwrap());
    assert_eq!(cache.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), None, "an unloaded cache answered from memory");

    // Loaded, the lease runs out unless renewed; then the store answers again.
    let key = new_key(other.as_ref(), acme, 100).await;
    cache.sync_once().await;
    assert_eq!(cache.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), Some(acme));
    assert!(other.delete_key(acme, key.key_ref).await.unwrap());
    tokio::time::sleep(store::cache::LEASE + Duration::from_millis(50)).await;
    assert!(!cache.is_trusted());
    assert_eq!(cache.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), None, "a lapsed cache answered from memory");
}

async fn an_unknown_key_is_answered_from_memory_as_a_known_one_is(fx: Fixture) {
    // Where memory holds every key, a key it does not hold does not exist, and the store is
    // not asked: a login that read the store only for unknown keys would take longer for
    // them, and so tell which keys exist. A key added behind the cache's back stands in for
    // one memory does not hold: looked up in the store, it would be found.
    let other = fx.open().await;
    let acme = account(other.as_ref(), "acme").await;
    let known = new_key(other.as_ref(), acme, 100).await;
    let cache = loaded_cache(&fx, true).await;
    let unseen = new_key(other.as_ref(), acme, 100).await;
    let found = cache.find_key(&known.api_key).await.unwrap();
    let looked_up = cache.find_key(&unseen.api_key).await.unwrap();
    // (Unless this machine stalled for a whole lease since the load: then the store
    // answered both, correctly, and there is nothing to see.)
    if cache.is_trusted() {
        assert_eq!(found.map(|k| k.key_ref), Some(known.key_ref));
        assert!(looked_up.is_none(), "a key memory does not hold was looked up in the store");
    }
}

async fn logins_come_from_memory_only_where_allowed(fx: Fixture) {
    // Shared stores (PostgreSQL) must refuse a key deleted by another replica at the very
    // next login, which only the database can tell.
    let other = fx.open().await;
    let acme = account(other.as_ref(), "acme").await;
    let key = new_key(other.as_ref(), acme, 100).await;
    let shared = loaded_cache(&fx, false).await;
    assert!(shared.find_key(&key.api_key).await.unwrap().is_some());
    assert!(other.delete_key(acme, key.key_ref).await.unwrap());
    assert!(shared.find_key(&key.api_key).await.unwrap().is_none());
    // A cache's own deletions apply to its logins at once either way.
    let key = new_key(other.as_ref(), acme, 100).await;
    let own = loaded_cache(&fx, true).await;
    assert!(own.find_key(&key.api_key).await.unwrap().is_some());
    assert!(own.delete_key(acme, key.key_ref).await.unwrap());
    assert!(own.find_key(&key.api_key).await.unwrap().is_none());
    assert_eq!(own.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), None);
    if fx.is_postgres() {
        // The backend that can wakes readers as soon as a change commits.
        let mut signal = other.change_signal().await.unwrap().expect("PostgreSQL has LISTEN");
        let key = new_key(other.as_ref(), acme, 100).await;
        let woke = tokio::spawn(async move { signal.changed().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(own.delete_key(acme, key.key_ref).await.unwrap());
        tokio::time::timeout(Duration::from_secs(30), woke).await.expect("no notification").unwrap().unwrap();
    } else {
        assert!(other.change_signal().await.unwrap().is_none());
    }
}
}
