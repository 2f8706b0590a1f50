use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::ApiPassword;

/// Keyed hash of API passwords. The key never leaves the process, so the stored digests
/// cannot be checked offline by whoever copies the database.
#[derive(Clone)]
pub struct ApiPasswordHasher {
    mac: Hmac<Sha256>,
}

impl ApiPasswordHasher {
    pub fn new(key: [u8; 32]) -> Self {
        // HMAC accepts keys of any length; 32 bytes cannot be refused.
        #[allow(clippy::expect_used)]
        let mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        Self { mac }
    }

    pub fn hash(&self, password: &ApiPassword) -> [u8; 32] {
        self.digest(password.expose().as_bytes())
    }

    /// Constant-time comparison: how long it takes says nothing about how many bytes matched.
    pub fn verify(&self, password: &ApiPassword, stored: &[u8]) -> bool {
        self.hash(password).ct_eq(stored).into()
    }

    /// Spends the same work as a real check for callers whose key does not exist, so
    /// "unknown key" and "wrong password" cannot be told apart by timing.
    pub fn burn(&self, password: &str) {
        std::hint::black_box(self.digest(password.as_bytes()));
    }

    fn digest(&self, bytes: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_right_password_under_the_right_key() {
        let h = ApiPasswordHasher::new([1; 32]);
        let p = ApiPassword::generate();
        let stored = h.hash(&p);
        assert!(h.verify(&p, &stored));
        assert!(!h.verify(&ApiPassword::generate(), &stored));
        assert!(!ApiPasswordHasher::new([2; 32]).verify(&p, &stored));
        assert!(!h.verify(&p, &stored[..31]));
    }
}
