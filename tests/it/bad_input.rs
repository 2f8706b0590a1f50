//! Every bad input gets a clear 4xx problem, and nothing stored is harmed by it.

use crate::common::*;
use reqwest::{Client, StatusCode};
use serde_json::json;

async fn raw_login(app: &TestApp, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> reqwest::Response {
    let mut request = Client::new().post(app.url("/auth/login")).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    request.send().await.unwrap()
}

backends! {
async fn malformed_bodies_are_refused_with_problems(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let json = Some("application/json");

    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode)> = vec![
        (json, b"{".to_vec(), StatusCode::BAD_REQUEST),
        (json, b"".to_vec(), StatusCode::BAD_REQUEST),
        (json, b"not json".to_vec(), StatusCode::BAD_REQUEST),
        (json, b"{\"api_key\":\"\xff\xfe\",\"password\":\"x\"}".to_vec(), StatusCode::BAD_REQUEST),
        (json, br#"{"api_key": 12, "password": "x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (json, br#"{"email": ["a"], "password": "x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (json, br#"{"api_key": "K"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (json, br#"{"password": "x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (json, br#"[]"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (json, br#""string""#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (json, br#"{"api_key":"A","email":"a@b.io","password":"x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (json, br#"{"api_key":"A","username":"A","password":"x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (None, br#"{"api_key":"A","password":"x"}"#.to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (Some("text/plain"), br#"{"api_key":"A","password":"x"}"#.to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (Some("application/x-www-form-urlencoded"), b"api_key=A&password=x".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ];
    for (content_type, body, status) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let r = raw_login(&app, content_type, body).await;
        assert_eq!(r.status(), status, "{content_type:?} {shown}");
        assert_problem(r, status).await;
    }

    // Deeply nested JSON (10 000 levels, far past serde_json's recursion limit of 128, in a
    // body under the 64 KiB cap) inside real fields: a problem naming the field, never a 500,
    // a crash or a hang.
    let nest = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep = 10_000;
    let r = raw_login(&app, json, format!(r#"{{"email": {}, "password": "x"}}"#, nest(deep))).await;
    let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["detail"].as_str().unwrap().contains("email"), "{problem}");
    let r = raw_login(&app, json, format!(r#"{{"api_key": "{api_key}", "password": {}}}"#, nest(deep))).await;
    let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["detail"].as_str().unwrap().contains("password"), "{problem}");
    // In a field serde skips it walks the whole nest, to the bottom and back: the login
    // itself then goes on (a wrong password here) ...
    let wrong = keygate::domain::ApiPassword::generate();
    let body = format!(r#"{{"note": {}, "api_key": "{api_key}", "password": "{}"}}"#, nest(deep), wrong.expose());
    assert_problem(raw_login(&app, json, body).await, StatusCode::UNAUTHORIZED).await;
    // ... and a nest that never closes is a syntax error, found at the end of the body.
    let body = format!(r#"{{"api_key": "{api_key}", "password": "x", "note": {}"#, "[".repeat(deep));
    assert_problem(raw_login(&app, json, body).await, StatusCode::BAD_REQUEST).await;
    assert_problem(raw_login(&app, json, nest(deep)).await, StatusCode::UNPROCESSABLE_ENTITY).await;

    // Nothing stored was harmed.
    assert_eq!(app.api_login(&api_key, &password).await.status(), StatusCode::OK);
    assert_eq!(app.list_keys().await.len(), 1);
}

async fn oversized_bodies_get_413(builder: Builder) {
    let app = builder.spawn().await;
    let big = json!({"api_key": "A".repeat(70 * 1024), "password": "x"}).to_string();
    let r = raw_login(&app, Some("application/json"), big.clone()).await;
    // The unread rest of the body makes the connection unusable: the server says so.
    assert_eq!(r.headers()["connection"], "close");
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;

    // Without a Content-Length (chunked), the limit holds as the body is read.
    let stream = futures_stream(big.into_bytes());
    let r = raw_login(&app, Some("application/json"), reqwest::Body::wrap_stream(stream)).await;
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;

    // Admin endpoints too, even those that take no body. (A client of its own: the server
    // closes a connection whose oversized body it did not read.)
    let admin = Client::builder().cookie_store(true).build().unwrap();
    app.login_admin_as(&admin, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let r = admin
        .post(app.url("/auth/keys/generate"))
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;
    app.admin_login().await;
    assert!(app.list_keys().await.is_empty());
}

async fn unknown_routes_and_methods(builder: Builder) {
    let app = builder.spawn().await;
    let client = Client::new();
    assert_problem(client.get(app.url("/nope")).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    assert_problem(client.get(app.url("/auth/user/x")).send().await.unwrap(), StatusCode::METHOD_NOT_ALLOWED).await;
    let r = client.get(app.url("/auth/login")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_problem(r, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_problem(client.put(app.url("/auth/keys/list")).send().await.unwrap(), StatusCode::METHOD_NOT_ALLOWED).await;
    assert_problem(client.delete(app.url("/auth/user/")).send().await.unwrap(), StatusCode::NOT_FOUND).await;
}

async fn malformed_key_refs_are_not_found(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    app.generate_key().await;
    for bad in ["x", "..%2F..%2Fetc%2Fpasswd", "00000000-0000-4000-8000-00000000000G", "%00", "' OR 1=1 --", &"a".repeat(300)] {
        let r = app.client.delete(app.url(&format!("/auth/user/{bad}"))).send().await.unwrap();
        assert_problem(r, StatusCode::NOT_FOUND).await;
    }
    assert_eq!(app.list_keys().await.len(), 1);
}

async fn hostile_credentials_are_just_wrong(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let long = "x".repeat(60_000);
    for (key, pw) in [
        ("' OR '1'='1", "' OR '1'='1"),
        (api_key.as_str(), ""),
        (api_key.as_str(), long.as_str()),
        ("", ""),
        ("46SQZ49LT100U2QWQ3SI\u{0}", password.as_str()),
        (&api_key.to_lowercase(), password.as_str()),
    ] {
        assert_problem(app.api_login(key, pw).await, StatusCode::UNAUTHORIZED).await;
    }
    for (email, pw) in [("admin@example.com' --", "x"), ("", ""), (ADMIN_EMAIL, long.as_str()), ("\u{202e}@x.io", "x")] {
        let r = app.post_json("/auth/login", &json!({"email": email, "password": pw})).await;
        assert_problem(r, StatusCode::UNAUTHORIZED).await;
    }
    assert_eq!(app.api_login(&api_key, &password).await.status(), StatusCode::OK);
}
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
    futures_util::stream::iter(chunks)
}
