//! `GET /metrics`: the gateway's counters in Prometheus text format 0.0.4. Workers bump
//! atomics here on the request path (server.rs); the rest (log queue, pool, key cache,
//! circuits) is read from the stages that own it when a scrape renders the page.

use crate::error::Error;
use crate::server::{App, Ctx, Reply};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Upper bounds (seconds) of the request-duration histogram: from a cached-key hit on a
/// local upstream (~1 ms) to the default upstream timeout (30 s), roughly 2.5x apart.
pub const LATENCY_BUCKETS: &[f64] = &[
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
}

const FAILURE_KINDS: [(UpstreamFailure, &str); 4] = [
    (UpstreamFailure::Unreachable, "unreachable"),
    (UpstreamFailure::Timeout, "timeout"),
    (UpstreamFailure::CircuitOpen, "circuit_open"),
    (UpstreamFailure::Busy, "busy"),
];

impl UpstreamFailure {
    /// The kind of an error `proxy::forward` returned, if it is the upstream's doing.
    pub fn of(e: &Error) -> Option<UpstreamFailure> {
        match e {
            Error::UpstreamUnreachable(_) => Some(UpstreamFailure::Unreachable),
            Error::UpstreamTimeout => Some(UpstreamFailure::Timeout),
            Error::CircuitOpen { .. } => Some(UpstreamFailure::CircuitOpen),
            Error::UpstreamBusy => Some(UpstreamFailure::Busy),
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
    /// Non-cumulative counts per bucket of `LATENCY_BUCKETS`, then one for +Inf.
    latency_buckets: [AtomicU64; 15],
    latency_sum_micros: AtomicU64,
    rate_limited: AtomicU64,
    upstream_failures: [AtomicU64; 4],
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
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
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

/// `GET /metrics` on the main listener: admin secret required, in `x-admin-secret` or as
/// `Authorization: Bearer` (what Prometheus' `authorization` scrape setting sends).
pub fn handle(app: &App, ctx: &Ctx) -> crate::error::Result<Reply> {
    if ctx.method != "GET" && ctx.method != "HEAD" {
        return Err(Error::MethodNotAllowed);
    }
    let bearer = ctx
        .header("Authorization")
        .map(str::trim)
        .filter(|v| {
            v.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
        })
        .map(|v| v[7..].trim());
    // Both forms count against the client IP's admin failure limit like /admin does, so
    // this endpoint is no way around it for someone guessing the secret.
    if !crate::admin::check_admin(app, ctx)? {
        let secret = bearer.ok_or(Error::Unauthorized)?;
        crate::admin::check_secret(app, ctx, secret, "bearer admin secret")?;
    }
    Ok(reply(app))
}

/// The exposition as a reply, for either listener.
pub fn reply(app: &App) -> Reply {
    let mut reply = Reply::empty(200);
    reply.header("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    reply.header("Cache-Control", "no-store");
    reply.body = crate::server::Body::Bytes(render(app).into_bytes());
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

fn render(app: &App) -> String {
    let m = &app.metrics;
    let mut out = String::with_capacity(4096);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    family(
        &mut out,
        "tollgate_requests_total",
        "counter",
        "Gateway requests answered, by route and status class.",
    );
    let prefixes = app.routes.prefixes();
    let mut routes: Vec<(Option<i64>, Arc<ByClass>)> = m
        .requests
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    routes.sort_by_key(|(k, _)| *k);
    for (route_id, counts) in &routes {
        let (id, prefix) = match route_id {
            Some(id) => (id.to_string(), prefixes.get(id).map_or("", String::as_str)),
            None => ("none".to_string(), ""),
        };
        for (i, c) in counts.0.iter().enumerate() {
            let _ = writeln!(
                out,
                "tollgate_requests_total{{route_id=\"{id}\",route=\"{}\",class=\"{}xx\"}} {}",
                label(prefix),
                i + 1,
                load(c)
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
        cumulative += load(c);
        let le = LATENCY_BUCKETS
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
        load(&m.latency_sum_micros) as f64 / 1e6
    );
    let _ = writeln!(out, "tollgate_request_duration_seconds_count {cumulative}");

    family(
        &mut out,
        "tollgate_rate_limited_total",
        "counter",
        "Requests refused with 429 by the gateway's rate limiter.",
    );
    let _ = writeln!(out, "tollgate_rate_limited_total {}", load(&m.rate_limited));

    family(
        &mut out,
        "tollgate_upstream_errors_total",
        "counter",
        "Requests that got no answer from their upstream, by kind.",
    );
    for (kind, name) in FAILURE_KINDS {
        let n = load(&m.upstream_failures[kind as usize]);
        let _ = writeln!(out, "tollgate_upstream_errors_total{{kind=\"{name}\"}} {n}");
    }

    family(
        &mut out,
        "tollgate_upstream_circuit_state",
        "gauge",
        "Circuit breaker of each upstream seen: 1 for its current state, 0 for the others.",
    );
    let circuits = app.breakers.snapshot();
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

    let l = &app.logger.counters;
    let gauges_and_counters: [(&str, &str, &str, u64); 10] = [
        (
            "tollgate_log_queue_depth",
            "gauge",
            "Log rows waiting in the channel for the logger thread.",
            app.logger.queue_depth() as u64,
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
                let s = app.pool.state();
                u64::from(s.connections.saturating_sub(s.idle_connections))
            },
        ),
        (
            "tollgate_db_pool_connections_idle",
            "gauge",
            "Pooled database connections open and idle.",
            u64::from(app.pool.state().idle_connections),
        ),
        (
            "tollgate_db_pool_waiting",
            "gauge",
            "Callers waiting for a pooled database connection.",
            load(&app.pool.waits().waiting),
        ),
        (
            "tollgate_db_pool_get_failures_total",
            "counter",
            "Waits for a pooled connection that timed out or could not connect.",
            load(&app.pool.waits().failed),
        ),
        (
            "tollgate_auth_cache_hits_total",
            "counter",
            "API keys answered from the key cache.",
            load(&app.keys.hits),
        ),
        (
            "tollgate_auth_cache_misses_total",
            "counter",
            "API keys not in the key cache (looked up in the database).",
            load(&app.keys.misses),
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
        load(&app.keys.bcrypt_verifications)
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
        load(&app.abandoned_bodies)
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

/// The optional `TOLLGATE_METRICS_ADDR` listener: `/metrics` only, without credentials,
/// for a scraper on a private interface. One thread: a scrape is a few microseconds.
pub fn spawn_listener(app: Arc<App>, addr: &str) -> std::io::Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| std::io::Error::other(format!("cannot listen on {addr}: {e}")))?;
    log::info!("metrics on http://{addr}/metrics (no credentials)");
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for rq in server.incoming_requests() {
                let path = rq.url().split('?').next().unwrap_or("");
                let get = matches!(
                    rq.method(),
                    tiny_http::Method::Get | tiny_http::Method::Head
                );
                let reply = if path == "/metrics" && get {
                    reply(&app)
                } else {
                    Reply::error(&Error::NotFound("endpoint".into()))
                };
                let headers = reply
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).ok()
                    })
                    .collect();
                let body = match reply.body {
                    crate::server::Body::Bytes(b) => b,
                    crate::server::Body::Stream { .. } => Vec::new(),
                };
                let len = body.len();
                let response = tiny_http::Response::new(
                    tiny_http::StatusCode(reply.status),
                    headers,
                    std::io::Cursor::new(body),
                    Some(len),
                    None,
                );
                if let Err(e) = rq.respond(response) {
                    log::debug!("metrics scraper went away: {e}");
                }
            }
        })?;
    Ok(())
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
        let counts: Vec<u64> = m
            .latency_buckets
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[0], 2, "0.5 ms and exactly 1 ms are both <= 0.001");
        assert_eq!(counts[8], 1, "0.3 s is in the 0.5 s bucket");
        assert_eq!(counts[14], 1, "99 s only in +Inf");
        let map = m.requests.read().unwrap();
        assert_eq!(map[&Some(1)].0[1].load(Ordering::Relaxed), 1);
        assert_eq!(map[&Some(1)].0[3].load(Ordering::Relaxed), 1);
        assert_eq!(map[&None].0[3].load(Ordering::Relaxed), 1);
        assert_eq!(map[&Some(2)].0[4].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn bucket_count_matches_the_bounds_plus_inf() {
        assert_eq!(
            Metrics::default().latency_buckets.len(),
            LATENCY_BUCKETS.len() + 1
        );
    }
}
