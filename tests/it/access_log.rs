//! The access log: one line per request at info, naming the route by its template, with the
//! status, latency, client address and request id; never a query string, path parameter,
//! credential or token. Off with `KEYGATE_ACCESS_LOG=false`.

use reqwest::{Client, StatusCode};

use crate::common::*;

/// The access-log lines among `logs`.
fn access_lines(logs: &str) -> Vec<&str> {
    logs.lines().filter(|l| l.contains("keygate::access")).collect()
}

#[tokio::test]
async fn each_request_has_one_line_with_its_route_and_nothing_secret() {
    let app = TestApp::spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let key_ref = app.ref_of(&api_key).await;
    let login = app.api_login(&api_key, &password).await;
    let id = login.headers()["x-request-id"].to_str().unwrap().to_owned();
    let token: String = login.json().await.unwrap();
    let r =
        Client::new().get(app.url("/auth/verify/orders/42?secret=hunter2")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let verify_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let r = app.client.delete(app.url(&format!("/auth/user/{key_ref}?password={password}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let logs = app.logs();
    let lines = access_lines(&logs);
    // Admin login, generation, listing, API login, verification, deletion.
    assert_eq!(lines.len(), 6, "{logs}");
    let line = lines.iter().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("no line for {id}:\n{logs}"));
    for part in [" INFO ", "method=\"POST\"", "route=\"/auth/login\"", "status=200", "latency_ms=", "client=127.0.0.1"]
    {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    let line = lines.iter().find(|l| l.contains(&verify_id)).unwrap();
    assert!(line.contains("route=\"/auth/verify\"") && line.contains("status=200"), "{line}");
    assert!(
        lines.iter().any(|l| l.contains("route=\"/auth/user/{api_key_ref}\"") && l.contains("status=204")),
        "{logs}"
    );
    for secret in [password.as_str(), token.as_str(), "hunter2", "secret="] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
    // Nor what the path held: the service's own lines name the key ref, the access log not.
    for part in [key_ref.as_str(), "orders/42"] {
        assert!(lines.iter().all(|l| !l.contains(part)), "{part} in the access log:\n{logs}");
    }
}

#[tokio::test]
async fn the_access_log_can_be_turned_off() {
    let app = Builder::sqlite().env("KEYGATE_ACCESS_LOG", "false").spawn().await;
    app.admin_login().await;
    let r = Client::new().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let logs = app.logs();
    assert!(access_lines(&logs).is_empty(), "{logs}");
    // The rest of the log is still there.
    assert!(logs.contains("admin login"), "{logs}");
}
