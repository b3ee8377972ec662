//! `limit_counters`: the one batched statement that counts every limit and quota of a
//! batch of requests. How a batch is gathered and what its answer means is in
//! `gateway/ratelimit.rs`; the model is in docs/limits.md.

use super::Pool;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use postgres::types::Type;

/// Counts a batch in one round trip. Entry `i` is `$3[i]` requests of key `$1[i]` (user
/// `$2[i]`); each check `j` is one limit of a subject: kind `$4[j]` ('k' key, 'u' user),
/// owner `$5[j]`, name `$6[j]`, window `$7[j]` seconds (0 for the quota), limit `$8[j]`,
/// quota period `$9[j]` and anchor `$10[j]` (NULL: the calendar). `$11` shifts the clock
/// (tests only; 0 otherwise).
///
/// Exactness: every subject's row (one per key, one per user, all limits in it) is locked
/// in (kind, owner) order, so statements from this replica or another serialise on shared
/// subjects and cannot deadlock; `FOR UPDATE` hands back the row's latest version, so the
/// counts read are the counts written by whoever held the lock before. A key's requests
/// are admitted up to the smallest room left under its own checks; then the keys of one
/// user, in entry order, share the smallest room left under the user's checks. A refused
/// request adds to no count, and a subject that admits nothing is not written.
///
/// Each answer row is one check of one entry, key's checks first: entry, admitted, the
/// check, its count before the entry's requests (after earlier entries of the same user),
/// the sliding weight of the previous bucket, when the bucket or period ends and its
/// length, and the database's clock.
pub const TAKE_SQL: &str = "
WITH t AS (
    SELECT ts, date_part('epoch', ts) AS e, ts AT TIME ZONE 'UTC' AS utc
      FROM (SELECT clock_timestamp() + make_interval(secs => $11) AS ts) s
), ent AS (
    SELECT * FROM unnest($1::int8[], $2::int8[], $3::int4[]) WITH ORDINALITY AS x(key, usr, n, ord)
), chk AS (
    SELECT * FROM unnest($4::\"char\"[], $5::int8[], $6::text[], $7::int4[], $8::int8[],
                         $9::text[], $10::timestamptz[])
           WITH ORDINALITY AS x(kind, owner, name, win, lim, period, anchor, ord)
), locked AS MATERIALIZED (
    SELECT l.* FROM limit_counters l
     WHERE (l.kind, l.owner_id) IN (SELECT kind, owner FROM chk)
     ORDER BY l.kind, l.owner_id
       FOR UPDATE OF l
), pos AS (
    SELECT c.*, t.e, l.kind IS NOT NULL AS present, l.quota_start, l.quota_used,
           floor(t.e / nullif(c.win, 0))::int8 AS b,
           array_position(l.names, c.name || '/' || c.win) AS i,
           l.buckets, l.counts, l.prevs,
           CASE WHEN c.win = 0 THEN tollgate_period_start(c.period, c.anchor AT TIME ZONE 'UTC',
                                                          t.utc) END AS ps
      FROM chk c CROSS JOIN t
      LEFT JOIN locked l ON l.kind = c.kind AND l.owner_id = c.owner
), st AS (
    SELECT p.ord, p.kind, p.owner, p.name, p.win, p.lim, p.e, p.b, p.present,
           CASE WHEN p.win > 0 AND p.buckets[p.i] = p.b THEN p.counts[p.i]
                WHEN p.win = 0 AND p.quota_start = date_part('epoch', p.ps)::int8 THEN p.quota_used
                ELSE 0 END AS cur,
           CASE WHEN p.win > 0 AND p.buckets[p.i] = p.b THEN p.prevs[p.i]
                WHEN p.win > 0 AND p.buckets[p.i] = p.b - 1 THEN p.counts[p.i]
                ELSE 0 END AS prev,
           date_part('epoch', p.ps)::int8 AS qs,
           CASE WHEN p.win > 0 THEN p.b::float8 * p.win
                ELSE date_part('epoch', p.ps) END AS starts,
           CASE WHEN p.win > 0 THEN (p.b + 1)::float8 * p.win
                ELSE date_part('epoch', tollgate_period_end(p.period, p.anchor AT TIME ZONE 'UTC',
                                                            p.ps)) END AS ends
      FROM pos p
), cap AS (
    SELECT s.*,
           CASE WHEN s.win > 0 THEN s.prev * (1 - (s.e - s.b * s.win) / s.win) ELSE 0 END AS weighted
      FROM st s
), room AS (
    SELECT c.*,
           CASE WHEN NOT c.present THEN 0
                ELSE floor(c.lim - c.weighted)::int8 - c.cur END AS room
      FROM cap c
), least_room AS (
    SELECT kind, owner, min(room) AS room FROM room GROUP BY kind, owner
), keyed AS (
    SELECT e.ord, e.key, e.usr, greatest(0, least(e.n::int8, kr.room)) AS k, ur.room AS ucap
      FROM ent e
      LEFT JOIN least_room kr ON kr.kind = 'k' AND kr.owner = e.key
      LEFT JOIN least_room ur ON ur.kind = 'u' AND ur.owner = e.usr
), alloc AS (
    SELECT k.*,
           coalesce(sum(k.k) OVER (PARTITION BY k.usr ORDER BY k.ord
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                    0)::int8 AS before
      FROM keyed k
), adm AS (
    SELECT a.ord, a.key, a.usr,
           CASE WHEN a.ucap IS NULL THEN a.k
                ELSE greatest(0, least(a.k, a.ucap - a.before)) END AS admitted,
           CASE WHEN a.ucap IS NULL THEN 0
                ELSE least(greatest(a.ucap, 0), a.before) END AS ubefore
      FROM alloc a
), delta AS (
    SELECT 'k'::\"char\" AS kind, key AS owner, admitted AS d FROM adm
    UNION ALL
    SELECT 'u'::\"char\", usr, sum(admitted)::int8 FROM adm GROUP BY usr
), fresh AS (
    -- Aggregates keep their sorted input's order (cheaper than ORDER BY in each of them).
    SELECT kind, owner,
           coalesce(array_agg(name || '/' || win) FILTER (WHERE win > 0), '{}') AS names,
           coalesce(array_agg(b) FILTER (WHERE win > 0), '{}') AS buckets,
           coalesce(array_agg(cur + d) FILTER (WHERE win > 0), '{}') AS counts,
           coalesce(array_agg(prev) FILTER (WHERE win > 0), '{}') AS prevs,
           max(qs) FILTER (WHERE win = 0) AS qs,
           max(cur + d) FILTER (WHERE win = 0) AS qu
      FROM (SELECT r.*, d.d FROM room r JOIN delta d ON d.kind = r.kind AND d.owner = r.owner
             WHERE d.d > 0 ORDER BY r.kind, r.owner, r.ord) s
     GROUP BY kind, owner
), upd AS (
    UPDATE limit_counters l
       SET names = f.names, buckets = f.buckets, counts = f.counts, prevs = f.prevs,
           quota_start = coalesce(f.qs, l.quota_start),
           quota_used = coalesce(f.qu, l.quota_used)
      FROM fresh f
     WHERE l.kind = f.kind AND l.owner_id = f.owner
)
SELECT a.ord::int4, a.admitted, false, r.name, r.win, r.lim, r.cur, r.weighted, r.ends,
       r.ends - r.starts, r.e, r.ord
  FROM adm a JOIN room r ON r.kind = 'k' AND r.owner = a.key
UNION ALL
SELECT a.ord::int4, a.admitted, true, r.name, r.win, r.lim, r.cur + a.ubefore, r.weighted, r.ends,
       r.ends - r.starts, r.e, r.ord
  FROM adm a JOIN room r ON r.kind = 'u' AND r.owner = a.usr
 ORDER BY 1, 12";

const TAKE_TYPES: &[Type] = &[
    Type::INT8_ARRAY,
    Type::INT8_ARRAY,
    Type::INT4_ARRAY,
    Type::CHAR_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::FLOAT8,
];

/// One batch for [`TAKE_SQL`], as parallel arrays.
#[derive(Default, Debug)]
pub struct Batch {
    pub keys: Vec<i64>,
    pub users: Vec<i64>,
    pub counts: Vec<i32>,
    pub checks: Checks,
}

/// The checks of a batch, as parallel arrays (see [`TAKE_SQL`]).
#[derive(Default, Debug)]
pub struct Checks {
    pub subjects: Vec<i8>,
    pub owners: Vec<i64>,
    pub names: Vec<String>,
    pub windows: Vec<i32>,
    pub limits: Vec<i64>,
    pub periods: Vec<Option<&'static str>>,
    pub anchors: Vec<Option<DateTime<Utc>>>,
}

/// One check's answer for one entry of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    /// 0-based entry.
    pub entry: usize,
    /// Requests of the entry admitted.
    pub admitted: i64,
    /// A user's (owner-wide) check rather than the key's own.
    pub owner_wide: bool,
    pub name: String,
    /// Seconds; 0 for the quota.
    pub window: i32,
    pub limit: i64,
    /// The count before this entry's requests (the quota: used in the period).
    pub before: i64,
    /// The previous bucket's count weighted by the share of it still in the window.
    pub weighted: f64,
    /// Unix time at which the current bucket (the quota: period) ends.
    pub ends: f64,
    /// The length of the current bucket or period, in seconds.
    pub period_secs: f64,
    /// The database's clock, in Unix seconds.
    pub now: f64,
}

/// Runs [`TAKE_SQL`] for one batch; `shift_secs` moves the clock (tests only).
pub fn take(pool: &Pool, b: &Batch, shift_secs: f64) -> Result<Vec<Taken>> {
    let mut conn = pool.get()?;
    let stmt = conn.prepared(TAKE_SQL, TAKE_TYPES)?;
    let c = &b.checks;
    let rows = conn.query(
        &stmt,
        &[
            &b.keys,
            &b.users,
            &b.counts,
            &c.subjects,
            &c.owners,
            &c.names,
            &c.windows,
            &c.limits,
            &c.periods,
            &c.anchors,
            &shift_secs,
        ],
    )?;
    rows.iter()
        .map(|row| {
            let entry: i32 = row.try_get(0)?;
            Ok(Taken {
                entry: usize::try_from(entry - 1).unwrap_or(usize::MAX),
                admitted: row.try_get(1)?,
                owner_wide: row.try_get(2)?,
                name: row.try_get(3)?,
                window: row.try_get(4)?,
                limit: row.try_get(5)?,
                before: row.try_get(6)?,
                weighted: row.try_get(7)?,
                ends: row.try_get(8)?,
                period_secs: row.try_get(9)?,
                now: row.try_get(10)?,
            })
        })
        .collect::<std::result::Result<Vec<_>, postgres::Error>>()
        .map_err(Error::from)
}

/// Zeroes the quota period of a key (`'k'`) or user (`'u'`): the count starts again now,
/// the period's boundaries stay. False if the subject does not exist.
pub fn reset_quota(pool: &Pool, kind: Subject, id: i64) -> Result<bool> {
    let n = pool.get()?.execute(
        "UPDATE limit_counters SET quota_used = 0 WHERE kind = $1 AND owner_id = $2",
        &[&kind.code(), &id],
    )?;
    Ok(n > 0)
}

/// Whose counters: a key's own, or a user's counted across all of its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Key,
    User,
}

impl Subject {
    /// The `limit_counters.kind` value.
    pub fn code(self) -> i8 {
        match self {
            Subject::Key => b'k' as i8,
            Subject::User => b'u' as i8,
        }
    }
}
