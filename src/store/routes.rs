//! `routes`: every statement on the table, and the route record the gateway matches on.

use super::ip_rules::IpRules;
use super::{is_fk_violation, is_unique_violation, Pool};
use crate::config::{
    DEFAULT_HEALTHY_AFTER, DEFAULT_HEALTH_EXPECT, DEFAULT_HEALTH_INTERVAL_MS,
    DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_UNHEALTHY_AFTER,
};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Route {
    pub id: i64,
    pub user_id: i64,
    pub prefix: String,
    pub target_url: String,
    /// Only requests whose `Host` (lower-case, port removed) is this; `None` for any host.
    pub host: Option<String>,
    /// Forward `/users/7` as `/7` for prefix `/users`.
    pub strip_prefix: bool,
    /// Send the client's `Host` upstream instead of the target's.
    pub preserve_host: bool,
    /// Allowed methods (upper-case); `None` allows all.
    pub methods: Option<Vec<String>>,
    pub connect_timeout_ms: Option<i32>,
    pub read_timeout_ms: Option<i32>,
    /// Whole exchange, response body included.
    pub timeout_ms: Option<i32>,
    pub max_body_bytes: Option<i64>,
    /// Whether upstream 5xx answers count as failures for the circuit breaker.
    pub breaker_on_5xx: bool,
    /// Send the key's identity upstream in `X-Tollgate-*` headers.
    pub identity_headers: bool,
    /// Signs the identity headers (HMAC-SHA256); implies them. Never shown by the admin API.
    pub signing_secret: Option<String>,
    /// Who may use the route, judged with the key's own rules.
    pub ip_rules: IpRules,
    /// Answers browsers' preflights and adds `Access-Control-*` headers; `None`: no CORS.
    pub cors: Option<CorsPolicy>,
    /// The pool `target_url` heads (it is `targets[0].url`); empty only for a route built
    /// in code from `target_url` alone, which is then its pool of one (see [`Route::pool`]).
    pub targets: Vec<Target>,
    pub balance: Balance,
    /// Active probing of every target; `None`: only the breaker judges them.
    pub health_check: Option<HealthCheck>,
    /// Retries on another target after a connection failed (`gateway/forward.rs`).
    pub retries: i16,
}

/// One member of a route's pool: scheme, host, port and the path every target shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub url: String,
    pub weight: u32,
}

/// How a route picks a target (`gateway/balance.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round-robin, as nginx's.
    #[default]
    RoundRobin,
    /// The fewest requests in flight for its weight.
    LeastInflight,
    /// Weighted rendezvous hashing on the API key id.
    Hash,
}

impl Balance {
    pub const NAMES: [(Balance, &'static str); 3] = [
        (Balance::RoundRobin, "round-robin"),
        (Balance::LeastInflight, "least-inflight"),
        (Balance::Hash, "hash"),
    ];

    pub fn as_str(self) -> &'static str {
        Balance::NAMES
            .iter()
            .find(|(b, _)| *b == self)
            .map_or("round-robin", |(_, n)| n)
    }

    pub fn parse(s: &str) -> Option<Balance> {
        Balance::NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(b, _)| *b)
    }
}

/// A route's active health check, as the admin API validated it (`healthCheck`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Appended to each target's URL.
    pub path: String,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Consecutive good probes that make an unhealthy target healthy again.
    pub healthy_after: u32,
    /// Consecutive failed probes that make a healthy target unhealthy.
    pub unhealthy_after: u32,
    /// A status class (`2xx`) or one status (`204`).
    pub expect_status: String,
}

impl HealthCheck {
    pub fn to_json(&self) -> Value {
        json!({
            "path": self.path,
            "intervalMs": self.interval_ms,
            "timeoutMs": self.timeout_ms,
            "healthyAfter": self.healthy_after,
            "unhealthyAfter": self.unhealthy_after,
            "expectStatus": self.expect_status,
        })
    }

    /// Reads what [`HealthCheck::to_json`] wrote (validated before it was stored).
    pub fn from_json(v: &Value) -> HealthCheck {
        let n = |k: &str, d: i64| {
            v.get(k)
                .and_then(Value::as_i64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(d as u32)
        };
        HealthCheck {
            path: v.get("path").and_then(Value::as_str).unwrap_or("/").into(),
            interval_ms: n("intervalMs", DEFAULT_HEALTH_INTERVAL_MS),
            timeout_ms: n("timeoutMs", DEFAULT_HEALTH_TIMEOUT_MS),
            healthy_after: n("healthyAfter", DEFAULT_HEALTHY_AFTER),
            unhealthy_after: n("unhealthyAfter", DEFAULT_UNHEALTHY_AFTER),
            expect_status: v
                .get("expectStatus")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_HEALTH_EXPECT)
                .into(),
        }
    }

    /// Whether a probe's status is the expected one.
    pub fn expects(&self, status: u16) -> bool {
        let want = self.expect_status.as_bytes();
        let got = status.to_string();
        match want {
            [class, b'x', b'x'] => got.as_bytes().first() == Some(class),
            _ => got == self.expect_status,
        }
    }
}

/// A route's CORS policy, parsed once from its `cors` column (`gateway/cors.rs` applies it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CorsPolicy {
    /// `scheme://host[:port]`, `scheme://*.host[:port]` or `*`, lower-case.
    pub allowed_origins: Vec<String>,
    /// Upper-case method tokens; empty: the route's methods, else the requested one.
    pub allowed_methods: Vec<String>,
    /// Lower-case header names; empty: whatever the preflight asks for.
    pub allowed_headers: Vec<String>,
    /// Added to the rate-limit and request-id headers that are always exposed.
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// `Access-Control-Max-Age`; `None` leaves the browser's own default.
    pub max_age_secs: Option<u32>,
}

impl CorsPolicy {
    /// The stored and shown shape (the admin API's `cors` object).
    pub fn to_json(&self) -> Value {
        json!({
            "allowedOrigins": self.allowed_origins,
            "allowedMethods": self.allowed_methods,
            "allowedHeaders": self.allowed_headers,
            "exposeHeaders": self.expose_headers,
            "allowCredentials": self.allow_credentials,
            "maxAgeSecs": self.max_age_secs,
        })
    }

    /// Reads what [`CorsPolicy::to_json`] wrote; the column is written only after the admin
    /// API's validation, so a missing or mistyped field is read as empty.
    pub fn from_json(v: &Value) -> CorsPolicy {
        let list = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        CorsPolicy {
            allowed_origins: list("allowedOrigins"),
            allowed_methods: list("allowedMethods"),
            allowed_headers: list("allowedHeaders"),
            expose_headers: list("exposeHeaders"),
            allow_credentials: v.get("allowCredentials").and_then(Value::as_bool) == Some(true),
            max_age_secs: v
                .get("maxAgeSecs")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
        }
    }
}

/// A route's JSON columns (`cors`, `targets`, `health_check`) and its `balance` name, made
/// for one write.
type Json = (Option<Value>, Value, Option<Value>, &'static str);

/// The stored pool: `[{"url", "weight"}]`.
fn targets_to_json(targets: &[Target]) -> Value {
    targets
        .iter()
        .map(|t| json!({"url": t.url, "weight": t.weight}))
        .collect()
}

/// A pool of one whose target is not `target_url` was saved by a binary from before pools
/// (sql/013), during a rolling upgrade: it changed `target_url` only, which then wins. (This
/// binary always saves `target_url` as the pool's first target.)
fn pool_as_saved(target_url: String, mut targets: Vec<Target>) -> Vec<Target> {
    if let [only] = targets.as_mut_slice() {
        if only.url != target_url {
            only.url = target_url;
        }
    }
    targets
}

/// Reads what [`targets_to_json`] wrote; an entry without a URL is skipped.
fn targets_from_json(v: &Value) -> Vec<Target> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(Target {
                url: t.get("url")?.as_str()?.to_string(),
                weight: t
                    .get("weight")
                    .and_then(Value::as_u64)
                    .and_then(|w| u32::try_from(w).ok())
                    .unwrap_or(1)
                    .max(1),
            })
        })
        .collect()
}

/// A route with its row's timestamps, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct RouteRecord {
    pub route: Route,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns [`Route::from_row`] reads, in order, then the two timestamps.
const COLS: &str = "id, user_id, prefix, target_url, host, strip_prefix, preserve_host, \
    methods, connect_timeout_ms, read_timeout_ms, timeout_ms, max_body_bytes, breaker_on_5xx, \
    identity_headers, signing_secret, allow_cidrs::text[], deny_cidrs::text[], cors, targets, \
    balance, health_check, retries, created_at, updated_at";

/// Every field but `id` and `user_id`, as `UPDATE ... SET` binds them (see `params`).
const VALUES: &str = "host = $2, strip_prefix = $3, preserve_host = $4, methods = $5, \
    connect_timeout_ms = $6, read_timeout_ms = $7, timeout_ms = $8, max_body_bytes = $9, \
    breaker_on_5xx = $10, prefix = $11, target_url = $12, identity_headers = $13, \
    signing_secret = $14, allow_cidrs = $15::text[]::cidr[], deny_cidrs = $16::text[]::cidr[], \
    cors = $17, targets = $18, balance = $19, health_check = $20, retries = $21";

impl Route {
    fn from_row(r: &Row) -> Route {
        Route {
            id: r.get(0),
            user_id: r.get(1),
            prefix: r.get(2),
            target_url: r.get(3),
            host: r.get(4),
            strip_prefix: r.get(5),
            preserve_host: r.get(6),
            methods: r.get(7),
            connect_timeout_ms: r.get(8),
            read_timeout_ms: r.get(9),
            timeout_ms: r.get(10),
            max_body_bytes: r.get(11),
            breaker_on_5xx: r.get(12),
            identity_headers: r.get(13),
            signing_secret: r.get(14),
            ip_rules: IpRules::from_db(r.get(15), r.get(16)),
            cors: r
                .get::<_, Option<Value>>(17)
                .as_ref()
                .map(CorsPolicy::from_json),
            targets: pool_as_saved(r.get(3), targets_from_json(&r.get::<_, Value>(18))),
            balance: Balance::parse(r.get(19)).unwrap_or_default(),
            health_check: r
                .get::<_, Option<Value>>(20)
                .as_ref()
                .map(HealthCheck::from_json),
            retries: r.get(21),
        }
    }

    /// The targets to balance over: the stored pool, or `target_url` alone.
    pub fn pool(&self) -> Vec<Target> {
        if self.targets.is_empty() {
            vec![Target {
                url: self.target_url.clone(),
                weight: 1,
            }]
        } else {
            self.targets.clone()
        }
    }

    /// Binds `$1` (the id) to `$21`; `cidrs` holds the rule lists as text and `json` the
    /// CORS policy, the pool and the health check as JSON, which must live as long as the
    /// parameters.
    fn params<'a>(
        &'a self,
        cidrs: &'a [Vec<String>; 2],
        json: &'a Json,
    ) -> [&'a (dyn ToSql + Sync); 21] {
        [
            &self.id,
            &self.host,
            &self.strip_prefix,
            &self.preserve_host,
            &self.methods,
            &self.connect_timeout_ms,
            &self.read_timeout_ms,
            &self.timeout_ms,
            &self.max_body_bytes,
            &self.breaker_on_5xx,
            &self.prefix,
            &self.target_url,
            &self.identity_headers,
            &self.signing_secret,
            &cidrs[0],
            &cidrs[1],
            &json.0,
            &json.1,
            &json.3,
            &json.2,
            &self.retries,
        ]
    }

    /// Whether the key's identity goes upstream: asked for, or needed to check a signature.
    pub fn sends_identity(&self) -> bool {
        self.identity_headers || self.signing_secret.is_some()
    }

    pub fn allows(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == method))
    }

    /// The path sent upstream: as received, or without the prefix (`/` if nothing is left).
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix || self.prefix == "/" {
            return path.into();
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some("") => "/".into(),
            Some(rest) => rest.into(),
            None => path.into(),
        }
    }
}

impl RouteRecord {
    fn from_row(r: &Row) -> RouteRecord {
        RouteRecord {
            route: Route::from_row(r),
            created_at: r.get(22),
            updated_at: r.get(23),
        }
    }
}

/// Every route, for the gateway's in-memory table.
pub fn load_all(pool: &Pool) -> Result<Vec<Route>> {
    let sql = format!("SELECT {COLS} FROM routes");
    let rows = pool.get()?.query(sql.as_str(), &[])?;
    Ok(rows.iter().map(Route::from_row).collect())
}

/// Inserts `route` (its `id` is ignored) with every field, in one transaction.
pub fn insert(pool: &Pool, route: Route) -> Result<RouteRecord> {
    insert_in(&mut **pool.get()?, route)
}

/// [`insert`] on a connection or transaction of the caller's (inside one, a savepoint).
pub fn insert_in(db: &mut impl GenericClient, mut route: Route) -> Result<RouteRecord> {
    let mut tx = db.transaction()?;
    let row = written(
        tx.query_one(
            "INSERT INTO routes (user_id, prefix, target_url) VALUES ($1, $2, $3) RETURNING id",
            &[&route.user_id, &route.prefix, &route.target_url],
        ),
        &route.prefix,
    )?;
    route.id = row.get(0);
    save(tx, &route)
}

/// Reads, changes (`apply`) and writes a route in one transaction, its row locked, so two
/// concurrent edits of different fields cannot undo each other. `None`: no such route.
pub fn update(
    pool: &Pool,
    id: i64,
    apply: impl FnOnce(&mut Route) -> Result<()>,
) -> Result<Option<RouteRecord>> {
    update_in(&mut **pool.get()?, id, apply)
}

/// [`update`] on a connection or transaction of the caller's (inside one, a savepoint).
pub fn update_in(
    db: &mut impl GenericClient,
    id: i64,
    apply: impl FnOnce(&mut Route) -> Result<()>,
) -> Result<Option<RouteRecord>> {
    let mut tx = db.transaction()?;
    let sql = format!("SELECT {COLS} FROM routes WHERE id = $1 FOR UPDATE");
    let Some(current) = tx.query_opt(sql.as_str(), &[&id])? else {
        return Ok(None);
    };
    let mut route = Route::from_row(&current);
    apply(&mut route)?;
    save(tx, &route).map(Some)
}

/// Writes every field of `route` to its row and commits.
fn save(mut tx: postgres::Transaction<'_>, route: &Route) -> Result<RouteRecord> {
    let sql =
        format!("UPDATE routes SET {VALUES}, updated_at = now() WHERE id = $1 RETURNING {COLS}");
    let cidrs = [
        IpRules::to_db(&route.ip_rules.allow),
        IpRules::to_db(&route.ip_rules.deny),
    ];
    let json: Json = (
        route.cors.as_ref().map(CorsPolicy::to_json),
        targets_to_json(&route.pool()),
        route.health_check.as_ref().map(HealthCheck::to_json),
        route.balance.as_str(),
    );
    let row = written(
        tx.query_one(sql.as_str(), &route.params(&cidrs, &json)),
        &route.prefix,
    )?;
    tx.commit()?;
    Ok(RouteRecord::from_row(&row))
}

/// A write's outcome: a duplicate prefix is 409, an unknown user the body's fault.
fn written(result: std::result::Result<Row, postgres::Error>, prefix: &str) -> Result<Row> {
    match result {
        Ok(row) => Ok(row),
        Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!(
            "this user already has a route with prefix {prefix} for this host"
        ))),
        Err(e) if is_fk_violation(&e) => Err(Error::field("userId", "no such user")),
        Err(e) => Err(e.into()),
    }
}

/// Up to `limit` routes with ids above `after`, of one user or of all.
pub fn list(pool: &Pool, after: i64, user_id: Option<i64>, limit: i64) -> Result<Vec<RouteRecord>> {
    list_in(&mut **pool.get()?, after, user_id, limit)
}

/// [`list`] on a connection or transaction of the caller's.
pub fn list_in(
    db: &mut impl GenericClient,
    after: i64,
    user_id: Option<i64>,
    limit: i64,
) -> Result<Vec<RouteRecord>> {
    let sql = format!(
        "SELECT {COLS} FROM routes WHERE id > $1 AND ($2::int8 IS NULL OR user_id = $2)
         ORDER BY id LIMIT $3"
    );
    let rows = db.query(sql.as_str(), &[&after, &user_id, &limit])?;
    Ok(rows.iter().map(RouteRecord::from_row).collect())
}

pub fn get(pool: &Pool, id: i64) -> Result<Option<RouteRecord>> {
    let sql = format!("SELECT {COLS} FROM routes WHERE id = $1");
    let row = pool.get()?.query_opt(sql.as_str(), &[&id])?;
    Ok(row.as_ref().map(RouteRecord::from_row))
}

/// Deletes a route; false if absent.
pub fn delete(pool: &Pool, id: i64) -> Result<bool> {
    delete_in(&mut **pool.get()?, id)
}

/// [`delete`] on a connection or transaction of the caller's.
pub fn delete_in(db: &mut impl GenericClient, id: i64) -> Result<bool> {
    Ok(db.execute("DELETE FROM routes WHERE id = $1", &[&id])? > 0)
}

/// Prefixes of these routes by id (analytics).
pub fn prefixes(pool: &Pool, ids: &[i64]) -> Result<Vec<(i64, String)>> {
    let rows = pool
        .get()?
        .query("SELECT id, prefix FROM routes WHERE id = ANY($1)", &[&ids])?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_url_changed_by_a_binary_from_before_pools_wins_over_its_stale_pool_of_one() {
        let t = |url: &str, weight| Target {
            url: url.into(),
            weight,
        };
        let stale = vec![t("http://old:1", 3)];
        assert_eq!(
            pool_as_saved("http://new:2".into(), stale),
            [t("http://new:2", 3)]
        );
        // A pool of several is this binary's own: `target_url` is its first target.
        let pool = vec![t("http://a:1", 1), t("http://b:1", 2)];
        assert_eq!(pool_as_saved("http://a:1".into(), pool.clone()), pool);
    }
}
