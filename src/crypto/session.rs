//! Admin session ids: 256 bits from the CSPRNG, handed to the browser once and stored only
//! as a SHA-256 digest. An unsalted fast hash is enough because the input is random and
//! long; it means a copy of the sessions table cannot be replayed as cookies.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

pub type SessionHash = [u8; 32];

/// A new session: the cookie value and the digest to store.
pub fn new_session() -> (String, SessionHash) {
    let token = URL_SAFE_NO_PAD.encode(super::random_bytes::<32>());
    let hash = hash_session(&token);
    (token, hash)
}

/// The digest of a presented cookie value. Any string is accepted: a forged one simply
/// finds no row, and the lookup by digest leaks nothing about stored ids through timing.
pub fn hash_session(token: &str) -> SessionHash {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_consistently() {
        let (a, ha) = new_session();
        let (b, _) = new_session();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_session(&a), ha);
    }
}
