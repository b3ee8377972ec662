//! The sliding-window limit, counted in Postgres, and the headers it yields. The estimate
//! is the previous bucket's count weighted by the share of it still inside the window plus
//! the current bucket's count; a request is admitted, and only then counted, when that
//! estimate plus one stays within the limit.
//!
//! Counting is batched: every request that arrives while the counter connections are all
//! busy joins the next batch, and when a connection frees up one member of that batch runs
//! one statement for all of it (`store::counters::TAKE_SQL`). Requests for the same key in a batch become
//! one entry of N; the statement locks each key's row once, admits up to N of them and
//! returns the new total, and each member derives its own position from it. The limit
//! stays exact across replicas (the row lock serialises every statement that touches a
//! key) while the database runs one statement per batch instead of one per request, and a
//! hot key's row is written once per batch.

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::http::Reply;
use crate::store::counters::{self, Taken};
use crate::store::{DbHealth, Pool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

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
    /// The sliding window's length.
    pub window_secs: u32,
}

/// What a batch's statement answered, one `Taken` per entry; `Err(true)` for "database
/// unavailable", `Err(false)` for any other failure.
type Answer = std::result::Result<Vec<Taken>, bool>;

/// Requests waiting for one statement. Members wait on `cv` with the counters' lock.
#[derive(Default)]
struct Batch {
    answer: OnceLock<Answer>,
    cv: Condvar,
}

/// The batch being gathered: one entry per key, with how many of its requests joined.
#[derive(Default)]
struct Pending {
    batch: Arc<Batch>,
    index: HashMap<i64, usize>,
    keys: Vec<i64>,
    counts: Vec<i32>,
    limits: Vec<f64>,
    /// A member has taken the lead and lingers (`TOLLGATE_COALESCE_WINDOW_US`) before
    /// running it; nobody else may lead it meanwhile.
    claimed: bool,
}

impl Pending {
    /// Adds one request; returns its entry and its 0-based position among the entry's
    /// requests.
    fn join(&mut self, key_id: i64, limit: i32) -> (usize, i32) {
        match self.index.get(&key_id) {
            Some(&entry) => {
                let me = self.counts[entry];
                self.counts[entry] += 1;
                (entry, me)
            }
            None => {
                let entry = self.keys.len();
                self.index.insert(key_id, entry);
                self.keys.push(key_id);
                self.counts.push(1);
                self.limits.push(f64::from(limit));
                (entry, 0)
            }
        }
    }
}

struct State {
    pending: Pending,
    /// Statements running; at most the counter pool's size.
    running: u32,
}

/// The rate-limit counter: its own pool (`synchronous_commit = off`, see
/// `store::counter_pool`) and the batch being gathered.
pub struct Counters {
    pool: Pool,
    window: f64,
    linger: Duration,
    state: Mutex<State>,
    max_running: u32,
    /// Statements run and requests counted by them, for /admin/stats: their ratio is the
    /// batching factor.
    pub statements: AtomicU64,
    pub counted: AtomicU64,
}

impl Counters {
    /// `window_secs` is the sliding window (`TOLLGATE_RATE_WINDOW_SECS`); `linger` how
    /// long a batch's leader waits for more members before running it.
    pub fn new(pool: Pool, window_secs: u32, linger: Duration) -> Counters {
        Counters {
            max_running: pool.max_size().max(1),
            pool,
            window: f64::from(window_secs),
            linger,
            state: Mutex::new(State {
                pending: Pending::default(),
                running: 0,
            }),
            statements: Default::default(),
            counted: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the pending batch and returns this request's answer and its 0-based position
    /// among its key's requests in the batch. Leads the batch (runs its statement) when a
    /// counter connection is free; otherwise waits until the batch has been answered or a
    /// connection frees up while it is still pending.
    fn take(&self, key_id: i64, limit: i32) -> Result<(Taken, i32)> {
        let mut st = self.lock();
        let (entry, me) = st.pending.join(key_id, limit);
        let batch = st.pending.batch.clone();
        loop {
            if let Some(answer) = batch.answer.get() {
                return answer_for(answer, entry).map(|t| (t, me));
            }
            if Arc::ptr_eq(&st.pending.batch, &batch)
                && !st.pending.claimed
                && st.running < self.max_running
            {
                st.running += 1;
                if !self.linger.is_zero() {
                    // More requests may join while the leader lingers.
                    st.pending.claimed = true;
                    drop(st);
                    std::thread::sleep(self.linger);
                    st = self.lock();
                }
                let pending = std::mem::take(&mut st.pending);
                drop(st);
                self.lead(pending);
                st = self.lock();
                continue;
            }
            st = batch.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs the batch's statement and publishes its answer. Whatever happens in `run`,
    /// even a panic, the guard answers the members and frees the connection slot, so no
    /// request waits forever on a batch whose leader is gone.
    fn lead(&self, pending: Pending) {
        let mut lead = Lead {
            counters: self,
            batch: pending.batch.clone(),
            answer: Err(false),
        };
        lead.answer = match self.run(&pending) {
            Ok(taken) => Ok(taken),
            Err(Error::DatabaseUnavailable) => Err(true),
            Err(e) => {
                log::error!("rate-limit statement failed: {e}");
                Err(false)
            }
        };
    }

    fn run(&self, p: &Pending) -> Result<Vec<Taken>> {
        let answers = counters::take(&self.pool, &p.keys, &p.counts, &p.limits, self.window)?;
        let mut taken = vec![None; p.keys.len()];
        for t in answers {
            let entry = *p.index.get(&t.key_id).ok_or_else(|| {
                Error::Internal(format!(
                    "counter statement answered for unknown key {}",
                    t.key_id
                ))
            })?;
            taken[entry] = Some(t);
        }
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.counted.fetch_add(
            p.counts
                .iter()
                .map(|&n| u64::try_from(n).unwrap_or(0))
                .sum(),
            Ordering::Relaxed,
        );
        taken
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Internal("counter statement skipped a key".into()))
    }

    /// Counts one request of `key_id` under `limit` and decides it.
    pub fn check(&self, key_id: i64, limit: i32) -> Result<Decision> {
        let (t, me) = self.take(key_id, limit)?;
        Ok(decide_member(t, me, self.window, limit))
    }
}

/// A batch leader's duty once its statement has run (or failed, or panicked): publish the
/// answer, free the connection slot, and wake one member of the next batch to lead it.
struct Lead<'a> {
    counters: &'a Counters,
    batch: Arc<Batch>,
    answer: Answer,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let _ = self
            .batch
            .answer
            .set(std::mem::replace(&mut self.answer, Err(false)));
        let mut st = self.counters.lock();
        st.running -= 1;
        // Under the lock, so a member between its check and its wait cannot miss this.
        self.batch.cv.notify_all();
        if !st.pending.keys.is_empty() {
            st.pending.batch.cv.notify_one();
        }
    }
}

/// One entry's share of a batch's answer.
fn answer_for(answer: &Answer, entry: usize) -> Result<Taken> {
    match answer {
        Ok(taken) => taken
            .get(entry)
            .copied()
            .ok_or_else(|| Error::Internal("rate-limit batch lost an entry".into())),
        Err(true) => Err(Error::DatabaseUnavailable),
        Err(false) => Err(Error::Internal("rate-limit statement failed".into())),
    }
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
        window_secs: window as u32,
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
    pub fn refusal(&self) -> Reply {
        let mut reply = Reply::error(&Error::RateLimited {
            retry_after: self.retry_after,
        });
        self.add_headers(&mut reply);
        reply
    }

    /// The classic `X-RateLimit-*` trio and the IETF draft's `RateLimit-Policy`/`RateLimit`.
    pub fn add_headers(&self, reply: &mut Reply) {
        reply.header("X-RateLimit-Limit", self.limit.to_string());
        reply.header("X-RateLimit-Remaining", self.remaining.to_string());
        reply.header("X-RateLimit-Reset", self.reset_at.to_string());
        reply.header(
            "RateLimit-Policy",
            format!("\"default\";q={};w={}", self.limit, self.window_secs),
        );
        reply.header(
            "RateLimit",
            format!("\"default\";r={};t={}", self.remaining, self.reset_in),
        );
    }
}

/// Deletes counter rows no estimate can read any more, every window, forever.
pub fn spawn_purger(pool: Pool, window_secs: u32) {
    let every = Duration::from_secs(u64::from(window_secs).max(1));
    let spawned = std::thread::Builder::new()
        .name("ratelimit-purge".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let window = f64::from(window_secs);
            match counters::purge(&pool, window) {
                Ok(n) if n > 0 => log::debug!("purged {n} old rate-limit rows"),
                Err(e) => log::warn!("rate-limit purge failed: {e:?}"),
                _ => {}
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the rate-limit purge thread: {e}");
    }
}

/// The limiter: the counters and what to do when they cannot be reached.
pub struct Limiter {
    pub counters: Counters,
    /// `TOLLGATE_RATELIMIT_ON_DB_ERROR`: admit (true) or answer 503 while the counter is
    /// unreachable.
    fail_open: bool,
    /// Responses sent with `X-RateLimit-Degraded: 1` (counter unreachable, fail-open).
    pub degraded: AtomicU64,
}

/// A rate-limit decision, or none because the counter was unreachable and the policy is
/// fail-open.
pub enum Limit {
    Decided(Decision),
    Degraded,
}

impl Limiter {
    pub fn new(counters: Counters, fail_open: bool) -> Limiter {
        Limiter {
            counters,
            fail_open,
            degraded: AtomicU64::new(0),
        }
    }

    /// Counts the request, with the database outage policy applied: while the counter
    /// cannot be reached, fail-open admits (`Limit::Degraded`) and fail-closed answers 503.
    /// During a known outage the counter is not even tried (see `DbHealth`), so requests
    /// with cached keys do not each wait `db_wait` for a connection.
    pub fn check(&self, health: &DbHealth, key_id: i64, limit: i32) -> Result<Limit> {
        match health.call(|| self.counters.check(key_id, limit)) {
            Ok(d) => Ok(Limit::Decided(d)),
            Err(Error::DatabaseUnavailable) if self.fail_open => Ok(Limit::Degraded),
            Err(e) => Err(e),
        }
    }
}

impl Limit {
    /// The 429 to answer, if the request is over its limit.
    pub fn refusal(&self, metrics: &Metrics) -> Option<Reply> {
        match self {
            Limit::Decided(d) if !d.allowed => {
                metrics.rate_limited();
                Some(d.refusal())
            }
            _ => None,
        }
    }

    pub fn add_headers(&self, limiter: &Limiter, reply: &mut Reply) {
        match self {
            Limit::Decided(d) => d.add_headers(reply),
            Limit::Degraded => {
                limiter.degraded.fetch_add(1, Ordering::Relaxed);
                reply.header("X-RateLimit-Degraded", "1");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_has_one_entry_per_key_and_numbers_each_keys_requests_from_zero() {
        let mut p = Pending::default();
        let joins: Vec<(usize, i32)> = [7, 9, 7, 7, 3, 9]
            .iter()
            .map(|&k| p.join(k, 100 + k as i32))
            .collect();
        assert_eq!(joins, [(0, 0), (1, 0), (0, 1), (0, 2), (2, 0), (1, 1)]);
        assert_eq!(p.keys, [7, 9, 3]);
        assert_eq!(p.counts, [3, 2, 1]);
        assert_eq!(p.limits, [107.0, 109.0, 103.0]);
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
            key_id: 7,
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
