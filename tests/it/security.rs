//! Abuse resistance: each test performs an attack and checks the defence that answers it.

use crate::common::*;
use reqwest::{Client, StatusCode, header::HeaderValue};
use serde_json::{Value, json};

/// A well-formed API key that no store holds.
fn unknown_key(i: usize) -> String {
    format!("{:0>20}", format!("ZZ{i}"))
}

backends! {
// --- Brute force -------------------------------------------------------------------------

async fn admin_lockout_refuses_even_the_right_password_and_spares_others(builder: Builder) {
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "3").spawn().await;
    let other = app.new_admin("other@example.com", "other").await;

    for _ in 0..2 {
        assert_problem(app.try_admin_login(ADMIN_EMAIL, "wrong password guess").await, StatusCode::UNAUTHORIZED).await;
    }
    // The failure that reaches the threshold is answered with the lock.
    let r = app.try_admin_login(ADMIN_EMAIL, "wrong password guess").await;
    assert!(retry_after(&r) >= 1);
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    // Locked: the right password gets the same 429 as a wrong one, so a guess made during
    // the lock cannot be confirmed.
    let right = app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let wrong = app.try_admin_login(ADMIN_EMAIL, "another wrong guess").await;
    let retry = retry_after(&right);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(retry_after(&wrong), retry);
    let right = assert_problem(right, StatusCode::TOO_MANY_REQUESTS).await;
    let wrong = assert_problem(wrong, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(right, wrong);
    // The email is matched case-insensitively, like logins are.
    assert_problem(app.try_admin_login("ADMIN@example.com", ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS)
        .await;

    // Another admin, from the same address, is not affected.
    assert_eq!(app.try_admin_login("other@example.com", ADMIN_PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(other.get(app.url("/auth/keys/list")).send().await.unwrap().status(), StatusCode::OK);

    // The counter is in the store: a second replica and a restarted server both see it.
    let replica = app.sibling().spawn().await;
    assert_problem(replica.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS).await;
    drop(replica);
    let app = app.restart().await;
    assert_problem(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS).await;
}

async fn api_key_lockout_spares_other_keys(builder: Builder) {
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "3").spawn().await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    let (other_key, other_password) = app.generate_key().await;
    let (_, wrong) = app.generate_key().await; // well-formed, but another key's password

    for _ in 0..2 {
        assert_problem(app.api_login(&key, &wrong).await, StatusCode::UNAUTHORIZED).await;
    }
    assert_problem(app.api_login(&key, &wrong).await, StatusCode::TOO_MANY_REQUESTS).await;
    let r = app.api_login(&key, &password).await;
    assert!(retry_after(&r) >= 1);
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    // Also under the `username` spelling of the same key.
    let r = app.post_json("/auth/login", &json!({"username": key, "password": password})).await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS).await;

    assert_eq!(app.api_login(&other_key, &other_password).await.status(), StatusCode::OK);
}

// Guessing a client secret through the OAuth endpoints is guessing the API password: the
// failures count towards the same per-key lock, whichever endpoint they went to.
async fn oauth_client_secret_guesses_lock_the_key(builder: Builder) {
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "3").spawn().await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    let (_, wrong) = app.generate_key().await;
    let token: String = app.api_login(&key, &password).await.json().await.unwrap();
    let c = Client::new();
    let call = |path: &'static str, secret: String| {
        let mut form = vec![("client_id", key.clone()), ("client_secret", secret)];
        match path {
            "/oauth/token" => form.push(("grant_type", "client_credentials".into())),
            _ => form.push(("token", token.clone())),
        }
        c.post(app.url(path)).form(&form).send()
    };

    assert_eq!(call("/oauth/introspect", wrong.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(call("/oauth/revoke", wrong.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The third wrong guess, at a third endpoint, reaches the threshold.
    let r = call("/oauth/token", wrong.clone()).await.unwrap();
    assert!(retry_after(&r) >= 1);
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    // Locked: the right secret is refused on every endpoint, and on /auth/login.
    for path in ["/oauth/token", "/oauth/introspect", "/oauth/revoke"] {
        assert_problem(call(path, password.clone()).await.unwrap(), StatusCode::TOO_MANY_REQUESTS).await;
    }
    assert_problem(app.api_login(&key, &password).await, StatusCode::TOO_MANY_REQUESTS).await;
    // The token was never revoked by a locked-out caller.
    assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
    let page: Value = app.client.get(app.url("/auth/audit")).send().await.unwrap().json().await.unwrap();
    let lockouts: Vec<&Value> = page["events"].as_array().unwrap().iter().filter(|e| e["action"] == "lockout").collect();
    assert_eq!(lockouts.len(), 1, "{page}");
    assert_eq!(lockouts[0]["target"], format!("key:{key}"));
}

async fn back_off_grows_with_each_lock_and_success_resets_it(builder: Builder) {
    let app = builder
        .env("KEYGATE_LOCKOUT_THRESHOLD", "2")
        .env("KEYGATE_LOCKOUT_DURATION", "2")
        .manual_clock()
        .spawn()
        .await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    let (_, wrong) = app.generate_key().await;

    let mut lock_durations = Vec::new();
    for lock in 0..2 {
        // The first lock takes `threshold` failures; once it has ended, a single failure
        // locks again. The failure that locks is answered with the lock's full duration.
        if lock == 0 {
            assert_problem(app.api_login(&key, &wrong).await, StatusCode::UNAUTHORIZED).await;
        }
        let r = app.api_login(&key, &wrong).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry = retry_after(&r);
        lock_durations.push(retry);
        // While locked, even the right password is refused.
        assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::TOO_MANY_REQUESTS);
        // The lock holds until its last second, and not past it.
        app.clock().advance(std::time::Duration::from_secs(retry - 1));
        assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::TOO_MANY_REQUESTS);
        app.clock().advance(std::time::Duration::from_secs(1));
    }
    // Each lock twice the last (the doubling up to its cap is unit-tested in the policy).
    assert_eq!(lock_durations, [2, 4]);

    // After the lock the right password works, and clears the count: two more failures are
    // needed to lock again, not one.
    assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::OK);
    assert_problem(app.api_login(&key, &wrong).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::OK);
}

async fn address_lockout_spans_identities_and_forwarded_for_needs_a_trusted_proxy(builder: Builder) {
    // Without a trusted proxy, X-Forwarded-For is ignored: rotating it does not give an
    // attacker fresh counters.
    let app = builder.env("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", "4").spawn().await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    for i in 0..4 {
        let expected = if i < 3 { StatusCode::UNAUTHORIZED } else { StatusCode::TOO_MANY_REQUESTS };
        let r = Client::new()
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .json(&json!({"api_key": unknown_key(i), "password": password}))
            .send()
            .await
            .unwrap();
        assert_problem(r, expected).await;
    }
    // The address is locked for every identity, including a valid key and an admin.
    assert_problem(app.api_login(&key, &password).await, StatusCode::TOO_MANY_REQUESTS).await;
    assert_problem(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS).await;
}

async fn forwarded_for_from_a_trusted_proxy_names_the_client(builder: Builder) {
    let app = builder
        .env("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", "3")
        .env("KEYGATE_TRUSTED_PROXIES", "127.0.0.0/8, ::1")
        .spawn()
        .await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    let login_from = |client_ip: &'static str, api_key: String| {
        let url = app.url("/auth/login");
        let password = password.clone();
        async move {
            Client::new()
                .post(url)
                // A client-written entry first: the proxy appends the real peer after it.
                .header("x-forwarded-for", format!("10.9.9.9, {client_ip}"))
                .json(&json!({"api_key": api_key, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..2 {
        assert_problem(login_from("198.51.100.7", unknown_key(i)).await, StatusCode::UNAUTHORIZED).await;
    }
    assert_problem(login_from("198.51.100.7", unknown_key(2)).await, StatusCode::TOO_MANY_REQUESTS).await;
    assert_problem(login_from("198.51.100.7", key.clone()).await, StatusCode::TOO_MANY_REQUESTS).await;
    // Another client behind the same proxy is not locked, and neither is the proxy itself.
    assert_eq!(login_from("198.51.100.8", key.clone()).await.status(), StatusCode::OK);
    assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::OK);
}

async fn forwarded_for_that_is_not_text_still_names_the_client(builder: Builder) {
    let app = builder
        .env("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", "3")
        .env("KEYGATE_TRUSTED_PROXIES", "127.0.0.1/32")
        .spawn()
        .await;
    let login_with = |lines: &[&'static [u8]], password: &'static str| {
        let mut request = Client::new()
            .post(app.url("/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": password}));
        // Each its own header line; together one list (RFC 9110 §5.3).
        for line in lines {
            request = request.header("x-forwarded-for", HeaderValue::from_bytes(line).unwrap());
        }
        async move { request.send().await.unwrap() }
    };
    // The client writes bytes that are not text (not UTF-8, obs-text) in front of the
    // address the proxy appends, in the same line or one of their own.
    let attacks: [&[&'static [u8]]; 3] =
        [&[b"\xff\xfe, 203.0.113.9"], &[b"\xc3\x28", b"203.0.113.9"], &[b"\x80\x81, 198.51.100.1, 203.0.113.9"]];
    for (i, lines) in attacks.iter().enumerate() {
        let expected = if i < 2 { StatusCode::UNAUTHORIZED } else { StatusCode::TOO_MANY_REQUESTS };
        assert_problem(login_with(lines, "wrong password guess").await, expected).await;
    }
    // Counted under the client's own address: locked, even with the right password ...
    assert_problem(login_with(&[b"203.0.113.9"], ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS).await;
    // ... and not under the proxy's, nor another client's behind it.
    assert_eq!(login_with(&[b"198.51.100.1"], ADMIN_PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await.status(), StatusCode::OK);

    // Audited under the client's address too.
    let out = app.cli(&["audit", "--json", "--limit", "100"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let failed: Vec<&Value> = events.iter().filter(|e| e["action"] == "admin.login_failed").collect();
    assert_eq!(failed.len(), 3, "{events:?}");
    assert!(failed.iter().all(|e| e["source"] == "203.0.113.9"), "{failed:?}");
    let locks: Vec<&Value> = events.iter().filter(|e| e["action"] == "lockout").collect();
    assert_eq!(locks.len(), 1, "{events:?}");
    assert_eq!(locks[0]["target"], "addr:203.0.113.9");
    assert_eq!(locks[0]["source"], "203.0.113.9");
    assert!(!events.iter().any(|e| e["target"] == "addr:127.0.0.1"), "{events:?}");
}

async fn a_proxy_naming_no_address_does_not_lock_itself(builder: Builder) {
    let app = builder
        .env("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", "3")
        .env("KEYGATE_TRUSTED_PROXIES", "127.0.0.1/32")
        .spawn()
        .await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    let login_with = |forwarded: &'static [u8], api_key: String| {
        let request = Client::new()
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", HeaderValue::from_bytes(forwarded).unwrap())
            .json(&json!({"api_key": api_key, "password": password}));
        async move { request.send().await.unwrap() }
    };
    // A trusted proxy that writes something other than an address where the client's
    // belongs: the failures go to a stand-in for what it wrote, locked like an address.
    for i in 0..2 {
        assert_problem(login_with(b"unknown", unknown_key(i)).await, StatusCode::UNAUTHORIZED).await;
    }
    assert_problem(login_with(b"unknown", unknown_key(2)).await, StatusCode::TOO_MANY_REQUESTS).await;
    assert_problem(login_with(b"unknown", key.clone()).await, StatusCode::TOO_MANY_REQUESTS).await;
    // The proxy itself, and the clients it names, are not locked by them.
    assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::OK);
    assert_eq!(login_with(b"203.0.113.9", key.clone()).await.status(), StatusCode::OK);
    assert_eq!(login_with(b"\xff", key.clone()).await.status(), StatusCode::OK);
}

async fn unknown_identities_lock_exactly_like_known_ones(builder: Builder) {
    // If only real accounts could be locked, the lockout itself would tell which exist.
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "2").spawn().await;
    let mut bodies = Vec::new();
    for email in [ADMIN_EMAIL, "nobody@example.com"] {
        assert_problem(app.try_admin_login(email, "wrong password guess").await, StatusCode::UNAUTHORIZED).await;
        let r = app.try_admin_login(email, "wrong password guess").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        bodies.push((retry_after(&r), r.json::<Value>().await.unwrap()));
    }
    assert_eq!(bodies[0], bodies[1]);
}

// --- No enumeration ------------------------------------------------------------------------

async fn unknown_email_and_wrong_password_answer_alike(builder: Builder) {
    let app = builder.spawn().await;
    let wrong = app.try_admin_login(ADMIN_EMAIL, "not the password").await;
    let unknown = app.try_admin_login("nobody@example.com", "not the password").await;
    let malformed = app.try_admin_login("not an email", "not the password").await;
    assert_same_answer(vec![wrong, unknown, malformed]).await;
}

async fn unknown_key_and_wrong_password_answer_alike(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (key, _) = app.generate_key().await;
    let (_, other_password) = app.generate_key().await;
    let wrong = app.api_login(&key, &other_password).await;
    let unknown = app.api_login(&unknown_key(1), &other_password).await;
    let garbage = app.api_login("not-a-key", "not-a-password").await;
    assert_same_answer(vec![wrong, unknown, garbage]).await;
}

// --- Cross-site requests -----------------------------------------------------------------

async fn cross_site_cookie_calls_are_refused(builder: Builder) {
    let app = builder.spawn().await;
    let (cookie, _) = app.admin_session_cookie().await;
    let client = Client::new();
    let own_origin = app.base.clone();
    let generate = |headers: Vec<(&'static str, String)>| {
        let mut rb = client.post(app.url("/auth/keys/generate")).header("cookie", &cookie);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        rb.send()
    };

    let attacks: Vec<Vec<(&'static str, String)>> = vec![
        vec![("origin", "https://evil.example".into())],
        vec![("origin", "null".into())],
        vec![("sec-fetch-site", "cross-site".into())],
        vec![("sec-fetch-site", "same-site".into()), ("origin", "http://sibling.127.0.0.1.nip.io".into())],
        // A forged-looking Origin that merely contains ours.
        vec![("origin", format!("{own_origin}.evil.example"))],
        // The right Origin cannot launder a browser's own cross-site verdict.
        vec![("origin", own_origin.clone()), ("sec-fetch-site", "cross-site".into())],
    ];
    for headers in attacks {
        let r = generate(headers.clone()).await.unwrap();
        let body = assert_problem(r, StatusCode::FORBIDDEN).await;
        assert!(body["detail"].as_str().unwrap().contains("cross-site"), "{headers:?}: {body}");
    }

    // Same-origin browser calls and plain clients work.
    let r = generate(vec![("origin", own_origin.clone()), ("sec-fetch-site", "same-origin".into())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(generate(vec![]).await.unwrap().status(), StatusCode::OK);

    // Delete and logout are guarded the same way; a refused call changed nothing.
    let keys = client.get(app.url("/auth/keys/list")).header("cookie", &cookie).send().await.unwrap();
    let keys: Vec<Value> = keys.json().await.unwrap();
    assert_eq!(keys.len(), 2);
    let key_ref = keys[0]["api_key_ref"].as_str().unwrap();
    let r = client
        .delete(app.url(&format!("/auth/user/{key_ref}")))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN).await;
    let r = client
        .post(app.url("/auth/logout"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN).await;
    let keys = client.get(app.url("/auth/keys/list")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(keys.status(), StatusCode::OK, "a refused logout must not end the session");
    assert_eq!(keys.json::<Vec<Value>>().await.unwrap().len(), 2, "a refused delete must not delete");

    // Reading is not a change: a cross-site GET is not refused (SameSite keeps the cookie
    // off it in a browser, and without CORS the page cannot read the answer).
    let r = client
        .get(app.url("/auth/keys/list"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = client.post(app.url("/auth/logout")).header("cookie", &cookie).header("origin", own_origin).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::NO_CONTENT);
}

async fn a_configured_public_origin_is_the_only_same_origin(builder: Builder) {
    let app = builder.env("KEYGATE_PUBLIC_ORIGIN", "https://auth.example.com").spawn().await;
    let (cookie, _) = app.admin_session_cookie().await;
    let post = |origin: String| {
        Client::new().post(app.url("/auth/keys/generate")).header("cookie", &cookie).header("origin", origin).send()
    };
    assert_eq!(post("https://auth.example.com".into()).await.unwrap().status(), StatusCode::OK);
    // Behind a proxy the Host header says little; with a public origin it is not trusted.
    assert_problem(post(app.base.clone()).await.unwrap(), StatusCode::FORBIDDEN).await;
    assert_problem(post("http://auth.example.com".into()).await.unwrap(), StatusCode::FORBIDDEN).await;
}

// --- Response headers ----------------------------------------------------------------------

async fn security_headers_on_every_response_with_a_body(builder: Builder) {
    let app = builder.spawn().await;
    let (cookie, _) = app.admin_session_cookie().await;
    let c = Client::new();
    let (key, password) = app.generate_key_with(&cookie_client(&cookie)).await;
    let (key, password) = (key.as_str(), password.as_str());

    let mut responses = vec![
        ("api login", app.api_login(key, password).await),
        ("admin login", app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await),
        ("failed login", app.api_login(key, "kgp_wrong").await),
        ("generate", c.post(app.url("/auth/keys/generate")).header("cookie", &cookie).send().await.unwrap()),
        ("list", c.get(app.url("/auth/keys/list")).header("cookie", &cookie).send().await.unwrap()),
        ("audit", c.get(app.url("/auth/audit")).header("cookie", &cookie).send().await.unwrap()),
        ("no session", c.get(app.url("/auth/keys/list")).send().await.unwrap()),
        ("csrf", c.post(app.url("/auth/logout")).header("cookie", &cookie).header("origin", "https://x.io").send().await.unwrap()),
        ("not found", c.get(app.url("/nope")).header("accept", "text/html").send().await.unwrap()),
        ("wrong method", c.get(app.url("/auth/login")).send().await.unwrap()),
        ("bad json", c.post(app.url("/auth/login")).header("content-type", "application/json").body("{").send().await.unwrap()),
        ("not json", c.post(app.url("/auth/login")).body("x").send().await.unwrap()),
        ("too large", c.post(app.url("/auth/login")).json(&"x".repeat(70_000)).send().await.unwrap()),
        ("healthz", c.get(app.url("/healthz")).send().await.unwrap()),
        ("openapi", c.get(app.url("/openapi.json")).send().await.unwrap()),
        ("logout", c.post(app.url("/auth/logout")).header("cookie", &cookie).send().await.unwrap()),
    ];
    let token: String = app.api_login(key, password).await.json().await.unwrap();
    let verify = |auth: String| c.get(app.url("/auth/verify")).header("authorization", auth).send();
    responses.push(("verify", verify(format!("Bearer {token}")).await.unwrap()));
    responses.push(("verify refused", verify("Bearer x.y.z".into()).await.unwrap()));
    assert_eq!(responses[responses.len() - 2].1.status(), StatusCode::OK);
    responses.push(("jwks", c.get(app.url("/.well-known/jwks.json")).send().await.unwrap()));
    let mut ids = std::collections::HashSet::new();
    for (name, r) in &responses {
        let h = r.headers();
        let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        // Each response names its request, for correlating logs; no two alike.
        assert!(ids.insert(get("x-request-id")), "{name}: request id missing or repeated");
        // A success with no body holds nothing a browser could render, frame or sniff: the
        // forward-auth 200 that gateways ask for per API request, and a logout.
        if ["verify", "logout"].contains(name) {
            // (A 204 has no Content-Length at all.)
            assert!(r.status().is_success() && ["0", ""].contains(&get("content-length").as_str()), "{name}");
            for header in ["x-content-type-options", "referrer-policy", "x-frame-options", "content-security-policy"] {
                assert!(!h.contains_key(header), "{name}: {header}");
            }
        } else {
            assert_eq!(get("x-content-type-options"), "nosniff", "{name}");
            assert_eq!(get("referrer-policy"), "no-referrer", "{name}");
            assert_eq!(get("x-frame-options"), "DENY", "{name}");
            let csp = get("content-security-policy");
            for directive in ["default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"] {
                assert!(csp.contains(directive), "{name}: CSP {csp:?} lacks {directive}");
            }
        }
        // Everything that carries or answers about credentials is never stored by a cache;
        // only the public key set may be cached.
        if *name == "jwks" {
            assert!(get("cache-control").starts_with("public"), "{name}");
        } else {
            assert_eq!(get("cache-control"), "no-store", "{name}");
        }
    }

    // A gateway's own request id is kept, so its logs and ours line up; one too long to be
    // an id is replaced rather than echoed.
    let with_id = |id: String| c.get(app.url("/healthz")).header("x-request-id", id).send();
    let kept = with_id("gw-7f3a".into()).await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "gw-7f3a");
    let long = "a".repeat(500);
    let replaced = with_id(long.clone()).await.unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert!(!id.is_empty() && id != long);
}

// --- Audit log -----------------------------------------------------------------------------

async fn audit_log_records_who_did_what_and_pages_newest_first(builder: Builder) {
    let app = builder.spawn().await;
    assert_eq!(app.try_admin_login(ADMIN_EMAIL, "a wrong password").await.status(), StatusCode::UNAUTHORIZED);
    // People type passwords into the email field; that must not end up in the log.
    let typed_into_email = "my-secret-in-the-wrong-field";
    assert_eq!(app.try_admin_login(typed_into_email, ADMIN_PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    let (cookie, session_id) = app.admin_session_cookie().await;
    let c = Client::new();
    let mut secrets = vec![ADMIN_PASSWORD.to_owned(), "a wrong password".to_owned(), session_id, typed_into_email.into()];
    let admin = cookie_client(&cookie);
    for _ in 0..2 {
        let (key, password) = app.generate_key_with(&admin).await;
        secrets.push(app.token(&key, &password).await);
        secrets.push(password);
    }
    let keys = app.list_keys_with(&admin).await;
    let deleted = keys[0].0.as_str();
    let r = c.delete(app.url(&format!("/auth/user/{deleted}"))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let audit = |query: String| {
        let c = c.clone();
        let url = app.url(&format!("/auth/audit{query}"));
        let cookie = cookie.clone();
        async move { c.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    let r = audit(String::new()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    let events = page["events"].as_array().unwrap().clone();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    // Newest first. The failed login for a non-email belongs to no account, so it is not
    // in this account's log.
    assert_eq!(actions, ["key.deleted", "key.generated", "key.generated", "admin.login", "admin.login_failed"]);
    assert_eq!(page["next_before"], Value::Null);
    for e in &events {
        assert_eq!(e["source"], "127.0.0.1", "{e}");
        assert!(e["at"].as_i64().unwrap() > 1_600_000_000);
    }
    assert_eq!(events[0]["target"], deleted);
    assert!(events[0]["actor"].as_str().unwrap().starts_with("admin:"));
    assert_eq!(events[3]["target"], ADMIN_EMAIL);
    assert_eq!(events[4]["actor"], ADMIN_EMAIL);
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));

    // Paged two at a time, the same events in the same order.
    let mut paged = Vec::new();
    let mut before = String::new();
    loop {
        let page: Value = audit(format!("?limit=2{before}")).await.json().await.unwrap();
        paged.extend(page["events"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next_before"].as_i64() {
            Some(id) => before = format!("&before={id}"),
            None => break,
        }
    }
    assert_eq!(paged, ids);
    for bad in ["?limit=0", "?limit=201", "?limit=x", "?before=-1", "?before=abc"] {
        assert_problem(audit(bad.to_owned()).await, StatusCode::BAD_REQUEST).await;
    }

    // Logout is recorded too, and the log needs a session.
    assert_eq!(c.post(app.url("/auth/logout")).header("cookie", &cookie).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_problem(audit(String::new()).await, StatusCode::UNAUTHORIZED).await;

    // Another account sees only its own events.
    let other = app.new_admin("other@example.com", "other").await;
    let theirs: Value = other.get(app.url("/auth/audit")).send().await.unwrap().json().await.unwrap();
    let theirs: Vec<&str> = theirs["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(theirs, ["admin.login", "admin.created"]);

    // The CLI reads every account's events, including those that belong to none.
    let out = app.cli(&["audit", "--json", "--limit", "100"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let cli_actions: Vec<&str> = lines.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(cli_actions[..3], ["admin.login", "admin.created", "admin.logout"]);
    assert!(lines.iter().any(|e| e["actor"] == "(not an email)" && e["account_id"].is_null()));
    let out = app.cli(&["audit", "--account", "other"], "");
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);

    // Nothing secret anywhere in the log.
    let everything = String::from_utf8(app.cli(&["audit", "--json", "--limit", "10000"], "").stdout).unwrap();
    for secret in &secrets {
        assert!(!everything.contains(secret.as_str()), "a secret is in the audit log");
    }
}

async fn the_audit_cli_escapes_terminal_controls_an_attacker_wrote(builder: Builder) {
    // An unknown email in a failed login is audited as its actor, and email_address lets any
    // non-ASCII character into a local part: here CSI (U+009B, a terminal's `ESC [`, so
    // `CSI 2J` clears the screen) and RIGHT-TO-LEFT OVERRIDE, which shows `moc.live` as
    // `evil.com`. Neither may reach the operator's terminal as it is.
    let app = builder.spawn().await;
    let evil = "mallory\u{9b}2j\u{202e}moc.live@example.com";
    assert_problem(app.try_admin_login(evil, "wrong password guess").await, StatusCode::UNAUTHORIZED).await;
    let hostile = |c: char| c.is_control() && c != '\n' && c != '\t' || ('\u{202a}'..='\u{202e}').contains(&c);

    let out = app.cli(&["audit"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.chars().any(hostile), "{text:?}");
    let line = text.lines().find(|l| l.contains("admin.login_failed")).expect("the failed login is listed");
    assert_eq!(line.split('\t').nth(3), Some("mallory\\u{9b}2j\\u{202e}moc.live@example.com"), "{line:?}");

    let out = app.cli(&["audit", "--json"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(!json.chars().any(hostile), "{json:?}");
    let event: Value = json.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|e| e["action"] == "admin.login_failed").unwrap();
    assert_eq!(event["actor"], evil, "the JSON escapes still decode to what was recorded");
}

async fn lockouts_are_audited(builder: Builder) {
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "2").spawn().await;
    app.admin_login().await;
    let (key, _) = app.generate_key().await;
    let (_, wrong) = app.generate_key().await;
    for _ in 0..3 {
        app.api_login(&key, &wrong).await;
    }
    let page: Value = app.client.get(app.url("/auth/audit")).send().await.unwrap().json().await.unwrap();
    let lockouts: Vec<&Value> = page["events"].as_array().unwrap().iter().filter(|e| e["action"] == "lockout").collect();
    assert_eq!(lockouts.len(), 1, "{page}");
    assert_eq!(lockouts[0]["target"], format!("key:{key}"));
    assert_eq!(lockouts[0]["actor"], "keygate");
    assert_eq!(lockouts[0]["source"], "127.0.0.1");
}

// --- Nothing secret in logs ----------------------------------------------------------------

async fn nothing_secret_in_debug_logs(builder: Builder) {
    // The real process, whose log is its stderr.
    let mut app = builder.env("KEYGATE_LOG", "debug,keygate=trace").process().spawn().await;
    let c = Client::new();
    let wrong_admin_password = "an almost-right password";
    assert_eq!(app.try_admin_login(ADMIN_EMAIL, wrong_admin_password).await.status(), StatusCode::UNAUTHORIZED);
    let (cookie, session_id) = app.admin_session_cookie().await;
    let admin = cookie_client(&cookie);
    let (key, password) = app.generate_key_with(&admin).await;
    let token = app.token(&key, &password).await;
    let r = c
        .post(app.url("/auth/login"))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"username": key, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Well-formed (prefix, length, checksum), so it is not refused by the parser but goes
    // all the way to the keyed hash and the constant-time comparison.
    let wrong_api_password = keygate::domain::ApiPassword::generate().expose().to_owned();
    assert_eq!(wrong_api_password.len(), password.len());
    assert_eq!(app.api_login(&key, &wrong_api_password).await.status(), StatusCode::UNAUTHORIZED);
    let keys = app.list_keys_with(&admin).await;
    let key_ref = &keys[0].0;
    c.delete(app.url(&format!("/auth/user/{key_ref}"))).header("cookie", &cookie).send().await.unwrap();
    c.post(app.url("/auth/logout")).header("cookie", &cookie).send().await.unwrap();
    // Stopped, so that every line it wrote has been read.
    assert!(app.terminate().await.success());

    let logs = app.logs();
    assert!(logs.contains("DEBUG") || logs.contains("TRACE"), "the test must actually run at debug level");
    assert!(logs.contains("admin login"), "the flow must actually be logged");
    let signature = token.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("admin password", ADMIN_PASSWORD),
        ("wrong admin password", wrong_admin_password),
        ("API password", password.as_str()),
        ("wrong API password", wrong_api_password.as_str()),
        ("session id", session_id.as_str()),
        ("token", token.as_str()),
        ("token signature", signature),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the log");
    }
}
}

/// Asserts that responses are indistinguishable: status, body and headers, except the
/// per-request id and date.
async fn assert_same_answer(responses: Vec<reqwest::Response>) {
    let mut seen = Vec::new();
    for r in responses {
        let status = r.status();
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "date"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let body = r.bytes().await.unwrap();
        seen.push((status, headers, body));
    }
    assert_eq!(seen[0].0, StatusCode::UNAUTHORIZED);
    for other in &seen[1..] {
        assert_eq!(other, &seen[0]);
    }
}
