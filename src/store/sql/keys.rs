//! API keys: stored, found by their public id, listed and deleted within their account.

use async_trait::async_trait;

use super::{Dialect, SqlStore, query::Exec, sql};
use crate::{
    domain::{AccountId, ApiKeyId, KeyRef},
    store::{
        KeyPageStore, KeyRecord, KeyStore, KeySummary, Result,
        rows::{Columns, key_record, key_summary},
    },
};

/// What `rows::key_record` reads.
pub(super) const KEY_COLUMNS: &str =
    "key_ref::text AS key_ref, account_id::text AS account_id, api_key, secret_hash, created_at, scopes";

/// One key row; also how `keygate migrate` writes the copied keys, inside its transaction.
pub(super) async fn insert_key<D: Dialect>(on: Exec<'_, D>, key: &KeyRecord) -> Result<()> {
    D::query(sql!(
        "INSERT INTO api_keys (key_ref, account_id, api_key, secret_hash, created_at, scopes) \
             VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6)"
    ))
    .bind(key.key_ref.to_string())
    .bind(key.account_id.to_string())
    .bind(key.api_key.as_str())
    .bind(&key.secret_hash)
    .bind(key.created_at)
    .bind(key.scopes.as_str())
    .execute(on)
    .await?;
    Ok(())
}

#[async_trait]
impl<D: Dialect> KeyStore for SqlStore<D> {
    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        insert_key::<D>((&self.pool).into(), key).await
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

    async fn list_keys(&self, account: AccountId) -> Result<Vec<KeySummary>> {
        // The first page of the keyset listing, with no limit worth the name.
        Ok(self.list_keys_page(account, None, u32::MAX).await?.unwrap_or_default())
    }

    async fn delete_key(&self, account: AccountId, key_ref: KeyRef) -> Result<bool> {
        let deleted = D::query(sql!("DELETE FROM api_keys WHERE key_ref = $1::uuid AND account_id = $2::uuid"))
            .bind(key_ref.to_string())
            .bind(account.to_string())
            .execute(&self.pool)
            .await?;
        Ok(deleted > 0)
    }
}

#[async_trait]
impl<D: Dialect> KeyPageStore for SqlStore<D> {
    async fn list_keys_page(
        &self,
        account: AccountId,
        after: Option<KeyRef>,
        limit: u32,
    ) -> Result<Option<Vec<KeySummary>>> {
        let account = account.to_string();
        let rows =
            match after {
                None => D::query(sql!(
                    "SELECT key_ref::text AS key_ref, api_key, created_at FROM api_keys WHERE account_id = $1::uuid \
                     ORDER BY created_at, key_ref LIMIT $2"
                ))
                .bind(&account)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
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
                    // The row value comparison is a range on the index (account_id, created_at, key_ref).
                    let rows = D::query(sql!(
                        "SELECT key_ref::text AS key_ref, api_key, created_at FROM api_keys \
                     WHERE account_id = $1::uuid AND (created_at, key_ref) > ($2, $3::uuid) \
                     ORDER BY created_at, key_ref LIMIT $4"
                    ))
                    .bind(&account)
                    .bind(cursor.int("created_at")?)
                    .bind(after.to_string())
                    .bind(i64::from(limit))
                    .fetch_all(&mut tx)
                    .await?;
                    tx.commit().await?;
                    rows
                }
            };
        rows.iter().map(key_summary).collect::<Result<Vec<_>>>().map(Some)
    }
}
