//! `/analytics/*`: traffic figures from the rollups the logger keeps
//! (`store/rollups.rs`), so an answer costs the same at 10 M requests as at 10 thousand;
//! only `recent` and the unrouted paths of `top-routes` read raw `request_logs`, and `usage`
//! (billing: admitted and refused per day or month) reads `store/usage.rs`. The admin
//! secret sees everything and may filter by user, key or route; an API key sees only its
//! own user's traffic (and its calls count against its rate limit like any other request).

use super::{check_admin, input, ts, Operator, READ_ONLY};
use crate::config::{
    ANALYTICS_DEFAULT_WINDOW as DEFAULT_WINDOW, ANALYTICS_MAX_POINTS as MAX_POINTS,
    ANALYTICS_MAX_WINDOW_SECS as MAX_WINDOW_SECS, ANALYTICS_MIN_WINDOW_SECS as MIN_WINDOW_SECS,
    ANALYTICS_RECENT_DEFAULT as RECENT_DEFAULT, ANALYTICS_TOP_DEFAULT as TOP_DEFAULT,
};
use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::http::{Body, Ctx, Reply};
use crate::store::analytics::{self, Filter, Group, Totals};
use crate::store::usage::{self, Bucket, GroupBy};
use crate::store::{keys, routes, Pool};
use chrono::{DateTime, Datelike, DurationRound, Months, NaiveDate, TimeDelta, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Who is asking and what they may see.
struct Scope {
    window_secs: i64,
    /// Start of the window, rounded down to the minute (the finest grain kept).
    start: DateTime<Utc>,
    filter: Filter,
}

impl Scope {
    /// The window as `[start, first whole hour, first whole day]`: answered from whole
    /// days, whole hours and the ragged minutes at its start.
    fn bounds(&self) -> [DateTime<Utc>; 3] {
        let hour = ceil(self.start, 3_600);
        [self.start, hour, ceil(hour, 86_400)]
    }
}

pub fn handle(op: &Operator, ctx: &Ctx) -> Result<Reply> {
    if ctx.method != "GET" && ctx.method != "HEAD" {
        return Err(Error::method_not_allowed(READ_ONLY));
    }
    let gw = op.gateway;
    let mut limit_headers = None;
    let admin = check_admin(op.admin, ctx)?;
    let own_user = if admin {
        None
    } else {
        let key = gw.authenticate_key_holder(op.pool, op.health, ctx)?;
        // The same outage policy as the gateway path (fail-open or fail-closed).
        let limit = gw.count_operator_call(op.pool, op.health, &key)?;
        if let Some(refused) = limit.refusal(&gw.metrics) {
            return Ok(refused);
        }
        limit_headers = Some(limit);
        Some(key.user_id)
    };
    let endpoint = ctx.path.trim_end_matches('/');
    let mut reply = match endpoint {
        // Dates rather than a window, and JSON or CSV.
        "/analytics/usage" => usage(op.pool, ctx, own_user)?,
        _ => traffic(op.pool, ctx, endpoint, own_user, admin.then_some(gw))?,
    };
    if let Some(limit) = limit_headers {
        limit.add_headers(&gw.limiter, &mut reply);
    }
    Ok(reply)
}

/// The endpoints over a `?window=` of the rollups (and `recent`, of raw rows). `pools`:
/// the gateway, for the admin only, whose top routes show their targets.
fn traffic(
    pool: &Pool,
    ctx: &Ctx,
    endpoint: &str,
    own_user: Option<i64>,
    pools: Option<&Gateway>,
) -> Result<Reply> {
    let scope = scope(ctx, own_user)?;
    let mut next_cursor = None;
    let body = match endpoint {
        "/analytics/overview" => overview(pool, ctx, &scope)?,
        "/analytics/timeseries" => timeseries(pool, ctx, &scope)?,
        "/analytics/top-routes" => top_routes(pool, ctx, &scope, pools)?,
        "/analytics/top-keys" => top_keys(pool, ctx, &scope)?,
        "/analytics/recent" => {
            let (rows, next) = recent(pool, ctx, &scope, pools.is_some())?;
            next_cursor = next;
            rows
        }
        _ => return Err(Error::NotFound("analytics endpoint".into())),
    };
    let mut reply = Reply::json(200, &body);
    if let Some(c) = next_cursor {
        reply.header("X-Next-Cursor", c.to_string());
    }
    Ok(reply)
}

/// `?userId=` as the caller may see it: a key holder only its own user (403 for another).
fn visible_user(ctx: &Ctx, own_user: Option<i64>) -> Result<Option<i64>> {
    let asked = input::query_id(ctx, "userId")?;
    match (own_user, asked) {
        (Some(own), Some(asked)) if own != asked => Err(Error::InsufficientScope),
        (Some(own), _) => Ok(Some(own)),
        (None, asked) => Ok(asked),
    }
}

fn scope(ctx: &Ctx, own_user: Option<i64>) -> Result<Scope> {
    let window = input::query_param(ctx, "window")?;
    let window_secs = parse_window(window.as_deref().unwrap_or(DEFAULT_WINDOW))
        .ok_or_else(|| Error::field("window", "must look like 15m, 24h or 7d (15m to 30d)"))?
        as i64;
    let user_id = visible_user(ctx, own_user)?;
    Ok(Scope {
        window_secs,
        start: floor(Utc::now() - TimeDelta::seconds(window_secs), 60),
        filter: Filter {
            user_id,
            key_id: input::query_id(ctx, "keyId")?,
            route_id: input::query_id(ctx, "routeId")?,
        },
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

fn overview(pool: &Pool, ctx: &Ctx, s: &Scope) -> Result<Value> {
    let t = analytics::window_sums(pool, &s.filter, s.bounds(), Group::Whole, true)?
        .pop()
        .unwrap_or_default();
    Ok(json!({
        "totalRequests": t.count,
        "errorCount": t.errors(),
        "errorRate": error_rate(t.count, t.errors()),
        "avgLatencyMs": round2(t.avg_ms()),
        "p50Ms": round2(t.p(0.50)),
        "p95Ms": round2(t.p(0.95)),
        "p99Ms": round2(t.p(0.99)),
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
fn timeseries(pool: &Pool, ctx: &Ctx, s: &Scope) -> Result<Value> {
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
    let by_start: HashMap<i64, Totals> = analytics::series_sums(pool, &s.filter, grain, first)?
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
            "p50Ms": round2(t.p(0.50)),
            "p95Ms": round2(t.p(0.95)),
            "p99Ms": round2(t.p(0.99)),
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

/// A route's targets as this replica forwards to them, with their state (see
/// `Upstreams::target_state`); empty for a route this replica does not have.
fn route_targets(gw: &Gateway, id: i64) -> Value {
    let Some(route) = gw.routes.all().into_iter().find(|r| r.id == id) else {
        return json!([]);
    };
    gw.upstreams
        .targets_of(&route)
        .iter()
        .map(|(t, _, state)| json!({"url": t.url, "weight": t.weight, "state": state}))
        .collect()
}

/// Busiest routes from the rollups; traffic that matched no route is listed by raw path
/// (`analytics::unrouted`). For the admin (`pools`), each route's `targets` too: their
/// URLs are internal addresses a key holder is not shown. `avg_latency` repeats
/// `avgLatencyMs` under the name the reference (Express) gateway's dashboard reads, so that
/// dashboard works unchanged.
fn top_routes(pool: &Pool, ctx: &Ctx, s: &Scope, pools: Option<&Gateway>) -> Result<Value> {
    let limit = limit(ctx, TOP_DEFAULT)?;
    let routed: Vec<Totals> =
        analytics::window_sums(pool, &s.filter, s.bounds(), Group::Route, true)?
            .into_iter()
            .filter(|t| t.group != 0)
            .collect();
    let ids: Vec<i64> = routed.iter().map(|t| t.group).collect();
    let prefixes: HashMap<i64, String> = routes::prefixes(pool, &ids)?.into_iter().collect();
    let mut out: Vec<(i64, Value)> = routed
        .iter()
        .map(|t| {
            let avg = round2(t.avg_ms());
            let path = prefixes
                .get(&t.group)
                .cloned()
                .unwrap_or_else(|| format!("(deleted route {})", t.group));
            let mut v = json!({
                "routeId": t.group,
                "path": path,
                "count": t.count,
                "errorCount": t.errors(),
                "avgLatencyMs": avg,
                "avg_latency": avg,
                "p95Ms": round2(t.p(0.95)),
            });
            if let Some(gw) = pools {
                v["targets"] = route_targets(gw, t.group);
            }
            (t.count, v)
        })
        .collect();
    if s.filter.route_id.is_none() {
        let unrouted = analytics::unrouted(pool, &s.filter, s.start, limit)?;
        out.extend(unrouted.into_iter().map(|u| {
            let avg = round2(u.avg_ms);
            let v = json!({
                "routeId": null,
                "path": u.path,
                "count": u.count,
                "errorCount": u.errors,
                "avgLatencyMs": avg,
                "avg_latency": avg,
                "p95Ms": round2(u.p95_ms),
            });
            (u.count, v)
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
fn top_keys(pool: &Pool, ctx: &Ctx, s: &Scope) -> Result<Value> {
    let limit = limit(ctx, TOP_DEFAULT)?;
    let mut keys = analytics::window_sums(pool, &s.filter, s.bounds(), Group::Key, false)?;
    keys.sort_by(|a, b| b.count.cmp(&a.count).then(a.group.cmp(&b.group)));
    keys.truncate(limit as usize);
    let ids: Vec<i64> = keys.iter().map(|t| t.group).collect();
    let names: HashMap<i64, String> = keys::names(pool, &ids)?.into_iter().collect();
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
                    "avgLatencyMs": round2(t.avg_ms()),
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

/// Newest rows first. `?before=<id>` continues after a row of an earlier page;
/// `X-Next-Cursor` carries the value for the next page. `statusCode` repeats `status` for
/// the reference gateway's dashboard, which reads that name.
/// `admin`: the rows also say which target answered and after how many attempts (internal
/// addresses, which a key holder is not shown, as in `top_routes`).
fn recent(pool: &Pool, ctx: &Ctx, s: &Scope, admin: bool) -> Result<(Value, Option<i64>)> {
    let limit = limit(ctx, RECENT_DEFAULT)?;
    let status = match input::query_param(ctx, "status")? {
        None => None,
        Some(v) => Some(
            status_range(&v)
                .ok_or_else(|| Error::field("status", "must be a status code or 1xx..5xx"))?,
        ),
    };
    let before = input::query_id(ctx, "before")?;
    let rows = analytics::recent(pool, &s.filter, s.start, status, before, limit)?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let rows = rows
        .iter()
        .map(|e| {
            let r = &e.row;
            let mut row = json!({
                "id": e.id,
                "requestId": r.request_id,
                "apiKeyId": r.api_key_id,
                "userId": r.user_id,
                "routeId": r.route_id,
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "status": r.status,
                "statusCode": r.status,
                "latencyMs": round2(r.latency_ms),
                "bytesIn": r.bytes_in,
                "bytesOut": r.bytes_out,
                "clientIp": r.client_ip,
                "userAgent": r.user_agent,
                "createdAt": ts(r.created_at.into()),
            });
            if admin {
                row["upstream"] = json!(r.upstream);
                row["attempts"] = json!(r.attempts);
            }
            row
        })
        .collect();
    Ok((Value::Array(rows), next))
}

/// `/analytics/usage`'s parameters; any other is refused, so that a misspelt filter cannot
/// silently widen a bill.
const USAGE_PARAMS: &[&str] = &[
    "from", "to", "groupBy", "bucket", "format", "userId", "keyId",
];

const DATE_FORMS: &str = "must be a UTC date YYYY-MM-DD or a month YYYY-MM";

/// Admitted and refused requests per day or month and per key, user or plan, for billing:
/// from `usage_daily`, one count per request the limit phase decided (exact, not sampled),
/// as JSON or CSV. Buckets are clipped to `from..=to`; only non-empty groups are listed.
/// The range needs no cap: the answer can hold only the rows retention has kept.
fn usage(pool: &Pool, ctx: &Ctx, own_user: Option<i64>) -> Result<Reply> {
    input::only_params(ctx, USAGE_PARAMS)?;
    let group_by = input::query_param(ctx, "groupBy")?;
    let group_by = group_by.as_deref().unwrap_or("user");
    let group = match group_by {
        "key" => GroupBy::Key,
        "user" => GroupBy::User,
        "plan" => GroupBy::Plan,
        _ => return Err(Error::field("groupBy", "must be key, user or plan")),
    };
    let bucket_by = input::query_param(ctx, "bucket")?;
    let bucket_by = bucket_by.as_deref().unwrap_or("month");
    let bucket = match bucket_by {
        "day" => Bucket::Day,
        "month" => Bucket::Month,
        _ => return Err(Error::field("bucket", "must be day or month")),
    };
    let csv = match input::query_param(ctx, "format")?.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(Error::field("format", "must be json or csv")),
    };
    let to = match input::query_param(ctx, "to")? {
        None => Utc::now().date_naive(),
        Some(v) => parse_date(&v, true).ok_or_else(|| Error::field("to", DATE_FORMS))?,
    };
    let from = match input::query_param(ctx, "from")? {
        None => to.with_day(1).unwrap_or(to),
        Some(v) => parse_date(&v, false).ok_or_else(|| Error::field("from", DATE_FORMS))?,
    };
    if from > to {
        return Err(Error::field("from", "must not be after `to`"));
    }
    let q = usage::Query {
        group,
        bucket,
        from,
        to,
        user_id: visible_user(ctx, own_user)?,
        key_id: input::query_id(ctx, "keyId")?,
    };
    let columns: &[&str] = match group {
        GroupBy::Key => &["bucket", "keyId", "userId", "name", "admitted", "refused"],
        GroupBy::User => &["bucket", "userId", "name", "admitted", "refused"],
        GroupBy::Plan => &["bucket", "planId", "name", "admitted", "refused"],
    };
    let label = match bucket {
        Bucket::Day => "%Y-%m-%d",
        Bucket::Month => "%Y-%m",
    };
    let rows: Vec<Value> = usage::read(pool, &q)?
        .into_iter()
        .map(|u| {
            let mut m = serde_json::Map::new();
            m.insert("bucket".into(), u.bucket.format(label).to_string().into());
            // Requests on no plan are the group with planId null.
            let id = if u.id == 0 { Value::Null } else { u.id.into() };
            m.insert(columns[1].into(), id);
            if group == GroupBy::Key {
                m.insert("userId".into(), u.user_id.into());
            }
            m.insert("name".into(), u.name.into());
            m.insert("admitted".into(), u.admitted.into());
            m.insert("refused".into(), u.refused.into());
            Value::Object(m)
        })
        .collect();
    if !csv {
        return Ok(Reply::json(
            200,
            &json!({
                "from": from.to_string(),
                "to": to.to_string(),
                "groupBy": group_by,
                "bucket": bucket_by,
                "rows": rows,
            }),
        ));
    }
    let name = format!("usage-{group_by}-{bucket_by}-{from}-{to}.csv");
    Ok(csv_reply(columns, &rows, &name))
}

/// `rows` as a CSV download: a header of `columns`, then each row's values in that order.
fn csv_reply(columns: &[&str], rows: &[Value], filename: &str) -> Reply {
    let mut text = columns.join(",") + "\r\n";
    for row in rows {
        let fields: Vec<String> = columns.iter().map(|c| csv_field(&row[*c])).collect();
        text += &fields.join(",");
        text += "\r\n";
    }
    let mut reply = Reply::empty(200);
    reply.header("Content-Type", "text/csv; charset=utf-8");
    reply.header(
        "Content-Disposition",
        format!("attachment; filename=\"{filename}\""),
    );
    reply.body = Body::Bytes(text.into_bytes());
    reply
}

/// `YYYY-MM-DD`, or `YYYY-MM` as the month's first day (`last`: its last day). Strict
/// digits and widths, so `2026-1-5` or `+2026-01` are refused rather than guessed at.
fn parse_date(v: &str, last: bool) -> Option<NaiveDate> {
    let parts: Vec<&str> = v.split('-').collect();
    let widths: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    if !(widths == [4, 2] || widths == [4, 2, 2])
        || !parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let (y, m) = (parts[0].parse().ok()?, parts[1].parse().ok()?);
    match parts.get(2) {
        Some(d) => NaiveDate::from_ymd_opt(y, m, d.parse().ok()?),
        None if last => NaiveDate::from_ymd_opt(y, m, 1)?
            .checked_add_months(Months::new(1))?
            .pred_opt(),
        None => NaiveDate::from_ymd_opt(y, m, 1),
    }
}

/// One CSV field (RFC 4180): quoted, its quotes doubled, when it holds a comma, a quote or
/// a line break (names are free text); null is the empty field. A text field that a
/// spreadsheet would run as a formula (starting `=`, `+`, `-`, `@`, tab or CR) gets a
/// leading `'`, as OWASP advises for CSV meant for spreadsheets; numbers are left alone.
fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{s}"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
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

    #[test]
    fn usage_dates_are_strict_days_or_months() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d);
        assert_eq!(parse_date("2026-11-29", false), d(2026, 11, 29));
        assert_eq!(parse_date("2026-11-29", true), d(2026, 11, 29));
        assert_eq!(parse_date("2026-11", false), d(2026, 11, 1));
        assert_eq!(parse_date("2026-11", true), d(2026, 11, 30));
        assert_eq!(parse_date("2028-02", true), d(2028, 2, 29));
        assert_eq!(parse_date("2026-12", true), d(2026, 12, 31));
        for bad in [
            "",
            "2026",
            "2026-1-05",
            "2026-13",
            "2026-02-30",
            "+2026-01",
            "2026-01-01T00:00:00Z",
            "2026-01-+1",
            "26-01-01",
        ] {
            assert_eq!(parse_date(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field(&json!("plain")), "plain");
        assert_eq!(csv_field(&json!(42)), "42");
        assert_eq!(csv_field(&Value::Null), "");
        assert_eq!(csv_field(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field(&json!("two\nlines")), "\"two\nlines\"");
        assert_eq!(csv_field(&json!("=HYPERLINK(1)")), "'=HYPERLINK(1)");
        assert_eq!(csv_field(&json!("-2+3,x")), "\"'-2+3,x\"");
        assert_eq!(csv_field(&json!(-5)), "-5");
    }

    /// Parameters through the fake request: each bad one is a 400 naming it, answered
    /// before any query (the fixture's database is never reached).
    mod params {
        use crate::http::Request;
        use crate::operator::fixture::{refusal, Fixture};

        #[test]
        fn bad_parameters_are_refused_naming_them() {
            let f = Fixture::new();
            for (target, field) in [
                ("/analytics/overview?window=99y", "window"),
                ("/analytics/overview?window=14m", "window"),
                ("/analytics/overview?window=%FF", "window"),
                ("/analytics/overview?userId=abc", "userId"),
                ("/analytics/top-keys?keyId=0", "keyId"),
                ("/analytics/top-routes?routeId=-3", "routeId"),
                ("/analytics/timeseries?bucket=week", "bucket"),
                ("/analytics/timeseries?window=30d&bucket=minute", "bucket"),
                ("/analytics/top-routes?limit=0", "limit"),
                ("/analytics/top-keys?limit=ten", "limit"),
                ("/analytics/recent?status=6xx", "status"),
                ("/analytics/recent?status=4XX", "status"),
                ("/analytics/recent?before=x", "before"),
                ("/analytics/usage?groupBy=route", "groupBy"),
                ("/analytics/usage?bucket=week", "bucket"),
                ("/analytics/usage?format=xml", "format"),
                ("/analytics/usage?from=2026-1-1", "from"),
                ("/analytics/usage?to=yesterday", "to"),
                ("/analytics/usage?from=2026-03&to=2026-02", "from"),
                ("/analytics/usage?keyId=0", "keyId"),
            ] {
                let r = f.admin("GET", target, "");
                assert_eq!(refusal(&r), (400, field.to_string()), "{target}");
            }
        }

        #[test]
        fn usage_refuses_parameters_it_does_not_take_naming_them() {
            let f = Fixture::new();
            for (target, name) in [
                ("/analytics/usage?window=24h", "window"),
                ("/analytics/usage?from=2026-01&groupby=key", "groupby"),
                ("/analytics/usage?route%49d=3", "routeId"),
            ] {
                let r = f.admin("GET", target, "");
                assert_eq!(r.status, 400, "{target}");
                let body = r.json_body();
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(&format!("\"{name}\"")), "{message}");
            }
        }

        #[test]
        fn only_reads_are_allowed_and_a_caller_must_say_who_it_is() {
            let f = Fixture::new();
            assert_eq!(f.admin("POST", "/analytics/overview", "{}").status, 405);
            let r = f.send(Request::fake("GET", "/analytics/overview", &[], b""));
            assert_eq!(r.status, 401);
            assert_eq!(r.json_body()["error"]["code"], "missing_api_key");
            let malformed = [("x-api-key", "gw_short")];
            let r = f.send(Request::fake("GET", "/analytics/overview", &malformed, b""));
            assert_eq!(r.json_body()["error"]["code"], "invalid_api_key");
        }
    }
}
