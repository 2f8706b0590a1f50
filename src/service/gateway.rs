//! What gateways ask of keygate: is this bearer token good right now? Plus the OAuth 2.0
//! calls built on the same check (introspection, revocation), and keeping the key ring in
//! step with the store while the server runs.
//!
//! A token is good when its signature verifies under one of our keys with the algorithm
//! pinned to that key, `iss`/`aud`/`exp`/`nbf` hold, its key still exists, is enabled and
//! has not expired, and its `jti` is not revoked. The last two are the store's to answer (in
//! practice its cache, kept coherent across replicas); they sit behind `check_not_withdrawn`,
//! which also narrows the token's scopes to those its key holds now.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    AuthError, AuthService, AuthenticatedKey, Result,
    limits::{Admission, Refusal},
};
use crate::{
    crypto::signing::{AccessClaims, KeyRing, KeySealer, Rejected, SealedKey, SigningError},
    domain::{AccountId, INTROSPECT_SCOPE, KeyRef, Scopes},
    store::{Quota, Revocation, SigningKeyRecord, Store, UnixTime},
};

/// Seconds of clock difference tolerated on `exp` and `nbf`: servers running NTP agree far
/// better than this, and anything longer would stretch every token's life.
pub const CLOCK_LEEWAY: u64 = 10;
/// What a refused revocation is told to wait: a minute frees the slots of whatever
/// revoked tokens expire in it.
const REVOCATION_RETRY_AFTER: u64 = 60;

/// How many revoked tokens may be live (not yet expired) at once, per key and per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationLimits {
    pub per_key: u32,
    pub per_account: u32,
}

impl Default for RevocationLimits {
    fn default() -> Self {
        Self { per_key: 1_000, per_account: 10_000 }
    }
}
/// Our tokens are well under 1 KiB. Anything longer is refused before any parsing, so an
/// oversized header or payload costs us nothing.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The slowest a server may reload its keys from the store (`KEYGATE_KEY_RELOAD_INTERVAL`).
/// A server that has not yet seen a rotation keeps signing with the retired key for up to
/// this long, which is why retired keys keep verifying this much longer than the token TTL.
pub const MAX_KEY_RELOAD_INTERVAL: u64 = 60;
/// How long after retirement a key keeps verifying, on top of the token TTL: the last token
/// it can have signed was made at most one reload interval after retirement, and is honoured
/// until its `exp` plus the leeway.
const RETIRED_KEY_GRACE: i64 = (MAX_KEY_RELOAD_INTERVAL + CLOCK_LEEWAY) as i64;
/// An unknown kid triggers at most one store reload per this interval, so a flood of forged
/// kids cannot turn into a flood of database reads.
const UNKNOWN_KID_RELOAD_GAP: Duration = Duration::from_secs(1);
/// Expired revocations are deleted this often; they are harmless meanwhile.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Our jtis are 32 hex digits; a longer one cannot be ours.
const MAX_JTI_LEN: usize = 64;

crate::label_values! {
    /// Why a bearer token is not honoured, as `keygate_verifications_total` counts it. A new
    /// reason is one line here; its counter comes with it.
    pub enum TokenRefusal {
        /// Not a token of ours for here and now: malformed, too long, unknown kid, wrong
        /// algorithm or signature, another issuer or audience, not yet valid.
        Invalid => "invalid",
        /// Past its `exp` (and the leeway).
        Expired => "expired",
        /// Its key has been deleted.
        KeyDeleted => "key_deleted",
        /// Its key is disabled.
        Disabled => "disabled",
        /// Its key has passed its expiry.
        KeyExpired => "key_expired",
        /// Revoked (RFC 7009) before its expiry.
        Revoked => "revoked",
    }
}

/// What a revocation request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The token is revoked (or already was).
    Token,
    /// Not a token we would honour: nothing to revoke.
    Nothing,
    /// A valid token, issued to another key: refused, nothing revoked.
    NotIssuedToCaller,
}

/// A token whose signature and claims passed, with its claims parsed into domain types.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: AccessClaims,
    pub key_ref: KeyRef,
    pub account_id: AccountId,
    /// The scopes it was issued with.
    pub scopes: Scopes,
}

/// A token that passed every check, now.
#[derive(Debug, Clone)]
pub struct Verification {
    pub token: Arc<VerifiedToken>,
    /// What it may do now: its scopes that its key still holds.
    pub scopes: Scopes,
    /// Its key's limits and credits, and its owner's; `None` when nothing limits it.
    pub quota: Option<Arc<Quota>>,
}

impl AuthService {
    /// The full check behind forward-auth and introspection. Every refusal is
    /// `AuthError::InvalidToken`; a store failure is an error of its own (503), never a pass.
    pub async fn verify_token(&self, token: &str) -> Result<Verification> {
        let now = self.clock.now().max(0) as u64;
        // A token seen before skips the signature check; what can change since (expiry,
        // revocation, deletion) is checked below and on every call.
        let (verified, remembered) = match self.verified_tokens.get(token, now) {
            Some(verified) => (verified, true),
            None => (Arc::new(self.check_signature(token, now).await?), false),
        };
        match self.check_not_withdrawn(&verified, now).await {
            Err(e) if remembered => {
                self.verified_tokens.forget(token);
                Err(e)
            }
            Err(e) => Err(e),
            Ok((scopes, quota)) if remembered => Ok(Verification { token: verified, scopes, quota }),
            Ok((scopes, quota)) => {
                let valid_until = verified.claims.exp.saturating_add(CLOCK_LEEWAY);
                self.verified_tokens.insert(token, verified.clone(), valid_until, now);
                Ok(Verification { token: verified, scopes, quota })
            }
        }
    }

    /// Signature and claims at `now`, with no store access unless the kid is new to us.
    async fn check_signature(&self, token: &str, now: u64) -> Result<VerifiedToken> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken(TokenRefusal::Invalid));
        }
        let mut ring = self.key_ring();
        if ring.is_unknown_kid(token) && self.may_reload_for_unknown_kid() {
            // Another replica or the CLI may have rotated since our last periodic reload.
            if let Err(e) = self.reload_keys().await {
                tracing::warn!(error = %e, "cannot reload the signing keys");
            }
            ring = self.key_ring();
        }
        let claims =
            ring.verify(token, &self.policy.issuer, &self.policy.audience, CLOCK_LEEWAY, now).map_err(|e| {
                AuthError::InvalidToken(match e {
                    Rejected::Invalid => TokenRefusal::Invalid,
                    Rejected::Expired => TokenRefusal::Expired,
                })
            })?;
        parse_claims(claims)
    }

    /// The store half: the key still exists (in the token's account), is enabled and not
    /// expired at `now`, and the token is not revoked; then the token's scopes that the key
    /// still holds. Two point reads, run together, answered by the store's cache while its
    /// lease holds, which keeps "a deleted or disabled key's tokens fail within a second".
    async fn check_not_withdrawn(&self, token: &VerifiedToken, now: u64) -> Result<(Scopes, Option<Arc<Quota>>)> {
        let (status, revoked) = tokio::try_join!(
            self.hot.key_lookup.key_status(token.key_ref),
            self.hot.revocations.is_token_revoked(&token.claims.jti)
        )?;
        let Some(status) = status.filter(|s| s.account_id == token.account_id) else {
            return Err(AuthError::InvalidToken(TokenRefusal::KeyDeleted));
        };
        if !status.is_usable(i64::try_from(now).unwrap_or(i64::MAX)) {
            let refusal = if status.enabled { TokenRefusal::KeyExpired } else { TokenRefusal::Disabled };
            return Err(AuthError::InvalidToken(refusal));
        }
        if revoked {
            return Err(AuthError::InvalidToken(TokenRefusal::Revoked));
        }
        Ok((token.scopes.intersection(&status.scopes), status.quota))
    }

    /// Counts a verification of `cost` against the token's limits and credits (nothing when
    /// it has none): what the gateway's answer says of them, or why it is refused.
    pub async fn count(&self, verification: &Verification, cost: u64) -> Result<Option<Admission>> {
        let Some(quota) = &verification.quota else { return Ok(None) };
        match self.limiter.admit(quota, cost, self.clock.now()).await {
            Ok(admission) => Ok(Some(admission)),
            Err(Refusal::Unavailable) => Err(AuthError::LimitsUnavailable),
            Err(refusal) => Err(AuthError::QuotaExceeded(Box::new(refusal))),
        }
    }

    fn may_reload_for_unknown_kid(&self) -> bool {
        let mut last = self.last_kid_reload.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < UNKNOWN_KID_RELOAD_GAP) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// RFC 7662 introspection by an authenticated client. `None` (inactive) for anything
    /// `verify_token` refuses, for another account's tokens, and for tokens issued to
    /// another key of its account unless the caller holds the scope `keygate:introspect`
    /// (a resource server's key): a client learns nothing about tokens it was not given.
    pub async fn introspect(&self, caller: &AuthenticatedKey, token: &str) -> Result<Option<Verification>> {
        match self.verify_token(token).await {
            // A key's own tokens; and its account's, when it is a resource server's key.
            Ok(v)
                if v.token.account_id == caller.account_id
                    && (v.token.key_ref == caller.key_ref || caller.scopes.contains(INTROSPECT_SCOPE)) =>
            {
                // An active answer counts like a verification; a token over its limits is
                // inactive until they allow it again.
                match self.count(&v, 1).await {
                    Ok(_) => Ok(Some(v)),
                    Err(AuthError::QuotaExceeded(_) | AuthError::LimitsUnavailable) => {
                        tracing::debug!(caller = %caller.key_ref, "introspection of a token over its limits: inactive");
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(_) => {
                tracing::debug!(caller = %caller.key_ref, "introspection of another key's token: inactive");
                Ok(None)
            }
            Err(AuthError::InvalidToken(reason)) => {
                tracing::debug!(
                    reason = crate::monitoring::LabelValue::label(reason),
                    "introspection of an invalid token: inactive"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// RFC 7009 revocation by an authenticated client, of a token issued to that very key,
    /// until the token would have expired. A token that does not verify is left alone and
    /// the caller is told nothing different (RFC 7009 §2.2), so revocation is no oracle for
    /// token validity; a valid token issued to another key is refused (§2.1), and nothing
    /// is revoked.
    pub async fn revoke_token(&self, caller: &AuthenticatedKey, token: &str) -> Result<Revoked> {
        let now = self.clock.now();
        let verified = match self.check_signature(token, now.max(0) as u64).await {
            Ok(v) => v,
            Err(AuthError::InvalidToken(reason)) => {
                tracing::debug!(
                    reason = crate::monitoring::LabelValue::label(reason),
                    "revocation of an invalid token: nothing to do"
                );
                return Ok(Revoked::Nothing);
            }
            Err(e) => return Err(e),
        };
        if verified.key_ref != caller.key_ref || verified.account_id != caller.account_id {
            tracing::debug!(caller = %caller.key_ref, "revocation of another key's token refused");
            return Ok(Revoked::NotIssuedToCaller);
        }
        let expires_at = i64::try_from(verified.claims.exp).unwrap_or(i64::MAX).saturating_add(CLOCK_LEEWAY as i64);
        let revocation =
            Revocation { jti: verified.claims.jti.clone(), key_ref: verified.key_ref, expires_at, revoked_at: now };
        // Each live revocation costs memory on every replica's fast path until its token
        // expires: bounded per key and per account, no tenant can push the others off it.
        let limits = self.policy.revocations;
        let (of_key, of_account) =
            self.store.live_revocations_of(verified.key_ref, verified.account_id, revocation.revoked_at).await?;
        if of_key >= u64::from(limits.per_key) || of_account >= u64::from(limits.per_account) {
            tracing::info!(caller = %caller.key_ref, of_key, of_account, "revocation refused: too many live revocations");
            return Err(AuthError::RevocationLimit { retry_after: REVOCATION_RETRY_AFTER });
        }
        self.hot.revocations.revoke_token(&revocation).await?;
        tracing::info!(caller = %caller.key_ref, key_ref = %verified.key_ref, jti = %revocation.jti, "token revoked");
        Ok(Revoked::Token)
    }

    /// Rebuilds the key ring from the store: picks up rotations made by the CLI or another
    /// replica, and drops retired keys whose tokens have all expired.
    pub async fn reload_keys(&self) -> Result<()> {
        let ring = read_key_ring(self.store.as_ref(), &self.sealer, self.policy.token_ttl, self.clock.now()).await?;
        let mut slot = self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.active_kid() != ring.active_kid() || slot.kids() != ring.kids() {
            tracing::info!(active = ring.active_kid(), verifying = ?ring.kids(), "signing keys changed");
            // A key that left the ring must stop verifying, remembered tokens included.
            self.verified_tokens.clear();
        }
        *slot = std::sync::Arc::new(ring);
        Ok(())
    }

    /// Background upkeep for a running server: reloads the key ring every `reload_every`,
    /// and purges expired revocations now and then. Errors are logged and retried next time;
    /// the current ring stays in use meanwhile.
    pub async fn maintain(self: std::sync::Arc<Self>, reload_every: Duration) {
        let mut tick = tokio::time::interval(reload_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_purge = Instant::now();
        loop {
            tick.tick().await;
            if let Err(e) = self.reload_keys().await {
                tracing::warn!(error = %e, "cannot reload the signing keys; keeping the current ones");
            }
            if Instant::now() >= next_purge {
                match self.hot.revocations.purge_revocations(self.clock.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "expired revocations purged"),
                    Err(e) => tracing::warn!(error = %e, "cannot purge expired revocations"),
                }
                next_purge = Instant::now() + PURGE_EVERY;
            }
        }
    }
}

/// Our own signature vouches for these claims, but a parse costs nothing and keeps a bad
/// claim from reaching the store or a response header.
fn parse_claims(claims: AccessClaims) -> Result<VerifiedToken> {
    let key_ref = KeyRef::parse(&claims.sub).map_err(|_| AuthError::InvalidToken(TokenRefusal::Invalid))?;
    let account_id = AccountId::parse(&claims.acc).map_err(|_| AuthError::InvalidToken(TokenRefusal::Invalid))?;
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN {
        return Err(AuthError::InvalidToken(TokenRefusal::Invalid));
    }
    let scopes = Scopes::parse_list(claims.scope.as_deref().unwrap_or(""))
        .map_err(|_| AuthError::InvalidToken(TokenRefusal::Invalid))?;
    Ok(VerifiedToken { claims, key_ref, account_id, scopes })
}

/// The key ring as the store has it, at `now`: the active key, and the retired keys whose
/// tokens may still be live. Reads only: creating or rotating keys is for start-up and the
/// CLI, so servers with different settings never fight over the active key.
pub async fn read_key_ring(store: &dyn Store, sealer: &KeySealer, token_ttl: u64, now: UnixTime) -> Result<KeyRing> {
    let records = store.signing_keys().await?;
    let (active, verifying) = select_keys(&records, now, token_ttl).ok_or(SigningError::NoActiveKey)?;
    Ok(KeyRing::new(sealer, active, &verifying)?)
}

/// The active key, and the retired keys that may still have live tokens at `now`.
fn select_keys(records: &[SigningKeyRecord], now: UnixTime, token_ttl: u64) -> Option<(&SealedKey, Vec<SealedKey>)> {
    let active = records.iter().find(|r| r.retired_at.is_none())?;
    let verifying = records
        .iter()
        .filter(|r| r.retired_at.is_some_and(|at| now < verifies_until(at, token_ttl)))
        .map(|r| r.key.clone())
        .collect();
    Some((&active.key, verifying))
}

/// When a key retired at `retired_at` leaves the JWKS and stops verifying.
pub fn verifies_until(retired_at: UnixTime, token_ttl: u64) -> UnixTime {
    retired_at.saturating_add(token_ttl as i64).saturating_add(RETIRED_KEY_GRACE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crypto::signing::SigningAlg,
        service::{
            Policy,
            testing::{START, TestService, client, policy},
        },
    };

    fn record(sealer: &KeySealer, retired_at: Option<UnixTime>) -> SigningKeyRecord {
        SigningKeyRecord { key: sealer.generate(SigningAlg::Es256).unwrap(), created_at: 0, retired_at }
    }

    #[test]
    fn retired_keys_verify_until_their_last_token_expired() {
        let sealer = KeySealer::new([5; 32]);
        let ttl = 900;
        let records = vec![
            record(&sealer, None),
            record(&sealer, Some(10_000)),
            record(&sealer, Some(10_000 - ttl as i64 - 200)),
        ];
        let kid = |i: usize| records[i].key.kid.clone();

        let (active, verifying) = select_keys(&records, 10_000, ttl).unwrap();
        assert_eq!(active.kid, kid(0));
        assert_eq!(verifying.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(), vec![kid(1)]);

        // A token signed just before the rotation, by a server that had not reloaded yet,
        // lives until 10_000 + interval + ttl (+ leeway): the key must still verify then.
        let last_exp = 10_000 + MAX_KEY_RELOAD_INTERVAL as i64 + ttl as i64 + CLOCK_LEEWAY as i64;
        let (_, verifying) = select_keys(&records, last_exp - 1, ttl).unwrap();
        assert_eq!(verifying.len(), 1);
        let (_, verifying) = select_keys(&records, last_exp, ttl).unwrap();
        assert!(verifying.is_empty());
    }

    /// A rotation as `keygate signing-key rotate` makes it: the retired key stays in the JWKS
    /// and verifies until the last token it can have signed has expired, then leaves.
    #[tokio::test]
    async fn a_retired_key_verifies_until_its_window_closes_then_leaves_the_ring() {
        let t = TestService::new(Policy { token_ttl: 900, ..policy() }).await;
        let (key, password) = t.api_key().await;
        let login = || t.auth.api_login(key.as_str(), password.expose(), client());
        let old = t.auth.key_ring().active_kid().to_owned();
        let jwks = || t.auth.key_ring().jwks().keys.into_iter().filter_map(|k| k.common.key_id).collect::<Vec<_>>();

        let new = t.auth.sealer.generate(SigningAlg::Es256).unwrap();
        t.auth.store().rotate_signing_key(&new, START).await.unwrap();
        // The latest a server that has not reloaded yet still signs with the old key.
        t.clock.advance(Duration::from_secs(MAX_KEY_RELOAD_INTERVAL));
        let late = login().await.unwrap().token;
        t.auth.reload_keys().await.unwrap();
        assert_eq!(t.auth.key_ring().active_kid(), new.kid);
        assert!(jwks().contains(&old));

        let until = verifies_until(START, 900);
        t.clock.set(until - 1);
        t.auth.reload_keys().await.unwrap();
        assert_eq!(jwks().len(), 2);
        assert!(t.auth.verify_token(&late).await.is_ok(), "the old key's last token, in its last second");

        t.clock.set(until);
        t.auth.reload_keys().await.unwrap();
        assert_eq!(jwks(), std::slice::from_ref(&new.kid));
        assert!(matches!(t.auth.verify_token(&late).await, Err(AuthError::InvalidToken(_))));
        let fresh = login().await.unwrap().token;
        assert!(t.auth.verify_token(&fresh).await.is_ok());
    }

    #[test]
    fn no_active_key_no_ring() {
        let sealer = KeySealer::new([5; 32]);
        assert!(select_keys(&[record(&sealer, Some(1))], 2, 60).is_none());
    }
}
