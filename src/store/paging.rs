//! Keys as admins read them: one page of an account's keys at a time
//! (`GET /auth/keys/list?name=&limit=&after=`), or one key.

use async_trait::async_trait;

use super::{KeyDetails, Result};
use crate::domain::{AccountId, KeyName, KeyRef};

#[async_trait]
pub trait KeyPageStore: Send + Sync {
    /// At most `limit` of the account's keys in listing order (oldest first, ties by ref),
    /// only those named `name` if given, starting after the key `after`, or from the first
    /// key. `None` when `after` is not a key of this account (any more): the caller cannot
    /// tell where to resume. Without their metadata.
    ///
    /// Keyset pagination on the index (account_id, created_at, key_ref): each page costs
    /// one index range scan of `limit` entries, however deep into the listing it is.
    async fn list_keys_page(
        &self,
        account: AccountId,
        name: Option<&KeyName>,
        after: Option<KeyRef>,
        limit: u32,
    ) -> Result<Option<Vec<KeyDetails>>>;

    /// One key of the account, with its metadata.
    async fn key_details(&self, account: AccountId, key_ref: KeyRef) -> Result<Option<KeyDetails>>;
}
