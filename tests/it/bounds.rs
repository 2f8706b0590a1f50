//! The lockout against bursts: many guesses sent at once, on one server or across two
//! replicas, get no more secrets checked than the threshold allows, and the right password
//! sent inside the burst is refused once the lock holds.

use std::time::Duration;

use crate::common::*;
use futures_util::future::join_all;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// `SELECT count(*) FROM <from_where>` in the app's store, whichever backend it is.
async fn count_rows(app: &TestApp, from_where: &str) -> i64 {
    let url = app.database_url();
    let sql = format!("SELECT count(*) FROM {from_where}");
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap()
    }
}

/// The account's audit entries with `action`, read through `auditor`'s session.
async fn audited(app: &TestApp, auditor: &Client, action: &str) -> Vec<Value> {
    let page: Value = auditor.get(app.url("/auth/audit?limit=200")).send().await.unwrap().json().await.unwrap();
    page["events"].as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
}

/// `n` clients with a connection each already open, so that their requests leave together.
async fn connected_clients(app: &TestApp, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = Client::builder().pool_max_idle_per_host(1).build().unwrap();
        assert_eq!(client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
        clients.push(client);
    }
    clients
}

/// The burst: `wrong` wrong guesses for the bootstrap admin at once, spread over `servers`,
/// then, once the lock holds (`auditor` sees it audited) and while the guesses may still be
/// answered, the right password. Returns the statuses of the wrong guesses and the right
/// password's response.
async fn admin_burst(servers: &[&TestApp], auditor: &Client, wrong: usize) -> (Vec<StatusCode>, reqwest::Response) {
    let clients = connected_clients(servers[0], wrong + 1).await;
    let mut guesses = Vec::new();
    for (i, client) in clients.iter().take(wrong).enumerate() {
        let url = servers[i % servers.len()].url("/auth/login");
        let body = json!({"email": ADMIN_EMAIL, "password": format!("wrong guess number {i}")});
        guesses.push(client.post(url).json(&body).send());
    }
    let guesses =
        tokio::spawn(
            async move { join_all(guesses).await.into_iter().map(|r| r.unwrap().status()).collect::<Vec<_>>() },
        );
    // Not before the lock: the right password let in ahead of the guesses would rightly clear
    // their count, and on a loaded machine the guesses may reach the server after it.
    let started = std::time::Instant::now();
    while audited(servers[0], auditor, "lockout").await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "the burst never locked the admin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let right = clients[wrong]
        .post(servers[servers.len() - 1].url("/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    (guesses.await.unwrap(), right)
}

fn check_admin_burst(statuses: &[StatusCode], right: &reqwest::Response, failed_checks: usize) {
    // At most the threshold of guesses had their password checked (each checked wrong
    // guess is audited); the rest were refused unchecked, with 429.
    assert!(failed_checks <= 5, "{failed_checks} wrong passwords checked; threshold 5");
    assert!(failed_checks >= 1, "the burst reached the password check");
    let checked = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert!(checked <= 5, "{checked} answered 401");
    assert!(statuses.iter().all(|s| matches!(*s, StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS)));
    // And the right password, inside the burst, got no session.
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(right.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn a_burst_of_admin_guesses_gets_at_most_the_threshold_checked() {
    let app = TestApp::builder().env("KEYGATE_LOCKOUT_THRESHOLD", "5").spawn().await;
    let auditor = app.new_admin("auditor@example.com", "default").await;
    let (statuses, right) = admin_burst(&[&app], &auditor, 65).await;
    let failed = audited(&app, &auditor, "admin.login_failed").await;
    check_admin_burst(&statuses, &right, failed.len());
    assert_eq!(audited(&app, &auditor, "lockout").await.len(), 1);
    // The lock holds afterwards too.
    assert_eq!(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_burst_across_two_replicas_gets_at_most_the_threshold_checked() {
    let Some(builder) = Builder::postgres().await else { return };
    let a = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "5").spawn().await;
    let b = a.replica().spawn().await;
    let auditor = a.new_admin("auditor@example.com", "default").await;
    let (statuses, right) = admin_burst(&[&a, &b], &auditor, 129).await;
    let failed = audited(&a, &auditor, "admin.login_failed").await;
    check_admin_burst(&statuses, &right, failed.len());
    // Exactly one replica audited the lock.
    assert_eq!(audited(&a, &auditor, "lockout").await.len(), 1);
    for app in [&a, &b] {
        assert_eq!(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}

backends! {
async fn one_address_cannot_lock_more_keys_than_its_own_limit_allows(builder: Builder) {
    // Behind a trusted proxy, so the test can be the attacker and its victims at once.
    let app = builder
        .env("KEYGATE_TRUSTED_PROXIES", "127.0.0.1/32")
        .env("KEYGATE_LOCKOUT_THRESHOLD", "5")
        .env("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", "50")
        .spawn()
        .await;
    app.admin_login().await;
    let mut keys = Vec::new();
    for _ in 0..100 {
        keys.push(app.generate_key().await);
    }
    let (_, wrong) = app.generate_key().await;

    // 500 wrong logins at once from one address: 5 for each of 100 keys.
    let clients = connected_clients(&app, 100).await;
    let mut guesses = Vec::new();
    for _ in 0..5 {
        for (i, (key, _)) in keys.iter().enumerate() {
            let client = clients[i].clone();
            let url = app.url("/auth/login");
            let body = json!({"api_key": key, "password": wrong});
            guesses.push(async move {
                client.post(url).header("x-forwarded-for", "203.0.113.66").json(&body).send().await.unwrap().status()
            });
        }
    }
    let statuses = join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert!(checked <= 50, "{checked} wrong passwords answered 401 from one address limited to 50");

    // From another address, how many of the keys still log in: all but those the
    // attacker's at most 50 checked guesses could lock (5 each).
    let mut locked = 0;
    for (key, password) in &keys {
        let r = Client::new()
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", "198.51.100.7")
            .json(&json!({"api_key": key, "password": password}))
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => locked += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(locked <= 10, "{locked} keys locked by one address");
}

async fn many_logins_at_once_with_one_key_are_all_served(builder: Builder) {
    // A client with many workers sharing one key: far more at once than the lockout lets
    // be checked at once. They wait for their turn; none is refused. Each may wait 5 s, which
    // other tests' servers on the same cores could use up: this one runs alone.
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "5").alone().spawn().await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    let clients = connected_clients(&app, 100).await;
    let logins = clients.iter().map(|client| {
        client.post(app.url("/auth/login")).json(&json!({"api_key": key, "password": password})).send()
    });
    let statuses: Vec<StatusCode> = join_all(logins).await.into_iter().map(|r| r.unwrap().status()).collect();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
}

async fn unknown_keys_from_one_address_write_a_bounded_number_of_counters(builder: Builder) {
    let app = builder
        .env("KEYGATE_LOCKOUT_THRESHOLD", "5")
        .env("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", "50")
        .spawn()
        .await;
    let clients = connected_clients(&app, 100).await;
    let mut guesses = Vec::new();
    for i in 0..800 {
        let client = clients[i % clients.len()].clone();
        let url = app.url("/auth/login");
        let body = json!({"api_key": format!("{:0>20}", format!("ZZ{i}")), "password": "kgp_wrong"});
        guesses.push(async move { client.post(url).json(&body).send().await.unwrap().status() });
    }
    let statuses = join_all(guesses).await;
    // 503 is the answer of a saturated database pool, which 800 requests at once on a shared
    // test machine may meet; it checks nothing and counts nothing.
    let odd: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(**s, StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE))
        .collect();
    assert!(odd.is_empty(), "{} of {}: {:?}", odd.len(), statuses.len(), odd.first());
    // Enough failures were counted to lock the address: the bound was put to the test.
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "the address was never locked");
    // The address's own counter and at most one per failure it was allowed.
    let rows = count_rows(&app, "login_failures").await;
    assert!(rows <= 51, "{rows} counter rows written by one address limited to 50 failures");
}
}

backends! {
async fn live_revocations_are_bounded_per_key_and_per_account(builder: Builder) {
    let app = builder
        .env("KEYGATE_REVOCATIONS_PER_KEY", "5")
        .env("KEYGATE_REVOCATIONS_PER_ACCOUNT", "8")
        .spawn()
        .await;
    app.admin_login().await;
    let (a, a_password) = app.generate_key().await;
    let (b, b_password) = app.generate_key().await;
    let other_account = app.new_admin("other@example.com", "other").await;
    let (c, c_password) = app.generate_key_with(&other_account).await;

    let revoke = |key: String, password: String| {
        let app = &app;
        async move {
            let token = app.token(&key, &password).await;
            let r = app.revoke_token(&key, &password, &token).await;
            (r, token)
        }
    };
    // Key A may hold 5 live revocations; the sixth is refused and its token lives on.
    for _ in 0..5 {
        assert_eq!(revoke(a.clone(), a_password.clone()).await.0.status(), StatusCode::OK);
    }
    let (refused, token) = revoke(a.clone(), a_password.clone()).await;
    assert!(retry_after(&refused) >= 1);
    let body = assert_problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(body["detail"].as_str().unwrap().contains("revoked tokens"), "{body}");
    assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
    // Key B shares the account's 8: three more, then refused.
    for _ in 0..3 {
        assert_eq!(revoke(b.clone(), b_password.clone()).await.0.status(), StatusCode::OK);
    }
    assert_eq!(revoke(b.clone(), b_password.clone()).await.0.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another account is untouched by all that.
    for _ in 0..5 {
        let (r, token) = revoke(c.clone(), c_password.clone()).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(app.verify(&token).await.status(), StatusCode::UNAUTHORIZED);
    }
}
}
