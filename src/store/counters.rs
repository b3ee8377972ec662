//! `rate_limit_counters`: the batched counter statement and the purge of old buckets. How
//! a batch is gathered and what its answer means is in `gateway/ratelimit.rs`.

use super::Pool;
use crate::error::{Error, Result};
use postgres::types::Type;

/// Admits, for each key `$1[i]` (limit `$3[i]`), up to `$2[i]` requests in the window of
/// `$4` s, for a whole batch in one round trip. The previous bucket is read from the
/// snapshot (it no longer changes); the current one is upserted in key order (so two
/// statements, from this replica or another, lock shared rows in the same order and cannot
/// deadlock), and `ON CONFLICT DO UPDATE ... WHERE` re-checks the limit against the row's
/// latest version under its lock, so nothing pushes a count past its limit. `last_add`
/// (sql/005) records what the upsert added, because RETURNING shows only the new count. A
/// refused key writes nothing; its `current` is read from the snapshot, for its headers.
/// Prepared once per pooled connection (see `Conn::prepared`).
pub const TAKE_SQL: &str = "
WITH t AS (
    SELECT e, floor(e / $4)::bigint AS win
      FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS e) s
), w AS (
    SELECT i.k, i.n, i.lim, t.e, t.win,
           coalesce(p.count, 0)::float8 * (1 - (t.e - t.win * $4) / $4) AS weighted
      FROM unnest($1::int8[], $2::int4[], $3::float8[]) AS i(k, n, lim)
     CROSS JOIN t
      LEFT JOIN rate_limit_counters p ON p.api_key_id = i.k AND p.window_start = t.win - 1
), c AS (
    SELECT w.*, greatest(floor(w.lim - w.weighted), 0)::integer AS cap FROM w
), up AS (
    INSERT INTO rate_limit_counters AS r (api_key_id, window_start, count, last_add)
    SELECT k, win, least(n, cap), least(n, cap) FROM c WHERE cap >= 1 ORDER BY k
    ON CONFLICT (api_key_id, window_start) DO UPDATE
       SET count = r.count + least(EXCLUDED.count,
                                   (SELECT cap FROM c WHERE c.k = EXCLUDED.api_key_id) - r.count),
           last_add = least(EXCLUDED.count,
                            (SELECT cap FROM c WHERE c.k = EXCLUDED.api_key_id) - r.count)
     WHERE (SELECT cap FROM c WHERE c.k = EXCLUDED.api_key_id) - r.count >= 1
    RETURNING r.api_key_id, r.count, r.last_add
)
SELECT c.k, coalesce(up.last_add, 0),
       coalesce(up.count, (SELECT r.count FROM rate_limit_counters r
                            WHERE r.api_key_id = c.k AND r.window_start = c.win), 0),
       c.weighted, c.e
  FROM c LEFT JOIN up ON up.api_key_id = c.k";
const TAKE_TYPES: &[Type] = &[
    Type::INT8_ARRAY,
    Type::INT4_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::FLOAT8,
];

/// Counter rows older than the previous bucket no longer affect any estimate.
const PURGE_SQL: &str = "DELETE FROM rate_limit_counters
    WHERE window_start < floor(extract(epoch FROM now()) / $1::float8)::bigint - 1";

/// One key's answer from [`TAKE_SQL`].
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    pub key_id: i64,
    /// Requests of this entry admitted (0 when the key is refused).
    pub admitted: i32,
    /// The current bucket's count after the statement.
    pub current: i32,
    /// The previous bucket's count weighted by the share of it still in the window.
    pub weighted: f64,
    /// The database's clock, in Unix seconds.
    pub now: f64,
}

/// Runs [`TAKE_SQL`] for one batch: `keys[i]` asks for `counts[i]` requests under
/// `limits[i]`, in a window of `window` seconds. One answer per key, in no set order.
pub fn take(
    pool: &Pool,
    keys: &[i64],
    counts: &[i32],
    limits: &[f64],
    window: f64,
) -> Result<Vec<Taken>> {
    let mut conn = pool.get()?;
    let stmt = conn.prepared(TAKE_SQL, TAKE_TYPES)?;
    let rows = conn.query(&stmt, &[&keys, &counts, &limits, &window])?;
    rows.iter()
        .map(|row| {
            Ok(Taken {
                key_id: row.try_get(0)?,
                admitted: row.try_get(1)?,
                current: row.try_get(2)?,
                weighted: row.try_get(3)?,
                now: row.try_get(4)?,
            })
        })
        .collect::<std::result::Result<Vec<_>, postgres::Error>>()
        .map_err(Error::from)
}

/// Deletes counter rows no estimate can read any more; returns how many.
pub fn purge(pool: &Pool, window: f64) -> Result<u64> {
    Ok(pool.get()?.execute(PURGE_SQL, &[&window])?)
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
