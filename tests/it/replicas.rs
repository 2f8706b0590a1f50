//! Several `keygate serve` replicas on one PostgreSQL database agree on everything: the
//! first admin, the signing key, API keys, tokens and sessions. PostgreSQL only: SQLite is
//! the single-server store.

use std::time::{Duration, Instant};

use crate::common::{cache::*, *};
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

async fn jwks(app: &TestApp) -> Value {
    let r = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Verifies `token` with a key from `jwks`, as a gateway would.
fn verify_with(jwks: &Value, token: &str) -> Value {
    let kid = kid_of(token);
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).expect("kid published");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["keygate"]);
    validation.set_issuer(&["https://keygate.test"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).expect("token verifies").claims
}

/// Logs in with a cookie-less client and returns the `Cookie` header value to replay.
async fn session_cookie(app: &TestApp) -> String {
    let r = Client::new()
        .post(app.url("/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn list_status(app: &TestApp, cookie: &str) -> StatusCode {
    Client::new().get(app.url("/auth/keys/list")).header(header::COOKIE, cookie).send().await.unwrap().status()
}

#[tokio::test]
async fn replicas_starting_at_once_create_one_admin_and_one_signing_key() {
    // A few rounds on fresh databases: any one start may happen not to overlap.
    for round in 0..3 {
        let Some(builder) = Builder::postgres_empty().await else { return };
        // No bootstrap settings: each replica would invent an admin and write its password
        // to its own data directory, so a double bootstrap would show as two files.
        let builder = builder.without_bootstrap_admin();
        let (a, b) = tokio::join!(builder.clone().spawn(), builder.clone().spawn());
        let db = a.db().unwrap();
        assert_eq!(db.count("admins").await, 1, "round {round}");
        assert_eq!(db.count("accounts").await, 1, "round {round}");
        assert_eq!(db.count("signing_keys").await, 1, "round {round}");
        assert_eq!(db.count("signing_keys WHERE retired_at IS NULL").await, 1, "round {round}");

        let files: Vec<_> = [&a, &b]
            .iter()
            .filter_map(|app| std::fs::read_to_string(app.data_dir().join("initial-admin-password")).ok())
            .collect();
        assert_eq!(files.len(), 1, "round {round}: exactly one replica created the admin");
        let password = files[0].trim();
        // The winner's password works on both; both publish the one key.
        for app in [&a, &b] {
            let r = app.post_json("/auth/login", &json!({"email": "admin@localhost", "password": password})).await;
            assert_eq!(r.status(), StatusCode::OK, "round {round}");
        }
        let (ja, jb) = (jwks(&a).await, jwks(&b).await);
        assert_eq!(ja, jb, "round {round}");
        assert_eq!(ja["keys"].as_array().unwrap().len(), 1, "round {round}");
    }
}

#[tokio::test]
async fn replicas_share_keys_tokens_and_sessions() {
    let Some(builder) = Builder::postgres().await else { return };
    let a = builder.spawn().await;
    let b = a.replica().spawn().await;
    assert_ne!(a.base, b.base);
    assert_ne!(a.data_dir(), b.data_dir());

    // A key generated on A logs in on B.
    a.admin_login().await;
    let (api_key, password) = a.generate_key().await;
    let token_b = b.token(&api_key, &password).await;
    let token_a = a.token(&api_key, &password).await;

    // A's token carries a kid B publishes, with the same key material, and verifies with
    // B's published key (and the other way round).
    let (ja, jb) = (jwks(&a).await, jwks(&b).await);
    assert_eq!(ja, jb);
    assert_eq!(kid_of(&token_a), kid_of(&token_b));
    let claims = verify_with(&jb, &token_a);
    assert_eq!(claims["api_key"], api_key.as_str());
    verify_with(&ja, &token_b);

    // B lists what A generated (cookies are not per port: A's session goes to B too).
    let listed = a.client.get(b.url("/auth/keys/list")).send().await.unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let listed: Vec<Value> = listed.json().await.unwrap();
    assert_eq!(listed.len(), 1);
    let key_ref = listed[0]["api_key_ref"].as_str().unwrap().to_owned();

    // Deleted on A: B refuses it on the very next request.
    let r = a.client.delete(a.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(b.api_login(&api_key, &password).await, StatusCode::UNAUTHORIZED).await;
    let r = a.client.delete(b.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND).await;

    // A session opened on A works on B; logged out on A, it is dead on B at once.
    let cookie = session_cookie(&a).await;
    assert_eq!(list_status(&b, &cookie).await, StatusCode::OK);
    let r = Client::new().post(a.url("/auth/logout")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(list_status(&b, &cookie).await, StatusCode::UNAUTHORIZED);
    assert_eq!(list_status(&a, &cookie).await, StatusCode::UNAUTHORIZED);

    // A key generated on B logs in on A.
    let (api_key, password) = b.generate_key_with(&a.client).await;
    a.token(&api_key, &password).await;
}

#[tokio::test]
async fn postgres_without_a_master_key_refuses_to_start() {
    let Some(builder) = Builder::postgres_empty().await else { return };
    let db = builder.db().unwrap();
    let data = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("KEYGATE_DATABASE_URL", db.url.as_str()),
        ("KEYGATE_LISTEN", "127.0.0.1:0"),
        ("KEYGATE_DATA_DIR", data.path().to_str().unwrap()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let out = run_with_timeout(keygate_command(&env).arg("serve"), Duration::from_secs(60));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid setting KEYGATE_MASTER_KEY"), "{stderr}");
    assert!(stderr.contains("required with PostgreSQL"), "{stderr}");
    // It stopped before touching the database, and generated no key of its own.
    assert_eq!(db.count("information_schema.tables WHERE table_schema = 'public'").await, 0);
    assert!(!data.path().join("master.key").exists());
}

/// Each replica's default issuer would be its own address, and tokens from one would fail
/// on the others: on PostgreSQL the issuer must be set, as the master key must.
#[tokio::test]
async fn postgres_without_an_issuer_refuses_to_start() {
    let Some(builder) = Builder::postgres_empty().await else { return };
    let db = builder.db().unwrap();
    let data = tempfile::tempdir().unwrap();
    let master_key = random_master_key();
    let env: Vec<(String, String)> = [
        ("KEYGATE_DATABASE_URL", db.url.as_str()),
        ("KEYGATE_MASTER_KEY", master_key.as_str()),
        ("KEYGATE_LISTEN", "127.0.0.1:0"),
        ("KEYGATE_DATA_DIR", data.path().to_str().unwrap()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let out = run_with_timeout(keygate_command(&env).arg("serve"), Duration::from_secs(60));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("KEYGATE_ISSUER")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: invalid setting KEYGATE_ISSUER: required with PostgreSQL"), "{stderr}");
    // It stopped before touching the database.
    assert_eq!(db.count("information_schema.tables WHERE table_schema = 'public'").await, 0);
}

/// Two replicas, caches loaded, and a key whose token is verified twice on B, so that B
/// answers for it from memory: (a, b, api_key, password, key_ref, token).
async fn replicas_with_a_cached_token(builder: Builder) -> (TestApp, TestApp, String, String, String, String) {
    let a = builder.spawn().await;
    let b = a.replica().spawn().await;
    let (api_key, password, key_ref, token) = a.cached_key_on(&b).await;
    (a, b, api_key, password, key_ref, token)
}

#[tokio::test]
async fn a_key_deleted_on_one_replica_fails_on_the_other_at_once_and_its_tokens_within_a_second() {
    let Some(builder) = Builder::postgres().await else { return };
    let (a, b, api_key, password, key_ref, token) = replicas_with_a_cached_token(builder).await;
    let (other_key, other_password) = a.generate_key().await;
    let other_token = b.token(&other_key, &other_password).await;
    assert_eq!(b.api_login(&api_key, &password).await.status(), StatusCode::OK);

    let since = Instant::now();
    let r = a.client.delete(a.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Logins read the database on PostgreSQL: refused on the very next request.
    assert_problem(b.api_login(&api_key, &password).await, StatusCode::UNAUTHORIZED).await;
    let refused =
        within(since, PROPAGATION_BOUND, || async { b.verify(&token).await.status() == StatusCode::UNAUTHORIZED })
            .await;
    assert!(refused, "B still verified the deleted key's token a second after the deletion on A");
    // The other key is untouched, on both.
    for app in [&a, &b] {
        assert_eq!(app.verify(&other_token).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_token_revoked_on_one_replica_fails_on_the_other_within_a_second() {
    let Some(builder) = Builder::postgres().await else { return };
    let (a, b, api_key, password, _, token) = replicas_with_a_cached_token(builder).await;
    let sibling = b.token(&api_key, &password).await;
    assert_eq!(b.verify(&sibling).await.status(), StatusCode::OK);

    let since = Instant::now();
    assert_eq!(a.revoke_token(&api_key, &password, &token).await.status(), StatusCode::OK);
    assert_eq!(a.verify(&token).await.status(), StatusCode::UNAUTHORIZED, "A must refuse its own revocation at once");
    let refused =
        within(since, PROPAGATION_BOUND, || async { b.verify(&token).await.status() == StatusCode::UNAUTHORIZED })
            .await;
    assert!(refused, "B still verified a token revoked on A a second later");
    assert_eq!(b.verify(&sibling).await.status(), StatusCode::OK, "only the revoked token is refused");
}

#[tokio::test]
async fn a_replica_cut_off_from_the_database_stops_answering_from_memory() {
    // The caches answer only while the change log can be read: without the database a
    // replica cannot hear of deletions, so within a second it stops vouching for tokens
    // (503, as every call that needs the database), and it resumes once the database is back.
    let Some(builder) = Builder::postgres().await else { return };
    let (a, b, _, _, _, token) = replicas_with_a_cached_token(builder).await;
    let db = b.db().unwrap();
    let since = Instant::now();
    db.take_down().await;
    let unavailable = within(since, PROPAGATION_BOUND, || async {
        b.verify(&token).await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(unavailable, "B kept answering from memory a second into the outage");
    db.bring_up().await;
    let back =
        within(Instant::now(), Duration::from_secs(30), || async { b.verify(&token).await.status() == StatusCode::OK })
            .await;
    assert!(back, "B did not recover:\n{}", b.logs());
    assert_eq!(a.verify(&token).await.status(), StatusCode::OK);
}
