//! `/admin/users`: create, list, read, change and delete users, and reset a user's
//! owner-wide quota.

use super::paged;
use super::plans::{policy, policy_changes, policy_json};
use crate::error::{Error, Result};
use crate::gateway::keys::KeyCache;
use crate::gateway::routes::RouteTable;
use crate::gateway::sync::refresh_keys;
use crate::http::{Ctx, Reply};
use crate::operator::input::{self, change, required, string};
use crate::operator::ts;
use crate::store::counters::{self, Subject};
use crate::store::plans::{Change, Policy};
use crate::store::users::{self, NewUser, User, UserChanges};
use crate::store::Pool;
use serde_json::{json, Map, Value};

/// What a user body may set.
pub const FIELDS: &[&str] = &[
    "email",
    "name",
    "planId",
    "limits",
    "quota",
    "metadata",
    "externalId",
];

pub fn user_json(u: &User) -> Value {
    let mut v = json!({
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "createdAt": ts(u.created_at),
        "externalId": u.external_id,
        "metadata": u.metadata,
    });
    policy_json(&u.policy, &mut v);
    v
}

/// An `email` field, checked.
fn email(body: &Map<String, Value>) -> Result<Option<String>> {
    let email = string(body, "email", 254)?;
    if email.as_deref().is_some_and(|e| !valid_email(e)) {
        return Err(Error::field("email", "must be an email address"));
    }
    Ok(email)
}

/// A whole user as a body that creates one describes it.
pub struct UserSpec {
    pub email: String,
    pub name: String,
    pub external_id: Option<String>,
    pub metadata: Value,
    pub policy: Policy,
}

impl UserSpec {
    pub fn as_new(&self) -> NewUser<'_> {
        NewUser {
            email: &self.email,
            name: &self.name,
            policy: &self.policy,
            metadata: &self.metadata,
            external_id: self.external_id.as_deref(),
        }
    }
}

/// Reads every field of a user being created (the caller has refused unknown fields):
/// `POST /admin/users` and a `tollgate apply` file read users with this one function.
pub fn read_new(body: &Map<String, Value>) -> Result<UserSpec> {
    Ok(UserSpec {
        email: required(email(body)?, "email")?,
        name: required(string(body, "name", 200)?, "name")?,
        external_id: external_id(body)?,
        policy: policy(body)?,
        metadata: input::metadata(body)?.unwrap_or_else(|| json!({})),
    })
}

pub fn create(pool: &Pool, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, FIELDS)?;
    let user = users::insert(pool, &read_new(body)?.as_new())?;
    Ok(Reply::json(201, &user_json(&user)))
}

/// Absent fields keep their value; `null` clears `planId`, `limits` and `quota` (never
/// `email` or `name`). A change to those three reaches this replica's cached keys before
/// the reply leaves (the others' through NOTIFY), so the next request counts by it.
pub fn update(pool: &Pool, cache: &KeyCache, id: i64, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, FIELDS)?;
    for field in ["email", "name"] {
        if body.get(field) == Some(&Value::Null) {
            return Err(Error::field(
                field,
                "must be a string; it cannot be cleared",
            ));
        }
    }
    let changes = UserChanges {
        email: email(body)?,
        name: string(body, "name", 200)?,
        policy: policy_changes(body)?,
        metadata: input::metadata(body)?,
        external_id: change(body, "externalId", |_| {
            required(external_id(body)?, "externalId")
        })?,
    };
    let user = users::update(pool, id, &changes)?.ok_or_else(not_found)?;
    // Cached keys carry their user's limits and external id (sent upstream by routes
    // with identity headers).
    if changes.policy.any() || !matches!(changes.external_id, Change::Keep) {
        refresh_keys(pool, cache)?;
    }
    Ok(Reply::json(200, &user_json(&user)))
}

/// Zeroes the user's owner-wide quota count for the current period (its keys' own quotas
/// are reset on each key).
pub fn reset_quota(pool: &Pool, id: i64) -> Result<Reply> {
    if !counters::reset_quota(pool, Subject::User, id)? {
        return Err(not_found());
    }
    Ok(Reply::json(200, &json!({"id": id, "quotaReset": true})))
}

/// The team's own customer id: any non-empty printable string of up to 200 characters.
fn external_id(body: &Map<String, Value>) -> Result<Option<String>> {
    string(body, "externalId", 200)
}

fn not_found() -> Error {
    Error::NotFound("user".into())
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

/// All users, or with `?externalId=` the one with that id (an array of one or none).
pub fn list(pool: &Pool, ctx: &Ctx) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let external_id = input::query_param(ctx, "externalId")?;
    let rows = users::list(pool, after, external_id.as_deref(), limit + 1)?;
    Ok(paged(rows, limit, |u| u.id, user_json))
}

pub fn get(pool: &Pool, id: i64) -> Result<Reply> {
    let user = users::get(pool, id)?.ok_or_else(not_found)?;
    Ok(Reply::json(200, &user_json(&user)))
}

/// Deletes the user with its keys and routes; the key cache and route table forget them
/// before the reply leaves.
pub fn delete(pool: &Pool, cache: &KeyCache, routes: &RouteTable, id: i64) -> Result<Reply> {
    if !users::delete(pool, id)? {
        return Err(not_found());
    }
    cache.forget_user(id);
    routes.reload(pool)?;
    Ok(Reply::empty(204))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_need_one_at_and_a_dotted_domain() {
        assert!(valid_email("a@b.co"));
        for bad in ["a", "a@b", "@b.co", "a@@b.co", "a b@c.co", "a@.co"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
