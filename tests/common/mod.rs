//! Black-box harness: each test starts the real `keygate` binary on port 0 against a fresh
//! store, and talks to it over HTTP like any client would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

pub mod cache;
pub mod fixture;
pub mod gateway;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    pub base: String,
    /// Keeps cookies, like a browser.
    pub client: Client,
    pub dir: Arc<tempfile::TempDir>,
    env: Vec<(String, String)>,
    child: Child,
    logs: Arc<Mutex<String>>,
    /// The PostgreSQL database, dropped when the last app (or builder) using it is gone.
    db: Option<Arc<PgDatabase>>,
}

#[derive(Clone)]
pub struct Builder {
    env: Vec<(String, String)>,
    dir: Option<Arc<tempfile::TempDir>>,
    bootstrap: bool,
    db: Option<Arc<PgDatabase>>,
}

/// A client that presents `cookie` (`name=value`) on every request, as a browser holding
/// that admin session would.
pub fn cookie_client(cookie: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::COOKIE, cookie.parse().unwrap());
    Client::builder().default_headers(headers).build().unwrap()
}

/// Writes each test once and runs it against every backend:
///
/// ```ignore
/// backends! {
///     async fn keys_survive_a_restart(builder: Builder) { let app = builder.spawn().await; … }
/// }
/// ```
///
/// expands to a module per test with a `sqlite` and a `postgres` test. The PostgreSQL half
/// runs when `KEYGATE_TEST_POSTGRES` names a server, and otherwise passes with a printed
/// notice that `.ci/run` refuses.
#[macro_export]
macro_rules! backends {
    ($(async fn $name:ident($builder:ident: Builder) $body:block)*) => {
        $(mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($builder: $crate::common::Builder) $body
            #[tokio::test]
            async fn sqlite() {
                run($crate::common::Builder::sqlite()).await
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(builder) = $crate::common::Builder::postgres().await {
                    run(builder).await
                }
            }
        })*
    };
}

impl Builder {
    /// A fresh embedded store in a new temporary directory.
    pub fn sqlite() -> Self {
        TestApp::builder()
    }

    /// A fresh, uniquely named PostgreSQL database, or `None` (with a notice) when
    /// `KEYGATE_TEST_POSTGRES` is unset.
    pub async fn postgres() -> Option<Self> {
        let db = PgDatabase::create().await?;
        let mut builder =
            TestApp::builder().env("KEYGATE_DATABASE_URL", &db.url).env("KEYGATE_MASTER_KEY", &random_master_key());
        builder.db = Some(Arc::new(db));
        Some(builder)
    }

    /// The PostgreSQL database this builder's apps use, if any.
    pub fn db(&self) -> Option<&PgDatabase> {
        self.db.as_deref()
    }
}

/// A fresh `KEYGATE_MASTER_KEY`: 32 random bytes, base64.
pub fn random_master_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(keygate::crypto::random_bytes::<32>())
}

/// Prints the notice `.ci/run` looks for. Written to the stderr handle directly, because
/// libtest captures `eprintln!` of passing tests and the notice must be seen.
pub fn skip_postgres_notice() {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED-POSTGRES: set KEYGATE_TEST_POSTGRES=postgres://user@host:port to run the PostgreSQL half"
    );
}

/// A uniquely named database on the server named by `KEYGATE_TEST_POSTGRES`, created for
/// one test and dropped (with any connections still open) when this is dropped. Tests run
/// concurrently on one server, so each touches only its own database.
pub struct PgDatabase {
    /// The server, without a database (connects to the user's default one).
    server: String,
    pub name: String,
    /// The database URL to give keygate.
    pub url: String,
}

impl PgDatabase {
    /// `None`, after printing the skip notice, when `KEYGATE_TEST_POSTGRES` is unset.
    pub async fn create() -> Option<Self> {
        let Ok(server) = std::env::var("KEYGATE_TEST_POSTGRES") else {
            skip_postgres_notice();
            return None;
        };
        let server = server_url(&server);
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{server}/{name}");
        let db = PgDatabase { server, name, url };
        let mut admin = db.admin().await;
        sqlx::query(&format!("CREATE DATABASE {}", db.name)).execute(&mut admin).await.expect("create test database");
        Some(db)
    }

    /// A connection to the server's default database, for CREATE/ALTER/DROP DATABASE.
    pub async fn admin(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.server).await.expect("connect to KEYGATE_TEST_POSTGRES")
    }

    /// A connection to this test's database, to look at what keygate wrote.
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.url).await.expect("connect to the test database")
    }

    /// Everything keygate stored, as `pg_dump` writes it.
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new("pg_dump").args(["--data-only", "--no-owner", &self.url]).output().expect("run pg_dump");
        assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// `SELECT count(*) FROM <from_where>` in this database, e.g. `count("admins")`.
    pub async fn count(&self, from_where: &str) -> i64 {
        use sqlx::Connection;
        let mut conn = self.connect().await;
        let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {from_where}")).fetch_one(&mut conn).await.unwrap();
        conn.close().await.ok();
        n
    }

    /// Simulates an outage of this database only: refuses new connections and ends the
    /// open ones. The server itself stays up, since other tests run on it.
    pub async fn take_down(&self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&mut admin)
        .await
        .unwrap();
    }

    /// Ends the outage.
    pub async fn bring_up(&self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name)).execute(&mut admin).await.unwrap();
    }
}

/// `postgres://user@host:port[/db][?query]` without the database.
fn server_url(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, rest) = raw.split_once("://").expect("KEYGATE_TEST_POSTGRES must be a postgres:// URL");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, where we may not block on async work; a
        // thread with a runtime of its own can.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(&server).await?;
                // FORCE ends connections a killed server may have left behind.
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "warning: could not drop test database {}", self.name);
        }
    }
}

impl Builder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Leaves a setting the harness would give out, so the server's default applies.
    pub fn without_env(self, key: &str) -> Self {
        self.env(key, "")
    }

    /// No bootstrap admin settings: the server must invent the first admin itself.
    pub fn without_bootstrap_admin(mut self) -> Self {
        self.bootstrap = false;
        self
    }

    /// Reuse another app's data directory (and so its store and master key).
    pub fn dir(mut self, dir: Arc<tempfile::TempDir>) -> Self {
        self.dir = Some(dir);
        self
    }

    pub async fn spawn(self) -> TestApp {
        let dir = self.dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("temp dir")));
        let mut env = vec![
            ("KEYGATE_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("KEYGATE_DATA_DIR".to_owned(), dir.path().join("data").display().to_string()),
            ("KEYGATE_COOKIE_SECURE".to_owned(), "false".to_owned()),
            ("KEYGATE_ISSUER".to_owned(), "https://keygate.test".to_owned()),
            ("KEYGATE_LOG".to_owned(), "info".to_owned()),
        ];
        if self.bootstrap {
            env.push(("KEYGATE_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()));
            env.push(("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()));
        }
        for (k, v) in self.env {
            env.retain(|(key, _)| *key != k);
            if !v.is_empty() {
                env.push((k, v));
            }
        }
        TestApp::start(dir, env, self.db).await
    }
}

pub fn keygate_command(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    // The test's own environment must not leak settings into the server under test.
    for (key, _) in std::env::vars() {
        if key.starts_with("KEYGATE_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs a command that is expected to exit on its own, failing the test if it hangs.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("command still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder { env: Vec::new(), dir: None, bootstrap: true, db: None }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    async fn start(dir: Arc<tempfile::TempDir>, env: Vec<(String, String)>, db: Option<Arc<PgDatabase>>) -> TestApp {
        let mut child = keygate_command(&env)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keygate");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("keygate did not start:\n{}", logs.lock().unwrap())
            });
        let client = Client::builder().cookie_store(true).build().unwrap();
        TestApp { base, client, dir, env, child, logs, db }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// A builder for another server on the same data directory and settings.
    pub fn sibling(&self) -> Builder {
        let mut builder = TestApp::builder().dir(self.dir.clone());
        builder.env = self.env.clone();
        builder.db = self.db.clone();
        builder
    }

    /// Another replica: a server with the same settings and database (and so the same
    /// master key), but a data directory of its own, as on another machine.
    pub fn replica(&self) -> Builder {
        let mut builder = TestApp::builder();
        builder.env = self.env.clone();
        builder.env.retain(|(k, _)| k != "KEYGATE_DATA_DIR");
        builder.db = self.db.clone();
        builder
    }

    /// The PostgreSQL database this app uses, if any.
    pub fn db(&self) -> Option<&PgDatabase> {
        self.db.as_deref()
    }

    /// Settings given to this app (`KEYGATE_…`).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Stops this server and starts a new one on the same store and settings.
    pub async fn restart(mut self) -> TestApp {
        self.kill();
        TestApp::start(self.dir.clone(), self.env.clone(), self.db.clone()).await
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server as a service manager would (SIGTERM); returns how it exited.
    #[cfg(unix)]
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "still running 30 s after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the `keygate` CLI against the same store and settings.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = keygate_command(&self.env)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run keygate CLI");
        // The CLI may refuse its arguments and exit before reading: a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).json(body).send().await.unwrap()
    }

    /// Logs in as the bootstrap admin; the session cookie stays in `self.client`.
    pub async fn admin_login(&self) {
        self.login_admin_as(&self.client, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    }

    pub async fn login_admin_as(&self, client: &Client, email: &str, password: &str) {
        let r = client
            .post(self.url("/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "admin login failed: {}", r.text().await.unwrap());
    }

    /// A new client with its own cookie jar, logged in as a new admin of `account`.
    pub async fn new_admin(&self, email: &str, account: &str) -> Client {
        let out =
            self.cli(&["admin", "create", "--email", email, "--account", account, "--password-stdin"], ADMIN_PASSWORD);
        assert!(out.status.success(), "admin create failed: {}", String::from_utf8_lossy(&out.stderr));
        let client = Client::builder().cookie_store(true).build().unwrap();
        self.login_admin_as(&client, email, ADMIN_PASSWORD).await;
        client
    }

    /// Generates a key with `client`'s session; returns (api_key, password).
    pub async fn generate_key_with(&self, client: &Client) -> (String, String) {
        let r = client.post(self.url("/auth/keys/generate")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        (body["api_key"].as_str().unwrap().to_owned(), body["password"].as_str().unwrap().to_owned())
    }

    pub async fn generate_key(&self) -> (String, String) {
        self.generate_key_with(&self.client).await
    }

    /// The account's keys as (api_key_ref, api_key).
    pub async fn list_keys_with(&self, client: &Client) -> Vec<(String, String)> {
        let r = client.get(self.url("/auth/keys/list")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Vec<Value> = r.json().await.unwrap();
        body.iter()
            .map(|k| (k["api_key_ref"].as_str().unwrap().to_owned(), k["api_key"].as_str().unwrap().to_owned()))
            .collect()
    }

    pub async fn list_keys(&self) -> Vec<(String, String)> {
        self.list_keys_with(&self.client).await
    }

    pub async fn ref_of(&self, api_key: &str) -> String {
        self.list_keys().await.into_iter().find(|(_, k)| k == api_key).expect("key listed").0
    }

    pub async fn api_login(&self, api_key: &str, password: &str) -> Response {
        Client::new()
            .post(self.url("/auth/login"))
            .json(&json!({"api_key": api_key, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Logs in with a key and returns its token.
    pub async fn token(&self, api_key: &str, password: &str) -> String {
        let r = self.api_login(api_key, password).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<String>().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asserts an RFC 9457 problem response with `status`, and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}

/// Every file under `dir`, read as bytes.
pub fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(read_tree(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

// --- Helpers for the abuse-resistance tests (tests/security.rs, tests/load.rs). ---

impl TestApp {
    /// The server process, for reading its resource use from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One admin login attempt with a fresh, cookie-less client; the raw response.
    pub async fn try_admin_login(&self, email: &str, password: &str) -> Response {
        Client::new()
            .post(self.url("/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Logs in as the bootstrap admin without a cookie jar; returns the `Cookie` header value
    /// (`name=value`) and the bare session id.
    pub async fn admin_session_cookie(&self) -> (String, String) {
        let r = self.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        let pair = set_cookie.split(';').next().unwrap().to_owned();
        let value = pair.split_once('=').unwrap().1.to_owned();
        (pair, value)
    }
}

/// The server's peak resident memory (VmHWM) in KiB, from /proc.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The `Retry-After` of a response, in seconds.
pub fn retry_after(response: &Response) -> u64 {
    response.headers().get("retry-after").expect("Retry-After").to_str().unwrap().parse().unwrap()
}
