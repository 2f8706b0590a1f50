//! The gateway's reads and writes: key look-ups by ref and revoked token ids.

use async_trait::async_trait;

use super::{Dialect, SqlStore, sql};
use crate::{
    domain::{AccountId, KeyRef},
    store::{
        KeyLookupStore, KeyStatus, Result, Revocation, RevocationStore, UnixTime,
        rows::{Columns, key_status},
    },
};

#[async_trait]
impl<D: Dialect> KeyLookupStore for SqlStore<D> {
    async fn key_status(&self, key_ref: KeyRef) -> Result<Option<KeyStatus>> {
        // `key_ref` is the primary key: one index probe per verified token.
        // Its owner's limits come along: one more probe, by primary key, for keys that name one.
        let row = D::query(sql!(
            "SELECT k.account_id::text AS account_id, k.scopes, k.expires_at, k.disabled_at, k.limits, k.owner, \
             k.credits_remaining, k.credits_refill, o.limits AS owner_limits, \
             o.credits_remaining AS owner_credits_remaining, o.credits_refill AS owner_credits_refill \
             FROM api_keys k LEFT JOIN owners o ON o.account_id = k.account_id AND o.owner = k.owner \
             WHERE k.key_ref = $1::uuid"
        ))
        .bind(key_ref.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|row| key_status(row, key_ref)).transpose()
    }
}

#[async_trait]
impl<D: Dialect> RevocationStore for SqlStore<D> {
    async fn revoke_token(&self, r: &Revocation) -> Result<()> {
        // Idempotent, as RFC 7009 wants: a second revocation of the same token is a success.
        D::query(sql!(
            "INSERT INTO revoked_tokens (jti, key_ref, expires_at, revoked_at) VALUES ($1, $2::uuid, $3, $4) \
             ON CONFLICT (jti) DO NOTHING"
        ))
        .bind(&r.jti)
        .bind(r.key_ref.to_string())
        .bind(r.expires_at)
        .bind(r.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool> {
        D::query(sql!("SELECT 1 FROM revoked_tokens WHERE jti = $1")).bind(jti).exists(&self.pool).await
    }

    async fn live_revocations_of(&self, key_ref: KeyRef, account: AccountId, now: UnixTime) -> Result<(u64, u64)> {
        let row = D::query(sql!(
            "SELECT (SELECT count(*) FROM revoked_tokens WHERE key_ref = $1::uuid AND expires_at > $3) AS of_key, \
             (SELECT count(*) FROM revoked_tokens r JOIN api_keys k ON k.key_ref = r.key_ref \
              WHERE k.account_id = $2::uuid AND r.expires_at > $3) AS of_account"
        ))
        .bind(key_ref.to_string())
        .bind(account.to_string())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.int("of_key")?.max(0) as u64, row.int("of_account")?.max(0) as u64))
    }

    async fn purge_revocations(&self, now: UnixTime) -> Result<u64> {
        D::query(sql!("DELETE FROM revoked_tokens WHERE expires_at <= $1")).bind(now).execute(&self.pool).await
    }
}
