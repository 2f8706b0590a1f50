//! Tokens whose signature and claims have been checked, so a gateway presenting the same
//! token again costs a map look-up and a comparison instead of a signature verification
//! (by far the largest cost of `/auth/verify`) and the decoding of its claims.
//!
//! The map is keyed by the token's signature and holds the rest of it, which a hit must
//! match byte for byte (compared in constant time): a hit means these exact bytes were
//! verified before. Only the short signature is hashed, by the map's keyed SipHash, not
//! the whole token. The map remembers the parsed token until the end of its validity. A
//! hit skips only what cannot have changed since: the signature, `iss`, `aud`, `nbf`. The
//! checks that can change (expiry, revocation, key deletion) run on every request, and the
//! whole cache is dropped whenever the key ring changes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use constant_time_eq::constant_time_eq;

use super::VerifiedToken;

/// At most this many tokens (about 1 KiB each with the token's own bytes, so at most
/// ~8 MiB). When full, expired entries go first, then arbitrary ones; a token dropped early
/// costs one more signature check.
pub const MAX_TOKENS: usize = 1 << 13;

struct Entry {
    /// The token up to its signature's dot: header and payload.
    signed: Box<str>,
    /// The last second at which the token is still valid (`exp` plus leeway).
    valid_until: u64,
    token: Arc<VerifiedToken>,
}

pub struct TokenCache {
    /// By signature. Ours are random (ES256) or differ with every token's `jti` (EdDSA),
    /// and only tokens that verified are inserted, so no two entries want the same key.
    entries: Mutex<HashMap<Box<str>, Entry>>,
}

/// A compact JWS as (header.payload, signature).
fn split(token: &str) -> Option<(&str, &str)> {
    token.rsplit_once('.')
}

impl TokenCache {
    pub fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Box<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token, parsed, if these exact bytes were verified before and are valid at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<VerifiedToken>> {
        let (signed, signature) = split(token)?;
        let mut map = self.map();
        let entry = map.get(signature)?;
        if !constant_time_eq(entry.signed.as_bytes(), signed.as_bytes()) {
            return None;
        }
        if now > entry.valid_until {
            map.remove(signature);
            return None;
        }
        Some(entry.token.clone())
    }

    /// Remembers that `token` verified as `verified` and stays valid until `valid_until`.
    pub fn insert(&self, token: &str, verified: Arc<VerifiedToken>, valid_until: u64, now: u64) {
        let Some((signed, signature)) = split(token) else {
            return;
        };
        let mut map = self.map();
        if map.len() >= MAX_TOKENS {
            map.retain(|_, entry| entry.valid_until >= now);
            if map.len() >= MAX_TOKENS {
                let victims: Vec<Box<str>> = map.keys().take(MAX_TOKENS / 16).cloned().collect();
                for victim in victims {
                    map.remove(&victim);
                }
            }
        }
        map.insert(signature.into(), Entry { signed: signed.into(), valid_until, token: verified });
    }

    /// Drops `token` (a hit of `get`, so these exact bytes).
    pub fn forget(&self, token: &str) {
        if let Some((_, signature)) = split(token) {
            self.map().remove(signature);
        }
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
            client_id: "k".into(),
            scope: None,
        };
        Arc::new(VerifiedToken {
            key_ref: crate::domain::KeyRef::parse(&claims.sub).unwrap(),
            account_id: crate::domain::AccountId::generate(),
            scopes: crate::domain::Scopes::default(),
            claims,
        })
    }

    #[test]
    fn hits_only_the_same_bytes_until_expiry() {
        let cache = TokenCache::new();
        let t = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJvbmUifQ.c2ln";
        let one = verified("one");
        assert!(cache.get(t, 50).is_none());
        cache.insert(t, one.clone(), 110, 50);
        assert!(Arc::ptr_eq(&cache.get(t, 50).unwrap(), &one));
        assert!(Arc::ptr_eq(&cache.get(t, 110).unwrap(), &one));
        // One byte more, or less, or another anywhere (the signature kept, so the same
        // key): a miss.
        assert!(cache.get(&format!("{t}x"), 50).is_none());
        assert!(cache.get(&t[..t.len() - 1], 50).is_none());
        assert!(cache.get(&format!("x{t}"), 50).is_none());
        assert!(cache.get(&t[1..], 50).is_none());
        assert!(cache.get(&t.replace("eyJqdGkiOiJvbmUifQ", "eyJqdGkiOiJ0d28ifQ"), 50).is_none());
        assert!(cache.get(&t.replace("FUzI1", "FUzM4"), 50).is_none());
        assert!(cache.get("c2ln", 50).is_none());
        // Past its validity the entry is dropped.
        assert!(cache.get(t, 111).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new();
        let v = verified("v");
        for i in 0..MAX_TOKENS + 10 {
            cache.insert(&format!("a.b.{i}"), v.clone(), 1000, 0);
        }
        assert!(cache.len() <= MAX_TOKENS);
        // Expired entries make room before live ones.
        cache.clear();
        for i in 0..MAX_TOKENS {
            cache.insert(&format!("a.b.{i}"), v.clone(), 10, 0);
        }
        cache.insert("a.b.new", v, 1000, 20);
        assert_eq!(cache.len(), 1);
    }
}
