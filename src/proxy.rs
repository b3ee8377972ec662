//! The route table (held in memory, reloaded when the admin API changes it), prefix matching
//! on path-segment boundaries, and forwarding with ureq: method, path, query and body
//! unchanged, end-to-end headers both ways, the upstream's status and body streamed back.

use crate::breaker;
use crate::error::{Error, Result};
use crate::server::{App, Body, Ctx, Reply, Trace};
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, RwLock};
use tiny_http::Request;
use ureq::http;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Route {
    pub id: i64,
    pub user_id: i64,
    pub prefix: String,
    pub target_url: String,
    /// Only requests whose `Host` (lower-case, port removed) is this; `None` for any host.
    pub host: Option<String>,
    /// Forward `/users/7` as `/7` for prefix `/users`.
    pub strip_prefix: bool,
    /// Send the client's `Host` upstream instead of the target's.
    pub preserve_host: bool,
    /// Allowed methods (upper-case); `None` allows all.
    pub methods: Option<Vec<String>>,
    pub connect_timeout_ms: Option<i32>,
    pub read_timeout_ms: Option<i32>,
    /// Whole exchange, response body included.
    pub timeout_ms: Option<i32>,
    pub max_body_bytes: Option<i64>,
    /// Whether upstream 5xx answers count as failures for the circuit breaker.
    pub breaker_on_5xx: bool,
}

/// The columns `Route::from_row` reads, in order.
pub const ROUTE_SELECT: &str = "id, user_id, prefix, target_url, host, strip_prefix, \
    preserve_host, methods, connect_timeout_ms, read_timeout_ms, timeout_ms, max_body_bytes, \
    breaker_on_5xx";

impl Route {
    pub fn from_row(r: &postgres::Row) -> Route {
        Route {
            id: r.get(0),
            user_id: r.get(1),
            prefix: r.get(2),
            target_url: r.get(3),
            host: r.get(4),
            strip_prefix: r.get(5),
            preserve_host: r.get(6),
            methods: r.get(7),
            connect_timeout_ms: r.get(8),
            read_timeout_ms: r.get(9),
            timeout_ms: r.get(10),
            max_body_bytes: r.get(11),
            breaker_on_5xx: r.get(12),
        }
    }

    pub fn allows(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == method))
    }

    /// The path sent upstream: as received, or without the prefix (`/` if nothing is left).
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix || self.prefix == "/" {
            return path.into();
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some("") => "/".into(),
            Some(rest) => rest.into(),
            None => path.into(),
        }
    }
}

/// Routes by owner, each owner's list longest prefix first, swapped whole on reload so a
/// request never sees half a change.
#[derive(Default)]
pub struct RouteTable {
    by_user: RwLock<Arc<HashMap<i64, Vec<Arc<Route>>>>>,
}

impl RouteTable {
    /// The owner's route for this host whose prefix is the longest match for `path`; routes
    /// bound to the request's host win over host-less ones.
    pub fn find(&self, user_id: i64, host: Option<&str>, path: &str) -> Option<Arc<Route>> {
        self.snapshot()
            .get(&user_id)?
            .iter()
            .find(|r| {
                r.host.as_deref().is_none_or(|h| Some(h) == host) && prefix_matches(&r.prefix, path)
            })
            .cloned()
    }

    /// The current table; the lock is held only to clone the `Arc`, never while matching.
    fn snapshot(&self) -> Arc<HashMap<i64, Vec<Arc<Route>>>> {
        self.by_user
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, routes: Vec<Route>) {
        let mut by_user: HashMap<i64, Vec<Arc<Route>>> = HashMap::new();
        for r in routes {
            by_user.entry(r.user_id).or_default().push(Arc::new(r));
        }
        for list in by_user.values_mut() {
            list.sort_by_key(|r| std::cmp::Reverse((r.host.is_some(), r.prefix.len())));
        }
        *self.by_user.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_user);
    }

    /// Every route's prefix by id, for the `route` label of `/metrics`.
    pub fn prefixes(&self) -> HashMap<i64, String> {
        self.snapshot()
            .values()
            .flatten()
            .map(|r| (r.id, r.prefix.clone()))
            .collect()
    }

    /// Re-reads every route from the database.
    pub fn reload(&self, pool: &crate::db::Pool) -> Result<usize> {
        let sql = format!("SELECT {ROUTE_SELECT} FROM routes");
        let rows = pool.get()?.query(sql.as_str(), &[])?;
        let n = rows.len();
        self.replace(rows.iter().map(Route::from_row).collect());
        Ok(n)
    }
}

/// `/users` matches `/users`, `/users/` and `/users/7`, never `/usersX`; `/` matches all.
/// Prefixes are stored without a trailing slash (see `admin::normalize_prefix`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
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

/// The request's `Host`, lower-cased and without its port, as route hosts are stored.
pub fn request_host(ctx: &Ctx) -> Option<String> {
    let h = ctx.header("Host")?.trim();
    let name = if h.starts_with('[') {
        h.split_inclusive(']').next().unwrap_or(h)
    } else {
        h.rsplit_once(':').map_or(h, |(name, _)| name)
    };
    Some(name.to_ascii_lowercase())
}

/// The body limit for this route: its own, or the gateway's default.
pub fn max_body(app: &App, route: &Route) -> u64 {
    route
        .max_body_bytes
        .map_or(app.cfg.max_body_bytes, |n| n as u64)
}

/// Forwards the request to the route's upstream and returns its answer, body streamed.
pub fn forward(
    app: &App,
    route: &Route,
    rq: &mut Request,
    ctx: &Ctx,
    credential_header: &str,
    trace: &mut Trace,
) -> Result<Reply> {
    let url = upstream_url(
        &route.target_url,
        &route.upstream_path(&ctx.path),
        ctx.query.as_deref(),
    );
    let client_headers: Vec<(String, String)> = ctx
        .headers
        .iter()
        .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
        .collect();
    // The gateway's credential never travels on: `x-api-key` always, and `Authorization`
    // whenever it carries a gateway key (even when `x-api-key` was the one used).
    let key_in_authorization = credential_header.eq_ignore_ascii_case("authorization")
        || client_headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("authorization") && crate::auth::bearer_key(v).is_some()
        });
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
    let mut headers = end_to_end(&client_headers, &replaced);
    headers.extend(forwarding_headers(
        &client_headers,
        &ctx.peer_ip,
        &ctx.proto,
    ));
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
    let builder = || {
        headers.iter().fold(
            http::Request::builder()
                .method(ctx.method.as_str())
                .uri(url.as_str()),
            |b, (k, v)| b.header(k, v),
        )
    };
    let upstream = breaker::upstream_of(&route.target_url);
    let permit = app.breakers.admit(&upstream)?;
    let max = max_body(app, route);
    let mut body = Limited {
        inner: rq.as_reader(),
        left: max,
        max,
        read: 0,
    };
    let unforwardable = |e: http::Error| Error::BadRequest(format!("cannot forward: {e}"));
    let has_body = ctx.content_length.is_some_and(|n| n > 0) || ctx.chunked;
    // Two calls rather than one `SendBody` variable: `SendBody` is invariant over its
    // lifetime, so `none()` and a borrowed reader cannot share a binding.
    let result = if has_body {
        let request = builder()
            .body(ureq::SendBody::from_reader(&mut body))
            .map_err(unforwardable)?;
        app.agent.run(with_timeouts(app, route, request))
    } else {
        let send = || -> Result<_> {
            let request = builder()
                .body(ureq::SendBody::none())
                .map_err(unforwardable)?;
            Ok(app.agent.run(with_timeouts(app, route, request)))
        };
        match send()? {
            // A pooled keep-alive connection the upstream had already closed fails before
            // any byte of answer; a safe method without a body is retried once (RFC 9110
            // §9.2.2) on a fresh connection: another idle one from the pool may have been
            // closed by the upstream just the same.
            Err(e) if is_stale_connection(&e) && is_idempotent(&ctx.method) => {
                log::debug!(
                    "retrying {} {} after a dead pooled connection: {e}",
                    ctx.method,
                    url
                );
                let request = builder()
                    .body(ureq::SendBody::none())
                    .map_err(unforwardable)?;
                app.fresh_agent.run(with_timeouts(app, route, request))
            }
            other => other,
        }
    };
    trace.bytes_in = body.read;
    if body.left == 0 && body.read > max {
        return Err(Error::PayloadTooLarge(max));
    }
    let failed = match &result {
        // An error while sending the client's own body is the client's, not the upstream's.
        Err(ureq::Error::Io(_)) if has_body => false,
        Err(_) => true,
        Ok(r) => route.breaker_on_5xx && r.status().is_server_error(),
    };
    app.breakers.finish(&permit, failed);
    let response = result.map_err(upstream_error)?;
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
                _permit: permit,
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

/// Applies a route's own timeouts, when it has any, on top of the agent's.
fn with_timeouts<S: ureq::AsSendBody>(
    app: &App,
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
    let mut cfg = app.agent.configure_request(request);
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

/// The upstream's body; holds the upstream slot until the response has been relayed.
struct Guarded {
    inner: ureq::BodyReader<'static>,
    _permit: breaker::Permit,
}

impl Read for Guarded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Errors that mean the connection died under us rather than that the upstream refused.
fn is_stale_connection(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        ureq::Error::Protocol(_) => true,
        _ => false,
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

/// The client's body as read by ureq: counts what passed and stops at the body limit, so
/// a chunked upload cannot exceed it either.
struct Limited<'a> {
    inner: &'a mut dyn Read,
    left: u64,
    max: u64,
    read: u64,
}

impl Read for Limited<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Probe one byte past the limit: a body of exactly `max` bytes is fine.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.read += 1;
                    Err(io::Error::other(format!(
                        "request body over {} bytes",
                        self.max
                    )))
                }
            };
        }
        let cap = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

/// A ureq agent set up for proxying: no redirects followed, 4xx/5xx are answers not
/// errors, no proxy from the environment, no decompression or default headers added,
/// pooled keep-alive connections sized to the worker count, timeouts from the config.
pub fn agent(cfg: &crate::config::Config) -> ureq::Agent {
    agent_with_idle(cfg, cfg.workers)
}

/// The same agent without a pool: every request on its own new connection (the retry after
/// a dead pooled one).
pub fn fresh_agent(cfg: &crate::config::Config) -> ureq::Agent {
    agent_with_idle(cfg, 0)
}

/// `idle`: idle connections kept per upstream host (twice that in all).
fn agent_with_idle(cfg: &crate::config::Config, idle: usize) -> ureq::Agent {
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
    fn prefix_matches_only_on_segment_boundaries() {
        assert!(prefix_matches("/users", "/users"));
        assert!(prefix_matches("/users", "/users/"));
        assert!(prefix_matches("/users", "/users/7"));
        assert!(!prefix_matches("/users", "/usersX"));
        assert!(!prefix_matches("/users", "/user"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api/v2", "/api/v2/x"));
        assert!(!prefix_matches("/api/v2", "/api/v20"));
    }

    #[test]
    fn longest_prefix_wins_and_owners_are_separate() {
        let t = RouteTable::default();
        let r = |id, user_id, prefix: &str, host: Option<&str>| Route {
            id,
            user_id,
            prefix: prefix.into(),
            target_url: "http://u".into(),
            host: host.map(str::to_string),
            ..Route::default()
        };
        t.replace(vec![
            r(1, 1, "/api", None),
            r(2, 1, "/api/v2", None),
            r(3, 2, "/other", None),
            r(4, 1, "/", Some("acme.example.com")),
        ]);
        assert_eq!(t.find(1, None, "/api/v2/x").unwrap().id, 2);
        assert_eq!(t.find(1, None, "/api/v1").unwrap().id, 1);
        assert!(t.find(1, None, "/other").is_none());
        assert_eq!(t.find(2, None, "/other/1").unwrap().id, 3);
        // The tenant's host route wins over host-less ones, and only on that host.
        assert_eq!(
            t.find(1, Some("acme.example.com"), "/api/v2").unwrap().id,
            4
        );
        assert_eq!(t.find(1, Some("other.example.com"), "/api").unwrap().id, 1);
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
    fn strip_prefix_forwards_the_rest_of_the_path() {
        let r = Route {
            prefix: "/users".into(),
            strip_prefix: true,
            ..Route::default()
        };
        assert_eq!(r.upstream_path("/users/7"), "/7");
        assert_eq!(r.upstream_path("/users"), "/");
        let keep = Route {
            prefix: "/users".into(),
            ..Route::default()
        };
        assert_eq!(keep.upstream_path("/users/7"), "/users/7");
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

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Route prefixes as `admin::normalize_prefix` stores them: `/` or `/seg(/seg)*`.
        fn prefix() -> impl Strategy<Value = String> {
            prop_oneof![
                1 => Just("/".to_string()),
                6 => prop::collection::vec("[a-c]{1,3}", 1..4).prop_map(|s| format!("/{}", s.join("/"))),
            ]
        }

        /// Request paths that often share a prefix's letters, with or without a boundary.
        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec("[a-c]{0,4}", 0..6).prop_map(|s| format!("/{}", s.join("/")))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// A prefix matches exactly itself and the paths below it on a segment boundary.
            #[test]
            fn prefixes_match_only_on_segment_boundaries(p in prefix(), path in path()) {
                let expected = p == "/"
                    || path == p
                    || path.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/'));
                prop_assert_eq!(prefix_matches(&p, &path), expected);
                if p != "/" {
                    let beside = format!("{p}x");
                    prop_assert!(!prefix_matches(&p, &beside));
                }
            }

            /// The table picks what a brute-force search picks: the owner's matching routes,
            /// host-bound ones first, then the longest prefix.
            #[test]
            fn the_table_picks_the_longest_matching_prefix_of_the_owner(
                routes in prop::collection::btree_set((0i64..3, prefix(), any::<bool>()), 0..12),
                user in 0i64..3,
                bound_host in any::<bool>(),
                path in path(),
            ) {
                let host = bound_host.then_some("api.test");
                let mut seen = std::collections::HashSet::new();
                let routes: Vec<Route> = routes
                    .into_iter()
                    // (owner, prefix, host) is unique, as the routes table's constraint says.
                    .filter(|(u, p, h)| seen.insert((*u, p.clone(), *h)))
                    .enumerate()
                    .map(|(i, (u, p, h))| Route {
                        id: i as i64,
                        user_id: u,
                        prefix: p,
                        host: h.then(|| "api.test".to_string()),
                        ..Route::default()
                    })
                    .collect();
                let table = RouteTable::default();
                table.replace(routes.clone());
                let best = routes
                    .iter()
                    .filter(|r| r.user_id == user)
                    .filter(|r| r.host.is_none() || r.host.as_deref() == host)
                    .filter(|r| prefix_matches(&r.prefix, &path))
                    .max_by_key(|r| (r.host.is_some(), r.prefix.len()));
                let found = table.find(user, host, &path);
                prop_assert_eq!(found.map(|r| r.id), best.map(|r| r.id));
            }

            /// After normalisation, a matched route's upstream path stays under the route:
            /// stripped or not, it is a path with no `.`/`..` segment, even for an upstream
            /// that decodes `%2F` into a separator.
            #[test]
            fn a_normalised_path_cannot_leave_its_route_upstream(
                p in prefix(),
                raw in prop::collection::vec(
                    prop_oneof!["[a-c]{0,3}", Just("..".to_string()), Just("%2e%2e".to_string()),
                        Just("%2F".to_string()), Just(".".to_string()), Just("".to_string())],
                    0..6,
                ),
                strip in any::<bool>(),
            ) {
                let raw = format!("{p}/{}", raw.join("/"));
                let Ok(path) = crate::hostile::normalize(&raw) else { return Ok(()) };
                if !prefix_matches(&p, &path) {
                    return Ok(());
                }
                let route = Route { prefix: p.clone(), strip_prefix: strip, ..Route::default() };
                let up = route.upstream_path(&path);
                prop_assert!(up.starts_with('/'));
                prop_assert!(!crate::hostile::tests::has_dot_segment(&up), "{}", up);
                if !strip {
                    prop_assert!(prefix_matches(&p, &up));
                }
            }
        }
    }
}
