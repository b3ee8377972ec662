//! The application: every layer's state, built once in `main`, and the [`Handler`] the
//! server loop calls for each request. It decides which path a request takes (refused
//! framing and hostile targets first, then an operator endpoint or the gateway path) and,
//! once the answer is written, records a gateway request in the metrics and the log.

use crate::config::Config;
use crate::error::Error;
use crate::gateway::guards::FailureLimit;
use crate::gateway::{self, Gateway};
use crate::http::{target, Ctx, Handler, Reply, Request, Sent, ServerStats};
use crate::logs::client_ip::ClientIps;
use crate::logs::Logger;
use crate::operator::{self, AdminSecret, Operator};
use crate::store::logs::LogRow;
use crate::store::{DbHealth, Pool};
use std::sync::Arc;
use std::time::Instant;

pub struct App {
    pub cfg: Config,
    pub pool: Pool,
    /// Whether the database answered lately; lets requests skip it during an outage.
    pub health: DbHealth,
    pub gateway: Arc<Gateway>,
    pub logger: Logger,
    pub server: ServerStats,
    /// Failed admin-secret checks per client IP.
    pub admin_failures: FailureLimit,
    /// What the log keeps of each client's address.
    pub client_ips: ClientIps,
}

/// What one request's handling learned, for its log row.
#[derive(Default)]
pub struct Trace {
    /// Client traffic (logged), as opposed to an operator request (not logged).
    client: bool,
    ids: gateway::Trace,
}

impl App {
    pub fn new(cfg: Config, pool: Pool, gateway: Gateway, logger: Logger) -> App {
        App {
            admin_failures: FailureLimit::new(cfg.admin_fail_limit, cfg.auth_fail_window),
            client_ips: ClientIps::new(&cfg.client_ip_log),
            health: DbHealth::default(),
            gateway: Arc::new(gateway),
            server: ServerStats::default(),
            logger,
            pool,
            cfg,
        }
    }

    /// The operator endpoints' view of the state.
    pub fn operator(&self) -> Operator<'_> {
        Operator {
            admin: AdminSecret {
                secret: &self.cfg.admin_secret,
                failures: &self.admin_failures,
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

    /// Debug builds only, and only with `TOLLGATE_TEST_PANIC_PATH` set: real panics for the
    /// fault tests (see `Config::test_panic_path`).
    #[cfg(debug_assertions)]
    fn test_panic(&self, ctx: &Ctx) {
        let Some(base) = self.cfg.test_panic_path.as_deref() else {
            return;
        };
        match ctx.path.strip_prefix(base) {
            Some("") => panic!("test-only panic in a handler"),
            Some("/lock") => self.gateway.auth.cache.panic_holding_lock(),
            Some("/logger") => self.logger.panic_once_for_test(),
            _ => {}
        }
    }
}

impl Handler for App {
    type Trace = Trace;

    fn handle(&self, rq: &mut Request, trace: &mut Trace) -> Reply {
        // A refused request is hostile traffic at the gateway: logged like any gateway
        // request. Decided first, so a request whose handler panics is logged too.
        trace.client = rq.ctx.refused.is_some() || !operator::is_operator_path(&rq.ctx.path);
        #[cfg(debug_assertions)]
        self.test_panic(&rq.ctx);
        let result = match (rq.ctx.bad_framing, &rq.ctx.refused) {
            // The drain is over: whatever still reaches this process gets an answer that
            // tells the client to go elsewhere, logged like any other.
            _ if self.server.stopping() => Err(Error::ShuttingDown),
            (Some(why), _) => Err(Error::BadRequest(why.into())),
            (None, Some(e)) => Ok(Reply::error(e)),
            (None, None) if trace.client => {
                gateway::handle(&self.gateway, &self.pool, &self.health, rq, &mut trace.ids)
            }
            (None, None) => operator::dispatch(&self.operator(), rq),
        };
        let mut reply = result.unwrap_or_else(|e| Reply::error(&e));
        if trace.client {
            reply.header("X-Request-Id", rq.ctx.request_id.clone());
        }
        reply
    }

    fn finish(&self, ctx: &Ctx, trace: Trace, status: u16, sent: Sent) {
        if !trace.client {
            return;
        }
        let seconds = ctx.started.elapsed().as_secs_f64();
        self.gateway
            .metrics
            .observe(trace.ids.route_id, status, seconds);
        self.logger.send(LogRow {
            request_id: ctx.request_id.clone(),
            api_key_id: trace.ids.api_key_id,
            user_id: trace.ids.user_id,
            route_id: trace.ids.route_id,
            plan_id: trace.ids.plan_id,
            admitted: trace.ids.admitted,
            method: ctx.method.clone(),
            path: target::printable(&ctx.path).into_owned(),
            query: ctx
                .query
                .as_deref()
                .map(|q| target::printable(q).into_owned()),
            status: i32::from(status),
            latency_ms: seconds * 1000.0,
            bytes_in: sent.bytes_in as i64,
            bytes_out: sent.bytes_out as i64,
            client_ip: self.client_ips.stored(&ctx.client_ip),
            user_agent: ctx
                .header("User-Agent")
                .map(|v| target::printable(v).into_owned()),
            created_at: ctx.received_at,
            upstream: trace.ids.upstream,
            attempts: trace.ids.attempts,
        });
    }

    /// Gives back unused lease units, and writes every queued log row by `deadline`.
    fn on_shutdown(&self, deadline: Instant) {
        // The log first: its flush has the deadline; a give-back round after it costs the
        // others nothing but some under-admission if it cannot be made.
        let lost = self.logger.shutdown(deadline);
        self.gateway.limiter.counters.give_back_leases(&self.health);
        if lost > 0 {
            log::error!("shutdown: {lost} log rows could not be written in time");
        } else {
            log::info!("shutdown complete: every log row written");
        }
    }

    fn stats(&self) -> &ServerStats {
        &self.server
    }
}
