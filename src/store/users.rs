//! `users`: every statement on the table.

use super::plans::{no_such_plan, Change, Policy, PolicyChanges};
use super::{is_fk_violation, is_unique_violation, Pool};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::{GenericClient, Row};
use serde_json::Value;

const COLS: &str = "id, email, name, created_at, plan_id, limits, quota, metadata, external_id";

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The plan its keys inherit, and the limits and quota counted across all its keys.
    pub policy: Policy,
    pub metadata: Value,
    /// The team's own id for this customer, unique when set.
    pub external_id: Option<String>,
}

impl User {
    fn from_row(r: &Row) -> User {
        User {
            id: r.get(0),
            email: r.get(1),
            name: r.get(2),
            created_at: r.get(3),
            policy: Policy::from_row(r, 4),
            metadata: r.get(7),
            external_id: r.get(8),
        }
    }
}

/// A unique violation names the email or the external id, by its constraint.
fn taken(e: &postgres::Error, email: Option<&str>, external_id: Option<&str>) -> Error {
    let constraint = e.as_db_error().and_then(|d| d.constraint()).unwrap_or("");
    if constraint.contains("external_id") {
        let id = external_id.unwrap_or("");
        Error::Conflict(format!("a user with externalId {id} exists"))
    } else {
        let email = email.unwrap_or("");
        Error::Conflict(format!("a user with email {email} exists"))
    }
}

/// A user to create.
pub struct NewUser<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub policy: &'a Policy,
    pub metadata: &'a Value,
    pub external_id: Option<&'a str>,
}

/// Inserts a user; a taken email or external id is 409, a plan that does not exist 400 on
/// `planId`.
pub fn insert(pool: &Pool, u: &NewUser) -> Result<User> {
    insert_in(&mut **pool.get()?, u)
}

/// [`insert`] on a connection or transaction of the caller's.
pub fn insert_in(db: &mut impl GenericClient, u: &NewUser) -> Result<User> {
    let sql = format!(
        "INSERT INTO users (email, name, plan_id, limits, quota, metadata, external_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLS}"
    );
    let limits = super::plans::limits_to_db(&u.policy.limits);
    let quota = super::plans::quota_to_db(&u.policy.quota);
    match db.query_one(
        sql.as_str(),
        &[
            &u.email,
            &u.name,
            &u.policy.plan_id,
            &limits,
            &quota,
            u.metadata,
            &u.external_id,
        ],
    ) {
        Ok(row) => Ok(User::from_row(&row)),
        Err(e) if is_unique_violation(&e) => Err(taken(&e, Some(u.email), u.external_id)),
        Err(e) if is_fk_violation(&e) => Err(no_such_plan()),
        Err(e) => Err(e.into()),
    }
}

/// What a user `PATCH` changes; `None` / `Change::Keep` keeps the stored value.
#[derive(Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
    pub policy: PolicyChanges,
    /// Replaces the whole object.
    pub metadata: Option<Value>,
    pub external_id: Change<String>,
}

pub fn update(pool: &Pool, id: i64, c: &UserChanges) -> Result<Option<User>> {
    update_in(&mut **pool.get()?, id, c)
}

/// [`update`] on a connection or transaction of the caller's.
pub fn update_in(db: &mut impl GenericClient, id: i64, c: &UserChanges) -> Result<Option<User>> {
    let sql = format!(
        "UPDATE users SET email = coalesce($2, email), name = coalesce($3, name),
                metadata = coalesce($10, metadata),
                external_id = CASE WHEN $11 THEN $12 ELSE external_id END, {}
          WHERE id = $1 RETURNING {COLS}",
        PolicyChanges::set_sql(4)
    );
    let (p, plan, l, limits, q, quota) = c.policy.values();
    let (x, external_id) = c.external_id.bind();
    let row = db.query_opt(
        sql.as_str(),
        &[
            &id,
            &c.email,
            &c.name,
            &p,
            &plan,
            &l,
            &limits,
            &q,
            &quota,
            &c.metadata,
            &x,
            &external_id,
        ],
    );
    match row {
        Ok(row) => Ok(row.as_ref().map(User::from_row)),
        Err(e) if is_unique_violation(&e) => Err(taken(
            &e,
            c.email.as_deref(),
            external_id.map(String::as_str),
        )),
        Err(e) if is_fk_violation(&e) => Err(no_such_plan()),
        Err(e) => Err(e.into()),
    }
}

/// Up to `limit` users with ids above `after`, all or the one with this external id.
pub fn list(pool: &Pool, after: i64, external_id: Option<&str>, limit: i64) -> Result<Vec<User>> {
    list_in(&mut **pool.get()?, after, external_id, limit)
}

/// [`list`] on a connection or transaction of the caller's.
pub fn list_in(
    db: &mut impl GenericClient,
    after: i64,
    external_id: Option<&str>,
    limit: i64,
) -> Result<Vec<User>> {
    let sql = format!(
        "SELECT {COLS} FROM users WHERE id > $1 AND ($2::text IS NULL OR external_id = $2)
         ORDER BY id LIMIT $3"
    );
    let rows = db.query(sql.as_str(), &[&after, &external_id, &limit])?;
    Ok(rows.iter().map(User::from_row).collect())
}

pub fn get(pool: &Pool, id: i64) -> Result<Option<User>> {
    let sql = format!("SELECT {COLS} FROM users WHERE id = $1");
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.as_ref().map(User::from_row))
}

/// Deletes a user with its keys and routes (the foreign keys cascade); false if absent.
pub fn delete(pool: &Pool, id: i64) -> Result<bool> {
    delete_in(&mut **pool.get()?, id)
}

/// [`delete`] on a connection or transaction of the caller's.
pub fn delete_in(db: &mut impl GenericClient, id: i64) -> Result<bool> {
    Ok(db.execute("DELETE FROM users WHERE id = $1", &[&id])? > 0)
}
