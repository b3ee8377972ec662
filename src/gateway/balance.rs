//! Which target of a route's pool takes a request. Each route has a [`Balancer`] on each
//! replica, made the first time the route is used and remade when its targets or its
//! `balance` change; replicas do not share balancer state (see docs/api.md, "Upstream
//! pools"):
//!
//! - **round-robin**: smooth weighted round-robin, as nginx's: every pick adds each
//!   eligible target's weight to its `current`, takes the largest, and subtracts the total
//!   from the winner's, so weights 5:1:1 give `a a b a c a a`, interleaved, not in blocks.
//! - **least-inflight**: the fewest requests in flight on this replica for the weight
//!   (the breaker's count per upstream, `breaker.rs`); ties rotate.
//! - **hash**: weighted rendezvous hashing of the API key id, so a key stays on one target
//!   while it is eligible, and a target leaving moves only the keys it had (~1/N).
//!
//! A target is eligible unless the request already tried it, its circuit is open, or its
//! active health check marked it unhealthy (`health.rs`).

use crate::store::routes::{Balance, Route, Target};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What one target has seen on this replica since it joined its route's pool.
#[derive(Default)]
pub struct TargetCounters {
    /// Attempts sent to it (a retried request counts once on each target it tried).
    pub requests: AtomicU64,
    /// Attempts that failed: no connection, a timeout, or a 5xx where the route says so.
    pub failures: AtomicU64,
}

/// One route's pool on this replica.
pub struct Balancer {
    pub targets: Vec<Target>,
    /// `scheme://host:port` of each target: its breaker's name.
    pub upstreams: Vec<String>,
    pub counters: Vec<Arc<TargetCounters>>,
    balance: Balance,
    /// Smooth round-robin's running weights.
    current: Mutex<Vec<i64>>,
    /// Where least-inflight starts looking, so ties rotate.
    next: AtomicUsize,
}

impl Balancer {
    fn new(route: &Route, keep: Option<&Balancer>) -> Balancer {
        let targets = route.pool();
        let counters = targets
            .iter()
            .map(|t| keep.and_then(|b| b.counters_of(&t.url)).unwrap_or_default())
            .collect();
        Balancer {
            upstreams: targets
                .iter()
                .map(|t| super::breaker::upstream_of(&t.url))
                .collect(),
            current: Mutex::new(vec![0; targets.len()]),
            next: AtomicUsize::new(0),
            balance: route.balance,
            counters,
            targets,
        }
    }

    fn counters_of(&self, url: &str) -> Option<Arc<TargetCounters>> {
        let i = self.targets.iter().position(|t| t.url == url)?;
        Some(self.counters[i].clone())
    }

    fn matches(&self, route: &Route) -> bool {
        self.balance == route.balance
            && if route.targets.is_empty() {
                self.targets.len() == 1 && self.targets[0].url == route.target_url
            } else {
                self.targets == route.targets
            }
    }

    /// The target for a request of `key_id`, among the `eligible` ones; `in_flight` gives
    /// each target's requests in flight (least-inflight only reads it).
    pub fn pick(&self, eligible: &[bool], key_id: i64, in_flight: &[usize]) -> Option<usize> {
        let weights: Vec<u32> = self.targets.iter().map(|t| t.weight).collect();
        match self.balance {
            Balance::RoundRobin => {
                let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                smooth_pick(&mut current, &weights, eligible)
            }
            Balance::LeastInflight => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                least_pick(in_flight, &weights, eligible, start)
            }
            Balance::Hash => {
                let urls: Vec<&str> = self.targets.iter().map(|t| t.url.as_str()).collect();
                hash_pick(key_id, &urls, &weights, eligible)
            }
        }
    }
}

/// Every route's balancer on this replica, by route id.
#[derive(Default)]
pub struct Balancers {
    map: RwLock<HashMap<i64, Arc<Balancer>>>,
}

impl Balancers {
    /// The route's balancer, remade (keeping the counters of targets that stay) when its
    /// pool or its `balance` changed. A request holding the old one finishes with it.
    pub fn of(&self, route: &Route) -> Arc<Balancer> {
        let known = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&route.id)
            .cloned();
        match known {
            Some(b) if b.matches(route) => b,
            old => {
                let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
                // Another worker may have remade it meanwhile.
                if let Some(b) = map.get(&route.id).filter(|b| b.matches(route)) {
                    return b.clone();
                }
                let b = Arc::new(Balancer::new(route, old.as_deref()));
                map.insert(route.id, b.clone());
                b
            }
        }
    }

    /// Forgets the balancers of routes that no longer exist.
    pub fn retain(&self, live: &dyn Fn(i64) -> bool) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live(*id));
    }

    /// Every balancer, by route id, for `/metrics`.
    pub fn snapshot(&self) -> Vec<(i64, Arc<Balancer>)> {
        let mut all: Vec<(i64, Arc<Balancer>)> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, b)| (*id, b.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }
}

/// nginx's smooth weighted round-robin over the eligible targets (the others keep their
/// `current`, so a target coming back resumes its place in the rotation).
pub fn smooth_pick(current: &mut [i64], weights: &[u32], eligible: &[bool]) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for i in (0..weights.len()).filter(|&i| eligible[i]) {
        current[i] += i64::from(weights[i]);
        total += i64::from(weights[i]);
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

/// The eligible target with the fewest requests in flight for its weight (`(n + 1) / w`,
/// compared without division), looking from `start` so ties rotate.
pub fn least_pick(
    in_flight: &[usize],
    weights: &[u32],
    eligible: &[bool],
    start: usize,
) -> Option<usize> {
    let n = weights.len();
    let load = |i: usize| (in_flight[i] as u128 + 1, u128::from(weights[i]));
    (0..n)
        .map(|k| (start + k) % n)
        .filter(|&i| eligible[i])
        .reduce(|best, i| {
            let ((a, wa), (b, wb)) = (load(i), load(best));
            if a * wb < b * wa {
                i
            } else {
                best
            }
        })
}

/// Weighted rendezvous hashing: each eligible target scores `-weight / ln(u)` with `u` a
/// uniform draw from (key, target URL); the highest wins. Removing a target changes only
/// the picks it was winning.
pub fn hash_pick(key: i64, urls: &[&str], weights: &[u32], eligible: &[bool]) -> Option<usize> {
    let score = |i: usize| {
        let h = mix(fnv1a(urls[i].as_bytes()) ^ mix(key as u64));
        // 53 random bits, strictly inside (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(weights[i]) / u.ln()
    };
    (0..urls.len())
        .filter(|&i| eligible[i])
        .map(|i| (i, score(i)))
        .reduce(|a, b| if b.1 > a.1 { b } else { a })
        .map(|(i, _)| i)
}

/// FNV-1a: a stable hash of a target URL (the same on every replica and every build, which
/// `std`'s hasher does not promise).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads nearby inputs (key ids 1, 2, 3) over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_round_robin_interleaves_as_nginx_does() {
        let mut current = vec![0; 3];
        let picks: String = (0..7)
            .map(|_| {
                let i = smooth_pick(&mut current, &[5, 1, 1], &[true; 3]).unwrap();
                ["a", "b", "c"][i]
            })
            .collect();
        assert_eq!(picks, "aabacaa");
        assert_eq!(current, vec![0, 0, 0], "a full cycle returns to the start");
    }

    #[test]
    fn round_robin_keeps_the_ratio_and_skips_ineligible_targets() {
        let mut current = vec![0; 3];
        let mut seen = [0; 3];
        for _ in 0..600 {
            seen[smooth_pick(&mut current, &[1, 2, 3], &[true; 3]).unwrap()] += 1;
        }
        assert_eq!(seen, [100, 200, 300]);
        let mut seen = [0; 3];
        for _ in 0..100 {
            seen[smooth_pick(&mut current, &[1, 2, 3], &[true, false, true]).unwrap()] += 1;
        }
        assert_eq!(seen[1], 0);
        assert_eq!(seen[0] + seen[2], 100);
        assert_eq!(smooth_pick(&mut current, &[1, 2, 3], &[false; 3]), None);
    }

    #[test]
    fn least_inflight_takes_the_idlest_for_its_weight_and_rotates_ties() {
        assert_eq!(least_pick(&[3, 0, 1], &[1, 1, 1], &[true; 3], 0), Some(1));
        // 3 in flight on weight 4 is lighter than 1 on weight 1.
        assert_eq!(least_pick(&[3, 1], &[4, 1], &[true; 2], 0), Some(0));
        assert_eq!(least_pick(&[0, 0], &[1, 1], &[true; 2], 0), Some(0));
        assert_eq!(least_pick(&[0, 0], &[1, 1], &[true; 2], 1), Some(1));
        assert_eq!(least_pick(&[5, 0], &[1, 1], &[true, false], 0), Some(0));
    }

    #[test]
    fn hash_sticks_and_moves_only_the_keys_of_a_removed_target() {
        let urls = ["http://a:1", "http://b:1", "http://c:1", "http://d:1"];
        let w = [1; 4];
        let before: Vec<usize> = (0..4000)
            .map(|k| hash_pick(k, &urls, &w, &[true; 4]).unwrap())
            .collect();
        let mut per = [0; 4];
        for &t in &before {
            per[t] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
        let without_c = [true, true, false, true];
        for (k, &t) in before.iter().enumerate() {
            let after = hash_pick(k as i64, &urls, &w, &without_c).unwrap();
            if t == 2 {
                assert_ne!(after, 2);
            } else {
                assert_eq!(after, t, "key {k} moved although its target stayed");
            }
        }
        // Weights skew the share: 3:1 gives about 75 %.
        let heavy = (0..4000)
            .filter(|&k| hash_pick(k, &urls[..2], &[3, 1], &[true; 2]) == Some(0))
            .count();
        assert!((2800..3200).contains(&heavy), "{heavy}");
    }

    #[test]
    fn a_balancer_is_remade_when_its_pool_changes_and_keeps_counters() {
        let t = |url: &str, weight| Target {
            url: url.into(),
            weight,
        };
        let mut route = Route {
            id: 1,
            targets: vec![t("http://a:1", 1), t("http://b:1", 1)],
            ..Route::default()
        };
        let all = Balancers::default();
        let b1 = all.of(&route);
        b1.counters[1].requests.fetch_add(3, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&b1, &all.of(&route)));
        route.targets = vec![t("http://b:1", 2), t("http://c:1", 1)];
        let b2 = all.of(&route);
        assert!(!Arc::ptr_eq(&b1, &b2));
        assert_eq!(b2.counters[0].requests.load(Ordering::Relaxed), 3);
        assert_eq!(b2.upstreams, ["http://b:1", "http://c:1"]);
        all.retain(&|id| id != 1);
        assert!(all.snapshot().is_empty());
    }
}
