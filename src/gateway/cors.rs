//! CORS per route: the preflight phase, answered before auth because a browser's preflight
//! carries no key, and the `Access-Control-*` headers of actual answers. The policy is the
//! route's (`store::routes::CorsPolicy`); the gateway is its only source on a CORS route, so
//! an upstream's own `Access-Control-*` headers are dropped there.

use super::routes::RouteTable;
use super::Trace;
use crate::config::CORS_EXPOSED_BY_DEFAULT;
use crate::error::Error;
use crate::http::{Ctx, Reply};
use crate::store::routes::{CorsPolicy, Route};

/// The headers that carry a key (`gateway/auth.rs`): always allowed on a CORS route, or a
/// browser could never send the key the route requires.
const KEY_HEADERS: &[&str] = &["x-api-key", "authorization"];

/// A CORS preflight (Fetch standard §3.2.2): `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. A plain `OPTIONS` is an ordinary request.
pub fn is_preflight(ctx: &Ctx) -> bool {
    ctx.method == "OPTIONS"
        && ctx.header("Origin").is_some()
        && ctx.header("Access-Control-Request-Method").is_some()
}

/// Answers a preflight from the CORS routes of any owner that best match the host and path
/// (`RouteTable::cors_candidates`); when several tie, the first by id whose policy allows
/// the origin answers. `None`: no CORS route matches, and the request goes on like any
/// other (so, keyless, it gets 401 as before). Never counted; logged with the route's id.
pub fn preflight(
    table: &RouteTable,
    host: Option<&str>,
    ctx: &Ctx,
    trace: &mut Trace,
) -> Option<Reply> {
    let candidates = table.cors_candidates(host, &ctx.path);
    let first = candidates.first()?;
    let origin = ctx.header("Origin").unwrap_or_default();
    let Some((route, policy)) = candidates
        .iter()
        .find_map(|r| Some((r, r.cors.as_ref()?)).filter(|(_, p)| origin_allowed(p, origin)))
    else {
        // 403 rather than a bare 204: the browser fails the same way, and a person
        // debugging with curl reads why.
        trace.route_id = Some(first.id);
        let mut reply = Reply::error(&Error::CorsOriginNotAllowed);
        reply.header("Vary", "Origin");
        return Some(reply);
    };
    trace.route_id = Some(route.id);
    let mut reply = Reply::empty(204);
    reply.header("Vary", "Origin");
    allow_origin(policy, origin, &mut reply);
    let requested_method = ctx
        .header("Access-Control-Request-Method")
        .unwrap_or_default();
    let methods = if !policy.allowed_methods.is_empty() {
        policy.allowed_methods.join(", ")
    } else if let Some(m) = &route.methods {
        m.join(", ")
    } else if is_token(requested_method) {
        requested_method.to_string()
    } else {
        String::new()
    };
    if !methods.is_empty() {
        reply.header("Access-Control-Allow-Methods", methods);
    }
    reply.header("Access-Control-Allow-Headers", allowed_headers(policy, ctx));
    if let Some(secs) = policy.max_age_secs {
        reply.header("Access-Control-Max-Age", secs.to_string());
    }
    Some(reply)
}

/// The configured headers, else the ones the preflight asks for (when they are all header
/// names); the key headers either way.
fn allowed_headers(policy: &CorsPolicy, ctx: &Ctx) -> String {
    let mut names: Vec<String> = if policy.allowed_headers.is_empty() {
        let asked = ctx
            .header("Access-Control-Request-Headers")
            .unwrap_or_default();
        let asked: Vec<String> = asked
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if asked.iter().all(|h| is_token(h)) {
            asked
        } else {
            Vec::new()
        }
    } else {
        policy.allowed_headers.clone()
    };
    for k in KEY_HEADERS {
        if !names.iter().any(|n| n == k) {
            names.push((*k).to_string());
        }
    }
    names.join(", ")
}

/// The CORS headers of an actual answer on `route` (upstream's or the gateway's own, once
/// the route is known): nothing on a route without CORS; otherwise the upstream's
/// `Access-Control-*` dropped, `Vary: Origin` (the answer depends on it), and, for an
/// allowed origin, the origin echoed with the exposed headers.
pub fn add_headers(route: &Route, ctx: &Ctx, reply: &mut Reply) {
    let Some(policy) = &route.cors else {
        return;
    };
    reply.headers.retain(|(name, _)| {
        !name
            .get(..15)
            .is_some_and(|p| p.eq_ignore_ascii_case("access-control-"))
    });
    reply.header("Vary", "Origin");
    let Some(origin) = ctx.header("Origin").filter(|o| origin_allowed(policy, o)) else {
        return;
    };
    allow_origin(policy, origin, reply);
    let mut exposed: Vec<&str> = CORS_EXPOSED_BY_DEFAULT.to_vec();
    exposed.extend(policy.expose_headers.iter().map(String::as_str));
    reply.header("Access-Control-Expose-Headers", exposed.join(", "));
}

/// The origin echoed, never `*`: with credentials `*` is refused by browsers, and echoing
/// keeps one shape for both (the caller adds `Vary: Origin`, which keeps caches right).
fn allow_origin(policy: &CorsPolicy, origin: &str, reply: &mut Reply) {
    reply.header("Access-Control-Allow-Origin", origin);
    if policy.allow_credentials {
        reply.header("Access-Control-Allow-Credentials", "true");
    }
}

/// Whether `origin` (as the browser sent it) is allowed: `*`, an exact origin, or
/// `scheme://*.host[:port]`, which matches subdomains of any depth of `host` with the same
/// scheme and port, never `host` itself. Compared case-insensitively.
pub fn origin_allowed(policy: &CorsPolicy, origin: &str) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    policy.allowed_origins.iter().any(|p| {
        if p == "*" || *p == origin {
            return true;
        }
        let Some((scheme, rest)) = p.split_once("://") else {
            return false;
        };
        let Some(suffix) = rest.strip_prefix('*') else {
            return false;
        };
        origin
            .strip_prefix(scheme)
            .and_then(|o| o.strip_prefix("://"))
            .and_then(|o| o.strip_suffix(suffix))
            .is_some_and(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            })
    })
}

/// An HTTP token (RFC 9110 §5.6.2), as method and header names are.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Request;

    fn policy(origins: &[&str]) -> CorsPolicy {
        CorsPolicy {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsPolicy::default()
        }
    }

    #[test]
    fn origins_match_exactly_or_by_a_subdomain_wildcard() {
        let p = policy(&["https://app.example.com", "https://*.example.org:8443"]);
        assert!(origin_allowed(&p, "https://app.example.com"));
        assert!(origin_allowed(&p, "HTTPS://APP.example.com"));
        assert!(!origin_allowed(&p, "http://app.example.com"));
        assert!(!origin_allowed(&p, "https://app.example.com:444"));
        assert!(origin_allowed(&p, "https://a.example.org:8443"));
        assert!(origin_allowed(&p, "https://a.b.example.org:8443"));
        assert!(!origin_allowed(&p, "https://example.org:8443"));
        assert!(!origin_allowed(&p, "https://.example.org:8443"));
        assert!(!origin_allowed(&p, "https://a.example.org"));
        assert!(!origin_allowed(&p, "https://evil.com/x.example.org:8443"));
        assert!(!origin_allowed(&p, "https://evilexample.org:8443"));
        assert!(!origin_allowed(&p, "null"));
        assert!(origin_allowed(&policy(&["*"]), "null"));
    }

    #[test]
    fn only_preflights_are_answered_before_auth() {
        let rq = |m, h: &[(&str, &str)]| Request::fake(m, "/a", h, b"").ctx;
        let both = [
            ("Origin", "https://a.test"),
            ("Access-Control-Request-Method", "GET"),
        ];
        assert!(is_preflight(&rq("OPTIONS", &both)));
        assert!(!is_preflight(&rq("GET", &both)));
        assert!(!is_preflight(&rq("OPTIONS", &both[..1])));
    }

    #[test]
    fn headers_echo_the_request_when_none_are_configured_and_always_allow_the_key() {
        let ctx = |asked: &str| {
            Request::fake(
                "OPTIONS",
                "/a",
                &[("Access-Control-Request-Headers", asked)],
                b"",
            )
            .ctx
        };
        let open = policy(&["*"]);
        assert_eq!(
            allowed_headers(&open, &ctx("X-Api-Key, Content-Type")),
            "x-api-key, content-type, authorization"
        );
        assert_eq!(
            allowed_headers(&open, &ctx("a b")),
            "x-api-key, authorization"
        );
        let set = CorsPolicy {
            allowed_headers: vec!["content-type".into()],
            ..open
        };
        assert_eq!(
            allowed_headers(&set, &ctx("x-other")),
            "content-type, x-api-key, authorization"
        );
    }

    #[test]
    fn upstream_cors_headers_are_replaced_on_a_cors_route_only() {
        let ctx = Request::fake("GET", "/a", &[("Origin", "https://a.test")], b"").ctx;
        let upstream = || {
            let mut r = Reply::empty(200);
            r.header("access-control-allow-origin", "*");
            r
        };
        let plain = Route::default();
        let mut r = upstream();
        add_headers(&plain, &ctx, &mut r);
        assert_eq!(r.headers.len(), 1);
        let cors = Route {
            cors: Some(policy(&["https://a.test"])),
            ..Route::default()
        };
        let mut r = upstream();
        add_headers(&cors, &ctx, &mut r);
        let get = |n: &str| {
            r.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("Access-Control-Allow-Origin"), ["https://a.test"]);
        assert!(get("Access-Control-Expose-Headers")[0].starts_with("RateLimit, "));
        assert!(get("Access-Control-Allow-Credentials").is_empty());
    }
}
