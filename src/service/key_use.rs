//! When each key was last used (API logins, client-credential grants and the OAuth calls
//! that authenticate with a key), without a database write per login: uses are kept in
//! memory, a key once, and written in one transaction every `KEY_USE_FLUSH_EVERY` and when
//! the server stops. What this server has not written yet is shown by its own reads.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{AuthService, KeyDetails, Result};
use crate::{domain::KeyRef, store::UnixTime};

/// How often the recorded uses are written: `last_used_at` is never further behind.
pub const KEY_USE_FLUSH_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(super) struct KeyUse {
    pending: Mutex<HashMap<KeyRef, UnixTime>>,
}

impl KeyUse {
    pub(super) fn record(&self, key_ref: KeyRef, at: UnixTime) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let latest = pending.entry(key_ref).or_insert(at);
        *latest = (*latest).max(at);
    }

    fn pending(&self, key_ref: KeyRef) -> Option<UnixTime> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&key_ref).copied()
    }

    fn take(&self) -> HashMap<KeyRef, UnixTime> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Puts back what could not be written, keeping any later use recorded meanwhile.
    fn restore(&self, uses: HashMap<KeyRef, UnixTime>) {
        for (key_ref, at) in uses {
            self.record(key_ref, at);
        }
    }
}

impl AuthService {
    /// Writes every use recorded since the last flush, in one transaction; returns how many
    /// keys. On failure the uses are kept for the next try.
    pub async fn flush_key_use(&self) -> Result<usize> {
        let uses = self.key_use.take();
        if uses.is_empty() {
            return Ok(0);
        }
        let batch: Vec<(KeyRef, UnixTime)> = uses.iter().map(|(k, at)| (*k, *at)).collect();
        match self.store.record_key_use(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                self.key_use.restore(uses);
                Err(e.into())
            }
        }
    }

    /// Flushes every `every` for as long as the server runs; errors are logged and the
    /// uses written with the next batch.
    pub async fn keep_key_use_flushed(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.flush_key_use().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(keys = n, "key use written"),
                Err(e) => tracing::warn!(error = %e, "cannot write keys' last use; retrying with the next batch"),
            }
        }
    }

    /// `key` with this server's latest use of it, if that is newer than the stored one.
    pub(super) fn with_recent_use(&self, mut key: KeyDetails) -> KeyDetails {
        if let Some(at) = self.key_use.pending(key.key_ref) {
            key.last_used_at = Some(key.last_used_at.map_or(at, |stored| stored.max(at)));
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TestService, client, policy};

    #[tokio::test]
    async fn a_burst_of_logins_is_one_write_of_the_latest_use() {
        let t = TestService::new(policy()).await;
        let (key, password) = t.api_key().await;
        let stored = || async {
            let found = t.auth.store().find_key(&key).await.unwrap().unwrap();
            let account = found.account_id;
            t.auth.store().list_keys_page(account, None, None, 10).await.unwrap().unwrap()[0].last_used_at
        };
        for _ in 0..50 {
            t.auth.api_login(key.as_str(), password.expose(), client()).await.unwrap();
            t.clock.advance(std::time::Duration::from_secs(1));
        }
        assert_eq!(stored().await, None, "no write per login");
        assert_eq!(t.auth.flush_key_use().await.unwrap(), 1, "one key, one row written");
        assert_eq!(stored().await, Some(super::super::testing::START + 49));
        assert_eq!(t.auth.flush_key_use().await.unwrap(), 0);
    }
}
