//! Secrets and signatures: no HTTP and no storage here.
//!
//! Which primitive guards which secret, and why:
//! - API passwords are machine-generated with 190 bits of entropy, so a slow hash buys
//!   nothing; a keyed HMAC-SHA256 makes a stolen database useless without the master key
//!   and keeps logins fast (`ApiPasswordHasher`).
//! - Admin passwords are chosen by people, so they get argon2id on a few dedicated, bounded,
//!   low-priority threads (`AdminPasswordHasher`).
//! - Session ids are 256 random bits; the store keeps only their SHA-256, so a database
//!   read does not yield live sessions (`session`).
//! - JWTs are signed asymmetrically, so gateways can verify with public keys alone; the
//!   private halves are sealed at rest under a key derived from the master key (`signing`).

mod admin_password;
mod api_password;
mod master;
pub mod session;
pub mod signing;

pub use admin_password::{AdminPasswordHasher, HashPoolError, params as admin_password_params};
pub use api_password::ApiPasswordHasher;
pub use master::{MasterKey, MasterKeyError, private_file};

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // Without an OS RNG no secret we could make would be safe; stopping is the only answer.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the OS random number generator failed");
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill_random(&mut out);
    out
}

/// A token id (`jti`): a random UUID from aws-lc's per-thread DRBG, seeded by the OS and
/// already drawing every signature's nonce. Ids need uniqueness, not a kernel call each:
/// `getrandom` would be an API login's one system call besides its read and write.
pub fn token_id() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        fill_random(&mut bytes);
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_random_v4_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| token_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version(), Some(uuid::Version::Random));
            assert_eq!(id.len(), 32);
        }
    }
}
