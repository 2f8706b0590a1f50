use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::SaltString,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane).
fn argon2() -> Argon2<'static> {
    // Constant, valid parameters.
    #[allow(clippy::expect_used)]
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashPoolError {
    /// More work is queued than the pool will take: refuse now rather than queue without bound.
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing task failed")]
    Failed,
}

/// Hashes and checks admin passwords on tokio's blocking threads, never on the async
/// workers: each argon2 call is ~20 ms of CPU and 19 MiB of memory, which would stall every
/// other request on the worker that ran it. A semaphore bounds how many run at once and a
/// queue limit bounds how many wait, so a login flood costs bounded memory and fails fast.
#[derive(Clone)]
pub struct AdminPasswordHasher {
    running: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
    /// A real hash of a random password: unknown emails are checked against it so they cost
    /// exactly what a wrong password costs.
    dummy: Arc<str>,
}

impl AdminPasswordHasher {
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let dummy_password = super::random_bytes::<16>();
        let salt = SaltString::encode_b64(&super::random_bytes::<16>()).unwrap_or_else(|_| unreachable!());
        // Hashing a fixed-size buffer with valid parameters cannot fail.
        #[allow(clippy::expect_used)]
        let dummy = argon2().hash_password(&dummy_password, &salt).expect("argon2 hash of 16 bytes").to_string();
        Self {
            running: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: workers + queue,
            dummy: dummy.into(),
        }
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) for a new password.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashPoolError> {
        self.run(move || {
            let salt = SaltString::encode_b64(&super::random_bytes::<16>()).map_err(|_| HashPoolError::Failed)?;
            argon2()
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| HashPoolError::Failed)
        })
        .await?
    }

    /// Checks `password` against `stored`, or against the dummy hash when there is no user.
    pub async fn verify(&self, stored: Option<String>, password: SecretString) -> Result<bool, HashPoolError> {
        let dummy = self.dummy.clone();
        let is_real = stored.is_some();
        let ok = self
            .run(move || {
                let phc = stored.as_deref().unwrap_or(&dummy);
                PasswordHash::new(phc)
                    .map(|parsed| argon2().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(ok && is_real)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, HashPoolError> {
        let _admission = Admission::try_new(&self.admitted, self.max_admitted).ok_or(HashPoolError::Busy)?;
        let _permit = self.running.acquire().await.map_err(|_| HashPoolError::Failed)?;
        tokio::task::spawn_blocking(work).await.map_err(|_| HashPoolError::Failed)
    }
}

/// One slot of the bounded admission count, released on drop (also when the caller's
/// future is cancelled mid-wait).
struct Admission<'a>(&'a AtomicUsize);

impl<'a> Admission<'a> {
    fn try_new(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = AdminPasswordHasher::new(1, 4);
        let phc = h.hash(SecretString::from("correct horse battery")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h.verify(Some(phc.clone()), SecretString::from("correct horse battery")).await.unwrap());
        assert!(!h.verify(Some(phc), SecretString::from("wrong horse battery")).await.unwrap());
        assert!(!h.verify(None, SecretString::from("anything")).await.unwrap());
        assert!(!h.verify(Some("garbage".into()), SecretString::from("x")).await.unwrap());
    }

    #[tokio::test]
    async fn refuses_past_the_queue_limit() {
        let h = AdminPasswordHasher::new(1, 0);
        let slow = h.clone();
        let first = tokio::spawn(async move { slow.verify(None, SecretString::from("a")).await });
        // On this single-threaded test runtime, yielding lets the first check take its slot.
        tokio::task::yield_now().await;
        // The single slot is taken until the first check ends.
        let second = h.verify(None, SecretString::from("b")).await;
        assert!(first.await.unwrap().is_ok());
        assert_eq!(second, Err(HashPoolError::Busy));
    }
}
