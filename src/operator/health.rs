//! `GET /healthz` (the process serves) and `GET /readyz` (it can reach the database and is
//! not shutting down).

use crate::error::Error;
use crate::gateway::breaker::Breakers;
use crate::http::{Reply, ServerStats};
use crate::store::{self, DbHealth, Pool};
use serde_json::json;

pub fn healthz() -> Reply {
    Reply::json(200, &json!({"status": "ok"}))
}

/// 200 while the database answers, 503 while it does not; the upstream circuits are listed
/// but are detail, not readiness: one failing service must not take the gateway out of its
/// load balancer. From the first SIGTERM on it is 503 `shutting_down` while the process
/// still serves (the drain), so the balancer takes it out before it stops.
pub fn readyz(pool: &Pool, health: &DbHealth, breakers: &Breakers, server: &ServerStats) -> Reply {
    if server.draining() {
        return Reply::error(&Error::ShuttingDown);
    }
    let ok = store::ping(pool);
    // A successful check ends a known outage for everyone at once.
    if ok {
        health.mark_up();
    } else {
        health.mark_down();
    }
    let upstreams = breakers.snapshot();
    if ok {
        let body = json!({"status": "ready", "database": "ok", "upstreams": upstreams});
        Reply::json(200, &body)
    } else {
        let body =
            json!({"status": "unavailable", "database": "unreachable", "upstreams": upstreams});
        Reply::json(503, &body)
    }
}
