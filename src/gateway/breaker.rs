//! Upstream protection: a circuit breaker per upstream (scheme and authority of a route's
//! target) and a cap on requests in flight to each one, so a dead or hung upstream costs
//! its own routes a fast 503 instead of every worker the gateway has.

use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    /// Refusing until the cool-down ends.
    Open {
        until: Instant,
    },
    /// One probe is through; everything else waits for its outcome.
    HalfOpen,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive_failures: u32,
    in_flight: usize,
}

pub struct Breakers {
    map: Mutex<HashMap<String, State>>,
    failures_to_open: u32,
    cooldown: Duration,
    max_in_flight: usize,
}

/// One upstream's breaker as [`Breakers::view`] saw it.
#[derive(Debug, Clone, Copy)]
pub struct Circuit {
    /// `closed`, `open` or `half-open`.
    pub state: &'static str,
    /// Seconds until it lets a request through again; `None`: it would now.
    pub retry_after: Option<u64>,
    pub in_flight: usize,
}

impl Default for Circuit {
    fn default() -> Circuit {
        Circuit {
            state: "closed",
            retry_after: None,
            in_flight: 0,
        }
    }
}

/// A request's place at an upstream; give the outcome to `Breakers::finish`, and drop it
/// (with the response body) to free the slot.
pub struct Permit {
    breakers: Arc<Breakers>,
    upstream: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self.breakers.lock();
        if let Some(s) = map.get_mut(&self.upstream) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

/// `http://host:port` of a target URL: routes to the same service share one breaker.
pub fn upstream_of(target_url: &str) -> String {
    let rest = target_url.split_once("://").map_or(target_url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let scheme = target_url.split_once("://").map_or("http", |(s, _)| s);
    format!("{scheme}://{authority}")
}

impl Breakers {
    pub fn new(failures_to_open: u32, cooldown: Duration, max_in_flight: usize) -> Breakers {
        Breakers {
            map: Mutex::new(HashMap::new()),
            failures_to_open: failures_to_open.max(1),
            cooldown,
            max_in_flight: max_in_flight.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a request through to `upstream`, or refuses it at once with 503.
    pub fn admit(self: &Arc<Self>, upstream: &str) -> Result<Permit> {
        self.admit_at(upstream, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, upstream: &str, now: Instant) -> Result<Permit> {
        let mut map = self.lock();
        let s = map.entry(upstream.to_string()).or_insert(State {
            phase: Phase::Closed,
            consecutive_failures: 0,
            in_flight: 0,
        });
        match s.phase {
            Phase::Open { until } if now < until => {
                let secs = (until - now).as_secs_f64().ceil().max(1.0) as u64;
                return Err(Error::CircuitOpen { retry_after: secs });
            }
            Phase::Open { .. } => {
                log::info!("circuit for {upstream} half-open: letting one probe through");
                s.phase = Phase::HalfOpen;
            }
            Phase::HalfOpen => return Err(Error::CircuitOpen { retry_after: 1 }),
            Phase::Closed => {}
        }
        if s.in_flight >= self.max_in_flight {
            return Err(Error::UpstreamBusy);
        }
        s.in_flight += 1;
        Ok(Permit {
            breakers: self.clone(),
            upstream: upstream.to_string(),
        })
    }

    /// Records the outcome of an admitted request: a failure is a connect error, a timeout,
    /// or a 5xx where the route says so.
    pub fn finish(&self, permit: &Permit, failed: bool) {
        self.finish_at(permit, failed, Instant::now());
    }

    fn finish_at(&self, permit: &Permit, failed: bool, now: Instant) {
        let mut map = self.lock();
        let Some(s) = map.get_mut(&permit.upstream) else {
            return;
        };
        if !failed {
            if s.phase != Phase::Closed {
                log::info!("circuit for {} closed again", permit.upstream);
            }
            s.phase = Phase::Closed;
            s.consecutive_failures = 0;
            return;
        }
        s.consecutive_failures += 1;
        let trip = s.phase == Phase::HalfOpen || s.consecutive_failures >= self.failures_to_open;
        if trip {
            log::warn!(
                "circuit for {} open for {:?} after {} consecutive failures",
                permit.upstream,
                self.cooldown,
                s.consecutive_failures
            );
            s.phase = Phase::Open {
                until: now + self.cooldown,
            };
        }
    }

    /// How each of `upstreams` stands now, under one lock, without admitting anything: a
    /// target whose circuit refuses is skipped by the balancer (`balance.rs`).
    pub fn view(&self, upstreams: &[String]) -> Vec<Circuit> {
        let now = Instant::now();
        let map = self.lock();
        upstreams
            .iter()
            .map(|u| match map.get(u) {
                None => Circuit::default(),
                Some(s) => Circuit {
                    retry_after: match s.phase {
                        Phase::Open { until } if now < until => {
                            Some((until - now).as_secs_f64().ceil().max(1.0) as u64)
                        }
                        Phase::HalfOpen => Some(1),
                        _ => None,
                    },
                    state: match s.phase {
                        Phase::Closed => "closed",
                        Phase::Open { .. } => "open",
                        Phase::HalfOpen => "half-open",
                    },
                    in_flight: s.in_flight,
                },
            })
            .collect()
    }

    /// Every upstream seen, for `/readyz`.
    pub fn snapshot(&self) -> Value {
        let map = self.lock();
        let mut list: Vec<Value> = map
            .iter()
            .map(|(u, s)| {
                let state = match s.phase {
                    Phase::Closed => "closed",
                    Phase::Open { .. } => "open",
                    Phase::HalfOpen => "half-open",
                };
                json!({
                    "upstream": u,
                    "state": state,
                    "consecutiveFailures": s.consecutive_failures,
                    "inFlight": s.in_flight,
                })
            })
            .collect();
        list.sort_by(|a, b| a["upstream"].as_str().cmp(&b["upstream"].as_str()));
        Value::Array(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_probes_once_and_closes() {
        let b = Arc::new(Breakers::new(3, Duration::from_secs(10), 100));
        let t0 = Instant::now();
        for _ in 0..3 {
            let p = b.admit_at("u", t0).unwrap();
            b.finish_at(&p, true, t0);
        }
        match b.admit_at("u", t0 + Duration::from_secs(4)) {
            Err(Error::CircuitOpen { retry_after }) => assert_eq!(retry_after, 6),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let probe = b.admit_at("u", t0 + Duration::from_secs(11)).unwrap();
        assert!(matches!(
            b.admit_at("u", t0 + Duration::from_secs(11)),
            Err(Error::CircuitOpen { .. })
        ));
        b.finish_at(&probe, false, t0 + Duration::from_secs(11));
        drop(probe);
        assert!(b.admit_at("u", t0 + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn a_failed_probe_opens_again_and_success_resets_the_count() {
        let b = Arc::new(Breakers::new(2, Duration::from_secs(5), 100));
        let t0 = Instant::now();
        let p = b.admit_at("u", t0).unwrap();
        b.finish_at(&p, true, t0);
        let p = b.admit_at("u", t0).unwrap();
        b.finish_at(&p, false, t0);
        let p = b.admit_at("u", t0).unwrap();
        b.finish_at(&p, true, t0);
        assert!(
            b.admit_at("u", t0).is_ok(),
            "one failure after a success stays closed"
        );
        let p = b.admit_at("u", t0).unwrap();
        b.finish_at(&p, true, t0);
        let probe = b.admit_at("u", t0 + Duration::from_secs(6)).unwrap();
        b.finish_at(&probe, true, t0 + Duration::from_secs(6));
        assert!(b.admit_at("u", t0 + Duration::from_secs(7)).is_err());
    }

    #[test]
    fn in_flight_is_capped_per_upstream_and_freed_on_drop() {
        let b = Arc::new(Breakers::new(5, Duration::from_secs(5), 2));
        let p1 = b.admit("a").unwrap();
        let _p2 = b.admit("a").unwrap();
        assert!(matches!(b.admit("a"), Err(Error::UpstreamBusy)));
        assert!(b.admit("b").is_ok(), "other upstreams are not affected");
        drop(p1);
        assert!(b.admit("a").is_ok());
    }

    #[test]
    fn upstream_is_scheme_and_authority() {
        assert_eq!(
            upstream_of("http://127.0.0.1:9000/base"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            upstream_of("https://api.example.com"),
            "https://api.example.com"
        );
    }
}
