//! `/admin/routes`: create, list, read, change and delete routes, and the validation of
//! every route field. The route table is swapped before the reply leaves.

use super::keys::cidr_strings;
use super::paged;
use crate::config::{
    CORS_MAX_AGE_SECS, CORS_MAX_LIST, DEFAULT_HEALTHY_AFTER, DEFAULT_HEALTH_EXPECT,
    DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_ROUTE_RETRIES,
    DEFAULT_UNHEALTHY_AFTER, MAX_HEALTH_INTERVAL_MS, MAX_HEALTH_THRESHOLD, MAX_POOL_TARGETS,
    MAX_ROUTE_RETRIES, MAX_TARGET_WEIGHT, MIN_HEALTH_INTERVAL_MS,
};
use crate::error::{Error, Result};
use crate::gateway::breaker::upstream_of;
use crate::gateway::cors::is_token;
use crate::gateway::forward::Upstreams;
use crate::gateway::routes::RouteTable;
use crate::http::{target, Ctx, Reply};
use crate::operator::input::{self, id, required, string};
use crate::operator::{is_operator_path, ts};
use crate::store::routes::{self, Balance, CorsPolicy, HealthCheck, Route, RouteRecord, Target};
use crate::store::Pool;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

pub fn route_json(r: &RouteRecord) -> Value {
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
        "targets": route
            .pool()
            .iter()
            .map(|t| json!({"url": t.url, "weight": t.weight}))
            .collect::<Vec<_>>(),
        "balance": route.balance.as_str(),
        "healthCheck": route.health_check.as_ref().map(HealthCheck::to_json),
        "retries": route.retries,
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
    normalize_target_as(t, "targetUrl".into())
}

/// [`normalize_target`] for the field `field` (`targetUrl` or `targets[i].url`).
fn normalize_target_as(t: &str, field: Cow<'static, str>) -> Result<String> {
    let bad = |m: &str| Err(Error::field(field.clone(), m.to_string()));
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
pub const FIELDS: &[&str] = &[
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
    "targets",
    "balance",
    "healthCheck",
    "retries",
];

/// What each of a route's `targets` may set.
const TARGET_FIELDS: &[&str] = &["url", "weight"];

/// What a route's `healthCheck` object may set.
const HEALTH_CHECK_FIELDS: &[&str] = &[
    "path",
    "intervalMs",
    "timeoutMs",
    "healthyAfter",
    "unhealthyAfter",
    "expectStatus",
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

/// `input::only` for an object nested in the body: an unknown field is named with its
/// path (`cors.extra`, `targets[1].port`).
fn only_within(obj: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<()> {
    input::only(obj, allowed).map_err(|e| match e {
        Error::InvalidField { field, message } => Error::field(format!("{path}.{field}"), message),
        e => e,
    })
}

/// An optional object field (`cors`, `healthCheck`): `None` for null, else the object
/// with only `allowed` fields.
fn nested_object<'a>(
    v: &'a Value,
    field: &'static str,
    allowed: &[&str],
) -> Result<Option<&'a Map<String, Value>>> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(Error::field(field, "must be an object or null")),
    };
    only_within(obj, allowed, field)?;
    Ok(Some(obj))
}

/// A whole number within `min..=max`; absent or null is `default`.
fn ranged(v: Option<&Value>, field: String, min: i64, max: i64, default: i64) -> Result<i64> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(n) => n
            .as_i64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                Error::field(field, format!("must be a whole number from {min} to {max}"))
            }),
    }
}

/// The path part of a normalised target URL (`""` for none).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("", |i| &rest[i..])
}

/// A route's `targets`: 1 to `MAX_POOL_TARGETS` objects `{url, weight}` (weight 1 to
/// `MAX_TARGET_WEIGHT`, default 1). They must share the scheme and the path, so a request
/// reaches the same resource whichever target takes it (they differ in host and port
/// only), and name each host and port once (the breaker and probes are per target).
fn targets(v: &Value) -> Result<Vec<Target>> {
    let list = match v {
        Value::Array(a) if (1..=MAX_POOL_TARGETS).contains(&a.len()) => a,
        _ => {
            return Err(Error::field(
                "targets",
                format!("must be an array of 1 to {MAX_POOL_TARGETS} objects {{url, weight}}"),
            ))
        }
    };
    let mut out: Vec<Target> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = format!("targets[{i}]");
        let Some(obj) = t.as_object() else {
            return Err(Error::field(at, "must be an object {url, weight}"));
        };
        only_within(obj, TARGET_FIELDS, &at)?;
        let field = format!("{at}.url");
        let url = match obj.get("url") {
            Some(Value::String(u)) => normalize_target_as(u.trim(), field.clone().into())?,
            None | Some(Value::Null) => return Err(Error::field(field, "is required")),
            Some(_) => return Err(Error::field(field, "must be a string")),
        };
        let weight = ranged(
            obj.get("weight"),
            format!("{at}.weight"),
            1,
            MAX_TARGET_WEIGHT,
            1,
        )? as u32;
        if let Some(first) = out.first() {
            let scheme = |u: &str| u.split("://").next().unwrap_or("").to_string();
            if scheme(&url) != scheme(&first.url) {
                return Err(Error::field(
                    field,
                    "must use the same scheme as targets[0].url",
                ));
            }
            if url_path(&url) != url_path(&first.url) {
                return Err(Error::field(
                    field,
                    "must have the same path as targets[0].url: a pool's targets differ only in host and port",
                ));
            }
            if let Some(j) = out
                .iter()
                .position(|t| upstream_of(&t.url) == upstream_of(&url))
            {
                return Err(Error::field(
                    field,
                    format!("names the same host and port as targets[{j}].url"),
                ));
            }
        }
        out.push(Target { url, weight });
    }
    Ok(out)
}

/// A route's `healthCheck`; `null` removes it. `path` is required; the rest default as
/// `config.rs` says.
fn health_check(v: &Value) -> Result<Option<HealthCheck>> {
    let Some(obj) = nested_object(v, "healthCheck", HEALTH_CHECK_FIELDS)? else {
        return Ok(None);
    };
    let path = match obj.get("path") {
        Some(Value::String(p)) if p.starts_with('/') && p.len() <= 512 => p,
        _ => {
            return Err(Error::field(
                "healthCheck.path",
                "is required: a path starting with / (at most 512 characters)",
            ))
        }
    };
    if target::normalize(path.split('?').next().unwrap_or(path)).is_err() || path.contains('#') {
        return Err(Error::field(
            "healthCheck.path",
            "must be a plain path (no dot segments, control characters or fragment)",
        ));
    }
    let n = |k: &str, min, max, default| {
        ranged(obj.get(k), format!("healthCheck.{k}"), min, max, default).map(|n| n as u32)
    };
    let interval_ms = n(
        "intervalMs",
        MIN_HEALTH_INTERVAL_MS,
        MAX_HEALTH_INTERVAL_MS,
        DEFAULT_HEALTH_INTERVAL_MS,
    )?;
    let expect_status = match obj.get("expectStatus") {
        None | Some(Value::Null) => DEFAULT_HEALTH_EXPECT.to_string(),
        Some(Value::String(s))
            if matches!(s.as_bytes(), [b'1'..=b'5', b'x', b'x'])
                || s.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)) =>
        {
            s.clone()
        }
        _ => {
            return Err(Error::field(
                "healthCheck.expectStatus",
                "must be a status class such as 2xx or one status such as 204",
            ))
        }
    };
    Ok(Some(HealthCheck {
        path: path.clone(),
        interval_ms,
        timeout_ms: n(
            "timeoutMs",
            1,
            MAX_HEALTH_INTERVAL_MS,
            DEFAULT_HEALTH_TIMEOUT_MS,
        )?,
        healthy_after: n(
            "healthyAfter",
            1,
            MAX_HEALTH_THRESHOLD,
            DEFAULT_HEALTHY_AFTER,
        )?,
        unhealthy_after: n(
            "unhealthyAfter",
            1,
            MAX_HEALTH_THRESHOLD,
            DEFAULT_UNHEALTHY_AFTER,
        )?,
        expect_status,
    }))
}

/// A route's `cors` policy; `null` removes it.
fn cors(v: &Value) -> Result<Option<CorsPolicy>> {
    let Some(obj) = nested_object(v, "cors", CORS_FIELDS)? else {
        return Ok(None);
    };
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
    let given = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    if given("targetUrl") && given("targets") {
        return Err(Error::field(
            "targets",
            "give either targetUrl (one target) or targets (a pool), not both",
        ));
    }
    // Either one replaces the whole pool; `target_url` always heads it.
    if let Some(t) = string(body, "targetUrl", 2048)? {
        route.target_url = normalize_target(&t)?;
        route.targets = vec![Target {
            url: route.target_url.clone(),
            weight: 1,
        }];
    }
    if let Some(v) = body.get("targets") {
        route.targets = targets(v)?;
        route.target_url = route.targets[0].url.clone();
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
            "healthCheck" => route.health_check = health_check(v)?,
            "balance" => {
                route.balance = v.as_str().and_then(Balance::parse).ok_or_else(|| {
                    Error::field("balance", "must be round-robin, least-inflight or hash")
                })?
            }
            "retries" => {
                route.retries = ranged(
                    Some(v).filter(|v| !v.is_null()),
                    "retries".into(),
                    0,
                    MAX_ROUTE_RETRIES,
                    i64::from(DEFAULT_ROUTE_RETRIES),
                )? as i16
            }
            "methods" => route.methods = methods(v)?,
            "connectTimeoutMs" => route.connect_timeout_ms = timeout("connectTimeoutMs")?,
            "readTimeoutMs" => route.read_timeout_ms = timeout("readTimeoutMs")?,
            "timeoutMs" => route.timeout_ms = timeout("timeoutMs")?,
            "maxBodyBytes" => {
                route.max_body_bytes = limit_field(v, "maxBodyBytes", MAX_ROUTE_BODY_BYTES)?
            }
            // `prefix`, the target and the CIDR lists above; `userId` is read by `create`.
            _ => {}
        }
    }
    Ok(())
}

pub fn create(pool: &Pool, table: &RouteTable, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, &[FIELDS, &["userId"]].concat())?;
    let user_id = required(id(body, "userId")?, "userId")?;
    let route = Route {
        user_id,
        ..read_new(body)?
    };
    let saved = routes::insert(pool, route)?;
    table.reload(pool)?;
    Ok(Reply::json(201, &route_json(&saved)))
}

/// A new route (no owner yet) with every field of the body applied (the caller has refused
/// unknown fields): `POST /admin/routes` and a `tollgate apply` file read routes with this
/// one function, so a field added to [`apply_fields`] is accepted by both.
pub fn read_new(body: &Map<String, Value>) -> Result<Route> {
    let mut base = Route {
        retries: DEFAULT_ROUTE_RETRIES,
        ..Route::default()
    };
    required(body.get("prefix").filter(|v| !v.is_null()), "prefix")?;
    if !["targetUrl", "targets"]
        .iter()
        .any(|k| body.get(*k).is_some_and(|v| !v.is_null()))
    {
        return Err(Error::field(
            "targetUrl",
            "is required (or targets, for a pool)",
        ));
    }
    apply_fields(&mut base, body)?;
    Ok(base)
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

/// `GET /admin/routes/:id/health`: each target of the route's pool as THIS replica sees it
/// (balancing, breakers and probes are per replica): `state` is `unhealthy` when the health
/// check marked it down, `circuit open` while its breaker refuses, else `healthy`; the
/// last probe; and the requests in flight to its host and port from this replica.
pub fn health(pool: &Pool, up: &Upstreams, id: i64) -> Result<Reply> {
    let r = routes::get(pool, id)?.ok_or_else(|| Error::NotFound("route".into()))?;
    let route = &r.route;
    let list: Vec<Value> = up
        .targets_of(route)
        .into_iter()
        .map(|(t, c, state)| {
            let probed = route
                .health_check
                .as_ref()
                .and_then(|_| up.health.of(route.id, &t.url));
            json!({
                "url": t.url,
                "weight": t.weight,
                "state": state,
                "circuit": c.state,
                "inFlight": c.in_flight,
                "lastProbe": probed.and_then(|h| h.last).map(|p| json!({
                    "ok": p.ok,
                    "status": p.status,
                    "error": p.error,
                    "at": ts(p.at.into()),
                })),
            })
        })
        .collect();
    Ok(Reply::json(
        200,
        &json!({
            "routeId": route.id,
            "balance": route.balance.as_str(),
            "healthCheck": route.health_check.as_ref().map(HealthCheck::to_json),
            "targets": list,
        }),
    ))
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
    fn pools_are_validated_naming_the_field() {
        let body = |v: Value| v.as_object().unwrap().clone();
        let mut r = Route::default();
        apply_fields(
            &mut r,
            &body(json!({"targets": [{"url": "https://a:1/v1/", "weight": 100},
                                     {"url": " https://b:1/v1"}],
                         "balance": "least-inflight", "retries": 3,
                         "healthCheck": {"path": "/h?x=1", "intervalMs": 50, "expectStatus": "204"}})),
        )
        .unwrap();
        assert_eq!(r.target_url, "https://a:1/v1");
        assert_eq!(
            r.targets,
            [
                Target {
                    url: "https://a:1/v1".into(),
                    weight: 100
                },
                Target {
                    url: "https://b:1/v1".into(),
                    weight: 1
                }
            ]
        );
        assert_eq!((r.balance, r.retries), (Balance::LeastInflight, 3));
        let hc = r.health_check.clone().unwrap();
        assert_eq!(
            (hc.interval_ms, hc.timeout_ms, hc.unhealthy_after),
            (50, 500, 3)
        );
        assert_eq!(HealthCheck::from_json(&hc.to_json()), hc);
        apply_fields(&mut r, &body(json!({"healthCheck": null, "retries": null}))).unwrap();
        assert_eq!((r.health_check.clone(), r.retries), (None, 1));
        let t = |url: &str| json!({"url": url});
        for (bad, field) in [
            (
                json!({"targetUrl": "http://a:1", "targets": [t("http://b:1")]}),
                "targets",
            ),
            (json!({"targets": []}), "targets"),
            (json!({"targets": null}), "targets"),
            (json!({"targets": vec![t("http://a:1"); 65]}), "targets"),
            (json!({"targets": ["http://a:1"]}), "targets[0]"),
            (json!({"targets": [{"weight": 1}]}), "targets[0].url"),
            (json!({"targets": [t("ftp://a:1")]}), "targets[0].url"),
            (
                json!({"targets": [t("http://a:1"), t("https://b:1")]}),
                "targets[1].url",
            ),
            (
                json!({"targets": [t("http://a:1/x"), t("http://b:1/y")]}),
                "targets[1].url",
            ),
            (
                json!({"targets": [t("http://a:1"), t("http://a:1/")]}),
                "targets[1].url",
            ),
            (
                json!({"targets": [{"url": "http://a:1", "weight": 0}]}),
                "targets[0].weight",
            ),
            (
                json!({"targets": [{"url": "http://a:1", "weight": 101}]}),
                "targets[0].weight",
            ),
            (
                json!({"targets": [{"url": "http://a:1", "port": 1}]}),
                "targets[0].port",
            ),
            (json!({"balance": "random"}), "balance"),
            (json!({"balance": 1}), "balance"),
            (json!({"retries": 4}), "retries"),
            (json!({"retries": -1}), "retries"),
            (json!({"healthCheck": "/h"}), "healthCheck"),
            (json!({"healthCheck": {}}), "healthCheck.path"),
            (
                json!({"healthCheck": {"path": "/a/../b"}}),
                "healthCheck.path",
            ),
            (
                json!({"healthCheck": {"path": "/h", "intervalMs": 10}}),
                "healthCheck.intervalMs",
            ),
            (
                json!({"healthCheck": {"path": "/h", "timeoutMs": 0}}),
                "healthCheck.timeoutMs",
            ),
            (
                json!({"healthCheck": {"path": "/h", "healthyAfter": 11}}),
                "healthCheck.healthyAfter",
            ),
            (
                json!({"healthCheck": {"path": "/h", "expectStatus": "2yy"}}),
                "healthCheck.expectStatus",
            ),
            (
                json!({"healthCheck": {"path": "/h", "expectStatus": 200}}),
                "healthCheck.expectStatus",
            ),
            (
                json!({"healthCheck": {"path": "/h", "extra": 1}}),
                "healthCheck.extra",
            ),
        ] {
            match apply_fields(&mut r, &body(bad.clone())) {
                Err(Error::InvalidField { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
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
