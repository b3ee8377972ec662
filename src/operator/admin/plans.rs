//! `/admin/plans`: create, list, read, change and delete plans, and the reading of the
//! limit fields (`planId`, `limits`, `quota`) that keys and users carry too. The plan
//! cache is reloaded before the reply leaves; other replicas learn of it by NOTIFY.

use crate::error::{Error, Result};
use crate::gateway::policy::Plans;
use crate::http::Reply;
use crate::operator::input::{self, change, id, required, string};
use crate::operator::ts;
use crate::store::plans::{
    self, Change, Counting, LimitSpec, Plan, PlanChanges, PlanFields, PlanUse, Policy,
    PolicyChanges, QuotaSpec,
};
use crate::store::Pool;
use serde_json::{json, Map, Value};

/// What a plan body may set.
pub const FIELDS: &[&str] = &["name", "limits", "quota", "counting"];

pub fn plan_json(p: &Plan, used: PlanUse) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "limits": limits_json(&p.limits),
        "quota": p.quota.as_ref().map(QuotaSpec::to_json),
        "counting": p.counting.map(Counting::as_str),
        "keys": used.keys,
        "users": used.users,
        "createdAt": ts(p.created_at),
        "updatedAt": ts(p.updated_at),
    })
}

fn limits_json(l: &[LimitSpec]) -> Value {
    Value::Array(l.iter().map(LimitSpec::to_json).collect())
}

/// `planId`, `limits`, `quota` as a key or user record shows its own (null: inherited or
/// none).
pub fn policy_json(p: &Policy, into: &mut Value) {
    into["planId"] = json!(p.plan_id);
    into["limits"] = p.limits.as_deref().map_or(Value::Null, limits_json);
    into["quota"] = p.quota.as_ref().map_or(Value::Null, QuotaSpec::to_json);
}

fn limits(v: &Value) -> Result<Vec<LimitSpec>> {
    LimitSpec::list_from_json(v, "limits")
}

fn quota(v: &Value) -> Result<QuotaSpec> {
    QuotaSpec::from_json(v, "quota")
}

/// `counting`: `"exact"` or `"lease"` (docs/limits.md#leases).
pub fn counting(v: &Value) -> Result<Counting> {
    v.as_str()
        .and_then(Counting::parse)
        .ok_or_else(|| Error::field("counting", "must be \"exact\" or \"lease\""))
}

/// A key's or plan's `counting` as created: absent or null is none of its own.
pub fn own_counting(body: &Map<String, Value>) -> Result<Option<Counting>> {
    match body.get("counting") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => counting(v).map(Some),
    }
}

fn plan_id(body: &Map<String, Value>) -> Result<i64> {
    required(id(body, "planId")?, "planId")
}

/// The limit fields of a key or user being created (absent or null: none of its own).
pub fn policy(body: &Map<String, Value>) -> Result<Policy> {
    fn set<T>(c: Change<T>) -> Option<T> {
        match c {
            Change::Set(v) => Some(v),
            Change::Keep | Change::Clear => None,
        }
    }
    Ok(Policy {
        plan_id: id(body, "planId")?,
        limits: set(change(body, "limits", limits)?),
        quota: set(change(body, "quota", quota)?),
    })
}

/// The limit fields of a key or user `PATCH`: absent keeps, null clears.
pub fn policy_changes(body: &Map<String, Value>) -> Result<PolicyChanges> {
    Ok(PolicyChanges {
        plan_id: change(body, "planId", |_| plan_id(body))?,
        limits: change(body, "limits", limits)?,
        quota: change(body, "quota", quota)?,
    })
}

/// A plan's answer, with how many keys and users are on it.
fn reply(pool: &Pool, status: u16, p: &Plan) -> Result<Reply> {
    let used = plans::uses(pool, &[p.id])?.pop().unwrap_or_default();
    Ok(Reply::json(status, &plan_json(p, used)))
}

/// `{"name","limits"?,"quota"?}`; `limits` absent or null is `[]` (a plan may be a quota
/// only).
pub fn create(pool: &Pool, cache: &Plans, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, FIELDS)?;
    let plan = plans::insert(pool, &read_new(body)?)?;
    cache.reload(pool)?;
    reply(pool, 201, &plan)
}

/// Reads every field of a plan being created (the caller has refused unknown fields):
/// `POST /admin/plans` and a `tollgate apply` file read plans with this one function.
pub fn read_new(body: &Map<String, Value>) -> Result<PlanFields> {
    Ok(PlanFields {
        name: required(string(body, "name", 200)?, "name")?,
        limits: match body.get("limits") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => limits(v)?,
        },
        quota: match body.get("quota") {
            None | Some(Value::Null) => None,
            Some(v) => Some(quota(v)?),
        },
        counting: own_counting(body)?,
    })
}

pub fn list(pool: &Pool) -> Result<Reply> {
    let all = plans::list(pool)?;
    let ids: Vec<i64> = all.iter().map(|p| p.id).collect();
    let used = plans::uses(pool, &ids)?;
    let items = all.iter().zip(used).map(|(p, u)| plan_json(p, u)).collect();
    Ok(Reply::json(200, &Value::Array(items)))
}

pub fn get(pool: &Pool, id: i64) -> Result<Reply> {
    let plan = plans::get(pool, id)?.ok_or_else(not_found)?;
    reply(pool, 200, &plan)
}

/// Absent fields keep their value; `quota: null` removes the quota, `limits: null` is `[]`
/// (the column is never null: a plan always says what its keys get). Every key on the
/// plan, directly or through its user, counts by the new fields from the next request.
pub fn update(pool: &Pool, cache: &Plans, id: i64, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, FIELDS)?;
    let changes = PlanChanges {
        name: string(body, "name", 200)?,
        limits: match change(body, "limits", limits)? {
            Change::Keep => None,
            Change::Clear => Some(Vec::new()),
            Change::Set(l) => Some(l),
        },
        quota: change(body, "quota", quota)?,
        counting: change(body, "counting", counting)?,
    };
    if body.get("name") == Some(&Value::Null) {
        return Err(Error::field(
            "name",
            "must be a string; a plan always has a name",
        ));
    }
    let plan = plans::update(pool, id, &changes)?.ok_or_else(not_found)?;
    cache.reload(pool)?;
    reply(pool, 200, &plan)
}

/// 409 while a key or user is on the plan (the foreign keys refuse).
pub fn delete(pool: &Pool, cache: &Plans, id: i64) -> Result<Reply> {
    if !plans::delete(pool, id)? {
        return Err(not_found());
    }
    cache.reload(pool)?;
    Ok(Reply::empty(204))
}

fn not_found() -> Error {
    Error::NotFound("plan".into())
}
