//! `users`: every statement on the table.

use super::{is_unique_violation, Pool};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::Row;

const COLS: &str = "id, email, name, created_at";

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl User {
    fn from_row(r: &Row) -> User {
        User {
            id: r.get(0),
            email: r.get(1),
            name: r.get(2),
            created_at: r.get(3),
        }
    }
}

/// Inserts a user; a taken email is 409.
pub fn insert(pool: &Pool, email: &str, name: &str) -> Result<User> {
    let sql = format!("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING {COLS}");
    match pool.get()?.query_one(sql.as_str(), &[&email, &name]) {
        Ok(row) => Ok(User::from_row(&row)),
        Err(e) if is_unique_violation(&e) => {
            Err(Error::Conflict(format!("a user with email {email} exists")))
        }
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
