//! Keyset pagination of an account's keys.

use async_trait::async_trait;

use super::{PgStore, key_summary};
use crate::{
    domain::{AccountId, KeyRef},
    store::{KeyPageStore, KeySummary, Result},
};

#[async_trait]
impl KeyPageStore for PgStore {
    async fn list_keys_page(
        &self,
        account: AccountId,
        after: Option<KeyRef>,
        limit: u32,
    ) -> Result<Option<Vec<KeySummary>>> {
        let account = account.to_string();
        let rows =
            match after {
                None => sqlx::query(
                    "SELECT key_ref::text AS key_ref, api_key, created_at FROM api_keys WHERE account_id = $1::uuid \
                     ORDER BY created_at, key_ref LIMIT $2",
                )
                .bind(&account)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
                Some(after) => {
                    // REPEATABLE READ: the cursor's row and the page come from one snapshot.
                    let mut tx = self.pool.begin().await?;
                    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
                    let cursor: Option<i64> = sqlx::query_scalar(
                        "SELECT created_at FROM api_keys WHERE key_ref = $1::uuid AND account_id = $2::uuid",
                    )
                    .bind(after.to_string())
                    .bind(&account)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(created_at) = cursor else { return Ok(None) };
                    // The row value comparison is a range on the index (account_id, created_at, key_ref).
                    let rows = sqlx::query(
                        "SELECT key_ref::text AS key_ref, api_key, created_at FROM api_keys \
                     WHERE account_id = $1::uuid AND (created_at, key_ref) > ($2, $3::uuid) \
                     ORDER BY created_at, key_ref LIMIT $4",
                    )
                    .bind(&account)
                    .bind(created_at)
                    .bind(after.to_string())
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    rows
                }
            };
        rows.iter().map(key_summary).collect::<Result<Vec<_>>>().map(Some)
    }
}
