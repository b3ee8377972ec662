//! The forward phase, with ureq: method, path, query and body unchanged, end-to-end
//! headers both ways, the upstream's status and body streamed back; the target picked
//! from the route's pool (`balance.rs`), each target behind its circuit breaker and
//! in-flight cap (`breaker.rs`), a failed connection retried on another target.

use super::auth::Authed;
use super::balance::{Balancer, Balancers};
use super::breaker::{self, Breakers, Circuit};
use super::health::Health;
use super::identity;
use super::keys::bearer_key;
use super::Trace;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{Body, Ctx, Reply, Request, RequestBody};
use crate::store::routes::{Route, Target};
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use ureq::http;

/// The forward phase's state: the pooled agent, its pool-less twin for the one retry
/// after a dead pooled connection, the breakers, every route's balancer, the targets'
/// probe results, and the gateway-wide body limit.
pub struct Upstreams {
    agent: ureq::Agent,
    fresh_agent: ureq::Agent,
    pub breakers: Arc<Breakers>,
    pub balancers: Balancers,
    pub health: Health,
    max_body_bytes: u64,
}

impl Upstreams {
    pub fn new(cfg: &Config) -> Upstreams {
        Upstreams {
            agent: agent_with_idle(cfg, cfg.workers),
            fresh_agent: agent_with_idle(cfg, 0),
            breakers: Arc::new(Breakers::new(
                cfg.breaker_failures,
                cfg.breaker_cooldown,
                cfg.upstream_max_in_flight,
            )),
            balancers: Balancers::default(),
            health: Health::default(),
            max_body_bytes: cfg.max_body_bytes,
        }
    }

    /// Each target of the route's pool with its breaker and its state, for operators.
    pub fn targets_of(&self, route: &Route) -> Vec<(Target, Circuit, &'static str)> {
        let targets = route.pool();
        let upstreams: Vec<String> = targets
            .iter()
            .map(|t| breaker::upstream_of(&t.url))
            .collect();
        let circuits = self.breakers.view(&upstreams);
        targets
            .into_iter()
            .zip(circuits)
            .map(|(t, c)| {
                let state = self.target_state(route.id, &t.url, &c);
                (t, c, state)
            })
            .collect()
    }

    /// A pool target's state as operators see it: `unhealthy` when its route's health
    /// check marked it down, `circuit open` while its breaker refuses (or probes), else
    /// `healthy`.
    pub fn target_state(&self, route_id: i64, url: &str, circuit: &Circuit) -> &'static str {
        if self.health.is_down(route_id, url) {
            "unhealthy"
        } else if circuit.state != "closed" {
            "circuit open"
        } else {
            "healthy"
        }
    }

    /// The body limit for this route: its own, or the gateway's default.
    pub fn max_body(&self, route: &Route) -> u64 {
        route
            .max_body_bytes
            .map_or(self.max_body_bytes, |n| n as u64)
    }
}

/// Connection-specific headers (RFC 9110 §7.6.1) plus those that ureq or tiny_http frame
/// themselves; none is forwarded in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

/// Header names listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
fn connection_listed(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The end-to-end headers of `headers`, minus `also_drop` (lower-case names).
pub fn end_to_end(headers: &[(String, String)], also_drop: &[&str]) -> Vec<(String, String)> {
    let listed = connection_listed(headers);
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !HOP_BY_HOP.contains(&k.as_str())
                && !also_drop.contains(&k.as_str())
                && !listed.contains(&k)
        })
        .cloned()
        .collect()
}

/// What a proxy adds about the hop it made: `X-Forwarded-For` with the client appended to
/// any list it arrived with, `X-Forwarded-Proto` (plain HTTP unless a trusted edge said),
/// `X-Forwarded-Host` (the Host the client asked for) and `Via` (RFC 9110 §7.6.3).
pub fn forwarding_headers(
    client: &[(String, String)],
    peer_ip: &str,
    proto: &str,
) -> Vec<(String, String)> {
    let joined = |name: &str| {
        let vals: Vec<&str> = client
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        vals.join(", ")
    };
    let append = |list: String, item: &str| {
        if list.is_empty() {
            item.to_string()
        } else {
            format!("{list}, {item}")
        }
    };
    let mut out = vec![
        (
            "x-forwarded-for".to_string(),
            append(joined("x-forwarded-for"), peer_ip),
        ),
        ("x-forwarded-proto".to_string(), proto.to_string()),
    ];
    if let Some((_, host)) = client.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")) {
        out.push(("x-forwarded-host".to_string(), host.clone()));
    }
    out.push(("via".to_string(), append(joined("via"), "1.1 tollgate")));
    out
}

/// Upstream URL: the target (without trailing `/`) followed by the request target as sent.
pub fn upstream_url(target: &str, path: &str, query: Option<&str>) -> String {
    let mut url = String::with_capacity(target.len() + path.len() + 64);
    url.push_str(target.trim_end_matches('/'));
    url.push_str(path);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// The headers sent upstream: the client's end-to-end ones without its gateway credential
/// or anything the gateway itself speaks for, then identity, forwarding and framing.
fn upstream_headers(route: &Route, ctx: &Ctx, key: &Authed, path: &str) -> Vec<(String, String)> {
    let credential_header = key.credential_header;
    let client_headers = &ctx.headers;
    // The gateway's credential never travels on: `x-api-key` always, and `Authorization`
    // whenever it carries a gateway key (even when `x-api-key` was the one used).
    let key_in_authorization = credential_header.eq_ignore_ascii_case("authorization")
        || client_headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("authorization") && bearer_key(v).is_some());
    let credential = if key_in_authorization {
        "authorization"
    } else {
        "x-api-key"
    };
    let replaced = [
        "x-api-key",
        credential,
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
    ];
    let mut headers = end_to_end(client_headers, &replaced);
    // Only the gateway speaks as `X-Tollgate-*`, on every route, identity or not.
    headers.retain(|(k, _)| !identity::is_reserved(k));
    if route.sends_identity() {
        headers.extend(identity::headers(
            route,
            &key.info,
            &identity::Request {
                method: &ctx.method,
                path,
                query: ctx.query.as_deref(),
                now: chrono::Utc::now().timestamp(),
            },
        ));
    }
    headers.extend(forwarding_headers(client_headers, &ctx.peer_ip, &ctx.proto));
    headers.push(("x-request-id".into(), ctx.request_id.clone()));
    if route.preserve_host {
        if let Some(host) = ctx.header("Host") {
            headers.push(("host".into(), host.to_string()));
        }
    }
    if let Some(n) = ctx.content_length {
        // Keep the client's framing: a declared length is forwarded as such, not chunked.
        headers.push(("content-length".into(), n.to_string()));
    }
    headers
}

/// Forwards the request to a target of the route's pool (`balance.rs` picks it) and
/// returns its answer, body streamed. A failed connection is retried on another target
/// (see [`may_retry`]) up to the route's `retries`; `trace` records the target that
/// answered, or was tried last, and how many were tried.
pub fn forward(
    up: &Upstreams,
    route: &Route,
    rq: &mut Request,
    key: &Authed,
    trace: &mut Trace,
) -> Result<Reply> {
    let ctx = &rq.ctx;
    let path = route.upstream_path(&ctx.path);
    let headers = upstream_headers(route, ctx, key, &path);
    let builder = |url: &str| {
        headers.iter().fold(
            http::Request::builder()
                .method(ctx.method.as_str())
                .uri(url),
            |b, (k, v)| b.header(k, v),
        )
    };
    let balancer = up.balancers.of(route);
    let max = up.max_body(route);
    let has_body = ctx.content_length.is_some_and(|n| n > 0) || ctx.chunked;
    let unforwardable = |e: http::Error| Error::BadRequest(format!("cannot forward: {e}"));
    let mut tried = vec![false; balancer.targets.len()];
    let mut attempts: i16 = 0;
    let mut last_failure: Option<ureq::Error> = None;
    let (response, permit) = loop {
        let (i, permit) = match (choose(up, route, &balancer, key.id, &tried), last_failure) {
            (Ok(choice), _) => choice,
            // No other target to retry on: the failure stands.
            (Err(_), Some(e)) => return Err(upstream_error(e)),
            (Err(e), None) => return Err(e),
        };
        tried[i] = true;
        attempts += 1;
        trace.upstream = Some(balancer.targets[i].url.clone());
        trace.attempts = Some(attempts);
        let counters = &balancer.counters[i];
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let url = upstream_url(&balancer.targets[i].url, &path, ctx.query.as_deref());
        // Two calls rather than one `SendBody` variable: `SendBody` is invariant over its
        // lifetime, so `none()` and a borrowed reader cannot share a binding.
        let result = if has_body {
            let mut body = Limited {
                inner: &mut rq.body,
                max,
            };
            let request = builder(&url)
                .body(ureq::SendBody::from_reader(&mut body))
                .map_err(unforwardable)?;
            up.agent.run(with_timeouts(&up.agent, route, request))
        } else {
            let send = || -> Result<_> {
                let request = builder(&url)
                    .body(ureq::SendBody::none())
                    .map_err(unforwardable)?;
                Ok(up.agent.run(with_timeouts(&up.agent, route, request)))
            };
            match send()? {
                // A pooled keep-alive connection the upstream had already closed fails
                // before any byte of answer; an idempotent method without a body is retried
                // once (RFC 9110 §9.2.2) on a fresh connection to the same target: another
                // idle one from the pool may have been closed by the upstream just the
                // same. This is not one of the route's `retries`, which change target.
                Err(e) if failure(&e) == Failure::Died && is_idempotent(&ctx.method) => {
                    log::debug!(
                        "retrying {} {url} after a dead pooled connection: {e}",
                        ctx.method
                    );
                    let request = builder(&url)
                        .body(ureq::SendBody::none())
                        .map_err(unforwardable)?;
                    up.fresh_agent.run(with_timeouts(&up.agent, route, request))
                }
                other => other,
            }
        };
        if rq.body.bytes_read() > max {
            return Err(Error::PayloadTooLarge(max));
        }
        let failed = match &result {
            // An error while sending the client's own body is the client's, not the
            // upstream's, unless no connection was ever made.
            Err(e @ ureq::Error::Io(_)) if has_body => failure(e) == Failure::NeverConnected,
            Err(_) => true,
            Ok(r) => route.breaker_on_5xx && r.status().is_server_error(),
        };
        up.breakers.finish(&permit, failed);
        if failed {
            counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(response) => break (response, permit),
            Err(e)
                if attempts <= route.retries
                    && may_retry(&e, &ctx.method, rq.body.bytes_read()) =>
            {
                log::debug!(
                    "{} {url} failed before an answer ({e}); trying another target",
                    ctx.method
                );
                last_failure = Some(e);
            }
            Err(e) => return Err(upstream_error(e)),
        }
    };
    let (parts, upstream_body) = response.into_parts();
    let upstream_headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let len = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let no_body = ctx.method == "HEAD" || matches!(parts.status.as_u16(), 204 | 304);
    let body = if no_body {
        Body::Stream {
            reader: Box::new(io::empty()),
            len,
        }
    } else {
        Body::Stream {
            reader: Box::new(Guarded {
                inner: upstream_body.into_reader(),
                left: len,
                permit: Some(permit),
            }),
            len,
        }
    };
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: end_to_end(&upstream_headers, &[]),
        body,
    })
}

/// A target for the request and its place there, among those it has not `tried`. A pool
/// of one answers as a lone upstream always has (its breaker's own 503s); in a larger pool
/// a target whose circuit refuses, or that its health check marked down, is skipped, and
/// when none is left the answer is 503 `upstream_unavailable`, with `Retry-After` the
/// soonest a circuit lets requests through again.
fn choose(
    up: &Upstreams,
    route: &Route,
    b: &Balancer,
    key_id: i64,
    tried: &[bool],
) -> Result<(usize, breaker::Permit)> {
    let n = b.targets.len();
    let down =
        |i: usize| route.health_check.is_some() && up.health.is_down(route.id, &b.targets[i].url);
    // Until a probe could make it healthy again.
    let probe_wait = || {
        route.health_check.as_ref().map_or(1, |h| {
            (u64::from(h.interval_ms) * u64::from(h.healthy_after))
                .div_ceil(1000)
                .max(1)
        })
    };
    if n == 1 {
        if tried[0] || down(0) {
            return Err(Error::UpstreamUnavailable {
                retry_after: probe_wait(),
            });
        }
        return Ok((0, up.breakers.admit(&b.upstreams[0])?));
    }
    let mut skip = tried.to_vec();
    let mut busy = false;
    loop {
        let view = up.breakers.view(&b.upstreams);
        let eligible: Vec<bool> = (0..n)
            .map(|i| !skip[i] && view[i].retry_after.is_none() && !down(i))
            .collect();
        let in_flight: Vec<usize> = view.iter().map(|c| c.in_flight).collect();
        let Some(i) = b.pick(&eligible, key_id, &in_flight) else {
            if busy {
                return Err(Error::UpstreamBusy);
            }
            let retry_after = view
                .iter()
                .filter_map(|c| c.retry_after)
                .min()
                .unwrap_or_else(probe_wait);
            return Err(Error::UpstreamUnavailable { retry_after });
        };
        match up.breakers.admit(&b.upstreams[i]) {
            Ok(permit) => return Ok((i, permit)),
            Err(e) => {
                busy |= matches!(e, Error::UpstreamBusy);
                skip[i] = true;
            }
        }
    }
}

/// Applies a route's own timeouts, when it has any, on top of the agent's.
fn with_timeouts<S: ureq::AsSendBody>(
    agent: &ureq::Agent,
    route: &Route,
    request: http::Request<S>,
) -> http::Request<S> {
    let ms = |v: Option<i32>| v.map(|n| std::time::Duration::from_millis(n as u64));
    if route.connect_timeout_ms.is_none()
        && route.read_timeout_ms.is_none()
        && route.timeout_ms.is_none()
    {
        return request;
    }
    let mut cfg = agent.configure_request(request);
    if let Some(d) = ms(route.connect_timeout_ms) {
        cfg = cfg.timeout_connect(Some(d));
    }
    if let Some(d) = ms(route.read_timeout_ms) {
        cfg = cfg.timeout_recv_response(Some(d)).timeout_per_read(Some(d));
    }
    if let Some(d) = ms(route.timeout_ms) {
        cfg = cfg.timeout_global(Some(d));
    }
    cfg.build()
}

/// The upstream's body; holds the upstream slot until the upstream's answer has been read
/// whole (or the reply is dropped). Freed on the read that completes a declared length,
/// before those bytes are relayed: freed only when the reply was dropped, after the client
/// had its answer, a keep-alive client's next request could find its own previous slot
/// still taken and get 503 `upstream_busy` at 32 connections under a cap of 48.
struct Guarded {
    inner: ureq::BodyReader<'static>,
    /// Bytes of a declared `Content-Length` not read yet.
    left: Option<u64>,
    permit: Option<breaker::Permit>,
}

impl Read for Guarded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(left) = &mut self.left {
            *left = left.saturating_sub(n as u64);
        }
        if n == 0 || self.left == Some(0) {
            self.permit = None;
        }
        Ok(n)
    }
}

/// Methods a client expects may be repeated (RFC 9110 §9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// How an attempt failed before any byte of answer, for the retries.
#[derive(PartialEq)]
enum Failure {
    /// No connection was made: the target never got the request.
    NeverConnected,
    /// The connection died under us (reset, closed, garbled) rather than that the
    /// upstream refused: a pooled connection it had closed, or a target that went away.
    Died,
    /// Anything else, a timeout after connecting among them.
    Other,
}

fn failure(e: &ureq::Error) -> Failure {
    use io::ErrorKind::*;
    match e {
        ureq::Error::Io(io) => match io.kind() {
            ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable => {
                Failure::NeverConnected
            }
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Failure::Died,
            _ => Failure::Other,
        },
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound => Failure::NeverConnected,
        ureq::Error::Protocol(_) => Failure::Died,
        _ => Failure::Other,
    }
}

/// Whether a failed attempt may be sent to another target: only if no byte of the client's
/// body was consumed (it is streamed, never held, so it cannot be sent twice), and either
/// no connection was made, or the connection died before any byte of answer and the method
/// is idempotent (a non-idempotent request that reached the target may have been acted
/// on, so it gets the 502). Timeouts after connecting are never retried.
fn may_retry(e: &ureq::Error, method: &str, body_read: u64) -> bool {
    body_read == 0
        && match failure(e) {
            Failure::NeverConnected => true,
            Failure::Died => is_idempotent(method),
            Failure::Other => false,
        }
}

fn upstream_error(e: ureq::Error) -> Error {
    match e {
        ureq::Error::Timeout(_) => Error::UpstreamTimeout,
        ureq::Error::Io(ref io) if io.kind() == io::ErrorKind::TimedOut => Error::UpstreamTimeout,
        ureq::Error::Io(ref io) if io.kind() == io::ErrorKind::WouldBlock => Error::UpstreamTimeout,
        other => Error::UpstreamUnreachable(other.to_string()),
    }
}

/// The client's body as read by ureq, stopped at the body limit, so a chunked upload
/// cannot exceed it either. What has passed is the `RequestBody`'s own count.
struct Limited<'a, 'b> {
    inner: &'a mut RequestBody<'b>,
    max: u64,
}

impl Read for Limited<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.max.saturating_sub(self.inner.bytes_read());
        if left == 0 {
            // Probe one byte past the limit: a body of exactly `max` bytes is fine.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!(
                    "request body over {} bytes",
                    self.max
                ))),
            };
        }
        let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.inner.read(&mut buf[..cap])
    }
}

/// A ureq agent set up for proxying: no redirects followed, 4xx/5xx are answers not
/// errors, no proxy from the environment, no decompression or default headers added,
/// timeouts from the config. `idle`: idle keep-alive connections kept per upstream host
/// (twice that in all); 0 gives an agent that opens a new connection every time.
fn agent_with_idle(cfg: &Config, idle: usize) -> ureq::Agent {
    use ureq::config::AutoHeaderValue;
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(AutoHeaderValue::None)
        .accept(AutoHeaderValue::None)
        .accept_encoding(AutoHeaderValue::None)
        .allow_non_standard_methods(true)
        .max_idle_connections(idle * 2)
        .max_idle_connections_per_host(idle)
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_recv_response(Some(cfg.upstream_timeout))
        .timeout_per_read(Some(cfg.upstream_timeout))
        .build();
    config.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_requests_the_target_never_got_or_could_repeat_go_to_another_target() {
        let io = |k: io::ErrorKind| ureq::Error::Io(io::Error::from(k));
        let refused = io(io::ErrorKind::ConnectionRefused);
        let reset = io(io::ErrorKind::ConnectionReset);
        assert!(may_retry(&refused, "POST", 0), "never sent: any method");
        assert!(
            !may_retry(&refused, "POST", 10),
            "a body already read cannot be resent"
        );
        assert!(may_retry(&reset, "GET", 0) && may_retry(&reset, "DELETE", 0));
        assert!(
            !may_retry(&reset, "POST", 0),
            "a POST that reached the target is not repeated"
        );
        assert!(may_retry(
            &ureq::Error::Timeout(ureq::Timeout::Connect),
            "PATCH",
            0
        ));
        assert!(!may_retry(
            &ureq::Error::Timeout(ureq::Timeout::RecvResponse),
            "GET",
            0
        ));
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let out = end_to_end(
            &h(&[
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("X-Api-Key", "secret"),
                ("Accept", "*/*"),
            ]),
            &["x-api-key"],
        );
        assert_eq!(
            out,
            h(&[
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Accept", "*/*")
            ])
        );
    }

    #[test]
    fn forwarding_headers_append_to_what_the_client_sent() {
        let out = forwarding_headers(
            &h(&[
                ("Host", "api.example.com"),
                ("X-Forwarded-For", "10.0.0.1"),
                ("Via", "1.0 edge"),
            ]),
            "127.0.0.1",
            "http",
        );
        assert_eq!(
            out,
            h(&[
                ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "api.example.com"),
                ("via", "1.0 edge, 1.1 tollgate"),
            ])
        );
        let bare = forwarding_headers(&[], "::1", "https");
        assert_eq!(bare[1], ("x-forwarded-proto".into(), "https".into()));
        assert_eq!(bare[0], ("x-forwarded-for".into(), "::1".into()));
    }

    #[test]
    fn upstream_url_keeps_path_and_query_verbatim() {
        assert_eq!(
            upstream_url("http://h:1/", "/a%2Fb/c", Some("x=1&x=2&y=&z=%20+")),
            "http://h:1/a%2Fb/c?x=1&x=2&y=&z=%20+"
        );
        assert_eq!(upstream_url("http://h/base", "/a", None), "http://h/base/a");
        assert_eq!(upstream_url("http://h", "/a", Some("")), "http://h/a?");
    }
}
