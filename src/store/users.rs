//! `users`: every statement on the table.

use super::plans::{no_such_plan, Policy, PolicyChanges};
use super::{is_fk_violation, is_unique_violation, Pool};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::Row;

const COLS: &str = "id, email, name, created_at, plan_id, limits, quota";

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The plan its keys inherit, and the limits and quota counted across all its keys.
    pub policy: Policy,
}

impl User {
    fn from_row(r: &Row) -> User {
        User {
            id: r.get(0),
            email: r.get(1),
            name: r.get(2),
            created_at: r.get(3),
            policy: Policy::from_row(r, 4),
        }
    }
}

fn email_taken(email: &str) -> Error {
    Error::Conflict(format!("a user with email {email} exists"))
}

/// Inserts a user; a taken email is 409, a plan that does not exist 400 on `planId`.
pub fn insert(pool: &Pool, email: &str, name: &str, policy: &Policy) -> Result<User> {
    let sql = format!(
        "INSERT INTO users (email, name, plan_id, limits, quota) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLS}"
    );
    let limits = super::plans::limits_to_db(&policy.limits);
    let quota = super::plans::quota_to_db(&policy.quota);
    match pool.get()?.query_one(
        sql.as_str(),
        &[&email, &name, &policy.plan_id, &limits, &quota],
    ) {
        Ok(row) => Ok(User::from_row(&row)),
        Err(e) if is_unique_violation(&e) => Err(email_taken(email)),
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
}

pub fn update(pool: &Pool, id: i64, c: &UserChanges) -> Result<Option<User>> {
    let sql = format!(
        "UPDATE users SET email = coalesce($2, email), name = coalesce($3, name), {}
          WHERE id = $1 RETURNING {COLS}",
        PolicyChanges::set_sql(4)
    );
    let (p, plan, l, limits, q, quota) = c.policy.values();
    let row = pool.get()?.query_opt(
        sql.as_str(),
        &[&id, &c.email, &c.name, &p, &plan, &l, &limits, &q, &quota],
    );
    match row {
        Ok(row) => Ok(row.as_ref().map(User::from_row)),
        Err(e) if is_unique_violation(&e) => Err(email_taken(c.email.as_deref().unwrap_or(""))),
        Err(e) if is_fk_violation(&e) => Err(no_such_plan()),
        Err(e) => Err(e.into()),
    }
}

/// Up to `limit` users with ids above `after`.
pub fn list(pool: &Pool, after: i64, limit: i64) -> Result<Vec<User>> {
    let sql = format!("SELECT {COLS} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = pool.get()?.query(sql.as_str(), &[&after, &limit])?;
    Ok(rows.iter().map(User::from_row).collect())
}

pub fn get(pool: &Pool, id: i64) -> Result<Option<User>> {
    let sql = format!("SELECT {COLS} FROM users WHERE id = $1");
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.as_ref().map(User::from_row))
}

/// Deletes a user with its keys and routes (the foreign keys cascade); false if absent.
pub fn delete(pool: &Pool, id: i64) -> Result<bool> {
    let n = pool
        .get()?
        .execute("DELETE FROM users WHERE id = $1", &[&id])?;
    Ok(n > 0)
}
