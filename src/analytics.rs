//! `/analytics/*`: traffic figures from the rollups the logger keeps (`rollup.rs`), so an
//! answer costs the same at 10 M requests as at 10 thousand; only `recent` and the unrouted
//! paths of `top-routes` read raw `request_logs`. The admin secret sees everything and may
//! filter by user, key or route; an API key sees only its own user's traffic (and its calls
//! count against its rate limit like any other request).

use crate::admin;
use crate::auth;
use crate::db::ts;
use crate::error::{Error, Result};
use crate::input;
use crate::rollup::{hist_columns, percentile};
use crate::server::{self, App, Ctx, Reply};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use postgres::types::ToSql;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Who is asking and what they may see.
struct Scope {
    window_secs: i64,
    /// Start of the window, rounded down to the minute (the finest grain kept).
    start: DateTime<Utc>,
    user_id: Option<i64>,
    key_id: Option<i64>,
    route_id: Option<i64>,
}

/// `?window=` bounds: a quarter hour of minutes up to 30 days (rollups are kept 90 days by
/// default, so 30 days is answerable with room to spare).
const MIN_WINDOW_SECS: u64 = 15 * 60;
const MAX_WINDOW_SECS: u64 = 30 * 86_400;
const DEFAULT_WINDOW: &str = "24h";
const TOP_DEFAULT: i64 = 10;
const RECENT_DEFAULT: i64 = 20;
/// Most points a timeseries returns: a day of minutes, a month of hours.
const MAX_POINTS: i64 = 1_440;

/// Filters on the rollups: `$1..$3` user, key, route (rollups store a missing id as 0, and a
/// filter is a positive id, so NULL ids never match a filter, as with raw rows); `$4` true
/// reads the whole-traffic rows (`rollup::ALL`) instead of the per-dimension ones.
const FILTER: &str = "($1::int8 IS NULL OR user_id = $1)
    AND ($2::int8 IS NULL OR api_key_id = $2)
    AND ($3::int8 IS NULL OR route_id = $3)
    AND (user_id = -1) = $4::bool";

/// The window as whole days, whole hours and the ragged minutes at its start: `$5` start,
/// `$6` first whole hour, `$7` first whole day. The current hour's and day's rows hold what
/// has happened so far in them, so the window's end needs no minute rows.
const WINDOW: &str = "((grain_secs = 60 AND bucket_start >= $5 AND bucket_start < $6)
    OR (grain_secs = 3600 AND bucket_start >= $6 AND bucket_start < $7)
    OR (grain_secs = 86400 AND bucket_start >= $7))";

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
    let mut next_cursor = None;
    let body = match endpoint {
        "/analytics/overview" => overview(app, ctx, &scope)?,
        "/analytics/timeseries" => timeseries(app, ctx, &scope)?,
        "/analytics/top-routes" => top_routes(app, ctx, &scope)?,
        "/analytics/top-keys" => top_keys(app, ctx, &scope)?,
        "/analytics/recent" => {
            let (rows, next) = recent(app, ctx, &scope)?;
            next_cursor = next;
            rows
        }
        _ => return Err(Error::NotFound("analytics endpoint".into())),
    };
    let mut reply = Reply::json(200, &body);
    if let Some(c) = next_cursor {
        reply.header("X-Next-Cursor", c.to_string());
    }
    if let Some(limit) = limit_headers {
        limit.add_headers(app, &mut reply);
    }
    Ok(reply)
}

fn scope(ctx: &Ctx, own_user: Option<i64>) -> Result<Scope> {
    let window = input::query_param(ctx, "window")?;
    let window_secs = parse_window(window.as_deref().unwrap_or(DEFAULT_WINDOW))
        .ok_or_else(|| Error::field("window", "must look like 15m, 24h or 7d (15m to 30d)"))?
        as i64;
    let asked_user = input::query_id(ctx, "userId")?;
    let user_id = match (own_user, asked_user) {
        (Some(own), Some(asked)) if own != asked => return Err(Error::InsufficientScope),
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    Ok(Scope {
        window_secs,
        start: floor(Utc::now() - TimeDelta::seconds(window_secs), 60),
        user_id,
        key_id: input::query_id(ctx, "keyId")?,
        route_id: input::query_id(ctx, "routeId")?,
    })
}

/// `15m`, `24h`, `7d` → seconds, between `MIN_WINDOW_SECS` and `MAX_WINDOW_SECS`.
pub fn parse_window(w: &str) -> Option<u64> {
    let (n, unit) = [("m", 60), ("h", 3_600), ("d", 86_400)]
        .iter()
        .find_map(|(suffix, unit)| Some((w.strip_suffix(suffix)?, *unit)))?;
    let secs = n.parse::<u64>().ok()?.checked_mul(unit)?;
    (MIN_WINDOW_SECS..=MAX_WINDOW_SECS)
        .contains(&secs)
        .then_some(secs)
}

/// `t` rounded down to a multiple of `secs` since the epoch (UTC days for 86400).
fn floor(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::seconds(secs)).unwrap_or(t)
}

/// `t` rounded up to a multiple of `secs`.
fn ceil(t: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let f = floor(t, secs);
    if f == t {
        t
    } else {
        f + TimeDelta::seconds(secs)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `?limit=`: a positive integer, capped at `MAX_PAGE_LIMIT` (asking for more is not an error).
fn limit(ctx: &Ctx, default: i64) -> Result<i64> {
    match input::query_param(ctx, "limit")? {
        None => Ok(default),
        Some(v) => Ok(v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Error::field("limit", "must be a positive integer"))?
            .min(crate::config::MAX_PAGE_LIMIT)),
    }
}

/// Sums of rollup rows for one group.
#[derive(Default)]
struct Totals {
    /// The group's value (0 when the rollup had no id), and the largest user id in it.
    group: i64,
    user: i64,
    count: i64,
    errors_4xx: i64,
    errors_5xx: i64,
    rate_limited: i64,
    latency_sum: f64,
    bytes_in: i64,
    bytes_out: i64,
    hist: Vec<i64>,
}

impl Totals {
    fn errors(&self) -> i64 {
        self.errors_4xx + self.errors_5xx
    }
    fn avg_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            round2(self.latency_sum / self.count as f64)
        }
    }
    fn p(&self, q: f64) -> f64 {
        round2(percentile(&self.hist, q))
    }
}

/// Sums the rollup rows matching the filters and `rows_sql` (which uses `$5..`, bound from
/// `extra`) per value of `group_sql`; with `hist`, also the latency histogram (76 more sums
/// per row read, so skipped where unused). `by_dimension` says `group_sql` is a user, key or
/// route column; otherwise an unfiltered question is answered from the whole-traffic rows.
fn sums(
    app: &App,
    s: &Scope,
    (group_sql, by_dimension): (&str, bool),
    rows_sql: &str,
    extra: &[&(dyn ToSql + Sync)],
    hist: bool,
) -> Result<Vec<Totals>> {
    static HIST_SUMS: OnceLock<String> = OnceLock::new();
    let hist_sql = if hist {
        HIST_SUMS.get_or_init(|| hist_columns(", sum({h})::int8", ""))
    } else {
        ""
    };
    let sql = format!(
        "SELECT {group_sql} AS g, max(user_id), sum(count)::int8, sum(errors_4xx)::int8,
                sum(errors_5xx)::int8, sum(rate_limited)::int8, sum(latency_sum)::float8,
                sum(bytes_in)::int8, sum(bytes_out)::int8 {hist_sql}
           FROM request_rollups WHERE {FILTER} AND {rows_sql} GROUP BY 1"
    );
    let whole = !by_dimension && s.user_id.is_none() && s.key_id.is_none() && s.route_id.is_none();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&s.user_id, &s.key_id, &s.route_id, &whole];
    params.extend_from_slice(extra);
    let rows = app.pool.get()?.query(sql.as_str(), &params)?;
    Ok(rows
        .iter()
        .map(|r| Totals {
            group: r.get(0),
            user: r.get(1),
            count: r.get(2),
            errors_4xx: r.get(3),
            errors_5xx: r.get(4),
            rate_limited: r.get(5),
            latency_sum: r.get(6),
            bytes_in: r.get(7),
            bytes_out: r.get(8),
            hist: (9..r.len()).map(|i| r.get::<_, i64>(i)).collect(),
        })
        .collect())
}

/// Sums over the whole window, grouped by `group_sql`.
fn window_sums(app: &App, s: &Scope, group: (&str, bool), hist: bool) -> Result<Vec<Totals>> {
    let hour = ceil(s.start, 3_600);
    let day = ceil(hour, 86_400);
    sums(app, s, group, WINDOW, &[&s.start, &hour, &day], hist)
}

fn overview(app: &App, ctx: &Ctx, s: &Scope) -> Result<Value> {
    let t = window_sums(app, s, ("0::int8", false), true)?
        .pop()
        .unwrap_or_default();
    Ok(json!({
        "totalRequests": t.count,
        "errorCount": t.errors(),
        "errorRate": error_rate(t.count, t.errors()),
        "avgLatencyMs": t.avg_ms(),
        "p50Ms": t.p(0.50),
        "p95Ms": t.p(0.95),
        "p99Ms": t.p(0.99),
        "clientErrors": t.errors_4xx,
        "serverErrors": t.errors_5xx,
        "rateLimited": t.rate_limited,
        "bytesIn": t.bytes_in,
        "bytesOut": t.bytes_out,
        "window": window_echo(ctx)?,
    }))
}

fn window_echo(ctx: &Ctx) -> Result<String> {
    Ok(input::query_param(ctx, "window")?.unwrap_or_else(|| DEFAULT_WINDOW.into()))
}

/// Percentage with two decimals, as a string (the reference's `toFixed(2)`).
pub fn error_rate(total: i64, errors: i64) -> String {
    if total == 0 {
        return "0.00".into();
    }
    format!("{:.2}", errors as f64 * 100.0 / total as f64)
}

/// ceil(window / bucket) whole minutes, hours or days ending with the current one, oldest
/// first, empty ones as zeros (24 hours for `24h`, as before rollups; 1 day, today, for
/// `24h` by day).
fn timeseries(app: &App, ctx: &Ctx, s: &Scope) -> Result<Value> {
    let bucket = input::query_param(ctx, "bucket")?;
    let grain: i32 = match bucket.as_deref().unwrap_or("hour") {
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        _ => return Err(Error::field("bucket", "must be minute, hour or day")),
    };
    let g = i64::from(grain);
    let points = (s.window_secs + g - 1) / g;
    if points > MAX_POINTS {
        return Err(Error::field(
            "bucket",
            format!("gives more than {MAX_POINTS} points for this window; use a larger bucket"),
        ));
    }
    let last = floor(Utc::now(), g);
    let first = last - TimeDelta::seconds(g * (points - 1));
    let by_start: HashMap<i64, Totals> = sums(
        app,
        s,
        ("extract(epoch FROM bucket_start)::int8", false),
        "grain_secs = $5 AND bucket_start >= $6",
        &[&grain, &first],
        true,
    )?
    .into_iter()
    .map(|t| (t.group, t))
    .collect();
    let zero = Totals::default();
    let series = (0..points).map(|k| {
        let start = first + TimeDelta::seconds(g * k);
        let t = by_start.get(&start.timestamp()).unwrap_or(&zero);
        let mut v = json!({
            "start": ts(start),
            "count": t.count,
            "errorCount": t.errors(),
            "clientErrors": t.errors_4xx,
            "serverErrors": t.errors_5xx,
            "p50Ms": t.p(0.50),
            "p95Ms": t.p(0.95),
            "p99Ms": t.p(0.99),
            "bytesIn": t.bytes_in,
            "bytesOut": t.bytes_out,
        });
        if grain == 3_600 {
            // The pre-rollup field name, kept for existing clients.
            v["hour"] = ts(start).into();
        }
        v
    });
    Ok(Value::Array(series.collect()))
}

/// Busiest routes from the rollups; traffic that matched no route is listed by raw path,
/// read from the raw rows (a partial index keeps that proportional to unrouted traffic; it
/// covers only the raw-log retention, 7 days by default).
fn top_routes(app: &App, ctx: &Ctx, s: &Scope) -> Result<Value> {
    let limit = limit(ctx, TOP_DEFAULT)?;
    let routed: Vec<Totals> = window_sums(app, s, ("route_id", true), true)?
        .into_iter()
        .filter(|t| t.group != 0)
        .collect();
    let mut conn = app.pool.get()?;
    let ids: Vec<i64> = routed.iter().map(|t| t.group).collect();
    let prefixes: HashMap<i64, String> = conn
        .query("SELECT id, prefix FROM routes WHERE id = ANY($1)", &[&ids])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out: Vec<(i64, Value)> = routed
        .iter()
        .map(|t| {
            let path = prefixes
                .get(&t.group)
                .cloned()
                .unwrap_or_else(|| format!("(deleted route {})", t.group));
            let v = json!({
                "routeId": t.group,
                "path": path,
                "count": t.count,
                "errorCount": t.errors(),
                "avgLatencyMs": t.avg_ms(),
                "p95Ms": t.p(0.95),
            });
            (t.count, v)
        })
        .collect();
    if s.route_id.is_none() {
        let rows = conn.query(
            "SELECT path, count(*), count(*) FILTER (WHERE status >= 400), avg(latency_ms),
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
               FROM request_logs
              WHERE route_id IS NULL AND created_at >= $3
                AND ($1::int8 IS NULL OR user_id = $1) AND ($2::int8 IS NULL OR api_key_id = $2)
              GROUP BY path ORDER BY count(*) DESC, path LIMIT $4",
            &[&s.user_id, &s.key_id, &s.start, &limit],
        )?;
        out.extend(rows.iter().map(|r| {
            let n: i64 = r.get(1);
            let v = json!({
                "routeId": null,
                "path": r.get::<_, String>(0),
                "count": n,
                "errorCount": r.get::<_, i64>(2),
                "avgLatencyMs": round2(r.get(3)),
                "p95Ms": round2(r.get(4)),
            });
            (n, v)
        }));
    }
    out.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1["path"].to_string().cmp(&b.1["path"].to_string()))
    });
    out.truncate(limit as usize);
    Ok(Value::Array(out.into_iter().map(|(_, v)| v).collect()))
}

/// Busiest keys; requests without a valid key are one entry with `keyId` null.
fn top_keys(app: &App, ctx: &Ctx, s: &Scope) -> Result<Value> {
    let limit = limit(ctx, TOP_DEFAULT)?;
    let mut keys = window_sums(app, s, ("api_key_id", true), false)?;
    keys.sort_by(|a, b| b.count.cmp(&a.count).then(a.group.cmp(&b.group)));
    keys.truncate(limit as usize);
    let ids: Vec<i64> = keys.iter().map(|t| t.group).collect();
    let names: HashMap<i64, String> = app
        .pool
        .get()?
        .query("SELECT id, name FROM api_keys WHERE id = ANY($1)", &[&ids])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let id_or_null = |id: i64| if id == 0 { Value::Null } else { id.into() };
    Ok(Value::Array(
        keys.iter()
            .map(|t| {
                json!({
                    "keyId": id_or_null(t.group),
                    "keyName": names.get(&t.group),
                    "userId": id_or_null(t.user),
                    "count": t.count,
                    "errorCount": t.errors(),
                    "avgLatencyMs": t.avg_ms(),
                })
            })
            .collect(),
    ))
}

/// `?status=`: one code (`404`) or a class (`4xx`) → inclusive status range.
fn status_range(v: &str) -> Option<(i32, i32)> {
    if let Some(class) = v.strip_suffix("xx") {
        let c: i32 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
        return Some((c * 100, c * 100 + 99));
    }
    let code: i32 = v.parse().ok().filter(|c| (100..=599).contains(c))?;
    Some((code, code))
}

/// Newest rows first. `?before=<id>` continues after a row of an earlier page (keyset on
/// arrival time, then id); `X-Next-Cursor` carries the value for the next page.
fn recent(app: &App, ctx: &Ctx, s: &Scope) -> Result<(Value, Option<i64>)> {
    let limit = limit(ctx, RECENT_DEFAULT)?;
    let (lo, hi) = match input::query_param(ctx, "status")? {
        None => (None, None),
        Some(v) => {
            let (lo, hi) = status_range(&v)
                .ok_or_else(|| Error::field("status", "must be a status code or 1xx..5xx"))?;
            (Some(lo), Some(hi))
        }
    };
    let before = input::query_id(ctx, "before")?;
    let rows = app.pool.get()?.query(
        "SELECT id, request_id, api_key_id, user_id, route_id, method, path, query, status,
                latency_ms, bytes_in, bytes_out, client_ip, user_agent, created_at
           FROM request_logs
          WHERE created_at >= $4
            AND ($1::int8 IS NULL OR user_id = $1)
            AND ($2::int8 IS NULL OR api_key_id = $2)
            AND ($3::int8 IS NULL OR route_id = $3)
            AND ($5::int4 IS NULL OR status BETWEEN $5 AND $6)
            AND ($7::int8 IS NULL
                 OR (created_at, id) < (SELECT created_at, id FROM request_logs WHERE id = $7))
          ORDER BY created_at DESC, id DESC LIMIT $8",
        &[
            &s.user_id,
            &s.key_id,
            &s.route_id,
            &s.start,
            &lo,
            &hi,
            &before,
            &limit,
        ],
    )?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.get::<_, i64>(0)))
        .flatten();
    let rows = rows
        .iter()
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
        .collect();
    Ok((Value::Array(rows), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_within_bounds() {
        assert_eq!(parse_window("15m"), Some(900));
        assert_eq!(parse_window("24h"), Some(86_400));
        assert_eq!(parse_window("7d"), Some(604_800));
        assert_eq!(parse_window("30d"), Some(2_592_000));
        for bad in [
            "",
            "h",
            "1é",
            "0m",
            "14m",
            "24",
            "31d",
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

    #[test]
    fn status_filters_are_codes_or_classes() {
        assert_eq!(status_range("404"), Some((404, 404)));
        assert_eq!(status_range("5xx"), Some((500, 599)));
        for bad in ["", "6xx", "0xx", "xx", "99", "600", "4XX", "abc"] {
            assert_eq!(status_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn windows_split_at_whole_hours_and_days() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(ts(floor(t, 60)), "2026-01-02T03:04:00.000Z");
        assert_eq!(ts(ceil(t, 3_600)), "2026-01-02T04:00:00.000Z");
        assert_eq!(ts(ceil(t, 86_400)), "2026-01-03T00:00:00.000Z");
        let whole = floor(t, 3_600);
        assert_eq!(ceil(whole, 3_600), whole);
    }
}
