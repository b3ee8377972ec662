//! The analytics reads: sums over `request_rollups` for a window or a series of buckets,
//! and the few questions only raw `request_logs` can answer (unrouted paths, recent rows).
//! Parameters are parsed and answers shaped in `operator/analytics.rs`.

use super::logs::LogRow;
use super::rollups::{compacted_to, hist_columns, percentile};
use super::Pool;
use crate::error::Result;
use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use std::sync::OnceLock;

/// Whose traffic: any of user, key and route, or everyone's.
pub struct Filter {
    pub user_id: Option<i64>,
    pub key_id: Option<i64>,
    pub route_id: Option<i64>,
}

/// What the sums are grouped by.
#[derive(Clone, Copy)]
pub enum Group {
    /// One group for the whole window.
    Whole,
    Route,
    Key,
    /// One group per bucket of this many seconds (a series), keyed by its start in Unix
    /// seconds; finer rows count in the bucket that holds them.
    Bucket(i32),
}

impl Group {
    /// The SQL grouped on, and whether it is a user, key or route column (otherwise an
    /// unfiltered question is answered from the whole-traffic rows).
    fn sql(self) -> (String, bool) {
        match self {
            Group::Whole => ("0::int8".into(), false),
            Group::Route => ("route_id".into(), true),
            Group::Key => ("api_key_id".into(), true),
            Group::Bucket(g) => (
                format!("(floor(extract(epoch FROM bucket_start) / {g}) * {g})::int8"),
                false,
            ),
        }
    }
}

/// Sums of rollup rows for one group.
#[derive(Default)]
pub struct Totals {
    /// The group's value (0 when the rollup had no id), and the largest user id in it.
    pub group: i64,
    pub user: i64,
    pub count: i64,
    pub errors_4xx: i64,
    pub errors_5xx: i64,
    pub rate_limited: i64,
    pub latency_sum: f64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub hist: Vec<i64>,
}

impl Totals {
    pub fn errors(&self) -> i64 {
        self.errors_4xx + self.errors_5xx
    }

    pub fn avg_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.latency_sum / self.count as f64
        }
    }

    /// The `q` quantile of latency from the histogram (sums read with `hist`).
    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.hist, q)
    }
}

/// Filters on the rollups: `$1..$3` user, key, route (rollups store a missing id as 0, and a
/// filter is a positive id, so NULL ids never match a filter, as with raw rows); `$4` true
/// reads the whole-traffic rows (`rollups::ALL`) instead of the per-dimension ones.
const FILTER: &str = "($1::int8 IS NULL OR user_id = $1)
    AND ($2::int8 IS NULL OR api_key_id = $2)
    AND ($3::int8 IS NULL OR route_id = $3)
    AND (user_id = -1) = $4::bool";

/// The window as whole days, whole hours and the ragged minutes at its start: `$6` start,
/// `$7` first whole hour, `$8` first whole day. Hour and day rows hold their minutes up to
/// where compaction stands (`$5`, Unix seconds); the minutes after it come from minute rows.
const WINDOW: &str = "((grain_secs = 60 AND ((bucket_start >= $6 AND bucket_start < $7)
                          OR bucket_start >= greatest($7, to_timestamp($5::int8))))
    OR (grain_secs = 3600 AND bucket_start >= $7 AND bucket_start < $8)
    OR (grain_secs = 86400 AND bucket_start >= $8))";

/// A series of `$7`-second buckets from `$6`: that grain's rows, and the minutes not folded
/// into them yet (from `$5`, summed into their bucket by `Group::Bucket`).
const SERIES: &str = "((grain_secs = $7 AND bucket_start >= $6)
    OR ($7 > 60 AND grain_secs = 60 AND bucket_start >= greatest($6, to_timestamp($5::int8))))";

/// Sums the rollup rows matching the filters and `rows_sql` (which uses `$5`, where
/// compaction stands, see `rollups::compacted_to`, and `$6..` bound from `extra`) per value of
/// `group_sql`; with `hist`, also the latency histogram (76 more sums
/// per row read, so skipped where unused). `by_dimension` says `group_sql` is a user, key or
/// route column; otherwise an unfiltered question is answered from the whole-traffic rows.
fn sums(
    pool: &Pool,
    f: &Filter,
    group: Group,
    rows_sql: &str,
    extra: &[&(dyn ToSql + Sync)],
    hist: bool,
) -> Result<Vec<Totals>> {
    let (group_sql, by_dimension) = group.sql();
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
    let whole = !by_dimension && f.user_id.is_none() && f.key_id.is_none() && f.route_id.is_none();
    // One snapshot for where compaction stands and the rows, so a fold committing in between
    // cannot make the answer count minutes twice or not at all. Read first and passed as a
    // parameter, so the planner sees its value (`to_timestamp` is immutable and folded): as
    // a subquery inside the statement it was estimated blind and far more rows were read
    // (docs/performance.md, "Hour and day rollups").
    let mut conn = pool.get()?;
    let mut tx = super::snapshot(&mut conn)?;
    let folded = compacted_to(&mut tx)?;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&f.user_id, &f.key_id, &f.route_id, &whole];
    params.push(&folded);
    params.extend_from_slice(extra);
    let rows = tx.query(sql.as_str(), &params)?;
    tx.commit()?;
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

/// Sums over a window given as `[start, first whole hour, first whole day]` (see
/// `WINDOW`), per `group`.
pub fn window_sums(
    pool: &Pool,
    f: &Filter,
    bounds: [DateTime<Utc>; 3],
    group: Group,
    hist: bool,
) -> Result<Vec<Totals>> {
    let [start, hour, day] = bounds;
    sums(pool, f, group, WINDOW, &[&start, &hour, &day], hist)
}

/// Sums per bucket of `grain` seconds from `first` on, with the histogram.
pub fn series_sums(
    pool: &Pool,
    f: &Filter,
    grain: i32,
    first: DateTime<Utc>,
) -> Result<Vec<Totals>> {
    sums(
        pool,
        f,
        Group::Bucket(grain),
        SERIES,
        &[&first, &grain],
        true,
    )
}

/// Traffic that matched no route, by raw path, from the raw rows (a partial index keeps
/// that proportional to unrouted traffic; it covers only the raw-log retention).
pub struct UnroutedPath {
    pub path: String,
    pub count: i64,
    pub errors: i64,
    pub avg_ms: f64,
    pub p95_ms: f64,
}

/// The busiest unrouted paths since `start` (the route filter does not apply).
pub fn unrouted(
    pool: &Pool,
    f: &Filter,
    start: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<UnroutedPath>> {
    let rows = pool.get()?.query(
        "SELECT path, count(*), count(*) FILTER (WHERE status >= 400), avg(latency_ms),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
           FROM request_logs
          WHERE route_id IS NULL AND created_at >= $3
            AND ($1::int8 IS NULL OR user_id = $1) AND ($2::int8 IS NULL OR api_key_id = $2)
          GROUP BY path ORDER BY count(*) DESC, path LIMIT $4",
        &[&f.user_id, &f.key_id, &start, &limit],
    )?;
    Ok(rows
        .iter()
        .map(|r| UnroutedPath {
            path: r.get(0),
            count: r.get(1),
            errors: r.get(2),
            avg_ms: r.get(3),
            p95_ms: r.get(4),
        })
        .collect())
}

/// One raw log row as `recent` shows it: its id (the page cursor) and the row.
pub struct LogEntry {
    pub id: i64,
    pub row: LogRow,
}

/// Newest rows first since `start`, `status` an inclusive range; `before` continues after
/// a row of an earlier page (keyset on arrival time, then id).
pub fn recent(
    pool: &Pool,
    f: &Filter,
    start: DateTime<Utc>,
    status: Option<(i32, i32)>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<LogEntry>> {
    let (lo, hi) = (status.map(|s| s.0), status.map(|s| s.1));
    let rows = pool.get()?.query(
        "SELECT id, request_id, api_key_id, user_id, route_id, method, path, query, status,
                latency_ms, bytes_in, bytes_out, client_ip, user_agent, created_at, upstream,
                attempts
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
            &f.user_id,
            &f.key_id,
            &f.route_id,
            &start,
            &lo,
            &hi,
            &before,
            &limit,
        ],
    )?;
    Ok(rows
        .iter()
        .map(|r| LogEntry {
            id: r.get(0),
            row: LogRow {
                request_id: r.get(1),
                api_key_id: r.get(2),
                user_id: r.get(3),
                route_id: r.get(4),
                plan_id: None,
                admitted: None,
                method: r.get(5),
                path: r.get(6),
                query: r.get(7),
                status: r.get(8),
                latency_ms: r.get(9),
                bytes_in: r.get(10),
                bytes_out: r.get(11),
                client_ip: r.get(12),
                user_agent: r.get(13),
                created_at: r.get(14),
                upstream: r.get(15),
                attempts: r.get(16),
            },
        })
        .collect())
}
