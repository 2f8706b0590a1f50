//! Rate limits and credits, decided for each verification that counts: the token's key's
//! limits and its owner's, and both credit balances, all checked before any is counted, so
//! that a request refused by one uses up none of the others.
//!
//! Where the counts live:
//! - one server (the embedded store): everything in memory, exact; credit balances are
//!   written to the store every `SYNC_EVERY` and when the server stops;
//! - replicas (`shared`): `fast` limits decide in memory and send their counts to the shared
//!   state every `SYNC_EVERY`, reading back everyone's; `strict` limits and credits are
//!   decided in the shared state, atomically, for each request. A shared call waits at most
//!   `SHARED_TIMEOUT`; while the shared state cannot be reached, strict limits and credits
//!   follow `OnFailure`, and what is allowed meanwhile is counted once it is back.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

pub(crate) mod redis_state;
mod shared;
pub mod window;

pub use redis_state::RedisCounters;
pub use shared::{SharedCounters, SharedError, SharedResult, StoreCounters};

use crate::{
    domain::{Consistency, Refill},
    store::{CounterTake, CreditScope, CreditStore, CreditTake, Quota, QuotaCredits, QuotaLimit, Taken, UnixTime},
};

/// How often fast limits' counts are shared, and a single server's balances written.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// The longest a request waits on the shared state.
pub const SHARED_TIMEOUT: Duration = Duration::from_millis(100);
/// The most a gateway may charge one request.
pub const MAX_COST: u64 = 1000;

/// What strict limits and credits do while the shared state cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Allow the request, and count it once the shared state is back.
    #[default]
    Open,
    /// Refuse it (503).
    Closed,
}

/// One policy as the `RateLimit-Policy` and `RateLimit` headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// The limit's name; `owner.<name>` for an owner's, `credits` and `owner.credits` for
    /// the balances. Shared with the quota, which names each policy once.
    pub name: Arc<str>,
    pub quota: u64,
    pub window: Option<u64>,
    pub remaining: u64,
    /// Seconds until the quota resets (the window's end, the next refill), or, for a
    /// violated policy, until the request would fit.
    pub reset: Option<u64>,
}

/// A request within every limit: each policy as it stands after it.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub policies: Vec<PolicyState>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Over one or more limits, or out of credits: nothing was counted.
    Exceeded { policies: Vec<PolicyState>, violated: Vec<Arc<str>>, retry_after: u64 },
    /// A strict limit or credits could not be checked, and `OnFailure::Closed` says refuse.
    Unavailable,
}

/// A counter in memory: this window's and the previous one's hits as last heard from the
/// shared state (`known`), plus this server's not yet sent (`pending`).
#[derive(Debug, Clone)]
struct Counter {
    window: i64,
    start: UnixTime,
    known: i64,
    pending: i64,
    previous: i64,
    previous_pending: i64,
}

impl Counter {
    fn new(window: i64, start: UnixTime) -> Self {
        Self { window, start, known: 0, pending: 0, previous: 0, previous_pending: 0 }
    }

    /// Moves on to the window `start` begins.
    fn roll(&mut self, start: UnixTime) {
        if start == self.start {
            return;
        }
        if start == self.start + self.window {
            self.previous = self.known + self.pending;
            self.previous_pending = self.pending;
        } else {
            self.previous = 0;
            self.previous_pending = 0;
        }
        self.start = start;
        self.known = 0;
        self.pending = 0;
    }

    fn current(&self) -> i64 {
        self.known + self.pending
    }
}

/// A balance in memory (one server only): authoritative while the server runs.
#[derive(Debug, Clone, Copy)]
struct Balance {
    remaining: i64,
    period: i64,
    dirty: bool,
}

impl Balance {
    /// What is there to spend at `period`: a refill first, if one is due.
    fn available(&self, refill: Option<Refill>, period: i64) -> i64 {
        match refill {
            Some(r) if self.period < period => r.amount as i64,
            _ => self.remaining,
        }
    }
}

#[derive(Default)]
struct State {
    /// By the quotas' counter ids, shared with them rather than copied per request. Each
    /// counted verification hashes its ids: foldhash, as SipHash's resistance to chosen keys
    /// buys nothing for ids that admins' settings and random key refs make.
    counters: HashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
    balances: HashMap<CreditScope, Balance>,
}

/// Whether the shared state is reachable, so that an outage is warned of once.
#[derive(Default)]
pub struct Outages {
    down: AtomicBool,
    count: AtomicU64,
    /// Strict takes that got no answer in time, and so followed the failure setting.
    slow: AtomicU64,
    /// Whether recording credit spends failed last round, so that it is warned of once.
    spends_failing: AtomicBool,
}

impl Outages {
    fn failed(&self, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::AcqRel) {
            self.count.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::monitoring::LIMIT_STATE_OUTAGES).increment(1);
            tracing::warn!(error = %error, "limit state unreachable: fast limits decide alone, strict ones follow KEYGATE_LIMITS_ON_FAILURE");
        }
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("limit state reachable again");
        }
    }

    /// How many outages of the shared state this server has seen (for monitoring).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// How many strict takes got no answer within `SHARED_TIMEOUT` (for monitoring).
    pub fn slow(&self) -> u64 {
        self.slow.load(Ordering::Relaxed)
    }
}

pub struct Limiter {
    /// `None`: this server alone, everything in memory.
    shared: Option<Arc<dyn SharedCounters>>,
    credits: Arc<dyn CreditStore>,
    on_failure: OnFailure,
    state: Mutex<State>,
    /// Held while a balance is read into memory, changed by an admin or written out (one
    /// server only), so that none of them misses another.
    balances_io: tokio::sync::Mutex<()>,
    /// Strict takes in flight at once. Waiting here is this server's queue, not the shared
    /// state's answer: the timeout starts once a take is sent, so a burst does not turn
    /// into timeouts (and strict limits into the failure setting) by its size alone.
    takes: Arc<tokio::sync::Semaphore>,
    late: Mutex<Vec<Late>>,
    pub outages: Outages,
}

impl Limiter {
    pub fn new(shared: Option<Arc<dyn SharedCounters>>, credits: Arc<dyn CreditStore>, on_failure: OnFailure) -> Self {
        let in_flight = shared.as_ref().map_or(1, |s| s.takes_in_flight());
        Self {
            shared,
            credits,
            on_failure,
            state: Mutex::default(),
            balances_io: tokio::sync::Mutex::new(()),
            takes: Arc::new(tokio::sync::Semaphore::new(in_flight)),
            late: Mutex::default(),
            outages: Outages::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decides a request of `cost` against everything `quota` names, at `now`, and counts it
    /// if admitted. A cost of 0 is always admitted and counts nothing.
    pub async fn admit(&self, quota: &Quota, cost: u64, now: UnixTime) -> Result<Admission, Refusal> {
        let (items, credit_items) = (quota.limits(), quota.credits());
        let cost = cost as i64;
        if self.shared.is_none() {
            self.load_balances(credit_items).await;
        }
        let takes = self.shared.is_some()
            && cost > 0
            && (!credit_items.is_empty() || items.iter().any(|i| i.limit.consistency == Consistency::Strict));
        let mut violated = Vec::new();
        {
            let mut state = self.state();
            for item in items {
                let counter = counter(&mut state, item, now);
                let (_, elapsed) = window::position(now, counter.window);
                if cost > 0
                    && !window::allows(
                        item.limit.limit as i64,
                        counter.window,
                        elapsed,
                        counter.current(),
                        counter.previous,
                        cost,
                    )
                {
                    violated.push(item.name.clone());
                }
            }
            if self.shared.is_none() && cost > 0 {
                for credit in credit_items {
                    let period = credit.refill.map_or(0, |r| r.period(now));
                    let available = state.balances.get(&credit.scope).map_or(0, |b| b.available(credit.refill, period));
                    if available < cost {
                        violated.push(credit.name.clone());
                    }
                }
            }
            if violated.is_empty() && cost > 0 {
                // Counted now, before any wait on the shared state, so concurrent requests
                // on this server see it; taken back if a strict limit refuses.
                for item in items.iter().filter(|i| self.shared.is_none() || i.limit.consistency == Consistency::Fast) {
                    if let Some(c) = state.counters.get_mut(&item.counter) {
                        c.pending += cost;
                    }
                }
                if self.shared.is_none() {
                    for credit in credit_items {
                        let period = credit.refill.map_or(0, |r| r.period(now));
                        if let Some(b) = state.balances.get_mut(&credit.scope) {
                            b.remaining = b.available(credit.refill, period) - cost;
                            b.period = period;
                            b.dirty = true;
                        }
                    }
                }
            }
            // Decided here, with nothing to ask the shared state: answered under the same lock.
            if violated.is_empty() && !takes {
                return Ok(Admission { policies: policies(&state, items, credit_items, now, &[]) });
            }
        }
        if !violated.is_empty() {
            return Err(self.refused(items, credit_items, violated, cost, now, None));
        }
        let mut remaining = Vec::new();
        if let Some(shared) = self.shared.as_ref().filter(|_| takes) {
            let strict: Vec<&QuotaLimit> =
                items.iter().filter(|i| i.limit.consistency == Consistency::Strict).collect();
            match self.take(shared, &strict, credit_items, cost, now).await {
                Ok(Taken::All { hits, remaining: left }) => {
                    let mut state = self.state();
                    for (item, hits) in strict.iter().zip(hits) {
                        if let Some(c) = state.counters.get_mut(&item.counter) {
                            c.known = c.known.max(hits - c.pending);
                        }
                    }
                    remaining = left;
                }
                Ok(refused) => {
                    self.give_back(items, cost);
                    let violated = match refused {
                        Taken::Counter(i) => strict[i].name.clone(),
                        Taken::Credits(i) => credit_items[i].name.clone(),
                        Taken::All { .. } => "".into(),
                    };
                    return Err(self.refused(items, credit_items, vec![violated], cost, now, None));
                }
                Err(_) if self.on_failure == OnFailure::Closed => {
                    self.give_back(items, cost);
                    return Err(Refusal::Unavailable);
                }
                // Allowed; `reconcile` counts it once the late take has answered.
                Err(Failure::Late) => {}
                Err(Failure::Unreachable) => {
                    // Allowed; counted once the shared state answers again.
                    let mut state = self.state();
                    for item in &strict {
                        if let Some(c) = state.counters.get_mut(&item.counter) {
                            c.pending += cost;
                        }
                    }
                    for credit in credit_items {
                        let period = credit.refill.map_or(0, |r| r.period(now));
                        let amount = credit.refill.map_or(0, |r| r.amount as i64);
                        shared.defer_spend(credit.scope.clone(), period, amount, cost);
                    }
                }
            }
        }
        Ok(Admission { policies: policies(&self.state(), items, credit_items, now, &remaining) })
    }

    /// The shared take, bounded by `SHARED_TIMEOUT`. One that answers later is not cut
    /// short (it may have counted already): it is left to finish, and `reconcile` then
    /// makes the counts agree with what this request was told.
    async fn take(
        &self,
        shared: &Arc<dyn SharedCounters>,
        strict: &[&QuotaLimit],
        credit_items: &[QuotaCredits],
        cost: i64,
        now: UnixTime,
    ) -> Result<Taken, Failure> {
        // While the shared state is known to be away, no request waits for it: the upkeep's
        // next round finds out when it is back.
        if self.outages.is_down() {
            return Err(Failure::Unreachable);
        }
        let counters: Vec<(Arc<str>, UnixTime, i64, i64, i64)> = strict
            .iter()
            .map(|item| {
                let w = item.limit.window_seconds as i64;
                let (start, elapsed) = window::position(now, w);
                (item.counter.clone(), start, w, elapsed, item.limit.limit as i64)
            })
            .collect();
        let credits: Vec<(CreditScope, i64, i64)> = credit_items
            .iter()
            .map(|c| (c.scope.clone(), c.refill.map_or(0, |r| r.period(now)), c.refill.map_or(0, |r| r.amount as i64)))
            .collect();
        let Ok(permit) = self.takes.clone().acquire_owned().await else { return Err(Failure::Unreachable) };
        let shared = shared.clone();
        let (ids, late_credits) = (counters.iter().map(|c| c.0.clone()).collect(), credits.clone());
        let mut handle = tokio::spawn(async move {
            let _permit = permit;
            let takes: Vec<CounterTake<'_>> = counters
                .iter()
                .map(|(id, start, w, elapsed, limit)| CounterTake {
                    counter: id,
                    window_start: *start,
                    window: *w,
                    elapsed: *elapsed,
                    limit: *limit,
                    expires_at: start + 2 * w,
                })
                .collect();
            let credits: Vec<CreditTake<'_>> = credits
                .iter()
                .map(|(scope, period, amount)| CreditTake { scope, period: *period, amount: *amount })
                .collect();
            shared.take(&takes, &credits, cost).await
        });
        match tokio::time::timeout(SHARED_TIMEOUT, &mut handle).await {
            Ok(Ok(Ok(taken))) => {
                self.outages.succeeded();
                Ok(taken)
            }
            Ok(Ok(Err(e))) => {
                self.outages.failed(&e);
                Err(Failure::Unreachable)
            }
            Ok(Err(_)) => Err(Failure::Unreachable),
            // Slow, not gone: this request follows the failure setting, the next ones try
            // again (the upkeep's round tells an outage from a slow answer).
            Err(_) => {
                self.outages.slow.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::monitoring::LIMIT_STATE_SLOW).increment(1);
                tracing::debug!("no answer from the limit state within 100 ms");
                let admitted = self.on_failure == OnFailure::Open;
                self.late().push(Late { handle, ids, credits: late_credits, cost, admitted });
                Err(Failure::Late)
            }
        }
    }

    fn late(&self) -> MutexGuard<'_, Vec<Late>> {
        self.late.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Settles the takes that answered after their request was decided: an admitted
    /// request whose take did not count it is counted now; a refused one whose take counted
    /// it is taken back.
    async fn reconcile(&self, shared: &dyn SharedCounters) {
        let finished: Vec<Late> = {
            let mut late = self.late();
            let (done, waiting): (Vec<Late>, Vec<Late>) = late.drain(..).partition(|l| l.handle.is_finished());
            *late = waiting;
            done
        };
        for late in finished {
            let counted = matches!(late.handle.await, Ok(Ok(Taken::All { .. })));
            let delta = match (late.admitted, counted) {
                (true, false) => late.cost,
                (false, true) => -late.cost,
                _ => continue,
            };
            let mut state = self.state();
            for id in &late.ids {
                if let Some(c) = state.counters.get_mut(id) {
                    c.pending += delta;
                }
            }
            for (scope, period, amount) in late.credits {
                shared.defer_spend(scope, period, amount, delta);
            }
        }
    }

    /// Takes back the fast counts `admit` made for a request that was refused after all.
    fn give_back(&self, items: &[QuotaLimit], cost: i64) {
        let mut state = self.state();
        for item in items.iter().filter(|i| i.limit.consistency == Consistency::Fast) {
            if let Some(c) = state.counters.get_mut(&item.counter) {
                c.pending -= cost;
            }
        }
    }

    fn refused(
        &self,
        items: &[QuotaLimit],
        credit_items: &[QuotaCredits],
        violated: Vec<Arc<str>>,
        cost: i64,
        now: UnixTime,
        remaining: Option<&[i64]>,
    ) -> Refusal {
        let state = self.state();
        let mut policies = policies(&state, items, credit_items, now, remaining.unwrap_or(&[]));
        let mut retry_after = 1;
        for policy in policies.iter_mut().filter(|p| violated.contains(&p.name)) {
            policy.remaining = 0;
            let wait = match items.iter().find(|i| i.name == policy.name) {
                Some(item) => state.counters.get(&item.counter).map_or(1, |c| {
                    let (_, elapsed) = window::position(now, c.window);
                    window::wait(item.limit.limit as i64, c.window, elapsed, c.current(), c.previous, cost)
                }),
                // Credits: until the next refill, or (a fixed budget) a day, when an admin
                // may have topped it up.
                None => credit_items
                    .iter()
                    .find(|c| c.name == policy.name)
                    .and_then(|c| c.refill)
                    .map_or(86_400, |r| (r.next_refill_at(r.period(now)) - now).max(1) as u64),
            }
            .max(1);
            policy.reset = Some(policy.reset.unwrap_or(0).max(wait));
            retry_after = retry_after.max(wait);
        }
        Refusal::Exceeded { policies, violated, retry_after }
    }

    /// Each of the key's and its owner's limits as used now (the counts this server knows).
    pub fn usage(&self, quota: &Quota, now: UnixTime) -> Vec<PolicyState> {
        policies(&self.state(), quota.limits(), &[], now, &[])
    }

    /// The balance this server holds in memory (one server) or the shared state holds
    /// (Redis), if any: newer than the store's.
    pub async fn balance(&self, scope: &CreditScope, refill: Option<Refill>, now: UnixTime) -> Option<i64> {
        if let Some(shared) = &self.shared {
            return shared.balance(scope, refill, now).await;
        }
        let state = self.state();
        let period = refill.map_or(0, |r| r.period(now));
        state.balances.get(scope).map(|b| b.available(refill, period))
    }

    /// Reads into memory the balances not held yet (one server only).
    async fn load_balances(&self, credit_items: &[QuotaCredits]) {
        if credit_items.iter().all(|c| self.state().balances.contains_key(&c.scope)) {
            return;
        }
        let _io = self.balances_io.lock().await;
        for credit in credit_items {
            if self.state().balances.contains_key(&credit.scope) {
                continue;
            }
            match self.credits.credit_balance(&credit.scope).await {
                Ok(Some(stored)) => {
                    let balance = Balance { remaining: stored.remaining, period: stored.period, dirty: false };
                    self.state().balances.insert(credit.scope.clone(), balance);
                }
                // No credits after all (changed meanwhile): nothing to spend.
                Ok(None) => {
                    self.state()
                        .balances
                        .insert(credit.scope.clone(), Balance { remaining: 0, period: 0, dirty: false });
                }
                Err(e) => tracing::warn!(error = %e, "cannot read a credit balance; the request is refused"),
            }
        }
    }

    /// An admin's change of a balance, applied to memory too (one server only), with the
    /// store's write made by `write` while no balance is read or written.
    pub async fn change_balance<T>(
        &self,
        scope: &CreditScope,
        change: impl FnOnce(Option<i64>) -> Option<(i64, i64)>,
        write: impl std::future::Future<Output = T>,
    ) -> T {
        let _io = self.balances_io.lock().await;
        if let Some(shared) = &self.shared {
            // This server's spends first, so that the change starts from them.
            let _ = shared.flush().await;
        }
        let written = write.await;
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.balance_changed(scope).await {
                tracing::warn!(error = %e, "cannot drop the limit state's copy of a changed credit balance");
            }
        }
        if self.shared.is_none() {
            let mut state = self.state();
            let current = state.balances.get(scope).map(|b| b.remaining);
            match change(current) {
                Some((remaining, period)) if current.is_some() => {
                    state.balances.insert(scope.clone(), Balance { remaining, period, dirty: true });
                }
                Some(_) => {}
                None => {
                    state.balances.remove(scope);
                }
            }
        }
        written
    }

    /// Forgets what memory holds of a balance (its key or owner lost its credits).
    pub fn forget_balance(&self, scope: &CreditScope) {
        self.state().balances.remove(scope);
    }

    /// One round of upkeep: shares the counts (replicas) or writes the balances (one server),
    /// and forgets the windows that are over. Errors are logged once per outage.
    pub async fn sync(&self, now: UnixTime) {
        match &self.shared {
            None => {
                let _io = self.balances_io.lock().await;
                let dirty: Vec<(CreditScope, i64, i64)> = {
                    let mut state = self.state();
                    state
                        .balances
                        .iter_mut()
                        .filter(|(_, b)| b.dirty)
                        .map(|(scope, b)| {
                            b.dirty = false;
                            (scope.clone(), b.remaining, b.period)
                        })
                        .collect()
                };
                if let Err(e) = self.credits.write_balances(&dirty).await {
                    tracing::warn!(error = %e, "cannot write credit balances; retrying with the next batch");
                    let mut state = self.state();
                    for (scope, _, _) in &dirty {
                        if let Some(b) = state.balances.get_mut(scope) {
                            b.dirty = true;
                        }
                    }
                }
            }
            Some(shared) => {
                self.reconcile(shared.as_ref()).await;
                self.share(shared.as_ref(), now).await;
                self.flush_spends(shared.as_ref()).await;
            }
        }
        let mut state = self.state();
        state.counters.retain(|_, c| c.start + 2 * c.window > now);
    }

    /// Sends this server's counts and reads back everyone's.
    async fn share(&self, shared: &dyn SharedCounters, now: UnixTime) {
        // (id, window start, hits to add, is the current window)
        let batch: Vec<(Arc<str>, UnixTime, i64, i64, bool)> = {
            let mut state = self.state();
            let mut batch = Vec::new();
            for (id, c) in state.counters.iter_mut() {
                let (start, _) = window::position(now, c.window);
                c.roll(start);
                if c.previous_pending != 0 {
                    batch.push((id.clone(), c.start - c.window, c.previous_pending, c.window, false));
                    c.previous_pending = 0;
                }
                batch.push((id.clone(), c.start, c.pending, c.window, true));
                c.known += c.pending;
                c.pending = 0;
            }
            batch
        };
        let hits: Vec<(&str, UnixTime, i64, UnixTime)> =
            batch.iter().map(|(id, start, n, w, _)| (&**id, *start, *n, *start + 2 * *w)).collect();
        let probe = hits.is_empty() && self.outages.is_down();
        let shared_call = async {
            if probe {
                shared.probe().await?;
            }
            shared.add_hits(&hits, now).await
        };
        match tokio::time::timeout(SHARED_TIMEOUT * 10, shared_call).await {
            Ok(Ok(totals)) => {
                self.outages.succeeded();
                let mut state = self.state();
                for ((id, start, _, _, current), total) in batch.iter().zip(totals) {
                    if let Some(c) = state.counters.get_mut(id) {
                        if *current && c.start == *start {
                            c.known = c.known.max(total);
                        } else if !*current && c.start - c.window == *start {
                            c.previous = c.previous.max(total);
                        }
                    }
                }
            }
            failed => {
                match failed {
                    Ok(Err(e)) => self.outages.failed(&e),
                    _ => self.outages.failed(&"no answer in time"),
                }
                // Kept for the next round.
                let mut state = self.state();
                for (id, start, n, _, current) in batch {
                    if let Some(c) = state.counters.get_mut(&id) {
                        if current && c.start == start {
                            c.known -= n;
                            c.pending += n;
                        } else if !current && c.start - c.window == start {
                            c.previous_pending += n;
                        }
                    }
                }
            }
        }
    }

    /// Records the credit spends the store does not have yet; what fails is kept for the
    /// next round, by the shared state itself.
    async fn flush_spends(&self, shared: &dyn SharedCounters) {
        match shared.flush().await {
            Ok(()) => {
                if self.outages.spends_failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("credit spends recorded again");
                }
            }
            Err(e) => {
                if !self.outages.spends_failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "cannot record credit spends in the store; retrying every round");
                }
            }
        }
    }

    /// Deletes the shared windows that are over (replicas only).
    pub async fn purge(&self, now: UnixTime) -> SharedResult<u64> {
        match &self.shared {
            Some(shared) => shared.purge(now).await,
            None => Ok(0),
        }
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }
}

/// Why a strict take gave no answer for the request.
enum Failure {
    /// The shared state failed, or is known to be away.
    Unreachable,
    /// It did not answer within `SHARED_TIMEOUT`; the take goes on (`Late`).
    Late,
}

/// A take that answered after its request was decided.
struct Late {
    handle: tokio::task::JoinHandle<SharedResult<Taken>>,
    ids: Vec<Arc<str>>,
    credits: Vec<(CreditScope, i64, i64)>,
    cost: i64,
    /// Whether the request was let through (the failure setting `open`).
    admitted: bool,
}

/// The counter of `item` at `now`, created if new, rolled on to `now`'s window.
fn counter<'s>(state: &'s mut State, item: &QuotaLimit, now: UnixTime) -> &'s mut Counter {
    let w = item.limit.window_seconds as i64;
    let (start, _) = window::position(now, w);
    let counter = state.counters.entry(item.counter.clone()).or_insert_with(|| Counter::new(w, start));
    counter.roll(start);
    counter
}

/// Each policy as it stands in `state` at `now`, for the headers; `remaining` the balances
/// the shared state returned, if it was asked.
fn policies(
    state: &State,
    items: &[QuotaLimit],
    credit_items: &[QuotaCredits],
    now: UnixTime,
    remaining: &[i64],
) -> Vec<PolicyState> {
    let mut out = Vec::with_capacity(items.len() + credit_items.len());
    for item in items {
        let w = item.limit.window_seconds as i64;
        let (_, elapsed) = window::position(now, w);
        let (current, previous) = state.counters.get(&item.counter).map_or((0, 0), |c| (c.current(), c.previous));
        out.push(PolicyState {
            name: item.name.clone(),
            quota: item.limit.limit,
            window: Some(item.limit.window_seconds),
            remaining: window::remaining(item.limit.limit as i64, w, elapsed, current, previous),
            reset: Some((w - elapsed) as u64),
        });
    }
    for (i, credit) in credit_items.iter().enumerate() {
        let left = match remaining.get(i) {
            Some(left) => *left,
            None => {
                let period = credit.refill.map_or(0, |r| r.period(now));
                state.balances.get(&credit.scope).map_or(0, |b| b.available(credit.refill, period))
            }
        }
        .max(0) as u64;
        out.push(PolicyState {
            name: credit.name.clone(),
            quota: credit.refill.map_or(left, |r| r.amount),
            window: credit.refill.and_then(|r| matches!(r.interval, crate::domain::Interval::Daily).then_some(86_400)),
            remaining: left,
            reset: credit.refill.map(|r| (r.next_refill_at(r.period(now)) - now).max(0) as u64),
        });
    }
    out
}
