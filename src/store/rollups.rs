//! Per-minute, per-hour and per-day traffic aggregates (`request_rollups`, sql/003): the
//! latency histogram's bucket bounds, folding a batch of log rows into aggregates in memory,
//! the one upsert the logger runs in the transaction that copies the raw rows, and the
//! compaction that folds ended minutes into their hours and days (sql/015). The
//! analytics endpoints read these instead of scanning `request_logs`.

use super::logs::LogRow;
use super::Pool;
use postgres::types::ToSql;
use postgres::{GenericClient, Transaction};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

/// Buckets in each latency histogram (see `latency_bucket`).
pub const LATENCY_BUCKETS: usize = 76;
/// Upper bound of bucket 0, in ms: below this latencies are indistinguishable from zero.
const LATENCY_MIN_MS: f64 = 0.1;
/// Each bucket is 20% wider than the one before: a percentile read from the buckets is off
/// by at most one bucket, i.e. at most ~20% of the value, at any scale. With 76 buckets the
/// last bounded one ends at ~72 s, beyond the default 30 s upstream timeout.
const LATENCY_RATIO: f64 = 1.2;

/// Aggregation grains in seconds: every row is counted once in each (in the hour and day
/// ones once compaction has folded its minute), so that a window is answered from whole
/// days, whole hours and the minutes at its ragged start.
pub const GRAINS: [i32; 3] = [60, 3_600, 86_400];

/// Bucket of a latency: 0 holds [0, 0.1 ms); bucket i in 1..75 holds
/// [0.1·1.2^(i-1), 0.1·1.2^i) ms; the last bucket holds everything slower.
pub fn latency_bucket(ms: f64) -> usize {
    if ms.is_nan() || ms < LATENCY_MIN_MS {
        return 0;
    }
    let i = ((ms / LATENCY_MIN_MS).ln() / LATENCY_RATIO.ln()).floor() as usize + 1;
    i.min(LATENCY_BUCKETS - 1)
}

/// `[lower, upper)` of a bucket in ms; the open-ended last bucket reports `upper == lower`.
pub fn bucket_bounds(i: usize) -> (f64, f64) {
    if i == 0 {
        return (0.0, LATENCY_MIN_MS);
    }
    let lower = LATENCY_MIN_MS * LATENCY_RATIO.powi(i as i32 - 1);
    if i >= LATENCY_BUCKETS - 1 {
        return (lower, lower);
    }
    (lower, lower * LATENCY_RATIO)
}

/// The `q`-quantile (0..=1) of a histogram, interpolated linearly inside the bucket that
/// holds it (latencies are assumed spread evenly within a bucket). 0 for an empty one.
pub fn percentile(hist: &[i64], q: f64) -> f64 {
    let total: i64 = hist.iter().sum();
    if total <= 0 {
        return 0.0;
    }
    // Same rank convention as Postgres' percentile_cont: position q·(n-1) among n values,
    // here counted as "values at or below", hence the + 1 (nothing falls below the first).
    let rank = q.clamp(0.0, 1.0) * (total - 1) as f64 + 1.0;
    let mut below = 0i64;
    for (i, &n) in hist.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let (lo, hi) = bucket_bounds(i);
            // The k-th of n values in a bucket sits at (k - 0.5) / n of its width.
            let frac = ((rank - below as f64 - 0.5) / n as f64).clamp(0.0, 1.0);
            return lo + frac * (hi - lo);
        }
        below += n;
    }
    bucket_bounds(LATENCY_BUCKETS - 1).0
}

/// The ids of a "whole traffic" row: per grain and bucket, one row sums every dimension, so
/// unfiltered overviews and timeseries read one row per bucket instead of one per
/// user × key × route × status class combination.
pub const ALL: i64 = -1;

/// One rollup row's identity; ids are 0 where the log row has none (see sql/003).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    grain: i32,
    start: i64,
    user: i64,
    key: i64,
    route: i64,
    class: i16,
}

struct Agg {
    count: i64,
    errors_4xx: i64,
    errors_5xx: i64,
    rate_limited: i64,
    latency_sum: f64,
    bytes_in: i64,
    bytes_out: i64,
    hist: [i64; LATENCY_BUCKETS],
}

impl Agg {
    fn new() -> Agg {
        Agg {
            count: 0,
            errors_4xx: 0,
            errors_5xx: 0,
            rate_limited: 0,
            latency_sum: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            hist: [0; LATENCY_BUCKETS],
        }
    }

    fn add(&mut self, r: &LogRow) {
        self.count += 1;
        self.errors_4xx += i64::from((400..500).contains(&r.status));
        self.errors_5xx += i64::from(r.status >= 500);
        self.rate_limited += i64::from(r.status == 429);
        self.latency_sum += r.latency_ms;
        self.bytes_in += r.bytes_in;
        self.bytes_out += r.bytes_out;
        self.hist[latency_bucket(r.latency_ms)] += 1;
    }
}

/// Folds rows into one aggregate per grain and dimensions. A row is counted in the minute
/// grain always, and in its hour and day only when compaction has already folded its minute
/// (before `compacted_to`, Unix seconds), as for a row held back by an outage: otherwise
/// compaction adds the minute to them. A `BTreeMap` so the upsert touches rows in one fixed
/// order: two replicas' loggers then never deadlock.
fn aggregate(rows: &[&LogRow], compacted_to: i64) -> BTreeMap<Key, Agg> {
    let mut out = BTreeMap::new();
    for r in rows {
        let secs = r
            .created_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // `compacted_to` is minute-aligned: a row at or after it is in an unfolded minute.
        let grains = if secs >= compacted_to {
            &GRAINS[..1]
        } else {
            &GRAINS[..]
        };
        for &grain in grains {
            let start = secs - secs.rem_euclid(i64::from(grain));
            let key = Key {
                grain,
                start,
                user: r.user_id.unwrap_or(0),
                key: r.api_key_id.unwrap_or(0),
                route: r.route_id.unwrap_or(0),
                class: (r.status / 100).clamp(0, 9) as i16,
            };
            out.entry(key).or_insert_with(Agg::new).add(r);
            let all = Key {
                grain,
                start,
                user: ALL,
                key: ALL,
                route: ALL,
                class: 0,
            };
            out.entry(all).or_insert_with(Agg::new).add(r);
        }
    }
    out
}

/// The histogram columns `h0, h1, ...` of `request_rollups`, joined with `sep`, each
/// written as `fmt` with `{h}` standing for the column name.
pub fn hist_columns(fmt: &str, sep: &str) -> String {
    (0..LATENCY_BUCKETS)
        .map(|i| fmt.replace("{h}", &format!("h{i}")))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Inserts the rows `select` yields (every column of a rollup row, in table order), adding
/// each to the row already there for its grain, bucket and dimensions.
fn adding_to_rollups(select: &str) -> String {
    format!(
        "INSERT INTO request_rollups AS r (grain_secs, bucket_start, user_id, api_key_id,
            route_id, status_class, count, errors_4xx, errors_5xx, rate_limited, latency_sum,
            bytes_in, bytes_out, {cols})
        {select}
        ON CONFLICT (grain_secs, bucket_start, user_id, api_key_id, route_id, status_class)
        DO UPDATE SET count = r.count + excluded.count,
            errors_4xx = r.errors_4xx + excluded.errors_4xx,
            errors_5xx = r.errors_5xx + excluded.errors_5xx,
            rate_limited = r.rate_limited + excluded.rate_limited,
            latency_sum = r.latency_sum + excluded.latency_sum,
            bytes_in = r.bytes_in + excluded.bytes_in,
            bytes_out = r.bytes_out + excluded.bytes_out,
            {adds}",
        cols = hist_columns("{h}", ", "),
        adds = hist_columns("{h} = r.{h} + excluded.{h}", ", "),
    )
}

/// One multi-row upsert: `$1..$13` the dimensions and sums, `$14..` one array per histogram
/// bucket, all zipped by `unnest`.
fn upsert_sql() -> String {
    let hist_params = (0..LATENCY_BUCKETS)
        .map(|i| format!("${}::int8[]", i + 14))
        .collect::<Vec<_>>()
        .join(", ");
    adding_to_rollups(&format!(
        "SELECT g, to_timestamp(s), u, k, rt, c, n, e4, e5, rl, ls, bi, bo, {cols}
          FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int2[],
                      $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::float8[],
                      $12::int8[], $13::int8[], {hist_params})
            AS v(g, s, u, k, rt, c, n, e4, e5, rl, ls, bi, bo, {cols})",
        cols = hist_columns("{h}", ", "),
    ))
}

/// The transaction-scoped advisory lock that orders log batches (shared) and compaction
/// (exclusive): a batch reads where compaction stands and writes its rows before a
/// compaction can move it, so no minute is folded under a batch that did not add it to its
/// hour and day. An advisory lock rather than a row lock on `rollup_compaction`, because
/// its queue is first come, first served: overlapping batches of several replicas could
/// keep a row's share lock held and the compaction waiting indefinitely. tests/analytics.rs
/// takes it by this number too.
const COMPACTION_LOCK: i64 = 7_316_002_873;

/// Adds the rows to the rollups in one statement, inside the caller's transaction (the one
/// that copies the raw rows), so rollups and raw rows commit or fail together.
pub fn upsert(tx: &mut Transaction, rows: &[&LogRow]) -> Result<(), postgres::Error> {
    static SQL: OnceLock<String> = OnceLock::new();
    // Two statements: the read's snapshot must be taken after the lock is granted, or it
    // could miss the fold that held the lock.
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&COMPACTION_LOCK],
    )?;
    let aggs = aggregate(rows, compacted_to(tx)?);
    if aggs.is_empty() {
        return Ok(());
    }
    let n = aggs.len();
    let mut g = Vec::with_capacity(n);
    let mut s = Vec::with_capacity(n);
    let mut u = Vec::with_capacity(n);
    let mut k = Vec::with_capacity(n);
    let mut rt = Vec::with_capacity(n);
    let mut c = Vec::with_capacity(n);
    let mut cnt = Vec::with_capacity(n);
    let mut e4 = Vec::with_capacity(n);
    let mut e5 = Vec::with_capacity(n);
    let mut rl = Vec::with_capacity(n);
    let mut ls = Vec::with_capacity(n);
    let mut bi = Vec::with_capacity(n);
    let mut bo = Vec::with_capacity(n);
    let mut hist: Vec<Vec<i64>> = (0..LATENCY_BUCKETS)
        .map(|_| Vec::with_capacity(n))
        .collect();
    for (key, a) in &aggs {
        g.push(key.grain);
        s.push(key.start);
        u.push(key.user);
        k.push(key.key);
        rt.push(key.route);
        c.push(key.class);
        cnt.push(a.count);
        e4.push(a.errors_4xx);
        e5.push(a.errors_5xx);
        rl.push(a.rate_limited);
        ls.push(a.latency_sum);
        bi.push(a.bytes_in);
        bo.push(a.bytes_out);
        for (column, count) in hist.iter_mut().zip(a.hist) {
            column.push(count);
        }
    }
    let mut params: Vec<&(dyn ToSql + Sync)> =
        vec![&g, &s, &u, &k, &rt, &c, &cnt, &e4, &e5, &rl, &ls, &bi, &bo];
    params.extend(hist.iter().map(|h| h as &(dyn ToSql + Sync)));
    tx.execute(SQL.get_or_init(upsert_sql).as_str(), &params)?;
    Ok(())
}

/// Sums the rows of grain `$2` from `$3` to `$4` (Unix seconds) per dimensions into the
/// bucket of grain `$1` starting at `$5`: added to what the bucket holds, or, after
/// `CLEAR_SQL`, rebuilding it.
fn fold_sql() -> String {
    adding_to_rollups(&format!(
        "SELECT $1, to_timestamp($5::int8), user_id, api_key_id, route_id, status_class,
               sum(count), sum(errors_4xx), sum(errors_5xx), sum(rate_limited),
               sum(latency_sum), sum(bytes_in), sum(bytes_out), {sums}
          FROM request_rollups
         WHERE grain_secs = $2 AND bucket_start >= to_timestamp($3::int8)
           AND bucket_start < to_timestamp($4::int8)
         GROUP BY user_id, api_key_id, route_id, status_class",
        sums = hist_columns("sum({h})", ", "),
    ))
}

const CLEAR_SQL: &str =
    "DELETE FROM request_rollups WHERE grain_secs = $1 AND bucket_start = to_timestamp($2::int8)";

/// Folds the minutes that ended at least `lag_secs` ago (by the database's clock) and are
/// not folded yet into their hour and day rows, one transaction per hour at most; an hour
/// that has ended is then rebuilt from its minutes, and a day from its hours. Rebuilt, not
/// only added to: a replica of a version before compaction writes hour and day rows
/// itself, and its minutes too. Returns the minutes folded. Replicas may all run it:
/// `COMPACTION_LOCK` lets one fold a stretch, and the others then find it done.
pub fn compact(pool: &Pool, lag_secs: i64) -> crate::error::Result<i64> {
    static FOLD: OnceLock<String> = OnceLock::new();
    let fold = FOLD.get_or_init(fold_sql).as_str();
    let [minute, hour, day] = GRAINS.map(i64::from);
    let mut conn = pool.get()?;
    let mut folded = 0;
    loop {
        // Looked at without the lock first: another replica has usually folded this
        // stretch already, and waiting for the lock would hold every logger's next batch
        // behind it for nothing.
        let (from, to) = stretch(&mut **conn, lag_secs)?;
        if to <= from {
            return Ok(folded);
        }
        let mut tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMPACTION_LOCK])?;
        let (from, to) = stretch(&mut tx, lag_secs)?;
        if to <= from {
            tx.commit()?;
            return Ok(folded);
        }
        let hour_start = from - from.rem_euclid(hour);
        let day_start = from - from.rem_euclid(day);
        // Into the bucket `at` of `grain`, the rows of `finer` from `lo` to `to`; `rebuild`
        // empties the bucket first.
        let mut fold_into = |grain: i32, finer: i32, lo: i64, at: i64, rebuild: bool| {
            if rebuild {
                tx.execute(CLEAR_SQL, &[&grain, &at])?;
            }
            tx.execute(fold, &[&grain, &finer, &lo, &to, &at])
        };
        if to % hour == 0 {
            fold_into(GRAINS[1], GRAINS[0], hour_start, hour_start, true)?;
        } else {
            fold_into(GRAINS[1], GRAINS[0], from, hour_start, false)?;
        }
        if to % day == 0 {
            fold_into(GRAINS[2], GRAINS[1], day_start, day_start, true)?;
        } else {
            fold_into(GRAINS[2], GRAINS[0], from, day_start, false)?;
        }
        tx.execute(
            "UPDATE rollup_compaction SET compacted_to = to_timestamp($1::int8)",
            &[&to],
        )?;
        tx.commit()?;
        folded += (to - from) / minute;
    }
}

/// Where compaction stands and how far it may fold now (Unix seconds): to the last whole
/// minute that ended `lag_secs` ago by the database's clock, within the hour it stands in.
fn stretch(db: &mut impl GenericClient, lag_secs: i64) -> Result<(i64, i64), postgres::Error> {
    let r = db.query_one(
        "SELECT extract(epoch FROM compacted_to)::int8,
                floor(extract(epoch FROM now()))::int8 - $1
           FROM rollup_compaction",
        &[&lag_secs],
    )?;
    let (from, now): (i64, i64) = (r.get(0), r.get(1));
    let [minute, hour, _] = GRAINS.map(i64::from);
    let to = (now - now.rem_euclid(minute)).min(from - from.rem_euclid(hour) + hour);
    Ok((from, to))
}

/// One grain at a time, so the primary key (grain, bucket start, ...) finds the rows. Minute
/// rows are kept until their hour is rebuilt, hour rows until their day is: `$4` is that
/// bound, Unix seconds (NULL for days).
const DELETE_SQL: &str = "DELETE FROM request_rollups WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM request_rollups
     WHERE grain_secs = $3 AND bucket_start < now() - make_interval(secs => $1)
       AND ($4::int8 IS NULL OR bucket_start < to_timestamp($4::int8))
     LIMIT $2))";

/// Where compaction stands (`compacted_to`, Unix seconds): every hour and day row holds
/// its minutes before it, and only minute rows hold those after.
pub fn compacted_to(db: &mut impl GenericClient) -> Result<i64, postgres::Error> {
    db.query_one(
        "SELECT extract(epoch FROM compacted_to)::int8 FROM rollup_compaction",
        &[],
    )
    .map(|r| r.get(0))
}

/// Deletes up to `batch` rollups of `grain` older than `older_than_secs`; returns how many.
/// Rows a later compaction still rebuilds from are kept, however old: minutes of the hour
/// `compacted_to` (see [`compacted_to`], read once a pass by the caller) is in, hours of
/// its day.
pub fn delete_expired(
    pool: &Pool,
    grain: i32,
    older_than_secs: f64,
    batch: i64,
    compacted_to: i64,
) -> crate::error::Result<u64> {
    let keep_from = |coarser: i32| Some(compacted_to - compacted_to.rem_euclid(coarser.into()));
    let bound = match grain {
        g if g == GRAINS[0] => keep_from(GRAINS[1]),
        g if g == GRAINS[1] => keep_from(GRAINS[2]),
        _ => None,
    };
    Ok(pool
        .get()?
        .execute(DELETE_SQL, &[&older_than_secs, &batch, &grain, &bound])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_inside_its_buckets_bounds() {
        for ms in [
            0.0, 0.05, 0.1, 0.11, 1.0, 3.7, 42.0, 999.9, 30_000.0, 71_000.0,
        ] {
            let (lo, hi) = bucket_bounds(latency_bucket(ms));
            assert!(lo <= ms && ms < hi.max(lo + 1e-9), "{ms} in [{lo}, {hi})");
        }
        assert_eq!(latency_bucket(1e9), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(f64::NAN), 0);
        assert_eq!(latency_bucket(-3.0), 0);
    }

    #[test]
    fn buckets_are_at_most_twenty_percent_wide() {
        for i in 1..LATENCY_BUCKETS - 1 {
            let (lo, hi) = bucket_bounds(i);
            assert!((hi - lo) / lo <= 0.2 + 1e-9, "bucket {i}");
            let next = bucket_bounds(i + 1).0;
            assert!((next - hi).abs() <= hi * 1e-12, "bucket {i} meets the next");
        }
    }

    #[test]
    fn percentiles_from_buckets_stay_within_one_bucket_of_the_exact_value() {
        // 1..=1000 ms, one each: exact p50 = 500.5, p95 = 950.05, p99 = 990.01.
        let mut h = [0i64; LATENCY_BUCKETS];
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        for x in &v {
            h[latency_bucket(*x)] += 1;
        }
        v.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
            let pos = q * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let exact = v[lo] + (v[hi] - v[lo]) * (pos - lo as f64);
            let got = percentile(&h, q);
            let (blo, bhi) = bucket_bounds(latency_bucket(exact));
            assert!((got - exact).abs() <= bhi - blo, "q{q}: {got} vs {exact}");
        }
        assert_eq!(percentile(&[0; LATENCY_BUCKETS], 0.5), 0.0);
    }

    #[test]
    fn the_migration_creates_one_column_per_bucket() {
        let sql = include_str!("../../sql/003_rollups.sql");
        let range = format!("FOR i IN 0..{} LOOP", LATENCY_BUCKETS - 1);
        assert!(
            sql.contains(&range),
            "sql/003 must create h0..h{}",
            LATENCY_BUCKETS - 1
        );
        assert_eq!(
            hist_columns("x{h}", ",").matches('x').count(),
            LATENCY_BUCKETS
        );
    }
}
