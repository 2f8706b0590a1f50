//! What keygate does, independent of HTTP: log API clients and admins in, manage keys and
//! sessions. Handlers translate requests into calls here; the CLI calls it too.

use std::sync::{Arc, Mutex, RwLock};

use secrecy::SecretString;
use uuid::Uuid;

use crate::{
    crypto::{
        AdminPasswordHasher, ApiPasswordHasher, HashPoolError,
        session::{self, SessionHash},
        signing::{AccessClaims, KeyRing, KeySealer, SigningError},
    },
    domain::{AccountId, ApiKeyId, ApiPassword, Email, KeyRef},
    store::{self, AdminId, KeyRecord, KeySummary, SessionRecord, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown key or email: deliberately one case, so callers cannot tell which.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("no valid admin session")]
    NoSession,
    #[error("not found")]
    NotFound,
    /// A bearer token that must not be honoured. The reason is for the debug log only:
    /// callers answer every case alike.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
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
}

/// An authenticated admin session.
#[derive(Debug, Clone)]
pub struct AdminSession {
    pub hash: SessionHash,
    pub admin_id: AdminId,
    pub account_id: AccountId,
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

/// A freshly generated key. The password exists in clear only here, to be shown once.
pub struct GeneratedKey {
    pub key_ref: KeyRef,
    pub api_key: ApiKeyId,
    pub password: ApiPassword,
}

/// Session activity is written back at most this often (or a quarter of the idle timeout,
/// if shorter), so that browsing does not cost a database write per request.
const TOUCH_INTERVAL: i64 = 60;
/// Longer inputs are refused before any hashing: no legitimate secret is this long, and
/// argon2 cost should not be chosen by the caller.
const MAX_PASSWORD_LEN: usize = 1024;

pub struct AuthService {
    store: Arc<dyn Store>,
    policy: Policy,
    api_hasher: ApiPasswordHasher,
    admin_hasher: AdminPasswordHasher,
    keys: RwLock<Arc<KeyRing>>,
    /// Opens the active signing key when the ring is reloaded from the store.
    sealer: KeySealer,
    /// When a token with an unknown kid last made us reload the ring (see `gateway`).
    last_kid_reload: Mutex<Option<std::time::Instant>>,
    /// Tokens whose signature was checked already (see `token_cache`).
    verified_tokens: token_cache::TokenCache,
}

mod gateway;
mod paging;
pub mod token_cache;
pub use gateway::{CLOCK_LEEWAY, MAX_KEY_RELOAD_INTERVAL, MAX_TOKEN_LEN, VerifiedToken, read_key_ring, verifies_until};
pub use paging::{KeyPage, MAX_PAGE};

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        policy: Policy,
        api_hasher: ApiPasswordHasher,
        admin_hasher: AdminPasswordHasher,
        keys: KeyRing,
        sealer: KeySealer,
    ) -> Self {
        Self {
            store,
            policy,
            api_hasher,
            admin_hasher,
            keys: RwLock::new(Arc::new(keys)),
            sealer,
            last_kid_reload: Mutex::new(None),
            verified_tokens: token_cache::TokenCache::new(),
        }
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

    /// API client login: the key's password against its stored HMAC, then a signed token.
    /// Also the OAuth 2.0 client credentials grant, with the key as client id.
    #[tracing::instrument(skip_all)]
    pub async fn api_login(&self, api_key: &str, password: &str) -> Result<IssuedToken> {
        let key = self.authenticate_key(api_key, password).await?;
        tracing::info!(key_ref = %key.key_ref, account = %key.account_id, "api key login");
        self.issue_token(&key)
    }

    /// Checks an API key and its password, without issuing anything: how OAuth clients
    /// authenticate to introspection and revocation.
    pub async fn authenticate_key(&self, api_key: &str, password: &str) -> Result<KeyRecord> {
        let (Ok(api_key), Ok(password)) = (ApiKeyId::parse(api_key), ApiPassword::parse(password)) else {
            return Err(AuthError::InvalidCredentials);
        };
        let Some(key) = self.store.find_key(&api_key).await? else {
            self.api_hasher.burn(password.expose());
            return Err(AuthError::InvalidCredentials);
        };
        if !self.api_hasher.verify(&password, &key.secret_hash) {
            return Err(AuthError::InvalidCredentials);
        }
        Ok(key)
    }

    fn issue_token(&self, key: &KeyRecord) -> Result<IssuedToken> {
        let now = store::now().max(0) as u64;
        let claims = AccessClaims {
            iss: self.policy.issuer.clone(),
            sub: key.key_ref.to_string(),
            aud: self.policy.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.policy.token_ttl,
            jti: Uuid::new_v4().simple().to_string(),
            acc: key.account_id.to_string(),
            api_key: key.api_key.to_string(),
        };
        let token = self.key_ring().sign(&claims)?;
        Ok(IssuedToken { token, claims })
    }

    /// Admin login. An unknown email costs one argon2 check against a dummy hash, so it
    /// answers exactly as slowly and exactly as a wrong password does.
    #[tracing::instrument(skip_all)]
    pub async fn admin_login(&self, email: &str, password: &str, previous: Option<&str>) -> Result<NewSession> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(AuthError::InvalidCredentials);
        }
        let email = Email::parse(email).ok();
        let admin = match &email {
            Some(email) => self.store.find_admin(email).await?,
            None => None,
        };
        let stored = admin.as_ref().map(|a| a.password_hash.clone());
        let ok = self.admin_hasher.verify(stored, SecretString::from(password)).await?;
        let (Some(admin), true) = (admin, ok) else {
            tracing::info!("admin login failed");
            return Err(AuthError::InvalidCredentials);
        };
        // A fresh id at every login, and the one the browser came with is dropped, so a
        // session id planted before login (fixation) is worthless after it.
        if let Some(previous) = previous {
            self.store.delete_session(&session::hash_session(previous)).await?;
        }
        let (token, hash) = session::new_session();
        let now = store::now();
        let record = SessionRecord {
            admin_id: admin.id,
            account_id: admin.account_id,
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.policy.session_lifetime as i64,
        };
        self.store.insert_session(&hash, &record).await?;
        tracing::info!(account = %admin.account_id, admin = %admin.id.0, "admin login");
        Ok(NewSession { token: SecretString::from(token), account_id: admin.account_id, email: admin.email })
    }

    /// The live session behind a cookie value, enforcing absolute and idle expiry.
    pub async fn session(&self, token: &str) -> Result<AdminSession> {
        if token.is_empty() || token.len() > 128 {
            return Err(AuthError::NoSession);
        }
        let hash = session::hash_session(token);
        let record = self.store.find_session(&hash).await?.ok_or(AuthError::NoSession)?;
        let now = store::now();
        if now >= record.expires_at || now - record.last_seen_at >= self.policy.session_idle_timeout as i64 {
            self.store.delete_session(&hash).await?;
            return Err(AuthError::NoSession);
        }
        if now - record.last_seen_at >= TOUCH_INTERVAL.min(self.policy.session_idle_timeout as i64 / 4) {
            self.store.touch_session(&hash, now).await?;
        }
        Ok(AdminSession { hash, admin_id: record.admin_id, account_id: record.account_id })
    }

    pub async fn logout(&self, session: &AdminSession) -> Result<()> {
        self.store.delete_session(&session.hash).await?;
        tracing::info!(account = %session.account_id, admin = %session.admin_id.0, "admin logout");
        Ok(())
    }

    pub async fn generate_key(&self, session: &AdminSession) -> Result<GeneratedKey> {
        // A clash of 20-character keys (~2^103 space) is practically impossible, but a
        // retry costs nothing and turns "practically" into "certainly not a 500".
        for _ in 0..3 {
            let generated = GeneratedKey {
                key_ref: KeyRef::generate(),
                api_key: ApiKeyId::generate(),
                password: ApiPassword::generate(),
            };
            let record = KeyRecord {
                key_ref: generated.key_ref,
                account_id: session.account_id,
                api_key: generated.api_key.clone(),
                secret_hash: self.api_hasher.hash(&generated.password).to_vec(),
                created_at: store::now(),
            };
            match self.store.insert_key(&record).await {
                Ok(()) => {
                    tracing::info!(account = %session.account_id, key_ref = %generated.key_ref, "api key generated");
                    return Ok(generated);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    pub async fn list_keys(&self, session: &AdminSession) -> Result<Vec<KeySummary>> {
        Ok(self.store.list_keys(session.account_id).await?)
    }

    pub async fn delete_key(&self, session: &AdminSession, key_ref: &str) -> Result<()> {
        // A malformed ref cannot name a key of this account: the same 404 as an unknown one.
        let key_ref = KeyRef::parse(key_ref).map_err(|_| AuthError::NotFound)?;
        if !self.store.delete_key(session.account_id, key_ref).await? {
            return Err(AuthError::NotFound);
        }
        tracing::info!(account = %session.account_id, key_ref = %key_ref, "api key deleted");
        Ok(())
    }
}
