//! The gateway path: every request that is not for an operator endpoint. Read [`handle`]
//! top to bottom: it is the request path as named phases in call order, each in its own
//! file and each taking only the state it uses.
//!
//! 0. **preflight** (`cors.rs`): a CORS preflight for a route with a CORS policy, of any
//!    owner, is answered here, without a key and without counting.
//! 1. **auth** (`auth.rs`, `keys.rs`, `guards.rs`): which key, verified, not revoked.
//! 2. **scope**: a `read` key may only use the safe methods; the key's IP rules
//!    (`ip_rules.rs`).
//! 3. **route** (`routes.rs`): the owner's longest matching prefix, its methods, the
//!    body limit from the declared length, and the route's IP rules.
//! 4. **limits** (`policy.rs`, `ratelimit.rs`, `counting.rs`): which limits and quotas
//!    apply, counted in Postgres, one round per batch of requests.
//! 5. **forward** (`forward.rs`, `balance.rs`, `breaker.rs`): to a target of the route's
//!    pool and back; `health.rs` probes the targets of routes with a health check.
//!
//! Once the route is known, every answer (the upstream's or the gateway's own 405, 413,
//! 429, 502...) gets the route's CORS headers (`cors.rs`), so a browser can read it.
//!
//! Each phase fills the request's [`Trace`], so its log row names whatever was known when
//! the request stopped. Logging itself happens after the answer is written (`app.rs`).
//! `sync.rs` keeps the key cache and route table in step with the database.

pub mod auth;
pub mod balance;
pub mod breaker;
pub mod cors;
pub mod counting;
pub mod forward;
pub mod guards;
pub mod health;
pub mod identity;
pub mod ip_rules;
pub mod keys;
pub mod leases;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod routes;
pub mod sync;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{Reply, Request};
use crate::store::{self, DbHealth, Pool};
use auth::Auth;
use forward::Upstreams;
use guards::{BcryptGate, FailureLimit};
use metrics::{Metrics, UpstreamFailure};
use ratelimit::Limiter;
use routes::RouteTable;

/// The gateway's state, built once in `main`.
pub struct Gateway {
    pub auth: Auth,
    pub routes: RouteTable,
    pub limiter: Limiter,
    pub plans: policy::Plans,
    /// The window of a key's `rateLimit` (`TOLLGATE_RATE_WINDOW_SECS`).
    pub rate_window_secs: u32,
    pub upstreams: Upstreams,
    pub metrics: Metrics,
}

impl Gateway {
    /// `counter_pool` is the rate limiter's own pool (`store::counter_pool`).
    pub fn new(cfg: &Config, counter_pool: Pool) -> Gateway {
        Gateway {
            auth: Auth::new(
                FailureLimit::new(cfg.auth_fail_limit, cfg.auth_fail_window),
                BcryptGate::new(cfg.bcrypt_concurrency),
            ),
            routes: RouteTable::default(),
            limiter: Limiter::new(
                ratelimit::Counters::new(
                    counter_pool,
                    cfg.coalesce_window,
                    cfg.clock_shift_secs,
                    leases::Leases::new(cfg.lease_horizon, cfg.lease_min_room),
                    cfg.db_wait,
                ),
                cfg.ratelimit_fail_open,
            ),
            plans: policy::Plans::default(),
            rate_window_secs: cfg.rate_window_secs,
            upstreams: Upstreams::new(cfg),
            metrics: Metrics::default(),
        }
    }
}

impl Gateway {
    /// Counts a request of `key` against every limit and quota that applies to it (see
    /// `policy.rs`), with the outage policy; records the plan and the verdict in `trace`.
    pub fn count(
        &self,
        pool: &Pool,
        health: &DbHealth,
        key: &auth::Authed,
        trace: &mut Trace,
    ) -> Result<ratelimit::Limit> {
        let limits = self
            .plans
            .limits_for(pool, &key.info, self.rate_window_secs);
        trace.plan_id = limits.plan_id;
        let limit = self.limiter.check(health, key.id, key.user_id, &limits)?;
        trace.admitted = Some(limit.admitted());
        Ok(limit)
    }

    /// A key holder calling an operator endpoint (`/analytics/*`, `/me`): its key, verified
    /// and judged by its own IP rules exactly as on the gateway path, so a key limited to
    /// some addresses cannot be used (or rotated) from others.
    pub fn authenticate_key_holder(
        &self,
        pool: &Pool,
        health: &DbHealth,
        ctx: &crate::http::Ctx,
    ) -> Result<auth::Authed> {
        let key = self.auth.authenticate(pool, health, ctx)?;
        ip_rules::Client::new(&ctx.client_ip).check(&key.info.ip_rules)?;
        Ok(key)
    }

    /// Counts an operator request of `key` (a key holder's analytics call) against the
    /// key's and its user's sliding limits only: quotas count the API traffic that is
    /// logged and billed (`/analytics/usage`), which operator calls are not.
    pub fn count_operator_call(
        &self,
        pool: &Pool,
        health: &DbHealth,
        key: &auth::Authed,
    ) -> Result<ratelimit::Limit> {
        let limits = self
            .plans
            .limits_for(pool, &key.info, self.rate_window_secs)
            .without_quotas();
        self.limiter.check(health, key.id, key.user_id, &limits)
    }
}

/// Who a gateway request turned out to be, filled in phase by phase for its log row.
#[derive(Default)]
pub struct Trace {
    pub api_key_id: Option<i64>,
    pub user_id: Option<i64>,
    pub route_id: Option<i64>,
    /// The plan the key's limits came from, for usage by plan.
    pub plan_id: Option<i64>,
    /// The limit phase's verdict: admitted, refused by a limit or quota, or not reached.
    pub admitted: Option<bool>,
    /// The pool target that answered, or was tried last.
    pub upstream: Option<String>,
    /// How many targets the forward phase tried.
    pub attempts: Option<i16>,
}

/// The gateway path: preflight → auth → scope → route → limits → forward. A request for a
/// path its key has no route for is refused before it is counted, so typos do not eat quota.
pub fn handle(
    gw: &Gateway,
    pool: &Pool,
    health: &DbHealth,
    rq: &mut Request,
    trace: &mut Trace,
) -> Result<Reply> {
    let host = routes::request_host(&rq.ctx);
    // 0. preflight
    if cors::is_preflight(&rq.ctx) {
        if let Some(reply) = cors::preflight(&gw.routes, host.as_deref(), &rq.ctx, trace) {
            return Ok(reply);
        }
    }
    // 1. auth
    let key = gw.auth.authenticate(pool, health, &rq.ctx)?;
    trace.api_key_id = Some(key.id);
    trace.user_id = Some(key.user_id);
    // IP rules are judged before the limits phase, so a refused address is not counted.
    let client = ip_rules::Client::new(&rq.ctx.client_ip);
    client.check(&key.info.ip_rules)?;
    // 2. scope
    if !key.allows(&rq.ctx.method) {
        return Err(Error::InsufficientScope);
    }
    // 3. route
    let route = gw
        .routes
        .find(key.user_id, host.as_deref(), &rq.ctx.path)
        .ok_or(Error::RouteNotFound)?;
    trace.route_id = Some(route.id);
    let mut reply = match client.check(&route.ip_rules) {
        Err(refused) => Reply::error(&refused),
        Ok(()) => {
            on_route(gw, pool, health, rq, trace, &key, &route).unwrap_or_else(|e| Reply::error(&e))
        }
    };
    cors::add_headers(&route, &rq.ctx, &mut reply);
    Ok(reply)
}

/// The phases after the route is known: its methods and body limit, limits, forward.
fn on_route(
    gw: &Gateway,
    pool: &Pool,
    health: &DbHealth,
    rq: &mut Request,
    trace: &mut Trace,
    key: &auth::Authed,
    route: &store::routes::Route,
) -> Result<Reply> {
    if !route.allows(&rq.ctx.method) {
        let allow = route.methods.as_deref().unwrap_or_default().join(", ");
        return Err(Error::method_not_allowed(allow));
    }
    // Checked from the declared length before any byte is read (chunked bodies are
    // checked while they stream).
    let max = gw.upstreams.max_body(route);
    if rq.ctx.content_length.is_some_and(|n| n > max) {
        return Err(Error::PayloadTooLarge(max));
    }
    // 4. limits
    let limit = gw.count(pool, health, key, trace)?;
    if let Some(refused) = limit.refusal(&gw.metrics) {
        return Ok(refused);
    }
    // 5. forward
    let mut reply = forward::forward(&gw.upstreams, route, rq, key, trace).unwrap_or_else(|e| {
        if let Some(kind) = UpstreamFailure::of(&e) {
            gw.metrics.upstream_failure(kind);
        }
        Reply::error(&e)
    });
    limit.add_headers(&gw.limiter, &mut reply);
    Ok(reply)
}
