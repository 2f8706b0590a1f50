//! The harness: each test starts keygate on port 0 against a fresh store (a temporary
//! directory, or a PostgreSQL database of its own) and talks to it over HTTP like any client
//! would. See `server` for how a server runs: in this process, or as the real binary.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::Duration,
};

use keygate::clock::{Clock, ManualClock};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

pub mod browser;
pub mod cache;
#[macro_use]
pub mod fixture;
pub mod gateway;
pub mod metrics;
mod postgres;
mod redis;
mod server;
pub mod tls;

pub use postgres::PgDatabase;
pub use redis::RedisServer;
use server::{InProcess, Turn};
pub use server::{Logs, Process};

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    pub base: String,
    /// Keeps cookies, like a browser.
    pub client: Client,
    pub dir: Arc<tempfile::TempDir>,
    env: Vec<(String, String)>,
    server: Server,
    logs: Logs,
    /// The PostgreSQL database, dropped when the last app (or builder) using it is gone.
    db: Option<Arc<PgDatabase>>,
    clock: Option<ManualClock>,
    turn: Arc<Turn>,
}

enum Server {
    InProcess(InProcess),
    Process(Process),
}

#[derive(Clone)]
pub struct Builder {
    env: Vec<(String, String)>,
    dir: Option<Arc<tempfile::TempDir>>,
    bootstrap: bool,
    db: Option<Arc<PgDatabase>>,
    process: bool,
    alone: bool,
    clock: Option<ManualClock>,
    live_only: bool,
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
            $crate::backend_tests!(run);
        })*
    };
}

/// As `backends!`, and each backend again with the limits' shared state in Redis
/// (`KEYGATE_REDIS_URL`, a redis-server of the test's own): `sqlite_redis`, `postgres_redis`.
/// Without redis-server those pass with a printed notice that `.ci/run` refuses.
#[macro_export]
macro_rules! backends_with_redis {
    ($(async fn $name:ident($builder:ident: Builder) $body:block)*) => {
        $(mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($builder: $crate::common::Builder) $body
            $crate::backend_tests!(run);
            #[tokio::test]
            async fn sqlite_redis() {
                if let Some(redis) = $crate::common::RedisServer::start().await {
                    run($crate::common::Builder::sqlite().redis(&redis)).await
                }
            }
            #[tokio::test]
            async fn postgres_redis() {
                let Some(redis) = $crate::common::RedisServer::start().await else { return };
                if let Some(builder) = $crate::common::Builder::postgres().await {
                    run(builder.redis(&redis)).await
                }
            }
        })*
    };
}

/// The `sqlite` and `postgres` tests of `backends!`, running `$run`.
#[doc(hidden)]
#[macro_export]
macro_rules! backend_tests {
    ($run:ident) => {
        #[tokio::test]
        async fn sqlite() {
            $run($crate::common::Builder::sqlite()).await
        }
        #[tokio::test]
        async fn postgres() {
            if let Some(builder) = $crate::common::Builder::postgres().await {
                $run(builder).await
            }
        }
    };
}

impl Builder {
    /// A fresh embedded store in a new temporary directory.
    pub fn sqlite() -> Self {
        TestApp::builder()
    }

    /// A fresh, uniquely named PostgreSQL database that holds keygate's schema, or `None`
    /// (with a notice) when `KEYGATE_TEST_POSTGRES` is unset.
    pub async fn postgres() -> Option<Self> {
        Some(Self::on_postgres(PgDatabase::create_migrated().await?))
    }

    /// As `postgres`, on an empty database: for tests of the first start on one.
    pub async fn postgres_empty() -> Option<Self> {
        Some(Self::on_postgres(PgDatabase::create().await?))
    }

    /// As `postgres`, on a database that does not exist yet (`PgDatabase::create_now`).
    pub async fn postgres_absent() -> Option<Self> {
        Some(Self::on_postgres(PgDatabase::not_yet_created().await?))
    }

    fn on_postgres(db: PgDatabase) -> Self {
        let mut builder =
            TestApp::builder().env("KEYGATE_DATABASE_URL", &db.url).env("KEYGATE_MASTER_KEY", &random_master_key());
        builder.db = Some(Arc::new(db));
        builder
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

impl Builder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// The limits' shared state in `redis`, which must outlive the apps.
    pub fn redis(self, redis: &RedisServer) -> Self {
        self.env("KEYGATE_REDIS_URL", &redis.url())
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

    /// The real `keygate serve` process rather than the application in this one: for
    /// tests of what only a process has (signals, its stderr, its memory).
    pub fn process(mut self) -> Self {
        self.process = true;
        self
    }

    /// The server's time on a clock the test moves (`TestApp::clock`), starting now, instead
    /// of the system's: for tests of expiry that would otherwise sleep. In process only.
    pub fn manual_clock(mut self) -> Self {
        self.clock = Some(ManualClock::new(Clock::system().now()));
        self
    }

    /// A process returned as soon as it is live (`/healthz`), not once it is ready
    /// (`/readyz`): for tests of what it serves while it waits for its database.
    pub fn live_only(mut self) -> Self {
        self.live_only = true;
        self.process = true;
        self
    }

    /// No other test's server runs beside this test's: for tests that measure the server.
    pub fn alone(mut self) -> Self {
        self.alone = true;
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
        let turn = server::take_turn(self.alone).await;
        TestApp::start(dir, env, self.db, self.process, self.live_only, self.clock, turn).await
    }
}

/// A client builder for a server started with `env`: trusting its certificate, if it has one.
pub fn client_for(env: &[(String, String)]) -> reqwest::ClientBuilder {
    install_crypto_provider();
    match env.iter().find(|(k, _)| k == "KEYGATE_TLS_CERT") {
        Some((_, cert)) => tls::client_builder(Path::new(cert)),
        None => Client::builder(),
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

/// reqwest is built with rustls but no crypto provider of its own (keygate's is aws-lc):
/// every client of this process, TLS or not, takes the process's default, set here once.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

impl TestApp {
    pub fn builder() -> Builder {
        install_crypto_provider();
        Builder {
            env: Vec::new(),
            dir: None,
            bootstrap: true,
            db: None,
            process: false,
            alone: false,
            clock: None,
            live_only: false,
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        env: Vec<(String, String)>,
        db: Option<Arc<PgDatabase>>,
        process: bool,
        live_only: bool,
        clock: Option<ManualClock>,
        turn: Arc<Turn>,
    ) -> TestApp {
        let logs = Logs::default();
        let (base, server) = match process {
            true => {
                assert!(clock.is_none(), "a process runs on the system clock");
                let (base, process) = Process::start(&env, &logs, live_only).await;
                (base, Server::Process(process))
            }
            false => {
                let (base, app) =
                    InProcess::start(&env, &logs, clock.as_ref().map_or_else(Clock::system, ManualClock::clock)).await;
                (base, Server::InProcess(app))
            }
        };
        let client = client_for(&env).cookie_store(true).build().unwrap();
        TestApp { base, client, dir, env, server, logs, db, clock, turn }
    }

    /// A new client without cookies, that trusts this server's certificate if it has one.
    pub fn new_client(&self) -> Client {
        client_for(&self.env).build().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What this server has logged so far. A process's lines arrive through a pipe, so for
    /// everything it wrote, stop it first (`terminate`; `kill` may lose what it had queued).
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    fn is_process(&self) -> bool {
        matches!(self.server, Server::Process(_))
    }

    /// A builder for another server on the same data directory and settings.
    pub fn sibling(&self) -> Builder {
        let mut builder = TestApp::builder().dir(self.dir.clone());
        builder.env = self.env.clone();
        builder.db = self.db.clone();
        builder.process = self.is_process();
        builder.clock = self.clock.clone();
        builder
    }

    /// Another replica: a server with the same settings and database (and so the same
    /// master key), but a data directory of its own, as on another machine.
    pub fn replica(&self) -> Builder {
        let mut builder = TestApp::builder();
        builder.env = self.env.clone();
        builder.env.retain(|(k, _)| k != "KEYGATE_DATA_DIR");
        builder.db = self.db.clone();
        builder.process = self.is_process();
        builder
    }

    /// The PostgreSQL database this app uses, if any.
    pub fn db(&self) -> Option<&PgDatabase> {
        self.db.as_deref()
    }

    /// The clock this server's time comes from (`Builder::manual_clock`).
    pub fn clock(&self) -> &ManualClock {
        self.clock.as_ref().expect("built with Builder::manual_clock")
    }

    /// Settings given to this app (`KEYGATE_…`).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Stops this server and starts a new one on the same store and settings.
    pub async fn restart(mut self) -> TestApp {
        self.kill();
        let process = self.is_process();
        TestApp::start(
            self.dir.clone(),
            self.env.clone(),
            self.db.clone(),
            process,
            false,
            self.clock.clone(),
            self.turn.clone(),
        )
        .await
    }

    /// Stops the server at once, as `kill -9` stops a process.
    pub fn kill(&mut self) {
        match &mut self.server {
            Server::InProcess(app) => app.kill(),
            Server::Process(process) => process.kill(),
        }
    }

    /// Waits until the server process exits by itself; how it exited, once all it logged is
    /// in `logs`.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        match &mut self.server {
            Server::Process(process) => process.wait(limit).await,
            Server::InProcess(_) => panic!("only a process exits by itself: build it with `.process()`"),
        }
    }

    /// Stops the server process as a service manager would (SIGTERM); returns how it exited,
    /// once all it logged is in `logs`.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        match &mut self.server {
            Server::Process(process) => process.terminate().await,
            Server::InProcess(_) => panic!("only a process can be terminated: build it with `.process()`"),
        }
    }

    /// Whether the server's caches answer (loaded, and the change log read within the
    /// lease); only an app in this process can tell.
    pub fn caches_in_use(&self) -> bool {
        match &self.server {
            Server::InProcess(app) => app.caches_in_use(),
            Server::Process(_) => panic!("the caches of a process cannot be seen from here"),
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
        self.new_client()
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
    /// The server first: the data directory it writes may go with the fields.
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

// --- Helpers for the abuse-resistance tests (security, load). ---

impl TestApp {
    /// The server process, for reading its resource use from /proc.
    pub fn pid(&self) -> u32 {
        match &self.server {
            Server::Process(process) => process.pid(),
            Server::InProcess(_) => panic!("an app in this process has no pid of its own: build it with `.process()`"),
        }
    }

    /// One admin login attempt with a fresh, cookie-less client; the raw response.
    pub async fn try_admin_login(&self, email: &str, password: &str) -> Response {
        self.new_client()
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
