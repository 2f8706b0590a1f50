//! Store-level fixtures, for the tests that drive `keygate::store` directly rather than a
//! server: a fresh store location per backend and a macro running each case on both.

use std::sync::Arc;

use keygate::{
    domain::{AccountId, ApiKeyId, Email, KeyRef},
    store::{self, AdminId, KeyRecord, NewAdmin, Store},
};
use uuid::Uuid;

use super::PgDatabase;

/// A fresh, empty store location; keeps its file or database alive while in scope.
pub struct Fixture {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pub db: Option<PgDatabase>,
}

impl Fixture {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
        Fixture { url, _dir: Some(dir), db: None }
    }

    pub async fn postgres() -> Option<Self> {
        let db = PgDatabase::create_migrated().await?;
        Some(Fixture { url: db.url.clone(), _dir: None, db: Some(db) })
    }

    pub fn is_postgres(&self) -> bool {
        self.db.is_some()
    }

    /// Another fresh location of the same backend.
    pub async fn fresh(&self) -> Fixture {
        match self.db {
            Some(_) => Fixture::postgres().await.unwrap(),
            None => Fixture::sqlite(),
        }
    }

    /// A new store on this location, with a pool of its own (as another replica has).
    pub async fn open(&self) -> Arc<dyn Store> {
        store::connect(&self.url).await.unwrap()
    }
}

/// Each case as a module with a `sqlite` and a `postgres` test.
#[macro_export]
macro_rules! store_cases {
    ($(async fn $name:ident($fx:ident: Fixture) $body:block)*) => {
        $(mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($fx: Fixture) $body
            #[tokio::test]
            async fn sqlite() {
                run(Fixture::sqlite()).await
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(fx) = Fixture::postgres().await {
                    run(fx).await
                }
            }
        })*
    };
}

pub fn new_admin(email: &str) -> NewAdmin {
    NewAdmin {
        id: AdminId(Uuid::new_v4()),
        email: Email::parse(email).unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        created_at: keygate::clock::Clock::system().now(),
    }
}

pub fn key_record(account_id: AccountId, created_at: i64) -> KeyRecord {
    KeyRecord {
        key_ref: KeyRef::generate(),
        account_id,
        api_key: ApiKeyId::generate(),
        secret_hash: keygate::crypto::random_bytes::<32>().to_vec(),
        scopes: Default::default(),
        created_at,
        expires_at: None,
        enabled: true,
        previous: None,
    }
}
