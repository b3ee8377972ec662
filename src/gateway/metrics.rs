//! What the gateway counts as it answers, for `/metrics`: requests by route and status
//! class, one latency histogram, 429s from the limiter, and upstream failures by kind.
//! Workers bump atomics on the request path; `operator/metrics.rs` renders a snapshot.

use crate::error::Error;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Upper bounds (seconds) of the request-duration histogram: from a cached-key hit on a
/// local upstream (~1 ms) to the default upstream timeout (30 s), roughly 2.5x apart.
pub const DURATION_BUCKETS_SECS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why the gateway could not get an answer from an upstream (label `kind`).
#[derive(Clone, Copy)]
pub enum UpstreamFailure {
    /// Connect refused, reset, DNS, TLS: no answer at all.
    Unreachable,
    Timeout,
    CircuitOpen,
    /// Too many requests already in flight to that upstream.
    Busy,
    /// No target of a pool could take the request (circuits open or unhealthy).
    Unavailable,
}

const FAILURE_KINDS: [(UpstreamFailure, &str); 5] = [
    (UpstreamFailure::Unreachable, "unreachable"),
    (UpstreamFailure::Timeout, "timeout"),
    (UpstreamFailure::CircuitOpen, "circuit_open"),
    (UpstreamFailure::Busy, "busy"),
    (UpstreamFailure::Unavailable, "unavailable"),
];

impl UpstreamFailure {
    /// The kind of an error `forward::forward` returned, if it is the upstream's doing.
    pub fn of(e: &Error) -> Option<UpstreamFailure> {
        match e {
            Error::UpstreamUnreachable(_) => Some(UpstreamFailure::Unreachable),
            Error::UpstreamTimeout => Some(UpstreamFailure::Timeout),
            Error::CircuitOpen { .. } => Some(UpstreamFailure::CircuitOpen),
            Error::UpstreamBusy => Some(UpstreamFailure::Busy),
            Error::UpstreamUnavailable { .. } => Some(UpstreamFailure::Unavailable),
            _ => None,
        }
    }
}

/// Answers by status class (1xx..5xx) for one route.
#[derive(Default)]
struct ByClass([AtomicU64; 5]);

/// Counters the workers update. Labels stay bounded: routes are defined by the operator,
/// status is reduced to its class, and latency is one gateway-wide histogram.
#[derive(Default)]
pub struct Metrics {
    /// By route id (`None`: no route was chosen, e.g. 401 or 404). Read lock + atomic add
    /// on the hot path; the write lock only the first time a route is seen.
    requests: RwLock<HashMap<Option<i64>, Arc<ByClass>>>,
    /// Non-cumulative counts per bucket of `DURATION_BUCKETS_SECS`, then one for +Inf.
    latency_buckets: [AtomicU64; 15],
    latency_sum_micros: AtomicU64,
    rate_limited: AtomicU64,
    upstream_failures: [AtomicU64; 5],
}

impl Metrics {
    /// Records one answered gateway request.
    pub fn observe(&self, route_id: Option<i64>, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        let known = self
            .requests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&route_id)
            .cloned();
        let counters = known.unwrap_or_else(|| {
            let mut map = self.requests.write().unwrap_or_else(|p| p.into_inner());
            map.entry(route_id).or_default().clone()
        });
        counters.0[class].fetch_add(1, Ordering::Relaxed);
        let bucket = DURATION_BUCKETS_SECS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(DURATION_BUCKETS_SECS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// A request refused by the gateway's own rate limiter (not an upstream's 429).
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_failure(&self, kind: UpstreamFailure) {
        self.upstream_failures[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters at one moment, for rendering.
pub struct Snapshot {
    /// Answers by route id (`None`: no route chosen) and status class 1xx..5xx, by id.
    pub by_route: Vec<(Option<i64>, [u64; 5])>,
    /// Non-cumulative counts per bucket of `DURATION_BUCKETS_SECS`, then +Inf.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_secs: f64,
    pub rate_limited: u64,
    /// By kind, named as the `kind` label.
    pub upstream_failures: Vec<(&'static str, u64)>,
}

impl Metrics {
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut by_route: Vec<(Option<i64>, [u64; 5])> = self
            .requests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, std::array::from_fn(|i| load(&v.0[i]))))
            .collect();
        by_route.sort_by_key(|(k, _)| *k);
        Snapshot {
            by_route,
            latency_buckets: self.latency_buckets.iter().map(load).collect(),
            latency_sum_secs: load(&self.latency_sum_micros) as f64 / 1e6,
            rate_limited: load(&self.rate_limited),
            upstream_failures: FAILURE_KINDS
                .iter()
                .map(|(kind, name)| (*name, load(&self.upstream_failures[*kind as usize])))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let m = Metrics::default();
        m.observe(Some(1), 200, 0.0005);
        m.observe(Some(1), 404, 0.001);
        m.observe(None, 401, 0.3);
        m.observe(Some(2), 503, 99.0);
        let s = m.snapshot();
        assert_eq!(
            s.latency_buckets[0], 2,
            "0.5 ms and exactly 1 ms are both <= 0.001"
        );
        assert_eq!(s.latency_buckets[8], 1, "0.3 s is in the 0.5 s bucket");
        assert_eq!(s.latency_buckets[14], 1, "99 s only in +Inf");
        let by: HashMap<Option<i64>, [u64; 5]> = s.by_route.into_iter().collect();
        assert_eq!(by[&Some(1)][1], 1);
        assert_eq!(by[&Some(1)][3], 1);
        assert_eq!(by[&None][3], 1);
        assert_eq!(by[&Some(2)][4], 1);
    }

    #[test]
    fn bucket_count_matches_the_bounds_plus_inf() {
        assert_eq!(
            Metrics::default().snapshot().latency_buckets.len(),
            DURATION_BUCKETS_SECS.len() + 1
        );
    }
}
