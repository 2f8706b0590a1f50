//! Readiness, and surviving a database outage: 503 problems while it lasts, recovery
//! without a restart, and nothing half-written. The outage takes down only this test's own
//! database (other tests share the server).

use std::time::Duration;

use crate::common::*;
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

backends! {
async fn readyz_reports_the_store_and_is_documented(builder: Builder) {
    let app = builder.spawn().await;
    let r = Client::new().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ready"}));
    let r = Client::new().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let doc: Value = Client::new().get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let readyz = &doc["paths"]["/readyz"]["get"];
    assert!(readyz["responses"]["200"].is_object(), "{readyz}");
    assert!(readyz["responses"]["503"].is_object(), "{readyz}");
}
}

async fn status(client: &Client, url: String) -> StatusCode {
    client.get(url).send().await.unwrap().status()
}

/// Polls `/readyz` until it answers 200; false if it never does.
async fn wait_ready(app: &TestApp) -> bool {
    for _ in 0..150 {
        if status(&Client::new(), app.url("/readyz")).await == StatusCode::OK {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn assert_unavailable(response: reqwest::Response) {
    let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(retry.is_some_and(|v| v.parse::<u64>().is_ok()), "503 without a Retry-After");
}

#[tokio::test]
async fn database_outage_answers_503_and_recovers_by_itself() {
    let Some(builder) = Builder::postgres().await else { return };
    // The real process: what it writes to stderr during the outage is part of the test.
    let mut app = builder.process().spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let db = app.db().unwrap();

    db.take_down().await;
    // Every call that needs the database answers 503 with a problem body: promptly, since a
    // request that hung until the 30 s request timeout would be a 408.
    let refused = app.api_login(&api_key, &password).await;
    let id = refused.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_unavailable(refused).await;
    assert_unavailable(Client::new().get(app.url("/readyz")).send().await.unwrap()).await;
    assert_unavailable(app.client.post(app.url("/auth/keys/generate")).send().await.unwrap()).await;
    assert_unavailable(app.client.get(app.url("/auth/keys/list")).send().await.unwrap()).await;
    assert_unavailable(app.post_json("/auth/login", &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).await)
        .await;
    // Liveness is not readiness: the process is fine and must not be restarted.
    assert_eq!(status(&Client::new(), app.url("/healthz")).await, StatusCode::OK);

    db.bring_up().await;
    assert!(wait_ready(&app).await, "did not recover:\n{}", app.logs());
    // Same process, same session: everything works again, and the key generation refused
    // during the outage left no trace.
    app.token(&api_key, &password).await;
    assert_eq!(app.list_keys().await.len(), 1);
    let (k2, p2) = app.generate_key().await;
    app.token(&k2, &p2).await;

    // Stopped, so that every line it wrote has been read.
    assert!(app.terminate().await.success());
    let logs = app.logs();
    // At the default level, a failed request's line names it: the id the client was given,
    // what it asked for and what it got.
    let line = logs.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("no line for {id}:\n{logs}"));
    for part in ["response failed", "POST", "/auth/login", "503"] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn killed_connections_are_replaced_without_errors() {
    let Some(builder) = Builder::postgres().await else { return };
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let db = app.db().unwrap();
    // Several rounds of pg_terminate_backend on every connection keygate holds, with the
    // database still up: pooled connections are checked before use, so no request fails.
    for _ in 0..3 {
        let mut admin = db.admin().await;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&db.name)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!killed.is_empty(), "keygate held no connection to kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.token(&api_key, &password).await;
        assert_eq!(app.list_keys().await.len(), 1);
    }
}

/// A database that is not there at start: the process is live (`/healthz`) but not ready
/// (`/readyz`, and every other call, 503) while it retries, and ready once the database is.
#[tokio::test]
async fn serve_waits_for_a_database_that_is_not_there_yet() {
    let Some(builder) = Builder::postgres_absent().await else { return };
    let app = builder.live_only().spawn().await;
    let client = Client::new();
    assert_eq!(status(&client, app.url("/healthz")).await, StatusCode::OK);
    assert_unavailable(client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_unavailable(app.api_login("46SQZ49LT100U2QWQ3SI", "kgp_x").await).await;

    app.db().unwrap().create_now().await;
    assert!(wait_ready(&app).await, "never ready:\n{}", app.logs());
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    app.token(&api_key, &password).await;
    assert!(app.logs().contains("cannot reach the database yet"), "{}", app.logs());
}

/// Nobody listens where the database should be: retried for `KEYGATE_DB_CONNECT_TIMEOUT`,
/// then one line saying so, and a non-zero exit.
#[tokio::test]
async fn serve_gives_up_on_an_unreachable_database_after_the_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut app = Builder::sqlite()
        .env("KEYGATE_DATABASE_URL", &format!("postgres://keygate@127.0.0.1:{port}/keygate"))
        .env("KEYGATE_MASTER_KEY", &random_master_key())
        .env("KEYGATE_DB_CONNECT_TIMEOUT", "2")
        .live_only()
        .spawn()
        .await;
    assert_eq!(status(&Client::new(), app.url("/healthz")).await, StatusCode::OK);
    let exit = app.wait_for_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "{exit:?}");
    let logs = app.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{logs}");
    assert!(errors[0].contains("cannot reach the database within 2 s (KEYGATE_DB_CONNECT_TIMEOUT)"), "{logs}");
    assert!(!errors[0].contains(&port.to_string()), "the URL is not repeated: {logs}");
}
