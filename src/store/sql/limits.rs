//! Owners' limits, credit balances and the shared rate-limit counters.

use async_trait::async_trait;

use super::{Dialect, SqlStore, query::Exec, sql};
use crate::{
    domain::{AccountId, Limits, OwnerId},
    store::{
        CounterStore, CounterTake, CreditScope, CreditStore, CreditTake, OwnerRecord, OwnerStore, Result,
        StoredCredits, Taken, UnixTime, WhileLocked,
        rows::{Columns, owner_record, stored_credits},
    },
};

#[async_trait]
impl<D: Dialect> OwnerStore for SqlStore<D> {
    async fn put_owner(
        &self,
        account: AccountId,
        owner: &OwnerId,
        limits: &Limits,
        credits: Option<&StoredCredits>,
        now: UnixTime,
    ) -> Result<()> {
        upsert_owner::<D>((&self.pool).into(), account, owner, limits, credits, now).await
    }

    async fn owner(&self, account: AccountId, owner: &OwnerId) -> Result<Option<OwnerRecord>> {
        let row = D::query(sql!(
            "SELECT limits, credits_remaining, credits_refill, credits_period FROM owners \
             WHERE account_id = $1::uuid AND owner = $2"
        ))
        .bind(account.to_string())
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(owner_record).transpose()
    }
}

/// Sets the owner's limits and credits, creating the owner if new.
pub(super) async fn upsert_owner<D: Dialect>(
    on: Exec<'_, D>,
    account: AccountId,
    owner: &OwnerId,
    limits: &Limits,
    credits: Option<&StoredCredits>,
    now: UnixTime,
) -> Result<()> {
    D::query(sql!(
        "INSERT INTO owners (account_id, owner, limits, credits_remaining, credits_refill, credits_period, \
         updated_at) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (account_id, owner) DO UPDATE SET limits = EXCLUDED.limits, \
         credits_remaining = EXCLUDED.credits_remaining, credits_refill = EXCLUDED.credits_refill, \
         credits_period = EXCLUDED.credits_period, updated_at = EXCLUDED.updated_at"
    ))
    .bind(account.to_string())
    .bind(owner.as_str())
    .bind(limits.to_stored())
    .bind(credits.map(|c| c.remaining))
    .bind(credits.and_then(|c| c.refill).map(|r| r.to_stored()))
    .bind(credits.map_or(0, |c| c.period))
    .bind(now)
    .execute(on)
    .await?;
    Ok(())
}

/// The balance's row: (table's statement, first argument, second argument).
fn scope_args(scope: &CreditScope) -> (String, Option<&str>) {
    match scope {
        CreditScope::Key(key_ref) => (key_ref.to_string(), None),
        CreditScope::Owner(account, owner) => (account.to_string(), Some(owner.as_str())),
    }
}

/// Spends `cost` of one balance if it holds that much (after a refill that is due); the
/// remainder, or `None` when it does not.
async fn take_credits<D: Dialect>(on: Exec<'_, D>, take: &CreditTake<'_>, cost: i64) -> Result<Option<i64>> {
    let (id, owner) = scope_args(take.scope);
    let row = match owner {
        None => {
            D::query(sql!(
                "UPDATE api_keys SET \
                 credits_remaining = (CASE WHEN credits_period < $2 THEN $3 ELSE credits_remaining END) - $4, \
                 credits_period = CASE WHEN credits_period < $2 THEN $2 ELSE credits_period END \
                 WHERE key_ref = $1::uuid AND credits_remaining IS NOT NULL \
                 AND (CASE WHEN credits_period < $2 THEN $3 ELSE credits_remaining END) >= $4 \
                 RETURNING credits_remaining"
            ))
            .bind(id)
            .bind(take.period)
            .bind(take.amount)
            .bind(cost)
            .fetch_optional(on)
            .await?
        }
        Some(owner) => {
            D::query(sql!(
                "UPDATE owners SET \
                 credits_remaining = (CASE WHEN credits_period < $3 THEN $4 ELSE credits_remaining END) - $5, \
                 credits_period = CASE WHEN credits_period < $3 THEN $3 ELSE credits_period END \
                 WHERE account_id = $1::uuid AND owner = $2 AND credits_remaining IS NOT NULL \
                 AND (CASE WHEN credits_period < $3 THEN $4 ELSE credits_remaining END) >= $5 \
                 RETURNING credits_remaining"
            ))
            .bind(id)
            .bind(owner)
            .bind(take.period)
            .bind(take.amount)
            .bind(cost)
            .fetch_optional(on)
            .await?
        }
    };
    row.map(|row| row.int("credits_remaining")).transpose()
}

/// Counts `cost` in one counter's window if the sliding estimate stays within the limit:
/// `(hits + cost) * window + previous * (window - elapsed) <= limit * window`, the previous
/// window's hits weighed by how much of it the sliding window still covers. One statement:
/// the row it counts in is locked while its condition is judged, so concurrent takes on
/// several replicas queue on it and never pass the limit together.
async fn take_counter<D: Dialect>(on: Exec<'_, D>, take: &CounterTake<'_>, cost: i64) -> Result<Option<i64>> {
    let row = D::query(sql!(
        "INSERT INTO limit_counters (counter, window_start, hits, expires_at) \
         SELECT $1, $2, $3, $4 WHERE $3 * $6 + COALESCE((SELECT p.hits FROM limit_counters p \
             WHERE p.counter = $1 AND p.window_start = $5), 0) * $7 <= $8 \
         ON CONFLICT (counter, window_start) DO UPDATE SET hits = limit_counters.hits + EXCLUDED.hits \
         WHERE (limit_counters.hits + EXCLUDED.hits) * $6 + COALESCE((SELECT p.hits FROM limit_counters p \
             WHERE p.counter = $1 AND p.window_start = $5), 0) * $7 <= $8 \
         RETURNING hits"
    ))
    .bind(take.counter)
    .bind(take.window_start)
    .bind(cost)
    .bind(take.expires_at)
    .bind(take.window_start - take.window)
    .bind(take.window)
    .bind(take.window - take.elapsed)
    .bind(take.limit.saturating_mul(take.window))
    .fetch_optional(on)
    .await?;
    row.map(|row| row.int("hits")).transpose()
}

#[async_trait]
impl<D: Dialect> CreditStore for SqlStore<D> {
    async fn credit_balance(&self, scope: &CreditScope) -> Result<Option<StoredCredits>> {
        let (id, owner) = scope_args(scope);
        let row =
            match owner {
                None => D::query(sql!(
                    "SELECT credits_remaining, credits_refill, credits_period FROM api_keys WHERE key_ref = $1::uuid"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
                Some(owner) => {
                    D::query(sql!(
                        "SELECT credits_remaining, credits_refill, credits_period FROM owners \
                     WHERE account_id = $1::uuid AND owner = $2"
                    ))
                    .bind(id)
                    .bind(owner)
                    .fetch_optional(&self.pool)
                    .await?
                }
            };
        Ok(row.as_ref().map(stored_credits).transpose()?.flatten())
    }

    async fn write_balances(&self, balances: &[(CreditScope, i64, i64)]) -> Result<()> {
        if balances.is_empty() {
            return Ok(());
        }
        let mut tx = D::begin_write(&self.pool).await?;
        for (scope, remaining, period) in balances {
            let (id, owner) = scope_args(scope);
            // Only where credits are still kept: an admin may have taken them away meanwhile.
            match owner {
                None => {
                    D::query(sql!(
                        "UPDATE api_keys SET credits_remaining = $2, credits_period = $3 \
                     WHERE key_ref = $1::uuid AND credits_remaining IS NOT NULL"
                    ))
                    .bind(id)
                    .bind(*remaining)
                    .bind(*period)
                    .execute(&mut tx)
                    .await?
                }
                Some(owner) => {
                    D::query(sql!(
                        "UPDATE owners SET credits_remaining = $3, credits_period = $4 \
                     WHERE account_id = $1::uuid AND owner = $2 AND credits_remaining IS NOT NULL"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(*remaining)
                    .bind(*period)
                    .execute(&mut tx)
                    .await?
                }
            };
        }
        tx.commit().await?;
        Ok(())
    }

    async fn spend_credits(&self, spent: &[(CreditScope, i64, i64, i64)]) -> Result<()> {
        self.spend_credits_locked(spent, Box::pin(async {})).await
    }

    async fn spend_credits_locked(&self, spent: &[(CreditScope, i64, i64, i64)], then: WhileLocked<'_>) -> Result<()> {
        if spent.is_empty() {
            then.await;
            return Ok(());
        }
        // Rows locked in one order, so that two servers spending on the same balances queue
        // instead of deadlocking.
        let mut spent: Vec<&(CreditScope, i64, i64, i64)> = spent.iter().collect();
        spent.sort_by_key(|(scope, ..)| scope_args(scope));
        let mut tx = D::begin_write(&self.pool).await?;
        for (scope, cost, period, amount) in spent {
            let (id, owner) = scope_args(scope);
            // Spent in `period`: a balance already refilled for a later one owes nothing.
            match owner {
                None => {
                    D::query(sql!(
                        "UPDATE api_keys SET credits_remaining = CASE \
                     WHEN credits_period > $3 THEN credits_remaining \
                     WHEN credits_period < $3 THEN (CASE WHEN $4 > $2 THEN $4 - $2 ELSE 0 END) \
                     WHEN credits_remaining > $2 THEN credits_remaining - $2 ELSE 0 END, \
                     credits_period = CASE WHEN credits_period < $3 THEN $3 ELSE credits_period END \
                     WHERE key_ref = $1::uuid AND credits_remaining IS NOT NULL"
                    ))
                    .bind(id)
                    .bind(*cost)
                    .bind(*period)
                    .bind(*amount)
                    .execute(&mut tx)
                    .await?
                }
                Some(owner) => {
                    D::query(sql!(
                        "UPDATE owners SET credits_remaining = CASE \
                     WHEN credits_period > $4 THEN credits_remaining \
                     WHEN credits_period < $4 THEN (CASE WHEN $5 > $3 THEN $5 - $3 ELSE 0 END) \
                     WHEN credits_remaining > $3 THEN credits_remaining - $3 ELSE 0 END, \
                     credits_period = CASE WHEN credits_period < $4 THEN $4 ELSE credits_period END \
                     WHERE account_id = $1::uuid AND owner = $2 AND credits_remaining IS NOT NULL"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(*cost)
                    .bind(*period)
                    .bind(*amount)
                    .execute(&mut tx)
                    .await?
                }
            };
        }
        then.await;
        tx.commit().await?;
        Ok(())
    }

    async fn credit_balance_locked<'a>(
        &'a self,
        scope: &'a CreditScope,
        then: Box<dyn FnOnce(Option<StoredCredits>) -> WhileLocked<'a> + Send + 'a>,
    ) -> Result<()> {
        let (id, owner) = scope_args(scope);
        let mut tx = D::begin_write(&self.pool).await?;
        let row = match owner {
            None => {
                D::query(sql!(
                    "SELECT credits_remaining, credits_refill, credits_period FROM api_keys \
                     WHERE key_ref = $1::uuid FOR UPDATE"
                ))
                .bind(id)
                .fetch_optional(&mut tx)
                .await?
            }
            Some(owner) => {
                D::query(sql!(
                    "SELECT credits_remaining, credits_refill, credits_period FROM owners \
                     WHERE account_id = $1::uuid AND owner = $2 FOR UPDATE"
                ))
                .bind(id)
                .bind(owner)
                .fetch_optional(&mut tx)
                .await?
            }
        };
        then(row.as_ref().map(stored_credits).transpose()?.flatten()).await;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl<D: Dialect> CounterStore for SqlStore<D> {
    async fn take(&self, counters: &[CounterTake<'_>], credits: &[CreditTake<'_>], cost: i64) -> Result<Taken> {
        // One item: one statement, which is atomic by itself.
        match (counters, credits) {
            ([counter], []) => {
                return Ok(match take_counter::<D>((&self.pool).into(), counter, cost).await? {
                    Some(hits) => Taken::All { hits: vec![hits], remaining: vec![] },
                    None => Taken::Counter(0),
                });
            }
            ([], [credit]) => {
                return Ok(match take_credits::<D>((&self.pool).into(), credit, cost).await? {
                    Some(left) => Taken::All { hits: vec![], remaining: vec![left] },
                    None => Taken::Credits(0),
                });
            }
            _ => {}
        }
        // Several: in one transaction, rows locked in one order (counters by name, then the
        // key's balance, then the owner's), so concurrent takes queue instead of deadlocking;
        // a refusal rolls back what was counted before it.
        let mut order: Vec<usize> = (0..counters.len()).collect();
        order.sort_by_key(|&i| (counters[i].counter, counters[i].window_start));
        let mut tx = D::begin_write(&self.pool).await?;
        let mut hits = vec![0; counters.len()];
        for i in order {
            match take_counter::<D>((&mut tx).into(), &counters[i], cost).await? {
                Some(h) => hits[i] = h,
                None => return Ok(Taken::Counter(i)),
            }
        }
        let mut remaining = Vec::with_capacity(credits.len());
        for (i, credit) in credits.iter().enumerate() {
            match take_credits::<D>((&mut tx).into(), credit, cost).await? {
                Some(left) => remaining.push(left),
                None => return Ok(Taken::Credits(i)),
            }
        }
        tx.commit().await?;
        Ok(Taken::All { hits, remaining })
    }

    async fn add_hits(&self, hits: &[(&str, UnixTime, i64, UnixTime)]) -> Result<Vec<i64>> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = D::begin_write(&self.pool).await?;
        let mut totals = Vec::with_capacity(hits.len());
        for (counter, window_start, n, expires_at) in hits {
            let row = D::query(sql!(
                "INSERT INTO limit_counters (counter, window_start, hits, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (counter, window_start) DO UPDATE SET hits = limit_counters.hits + EXCLUDED.hits \
                 RETURNING hits"
            ))
            .bind(*counter)
            .bind(*window_start)
            .bind(*n)
            .bind(*expires_at)
            .fetch_one(&mut tx)
            .await?;
            totals.push(row.int("hits")?);
        }
        tx.commit().await?;
        Ok(totals)
    }

    async fn purge_counters(&self, now: UnixTime) -> Result<u64> {
        D::query(sql!("DELETE FROM limit_counters WHERE expires_at <= $1")).bind(now).execute(&self.pool).await
    }
}
