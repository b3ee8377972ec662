//! `api_keys`: every statement on the table, and the one mapping of its row.

use super::{is_fk_violation, Pool};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::types::Type;
use postgres::Row;

/// The columns [`ApiKey::from_row`] reads, in order.
const COLS: &str = "id, user_id, name, public_id, scopes, rate_limit, expires_at, \
                    revoked_at, last_used_at, created_at";

/// A key as stored (never its secret or hash).
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub public_id: String,
    pub scopes: Vec<String>,
    pub rate_limit: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What a verified key may do; everything the gateway's stages need without touching the
/// database, kept in the key cache.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub id: i64,
    pub user_id: i64,
    pub rate_limit: i32,
    pub write: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

impl ApiKey {
    /// Reads [`COLS`] starting at column `at`.
    fn from_row(r: &Row, at: usize) -> ApiKey {
        ApiKey {
            id: r.get(at),
            user_id: r.get(at + 1),
            name: r.get(at + 2),
            public_id: r.get(at + 3),
            scopes: r.get(at + 4),
            rate_limit: r.get(at + 5),
            expires_at: r.get(at + 6),
            revoked_at: r.get(at + 7),
            last_used_at: r.get(at + 8),
            created_at: r.get(at + 9),
        }
    }

    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id,
            user_id: self.user_id,
            rate_limit: self.rate_limit,
            write: self.scopes.iter().any(|s| s == "write"),
            expires_at: self.expires_at,
            revoked: self.revoked_at.is_some(),
        }
    }
}

/// The bcrypt hash and the record of the key with this public id, for verification.
pub fn find_for_verify(pool: &Pool, public_id: &str) -> Result<Option<(String, ApiKey)>> {
    let sql = format!("SELECT key_hash, {COLS} FROM api_keys WHERE public_id = $1");
    let row = pool
        .get()?
        .query_typed_opt(sql.as_str(), &[(&public_id, Type::TEXT)])?;
    Ok(row.map(|r| (r.get(0), ApiKey::from_row(&r, 1))))
}

/// The current metadata of these keys; ids that no longer exist are absent.
pub fn infos(pool: &Pool, ids: &[i64]) -> Result<Vec<KeyInfo>> {
    let sql = format!("SELECT {COLS} FROM api_keys WHERE id = ANY($1)");
    let rows = pool.get()?.query(sql.as_str(), &[&ids])?;
    Ok(rows.iter().map(|r| ApiKey::from_row(r, 0).info()).collect())
}

/// Names of these keys by id (analytics).
pub fn names(pool: &Pool, ids: &[i64]) -> Result<Vec<(i64, String)>> {
    let rows = pool
        .get()?
        .query("SELECT id, name FROM api_keys WHERE id = ANY($1)", &[&ids])?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A key to create; `hash` is bcrypt of its secret.
pub struct NewKey<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub public_id: &'a str,
    pub hash: &'a str,
    pub rate_limit: i32,
    pub scopes: &'a [String],
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts a key; a `user_id` that names no user is the body's fault (400 on `userId`).
pub fn insert(pool: &Pool, k: &NewKey) -> Result<ApiKey> {
    let sql = format!(
        "INSERT INTO api_keys (user_id, name, public_id, key_hash, rate_limit, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLS}"
    );
    let params: [&(dyn postgres::types::ToSql + Sync); 7] = [
        &k.user_id,
        &k.name,
        &k.public_id,
        &k.hash,
        &k.rate_limit,
        &k.scopes,
        &k.expires_at,
    ];
    match pool.get()?.query_one(sql.as_str(), &params) {
        Ok(row) => Ok(ApiKey::from_row(&row, 0)),
        Err(e) if is_fk_violation(&e) => Err(Error::field("userId", "no such user")),
        Err(e) => Err(e.into()),
    }
}

/// Up to `limit` keys with ids above `after`, of one user or of all.
pub fn list(pool: &Pool, after: i64, user_id: Option<i64>, limit: i64) -> Result<Vec<ApiKey>> {
    let sql = format!(
        "SELECT {COLS} FROM api_keys WHERE id > $1 AND ($2::int8 IS NULL OR user_id = $2)
         ORDER BY id LIMIT $3"
    );
    let rows = pool
        .get()?
        .query(sql.as_str(), &[&after, &user_id, &limit])?;
    Ok(rows.iter().map(|r| ApiKey::from_row(r, 0)).collect())
}

pub fn get(pool: &Pool, id: i64) -> Result<Option<ApiKey>> {
    let sql = format!("SELECT {COLS} FROM api_keys WHERE id = $1");
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.map(|r| ApiKey::from_row(&r, 0)))
}

/// What a `PATCH` changes; `None` keeps the stored value.
pub struct KeyChanges {
    pub name: Option<String>,
    pub rate_limit: Option<i32>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Sets `expires_at` to NULL (wins over `expires_at`).
    pub clear_expiry: bool,
}

pub fn update(pool: &Pool, id: i64, c: &KeyChanges) -> Result<Option<ApiKey>> {
    let sql = format!(
        "UPDATE api_keys SET name = coalesce($2, name), rate_limit = coalesce($3, rate_limit),
                scopes = coalesce($4, scopes),
                expires_at = CASE WHEN $6 THEN NULL ELSE coalesce($5, expires_at) END
          WHERE id = $1 RETURNING {COLS}"
    );
    let row = pool.get()?.query_opt(
        sql.as_str(),
        &[
            &id,
            &c.name,
            &c.rate_limit,
            &c.scopes,
            &c.expires_at,
            &c.clear_expiry,
        ],
    )?;
    Ok(row.map(|r| ApiKey::from_row(&r, 0)))
}

/// Revokes a key (the row stays, for the logs and analytics); revoking twice keeps the
/// first time.
pub fn revoke(pool: &Pool, id: i64) -> Result<Option<ApiKey>> {
    let sql = format!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
         RETURNING {COLS}"
    );
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.map(|r| ApiKey::from_row(&r, 0)))
}
