//! `GET /metrics`: Prometheus text format 0.0.4. The gateway's own counters come from
//! `gateway/metrics.rs`; the rest (log queue, pool, key cache, circuits) is read from the
//! parts that own it when a scrape renders the page.

use super::{check_admin, check_secret, Operator, READ_ONLY};
use crate::error::{Error, Result};
use crate::gateway::balance::Balancer;
use crate::gateway::keys::bearer;
use crate::gateway::metrics::DURATION_BUCKETS_SECS;
use crate::http::{Body, Ctx, Reply};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// `GET /metrics` on the main listener: admin secret required, in `x-admin-secret` or as
/// `Authorization: Bearer` (what Prometheus' `authorization` scrape setting sends).
pub fn handle(op: &Operator, ctx: &Ctx) -> Result<Reply> {
    if ctx.method != "GET" && ctx.method != "HEAD" {
        return Err(Error::method_not_allowed(READ_ONLY));
    }
    // Both forms count against the client IP's admin failure limit like /admin does, so
    // this endpoint is no way around it for someone guessing the secret.
    if !check_admin(op.admin, ctx)? {
        let secret = ctx
            .header("Authorization")
            .and_then(bearer)
            .ok_or(Error::Unauthorized)?;
        check_secret(op.admin, ctx, secret, "bearer admin secret")?;
    }
    Ok(reply(op))
}

/// The optional `TOLLGATE_METRICS_ADDR` listener's answer: `/metrics` only, without
/// credentials, for a scraper on a private interface.
pub fn side_listener(op: &Operator, method: &str, path: &str) -> Reply {
    match (path, method) {
        ("/metrics", "GET" | "HEAD") => reply(op),
        ("/metrics", _) => Reply::error(&Error::method_not_allowed(READ_ONLY)),
        _ => Reply::error(&Error::NotFound("endpoint".into())),
    }
}

/// The exposition as a reply, for either listener.
fn reply(op: &Operator) -> Reply {
    let mut reply = Reply::empty(200);
    reply.header("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    reply.header("Cache-Control", "no-store");
    reply.body = Body::Bytes(render(op).into_bytes());
    reply
}

/// Writes `# HELP` and `# TYPE` for one family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped as the text format requires (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per pool target, on this replica: attempts, failed attempts, and whether it takes
/// traffic (1: healthy; 0: unhealthy or its circuit open). Labelled by route and target
/// URL, both defined by the operator, so the series stay bounded; a target removed from
/// its pool leaves them once the route's balancer is remade.
fn targets(out: &mut String, gw: &crate::gateway::Gateway, prefixes: &HashMap<i64, String>) {
    let pools = gw.upstreams.balancers.snapshot();
    let series = |b: &Balancer, i: usize, id: i64| {
        format!(
            "route_id=\"{id}\",route=\"{}\",target=\"{}\"",
            label(prefixes.get(&id).map_or("", String::as_str)),
            label(&b.targets[i].url)
        )
    };
    let families: [(&str, &str, &str); 3] = [
        (
            "tollgate_target_requests_total",
            "counter",
            "Attempts sent to each pool target (a retry counts on each target tried).",
        ),
        (
            "tollgate_target_failures_total",
            "counter",
            "Attempts that failed at each pool target: no connection, a timeout, or a 5xx where the route counts them.",
        ),
        (
            "tollgate_target_healthy",
            "gauge",
            "1 while a pool target takes traffic, 0 while unhealthy or its circuit is open.",
        ),
    ];
    for (f, (name, kind, help)) in families.iter().enumerate() {
        family(out, name, kind, help);
        for (id, b) in &pools {
            let circuits = gw.upstreams.breakers.view(&b.upstreams);
            for (i, c) in b.counters.iter().enumerate() {
                let v = match f {
                    0 => c.requests.load(Ordering::Relaxed),
                    1 => c.failures.load(Ordering::Relaxed),
                    _ => u64::from(
                        gw.upstreams
                            .target_state(*id, &b.targets[i].url, &circuits[i])
                            == "healthy",
                    ),
                };
                let _ = writeln!(out, "{name}{{{}}} {v}", series(b, i, *id));
            }
        }
    }
}

fn render(op: &Operator) -> String {
    let gw = op.gateway;
    let m = gw.metrics.snapshot();
    let mut out = String::with_capacity(4096);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    family(
        &mut out,
        "tollgate_requests_total",
        "counter",
        "Gateway requests answered, by route and status class.",
    );
    let prefixes = gw.routes.prefixes();
    for (route_id, counts) in &m.by_route {
        let (id, prefix) = match route_id {
            Some(id) => (id.to_string(), prefixes.get(id).map_or("", String::as_str)),
            None => ("none".to_string(), ""),
        };
        for (i, c) in counts.iter().enumerate() {
            let _ = writeln!(
                out,
                "tollgate_requests_total{{route_id=\"{id}\",route=\"{}\",class=\"{}xx\"}} {c}",
                label(prefix),
                i + 1,
            );
        }
    }

    family(
        &mut out,
        "tollgate_request_duration_seconds",
        "histogram",
        "Time from request arrival to the end of the response, gateway requests.",
    );
    let mut cumulative = 0;
    for (i, c) in m.latency_buckets.iter().enumerate() {
        cumulative += c;
        let le = DURATION_BUCKETS_SECS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "tollgate_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "tollgate_request_duration_seconds_sum {}",
        m.latency_sum_secs
    );
    let _ = writeln!(out, "tollgate_request_duration_seconds_count {cumulative}");

    family(
        &mut out,
        "tollgate_rate_limited_total",
        "counter",
        "Requests refused with 429 by the gateway's rate limiter.",
    );
    let _ = writeln!(out, "tollgate_rate_limited_total {}", m.rate_limited);

    family(
        &mut out,
        "tollgate_upstream_errors_total",
        "counter",
        "Requests that got no answer from their upstream, by kind.",
    );
    for (name, n) in &m.upstream_failures {
        let _ = writeln!(out, "tollgate_upstream_errors_total{{kind=\"{name}\"}} {n}");
    }

    family(
        &mut out,
        "tollgate_upstream_circuit_state",
        "gauge",
        "Circuit breaker of each upstream seen: 1 for its current state, 0 for the others.",
    );
    let circuits = gw.upstreams.breakers.snapshot();
    let circuits = circuits.as_array().map_or(&[][..], Vec::as_slice);
    for c in circuits {
        let upstream = label(c["upstream"].as_str().unwrap_or(""));
        let current = c["state"].as_str().unwrap_or("");
        for state in ["closed", "open", "half-open"] {
            let _ = writeln!(
                out,
                "tollgate_upstream_circuit_state{{upstream=\"{upstream}\",state=\"{state}\"}} {}",
                u8::from(state == current)
            );
        }
    }
    family(
        &mut out,
        "tollgate_upstream_in_flight",
        "gauge",
        "Requests in flight to each upstream seen.",
    );
    for c in circuits {
        let upstream = label(c["upstream"].as_str().unwrap_or(""));
        let n = c["inFlight"].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "tollgate_upstream_in_flight{{upstream=\"{upstream}\"}} {n}"
        );
    }

    targets(&mut out, gw, &prefixes);

    let l = &op.logger.counters;
    let gauges_and_counters: [(&str, &str, &str, u64); 10] = [
        (
            "tollgate_log_queue_depth",
            "gauge",
            "Log rows waiting in the channel for the logger thread.",
            op.logger.queue_depth() as u64,
        ),
        (
            "tollgate_log_rows_buffered",
            "gauge",
            "Log rows held by the logger thread, not yet written.",
            load(&l.buffered),
        ),
        (
            "tollgate_log_rows_written_total",
            "counter",
            "Log rows written to request_logs.",
            load(&l.written),
        ),
        (
            "tollgate_log_rows_dropped_total",
            "counter",
            "Log rows dropped: queue full, or buffer full during a database outage.",
            load(&l.dropped),
        ),
        (
            "tollgate_db_pool_connections_in_use",
            "gauge",
            "Pooled database connections checked out.",
            {
                let s = op.pool.state();
                u64::from(s.connections.saturating_sub(s.idle_connections))
            },
        ),
        (
            "tollgate_db_pool_connections_idle",
            "gauge",
            "Pooled database connections open and idle.",
            u64::from(op.pool.state().idle_connections),
        ),
        (
            "tollgate_db_pool_waiting",
            "gauge",
            "Callers waiting for a pooled database connection.",
            load(&op.pool.waits().waiting),
        ),
        (
            "tollgate_db_pool_get_failures_total",
            "counter",
            "Waits for a pooled connection that timed out or could not connect.",
            load(&op.pool.waits().failed),
        ),
        (
            "tollgate_auth_cache_hits_total",
            "counter",
            "API keys answered from the key cache.",
            load(&gw.auth.cache.hits),
        ),
        (
            "tollgate_auth_cache_misses_total",
            "counter",
            "API keys not in the key cache (looked up in the database).",
            load(&gw.auth.cache.misses),
        ),
    ];
    for (name, kind, help, value) in gauges_and_counters {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "tollgate_bcrypt_verifications_total",
        "counter",
        "bcrypt verifications run (one per key per process, plus wrong secrets).",
    );
    let _ = writeln!(
        out,
        "tollgate_bcrypt_verifications_total {}",
        load(&gw.auth.cache.bcrypt_verifications)
    );
    family(
        &mut out,
        "tollgate_abandoned_bodies_total",
        "counter",
        "Requests answered whose oversized unread body forced the connection to be abandoned.",
    );
    let _ = writeln!(
        out,
        "tollgate_abandoned_bodies_total {}",
        load(&op.server.abandoned_bodies)
    );
    family(
        &mut out,
        "tollgate_build_info",
        "gauge",
        "Always 1; the version is in the label.",
    );
    let _ = writeln!(
        out,
        "tollgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
