//! `/admin/*`: users, API keys and routes, behind `x-admin-secret`. Field names and shapes
//! follow the reference gateway's documented API so existing curl scripts keep working.
//! Changes to keys and routes reach the key cache and route table before the reply leaves.

use crate::auth;
use crate::config::DEFAULT_KEY_RATE_LIMIT;
use crate::db::{self, ts, ts_opt};
use crate::error::{Error, Result};
use crate::input::{self, id, int, path_id, required, string};
use crate::server::{self, App, Ctx, Reply};
use chrono::{DateTime, Utc};
use postgres::Row;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use subtle::ConstantTimeEq;
use tiny_http::Request;

/// Constant-time check of `x-admin-secret`. Both sides are hashed first so neither the
/// content nor the length of the secret leaks through timing.
pub fn is_admin(app: &App, ctx: &Ctx) -> bool {
    let Some(given) = ctx.header("x-admin-secret") else {
        return false;
    };
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(app.cfg.admin_secret.as_bytes());
    a.ct_eq(&b).into()
}

pub fn handle(app: &App, rq: &mut Request, ctx: &Ctx) -> Result<Reply> {
    if !is_admin(app, ctx) {
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

const ROUTE_COLS: &str = "id, user_id, prefix, target_url, created_at, updated_at";

fn route_json(r: &Row) -> Value {
    json!({
        "id": r.get::<_, i64>(0),
        "userId": r.get::<_, i64>(1),
        "prefix": r.get::<_, String>(2),
        "targetUrl": r.get::<_, String>(3),
        "createdAt": ts(r.get(4)),
        "updatedAt": ts(r.get(5)),
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

fn create_route(app: &App, body: &Map<String, Value>) -> Result<Reply> {
    let user_id = required(id(body, "userId")?, "userId")?;
    let prefix = normalize_prefix(&required(string(body, "prefix", 512)?, "prefix")?)?;
    let target = normalize_target(&required(string(body, "targetUrl", 2048)?, "targetUrl")?)?;
    let sql = format!(
        "INSERT INTO routes (user_id, prefix, target_url) VALUES ($1, $2, $3) RETURNING {ROUTE_COLS}"
    );
    let result = app
        .pool
        .get()?
        .query_one(sql.as_str(), &[&user_id, &prefix, &target]);
    let row = route_write(result, &prefix)?;
    app.routes.reload(&app.pool)?;
    Ok(Reply::json(201, &route_json(&row)))
}

fn route_write(result: std::result::Result<Row, postgres::Error>, prefix: &str) -> Result<Row> {
    match result {
        Ok(row) => Ok(row),
        Err(e) if db::is_unique_violation(&e) => Err(Error::Conflict(format!(
            "this user already has a route with prefix {prefix}"
        ))),
        Err(e) if db::is_fk_violation(&e) => Err(Error::field("userId", "no such user")),
        Err(e) => Err(e.into()),
    }
}

fn list_routes(app: &App, ctx: &Ctx) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let user_id = input::query_id(ctx, "userId")?;
    let sql = format!(
        "SELECT {ROUTE_COLS} FROM routes WHERE id > $1 AND ($2::int8 IS NULL OR user_id = $2)
         ORDER BY id LIMIT $3"
    );
    let rows = app
        .pool
        .get()?
        .query(sql.as_str(), &[&after, &user_id, &(limit + 1)])?;
    Ok(paged(rows, limit, route_json))
}

fn get_route(app: &App, id: i64) -> Result<Reply> {
    let sql = format!("SELECT {ROUTE_COLS} FROM routes WHERE id = $1");
    let row = app.pool.get()?.query_opt(sql.as_str(), &[&id])?;
    row.map(|r| Reply::json(200, &route_json(&r)))
        .ok_or_else(|| Error::NotFound("route".into()))
}

fn update_route(app: &App, id: i64, body: &Map<String, Value>) -> Result<Reply> {
    let prefix = string(body, "prefix", 512)?
        .map(|p| normalize_prefix(&p))
        .transpose()?;
    let target = string(body, "targetUrl", 2048)?
        .map(|t| normalize_target(&t))
        .transpose()?;
    let sql = format!(
        "UPDATE routes SET prefix = coalesce($2, prefix), target_url = coalesce($3, target_url),
                updated_at = now()
          WHERE id = $1 RETURNING {ROUTE_COLS}"
    );
    let result = app
        .pool
        .get()?
        .query_opt(sql.as_str(), &[&id, &prefix, &target])
        .transpose()
        .ok_or_else(|| Error::NotFound("route".into()))?;
    let row = route_write(result, prefix.as_deref().unwrap_or(""))?;
    app.routes.reload(&app.pool)?;
    Ok(Reply::json(200, &route_json(&row)))
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
        "dbPoolConnections": state.connections,
        "dbPoolIdle": state.idle_connections,
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
            "users", "/a b", "/a?b", "/a//b", "/a/../b", "/admin", "/admin/x", "/healthz",
        ] {
            match normalize_prefix(bad) {
                Err(Error::InvalidField { field, .. }) => assert_eq!(field, "prefix", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(normalize_prefix("/administrator").is_ok());
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
    fn emails_need_one_at_and_a_dotted_domain() {
        assert!(valid_email("a@b.co"));
        for bad in ["a", "a@b", "@b.co", "a@@b.co", "a b@c.co", "a@.co"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
