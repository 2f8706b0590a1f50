//! The key lifecycle: names, scopes, expiry, metadata, disabling, rolling with a grace
//! period, last use; scopes in RFC 9068 tokens, narrowed at the token endpoint and required
//! at the gateway. Expiry and grace periods are judged on a moved clock, never a sleep.

use std::time::{Duration, Instant};

use crate::common::{cache::*, gateway::*, *};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// `POST /auth/keys/generate` with `body`; the answer's JSON.
async fn generate(app: &TestApp, body: &Value) -> Value {
    let r = app.post_json("/auth/keys/generate", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn get_key(app: &TestApp, key_ref: &str) -> Response {
    app.client.get(app.url(&format!("/auth/keys/{key_ref}"))).send().await.unwrap()
}

async fn patch(app: &TestApp, key_ref: &str, body: &Value) -> Response {
    app.client.patch(app.url(&format!("/auth/keys/{key_ref}"))).json(body).send().await.unwrap()
}

async fn roll(app: &TestApp, key_ref: &str, body: Option<&Value>) -> Response {
    let request = app.client.post(app.url(&format!("/auth/keys/{key_ref}/roll")));
    let request = match body {
        Some(body) => request.json(body),
        None => request,
    };
    request.send().await.unwrap()
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("{field} in {v}"))
}

fn rfc3339(at: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn client_token(app: &TestApp, api_key: &str, password: &str, scope: Option<&str>) -> Response {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    Client::new().post(app.url("/oauth/token")).basic_auth(api_key, Some(password)).form(&form).send().await.unwrap()
}

async fn introspect(app: &TestApp, api_key: &str, password: &str, token: &str) -> Value {
    let r = Client::new()
        .post(app.url("/oauth/introspect"))
        .basic_auth(api_key, Some(password))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn verify_scoped(app: &TestApp, token: &str, query: &str, header: Option<&str>) -> Response {
    let mut request = Client::new().get(app.url(&format!("/auth/verify{query}"))).bearer_auth(token);
    if let Some(header) = header {
        request = request.header("X-Required-Scopes", header);
    }
    request.send().await.unwrap()
}

async fn audit_actions(app: &TestApp) -> Vec<(String, String)> {
    let r = app.client.get(app.url("/auth/audit?limit=100")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let events = body.as_array().cloned().or_else(|| body["events"].as_array().cloned()).expect("audit events");
    events
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["target"].as_str().unwrap_or("").to_owned()))
        .collect()
}

backends! {
    async fn generate_with_options_shows_them_and_get_and_list_read_them_back(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let body = json!({
            "name": "billing service",
            "scopes": ["orders:read", "orders:write"],
            "expires_in": 3600,
            "metadata": {"team": "billing", "tier": 2},
        });
        let key = generate(&app, &body).await;
        let key_ref = str_of(&key, "api_key_ref").to_owned();
        assert_eq!(key["name"], "billing service");
        assert_eq!(key["scopes"], json!(["orders:read", "orders:write"]));
        assert_eq!(key["metadata"], json!({"team": "billing", "tier": 2}));
        assert_eq!(key["enabled"], true);
        let created = time::OffsetDateTime::parse(str_of(&key, "created_at"), &time::format_description::well_known::Rfc3339).unwrap();
        let expires = time::OffsetDateTime::parse(str_of(&key, "expires_at"), &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!((expires - created).whole_seconds(), 3600);

        let r = get_key(&app, &key_ref).await;
        assert_eq!(r.status(), StatusCode::OK);
        let got: Value = r.json().await.unwrap();
        for field in ["api_key", "api_key_ref", "name", "scopes", "created_at", "expires_at", "metadata", "enabled"] {
            assert_eq!(got[field], key[field], "{field}");
        }
        assert_eq!(got["created_by"], ADMIN_EMAIL);
        assert_eq!(got["last_used_at"], Value::Null);
        assert!(got.get("password").is_none());

        // The name filter, with paging that keeps it.
        let plain = generate(&app, &json!({})).await;
        for _ in 0..2 {
            generate(&app, &json!({"name": "billing service"})).await;
        }
        let r = app.client.get(app.url("/auth/keys/list?name=billing%20service&limit=2")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let link = r.headers()["link"].to_str().unwrap().to_owned();
        assert!(link.contains("name=billing+service") && link.contains("limit=2"), "{link}");
        let page: Vec<Value> = r.json().await.unwrap();
        assert_eq!(page.len(), 2);
        assert!(page.iter().all(|k| k["name"] == "billing service" && k.get("metadata").is_none()));
        let next = link.trim_start_matches('<').split('>').next().unwrap();
        let rest: Vec<Value> = app.client.get(app.url(next)).send().await.unwrap().json().await.unwrap();
        assert_eq!(rest.len(), 1);
        assert!(!page.iter().chain(&rest).any(|k| k["api_key_ref"] == plain["api_key_ref"]));

        // Another account's key is not there for this one.
        let other = app.new_admin("other@example.com", "other").await;
        let r = other.get(app.url(&format!("/auth/keys/{key_ref}"))).send().await.unwrap();
        assert_problem(r, StatusCode::NOT_FOUND).await;
        let r = other.patch(app.url(&format!("/auth/keys/{key_ref}"))).json(&json!({"enabled": false})).send().await.unwrap();
        assert_problem(r, StatusCode::NOT_FOUND).await;
        let r = other.post(app.url(&format!("/auth/keys/{key_ref}/roll"))).send().await.unwrap();
        assert_problem(r, StatusCode::NOT_FOUND).await;
        assert_problem(get_key(&app, "not-a-ref").await, StatusCode::NOT_FOUND).await;
        assert_eq!(get_key(&app, &key_ref).await.json::<Value>().await.unwrap()["enabled"], true);

        let actions = audit_actions(&app).await;
        assert!(actions.contains(&("key.generated".into(), key_ref.clone())), "{actions:?}");
    }

    async fn bad_options_are_refused_naming_the_field_and_change_nothing(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let cases = [
            (json!({"nmae": "x"}), "nmae"),
            (json!({"name": ""}), "name"),
            (json!({"name": "x".repeat(101)}), "name"),
            (json!({"name": "a\u{202e}b"}), "name"),
            (json!({"name": 5}), "name"),
            (json!({"scopes": ["has space"]}), "scopes"),
            (json!({"scopes": ["a", "a"]}), "scopes"),
            (json!({"scopes": "orders:read"}), "scopes"),
            (json!({"expires_in": 59}), "expires_in"),
            (json!({"expires_in": -1}), "expires_in"),
            (json!({"expires_in": 400_000_000}), "expires_in"),
            (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
            (json!({"expires_at": "tomorrow"}), "expires_at"),
            (json!({"expires_in": 3600, "expires_at": "2099-01-01T00:00:00Z"}), "expires_at"),
            (json!({"metadata": [1, 2]}), "metadata"),
            (json!({"metadata": {"big": "x".repeat(5000)}}), "metadata"),
        ];
        for (body, field) in &cases {
            let r = app.post_json("/auth/keys/generate", body).await;
            let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert!(problem["detail"].as_str().unwrap().contains(field), "{body}: {problem}");
        }
        // Deep nesting inside metadata: refused, never a crash or a stack overflow.
        let deep = format!("{{\"metadata\": {{\"a\": {}{}}}}}", "[".repeat(10_000), "]".repeat(10_000));
        let r = app.client.post(app.url("/auth/keys/generate")).header("content-type", "application/json").body(deep).send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
        assert!(app.list_keys().await.is_empty(), "a refused generation stored a key");

        let key = generate(&app, &json!({"name": "kept", "scopes": ["a"]})).await;
        let key_ref = str_of(&key, "api_key_ref");
        let before: Value = get_key(&app, key_ref).await.json().await.unwrap();
        for (body, field) in [
            (json!({"name": "new", "scopes": ["bad scope"]}), "scopes"),
            (json!({"name": "new", "expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
            (json!({"name": "new", "enabled": "no"}), "enabled"),
            (json!({"name": "new", "owner": ""}), "owner"),
            (json!({"name": "new", "metadata": "text"}), "metadata"),
        ] {
            let problem = assert_problem(patch(&app, key_ref, &body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert!(problem["detail"].as_str().unwrap().contains(field), "{body}: {problem}");
        }
        for body in [json!({"grace_seconds": 604_801}), json!({"grace_seconds": -1}), json!({"grace": 1})] {
            assert_problem(roll(&app, key_ref, Some(&body)).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
        let after: Value = get_key(&app, key_ref).await.json().await.unwrap();
        assert_eq!(before, after, "a refused change changed the key");
    }

    async fn update_changes_each_field_and_null_clears(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let key = generate(&app, &json!({"name": "a", "metadata": {"x": 1}, "expires_in": 3600})).await;
        let key_ref = str_of(&key, "api_key_ref");
        let r = patch(&app, key_ref, &json!({"name": "b", "scopes": ["s1"], "metadata": {"y": 2}})).await;
        assert_eq!(r.status(), StatusCode::OK);
        let got: Value = r.json().await.unwrap();
        assert_eq!((&got["name"], &got["scopes"], &got["metadata"]), (&json!("b"), &json!(["s1"]), &json!({"y": 2})));
        assert_eq!(got["expires_at"], key["expires_at"], "left out: left as it was");
        let got: Value = patch(&app, key_ref, &json!({"name": null, "metadata": null, "expires_at": null})).await.json().await.unwrap();
        assert_eq!((&got["name"], &got["metadata"], &got["expires_at"]), (&Value::Null, &Value::Null, &Value::Null));
        assert_eq!(got["scopes"], json!(["s1"]));
        let later = rfc3339(now() + 7200);
        let got: Value = patch(&app, key_ref, &json!({"expires_at": later})).await.json().await.unwrap();
        assert_eq!(got["expires_at"], later.as_str());
        let actions = audit_actions(&app).await;
        assert_eq!(actions.iter().filter(|(a, t)| a == "key.updated" && t == key_ref).count(), 3, "{actions:?}");
    }

    async fn a_disabled_key_cannot_log_in_and_its_tokens_fail_until_it_is_enabled(builder: Builder) {
        let app = builder.spawn().await;
        app.wait_for_caches().await;
        app.admin_login().await;
        let key = generate(&app, &json!({})).await;
        let (api_key, password, key_ref) = (str_of(&key, "api_key"), str_of(&key, "password"), str_of(&key, "api_key_ref"));
        let token = app.token(api_key, password).await;
        for _ in 0..2 {
            assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
        }
        let wrong = app.api_login(api_key, "wrong-password-wrong-password").await;
        let wrong_body = assert_problem(wrong, StatusCode::UNAUTHORIZED).await;

        let got: Value = patch(&app, key_ref, &json!({"enabled": false})).await.json().await.unwrap();
        assert_eq!(got["enabled"], false);
        let refused = assert_problem(app.api_login(api_key, password).await, StatusCode::UNAUTHORIZED).await;
        assert_eq!(refused, wrong_body, "a disabled key answers as a wrong password does");
        assert_eq!(client_token(&app, api_key, password, None).await.status(), StatusCode::UNAUTHORIZED);
        assert_invalid_token(app.verify(&token).await, "a disabled key's token").await;

        assert_eq!(patch(&app, key_ref, &json!({"enabled": true})).await.status(), StatusCode::OK);
        assert_eq!(app.verify(&token).await.status(), StatusCode::OK, "enabling it restores its tokens");
        let fresh = app.token(api_key, password).await;
        assert_eq!(introspect(&app, api_key, password, &fresh).await["active"], true);
        let actions = audit_actions(&app).await;
        for action in ["key.disabled", "key.enabled"] {
            assert!(actions.contains(&(action.into(), key_ref.into())), "{action}: {actions:?}");
        }
    }

    async fn an_expired_key_answers_like_a_wrong_password_and_its_tokens_end_at_its_expiry(builder: Builder) {
        let app = builder.manual_clock().env("KEYGATE_SWEEP_INTERVAL", "1").spawn().await;
        app.admin_login().await;
        let key = generate(&app, &json!({"expires_in": 120})).await;
        let (api_key, password, key_ref) = (str_of(&key, "api_key"), str_of(&key, "password"), str_of(&key, "api_key_ref"));
        let expires_at = time::OffsetDateTime::parse(str_of(&key, "expires_at"), &time::format_description::well_known::Rfc3339).unwrap().unix_timestamp() as u64;
        let token = app.token(api_key, password).await;
        let exp = segment(&token, 1)["exp"].as_u64().unwrap();
        assert!(exp <= expires_at, "the token outlives its key: exp {exp}, key expires {expires_at}");
        let wrong = assert_problem(app.api_login(api_key, "wrong-password-wrong-password").await, StatusCode::UNAUTHORIZED).await;

        app.clock().advance(Duration::from_secs(119));
        assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
        app.clock().advance(Duration::from_secs(1));
        assert_invalid_token(app.verify(&token).await, "a token of an expired key").await;
        let refused = assert_problem(app.api_login(api_key, password).await, StatusCode::UNAUTHORIZED).await;
        assert_eq!(refused, wrong, "an expired key answers as a wrong password does");
        // As a resource server's key sees it (the expired key itself can no longer call).
        let rs = generate(&app, &json!({"scopes": ["keygate:introspect"]})).await;
        let body = introspect(&app, str_of(&rs, "api_key"), str_of(&rs, "password"), &token).await;
        assert_eq!(body, json!({"active": false}));
        // The sweep reports the expiry to the audit log, once.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let expired = audit_actions(&app).await.into_iter().filter(|(a, t)| a == "key.expired" && t == key_ref).count();
            if expired == 1 {
                break;
            }
            assert!(expired == 0 && Instant::now() < deadline, "{expired} expiry entries");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A new expiry in the future brings it back.
        let later = rfc3339(app.clock().now() as u64 + 600);
        assert_eq!(patch(&app, key_ref, &json!({"expires_at": later})).await.status(), StatusCode::OK);
        assert_eq!(app.api_login(api_key, password).await.status(), StatusCode::OK);
    }

    async fn a_rolled_key_keeps_its_old_password_for_the_grace_period_only(builder: Builder) {
        let app = builder.manual_clock().spawn().await;
        app.admin_login().await;
        let key = generate(&app, &json!({"scopes": ["a"]})).await;
        let (api_key, first, key_ref) = (str_of(&key, "api_key"), str_of(&key, "password"), str_of(&key, "api_key_ref"));
        let ok = |password: String| {
            let app = &app;
            async move { app.api_login(api_key, &password).await.status() == StatusCode::OK }
        };

        let r = roll(&app, key_ref, Some(&json!({"grace_seconds": 600}))).await;
        assert_eq!(r.status(), StatusCode::OK);
        let rolled: Value = r.json().await.unwrap();
        let mut fields: Vec<_> = rolled.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(fields, ["api_key", "api_key_ref", "old_password_expires_at", "password"]);
        assert_eq!((str_of(&rolled, "api_key"), str_of(&rolled, "api_key_ref")), (api_key, key_ref));
        assert_eq!(rolled["old_password_expires_at"], rfc3339(app.clock().now() as u64 + 600).as_str());
        let second = str_of(&rolled, "password").to_owned();
        assert!(ok(first.into()).await && ok(second.clone()).await, "both work during the grace period");
        app.clock().advance(Duration::from_secs(599));
        assert!(ok(first.into()).await);
        app.clock().advance(Duration::from_secs(1));
        assert!(!ok(first.into()).await, "the old password after its grace period");
        assert!(ok(second.clone()).await);

        // A roll during a grace period ends the older password at once: two at most.
        let third: Value = roll(&app, key_ref, None).await.json().await.unwrap();
        assert_eq!(third["old_password_expires_at"], rfc3339(app.clock().now() as u64 + 86_400).as_str(), "a day by default");
        let fourth: Value = roll(&app, key_ref, None).await.json().await.unwrap();
        assert!(!ok(second).await);
        assert!(ok(str_of(&third, "password").into()).await && ok(str_of(&fourth, "password").into()).await);
        let fifth: Value = roll(&app, key_ref, Some(&json!({"grace_seconds": 0}))).await.json().await.unwrap();
        assert_eq!(fifth["old_password_expires_at"], Value::Null);
        assert!(!ok(str_of(&fourth, "password").into()).await && ok(str_of(&fifth, "password").into()).await);
        let rolls = audit_actions(&app).await.into_iter().filter(|(a, t)| a == "key.rolled" && t == key_ref).count();
        assert_eq!(rolls, 4);
        // The key is the same key: same ref, same scopes.
        let token = app.token(api_key, str_of(&fifth, "password")).await;
        assert_eq!(segment(&token, 1)["sub"], key_ref);
        assert_eq!(segment(&token, 1)["scope"], "a");
    }

    async fn tokens_follow_rfc_9068_and_scopes_narrow_but_never_widen(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let key = generate(&app, &json!({"scopes": ["orders:read", "orders:write"]})).await;
        let (api_key, password) = (str_of(&key, "api_key"), str_of(&key, "password"));
        let token = app.token(api_key, password).await;
        let header = segment(&token, 0);
        assert_eq!(header["typ"], "at+jwt");
        let claims = segment(&token, 1);
        for claim in ["iss", "sub", "aud", "exp", "iat", "jti"] {
            assert!(!claims[claim].is_null(), "{claim}");
        }
        assert_eq!(claims["client_id"], api_key);
        assert_eq!(claims["scope"], "orders:read orders:write");

        let r = client_token(&app, api_key, password, Some("orders:read")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["scope"], "orders:read");
        let narrowed = str_of(&body, "access_token").to_owned();
        assert_eq!(segment(&narrowed, 1)["scope"], "orders:read");
        for widening in ["orders:read admin", "admin", "\"bad\""] {
            let r = client_token(&app, api_key, password, Some(widening)).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{widening}");
            assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
        }
        let all: Value = client_token(&app, api_key, password, None).await.json().await.unwrap();
        assert_eq!(all["scope"], "orders:read orders:write");

        let body = introspect(&app, api_key, password, &narrowed).await;
        assert_eq!((&body["active"], &body["scope"], &body["client_id"], &body["token_type"]), (&json!(true), &json!("orders:read"), &json!(api_key), &json!("Bearer")));

        // A key without scopes: no scope claim, and asking for one is refused.
        let (bare_key, bare_password) = app.generate_key().await;
        let bare = app.token(&bare_key, &bare_password).await;
        assert!(segment(&bare, 1).get("scope").is_none());
        let r = client_token(&app, &bare_key, &bare_password, Some("orders:read")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    async fn the_gateway_requires_scopes_per_route_and_answers_403_without_them(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let key = generate(&app, &json!({"scopes": ["orders:read", "orders:write"]})).await;
        let (api_key, password, key_ref) = (str_of(&key, "api_key"), str_of(&key, "password"), str_of(&key, "api_key_ref"));
        let token = app.token(api_key, password).await;

        let r = verify_scoped(&app, &token, "", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-auth-scopes"], "orders:read orders:write");
        for (query, header) in [
            ("?scope=orders:read", None),
            ("?scope=orders:read%20orders:write", None),
            ("", Some("orders:write")),
            ("/api/v1/orders?scope=orders:read", Some("orders:write")),
        ] {
            assert_eq!(verify_scoped(&app, &token, query, header).await.status(), StatusCode::OK, "{query} {header:?}");
        }
        for (query, header, missing) in [
            ("?scope=admin", None, "admin"),
            ("?scope=orders:read%20admin", None, "orders:read admin"),
            ("", Some("orders:read refunds"), "orders:read refunds"),
        ] {
            let r = verify_scoped(&app, &token, query, header).await;
            let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert_eq!(challenge, format!("Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"{missing}\""));
            assert_problem(r, StatusCode::FORBIDDEN).await;
        }
        // A bad token is a 401 whatever the route asks.
        assert_eq!(verify_scoped(&app, "nope", "?scope=admin", None).await.status(), StatusCode::UNAUTHORIZED);
        assert_problem(verify_scoped(&app, &token, "?scope=%22", None).await, StatusCode::BAD_REQUEST).await;

        // A scope taken from the key leaves its live tokens too.
        assert_eq!(patch(&app, key_ref, &json!({"scopes": ["orders:read"]})).await.status(), StatusCode::OK);
        let r = verify_scoped(&app, &token, "", None).await;
        assert_eq!(r.headers()["x-auth-scopes"], "orders:read");
        assert_eq!(verify_scoped(&app, &token, "?scope=orders:write", None).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(introspect(&app, api_key, password, &token).await["scope"], "orders:read");
    }
}

/// `last_used_at` after a burst of logins: shown at once by the server that saw them, not
/// written per login, and in the store after a clean stop.
#[tokio::test]
async fn last_use_is_batched_and_written_on_shutdown() {
    for builder in [Some(Builder::sqlite()), Builder::postgres().await].into_iter().flatten() {
        let mut app = builder.process().spawn().await;
        app.admin_login().await;
        let key = generate(&app, &json!({"name": "used"})).await;
        let (api_key, password, key_ref) =
            (str_of(&key, "api_key"), str_of(&key, "password"), str_of(&key, "api_key_ref"));
        let url = app.database_url();
        let stored = || async {
            let store = keygate::store::open_existing(&url).await.unwrap();
            let account =
                store.find_key(&keygate::domain::ApiKeyId::parse(api_key).unwrap()).await.unwrap().unwrap().account_id;
            let keys = store.list_keys_page(account, None, None, 10).await.unwrap().unwrap();
            keys.iter().find(|k| k.key_ref.to_string() == key_ref).unwrap().last_used_at
        };
        let before = now() as i64;
        for _ in 0..100 {
            assert_eq!(app.api_login(api_key, password).await.status(), StatusCode::OK);
        }
        assert_eq!(client_token(&app, api_key, password, None).await.status(), StatusCode::OK);
        assert_eq!(stored().await, None, "a login wrote to the store");
        let shown: Value = get_key(&app, key_ref).await.json().await.unwrap();
        let shown =
            time::OffsetDateTime::parse(str_of(&shown, "last_used_at"), &time::format_description::well_known::Rfc3339)
                .unwrap()
                .unix_timestamp();
        assert!((before..=now() as i64).contains(&shown), "{shown} not within the burst");
        assert!(app.terminate().await.success());
        assert_eq!(stored().await, Some(shown), "the batch was not written on shutdown");
    }
}

/// Disabling on one replica stops the key's logins and tokens on the other within a second;
/// enabling brings both back as quickly.
#[tokio::test]
async fn disable_and_enable_reach_another_replica_within_a_second() {
    let Some(builder) = Builder::postgres().await else { return };
    let a = builder.spawn().await;
    let b = a.replica().spawn().await;
    let (api_key, password, key_ref, token) = a.cached_key_on(&b).await;
    assert_eq!(b.api_login(&api_key, &password).await.status(), StatusCode::OK);
    let rs = generate(&a, &json!({"scopes": ["keygate:introspect"]})).await;
    let (rs_key, rs_password) = (str_of(&rs, "api_key"), str_of(&rs, "password"));
    assert_eq!(introspect(&b, rs_key, rs_password, &token).await["active"], true);

    let since = Instant::now();
    assert_eq!(patch(&a, &key_ref, &json!({"enabled": false})).await.status(), StatusCode::OK);
    let refused = within(since, PROPAGATION_BOUND, || async {
        b.verify(&token).await.status() == StatusCode::UNAUTHORIZED
            && b.api_login(&api_key, &password).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "B still accepted the disabled key a second after A disabled it");
    assert_eq!(introspect(&b, rs_key, rs_password, &token).await, json!({"active": false}));

    let since = Instant::now();
    assert_eq!(patch(&a, &key_ref, &json!({"enabled": true})).await.status(), StatusCode::OK);
    let restored =
        within(since, PROPAGATION_BOUND, || async { b.verify(&token).await.status() == StatusCode::OK }).await;
    assert!(restored, "B still refused the re-enabled key's token a second later");
    assert_eq!(introspect(&b, rs_key, rs_password, &token).await["active"], true);
    assert_eq!(b.api_login(&api_key, &password).await.status(), StatusCode::OK);
}
