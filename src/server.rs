//! tiny_http, the worker pool and dispatch. A worker takes one request at a time: framing
//! checks here, then either the gateway path (auth → ratelimit → proxy → logger) or the
//! operator endpoints (admin, analytics, health). Every answer, error or panic, leaves
//! through `respond` as JSON or as the upstream's own response. `serve` returns after a
//! graceful shutdown on SIGTERM/SIGINT.

use crate::auth::{self, KeyCache};
use crate::breaker::Breakers;
use crate::config::{self, Config};
use crate::db::{DbHealth, Pool};
use crate::error::{Error, Result};
use crate::logger::{LogRow, Logger};
use crate::metrics::{Metrics, UpstreamFailure};
use crate::proxy::{self, RouteTable};
use crate::throttle::{BcryptGate, FailureLimit};
use crate::{admin, analytics, dashboard, hostile, metrics, openapi, ratelimit};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tiny_http::{Header, Request, Server, StatusCode};

/// Everything the stages share. Built once in `main`, borrowed by every worker.
pub struct App {
    pub cfg: Config,
    pub pool: Pool,
    /// The rate-limit counter with its own `synchronous_commit = off` pool.
    pub counters: ratelimit::Counters,
    pub keys: KeyCache,
    pub routes: RouteTable,
    pub logger: Logger,
    pub agent: ureq::Agent,
    /// Pool-less twin of `agent`, for the one retry after a dead pooled connection.
    pub fresh_agent: ureq::Agent,
    pub breakers: Arc<Breakers>,
    /// Requests answered with a declared body too large to drain safely (see `abandon`).
    pub abandoned_bodies: AtomicU64,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Whether the database answered lately; lets requests skip it during an outage.
    pub db_health: DbHealth,
    /// Failed API-key checks per client IP.
    pub auth_failures: FailureLimit,
    /// Failed admin-secret checks per client IP.
    pub admin_failures: FailureLimit,
    /// Bounds concurrent bcrypt verifications.
    pub bcrypt_gate: BcryptGate,
    /// Set by the first SIGTERM/SIGINT: workers finish their request and stop.
    pub shutting_down: AtomicBool,
    /// Responses sent with `X-RateLimit-Degraded: 1` (counter unreachable, fail-open).
    pub degraded_responses: AtomicU64,
}

impl App {
    /// The parts of `App` built from the configuration alone.
    pub fn new(
        cfg: Config,
        pool: Pool,
        logger: Logger,
        agent: ureq::Agent,
        counters: ratelimit::Counters,
    ) -> App {
        App {
            counters,
            breakers: Arc::new(Breakers::new(
                cfg.breaker_failures,
                cfg.breaker_cooldown,
                cfg.upstream_max_in_flight,
            )),
            auth_failures: FailureLimit::new(cfg.auth_fail_limit, cfg.auth_fail_window),
            admin_failures: FailureLimit::new(cfg.admin_fail_limit, cfg.auth_fail_window),
            bcrypt_gate: BcryptGate::new(cfg.bcrypt_concurrency),
            keys: KeyCache::default(),
            routes: RouteTable::default(),
            abandoned_bodies: AtomicU64::new(0),
            db_health: DbHealth::default(),
            shutting_down: AtomicBool::new(false),
            degraded_responses: AtomicU64::new(0),
            metrics: Metrics::default(),
            logger,
            fresh_agent: proxy::fresh_agent(&cfg),
            agent,
            pool,
            cfg,
        }
    }
}

/// What a handler answers; `respond` turns it into bytes on the socket.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

pub enum Body {
    Bytes(Vec<u8>),
    /// The upstream's body, streamed; `len` is its Content-Length when it sent one.
    Stream {
        reader: Box<dyn Read + Send>,
        len: Option<u64>,
    },
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(value.to_string().into_bytes()),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    pub fn error(e: &Error) -> Reply {
        if let Error::Internal(detail) = e {
            log::error!("internal error: {detail}");
        }
        let mut reply = Reply::json(e.status(), &e.body());
        if let Some(secs) = e.retry_after() {
            reply.header("Retry-After", secs.to_string());
        }
        reply
    }

    pub fn header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }
}

/// The parts of a request every stage reads; the body stays in the tiny_http request.
pub struct Ctx {
    pub method: String,
    /// The request target's path, normalised by `hostile::check` (exactly as sent apart
    /// from merged slashes and decoded unreserved characters); when the request is
    /// `refused`, the path as sent, made printable.
    pub path: String,
    /// The query string without `?`, exactly as sent; `None` when there was no `?`.
    pub query: Option<String>,
    pub headers: Vec<Header>,
    /// The client: the TCP peer, or what a trusted edge proxy says in `X-Forwarded-For`.
    pub client_ip: String,
    /// The TCP peer, the address this hop appends to `X-Forwarded-For`.
    pub peer_ip: String,
    /// `http`, or what a trusted edge proxy says in `X-Forwarded-Proto`.
    pub proto: String,
    pub request_id: String,
    /// Why the message framing is refused (see `check_framing`); `None` when it is sound.
    pub bad_framing: Option<&'static str>,
    /// Why the target or the headers are refused (see `hostile::check`).
    pub refused: Option<Error>,
    /// Declared `Content-Length`, when `bad_framing` is `None` a plain number.
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub started: Instant,
    /// Wall-clock time the request arrived: the log row's `created_at`, so rows sort in
    /// arrival order whichever worker finishes first.
    pub received_at: SystemTime,
}

impl Ctx {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// Who a gateway request turned out to be, filled in stage by stage for its log row.
#[derive(Default)]
pub struct Trace {
    pub api_key_id: Option<i64>,
    pub user_id: Option<i64>,
    pub route_id: Option<i64>,
    pub bytes_in: u64,
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully (see `shutdown`).
pub fn serve(app: Arc<App>) -> io::Result<()> {
    // Registered before listening, so a signal during start-up is not lost.
    let signals = shutdown_signals()?;
    let server = Server::http(&app.cfg.listen_addr)
        .map_err(|e| io::Error::other(format!("cannot listen on {}: {e}", app.cfg.listen_addr)))?;
    let server = Arc::new(server);
    if let Some(addr) = server.server_addr().to_ip() {
        spawn_pool_nudger(addr);
    }
    log::info!(
        "listening on {} with {} workers",
        app.cfg.listen_addr,
        app.cfg.workers
    );
    let mut handles = Vec::new();
    for i in 0..app.cfg.workers {
        let (server, app) = (server.clone(), app.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(&server, &app))?,
        );
    }
    let signal = signals
        .recv()
        .map_err(|_| io::Error::other("the signal thread stopped"))?;
    shutdown(&app, server, handles, signal);
    Ok(())
}

/// The first SIGTERM or SIGINT arrives on the returned channel; a second one exits the
/// process at once (status 1), whatever is still running.
fn shutdown_signals() -> io::Result<crossbeam_channel::Receiver<i32>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (n, signal) in signals.forever().enumerate() {
                if n == 0 {
                    let _ = tx.send(signal);
                } else {
                    log::warn!("second signal ({signal}): exiting at once");
                    std::process::exit(1);
                }
            }
        })?;
    Ok(rx)
}

/// Stops taking requests, lets the ones in flight finish within `shutdown_grace`, then
/// writes every queued log row (within the same grace, but at least
/// `config::SHUTDOWN_LOG_FLUSH_MIN`) and returns, so `main` exits 0.
fn shutdown(
    app: &App,
    server: Arc<Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
    signal: i32,
) {
    let deadline = Instant::now() + app.cfg.shutdown_grace;
    log::info!(
        "signal {signal}: finishing requests in flight (grace {} ms)",
        app.cfg.shutdown_grace.as_millis()
    );
    app.shutting_down.store(true, Ordering::SeqCst);
    // Each unblock wakes one worker waiting in `recv`; a busy worker sees the flag when
    // its request is done.
    for _ in 0..workers.len() {
        server.unblock();
    }
    while Instant::now() < deadline && workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = workers.iter().filter(|w| !w.is_finished()).count();
    if busy > 0 {
        log::warn!("{busy} requests still in flight at the end of the grace period");
    }
    // The last reference (once the workers are gone) closes the listening socket.
    drop(server);
    let flush_by = deadline.max(Instant::now() + config::SHUTDOWN_LOG_FLUSH_MIN);
    let lost = app.logger.shutdown(flush_by);
    if lost > 0 {
        log::error!("shutdown: {lost} log rows could not be written in time");
    } else {
        log::info!("shutdown complete: every log row written");
    }
}

/// tiny_http 0.12 runs each connection on a pool thread for the connection's whole life,
/// and its pool can queue a burst of new connections behind a single waking thread; while
/// the other connections stay open (keep-alive) a queued one is then never read. A short
/// self-connection either starts a fresh pool thread (which, done with it at once, takes
/// the next queued connection) or wakes a waiting one. Every `config::POOL_NUDGE` the
/// nudger connects and half-closes; while that nudge is not closed by the pool within
/// `config::POOL_NUDGE_QUEUED` it is itself queued behind new connections, so the nudger
/// sends another, each freeing one, until the first is served: a queued connection waits
/// about one tick, not until some other connection closes.
fn spawn_pool_nudger(addr: std::net::SocketAddr) {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let nudge = move || {
        let stream = std::net::TcpStream::connect_timeout(&target, config::POOL_NUDGE).ok()?;
        let _ = stream.shutdown(std::net::Shutdown::Write);
        Some(stream)
    };
    let spawned = std::thread::Builder::new()
        .name("pool-nudge".into())
        .spawn(move || loop {
            std::thread::sleep(config::POOL_NUDGE);
            let Some(mut first) = nudge() else { continue };
            if first
                .set_read_timeout(Some(config::POOL_NUDGE_QUEUED))
                .is_err()
            {
                continue;
            }
            for _ in 0..config::POOL_NUDGE_MAX_BURST {
                match io::Read::read(&mut first, &mut [0u8; 1]) {
                    // Still queued: free one queued connection with another nudge.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        nudge();
                    }
                    _ => break,
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the pool nudger: {e}");
    }
}

fn worker(server: &Server, app: &App) {
    while !app.shutting_down.load(Ordering::SeqCst) {
        let request = match server.recv() {
            Ok(rq) => rq,
            Err(_) if app.shutting_down.load(Ordering::SeqCst) => return,
            Err(e) => {
                log::error!("accept failed: {e}");
                continue;
            }
        };
        // A panic in respond or logging must not take the worker with it either.
        if catch_unwind(AssertUnwindSafe(|| handle(app, request))).is_err() {
            log::error!("panic while answering a request; worker continues");
        }
    }
}

fn handle(app: &App, mut request: Request) {
    let ctx = context(&request, &app.cfg.trusted_proxies);
    let mut trace = Trace::default();
    // A refused request is hostile traffic at the gateway: logged like any gateway request.
    let gateway = ctx.refused.is_some() || !is_operator_path(&ctx.path);
    let reply = catch_unwind(AssertUnwindSafe(|| {
        dispatch(app, &mut request, &ctx, &mut trace, gateway)
    }))
    .unwrap_or_else(|_| {
        log::error!("handler panicked on {} {}", ctx.method, ctx.path);
        Reply::error(&Error::Internal("handler panicked".into()))
    });
    let status = reply.status;
    let safe = body_is_safe_to_drop(app, &mut request, &ctx, &trace);
    // A body answered without being read is still received: drained by us or tiny_http.
    let bytes_in = if safe {
        trace.bytes_in.max(ctx.content_length.unwrap_or(0))
    } else {
        trace.bytes_in
    };
    let bytes_out = if safe {
        respond(request, reply, &ctx)
    } else {
        abandon(app, request, reply)
    };
    if gateway {
        let seconds = ctx.started.elapsed().as_secs_f64();
        app.metrics.observe(trace.route_id, status, seconds);
        app.logger.send(LogRow {
            request_id: ctx.request_id.clone(),
            api_key_id: trace.api_key_id,
            user_id: trace.user_id,
            route_id: trace.route_id,
            method: ctx.method.clone(),
            path: hostile::printable(&ctx.path).into_owned(),
            query: ctx
                .query
                .as_deref()
                .map(|q| hostile::printable(q).into_owned()),
            status: i32::from(status),
            latency_ms: seconds * 1000.0,
            bytes_in: bytes_in as i64,
            bytes_out: bytes_out as i64,
            client_ip: ctx.client_ip.clone(),
            user_agent: ctx
                .header("User-Agent")
                .map(|v| hostile::printable(v).into_owned()),
            created_at: ctx.received_at,
        });
    }
}

fn dispatch(app: &App, rq: &mut Request, ctx: &Ctx, trace: &mut Trace, gateway: bool) -> Reply {
    #[cfg(debug_assertions)]
    test_panic(app, ctx);
    let framing = ctx
        .bad_framing
        .map_or(Ok(()), |why| Err(Error::BadRequest(why.into())));
    let result = framing.and_then(|()| match &ctx.refused {
        Some(e) => Ok(Reply::error(e)),
        None if gateway => gateway_path(app, rq, ctx, trace),
        None => operator_path(app, rq, ctx),
    });
    let mut reply = result.unwrap_or_else(|e| Reply::error(&e));
    if gateway {
        reply.header("X-Request-Id", ctx.request_id.clone());
    }
    reply
}

/// The gateway path: auth → rate limit → route → forward. Each stage fills `trace` so the
/// log row names whatever was known when the request stopped.
fn gateway_path(app: &App, rq: &mut Request, ctx: &Ctx, trace: &mut Trace) -> Result<Reply> {
    let key = auth::authenticate(app, ctx)?;
    trace.api_key_id = Some(key.id);
    trace.user_id = Some(key.user_id);
    if !key.allows(&ctx.method) {
        return Err(Error::InsufficientScope);
    }
    let host = proxy::request_host(ctx);
    let route = app
        .routes
        .find(key.user_id, host.as_deref(), &ctx.path)
        .ok_or(Error::RouteNotFound)?;
    trace.route_id = Some(route.id);
    if !route.allows(&ctx.method) {
        let mut reply = Reply::error(&Error::MethodNotAllowed);
        reply.header(
            "Allow",
            route.methods.as_deref().unwrap_or_default().join(", "),
        );
        return Ok(reply);
    }
    // Checked from the declared length before any byte is read (chunked bodies are
    // checked while they stream).
    let max = proxy::max_body(app, &route);
    if ctx.content_length.is_some_and(|n| n > max) {
        return Err(Error::PayloadTooLarge(max));
    }
    let limit = rate_limit(app, key.id, key.rate_limit)?;
    if let Some(refused) = limit.refusal(app) {
        return Ok(refused);
    }
    let mut reply = proxy::forward(app, &route, rq, ctx, key.credential_header, trace)
        .unwrap_or_else(|e| {
            if let Some(kind) = UpstreamFailure::of(&e) {
                app.metrics.upstream_failure(kind);
            }
            Reply::error(&e)
        });
    limit.add_headers(app, &mut reply);
    Ok(reply)
}

/// A rate-limit decision, or none because the counter was unreachable and the policy is
/// fail-open.
pub enum Limit {
    Decided(ratelimit::Decision),
    Degraded,
}

impl Limit {
    /// The 429 to answer, if the request is over its limit.
    pub fn refusal(&self, app: &App) -> Option<Reply> {
        match self {
            Limit::Decided(d) if !d.allowed => {
                app.metrics.rate_limited();
                Some(d.refusal(app.cfg.rate_window_secs))
            }
            _ => None,
        }
    }

    pub fn add_headers(&self, app: &App, reply: &mut Reply) {
        match self {
            Limit::Decided(d) => d.add_headers(reply, app.cfg.rate_window_secs),
            Limit::Degraded => {
                app.degraded_responses.fetch_add(1, Ordering::Relaxed);
                reply.header("X-RateLimit-Degraded", "1");
            }
        }
    }
}

/// `ratelimit::check`, with the database outage policy applied: while the counter cannot
/// be reached, fail-open admits (`Limit::Degraded`) and fail-closed answers 503. During a
/// known outage the counter is not even tried (see `DbHealth`), so requests with cached
/// keys do not each wait `db_wait` for a connection.
pub fn rate_limit(app: &App, key_id: i64, limit: i32) -> Result<Limit> {
    match app.db_health.call(|| ratelimit::check(app, key_id, limit)) {
        Ok(d) => Ok(Limit::Decided(d)),
        Err(Error::DatabaseUnavailable) if app.cfg.ratelimit_fail_open => Ok(Limit::Degraded),
        Err(e) => Err(e),
    }
}

/// Debug builds only, and only with `TOLLGATE_TEST_PANIC_PATH` set: real panics for the
/// fault tests (see `Config::test_panic_path`).
#[cfg(debug_assertions)]
fn test_panic(app: &App, ctx: &Ctx) {
    let Some(base) = app.cfg.test_panic_path.as_deref() else {
        return;
    };
    match ctx.path.strip_prefix(base) {
        Some("") => panic!("test-only panic in a handler"),
        Some("/lock") => app.keys.panic_holding_lock(),
        Some("/logger") => app.logger.panic_once_for_test(),
        _ => {}
    }
}

fn operator_path(app: &App, rq: &mut Request, ctx: &Ctx) -> Result<Reply> {
    let first = ctx.path.split('/').nth(1).unwrap_or("");
    match (first, ctx.method.as_str()) {
        ("healthz", "GET" | "HEAD") => Ok(Reply::json(200, &json!({"status": "ok"}))),
        ("readyz", "GET" | "HEAD") => Ok(readyz(app)),
        ("healthz" | "readyz", _) => Err(Error::MethodNotAllowed),
        ("openapi.json", "GET" | "HEAD") if ctx.path == "/openapi.json" => Ok(openapi::reply()),
        ("openapi.json", _) if ctx.path == "/openapi.json" => Err(Error::MethodNotAllowed),
        ("admin", _) => admin::handle(app, rq, ctx),
        ("analytics", _) => analytics::handle(app, ctx),
        ("metrics", _) => metrics::handle(app, ctx),
        ("dashboard", _) => dashboard::handle(ctx),
        _ => Err(Error::NotFound("endpoint".into())),
    }
}

fn readyz(app: &App) -> Reply {
    let ok = app
        .pool
        .get()
        .ok()
        .is_some_and(|mut c| c.simple_query("SELECT 1").is_ok());
    // A successful check ends a known outage for everyone at once.
    if ok {
        app.db_health.mark_up();
    } else {
        app.db_health.mark_down();
    }
    // Upstream circuits are detail, not readiness: one failing service must not take the
    // gateway out of its load balancer.
    let upstreams = app.breakers.snapshot();
    if ok {
        let body = json!({"status": "ready", "database": "ok", "upstreams": upstreams});
        Reply::json(200, &body)
    } else {
        let body =
            json!({"status": "unavailable", "database": "unreachable", "upstreams": upstreams});
        Reply::json(503, &body)
    }
}

/// Paths the gateway answers itself; no route may claim them (checked in admin).
pub const OPERATOR_PREFIXES: &[&str] = &[
    "/admin",
    "/analytics",
    "/healthz",
    "/readyz",
    "/metrics",
    "/dashboard",
    "/openapi.json",
];

pub fn is_operator_path(path: &str) -> bool {
    OPERATOR_PREFIXES
        .iter()
        .any(|p| proxy::prefix_matches(p, path))
}

fn context(rq: &Request, trusted_proxies: &[std::net::IpAddr]) -> Ctx {
    let url = rq.url();
    let (raw_path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let headers = rq.headers().to_vec();
    let (path, refused) = match hostile::check(raw_path, query.as_deref(), &headers) {
        Ok(path) => (path, None),
        Err(e) => (hostile::printable(raw_path).into_owned(), Some(e)),
    };
    let peer = rq.remote_addr().map(|a| a.ip());
    let trusted = peer.is_some_and(|ip| trusted_proxies.contains(&ip));
    let forwarded = |name: &str| {
        headers
            .iter()
            .rfind(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_string())
    };
    let peer_ip = peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    // The edge appends the address it saw last; earlier entries are the client's own claims.
    let client_ip = forwarded("X-Forwarded-For")
        .filter(|_| trusted)
        .and_then(|v| v.rsplit(',').next().map(|s| s.trim().to_string()))
        .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        .unwrap_or_else(|| peer_ip.clone());
    let proto = forwarded("X-Forwarded-Proto")
        .filter(|p| trusted && (p == "http" || p == "https"))
        .unwrap_or_else(|| "http".to_string());
    let request_id = headers
        .iter()
        .find(|h| h.field.equiv("X-Request-Id"))
        .map(|h| h.value.as_str())
        .filter(|v| valid_request_id(v))
        .map_or_else(auth::random_hex_id, str::to_string);
    let bad_framing = check_framing(&headers);
    let chunked = headers.iter().any(|h| h.field.equiv("Transfer-Encoding"));
    let content_length = headers
        .iter()
        .find(|h| h.field.equiv("Content-Length"))
        .and_then(|h| h.value.as_str().trim().parse().ok());
    Ctx {
        method: rq.method().as_str().to_string(),
        path,
        query,
        headers,
        client_ip,
        peer_ip,
        proto,
        request_id,
        bad_framing,
        refused,
        content_length,
        chunked,
        started: Instant::now(),
        received_at: SystemTime::now(),
    }
}

/// A client-supplied request id is kept only if it is short, printable ASCII: it is echoed
/// in headers and written to the log.
fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Refuses message framing that two HTTP parsers could read differently (RFC 9112 §6.1,
/// §6.3): tiny_http silently prefers Transfer-Encoding and ignores a bad Content-Length,
/// which is how request smuggling starts.
pub fn check_framing(headers: &[Header]) -> Option<&'static str> {
    let values = |name: &'static str| -> Vec<&str> {
        headers
            .iter()
            .filter(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
            .collect()
    };
    let (cls, tes) = (values("Content-Length"), values("Transfer-Encoding"));
    if !cls.is_empty() && !tes.is_empty() {
        return Some("both Content-Length and Transfer-Encoding sent");
    }
    if cls.len() > 1 {
        return Some("repeated Content-Length");
    }
    if cls
        .first()
        .is_some_and(|cl| cl.is_empty() || !cl.bytes().all(|b| b.is_ascii_digit()) || cl.len() > 19)
    {
        return Some("Content-Length is not a number");
    }
    if tes.len() > 1
        || tes
            .first()
            .is_some_and(|te| !te.eq_ignore_ascii_case("chunked"))
    {
        return Some("only Transfer-Encoding: chunked is accepted");
    }
    None
}

/// Writes the reply and returns the body bytes sent.
fn respond(rq: Request, reply: Reply, ctx: &Ctx) -> u64 {
    let no_body = ctx.method == "HEAD" || matches!(reply.status, 100..=199 | 204 | 304);
    let streamed = matches!(reply.body, Body::Stream { .. });
    let (reader, len): (Box<dyn Read + Send>, Option<u64>) = match reply.body {
        Body::Bytes(b) => {
            let n = b.len() as u64;
            (Box::new(io::Cursor::new(b)), Some(n))
        }
        Body::Stream { reader, len } => (reader, len),
    };
    if no_body {
        // tiny_http would add `Content-Length: 0` to a 204 and chunked framing to a 304
        // without a length; RFC 9110 §8.6 forbids the first, §15.4.5 the second.
        let declared = len.filter(|_| !matches!(reply.status, 100..=199 | 204));
        let framing = declared.map_or(Framing::None, Framing::Length);
        return write_raw(rq, reply.status, &reply.headers, framing);
    }
    if streamed && len.is_none() && *rq.http_version() == (1, 1) {
        return write_raw(rq, reply.status, &reply.headers, Framing::Chunked(reader));
    }
    if let (true, Some(n)) = (streamed, len) {
        // An upstream body of known length that trickles in (long polls, drips) is relayed
        // as it arrives; tiny_http's buffered writer would hold it back until complete.
        return write_raw(rq, reply.status, &reply.headers, Framing::Sized(n, reader));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let reader = Counting {
        inner: reader,
        count: sent.clone(),
    };
    let headers = reply
        .headers
        .iter()
        .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
        .collect();
    let response = tiny_http::Response::new(
        StatusCode(reply.status),
        headers,
        reader,
        len.and_then(|n| usize::try_from(n).ok()),
        None,
    )
    // tiny_http would switch bodies of 32 KiB and more to chunked; keep the length the
    // upstream declared so clients can show progress and detect truncation.
    .with_chunked_threshold(usize::MAX);
    if let Err(e) = rq.respond(response) {
        log::debug!("client went away during the response: {e}");
    }
    sent.load(Ordering::Relaxed)
}

enum Framing {
    /// Head only (HEAD, 1xx, 204, 304 without a length).
    None,
    /// Head only, declaring the length the full response would have (HEAD, 304).
    Length(u64),
    /// A body of declared length, relayed as it arrives.
    Sized(u64, Box<dyn Read + Send>),
    /// A body of unknown length, relayed chunk by chunk as the upstream produces it.
    /// tiny_http's own chunked encoder buffers 8 KiB before writing, which would hold back
    /// server-sent events and slow drips; here each read is framed and flushed at once.
    Chunked(Box<dyn Read + Send>),
}

/// Writes the response on the raw connection, framing exactly as given. Returns body bytes.
fn write_raw(rq: Request, status: u16, headers: &[(String, String)], framing: Framing) -> u64 {
    let mut out = rq.into_writer();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status,
        StatusCode(status).default_reason_phrase()
    );
    for (k, v) in headers {
        if valid_header(k, v) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    match &framing {
        Framing::None => {}
        Framing::Length(n) | Framing::Sized(n, _) => {
            head.push_str(&format!("Content-Length: {n}\r\n"))
        }
        Framing::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    let mut sent = 0u64;
    // Each piece goes out as one write: the head with the first piece of body, each chunk
    // with its framing. Separate small writes would meet Nagle's algorithm and the client's
    // delayed ACK (40 ms a response, measured) — tiny_http gives no access to TCP_NODELAY.
    let mut pending = head.into_bytes();
    let result = (|| -> io::Result<()> {
        let mut send = |pending: &mut Vec<u8>| -> io::Result<()> {
            out.write_all(pending)?;
            out.flush()?;
            pending.clear();
            Ok(())
        };
        let mut buf = vec![0u8; 64 * 1024];
        match framing {
            Framing::None | Framing::Length(_) => send(&mut pending),
            Framing::Sized(n, mut body) => {
                // Read to the end (ureq hands the upstream connection back to its pool only
                // once the body reports its end), writing never more than declared.
                loop {
                    let got = body.read(&mut buf)?;
                    let room = usize::try_from(n - sent).unwrap_or(usize::MAX).min(got);
                    pending.extend_from_slice(&buf[..room]);
                    sent += room as u64;
                    if got == 0 || !pending.is_empty() {
                        send(&mut pending)?;
                    }
                    if got == 0 {
                        return Ok(());
                    }
                }
            }
            Framing::Chunked(mut body) => loop {
                let got = body.read(&mut buf)?;
                if got > 0 {
                    pending.extend_from_slice(format!("{got:x}\r\n").as_bytes());
                    pending.extend_from_slice(&buf[..got]);
                    pending.extend_from_slice(b"\r\n");
                    sent += got as u64;
                } else {
                    pending.extend_from_slice(b"0\r\n\r\n");
                }
                send(&mut pending)?;
                if got == 0 {
                    return Ok(());
                }
            },
        }
    })();
    if let Err(e) = result {
        // The client or the upstream went away mid-body; the missing final chunk tells the
        // client the response is incomplete.
        log::debug!("streamed response cut short: {e}");
    }
    sent
}

/// A header tiny_http would accept: a token name and a value without CR, LF or NUL.
fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Whether the request may go back to tiny_http with what is left of its body. tiny_http
/// does not drain an unread chunked body (its bytes would be read as the next request), so
/// we drain it here, up to the body limit; whatever follows a broken or oversized chunked
/// body is parsed as a new request and meets the full auth path like any other. tiny_http
/// does drain an unread `Content-Length` body, but by allocating the whole remainder at
/// once, so only a bounded remainder is safe to hand back.
fn body_is_safe_to_drop(app: &App, rq: &mut Request, ctx: &Ctx, trace: &Trace) -> bool {
    // A body whose framing was refused is not drained: tiny_http would decode a
    // `Transfer-Encoding: gzip` body as chunked and wait forever for a chunk size.
    if ctx.chunked && ctx.bad_framing.is_none() {
        let cap = app.cfg.max_body_bytes + 1;
        let _ = io::copy(&mut rq.as_reader().take(cap), &mut io::sink());
        return true;
    }
    let remaining = ctx
        .content_length
        .unwrap_or(0)
        .saturating_sub(trace.bytes_in);
    remaining <= config::DRAIN_LIMIT_BYTES
}

/// Answers a request whose unread body cannot be dropped safely: the response is written
/// through `upgrade` and the connection is deliberately leaked (one thread and socket), which
/// beats aborting the process. Counted in `/admin/stats`; the nginx edge
/// (`client_max_body_size`) keeps such requests from ever reaching tollgate.
fn abandon(app: &App, rq: Request, reply: Reply) -> u64 {
    app.abandoned_bodies.fetch_add(1, Ordering::Relaxed);
    log::warn!("answered with an oversized unread body; connection abandoned");
    let body = match reply.body {
        Body::Bytes(b) => b,
        Body::Stream { .. } => Vec::new(),
    };
    // `upgrade` writes the status line and headers but no framing and no body (it expects
    // the caller to take over the socket), so the JSON follows and the client reads it to
    // the end of the connection.
    let mut headers: Vec<Header> = reply
        .headers
        .iter()
        .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
        .collect();
    headers.retain(|h| !h.field.equiv("Content-Length"));
    let head = tiny_http::Response::new(StatusCode(reply.status), headers, io::empty(), None, None);
    let mut stream = rq.upgrade("close", head);
    let _ = stream.write_all(&body).and_then(|()| stream.flush());
    std::mem::forget(stream);
    body.len() as u64
}

struct Counting {
    inner: Box<dyn Read + Send>,
    count: Arc<AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad: &[&[(&str, &str)]] = &[
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            &[("Content-Length", "5"), ("Content-Length", "5")],
            &[("Content-Length", "5x")],
            &[("Content-Length", "-1")],
            &[("Transfer-Encoding", "gzip, chunked")],
            &[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
        ];
        for h in bad {
            assert!(check_framing(&headers(h)).is_some(), "{h:?}");
        }
        assert_eq!(check_framing(&headers(&[("Content-Length", "5")])), None);
        assert_eq!(
            check_framing(&headers(&[("Transfer-Encoding", "chunked")])),
            None
        );
    }

    #[test]
    fn operator_paths_match_on_segment_boundaries() {
        assert!(is_operator_path("/admin"));
        assert!(is_operator_path("/admin/users"));
        assert!(is_operator_path("/healthz"));
        assert!(!is_operator_path("/administrator"));
        assert!(!is_operator_path("/users"));
    }
}
