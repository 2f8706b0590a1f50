//! Real nginx, configured with docs/gateways/nginx.conf, in front of a small upstream, with
//! `auth_request` to keygate's `/auth/verify`.
//!
//! When nginx is not installed the test prints `SKIPPED-NGINX: …` and passes; `.ci/run`
//! installs nginx and fails on that line, so CI always runs it for real.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::common::{Builder, TestApp, gateway::*};
use axum::{Json, http::HeaderMap};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const DOCS_CONFIG: &str = include_str!("../../docs/gateways/nginx.conf");

fn nginx_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .chain(from_path)
        .find(|p| p.is_file())
}

/// A port that was free a moment ago (nginx must bind it itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The upstream: echoes the identity headers it receives, and counts requests.
async fn start_upstream() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?").to_owned());
            Json(json!({
                "subject": get("x-auth-subject"),
                "account": get("x-auth-account"),
                "key": get("x-auth-key"),
                "scopes": get("x-auth-scopes"),
                "authorization": get("authorization").is_some(),
            }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr.to_string(), hits)
}

struct Nginx {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Runs nginx in the foreground, single-process, with everything it writes in a temp dir.
    async fn start(binary: &Path, keygate: &str, upstream: &str) -> Nginx {
        // The port is chosen free, but another process could take it before nginx binds:
        // try a few times before giving up.
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let site = substitute(DOCS_CONFIG, keygate, upstream, port);
            let p = dir.path().display().to_string();
            // As root, nginx would hand its temp dirs to `nobody`; keep them ours.
            let user = if is_root() { "user root;\n" } else { "" };
            let config = format!(
                "{user}daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
                 error_log {p}/error.log info;\nevents {{ worker_connections 256; }}\nhttp {{\n\
                 access_log {p}/access.log;\nclient_body_temp_path {p}/client_body;\nproxy_temp_path {p}/proxy;\n\
                 fastcgi_temp_path {p}/fastcgi;\nuwsgi_temp_path {p}/uwsgi;\nscgi_temp_path {p}/scgi;\n\
                 {site}\n}}\n"
            );
            std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
            let mut child = Command::new(binary)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let base = format!("http://127.0.0.1:{port}");
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Nginx { child, base, dir };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_error = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start:\n{last_error}");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }
    #[cfg(not(unix))]
    false
}

/// Points the documented config at this test's servers; each placeholder must be there.
fn substitute(config: &str, keygate: &str, upstream: &str, port: u16) -> String {
    let mut out = config.to_owned();
    for (from, to) in [
        ("server 127.0.0.1:8080;", format!("server {keygate};")),
        ("server 127.0.0.1:3000;", format!("server {upstream};")),
        ("listen 80;", format!("listen 127.0.0.1:{port};")),
    ] {
        assert_eq!(out.matches(from).count(), 1, "docs/gateways/nginx.conf must contain `{from}` once");
        out = out.replace(from, &to);
    }
    out
}

/// keygate from `builder`, an upstream, and nginx in front of both as the shipped config has
/// it, with the upstream's hit counter; `None`, with the skip notice, without nginx.
async fn behind_nginx(builder: Builder) -> Option<(TestApp, Nginx, Arc<AtomicUsize>)> {
    let Some(binary) = nginx_binary() else {
        println!("SKIPPED-NGINX: nginx is not installed (apt-get install -y nginx); the gateway test did not run");
        return None;
    };
    let app = builder.spawn().await;
    let (upstream, hits) = start_upstream().await;
    let keygate = app.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&binary, &keygate, &upstream).await;
    Some((app, nginx, hits))
}

backends! {
async fn nginx_lets_only_live_tokens_through_to_the_upstream(builder: Builder) {
    let Some((app, nginx, hits)) = behind_nginx(builder).await else { return };
    let client = Client::new();

    app.admin_login().await;
    let r = app.post_json("/auth/keys/generate", &json!({"scopes": ["orders:read", "orders:write"]})).await;
    let generated: Value = r.json().await.unwrap();
    let (api_key, password) =
        (generated["api_key"].as_str().unwrap().to_owned(), generated["password"].as_str().unwrap().to_owned());
    let key_ref = app.ref_of(&api_key).await;
    let token = app.token(&api_key, &password).await;
    let account = segment(&token, 1)["acc"].as_str().unwrap().to_owned();

    // A live token reaches the upstream, which learns who is calling.
    let r = client.get(nginx.url("/orders/42?x=1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "nginx log:\n{}", nginx.error_log());
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["subject"], key_ref.as_str());
    assert_eq!(seen["account"], account.as_str());
    assert_eq!(seen["key"], api_key.as_str());
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Client-sent identity headers are replaced, not passed along.
    let r = client
        .post(nginx.url("/orders"))
        .bearer_auth(&token)
        .header("x-auth-subject", "someone-else")
        .header("x-auth-account", "another-account")
        .header("x-auth-scopes", "admin")
        .body("{\"item\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["subject"], key_ref.as_str());
    assert_eq!(seen["account"], account.as_str());
    assert_eq!(seen["scopes"], "orders:read orders:write");
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // The routes' scopes: a token narrowed to orders:read reads, but may not write.
    let r = client
        .post(app.url("/oauth/token"))
        .basic_auth(&api_key, Some(&password))
        .form(&[("grant_type", "client_credentials"), ("scope", "orders:read")])
        .send()
        .await
        .unwrap();
    let reader = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let r = client.get(nginx.url("/orders/7")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["scopes"], "orders:read");
    let r = client.post(nginx.url("/orders")).bearer_auth(&reader).body("{}").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "nginx log:\n{}", nginx.error_log());
    let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(challenges, ["Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"orders:write\""]);
    assert_eq!(hits.load(Ordering::SeqCst), 3, "the upstream saw a request without its scope");

    // No token, a bad token, a forged one: 401 from nginx, with keygate's challenge, and
    // the upstream never sees them.
    let r = client.get(nginx.url("/orders/42")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let r = client.get(nginx.url("/orders/42")).header("x-auth-subject", &key_ref).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client.get(nginx.url("/orders/42")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(challenges[0].contains("invalid_token"));
    let mut tampered: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload = segment(&token, 1);
    payload["exp"] = json!(now() + 86_400);
    tampered[1] = b64(payload.to_string().as_bytes());
    let r = client.get(nginx.url("/orders/42")).bearer_auth(tampered.join(".")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // A revoked token, then every token of a deleted key: refused on the very next request.
    let revoked = app.token(&api_key, &password).await;
    let r = client
        .post(app.url("/oauth/revoke"))
        .basic_auth(&api_key, Some(&password))
        .form(&[("token", revoked.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client.get(nginx.url("/orders/42")).bearer_auth(&revoked).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.get(nginx.url("/")).bearer_auth(&token).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    let r = app.client.delete(app.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = client.get(nginx.url("/orders/42")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    // And it really was nginx answering all of that. nginx logs a request just after
    // answering it, so the last line may lag behind the response.
    let mut log = nginx.access_log();
    for _ in 0..50 {
        if log.matches("\" 401 ").count() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = nginx.access_log();
    }
    assert!(log.contains("\"GET /orders/42?x=1 HTTP/1.1\" 200"), "{log}");
    assert_eq!(log.matches("\" 401 ").count(), 6, "{log}");
}

async fn nginx_answers_keygates_429_as_a_429_and_copies_the_ratelimit_headers(builder: Builder) {
    let Some((app, nginx, hits)) = behind_nginx(builder).await else { return };
    let client = Client::new();
    app.admin_login().await;
    let body = json!({"scopes": ["orders:read"], "limits": [{"name": "burst", "limit": 2, "window_seconds": 3600}]});
    let generated: Value = app.post_json("/auth/keys/generate", &body).await.json().await.unwrap();
    let token = app.token(generated["api_key"].as_str().unwrap(), generated["password"].as_str().unwrap()).await;

    for remaining in [1, 0] {
        let r = client.get(nginx.url("/orders/1")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "nginx log:\n{}", nginx.error_log());
        assert_eq!(r.headers()["ratelimit-policy"], "\"burst\";q=2;w=3600");
        let state = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(state.starts_with(&format!("\"burst\";r={remaining};t=")), "{state}");
    }
    let r = client.get(nginx.url("/orders/1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "nginx log:\n{}", nginx.error_log());
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let state = r.headers()["ratelimit"].to_str().unwrap().to_owned();
    let t: u64 = state.rsplit("t=").next().unwrap().parse().unwrap();
    assert!(state.starts_with("\"burst\";r=0;") && retry_after >= t, "{state}, Retry-After {retry_after}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"burst\";q=2;w=3600");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "the upstream saw a request over the limit");

    // A key without limits: no RateLimit headers; a keygate that is gone: still a 500.
    let plain: Value = app.post_json("/auth/keys/generate", &json!({"scopes": ["orders:read"]})).await.json().await.unwrap();
    let plain = app.token(plain["api_key"].as_str().unwrap(), plain["password"].as_str().unwrap()).await;
    let r = client.get(nginx.url("/orders/1")).bearer_auth(&plain).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("ratelimit").is_none() && r.headers().get("ratelimit-policy").is_none());
    drop(app);
    let r = client.get(nginx.url("/orders/1")).bearer_auth(&plain).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.headers().get("retry-after").is_none());
}
}
