//! `/admin/*`: users, API keys, plans and routes, and the audit log of their changes,
//! behind `x-admin-secret`. Field names and
//! shapes follow the reference gateway's documented API so existing curl scripts keep
//! working.
//! Lists answer a JSON array; `X-Next-Cursor` says where the next page starts. A body
//! field an endpoint does not take is refused (400 naming it), never ignored; endpoints
//! that take no body (deletes, quota resets) refuse any field.

pub mod audit;
pub mod keys;
pub mod plans;
pub mod routes;
pub mod users;

use super::{check_admin, input, me, Operator};
use crate::error::{Error, Result};
use crate::http::{Reply, Request};
use audit::{audited, Actor, Target};
use input::path_id;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

pub fn handle(op: &Operator, rq: &mut Request) -> Result<Reply> {
    let ctx = &rq.ctx;
    if !check_admin(op.admin, ctx)? {
        return Err(Error::Unauthorized);
    }
    let (pool, gw) = (op.pool, op.gateway);
    let cache = &gw.auth.cache;
    let segs: Vec<&str> = ctx.path.split('/').filter(|s| !s.is_empty()).collect();
    let body = &mut rq.body;
    let actor = Actor {
        name: "admin".into(),
        ctx,
        ips: op.client_ips,
    };
    // Every write goes through `audited`, which appends its row once it succeeds.
    let write = |action: &str, target: Target, f: &mut dyn FnMut() -> Result<Reply>| {
        audited(pool, &actor, action, target, f)
    };
    let allow = allowed(&segs[1..]).ok_or_else(|| Error::NotFound("admin endpoint".into()))?;
    // HEAD is GET without the body (RFC 9110 §9.3.2); `respond` drops the body.
    let method = match ctx.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    if !allow.split(", ").any(|m| m == method) {
        return Err(Error::method_not_allowed(allow));
    }
    match (method, &segs[1..]) {
        ("POST", ["users"]) => {
            let b = input::json_object(body)?;
            write("user.create", Target::User(None), &mut || {
                users::create(pool, &b)
            })
        }
        ("GET", ["users"]) => users::list(pool, ctx),
        ("GET", ["users", id]) => users::get(pool, path_id(id)?),
        ("PATCH", ["users", id]) => {
            let (id, b) = (path_id(id)?, input::json_object(body)?);
            write("user.update", Target::User(Some(id)), &mut || {
                users::update(pool, cache, id, &b)
            })
        }
        ("POST", ["users", id, "quota", "reset"]) => {
            let id = path_id(id)?;
            input::no_fields(body)?;
            write("user.quota_reset", Target::User(Some(id)), &mut || {
                users::reset_quota(pool, id)
            })
        }
        ("DELETE", ["users", id]) => {
            let id = path_id(id)?;
            input::no_fields(body)?;
            write("user.delete", Target::User(Some(id)), &mut || {
                users::delete(pool, cache, &gw.routes, id)
            })
        }
        ("GET", ["users", id, "limits"]) => {
            let user = crate::store::users::get(pool, path_id(id)?)?
                .ok_or_else(|| Error::NotFound("user".into()))?;
            Ok(Reply::json(200, &me::user_limits(op, &user)?))
        }
        ("GET", ["api-keys", id, "limits"]) => {
            let key = crate::store::keys::get(pool, path_id(id)?)?
                .ok_or_else(|| Error::NotFound("API key".into()))?;
            Ok(Reply::json(200, &me::key_limits(op, &key.info())?))
        }
        ("GET", ["users", id, "api-keys"]) => {
            // The path names a user: one that does not exist is 404, not an empty list.
            let user = crate::store::users::get(pool, path_id(id)?)?
                .ok_or_else(|| Error::NotFound("user".into()))?;
            keys::list(pool, ctx, Some(user.id))
        }
        ("POST", ["api-keys"]) => {
            let b = input::json_object(body)?;
            write("key.create", Target::Key(None), &mut || {
                keys::create(pool, op.bcrypt_cost, &b)
            })
        }
        ("GET", ["api-keys"]) => keys::list(pool, ctx, input::query_id(ctx, "userId")?),
        ("GET", ["api-keys", id]) => keys::get(pool, path_id(id)?),
        ("PATCH", ["api-keys", id]) => {
            let (id, b) = (path_id(id)?, input::json_object(body)?);
            write("key.update", Target::Key(Some(id)), &mut || {
                keys::update(pool, cache, id, &b)
            })
        }
        ("DELETE", ["api-keys", id]) => {
            let id = path_id(id)?;
            input::no_fields(body)?;
            write("key.revoke", Target::Key(Some(id)), &mut || {
                keys::revoke(pool, cache, id)
            })
        }
        ("POST", ["api-keys", id, "rotate"]) => {
            let (id, b) = (path_id(id)?, input::json_object_or_empty(body)?);
            write("key.rotate", Target::Key(Some(id)), &mut || {
                keys::rotate(pool, cache, op.bcrypt_cost, id, &b)
            })
        }
        ("POST", ["api-keys", id, "quota", "reset"]) => {
            let id = path_id(id)?;
            input::no_fields(body)?;
            write("key.quota_reset", Target::Key(Some(id)), &mut || {
                keys::reset_quota(pool, id)
            })
        }
        ("POST", ["plans"]) => {
            let b = input::json_object(body)?;
            write("plan.create", Target::Plan(None), &mut || {
                plans::create(pool, &gw.plans, &b)
            })
        }
        ("GET", ["plans"]) => plans::list(pool),
        ("GET", ["plans", id]) => plans::get(pool, path_id(id)?),
        ("PATCH", ["plans", id]) => {
            let (id, b) = (path_id(id)?, input::json_object(body)?);
            write("plan.update", Target::Plan(Some(id)), &mut || {
                plans::update(pool, &gw.plans, id, &b)
            })
        }
        ("DELETE", ["plans", id]) => {
            let id = path_id(id)?;
            input::no_fields(body)?;
            write("plan.delete", Target::Plan(Some(id)), &mut || {
                plans::delete(pool, &gw.plans, id)
            })
        }
        ("POST", ["routes"]) => {
            let b = input::json_object(body)?;
            write("route.create", Target::Route(None), &mut || {
                routes::create(pool, &gw.routes, &b)
            })
        }
        ("GET", ["routes"]) => routes::list(pool, ctx),
        ("GET", ["routes", id]) => routes::get(pool, path_id(id)?),
        ("GET", ["routes", id, "health"]) => routes::health(pool, &gw.upstreams, path_id(id)?),
        ("PATCH" | "PUT", ["routes", id]) => {
            let (id, b) = (path_id(id)?, input::json_object(body)?);
            write("route.update", Target::Route(Some(id)), &mut || {
                routes::update(pool, &gw.routes, id, &b)
            })
        }
        ("DELETE", ["routes", id]) => {
            let id = path_id(id)?;
            input::no_fields(body)?;
            write("route.delete", Target::Route(Some(id)), &mut || {
                routes::delete(pool, &gw.routes, id)
            })
        }
        ("GET", ["stats"]) => Ok(Reply::json(200, &stats(op))),
        ("GET", ["audit"]) => audit::list(pool, ctx),
        _ => Err(Error::Internal(format!(
            "{method} {} is allowed but not dispatched",
            ctx.path
        ))),
    }
}

/// The methods an admin path takes (its `Allow` header), or `None` for no such endpoint.
/// `handle` refuses any other method before dispatching; the arms there are these.
fn allowed(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["users" | "api-keys" | "plans" | "routes"] => "GET, HEAD, POST",
        ["users" | "api-keys" | "plans", _] => "GET, HEAD, PATCH, DELETE",
        ["routes", _] => "GET, HEAD, PATCH, PUT, DELETE",
        ["users", _, "limits" | "api-keys"]
        | ["api-keys", _, "limits"]
        | ["routes", _, "health"] => "GET, HEAD",
        ["users" | "api-keys", _, "quota", "reset"] | ["api-keys", _, "rotate"] => "POST",
        ["stats" | "audit"] => "GET, HEAD",
        _ => return None,
    })
}

/// A page of records as a JSON array, `rows` holding up to `limit + 1` of them: when the
/// extra one is there, `X-Next-Cursor` names the id the next page continues after. (An
/// array keeps the reference's response shape; the cursor travels in a header.)
fn paged<T>(mut rows: Vec<T>, limit: i64, id: fn(&T) -> i64, to_json: fn(&T) -> Value) -> Reply {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let items: Vec<Value> = rows.iter().map(to_json).collect();
    let mut reply = Reply::json(200, &Value::Array(items));
    if more {
        if let Some(last) = rows.last() {
            reply.header("X-Next-Cursor", id(last).to_string());
        }
    }
    reply
}

fn stats(op: &Operator) -> Value {
    let l = &op.logger.counters;
    let k = &op.gateway.auth.cache;
    let limiter = &op.gateway.limiter;
    let state = op.pool.state();
    json!({
        "logQueueDepth": op.logger.queue_depth(),
        "logRowsBuffered": l.buffered.load(Ordering::Relaxed),
        "logRowsWritten": l.written.load(Ordering::Relaxed),
        "logRowsDropped": l.dropped.load(Ordering::Relaxed),
        "authCacheHits": k.hits.load(Ordering::Relaxed),
        "authCacheMisses": k.misses.load(Ordering::Relaxed),
        "bcryptVerifications": k.bcrypt_verifications.load(Ordering::Relaxed),
        "abandonedBodies": op.server.abandoned_bodies.load(Ordering::Relaxed),
        "loggerRestarts": l.restarts.load(Ordering::Relaxed),
        "rateLimitDegraded": limiter.degraded.load(Ordering::Relaxed),
        "databaseUp": op.health.is_up(),
        "dbPoolConnections": state.connections,
        "dbPoolIdle": state.idle_connections,
        // Their ratio is how many requests one counting round served (batching).
        "counterStatements": limiter.counters.statements.load(Ordering::Relaxed),
        "counterRequests": limiter.counters.counted.load(Ordering::Relaxed),
        // Admitted from a lease, without a counting round.
        "leaseAdmitted": limiter.counters.leases.admitted.load(Ordering::Relaxed),
    })
}

/// The admin API through the fake request: every refusal a handler makes before it needs
/// the database (which the fixture never reaches).
#[cfg(test)]
mod tests {
    use crate::http::Request;
    use crate::operator::fixture::{refusal, Fixture, SECRET};

    #[test]
    fn a_missing_or_wrong_secret_is_401_and_the_right_one_is_required_on_every_path() {
        let f = Fixture::new();
        let none = f.send(Request::fake("GET", "/admin/users", &[], b""));
        assert_eq!(none.status, 401);
        assert_eq!(none.json_body()["error"]["code"], "unauthorized");
        let wrong = [("x-admin-secret", "not-the-secret")];
        let r = f.send(Request::fake("POST", "/admin/routes", &wrong, b"{}"));
        assert_eq!(r.status, 401);
        let right = [("x-admin-secret", SECRET)];
        let r = f.send(Request::fake("GET", "/admin/nothing-here", &right, b""));
        assert_eq!(r.status, 404);
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        let f = Fixture::new();
        assert_eq!(f.admin("GET", "/admin/widgets", "").status, 404);
        assert_eq!(f.admin("GET", "/admin/users/1/widgets", "").status, 404);
        for (method, path, allow) in [
            ("DELETE", "/admin/stats", "GET, HEAD"),
            ("PUT", "/admin/users", "GET, HEAD, POST"),
            ("POST", "/admin/api-keys/3", "GET, HEAD, PATCH, DELETE"),
            ("TRACE", "/admin/routes/3", "GET, HEAD, PATCH, PUT, DELETE"),
            ("GET", "/admin/users/3/quota/reset", "POST"),
        ] {
            let r = f.admin(method, path, "{}");
            assert_eq!(r.status, 405, "{method} {path}");
            let got: Vec<&str> = r
                .headers
                .iter()
                .filter(|(k, _)| k == "Allow")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(got, [allow], "{method} {path}");
        }
    }

    #[test]
    fn bodies_must_be_one_bounded_json_object() {
        let f = Fixture::new();
        for bad in ["", "  ", "not json", "[1,2]", "\"text\"", "{\"email\":"] {
            let r = f.admin("POST", "/admin/users", bad);
            assert_eq!(r.status, 400, "{bad:?}");
            assert_eq!(r.json_body()["error"]["code"], "bad_request", "{bad:?}");
        }
        let huge = format!("{{\"name\":\"{}\"}}", "a".repeat(70 * 1024));
        assert_eq!(f.admin("POST", "/admin/users", &huge).status, 413);
    }

    #[test]
    fn path_ids_must_be_positive_integers() {
        let f = Fixture::new();
        for path in [
            "/admin/users/abc",
            "/admin/users/0",
            "/admin/api-keys/-1",
            "/admin/routes/1.5",
        ] {
            assert_eq!(
                refusal(&f.admin("GET", path, "")),
                (400, "id".to_string()),
                "{path}"
            );
        }
        let r = f.admin("GET", "/admin/api-keys?userId=x", "");
        assert_eq!(refusal(&r), (400, "userId".to_string()));
        let r = f.admin("GET", "/admin/users?limit=0", "");
        assert_eq!(refusal(&r), (400, "limit".to_string()));
        let r = f.admin("GET", "/admin/routes?cursor=abc", "");
        assert_eq!(refusal(&r), (400, "cursor".to_string()));
    }

    #[test]
    fn user_fields_are_validated_naming_the_field() {
        let f = Fixture::new();
        for (body, field) in [
            (r#"{"name":"Ada"}"#, "email"),
            (r#"{"email":"ada@example.com"}"#, "name"),
            (r#"{"email":"not-an-email","name":"Ada"}"#, "email"),
            (r#"{"email":7,"name":"Ada"}"#, "email"),
            (r#"{"email":"ada@example.com","name":"A\u0000da"}"#, "name"),
        ] {
            let r = f.admin("POST", "/admin/users", body);
            assert_eq!(refusal(&r), (400, field.to_string()), "{body}");
        }
    }

    #[test]
    fn key_fields_are_validated_naming_the_field() {
        let f = Fixture::new();
        for (body, field) in [
            (r#"{"name":"k"}"#, "userId"),
            (r#"{"userId":0,"name":"k"}"#, "userId"),
            (r#"{"userId":1}"#, "name"),
            (r#"{"userId":1,"name":"k","rateLimit":0}"#, "rateLimit"),
            (r#"{"userId":1,"name":"k","rateLimit":"lots"}"#, "rateLimit"),
            (r#"{"userId":1,"name":"k","scopes":["admin"]}"#, "scopes"),
            (r#"{"userId":1,"name":"k","scopes":[]}"#, "scopes"),
            (
                r#"{"userId":1,"name":"k","expiresAt":"tomorrow"}"#,
                "expiresAt",
            ),
            (
                r#"{"userId":1,"name":"k","expiresAt":"2001-01-01T00:00:00Z"}"#,
                "expiresAt",
            ),
            (r#"{"userId":1,"name":"k","planId":"pro"}"#, "planId"),
            (r#"{"userId":1,"name":"k","limits":{}}"#, "limits"),
            (r#"{"userId":1,"name":"k","quota":7}"#, "quota"),
            (r#"{"userId":1,"name":"k","rate":7}"#, "rate"),
        ] {
            let r = f.admin("POST", "/admin/api-keys", body);
            assert_eq!(refusal(&r), (400, field.to_string()), "{body}");
        }
        let r = f.admin("PATCH", "/admin/api-keys/1", r#"{"scopes":"read"}"#);
        assert_eq!(refusal(&r), (400, "scopes".to_string()));
    }

    #[test]
    fn route_fields_are_validated_naming_the_field() {
        let f = Fixture::new();
        for (body, field) in [
            (r#"{"prefix":"/a","targetUrl":"http://h"}"#, "userId"),
            (r#"{"userId":1,"targetUrl":"http://h"}"#, "prefix"),
            (r#"{"userId":1,"prefix":"/a"}"#, "targetUrl"),
            (
                r#"{"userId":1,"prefix":"/admin","targetUrl":"http://h"}"#,
                "prefix",
            ),
            (
                r#"{"userId":1,"prefix":"a","targetUrl":"http://h"}"#,
                "prefix",
            ),
            (
                r#"{"userId":1,"prefix":"/a","targetUrl":"ftp://h"}"#,
                "targetUrl",
            ),
            (
                r#"{"userId":1,"prefix":"/a","targetUrl":"http://u:p@h"}"#,
                "targetUrl",
            ),
            (
                r#"{"userId":1,"prefix":"/a","targetUrl":"http://h","methods":[]}"#,
                "methods",
            ),
            (
                r#"{"userId":1,"prefix":"/a","targetUrl":"http://h","timeoutMs":0}"#,
                "timeoutMs",
            ),
            (
                r#"{"userId":1,"prefix":"/a","targetUrl":"http://h","host":"a b"}"#,
                "host",
            ),
        ] {
            let r = f.admin("POST", "/admin/routes", body);
            assert_eq!(refusal(&r), (400, field.to_string()), "{body}");
        }
    }
}
