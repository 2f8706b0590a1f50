//! The CPU one `/auth/verify` costs keygate's own code, without sockets or a load generator:
//! the whole application (envelope, token cache, key and revocation look-ups, response) called
//! in a loop on one current-thread runtime with a cached token, as the load benchmark's verify
//! rows send it (a required scope, and a key with one `fast` limit for the second), against
//! the same loop through an axum hello-world; then an API login the same way, and the ES256
//! signature it contains.
//! `cargo bench --bench inproc [-- REQUESTS]`; prints nanoseconds per request, the best of
//! seven passes. Steadier than the load benchmark for changes of a few percent; it leaves out
//! hyper, the kernel and contention between workers.

use std::time::{Duration, Instant};

use anyhow::Context;
use axum::{body::Body, extract::Request, http::header};
use keygate::{
    config::{LogFormat, Settings, SettingsArgs},
    startup::Application,
};
use tower::{Service, ServiceExt};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "correct horse battery staple 1";

fn main() -> anyhow::Result<()> {
    // reqwest's rustls (a dev-dependency feature, for the TLS tests) takes the process's
    // crypto provider: keygate's own, aws-lc.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let requests: u32 = std::env::args().skip(1).find(|a| a != "--bench").map_or(Ok(50_000), |a| a.parse())?;
    // keygate's default subscriber and level, as `keygate serve` runs.
    let _log = keygate::telemetry::init("info", LogFormat::Text);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let env = |name: &str| match name {
            "KEYGATE_LISTEN" => Some("127.0.0.1:0".to_owned()),
            "KEYGATE_DATA_DIR" => Some(dir.path().display().to_string()),
            "KEYGATE_COOKIE_SECURE" => Some("false".to_owned()),
            "KEYGATE_BOOTSTRAP_ADMIN_EMAIL" => Some(ADMIN_EMAIL.to_owned()),
            "KEYGATE_BOOTSTRAP_ADMIN_PASSWORD" => Some(ADMIN_PASSWORD.to_owned()),
            _ => None,
        };
        let application = Application::build(&Settings::load(&SettingsArgs::default(), env)?).await?;
        let base = format!("http://{}", application.local_addr()?);
        let app = application.app();
        // Served too, so its caches load as a server's do, and for the token.
        tokio::spawn(application.run_until(std::future::pending()));
        let scopes = serde_json::json!({"scopes": ["orders:read", "orders:write"]});
        let (credentials, token) = credentials_and_token(&base, &scopes).await?;
        // A limit too large to be reached, as in the load benchmark.
        let fast = serde_json::json!({
            "scopes": ["orders:read", "orders:write"],
            "limits": [{"name": "bench", "limit": 1_000_000_000_000u64, "window_seconds": 60, "consistency": "fast"}],
        });
        let (_, fast_token) = credentials_and_token(&base, &fast).await?;
        let (bearer, fast_bearer) = (format!("Bearer {token}"), format!("Bearer {fast_token}"));
        tokio::time::sleep(Duration::from_secs(1)).await;

        let verify_as = |bearer: &str| {
            Request::get("/auth/verify?scope=orders:read")
                .header(header::AUTHORIZATION, bearer)
                .body(Body::empty())
                .unwrap_or_default()
        };
        let verify = || verify_as(&bearer);
        let verify_fast = || verify_as(&fast_bearer);
        let hello = axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" }));
        let hello_request = || Request::get("/").body(Body::empty()).unwrap_or_default();
        let status = app.clone().oneshot(verify()).await?.status();
        anyhow::ensure!(status.is_success(), "verify answered {status}");
        let limited = app.clone().oneshot(verify_fast()).await?;
        anyhow::ensure!(limited.headers().contains_key("ratelimit"), "verify with a limit answered {limited:?}");

        let login = || {
            Request::post("/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(credentials.to_string()))
                .unwrap_or_default()
        };
        let status = app.clone().oneshot(login()).await?.status();
        anyhow::ensure!(status.is_success(), "login answered {status}");

        let verify_ns = best_of_seven(requests, app.clone(), verify).await?;
        let fast_ns = best_of_seven(requests, app.clone(), verify_fast).await?;
        let hello_ns = best_of_seven(requests, hello, hello_request).await?;
        // A login (a signature) costs many verifications: fewer of them make a pass as long.
        let logins = (requests / 20).max(1);
        let login_ns = best_of_seven(logins, app, login).await?;
        let sign_ns = es256_sign_ns(logins).await?;
        println!("in process, {requests} requests a pass ({logins} for logins and signatures), best of 7 passes:");
        println!("  GET /auth/verify (cached token)  {verify_ns:>6.0} ns/request");
        println!("    with one fast limit            {fast_ns:>6.0} ns/request");
        println!("  axum hello-world                 {hello_ns:>6.0} ns/request");
        println!("  POST /auth/login (API key)       {login_ns:>6.0} ns/request");
        println!("    of which an ES256 signature    {sign_ns:>6.0} ns (signed alone)");
        anyhow::Ok(())
    })
}

async fn best_of_seven<S>(requests: u32, service: S, request: impl Fn() -> Request) -> anyhow::Result<f64>
where
    S: Service<Request, Response = axum::response::Response, Error = std::convert::Infallible> + Clone,
{
    let mut best = f64::MAX;
    for _ in 0..7 {
        let started = Instant::now();
        for _ in 0..requests {
            std::hint::black_box(service.clone().oneshot(request()).await?);
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(requests));
    }
    Ok(best)
}

/// A token alone, on a key ring of its own: what one signature costs.
async fn es256_sign_ns(signatures: u32) -> anyhow::Result<f64> {
    use keygate::crypto::signing::{AccessClaims, KeyRing, KeySealer, SigningAlg};
    let sealer = KeySealer::new([7; 32]);
    let ring = KeyRing::new(&sealer, &sealer.generate(SigningAlg::Es256)?, &[])?;
    let claims = AccessClaims {
        iss: "http://127.0.0.1:8080".into(),
        sub: uuid::Uuid::new_v4().to_string(),
        aud: "keygate".into(),
        iat: 1_800_000_000,
        nbf: 1_800_000_000,
        exp: 1_800_000_900,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        acc: uuid::Uuid::new_v4().to_string(),
        api_key: "46SQZ49LT100U2QWQ3SI".into(),
        client_id: "46SQZ49LT100U2QWQ3SI".into(),
        scope: None,
    };
    ring.sign(&claims)?;
    // The same timing loop as the requests', around a service that only signs.
    let (ring, claims) = (&ring, &claims);
    let sign = tower::service_fn(move |_: Request| async move {
        std::hint::black_box(ring.sign(claims).is_ok());
        Ok::<_, std::convert::Infallible>(axum::response::Response::default())
    });
    best_of_seven(signatures, sign, Request::default).await
}

/// An API key's login body, and a token from it; the admin generates the key over HTTP, from
/// `generate` (its scopes, limits).
async fn credentials_and_token(
    base: &str,
    generate: &serde_json::Value,
) -> anyhow::Result<(serde_json::Value, String)> {
    let client = reqwest::Client::builder().cookie_store(true).build()?;
    let login = serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD});
    client.post(format!("{base}/auth/login")).json(&login).send().await?.error_for_status()?;
    let key: serde_json::Value = client
        .post(format!("{base}/auth/keys/generate"))
        .json(generate)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let login = serde_json::json!({"api_key": key["api_key"], "password": key["password"]});
    let token = client.post(format!("{base}/auth/login")).json(&login).send().await?.error_for_status()?;
    Ok((login, token.json::<String>().await.context("the token")?))
}
