//! Owners: limits and credits shared by every key of an account that names the same owner,
//! set by admins (audited), and what is used of each.

use super::{AdminSession, AuthService, Result, keys::stored_credits, limits::PolicyState};
use crate::{
    domain::{Credits, Limits, OwnerId},
    store::{AuditAction, CreditScope, Quota, StoredCredits},
};

/// An owner's limits and credits as set, with what is used of them now.
#[derive(Debug, Clone)]
pub struct OwnerLimits {
    pub owner: OwnerId,
    pub limits: Limits,
    pub credits: Option<StoredCredits>,
    pub usage: Vec<PolicyState>,
}

/// What is used of a key's limits now.
pub type Usage = Vec<PolicyState>;

impl AuthService {
    /// Sets the owner's limits and credits in the session's account, replacing both.
    pub async fn put_owner_limits(
        &self,
        session: &AdminSession,
        owner: OwnerId,
        limits: Limits,
        credits: Option<Credits>,
    ) -> Result<OwnerLimits> {
        let now = self.clock.now();
        let credits = credits.map(|c| stored_credits(c, now));
        let scope = CreditScope::Owner(session.account_id, owner.clone());
        let write = self.hot.owners.put_owner(session.account_id, &owner, &limits, credits.as_ref(), now);
        self.limiter.change_balance(&scope, |_| credits.map(|c| (c.remaining, c.period)), write).await?;
        // A balance set anew starts from the store's value on this server too.
        if credits.is_some() {
            self.limiter.forget_balance(&scope);
        }
        tracing::info!(account = %session.account_id, "owner limits set");
        self.audit_admin_action(session, AuditAction::OwnerLimitsChanged, Some(owner.to_string())).await;
        self.owner_limits(session, owner).await
    }

    /// The owner's limits and credits, and their use; none set reads as none.
    pub async fn owner_limits(&self, session: &AdminSession, owner: OwnerId) -> Result<OwnerLimits> {
        let record = self.store.owner(session.account_id, &owner).await?;
        let (limits, mut credits) = record.map_or((Limits::default(), None), |r| (r.limits, r.credits));
        let now = self.clock.now();
        if let Some(credits) = credits.as_mut() {
            let scope = CreditScope::Owner(session.account_id, owner.clone());
            match self.limiter.balance(&scope, credits.refill, now).await {
                Some(left) => credits.remaining = left,
                None => {
                    if let Some(refill) = credits.refill.filter(|r| credits.period < r.period(now)) {
                        credits.remaining = refill.amount as i64;
                    }
                }
            }
        }
        let quota = Quota::default().with_owner(session.account_id, &owner, &limits, None);
        let usage = self.limiter.usage(&quota, now);
        Ok(OwnerLimits { owner, limits, credits, usage })
    }

    /// What is used of the key's own limits now, as this server knows it.
    pub fn key_usage(&self, key: &crate::store::KeyDetails) -> Usage {
        let quota = Quota::key(key.key_ref, &key.limits, None);
        self.limiter.usage(&quota, self.clock.now())
    }
}
