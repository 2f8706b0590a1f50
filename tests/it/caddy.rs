//! Real Caddy, configured with docs/gateways/caddy/Caddyfile, in front of a small upstream,
//! with `forward_auth` to keygate's `/auth/verify` and the routes' required scopes.
//!
//! When Caddy is not installed the test prints `SKIPPED-CADDY: …` and passes; `.ci/run`
//! installs Caddy and fails on that line, so CI always runs it for real.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::{Json, http::HeaderMap};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const DOCS_CONFIG: &str = include_str!("../../docs/gateways/caddy/Caddyfile");

fn caddy_binary() -> Option<PathBuf> {
    ["/usr/bin/caddy", "/usr/local/bin/caddy"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The upstream: echoes the identity headers it receives.
async fn start_upstream() -> String {
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?").to_owned());
        Json(json!({"subject": get("x-auth-subject"), "scopes": get("x-auth-scopes")}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

struct Caddy {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points the documented config at this test's servers; each placeholder must be there.
fn substitute(config: &str, keygate: &str, upstream: &str, port: u16) -> String {
    let mut out = config.to_owned();
    for (from, to, times) in [
        ("api.example.com {", format!("http://127.0.0.1:{port} {{"), 1),
        ("keygate:8080", keygate.to_owned(), 3),
        ("app:3000", upstream.to_owned(), 3),
    ] {
        assert_eq!(out.matches(from).count(), times, "docs/gateways/caddy/Caddyfile must contain `{from}` {times}×");
        out = out.replace(from, &to);
    }
    // No admin endpoint (parallel tests would fight over its port), nothing kept.
    format!("{{\n\tadmin off\n}}\n\n{out}")
}

async fn start_caddy(binary: &PathBuf, keygate: &str, upstream: &str) -> Caddy {
    let mut last_error = String::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("Caddyfile");
        std::fs::write(&config, substitute(DOCS_CONFIG, keygate, upstream, port)).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let mut child = Command::new(binary)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start caddy");
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Caddy { child, base: format!("http://127.0.0.1:{port}"), _dir: dir };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        last_error = std::fs::read_to_string(dir.path().join("caddy.log")).unwrap_or_default();
    }
    panic!("caddy did not start:\n{last_error}");
}

backends! {
async fn caddy_passes_tokens_with_the_routes_scopes_and_refuses_the_rest(builder: Builder) {
    let Some(binary) = caddy_binary() else {
        println!("SKIPPED-CADDY: caddy is not installed (apt-get install -y caddy); the Caddy gateway test did not run");
        return;
    };
    let app = builder.spawn().await;
    let upstream = start_upstream().await;
    let caddy = start_caddy(&binary, app.base.trim_start_matches("http://"), &upstream).await;
    let client = Client::new();

    app.admin_login().await;
    let r = app.post_json("/auth/keys/generate", &json!({"scopes": ["orders:read", "orders:write"]})).await;
    let key: Value = r.json().await.unwrap();
    let (api_key, password) = (key["api_key"].as_str().unwrap(), key["password"].as_str().unwrap());
    let writer = app.token(api_key, password).await;
    let r = client
        .post(app.url("/oauth/token"))
        .basic_auth(api_key, Some(password))
        .form(&[("grant_type", "client_credentials"), ("scope", "orders:read")])
        .send()
        .await
        .unwrap();
    let reader = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();

    let url = |path: &str| format!("{}{path}", caddy.base);
    let r = client.get(url("/orders/1")).bearer_auth(&reader).header("x-auth-scopes", "admin").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["scopes"], "orders:read", "the client's own header was not replaced");
    assert_eq!(seen["subject"], key["api_key_ref"]);
    let r = client.post(url("/orders")).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = client.post(url("/orders")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(challenge, "Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"orders:write\"");
    let r = client.get(url("/anything")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client.get(url("/anything")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.get(url("/anything")).bearer_auth(&reader).send().await.unwrap().status(), StatusCode::OK);
}
}
