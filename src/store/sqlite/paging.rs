//! Keyset pagination of an account's keys.

use async_trait::async_trait;

use super::{SqliteStore, key_summary};
use crate::{
    domain::{AccountId, KeyRef},
    store::{KeyPageStore, KeySummary, Result},
};

#[async_trait]
impl KeyPageStore for SqliteStore {
    async fn list_keys_page(
        &self,
        account: AccountId,
        after: Option<KeyRef>,
        limit: u32,
    ) -> Result<Option<Vec<KeySummary>>> {
        let account = account.to_string();
        let rows = match after {
            None => {
                sqlx::query(
                    "SELECT key_ref, api_key, created_at FROM api_keys WHERE account_id = ? \
                     ORDER BY created_at, key_ref LIMIT ?",
                )
                .bind(&account)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            Some(after) => {
                // One transaction, so the cursor's row and the page come from one snapshot.
                let mut tx = self.pool.begin().await?;
                let cursor: Option<i64> =
                    sqlx::query_scalar("SELECT created_at FROM api_keys WHERE key_ref = ? AND account_id = ?")
                        .bind(after.to_string())
                        .bind(&account)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(created_at) = cursor else { return Ok(None) };
                // The row value comparison is a range on the index (account_id, created_at, key_ref).
                let rows = sqlx::query(
                    "SELECT key_ref, api_key, created_at FROM api_keys \
                     WHERE account_id = ? AND (created_at, key_ref) > (?, ?) \
                     ORDER BY created_at, key_ref LIMIT ?",
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
