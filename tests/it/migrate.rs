//! `keygate migrate`: the way out of the embedded store. Everything copied works unchanged
//! on PostgreSQL: keys and their passwords, admins and theirs, sessions, signing keys.

use crate::common::*;
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

async fn jwks(app: &TestApp) -> Value {
    Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn sqlite_to_postgres_keeps_keys_passwords_sessions_and_signing_keys() {
    let Some(target) = Builder::postgres_empty().await else { return };
    let db_url = target.db().unwrap().url.clone();

    // A populated embedded store: two accounts, keys in each, a live admin session.
    let mut source = TestApp::spawn().await;
    source.admin_login().await;
    let (key, password) = source.generate_key().await;
    let (key2, password2) = source.generate_key().await;
    let other = source.new_admin("other@example.com", "other").await;
    let (other_key, other_password) = source.generate_key_with(&other).await;
    // An owner's limits and credits, and a key with its own that names it.
    let owner =
        json!({"limits": [{"name": "monthly", "limit": 500, "window_seconds": 2678400}], "credits": {"remaining": 40}});
    let r = source.client.put(source.url("/auth/owners/cus_1/limits")).json(&owner).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let limited = json!({"owner": "cus_1", "limits": [{"name": "burst", "limit": 9, "window_seconds": 60}], "credits": {"remaining": 7}});
    let limited: Value = source.post_json("/auth/keys/generate", &limited).await.json().await.unwrap();
    let limited_ref = limited["api_key_ref"].as_str().unwrap().to_owned();
    let token_before = source.token(&key, &password).await;
    let jwks_before = jwks(&source).await;
    let login = Client::new()
        .post(source.url("/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let master_key = std::fs::read_to_string(source.data_dir().join("master.key")).unwrap();
    source.kill();

    let from = format!("sqlite://{}", source.data_dir().join("keygate.db").display());
    let out = source.cli(&["migrate", "--from", &from, "--to", &db_url], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    // 2 accounts, 2 admins, 4 keys, 1 owner; sessions: the harness login, `other`'s, the one above.
    assert!(
        stdout.contains("copied and verified 2 accounts, 2 admins, 4 API keys, 1 owners, 3 sessions, 1 signing keys"),
        "{stdout}"
    );
    assert!(stdout.contains("KEYGATE_MASTER_KEY"), "{stdout}");

    // A server on PostgreSQL with the source's master key takes over as if nothing happened.
    let app = target.env("KEYGATE_MASTER_KEY", master_key.trim()).spawn().await;
    let db = app.db().unwrap();
    assert_eq!(db.count("admins").await, 2, "start-up must not add an admin to a migrated store");
    assert_eq!(db.count("signing_keys").await, 1, "start-up must not add a signing key to a migrated store");

    // The same signing key: old tokens carry a kid the new server publishes, and new
    // tokens are signed with it.
    assert_eq!(jwks(&app).await, jwks_before);
    let token_after = app.token(&key, &password).await;
    assert_eq!(kid_of(&token_after), kid_of(&token_before));
    app.token(&key2, &password2).await;
    app.token(&other_key, &other_password).await;
    assert_problem(app.api_login(&key, &other_password).await, StatusCode::UNAUTHORIZED).await;

    // The session from before still works; admin passwords are unchanged; accounts are
    // still separate.
    let r = Client::new().get(app.url("/auth/keys/list")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.admin_login().await;
    // Sorted: both keys may carry the same creation second, and then the list order
    // between them is the order of their random refs.
    let mut mine: Vec<String> = app.list_keys().await.into_iter().map(|(_, k)| k).collect();
    mine.sort();
    let mut expected = vec![key.clone(), key2.clone(), limited["api_key"].as_str().unwrap().to_owned()];
    expected.sort();
    assert_eq!(mine, expected);
    let key: Value =
        app.client.get(app.url(&format!("/auth/keys/{limited_ref}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!((key["owner"].clone(), key["credits"]["remaining"].clone()), (json!("cus_1"), json!(7)));
    assert_eq!(key["limits"][0]["limit"], 9);
    let owner: Value = app.client.get(app.url("/auth/owners/cus_1/limits")).send().await.unwrap().json().await.unwrap();
    assert_eq!((owner["limits"][0]["limit"].clone(), owner["credits"]["remaining"].clone()), (json!(500), json!(40)));
    let theirs = Client::builder().cookie_store(true).build().unwrap();
    app.login_admin_as(&theirs, "other@example.com", ADMIN_PASSWORD).await;
    let theirs: Vec<String> = app.list_keys_with(&theirs).await.into_iter().map(|(_, k)| k).collect();
    assert_eq!(theirs, vec![other_key]);

    // A second run refuses the now non-empty target and changes nothing.
    let keys_before = db.count("api_keys").await;
    let out = source.cli(&["migrate", "--from", &from, "--to", &db_url], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(!stderr.contains(&db_url), "the target URL (which may hold a password) was echoed: {stderr}");
    assert_eq!(db.count("api_keys").await, keys_before);
}

#[tokio::test]
async fn a_mistyped_source_is_refused_and_not_created() {
    let Some(target) = Builder::postgres_empty().await else { return };
    let db = target.db().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let from = format!("sqlite://{}", missing.display());
    let out = run_with_timeout(
        keygate_command(&[]).args(["migrate", "--from", &from, "--to", &db.url]),
        std::time::Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("source"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!missing.exists());
    assert_eq!(db.count("information_schema.tables WHERE table_name = 'accounts'").await, 0);
}
