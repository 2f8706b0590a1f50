//! Limits' shared state in Redis (`KEYGATE_REDIS_URL`), for request rates a database should
//! not carry. Counters are plain integers per window, expiring on their own; strict takes
//! are one Lua script, atomic like every script Redis runs.
//!
//! Credits are decided in Redis and kept in the store. Redis holds a copy of each balance,
//! loaded from the store when missing (after Redis restarted, say); every round, each replica
//! writes what its takes spent to the store, as spends rather than balances, so that
//! replicas and admins never overwrite one another. A copy carries a generation, new at
//! every load, and a load reads the store's balance while holding it locked, as a round's
//! write does until it has charged the copy where needed: so each round knows whether the
//! copy it finds was loaded before its spends reached the store, and charges that copy with
//! them if it lacks them:
//! - a spend Redis decided lacks from any copy but the one it was decided on;
//! - a spend decided without Redis (unreachable) lacks from every copy loaded before it was
//!   written; when Redis cannot be reached as it is written, it is charged later, and only
//!   to the copy it was last seen with (any other was loaded after it was written, unless
//!   another replica reached Redis while this one could not).
//!
//! Each charge carries an id that Redis remembers for an hour, so a round repeated after
//! losing an answer never charges twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::{
    Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::shared::{Deferred, SharedCounters, SharedError, SharedResult};
use crate::{
    domain::Refill,
    store::{CounterTake, CreditScope, CreditStore, CreditTake, Taken, UnixTime},
};

/// Balances not used for this long leave Redis (they are reloaded from the store on use).
const BALANCE_TTL_SECONDS: i64 = 7 * 86_400;
/// A spend recorded in the store whose copy could not be charged is given up after this:
/// by then Redis has most likely lost that copy anyway.
const OWED_FOR: Duration = Duration::from_secs(600);
/// At most this many such spends are kept (one per balance and round while Redis is away),
/// the oldest given up first.
const MAX_OWED: usize = 100_000;

/// `a * b <= c * d` exactly in Lua's doubles, for `a`, `c` below 2^41 and `b`, `d` below
/// 2^22 (counts and limits up to `MAX_AMOUNT`, windows up to `MAX_WINDOW`).
pub(crate) const LE: &str = r"
local function le(a, b, c, d)
  local b1, b0 = math.floor(b / 2048), b % 2048
  local d1, d0 = math.floor(d / 2048), d % 2048
  local x1, x0 = a * b1, a * b0
  local y1, y0 = c * d1, c * d0
  x1 = x1 + math.floor(x0 / 2048); x0 = x0 % 2048
  y1 = y1 + math.floor(y0 / 2048); y0 = y0 % 2048
  if x1 ~= y1 then return x1 < y1 end
  return x0 <= y0
end
";

/// KEYS: each counter's current and previous window, then each balance.
/// ARGV: counters, cost, balance TTL, then per counter window, elapsed, limit, seconds to
/// live, then per balance refill period and amount. TTLs are relative, so that they follow
/// keygate's clock rather than Redis's.
/// The sliding window's test is `window::allows`: `previous * (w - e) <= (limit - current
/// - cost) * w`.
const TAKE: &str = r"
local n, cost, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hits = {}
for i = 1, n do
  local a = 3 + 4 * (i - 1)
  local w, e, limit = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local current = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local room = limit - current - cost
  if room < 0 or not le(previous, w - e, room, w) then return {'counter', i - 1} end
  hits[i] = current + cost
end
local m = #KEYS - 2 * n
local left, periods, gens = {}, {}, {}
for j = 1, m do
  local a = 3 + 4 * n + 2 * (j - 1)
  local period, amount = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local b = redis.call('HMGET', KEYS[2 * n + j], 'r', 'p', 'g')
  if not b[1] then return {'load', j - 1} end
  local r, p = tonumber(b[1]), tonumber(b[2])
  if p < period then r, p = amount, period end
  if r < cost then return {'credits', j - 1} end
  left[j], periods[j], gens[j] = r - cost, p, b[3]
end
for i = 1, n do
  redis.call('INCRBY', KEYS[2 * i - 1], cost)
  redis.call('EXPIRE', KEYS[2 * i - 1], tonumber(ARGV[3 + 4 * (i - 1) + 4]))
end
for j = 1, m do
  redis.call('HSET', KEYS[2 * n + j], 'r', left[j], 'p', periods[j])
  redis.call('EXPIRE', KEYS[2 * n + j], ttl)
end
return {'ok', hits, left, gens}
";

/// KEYS: a balance. ARGV: remaining, period, generation, TTL. Loads the store's balance
/// unless another replica did first.
const LOAD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'r', ARGV[1], 'p', ARGV[2], 'g', ARGV[3])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
end
return 1
";

/// KEYS: balances. ARGV per balance: charge id, generation spent on or last seen ('' for
/// none), period, cost, refill amount, whether Redis decided the spend (1/0), whether the
/// store has had it since before this charge (1/0). Charges each copy with what it lacks
/// (see the module's doc), as the store's `spend_credits` spends: nothing from a later
/// period, a refill first for an earlier one, never below zero.
const CHARGE: &str = r"
for j = 1, #KEYS do
  local a = 7 * (j - 1)
  local id, gen = ARGV[a + 1], ARGV[a + 2]
  local period, cost, amount = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local decided, stored = ARGV[a + 6] == '1', ARGV[a + 7] == '1'
  if redis.call('SET', 'keygate:charged:' .. id, '1', 'NX', 'EX', 3600) then
    local b = redis.call('HMGET', KEYS[j], 'r', 'p', 'g')
    if b[1] then
      local same = b[3] == gen
      local lacks
      if stored then lacks = same and not decided else lacks = not decided or not same end
      local r, p = tonumber(b[1]), tonumber(b[2])
      if lacks and p <= period then
        if p < period then r, p = amount, period end
        redis.call('HSET', KEYS[j], 'r', math.max(r - cost, 0), 'p', p)
      end
    end
  end
end
return 1
";

/// A spend to be recorded in the store and, where it lacks it, charged to Redis's copy.
#[derive(Debug, Clone)]
struct Owed {
    id: String,
    scope: CreditScope,
    period: i64,
    amount: i64,
    cost: i64,
    /// The copy's generation it was spent on (decided) or last seen with.
    generation: Option<Arc<str>>,
    /// Redis decided it (a take), rather than this server alone.
    decided: bool,
    charged: bool,
    stored: bool,
    /// Its id went to Redis in a charge, which may have been applied: it is never merged
    /// with another spend.
    sent: bool,
    since: Instant,
}

impl Owed {
    fn new(
        scope: CreditScope,
        period: i64,
        amount: i64,
        cost: i64,
        generation: Option<Arc<str>>,
        decided: bool,
    ) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (charged, stored, sent, since) = (false, false, false, Instant::now());
        Self { id, scope, period, amount, cost, generation, decided, charged, stored, sent, since }
    }
}

#[derive(Default)]
struct Books {
    /// Spends Redis decided since the last round: (scope, period, generation) → (cost, amount).
    decided: HashMap<(CreditScope, i64, Arc<str>), (i64, i64)>,
    /// Each balance's generation as last seen.
    generations: HashMap<CreditScope, Arc<str>>,
    /// What earlier rounds could not finish.
    owed: Vec<Owed>,
}

struct Inner {
    redis: ConnectionManager,
    store: Arc<dyn CreditStore>,
    take: Script,
    load: Script,
    charge: Script,
    books: Mutex<Books>,
    deferred: Deferred,
    /// One round at a time.
    round: tokio::sync::Mutex<()>,
}

pub struct RedisCounters(Arc<Inner>);

impl RedisCounters {
    /// Connects lazily: keygate starts while Redis is away, and limits follow the failure
    /// setting until it answers. Reconnects by itself after errors.
    pub fn new(url: &str, store: Arc<dyn CreditStore>) -> SharedResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(super::SHARED_TIMEOUT))
            .set_response_timeout(Some(super::SHARED_TIMEOUT * 10))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self(Arc::new(Inner {
            redis,
            store,
            take: Script::new(&format!("{LE}{TAKE}")),
            load: Script::new(LOAD),
            charge: Script::new(CHARGE),
            books: Mutex::default(),
            deferred: Deferred::default(),
            round: tokio::sync::Mutex::new(()),
        })))
    }
}

impl Inner {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads the store's balance into Redis, unless another replica did first; false when
    /// the store has none (credits taken away meanwhile).
    async fn load(&self, scope: &CreditScope) -> SharedResult<bool> {
        let loaded: Mutex<Option<SharedResult<bool>>> = Mutex::new(None);
        let into = &loaded;
        let then = move |stored: Option<crate::store::StoredCredits>| -> crate::store::WhileLocked<'_> {
            Box::pin(async move {
                let result = match stored {
                    None => Ok(false),
                    Some(stored) => {
                        let mut redis = self.redis.clone();
                        let generation = uuid::Uuid::new_v4().simple().to_string();
                        let mut load = self.load.key(balance_key(scope));
                        load.arg(stored.remaining).arg(stored.period).arg(generation).arg(BALANCE_TTL_SECONDS);
                        load.invoke_async::<i64>(&mut redis).await.map(|_| true).map_err(SharedError::from)
                    }
                };
                *into.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            })
        };
        self.store.credit_balance_locked(scope, Box::new(then)).await?;
        let loaded = loaded.into_inner().unwrap_or_else(|p| p.into_inner());
        loaded.unwrap_or(Ok(false))
    }

    /// Charges each of `owed` to Redis's copy where it lacks it.
    async fn charge(&self, owed: &[&Owed]) -> SharedResult<()> {
        if owed.is_empty() {
            return Ok(());
        }
        let mut invocation = self.charge.prepare_invoke();
        for o in owed {
            invocation
                .key(balance_key(&o.scope))
                .arg(&o.id)
                .arg(o.generation.as_deref().unwrap_or(""))
                .arg(o.period)
                .arg(o.cost)
                .arg(o.amount)
                .arg(u8::from(o.decided))
                .arg(u8::from(o.stored));
        }
        let mut redis = self.redis.clone();
        let _: i64 = invocation.invoke_async(&mut redis).await?;
        Ok(())
    }

    /// One round: every spend not in the store yet written to it, with the copies charged
    /// while the balances are locked; then the spends that Redis could not be charged with
    /// before.
    async fn round(&self) -> SharedResult<()> {
        let _round = self.round.lock().await;
        let mut owed = {
            let mut books = self.books();
            let mut fresh: Vec<Owed> = books
                .decided
                .drain()
                .map(|((scope, period, generation), (cost, amount))| {
                    Owed::new(scope, period, amount, cost, Some(generation), true)
                })
                .collect();
            for (scope, cost, period, amount) in self.deferred.drain() {
                let generation = books.generations.get(&scope).cloned();
                fresh.push(Owed::new(scope, period, amount, cost, generation, false));
            }
            // One entry per balance while the store stays away, rather than one per round.
            let mut owed = std::mem::take(&mut books.owed);
            let mut waiting: HashMap<_, usize> = owed
                .iter()
                .enumerate()
                .filter(|(_, o)| !o.stored && !o.sent)
                .map(|(i, o)| ((o.scope.clone(), o.period, o.generation.clone(), o.decided), i))
                .collect();
            for o in fresh {
                match waiting.entry((o.scope.clone(), o.period, o.generation.clone(), o.decided)) {
                    std::collections::hash_map::Entry::Occupied(e) => owed[*e.get()].cost += o.cost,
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(owed.len());
                        owed.push(o);
                    }
                }
            }
            owed
        };
        // The store's failures are the round's; Redis's are the outage's, which `Limiter`
        // warns of.
        let (mut failed, mut reached) = (None, true);
        let unstored: Vec<&Owed> = owed.iter().filter(|o| !o.stored).collect();
        if !unstored.is_empty() {
            let spends: Vec<(CreditScope, i64, i64, i64)> =
                unstored.iter().map(|o| (o.scope.clone(), o.cost, o.period, o.amount)).collect();
            let charged: Mutex<Option<SharedResult<()>>> = Mutex::new(None);
            let sent = std::sync::atomic::AtomicBool::new(false);
            let then = Box::pin(async {
                sent.store(true, std::sync::atomic::Ordering::Relaxed);
                let result = self.charge(&unstored).await;
                *charged.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            });
            let stored = self.store.spend_credits_locked(&spends, then).await;
            if sent.into_inner() {
                owed.iter_mut().filter(|o| !o.stored).for_each(|o| o.sent = true);
            }
            let charged = charged.into_inner().unwrap_or_else(|p| p.into_inner()).unwrap_or(Ok(()));
            match stored {
                Ok(()) => {
                    for o in owed.iter_mut().filter(|o| !o.stored) {
                        o.stored = true;
                        // A spend Redis decided is in the copy it was decided on; any later
                        // copy is loaded from the store, which has it now.
                        o.charged = charged.is_ok() || o.decided;
                    }
                    if let Err(e) = charged {
                        tracing::debug!(error = %e, "credit spends not charged to Redis's copies yet");
                        reached = false;
                    }
                }
                Err(e) => failed = Some(e.into()),
            }
        }
        let later: Vec<&Owed> = owed.iter().filter(|o| o.stored && !o.charged).collect();
        if !later.is_empty() && reached {
            match self.charge(&later).await {
                Ok(()) => owed.iter_mut().for_each(|o| o.charged |= o.stored),
                Err(e) => tracing::debug!(error = %e, "credit spends not charged to Redis's copies yet"),
            }
        }
        owed.retain(|o| !o.stored || (!o.charged && o.since.elapsed() <= OWED_FOR));
        let uncharged = owed.iter().filter(|o| o.stored).count();
        if uncharged > MAX_OWED {
            owed.sort_by_key(|o| (!o.stored, o.since));
            owed.drain(..uncharged - MAX_OWED);
            tracing::warn!(
                given_up = uncharged - MAX_OWED,
                "Redis long unreachable: the oldest credit spends will not be charged to its copies"
            );
        }
        self.books().owed.extend(owed);
        failed.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl SharedCounters for RedisCounters {
    async fn take(&self, counters: &[CounterTake<'_>], credits: &[CreditTake<'_>], cost: i64) -> SharedResult<Taken> {
        let inner = &self.0;
        // Once more after each missing balance is loaded.
        for _ in 0..=credits.len() {
            let mut invocation = inner.take.prepare_invoke();
            for c in counters {
                invocation.key(counter_key(c.counter, c.window_start));
                invocation.key(counter_key(c.counter, c.window_start - c.window));
            }
            for c in credits {
                invocation.key(balance_key(c.scope));
            }
            invocation.arg(counters.len()).arg(cost).arg(BALANCE_TTL_SECONDS);
            for c in counters {
                let now = c.window_start + c.elapsed;
                invocation.arg(c.window).arg(c.elapsed).arg(c.limit).arg((c.expires_at - now).max(1));
            }
            for c in credits {
                invocation.arg(c.period).arg(c.amount);
            }
            let mut redis = inner.redis.clone();
            let reply: Value = invocation.invoke_async(&mut redis).await?;
            match parse_take(reply)? {
                TakeReply::Counter(i) => return Ok(Taken::Counter(i)),
                TakeReply::Credits(j) => return Ok(Taken::Credits(j)),
                TakeReply::Load(j) => {
                    let scope = credits.get(j).ok_or_else(|| SharedError::Reply("no such balance".into()))?.scope;
                    if !inner.load(scope).await? {
                        return Ok(Taken::Credits(j));
                    }
                }
                TakeReply::All { hits, remaining, generations } => {
                    let mut books = inner.books();
                    for (c, generation) in credits.iter().zip(generations) {
                        let generation: Arc<str> = generation.into();
                        books.generations.insert(c.scope.clone(), generation.clone());
                        let entry =
                            books.decided.entry((c.scope.clone(), c.period, generation)).or_insert((0, c.amount));
                        entry.0 += cost;
                    }
                    return Ok(Taken::All { hits, remaining });
                }
            }
        }
        Err(SharedError::Reply("a balance missing again right after it was loaded".into()))
    }

    async fn add_hits(&self, hits: &[(&str, UnixTime, i64, UnixTime)], now: UnixTime) -> SharedResult<Vec<i64>> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (counter, start, n, expires_at) in hits {
            let key = counter_key(counter, *start);
            // Relative to keygate's clock, not Redis's.
            pipe.incr(&key, *n).expire(&key, (expires_at - now).max(1)).ignore();
        }
        let mut redis = self.0.redis.clone();
        Ok(pipe.query_async(&mut redis).await?)
    }

    fn defer_spend(&self, scope: CreditScope, period: i64, amount: i64, cost: i64) {
        self.0.deferred.add(scope, period, amount, cost);
    }

    async fn flush(&self) -> SharedResult<()> {
        // Run to the end even when the caller stops waiting: a round half done would be
        // done again.
        let inner = self.0.clone();
        let round = tokio::spawn(async move { inner.round().await });
        tokio::time::timeout(super::SHARED_TIMEOUT * 10, round).await.map_err(|_| SharedError::Timeout)??
    }

    async fn balance_changed(&self, scope: &CreditScope) -> SharedResult<()> {
        let mut redis = self.0.redis.clone();
        let _: i64 = redis::cmd("DEL").arg(balance_key(scope)).query_async(&mut redis).await?;
        Ok(())
    }

    async fn balance(&self, scope: &CreditScope, refill: Option<Refill>, now: UnixTime) -> Option<i64> {
        let mut redis = self.0.redis.clone();
        let mut query = redis::cmd("HMGET");
        query.arg(balance_key(scope)).arg("r").arg("p");
        let (remaining, period): (Option<i64>, Option<i64>) =
            tokio::time::timeout(super::SHARED_TIMEOUT, query.query_async(&mut redis)).await.ok()?.ok()?;
        let (remaining, period) = (remaining?, period?);
        Some(match refill {
            Some(r) if period < r.period(now) => r.amount as i64,
            _ => remaining,
        })
    }

    async fn purge(&self, _now: UnixTime) -> SharedResult<u64> {
        // Every counter expires by itself.
        Ok(0)
    }

    async fn probe(&self) -> SharedResult<()> {
        let mut redis = self.0.redis.clone();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }

    /// Pipelined on one connection, and each a script Redis runs in microseconds.
    fn takes_in_flight(&self) -> usize {
        64
    }
}

fn counter_key(counter: &str, window_start: UnixTime) -> String {
    format!("keygate:limit:{counter}:{window_start}")
}

fn balance_key(scope: &CreditScope) -> String {
    match scope {
        CreditScope::Key(key_ref) => format!("keygate:credits:k/{key_ref}"),
        CreditScope::Owner(account, owner) => format!("keygate:credits:o/{account}/{owner}"),
    }
}

enum TakeReply {
    All { hits: Vec<i64>, remaining: Vec<i64>, generations: Vec<String> },
    Counter(usize),
    Credits(usize),
    Load(usize),
}

fn parse_take(reply: Value) -> SharedResult<TakeReply> {
    let bad = || SharedError::Reply("an unexpected answer to the take script".into());
    let Value::Array(mut parts) = reply else { return Err(bad()) };
    if parts.is_empty() {
        return Err(bad());
    }
    let tag: String = redis::from_redis_value(parts.remove(0)).map_err(|_| bad())?;
    let index = |parts: &[Value]| -> SharedResult<usize> {
        let i: i64 = redis::from_redis_value_ref(parts.first().ok_or_else(bad)?).map_err(|_| bad())?;
        usize::try_from(i).map_err(|_| bad())
    };
    Ok(match tag.as_str() {
        "counter" => TakeReply::Counter(index(&parts)?),
        "credits" => TakeReply::Credits(index(&parts)?),
        "load" => TakeReply::Load(index(&parts)?),
        "ok" if parts.len() == 3 => {
            let mut parts = parts.into_iter();
            let mut next = || parts.next().ok_or_else(bad);
            let hits: Vec<i64> = redis::from_redis_value(next()?).map_err(|_| bad())?;
            let remaining: Vec<i64> = redis::from_redis_value(next()?).map_err(|_| bad())?;
            let generations: Vec<String> = redis::from_redis_value(next()?).map_err(|_| bad())?;
            TakeReply::All { hits, remaining, generations }
        }
        _ => return Err(bad()),
    })
}
