//! `/admin/api-keys`: mint, list, read, change and revoke keys. The raw key is shown once,
//! at creation; only bcrypt of its secret is stored. Changes reach the key cache before
//! the reply leaves, so the very next request sees them.

use super::paged;
use crate::config::DEFAULT_KEY_RATE_LIMIT;
use crate::error::{Error, Result};
use crate::gateway::keys::{mint_key, KeyCache};
use crate::http::{Ctx, Reply};
use crate::operator::input::{self, id, int, required, string};
use crate::operator::{ts, ts_opt};
use crate::store::keys::{self, ApiKey, KeyChanges, NewKey};
use crate::store::plans::Change;
use crate::store::Pool;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

fn key_json(k: &ApiKey) -> Value {
    let active = k.revoked_at.is_none() && k.expires_at.is_none_or(|t| t > Utc::now());
    json!({
        "id": k.id,
        "userId": k.user_id,
        "name": k.name,
        "keyPrefix": format!("gw_{}", k.public_id),
        "scopes": k.scopes,
        "rateLimit": k.rate_limit,
        "expiresAt": ts_opt(k.expires_at),
        "revokedAt": ts_opt(k.revoked_at),
        "lastUsedAt": ts_opt(k.last_used_at),
        "createdAt": ts(k.created_at),
        "isActive": active,
    })
}

fn scopes(body: &Map<String, Value>) -> Result<Option<Vec<String>>> {
    let list = match body.get("scopes") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::field("scopes", "must be an array of strings")),
    };
    let mut read = false;
    let mut write = false;
    for s in list {
        match s.as_str() {
            Some("read") => read = true,
            Some("write") => write = true,
            _ => {
                return Err(Error::field(
                    "scopes",
                    "may contain only \"read\" and \"write\"",
                ))
            }
        }
    }
    if !read && !write {
        return Err(Error::field("scopes", "must not be empty"));
    }
    // `write` implies `read`: a key that may change data may also look at it.
    Ok(Some(if write {
        vec!["read".into(), "write".into()]
    } else {
        vec!["read".into()]
    }))
}

fn expires_at(body: &Map<String, Value>) -> Result<Option<DateTime<Utc>>> {
    match body.get("expiresAt") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                Error::field(
                    "expiresAt",
                    "must be an RFC 3339 time, e.g. 2027-01-31T00:00:00Z",
                )
            }),
        Some(_) => Err(Error::field("expiresAt", "must be an RFC 3339 time string")),
    }
}

fn rate_limit(body: &Map<String, Value>) -> Result<Option<i32>> {
    Ok(int(body, "rateLimit", 1, i64::from(i32::MAX))?.map(|n| n as i32))
}

pub fn create(pool: &Pool, bcrypt_cost: u32, body: &Map<String, Value>) -> Result<Reply> {
    let user_id = required(id(body, "userId")?, "userId")?;
    let name = required(string(body, "name", 200)?, "name")?;
    let expires = expires_at(body)?;
    if expires.is_some_and(|t| t <= Utc::now()) {
        return Err(Error::field("expiresAt", "must be in the future"));
    }
    let limit = rate_limit(body)?.unwrap_or(DEFAULT_KEY_RATE_LIMIT);
    let scopes = scopes(body)?.unwrap_or_else(|| vec!["read".into(), "write".into()]);
    let (public_id, secret, raw) = mint_key()?;
    let hash =
        bcrypt::hash(&secret, bcrypt_cost).map_err(|e| Error::Internal(format!("bcrypt: {e}")))?;
    let key = keys::insert(
        pool,
        &NewKey {
            user_id,
            name: &name,
            public_id: &public_id,
            hash: &hash,
            rate_limit: Some(limit),
            scopes: &scopes,
            expires_at: expires,
            own: &Default::default(),
        },
    )?;
    let mut v = key_json(&key);
    v["rawKey"] = json!(raw);
    Ok(Reply::json(201, &v))
}

pub fn list(pool: &Pool, ctx: &Ctx, user_id: Option<i64>) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let rows = keys::list(pool, after, user_id, limit + 1)?;
    Ok(paged(rows, limit, |k| k.id, key_json))
}

pub fn get(pool: &Pool, id: i64) -> Result<Reply> {
    let key = keys::get(pool, id)?.ok_or_else(|| Error::NotFound("API key".into()))?;
    Ok(Reply::json(200, &key_json(&key)))
}

/// Changes name, limit, scopes or expiry. Setting `expiresAt` in the past expires the key
/// at once (unlike at creation, where that would be a mistake).
pub fn update(pool: &Pool, cache: &KeyCache, id: i64, body: &Map<String, Value>) -> Result<Reply> {
    let changes = KeyChanges {
        name: string(body, "name", 200)?,
        rate_limit: match rate_limit(body)? {
            Some(n) => Change::Set(n),
            None => Change::Keep,
        },
        scopes: scopes(body)?,
        expires_at: expires_at(body)?,
        clear_expiry: body.get("expiresAt") == Some(&Value::Null),
        policy: Default::default(),
    };
    let key = keys::update(pool, id, &changes)?.ok_or_else(|| Error::NotFound("API key".into()))?;
    cache.update(key.info());
    Ok(Reply::json(200, &key_json(&key)))
}

/// Revokes (keeps the row for the logs and analytics); the cache learns it before the
/// reply is sent, so the very next request with the key is refused.
pub fn revoke(pool: &Pool, cache: &KeyCache, id: i64) -> Result<Reply> {
    let key = keys::revoke(pool, id)?.ok_or_else(|| Error::NotFound("API key".into()))?;
    cache.update(key.info());
    Ok(Reply::json(200, &key_json(&key)))
}
