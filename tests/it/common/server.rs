//! How a test's server runs. In this process by default: `Application::build` on a runtime
//! and threads of its own, as the binary would run it, with the address known as soon as it
//! is bound. As the real binary (`Builder::process`) for what only a process has: signals,
//! exit codes, its stderr, its memory, its umask; its address is then chosen here and it is
//! ready once `/readyz` answers (`/healthz` answers earlier, while it waits for its
//! database). Neither waits for a log line.

use std::{
    cell::RefCell,
    ffi::OsStr,
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, Weak},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use keygate::{
    clock::Clock,
    config::{Settings, SettingsArgs},
    startup::Application,
    store::CachedStore,
};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, oneshot};

/// How long a server may take to start before the test fails.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Everything one server logged, line by line.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<String>>);

impl Logs {
    pub fn text(&self) -> String {
        self.lines().clone()
    }

    fn push_line(&self, line: &str) {
        let mut logs = self.lines();
        logs.push_str(line);
        logs.push('\n');
    }

    /// Whoever panicked holding the lock left whole lines: the text is still good.
    fn lines(&self) -> std::sync::MutexGuard<'_, String> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines().push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The settings `keygate serve` would read from exactly `env`: each `KEYGATE_…` variable that
/// is a flag's is given as that flag, the rest (secrets) through `Settings::load`'s lookup,
/// and nothing comes from this test process's own environment.
fn settings(env: &[(String, String)]) -> Result<Settings, String> {
    use clap::{Args, FromArgMatches};
    let command = SettingsArgs::augment_args(clap::Command::new("keygate"));
    let mut argv = vec!["keygate".to_owned()];
    for (key, value) in env {
        let flag = command.get_arguments().find(|arg| arg.get_env() == Some(OsStr::new(key)));
        if let Some(long) = flag.and_then(|arg| arg.get_long()) {
            argv.push(format!("--{long}={value}"));
        }
    }
    let command = command.mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    let args = SettingsArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    Settings::load(&args, |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).map_err(|e| e.to_string())
}

/// A server in this process. Dropping it stops the server as a killed process stops: its
/// runtime goes, and with it every task, connection and pool it held.
pub struct InProcess {
    cache: Arc<CachedStore>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Builds and starts the application; returns once it listens, with its address.
    pub async fn start(env: &[(String, String)], logs: &Logs, clock: Clock) -> (String, InProcess) {
        let settings = settings(env).unwrap_or_else(|e| panic!("keygate did not start: {e}"));
        let tls = settings.tls.is_some();
        // The lines the binary would write to stderr, in the format it writes them.
        let filter = tracing_subscriber::EnvFilter::new(&settings.log_filter);
        let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer({
            let logs = logs.clone();
            move || logs.clone()
        });
        let dispatch = match settings.log_format {
            keygate::config::LogFormat::Text => tracing::Dispatch::new(subscriber.finish()),
            keygate::config::LogFormat::Json => tracing::Dispatch::new(subscriber.json().finish()),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (kill, killed) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("keygate".into())
            .spawn(move || {
                // Every thread of this server logs to this server's lines, and only there.
                let _logging = tracing::dispatcher::set_default(&dispatch);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .on_thread_start(move || log_to(&dispatch))
                    .on_thread_stop(stop_logging)
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let app = match Application::build_with_clock(&settings, clock).await {
                        Ok(app) => app,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{e:#}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(app.local_addr().map(|addr| (addr, app.cache())).map_err(|e| e.to_string()));
                    tokio::select! {
                        _ = app.run_until(std::future::pending()) => {}
                        _ = killed => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(10));
            })
            .unwrap();
        let (addr, cache) = match tokio::time::timeout(START_LIMIT, ready_rx).await {
            Ok(Ok(Ok(ready))) => ready,
            Ok(Ok(Err(e))) => panic!("keygate did not start: {e}\n{}", logs.text()),
            Ok(Err(_)) => panic!("keygate's thread ended before it listened:\n{}", logs.text()),
            Err(_) => panic!("keygate did not start within {START_LIMIT:?}:\n{}", logs.text()),
        };
        let scheme = if tls { "https" } else { "http" };
        (format!("{scheme}://{addr}"), InProcess { cache, kill: Some(kill), thread: Some(thread) })
    }

    /// Whether the caches answer: loaded, and the change log read within the lease.
    pub fn caches_in_use(&self) -> bool {
        self.cache.is_trusted()
    }

    /// Stops the server and waits until everything it ran is gone.
    pub fn kill(&mut self) {
        self.kill.take();
        // A second panic, while a failing test unwinds, would abort every other test.
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the server's thread panicked");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

thread_local! {
    static LOGGING: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

fn log_to(dispatch: &tracing::Dispatch) {
    LOGGING.with(|logging| *logging.borrow_mut() = Some(tracing::dispatcher::set_default(dispatch)));
}

fn stop_logging() {
    LOGGING.with(|logging| logging.borrow_mut().take());
}

/// The `keygate serve` process, with its stderr collected line by line.
pub struct Process {
    child: Child,
    stderr: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts `keygate serve` with `env` on a port picked here; returns once `/readyz`
    /// answers there, or with `live_only` once `/healthz` does.
    pub async fn start(env: &[(String, String)], logs: &Logs, live_only: bool) -> (String, Process) {
        let command = |env: &[(String, String)]| {
            let mut command = super::keygate_command(env);
            command.arg("serve");
            command
        };
        Self::start_waiting(env, logs, command, if live_only { "/healthz" } else { "/readyz" }).await
    }

    /// As `start`, with the process started by `command` from the settings it is to have.
    pub async fn start_with(
        env: &[(String, String)],
        logs: &Logs,
        command: impl Fn(&[(String, String)]) -> Command,
    ) -> (String, Process) {
        Self::start_waiting(env, logs, command, "/readyz").await
    }

    async fn start_waiting(
        env: &[(String, String)],
        logs: &Logs,
        command: impl Fn(&[(String, String)]) -> Command,
        probe: &str,
    ) -> (String, Process) {
        // The port is free when picked, but something may bind it before keygate does: then
        // keygate stops at once, and another port is tried.
        for _ in 0..5 {
            let port = unclaimed_port();
            let mut env = env.to_vec();
            env.retain(|(k, _)| k != "KEYGATE_LISTEN");
            env.push(("KEYGATE_LISTEN".into(), format!("127.0.0.1:{port}")));
            let mut process = Process::spawn(command(&env), logs);
            let scheme = if env.iter().any(|(k, _)| k == "KEYGATE_TLS_CERT") { "https" } else { "http" };
            let base = format!("{scheme}://127.0.0.1:{port}");
            match process.wait_until_serving(&base, probe, &env).await {
                Ok(()) => return (base, process),
                Err(_) if logs.text().contains("cannot listen on") => continue,
                Err(status) => panic!("keygate did not start ({status:?}):\n{}", logs.text()),
            }
        }
        panic!("keygate found no free port:\n{}", logs.text())
    }

    /// Runs `command`, its stderr going to `logs`.
    fn spawn(mut command: Command, logs: &Logs) -> Process {
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start keygate");
        let stderr = child.stderr.take().expect("stderr");
        let logs = logs.clone();
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                logs.push_line(&line);
            }
        });
        Process { child, stderr: Some(stderr) }
    }

    /// Polls `base`'s `probe` until it answers 200; the exit status instead if the process
    /// ends first (`None`: still running at the limit, and now killed).
    async fn wait_until_serving(
        &mut self,
        base: &str,
        probe: &str,
        env: &[(String, String)],
    ) -> Result<(), Option<ExitStatus>> {
        let client = super::client_for(env).timeout(Duration::from_secs(5)).build().unwrap();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.finish_logs();
                return Err(Some(status));
            }
            let health = client.get(format!("{base}{probe}")).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process exits by itself; its exit status, once its stderr is read.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.finish_logs();
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish_logs();
    }

    /// Sends SIGTERM, as a service manager stops a service; returns how the process exited,
    /// once everything it wrote to stderr has been read.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.finish_logs();
                return status;
            }
            assert!(Instant::now() < deadline, "still running 30 s after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Once the process has exited: reads its stderr to the end.
    fn finish_logs(&mut self) {
        if let Some(reader) = self.stderr.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port below the kernel's range for port 0 and outgoing connections: not one that
/// this run's other servers (all on port 0) or clients can be given meanwhile, and so not
/// one where another server could answer in place of the one started for it.
fn unclaimed_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low = range.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(32_768);
    let (first, count) = (10_000, low.saturating_sub(10_000));
    if count < 1_000 {
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    loop {
        let pick = u16::from_le_bytes(keygate::crypto::random_bytes::<2>()) % count;
        let port = first + pick;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Tests that measure the server take turns with every other test's servers, so that what
/// they measure is not another test's load: each test holds a shared turn while any of its
/// servers runs, and such a test (`Builder::alone`) the one exclusive turn.
static TURNS: RwLock<()> = RwLock::const_new(());

/// Held, never read: the turn lasts as long as the guard.
#[allow(dead_code)]
pub enum Turn {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

thread_local! {
    /// The turn of the test running on this thread (libtest gives each test a thread of its
    /// own, and `#[tokio::test]` runs it there), shared by all of its servers.
    static TURN: RefCell<Weak<Turn>> = const { RefCell::new(Weak::new()) };
}

/// This test's turn, taken if it holds none yet: a second server of the same test must not
/// queue behind a test waiting to run alone, which waits for the first to end.
pub async fn take_turn(alone: bool) -> Arc<Turn> {
    if let Some(turn) = TURN.with(|turn| turn.borrow().upgrade()) {
        assert!(!alone || matches!(*turn, Turn::Alone(_)), "a test runs alone from its first server on");
        return turn;
    }
    let turn = Arc::new(if alone { Turn::Alone(TURNS.write().await) } else { Turn::Shared(TURNS.read().await) });
    TURN.with(|current| *current.borrow_mut() = Arc::downgrade(&turn));
    turn
}
