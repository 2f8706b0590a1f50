//! Helpers for the cache tests: knowing the caches are in use, and polling for a change
//! to arrive within its bound.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use reqwest::{Client, Response};

use super::TestApp;

/// How long a deletion or revocation may take to reach every server (issue: 1 second).
pub const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

impl TestApp {
    /// A key of this server's admin, its ref and a token, with the token verified twice on
    /// `verifier` (this server or a replica) so that both the key and the verified token sit
    /// in that server's caches: (api_key, password, key_ref, token).
    pub async fn cached_key_on(&self, verifier: &TestApp) -> (String, String, String, String) {
        self.wait_for_caches().await;
        verifier.wait_for_caches().await;
        self.admin_login().await;
        let (api_key, password) = self.generate_key().await;
        let key_ref = self.ref_of(&api_key).await;
        let token = self.token(&api_key, &password).await;
        for _ in 0..2 {
            assert_eq!(verifier.verify(&token).await.status(), reqwest::StatusCode::OK);
        }
        (api_key, password, key_ref, token)
    }

    /// Waits until the server has loaded its caches, so that what follows is answered from
    /// memory and a test of their coherence is not passed by the store answering instead.
    pub async fn wait_for_caches(&self) {
        for _ in 0..3000 {
            if self.caches_in_use() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the caches were never loaded:\n{}", self.logs());
    }

    /// `POST /oauth/revoke` with the key's client credentials.
    pub async fn revoke_token(&self, api_key: &str, password: &str, token: &str) -> Response {
        Client::new()
            .post(self.url("/oauth/revoke"))
            .basic_auth(api_key, Some(password))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
    }
}

/// Polls `holds` until it is true, from now until `since + bound`; whether it came true in
/// time. A correctness bound, not a speed measurement: the server promises the change
/// within the bound, so a poll after it that still fails is a broken promise.
pub async fn within<F, Fut>(since: Instant, bound: Duration, mut holds: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        let asked_at = Instant::now();
        if holds().await {
            return true;
        }
        if asked_at > since + bound {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
