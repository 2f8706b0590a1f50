//! One page of an account's keys at a time: `GET /auth/keys/list?limit=&after=`.

use async_trait::async_trait;

use super::{KeySummary, Result};
use crate::domain::{AccountId, KeyRef};

#[async_trait]
pub trait KeyPageStore: Send + Sync {
    /// At most `limit` of the account's keys in listing order (oldest first, ties by ref),
    /// starting after the key `after`, or from the first key. `None` when `after` is not a
    /// key of this account (any more): the caller cannot tell where to resume.
    ///
    /// Keyset pagination on the index (account_id, created_at, key_ref): each page costs
    /// one index range scan of `limit` entries, however deep into the listing it is.
    async fn list_keys_page(
        &self,
        account: AccountId,
        after: Option<KeyRef>,
        limit: u32,
    ) -> Result<Option<Vec<KeySummary>>>;
}
