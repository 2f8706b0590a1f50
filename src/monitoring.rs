//! Prometheus metrics: the names, the process's recorder and the text exposition.
//!
//! Recorded through the `metrics` facade into `metrics-exporter-prometheus`'s recorder,
//! installed once per process: metrics describe the process a scraper talks to, as its
//! logs do. What is recorded on every request (HTTP, logins, verifications) is counted on
//! handles registered at start-up, so recording is an atomic add, never a look-up; rare
//! events go through the facade's macros. Values that are states rather than events (pool
//! connections, the hashing queue, the cache lease) are sampled when scraped.
//!
//! Each metric is documented in docs/operations.md.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "keygate_http_requests_total";
pub const HTTP_DURATION: &str = "keygate_http_request_duration_seconds";
pub const LOGINS: &str = "keygate_logins_total";
pub const TOKENS_ISSUED: &str = "keygate_tokens_issued_total";
pub const VERIFICATIONS: &str = "keygate_verifications_total";
pub const LOCKOUTS: &str = "keygate_lockouts_total";
pub const ADMIN_HASH_QUEUE: &str = "keygate_admin_hash_queue";
pub const ADMIN_HASH_REJECTED: &str = "keygate_admin_hash_rejected_total";
pub const STORE_POOL_CONNECTIONS: &str = "keygate_store_pool_connections";
pub const STORE_QUERY_DURATION: &str = "keygate_store_query_duration_seconds";
pub const CACHE_LEASE_VALID: &str = "keygate_cache_lease_valid";
pub const BUILD_INFO: &str = "keygate_build_info";
pub const LIMIT_STATE_OUTAGES: &str = "keygate_limit_state_outages_total";
pub const LIMIT_STATE_SLOW: &str = "keygate_limit_state_slow_total";
pub const LIMIT_STATE_REACHABLE: &str = "keygate_limit_state_reachable";

/// Seconds: from a cached verification to a request held up by the database.
const DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Histograms keep their samples in lock-free buckets until this drains them.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// An enum whose variants are the values of a metric's label: `ALL` in declaration order,
/// `index` into it, `label` the value written. Made by [`label_values!`].
pub trait LabelValue: Copy + 'static {
    const ALL: &'static [Self];
    fn label(self) -> &'static str;
    fn index(self) -> usize;
}

/// Declares an enum of label values: `label_values! { pub enum Outcome { Valid => "valid", … } }`.
/// A new value is one more line; its counter is registered with the others.
#[macro_export]
macro_rules! label_values {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $crate::monitoring::LabelValue for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn label(self) -> &'static str {
                match self { $(Self::$variant => $label),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// One counter per value of `E`, all of one metric, registered up front.
#[derive(Clone)]
pub struct Counters<E> {
    by_value: Box<[Counter]>,
    _values: std::marker::PhantomData<E>,
}

impl<E: LabelValue> Counters<E> {
    /// `name{label=<each value>, fixed…}`.
    pub fn register(name: &'static str, label: &'static str, fixed: &[(&'static str, &'static str)]) -> Self {
        let by_value = E::ALL
            .iter()
            .map(|value| {
                let labels: Vec<metrics::Label> = std::iter::once((label, value.label()))
                    .chain(fixed.iter().copied())
                    .map(|(k, v)| metrics::Label::from_static_parts(k, v))
                    .collect();
                metrics::counter!(name, labels)
            })
            .collect();
        Self { by_value, _values: std::marker::PhantomData }
    }

    pub fn increment(&self, value: E) {
        if let Some(counter) = self.by_value.get(value.index()) {
            counter.increment(1);
        }
    }
}

/// The process's recorder, installed by the first call; `None` when another recorder was
/// installed first (keygate embedded in a program with its own), which keygate then leaves
/// alone.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(STORE_QUERY_DURATION.to_owned()), DURATION_BUCKETS)
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics disabled");
                    return None;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("metrics disabled: another metrics recorder is installed");
                return None;
            }
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template, method and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "Time to answer an HTTP request, by route template");
    describe_counter!(LOGINS, "Login attempts, by kind (api, admin, oauth) and outcome");
    describe_counter!(TOKENS_ISSUED, "Access tokens signed");
    describe_counter!(VERIFICATIONS, "Forward-auth verifications, by outcome");
    describe_counter!(LOCKOUTS, "Lockouts started (an identity or address locked after failed logins)");
    describe_counter!(LIMIT_STATE_OUTAGES, "Outages of the replicas' shared rate-limit state (each counted once)");
    describe_counter!(
        LIMIT_STATE_SLOW,
        "Strict rate-limit checks decided by KEYGATE_LIMITS_ON_FAILURE for want of an answer within 100 ms"
    );
    describe_gauge!(LIMIT_STATE_REACHABLE, "0 while the replicas' shared rate-limit state cannot be reached, else 1");
    describe_gauge!(ADMIN_HASH_QUEUE, "Admin password checks running or waiting for a hashing thread");
    describe_counter!(ADMIN_HASH_REJECTED, "Admin password checks refused because the hashing queue was full");
    describe_gauge!(STORE_POOL_CONNECTIONS, "Database pool connections, by state (idle, busy)");
    describe_histogram!(STORE_QUERY_DURATION, Unit::Seconds, "Time a database statement took");
    describe_gauge!(CACHE_LEASE_VALID, "1 while the hot-path caches answer (loaded and in step with the store)");
    describe_gauge!(BUILD_INFO, "Always 1; the version in its label");
}

/// The exposition `/metrics` serves: what is sampled at each scrape, then everything
/// recorded.
pub struct Exposition {
    handle: PrometheusHandle,
    samplers: Vec<Box<dyn Fn() + Send + Sync>>,
}

impl Exposition {
    pub fn new(handle: PrometheusHandle) -> Self {
        Self { handle, samplers: Vec::new() }
    }

    /// `sample` runs before each rendering, to set gauges from the state it reads.
    pub fn sampling(mut self, sample: impl Fn() + Send + Sync + 'static) -> Self {
        self.samplers.push(Box::new(sample));
        self
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        self.samplers.iter().for_each(|sample| sample());
        self.handle.render()
    }

    /// Drains histogram samples into their buckets now and then, scraped or not, so that
    /// they never pile up.
    pub async fn keep_up(handle: PrometheusHandle) {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    }

    pub fn handle(&self) -> PrometheusHandle {
        self.handle.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    label_values! {
        enum Colour { Red => "red", Green => "green" }
    }

    #[test]
    fn label_values_are_indexed_in_order() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::Green]);
        assert_eq!(Colour::ALL.iter().map(|c| c.label()).collect::<Vec<_>>(), ["red", "green"]);
        assert!(Colour::ALL.iter().enumerate().all(|(i, c)| c.index() == i));
    }
}
