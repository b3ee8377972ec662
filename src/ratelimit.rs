//! The sliding-window limit, counted in Postgres, and the headers it yields. The estimate
//! is the previous bucket's count weighted by the share of it still inside the window plus
//! the current bucket's count; a request is admitted, and only then counted, when that
//! estimate plus one stays within the limit.
//!
//! Counting is coalesced: requests for one key that arrive while that key's previous
//! counter statement is still running form a group, and the group's first member runs one
//! statement (`tollgate_take`, sql/004) that admits up to N of them under the row lock and
//! returns the new total. Each member derives its own position from that total, so the
//! limit stays exact across replicas while a hot key's row is locked once per group
//! instead of once per request.

use crate::db::Pool;
use crate::error::{Error, Result};
use crate::server::{App, Reply};
use postgres::types::Type;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Admits up to `$4` requests of key `$1` (window `$2` s, limit `$3`) in one round trip.
/// Prepared once per pooled connection.
const TAKE_SQL: &str = "SELECT admitted, current, weighted, now_epoch
    FROM tollgate_take($1, $2, $3, $4)";
const TAKE_TYPES: &[Type] = &[Type::INT8, Type::FLOAT8, Type::FLOAT8, Type::INT4];

/// The same for a group of one, as a single SQL statement: ~25-40 % less database CPU than
/// the plpgsql function (pgbench, 1000 keys), and most groups on a gateway with many keys
/// have one member. The previous bucket is read from the snapshot (it no longer changes);
/// the current one is upserted, and `ON CONFLICT DO UPDATE ... WHERE` re-checks the limit
/// against the row's latest version under its lock, so no replica can push the count past
/// the limit. A refused request writes nothing.
const TAKE_ONE_SQL: &str = "
WITH t AS (
    SELECT e, floor(e / $2)::bigint AS win
      FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS e) s
), w AS (
    SELECT t.e, t.win,
           coalesce((SELECT c.count FROM rate_limit_counters c
                      WHERE c.api_key_id = $1 AND c.window_start = t.win - 1), 0)::float8
             * (1 - (t.e - t.win * $2) / $2) AS weighted
      FROM t
), up AS (
    INSERT INTO rate_limit_counters AS c (api_key_id, window_start, count)
    SELECT $1, w.win, 1 FROM w WHERE w.weighted + 1 <= $3
    ON CONFLICT (api_key_id, window_start) DO UPDATE SET count = c.count + 1
      WHERE (SELECT weighted FROM w) + c.count + 1 <= $3
    RETURNING c.count
)
SELECT (SELECT count FROM up),
       coalesce((SELECT c.count FROM rate_limit_counters c, w
                  WHERE c.api_key_id = $1 AND c.window_start = w.win), 0),
       w.weighted, w.e
  FROM w";
const TAKE_ONE_TYPES: &[Type] = &[Type::INT8, Type::FLOAT8, Type::FLOAT8];

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

/// One group's answer from `tollgate_take`.
#[derive(Clone, Copy, Debug)]
struct Taken {
    admitted: i32,
    current: i32,
    weighted: f64,
    now: f64,
}

/// Requests of one key waiting for one statement. Members join while it is open (in the
/// coalescer's map); the member that opened it runs the statement and publishes the answer.
#[derive(Default)]
struct Group {
    /// `None` until the statement has run; `Err(true)` for "database unavailable".
    answer: Mutex<Option<std::result::Result<Taken, bool>>>,
    done: Condvar,
}

#[derive(Default)]
struct Slot {
    /// The group new requests join; taken out when its statement starts.
    open: Option<(Arc<Group>, i32)>,
    /// A statement for this key is running; the open group waits for it.
    busy: bool,
}

/// The rate-limit counter: its own pool (`synchronous_commit = off`, see
/// `db::counter_pool`) and the per-key groups being formed.
pub struct Counters {
    pool: Pool,
    linger: Duration,
    slots: Mutex<HashMap<i64, Slot>>,
    /// Signalled whenever a key stops being busy; the waiting group leaders re-check.
    idle: Condvar,
    /// Statements run and requests counted by them, for /admin/stats: their ratio is the
    /// coalescing factor.
    pub statements: std::sync::atomic::AtomicU64,
    pub counted: std::sync::atomic::AtomicU64,
    /// First come, first served in front of the pool (r2d2's own wait is not).
    gate: FifoGate,
}

/// A counting semaphore that admits waiters in arrival order and wakes exactly one per
/// release: with r2d2's unordered wait, a few requests starved for most of a second at
/// `make bench`'s load while the rest went through.
struct FifoGate {
    state: Mutex<GateState>,
}

struct GateState {
    free: u32,
    waiting: VecDeque<Arc<Turn>>,
}

#[derive(Default)]
struct Turn {
    granted: Mutex<bool>,
    cv: Condvar,
}

/// One admitted holder; dropping it hands the place to the longest waiter.
struct Pass<'a>(&'a FifoGate);

impl FifoGate {
    fn new(size: u32) -> FifoGate {
        FifoGate {
            state: Mutex::new(GateState {
                free: size.max(1),
                waiting: VecDeque::new(),
            }),
        }
    }

    fn enter(&self) -> Pass<'_> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.free > 0 && st.waiting.is_empty() {
            st.free -= 1;
            return Pass(self);
        }
        let turn = Arc::new(Turn::default());
        st.waiting.push_back(turn.clone());
        drop(st);
        let mut granted = turn.granted.lock().unwrap_or_else(|p| p.into_inner());
        while !*granted {
            granted = turn.cv.wait(granted).unwrap_or_else(|p| p.into_inner());
        }
        Pass(self)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.waiting.pop_front() {
            // The place passes straight to the next in line; `free` is unchanged.
            Some(next) => {
                drop(st);
                *next.granted.lock().unwrap_or_else(|p| p.into_inner()) = true;
                next.cv.notify_one();
            }
            None => st.free += 1,
        }
    }
}

impl Counters {
    pub fn new(pool: Pool, linger: Duration) -> Counters {
        Counters {
            gate: FifoGate::new(pool.max_size()),
            pool,
            linger,
            slots: Mutex::default(),
            idle: Condvar::new(),
            statements: Default::default(),
            counted: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins (or opens) the key's group and returns this request's answer and its 0-based
    /// position in the group.
    fn take(&self, key_id: i64, window: f64, limit: i32) -> Result<(Taken, i32)> {
        let mut slots = self.lock();
        let slot = slots.entry(key_id).or_default();
        if let Some((group, n)) = &mut slot.open {
            let me = *n;
            *n += 1;
            let group = group.clone();
            drop(slots);
            return wait(&group).map(|t| (t, me));
        }
        let group = Arc::new(Group::default());
        slot.open = Some((group.clone(), 1));
        // Lead: wait until the key's previous statement is done; requests arriving
        // meanwhile join this group.
        while slots.get(&key_id).is_some_and(|s| s.busy) {
            slots = self.idle.wait(slots).unwrap_or_else(|p| p.into_inner());
        }
        if !self.linger.is_zero() {
            drop(slots);
            std::thread::sleep(self.linger);
            slots = self.lock();
        }
        let slot = slots.entry(key_id).or_default();
        slot.busy = true;
        let n = slot.open.take().map_or(1, |(_, n)| n);
        drop(slots);

        // Whatever happens in `run`, even a panic, the guard frees the key and answers
        // the members, so no request waits forever on a group whose leader is gone.
        let mut lead = Lead {
            counters: self,
            key_id,
            group,
            answer: Err(false),
        };
        let answer = self.run(key_id, window, limit, n);
        lead.answer = match &answer {
            Ok(t) => Ok(*t),
            Err(Error::DatabaseUnavailable) => Err(true),
            Err(_) => Err(false),
        };
        drop(lead);
        answer.map(|t| (t, 0))
    }

    fn run(&self, key_id: i64, window: f64, limit: i32, n: i32) -> Result<Taken> {
        use std::sync::atomic::Ordering::Relaxed;
        let _pass = self.gate.enter();
        let mut conn = self.pool.get()?;
        let limit = f64::from(limit);
        let taken = if n == 1 {
            let stmt = conn.prepared(TAKE_ONE_SQL, TAKE_ONE_TYPES)?;
            let row = conn.query_one(&stmt, &[&key_id, &window, &limit])?;
            let admitted: Option<i32> = row.try_get(0)?;
            Taken {
                admitted: i32::from(admitted.is_some()),
                current: match admitted {
                    Some(count) => count,
                    None => row.try_get(1)?,
                },
                weighted: row.try_get(2)?,
                now: row.try_get(3)?,
            }
        } else {
            let stmt = conn.prepared(TAKE_SQL, TAKE_TYPES)?;
            let row = conn.query_one(&stmt, &[&key_id, &window, &limit, &n])?;
            Taken {
                admitted: row.try_get(0)?,
                current: row.try_get(1)?,
                weighted: row.try_get(2)?,
                now: row.try_get(3)?,
            }
        };
        self.statements.fetch_add(1, Relaxed);
        self.counted
            .fetch_add(u64::try_from(n).unwrap_or(0), Relaxed);
        Ok(taken)
    }
}

/// A group leader's duty once its statement has run (or failed, or panicked): mark the key
/// idle for the next group and publish the answer to the members.
struct Lead<'a> {
    counters: &'a Counters,
    key_id: i64,
    group: Arc<Group>,
    answer: std::result::Result<Taken, bool>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut slots = self.counters.lock();
        if let Some(slot) = slots.get_mut(&self.key_id) {
            slot.busy = false;
            if slot.open.is_none() {
                slots.remove(&self.key_id);
            }
        }
        drop(slots);
        self.counters.idle.notify_all();
        *self.group.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.answer);
        self.group.done.notify_all();
    }
}

/// Blocks until the group's leader publishes the answer.
fn wait(group: &Group) -> Result<Taken> {
    let mut answer = group.answer.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match *answer {
            Some(Ok(t)) => return Ok(t),
            Some(Err(true)) => return Err(Error::DatabaseUnavailable),
            Some(Err(false)) => return Err(Error::Internal("rate-limit statement failed".into())),
            None => answer = group.done.wait(answer).unwrap_or_else(|p| p.into_inner()),
        }
    }
}

pub fn check(app: &App, key_id: i64, limit: i32) -> Result<Decision> {
    let window = f64::from(app.cfg.rate_window_secs);
    let (t, me) = app.counters.take(key_id, window, limit)?;
    Ok(decide_member(t, me, window, limit))
}

/// This member's decision: the group took positions `current - admitted + 1 ..= current`
/// in order, so member `me` is admitted when `me < admitted`, at position
/// `current - admitted + me + 1`.
fn decide_member(t: Taken, me: i32, window: f64, limit: i32) -> Decision {
    let position = (me < t.admitted).then(|| t.current - t.admitted + me + 1);
    decide(position, t.current, t.weighted, t.now, window, limit)
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
    fn the_gate_admits_waiters_in_arrival_order() {
        let gate = Arc::new(FifoGate::new(1));
        let first = gate.enter();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..5 {
            let (g, o) = (gate.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _pass = g.enter();
                o.lock().unwrap().push(i);
            }));
            // Each waiter is queued before the next one arrives.
            while gate.state.lock().unwrap().waiting.len() < i + 1 {
                std::thread::yield_now();
            }
        }
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(gate.state.lock().unwrap().free, 1);
    }

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
    fn group_members_take_consecutive_positions_and_the_rest_are_refused() {
        // limit 10, 7 already counted, a group of 5 arrives: 3 admitted (positions 8..10).
        let t = Taken {
            admitted: 3,
            current: 10,
            weighted: 0.0,
            now: 1_030.0,
        };
        let d: Vec<Decision> = (0..5).map(|me| decide_member(t, me, 60.0, 10)).collect();
        assert_eq!(
            d.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert_eq!(
            d.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0, 0]
        );
        assert!(d[3].retry_after >= 1);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let d = decide(None, 0, 1.0, 1_259.9, 60.0, 1);
        assert!(d.retry_after >= 1);
    }
}
