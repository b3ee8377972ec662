//! `GET /me`: a key holder's own key, its plan, and where every limit and quota that
//! applies to it stands, read without counting a request. The admin API answers the same
//! for any key or user (`/admin/api-keys/:id/limits`, `/admin/users/:id/limits`), which is
//! what the dashboard shows.

use super::admin::audit::{audited, Actor, Target};
use super::admin::keys;
use super::{input, ts, Operator, READ_ONLY};
use crate::error::{Error, Result};
use crate::gateway::policy::{owner_wide, Limits};
use crate::gateway::ratelimit::LimitState;
use crate::http::{Reply, Request};
use crate::store;
use crate::store::keys::KeyInfo;
use crate::store::users::User;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub fn handle(op: &Operator, rq: &mut Request) -> Result<Reply> {
    let ctx = &rq.ctx;
    let rotate = match ctx.path.trim_end_matches('/') {
        "/me" => false,
        "/me/rotate" => true,
        _ => return Err(Error::NotFound("endpoint".into())),
    };
    match (rotate, ctx.method.as_str()) {
        (false, "GET" | "HEAD") | (true, "POST") => {}
        (false, _) => return Err(Error::method_not_allowed(READ_ONLY)),
        (true, _) => return Err(Error::method_not_allowed("POST")),
    }
    let key = op
        .gateway
        .authenticate_key_holder(op.pool, op.health, ctx)?;
    if rotate {
        // Any key may rotate itself, `read` ones too: it changes the credential, not the
        // data behind the routes. The same rules as the admin's rotation apply.
        let body = input::json_object_or_empty(&mut rq.body)?;
        let cache = &op.gateway.auth.cache;
        let actor = Actor {
            name: format!("key:{}", key.id),
            ctx,
            ips: op.client_ips,
        };
        return audited(
            op.pool,
            &actor,
            "key.rotate",
            Target::Key(Some(key.id)),
            &mut || keys::rotate(op.pool, cache, op.bcrypt_cost, key.id, &body),
        );
    }
    let mut v = key_limits(op, &key.info)?;
    // Metadata is not cached (the request path never needs it): read with the record.
    let record = op
        .health
        .call(|| store::keys::get(op.pool, key.id))?
        .ok_or_else(|| Error::NotFound("API key".into()))?;
    v["metadata"] = record.metadata;
    v["user"] = json!({"externalId": record.owner_external_id, "metadata": record.owner_metadata});
    Ok(Reply::json(200, &v))
}

/// A key's plan and every limit and quota that applies to it, the user's owner-wide ones
/// included (named `user.*`, as in the headers).
pub fn key_limits(op: &Operator, k: &KeyInfo) -> Result<Value> {
    let gw = op.gateway;
    let limits = gw.plans.resolve_now(op.pool, k, gw.rate_window_secs);
    let plan = limits
        .plan_id
        .and_then(|id| gw.plans.get(id))
        .map(|p| json!({"id": p.id, "name": p.name}));
    let mut v = states_json(op, k.id, k.user_id, &limits)?;
    v["keyId"] = json!(k.id);
    v["userId"] = json!(k.user_id);
    v["plan"] = plan.unwrap_or(Value::Null);
    Ok(v)
}

/// Where a user's owner-wide limits and quota stand.
pub fn user_limits(op: &Operator, u: &User) -> Result<Value> {
    let limits = Limits {
        user: owner_wide(&u.policy, u.created_at),
        ..Default::default()
    };
    let mut v = states_json(op, 0, u.id, &limits)?;
    v["userId"] = json!(u.id);
    Ok(v)
}

/// `{"limits":[...], "quotas":[...]}`: each limit with what is left and when its bucket
/// ends; each quota with its count in the period and when the next one starts.
fn states_json(op: &Operator, key_id: i64, user_id: i64, limits: &Limits) -> Result<Value> {
    let states = if limits.is_empty() {
        Vec::new()
    } else {
        let counters = &op.gateway.limiter.counters;
        op.health.call(|| counters.peek(key_id, user_id, limits))?
    };
    let (quotas, windows): (Vec<&LimitState>, Vec<&LimitState>) =
        states.iter().partition(|s| s.quota);
    let at = |secs: u64| {
        DateTime::<Utc>::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
            .map(ts)
            .unwrap_or_default()
    };
    let windows: Vec<Value> = windows
        .iter()
        .map(|s| {
            json!({"name": s.label(), "limit": s.limit, "windowSecs": s.window_secs,
                   "used": s.used, "remaining": s.remaining, "resetsAt": at(s.reset_at)})
        })
        .collect();
    let quotas: Vec<Value> = quotas
        .iter()
        .map(|s| {
            json!({"name": s.label(), "limit": s.limit, "periodSecs": s.window_secs,
                   "used": s.used, "remaining": s.remaining, "resetsAt": at(s.reset_at)})
        })
        .collect();
    Ok(json!({"limits": windows, "quotas": quotas}))
}
