//! Abuse under load: a flood of expensive logins, and what timing reveals. These tests
//! measure the server, so each runs alone (`Builder::alone`) rather than share the
//! machine's cores with other tests' servers.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::{Client, StatusCode};
use serde_json::json;

const FLOOD: usize = 200;

backends! {
async fn an_admin_login_flood_is_refused_fast_and_starves_nothing(builder: Builder) {
    // The lockout admits only a few attempts per email and address at once, which would
    // keep this flood off the pool altogether: out of the way, so the pool's bound is tested.
    // A process of its own, whose memory is the server's alone.
    let app = without_lockout(builder).process().spawn().await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    let rss_before = peak_rss_kib(app.pid());

    // Requests that must keep working while argon2 is saturated: liveness, API logins and
    // forward-auth verification.
    let token = app.token(&key, &password).await;
    // 200 admin logins at once, each on its own connection, with the right password so that
    // lockout plays no part: only the hashing pool's bound decides.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let url = app.url("/auth/login");
        let done = done_tx.clone();
        flood.push(tokio::spawn(async move {
            let r = Client::new()
                .post(url)
                .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let retry_after = r.headers().get("retry-after").is_some();
            let problem = r.headers().get("content-type").is_some_and(|v| v == "application/problem+json");
            let _ = done.send(status);
            (status, retry_after, problem)
        }));
    }
    drop(done_tx);

    // Wait for the first refusal: from then on the pool is saturated (every slot taken),
    // and the probes run against a server that is as busy with argon2 as it can get.
    let mut finished = 0;
    loop {
        let status = done_rx.recv().await.expect("the flood produced no refusal");
        finished += 1;
        if status != StatusCode::OK {
            break;
        }
    }
    let mut probes = Vec::new();
    for _ in 0..5 {
        probes.push(("healthz", Client::new().get(app.url("/healthz")).send().await.unwrap().status()));
        probes.push(("api login", app.api_login(&key, &password).await.status()));
        probes.push(("verify", app.verify(&token).await.status()));
    }
    // Admin logins still queued or hashing after the probes answered: the probes did run
    // while the pool was saturated, rather than after the flood.
    while done_rx.try_recv().is_ok() {
        finished += 1;
    }
    let in_flight_after_probes = FLOOD - finished;

    let mut ok = 0;
    let mut refused = 0;
    for task in flood {
        let (status, retry_after, problem) = task.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry_after && problem, "a refusal must be a problem with Retry-After");
                refused += 1;
            }
            other => panic!("admin login under flood answered {other}"),
        }
    }
    let rss_after = peak_rss_kib(app.pid());
    eprintln!(
        "flood of {FLOOD}: {ok} logged in, {refused} refused; {in_flight_after_probes} still in flight after the \
         probes; peak RSS {} MiB before, {} MiB after",
        rss_before / 1024,
        rss_after / 1024
    );

    for (name, status) in &probes {
        assert_eq!(*status, StatusCode::OK, "{name} failed during the flood");
    }
    assert!(in_flight_after_probes > 0, "the probes must overlap the flood");
    assert!(ok > 0, "the pool must keep serving admin logins");
    assert!(refused > 0, "excess admin logins must be refused, not queued without bound");
    // Each argon2 run needs 19 MiB. Unbounded, 200 at once would need ~3.8 GiB; on the
    // bounded pool each worker owns its buffer from the start, so the flood must not add
    // even two more buffers' worth to the peak.
    let growth = rss_after.saturating_sub(rss_before);
    assert!(growth < 38 * 1024, "the flood raised peak RSS by {} MiB: hashing memory is not bounded", growth / 1024);

    // And it is over: the server answers normally again.
    assert_eq!(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await.status(), StatusCode::OK);
}

async fn unknown_admin_email_takes_as_long_as_a_wrong_password(builder: Builder) {
    let app = without_lockout(builder).spawn().await;
    let client = Client::new();
    let attempt = |email: &'static str| {
        refused_login(client.post(app.url("/auth/login")).json(&json!({"email": email, "password": "wrong password 1"})))
    };
    let (known, unknown) = interleaved(25, || attempt(ADMIN_EMAIL), || attempt("nobody@example.com")).await;
    let ratio = median_ratio("admin login", &known, &unknown);
    // Without the dummy hash an unknown email answers in a small fraction of the time.
    assert!((0.5..=2.0).contains(&ratio), "unknown/known email timing ratio {ratio:.2}");
}
}

/// Lockout would answer early after a few failures; the timing tests are about the hash
/// alone. And no other test's servers share the machine meanwhile.
fn without_lockout(builder: Builder) -> Builder {
    builder.alone().env("KEYGATE_LOCKOUT_THRESHOLD", "1000").env("KEYGATE_LOCKOUT_ADDRESS_THRESHOLD", "100000")
}

/// How long a login takes to be refused with 401.
async fn refused_login(request: reqwest::RequestBuilder) -> Duration {
    let start = Instant::now();
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    start.elapsed()
}

/// The median of the unknown identity's samples over the known one's, printed with both.
fn median_ratio(what: &str, known: &[Duration], unknown: &[Duration]) -> f64 {
    let ratio = median(unknown).as_secs_f64() / median(known).as_secs_f64();
    eprintln!("{what} medians: known {:?}, unknown {:?}, ratio {ratio:.2}", median(known), median(unknown));
    ratio
}

/// `n` samples of each, alternating, so that drift in machine load hits both alike.
async fn interleaved<A, B, FA, FB>(n: usize, mut a: A, mut b: B) -> (Vec<Duration>, Vec<Duration>)
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: std::future::Future<Output = Duration>,
    FB: std::future::Future<Output = Duration>,
{
    // Warm-up: connection set-up and first-use costs are not what is measured.
    a().await;
    b().await;
    let (mut xs, mut ys) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if i % 2 == 0 {
            xs.push(a().await);
            ys.push(b().await);
        } else {
            ys.push(b().await);
            xs.push(a().await);
        }
    }
    (xs, ys)
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}
