//! Tokens whose signature and claims have been checked, so a gateway presenting the same
//! token again costs a hash and a map look-up instead of an ECDSA verification (~70 µs,
//! the dominant cost of `/auth/verify`) and the decoding of its claims (~1 µs, measurable
//! next to the ~12 µs of CPU a cached verification costs over HTTP).
//!
//! The map is keyed by the BLAKE3 hash of the whole token: a hit means these exact bytes
//! were verified before, which a forger cannot arrange (that would take a collision with one
//! of our tokens). BLAKE3 rather than SHA-256 because the hash runs on every request: on a
//! CPU without SHA extensions SHA-256 of a 550-byte token took ~4.5 µs, a sixth of a
//! verification's CPU, and BLAKE3 ~0.55 µs (docs/benchmarks.md). The map remembers the
//! parsed token until the end of its validity. A hit skips only what cannot have changed
//! since: the signature, `iss`, `aud`, `nbf`. The checks that can change (expiry,
//! revocation, key deletion) run on every request, and the whole cache is dropped whenever
//! the key ring changes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::VerifiedToken;

/// At most this many tokens (about 0.5 KiB each, so at most ~8 MiB). When full, expired
/// entries go first, then arbitrary ones; a token dropped early costs one more signature
/// check.
pub const MAX_TOKENS: usize = 1 << 14;

pub type TokenDigest = [u8; 32];

struct Entry {
    /// The last second at which the token is still valid (`exp` plus leeway).
    valid_until: u64,
    token: Arc<VerifiedToken>,
}

pub struct TokenCache {
    entries: Mutex<HashMap<TokenDigest, Entry>>,
}

impl TokenCache {
    pub fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<TokenDigest, Entry>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token with this digest, parsed, if it was verified before and is valid at `now`.
    pub fn get(&self, digest: &TokenDigest, now: u64) -> Option<Arc<VerifiedToken>> {
        let mut map = self.map();
        let entry = map.get(digest)?;
        if now > entry.valid_until {
            map.remove(digest);
            return None;
        }
        Some(entry.token.clone())
    }

    /// Remembers that the token with this digest verified as `verified` and stays valid
    /// until `valid_until`.
    pub fn insert(&self, digest: TokenDigest, verified: Arc<VerifiedToken>, valid_until: u64, now: u64) {
        let mut map = self.map();
        if map.len() >= MAX_TOKENS {
            map.retain(|_, entry| entry.valid_until >= now);
            if map.len() >= MAX_TOKENS {
                let victims: Vec<TokenDigest> = map.keys().take(MAX_TOKENS / 16).copied().collect();
                for victim in victims {
                    map.remove(&victim);
                }
            }
        }
        map.insert(digest, Entry { valid_until, token: verified });
    }

    pub fn forget(&self, digest: &TokenDigest) {
        self.map().remove(digest);
    }

    pub fn clear(&self) {
        *self.map() = HashMap::new();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache key of a token: computed once per request by the caller.
pub fn digest(token: &str) -> TokenDigest {
    blake3::hash(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::signing::AccessClaims;

    fn verified(jti: &str) -> Arc<VerifiedToken> {
        let claims = AccessClaims {
            iss: "i".into(),
            sub: crate::domain::KeyRef::generate().to_string(),
            aud: "a".into(),
            iat: 0,
            nbf: 0,
            exp: 100,
            jti: jti.into(),
            acc: "c".into(),
            api_key: "k".into(),
        };
        Arc::new(VerifiedToken {
            key_ref: crate::domain::KeyRef::parse(&claims.sub).unwrap(),
            account_id: crate::domain::AccountId::generate(),
            claims,
        })
    }

    #[test]
    fn hits_only_the_same_bytes_until_expiry() {
        let cache = TokenCache::new();
        let t = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJvbmUifQ.c2ln";
        let one = verified("one");
        assert!(cache.get(&digest(t), 50).is_none());
        cache.insert(digest(t), one.clone(), 110, 50);
        assert!(Arc::ptr_eq(&cache.get(&digest(t), 50).unwrap(), &one));
        assert!(Arc::ptr_eq(&cache.get(&digest(t), 110).unwrap(), &one));
        // One byte more, or less: a miss.
        assert!(cache.get(&digest(&format!("{t}x")), 50).is_none());
        assert!(cache.get(&digest(&t[..t.len() - 1]), 50).is_none());
        // Past its validity the entry is dropped.
        assert!(cache.get(&digest(t), 111).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new();
        let v = verified("v");
        for i in 0..MAX_TOKENS + 10 {
            cache.insert(digest(&format!("a.{i}.b")), v.clone(), 1000, 0);
        }
        assert!(cache.len() <= MAX_TOKENS);
        // Expired entries make room before live ones.
        cache.clear();
        for i in 0..MAX_TOKENS {
            cache.insert(digest(&format!("old.{i}.b")), v.clone(), 10, 0);
        }
        cache.insert(digest("new.0.b"), v, 1000, 20);
        assert_eq!(cache.len(), 1);
    }
}
