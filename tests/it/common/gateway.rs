//! Gateway-test helpers: tokens signed with the server's own keys (so a refused token is
//! refused for the claim under test, not for a bad signature), forward-auth calls, and
//! direct store edits that stand in for the passing of time.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use keygate::{
    crypto::{
        MasterKey,
        signing::{AccessClaims, KeyRing, KeySealer, SigningAlg},
    },
    service, startup, store,
};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

use super::{TestApp, keygate_command};

pub fn now() -> u64 {
    keygate::clock::Clock::system().now() as u64
}

/// The JSON of one base64url JWT segment.
pub fn segment(token: &str, i: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestApp {
    pub fn database_url(&self) -> String {
        self.setting("KEYGATE_DATABASE_URL")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir().join("keygate.db").display()))
    }

    fn master_key(&self) -> MasterKey {
        match self.setting("KEYGATE_MASTER_KEY") {
            Some(encoded) => MasterKey::from_base64(encoded).unwrap(),
            None => MasterKey::load_or_create(&self.data_dir().join("master.key")).unwrap(),
        }
    }

    /// The server's keys, read from its store and opened with its master key, exactly as a
    /// reloading server does.
    pub async fn key_ring(&self) -> KeyRing {
        let store = store::connect(&self.database_url()).await.unwrap();
        let sealer = startup::key_sealer(&self.master_key());
        service::read_key_ring(store.as_ref(), &sealer, 86_400, keygate::clock::Clock::system().now()).await.unwrap()
    }

    /// A token signed by the server's active key with `claims`, whatever they say.
    pub async fn forge(&self, claims: &AccessClaims) -> String {
        self.key_ring().await.sign(claims).unwrap()
    }

    /// `GET /auth/verify` with `token` as the bearer token.
    pub async fn verify(&self, token: &str) -> Response {
        Client::new().get(self.url("/auth/verify")).bearer_auth(token).send().await.unwrap()
    }

    /// Runs the CLI with extra settings on top of the server's.
    pub fn cli_with(&self, extra: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        keygate_command(&env).args(args).output().unwrap()
    }

    /// Moves every retired signing key's retirement `seconds` into the past, as if that much
    /// time had gone by since the rotation.
    pub async fn age_retired_keys(&self, seconds: i64) {
        let url = self.database_url();
        if url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query("UPDATE signing_keys SET retired_at = retired_at - ? WHERE retired_at IS NOT NULL")
                .bind(seconds)
                .execute(&pool)
                .await
                .unwrap();
        } else {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query("UPDATE signing_keys SET retired_at = retired_at - $1 WHERE retired_at IS NOT NULL")
                .bind(seconds)
                .execute(&pool)
                .await
                .unwrap();
        }
    }

    /// Polls the JWKS until `done` holds for its kids, or panics after 30 s.
    pub async fn wait_for_jwks(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        for _ in 0..300 {
            let kids = self.jwks_kids().await;
            if done(&kids) {
                return kids;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the JWKS never {what}: {:?}", self.jwks_kids().await)
    }

    pub async fn jwks_kids(&self) -> Vec<String> {
        let jwks: Value =
            Client::new().get(self.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
    }
}

/// Claims as the server would issue them for `token`'s key, valid now.
pub fn claims_like(token: &str) -> AccessClaims {
    serde_json::from_value(segment(token, 1)).unwrap()
}

/// A key ring nobody else has: "another keygate", or an attacker's own key.
pub fn foreign_ring() -> KeyRing {
    let sealer = KeySealer::new(keygate::crypto::random_bytes::<32>());
    let key = sealer.generate(SigningAlg::Es256).unwrap();
    KeyRing::new(&sealer, &key, &[]).unwrap()
}

/// Asserts the forward-auth refusal of a presented token: 401, RFC 6750 challenge with
/// `error="invalid_token"`, problem+json body.
pub async fn assert_invalid_token(response: Response, what: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what} was not refused");
    let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""), "{what}: {challenge}");
    assert!(response.headers().get("x-auth-subject").is_none(), "{what}");
    super::assert_problem(response, StatusCode::UNAUTHORIZED).await;
}
