//! The revocation set, complete. Why the answers stay right: it holds every live revoked
//! `jti`, loaded in full at each reload and kept current by this process's revocations (at
//! once) and everyone else's (from the follower), so "is this token revoked?" never needs
//! the store. It answers only while complete: a `jti` missing from it is then not revoked.
//! Past `MAX_REVOCATIONS` it is marked incomplete and every check goes to the store until a
//! full reload fits again.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::CachedStore;
use crate::{
    domain::{AccountId, KeyRef},
    store::{Result, Revocation, RevocationStore, UnixTime},
};

/// At most this many live revocations in memory (about 35 bytes each); beyond, the store
/// answers. Revocations are bounded per account (`RevocationLimits`), so filling this takes
/// many accounts at their limit, not one tenant.
const MAX_REVOCATIONS: usize = 1 << 18;

struct Revoked {
    /// jti (as `jti_key`) → when the revocation lapses.
    jtis: std::collections::HashMap<u128, UnixTime>,
    /// False when revocations were left out for lack of room: then only the store knows.
    complete: bool,
}

pub(super) struct RevocationSet {
    store: Arc<dyn RevocationStore>,
    revoked: RwLock<Revoked>,
}

impl RevocationSet {
    pub(super) fn new(store: Arc<dyn RevocationStore>) -> Self {
        Self { store, revoked: RwLock::new(Revoked { jtis: Default::default(), complete: false }) }
    }

    fn revoked(&self) -> RwLockReadGuard<'_, Revoked> {
        self.revoked.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn revoked_mut(&self) -> RwLockWriteGuard<'_, Revoked> {
        self.revoked.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn is_complete(&self) -> bool {
        self.revoked().complete
    }

    /// Replaces the set with `live` (every revocation still in force), as a reload read it.
    pub(super) fn reload(&self, live: &[(String, UnixTime)]) {
        let mut revoked = self.revoked_mut();
        revoked.complete = live.len() <= MAX_REVOCATIONS;
        revoked.jtis = live.iter().take(MAX_REVOCATIONS).map(|(jti, until)| (jti_key(jti), *until)).collect();
    }

    /// `now` tells which remembered revocations have lapsed, to make room.
    pub(super) fn remember(&self, jti: &str, expires_at: UnixTime, now: UnixTime) {
        let key = jti_key(jti);
        let mut revoked = self.revoked_mut();
        if revoked.jtis.len() >= MAX_REVOCATIONS && !revoked.jtis.contains_key(&key) {
            revoked.jtis.retain(|_, until| *until > now);
            if revoked.jtis.len() >= MAX_REVOCATIONS {
                if revoked.complete {
                    tracing::warn!(
                        max = MAX_REVOCATIONS,
                        "too many live revocations to keep in memory; asking the store"
                    );
                }
                revoked.complete = false;
                return;
            }
        }
        revoked.jtis.insert(key, expires_at);
    }
}

#[async_trait]
impl RevocationStore for CachedStore {
    async fn revoke_token(&self, revocation: &Revocation) -> Result<()> {
        let stored = self.revocations.store.revoke_token(revocation).await;
        // Remembered whatever the answer: the caller asked for it, and on an error it may
        // have been stored anyway. Refusing a token someone wanted dead is the safe side.
        self.revocations.remember(&revocation.jti, revocation.expires_at, self.clock.now());
        stored
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool> {
        if self.is_trusted() {
            let revoked = self.revocations.revoked();
            if revoked.complete {
                return Ok(revoked.jtis.contains_key(&jti_key(jti)));
            }
        }
        self.revocations.store.is_token_revoked(jti).await
    }

    async fn live_revocations_of(&self, key_ref: KeyRef, account: AccountId, now: UnixTime) -> Result<(u64, u64)> {
        self.revocations.store.live_revocations_of(key_ref, account, now).await
    }

    async fn purge_revocations(&self, now: UnixTime) -> Result<u64> {
        self.revocations.revoked_mut().jtis.retain(|_, until| *until > now);
        self.revocations.store.purge_revocations(now).await
    }
}

/// A jti as a 128-bit map key: ours are 32 lowercase hex digits, kept as their value;
/// any other string (never issued by us) by the first 128 bits of its SHA-256.
fn jti_key(jti: &str) -> u128 {
    if jti.len() == 32 && jti.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        if let Ok(v) = u128::from_str_radix(jti, 16) {
            return v;
        }
    }
    let digest = Sha256::digest(jti.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_keys_tell_hex_and_other_strings_apart() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(jti_key(hex), 0x0123456789abcdef0123456789abcdef);
        // Not our format: hashed, so no two strings share a key by parsing alike.
        assert_ne!(jti_key(hex), jti_key(&hex.to_uppercase()));
        assert_ne!(jti_key("a"), jti_key("b"));
        assert_ne!(jti_key("x".repeat(32).as_str()), jti_key(hex));
    }
}
