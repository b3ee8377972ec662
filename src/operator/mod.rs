//! The operator endpoints: everything the gateway answers itself rather than forwarding.
//! [`dispatch`] picks the endpoint by the path's first segment; the admin-secret check
//! with its per-IP failure limit lives here because admin, analytics and metrics share it.
//! Operator traffic is not written to `request_logs`: analytics describe client traffic.
//!
//! - `admin/`: users, API keys, routes, stats, the audit log (`x-admin-secret`).
//! - `analytics.rs`: traffic figures from the rollups (admin secret, or a key for its own).
//! - `me.rs`: a key holder's own plan, limits and quotas (its key).
//! - `health.rs`, `metrics.rs`, `dashboard.rs` (also `/docs`, the API reference page),
//!   `openapi.rs`.
//! - `input.rs`: bounded JSON bodies, query parameters, field validation.

pub mod admin;
pub mod analytics;
pub mod config_file;
pub mod dashboard;
pub mod health;
pub mod input;
pub mod me;
pub mod metrics;
pub mod openapi;

use crate::error::{Error, Result};
use crate::gateway::guards::FailureLimit;
use crate::gateway::routes::prefix_matches;
use crate::gateway::Gateway;
use crate::http::{Ctx, Reply, Request, ServerStats};
use crate::logs::client_ip::ClientIps;
use crate::logs::Logger;
use crate::store::{DbHealth, Pool};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What the operator endpoints read and change, borrowed from the application's state;
/// each endpoint takes only the parts it uses.
pub struct Operator<'a> {
    pub admin: AdminSecret<'a>,
    /// Cost of the bcrypt hash of a new key's secret.
    pub bcrypt_cost: u32,
    pub pool: &'a Pool,
    pub health: &'a DbHealth,
    pub gateway: &'a Gateway,
    pub logger: &'a Logger,
    pub server: &'a ServerStats,
    /// What the audit log keeps of a client's address.
    pub client_ips: &'a ClientIps,
}

/// The admin secret and the failed attempts at it per client IP.
#[derive(Clone, Copy)]
pub struct AdminSecret<'a> {
    pub secret: &'a str,
    pub failures: &'a FailureLimit,
}

/// Paths the gateway answers itself; no route may claim them (checked in admin).
pub const OPERATOR_PREFIXES: &[&str] = &[
    "/admin",
    "/analytics",
    "/healthz",
    "/readyz",
    "/metrics",
    "/dashboard",
    "/docs",
    "/openapi.json",
    "/me",
];

/// The `Allow` list of an endpoint that is only read (a 405's header says it).
pub const READ_ONLY: &str = "GET, HEAD";

pub fn is_operator_path(path: &str) -> bool {
    OPERATOR_PREFIXES.iter().any(|p| prefix_matches(p, path))
}

/// Answers an operator request (`is_operator_path` holds for its path).
pub fn dispatch(op: &Operator, rq: &mut Request) -> Result<Reply> {
    let ctx = &rq.ctx;
    let first = ctx.path.split('/').nth(1).unwrap_or("");
    match (first, ctx.method.as_str()) {
        ("healthz", "GET" | "HEAD") => Ok(health::healthz()),
        ("readyz", "GET" | "HEAD") => Ok(health::readyz(
            op.pool,
            op.health,
            &op.gateway.upstreams.breakers,
            op.server,
        )),
        ("healthz" | "readyz", _) => Err(Error::method_not_allowed(READ_ONLY)),
        ("openapi.json", "GET" | "HEAD") if ctx.path == "/openapi.json" => Ok(openapi::reply()),
        ("openapi.json", _) if ctx.path == "/openapi.json" => {
            Err(Error::method_not_allowed(READ_ONLY))
        }
        ("admin", _) => admin::handle(op, rq),
        ("analytics", _) => analytics::handle(op, ctx),
        ("metrics", _) => metrics::handle(op, ctx),
        ("dashboard", _) => dashboard::handle(ctx),
        ("docs", _) => dashboard::serve(ctx, dashboard::DOCS),
        ("me", _) => me::handle(op, rq),
        _ => Err(Error::NotFound("endpoint".into())),
    }
}

/// The admin check with the per-IP failure limit: `Ok(true)` for the right secret,
/// `Ok(false)` when no secret was sent, `Err(Unauthorized)` for a wrong one (counted
/// against the client IP), and 429 for an IP over its limit whatever it sent, so a
/// guesser learns nothing more once limited.
pub fn check_admin(admin: AdminSecret, ctx: &Ctx) -> Result<bool> {
    match ctx.header("x-admin-secret") {
        None => Ok(false),
        Some(given) => check_secret(admin, ctx, given, "x-admin-secret").map(|()| true),
    }
}

/// `given` against the admin secret under the client IP's failure limit, wherever it was
/// sent (`how` names that in the log): 429 while the IP is over its limit, `Unauthorized`
/// for a wrong secret (counted).
pub fn check_secret(admin: AdminSecret, ctx: &Ctx, given: &str, how: &str) -> Result<()> {
    admin.failures.check(&ctx.client_ip)?;
    if is_admin_secret(admin.secret, given) {
        return Ok(());
    }
    admin.failures.record(&ctx.client_ip);
    log::warn!("wrong {how} from {}", ctx.client_ip);
    Err(Error::Unauthorized)
}

/// Constant-time check of an admin secret. Both sides are hashed first so neither the
/// content nor the length of the secret leaks through timing.
fn is_admin_secret(secret: &str, given: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.ct_eq(&b).into()
}

/// RFC 3339 in UTC with milliseconds, the form every JSON timestamp of the API uses.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn ts_opt(t: Option<DateTime<Utc>>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| ts(t).into())
}

/// The state behind an [`Operator`], for unit tests of handlers through
/// [`Request::fake`]: a database that is never reached (validation answers before any
/// query), the real gateway parts, and the admin secret [`fixture::SECRET`].
#[cfg(test)]
pub mod fixture {
    use super::*;
    use crate::logs::Logger;
    use crate::store;
    use std::time::Duration;

    pub const SECRET: &str = "unit-test-admin-secret";

    pub struct Fixture {
        cfg: crate::config::Config,
        pool: Pool,
        health: DbHealth,
        gateway: Gateway,
        logger: Logger,
        server: ServerStats,
        failures: FailureLimit,
        client_ips: ClientIps,
    }

    impl Fixture {
        pub fn new() -> Fixture {
            let get = |var: &str| {
                let v = match var {
                    "DATABASE_URL" => "host=/nonexistent/tollgate-unit-test connect_timeout=1",
                    "ADMIN_SECRET" => SECRET,
                    "TOLLGATE_DB_WAIT_MS" => "50",
                    "TOLLGATE_LOG_CLIENT_IP" => "none",
                    _ => return None,
                };
                Some(v.to_string())
            };
            let cfg = crate::config::Config::from_vars(&get).expect("a valid test configuration");
            let pool = store::pool(&cfg).expect("a pool");
            let counters = store::counter_pool(&cfg).expect("a counter pool");
            Fixture {
                gateway: Gateway::new(&cfg, counters),
                logger: Logger::start(pool.clone(), 16, Duration::from_millis(10), 16),
                health: DbHealth::default(),
                server: ServerStats::default(),
                failures: FailureLimit::new(cfg.admin_fail_limit, cfg.auth_fail_window),
                client_ips: ClientIps::new(&cfg.client_ip_log),
                pool,
                cfg,
            }
        }

        pub fn op(&self) -> Operator<'_> {
            Operator {
                admin: AdminSecret {
                    secret: &self.cfg.admin_secret,
                    failures: &self.failures,
                },
                bcrypt_cost: self.cfg.bcrypt_cost,
                pool: &self.pool,
                health: &self.health,
                gateway: &self.gateway,
                logger: &self.logger,
                server: &self.server,
                client_ips: &self.client_ips,
            }
        }

        /// Dispatches a request sent with the admin secret, as the server would.
        pub fn admin(&self, method: &str, target: &str, body: &str) -> Reply {
            let headers = [("x-admin-secret", SECRET)];
            self.send(Request::fake(method, target, &headers, body.as_bytes()))
        }

        pub fn send(&self, mut rq: Request) -> Reply {
            dispatch(&self.op(), &mut rq).unwrap_or_else(|e| Reply::error(&e))
        }
    }

    impl Drop for Fixture {
        /// Stops the logger thread, which would otherwise outlive the test holding a pool
        /// that keeps trying the unreachable database.
        fn drop(&mut self) {
            self.logger
                .shutdown(std::time::Instant::now() + Duration::from_secs(1));
        }
    }

    /// A reply's status and the field its error names (`""` for none).
    pub fn refusal(r: &Reply) -> (u16, String) {
        let body = r.json_body();
        let field = body["error"]["field"].as_str().unwrap_or("").to_string();
        (r.status, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_paths_match_on_segment_boundaries() {
        assert!(is_operator_path("/admin"));
        assert!(is_operator_path("/admin/users"));
        assert!(is_operator_path("/healthz"));
        assert!(!is_operator_path("/administrator"));
        assert!(!is_operator_path("/users"));
    }

    #[test]
    fn the_admin_secret_is_compared_whole() {
        assert!(is_admin_secret(
            "s3cret-s3cret-s3cret",
            "s3cret-s3cret-s3cret"
        ));
        assert!(!is_admin_secret(
            "s3cret-s3cret-s3cret",
            "s3cret-s3cret-s3cre"
        ));
        assert!(!is_admin_secret("s3cret-s3cret-s3cret", ""));
    }
}
