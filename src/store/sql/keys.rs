//! API keys: stored, found by their public id, changed, rolled, listed and deleted within
//! their account, and their use recorded.

use async_trait::async_trait;

use super::{Dialect, SqlStore, query::Exec, sql};
use crate::{
    domain::{AccountId, ApiKeyId, KeyName, KeyRef, Limits},
    store::{
        CreditsChange, KeyAbout, KeyDetails, KeyExport, KeyPageStore, KeyRecord, KeyStore, KeyUpdate, KeyUsageStore,
        Result, UnixTime,
        rows::{Columns, account_id, key_details, key_record, key_ref},
    },
};

/// What `rows::key_record` reads.
pub(super) const KEY_COLUMNS: &str = "key_ref::text AS key_ref, account_id::text AS account_id, api_key, \
     secret_hash, created_at, scopes, expires_at, disabled_at, previous_secret_hash, previous_expires_at";

/// What `rows::key_export` reads besides `KEY_COLUMNS`.
pub(super) const EXPORT_COLUMNS: &str = "name, metadata, created_by::text AS created_by, last_used_at, expiry_audited, \
     limits, owner, credits_remaining, credits_refill, credits_period";

/// What `rows::key_details` reads, from `api_keys k` joined to its creator `a`.
const DETAILS: &str = "SELECT k.key_ref::text AS key_ref, k.api_key, k.name, k.scopes, k.created_at, \
     k.expires_at, k.last_used_at, k.disabled_at, a.email AS created_by, k.metadata, k.limits, k.owner, \
     k.credits_remaining, k.credits_refill, k.credits_period \
     FROM api_keys k LEFT JOIN admins a ON a.id = k.created_by ";

/// The listing's order, which its index (account_id[, name], created_at, key_ref) keeps.
const PAGE_ORDER: &str = " ORDER BY k.created_at, k.key_ref LIMIT ";

/// One key row with all that is stored of it: a new key, or one `keygate migrate` copies.
pub(super) async fn insert_key<D: Dialect>(on: Exec<'_, D>, export: &KeyExport) -> Result<()> {
    let KeyExport { record: key, about, last_used_at, expiry_audited, disabled_at } = export;
    let previous = key.previous.as_ref();
    D::query(sql!(
        "INSERT INTO api_keys (key_ref, account_id, api_key, secret_hash, created_at, scopes, expires_at, \
         disabled_at, previous_secret_hash, previous_expires_at, name, metadata, created_by, last_used_at, \
         expiry_audited, limits, owner, credits_remaining, credits_refill, credits_period) \
         VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::uuid, $14, $15, $16, $17, $18, \
         $19, $20)"
    ))
    .bind(key.key_ref.to_string())
    .bind(key.account_id.to_string())
    .bind(key.api_key.as_str())
    .bind(&key.secret_hash)
    .bind(key.created_at)
    .bind(key.scopes.as_str())
    .bind(key.expires_at)
    .bind(*disabled_at)
    .bind(previous.map(|p| p.hash.as_slice()))
    .bind(previous.map(|p| p.until))
    .bind(about.name.as_ref().map(KeyName::as_str))
    .bind(about.metadata.as_ref().map(|m| m.as_str()))
    .bind(about.created_by.map(|a| a.0.to_string()))
    .bind(*last_used_at)
    .bind(i64::from(*expiry_audited))
    .bind(about.limits.to_stored())
    .bind(about.owner.as_ref().map(|o| o.as_str()))
    .bind(about.credits.map(|c| c.remaining))
    .bind(about.credits.and_then(|c| c.refill).map(|r| r.to_stored()))
    .bind(about.credits.map_or(0, |c| c.period))
    .execute(on)
    .await?;
    Ok(())
}

#[async_trait]
impl<D: Dialect> KeyStore for SqlStore<D> {
    async fn insert_key(&self, key: &KeyRecord, about: &KeyAbout) -> Result<()> {
        let export = KeyExport {
            record: key.clone(),
            about: about.clone(),
            last_used_at: None,
            expiry_audited: false,
            disabled_at: (!key.enabled).then_some(key.created_at),
        };
        insert_key::<D>((&self.pool).into(), &export).await
    }

    async fn find_key(&self, api_key_id: &ApiKeyId) -> Result<Option<KeyRecord>> {
        let row = D::query(sql!("SELECT ", KEY_COLUMNS, " FROM api_keys WHERE api_key = $1"))
            .bind(api_key_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_record).transpose()
    }

    async fn all_keys(&self, limit: u32) -> Result<Vec<KeyRecord>> {
        // In pages, inside one snapshot: a whole store's rows at once, before decoding, would
        // hold several times the memory the records need.
        const PAGE: u32 = 4096;
        let mut tx = D::begin_snapshot(&self.pool).await?;
        let mut keys: Vec<KeyRecord> = Vec::new();
        // Keyset pages from below every ref there is: the nil uuid is never generated.
        let mut after = uuid::Uuid::nil().to_string();
        while (keys.len() as u64) < u64::from(limit) {
            let want = PAGE.min(limit - keys.len() as u32);
            let rows = D::query(sql!(
                "SELECT ",
                KEY_COLUMNS,
                " FROM api_keys WHERE key_ref > $1::uuid ORDER BY key_ref LIMIT $2"
            ))
            .bind(after)
            .bind(i64::from(want))
            .fetch_all(&mut tx)
            .await?;
            for row in &rows {
                keys.push(key_record(row)?);
            }
            match keys.last() {
                Some(last) if rows.len() == want as usize => after = last.key_ref.to_string(),
                _ => break,
            }
        }
        tx.commit().await?;
        Ok(keys)
    }

    async fn delete_key(&self, account: AccountId, key_ref: KeyRef) -> Result<bool> {
        let deleted = D::query(sql!("DELETE FROM api_keys WHERE key_ref = $1::uuid AND account_id = $2::uuid"))
            .bind(key_ref.to_string())
            .bind(account.to_string())
            .execute(&self.pool)
            .await?;
        Ok(deleted > 0)
    }

    async fn update_key(
        &self,
        account: AccountId,
        key_ref: KeyRef,
        update: &KeyUpdate,
        now: UnixTime,
    ) -> Result<Option<KeyRecord>> {
        // One statement whatever is asked: each field has a flag saying whether to set it.
        // A new expiry is audited afresh when it passes; disabling keeps the first time.
        let flag = |set: bool| i64::from(set);
        // Credits: 1 sets them, 2 tops them up (refilling first when their period is over),
        // 3 clears them.
        let (credits_op, credits_amount, credits_refill, credits_period, refill_amount) = match &update.credits {
            None => (0, None, None, 0, 0),
            Some(CreditsChange::Set(c)) => (1, Some(c.remaining), c.refill.map(|r| r.to_stored()), c.period, 0),
            Some(CreditsChange::Add { amount, period, refill_amount }) => {
                (2, Some(*amount), None, *period, *refill_amount)
            }
            Some(CreditsChange::Clear) => (3, None, None, 0, 0),
        };
        let row = D::query(sql!(
            "UPDATE api_keys SET \
             name = CASE WHEN $3 = 1 THEN $4 ELSE name END, \
             scopes = CASE WHEN $5 = 1 THEN $6 ELSE scopes END, \
             expires_at = CASE WHEN $7 = 1 THEN $8::bigint ELSE expires_at END, \
             expiry_audited = CASE WHEN $7 = 1 THEN 0 ELSE expiry_audited END, \
             metadata = CASE WHEN $9 = 1 THEN $10 ELSE metadata END, \
             disabled_at = CASE WHEN $11 = 1 THEN NULL WHEN $11 = 0 THEN COALESCE(disabled_at, $12) \
                 ELSE disabled_at END, \
             limits = CASE WHEN $13 = 1 THEN $14 ELSE limits END, \
             owner = CASE WHEN $15 = 1 THEN $16 ELSE owner END, \
             credits_remaining = CASE WHEN $17 = 1 THEN $18::bigint \
                 WHEN $17 = 2 AND credits_remaining IS NOT NULL THEN \
                     (CASE WHEN credits_period < $20 THEN $21 ELSE credits_remaining END) + $18 \
                 WHEN $17 = 3 THEN NULL ELSE credits_remaining END, \
             credits_refill = CASE WHEN $17 = 1 THEN $19 WHEN $17 = 3 THEN NULL ELSE credits_refill END, \
             credits_period = CASE WHEN $17 = 1 OR ($17 = 2 AND credits_period < $20) THEN $20 \
                 ELSE credits_period END \
             WHERE key_ref = $1::uuid AND account_id = $2::uuid RETURNING ",
            KEY_COLUMNS
        ))
        .bind(key_ref.to_string())
        .bind(account.to_string())
        .bind(flag(update.name.is_some()))
        .bind(update.name.as_ref().and_then(|n| n.as_ref()).map(KeyName::as_str))
        .bind(flag(update.scopes.is_some()))
        .bind(update.scopes.as_ref().map_or("", |s| s.as_str()))
        .bind(flag(update.expires_at.is_some()))
        .bind(update.expires_at.flatten())
        .bind(flag(update.metadata.is_some()))
        .bind(update.metadata.as_ref().and_then(|m| m.as_ref()).map(|m| m.as_str()))
        .bind(update.enabled.map_or(-1, i64::from))
        .bind(now)
        .bind(flag(update.limits.is_some()))
        .bind(update.limits.as_ref().and_then(Limits::to_stored))
        .bind(flag(update.owner.is_some()))
        .bind(update.owner.as_ref().and_then(|o| o.as_ref()).map(|o| o.as_str()))
        .bind(credits_op)
        .bind(credits_amount)
        .bind(credits_refill)
        .bind(credits_period)
        .bind(refill_amount)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_record).transpose()
    }

    async fn roll_key(
        &self,
        account: AccountId,
        key_ref: KeyRef,
        secret_hash: &[u8],
        previous_until: Option<UnixTime>,
    ) -> Result<Option<KeyRecord>> {
        // The right-hand sides read the row as it was: the current hash becomes the previous.
        let row = D::query(sql!(
            "UPDATE api_keys SET \
             previous_secret_hash = CASE WHEN $4::bigint IS NULL THEN NULL ELSE secret_hash END, \
             previous_expires_at = $4::bigint, secret_hash = $3 \
             WHERE key_ref = $1::uuid AND account_id = $2::uuid RETURNING ",
            KEY_COLUMNS
        ))
        .bind(key_ref.to_string())
        .bind(account.to_string())
        .bind(secret_hash)
        .bind(previous_until)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_record).transpose()
    }
}

#[async_trait]
impl<D: Dialect> KeyPageStore for SqlStore<D> {
    async fn list_keys_page(
        &self,
        account: AccountId,
        name: Option<&KeyName>,
        after: Option<KeyRef>,
        limit: u32,
    ) -> Result<Option<Vec<KeyDetails>>> {
        let account = account.to_string();
        let limit = i64::from(limit);
        let name = name.map(KeyName::as_str);
        let rows = match after {
            None => {
                let query = match name {
                    None => D::query(sql!(DETAILS, "WHERE k.account_id = $1::uuid", PAGE_ORDER, "$2")),
                    Some(_) => {
                        D::query(sql!(DETAILS, "WHERE k.account_id = $1::uuid AND k.name = $3", PAGE_ORDER, "$2"))
                    }
                };
                let query = query.bind(&account).bind(limit);
                let query = if let Some(name) = name { query.bind(name) } else { query };
                query.fetch_all(&self.pool).await?
            }
            Some(after) => {
                // The cursor's row and the page come from one snapshot.
                let mut tx = D::begin_snapshot(&self.pool).await?;
                let cursor = D::query(sql!(
                    "SELECT created_at FROM api_keys WHERE key_ref = $1::uuid AND account_id = $2::uuid"
                ))
                .bind(after.to_string())
                .bind(&account)
                .fetch_optional(&mut tx)
                .await?;
                let Some(cursor) = cursor else { return Ok(None) };
                // The row value comparison is a range on the listing's index.
                let query = match name {
                    None => D::query(sql!(
                        DETAILS,
                        "WHERE k.account_id = $1::uuid AND (k.created_at, k.key_ref) > ($3, $4::uuid)",
                        PAGE_ORDER,
                        "$2"
                    )),
                    Some(_) => D::query(sql!(
                        DETAILS,
                        "WHERE k.account_id = $1::uuid AND k.name = $5 AND (k.created_at, k.key_ref) > ($3, $4::uuid)",
                        PAGE_ORDER,
                        "$2"
                    )),
                };
                let query = query.bind(&account).bind(limit).bind(cursor.int("created_at")?).bind(after.to_string());
                let query = if let Some(name) = name { query.bind(name) } else { query };
                let rows = query.fetch_all(&mut tx).await?;
                tx.commit().await?;
                rows
            }
        };
        rows.iter().map(|row| key_details(row, false)).collect::<Result<Vec<_>>>().map(Some)
    }

    async fn key_details(&self, account: AccountId, key_ref: KeyRef) -> Result<Option<KeyDetails>> {
        let row = D::query(sql!(DETAILS, "WHERE k.key_ref = $1::uuid AND k.account_id = $2::uuid"))
            .bind(key_ref.to_string())
            .bind(account.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|row| key_details(row, true)).transpose()
    }
}

#[async_trait]
impl<D: Dialect> KeyUsageStore for SqlStore<D> {
    async fn record_key_use(&self, uses: &[(KeyRef, UnixTime)]) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = D::begin_write(&self.pool).await?;
        for (key_ref, at) in uses {
            D::query(sql!(
                "UPDATE api_keys SET last_used_at = $2 WHERE key_ref = $1::uuid \
                 AND (last_used_at IS NULL OR last_used_at < $2)"
            ))
            .bind(key_ref.to_string())
            .bind(*at)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn take_expired_keys(&self, now: UnixTime, limit: u32) -> Result<Vec<(KeyRef, AccountId)>> {
        // One statement marks and returns, so of several replicas sweeping at once each
        // expiry is reported by one.
        let rows = D::query(sql!(
            "UPDATE api_keys SET expiry_audited = 1 WHERE key_ref IN (SELECT key_ref FROM api_keys \
             WHERE expires_at IS NOT NULL AND expires_at <= $1 AND expiry_audited = 0 LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING key_ref::text AS key_ref, account_id::text AS account_id"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((key_ref(row)?, account_id(row, "account_id")?))).collect()
    }
}
