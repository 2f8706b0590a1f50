//! For the service's unit tests: an `AuthService` on a fresh embedded store, with a manual
//! clock the test moves instead of sleeping.

use std::sync::Arc;

use super::{AdminSession, AuthService, Policy, admins::AdminDirectory, lockout::LockoutPolicy};
use crate::{
    clock::ManualClock,
    crypto::{
        AdminPasswordHasher, ApiPasswordHasher,
        signing::{KeySealer, SigningAlg},
    },
    domain::{AccountId, AccountName, AdminPassword, ApiKeyId, ApiPassword, ClientAddr, Email, KeyRef, Scopes},
    store::{KeyAbout, KeyRecord, Store, UnixTime, sqlite::SqliteStore},
};

/// Where every test's clock starts.
pub const START: UnixTime = 1_750_000_000;
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// The settings' defaults.
pub fn policy() -> Policy {
    Policy {
        issuer: "https://keygate.test".into(),
        audience: "keygate".into(),
        token_ttl: 900,
        session_idle_timeout: 1_800,
        session_lifetime: 43_200,
        lockout: LockoutPolicy::default(),
        revocations: Default::default(),
        audit_retention: None,
    }
}

pub fn client() -> ClientAddr {
    ClientAddr::new("192.0.2.7".parse().unwrap())
}

pub struct TestService {
    pub auth: AuthService,
    pub clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl TestService {
    /// The service with `policy`, its clock at `START`, its first signing key made then.
    pub async fn new(policy: Policy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let clock = ManualClock::new(START);
        let sealer = KeySealer::new([2; 32]);
        store.insert_first_signing_key(&sealer.generate(SigningAlg::Es256).unwrap(), START).await.unwrap();
        let ring = super::read_key_ring(store.as_ref(), &sealer, policy.token_ttl, START).await.unwrap();
        let auth = AuthService::new(
            store,
            policy,
            clock.clock(),
            ApiPasswordHasher::new([1; 32]),
            // Room to queue: a hash's place is given back only just after its result.
            AdminPasswordHasher::new(1, 4),
            ring,
            sealer,
        );
        Self { auth, clock, _dir: dir }
    }

    /// Creates `ADMIN_EMAIL` (password `ADMIN_PASSWORD`) in a new account.
    pub async fn admin(&self) -> AccountId {
        let admins = AdminDirectory::new(self.auth.store.clone(), self.auth.admin_hasher.clone(), self.clock.clock());
        let email = Email::parse(ADMIN_EMAIL).unwrap();
        let account = AccountName::parse("acme").unwrap();
        admins.create(&email, &account, AdminPassword::parse(ADMIN_PASSWORD).unwrap()).await.unwrap()
    }

    /// A new API key of a new account, and its password.
    pub async fn api_key(&self) -> (ApiKeyId, ApiPassword) {
        let account = self.admin().await;
        let (api_key, password) = (ApiKeyId::generate(), ApiPassword::generate());
        let record = KeyRecord {
            key_ref: KeyRef::generate(),
            account_id: account,
            api_key: api_key.clone(),
            secret_hash: self.auth.api_hasher.hash(&password).to_vec(),
            created_at: self.clock.now(),
            scopes: Scopes::default(),
            expires_at: None,
            enabled: true,
            previous: None,
        };
        self.auth.store.insert_key(&record, &KeyAbout::default()).await.unwrap();
        (api_key, password)
    }

    /// A session of `ADMIN_EMAIL` in a new account.
    pub async fn session(&self) -> AdminSession {
        self.admin().await;
        let login = self.auth.admin_login(ADMIN_EMAIL, ADMIN_PASSWORD, None, client()).await.unwrap();
        self.auth.session(secrecy::ExposeSecret::expose_secret(&login.token), client()).await.unwrap()
    }
}
