//! Key management for admins: generate (with name, scopes, expiry, metadata), read, list,
//! update, disable and enable, roll with a grace period, delete; always within the
//! session's account, and each change audited.

use super::{AdminSession, AuthError, AuthService, Result, audit};
use crate::{
    domain::{ApiKeyId, ApiPassword, Credits, KeyName, KeyRef, Limits, Metadata, OwnerId, Scopes},
    store::{
        AuditAction, CreditScope, CreditsChange, KeyAbout, KeyDetails, KeyRecord, KeyUpdate, StoreError, StoredCredits,
        UnixTime,
    },
};

/// The shortest and longest lifetime a key may be given.
pub const MIN_KEY_LIFETIME: u64 = 60;
pub const MAX_KEY_LIFETIME: u64 = 10 * 366 * 24 * 3600;
/// How long a rolled key's old password keeps working unless told otherwise, and at most.
pub const DEFAULT_ROLL_GRACE: u64 = 24 * 3600;
pub const MAX_ROLL_GRACE: u64 = 7 * 24 * 3600;

/// When a key is to expire, as an admin says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This many seconds from now.
    After(u64),
    /// At this time, which must be in the future.
    At(UnixTime),
}

/// What an admin may choose when generating a key; all optional.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    pub name: Option<KeyName>,
    pub scopes: Scopes,
    pub expiry: Option<Expiry>,
    pub metadata: Option<Metadata>,
    pub limits: Limits,
    pub owner: Option<OwnerId>,
    pub credits: Option<Credits>,
}

/// What a change does to a key's credits, as an admin says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditsEdit {
    /// This balance and refill from now on.
    Set(Credits),
    /// A top-up of the balance there is.
    Add(u64),
    /// No credits any more.
    Clear,
}

/// A freshly generated key. The password exists in clear only here, to be shown once.
pub struct GeneratedKey {
    pub password: ApiPassword,
    pub key: KeyDetails,
}

/// A rolled key: its new password, shown once, and when the old one stops working.
pub struct RolledKey {
    pub key_ref: KeyRef,
    pub api_key: ApiKeyId,
    pub password: ApiPassword,
    /// `None`: the old password ended at once.
    pub old_password_expires_at: Option<UnixTime>,
}

/// The fields of a change, with the expiry still as the admin said it.
#[derive(Debug, Clone, Default)]
pub struct KeyChange {
    pub name: Option<Option<KeyName>>,
    pub scopes: Option<Scopes>,
    pub expiry: Option<Option<Expiry>>,
    pub metadata: Option<Option<Metadata>>,
    pub enabled: Option<bool>,
    pub limits: Option<Limits>,
    pub owner: Option<Option<OwnerId>>,
    pub credits: Option<CreditsEdit>,
}

/// Credits as stored from `credits` set at `now`: their period is the current one, so the
/// first refill comes at the next edge.
pub(super) fn stored_credits(credits: Credits, now: UnixTime) -> StoredCredits {
    StoredCredits {
        remaining: credits.remaining as i64,
        refill: credits.refill,
        period: credits.refill.map_or(0, |r| r.period(now)),
    }
}

impl AuthService {
    pub async fn generate_key(&self, session: &AdminSession, options: KeyOptions) -> Result<GeneratedKey> {
        let now = self.clock.now();
        let expires_at = options.expiry.map(|e| expires_at(e, now)).transpose()?;
        let about = KeyAbout {
            name: options.name,
            metadata: options.metadata,
            created_by: Some(session.admin_id),
            limits: options.limits,
            owner: options.owner,
            credits: options.credits.map(|c| stored_credits(c, now)),
        };
        // A clash of 20-character keys (~2^103 space) is practically impossible, but a
        // retry costs nothing and turns "practically" into "certainly not a 500".
        for _ in 0..3 {
            let password = ApiPassword::generate();
            let record = KeyRecord {
                key_ref: KeyRef::generate(),
                account_id: session.account_id,
                api_key: ApiKeyId::generate(),
                secret_hash: self.api_hasher.hash(&password).to_vec(),
                created_at: now,
                scopes: options.scopes.clone(),
                expires_at,
                enabled: true,
                previous: None,
            };
            match self.hot.keys.insert_key(&record, &about).await {
                Ok(()) => {
                    tracing::info!(account = %session.account_id, key_ref = %record.key_ref, "api key generated");
                    self.audit_key(session, AuditAction::KeyGenerated, record.key_ref).await;
                    let key = KeyDetails {
                        key_ref: record.key_ref,
                        api_key: record.api_key,
                        name: about.name,
                        scopes: record.scopes,
                        created_at: now,
                        expires_at,
                        last_used_at: None,
                        enabled: true,
                        created_by: None,
                        metadata: about.metadata,
                        limits: about.limits,
                        owner: about.owner,
                        credits: about.credits,
                    };
                    return Ok(GeneratedKey { password, key });
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// One key of the session's account, with its metadata.
    pub async fn key(&self, session: &AdminSession, key_ref: &str) -> Result<KeyDetails> {
        self.key_details(session, parse_ref(key_ref)?).await
    }

    async fn key_details(&self, session: &AdminSession, key_ref: KeyRef) -> Result<KeyDetails> {
        let key = self.store.key_details(session.account_id, key_ref).await?.ok_or(AuthError::NotFound)?;
        Ok(self.with_recent_balance(self.with_recent_use(key)).await)
    }

    /// `key` with this server's balance of its credits, if newer than the stored one (one
    /// server), and the refill due applied.
    async fn with_recent_balance(&self, mut key: KeyDetails) -> KeyDetails {
        if let Some(credits) = key.credits.as_mut() {
            let now = self.clock.now();
            let scope = CreditScope::Key(key.key_ref);
            match self.limiter.balance(&scope, credits.refill, now).await {
                Some(left) => credits.remaining = left,
                None => {
                    if let Some(refill) = credits.refill.filter(|r| credits.period < r.period(now)) {
                        credits.remaining = refill.amount as i64;
                    }
                }
            }
        }
        key
    }

    pub async fn update_key(&self, session: &AdminSession, key_ref: &str, change: KeyChange) -> Result<KeyDetails> {
        let key_ref = parse_ref(key_ref)?;
        let now = self.clock.now();
        // A top-up refills first when the key's refill is due, as a spend would.
        let refill = match change.credits {
            Some(CreditsEdit::Add(_)) => self
                .store
                .key_details(session.account_id, key_ref)
                .await?
                .ok_or(AuthError::NotFound)?
                .credits
                .and_then(|c| c.refill),
            _ => None,
        };
        let credits = change.credits.map(|edit| match edit {
            CreditsEdit::Set(c) => CreditsChange::Set(stored_credits(c, now)),
            CreditsEdit::Add(amount) => CreditsChange::Add {
                amount: amount as i64,
                period: refill.map_or(0, |r| r.period(now)),
                refill_amount: refill.map_or(0, |r| r.amount as i64),
            },
            CreditsEdit::Clear => CreditsChange::Clear,
        });
        let update = KeyUpdate {
            expires_at: change.expiry.map(|e| e.map(|e| expires_at(e, now)).transpose()).transpose()?,
            name: change.name,
            scopes: change.scopes,
            metadata: change.metadata,
            enabled: change.enabled,
            limits: change.limits,
            owner: change.owner,
            credits,
        };
        let scope = CreditScope::Key(key_ref);
        let write = self.hot.keys.update_key(session.account_id, key_ref, &update, now);
        let updated = match &update.credits {
            None => write.await?,
            Some(credits) => {
                let credits = credits.clone();
                let change = move |current: Option<i64>| match credits {
                    CreditsChange::Set(c) => Some((c.remaining, c.period)),
                    CreditsChange::Add { amount, period, .. } => current.map(|left| (left + amount, period)),
                    CreditsChange::Clear => None,
                };
                self.limiter.change_balance(&scope, change, write).await?
            }
        };
        if updated.is_none() {
            return Err(AuthError::NotFound);
        }
        if update.limits.is_some() || update.owner.is_some() || update.credits.is_some() {
            self.audit_key(session, AuditAction::KeyLimitsChanged, key_ref).await;
        }
        tracing::info!(account = %session.account_id, key_ref = %key_ref, "api key updated");
        if update.name.is_some() || update.scopes.is_some() || update.expires_at.is_some() || update.metadata.is_some()
        {
            self.audit_key(session, AuditAction::KeyUpdated, key_ref).await;
        }
        match update.enabled {
            Some(true) => self.audit_key(session, AuditAction::KeyEnabled, key_ref).await,
            Some(false) => self.audit_key(session, AuditAction::KeyDisabled, key_ref).await,
            None => {}
        }
        self.key_details(session, key_ref).await
    }

    /// A new password for the key; the current one keeps working for `grace_seconds`
    /// (none when 0), and any older one ends now.
    pub async fn roll_key(&self, session: &AdminSession, key_ref: &str, grace_seconds: u64) -> Result<RolledKey> {
        let key_ref = parse_ref(key_ref)?;
        if grace_seconds > MAX_ROLL_GRACE {
            return Err(AuthError::Invalid("grace_seconds: at most 604800 (7 days)"));
        }
        let now = self.clock.now();
        let until = (grace_seconds > 0).then(|| now.saturating_add(grace_seconds as i64));
        let password = ApiPassword::generate();
        let hash = self.api_hasher.hash(&password);
        let Some(key) = self.hot.keys.roll_key(session.account_id, key_ref, &hash, until).await? else {
            return Err(AuthError::NotFound);
        };
        tracing::info!(account = %session.account_id, key_ref = %key_ref, grace_seconds, "api key rolled");
        self.audit_key(session, AuditAction::KeyRolled, key_ref).await;
        Ok(RolledKey { key_ref, api_key: key.api_key, password, old_password_expires_at: until })
    }

    pub async fn delete_key(&self, session: &AdminSession, key_ref: &str) -> Result<()> {
        let key_ref = parse_ref(key_ref)?;
        if !self.hot.keys.delete_key(session.account_id, key_ref).await? {
            return Err(AuthError::NotFound);
        }
        tracing::info!(account = %session.account_id, key_ref = %key_ref, "api key deleted");
        self.audit_key(session, AuditAction::KeyDeleted, key_ref).await;
        Ok(())
    }

    async fn audit_key(&self, session: &AdminSession, action: AuditAction, key_ref: KeyRef) {
        self.audit_admin_action(session, action, Some(key_ref.to_string())).await;
    }

    /// Reports each key whose expiry has passed to the audit log, once.
    pub(super) async fn audit_expired_keys(&self, batch: u32) -> Result<u64> {
        let now = self.clock.now();
        let mut reported = 0;
        loop {
            let expired = self.store.take_expired_keys(now, batch).await?;
            for (key_ref, account) in &expired {
                tracing::info!(account = %account, key_ref = %key_ref, "api key expired");
                let actor = audit::SYSTEM_ACTOR.to_owned();
                let target = Some(key_ref.to_string());
                audit::record(self.store.as_ref(), now, AuditAction::KeyExpired, Some(*account), actor, None, target)
                    .await;
            }
            reported += expired.len() as u64;
            if expired.len() < batch as usize {
                return Ok(reported);
            }
        }
    }
}

/// A malformed ref cannot name a key of this account: the same 404 as an unknown one.
fn parse_ref(key_ref: &str) -> Result<KeyRef> {
    KeyRef::parse(key_ref).map_err(|_| AuthError::NotFound)
}

/// The time an expiry names, refused when it is not in the allowed future.
fn expires_at(expiry: Expiry, now: UnixTime) -> Result<UnixTime> {
    match expiry {
        Expiry::After(seconds) if (MIN_KEY_LIFETIME..=MAX_KEY_LIFETIME).contains(&seconds) => {
            Ok(now.saturating_add(seconds as i64))
        }
        Expiry::After(_) => Err(AuthError::Invalid("expires_in: from 60 seconds to 10 years (316224000)")),
        Expiry::At(at) if at > now => Ok(at),
        Expiry::At(_) => Err(AuthError::Invalid("expires_at: must be in the future")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        super::testing::{TestService, client, policy},
        *,
    };

    #[tokio::test]
    async fn an_old_password_works_until_its_grace_period_ends_and_a_second_roll_ends_it_at_once() {
        let t = TestService::new(policy()).await;
        let session = t.session().await;
        let generated = t.auth.generate_key(&session, KeyOptions::default()).await.unwrap();
        let (key, first) = (generated.key, generated.password);
        let login = |password: &ApiPassword| {
            let password = password.expose().to_owned();
            let api_key = key.api_key.clone();
            let auth = &t.auth;
            async move { auth.api_login(api_key.as_str(), &password, client()).await.is_ok() }
        };
        let ref_ = key.key_ref.to_string();

        let second = t.auth.roll_key(&session, &ref_, 600).await.unwrap();
        assert_eq!(second.old_password_expires_at, Some(super::super::testing::START + 600));
        assert!(login(&first).await && login(&second.password).await);
        t.clock.advance(Duration::from_secs(599));
        assert!(login(&first).await);
        t.clock.advance(Duration::from_secs(1));
        assert!(!login(&first).await, "past the grace period");
        assert!(login(&second.password).await);

        // A roll during a grace period ends the previous old password at once.
        let third = t.auth.roll_key(&session, &ref_, 600).await.unwrap();
        let fourth = t.auth.roll_key(&session, &ref_, 600).await.unwrap();
        assert!(!login(&second.password).await && login(&third.password).await && login(&fourth.password).await);
        let fifth = t.auth.roll_key(&session, &ref_, 0).await.unwrap();
        assert_eq!(fifth.old_password_expires_at, None);
        assert!(!login(&third.password).await && !login(&fourth.password).await && login(&fifth.password).await);
    }

    #[tokio::test]
    async fn an_expired_key_answers_like_a_wrong_password_and_its_tokens_end_with_it() {
        let t = TestService::new(Policy { token_ttl: 900, ..policy() }).await;
        let session = t.session().await;
        let options = KeyOptions { expiry: Some(Expiry::After(300)), ..KeyOptions::default() };
        let generated = t.auth.generate_key(&session, options).await.unwrap();
        let api_key = generated.key.api_key.as_str().to_owned();
        let issued = t.auth.api_login(&api_key, generated.password.expose(), client()).await.unwrap();
        assert_eq!(issued.claims.exp, super::super::testing::START as u64 + 300, "capped at the key's expiry");
        t.clock.advance(Duration::from_secs(299));
        assert!(t.auth.verify_token(&issued.token).await.is_ok());
        t.clock.advance(Duration::from_secs(1));
        assert!(matches!(t.auth.verify_token(&issued.token).await, Err(AuthError::InvalidToken(_))));
        let login = t.auth.api_login(&api_key, generated.password.expose(), client()).await;
        assert!(matches!(login, Err(AuthError::InvalidCredentials)), "{:?}", login.err());
        assert_eq!(t.auth.audit_expired_keys(10).await.unwrap(), 1);
        assert_eq!(t.auth.audit_expired_keys(10).await.unwrap(), 0, "reported once");
    }

    use super::super::Policy;

    #[test]
    fn expiries_must_be_in_the_allowed_future() {
        assert_eq!(expires_at(Expiry::After(60), 1000).unwrap(), 1060);
        assert!(expires_at(Expiry::After(59), 1000).is_err());
        assert!(expires_at(Expiry::After(MAX_KEY_LIFETIME + 1), 1000).is_err());
        assert!(expires_at(Expiry::At(1000), 1000).is_err());
        assert_eq!(expires_at(Expiry::At(1001), 1000).unwrap(), 1001);
    }
}
