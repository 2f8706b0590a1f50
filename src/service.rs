//! What keygate does, independent of HTTP: log API clients and admins in, manage keys and
//! sessions. Handlers translate requests into calls here; the CLI calls it too.

use std::sync::{Arc, Mutex, RwLock};

pub mod admins;
mod attempt;
pub mod audit;
mod key_use;
mod keys;
pub mod limits;
pub mod lockout;
mod owners;
pub mod sweep;

use secrecy::SecretString;

use crate::{
    clock::Clock,
    crypto::{
        self, AdminPasswordHasher, ApiPasswordHasher, HashPoolError,
        session::{self, SessionHash},
        signing::{AccessClaims, KeyRing, KeySealer, SigningError},
    },
    domain::{AccountId, AdminPassword, ApiKeyId, ApiPassword, ClientAddr, Email, KeyRef, Scopes},
    store::{
        AdminId, AuditAction, AuditRecord, AuditScope, HotPath, KeyRecord, SessionRecord, Store, StoreError, UnixTime,
    },
};
use attempt::Attempt;
use lockout::{LockoutPolicy, Subject};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown key or email: deliberately one case, so callers cannot tell which.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("no valid admin session")]
    NoSession,
    /// A signed-in admin's current password, given to change it, is wrong.
    #[error("wrong current password")]
    WrongPassword,
    #[error("not found")]
    NotFound,
    /// A value that parsed but is not allowed here (an expiry in the past, say); the text
    /// names the field.
    #[error("{0}")]
    Invalid(&'static str),
    /// A token request asked for scopes its key does not hold (RFC 6749 §5.2).
    #[error("invalid scope")]
    InvalidScope,
    /// A bearer token that must not be honoured. The reason is for the debug log and the
    /// metrics only: callers answer every case alike.
    #[error("invalid token: {}", crate::monitoring::LabelValue::label(*.0))]
    InvalidToken(TokenRefusal),
    /// Too many failed logins for this identity or address; refused without checking the
    /// password until the lock ends.
    #[error("too many failed logins")]
    Locked { retry_after: u64 },
    /// Over a limit, or out of credits: nothing was counted.
    #[error("quota exceeded")]
    QuotaExceeded(Box<limits::Refusal>),
    /// A strict limit or credits could not be checked, and the settings say refuse.
    #[error("the limits' shared state is unavailable")]
    LimitsUnavailable,
    /// The token's key or account holds as many live revocations as it may.
    #[error("too many live revocations")]
    RevocationLimit { retry_after: u64 },
    #[error(transparent)]
    Hashing(#[from] HashPoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signing(#[from] SigningError),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// Token and session policy, from the settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub issuer: String,
    pub audience: String,
    pub token_ttl: u64,
    pub session_idle_timeout: u64,
    pub session_lifetime: u64,
    pub lockout: LockoutPolicy,
    pub revocations: RevocationLimits,
    /// How long audit entries are kept; `None` keeps them all.
    pub audit_retention: Option<std::time::Duration>,
}

/// An authenticated admin session.
#[derive(Debug, Clone)]
pub struct AdminSession {
    pub hash: SessionHash,
    pub admin_id: AdminId,
    pub account_id: AccountId,
    /// Where the request that presented the session came from, for the audit log.
    pub client: ClientAddr,
}

/// A new admin session; `token` goes into the cookie and nowhere else.
pub struct NewSession {
    pub token: SecretString,
    pub account_id: AccountId,
    pub email: Email,
}

pub struct IssuedToken {
    pub token: String,
    pub claims: AccessClaims,
}

/// An API key that has just proved its password: who the caller is, without the stored hash.
#[derive(Debug, Clone)]
pub struct AuthenticatedKey {
    pub key_ref: KeyRef,
    pub account_id: AccountId,
    pub api_key: ApiKeyId,
    pub scopes: Scopes,
    pub expires_at: Option<UnixTime>,
}

impl From<KeyRecord> for AuthenticatedKey {
    fn from(key: KeyRecord) -> Self {
        Self {
            key_ref: key.key_ref,
            account_id: key.account_id,
            api_key: key.api_key,
            scopes: key.scopes,
            expires_at: key.expires_at,
        }
    }
}

pub use crate::store::KeyDetails;
pub use keys::{
    CreditsEdit, DEFAULT_ROLL_GRACE, Expiry, GeneratedKey, KeyChange, KeyOptions, MAX_KEY_LIFETIME, MAX_ROLL_GRACE,
    MIN_KEY_LIFETIME, RolledKey,
};
pub use owners::{OwnerLimits, Usage};

/// Session activity is written back at most this often (or a quarter of the idle timeout,
/// if shorter), so that browsing does not cost a database write per request.
const TOUCH_INTERVAL: i64 = 60;
/// Longer inputs are refused before any hashing: no password that can be set is this
/// long, and argon2 cost should not be chosen by the caller.
const MAX_PASSWORD_LEN: usize = AdminPassword::MAX_BYTES;

pub struct AuthService {
    store: Arc<dyn Store>,
    /// What logins and verifications read (and the writes those reads must see): the cache
    /// when the server has one, else `store`. Every other call goes to `store`.
    hot: HotPath,
    policy: Policy,
    /// What every expiry, lock and key window is judged by.
    clock: Clock,
    api_hasher: ApiPasswordHasher,
    admin_hasher: AdminPasswordHasher,
    keys: RwLock<Arc<KeyRing>>,
    /// Opens the active signing key when the ring is reloaded from the store.
    sealer: KeySealer,
    /// When a token with an unknown kid last made us reload the ring (see `gateway`).
    last_kid_reload: Mutex<Option<std::time::Instant>>,
    /// Tokens whose signature was checked already (see `token_cache`).
    verified_tokens: token_cache::TokenCache,
    /// Notified whenever a login attempt ends, for those waiting for a place (see `lockout`).
    attempts_ended: Arc<tokio::sync::Notify>,
    tokens_issued: metrics::Counter,
    /// Keys' latest use, until it is written in the next batch (see `key_use`).
    key_use: key_use::KeyUse,
    /// Rate limits and credits (see `limits`).
    limiter: limits::Limiter,
}

mod gateway;
mod paging;
#[cfg(test)]
mod testing;
mod token_cache;
pub use gateway::{
    CLOCK_LEEWAY, MAX_KEY_RELOAD_INTERVAL, MAX_TOKEN_LEN, RevocationLimits, Revoked, TokenRefusal, Verification,
    VerifiedToken, read_key_ring, verifies_until,
};
pub use key_use::KEY_USE_FLUSH_EVERY;
pub use paging::{KeyPage, MAX_PAGE};

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        policy: Policy,
        clock: Clock,
        api_hasher: ApiPasswordHasher,
        admin_hasher: AdminPasswordHasher,
        keys: KeyRing,
        sealer: KeySealer,
    ) -> Self {
        let limiter = limits::Limiter::new(None, store_as_credits(&store), limits::OnFailure::Open);
        Self {
            hot: HotPath::direct(&store),
            store,
            policy,
            clock,
            api_hasher,
            admin_hasher,
            keys: RwLock::new(Arc::new(keys)),
            sealer,
            last_kid_reload: Mutex::new(None),
            verified_tokens: token_cache::TokenCache::new(),
            attempts_ended: Arc::default(),
            tokens_issued: metrics::counter!(crate::monitoring::TOKENS_ISSUED),
            key_use: key_use::KeyUse::default(),
            limiter,
        }
    }

    /// Limits decided with `limiter` (shared state for replicas) instead of in memory alone.
    pub fn with_limiter(mut self, limiter: limits::Limiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// The limits' upkeep for as long as the server runs: counts shared (replicas) or
    /// balances written (one server) every `limits::SYNC_EVERY`; old shared windows purged.
    pub async fn keep_limits_synced(self: Arc<Self>) {
        let mut tick = tokio::time::interval(limits::SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_purge = std::time::Instant::now();
        loop {
            tick.tick().await;
            let now = self.clock.now();
            self.limiter.sync(now).await;
            if std::time::Instant::now() >= next_purge {
                if let Err(e) = self.limiter.purge(now).await {
                    tracing::debug!(error = %e, "cannot purge old limit windows; next time");
                }
                next_purge = std::time::Instant::now() + std::time::Duration::from_secs(60);
            }
        }
    }

    /// Writes out what the limits hold back (counts, balances), as the server stops.
    pub async fn flush_limits(&self) {
        self.limiter.sync(self.clock.now()).await;
    }

    /// Whether the limits' shared state answers (always, with none).
    pub fn limit_state_reachable(&self) -> bool {
        !self.limiter.outages.is_down()
    }

    /// How many outages of the limits' shared state this server has seen.
    pub fn limit_state_outages(&self) -> u64 {
        self.limiter.outages.count()
    }

    /// The hot paths answered by `hot` (a cache in front of this service's store) instead.
    pub fn with_hot_path(mut self, hot: HotPath) -> Self {
        self.hot = hot;
        self
    }

    /// Writes out what the service holds back to write in batches: keys' last use (see
    /// `key_use`), and the limits' counts and credit balances (see `limits`). Called once,
    /// when the server stops, after the last request has been answered
    /// (`startup::Application::run_until`, step 3): every batched writer flushes from here.
    /// (Session touches are written at once.)
    pub async fn flush(&self) -> Result<()> {
        self.flush_limits().await;
        self.flush_key_use().await.map(|_| ())
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// API client login: the key's password against its stored HMAC, then a signed token
    /// with all the key's scopes.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn api_login(&self, api_key: &str, password: &str, client: ClientAddr) -> Result<IssuedToken> {
        self.client_credentials(api_key, password, client, None).await
    }

    /// The OAuth 2.0 client credentials grant, with the key as client id: a token with the
    /// `requested` scopes, which must all be the key's (RFC 6749 §3.3), or with all the
    /// key's scopes when none are asked for.
    pub async fn client_credentials(
        &self,
        api_key: &str,
        password: &str,
        client: ClientAddr,
        requested: Option<Scopes>,
    ) -> Result<IssuedToken> {
        let key = self.authenticate_key(api_key, password, client).await?;
        // Debug, not info: machine logins come by the thousand per second, and a line each
        // would be most of the log. Failures are counted towards lockout, and lockouts audited.
        tracing::debug!(key_ref = %key.key_ref, account = %key.account_id, "api key login");
        let scopes = match requested {
            Some(requested) if !requested.is_empty() => {
                if !requested.is_subset_of(&key.scopes) {
                    return Err(AuthError::InvalidScope);
                }
                requested
            }
            _ => key.scopes.clone(),
        };
        self.issue_token(&key, &scopes)
    }

    /// Checks an API key and its password, without issuing anything: how OAuth clients
    /// authenticate to introspection and revocation. Failures count towards the key's and
    /// the client address's lockout; while either is locked the answer is `Locked`,
    /// whatever the password. A disabled or expired key answers as a wrong password does;
    /// so does a rolled key's old password once its grace period is over.
    pub async fn authenticate_key(
        &self,
        api_key: &str,
        password: &str,
        client: ClientAddr,
    ) -> Result<AuthenticatedKey> {
        let api_key = ApiKeyId::parse(api_key).ok();
        let subjects = login_subjects(api_key.clone().map(Subject::ApiKey), client);
        // Before the secret is checked: a burst gets no more checks than the lock allows.
        let attempt = self.admit(subjects, client).await?;
        let now = self.clock.now();
        let found = match (api_key, ApiPassword::parse(password)) {
            (Some(api_key), Ok(password)) => match self.hot.keys.find_key(&api_key).await {
                Ok(Some(key)) => {
                    // Both hashes are always compared: which password matched, or whether
                    // the key is usable, shows in no timing.
                    let current = self.api_hasher.verify(&password, &key.secret_hash);
                    let previous = match &key.previous {
                        Some(previous) => self.api_hasher.verify(&password, &previous.hash) && now < previous.until,
                        None => {
                            self.api_hasher.burn(password.expose());
                            false
                        }
                    };
                    let ok = (current | previous) & key.is_usable(now);
                    Ok((Some(key), ok))
                }
                Ok(None) => {
                    self.api_hasher.burn(password.expose());
                    self.api_hasher.burn(password.expose());
                    Ok((None, false))
                }
                Err(e) => Err(e),
            },
            _ => Ok((None, false)),
        };
        let (key, ok) = match found {
            Ok(found) => found,
            Err(e) => return Err(attempt.abandon(e.into()).await),
        };
        let account = key.as_ref().map(|k| k.account_id);
        let Some(key) = key.filter(|_| ok) else {
            return Err(attempt.failed(account).await);
        };
        attempt.succeeded().await?;
        self.key_use.record(key.key_ref, now);
        Ok(key.into())
    }

    async fn admit(&self, subjects: Vec<Subject>, client: ClientAddr) -> Result<Attempt> {
        Attempt::admit(
            &self.hot.lockout,
            &self.store,
            &self.policy.lockout,
            &self.clock,
            &self.attempts_ended,
            subjects,
            client,
        )
        .await
    }

    /// A token for `key` with `scopes`, which never outlives the key.
    fn issue_token(&self, key: &AuthenticatedKey, scopes: &Scopes) -> Result<IssuedToken> {
        let now = self.clock.now().max(0) as u64;
        let mut exp = now + self.policy.token_ttl;
        if let Some(key_expiry) = key.expires_at {
            exp = exp.min(key_expiry.max(0) as u64);
        }
        let api_key = key.api_key.to_string();
        let claims = AccessClaims {
            iss: self.policy.issuer.clone(),
            sub: key.key_ref.to_string(),
            aud: self.policy.audience.clone(),
            iat: now,
            nbf: now,
            exp,
            jti: crypto::token_id(),
            acc: key.account_id.to_string(),
            client_id: api_key.clone(),
            api_key,
            scope: (!scopes.is_empty()).then(|| scopes.as_str().to_owned()),
        };
        let token = self.key_ring().sign(&claims)?;
        self.tokens_issued.increment(1);
        Ok(IssuedToken { token, claims })
    }

    /// Admin login. An unknown email costs one argon2 check against a dummy hash, so it
    /// answers exactly as slowly and exactly as a wrong password does; both are counted
    /// towards lockout and audited alike.
    #[tracing::instrument(skip_all)]
    pub async fn admin_login(
        &self,
        email: &str,
        password: &str,
        previous: Option<&str>,
        client: ClientAddr,
    ) -> Result<NewSession> {
        let email = Email::parse(email).ok();
        let subjects = login_subjects(email.clone().map(Subject::Email), client);
        // Before any hashing: a locked identity or address costs no argon2 run, and a burst
        // gets no more runs than the lock allows.
        let attempt = self.admit(subjects, client).await?;
        let checked = async {
            let admin = match &email {
                Some(email) => self.store.find_admin(email).await?,
                None => None,
            };
            let ok = if password.len() > MAX_PASSWORD_LEN {
                false
            } else {
                let stored = admin.as_ref().map(|a| a.password_hash.clone());
                self.admin_hasher.verify(stored, SecretString::from(password)).await?
            };
            Ok::<_, AuthError>((admin, ok))
        };
        let (admin, ok) = match checked.await {
            Ok(checked) => checked,
            Err(e) => return Err(attempt.abandon(e).await),
        };
        let (Some(admin), true) = (admin.as_ref(), ok) else {
            tracing::info!("admin login failed");
            let account = admin.as_ref().map(|a| a.account_id);
            // The attempted email only if it is one: people type passwords into the email
            // field, and the audit log must never hold a password.
            let actor = email.as_ref().map_or_else(|| "(not an email)".to_owned(), |e| e.to_string());
            let at = self.clock.now();
            audit::record(self.store.as_ref(), at, AuditAction::AdminLoginFailed, account, actor, Some(client), None)
                .await;
            return Err(attempt.failed(account).await);
        };
        attempt.succeeded().await?;
        // A fresh id at every login, and the one the browser came with is dropped, so a
        // session id planted before login (fixation) is worthless after it.
        if let Some(previous) = previous {
            self.store.delete_session(&session::hash_session(previous)).await?;
        }
        let (token, hash) = session::new_session();
        let now = self.clock.now();
        let record = SessionRecord {
            admin_id: admin.id,
            account_id: admin.account_id,
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.policy.session_lifetime as i64,
        };
        self.store.insert_session(&hash, &record).await?;
        tracing::info!(account = %admin.account_id, admin = %admin.id.0, "admin login");
        audit::record(
            self.store.as_ref(),
            now,
            AuditAction::AdminLogin,
            Some(admin.account_id),
            audit::admin_actor(admin.id),
            Some(client),
            Some(admin.email.to_string()),
        )
        .await;
        Ok(NewSession { token: SecretString::from(token), account_id: admin.account_id, email: admin.email.clone() })
    }

    /// The live session behind a cookie value, enforcing absolute and idle expiry.
    pub async fn session(&self, token: &str, client: ClientAddr) -> Result<AdminSession> {
        if token.is_empty() || token.len() > 128 {
            return Err(AuthError::NoSession);
        }
        let hash = session::hash_session(token);
        let record = self.store.find_session(&hash).await?.ok_or(AuthError::NoSession)?;
        let now = self.clock.now();
        if now >= record.expires_at || now - record.last_seen_at >= self.policy.session_idle_timeout as i64 {
            self.store.delete_session(&hash).await?;
            return Err(AuthError::NoSession);
        }
        if now - record.last_seen_at >= TOUCH_INTERVAL.min(self.policy.session_idle_timeout as i64 / 4) {
            self.store.touch_session(&hash, now).await?;
        }
        Ok(AdminSession { hash, admin_id: record.admin_id, account_id: record.account_id, client })
    }

    pub async fn logout(&self, session: &AdminSession) -> Result<()> {
        self.store.delete_session(&session.hash).await?;
        tracing::info!(account = %session.account_id, admin = %session.admin_id.0, "admin logout");
        self.audit_admin_action(session, AuditAction::AdminLogout, None).await;
        Ok(())
    }

    async fn audit_admin_action(&self, session: &AdminSession, action: AuditAction, target: Option<String>) {
        let actor = audit::admin_actor(session.admin_id);
        let (at, account, client) = (self.clock.now(), Some(session.account_id), Some(session.client));
        audit::record(self.store.as_ref(), at, action, account, actor, client, target).await;
    }

    /// The session's account's audit log, newest first: entries with an id below `before`,
    /// at most `limit`.
    pub async fn audit_log(&self, session: &AdminSession, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        Ok(self.store.audit_events(&AuditScope::Account(session.account_id), before, limit).await?)
    }
}

fn store_as_credits(store: &Arc<dyn Store>) -> Arc<dyn crate::store::CreditStore> {
    store.clone()
}

/// What a login attempt is counted against: its identity, when it names a well-formed one
/// (a malformed email or key can never succeed, so it gets no counter of its own), and the
/// client address, always.
fn login_subjects(identity: Option<Subject>, client: ClientAddr) -> Vec<Subject> {
    identity.into_iter().chain(std::iter::once(Subject::Address(client))).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::{
        testing::{ADMIN_EMAIL, ADMIN_PASSWORD, TestService, client, policy},
        *,
    };

    async fn signed_in(policy: Policy) -> (TestService, String) {
        let t = TestService::new(policy).await;
        t.admin().await;
        let login = t.auth.admin_login(ADMIN_EMAIL, ADMIN_PASSWORD, None, client()).await.unwrap();
        let token = login.token.expose_secret().to_owned();
        (t, token)
    }

    fn is_live(session: Result<AdminSession>) -> bool {
        match session {
            Ok(_) => true,
            Err(AuthError::NoSession) => false,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_session_ends_once_idle_for_the_timeout_and_each_use_restarts_the_wait() {
        let (t, token) = signed_in(Policy { session_idle_timeout: 600, ..policy() }).await;
        for _ in 0..3 {
            t.clock.advance(Duration::from_secs(599));
            assert!(is_live(t.auth.session(&token, client()).await));
        }
        t.clock.advance(Duration::from_secs(600));
        assert!(!is_live(t.auth.session(&token, client()).await));
        // Ended for good: the row is gone, not merely judged idle.
        t.clock.set(testing::START);
        assert!(!is_live(t.auth.session(&token, client()).await));
    }

    #[tokio::test]
    async fn a_session_ends_at_its_lifetime_however_active() {
        let (t, token) = signed_in(Policy { session_idle_timeout: 600, session_lifetime: 3_600, ..policy() }).await;
        for _ in 0..7 {
            t.clock.advance(Duration::from_secs(500));
            assert!(is_live(t.auth.session(&token, client()).await));
        }
        t.clock.advance(Duration::from_secs(100));
        assert!(!is_live(t.auth.session(&token, client()).await));
    }

    #[tokio::test]
    async fn a_token_verifies_until_its_expiry_plus_the_leeway() {
        let t = TestService::new(Policy { token_ttl: 900, ..policy() }).await;
        let (key, password) = t.api_key().await;
        let issued = t.auth.api_login(key.as_str(), password.expose(), client()).await.unwrap();
        assert_eq!(issued.claims.exp, testing::START as u64 + 900);
        t.clock.advance(Duration::from_secs(900 + CLOCK_LEEWAY));
        assert!(t.auth.verify_token(&issued.token).await.is_ok());
        t.clock.advance(Duration::from_secs(1));
        assert!(matches!(t.auth.verify_token(&issued.token).await, Err(AuthError::InvalidToken(_))));
    }
}
