//! The gateway path: every request that is not for an operator endpoint. Read [`handle`]
//! top to bottom: it is the request path as named phases in call order, each in its own
//! file and each taking only the state it uses.
//!
//! 1. **auth** (`auth.rs`, `keys.rs`, `guards.rs`): which key, verified, not revoked.
//! 2. **scope**: a `read` key may only use the safe methods.
//! 3. **route** (`routes.rs`): the owner's longest matching prefix, its methods, and the
//!    body limit from the declared length.
//! 4. **rate limit** (`ratelimit.rs`): counted in Postgres, in batches.
//! 5. **forward** (`forward.rs`, `breaker.rs`): to the upstream and back.
//!
//! Each phase fills the request's [`Trace`], so its log row names whatever was known when
//! the request stopped. Logging itself happens after the answer is written (`app.rs`).
//! `sync.rs` keeps the key cache and route table in step with the database.

pub mod auth;
pub mod breaker;
pub mod forward;
pub mod guards;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod routes;
pub mod sync;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{Reply, Request};
use crate::store::{DbHealth, Pool};
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
                ratelimit::Counters::new(counter_pool, cfg.rate_window_secs, cfg.coalesce_window),
                cfg.ratelimit_fail_open,
            ),
            plans: policy::Plans::default(),
            upstreams: Upstreams::new(cfg),
            metrics: Metrics::default(),
        }
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
}

/// The gateway path: auth → scope → route → rate limit → forward. A request for a path
/// its key has no route for is refused before it is counted, so typos do not eat quota.
pub fn handle(
    gw: &Gateway,
    pool: &Pool,
    health: &DbHealth,
    rq: &mut Request,
    trace: &mut Trace,
) -> Result<Reply> {
    // 1. auth
    let key = gw.auth.authenticate(pool, health, &rq.ctx)?;
    trace.api_key_id = Some(key.id);
    trace.user_id = Some(key.user_id);
    // 2. scope
    if !key.allows(&rq.ctx.method) {
        return Err(Error::InsufficientScope);
    }
    // 3. route
    let host = routes::request_host(&rq.ctx);
    let route = gw
        .routes
        .find(key.user_id, host.as_deref(), &rq.ctx.path)
        .ok_or(Error::RouteNotFound)?;
    trace.route_id = Some(route.id);
    if !route.allows(&rq.ctx.method) {
        let mut reply = Reply::error(&Error::MethodNotAllowed);
        reply.header(
            "Allow",
            route.methods.as_deref().unwrap_or_default().join(", "),
        );
        return Ok(reply);
    }
    // Checked from the declared length before any byte is read (chunked bodies are
    // checked while they stream).
    let max = gw.upstreams.max_body(&route);
    if rq.ctx.content_length.is_some_and(|n| n > max) {
        return Err(Error::PayloadTooLarge(max));
    }
    // 4. rate limit
    let limit = gw.limiter.check(health, key.id, key.rate_limit)?;
    trace.admitted = Some(match &limit {
        ratelimit::Limit::Decided(d) => d.allowed,
        ratelimit::Limit::Degraded => true,
    });
    if let Some(refused) = limit.refusal(&gw.metrics) {
        return Ok(refused);
    }
    // 5. forward
    let mut reply = forward::forward(&gw.upstreams, &route, rq, key.credential_header)
        .unwrap_or_else(|e| {
            if let Some(kind) = UpstreamFailure::of(&e) {
                gw.metrics.upstream_failure(kind);
            }
            Reply::error(&e)
        });
    limit.add_headers(&gw.limiter, &mut reply);
    Ok(reply)
}
