//! `/analytics/*`: traffic figures from `request_logs`. The admin secret sees everything and
//! may filter by user, key or route; an API key sees only its own user's traffic (and its
//! calls count against its rate limit like any other request).

use crate::admin;
use crate::auth;
use crate::db::ts;
use crate::error::{Error, Result};
use crate::input;
use crate::server::{self, App, Ctx, Reply};
use postgres::types::ToSql;
use serde_json::{json, Value};

/// Who is asking and what they may see.
struct Scope {
    window_secs: f64,
    user_id: Option<i64>,
    key_id: Option<i64>,
    route_id: Option<i64>,
}

/// Longest `?window=` accepted: beyond it raw-row scans get slow (rollups come later).
const MAX_WINDOW_SECS: u64 = 90 * 86_400;
const DEFAULT_WINDOW: &str = "24h";
const TOP_ROUTES: i64 = 10;
const RECENT_DEFAULT: i64 = 20;

/// Rows in the window that match the filters; `$1` window seconds, `$2..$4` user, key, route.
const FILTER: &str = "created_at >= now() - make_interval(secs => $1)
    AND ($2::int8 IS NULL OR user_id = $2)
    AND ($3::int8 IS NULL OR api_key_id = $3)
    AND ($4::int8 IS NULL OR route_id = $4)";

pub fn handle(app: &App, ctx: &Ctx) -> Result<Reply> {
    if ctx.method != "GET" && ctx.method != "HEAD" {
        return Err(Error::MethodNotAllowed);
    }
    let mut limit_headers = None;
    let own_user = if admin::check_admin(app, ctx)? {
        None
    } else {
        let key = auth::authenticate(app, ctx)?;
        // The same outage policy as the gateway path (fail-open or fail-closed).
        let limit = server::rate_limit(app, key.id, key.rate_limit)?;
        if let Some(refused) = limit.refusal(app) {
            return Ok(refused);
        }
        limit_headers = Some(limit);
        Some(key.user_id)
    };
    let scope = scope(ctx, own_user)?;
    let endpoint = ctx.path.trim_end_matches('/');
    let body = match endpoint {
        "/analytics/overview" => overview(app, &scope)?,
        "/analytics/timeseries" => timeseries(app, &scope)?,
        "/analytics/top-routes" => top_routes(app, &scope)?,
        "/analytics/recent" => recent(app, ctx, &scope)?,
        _ => return Err(Error::NotFound("analytics endpoint".into())),
    };
    let mut reply = Reply::json(200, &body);
    if let Some(limit) = limit_headers {
        limit.add_headers(app, &mut reply);
    }
    Ok(reply)
}

fn scope(ctx: &Ctx, own_user: Option<i64>) -> Result<Scope> {
    let window = input::query_param(ctx, "window")?;
    let window_secs = parse_window(window.as_deref().unwrap_or(DEFAULT_WINDOW))
        .ok_or_else(|| Error::field("window", "must look like 15m, 24h or 7d (at most 90d)"))?;
    let asked_user = input::query_id(ctx, "userId")?;
    let user_id = match (own_user, asked_user) {
        (Some(own), Some(asked)) if own != asked => return Err(Error::InsufficientScope),
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    Ok(Scope {
        window_secs: window_secs as f64,
        user_id,
        key_id: input::query_id(ctx, "keyId")?,
        route_id: input::query_id(ctx, "routeId")?,
    })
}

/// `15m`, `24h`, `7d` → seconds, between one minute and `MAX_WINDOW_SECS`.
pub fn parse_window(w: &str) -> Option<u64> {
    let (n, unit) = [("m", 60), ("h", 3_600), ("d", 86_400)]
        .iter()
        .find_map(|(suffix, unit)| Some((w.strip_suffix(suffix)?, *unit)))?;
    let secs = n.parse::<u64>().ok()?.checked_mul(unit)?;
    (60..=MAX_WINDOW_SECS).contains(&secs).then_some(secs)
}

fn params(s: &Scope) -> [&(dyn ToSql + Sync); 4] {
    [&s.window_secs, &s.user_id, &s.key_id, &s.route_id]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn overview(app: &App, s: &Scope) -> Result<Value> {
    let sql = format!(
        "SELECT count(*), count(*) FILTER (WHERE status >= 400), coalesce(avg(latency_ms), 0)
           FROM request_logs WHERE {FILTER}"
    );
    let row = app.pool.get()?.query_one(sql.as_str(), &params(s))?;
    let total: i64 = row.get(0);
    let errors: i64 = row.get(1);
    let avg: f64 = row.get(2);
    Ok(json!({
        "totalRequests": total,
        "errorCount": errors,
        "errorRate": error_rate(total, errors),
        "avgLatencyMs": round2(avg),
    }))
}

/// Percentage with two decimals, as a string (the reference's `toFixed(2)`).
pub fn error_rate(total: i64, errors: i64) -> String {
    if total == 0 {
        return "0.00".into();
    }
    format!("{:.2}", errors as f64 * 100.0 / total as f64)
}

/// One entry per hour of the window, oldest first, empty hours as zeros.
fn timeseries(app: &App, s: &Scope) -> Result<Value> {
    let sql = format!(
        "WITH counts AS (
            SELECT date_trunc('hour', created_at, 'UTC') AS hour, count(*) AS n,
                   count(*) FILTER (WHERE status >= 400) AS errors
              FROM request_logs WHERE {FILTER} GROUP BY 1)
         SELECT h.hour, coalesce(c.n, 0), coalesce(c.errors, 0)
           FROM generate_series(
                  date_trunc('hour', now(), 'UTC') - make_interval(hours => (ceil($1 / 3600.0) - 1)::int),
                  date_trunc('hour', now(), 'UTC'), interval '1 hour') AS h(hour)
           LEFT JOIN counts c ON c.hour = h.hour
          ORDER BY h.hour"
    );
    let rows = app.pool.get()?.query(sql.as_str(), &params(s))?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "hour": ts(r.get(0)),
                    "count": r.get::<_, i64>(1),
                    "errorCount": r.get::<_, i64>(2),
                })
            })
            .collect(),
    ))
}

fn top_routes(app: &App, s: &Scope) -> Result<Value> {
    let sql = format!(
        "SELECT path, count(*) AS n, avg(latency_ms) FROM request_logs WHERE {FILTER}
          GROUP BY path ORDER BY n DESC, path LIMIT {TOP_ROUTES}"
    );
    let rows = app.pool.get()?.query(sql.as_str(), &params(s))?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "path": r.get::<_, String>(0),
                    "count": r.get::<_, i64>(1),
                    "avgLatencyMs": round2(r.get(2)),
                })
            })
            .collect(),
    ))
}

fn recent(app: &App, ctx: &Ctx, s: &Scope) -> Result<Value> {
    let limit = match input::query_param(ctx, "limit")? {
        None => RECENT_DEFAULT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Error::field("limit", "must be a positive integer"))?
            .min(crate::config::MAX_PAGE_LIMIT),
    };
    let sql = format!(
        "SELECT id, request_id, api_key_id, user_id, route_id, method, path, query, status,
                latency_ms, bytes_in, bytes_out, client_ip, user_agent, created_at
           FROM request_logs WHERE {FILTER}
          ORDER BY created_at DESC, id DESC LIMIT {limit}"
    );
    let rows = app.pool.get()?.query(sql.as_str(), &params(s))?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "id": r.get::<_, i64>(0),
                    "requestId": r.get::<_, String>(1),
                    "apiKeyId": r.get::<_, Option<i64>>(2),
                    "userId": r.get::<_, Option<i64>>(3),
                    "routeId": r.get::<_, Option<i64>>(4),
                    "method": r.get::<_, String>(5),
                    "path": r.get::<_, String>(6),
                    "query": r.get::<_, Option<String>>(7),
                    "status": r.get::<_, i32>(8),
                    "latencyMs": round2(r.get(9)),
                    "bytesIn": r.get::<_, i64>(10),
                    "bytesOut": r.get::<_, i64>(11),
                    "clientIp": r.get::<_, String>(12),
                    "userAgent": r.get::<_, Option<String>>(13),
                    "createdAt": ts(r.get(14)),
                })
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_within_bounds() {
        assert_eq!(parse_window("15m"), Some(900));
        assert_eq!(parse_window("24h"), Some(86_400));
        assert_eq!(parse_window("7d"), Some(604_800));
        for bad in [
            "",
            "h",
            "1é",
            "0m",
            "24",
            "91d",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_rate_is_a_two_decimal_percentage() {
        assert_eq!(error_rate(0, 0), "0.00");
        assert_eq!(error_rate(10, 3), "30.00");
        assert_eq!(error_rate(3, 1), "33.33");
    }
}
