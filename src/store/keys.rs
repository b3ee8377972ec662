//! `api_keys`: every statement on the table, and the one mapping of its row.

use super::ip_rules::{Cidr, IpRules};
use super::plans::{no_such_plan, Change, Counting, Policy, PolicyChanges};
use super::{is_fk_violation, Pool};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::types::Type;
use postgres::{GenericClient, Row};
use serde_json::Value;

/// The columns [`ApiKey::from_row`] reads, in order, from `k` (a key row) joined with its
/// user `u` (whose limit fields the key's own inherit from; see `gateway::policy`).
const COLS: &str = "k.id, k.user_id, k.name, k.public_id, k.scopes, k.rate_limit, k.expires_at, \
    k.revoked_at, k.last_used_at, k.created_at, k.plan_id, k.limits, k.quota, \
    u.plan_id, u.limits, u.quota, u.created_at, \
    k.key_hash, k.prev_key_hash, k.prev_valid_until, k.rotated_at, k.paused_at, k.metadata, \
    u.metadata, u.external_id, k.allow_cidrs::text[], k.deny_cidrs::text[], k.counting";

/// `FROM` for [`COLS`]; statements that change a key select from their `RETURNING *` as `k`.
const FROM: &str = "api_keys k JOIN users u ON u.id = k.user_id";
const FROM_CHANGED: &str = "k JOIN users u ON u.id = k.user_id";

/// A key as stored (never its secret; its bcrypt hashes only for verification and the
/// cache, never in an answer).
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub public_id: String,
    pub scopes: Vec<String>,
    /// The key's own limit named `default` over the gateway window, if it has one.
    pub rate_limit: Option<i32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub own: Policy,
    /// The user's limit fields and creation time.
    pub owner: Policy,
    pub owner_created_at: DateTime<Utc>,
    pub hashes: Hashes,
    pub rotated_at: Option<DateTime<Utc>>,
    pub paused_at: Option<DateTime<Utc>>,
    pub metadata: Value,
    pub owner_metadata: Value,
    pub owner_external_id: Option<String>,
    pub ip_rules: IpRules,
    /// The key's own `counting` (None: its plan's, else the gateway's default).
    pub counting: Option<Counting>,
}

/// The bcrypt hashes a key is verified against: the current secret's and, after a
/// rotation, the one before it, accepted until `prev_valid_until`. The previous hash is
/// kept after its grace (until the next rotation) so its secret is told apart from a wrong
/// one.
#[derive(Clone, Debug)]
pub struct Hashes {
    pub current: String,
    pub previous: Option<String>,
    pub prev_valid_until: Option<DateTime<Utc>>,
}

/// What a verified key may do; everything the gateway's stages need without touching the
/// database, kept in the key cache.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub id: i64,
    pub user_id: i64,
    pub rate_limit: Option<i32>,
    pub write: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    pub own: Policy,
    pub owner: Policy,
    pub owner_created_at: DateTime<Utc>,
    pub hashes: Hashes,
    /// The key's scopes, sorted and comma-joined (`read,write`), as sent upstream.
    pub scopes: String,
    /// The user's `external_id`, as sent upstream.
    pub owner_external_id: Option<String>,
    /// Parsed once here, so a request only matches.
    pub ip_rules: IpRules,
    pub counting: Option<Counting>,
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
            own: Policy::from_row(r, at + 10),
            owner: Policy::from_row(r, at + 13),
            owner_created_at: r.get(at + 16),
            hashes: Hashes {
                current: r.get(at + 17),
                previous: r.get(at + 18),
                prev_valid_until: r.get(at + 19),
            },
            rotated_at: r.get(at + 20),
            paused_at: r.get(at + 21),
            metadata: r.get(at + 22),
            owner_metadata: r.get(at + 23),
            owner_external_id: r.get(at + 24),
            ip_rules: IpRules::from_db(r.get(at + 25), r.get(at + 26)),
            counting: Counting::from_db(r.get(at + 27)),
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
            paused: self.paused_at.is_some(),
            created_at: self.created_at,
            own: self.own.clone(),
            owner: self.owner.clone(),
            owner_created_at: self.owner_created_at,
            hashes: self.hashes.clone(),
            scopes: {
                let mut s = self.scopes.clone();
                s.sort();
                s.dedup();
                s.join(",")
            },
            owner_external_id: self.owner_external_id.clone(),
            ip_rules: self.ip_rules.clone(),
            counting: self.counting,
        }
    }
}

/// The key with this public id, its hashes included, for verification.
pub fn find_for_verify(pool: &Pool, public_id: &str) -> Result<Option<ApiKey>> {
    let sql = format!("SELECT {COLS} FROM {FROM} WHERE k.public_id = $1");
    let row = pool
        .get()?
        .query_typed_opt(sql.as_str(), &[(&public_id, Type::TEXT)])?;
    Ok(row.map(|r| ApiKey::from_row(&r, 0)))
}

/// The current metadata of these keys; ids that no longer exist are absent.
pub fn infos(pool: &Pool, ids: &[i64]) -> Result<Vec<KeyInfo>> {
    let sql = format!("SELECT {COLS} FROM {FROM} WHERE k.id = ANY($1)");
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
    pub rate_limit: Option<i32>,
    pub scopes: &'a [String],
    pub expires_at: Option<DateTime<Utc>>,
    pub own: &'a Policy,
    pub metadata: &'a Value,
    pub ip_rules: &'a IpRules,
    pub counting: Option<Counting>,
}

/// A foreign key violation is the body's fault: a user or plan it names does not exist.
fn missing_reference(e: &postgres::Error) -> Error {
    let plan = e
        .as_db_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c.contains("plan"));
    if plan {
        no_such_plan()
    } else {
        Error::field("userId", "no such user")
    }
}

/// Inserts a key; a user or plan that does not exist is 400 on `userId` / `planId`.
pub fn insert(pool: &Pool, k: &NewKey) -> Result<ApiKey> {
    let sql = format!(
        "WITH k AS (
            INSERT INTO api_keys (user_id, name, public_id, key_hash, rate_limit, scopes,
                                  expires_at, plan_id, limits, quota, metadata,
                                  allow_cidrs, deny_cidrs, counting)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                    $12::text[]::cidr[], $13::text[]::cidr[], $14) RETURNING *)
         SELECT {COLS} FROM {FROM_CHANGED}"
    );
    let limits = super::plans::limits_to_db(&k.own.limits);
    let quota = super::plans::quota_to_db(&k.own.quota);
    let allow = IpRules::to_db(&k.ip_rules.allow);
    let deny = IpRules::to_db(&k.ip_rules.deny);
    let counting = k.counting.map(Counting::as_str);
    let params: [&(dyn postgres::types::ToSql + Sync); 14] = [
        &k.user_id,
        &k.name,
        &k.public_id,
        &k.hash,
        &k.rate_limit,
        &k.scopes,
        &k.expires_at,
        &k.own.plan_id,
        &limits,
        &quota,
        k.metadata,
        &allow,
        &deny,
        &counting,
    ];
    match pool.get()?.query_one(sql.as_str(), &params) {
        Ok(row) => Ok(ApiKey::from_row(&row, 0)),
        Err(e) if is_fk_violation(&e) => Err(missing_reference(&e)),
        Err(e) => Err(e.into()),
    }
}

/// Up to `limit` keys with ids above `after`, of one user or of all.
pub fn list(pool: &Pool, after: i64, user_id: Option<i64>, limit: i64) -> Result<Vec<ApiKey>> {
    let sql = format!(
        "SELECT {COLS} FROM {FROM} WHERE k.id > $1 AND ($2::int8 IS NULL OR k.user_id = $2)
         ORDER BY k.id LIMIT $3"
    );
    let rows = pool
        .get()?
        .query(sql.as_str(), &[&after, &user_id, &limit])?;
    Ok(rows.iter().map(|r| ApiKey::from_row(r, 0)).collect())
}

/// How many keys (revoked ones too) each user has that has any, by user id: what deleting
/// a user takes with it.
pub fn counts_by_user_in(db: &mut impl GenericClient) -> Result<Vec<(i64, i64)>> {
    let rows = db.query(
        "SELECT user_id, count(*) FROM api_keys GROUP BY user_id",
        &[],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub fn get(pool: &Pool, id: i64) -> Result<Option<ApiKey>> {
    let sql = format!("SELECT {COLS} FROM {FROM} WHERE k.id = $1");
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.map(|r| ApiKey::from_row(&r, 0)))
}

/// What a `PATCH` changes; `None` keeps the stored value.
pub struct KeyChanges {
    pub name: Option<String>,
    pub rate_limit: Change<i32>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Sets `expires_at` to NULL (wins over `expires_at`).
    pub clear_expiry: bool,
    pub policy: PolicyChanges,
    /// `Some(true)` pauses the key (keeping the first pause time), `Some(false)` resumes it.
    pub pause: Option<bool>,
    /// Replaces the whole object.
    pub metadata: Option<Value>,
    /// Replace the whole list (empty clears it).
    pub allow_cidrs: Option<Vec<Cidr>>,
    pub deny_cidrs: Option<Vec<Cidr>>,
    pub counting: Change<Counting>,
}

pub fn update(pool: &Pool, id: i64, c: &KeyChanges) -> Result<Option<ApiKey>> {
    let sql = format!(
        "WITH k AS (
            UPDATE api_keys SET name = coalesce($2, name),
                   rate_limit = CASE WHEN $7 THEN $3 ELSE rate_limit END,
                   scopes = coalesce($4, scopes),
                   expires_at = CASE WHEN $6 THEN NULL ELSE coalesce($5, expires_at) END,
                   paused_at = CASE WHEN $14::bool IS NULL THEN paused_at
                                    WHEN $14 THEN coalesce(paused_at, now()) END,
                   metadata = coalesce($15, metadata),
                   allow_cidrs = coalesce($16::text[]::cidr[], allow_cidrs),
                   deny_cidrs = coalesce($17::text[]::cidr[], deny_cidrs),
                   counting = CASE WHEN $18 THEN $19 ELSE counting END,
                   {}
             WHERE id = $1 RETURNING *)
         SELECT {COLS} FROM {FROM_CHANGED}",
        PolicyChanges::set_sql(8)
    );
    let (rate_changed, rate) = c.rate_limit.bind();
    let (p, plan, l, limits, q, quota) = c.policy.values();
    let allow = c.allow_cidrs.as_deref().map(IpRules::to_db);
    let deny = c.deny_cidrs.as_deref().map(IpRules::to_db);
    let (k, counting) = c.counting.bind();
    let counting = counting.map(|c| c.as_str());
    let row = pool.get()?.query_opt(
        sql.as_str(),
        &[
            &id,
            &c.name,
            &rate,
            &c.scopes,
            &c.expires_at,
            &c.clear_expiry,
            &rate_changed,
            &p,
            &plan,
            &l,
            &limits,
            &q,
            &quota,
            &c.pause,
            &c.metadata,
            &allow,
            &deny,
            &k,
            &counting,
        ],
    );
    match row {
        Ok(row) => Ok(row.map(|r| ApiKey::from_row(&r, 0))),
        Err(e) if is_fk_violation(&e) => Err(no_such_plan()),
        Err(e) => Err(e.into()),
    }
}

/// Revokes a key (the row stays, for the logs and analytics); revoking twice keeps the
/// first time.
pub fn revoke(pool: &Pool, id: i64) -> Result<Option<ApiKey>> {
    let sql = format!(
        "WITH k AS (
            UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
            RETURNING *)
         SELECT {COLS} FROM {FROM_CHANGED}"
    );
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.map(|r| ApiKey::from_row(&r, 0)))
}

/// Rotates a key that is not revoked: `hash` (bcrypt of the new secret) becomes current,
/// the current one previous, accepted for `grace_secs` more. `None` when there is no such
/// key or it is revoked.
pub fn rotate(pool: &Pool, id: i64, hash: &str, grace_secs: i64) -> Result<Option<ApiKey>> {
    let sql = format!(
        "WITH k AS (
            UPDATE api_keys SET prev_key_hash = key_hash, key_hash = $2,
                   prev_valid_until = now() + make_interval(secs => $3), rotated_at = now()
             WHERE id = $1 AND revoked_at IS NULL
            RETURNING *)
         SELECT {COLS} FROM {FROM_CHANGED}"
    );
    let grace = grace_secs as f64;
    let row = pool.get()?.query_opt(sql.as_str(), &[&id, &hash, &grace])?;
    Ok(row.map(|r| ApiKey::from_row(&r, 0)))
}
