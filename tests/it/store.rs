//! The store contract, run against every backend through `keygate::store::connect`, the
//! way the server opens its store. Each case runs on SQLite and on PostgreSQL.

use std::time::Duration;

use crate::common::fixture::*;
use keygate::{
    crypto::{
        session::new_session,
        signing::{KeySealer, SealedKey, SigningAlg},
    },
    domain::{AccountId, AccountName, ApiKeyId, Email, KeyRef},
    store::{
        self, AuditAction, AuditEvent, AuditScope, NewAdmin, Revocation, SessionRecord, StoreError, TransferError,
    },
};

fn account(name: &str) -> AccountName {
    AccountName::parse(name).unwrap()
}

fn signing_key() -> SealedKey {
    KeySealer::new([7; 32]).generate(SigningAlg::Es256).unwrap()
}

fn session_record(admin: &NewAdmin, account_id: AccountId, now: i64) -> SessionRecord {
    SessionRecord { admin_id: admin.id, account_id, created_at: now, last_seen_at: now, expires_at: now + 3600 }
}

store_cases! {
async fn admins_accounts_and_unique_emails(fx: Fixture) {
    let store = fx.open().await;
    assert!(!store.any_admin().await.unwrap());
    let first = new_admin("one@example.com");
    let acme = store.create_admin(&account("acme"), &first).await.unwrap();
    assert!(store.any_admin().await.unwrap());

    // A second admin of the same account joins it rather than creating another.
    let second = new_admin("two@example.com");
    assert_eq!(store.create_admin(&account("acme"), &second).await.unwrap(), acme);
    let other = store.create_admin(&account("other"), &new_admin("three@example.com")).await.unwrap();
    assert_ne!(other, acme);

    // Emails are unique across accounts; the refused write leaves nothing behind.
    let dup = new_admin("one@example.com");
    assert!(matches!(store.create_admin(&account("fresh"), &dup).await, Err(StoreError::Conflict)));
    assert_eq!(store.counts().await.unwrap().accounts, 2, "the account of a refused admin was kept");

    let found = store.find_admin(&Email::parse("one@example.com").unwrap()).await.unwrap().unwrap();
    assert_eq!(found.id, first.id);
    assert_eq!(found.account_id, acme);
    assert_eq!(found.password_hash, first.password_hash);
    assert!(store.find_admin(&Email::parse("nobody@example.com").unwrap()).await.unwrap().is_none());
}

async fn bootstrap_admin_happens_once(fx: Fixture) {
    let store = fx.open().await;
    assert!(store.bootstrap_admin(&account("default"), &new_admin("first@example.com")).await.unwrap());
    assert!(!store.bootstrap_admin(&account("default"), &new_admin("second@example.com")).await.unwrap());
    assert!(store.find_admin(&Email::parse("second@example.com").unwrap()).await.unwrap().is_none());
}

async fn concurrent_bootstraps_create_exactly_one_admin(fx: Fixture) {
    // Several rounds, each on a fresh store, since one round may happen not to overlap.
    let mut fixture = fx;
    for round in 0..3 {
        // Separate stores, each with its own pool, as replicas starting at once have.
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(fixture.open().await);
        }
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                // Half share an email: a bootstrap that is not atomic fails there with a
                // Conflict, and elsewhere with a second admin.
                let email = if i % 2 == 0 { "admin@example.com".to_owned() } else { format!("admin{i}@example.com") };
                tokio::spawn(async move { s.bootstrap_admin(&account("default"), &new_admin(&email)).await })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}");
        let counts = stores[0].counts().await.unwrap();
        assert_eq!((counts.accounts, counts.admins), (1, 1), "round {round}");
        fixture = fixture.fresh().await;
    }
}

async fn all_keys_reads_every_key_across_its_pages_and_stops_at_the_limit(fx: Fixture) {
    let store = fx.open().await;
    let acme = store.create_admin(&account("acme"), &new_admin("a@example.com")).await.unwrap();
    // More than one page of the read (4096 rows).
    let mut refs: Vec<String> = Vec::new();
    for i in 0..4500 {
        let key = key_record(acme, i);
        refs.push(key.key_ref.to_string());
        store.insert_key(&key, &Default::default()).await.unwrap();
    }
    refs.sort();
    let all: Vec<String> = store.all_keys(10_000).await.unwrap().iter().map(|k| k.key_ref.to_string()).collect();
    assert_eq!(all, refs, "every key, once, in key-ref order");
    let some = store.all_keys(4200).await.unwrap();
    assert_eq!(some.len(), 4200);
    assert_eq!(some.last().unwrap().key_ref.to_string(), refs[4199]);
}

async fn keys_are_found_listed_and_deleted_within_their_account(fx: Fixture) {
    let store = fx.open().await;
    let acme = store.create_admin(&account("acme"), &new_admin("a@example.com")).await.unwrap();
    let other = store.create_admin(&account("other"), &new_admin("o@example.com")).await.unwrap();
    let now = keygate::clock::Clock::system().now();
    let k1 = key_record(acme, now);
    let k2 = key_record(acme, now + 1);
    let k3 = key_record(other, now);
    for k in [&k2, &k1, &k3] {
        store.insert_key(k, &Default::default()).await.unwrap();
    }

    let found = store.find_key(&k1.api_key).await.unwrap().unwrap();
    assert_eq!((found.key_ref, found.account_id, &found.secret_hash), (k1.key_ref, acme, &k1.secret_hash));
    assert_eq!(found.created_at, now);
    assert!(store.find_key(&ApiKeyId::generate()).await.unwrap().is_none());

    // Oldest first, only the account's own.
    let listed: Vec<_> = store.list_keys_page(acme, None, None, u32::MAX).await.unwrap().unwrap().into_iter().map(|k| k.key_ref).collect();
    assert_eq!(listed, vec![k1.key_ref, k2.key_ref]);

    // The same API key twice, or the same ref twice, is refused.
    let mut dup = key_record(acme, now);
    dup.api_key = k1.api_key.clone();
    assert!(matches!(store.insert_key(&dup, &Default::default()).await, Err(StoreError::Conflict)));
    let mut dup = key_record(acme, now);
    dup.key_ref = k3.key_ref;
    assert!(matches!(store.insert_key(&dup, &Default::default()).await, Err(StoreError::Conflict)));

    // Another account cannot delete it; its own can, once.
    assert!(!store.delete_key(other, k1.key_ref).await.unwrap());
    assert!(store.find_key(&k1.api_key).await.unwrap().is_some());
    assert!(store.delete_key(acme, k1.key_ref).await.unwrap());
    assert!(!store.delete_key(acme, k1.key_ref).await.unwrap());
    assert!(store.find_key(&k1.api_key).await.unwrap().is_none());
    assert_eq!(store.list_keys_page(acme, None, None, u32::MAX).await.unwrap().unwrap().len(), 1);
}

async fn sessions_are_found_touched_and_deleted(fx: Fixture) {
    let store = fx.open().await;
    let admin = new_admin("a@example.com");
    let acme = store.create_admin(&account("acme"), &admin).await.unwrap();
    let now = keygate::clock::Clock::system().now();
    let (_, hash) = new_session();
    let record = session_record(&admin, acme, now);
    store.insert_session(&hash, &record).await.unwrap();
    assert_eq!(store.find_session(&hash).await.unwrap(), Some(record.clone()));
    assert!(matches!(store.insert_session(&hash, &record).await, Err(StoreError::Conflict)));

    store.touch_session(&hash, now + 120).await.unwrap();
    assert_eq!(store.find_session(&hash).await.unwrap().unwrap().last_seen_at, now + 120);

    let (_, unknown) = new_session();
    assert!(store.find_session(&unknown).await.unwrap().is_none());
    assert!(store.delete_session(&hash).await.unwrap());
    assert!(!store.delete_session(&hash).await.unwrap());
    assert!(store.find_session(&hash).await.unwrap().is_none());
}

async fn concurrent_first_signing_keys_leave_exactly_one_active(fx: Fixture) {
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(fx.open().await);
    }
    let now = keygate::clock::Clock::system().now();
    let tasks: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.insert_first_signing_key(&signing_key(), now).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let keys = stores[0].signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].retired_at.is_none());
    // Every replica reads the same key.
    for s in &stores {
        assert_eq!(s.signing_keys().await.unwrap()[0].key.kid, keys[0].key.kid);
    }

    // Rotation retires the old key and activates the new one, in one step.
    let next = signing_key();
    stores[1].rotate_signing_key(&next, now + 10).await.unwrap();
    let keys = stores[2].signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].key.kid, next.kid, "the active key comes first");
    assert!(keys[0].retired_at.is_none());
    assert_eq!(keys[1].retired_at, Some(now + 10));
    assert_eq!(keys[0].key.sealed_private, next.sealed_private);
    assert_eq!(keys[0].key.public_key, next.public_key);

    // A first key once there is one changes nothing.
    stores[3].insert_first_signing_key(&signing_key(), now + 20).await.unwrap();
    assert_eq!(stores[0].signing_keys().await.unwrap().len(), 2);
}

async fn key_lookups_by_ref_see_deletions_at_once(fx: Fixture) {
    let store = fx.open().await;
    let acme = store.create_admin(&account("acme"), &new_admin("a@example.com")).await.unwrap();
    let key = key_record(acme, keygate::clock::Clock::system().now());
    store.insert_key(&key, &Default::default()).await.unwrap();
    assert_eq!(store.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), Some(acme));
    assert_eq!(store.key_status(KeyRef::generate()).await.unwrap().map(|s| s.account_id), None);
    assert!(store.delete_key(acme, key.key_ref).await.unwrap());
    // Another replica (another pool) sees the deletion on its next read.
    assert_eq!(fx.open().await.key_status(key.key_ref).await.unwrap().map(|s| s.account_id), None);
}

async fn revocations_are_idempotent_shared_and_purged_after_expiry(fx: Fixture) {
    let (store, replica) = (fx.open().await, fx.open().await);
    let r = Revocation { jti: "0123abcd".into(), key_ref: KeyRef::generate(), expires_at: 1_000, revoked_at: 500 };
    assert!(!store.is_token_revoked(&r.jti).await.unwrap());
    store.revoke_token(&r).await.unwrap();
    // Revoking twice, from another replica even, is a success and changes nothing.
    replica.revoke_token(&Revocation { revoked_at: 600, ..r.clone() }).await.unwrap();
    assert!(replica.is_token_revoked(&r.jti).await.unwrap());
    assert!(!store.is_token_revoked("0123abce").await.unwrap());
    assert_eq!(store.counts().await.unwrap().revocations, 1);
    assert_eq!(store.purge_revocations(999).await.unwrap(), 0);
    assert!(store.is_token_revoked(&r.jti).await.unwrap());
    assert_eq!(store.purge_revocations(1_000).await.unwrap(), 1);
    assert!(!replica.is_token_revoked(&r.jti).await.unwrap());
}

async fn ping_answers(fx: Fixture) {
    fx.open().await.ping().await.unwrap();
}

async fn copy_from_sqlite_keeps_every_row_and_refuses_a_non_empty_target(fx: Fixture) {
    let source_fx = Fixture::sqlite();
    let source = source_fx.open().await;
    let admin = new_admin("a@example.com");
    let acme = source.create_admin(&account("acme"), &admin).await.unwrap();
    let other = source.create_admin(&account("other"), &new_admin("o@example.com")).await.unwrap();
    let now = keygate::clock::Clock::system().now();
    let keys = [key_record(acme, now), key_record(acme, now + 1), key_record(other, now)];
    for k in &keys {
        source.insert_key(k, &Default::default()).await.unwrap();
    }
    let (_, hash) = new_session();
    source.insert_session(&hash, &session_record(&admin, acme, now)).await.unwrap();
    source.insert_first_signing_key(&signing_key(), now).await.unwrap();
    source.rotate_signing_key(&signing_key(), now + 5).await.unwrap();
    let revocation = Revocation { jti: "feedbeef".into(), key_ref: keys[0].key_ref, expires_at: now + 900, revoked_at: now };
    source.revoke_token(&revocation).await.unwrap();
    let event = |at, account| AuditEvent {
        at,
        account_id: account,
        action: AuditAction::KeyGenerated,
        actor: "cli".into(),
        source: Some("192.0.2.1".into()),
        target: Some(format!("t{at}")),
    };
    let events = [event(now, Some(acme)), event(now + 1, None), event(now + 2, Some(other))];
    for e in &events {
        source.append_audit(e).await.unwrap();
    }

    let target = fx.open().await;
    let copied = store::copy(source.as_ref(), target.as_ref()).await.unwrap();
    // The audit log moves with the data, in order.
    assert_eq!(copied.audit, 3);
    let log = target.audit_events(&AuditScope::All, None, 10).await.unwrap();
    let log: Vec<_> = log.into_iter().rev().map(|r| (r.event.at, r.event.account_id, r.event.target)).collect();
    let expected: Vec<_> = events.iter().map(|e| (e.at, e.account_id, e.target.clone())).collect();
    assert_eq!(log, expected);
    assert_eq!((copied.accounts, copied.admins, copied.keys, copied.sessions, copied.signing_keys), (2, 2, 3, 1, 2));
    // A revoked token stays revoked on the new store.
    assert_eq!(copied.revocations, 1);
    assert!(target.is_token_revoked(&revocation.jti).await.unwrap());
    assert_eq!(target.export().await.unwrap().revocations, vec![revocation]);
    assert_eq!(target.counts().await.unwrap(), copied);

    // Rows arrive as they were: ids, hashes, times, sealed keys.
    for k in &keys {
        let got = target.find_key(&k.api_key).await.unwrap().unwrap();
        assert_eq!((got.key_ref, got.account_id, &got.secret_hash, got.created_at), (k.key_ref, k.account_id, &k.secret_hash, k.created_at));
    }
    let got = target.find_admin(&admin.email).await.unwrap().unwrap();
    assert_eq!((got.id, got.account_id, &got.password_hash), (admin.id, acme, &admin.password_hash));
    assert_eq!(target.find_session(&hash).await.unwrap(), source.find_session(&hash).await.unwrap());
    let (s, t) = (source.signing_keys().await.unwrap(), target.signing_keys().await.unwrap());
    assert_eq!(s.len(), t.len());
    for (s, t) in s.iter().zip(&t) {
        assert_eq!((&s.key.kid, s.key.alg, &s.key.sealed_private, &s.key.public_key), (&t.key.kid, t.key.alg, &t.key.sealed_private, &t.key.public_key));
        assert_eq!((s.created_at, s.retired_at), (t.created_at, t.retired_at));
    }
    // The copied account still takes new admins and refuses taken emails.
    assert_eq!(target.create_admin(&account("acme"), &new_admin("b@example.com")).await.unwrap(), acme);
    assert!(matches!(target.create_admin(&account("x"), &new_admin("o@example.com")).await, Err(StoreError::Conflict)));

    // A second copy into the now non-empty target is refused, and writes nothing.
    let before = target.counts().await.unwrap();
    assert!(matches!(store::copy(source.as_ref(), target.as_ref()).await, Err(TransferError::TargetNotEmpty)));
    assert_eq!(target.counts().await.unwrap(), before);

    // An empty source is refused rather than "copied".
    let empty_fx = Fixture::sqlite();
    let empty = empty_fx.open().await;
    let fresh = Fixture::sqlite();
    assert!(matches!(store::copy(empty.as_ref(), fresh.open().await.as_ref()).await, Err(TransferError::EmptySource)));
}

async fn a_store_with_only_a_signing_key_is_not_empty(fx: Fixture) {
    // A server that started once on the target leaves a signing key (and an admin): the
    // import must refuse it too, not only stores with keys.
    let target = fx.open().await;
    target.insert_first_signing_key(&signing_key(), keygate::clock::Clock::system().now()).await.unwrap();
    let source_fx = Fixture::sqlite();
    let source = source_fx.open().await;
    source.create_admin(&account("acme"), &new_admin("a@example.com")).await.unwrap();
    assert!(matches!(store::copy(source.as_ref(), target.as_ref()).await, Err(TransferError::TargetNotEmpty)));
    assert_eq!(target.counts().await.unwrap().accounts, 0);
}
}

#[tokio::test]
async fn unknown_schemes_and_missing_sources_are_refused() {
    assert!(store::connect("mysql://localhost/x").await.is_err());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    assert!(store::open_existing(&format!("sqlite://{}", missing.display())).await.is_err());
    assert!(!missing.exists(), "opening a source must not create it");
}

/// A database outage turns store calls into `Unavailable` quickly (no hang), and the same
/// store recovers by itself once the database is back.
#[tokio::test]
async fn postgres_outage_is_unavailable_then_recovers() {
    let Some(fx) = Fixture::postgres().await else { return };
    let store = fx.open().await;
    let admin = new_admin("a@example.com");
    let acme = store.create_admin(&account("acme"), &admin).await.unwrap();
    let db = fx.db.as_ref().unwrap();

    db.take_down().await;
    let key = key_record(acme, keygate::clock::Clock::system().now());
    // Generous bounds: the point is "fails instead of hanging", not a latency figure.
    let during =
        tokio::time::timeout(Duration::from_secs(30), store.insert_key(&key, &Default::default())).await.expect("hung");
    assert!(matches!(during, Err(StoreError::Unavailable(_))), "{during:?}");
    let during = tokio::time::timeout(Duration::from_secs(30), store.ping()).await.expect("hung");
    assert!(matches!(during, Err(StoreError::Unavailable(_))), "{during:?}");
    db.bring_up().await;

    let mut recovered = false;
    for _ in 0..100 {
        if store.ping().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the pool did not reconnect");
    assert!(store.find_key(&key.api_key).await.unwrap().is_none(), "a write refused during the outage appeared");
    store.insert_key(&key, &Default::default()).await.unwrap();
    assert!(store.find_key(&key.api_key).await.unwrap().is_some());
}

/// `?sslmode=require` encrypts keygate's connections (the server must offer TLS; Debian's
/// PostgreSQL does, with its snakeoil certificate).
#[tokio::test]
async fn postgres_connections_can_require_tls() {
    use sqlx::Connection;
    let Some(fx) = Fixture::postgres().await else { return };
    let url = format!("{}?sslmode=require&application_name=keygate_tls_test", fx.url);
    let store = store::connect(&url).await.unwrap();
    store.ping().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&fx.url).await.unwrap();
    let encrypted: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'keygate_tls_test'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(!encrypted.is_empty(), "no keygate connection seen");
    assert!(encrypted.iter().all(|&ssl| ssl), "a connection was not encrypted");
}
