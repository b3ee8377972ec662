//! The sliding-window limit, counted in Postgres by one statement per request, and the
//! headers it yields. The estimate is the previous bucket's count weighted by the share of
//! it still inside the window plus the current bucket's count; a request is admitted, and
//! only then counted, when that estimate plus one stays within the limit.

use crate::error::Result;
use crate::server::{App, Reply};
use postgres::types::Type;
use std::time::Duration;

/// One round trip, no read-then-write race. The previous bucket is read from the snapshot
/// (it no longer changes); the current one is upserted, and `ON CONFLICT DO UPDATE ... WHERE`
/// re-checks the limit against the row's latest version under its lock, so concurrent
/// requests (on any replica) can never push the count past the limit. A refused request
/// inserts and updates nothing.
const CHECK_SQL: &str = "
WITH t AS (
    SELECT e, floor(e / $2::float8)::bigint AS win
      FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS e) s
), w AS (
    SELECT t.e, t.win,
           coalesce((SELECT c.count FROM rate_limit_counters c
                      WHERE c.api_key_id = $1 AND c.window_start = t.win - 1), 0)::float8
             * (1 - (t.e - t.win * $2::float8) / $2::float8) AS weighted
      FROM t
), up AS (
    INSERT INTO rate_limit_counters AS c (api_key_id, window_start, count)
    SELECT $1, w.win, 1 FROM w WHERE w.weighted + 1 <= $3::float8
    ON CONFLICT (api_key_id, window_start) DO UPDATE SET count = c.count + 1
      WHERE (SELECT weighted FROM w) + c.count + 1 <= $3::float8
    RETURNING c.count
)
SELECT (SELECT count FROM up),
       coalesce((SELECT c.count FROM rate_limit_counters c, w
                  WHERE c.api_key_id = $1 AND c.window_start = w.win), 0),
       w.weighted, w.e
  FROM w";

/// Counter rows older than the previous bucket no longer affect any estimate.
const PURGE_SQL: &str = "DELETE FROM rate_limit_counters
    WHERE window_start < floor(extract(epoch FROM now()) / $1::float8)::bigint - 1";

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: i32,
    pub remaining: i64,
    /// Unix time (seconds) at which the current bucket ends.
    pub reset_at: u64,
    /// Seconds from now until `reset_at`.
    pub reset_in: u64,
    /// For a refused request: seconds until the estimate admits one more.
    pub retry_after: u64,
}

pub fn check(app: &App, key_id: i64, limit: i32) -> Result<Decision> {
    let window = f64::from(app.cfg.rate_window_secs);
    let mut conn = app.pool.get()?;
    // `query_typed` sends the parameter types with the statement: one round trip instead
    // of a prepare and an execute.
    let row = conn.query_typed_one(
        CHECK_SQL,
        &[
            (&key_id, Type::INT8),
            (&window, Type::FLOAT8),
            (&f64::from(limit), Type::FLOAT8),
        ],
    )?;
    let admitted: Option<i32> = row.get(0);
    let current: i32 = row.get(1);
    let weighted: f64 = row.get(2);
    let now: f64 = row.get(3);
    Ok(decide(admitted, current, weighted, now, window, limit))
}

/// Turns the statement's answer into the decision and its header values.
pub fn decide(
    admitted: Option<i32>,
    current: i32,
    weighted: f64,
    now: f64,
    window: f64,
    limit: i32,
) -> Decision {
    let count = f64::from(admitted.unwrap_or(current));
    let bucket_end = ((now / window).floor() + 1.0) * window;
    let remaining = (f64::from(limit) - weighted - count).floor().max(0.0) as i64;
    let retry_after = if admitted.is_some() {
        0
    } else {
        retry_after_secs(current, weighted, now, window, limit)
    };
    Decision {
        allowed: admitted.is_some(),
        limit,
        remaining,
        reset_at: bucket_end.ceil() as u64,
        reset_in: (bucket_end - now).ceil().max(0.0) as u64,
        retry_after,
    }
}

/// Seconds until `prev·(1 − x/W) + cur + 1 ≤ limit` holds again, solving for the elapsed
/// share `x` of the current bucket or, when the current bucket alone is full, of the next
/// one (where today's count becomes the weighted previous). Rounded up, at least 1.
fn retry_after_secs(current: i32, weighted: f64, now: f64, window: f64, limit: i32) -> u64 {
    let limit = f64::from(limit);
    let cur = f64::from(current);
    let start = (now / window).floor() * window;
    let elapsed = now - start;
    // The previous bucket's raw count, recovered from its weight.
    let share_left = 1.0 - elapsed / window;
    let prev = if share_left > 0.0 {
        weighted / share_left
    } else {
        0.0
    };
    let wait = if cur + 1.0 <= limit && prev > 0.0 {
        // Within this bucket: need prev·(1 − x/W) ≤ limit − cur − 1.
        let x = window * (1.0 - (limit - cur - 1.0) / prev);
        x - elapsed
    } else {
        // Next bucket: need cur·(1 − x/W) + 1 ≤ limit.
        let x = if cur > 0.0 {
            (window * (1.0 - (limit - 1.0) / cur)).max(0.0)
        } else {
            0.0
        };
        (window - elapsed) + x
    };
    // The epsilon keeps float noise (10.000000001) from adding a whole second.
    (wait - 1e-6).ceil().max(1.0) as u64
}

impl Decision {
    /// The 429 for a refused request, with `Retry-After` and the limit headers.
    pub fn refusal(&self, window_secs: u32) -> Reply {
        let mut reply = Reply::error(&crate::error::Error::RateLimited {
            retry_after: self.retry_after,
        });
        self.add_headers(&mut reply, window_secs);
        reply
    }

    /// The classic `X-RateLimit-*` trio and the IETF draft's `RateLimit-Policy`/`RateLimit`.
    pub fn add_headers(&self, reply: &mut Reply, window_secs: u32) {
        reply.header("X-RateLimit-Limit", self.limit.to_string());
        reply.header("X-RateLimit-Remaining", self.remaining.to_string());
        reply.header("X-RateLimit-Reset", self.reset_at.to_string());
        reply.header(
            "RateLimit-Policy",
            format!("\"default\";q={};w={}", self.limit, window_secs),
        );
        reply.header(
            "RateLimit",
            format!("\"default\";r={};t={}", self.remaining, self.reset_in),
        );
    }
}

/// Deletes counter rows no estimate can read any more, every window, forever.
pub fn spawn_purger(pool: crate::db::Pool, window_secs: u32) {
    let every = Duration::from_secs(u64::from(window_secs).max(1));
    let spawned = std::thread::Builder::new()
        .name("ratelimit-purge".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let window = f64::from(window_secs);
            match pool.get().map(|mut c| c.execute(PURGE_SQL, &[&window])) {
                Ok(Ok(n)) if n > 0 => log::debug!("purged {n} old rate-limit rows"),
                Ok(Err(e)) => log::warn!("rate-limit purge failed: {e}"),
                Err(e) => log::warn!("rate-limit purge: no connection: {e}"),
                _ => {}
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the rate-limit purge thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_request_reports_what_is_left() {
        // 30 s into a 60 s bucket, 10 in the previous bucket (weighted 5), 3 now.
        let d = decide(Some(3), 3, 5.0, 1_030.0, 60.0, 10);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset_at, 1_080);
        assert_eq!(d.reset_in, 50);
        assert_eq!(d.retry_after, 0);
    }

    #[test]
    fn refused_request_waits_until_the_previous_bucket_has_slid_far_enough() {
        // 10 s into the bucket, previous bucket had 6 (weighted 5), 5 now, limit 10:
        // needs 6·(1 − x/60) ≤ 4, x ≥ 20 s, so 10 s from now.
        let d = decide(None, 5, 6.0 * (50.0 / 60.0), 1_210.0, 60.0, 10);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, 10);
    }

    #[test]
    fn full_current_bucket_waits_into_the_next_one() {
        // limit 5, 5 used now, 20 s into the bucket: next bucket needs 5·(1 − x/60) + 1 ≤ 5,
        // x ≥ 12 s, so 40 + 12 s.
        let d = decide(None, 5, 0.0, 1_220.0, 60.0, 5);
        assert_eq!(d.retry_after, 52);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let d = decide(None, 0, 1.0, 1_259.9, 60.0, 1);
        assert!(d.retry_after >= 1);
    }
}
