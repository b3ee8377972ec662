//! `/admin/routes`: create, list, read, change and delete routes, and the validation of
//! every route field. The route table is swapped before the reply leaves.

use super::keys::cidr_strings;
use super::paged;
use crate::config::{CORS_MAX_AGE_SECS, CORS_MAX_LIST};
use crate::error::{Error, Result};
use crate::gateway::cors::is_token;
use crate::gateway::routes::RouteTable;
use crate::http::{target, Ctx, Reply};
use crate::operator::input::{self, id, required, string};
use crate::operator::{is_operator_path, ts};
use crate::store::routes::{self, CorsPolicy, Route, RouteRecord};
use crate::store::Pool;
use serde_json::{json, Map, Value};

fn route_json(r: &RouteRecord) -> Value {
    let route = &r.route;
    json!({
        "id": route.id,
        "userId": route.user_id,
        "prefix": route.prefix,
        "targetUrl": route.target_url,
        "host": route.host,
        "stripPrefix": route.strip_prefix,
        "preserveHost": route.preserve_host,
        "methods": route.methods,
        "connectTimeoutMs": route.connect_timeout_ms,
        "readTimeoutMs": route.read_timeout_ms,
        "timeoutMs": route.timeout_ms,
        "maxBodyBytes": route.max_body_bytes,
        "breakerOn5xx": route.breaker_on_5xx,
        "identityHeaders": route.identity_headers,
        // The secret itself is never shown, only whether there is one.
        "hasSigningSecret": route.signing_secret.is_some(),
        "allowCidrs": cidr_strings(&route.ip_rules.allow),
        "denyCidrs": cidr_strings(&route.ip_rules.deny),
        "cors": route.cors.as_ref().map(CorsPolicy::to_json),
        "createdAt": ts(r.created_at),
        "updatedAt": ts(r.updated_at),
    })
}

/// A route prefix: starts with `/`, no query, fragment, whitespace, `.`/`..` or empty
/// segments, not a gateway path; stored without a trailing slash so `/users/` and `/users`
/// are the same route.
pub fn normalize_prefix(p: &str) -> Result<String> {
    let bad = |m: &str| Err(Error::field("prefix", m.to_string()));
    if !p.starts_with('/') {
        return bad("must start with /");
    }
    if p.len() > 512 {
        return bad("must be at most 512 characters");
    }
    if p.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return bad("must not contain spaces, control characters, ? or #");
    }
    let trimmed = if p == "/" {
        "/"
    } else {
        p.trim_end_matches('/')
    };
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    if trimmed != "/"
        && trimmed[1..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("must not contain empty, . or .. segments");
    }
    // Requests are matched after `target::normalize`; a prefix it would rewrite
    // (`/%61pi`, `/a\\b`, `/a%zz`) could never match, or would match another spelling.
    if target::normalize(trimmed).ok().as_deref() != Some(trimmed) {
        return bad("must be written as requests are matched: no backslash, no %-escape of a letter, digit or -._~, no malformed %-escape");
    }
    if is_operator_path(trimmed) {
        return bad("is reserved for the gateway's own endpoints");
    }
    Ok(trimmed.to_string())
}

/// An absolute `http` or `https` URL with a host and no query or fragment.
pub fn normalize_target(t: &str) -> Result<String> {
    let bad = |m: &str| Err(Error::field("targetUrl", m.to_string()));
    if t.len() > 2048 {
        return bad("must be at most 2048 characters");
    }
    let uri: ureq::http::Uri = match t.parse() {
        Ok(u) => u,
        Err(_) => return bad("must be an absolute http(s) URL"),
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return bad("must start with http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return bad("must name a host");
    }
    if uri.query().is_some() || t.contains('#') {
        return bad("must not have a query or fragment");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return bad("must not contain credentials");
    }
    Ok(t.trim_end_matches('/').to_string())
}

/// A route `host`: a DNS name (letters, digits, `-`, `.`), stored lower-case, no port.
pub fn normalize_host(h: &str) -> Result<String> {
    let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(h)
    } else {
        Err(Error::field(
            "host",
            "must be a DNS name such as acme.example.com",
        ))
    }
}

/// Allowed `methods`: HTTP method tokens, stored upper-case without duplicates.
fn methods(v: &Value) -> Result<Option<Vec<String>>> {
    let bad = || Error::field("methods", "must be a non-empty array of HTTP methods");
    let list = match v {
        Value::Null => return Ok(None),
        Value::Array(a) if !a.is_empty() => a,
        _ => return Err(bad()),
    };
    let mut out: Vec<String> = Vec::new();
    for m in list {
        let m = m.as_str().ok_or_else(bad)?.trim().to_ascii_uppercase();
        let token = !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_alphabetic());
        if !token {
            return Err(bad());
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(Some(out))
}

fn flag(v: &Value, field: &'static str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        _ => Err(Error::field(field, "must be true or false")),
    }
}

/// A nullable whole number within `1..=max` (null clears it back to the default).
fn limit_field(v: &Value, field: &'static str, max: i64) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .filter(|n| (1..=max).contains(n))
            .map(Some)
            .ok_or_else(|| Error::field(field, format!("must be a whole number from 1 to {max}"))),
        _ => Err(Error::field(field, "must be a number or null")),
    }
}

/// What a route body may set (and, creating, `userId`).
const FIELDS: &[&str] = &[
    "prefix",
    "targetUrl",
    "host",
    "stripPrefix",
    "preserveHost",
    "breakerOn5xx",
    "methods",
    "connectTimeoutMs",
    "readTimeoutMs",
    "timeoutMs",
    "maxBodyBytes",
    "identityHeaders",
    "signingSecret",
    "allowCidrs",
    "denyCidrs",
    "cors",
];

/// What a route's `cors` object may set.
const CORS_FIELDS: &[&str] = &[
    "allowedOrigins",
    "allowedMethods",
    "allowedHeaders",
    "exposeHeaders",
    "allowCredentials",
    "maxAgeSecs",
];

/// Longest per-route timeout: an hour covers long polls and big downloads.
const MAX_ROUTE_TIMEOUT_MS: i64 = 3_600_000;
/// Largest per-route body limit (64 GiB); bodies are streamed, never held.
const MAX_ROUTE_BODY_BYTES: i64 = 64 << 30;
/// Shortest signing secret: 32 characters of printable ASCII carry well over 128 bits when
/// random, and a short one set by hand would be guessable from signed requests.
const MIN_SIGNING_SECRET: usize = 32;
const MAX_SIGNING_SECRET: usize = 256;

/// A route's `signingSecret`: printable ASCII without spaces (it is the HMAC key's bytes,
/// so upstreams in any language read it the same), 32 to 256 characters; `null` clears.
fn signing_secret(v: &Value) -> Result<Option<String>> {
    let bad = || {
        Error::field(
            "signingSecret",
            format!(
                "must be {MIN_SIGNING_SECRET} to {MAX_SIGNING_SECRET} printable ASCII characters without spaces, or null"
            ),
        )
    };
    match v {
        Value::Null => Ok(None),
        Value::String(s)
            if (MIN_SIGNING_SECRET..=MAX_SIGNING_SECRET).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(s.clone()))
        }
        _ => Err(bad()),
    }
}

/// A list of at most `CORS_MAX_LIST` strings, each checked and normalised by `one`
/// (`None`: refused), without duplicates; absent or null is empty.
fn cors_list(
    v: Option<&Value>,
    field: &'static str,
    what: &str,
    one: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let bad = || {
        Error::field(
            field,
            format!("must be an array of at most {CORS_MAX_LIST} {what}"),
        )
    };
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= CORS_MAX_LIST => a,
        _ => return Err(bad()),
    };
    let mut out: Vec<String> = Vec::new();
    for s in list {
        let s = one(s.as_str().ok_or_else(bad)?.trim()).ok_or_else(bad)?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// A CORS origin: `*`, or `scheme://host[:port]` (lower-cased, no path), where the host may
/// start with one `*.` label wildcard.
fn cors_origin(o: &str) -> Option<String> {
    if o == "*" {
        return Some(o.into());
    }
    let o = o.to_ascii_lowercase();
    let (scheme, rest) = o.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    // An IPv6 literal keeps its colons inside the brackets.
    let split_at = rest.find(']').map_or(0, |i| i + 1);
    let (host, port) = match rest[split_at..].find(':') {
        Some(i) => (&rest[..split_at + i], Some(&rest[split_at + i + 1..])),
        None => (rest, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let name = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = normalize_host(name).is_ok_and(|h| h == name)
        || (host == name
            && host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok()));
    (scheme_ok && port_ok && host_ok).then_some(o)
}

/// A route's `cors` policy; `null` removes it.
fn cors(v: &Value) -> Result<Option<CorsPolicy>> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(Error::field("cors", "must be an object or null")),
    };
    input::only(obj, CORS_FIELDS).map_err(|e| match e {
        Error::InvalidField { field, message } => Error::field(format!("cors.{field}"), message),
        e => e,
    })?;
    let token = |upper: bool| {
        move |s: &str| {
            is_token(s).then(|| {
                if upper {
                    s.to_ascii_uppercase()
                } else {
                    s.to_ascii_lowercase()
                }
            })
        }
    };
    let policy = CorsPolicy {
        allowed_origins: cors_list(
            obj.get("allowedOrigins"),
            "cors.allowedOrigins",
            "origins such as https://app.example.com, https://*.example.com or *",
            cors_origin,
        )?,
        allowed_methods: cors_list(
            obj.get("allowedMethods"),
            "cors.allowedMethods",
            "HTTP methods",
            token(true),
        )?,
        allowed_headers: cors_list(
            obj.get("allowedHeaders"),
            "cors.allowedHeaders",
            "header names",
            token(false),
        )?,
        expose_headers: cors_list(
            obj.get("exposeHeaders"),
            "cors.exposeHeaders",
            "header names",
            token(false),
        )?,
        allow_credentials: flag(
            obj.get("allowCredentials").unwrap_or(&Value::Null),
            "cors.allowCredentials",
        )?,
        max_age_secs: match obj.get("maxAgeSecs") {
            None | Some(Value::Null) => None,
            Some(n) => Some(
                n.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n <= CORS_MAX_AGE_SECS)
                    .ok_or_else(|| {
                        Error::field(
                            "cors.maxAgeSecs",
                            format!("must be a whole number from 0 to {CORS_MAX_AGE_SECS}"),
                        )
                    })?,
            ),
        },
    };
    if policy.allowed_origins.is_empty() {
        return Err(Error::field(
            "cors.allowedOrigins",
            "must name at least one origin",
        ));
    }
    // Browsers refuse `*` with credentials; refusing it here says so at once.
    if policy.allow_credentials && policy.allowed_origins.iter().any(|o| o == "*") {
        return Err(Error::field(
            "cors.allowedOrigins",
            "must not contain * when allowCredentials is true",
        ));
    }
    Ok(Some(policy))
}

/// Applies the fields present in `body` to `route` (a blank one when creating, the stored
/// one when updating); absent fields keep their value, `null` resets an option.
pub fn apply_fields(route: &mut Route, body: &Map<String, Value>) -> Result<()> {
    // A route always has both: `null` cannot reset them, and is not taken as "keep".
    for field in ["prefix", "targetUrl"] {
        if body.get(field).is_some_and(Value::is_null) {
            return Err(Error::field(
                field,
                "must be a string; it cannot be cleared",
            ));
        }
    }
    if let Some(p) = string(body, "prefix", 512)? {
        route.prefix = normalize_prefix(&p)?;
    }
    if let Some(t) = string(body, "targetUrl", 2048)? {
        route.target_url = normalize_target(&t)?;
    }
    if let Some(allow) = input::cidrs(body, "allowCidrs")? {
        route.ip_rules.allow = allow;
    }
    if let Some(deny) = input::cidrs(body, "denyCidrs")? {
        route.ip_rules.deny = deny;
    }
    for (field, v) in body {
        let timeout =
            |f| Ok::<_, Error>(limit_field(v, f, MAX_ROUTE_TIMEOUT_MS)?.map(|n| n as i32));
        match field.as_str() {
            "host" => {
                route.host = match v {
                    Value::Null => None,
                    Value::String(h) => Some(normalize_host(h)?),
                    _ => return Err(Error::field("host", "must be a string or null")),
                }
            }
            "stripPrefix" => route.strip_prefix = flag(v, "stripPrefix")?,
            "preserveHost" => route.preserve_host = flag(v, "preserveHost")?,
            "breakerOn5xx" => route.breaker_on_5xx = flag(v, "breakerOn5xx")?,
            "identityHeaders" => route.identity_headers = flag(v, "identityHeaders")?,
            "signingSecret" => route.signing_secret = signing_secret(v)?,
            "cors" => route.cors = cors(v)?,
            "methods" => route.methods = methods(v)?,
            "connectTimeoutMs" => route.connect_timeout_ms = timeout("connectTimeoutMs")?,
            "readTimeoutMs" => route.read_timeout_ms = timeout("readTimeoutMs")?,
            "timeoutMs" => route.timeout_ms = timeout("timeoutMs")?,
            "maxBodyBytes" => {
                route.max_body_bytes = limit_field(v, "maxBodyBytes", MAX_ROUTE_BODY_BYTES)?
            }
            // `prefix`, `targetUrl` and the CIDR lists above; `userId` is read by `create`.
            _ => {}
        }
    }
    Ok(())
}

pub fn create(pool: &Pool, table: &RouteTable, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, &[FIELDS, &["userId"]].concat())?;
    let user_id = required(id(body, "userId")?, "userId")?;
    required(body.get("prefix").filter(|v| !v.is_null()), "prefix")?;
    required(body.get("targetUrl").filter(|v| !v.is_null()), "targetUrl")?;
    let mut route = Route {
        user_id,
        ..Route::default()
    };
    apply_fields(&mut route, body)?;
    let saved = routes::insert(pool, route)?;
    table.reload(pool)?;
    Ok(Reply::json(201, &route_json(&saved)))
}

pub fn list(pool: &Pool, ctx: &Ctx) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let user_id = input::query_id(ctx, "userId")?;
    let rows = routes::list(pool, after, user_id, limit + 1)?;
    Ok(paged(rows, limit, |r| r.route.id, route_json))
}

pub fn get(pool: &Pool, id: i64) -> Result<Reply> {
    let r = routes::get(pool, id)?.ok_or_else(|| Error::NotFound("route".into()))?;
    Ok(Reply::json(200, &route_json(&r)))
}

/// Merges the fields present in `body` into the stored route (see `routes::update` for
/// why under the row's lock) and swaps the table, so the next request sees the change.
pub fn update(
    pool: &Pool,
    table: &RouteTable,
    id: i64,
    body: &Map<String, Value>,
) -> Result<Reply> {
    // A route's owner is fixed: `userId` here is refused as unknown, not ignored.
    input::only(body, FIELDS)?;
    let saved = routes::update(pool, id, |route| apply_fields(route, body))?
        .ok_or_else(|| Error::NotFound("route".into()))?;
    table.reload(pool)?;
    Ok(Reply::json(200, &route_json(&saved)))
}

pub fn delete(pool: &Pool, table: &RouteTable, id: i64) -> Result<Reply> {
    if !routes::delete(pool, id)? {
        return Err(Error::NotFound("route".into()));
    }
    table.reload(pool)?;
    Ok(Reply::empty(204))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised_or_refused_naming_the_field() {
        assert_eq!(normalize_prefix("/users/").unwrap(), "/users");
        assert_eq!(normalize_prefix("/").unwrap(), "/");
        assert_eq!(normalize_prefix("/api/v2").unwrap(), "/api/v2");
        for bad in [
            "users",
            "/a b",
            "/a?b",
            "/a//b",
            "/a/../b",
            "/admin",
            "/admin/x",
            "/healthz",
            "/%61pi",
            "/a\\b",
            "/a%zz",
            "/a/%2e%2e",
            "/%61dmin",
        ] {
            match normalize_prefix(bad) {
                Err(Error::InvalidField { field, .. }) => assert_eq!(field, "prefix", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(normalize_prefix("/administrator").is_ok());
        assert_eq!(normalize_prefix("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn targets_must_be_absolute_http_urls() {
        assert_eq!(
            normalize_target("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(normalize_target("https://api.example.com/base").is_ok());
        for bad in [
            "ftp://x",
            "127.0.0.1:80",
            "http://",
            "http://h/?q=1",
            "/x",
            "http://u:p@h",
        ] {
            assert!(normalize_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_options_are_validated_and_null_resets_them() {
        let mut r = Route::default();
        let body = |v: Value| v.as_object().unwrap().clone();
        apply_fields(
            &mut r,
            &body(
                json!({"prefix": "/a/", "targetUrl": "http://h:1/", "host": "ACME.example.com",
                         "stripPrefix": true, "methods": ["get", "POST", "GET"], "timeoutMs": 500,
                         "maxBodyBytes": 1024}),
            ),
        )
        .unwrap();
        assert_eq!(r.prefix, "/a");
        assert_eq!(r.target_url, "http://h:1");
        assert_eq!(r.host.as_deref(), Some("acme.example.com"));
        assert!(r.strip_prefix);
        assert_eq!(r.methods, Some(vec!["GET".to_string(), "POST".to_string()]));
        assert_eq!((r.timeout_ms, r.max_body_bytes), (Some(500), Some(1024)));
        let secret = "s".repeat(32);
        apply_fields(
            &mut r,
            &body(json!({"identityHeaders": true, "signingSecret": secret})),
        )
        .unwrap();
        assert!(r.identity_headers && r.signing_secret.as_deref() == Some(secret.as_str()));
        apply_fields(&mut r, &body(json!({"signingSecret": null}))).unwrap();
        assert_eq!(r.signing_secret, None);
        apply_fields(
            &mut r,
            &body(json!({"cors": {
                "allowedOrigins": ["HTTPS://App.test", "https://*.example.com:8443",
                                   "http://[::1]:8080", "https://app.test"],
                "allowedMethods": ["get"], "allowedHeaders": ["X-Trace"],
                "allowCredentials": true, "maxAgeSecs": 0}})),
        )
        .unwrap();
        let c = r.cors.clone().unwrap();
        assert_eq!(
            c.allowed_origins,
            [
                "https://app.test",
                "https://*.example.com:8443",
                "http://[::1]:8080"
            ]
        );
        assert_eq!(
            (c.allowed_methods.clone(), c.allowed_headers.clone()),
            (vec!["GET".into()], vec!["x-trace".into()])
        );
        assert_eq!((c.allow_credentials, c.max_age_secs), (true, Some(0)));
        assert_eq!(CorsPolicy::from_json(&c.to_json()), r.cors.clone().unwrap());
        apply_fields(&mut r, &body(json!({"cors": null}))).unwrap();
        assert_eq!(r.cors, None);
        apply_fields(&mut r, &body(json!({"host": null, "timeoutMs": null}))).unwrap();
        assert_eq!((r.host.clone(), r.timeout_ms), (None, None));
        for (bad, field) in [
            (json!({"host": "a b"}), "host"),
            (json!({"methods": []}), "methods"),
            (json!({"methods": ["G T"]}), "methods"),
            (json!({"timeoutMs": 0}), "timeoutMs"),
            (json!({"stripPrefix": "yes"}), "stripPrefix"),
            (json!({"maxBodyBytes": -1}), "maxBodyBytes"),
            (json!({"signingSecret": "short"}), "signingSecret"),
            (json!({"signingSecret": "x".repeat(257)}), "signingSecret"),
            (
                json!({"signingSecret": format!("{} x", "y".repeat(40))}),
                "signingSecret",
            ),
            (json!({"signingSecret": 12}), "signingSecret"),
            (json!({"identityHeaders": "on"}), "identityHeaders"),
            (json!({"cors": []}), "cors"),
            (json!({"cors": {}}), "cors.allowedOrigins"),
            (
                json!({"cors": {"allowedOrigins": ["https://a.test/x"]}}),
                "cors.allowedOrigins",
            ),
            (
                json!({"cors": {"allowedOrigins": ["a.test"]}}),
                "cors.allowedOrigins",
            ),
            (
                json!({"cors": {"allowedOrigins": ["https://a.*.test"]}}),
                "cors.allowedOrigins",
            ),
            (
                json!({"cors": {"allowedOrigins": ["https://a.test:0"]}}),
                "cors.allowedOrigins",
            ),
            (
                json!({"cors": {"allowedOrigins": ["*"], "allowCredentials": true}}),
                "cors.allowedOrigins",
            ),
            (
                json!({"cors": {"allowedOrigins": ["*"], "allowedMethods": ["G T"]}}),
                "cors.allowedMethods",
            ),
            (
                json!({"cors": {"allowedOrigins": ["*"], "allowedHeaders": ["a:b"]}}),
                "cors.allowedHeaders",
            ),
            (
                json!({"cors": {"allowedOrigins": ["*"], "maxAgeSecs": 86401}}),
                "cors.maxAgeSecs",
            ),
            (
                json!({"cors": {"allowedOrigins": ["*"], "exposeHeaders": vec!["x"; 65]}}),
                "cors.exposeHeaders",
            ),
            (
                json!({"cors": {"allowedOrigins": ["*"], "extra": 1}}),
                "cors.extra",
            ),
        ] {
            match apply_fields(&mut r, &body(bad.clone())) {
                Err(Error::InvalidField { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
