//! Tokens whose signature and claims have been checked, so a gateway presenting the same
//! token again costs a SHA-256 and a map look-up instead of an ECDSA verification (~80 µs,
//! the dominant cost of `/auth/verify`).
//!
//! The map is keyed by the SHA-256 of the whole token: a hit means these exact bytes were
//! verified before, which a forger cannot arrange (that would take a SHA-256 collision with
//! one of our tokens). It remembers only until when the token is valid; the claims are
//! decoded again on a hit, which costs ~1 µs and keeps each entry at ~50 bytes. A hit skips
//! only what cannot have changed since: the signature, `iss`, `aud`, `nbf`. The checks that
//! can change (expiry, revocation, key deletion) run on every request, and the whole cache
//! is dropped whenever the key ring changes.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::crypto::signing::AccessClaims;

/// At most this many tokens (about 50 bytes each). When full, expired entries go first,
/// then arbitrary ones.
pub const MAX_TOKENS: usize = 1 << 16;

type TokenDigest = [u8; 32];

pub struct TokenCache {
    /// Digest → the last second at which the token is still valid (`exp` plus leeway).
    valid_until: Mutex<HashMap<TokenDigest, u64>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self { valid_until: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<TokenDigest, u64>> {
        self.valid_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The claims of `token` if it was verified before and is valid at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<AccessClaims> {
        let digest = digest(token);
        let until = self.map().get(&digest).copied()?;
        if now > until {
            self.map().remove(&digest);
            return None;
        }
        // These bytes were verified, so they decode; if somehow not, it is a miss.
        let payload = token.split('.').nth(1)?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// Remembers that `token` verified and stays valid until `valid_until`.
    pub fn insert(&self, token: &str, valid_until: u64, now: u64) {
        let digest = digest(token);
        let mut map = self.map();
        if map.len() >= MAX_TOKENS {
            map.retain(|_, until| *until >= now);
            if map.len() >= MAX_TOKENS {
                let victims: Vec<TokenDigest> = map.keys().take(MAX_TOKENS / 16).copied().collect();
                for victim in victims {
                    map.remove(&victim);
                }
            }
        }
        map.insert(digest, valid_until);
    }

    pub fn forget(&self, token: &str) {
        self.map().remove(&digest(token));
    }

    pub fn clear(&self) {
        *self.map() = HashMap::new();
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: &AccessClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln")
    }

    fn claims(jti: &str) -> AccessClaims {
        AccessClaims {
            iss: "i".into(),
            sub: "s".into(),
            aud: "a".into(),
            iat: 0,
            nbf: 0,
            exp: 100,
            jti: jti.into(),
            acc: "c".into(),
            api_key: "k".into(),
        }
    }

    #[test]
    fn hits_only_the_same_bytes_until_expiry() {
        let cache = TokenCache::new();
        let t = token(&claims("one"));
        assert!(cache.get(&t, 50).is_none());
        cache.insert(&t, 110, 50);
        assert_eq!(cache.get(&t, 50), Some(claims("one")));
        assert_eq!(cache.get(&t, 110), Some(claims("one")));
        // One byte more, or another token with the same claims prefix: a miss.
        assert!(cache.get(&format!("{t}x"), 50).is_none());
        assert!(cache.get(&token(&claims("two")), 50).is_none());
        // Past its validity the entry is dropped.
        assert!(cache.get(&t, 111).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new();
        for i in 0..MAX_TOKENS + 10 {
            cache.insert(&format!("a.{i}.b"), 1000, 0);
        }
        assert!(cache.len() <= MAX_TOKENS);
        // Expired entries make room before live ones.
        cache.clear();
        for i in 0..MAX_TOKENS {
            cache.insert(&format!("old.{i}.b"), 10, 0);
        }
        cache.insert("new.0.b", 1000, 20);
        assert_eq!(cache.len(), 1);
    }
}
