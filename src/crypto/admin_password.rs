use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
    mpsc,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString},
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane).
pub fn params() -> Params {
    // Constant, valid parameters.
    #[allow(clippy::expect_used)]
    Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashPoolError {
    /// More work is queued than the pool will take: refuse now rather than queue without bound.
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing task failed")]
    Failed,
}

/// Hashes and checks admin passwords on a fixed set of dedicated threads, never on the
/// async workers: each argon2 call takes tens of milliseconds of CPU over 19 MiB, which would
/// stall every other request on the worker that ran it. The thread count bounds how many
/// run at once and an admission limit bounds how many wait, so a login flood is refused at
/// once past the limit, and what it costs in memory is fixed.
///
/// Each thread allocates its 19 MiB of argon2 memory at its first job and reuses it, so
/// hashing memory is at most workers × 19 MiB. Not tokio's blocking pool with a fresh buffer
/// per call (as argon2's convenience API does): that pool grows a thread whenever none is
/// idle at the instant of a spawn, and the allocator keeps freed 19 MiB buffers per thread,
/// so a login flood would leave hundreds of MiB resident.
#[derive(Clone)]
pub struct AdminPasswordHasher {
    jobs: mpsc::SyncSender<Job>,
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
}

/// What an unknown email's password is checked against, so that it costs exactly what a
/// wrong password costs: argon2id with `params()`, of 32 random bytes that were thrown away.
/// A constant rather than a hash made at each start, which would hold start-up for one
/// argon2 run and the first touch of its 19 MiB.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$o63G+PxsXWlumyIR4HxGzQ$Khy/bdy5o51o5FcUI57Yxo//ZuRInjtEzKWNDJJPvYk";

/// Work for a hashing thread, given that thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

impl AdminPasswordHasher {
    /// `workers` threads hash; up to `queue` more requests wait their turn.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let (jobs, receiver) = mpsc::sync_channel::<Job>(workers + queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..workers {
            let receiver = receiver.clone();
            // Start-up: without its threads the service could not check a single password.
            #[allow(clippy::expect_used)]
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&receiver))
                .expect("cannot start a password-hashing thread");
        }
        Self { jobs, admitted: Arc::new(AtomicUsize::new(0)), max_admitted: workers + queue }
    }

    /// Checks and hashes running or waiting for a thread.
    pub fn in_use(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) for a new password.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashPoolError> {
        self.run(move |memory| hash_with(memory, password.expose_secret().as_bytes()).ok_or(HashPoolError::Failed))
            .await?
    }

    /// Checks `password` against `stored`, or against the dummy hash when there is no user.
    pub async fn verify(&self, stored: Option<String>, password: SecretString) -> Result<bool, HashPoolError> {
        let is_real = stored.is_some();
        let ok = self
            .run(move |memory| {
                let phc = stored.as_deref().unwrap_or(DUMMY_HASH);
                verify_with(memory, phc, password.expose_secret().as_bytes())
            })
            .await?;
        Ok(ok && is_real)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, HashPoolError> {
        let Some(admission) = Admission::try_new(&self.admitted, self.max_admitted) else {
            metrics::counter!(crate::monitoring::ADMIN_HASH_REJECTED).increment(1);
            return Err(HashPoolError::Busy);
        };
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            // The slot is held until the work is done, even if the caller gave up waiting:
            // callers that disconnect cannot make the queue exceed its bound.
            let _admission = admission;
            let _ = done.send(work(memory));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                metrics::counter!(crate::monitoring::ADMIN_HASH_REJECTED).increment(1);
                HashPoolError::Busy
            }
            mpsc::TrySendError::Disconnected(_) => HashPoolError::Failed,
        })?;
        result.await.map_err(|_| HashPoolError::Failed)
    }
}

#[cfg(target_os = "linux")]
const HASHING_NICE: i32 = 10;

/// A hashing thread: runs jobs, on memory it allocates at its first job and keeps, until
/// every sender is gone. A panicking job loses only its own result, never the thread.
fn work(receiver: &Mutex<mpsc::Receiver<Job>>) {
    // Hashing yields to the async workers when both want a core (an admin-login flood must
    // not stretch API-login latency) and still gets every idle cycle, and a share of a busy
    // one. How large a share is the trade: at nice 10 (a weight of about a tenth of the
    // workers') admin logins still finish within seconds while API logins saturate the
    // machine; nice 19 or SCHED_IDLE all but starve them. On Linux this sets the calling
    // thread's nice value only; where it is refused, hashing runs at the default priority.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::nice(HASHING_NICE);
    let mut memory = Vec::new();
    loop {
        let job = match receiver.lock() {
            Ok(guard) => guard.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        if memory.is_empty() {
            memory = vec![Block::default(); params().block_count()];
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut memory)));
    }
}

/// argon2id of `password` under a fresh random salt, as a PHC string.
fn hash_with(memory: &mut [Block], password: &[u8]) -> Option<String> {
    let params = params();
    let salt = SaltString::encode_b64(&super::random_bytes::<16>()).ok()?;
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt.decode_b64(&mut salt_bytes).ok()?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, salt_raw, &mut out, &mut *memory)
        .ok()?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).ok()?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).ok()?),
    };
    Some(phc.to_string())
}

/// Whether `password` matches the PHC string `phc`, computed on `memory` (or on a buffer of
/// its own if the stored parameters need more), compared in constant time.
fn verify_with(memory: &mut [Block], phc: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) =
        (Algorithm::try_from(parsed.algorithm), Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = if params.block_count() <= memory.len() {
        argon2.hash_password_into_with_memory(password, salt, &mut out, &mut *memory)
    } else {
        argon2.hash_password_into(password, salt, &mut out)
    };
    computed.is_ok() && bool::from(expected.as_bytes().ct_eq(&out))
}

/// One slot of the bounded admission count, released on drop.
struct Admission(Arc<AtomicUsize>);

impl Admission {
    fn try_new(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checking against the dummy must run argon2 in full, as for a real admin's hash: had it
    /// other parameters, or did it not parse, an unknown email would answer faster.
    #[test]
    fn the_dummy_hash_costs_what_a_real_hash_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let mut memory = vec![Block::default(); params().block_count()];
        let real = hash_with(&mut memory, b"a real admin's password").unwrap();
        let real = PasswordHash::new(&real).unwrap();
        assert_eq!(Algorithm::try_from(dummy.algorithm).unwrap(), Algorithm::Argon2id);
        assert_eq!(dummy.version, real.version);
        assert_eq!(Params::try_from(&dummy).unwrap(), Params::try_from(&real).unwrap());
        let salt_len = |h: &PasswordHash| h.salt.unwrap().decode_b64(&mut [0u8; 64]).unwrap().len();
        assert_eq!(salt_len(&dummy), salt_len(&real));
        assert_eq!(dummy.hash.unwrap().len(), real.hash.unwrap().len());
        assert!(!verify_with(&mut memory, DUMMY_HASH, b""));
    }

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

    /// The nice value is field 19 of /proc/<tid>/stat (counting from the pid, after the
    /// parenthesised name).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_yield_to_the_async_workers() {
        let nice = |stat: String| -> i32 {
            stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19 - 3).unwrap().parse().unwrap()
        };
        let own = nice(std::fs::read_to_string("/proc/thread-self/stat").unwrap());
        let h = AdminPasswordHasher::new(1, 4);
        let hashing = h.run(|_| std::fs::read_to_string("/proc/thread-self/stat").unwrap()).await.unwrap();
        const { assert!(super::HASHING_NICE > 0) };
        assert_eq!(nice(hashing), (own + super::HASHING_NICE).min(19));
        // The caller's own priority is untouched.
        assert_eq!(nice(std::fs::read_to_string("/proc/thread-self/stat").unwrap()), own);
    }

    #[tokio::test]
    async fn interoperates_with_the_reference_implementation() {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        let h = AdminPasswordHasher::new(1, 4);
        let ours = h.hash(SecretString::from("correct horse battery")).await.unwrap();
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        assert!(reference.verify_password(b"correct horse battery", &PasswordHash::new(&ours).unwrap()).is_ok());
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = reference.hash_password(b"correct horse battery", &salt).unwrap().to_string();
        assert!(h.verify(Some(theirs.clone()), SecretString::from("correct horse battery")).await.unwrap());
        assert!(!h.verify(Some(theirs), SecretString::from("correct horse batterY")).await.unwrap());
        // Other parameters (say, raised later) still verify, on a buffer of their own.
        let bigger = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(32 * 1024, 1, 1, None).unwrap());
        let phc = bigger.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(h.verify(Some(phc), SecretString::from("pw")).await.unwrap());
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
