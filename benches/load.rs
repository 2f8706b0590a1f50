//! The load benchmark: `cargo bench --bench load` (options after `--`: `--keys N`,
//! `--duration SECONDS`, `--rounds N`, `--connections N`,
//! `--only verify,login,token,admin,mixed,list`, `--signing-alg ES256|EdDSA`,
//! `--wrk-sched batch|normal`).
//!
//! Builds in release, seeds a temporary store with N keys, starts keygate and a hello-world
//! server on the same HTTP stack, drives each scenario with wrk (same threads, connections
//! and duration), and prints req/s, p50, p99 and failures with the ratio to the baseline
//! measured in the same run, plus peak RSS and start-up time. Figures, not assertions.
//! Scenarios judged by a ratio run in interleaved rounds with their references.
//! `/auth/verify` also gets a second reference: the hello-world answering with a verify
//! 200's headers, which is what the response alone costs.
//! In those rounds wrk runs under `SCHED_BATCH` (see `Options::wrk_batch`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use keygate::{
    bootstrap,
    clock::Clock,
    config::{Settings, SettingsArgs},
    domain::{ApiKeyId, ApiPassword, Consistency, Email, KeyRef, LimitInput, Limits, Scopes},
    startup,
    store::{KeyAbout, KeyRecord},
};

// The hello-world runs in this process: the same allocator as keygate, so the baseline is
// the same stack in that too.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ADMIN_EMAIL: &str = "bench@example.com";
const ADMIN_PASSWORD: &str = "bench admin password";
/// Keys whose passwords the load scripts use, rotating, so no cache sees a single key.
const HOT_KEYS: usize = 64;

const SCENARIOS: [&str; 6] = ["verify", "login", "token", "admin", "mixed", "list"];

const BASELINE: &str = "hello-world baseline (GET)";
const VERIFY: &str = "GET /auth/verify";
const VERIFY_FAST: &str = "GET /auth/verify, one fast limit";
const VERIFY_STRICT: &str = "GET /auth/verify, one strict limit (SQLite: in memory)";
const VERIFY_STRICT_REDIS: &str = "GET /auth/verify, one strict limit (Redis)";
const VERIFY_STRICT_POSTGRES: &str = "GET /auth/verify, one strict limit (PostgreSQL)";
const SHAPED: &str = "  hello-world answering as a verify 200";
const LOGIN: &str = "POST /auth/login (API key)";
const TOKEN: &str = "POST /oauth/token";
const OIDC: &str = "  oidc-provider 9, POST /token (Node)";

struct Options {
    keys: usize,
    duration: u64,
    /// How many times each scenario judged by a ratio runs, interleaved with its reference.
    rounds: usize,
    connections: usize,
    /// Scenarios to run (`--only verify,login`); all when empty. The baseline always runs.
    only: Vec<String>,
    /// `KEYGATE_SIGNING_ALG` for the server; its default when unset.
    signing_alg: Option<String>,
    /// Whether wrk runs under `SCHED_BATCH` in the rounds (`--wrk-sched batch`, the default).
    /// wrk stands in for clients on other machines but shares the cores with the server here,
    /// and under the default policy a wrk thread woken by an answer preempts the server on the
    /// spot. A login keeps a worker busy long enough (a signature) for that to follow most
    /// answers, so keygate would pay a preemption and a resumption per login, and wrk a sleep
    /// and a wake-up, which remote clients never cause; a hello-world, answered faster, barely
    /// notices. A batch thread keeps its fair share of the CPU but never preempts on waking.
    /// The other scenarios keep the default policy: under the admin flood a batch wrk would
    /// wait for the scheduler tick behind the hashing threads, a delay remote clients do not
    /// have either.
    wrk_batch: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut o = Options {
            keys: 100_000,
            duration: 10,
            rounds: 3,
            connections: 64,
            only: Vec::new(),
            signing_alg: None,
            wrk_batch: true,
        };
        let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--keys" => o.keys = value.parse()?,
                "--duration" => o.duration = value.parse()?,
                "--rounds" => o.rounds = value.parse::<usize>()?.max(1),
                "--connections" => o.connections = value.parse()?,
                "--only" => {
                    o.only = value.split(',').map(str::to_owned).collect();
                    if let Some(unknown) = o.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                        bail!("unknown scenario {unknown} (expected some of {})", SCENARIOS.join(","));
                    }
                }
                "--signing-alg" => o.signing_alg = Some(value),
                "--wrk-sched" => {
                    o.wrk_batch = match value.as_str() {
                        "batch" => true,
                        "normal" => false,
                        other => bail!("unknown --wrk-sched {other} (expected batch or normal)"),
                    }
                }
                other => {
                    bail!(
                        "unknown option {other} (expected --keys, --duration, --rounds, --connections, --only, \
                         --signing-alg, --wrk-sched)"
                    )
                }
            }
        }
        o.keys = o.keys.max(HOT_KEYS);
        Ok(o)
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[derive(Debug, Default)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    failures: u64,
    /// CPU time the server under test spent per request.
    server: Option<CpuPerRequest>,
}

/// In µs. The kernel's share says how much of a request is the network stack and the
/// scheduler rather than the server's own code.
#[derive(Debug, Clone, Copy)]
struct CpuPerRequest {
    total: f64,
    kernel: f64,
}

impl std::fmt::Display for CpuPerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} ({:.1})", self.total, self.kernel)
    }
}

impl WrkResult {
    /// The median over rounds of req/s, p50 and p99; failures of every round.
    fn over_rounds(runs: &[WrkResult]) -> WrkResult {
        let median_of = |f: fn(&WrkResult) -> f64| median(runs.iter().map(f).collect());
        WrkResult {
            rps: median_of(|r| r.rps),
            p50_ms: median_of(|r| r.p50_ms),
            p99_ms: median_of(|r| r.p99_ms),
            requests: runs.iter().map(|r| r.requests).sum(),
            failures: runs.iter().map(|r| r.failures).sum(),
            server: runs.iter().map(|r| r.server).collect::<Option<Vec<_>>>().map(|cpu| CpuPerRequest {
                total: median(cpu.iter().map(|c| c.total).collect()),
                kernel: median(cpu.iter().map(|c| c.kernel).collect()),
            }),
        }
    }

    fn brief(&self) -> String {
        let cpu = self.server.map_or(String::new(), |c| format!(", server CPU {c} µs/request (of which kernel)"));
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} failed{cpu}",
            self.rps, self.p50_ms, self.p99_ms, self.failures
        )
    }
}

/// One scenario's runs, one per round.
struct Series {
    name: &'static str,
    /// The server under test, whose CPU time is counted.
    pid: u32,
    url: String,
    script: Option<PathBuf>,
    runs: Vec<WrkResult>,
}

impl Series {
    fn new(name: &'static str, pid: u32, url: String, script: Option<&Path>) -> Self {
        Self { name, pid, url, script: script.map(Path::to_owned), runs: Vec::new() }
    }

    fn run(&mut self, connections: usize, seconds: u64, batch: bool) -> anyhow::Result<WrkResult> {
        let before = cpu_ticks(self.pid);
        let mut result = WrkRun::spawn(&self.url, self.script.as_deref(), connections, seconds, batch)?.finish()?;
        if let (Some((user0, kernel0)), Some((user1, kernel1))) = (before, cpu_ticks(self.pid)) {
            // Clock ticks are USER_HZ, 100 per second on Linux.
            let per_request = |ticks: u64| ticks as f64 * 1e4 / result.requests.max(1) as f64;
            let kernel = per_request(kernel1 - kernel0);
            result.server = Some(CpuPerRequest { total: per_request(user1 - user0) + kernel, kernel });
        }
        Ok(result)
    }

    fn summary(&self) -> WrkResult {
        WrkResult::over_rounds(&self.runs)
    }

    /// This series' rate over `reference`'s, round by round; the median of those.
    fn ratio(&self, reference: &Series) -> f64 {
        median(self.runs.iter().zip(&reference.runs).map(|(a, b)| a.rps / b.rps.max(1.0)).collect())
    }
}

/// Returns once the server has used less than a clock tick (10 ms) of CPU in 200 ms, or after
/// 5 s: admin logins a finished wrk run left queued go on hashing for up to a second.
fn settle(pid: u32) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_millis(200));
        match (before, cpu_ticks(pid)) {
            (Some((u0, k0)), Some((u1, k1))) if u1 + k1 - u0 - k0 > 0 => {}
            _ => return,
        }
    }
}

/// A process's CPU time so far, all threads, in clock ticks: (user, kernel). Linux only.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // the first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

struct Row {
    name: String,
    result: WrkResult,
    /// To the baseline: within rounds where both ran in them, else to its median.
    ratio: f64,
    target: String,
}

fn main() -> anyhow::Result<()> {
    // reqwest's rustls (a dev-dependency feature, for the TLS tests) takes the process's
    // crypto provider: keygate's own, aws-lc.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::args().nth(1).as_deref() == Some("__hello") {
        return hello_server(std::env::args().skip(2).collect());
    }
    let opts = Options::parse()?;
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is required: apt-get install wrk");
    }
    let batch_allowed =
        || Command::new("chrt").args(["--batch", "0", "true"]).output().is_ok_and(|o| o.status.success());
    if opts.wrk_batch && !batch_allowed() {
        bail!("--wrk-sched batch needs chrt (util-linux) and leave to use SCHED_BATCH; or pass --wrk-sched normal");
    }
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut env = server_env(dir.path());
    if let Some(alg) = &opts.signing_alg {
        env.push(("KEYGATE_SIGNING_ALG".into(), alg.clone()));
    }

    // 1. A store with an admin and a signing key, then N keys written straight into it.
    eprintln!("seeding {} keys…", opts.keys);
    let mut first = Server::start(&env)?;
    first.stop();
    let (hot, fast_hot, strict_hot) = runtime.block_on(seed(dir.path(), opts.keys))?;

    // 2. Start-up time on the seeded store.
    let started = Instant::now();
    let server = Server::start(&env)?;
    let startup = started.elapsed();
    let base = server.base.clone();
    let hello = Hello::start(&[])?;
    // The listing's session, taken before the admin flood: the flood's attempts cut off in
    // flight count as failed logins, so the admin may be locked out after it.
    let list_cookie = match opts.runs("list") {
        true => Some(runtime.block_on(session_cookie(&base))?),
        false => None,
    };

    let client = reqwest::Client::builder().cookie_store(true).build()?;
    let login_all = |keys: &[(String, String)]| {
        runtime.block_on(async {
            let mut tokens = Vec::new();
            for (key, password) in keys {
                let r = client
                    .post(format!("{base}/auth/login"))
                    .json(&serde_json::json!({"api_key": key, "password": password}))
                    .send()
                    .await?;
                tokens.push(r.json::<String>().await?);
            }
            anyhow::Ok(tokens)
        })
    };
    let tokens = login_all(&hot)?;
    let scripts = Scripts::write(dir.path(), &hot, &tokens)?;
    let verify_fast = verify_script(dir.path(), "verify_fast.lua", &login_all(&fast_hot)?)?;
    let verify_strict = verify_script(dir.path(), "verify_strict.lua", &login_all(&strict_hot)?)?;

    let d = opts.duration;
    let c = opts.connections;

    // What the response alone costs: the hello-world answering every request with a verify
    // 200's headers, driven by the same script (same tokens, same path).
    let shaped = match opts.runs("verify") {
        true => Some(Hello::start(&runtime.block_on(verify_headers(&client, &base, &tokens[0]))?)?),
        false => None,
    };
    let oidc = match opts.runs("token") {
        true => OidcProvider::start(dir.path())?,
        false => None,
    };
    // Strict limits in shared state: a keygate of their own each, on a fresh store.
    let redis = match opts.runs("verify") {
        true => RedisProcess::start()?,
        false => None,
    };
    let on_redis = match &redis {
        Some(redis) => {
            let mut env = server_env(&dir.path().join("redis"));
            env.push(("KEYGATE_REDIS_URL".into(), redis.url()));
            Some(StrictServer::start(&env, dir.path(), "verify_strict_redis.lua", &runtime)?)
        }
        None => None,
    };
    let postgres = match (opts.runs("verify"), std::env::var("KEYGATE_BENCH_POSTGRES")) {
        (true, Ok(url)) => Some(PgBenchDatabase::create(&url)?),
        _ => None,
    };
    let on_postgres = match &postgres {
        Some(db) => {
            let mut env = server_env(&dir.path().join("postgres"));
            env.push(("KEYGATE_DATABASE_URL".into(), db.url.clone()));
            env.push(("KEYGATE_MASTER_KEY".into(), base64_key()));
            env.push(("KEYGATE_ISSUER".into(), "http://keygate.bench".into()));
            Some(StrictServer::start(&env, dir.path(), "verify_strict_postgres.lua", &runtime)?)
        }
        None => None,
    };
    let keygate = server.child.id();
    let mut compared = vec![Series::new(BASELINE, hello.child.id(), format!("{}/", hello.base), None)];
    if let Some(shaped) = &shaped {
        compared.push(Series::new(VERIFY, keygate, format!("{base}/auth/verify"), Some(&scripts.verify)));
        compared.push(Series::new(VERIFY_FAST, keygate, format!("{base}/auth/verify"), Some(&verify_fast)));
        compared.push(Series::new(VERIFY_STRICT, keygate, format!("{base}/auth/verify"), Some(&verify_strict)));
        for (name, strict) in [(VERIFY_STRICT_REDIS, &on_redis), (VERIFY_STRICT_POSTGRES, &on_postgres)] {
            if let Some(strict) = strict {
                let url = format!("{}/auth/verify", strict.server.base);
                compared.push(Series::new(name, strict.server.child.id(), url, Some(&strict.script)));
            }
        }
        let url = format!("{}/auth/verify", shaped.base);
        compared.push(Series::new(SHAPED, shaped.child.id(), url, Some(&scripts.verify)));
    }
    if opts.runs("login") {
        compared.push(Series::new(LOGIN, keygate, format!("{base}/auth/login"), Some(&scripts.api_login)));
    }
    if opts.runs("token") {
        compared.push(Series::new(TOKEN, keygate, format!("{base}/oauth/token"), Some(&scripts.oauth_token)));
    }
    if let Some(oidc) = &oidc {
        compared.push(Series::new(OIDC, oidc.child.id(), format!("{}/token", oidc.base), Some(&scripts.oidc_token)));
    }
    // A shared machine's speed drifts from one minute to the next, by more than the
    // differences measured here. So everything that is judged by a ratio runs in rounds,
    // alternately in order and in reverse, each ratio is taken between the two runs of the
    // same round, and the median round's ratio is the one reported.
    // First one short pass of each, not counted: the first figures after the servers' start
    // (`npm ci` and node's start-up just before) come out low, which would lift that round's
    // ratios.
    for series in &compared {
        WrkRun::spawn(&series.url, series.script.as_deref(), c, 3, opts.wrk_batch)?.finish()?;
    }
    for round in 0..opts.rounds {
        let mut order: Vec<usize> = (0..compared.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let series = &mut compared[i];
            let result = series.run(c, d, opts.wrk_batch)?;
            eprintln!("  round {}/{}, {}: {}", round + 1, opts.rounds, series.name, result.brief());
            series.runs.push(result);
        }
    }
    let series = |name: &str| compared.iter().find(|s| s.name == name);
    let baseline = &compared[0];
    let baseline_summary = baseline.summary();
    let baseline_rps = baseline_summary.rps;

    let mut rows: Vec<Row> = Vec::new();
    let mut record = |name: &str, result: WrkResult, ratio: Option<f64>, target: String, server: &Server| {
        eprintln!(
            "  {name}: {}; keygate RSS {} / peak {}",
            result.brief(),
            server.rss_kib("VmRSS:").map_or("?".into(), mib),
            server.rss_kib("VmHWM:").map_or("?".into(), mib),
        );
        let ratio = ratio.unwrap_or(result.rps / baseline_rps);
        rows.push(Row { name: name.to_owned(), result, ratio, target });
    };
    record(BASELINE, baseline_summary, Some(1.0), String::new(), &server);
    if let (Some(verify), Some(shaped)) = (series(VERIFY), series(SHAPED)) {
        let ceiling = format!("verify at {:.2}× of this", verify.ratio(shaped));
        record(VERIFY, verify.summary(), Some(verify.ratio(baseline)), "≥ 0.80× baseline, p99 ≤ 5 ms".into(), &server);
        let limited = [
            (VERIFY_FAST, "≥ 0.90× plain verify"),
            (VERIFY_STRICT, "printed"),
            (VERIFY_STRICT_REDIS, "≥ 0.30× plain verify"),
            (VERIFY_STRICT_POSTGRES, "printed"),
        ];
        if redis.is_none() && opts.runs("verify") {
            eprintln!("no redis-server: the strict limit on Redis is not measured");
        }
        if postgres.is_none() && opts.runs("verify") {
            eprintln!("KEYGATE_BENCH_POSTGRES unset: the strict limit on PostgreSQL is not measured");
        }
        for (name, target) in limited {
            if let Some(limited) = series(name) {
                let target = format!("{target}: {:.2}× plain verify", limited.ratio(verify));
                record(name, limited.summary(), Some(limited.ratio(baseline)), target, &server);
            }
        }
        record(SHAPED, shaped.summary(), Some(shaped.ratio(baseline)), ceiling, &server);
    }
    if let Some(login) = series(LOGIN) {
        record(LOGIN, login.summary(), Some(login.ratio(baseline)), "≥ 0.35× baseline".into(), &server);
    }
    if let Some(token) = series(TOKEN) {
        let ratio = Some(token.ratio(baseline));
        match series(OIDC) {
            Some(reference) => {
                let target = format!("≥ 10× oidc-provider: {:.1}×", token.ratio(reference));
                record(TOKEN, token.summary(), ratio, target, &server);
                record(OIDC, reference.summary(), Some(reference.ratio(baseline)), String::new(), &server);
            }
            None => {
                let target = "≥ 10× oidc-provider (not run: needs node, npm and the npm registry)".into();
                record(TOKEN, token.summary(), ratio, target, &server);
            }
        }
    }
    if opts.runs("admin") {
        // Measured on both sides of the run, for the same reason as the rounds above.
        let before = argon2_reference_rate(Duration::from_secs(3));
        let admin = wrk(&format!("{base}/auth/login"), Some(&scripts.admin_login), 8, d)?;
        let argon2_rate = (before + argon2_reference_rate(Duration::from_secs(3))) / 2.0;
        let admin_share = admin.rps / argon2_rate;
        let target = format!("≥ 80% of argon2 rate ({argon2_rate:.0}/s here): {:.0}%", admin_share * 100.0);
        record("POST /auth/login (admin, 8 conns)", admin, None, target, &server);
    }
    if opts.runs("mixed") {
        // API-login latency alone, then with 32 admin logins running at once. In rounds too,
        // the median round's ratio reported: the idle p99 alone varies from run to run by
        // more than the target's margin. Each round starts once the server is quiet, or the
        // hashes still queued from the run before would count against the idle figure.
        let url = format!("{base}/auth/login");
        let names =
            ["API login, 8 conns, idle", "API login, 8 conns, + 32 admin logins", "  (the 32 admin logins meanwhile)"];
        let mut runs: [Vec<WrkResult>; 3] = Default::default();
        let mut ratios = Vec::new();
        for round in 0..opts.rounds {
            settle(keygate);
            let alone = wrk(&url, Some(&scripts.api_login), 8, d)?;
            let admin_flood = WrkRun::spawn(&url, Some(&scripts.admin_login), 32, d, false)?;
            let flooded = wrk(&url, Some(&scripts.api_login), 8, d)?;
            let admins = admin_flood.finish()?;
            ratios.push(flooded.p99_ms / alone.p99_ms.max(0.001));
            for ((name, series), result) in names.iter().zip(&mut runs).zip([alone, flooded, admins]) {
                eprintln!("  round {}/{}, {name}: {}", round + 1, opts.rounds, result.brief());
                series.push(result);
            }
        }
        let targets = [String::new(), format!("p99 ≤ 3× idle: {:.2}×", median(ratios)), String::new()];
        for ((name, series), target) in names.iter().zip(&runs).zip(targets) {
            record(name, WrkResult::over_rounds(series), None, target, &server);
        }
    }
    if let Some(cookie) = list_cookie {
        let url = format!("{base}/auth/keys/list?limit=100");
        let list = wrk_with_header(&url, &format!("Cookie: {cookie}"), 1, d.min(5))?;
        record("GET /auth/keys/list?limit=100 (1 conn)", list, None, "≤ 10 ms".into(), &server);
    }

    let rss = server.rss_kib("VmHWM:");
    print_table(&opts, &rows, startup, rss);
    drop(hello);
    drop(server);
    Ok(())
}

/// A keygate whose `HOT_KEYS` keys, made through its API, have one strict limit (too large
/// to be reached), and the wrk script verifying their tokens.
struct StrictServer {
    server: Server,
    script: PathBuf,
}

impl StrictServer {
    fn start(
        env: &[(String, String)],
        dir: &Path,
        script: &str,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let server = Server::start(env)?;
        let base = server.base.clone();
        let tokens = runtime.block_on(async {
            let cookie = session_cookie(&base).await?;
            let client = reqwest::Client::new();
            let body = serde_json::json!({
                "scopes": ["orders:read", "orders:write"],
                "limits": [{"name": "bench", "limit": 1_000_000_000_000u64, "window_seconds": 60, "consistency": "strict"}],
            });
            let mut tokens = Vec::new();
            for _ in 0..HOT_KEYS {
                let generate = client.post(format!("{base}/auth/keys/generate")).header("cookie", &cookie);
                let key: serde_json::Value = generate.json(&body).send().await?.json().await?;
                let login = serde_json::json!({"api_key": key["api_key"], "password": key["password"]});
                let r = client.post(format!("{base}/auth/login")).json(&login).send().await?;
                tokens.push(r.json::<String>().await?);
            }
            anyhow::Ok(tokens)
        })?;
        Ok(Self { script: verify_script(dir, script, &tokens)?, server })
    }
}

/// A redis-server of the benchmark's own, keeping nothing on disk.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    /// `None` when there is no redis-server to run.
    fn start() -> anyhow::Result<Option<Self>> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Some(Self { child, port }))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database of the benchmark's own on the PostgreSQL server `KEYGATE_BENCH_POSTGRES`
/// names (e.g. postgres://postgres@127.0.0.1:5432), made and dropped with psql.
struct PgBenchDatabase {
    server: String,
    name: String,
    url: String,
}

impl PgBenchDatabase {
    fn create(server: &str) -> anyhow::Result<Self> {
        let server = server.trim_end_matches('/').to_owned();
        let name = format!("keygate_bench_{}", std::process::id());
        let db = Self { url: format!("{server}/{name}"), server, name };
        db.psql(&format!("DROP DATABASE IF EXISTS {}", db.name))?;
        db.psql(&format!("CREATE DATABASE {}", db.name))?;
        Ok(db)
    }

    fn psql(&self, statement: &str) -> anyhow::Result<()> {
        let out = Command::new("psql").args(["-w", "-X", "-q", "-d", &self.server, "-c", statement]).output()?;
        anyhow::ensure!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}

impl Drop for PgBenchDatabase {
    fn drop(&mut self) {
        let _ = self.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// A fresh `KEYGATE_MASTER_KEY`.
fn base64_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(keygate::crypto::random_bytes::<32>())
}

/// keygate's defaults but for the address, the data directory, a first admin and cookies
/// without `Secure` (plain HTTP here). Logging included: these are a default install's figures.
fn server_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        ("KEYGATE_LISTEN".into(), "127.0.0.1:0".into()),
        ("KEYGATE_DATA_DIR".into(), dir.join("data").display().to_string()),
        ("KEYGATE_COOKIE_SECURE".into(), "false".into()),
        ("KEYGATE_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
        ("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
    ]
}

/// Credentials of the keys the load scripts use.
type Hot = Vec<(String, String)>;

/// Writes `count` keys into the admin's account, and `HOT_KEYS` more with one fast limit and
/// as many with one strict limit (too large to be reached); returns the credentials of the
/// first `HOT_KEYS` plain keys, then of the limited ones.
async fn seed(dir: &Path, count: usize) -> anyhow::Result<(Hot, Hot, Hot)> {
    let args = SettingsArgs { data_dir: Some(dir.join("data")), ..Default::default() };
    let settings = Settings::load(&args, |_| None)?;
    let store = startup::open_store(&settings).await?;
    let hasher = startup::api_password_hasher(&bootstrap::master_key(&settings)?);
    let account = store
        .find_admin(&Email::parse(ADMIN_EMAIL).map_err(|e| anyhow::anyhow!(e))?)
        .await?
        .context("the bootstrap admin exists")?
        .account_id;
    let (mut hot, mut fast, mut strict) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count + 2 * HOT_KEYS {
        let limited = match i.checked_sub(count) {
            None => None,
            Some(j) if j < HOT_KEYS => Some("fast"),
            Some(_) => Some("strict"),
        };
        let limits = match limited {
            None => Limits::default(),
            Some(consistency) => {
                let limit = LimitInput {
                    name: "bench".into(),
                    limit: 1_000_000_000_000,
                    window_seconds: 60,
                    consistency: if consistency == "fast" { Consistency::Fast } else { Consistency::Strict },
                };
                Limits::parse(&[limit]).map_err(|e| anyhow::anyhow!(e))?
            }
        };
        let password = ApiPassword::generate();
        let record = KeyRecord {
            key_ref: KeyRef::generate(),
            account_id: account,
            api_key: ApiKeyId::generate(),
            secret_hash: hasher.hash(&password).to_vec(),
            // Keys with scopes, which every token carries and the verify scenario requires.
            scopes: Scopes::parse(&["orders:read", "orders:write"]).map_err(|e| anyhow::anyhow!(e))?,
            created_at: Clock::system().now(),
            expires_at: None,
            enabled: true,
            previous: None,
        };
        store.insert_key(&record, &KeyAbout { limits, ..Default::default() }).await?;
        let credentials = (record.api_key.to_string(), password.expose().to_owned());
        match limited {
            None if i < HOT_KEYS => hot.push(credentials),
            None => {}
            Some("fast") => fast.push(credentials),
            Some(_) => strict.push(credentials),
        }
    }
    Ok((hot, fast, strict))
}

/// A wrk script verifying `tokens` in turn, as the plain verify scenario does.
fn verify_script(dir: &Path, name: &str, tokens: &[String]) -> anyhow::Result<PathBuf> {
    let list: String = tokens
        .iter()
        .map(|t| format!("    wrk.format(\"GET\", \"/auth/verify?scope=orders:read\", {{[\"Authorization\"] = \"Bearer {t}\"}}),\n"))
        .collect();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "local requests = {{}}\nlocal i = 0\ninit = function()\n  requests = {{\n{list}  }}\nend\n\
             request = function()\n  i = i % #requests + 1\n  return requests[i]\nend\n"
        ),
    )?;
    Ok(path)
}

/// A verify 200's headers as keygate sends them, minus those hyper adds itself.
async fn verify_headers(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<Vec<String>> {
    let r = client.get(format!("{base}/auth/verify")).bearer_auth(token).send().await?.error_for_status()?;
    let mut headers = Vec::new();
    for (name, value) in r.headers() {
        if name != "date" && name != "content-length" {
            headers.extend([name.as_str().to_owned(), value.to_str()?.to_owned()]);
        }
    }
    Ok(headers)
}

async fn session_cookie(base: &str) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await?;
    let cookie = r.headers().get("set-cookie").context("session cookie")?.to_str()?;
    Ok(cookie.split(';').next().unwrap_or_default().to_owned())
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts the release binary and returns once `/healthz` answers 200.
    fn start(env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        for (key, _) in std::env::vars() {
            if key.starts_with("KEYGATE_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines.next().context("keygate exited before listening")??;
            if let Some(addr) = line.split("listening on ").nth(1) {
                break addr.trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = base.trim_start_matches("http://").to_owned();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Self { child, base })
    }

    /// A memory figure from /proc/PID/status, in KiB: `VmHWM:` (peak RSS) or `VmRSS:`.
    fn rss_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The baseline: axum's hello world on the same runtime configuration and allocator, in its
/// own process.
/// Given headers (name, value, name, value…), it also answers any other path with a 200
/// carrying them and no body.
struct Hello {
    child: Child,
    base: String,
}

impl Hello {
    fn start(headers: &[String]) -> anyhow::Result<Self> {
        let mut child =
            Command::new(std::env::current_exe()?).arg("__hello").args(headers).stdout(Stdio::piped()).spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        Ok(Self { child, base: format!("http://{}", line.trim()) })
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hello_server(headers: Vec<String>) -> anyhow::Result<()> {
    use axum::{
        http::{HeaderMap, HeaderName, HeaderValue},
        serve::ListenerExt,
    };
    // Static names and values, each response's map built from them: the cheapest way to send
    // this shape. A clone of one shared map would cost two atomic reference-count updates
    // per header, on cache lines both workers write.
    let mut fixed: Vec<(&'static str, &'static str)> = Vec::new();
    for pair in headers.chunks_exact(2) {
        HeaderName::try_from(&pair[0])?;
        HeaderValue::try_from(&pair[1])?;
        fixed.push((pair[0].clone().leak(), pair[1].clone().leak()));
    }
    let shaped = move || {
        let mut map = HeaderMap::with_capacity(fixed.len());
        for (name, value) in &fixed {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        std::future::ready(map)
    };
    // keygate's own runtime, workers pinned as keygate pins them by default, and its sockets.
    keygate::runtime::build(true)?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" })).fallback(shaped);
        axum::serve(listener.tap_io(|s: &mut tokio::net::TcpStream| keygate::listener::no_delay(s)), app).await?;
        anyhow::Ok(())
    })
}

/// The reference for `/oauth/token`: oidc-provider (a certified OAuth 2.0 server for Node)
/// issuing ES256 JWT access tokens by client credentials, from `benches/oidc-provider`
/// (versions pinned by its package-lock.json). Runs only where node and npm are installed.
struct OidcProvider {
    child: Child,
    base: String,
}

const OIDC_CLIENT_ID: &str = "bench";
/// Made up for each run: the client exists only in that throwaway server.
fn oidc_client_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| ApiPassword::generate().expose().to_owned())
}

impl OidcProvider {
    fn start(scratch: &Path) -> anyhow::Result<Option<Self>> {
        let present = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        if !present("node") || !present("npm") {
            return Ok(None);
        }
        let dir = scratch.join("oidc-provider");
        std::fs::create_dir_all(&dir)?;
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/oidc-provider");
        for file in ["package.json", "package-lock.json", "server.mjs"] {
            std::fs::copy(source.join(file), dir.join(file))?;
        }
        eprintln!("installing oidc-provider (npm ci)…");
        let installed =
            Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--silent"]).current_dir(&dir).status()?;
        if !installed.success() {
            // No registry (offline) must not cost the rest of the run.
            eprintln!("npm ci failed; /oauth/token is reported without its reference");
            return Ok(None);
        }
        let mut child = Command::new("node")
            .arg("server.mjs")
            .env("OIDC_CLIENT_SECRET", oidc_client_secret())
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let this = Self { child, base: format!("http://{}", line.trim()) };
        if line.trim().is_empty() {
            eprintln!("oidc-provider did not start; /oauth/token is reported without its reference");
            return Ok(None);
        }
        Ok(Some(this))
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Scripts {
    verify: PathBuf,
    api_login: PathBuf,
    oauth_token: PathBuf,
    admin_login: PathBuf,
    oidc_token: PathBuf,
}

impl Scripts {
    /// Each script formats its requests once, in `init`, and hands them out in turn: wrk
    /// shares the machine with the server, and building every request in Lua would spend
    /// CPU on the load generator that the baseline (a fixed request) does not.
    fn write(dir: &Path, hot: &[(String, String)], tokens: &[String]) -> anyhow::Result<Self> {
        let script = |name: &str, requests: Vec<String>| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            let list: String = requests.iter().map(|r| format!("    {r},\n")).collect();
            std::fs::write(
                &path,
                format!(
                    "local requests = {{}}\nlocal i = 0\ninit = function()\n  requests = {{\n{list}  }}\nend\n\
                     request = function()\n  i = i % #requests + 1\n  return requests[i]\nend\n"
                ),
            )?;
            Ok(path)
        };
        let json = "{[\"Content-Type\"] = \"application/json\"}";
        let form = "{[\"Content-Type\"] = \"application/x-www-form-urlencoded\"}";
        Ok(Self {
            verify: script(
                "verify.lua",
                tokens
                    .iter()
                    .map(|t| {
                        let request = "wrk.format(\"GET\", \"/auth/verify?scope=orders:read\"";
                        format!("{request}, {{[\"Authorization\"] = \"Bearer {t}\"}})")
                    })
                    .collect(),
            )?,
            api_login: script(
                "api_login.lua",
                hot.iter()
                    .map(|(k, p)| {
                        format!("wrk.format(\"POST\", \"/auth/login\", {json}, '{{\"api_key\":\"{k}\",\"password\":\"{p}\"}}')")
                    })
                    .collect(),
            )?,
            oauth_token: script(
                "oauth_token.lua",
                hot.iter()
                    .map(|(k, p)| {
                        format!(
                            "wrk.format(\"POST\", \"/oauth/token\", {form}, \
                             'grant_type=client_credentials&client_id={k}&client_secret={p}')"
                        )
                    })
                    .collect(),
            )?,
            admin_login: script(
                "admin_login.lua",
                vec![format!(
                    "wrk.format(\"POST\", \"/auth/login\", {json}, \
                     '{{\"email\":\"{ADMIN_EMAIL}\",\"password\":\"{ADMIN_PASSWORD}\"}}')"
                )],
            )?,
            oidc_token: script(
                "oidc_token.lua",
                vec![format!(
                    "wrk.format(\"POST\", \"/token\", {form}, \
                     'grant_type=client_credentials&client_id={OIDC_CLIENT_ID}&client_secret={}&scope=api')",
                    oidc_client_secret()
                )],
            )?,
        })
    }
}

fn wrk_command(
    url: &str,
    script: Option<&Path>,
    header: Option<&str>,
    connections: usize,
    seconds: u64,
    batch: bool,
) -> Command {
    let mut cmd = Command::new(if batch { "chrt" } else { "wrk" });
    if batch {
        cmd.args(["--batch", "0", "wrk"]);
    }
    // wrk refuses fewer connections than threads.
    let threads = connections.clamp(1, 2);
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
        "--timeout",
        "10s",
    ]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    if let Some(header) = header {
        cmd.args(["-H", header]);
    }
    cmd.arg(url);
    cmd
}

fn wrk(url: &str, script: Option<&Path>, connections: usize, seconds: u64) -> anyhow::Result<WrkResult> {
    WrkRun::spawn(url, script, connections, seconds, false)?.finish()
}

fn wrk_with_header(url: &str, header: &str, connections: usize, seconds: u64) -> anyhow::Result<WrkResult> {
    let out = wrk_command(url, None, Some(header), connections, seconds, false).output()?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

struct WrkRun(Child);

impl WrkRun {
    fn spawn(url: &str, script: Option<&Path>, connections: usize, seconds: u64, batch: bool) -> anyhow::Result<Self> {
        Ok(Self(wrk_command(url, script, None, connections, seconds, batch).stdout(Stdio::piped()).spawn()?))
    }

    fn finish(self) -> anyhow::Result<WrkResult> {
        let out = self.0.wait_with_output()?;
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    }
}

/// A run that completed nothing is a result too (admin logins starved by an API flood, say);
/// output without wrk's summary line is not.
fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut summary = false;
    for line in out.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse()?,
            ["50%", v] => r.p50_ms = millis(v)?,
            ["99%", v] => r.p99_ms = millis(v)?,
            [n, "requests", "in", ..] => {
                r.requests = n.parse()?;
                summary = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.failures += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                r.failures += rest.iter().filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
    }
    if !summary {
        bail!("not wrk's output:\n{out}");
    }
    Ok(r)
}

fn millis(v: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unexpected latency {v}")
    };
    Ok(number.parse::<f64>()? * scale)
}

/// Admin logins per second the machine allows: argon2id with keygate's parameters on every
/// core, each thread reusing one buffer as keygate's hashing threads do (a fresh 19 MiB per
/// hash would add page faults the server does not pay).
fn argon2_reference_rate(for_how_long: Duration) -> f64 {
    use argon2::{Algorithm, Argon2, Block, Version};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let params = keygate::crypto::admin_password_params();
                let mut memory = vec![Block::default(); params.block_count()];
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let mut hash = [0u8; 32];
                let mut n = 0u64;
                while start.elapsed() < for_how_long {
                    argon
                        .hash_password_into_with_memory(
                            b"bench admin password",
                            b"benchmark-salt-16",
                            &mut hash,
                            &mut memory,
                        )
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn print_table(opts: &Options, rows: &[Row], startup: Duration, rss: Option<u64>) {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(
        out,
        "\nkeygate load benchmark — {} keys, wrk -t2 -c{} -d{}s, {} rounds (wrk {}), {cores} cores, signing {}\n",
        opts.keys,
        opts.connections,
        opts.duration,
        opts.rounds,
        if opts.wrk_batch { "under SCHED_BATCH" } else { "at the default policy" },
        opts.signing_alg.as_deref().unwrap_or("ES256 (default)")
    );
    let _ = writeln!(
        out,
        "| scenario | req/s | p50 ms | p99 ms | failed | server CPU µs/req (kernel) | × baseline | target |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for Row { name, result: r, ratio, target } in rows {
        let cpu = r.server.map_or(String::new(), |c| c.to_string());
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {cpu} | {ratio:.2} | {target} |",
            r.rps, r.p50_ms, r.p99_ms, r.failures
        );
    }
    let _ = writeln!(
        out,
        "\nstart-up to /healthz 200 with {} keys: {:.0} ms (target ≤ 200 ms)",
        opts.keys,
        startup.as_secs_f64() * 1000.0
    );
    match rss {
        Some(kib) => {
            let _ = writeln!(out, "keygate peak RSS (VmHWM): {} (target ≤ 64 MiB)", mib(kib));
        }
        None => {
            let _ = writeln!(out, "keygate peak RSS: not available on this platform");
        }
    }
    println!("{out}");
}
