//! `/admin/api-keys`: mint, list, read, change and revoke keys. The raw key is shown once,
//! at creation; only bcrypt of its secret is stored. Changes reach the key cache before
//! the reply leaves, so the very next request sees them.

use super::paged;
use super::plans::{counting, own_counting, policy, policy_changes, policy_json};
use crate::config::{DEFAULT_KEY_RATE_LIMIT, DEFAULT_ROTATION_GRACE_SECS, MAX_ROTATION_GRACE_SECS};
use crate::error::{Error, Result};
use crate::gateway::keys::{mint_key, KeyCache};
use crate::http::{Ctx, Reply};
use crate::operator::input::{self, change, id, int, required, string};
use crate::operator::{ts, ts_opt};
use crate::store::counters::{self, Subject};
use crate::store::ip_rules::{Cidr, IpRules};
use crate::store::keys::{self, ApiKey, KeyChanges, NewKey};
use crate::store::plans::{Change, Counting, LimitSpec};
use crate::store::{users, Pool};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// `isActive` is whether the key may be used now: not revoked, not expired, not paused.
pub fn key_json(k: &ApiKey) -> Value {
    let active = k.revoked_at.is_none()
        && k.paused_at.is_none()
        && k.expires_at.is_none_or(|t| t > Utc::now());
    let mut v = json!({
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
        "pausedAt": ts_opt(k.paused_at),
        "rotatedAt": ts_opt(k.rotated_at),
        "previousKeyValidUntil": ts_opt(k.hashes.prev_valid_until),
        "metadata": k.metadata,
        "allowCidrs": cidr_strings(&k.ip_rules.allow),
        "denyCidrs": cidr_strings(&k.ip_rules.deny),
    });
    policy_json(&k.own, &mut v);
    v["counting"] = json!(k.counting.map(Counting::as_str));
    // Which plan the key counts by when it has no limits of its own: its own, else its
    // user's (the limits themselves are resolved by `gateway::policy`).
    v["effective"] = json!({"planId": k.own.plan_id.or(k.owner.plan_id)});
    v
}

pub fn cidr_strings(list: &[Cidr]) -> Vec<String> {
    list.iter().map(Cidr::to_string).collect()
}

const CREATE_FIELDS: &[&str] = &[
    "userId",
    "name",
    "expiresAt",
    "rateLimit",
    "scopes",
    "planId",
    "limits",
    "quota",
    "metadata",
    "allowCidrs",
    "denyCidrs",
    "counting",
];
const UPDATE_FIELDS: &[&str] = &[
    "name",
    "expiresAt",
    "rateLimit",
    "scopes",
    "planId",
    "limits",
    "quota",
    "isActive",
    "metadata",
    "allowCidrs",
    "denyCidrs",
    "counting",
];
const ROTATE_FIELDS: &[&str] = &["graceSecs"];

/// `rateLimit` is the limit named `default`, so `limits` may not name one beside it.
fn check_default_once(rate_limit: Option<i32>, limits: Option<&[LimitSpec]>) -> Result<()> {
    let named_default = limits.is_some_and(|l| l.iter().any(|l| &*l.name == "default"));
    if rate_limit.is_some() && named_default {
        return Err(Error::field(
            "limits",
            "the name \"default\" is used twice: it is the key's rateLimit; \
             set rateLimit to null or rename the limit",
        ));
    }
    Ok(())
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

/// Without `planId` or `limits`, and with a user on no plan, a key gets today's default
/// `rateLimit`; on a plan (its own or its user's) it has none unless the body gives one.
pub fn create(pool: &Pool, bcrypt_cost: u32, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, CREATE_FIELDS)?;
    let user_id = required(id(body, "userId")?, "userId")?;
    let name = required(string(body, "name", 200)?, "name")?;
    let expires = expires_at(body)?;
    if expires.is_some_and(|t| t <= Utc::now()) {
        return Err(Error::field("expiresAt", "must be in the future"));
    }
    let own = policy(body)?;
    let metadata = input::metadata(body)?.unwrap_or_else(|| json!({}));
    let ip_rules = IpRules {
        allow: input::cidrs(body, "allowCidrs")?.unwrap_or_default(),
        deny: input::cidrs(body, "denyCidrs")?.unwrap_or_default(),
    };
    let mut limit = rate_limit(body)?;
    check_default_once(limit, own.limits.as_deref())?;
    let scopes = scopes(body)?.unwrap_or_else(|| vec!["read".into(), "write".into()]);
    if limit.is_none() && own.plan_id.is_none() && own.limits.is_none() {
        let user =
            users::get(pool, user_id)?.ok_or_else(|| Error::field("userId", "no such user"))?;
        if user.policy.plan_id.is_none() {
            limit = Some(DEFAULT_KEY_RATE_LIMIT);
        }
    }
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
            rate_limit: limit,
            scopes: &scopes,
            expires_at: expires,
            own: &own,
            metadata: &metadata,
            ip_rules: &ip_rules,
            counting: own_counting(body)?,
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
    let key = keys::get(pool, id)?.ok_or_else(not_found)?;
    Ok(Reply::json(200, &key_json(&key)))
}

/// Changes any of the record's settings: absent fields keep their value, `null` clears
/// `rateLimit`, `planId`, `limits`, `quota` and `expiresAt`, and empties `allowCidrs` and
/// `denyCidrs`. Setting `expiresAt` in the
/// past expires the key at once (unlike at creation, where that would be a mistake).
pub fn update(pool: &Pool, cache: &KeyCache, id: i64, body: &Map<String, Value>) -> Result<Reply> {
    input::only(body, UPDATE_FIELDS)?;
    // A key always has a name and scopes: `null` cannot clear them, nor mean "keep".
    for field in ["name", "scopes"] {
        if body.get(field) == Some(&Value::Null) {
            return Err(Error::field(field, "cannot be cleared (null)"));
        }
    }
    let changes = KeyChanges {
        name: string(body, "name", 200)?,
        rate_limit: change(body, "rateLimit", |_| {
            required(rate_limit(body)?, "rateLimit")
        })?,
        scopes: scopes(body)?,
        expires_at: expires_at(body)?,
        clear_expiry: body.get("expiresAt") == Some(&Value::Null),
        policy: policy_changes(body)?,
        pause: is_active(body)?.map(|active| !active),
        metadata: input::metadata(body)?,
        allow_cidrs: input::cidrs(body, "allowCidrs")?,
        deny_cidrs: input::cidrs(body, "denyCidrs")?,
        counting: change(body, "counting", counting)?,
    };
    // Revocation is final: resuming a revoked key would answer 200 and change nothing.
    if changes.pause == Some(false) {
        let stored = keys::get(pool, id)?.ok_or_else(not_found)?;
        if stored.revoked_at.is_some() {
            return Err(Error::Conflict(
                "a revoked key cannot be resumed; mint a new one".into(),
            ));
        }
    }
    // A `default` limit beside `rateLimit` is judged on the key as it will be.
    let (rate, limits) = (&changes.rate_limit, &changes.policy.limits);
    if matches!(rate, Change::Set(_)) || matches!(limits, Change::Set(_)) {
        let stored = keys::get(pool, id)?.ok_or_else(not_found)?;
        let rate = match rate {
            Change::Keep => stored.rate_limit,
            Change::Clear => None,
            Change::Set(n) => Some(*n),
        };
        let limits = match limits {
            Change::Keep => stored.own.limits.as_deref(),
            Change::Clear => None,
            Change::Set(l) => Some(l.as_slice()),
        };
        check_default_once(rate, limits)?;
    }
    let key = keys::update(pool, id, &changes)?.ok_or_else(not_found)?;
    cache.update(key.info());
    Ok(Reply::json(200, &key_json(&key)))
}

fn is_active(body: &Map<String, Value>) -> Result<Option<bool>> {
    match body.get("isActive") {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::field("isActive", "must be true or false")),
    }
}

/// A new secret for the same key id (its limits, counts, analytics and metadata go on);
/// the old secret keeps working for `graceSecs` (default `DEFAULT_ROTATION_GRACE_SECS`,
/// 0 ends it at once). Answers the key record plus `rawKey`, shown this once. The cache
/// learns the new hashes before the reply leaves; other replicas through NOTIFY.
pub fn rotate(
    pool: &Pool,
    cache: &KeyCache,
    bcrypt_cost: u32,
    id: i64,
    body: &Map<String, Value>,
) -> Result<Reply> {
    input::only(body, ROTATE_FIELDS)?;
    let grace =
        int(body, "graceSecs", 0, MAX_ROTATION_GRACE_SECS)?.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
    let (_, secret, _) = mint_key()?;
    let hash =
        bcrypt::hash(&secret, bcrypt_cost).map_err(|e| Error::Internal(format!("bcrypt: {e}")))?;
    let Some(key) = keys::rotate(pool, id, &hash, grace)? else {
        return Err(match keys::get(pool, id)? {
            Some(_) => Error::Conflict("a revoked key cannot be rotated".into()),
            None => not_found(),
        });
    };
    cache.update(key.info());
    let mut v = key_json(&key);
    v["rawKey"] = json!(format!("gw_{}_{secret}", key.public_id));
    Ok(Reply::json(200, &v))
}

/// Zeroes the key's quota count for the current period (its user's owner-wide quota is
/// reset separately, on the user).
pub fn reset_quota(pool: &Pool, id: i64) -> Result<Reply> {
    if !counters::reset_quota(pool, Subject::Key, id)? {
        return Err(not_found());
    }
    Ok(Reply::json(200, &json!({"id": id, "quotaReset": true})))
}

fn not_found() -> Error {
    Error::NotFound("API key".into())
}

/// Revokes (keeps the row for the logs and analytics); the cache learns it before the
/// reply is sent, so the very next request with the key is refused.
pub fn revoke(pool: &Pool, cache: &KeyCache, id: i64) -> Result<Reply> {
    let key = keys::revoke(pool, id)?.ok_or_else(not_found)?;
    cache.update(key.info());
    Ok(Reply::json(200, &key_json(&key)))
}
