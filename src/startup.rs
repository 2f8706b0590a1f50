//! Wires the application together from settings: store, secrets, service, HTTP app,
//! listener. `main` and the tests start keygate the same way. What a first start creates is
//! `bootstrap`'s; the runtime it all runs on is `runtime`'s.
//!
//! The listener is bound before the database is reached: while start-up waits for it,
//! `/healthz` answers 200 and everything else 503, so an orchestrator sees a live process
//! that is not ready yet instead of one that crash-loops. How the server stops is
//! `Application::run_until`'s.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    bootstrap,
    clock::Clock,
    config::Settings,
    crypto::{AdminPasswordHasher, ApiPasswordHasher, MasterKey, signing::KeySealer},
    http::{self, AppState, LoginMetrics, Observability, SessionCookie},
    listener::{self, Limits},
    monitoring::{self, Exposition},
    service::{self, AuthService, Policy, admins::AdminDirectory},
    store::{self, CachedStore, ConnectError, Store, StoreError},
    telemetry,
    tls::Certificates,
};
use tokio_rustls::TlsAcceptor;

/// HKDF labels: one per derived key, never reused for anything else.
const API_PASSWORD_HMAC_LABEL: &str = "keygate/api-password-hmac/v1";
const SIGNING_KEY_SEAL_LABEL: &str = "keygate/signing-key-seal/v1";

/// The longest pause between two attempts to reach the database at start-up.
const MAX_CONNECT_PAUSE: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    app: http::App,
    auth: Arc<AuthService>,
    key_reload_interval: Duration,
    sweep_interval: Duration,
    cache: Arc<CachedStore>,
    limits: Limits,
    tls: Option<Arc<Certificates>>,
    acceptor: Option<TlsAcceptor>,
    shutdown_timeout: Duration,
    draining: Arc<AtomicBool>,
    /// The metrics' own listener (`KEYGATE_METRICS_LISTEN`), with what it serves.
    metrics_listener: Option<(TcpListener, Arc<Exposition>)>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Application {
    /// The application on the system clock, as `keygate serve` runs it.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Clock::system()).await
    }

    /// The application on `clock`: every expiry, lock and key window it judges, and every
    /// time it stores, comes from there (a test's `ManualClock`, say). Timeouts and
    /// intervals still pass in real time.
    pub async fn build_with_clock(settings: &Settings, clock: Clock) -> anyhow::Result<Self> {
        // The master key first: a replica without the shared key must stop before it
        // touches the database, whatever state the database is in.
        bootstrap::check_master_key(settings)?;
        let Preflight { limits, tls } = preflight(settings)?;
        // Made (on a first start) only once every setting has been found good.
        let master = bootstrap::master_key(settings)?;
        // The listener before the store: it serves /healthz while the database is awaited.
        let acceptor = tls.as_ref().map(|c| c.server_config().map(TlsAcceptor::from)).transpose()?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let metrics_listener = match settings.operations.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (KEYGATE_METRICS_LISTEN)"))?,
            ),
            None => None,
        };
        // Before anything registers a metric: handles made without a recorder record nothing.
        let handle = monitoring::install();
        let (store, listener) = open_store_while_starting(settings, listener, limits, acceptor.clone()).await?;
        // One argon2 at a time per core: more would only queue inside the OS scheduler.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let admin_hasher = AdminPasswordHasher::new(workers, 64);

        let admins = AdminDirectory::new(store.clone(), admin_hasher.clone(), clock.clone());
        bootstrap::first_admin(&admins, settings).await?;
        let sealer = key_sealer(&master);
        bootstrap::first_signing_key(store.as_ref(), &sealer, settings.signing_alg, clock.now()).await?;
        let ring = service::read_key_ring(store.as_ref(), &sealer, settings.token_ttl, clock.now()).await?;
        tracing::info!(kid = ring.active_kid(), "signing key loaded");

        // The default issuer names the address actually bound, so port 0 gives a usable one.
        let issuer = match &settings.issuer {
            Some(issuer) => issuer.clone(),
            None => format!("{}://{}", scheme(settings), listener.local_addr()?),
        };
        let policy = Policy {
            issuer,
            audience: settings.audience.clone(),
            token_ttl: settings.token_ttl,
            session_idle_timeout: settings.session_idle_timeout,
            session_lifetime: settings.session_lifetime,
            lockout: settings.defences.lockout.clone(),
            revocations: settings.defences.revocations,
            audit_retention: settings.audit_retention(),
        };
        let api_hasher = api_password_hasher(&master);
        // The hot paths' reads from memory. Logins too on the embedded store, whose keys
        // only this process deletes; see store::cache::keys for why not with PostgreSQL.
        let cache = Arc::new(CachedStore::new(store.clone(), settings.is_embedded()).with_clock(clock.clone()));
        // Replicas share their limits' counts through Redis when given, else the database;
        // one server on its embedded store keeps them in memory.
        let credits: Arc<dyn store::CreditStore> = store.clone();
        let shared: Option<Arc<dyn service::limits::SharedCounters>> = match &settings.redis_url {
            Some(url) => Some(Arc::new(service::limits::RedisCounters::new(url, credits.clone())?)),
            None if settings.is_embedded() => None,
            None => Some(Arc::new(service::limits::StoreCounters::new(store.clone()))),
        };
        let limiter = service::limits::Limiter::new(shared, credits, settings.limits_on_failure);
        let auth = AuthService::new(store, policy, clock, api_hasher, admin_hasher.clone(), ring, sealer)
            .with_hot_path(cache.hot_path())
            .with_limiter(limiter);
        let auth = Arc::new(auth);
        let exposition = handle.clone().map(|handle| Arc::new(exposition(handle, &auth, &cache, &admin_hasher)));
        let draining = Arc::new(AtomicBool::new(false));
        let state = AppState {
            auth: auth.clone(),
            cookie: SessionCookie::new(settings.cookie_secure, settings.session_lifetime),
            security: Arc::new(settings.defences.http.clone()),
            logins: Arc::new(LoginMetrics::register()),
            draining: draining.clone(),
        };
        let (on_main, metrics_listener) = match metrics_listener {
            Some(listener) => (None, exposition.map(|exposition| (listener, exposition))),
            None => (exposition, None),
        };
        let observability = Observability { access_log: settings.operations.access_log, metrics: on_main };
        Ok(Self {
            listener,
            app: http::app(state, observability),
            auth,
            key_reload_interval: Duration::from_secs(settings.key_reload_interval),
            sweep_interval: Duration::from_secs(settings.sweep_interval),
            cache,
            limits,
            tls,
            acceptor,
            shutdown_timeout: settings.operations.shutdown_timeout,
            draining,
            metrics_listener,
            metrics: handle,
        })
    }

    /// The certificate being served, with native TLS: `keygate serve` reloads it on SIGHUP.
    pub fn certificates(&self) -> Option<Arc<Certificates>> {
        self.tls.clone()
    }

    /// The HTTP application alone, for in-process callers (the fuzz harness).
    pub fn app(&self) -> http::App {
        self.app.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The caches in front of the store: tests of their coherence wait until they are
    /// loaded, or the store would answer in their place.
    pub fn cache(&self) -> Arc<CachedStore> {
        self.cache.clone()
    }

    /// Serves until `shutdown` completes (SIGTERM or SIGINT for `keygate serve`), then stops
    /// in this order:
    ///
    /// 1. `/readyz` answers 503, at once, and the listeners stop accepting connections;
    /// 2. the requests in flight finish, for at most `KEYGATE_SHUTDOWN_TIMEOUT`;
    /// 3. the background tasks stop, and `AuthService::flush` writes out what the service
    ///    batches, now that no request can add to it: **the one place batched writes are
    ///    flushed**; a new batched writer flushes from there;
    /// 4. the store is checkpointed (`Store::checkpoint`), so that the SQLite file alone
    ///    holds everything.
    ///
    /// Steps 3 and 4 also follow a server that stopped for another reason. An error from
    /// either is returned, for a non-zero exit: something written was not kept.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!("listening on {scheme}://{}", self.local_addr()?);
        if let Some(certificates) = &self.tls {
            tracing::info!(sha256 = %certificates.fingerprint(), "serving TLS");
        }
        // Replaces the certificate when its files change.
        let reloads = self.tls.clone().map(|certificates| tokio::spawn(certificates.watch()));
        // Picks up signing-key rotations made elsewhere (CLI, other replicas) while we run.
        let upkeep = tokio::spawn(self.auth.clone().maintain(self.key_reload_interval));
        let sweeper = tokio::spawn(self.auth.clone().keep_swept(self.sweep_interval));
        // Loads the caches and keeps them in step with the store; until its first load they
        // simply pass every call through, so start-up does not wait for it.
        let sync = tokio::spawn(self.cache.keep_in_sync());
        let key_use = tokio::spawn(self.auth.clone().keep_key_use_flushed(service::KEY_USE_FLUSH_EVERY));
        let limits = tokio::spawn(self.auth.clone().keep_limits_synced());
        let metrics_upkeep = self.metrics.map(|handle| tokio::spawn(Exposition::keep_up(handle)));

        let (stopping, stop) = watch::channel(false);
        let draining = self.draining.clone();
        let signalled = async move {
            shutdown.await;
            draining.store(true, Ordering::Relaxed);
            let _ = stopping.send(true);
        };
        let metrics_server = self.metrics_listener.map(|(listener, exposition)| {
            tracing::info!(
                "metrics on http://{}/metrics",
                listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string())
            );
            let mut stop = stop.clone();
            let served = axum::serve(listener, http::metrics_app(exposition)).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            });
            tokio::spawn(async move { served.await })
        });
        let served =
            listener::serve(self.listener, self.app, self.limits, self.acceptor, self.shutdown_timeout, signalled)
                .await;

        upkeep.abort();
        sweeper.abort();
        sync.abort();
        key_use.abort();
        if let Some(reloads) = reloads {
            reloads.abort();
        }
        limits.abort();
        if let Some(task) = metrics_upkeep {
            task.abort();
        }
        if let Some(task) = metrics_server {
            // A scraper's request is quick; one that hangs is not waited for.
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        // What was batched for the store is written before the process goes, however the
        // server stopped.
        self.auth.flush().await.map_err(|e| std::io::Error::other(format!("cannot flush batched writes: {e}")))?;
        self.auth
            .store()
            .checkpoint()
            .await
            .map_err(|e| std::io::Error::other(format!("cannot checkpoint the store: {e}")))?;
        served
    }
}

/// What start-up judges of the settings after the master key (`bootstrap::check_master_key`)
/// and before it makes anything or opens the store, in this order: also what `keygate config
/// check` judges.
pub struct Preflight {
    pub limits: Limits,
    pub tls: Option<Arc<Certificates>>,
}

pub fn preflight(settings: &Settings) -> anyhow::Result<Preflight> {
    require_shared_issuer(settings)?;
    // Before the store: the pool's descriptors come out of the raised limit.
    let limits = Limits::resolve(&settings.connections)?;
    let tls = settings.tls.as_ref().map(Certificates::load).transpose()?;
    Ok(Preflight { limits, tls })
}

/// The `/metrics` exposition, with what is sampled at each scrape. Registers the counters of
/// rare events too, so that they are there at 0 before the first.
fn exposition(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    auth: &Arc<AuthService>,
    cache: &Arc<CachedStore>,
    admin_hasher: &AdminPasswordHasher,
) -> Exposition {
    let _ = metrics::counter!(monitoring::LOCKOUTS);
    let _ = metrics::counter!(monitoring::LIMIT_STATE_OUTAGES);
    let _ = metrics::counter!(monitoring::LIMIT_STATE_SLOW);
    let _ = metrics::counter!(monitoring::ADMIN_HASH_REJECTED);
    let (idle, busy) = (
        metrics::gauge!(monitoring::STORE_POOL_CONNECTIONS, "state" => "idle"),
        metrics::gauge!(monitoring::STORE_POOL_CONNECTIONS, "state" => "busy"),
    );
    let queue = metrics::gauge!(monitoring::ADMIN_HASH_QUEUE);
    let lease = metrics::gauge!(monitoring::CACHE_LEASE_VALID);
    let limit_state = metrics::gauge!(monitoring::LIMIT_STATE_REACHABLE);
    let (auth, cache, admin_hasher) = (Arc::downgrade(auth), cache.clone(), admin_hasher.clone());
    Exposition::new(handle).sampling(move || {
        if let Some(auth) = auth.upgrade() {
            let pool = auth.store().pool_state();
            idle.set(f64::from(pool.idle));
            busy.set(f64::from(pool.open.saturating_sub(pool.idle)));
            limit_state.set(if auth.limit_state_reachable() { 1.0 } else { 0.0 });
        }
        queue.set(admin_hasher.in_use() as f64);
        lease.set(if cache.is_trusted() { 1.0 } else { 0.0 });
    })
}

/// Opens the store, retrying for up to `KEYGATE_DB_CONNECT_TIMEOUT` while the database cannot
/// be reached, with the listener serving `http::starting_app` meanwhile; gives the listener
/// back once the store is open (or start-up has failed).
async fn open_store_while_starting(
    settings: &Settings,
    listener: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
) -> anyhow::Result<(Arc<dyn Store>, TcpListener)> {
    let (opened, until) = tokio::sync::oneshot::channel::<()>();
    let starting = tokio::spawn(listener::serve_until(listener, http::starting_app(), limits, tls, async move {
        let _ = until.await;
    }));
    let store = open_store_patiently(settings).await;
    let _ = opened.send(());
    let listener = starting.await.context("the start-up server failed")?;
    Ok((store?, listener))
}

async fn open_store_patiently(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let limit = settings.operations.db_connect_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        let error = match open_store(settings).await {
            Ok(store) => {
                if attempts > 0 {
                    tracing::info!(attempts = attempts + 1, "database reached");
                }
                return Ok(store);
            }
            Err(e) if worth_retrying(&e) => e,
            Err(e) => return Err(e),
        };
        attempts += 1;
        if tokio::time::Instant::now() + pause > deadline {
            anyhow::bail!(
                "cannot reach the database within {} s (KEYGATE_DB_CONNECT_TIMEOUT), after {attempts} attempts: {}",
                limit.as_secs(),
                telemetry::Chain(&error)
            );
        }
        // The cause without the URL, which may hold a password.
        tracing::warn!(
            error = %telemetry::Chain(&error),
            retry_in_ms = pause.as_millis() as u64,
            "cannot reach the database yet"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_CONNECT_PAUSE);
    }
}

/// Whether a failure to open the store may pass by itself: the database is not up yet, or
/// not created yet (an orchestrator starting it beside keygate). A refused password, a
/// failed migration or a bad file are not waited out.
fn worth_retrying(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| match cause.downcast_ref::<ConnectError>() {
        Some(ConnectError::Store(StoreError::Unavailable(_))) => true,
        Some(ConnectError::Store(StoreError::Other(sqlx::Error::Database(db)))) => {
            // invalid_catalog_name: the database does not exist (yet).
            db.code().as_deref() == Some("3D000")
        }
        _ => false,
    })
}

/// Opens the store named by the settings, creating the data directory for the embedded one.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if settings.is_embedded() {
        bootstrap::create_private_dir(&settings.data_dir)?;
    }
    store::connect(&settings.database_url).await.context("cannot open the database")
}

/// Opens the store named by the settings only if it exists: for every command but `serve`,
/// where a mistyped data directory or URL must be refused with its path, not silently become
/// a fresh store (with a data directory and a master key of its own).
pub async fn open_existing_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    store::open_existing(&settings.database_url).await.context("cannot open the database")
}

/// The key that seals signing keys at rest, as every server and the CLI derive it.
pub fn key_sealer(master: &MasterKey) -> KeySealer {
    KeySealer::new(master.derive(SIGNING_KEY_SEAL_LABEL))
}

/// The keyed hash for API passwords, derived from the master key.
pub fn api_password_hasher(master: &MasterKey) -> ApiPasswordHasher {
    ApiPasswordHasher::new(master.derive(API_PASSWORD_HMAC_LABEL))
}

/// The scheme clients reach this listener by.
pub fn scheme(settings: &Settings) -> &'static str {
    if settings.tls.is_some() { "https" } else { "http" }
}

/// On PostgreSQL the issuer must be given: the default names the address this replica bound,
/// so each replica would stamp its own `iss` and refuse every other replica's tokens.
fn require_shared_issuer(settings: &Settings) -> anyhow::Result<()> {
    if settings.issuer.is_none() && !settings.is_embedded() {
        return Err(bootstrap::setting_error(
            "KEYGATE_ISSUER",
            "required with PostgreSQL, and the same on every replica (the URL clients and gateways \
             know keygate by, e.g. https://auth.example.com)",
        ));
    }
    Ok(())
}
