//! Upgrading in place: a store as the previous release left it (its schema, migrations 0001
//! to 0004, and rows as its code wrote them) is opened by this binary, which brings the
//! schema up to date (0005 onwards: bounds, retention, the key lifecycle) and keeps every
//! key, password, session, signing key, revocation, lockout and audit entry working; the old
//! keys take the lifecycle's changes.

use std::{path::Path, sync::Arc};

use crate::common::*;
use keygate::{
    crypto::{
        AdminPasswordHasher, MasterKey,
        session::new_session,
        signing::{AccessClaims, KeyRing, SealedKey, SigningAlg},
    },
    domain::{AccountId, ApiKeyId, ApiPassword, KeyRef},
    startup::{api_password_hasher, key_sealer},
};
use reqwest::{Client, StatusCode, header};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{Connection, PgConnection, SqliteConnection, migrate::Migrator, sqlite::SqliteConnectOptions};

/// The newest migration of the release this one upgrades.
const RELEASE_SCHEMA: i64 = 4;

async fn migrator(backend: &str) -> Migrator {
    Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend)).await.unwrap()
}

/// The migrations of the release, as its binary applied and recorded them (checksums and
/// all): this repository's files up to `RELEASE_SCHEMA`.
async fn release_migrator(backend: &str) -> Migrator {
    let mut migrator = migrator(backend).await;
    let release: Vec<_> = migrator.iter().filter(|m| m.version <= RELEASE_SCHEMA).cloned().collect();
    assert_eq!(release.len(), RELEASE_SCHEMA as usize);
    migrator.migrations = release.into();
    migrator
}

/// Every migration this binary has, which it must have applied once it served.
async fn every_version(backend: &str) -> Vec<i64> {
    let every: Vec<i64> = migrator(backend).await.iter().map(|m| m.version).collect();
    assert!(every.len() > RELEASE_SCHEMA as usize, "nothing to upgrade to");
    every
}

/// A connection to the store being prepared, before any server of this release opens it.
enum Old {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// Runs one statement, written for PostgreSQL, on either backend (SQLite's ids are text,
/// so it drops the `::uuid` casts).
macro_rules! release_sql {
    ($old:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $old {
            Old::Sqlite(conn) => {
                sqlx::query(&$sql.replace("::uuid", ""))$(.bind($arg))*.execute(&mut *conn).await.unwrap();
            }
            Old::Postgres(conn) => {
                sqlx::query($sql)$(.bind($arg))*.execute(&mut *conn).await.unwrap();
            }
        }
    };
}

impl Old {
    async fn applied_migrations(&mut self) -> Vec<i64> {
        let sql = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        match self {
            Old::Sqlite(conn) => sqlx::query_scalar(sql).fetch_all(conn).await.unwrap(),
            Old::Postgres(conn) => sqlx::query_scalar(sql).fetch_all(conn).await.unwrap(),
        }
    }

    async fn close(self) {
        match self {
            Old::Sqlite(conn) => conn.close().await.unwrap(),
            Old::Postgres(conn) => conn.close().await.unwrap(),
        }
    }
}

/// What the release's store holds, and the secrets that open it.
struct Release {
    master_key: String,
    account: AccountId,
    admin_email: &'static str,
    admin_password: &'static str,
    session: String,
    key_ref: KeyRef,
    api_key: ApiKeyId,
    api_password: ApiPassword,
    locked_key: ApiKeyId,
    locked_password: ApiPassword,
    active: SealedKey,
    retired: SealedKey,
    revoked_jti: String,
    /// (action, actor, source, target) of its audit entries, oldest first.
    audit: Vec<(&'static str, String, Option<&'static str>, String)>,
}

/// Writes the rows the release's code wrote, in its schema: an account with an admin and
/// the admin's session, two keys (one locked out), an active and a retired signing key, a
/// revoked token and audit entries.
async fn write_release_rows(old: &mut Old) -> Release {
    let master_key = random_master_key();
    let master = MasterKey::from_base64(&master_key).unwrap();
    let now = keygate::clock::Clock::system().now();
    let account = AccountId::generate();
    let admin = uuid::Uuid::new_v4();
    let (admin_email, admin_password) = ("old-admin@example.com", "a password from the last release");
    let password_hash = AdminPasswordHasher::new(1, 0).hash(SecretString::from(admin_password)).await.unwrap();
    let (session, session_hash) = new_session();
    let (key_ref, api_key, api_password) = (KeyRef::generate(), ApiKeyId::generate(), ApiPassword::generate());
    let (locked_ref, locked_key, locked_password) = (KeyRef::generate(), ApiKeyId::generate(), ApiPassword::generate());
    let hasher = api_password_hasher(&master);
    let sealer = key_sealer(&master);
    let (active, retired) = (sealer.generate(SigningAlg::Es256).unwrap(), sealer.generate(SigningAlg::Es256).unwrap());
    let revoked_jti = keygate::crypto::token_id();

    release_sql!(
        old,
        "INSERT INTO accounts (id, name, created_at) VALUES ($1::uuid, $2, $3)",
        account.to_string(),
        "legacy",
        now - 100
    );
    release_sql!(
        old,
        "INSERT INTO admins (id, account_id, email, password_hash, created_at) VALUES ($1::uuid, $2::uuid, $3, $4, $5)",
        admin.to_string(),
        account.to_string(),
        admin_email,
        password_hash,
        now - 100,
    );
    release_sql!(
        old,
        "INSERT INTO sessions (id_hash, admin_id, account_id, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6)",
        session_hash.to_vec(),
        admin.to_string(),
        account.to_string(),
        now - 10,
        now - 10,
        now + 3600,
    );
    for (key_ref, api_key, password, at) in
        [(key_ref, &api_key, &api_password, now - 50), (locked_ref, &locked_key, &locked_password, now - 40)]
    {
        release_sql!(
            old,
            "INSERT INTO api_keys (key_ref, account_id, api_key, secret_hash, created_at) \
             VALUES ($1::uuid, $2::uuid, $3, $4, $5)",
            key_ref.to_string(),
            account.to_string(),
            api_key.as_str().to_owned(),
            hasher.hash(password).to_vec(),
            at,
        );
    }
    for (key, created_at, retired_at) in [(&retired, now - 90, Some(now - 60)), (&active, now - 60, None)] {
        release_sql!(
            old,
            "INSERT INTO signing_keys (kid, alg, sealed_private, public_key, created_at, retired_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            key.kid.clone(),
            key.alg.as_str(),
            key.sealed_private.clone(),
            key.public_key.clone(),
            created_at,
            retired_at,
        );
    }
    release_sql!(
        old,
        "INSERT INTO revoked_tokens (jti, key_ref, expires_at, revoked_at) VALUES ($1, $2::uuid, $3, $4)",
        revoked_jti.clone(),
        key_ref.to_string(),
        now + 600,
        now - 5,
    );
    // A lockout in force: the release counted failures without attempts in flight.
    release_sql!(
        old,
        "INSERT INTO login_failures (subject, failures, strikes, last_failure_at, locked_until) VALUES ($1, $2, $3, $4, $5)",
        format!("key:{}", locked_key.as_str()),
        0_i64,
        1_i64,
        now - 30,
        now + 3600,
    );
    let audit = vec![
        ("admin.created", "cli".to_owned(), None, admin_email.to_owned()),
        ("key.generated", format!("admin:{admin}"), Some("192.0.2.7"), key_ref.to_string()),
        ("key.generated", format!("admin:{admin}"), Some("192.0.2.7"), locked_ref.to_string()),
        ("lockout", "keygate".to_owned(), Some("192.0.2.8"), format!("key:{}", locked_key.as_str())),
    ];
    for (i, (action, actor, source, target)) in audit.iter().enumerate() {
        release_sql!(
            old,
            "INSERT INTO audit_log (at, account_id, action, actor, source, target) VALUES ($1, $2::uuid, $3, $4, $5, $6)",
            now - 100 + i as i64,
            account.to_string(),
            *action,
            actor.clone(),
            source.map(str::to_owned),
            target.clone(),
        );
    }
    assert_eq!(old.applied_migrations().await, (1..=RELEASE_SCHEMA).collect::<Vec<_>>());
    Release {
        master_key,
        account,
        admin_email,
        admin_password,
        session,
        key_ref,
        api_key,
        api_password,
        locked_key,
        locked_password,
        active,
        retired,
        revoked_jti,
        audit,
    }
}

/// A token for the release's key, signed as the release signed them, by `key`.
fn release_token(release: &Release, key: &SealedKey, jti: &str) -> String {
    let master = MasterKey::from_base64(&release.master_key).unwrap();
    let now = keygate::clock::Clock::system().now() as u64;
    let claims = AccessClaims {
        iss: "https://keygate.test".into(),
        sub: release.key_ref.to_string(),
        aud: "keygate".into(),
        iat: now - 5,
        nbf: now - 5,
        exp: now + 300,
        jti: jti.into(),
        acc: release.account.to_string(),
        api_key: release.api_key.as_str().into(),
        // As the release wrote them: no RFC 9068 claims.
        client_id: String::new(),
        scope: None,
    };
    KeyRing::new(&key_sealer(&master), key, &[]).unwrap().sign(&claims).unwrap()
}

async fn verify(app: &TestApp, token: &str) -> reqwest::Response {
    Client::new().get(app.url("/auth/verify")).bearer_auth(token).send().await.unwrap()
}

/// Starts this binary on the release's store and uses everything in it.
async fn upgrade(builder: Builder, release: &Release) -> TestApp {
    let app = builder.without_bootstrap_admin().env("KEYGATE_MASTER_KEY", &release.master_key).spawn().await;

    // The key and its password log in; the token is signed by the release's active key.
    let token = app.token(release.api_key.as_str(), release.api_password.expose()).await;
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    assert_eq!(kid, release.active.kid, "a new signing key replaced the release's");
    // The lockout holds, although its table gained columns.
    let locked = app.api_login(release.locked_key.as_str(), release.locked_password.expose()).await;
    assert_problem(locked, StatusCode::TOO_MANY_REQUESTS).await;

    // Tokens the release signed, with its active and its retired key, still verify; the one
    // it revoked does not.
    for key in [&release.active, &release.retired] {
        let r = verify(&app, &release_token(release, key, &keygate::crypto::token_id())).await;
        assert_eq!(r.status(), StatusCode::OK, "a token of signing key {} was refused", key.kid);
        assert_eq!(r.headers()["x-auth-subject"], release.key_ref.to_string().as_str());
        // An upgraded key has no limits: nothing counted, no RateLimit headers.
        assert!(r.headers().get("ratelimit").is_none() && r.headers().get("ratelimit-policy").is_none());
    }
    let revoked = verify(&app, &release_token(release, &release.active, &release.revoked_jti)).await;
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED, "a revoked token came back");

    // The admin's password logs in; the release's session cookie is still a session.
    let login = app.try_admin_login(release.admin_email, release.admin_password).await;
    assert_eq!(login.status(), StatusCode::OK);
    let set_cookie = login.headers()[header::SET_COOKIE].to_str().unwrap();
    let cookie_name = set_cookie.split('=').next().unwrap();
    let old_session = cookie_client(&format!("{cookie_name}={}", release.session));
    let r = old_session.get(app.url("/auth/keys/list")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the release's session was refused");
    let keys: Vec<Value> = r.json().await.unwrap();
    let mut listed: Vec<&str> = keys.iter().map(|k| k["api_key"].as_str().unwrap()).collect();
    listed.sort();
    let mut expected = vec![release.api_key.as_str(), release.locked_key.as_str()];
    expected.sort();
    assert_eq!(listed, expected);
    let r = old_session.get(app.url(&format!("/auth/keys/{}", release.key_ref))).send().await.unwrap();
    let key: Value = r.json().await.unwrap();
    assert_eq!((&key["limits"], &key["credits"], &key["owner"]), (&serde_json::json!([]), &Value::Null, &Value::Null));
    // The release's keys gained the lifecycle's fields, each as "none" (no name, scopes,
    // expiry or creator; enabled), and take its changes.
    for key in &keys {
        let none = (&key["name"], &key["scopes"], &key["expires_at"], &key["enabled"], &key["created_by"]);
        assert_eq!(none, (&Value::Null, &serde_json::json!([]), &Value::Null, &serde_json::json!(true), &Value::Null));
    }
    let release_ref = release.key_ref.to_string();
    let patch = |body: Value| old_session.patch(app.url(&format!("/auth/keys/{release_ref}"))).json(&body).send();
    assert_eq!(patch(serde_json::json!({"name": "from the release"})).await.unwrap().status(), StatusCode::OK);
    assert_eq!(patch(serde_json::json!({"enabled": false})).await.unwrap().status(), StatusCode::OK);
    assert_problem(
        app.api_login(release.api_key.as_str(), release.api_password.expose()).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(patch(serde_json::json!({"enabled": true})).await.unwrap().status(), StatusCode::OK);
    app.token(release.api_key.as_str(), release.api_password.expose()).await;

    // The audit log keeps the release's entries, as they were, behind the new ones.
    let page: Value = old_session.get(app.url("/auth/audit?limit=200")).send().await.unwrap().json().await.unwrap();
    let entries: Vec<_> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["source"].as_str(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    let audit: Vec<_> = release
        .audit
        .iter()
        .map(|(action, actor, source, target)| (*action, actor.as_str(), *source, target.as_str()))
        .collect();
    assert_eq!(entries[..audit.len()], audit[..], "{page}");

    // The upgraded store takes new writes too.
    let (new_key, new_password) = app.generate_key_with(&old_session).await;
    app.token(&new_key, &new_password).await;
    app
}

#[tokio::test]
async fn a_release_sqlite_store_upgrades_in_place() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let options = SqliteConnectOptions::new().filename(data.join("keygate.db")).create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    release_migrator("sqlite").await.run(&mut conn).await.unwrap();
    let mut old = Old::Sqlite(conn);
    let release = write_release_rows(&mut old).await;
    old.close().await;

    let _app = upgrade(Builder::sqlite().dir(dir), &release).await;
    let mut now = Old::Sqlite(SqliteConnection::connect_with(&options).await.unwrap());
    assert_eq!(now.applied_migrations().await, every_version("sqlite").await);
}

#[tokio::test]
async fn a_release_postgres_store_upgrades_in_place() {
    let Some(builder) = Builder::postgres_empty().await else { return };
    let db = builder.db().unwrap();
    let mut conn = db.connect().await;
    release_migrator("postgres").await.run(&mut conn).await.unwrap();
    let mut old = Old::Postgres(conn);
    let release = write_release_rows(&mut old).await;
    old.close().await;

    let app = upgrade(builder.clone(), &release).await;
    let mut now = Old::Postgres(app.db().unwrap().connect().await);
    assert_eq!(now.applied_migrations().await, every_version("postgres").await);
}
