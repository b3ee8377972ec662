//! `/admin/*`: users, API keys and routes, behind `x-admin-secret`. Field names and shapes
//! follow the reference gateway's documented API so existing curl scripts keep working.
//! Changes to keys and routes reach the key cache and route table before the reply leaves.

use crate::auth;
use crate::config::DEFAULT_KEY_RATE_LIMIT;
use crate::db::{self, ts, ts_opt};
use crate::error::{Error, Result};
use crate::input::{self, id, int, path_id, required, string};
use crate::proxy;
use crate::server::{self, App, Ctx, Reply};
use chrono::{DateTime, Utc};
use postgres::Row;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use subtle::ConstantTimeEq;
use tiny_http::Request;

/// Constant-time check of an admin secret. Both sides are hashed first so neither the
/// content nor the length of the secret leaks through timing.
pub fn is_admin_secret(app: &App, given: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(app.cfg.admin_secret.as_bytes());
    a.ct_eq(&b).into()
}

/// The admin check with the per-IP failure limit: `Ok(true)` for the right secret,
/// `Ok(false)` when no secret was sent, `Err(Unauthorized)` for a wrong one (counted
/// against the client IP), and 429 for an IP over its limit whatever it sent, so a
/// guesser learns nothing more once limited.
pub fn check_admin(app: &App, ctx: &Ctx) -> Result<bool> {
    match ctx.header("x-admin-secret") {
        None => Ok(false),
        Some(given) => check_secret(app, ctx, given, "x-admin-secret").map(|()| true),
    }
}

/// `given` against the admin secret under the client IP's failure limit, wherever it was
/// sent (`how` names that in the log): 429 while the IP is over its limit, `Unauthorized`
/// for a wrong secret (counted).
pub fn check_secret(app: &App, ctx: &Ctx, given: &str, how: &str) -> Result<()> {
    app.admin_failures.check(&ctx.client_ip)?;
    if is_admin_secret(app, given) {
        return Ok(());
    }
    app.admin_failures.record(&ctx.client_ip);
    log::warn!("wrong {how} from {}", ctx.client_ip);
    Err(Error::Unauthorized)
}

pub fn handle(app: &App, rq: &mut Request, ctx: &Ctx) -> Result<Reply> {
    if !check_admin(app, ctx)? {
        return Err(Error::Unauthorized);
    }
    let segs: Vec<&str> = ctx.path.split('/').filter(|s| !s.is_empty()).collect();
    let m = ctx.method.as_str();
    match (m, &segs[1..]) {
        ("POST", ["users"]) => create_user(app, &input::json_object(rq.as_reader())?),
        ("GET", ["users"]) => list_users(app, ctx),
        ("GET", ["users", id]) => get_user(app, path_id(id)?),
        ("DELETE", ["users", id]) => delete_user(app, path_id(id)?),
        ("GET", ["users", id, "api-keys"]) => list_keys(app, ctx, Some(path_id(id)?)),
        ("POST", ["api-keys"]) => create_key(app, &input::json_object(rq.as_reader())?),
        ("GET", ["api-keys"]) => list_keys(app, ctx, input::query_id(ctx, "userId")?),
        ("GET", ["api-keys", id]) => get_key(app, path_id(id)?),
        ("PATCH", ["api-keys", id]) => {
            update_key(app, path_id(id)?, &input::json_object(rq.as_reader())?)
        }
        ("DELETE", ["api-keys", id]) => revoke_key(app, path_id(id)?),
        ("POST", ["routes"]) => create_route(app, &input::json_object(rq.as_reader())?),
        ("GET", ["routes"]) => list_routes(app, ctx),
        ("GET", ["routes", id]) => get_route(app, path_id(id)?),
        ("PATCH" | "PUT", ["routes", id]) => {
            update_route(app, path_id(id)?, &input::json_object(rq.as_reader())?)
        }
        ("DELETE", ["routes", id]) => delete_route(app, path_id(id)?),
        ("GET", ["stats"]) => Ok(Reply::json(200, &stats(app))),
        (_, ["users" | "api-keys" | "routes" | "stats", ..]) => Err(Error::MethodNotAllowed),
        _ => Err(Error::NotFound("admin endpoint".into())),
    }
}

// ---- users ----

const USER_COLS: &str = "id, email, name, created_at";

fn user_json(r: &Row) -> Value {
    json!({
        "id": r.get::<_, i64>(0),
        "email": r.get::<_, String>(1),
        "name": r.get::<_, String>(2),
        "createdAt": ts(r.get(3)),
    })
}

fn create_user(app: &App, body: &Map<String, Value>) -> Result<Reply> {
    let email = required(string(body, "email", 254)?, "email")?;
    let name = required(string(body, "name", 200)?, "name")?;
    if !valid_email(&email) {
        return Err(Error::field("email", "must be an email address"));
    }
    let mut conn = app.pool.get()?;
    let sql = format!("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING {USER_COLS}");
    match conn.query_one(sql.as_str(), &[&email, &name]) {
        Ok(row) => Ok(Reply::json(201, &user_json(&row))),
        Err(e) if db::is_unique_violation(&e) => {
            Err(Error::Conflict(format!("a user with email {email} exists")))
        }
        Err(e) => Err(e.into()),
    }
}

/// One `@` with something on both sides and no spaces: enough to catch mistakes without
/// rejecting the odd valid address a stricter pattern would.
fn valid_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

fn list_users(app: &App, ctx: &Ctx) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let sql = format!("SELECT {USER_COLS} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = app
        .pool
        .get()?
        .query(sql.as_str(), &[&after, &(limit + 1)])?;
    Ok(paged(rows, limit, user_json))
}

fn get_user(app: &App, id: i64) -> Result<Reply> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
    let row = app.pool.get()?.query_opt(sql.as_str(), &[&id])?;
    row.map(|r| Reply::json(200, &user_json(&r)))
        .ok_or_else(|| Error::NotFound("user".into()))
}

fn delete_user(app: &App, id: i64) -> Result<Reply> {
    let n = app
        .pool
        .get()?
        .execute("DELETE FROM users WHERE id = $1", &[&id])?;
    if n == 0 {
        return Err(Error::NotFound("user".into()));
    }
    app.keys.forget_user(id);
    app.routes.reload(&app.pool)?;
    Ok(Reply::empty(204))
}

/// A page of rows as a JSON array; `X-Next-Cursor` names where the next page starts.
/// (An array keeps the reference's response shape; the cursor travels in a header.)
fn paged(mut rows: Vec<Row>, limit: i64, to_json: fn(&Row) -> Value) -> Reply {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let items: Vec<Value> = rows.iter().map(to_json).collect();
    let mut reply = Reply::json(200, &Value::Array(items));
    if more {
        if let Some(last) = rows.last() {
            reply.header("X-Next-Cursor", last.get::<_, i64>(0).to_string());
        }
    }
    reply
}

// ---- API keys ----

const KEY_COLS: &str = "id, user_id, name, public_id, scopes, rate_limit, expires_at, \
                        revoked_at, last_used_at, created_at";

fn key_json(r: &Row) -> Value {
    let expires: Option<DateTime<Utc>> = r.get(6);
    let revoked: Option<DateTime<Utc>> = r.get(7);
    let active = revoked.is_none() && expires.is_none_or(|t| t > Utc::now());
    json!({
        "id": r.get::<_, i64>(0),
        "userId": r.get::<_, i64>(1),
        "name": r.get::<_, String>(2),
        "keyPrefix": format!("gw_{}", r.get::<_, String>(3)),
        "scopes": r.get::<_, Vec<String>>(4),
        "rateLimit": r.get::<_, i32>(5),
        "expiresAt": ts_opt(expires),
        "revokedAt": ts_opt(revoked),
        "lastUsedAt": ts_opt(r.get(8)),
        "createdAt": ts(r.get(9)),
        "isActive": active,
    })
}

/// The cache's view of a key row selected with `KEY_COLS`.
fn key_info(r: &Row) -> auth::KeyInfo {
    let scopes: Vec<String> = r.get(4);
    let revoked: Option<DateTime<Utc>> = r.get(7);
    auth::KeyInfo {
        id: r.get(0),
        user_id: r.get(1),
        rate_limit: r.get(5),
        write: scopes.iter().any(|s| s == "write"),
        expires_at: r.get(6),
        revoked: revoked.is_some(),
    }
}

fn scopes(body: &Map<String, Value>) -> Result<Option<Vec<String>>> {
    let list = match body.get("scopes") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::field("scopes", "must be an array of strings")),
    };
    let mut read = false;
    let mut write = false;
    for s in list {
        match s.as_str() {
            Some("read") => read = true,
            Some("write") => write = true,
            _ => {
                return Err(Error::field(
                    "scopes",
                    "may contain only \"read\" and \"write\"",
                ))
            }
        }
    }
    if !read && !write {
        return Err(Error::field("scopes", "must not be empty"));
    }
    // `write` implies `read`: a key that may change data may also look at it.
    Ok(Some(if write {
        vec!["read".into(), "write".into()]
    } else {
        vec!["read".into()]
    }))
}

fn expires_at(body: &Map<String, Value>) -> Result<Option<DateTime<Utc>>> {
    match body.get("expiresAt") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                Error::field(
                    "expiresAt",
                    "must be an RFC 3339 time, e.g. 2027-01-31T00:00:00Z",
                )
            }),
        Some(_) => Err(Error::field("expiresAt", "must be an RFC 3339 time string")),
    }
}

fn rate_limit(body: &Map<String, Value>) -> Result<Option<i32>> {
    Ok(int(body, "rateLimit", 1, i64::from(i32::MAX))?.map(|n| n as i32))
}

fn create_key(app: &App, body: &Map<String, Value>) -> Result<Reply> {
    let user_id = required(id(body, "userId")?, "userId")?;
    let name = required(string(body, "name", 200)?, "name")?;
    let expires = expires_at(body)?;
    if expires.is_some_and(|t| t <= Utc::now()) {
        return Err(Error::field("expiresAt", "must be in the future"));
    }
    let limit = rate_limit(body)?.unwrap_or(DEFAULT_KEY_RATE_LIMIT);
    let scopes = scopes(body)?.unwrap_or_else(|| vec!["read".into(), "write".into()]);
    let (public_id, secret, raw) = auth::mint_key()?;
    let hash = bcrypt::hash(&secret, app.cfg.bcrypt_cost)
        .map_err(|e| Error::Internal(format!("bcrypt: {e}")))?;
    let sql = format!(
        "INSERT INTO api_keys (user_id, name, public_id, key_hash, rate_limit, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLS}"
    );
    let mut conn = app.pool.get()?;
    match conn.query_one(
        sql.as_str(),
        &[
            &user_id, &name, &public_id, &hash, &limit, &scopes, &expires,
        ],
    ) {
        Ok(row) => {
            let mut v = key_json(&row);
            v["rawKey"] = json!(raw);
            Ok(Reply::json(201, &v))
        }
        Err(e) if db::is_fk_violation(&e) => Err(Error::field("userId", "no such user")),
        Err(e) => Err(e.into()),
    }
}

fn list_keys(app: &App, ctx: &Ctx, user_id: Option<i64>) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let sql = format!(
        "SELECT {KEY_COLS} FROM api_keys WHERE id > $1 AND ($2::int8 IS NULL OR user_id = $2)
         ORDER BY id LIMIT $3"
    );
    let rows = app
        .pool
        .get()?
        .query(sql.as_str(), &[&after, &user_id, &(limit + 1)])?;
    Ok(paged(rows, limit, key_json))
}

fn get_key(app: &App, id: i64) -> Result<Reply> {
    let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1");
    let row = app.pool.get()?.query_opt(sql.as_str(), &[&id])?;
    row.map(|r| Reply::json(200, &key_json(&r)))
        .ok_or_else(|| Error::NotFound("API key".into()))
}

/// Changes name, limit, scopes or expiry. Setting `expiresAt` in the past expires the key
/// at once (unlike at creation, where that would be a mistake).
fn update_key(app: &App, id: i64, body: &Map<String, Value>) -> Result<Reply> {
    let name = string(body, "name", 200)?;
    let limit = rate_limit(body)?;
    let scopes = scopes(body)?;
    let expires = expires_at(body)?;
    let clear_expiry = body.get("expiresAt") == Some(&Value::Null);
    let sql = format!(
        "UPDATE api_keys SET name = coalesce($2, name), rate_limit = coalesce($3, rate_limit),
                scopes = coalesce($4, scopes),
                expires_at = CASE WHEN $6 THEN NULL ELSE coalesce($5, expires_at) END
          WHERE id = $1 RETURNING {KEY_COLS}"
    );
    let row = app.pool.get()?.query_opt(
        sql.as_str(),
        &[&id, &name, &limit, &scopes, &expires, &clear_expiry],
    )?;
    let row = row.ok_or_else(|| Error::NotFound("API key".into()))?;
    app.keys.update(key_info(&row));
    Ok(Reply::json(200, &key_json(&row)))
}

/// Revokes (keeps the row for the logs and analytics); the cache learns it before the
/// reply is sent, so the very next request with the key is refused.
fn revoke_key(app: &App, id: i64) -> Result<Reply> {
    let sql = format!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
         RETURNING {KEY_COLS}"
    );
    let row = app.pool.get()?.query_opt(sql.as_str(), &[&id])?;
    let row = row.ok_or_else(|| Error::NotFound("API key".into()))?;
    app.keys.update(key_info(&row));
    Ok(Reply::json(200, &key_json(&row)))
}

// ---- routes ----

/// Route columns as `proxy::Route::from_row` reads them, then the two timestamps.
fn route_cols() -> String {
    format!("{}, created_at, updated_at", proxy::ROUTE_SELECT)
}

fn route_json(r: &Row) -> Value {
    let route = proxy::Route::from_row(r);
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
        "createdAt": ts(r.get(13)),
        "updatedAt": ts(r.get(14)),
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
    // Requests are matched after `hostile::normalize`; a prefix it would rewrite
    // (`/%61pi`, `/a\\b`, `/a%zz`) could never match, or would match another spelling.
    if crate::hostile::normalize(trimmed).ok().as_deref() != Some(trimmed) {
        return bad("must be written as requests are matched: no backslash, no %-escape of a letter, digit or -._~, no malformed %-escape");
    }
    if server::is_operator_path(trimmed) {
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

/// Longest per-route timeout: an hour covers long polls and big downloads.
const MAX_ROUTE_TIMEOUT_MS: i64 = 3_600_000;
/// Largest per-route body limit (64 GiB); bodies are streamed, never held.
const MAX_ROUTE_BODY_BYTES: i64 = 64 << 30;

/// Applies the fields present in `body` to `route` (a blank one when creating, the stored
/// one when updating); absent fields keep their value, `null` resets an option.
fn apply_route_fields(route: &mut proxy::Route, body: &Map<String, Value>) -> Result<()> {
    if let Some(p) = string(body, "prefix", 512)? {
        route.prefix = normalize_prefix(&p)?;
    }
    if let Some(t) = string(body, "targetUrl", 2048)? {
        route.target_url = normalize_target(&t)?;
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
            "methods" => route.methods = methods(v)?,
            "connectTimeoutMs" => route.connect_timeout_ms = timeout("connectTimeoutMs")?,
            "readTimeoutMs" => route.read_timeout_ms = timeout("readTimeoutMs")?,
            "timeoutMs" => route.timeout_ms = timeout("timeoutMs")?,
            "maxBodyBytes" => {
                route.max_body_bytes = limit_field(v, "maxBodyBytes", MAX_ROUTE_BODY_BYTES)?
            }
            _ => {}
        }
    }
    Ok(())
}

const ROUTE_VALUES: &str = "host = $2, strip_prefix = $3, preserve_host = $4, methods = $5, \
    connect_timeout_ms = $6, read_timeout_ms = $7, timeout_ms = $8, max_body_bytes = $9, \
    breaker_on_5xx = $10, prefix = $11, target_url = $12";

fn route_params(r: &proxy::Route) -> [&(dyn postgres::types::ToSql + Sync); 12] {
    [
        &r.id,
        &r.host,
        &r.strip_prefix,
        &r.preserve_host,
        &r.methods,
        &r.connect_timeout_ms,
        &r.read_timeout_ms,
        &r.timeout_ms,
        &r.max_body_bytes,
        &r.breaker_on_5xx,
        &r.prefix,
        &r.target_url,
    ]
}

fn create_route(app: &App, body: &Map<String, Value>) -> Result<Reply> {
    let user_id = required(id(body, "userId")?, "userId")?;
    required(body.get("prefix").filter(|v| !v.is_null()), "prefix")?;
    required(body.get("targetUrl").filter(|v| !v.is_null()), "targetUrl")?;
    let mut route = proxy::Route {
        user_id,
        ..proxy::Route::default()
    };
    apply_route_fields(&mut route, body)?;
    let mut conn = app.pool.get()?;
    let mut tx = conn.transaction()?;
    let row = route_write(
        tx.query_one(
            "INSERT INTO routes (user_id, prefix, target_url) VALUES ($1, $2, $3) RETURNING id",
            &[&user_id, &route.prefix, &route.target_url],
        ),
        &route.prefix,
    )?;
    route.id = row.get(0);
    save_route(app, tx, &route, 201)
}

/// Writes every field of `route` to its row, commits, and swaps the route table before the
/// reply leaves, so the very next request sees the change.
fn save_route(
    app: &App,
    mut tx: postgres::Transaction<'_>,
    route: &proxy::Route,
    status: u16,
) -> Result<Reply> {
    let sql = format!(
        "UPDATE routes SET {ROUTE_VALUES}, updated_at = now() WHERE id = $1 RETURNING {}",
        route_cols()
    );
    let row = route_write(
        tx.query_one(sql.as_str(), &route_params(route)),
        &route.prefix,
    )?;
    tx.commit()?;
    app.routes.reload(&app.pool)?;
    Ok(Reply::json(status, &route_json(&row)))
}

fn route_write(result: std::result::Result<Row, postgres::Error>, prefix: &str) -> Result<Row> {
    match result {
        Ok(row) => Ok(row),
        Err(e) if db::is_unique_violation(&e) => Err(Error::Conflict(format!(
            "this user already has a route with prefix {prefix} for this host"
        ))),
        Err(e) if db::is_fk_violation(&e) => Err(Error::field("userId", "no such user")),
        Err(e) => Err(e.into()),
    }
}

fn list_routes(app: &App, ctx: &Ctx) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let user_id = input::query_id(ctx, "userId")?;
    let sql = format!(
        "SELECT {} FROM routes WHERE id > $1 AND ($2::int8 IS NULL OR user_id = $2)
         ORDER BY id LIMIT $3",
        route_cols()
    );
    let rows = app
        .pool
        .get()?
        .query(sql.as_str(), &[&after, &user_id, &(limit + 1)])?;
    Ok(paged(rows, limit, route_json))
}

fn get_route(app: &App, id: i64) -> Result<Reply> {
    let sql = format!("SELECT {} FROM routes WHERE id = $1", route_cols());
    let row = app.pool.get()?.query_opt(sql.as_str(), &[&id])?;
    row.map(|r| Reply::json(200, &route_json(&r)))
        .ok_or_else(|| Error::NotFound("route".into()))
}

/// Read, merge and write in one transaction, the row locked, so two concurrent edits of
/// different fields cannot undo each other.
fn update_route(app: &App, id: i64, body: &Map<String, Value>) -> Result<Reply> {
    let mut conn = app.pool.get()?;
    let mut tx = conn.transaction()?;
    let sql = format!(
        "SELECT {} FROM routes WHERE id = $1 FOR UPDATE",
        route_cols()
    );
    let current = tx
        .query_opt(sql.as_str(), &[&id])?
        .ok_or_else(|| Error::NotFound("route".into()))?;
    let mut route = proxy::Route::from_row(&current);
    apply_route_fields(&mut route, body)?;
    save_route(app, tx, &route, 200)
}

fn delete_route(app: &App, id: i64) -> Result<Reply> {
    let n = app
        .pool
        .get()?
        .execute("DELETE FROM routes WHERE id = $1", &[&id])?;
    if n == 0 {
        return Err(Error::NotFound("route".into()));
    }
    app.routes.reload(&app.pool)?;
    Ok(Reply::empty(204))
}

// ---- stats ----

fn stats(app: &App) -> Value {
    let l = &app.logger.counters;
    let k = &app.keys;
    let state = app.pool.state();
    json!({
        "logQueueDepth": app.logger.queue_depth(),
        "logRowsBuffered": l.buffered.load(Ordering::Relaxed),
        "logRowsWritten": l.written.load(Ordering::Relaxed),
        "logRowsDropped": l.dropped.load(Ordering::Relaxed),
        "authCacheHits": k.hits.load(Ordering::Relaxed),
        "authCacheMisses": k.misses.load(Ordering::Relaxed),
        "bcryptVerifications": k.bcrypt_verifications.load(Ordering::Relaxed),
        "abandonedBodies": app.abandoned_bodies.load(Ordering::Relaxed),
        "loggerRestarts": l.restarts.load(Ordering::Relaxed),
        "rateLimitDegraded": app.degraded_responses.load(Ordering::Relaxed),
        "databaseUp": app.db_health.is_up(),
        "dbPoolConnections": state.connections,
        "dbPoolIdle": state.idle_connections,
        // Their ratio is how many requests one counter statement served (batching).
        "counterStatements": app.counters.statements.load(Ordering::Relaxed),
        "counterRequests": app.counters.counted.load(Ordering::Relaxed),
    })
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
        let mut r = proxy::Route::default();
        let body = |v: Value| v.as_object().unwrap().clone();
        apply_route_fields(
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
        apply_route_fields(&mut r, &body(json!({"host": null, "timeoutMs": null}))).unwrap();
        assert_eq!((r.host.clone(), r.timeout_ms), (None, None));
        for (bad, field) in [
            (json!({"host": "a b"}), "host"),
            (json!({"methods": []}), "methods"),
            (json!({"methods": ["G T"]}), "methods"),
            (json!({"timeoutMs": 0}), "timeoutMs"),
            (json!({"stripPrefix": "yes"}), "stripPrefix"),
            (json!({"maxBodyBytes": -1}), "maxBodyBytes"),
        ] {
            match apply_route_fields(&mut r, &body(bad.clone())) {
                Err(Error::InvalidField { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn emails_need_one_at_and_a_dotted_domain() {
        assert!(valid_email("a@b.co"));
        for bad in ["a", "a@b", "@b.co", "a@@b.co", "a b@c.co", "a@.co"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
