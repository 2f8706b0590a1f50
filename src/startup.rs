//! Builds the application from settings: store, secrets, first admin, signing keys,
//! listener. `main` and the tests start keygate the same way.

use std::{future::Future, io::IsTerminal, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{
    config::{ConfigError, Settings},
    crypto::{
        AdminPasswordHasher, ApiPasswordHasher, MasterKey, private_file,
        signing::{KeyRing, KeySealer, SigningAlg},
    },
    domain::{AccountName, ApiPassword, Email},
    http::{self, AppState, SessionCookie},
    listener::{self, Limits},
    service::{self, AuthService, Policy},
    store::{self, AdminId, CachedStore, NewAdmin, Store},
};

/// HKDF labels: one per derived key, never reused for anything else.
const API_PASSWORD_HMAC_LABEL: &str = "keygate/api-password-hmac/v1";
const SIGNING_KEY_SEAL_LABEL: &str = "keygate/signing-key-seal/v1";

pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";
/// The embedded store's master key, in the data directory, without `KEYGATE_MASTER_KEY`.
const MASTER_KEY_FILE: &str = "master.key";
const DEFAULT_ADMIN_EMAIL: &str = "admin@localhost";
const DEFAULT_ACCOUNT: &str = "default";

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
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // The master key first: a replica without the shared key must stop before it
        // touches the database, whatever state the database is in.
        let master = master_key(settings)?;
        require_shared_issuer(settings)?;
        // Also before the store: the pool's descriptors come out of the raised limit.
        let limits = Limits::resolve(&settings.connections)?;
        let store = open_store(settings).await?;
        // One argon2 at a time per core: more would only queue inside the OS scheduler.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let admin_hasher = AdminPasswordHasher::new(workers, 64);

        bootstrap_admin(store.as_ref(), settings, &admin_hasher).await?;
        let sealer = key_sealer(&master);
        let ring = load_key_ring(store.as_ref(), &sealer, settings.signing_alg, settings.token_ttl).await?;
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
            lockout: settings.security.lockout.clone(),
            revocations: settings.security.revocations,
            audit_retention: settings.audit_retention(),
        };
        let api_hasher = api_password_hasher(&master);
        // The hot paths' reads from memory. Logins too on the embedded store, whose keys
        // only this process deletes; see store::cache for why not with PostgreSQL.
        let cache = Arc::new(CachedStore::new(store, settings.is_embedded()));
        let auth = Arc::new(AuthService::new(cache.clone(), policy, api_hasher, admin_hasher, ring, sealer));
        let state = AppState {
            auth: auth.clone(),
            cookie: SessionCookie::new(settings.cookie_secure, settings.session_lifetime),
            security: Arc::new(settings.security.http.clone()),
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
        let sweeper = tokio::spawn(sweep(self.auth.clone(), self.sweep_interval));
        // Loads the caches and keeps them in step with the store; until its first load they
        // simply pass every call through, so start-up does not wait for it.
        let sync = tokio::spawn(self.cache.keep_in_sync());
        let served = listener::serve(self.listener, self.app, self.limits, shutdown).await;
        upkeep.abort();
        sweeper.abort();
        sync.abort();
        served
    }
}

/// Sweeps the store every `every`, from start-up on, so that counters, sessions and the
/// audit log hold only what is still of use however long the server runs.
async fn sweep(auth: Arc<AuthService>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match auth.sweep(store::now()).await {
            Ok(swept) if swept.audit > 0 => {
                tracing::info!(audit = swept.audit, sessions = swept.sessions, counters = swept.counters, "swept")
            }
            Ok(swept) => tracing::debug!(sessions = swept.sessions, counters = swept.counters, "swept"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep expired rows; retrying at the next sweep"),
        }
    }
}

/// Opens the store named by the settings, creating the data directory for the embedded one.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if settings.is_embedded() {
        create_private_dir(&settings.data_dir)?;
    }
    store::connect(&settings.database_url).await.context("cannot open the database")
}

/// Opens the store named by the settings only if it exists: for every command but `serve`,
/// where a mistyped data directory or URL must be refused with its path, not silently become
/// a fresh store (with a data directory and a master key of its own).
pub async fn open_existing_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    store::open_existing(&settings.database_url).await.context("cannot open the database")
}

/// The master key for a command other than `serve`: never created here, since a new one
/// would open nothing in the existing store.
pub fn existing_master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if settings.master_key.is_none() && settings.is_embedded() {
        let path = settings.data_dir.join(MASTER_KEY_FILE);
        if !path.exists() {
            anyhow::bail!(
                "no master key at {}: set KEYGATE_MASTER_KEY, or KEYGATE_DATA_DIR to the servers' data directory",
                path.display()
            );
        }
    }
    master_key(settings)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// The key that seals signing keys at rest, as every server and the CLI derive it.
pub fn key_sealer(master: &MasterKey) -> KeySealer {
    KeySealer::new(master.derive(SIGNING_KEY_SEAL_LABEL))
}

/// The keyed hash for API passwords, derived from the master key.
pub fn api_password_hasher(master: &MasterKey) -> ApiPasswordHasher {
    ApiPasswordHasher::new(master.derive(API_PASSWORD_HMAC_LABEL))
}

/// The master key: from the settings, or kept in the data directory for the embedded store.
pub fn master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    match &settings.master_key {
        Some(encoded) => MasterKey::from_base64(encoded.expose_secret()).context("invalid setting KEYGATE_MASTER_KEY"),
        None if settings.is_embedded() => {
            create_private_dir(&settings.data_dir)?;
            let path = settings.data_dir.join(MASTER_KEY_FILE);
            // A key file found wrong is a setting error like a wrong variable (exit code 2).
            MasterKey::load_or_create(&path).map_err(|e| {
                anyhow::Error::new(ConfigError {
                    name: "KEYGATE_MASTER_KEY",
                    reason: format!("from the data directory: {e}"),
                })
            })
        }
        // A key generated here would differ on every replica: tokens signed by one would
        // not verify on another, and no replica could open the others' signing keys.
        None => anyhow::bail!(
            "invalid setting KEYGATE_MASTER_KEY: required with PostgreSQL, and the same on every replica \
             (32 random bytes, base64, e.g. `openssl rand -base64 32`)"
        ),
    }
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

/// On a store with no admin, creates the first one: from the bootstrap settings, or
/// `admin@localhost` with a random password written to a private file.
async fn bootstrap_admin(store: &dyn Store, settings: &Settings, hasher: &AdminPasswordHasher) -> anyhow::Result<()> {
    if store.any_admin().await? {
        return Ok(());
    }
    let (email, password, file) = match &settings.bootstrap_admin {
        Some((email, password)) => (email.clone(), SecretString::from(password.expose()), None),
        None => {
            // Reuse the API-password generator: 190 random bits, nothing to guess.
            let password = ApiPassword::generate().expose().to_owned();
            let email = Email::parse(DEFAULT_ADMIN_EMAIL).map_err(|e| anyhow::anyhow!(e))?;
            (email, SecretString::from(password), Some(settings.data_dir.join(INITIAL_PASSWORD_FILE)))
        }
    };
    let admin = NewAdmin {
        id: AdminId(Uuid::new_v4()),
        email: email.clone(),
        password_hash: hasher.hash(SecretString::from(password.expose_secret())).await?,
        created_at: store::now(),
    };
    // The password is on disk before the admin exists, so a crash in between cannot leave an
    // admin whose password nobody knows. It goes to a file of this attempt's own, renamed
    // into place only if this process created the admin (another replica may win).
    let pending = file.as_ref().map(|path| path.with_extension(format!("{}.pending", Uuid::new_v4().simple())));
    if let Some(pending) = &pending {
        create_private_dir(&settings.data_dir)?;
        write_secret_file(pending, password.expose_secret())?;
    }
    let account = AccountName::parse(DEFAULT_ACCOUNT).map_err(|e| anyhow::anyhow!(e))?;
    let created = store.bootstrap_admin(&account, &admin).await;
    if let (Some(pending), Some(path)) = (&pending, &file) {
        if matches!(created, Ok(true)) {
            std::fs::rename(pending, path).with_context(|| format!("cannot write {}", path.display()))?;
        } else {
            let _ = std::fs::remove_file(pending);
        }
    }
    match (&file, created?) {
        (Some(_), false) | (None, false) => {}
        (Some(path), true) => {
            tracing::info!(email = %email, file = %path.display(), "created the first admin; its password is in the file");
            // Told on the terminal only: stderr that is not a terminal is usually a log.
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "\n  First admin: {email}\n  Password:    {}\n  (also in {})\n",
                    password.expose_secret(),
                    path.display()
                );
            }
        }
        (None, true) => {
            tracing::info!(email = %email, "created the first admin from the bootstrap settings")
        }
    }
    Ok(())
}

fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = private_file(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Loads the signing keys, creating the first one (of `alg`) on an empty store. Retired
/// keys stay for verification while tokens they signed can still be live.
///
/// An active key of another algorithm is served as it is: replicas share it, so a replica
/// that rotated because its own setting differs would be rotated back by the next one to
/// start, unaudited. Changing the algorithm is `keygate signing-key rotate --alg`.
pub async fn load_key_ring(
    store: &dyn Store,
    sealer: &KeySealer,
    alg: SigningAlg,
    token_ttl: u64,
) -> anyhow::Result<KeyRing> {
    let records = store.signing_keys().await?;
    match records.iter().find(|r| r.retired_at.is_none()) {
        None => {
            store.insert_first_signing_key(&sealer.generate(alg)?, store::now()).await?;
        }
        Some(active) if active.key.alg != alg => {
            tracing::warn!(
                kid = %active.key.kid,
                active = %active.key.alg,
                configured = %alg,
                "KEYGATE_SIGNING_ALG is {alg} but the active signing key is {}: serving the active key; \
                 `keygate signing-key rotate --alg {alg}` changes it",
                active.key.alg
            );
        }
        Some(_) => {}
    }
    Ok(service::read_key_ring(store, sealer, token_ttl).await?)
}

/// The multi-threaded runtime keygate serves on: one worker per CPU the process may use.
///
/// With `pin_workers`, and only when the process has whole CPUs to itself (its affinity mask
/// holds exactly as many CPUs as the workers it gets; not, say, a 2-CPU quota on a 64-CPU
/// node), each worker keeps to a CPU of its own. Unpinned, the kernel now and then stacks
/// two busy workers on one CPU while the other runs only a background thread (argon2), and
/// balances them apart only a tick or more later. Measured with API logins at 8 connections
/// while admin logins hashed: on a Zen 5 machine p99 4.0–4.8 ms unpinned, 2.7–2.9 ms pinned;
/// on an Intel one no difference (docs/benchmarks.md).
pub fn runtime(pin_workers: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(target_os = "linux")]
    if let Some(cpus) = pin_workers.then(affinity::whole_cpus).flatten() {
        // A thread starts with its creator's mask: a blocking-pool thread spawned from a
        // pinned worker takes the whole set back. (Threads that other crates spawn from a
        // worker, sqlx's SQLite connection threads, keep the worker's CPU: at most eight, and
        // mostly asleep.)
        let all = affinity::set_of(&cpus);
        builder.on_thread_start(move || affinity::restrict(&all));
        builder.on_thread_park(move || affinity::pin_once(&cpus));
    }
    builder.build()
}

#[cfg(target_os = "linux")]
mod affinity {
    use std::{
        cell::Cell,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

    /// The CPUs this process may run on, when it may use all of them: std (and so tokio)
    /// counts a cgroup CPU quota in, the affinity mask does not.
    pub fn whole_cpus() -> Option<Vec<usize>> {
        let cpus = members(&sched_getaffinity(None).ok()?);
        let usable = std::thread::available_parallelism().ok()?.get();
        (cpus.len() > 1 && cpus.len() == usable).then_some(cpus)
    }

    pub fn members(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect()
    }

    pub fn set_of(cpus: &[usize]) -> CpuSet {
        let mut set = CpuSet::new();
        cpus.iter().for_each(|&cpu| set.set(cpu));
        set
    }

    /// Best effort: a refusal (a seccomp profile, say) leaves the thread where it was.
    pub fn restrict(set: &CpuSet) {
        let _ = sched_setaffinity(None, set);
    }

    /// Called as a thread is about to park, which only the runtime's workers do (blocking-pool
    /// threads and `block_on` never call it); each worker pins itself at its first park.
    pub fn pin_once(cpus: &[usize]) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local!(static PINNED: Cell<bool> = const { Cell::new(false) });
        if PINNED.replace(true) {
            return;
        }
        restrict(&set_of(&[cpus[NEXT.fetch_add(1, Ordering::Relaxed) % cpus.len()]]));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rustix::thread::sched_getaffinity;

    use super::affinity::members as cpus;

    /// Workers each on a CPU of its own, blocking threads free to go anywhere; or, on a
    /// machine whose CPUs the process does not wholly own, nothing pinned at all.
    #[test]
    fn workers_are_pinned_one_per_cpu_and_nothing_else_is() {
        let all = cpus(&sched_getaffinity(None).unwrap());
        let runtime = super::runtime(true).unwrap();
        let (workers, blocking) = runtime.block_on(async {
            // Every worker parks at least once while nothing is queued.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut workers = std::collections::HashMap::new();
            // Which worker runs each task is up to the scheduler: the checks hold for any it used.
            for _ in 0..200 {
                let seen = tokio::spawn(async {
                    tokio::task::yield_now().await;
                    (std::thread::current().id(), cpus(&sched_getaffinity(None).unwrap()))
                });
                let (thread, mask) = seen.await.unwrap();
                workers.insert(thread, mask);
            }
            let blocking = tokio::spawn(async {
                tokio::task::spawn_blocking(|| cpus(&sched_getaffinity(None).unwrap())).await.unwrap()
            });
            (workers, blocking.await.unwrap())
        });
        assert_eq!(blocking, all);
        if super::affinity::whole_cpus().is_some() {
            let mut pinned: Vec<usize> = workers.values().flatten().copied().collect();
            assert!(workers.values().all(|mask| mask.len() == 1), "{workers:?}");
            pinned.sort_unstable();
            pinned.dedup();
            assert_eq!(pinned.len(), workers.len(), "two workers share a CPU: {workers:?}");
        } else {
            assert!(workers.values().all(|mask| *mask == all), "{workers:?}");
        }
        let unpinned = super::runtime(false).unwrap();
        let mask = unpinned.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            tokio::spawn(async { cpus(&sched_getaffinity(None).unwrap()) }).await.unwrap()
        });
        assert_eq!(mask, all);
    }
}
