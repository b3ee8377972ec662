//! `plans`, and the limit and quota shapes stored (as JSON) on plans, keys and users. One
//! parser reads them from an admin body and from the database, so what is stored is always
//! what the admin API accepted.

use super::{is_fk_violation, is_unique_violation, Pool};
use crate::config::{MAX_LIMITS, MAX_LIMIT_WINDOW_SECS, MAX_QUOTA};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::{GenericClient, Row};
use serde_json::{json, Value};
use std::sync::Arc;

/// One named sliding-window limit: at most `limit` requests in any `window_secs`.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitSpec {
    pub name: Arc<str>,
    pub limit: i64,
    pub window_secs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

/// Where quota periods start: UTC calendar days/months, or the subject's creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Calendar,
    Created,
}

/// Admitted requests per period, reset at each period boundary.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaSpec {
    pub limit: i64,
    pub period: Period,
    pub anchor: Anchor,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

impl Anchor {
    pub fn as_str(self) -> &'static str {
        match self {
            Anchor::Calendar => "calendar",
            Anchor::Created => "created",
        }
    }
}

impl LimitSpec {
    pub fn to_json(&self) -> Value {
        json!({"name": &*self.name, "limit": self.limit, "windowSecs": self.window_secs})
    }

    /// `"limits"`: an array of `{"name","limit","windowSecs"}` with distinct names.
    pub fn list_from_json(v: &Value, field: &'static str) -> Result<Vec<LimitSpec>> {
        let Value::Array(items) = v else {
            return Err(Error::field(field, "must be an array of limits"));
        };
        if items.len() > MAX_LIMITS {
            return Err(Error::field(
                field,
                format!("at most {MAX_LIMITS} limits are allowed"),
            ));
        }
        let mut out: Vec<LimitSpec> = Vec::with_capacity(items.len());
        for item in items {
            let l = LimitSpec::from_json(item, field)?;
            if out.iter().any(|o| o.name == l.name) {
                return Err(Error::field(
                    field,
                    format!("the name \"{}\" is used twice", l.name),
                ));
            }
            out.push(l);
        }
        Ok(out)
    }

    fn from_json(v: &Value, field: &'static str) -> Result<LimitSpec> {
        let Value::Object(m) = v else {
            return Err(Error::field(
                field,
                "each limit must be an object {\"name\",\"limit\",\"windowSecs\"}",
            ));
        };
        if let Some(k) = m
            .keys()
            .find(|k| !["name", "limit", "windowSecs"].contains(&k.as_str()))
        {
            return Err(unknown(field, k, "a limit takes name, limit, windowSecs"));
        }
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::field(field, "each limit needs a \"name\" (a string)"))?;
        if !valid_name(name) {
            return Err(Error::field(
                field,
                format!(
                    "limit name \"{name}\": 1 to 32 of a-z, A-Z, 0-9, '_' and '-', \
                     and not \"quota\""
                ),
            ));
        }
        let limit = whole(m.get("limit"), 1, MAX_QUOTA).ok_or_else(|| {
            Error::field(
                field,
                format!("limit \"{name}\": \"limit\" must be an integer from 1 to {MAX_QUOTA}"),
            )
        })?;
        let window =
            whole(m.get("windowSecs"), 1, i64::from(MAX_LIMIT_WINDOW_SECS)).ok_or_else(|| {
                Error::field(
                    field,
                    format!(
                        "limit \"{name}\": \"windowSecs\" must be an integer from 1 to \
                         {MAX_LIMIT_WINDOW_SECS} (one day)"
                    ),
                )
            })?;
        Ok(LimitSpec {
            name: name.into(),
            limit,
            window_secs: window as u32,
        })
    }
}

impl QuotaSpec {
    pub fn to_json(&self) -> Value {
        json!({"limit": self.limit, "period": self.period.as_str(),
               "anchor": self.anchor.as_str()})
    }

    /// `"quota"`: `{"limit", "period": "day"|"month", "anchor": "calendar"|"created"}`
    /// (`anchor` defaults to `calendar`).
    pub fn from_json(v: &Value, field: &'static str) -> Result<QuotaSpec> {
        let Value::Object(m) = v else {
            return Err(Error::field(
                field,
                "must be an object {\"limit\",\"period\",\"anchor\"}",
            ));
        };
        if let Some(k) = m
            .keys()
            .find(|k| !["limit", "period", "anchor"].contains(&k.as_str()))
        {
            return Err(unknown(field, k, "a quota takes limit, period, anchor"));
        }
        let limit = whole(m.get("limit"), 1, MAX_QUOTA).ok_or_else(|| {
            Error::field(
                field,
                format!("\"limit\" must be an integer from 1 to {MAX_QUOTA}"),
            )
        })?;
        let period = match m.get("period").and_then(Value::as_str) {
            Some("day") => Period::Day,
            Some("month") => Period::Month,
            _ => {
                return Err(Error::field(
                    field,
                    "\"period\" must be \"day\" or \"month\"",
                ))
            }
        };
        let anchor = match m.get("anchor") {
            None | Some(Value::Null) => Anchor::Calendar,
            Some(v) => match v.as_str() {
                Some("calendar") => Anchor::Calendar,
                Some("created") => Anchor::Created,
                _ => {
                    return Err(Error::field(
                        field,
                        "\"anchor\" must be \"calendar\" or \"created\"",
                    ))
                }
            },
        };
        Ok(QuotaSpec {
            limit,
            period,
            anchor,
        })
    }
}

/// Letters, digits, `_` and `-`, 1–32 long; `quota` names the quota in headers and `/me`,
/// and `.` separates the owner-wide prefix (`user.`), so neither may name a limit.
fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s != "quota"
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A JSON integer in `min..=max` (a float with no fraction counts, as JSON has one number).
fn whole(v: Option<&Value>, min: i64, max: i64) -> Option<i64> {
    let v = v?;
    let n = v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
            .map(|f| f as i64)
    })?;
    (min..=max).contains(&n).then_some(n)
}

/// Limits stored in a `jsonb` column (written only after [`LimitSpec::list_from_json`]).
/// An unknown field inside `field`'s object, named `field.k` (cut short: it is echoed).
fn unknown(field: &str, k: &str, takes: &str) -> Error {
    let name: String = k.chars().take(64).collect();
    Error::field(format!("{field}.{name}"), format!("unknown field; {takes}"))
}

pub fn limits_from_db(v: Option<Value>) -> Option<Vec<LimitSpec>> {
    v.map(|v| LimitSpec::list_from_json(&v, "limits").unwrap_or_default())
}

pub fn quota_from_db(v: Option<Value>) -> Option<QuotaSpec> {
    v.and_then(|v| QuotaSpec::from_json(&v, "quota").ok())
}

pub fn limits_to_db(l: &Option<Vec<LimitSpec>>) -> Option<Value> {
    l.as_ref()
        .map(|l| Value::Array(l.iter().map(LimitSpec::to_json).collect()))
}

pub fn quota_to_db(q: &Option<QuotaSpec>) -> Option<Value> {
    q.as_ref().map(QuotaSpec::to_json)
}

/// The limit fields a key or a user carries; `None` inherits (a key from its plan, or its
/// user's plan; see `gateway::policy`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub plan_id: Option<i64>,
    pub limits: Option<Vec<LimitSpec>>,
    pub quota: Option<QuotaSpec>,
}

impl Policy {
    /// Reads `plan_id, limits, quota` starting at column `at`.
    pub fn from_row(r: &Row, at: usize) -> Policy {
        Policy {
            plan_id: r.get(at),
            limits: limits_from_db(r.get(at + 1)),
            quota: quota_from_db(r.get(at + 2)),
        }
    }
}

/// A change to one nullable field: absent keeps it, `null` clears it, a value sets it.
#[derive(Clone, Debug, Default)]
pub enum Change<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T> Change<T> {
    pub fn is_keep(&self) -> bool {
        matches!(self, Change::Keep)
    }

    /// `(changed, new value)`, as an UPDATE binds them:
    /// `col = CASE WHEN $changed THEN $value ELSE col END`.
    pub fn bind(&self) -> (bool, Option<&T>) {
        match self {
            Change::Keep => (false, None),
            Change::Clear => (true, None),
            Change::Set(v) => (true, Some(v)),
        }
    }
}

/// Plan, limits and quota changes of a PATCH, bound as `$base..$base+5`.
#[derive(Clone, Debug, Default)]
pub struct PolicyChanges {
    pub plan_id: Change<i64>,
    pub limits: Change<Vec<LimitSpec>>,
    pub quota: Change<QuotaSpec>,
}

impl PolicyChanges {
    /// Whether any of the three fields changes.
    pub fn any(&self) -> bool {
        !(self.plan_id.is_keep() && self.limits.is_keep() && self.quota.is_keep())
    }

    /// `plan_id = ..., limits = ..., quota = ...` reading parameters `$base` onwards.
    pub fn set_sql(base: usize) -> String {
        let col = |name: &str, i: usize| {
            format!(
                "{name} = CASE WHEN ${} THEN ${} ELSE {name} END",
                base + i,
                base + i + 1
            )
        };
        format!(
            "{}, {}, {}",
            col("plan_id", 0),
            col("limits", 2),
            col("quota", 4)
        )
    }

    /// The six values for [`PolicyChanges::set_sql`].
    pub fn values(&self) -> (bool, Option<i64>, bool, Option<Value>, bool, Option<Value>) {
        let (p, plan) = self.plan_id.bind();
        let (l, limits) = self.limits.bind();
        let (q, quota) = self.quota.bind();
        (
            p,
            plan.copied(),
            l,
            limits.map(|l| limits_to_db(&Some(l.clone())).unwrap_or_default()),
            q,
            quota.map(QuotaSpec::to_json),
        )
    }
}

/// A foreign key violation on `plan_id`: the body named a plan that does not exist.
pub fn no_such_plan() -> Error {
    Error::field("planId", "no such plan")
}

/// How a plan's or key's requests are counted (`counting`; docs/limits.md#leases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counting {
    /// One request at a time, each in a counting round.
    Exact,
    /// From units a replica counted ahead of need.
    Lease,
}

impl Counting {
    pub fn as_str(self) -> &'static str {
        match self {
            Counting::Exact => "exact",
            Counting::Lease => "lease",
        }
    }

    pub fn parse(s: &str) -> Option<Counting> {
        match s {
            "exact" => Some(Counting::Exact),
            "lease" => Some(Counting::Lease),
            _ => None,
        }
    }

    /// The column's value (NULL: not set here).
    pub fn from_db(v: Option<String>) -> Option<Counting> {
        v.as_deref().and_then(Counting::parse)
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub id: i64,
    pub name: String,
    pub limits: Vec<LimitSpec>,
    pub quota: Option<QuotaSpec>,
    /// None: the gateway's default.
    pub counting: Option<Counting>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLS: &str = "id, name, limits, quota, created_at, updated_at, counting";

impl Plan {
    fn from_row(r: &Row) -> Plan {
        Plan {
            id: r.get(0),
            name: r.get(1),
            limits: limits_from_db(r.get(2)).unwrap_or_default(),
            quota: quota_from_db(r.get(3)),
            created_at: r.get(4),
            updated_at: r.get(5),
            counting: Counting::from_db(r.get(6)),
        }
    }
}

/// A plan's fields as the admin API sets them.
pub struct PlanFields {
    pub name: String,
    pub limits: Vec<LimitSpec>,
    pub quota: Option<QuotaSpec>,
    pub counting: Option<Counting>,
}

fn name_taken(name: &str) -> Error {
    Error::Conflict(format!("a plan named {name} exists"))
}

pub fn insert(pool: &Pool, p: &PlanFields) -> Result<Plan> {
    insert_in(&mut **pool.get()?, p)
}

/// [`insert`] on a connection or transaction of the caller's.
pub fn insert_in(db: &mut impl GenericClient, p: &PlanFields) -> Result<Plan> {
    let sql = format!(
        "INSERT INTO plans (name, limits, quota, counting) VALUES ($1, $2, $3, $4)
         RETURNING {COLS}"
    );
    let limits = limits_to_db(&Some(p.limits.clone()));
    let counting = p.counting.map(Counting::as_str);
    match db.query_one(
        sql.as_str(),
        &[&p.name, &limits, &quota_to_db(&p.quota), &counting],
    ) {
        Ok(row) => Ok(Plan::from_row(&row)),
        Err(e) if is_unique_violation(&e) => Err(name_taken(&p.name)),
        Err(e) => Err(e.into()),
    }
}

/// Every plan, by id (there are few: they are tiers, not customers).
pub fn list(pool: &Pool) -> Result<Vec<Plan>> {
    list_in(&mut **pool.get()?)
}

/// [`list`] on a connection or transaction of the caller's.
pub fn list_in(db: &mut impl GenericClient) -> Result<Vec<Plan>> {
    let sql = format!("SELECT {COLS} FROM plans ORDER BY id");
    let rows = db.query(sql.as_str(), &[])?;
    Ok(rows.iter().map(Plan::from_row).collect())
}

pub fn get(pool: &Pool, id: i64) -> Result<Option<Plan>> {
    let sql = format!("SELECT {COLS} FROM plans WHERE id = $1");
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.as_ref().map(Plan::from_row))
}

/// What a plan `PATCH` changes; `None` / `Change::Keep` keeps the stored value. Applied
/// in one statement, so two PATCHes of different fields cannot undo each other.
#[derive(Default)]
pub struct PlanChanges {
    pub name: Option<String>,
    pub limits: Option<Vec<LimitSpec>>,
    pub quota: Change<QuotaSpec>,
    pub counting: Change<Counting>,
}

pub fn update(pool: &Pool, id: i64, c: &PlanChanges) -> Result<Option<Plan>> {
    update_in(&mut **pool.get()?, id, c)
}

/// [`update`] on a connection or transaction of the caller's.
pub fn update_in(db: &mut impl GenericClient, id: i64, c: &PlanChanges) -> Result<Option<Plan>> {
    let sql = format!(
        "UPDATE plans SET name = coalesce($2, name), limits = coalesce($3, limits),
                quota = CASE WHEN $4 THEN $5 ELSE quota END,
                counting = CASE WHEN $6 THEN $7 ELSE counting END, updated_at = now()
          WHERE id = $1 RETURNING {COLS}"
    );
    let limits = limits_to_db(&c.limits);
    let (q, quota) = c.quota.bind();
    let quota = quota.map(QuotaSpec::to_json);
    let (k, counting) = c.counting.bind();
    let counting = counting.map(|c| c.as_str());
    match db.query_opt(
        sql.as_str(),
        &[&id, &c.name, &limits, &q, &quota, &k, &counting],
    ) {
        Ok(row) => Ok(row.as_ref().map(Plan::from_row)),
        Err(e) if is_unique_violation(&e) => Err(name_taken(c.name.as_deref().unwrap_or(""))),
        Err(e) => Err(e.into()),
    }
}

/// How many keys are on a plan directly (revoked ones too: they still hold it) and how
/// many users are on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanUse {
    pub keys: i64,
    pub users: i64,
}

/// [`PlanUse`] of each of these plans, in the order given (the partial indexes on
/// `plan_id` make each count an index scan).
pub fn uses(pool: &Pool, ids: &[i64]) -> Result<Vec<PlanUse>> {
    let rows = pool.get()?.query(
        "SELECT (SELECT count(*) FROM api_keys k WHERE k.plan_id = p.id),
                (SELECT count(*) FROM users u WHERE u.plan_id = p.id)
           FROM unnest($1::int8[]) WITH ORDINALITY AS p(id, n) ORDER BY p.n",
        &[&ids],
    )?;
    Ok(rows
        .iter()
        .map(|r| PlanUse {
            keys: r.get(0),
            users: r.get(1),
        })
        .collect())
}

/// Deletes a plan; a plan that a key or user is on is 409 (the foreign keys refuse).
pub fn delete(pool: &Pool, id: i64) -> Result<bool> {
    delete_in(&mut **pool.get()?, id)
}

/// [`delete`] on a connection or transaction of the caller's.
pub fn delete_in(db: &mut impl GenericClient, id: i64) -> Result<bool> {
    match db.execute("DELETE FROM plans WHERE id = $1", &[&id]) {
        Ok(n) => Ok(n > 0),
        Err(e) if is_fk_violation(&e) => Err(Error::Conflict(
            "the plan is in use by a key or user; move them to another plan first".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip_and_refuse_what_is_not_a_limit() {
        let v = json!([{"name":"burst","limit":10,"windowSecs":1},
                       {"name":"day","limit":50000,"windowSecs":86400}]);
        let l = LimitSpec::list_from_json(&v, "limits").unwrap();
        assert_eq!(Value::Array(l.iter().map(LimitSpec::to_json).collect()), v);
        for bad in [
            json!({}),
            json!([{"name":"a","limit":0,"windowSecs":1}]),
            json!([{"name":"a","limit":1,"windowSecs":86401}]),
            json!([{"name":"a","limit":1,"windowSecs":1,"extra":1}]),
            json!([{"name":"quota","limit":1,"windowSecs":1}]),
            json!([{"name":"user.x","limit":1,"windowSecs":1}]),
            json!([{"name":"a","limit":1,"windowSecs":1},{"name":"a","limit":2,"windowSecs":2}]),
            json!([{"name":"a","limit":1.5,"windowSecs":1}]),
        ] {
            assert!(LimitSpec::list_from_json(&bad, "limits").is_err(), "{bad}");
        }
    }

    #[test]
    fn quota_anchor_defaults_to_the_calendar() {
        let q = QuotaSpec::from_json(&json!({"limit":5,"period":"month"}), "quota").unwrap();
        assert_eq!(q.anchor, Anchor::Calendar);
        assert!(QuotaSpec::from_json(&json!({"limit":5,"period":"week"}), "quota").is_err());
        assert!(QuotaSpec::from_json(&json!({"limit":5,"period":"day","x":1}), "quota").is_err());
    }
}
