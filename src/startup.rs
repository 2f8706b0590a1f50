//! Wires the application together from settings: store, secrets, service, HTTP app,
//! listener. `main` and the tests start keygate the same way. What a first start creates is
//! `bootstrap`'s; the runtime it all runs on is `runtime`'s.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    bootstrap,
    clock::Clock,
    config::Settings,
    crypto::{AdminPasswordHasher, ApiPasswordHasher, MasterKey, signing::KeySealer},
    http::{self, AppState, SessionCookie},
    listener::{self, Limits},
    service::{self, AuthService, Policy, admins::AdminDirectory},
    store::{self, CachedStore, Store},
};

/// HKDF labels: one per derived key, never reused for anything else.
const API_PASSWORD_HMAC_LABEL: &str = "keygate/api-password-hmac/v1";
const SIGNING_KEY_SEAL_LABEL: &str = "keygate/signing-key-seal/v1";

pub struct Application {
    listener: TcpListener,
    app: http::App,
    auth: Arc<AuthService>,
    key_reload_interval: Duration,
    sweep_interval: Duration,
    cache: Arc<CachedStore>,
    limits: Limits,
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
        let master = bootstrap::master_key(settings)?;
        require_shared_issuer(settings)?;
        // Also before the store: the pool's descriptors come out of the raised limit.
        let limits = Limits::resolve(&settings.connections)?;
        let store = open_store(settings).await?;
        // One argon2 at a time per core: more would only queue inside the OS scheduler.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let admin_hasher = AdminPasswordHasher::new(workers, 64);

        let admins = AdminDirectory::new(store.clone(), admin_hasher.clone(), clock.clone());
        bootstrap::first_admin(&admins, settings).await?;
        let sealer = key_sealer(&master);
        bootstrap::first_signing_key(store.as_ref(), &sealer, settings.signing_alg, clock.now()).await?;
        let ring = service::read_key_ring(store.as_ref(), &sealer, settings.token_ttl, clock.now()).await?;
        tracing::info!(kid = ring.active_kid(), "signing key loaded");

        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        // The default issuer names the address actually bound, so port 0 gives a usable one.
        let issuer = match &settings.issuer {
            Some(issuer) => issuer.clone(),
            None => format!("http://{}", listener.local_addr()?),
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
        let auth = AuthService::new(store, policy, clock, api_hasher, admin_hasher, ring, sealer)
            .with_hot_path(cache.hot_path());
        let auth = Arc::new(auth);
        let state = AppState {
            auth: auth.clone(),
            cookie: SessionCookie::new(settings.cookie_secure, settings.session_lifetime),
            security: Arc::new(settings.defences.http.clone()),
        };
        Ok(Self {
            listener,
            app: http::app(state),
            auth,
            key_reload_interval: Duration::from_secs(settings.key_reload_interval),
            sweep_interval: Duration::from_secs(settings.sweep_interval),
            cache,
            limits,
        })
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

    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!("listening on http://{}", self.local_addr()?);
        // Picks up signing-key rotations made elsewhere (CLI, other replicas) while we run.
        let upkeep = tokio::spawn(self.auth.clone().maintain(self.key_reload_interval));
        let sweeper = tokio::spawn(self.auth.clone().keep_swept(self.sweep_interval));
        // Loads the caches and keeps them in step with the store; until its first load they
        // simply pass every call through, so start-up does not wait for it.
        let sync = tokio::spawn(self.cache.keep_in_sync());
        let key_use = tokio::spawn(self.auth.clone().keep_key_use_flushed(service::KEY_USE_FLUSH_EVERY));
        let served = listener::serve(self.listener, self.app, self.limits, shutdown).await;
        upkeep.abort();
        sweeper.abort();
        sync.abort();
        key_use.abort();
        // What was batched for the store is written before the process goes.
        if let Err(e) = self.auth.flush_key_use().await {
            tracing::warn!(error = %e, "cannot write keys' last use on shutdown");
        }
        served
    }
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

/// On PostgreSQL the issuer must be given: the default names the address this replica bound,
/// so each replica would stamp its own `iss` and refuse every other replica's tokens.
fn require_shared_issuer(settings: &Settings) -> anyhow::Result<()> {
    if settings.issuer.is_none() && !settings.is_embedded() {
        anyhow::bail!(
            "invalid setting KEYGATE_ISSUER: required with PostgreSQL, and the same on every replica \
             (the URL clients and gateways know keygate by, e.g. https://auth.example.com)"
        );
    }
    Ok(())
}
