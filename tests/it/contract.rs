//! The documented contract, end to end: the six calls and their shapes.

use crate::common::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

backends! {
async fn admin_generates_lists_and_deletes_keys_that_log_in(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    assert_eq!(api_key.len(), 20);
    assert!(api_key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    assert!(password.starts_with("kgp_"));

    let listed = app.list_keys().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, api_key);

    let r = app.api_login(&api_key, &password).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let token: String = r.json().await.unwrap();
    assert_eq!(token.split('.').count(), 3);

    let r = app.client.delete(app.url(&format!("/auth/user/{}", listed[0].0))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(app.list_keys().await.is_empty());
    assert_problem(app.api_login(&api_key, &password).await, StatusCode::UNAUTHORIZED).await;
    // Deleting again: it is gone.
    let r = app.client.delete(app.url(&format!("/auth/user/{}", listed[0].0))).send().await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND).await;
}

async fn username_is_accepted_as_the_api_key(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let r = app.post_json("/auth/login", &json!({"username": api_key, "password": password})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<String>().await.unwrap().starts_with("eyJ"));
}

async fn generate_accepts_an_empty_body_and_shows_the_password_once(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    // As the documentation shows it: no body at all, and also an empty JSON object.
    let r = app.client.post(app.url("/auth/keys/generate")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let first: Value = r.json().await.unwrap();
    let r = app.client.post(app.url("/auth/keys/generate")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    assert_ne!(first["api_key"], second["api_key"]);
    assert_ne!(first["password"], second["password"]);
    // The documented fields, and what a key carries besides.
    let mut fields: Vec<_> = first.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    let generated =
        ["api_key", "api_key_ref", "created_at", "credits", "enabled", "expires_at", "limits", "metadata", "name", "owner", "password", "scopes"];
    assert_eq!(fields, generated);
    assert_eq!((&first["name"], &first["expires_at"], &first["enabled"]), (&Value::Null, &Value::Null, &json!(true)));

    // The list never carries a password or hash.
    let r = app.client.get(app.url("/auth/keys/list")).send().await.unwrap();
    let text = r.text().await.unwrap();
    for secret in [first["password"].as_str().unwrap(), second["password"].as_str().unwrap()] {
        assert!(!text.contains(secret));
    }
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    for item in &list {
        let mut fields: Vec<_> = item.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        let listed =
            ["api_key", "api_key_ref", "created_at", "created_by", "enabled", "expires_at", "last_used_at", "name", "scopes"];
        assert_eq!(fields, listed);
    }
}

async fn wrong_password_and_unknown_key_look_the_same(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let (_, other_password) = app.generate_key().await;

    let wrong = app.api_login(&api_key, &other_password).await;
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer realm=\"keygate\"");
    let wrong = assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    let unknown = assert_problem(app.api_login("ZZZZZZZZZZZZZZZZZZZZ", &password).await, StatusCode::UNAUTHORIZED).await;
    let malformed = assert_problem(app.api_login("nope", "nope").await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, malformed);

    let wrong_admin = app.post_json("/auth/login", &json!({"email": ADMIN_EMAIL, "password": "wrong password!"})).await;
    let wrong_admin = assert_problem(wrong_admin, StatusCode::UNAUTHORIZED).await;
    let unknown_admin =
        app.post_json("/auth/login", &json!({"email": "nobody@example.com", "password": "wrong password!"})).await;
    let unknown_admin = assert_problem(unknown_admin, StatusCode::UNAUTHORIZED).await;
    assert_eq!(wrong_admin, unknown_admin);
    assert_eq!(wrong_admin, wrong);
}

async fn admin_calls_need_a_session(builder: Builder) {
    let app = builder.spawn().await;
    let anonymous = Client::new();
    for (method, path) in [
        ("POST", "/auth/keys/generate"),
        ("GET", "/auth/keys/list"),
        ("DELETE", "/auth/user/00000000-0000-4000-8000-000000000000"),
        ("POST", "/auth/logout"),
    ] {
        let r = anonymous.request(method.parse().unwrap(), app.url(path)).send().await.unwrap();
        assert!(r.headers().contains_key("www-authenticate"));
        assert_problem(r, StatusCode::UNAUTHORIZED).await;
        // A forged session cookie is no better.
        let r = anonymous
            .request(method.parse().unwrap(), app.url(path))
            .header("cookie", "keygate_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED).await;
    }
}

async fn an_api_token_is_not_an_admin_credential(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let token = app.token(&api_key, &password).await;
    let client = Client::new();
    let r = client.get(app.url("/auth/keys/list")).bearer_auth(&token).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
    let r = client.post(app.url("/auth/keys/generate")).bearer_auth(&token).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
    let r = client.get(app.url("/auth/keys/list")).header("cookie", format!("keygate_session={token}")).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
}

async fn logout_ends_the_session_on_the_server(builder: Builder) {
    let app = builder.spawn().await;
    let r = app.post_json("/auth/login", &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let replay = Client::new();
    let r = replay.get(app.url("/auth/keys/list")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = app.client.post(app.url("/auth/logout")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with("keygate_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // The old cookie value, replayed by someone who kept it, is dead.
    let r = replay.get(app.url("/auth/keys/list")).header("cookie", &cookie).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
    let r = app.client.get(app.url("/auth/keys/list")).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
}

async fn each_login_gets_a_new_session_id(builder: Builder) {
    let app = builder.spawn().await;
    let login = || app.client.post(app.url("/auth/login")).json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}));
    let first = login().send().await.unwrap();
    let first = first.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    // Logging in again while holding a session replaces it (no fixation).
    let second = login().send().await.unwrap();
    let second = second.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    assert_ne!(first, second);
    let r = Client::new().get(app.url("/auth/keys/list")).header("cookie", &first).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
    let r = Client::new().get(app.url("/auth/keys/list")).header("cookie", &second).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn idle_and_absolute_session_expiry(builder: Builder) {
    use std::time::Duration;
    let (idle, lifetime) = (3, 6);
    let app = builder
        .env("KEYGATE_SESSION_IDLE_TIMEOUT", &idle.to_string())
        .env("KEYGATE_SESSION_LIFETIME", &lifetime.to_string())
        .manual_clock()
        .spawn()
        .await;
    // Activity every second keeps the idle timeout at bay, but not the absolute lifetime.
    app.admin_login().await;
    let (mut elapsed, mut last_ok, mut expired) = (0, 0, false);
    while elapsed <= lifetime + 3 {
        match app.client.get(app.url("/auth/keys/list")).send().await.unwrap().status() {
            StatusCode::OK => last_ok = elapsed,
            StatusCode::UNAUTHORIZED => {
                expired = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
        app.clock().advance(Duration::from_secs(1));
        elapsed += 1;
    }
    assert!(last_ok > idle + 1, "activity did not extend the session (last answered at {last_ok} s)");
    assert!(expired, "the session outlived its absolute lifetime");
    assert!(last_ok < lifetime, "the session outlived its absolute lifetime (answered at {last_ok} s)");

    // Without activity, the idle timeout ends it.
    app.admin_login().await;
    app.client.get(app.url("/auth/keys/list")).send().await.unwrap().error_for_status().unwrap();
    app.clock().advance(Duration::from_secs(idle + 1));
    let r = app.client.get(app.url("/auth/keys/list")).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
}

async fn accounts_are_isolated(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (mine, _) = app.generate_key().await;
    let my_ref = app.ref_of(&mine).await;

    let other = app.new_admin("ops@other.example", "other").await;
    let (theirs, their_password) = app.generate_key_with(&other).await;
    let their_list = app.list_keys_with(&other).await;
    assert_eq!(their_list.len(), 1);
    assert_eq!(their_list[0].1, theirs);
    assert_eq!(app.list_keys().await.iter().map(|k| &k.1).collect::<Vec<_>>(), [&mine]);

    // Deleting another account's key by its ref is indistinguishable from an unknown ref.
    let r = app.client.delete(app.url(&format!("/auth/user/{}", their_list[0].0))).send().await.unwrap();
    let foreign = assert_problem(r, StatusCode::NOT_FOUND).await;
    let r = app.client.delete(app.url("/auth/user/00000000-0000-4000-8000-000000000000")).send().await.unwrap();
    let unknown = assert_problem(r, StatusCode::NOT_FOUND).await;
    assert_eq!(foreign, unknown);
    assert_eq!(app.api_login(&theirs, &their_password).await.status(), StatusCode::OK);
    let r = other.delete(app.url(&format!("/auth/user/{my_ref}"))).send().await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND).await;
    assert_eq!(app.list_keys().await.len(), 1);

    // The second account's tokens carry its own account id.
    let token = app.token(&theirs, &their_password).await;
    let claims = decode_claims(&token);
    let login: Value = other
        .post(app.url("/auth/login"))
        .json(&json!({"email": "ops@other.example", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claims["acc"], login["account_id"]);
}

async fn health_and_openapi(builder: Builder) {
    let app = builder.spawn().await;
    let r = Client::new().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = Client::new().get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (path, method) in [
        ("/auth/login", "post"),
        ("/auth/logout", "post"),
        ("/auth/keys/generate", "post"),
        ("/auth/keys/list", "get"),
        ("/auth/user/{api_key_ref}", "delete"),
        ("/healthz", "get"),
        ("/.well-known/jwks.json", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from the OpenAPI document");
    }
}
}

/// The payload of a JWT, without verifying it.
pub fn decode_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}
