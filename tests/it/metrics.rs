//! `/metrics`: every metric docs/operations.md lists, with its labels; counters that move with
//! what the server did; route templates, never paths; `promtool check metrics`; and a real
//! Prometheus scraping it.
//!
//! The servers run as processes: the metrics are the process's, and an in-process server
//! would show every other test's traffic too. When Prometheus is not installed, the scrape
//! test prints `SKIPPED-PROMETHEUS: …` and passes; `.ci/run` installs it and fails on that
//! line.

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Client, StatusCode};
use serde_json::Value;

use crate::common::{metrics::scrape, *};

/// Every family docs/operations.md documents.
const FAMILIES: &[&str] = &[
    "keygate_http_requests_total",
    "keygate_http_request_duration_seconds",
    "keygate_logins_total",
    "keygate_tokens_issued_total",
    "keygate_verifications_total",
    "keygate_lockouts_total",
    "keygate_admin_hash_queue",
    "keygate_admin_hash_rejected_total",
    "keygate_store_pool_connections",
    "keygate_store_query_duration_seconds",
    "keygate_cache_lease_valid",
    "keygate_build_info",
    "keygate_limit_state_outages_total",
    "keygate_limit_state_slow_total",
    "keygate_limit_state_reachable",
];

async fn verify(app: &TestApp, token: Option<&str>) -> StatusCode {
    let mut request = Client::new().get(app.url("/auth/verify/api/items"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn metrics_name_every_family_and_count_what_happened() {
    let app = Builder::sqlite().process().spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let (doomed_key, doomed_password) = app.generate_key().await;
    let tokens: Vec<String> = futures_join(3, |_| app.token(&api_key, &password)).await;
    assert_eq!(app.api_login(&api_key, "kgp_wrong").await.status(), StatusCode::UNAUTHORIZED);
    let doomed_token = app.token(&doomed_key, &doomed_password).await;
    let doomed_ref = app.ref_of(&doomed_key).await;
    let revoked = app.token(&api_key, &password).await;
    let r = Client::new()
        .post(app.url("/oauth/revoke"))
        .basic_auth(&api_key, Some(&password))
        .form(&[("token", revoked.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.client.delete(app.url(&format!("/auth/user/{doomed_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    assert_eq!(verify(&app, Some(&tokens[0])).await, StatusCode::OK);
    assert_eq!(verify(&app, Some(&tokens[1])).await, StatusCode::OK);
    assert_eq!(verify(&app, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(verify(&app, Some("not.a.token")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(verify(&app, Some(&revoked)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(verify(&app, Some(&doomed_token)).await, StatusCode::UNAUTHORIZED);
    let r = Client::new().get(app.url(&format!("/auth/user/{doomed_ref}/nothing?password={password}"))).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::NOT_FOUND);

    let (text, m) = scrape(&app.url("/metrics")).await;
    let families: std::collections::HashSet<&str> = m.families().collect();
    for family in FAMILIES {
        let present = families
            .iter()
            .any(|f| f.strip_prefix(family).is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest)));
        assert!(present, "{family} missing:\n{text}");
    }
    // Logins by kind and outcome; what a login issues.
    assert_eq!(m.get(r#"keygate_logins_total{kind="api",outcome="success"}"#), 5.0, "{text}");
    assert_eq!(m.get(r#"keygate_logins_total{kind="api",outcome="invalid"}"#), 1.0, "{text}");
    assert_eq!(m.get(r#"keygate_logins_total{kind="admin",outcome="success"}"#), 1.0, "{text}");
    assert_eq!(m.get(r#"keygate_logins_total{kind="admin",outcome="locked"}"#), 0.0, "{text}");
    assert!(m.has(r#"keygate_logins_total{kind="oauth",outcome="error"}"#), "{text}");
    assert_eq!(m.get("keygate_tokens_issued_total"), 5.0, "{text}");
    // Verifications by outcome.
    for (outcome, n) in [("valid", 2.0), ("missing", 1.0), ("invalid", 1.0), ("revoked", 1.0), ("key_deleted", 1.0)] {
        assert_eq!(m.get(&format!(r#"keygate_verifications_total{{outcome="{outcome}"}}"#)), n, "{outcome}:\n{text}");
    }
    assert!(m.has(r#"keygate_verifications_total{outcome="expired"}"#), "{text}");
    // HTTP by template: the sub-paths of /auth/verify under it, a key ref under its parameter.
    let verify_401 = r#"keygate_http_requests_total{method="GET",route="/auth/verify",status="401"}"#;
    assert_eq!(m.get(verify_401), 4.0, "{text}");
    let deleted = r#"keygate_http_requests_total{method="DELETE",route="/auth/user/{api_key_ref}",status="204"}"#;
    assert_eq!(m.get(deleted), 1.0, "{text}");
    assert_eq!(m.get(r#"keygate_http_requests_total{method="GET",route="unmatched",status="404"}"#), 1.0, "{text}");
    assert!(m.get(r#"keygate_http_request_duration_seconds_count{route="/auth/login"}"#) >= 7.0, "{text}");
    assert!(m.get(r#"keygate_store_query_duration_seconds_count"#) > 0.0, "{text}");
    assert_eq!(m.get(&format!(r#"keygate_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))), 1.0, "{text}");
    assert_eq!(m.get("keygate_admin_hash_queue"), 0.0, "{text}");
    assert!(m.get(r#"keygate_store_pool_connections{state="idle"}"#) >= 1.0, "{text}");
    // No path, key, ref, token or secret in any label.
    for secret in [api_key.as_str(), password.as_str(), doomed_ref.as_str(), "/auth/verify/api", "nothing", &tokens[0]]
    {
        assert!(!text.contains(secret), "{secret} in the exposition:\n{text}");
    }
}

/// `join_all` of `n` futures made by `f`, in order.
async fn futures_join<F: std::future::Future>(n: usize, f: impl Fn(usize) -> F) -> Vec<F::Output> {
    futures_util::future::join_all((0..n).map(f)).await
}

#[tokio::test]
async fn a_lockout_and_a_cache_lease_show() {
    let app = Builder::sqlite().env("KEYGATE_LOCKOUT_THRESHOLD", "2").process().spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    for _ in 0..2 {
        app.api_login(&api_key, "kgp_wrong").await;
    }
    assert_eq!(app.api_login(&api_key, &password).await.status(), StatusCode::TOO_MANY_REQUESTS);
    let (text, m) = scrape(&app.url("/metrics")).await;
    assert_eq!(m.get("keygate_lockouts_total"), 1.0, "{text}");
    assert_eq!(m.get(r#"keygate_logins_total{kind="api",outcome="locked"}"#), 2.0, "{text}");
    // The embedded store's caches answer once loaded, which a login above waited for.
    let mut lease = m.get("keygate_cache_lease_valid");
    for _ in 0..100 {
        if lease == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        lease = scrape(&app.url("/metrics")).await.1.get("keygate_cache_lease_valid");
    }
    assert_eq!(lease, 1.0);
}

#[tokio::test]
async fn a_metrics_listener_of_its_own_takes_metrics_off_the_main_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = Builder::sqlite().env("KEYGATE_METRICS_LISTEN", &format!("127.0.0.1:{port}")).process().spawn().await;
    assert_eq!(Client::new().get(app.url("/metrics")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(verify(&app, None).await, StatusCode::UNAUTHORIZED);
    let (text, m) = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(m.get(r#"keygate_verifications_total{outcome="missing"}"#), 1.0, "{text}");
    // The probe of the main listener's `/metrics` counted as what it was: nothing there.
    assert_eq!(m.get(r#"keygate_http_requests_total{method="GET",route="unmatched",status="404"}"#), 1.0, "{text}");
}

/// promtool: the binary from Debian's `prometheus` package.
fn promtool() -> Option<PathBuf> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn prometheus_binary() -> Option<PathBuf> {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn skip_prometheus_notice() {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED-PROMETHEUS: prometheus is not installed (apt-get install -y prometheus); the metrics were not checked by it"
    );
}

#[tokio::test]
async fn promtool_finds_no_problem_in_the_exposition() {
    let Some(promtool) = promtool() else { return skip_prometheus_notice() };
    let app = Builder::sqlite().process().spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let token = app.token(&api_key, &password).await;
    assert_eq!(verify(&app, Some(&token)).await, StatusCode::OK);
    let (text, _) = scrape(&app.url("/metrics")).await;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");
}

/// A Prometheus server of this test's own, scraping `target` every second.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: PathBuf, target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: keygate\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prometheus = Self { child, base: format!("http://127.0.0.1:{port}"), _dir: dir };
        prometheus
            .wait_for(
                || async {
                    Client::new()
                        .get(format!("{}/-/ready", prometheus.base))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                },
                "ready",
            )
            .await;
        prometheus
    }

    /// The value of an instant query that returns one sample; `None` before it does.
    async fn value(&self, query: &str) -> Option<f64> {
        let r =
            Client::new().get(format!("{}/api/v1/query", self.base)).query(&[("query", query)]).send().await.ok()?;
        let body: Value = r.json().await.ok()?;
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
    }

    async fn wait_for<F: std::future::Future<Output = bool>>(&self, done: impl Fn() -> F, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done().await {
            assert!(Instant::now() < deadline, "prometheus: {what} not seen within a minute");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_keygate_and_sees_the_counters_move() {
    let Some(binary) = prometheus_binary() else { return skip_prometheus_notice() };
    let app = Builder::sqlite().process().spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let prometheus = Prometheus::start(binary, app.base.trim_start_matches("http://")).await;
    prometheus.wait_for(|| async { prometheus.value(r#"up{job="keygate"}"#).await == Some(1.0) }, "a scrape").await;
    let logins = r#"sum(keygate_logins_total{job="keygate",kind="api",outcome="success"})"#;
    let verified = r#"sum(keygate_verifications_total{job="keygate",outcome="valid"})"#;
    let before = prometheus.value(logins).await.expect("the login counter, scraped");
    assert_eq!(before, 0.0);
    assert_eq!(prometheus.value(verified).await, Some(0.0));

    let tokens = futures_join(20, |_| app.token(&api_key, &password)).await;
    for token in &tokens {
        assert_eq!(verify(&app, Some(token)).await, StatusCode::OK);
    }
    prometheus.wait_for(|| async { prometheus.value(logins).await == Some(20.0) }, "20 logins").await;
    prometheus.wait_for(|| async { prometheus.value(verified).await == Some(20.0) }, "20 verifications").await;
    let requests = r#"sum(keygate_http_requests_total{job="keygate",route="/auth/login",status="200"})"#;
    assert!(prometheus.value(requests).await.is_some_and(|n| n >= 21.0));
    let durations = r#"sum(keygate_http_request_duration_seconds_count{job="keygate",route="/auth/verify"})"#;
    assert_eq!(prometheus.value(durations).await, Some(20.0));
}
