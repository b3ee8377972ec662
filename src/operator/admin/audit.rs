//! The audit log: every admin write (and a key holder's `POST /me/rotate`) appends one row
//! saying who, from where, what, on which record, and the record before and after, as the
//! admin API shows it. `GET /admin/audit` reads it back, newest first.
//!
//! The row is written right after the change succeeds, in the same request, not in the
//! change's transaction: each store function owns its statement and connection. A write
//! that fails (4xx, 5xx) leaves no row; a row that cannot be written after a change that
//! committed is logged as an error and the change still answered, since it happened.

use super::{keys, paged, plans, routes, users};
use crate::config::MAX_PAGE_LIMIT;
use crate::error::{Error, Result};
use crate::http::{Body, Ctx, Reply};
use crate::logs::client_ip::ClientIps;
use crate::operator::{input, ts};
use crate::store::audit::{self, AuditRow, NewAudit};
use crate::store::Pool;
use serde_json::{json, Value};

/// Fields never kept, at any depth of a record: secrets and what would let one be checked.
/// (`signingSecret` is a route's; listed so a route that shows it never leaks it here.)
pub const REDACTED_FIELDS: &[&str] = &[
    "rawKey",
    "signingSecret",
    "keyHash",
    "prevKeyHash",
    "secret",
    "adminSecret",
];
const REDACTED: &str = "[redacted]";

/// The record an admin write is about: its kind, and its id when it already exists.
#[derive(Clone, Copy)]
pub enum Target {
    User(Option<i64>),
    Key(Option<i64>),
    Plan(Option<i64>),
    Route(Option<i64>),
}

impl Target {
    fn kind(self) -> &'static str {
        match self {
            Target::User(_) => "user",
            Target::Key(_) => "key",
            Target::Plan(_) => "plan",
            Target::Route(_) => "route",
        }
    }

    fn id(self) -> Option<i64> {
        match self {
            Target::User(id) | Target::Key(id) | Target::Plan(id) | Target::Route(id) => id,
        }
    }

    /// The record as `GET /admin/<kind>s/:id` answers it, `None` when there is none.
    fn record(self, pool: &Pool) -> Result<Option<Value>> {
        let Some(id) = self.id() else {
            return Ok(None);
        };
        let got = match self {
            Target::User(_) => users::get(pool, id),
            Target::Key(_) => keys::get(pool, id),
            Target::Plan(_) => plans::get(pool, id),
            Target::Route(_) => routes::get(pool, id),
        };
        match got {
            Ok(reply) => Ok(body_json(&reply)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Who made the change, and from which address (kept as `TOLLGATE_LOG_CLIENT_IP` says).
pub struct Actor<'a> {
    pub name: String,
    pub ctx: &'a Ctx,
    pub ips: &'a ClientIps,
}

/// Runs `write` and, when it succeeds, appends its row. `action` is `<kind>.<verb>`;
/// a quota reset changes a count, not the record, so its row has neither before nor after.
pub fn audited(
    pool: &Pool,
    actor: &Actor,
    action: &str,
    target: Target,
    write: &mut dyn FnMut() -> Result<Reply>,
) -> Result<Reply> {
    let records = !action.ends_with(".quota_reset");
    // Read before the change; its failure does not stop the write, whose own refusal
    // (a 400 judged without the database) is the better answer.
    let before = if records {
        target.record(pool)
    } else {
        Ok(None)
    };
    let reply = write()?;
    let before = before.unwrap_or_else(|e| {
        log::warn!("audit: the record before {action} could not be read: {e}");
        None
    });
    if !(200..300).contains(&reply.status) {
        return Ok(reply);
    }
    let after = if records { body_json(&reply) } else { None };
    // A create learns its id from the record it made.
    let id = target
        .id()
        .or_else(|| after.as_ref().and_then(|a| a["id"].as_i64()));
    let target = match id {
        Some(id) => format!("{}:{id}", target.kind()),
        None => target.kind().to_string(),
    };
    let (before, after) = (before.map(redact), after.map(redact));
    let row = NewAudit {
        actor: &actor.name,
        client_ip: &actor.ips.stored(&actor.ctx.client_ip),
        action,
        target: &target,
        before: before.as_ref(),
        after: after.as_ref(),
    };
    if let Err(e) = audit::insert(pool, &row) {
        log::error!("audit row for {action} on {target} not written: {e}");
    }
    Ok(reply)
}

fn body_json(reply: &Reply) -> Option<Value> {
    match &reply.body {
        Body::Bytes(b) if !b.is_empty() => serde_json::from_slice(b).ok(),
        _ => None,
    }
}

/// `v` with every field named in `REDACTED_FIELDS` replaced, at any depth.
pub fn redact(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if REDACTED_FIELDS.contains(&k.as_str()) {
                        *x = json!(REDACTED);
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

const PARAMS: &[&str] = &["target", "limit", "before"];

/// `GET /admin/audit?target=&limit=&before=`: newest first; `X-Next-Cursor` is the
/// `before` of the next page.
pub fn list(pool: &Pool, ctx: &Ctx) -> Result<Reply> {
    input::only_params(ctx, PARAMS)?;
    let target = input::query_param(ctx, "target")?;
    if let Some(t) = &target {
        if !valid_target(t) {
            return Err(Error::field(
                "target",
                "must be user:<id>, key:<id>, plan:<id> or route:<id>",
            ));
        }
    }
    let limit = match input::query_param(ctx, "limit")? {
        None => MAX_PAGE_LIMIT,
        Some(v) => input::parse_id(&v)
            .ok_or_else(|| Error::field("limit", "must be a positive integer"))?
            .min(MAX_PAGE_LIMIT),
    };
    let before = input::query_id(ctx, "before")?.unwrap_or(i64::MAX);
    let rows = audit::list(pool, target.as_deref(), before, limit + 1)?;
    Ok(paged(rows, limit, |r| r.id, row_json))
}

fn valid_target(t: &str) -> bool {
    match t.split_once(':') {
        Some((kind, id)) => {
            ["user", "key", "plan", "route"].contains(&kind)
                && !id.starts_with('0')
                && id.bytes().all(|b| b.is_ascii_digit())
                && input::parse_id(id).is_some()
        }
        None => false,
    }
}

fn row_json(r: &AuditRow) -> Value {
    json!({
        "id": r.id,
        "at": ts(r.at),
        "actor": r.actor,
        "clientIp": r.client_ip,
        "action": r.action,
        "target": r.target,
        "before": r.before,
        "after": r.after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_reaches_every_depth_and_leaves_other_fields() {
        let v = redact(json!({
            "id": 3, "rawKey": "gw_a_b",
            "nested": [{"signingSecret": "s", "name": "n"}],
        }));
        assert_eq!(
            v,
            json!({"id": 3, "rawKey": "[redacted]",
                   "nested": [{"signingSecret": "[redacted]", "name": "n"}]})
        );
    }

    #[test]
    fn targets_are_a_kind_and_a_positive_id() {
        for ok in ["user:7", "key:12", "plan:1", "route:300"] {
            assert!(valid_target(ok), "{ok}");
        }
        for bad in [
            "user", "user:", "user:0", "user:07", "key:-1", "widget:1", "key:1x", "",
        ] {
            assert!(!valid_target(bad), "{bad}");
        }
    }
}
