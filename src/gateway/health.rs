//! Active health checks: ONE background thread probes the targets of every route that has
//! a `healthCheck`, each on its own interval, one probe at a time (never a thread per
//! target). A probe is `GET <target URL><path>` with `User-Agent: tollgate-health`, sent
//! straight to the target, so it is never a client request and never logged. A target
//! starts healthy; `unhealthyAfter` failed probes in a row (a connection error, a timeout,
//! or a status other than `expectStatus`) make it unhealthy, and the balancer skips it
//! until `healthyAfter` good probes in a row. State is per route and target, per replica:
//! each replica probes for itself.

use super::Gateway;
use crate::config::{HEALTH_TICK_MAX, HEALTH_USER_AGENT};
use crate::store::routes::{HealthCheck, Route};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// A probe's outcome.
#[derive(Debug, Clone)]
pub struct Probe {
    pub ok: bool,
    /// The status answered, if any.
    pub status: Option<u16>,
    /// Why no acceptable answer came (`None` when `ok`).
    pub error: Option<String>,
    pub at: SystemTime,
}

/// One target of one route as its probes judged it.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    pub healthy: bool,
    pub last: Option<Probe>,
    /// Consecutive probes that disagreed with `healthy`.
    streak: u32,
    next_due: Instant,
}

/// Probe state by route id, then target URL: nested so that the request path looks a
/// target up by `&str`, without building a key.
#[derive(Default)]
pub struct Health {
    map: RwLock<HashMap<i64, HashMap<String, TargetHealth>>>,
}

impl Health {
    /// Whether the route's health check has marked this target unhealthy.
    pub fn is_down(&self, route_id: i64, url: &str) -> bool {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&route_id)
            .and_then(|targets| targets.get(url))
            .is_some_and(|h| !h.healthy)
    }

    /// The target's probe state; `None` until its first probe (or without a check).
    pub fn of(&self, route_id: i64, url: &str) -> Option<TargetHealth> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&route_id)
            .and_then(|targets| targets.get(url))
            .cloned()
    }

    /// Records a probe: the streak of results that disagree with the current state grows
    /// until it reaches the threshold that flips it.
    fn record(&self, route_id: i64, url: &str, check: &HealthCheck, probe: Probe) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let h = map
            .entry(route_id)
            .or_default()
            .entry(url.to_string())
            .or_insert(TargetHealth {
                healthy: true,
                last: None,
                streak: 0,
                next_due: Instant::now(),
            });
        if probe.ok == h.healthy {
            h.streak = 0;
        } else {
            h.streak += 1;
            let needed = if h.healthy {
                check.unhealthy_after
            } else {
                check.healthy_after
            };
            if h.streak >= needed.max(1) {
                h.healthy = probe.ok;
                h.streak = 0;
                log::warn!(
                    "route {route_id}: target {url} is now {}",
                    if probe.ok { "healthy" } else { "unhealthy" }
                );
            }
        }
        h.last = Some(probe);
        h.next_due = Instant::now() + Duration::from_millis(u64::from(check.interval_ms));
    }

    /// Forgets targets that are gone or no longer checked.
    fn retain(&self, checked: &HashSet<(i64, String)>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|&id, targets| {
            targets.retain(|url, _| checked.contains(&(id, url.clone())));
            !targets.is_empty()
        });
    }

    /// When the target is due for a probe (now, if never probed).
    fn due(&self, route_id: i64, url: &str) -> Option<Instant> {
        self.of(route_id, url).map(|h| h.next_due)
    }
}

/// Starts the one probing thread.
pub fn spawn(gateway: Arc<Gateway>) {
    let agent = probe_agent();
    let started = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || loop {
            // A panic in one round must not end probing for good: marks would freeze.
            let next =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| round(&gateway, &agent)))
                    .unwrap_or_else(|_| {
                        log::error!("health check round panicked; probing goes on");
                        Instant::now() + HEALTH_TICK_MAX
                    });
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        });
    if let Err(e) = started {
        log::error!("cannot start the health thread: {e}");
    }
}

/// Probes every target that is due, forgets what is gone, and says when to wake next.
fn round(gw: &Gateway, agent: &ureq::Agent) -> Instant {
    let routes = gw.routes.all();
    let live: HashSet<i64> = routes.iter().map(|r| r.id).collect();
    gw.upstreams.balancers.retain(&|id| live.contains(&id));
    let checked: Vec<(&Route, &HealthCheck, String)> = routes
        .iter()
        .filter_map(|r| Some((r.as_ref(), r.health_check.as_ref()?)))
        .flat_map(|(r, hc)| r.pool().into_iter().map(move |t| (r, hc, t.url)))
        .collect();
    let health = &gw.upstreams.health;
    health.retain(&checked.iter().map(|(r, _, u)| (r.id, u.clone())).collect());
    let mut wake = Instant::now() + HEALTH_TICK_MAX;
    for (route, hc, url) in &checked {
        let due = health.due(route.id, url).unwrap_or_else(Instant::now);
        if due <= Instant::now() {
            health.record(route.id, url, hc, probe(agent, url, hc));
            wake = wake.min(health.due(route.id, url).unwrap_or(wake));
        } else {
            wake = wake.min(due);
        }
    }
    wake
}

/// One probe; the answer's body is not read (the connection is not reused).
fn probe(agent: &ureq::Agent, url: &str, hc: &HealthCheck) -> Probe {
    let full = format!("{}{}", url.trim_end_matches('/'), hc.path);
    let request = agent
        .get(&full)
        .header("User-Agent", HEALTH_USER_AGENT)
        .config()
        .timeout_global(Some(Duration::from_millis(u64::from(hc.timeout_ms))))
        .build();
    let at = SystemTime::now();
    match request.call() {
        Ok(r) => {
            let status = r.status().as_u16();
            let ok = hc.expects(status);
            Probe {
                ok,
                status: Some(status),
                error: (!ok).then(|| format!("status {status}, expected {}", hc.expect_status)),
                at,
            }
        }
        Err(e) => Probe {
            ok: false,
            status: None,
            error: Some(e.to_string()),
            at,
        },
    }
}

/// An agent for probes: a new connection per probe (a pooled one could hide a target that
/// no longer accepts connections), statuses as answers, no redirects, no proxy.
fn probe_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck::from_json(&serde_json::json!({
            "path": "/h", "healthyAfter": 2, "unhealthyAfter": 3
        }))
    }

    fn p(ok: bool) -> Probe {
        Probe {
            ok,
            status: None,
            error: None,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn thresholds_flip_the_state_only_after_a_streak() {
        let h = Health::default();
        let c = check();
        h.record(1, "u", &c, p(false));
        h.record(1, "u", &c, p(false));
        h.record(1, "u", &c, p(true));
        h.record(1, "u", &c, p(false));
        h.record(1, "u", &c, p(false));
        assert!(!h.is_down(1, "u"), "a good probe restarts the count");
        h.record(1, "u", &c, p(false));
        assert!(h.is_down(1, "u"));
        assert!(!h.is_down(2, "u"), "state is per route");
        h.record(1, "u", &c, p(true));
        assert!(h.is_down(1, "u"));
        h.record(1, "u", &c, p(true));
        assert!(!h.is_down(1, "u"));
        h.retain(&HashSet::new());
        assert!(h.of(1, "u").is_none());
    }

    #[test]
    fn expected_status_is_a_class_or_one_code() {
        let mut c = check();
        assert!(c.expects(204) && !c.expects(301) && !c.expects(503));
        c.expect_status = "301".into();
        assert!(c.expects(301) && !c.expects(302));
    }
}
