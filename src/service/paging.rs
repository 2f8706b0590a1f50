//! Listing an account's keys a page at a time, for accounts with many keys.

use super::{AdminSession, AuthService, KeyDetails, Result};
use crate::domain::{KeyName, KeyRef};

/// The largest page a caller may ask for.
pub const MAX_PAGE: u32 = 1000;

/// One page of keys, oldest first.
#[derive(Debug)]
pub struct KeyPage {
    pub keys: Vec<KeyDetails>,
    /// Where the next page starts (after this key), when there is one.
    pub next_after: Option<KeyRef>,
}

impl AuthService {
    /// At most `limit` keys of the session's account, only those named `name` if given,
    /// after the key `after` (from the first key without it); every remaining key when
    /// `limit` is `None`. `None` when `after` is not a key of this account (any more).
    pub async fn list_keys_page(
        &self,
        session: &AdminSession,
        name: Option<&KeyName>,
        after: Option<KeyRef>,
        limit: Option<u32>,
    ) -> Result<Option<KeyPage>> {
        // One more than asked for tells whether there is a next page without a count.
        let fetch = limit.map_or(u32::MAX, |n| n.clamp(1, MAX_PAGE) + 1);
        let Some(keys) = self.store.list_keys_page(session.account_id, name, after, fetch).await? else {
            return Ok(None);
        };
        let mut keys: Vec<KeyDetails> = keys.into_iter().map(|k| self.with_recent_use(k)).collect();
        let next_after = match limit {
            Some(n) if keys.len() > n as usize => {
                keys.truncate(n as usize);
                keys.last().map(|k| k.key_ref)
            }
            _ => None,
        };
        Ok(Some(KeyPage { keys, next_after }))
    }
}
