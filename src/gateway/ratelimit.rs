//! Limits and quotas, counted in Postgres, and the headers they yield. Each sliding limit's
//! estimate is the previous bucket's count weighted by the share of it still inside the
//! window plus the current bucket's count; a quota counts admitted requests per period. A
//! request is admitted, and only then counted, when every limit and quota that applies to
//! it (`policy.rs`) has room for one more.
//!
//! Counting is batched: every request that arrives while the counter connections are all
//! busy joins the next batch, and when a connection frees up one member of that batch runs
//! one counting round for all of it (`store::counters::count`, `counting.rs`). Requests for
//! the same key in a batch become one entry of N; the round locks each key's and user's
//! counter row once, admits up to N of them and returns the counts before them, and each
//! member derives its own position from that. The limits stay exact across replicas (the
//! row locks serialise every round that touches a key or user) while the database runs one
//! round per batch instead of one per request or per limit.
//!
//! A busy key counted by lease (`leases.rs`) skips all of that: its requests are admitted
//! from units its rounds counted ahead of need, and a keeper thread refills the lease
//! before it runs out, so they wait for no round at all.

use super::counting::{Entries, Taken};
use super::leases::{Demand, Grant, Job, Leases};
use super::metrics::Metrics;
use super::policy::Limits;
use crate::error::{Error, Result};
use crate::http::Reply;
use crate::store::counters;
use crate::store::{DbHealth, Pool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Where one limit or quota stands for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitState {
    /// The limit's name (`quota` for the quota).
    pub name: Arc<str>,
    /// A user's owner-wide limit: headers and `/me` show it as `user.<name>`.
    pub owner_wide: bool,
    pub quota: bool,
    pub limit: i64,
    /// Counted so far: the quota's count in its period, or a window's sliding estimate.
    pub used: i64,
    /// The window (the quota: the current period's length), in seconds.
    pub window_secs: u64,
    pub remaining: i64,
    /// Unix time (seconds) at which the current bucket or period ends.
    pub reset_at: u64,
    /// Seconds from now until `reset_at`.
    pub reset_in: u64,
    /// Seconds until it admits one more request; 0 while it has room.
    pub retry_after: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Every limit and quota of the request, key's first, in their configured order.
    pub states: Vec<LimitState>,
    /// The one the headers describe: the refusing one that clears last, or for an
    /// admitted request the one closest to refusing.
    pub shown: usize,
}

/// What a batch's statement answered, one list of checks per entry; `Err(true)` for
/// "database unavailable", `Err(false)` for any other failure.
type Answer = std::result::Result<Vec<Arc<[Taken]>>, bool>;

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
    entries: Entries,
    /// A member has taken the lead and lingers (`TOLLGATE_COALESCE_WINDOW_US`) before
    /// running it; nobody else may lead it meanwhile.
    claimed: bool,
}

impl Pending {
    /// Adds `requests` requests (1, or 0 for a lease's round) with what the key's lease
    /// wants or gives back; returns its entry and the 0-based position of its first
    /// request among the entry's requests.
    fn join(
        &mut self,
        key_id: i64,
        user_id: i64,
        limits: &Limits,
        requests: i32,
        demand: Demand,
    ) -> (usize, i32) {
        let e = &mut self.entries;
        e.returns.extend(demand.returns);
        match self.index.get(&key_id) {
            Some(&entry) => {
                let me = e.counts[entry];
                e.counts[entry] += requests;
                e.wants[entry] = e.wants[entry].max(demand.want);
                (entry, me)
            }
            None => {
                let entry = e.keys.len();
                self.index.insert(key_id, entry);
                e.keys.push(key_id);
                e.users.push(user_id);
                e.counts.push(requests);
                e.wants.push(demand.want);
                e.key_checks.push(limits.key.clone());
                e.user_checks
                    .entry(user_id)
                    .or_insert_with(|| limits.user.clone());
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

/// The counter: its own pool (`synchronous_commit = off`, see `store::counter_pool`) and
/// the batch being gathered.
pub struct Counters {
    pool: Pool,
    linger: Duration,
    /// Seconds added to the database's clock (tests of period boundaries only).
    clock_shift: f64,
    state: Mutex<State>,
    max_running: u32,
    /// Statements run and requests counted by them, for /admin/stats: their ratio is the
    /// batching factor.
    pub statements: AtomicU64,
    pub counted: AtomicU64,
    pub leases: Leases,
    /// How long a request refused by its round waits for a lease of its key being granted
    /// by another round of this replica (`TOLLGATE_DB_WAIT_MS`).
    db_wait: Duration,
}

impl Counters {
    /// The counter pool, for the database prober (`DbHealth::watch`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `linger` is how long a batch's leader waits for more members before running it.
    pub fn new(
        pool: Pool,
        linger: Duration,
        clock_shift: f64,
        leases: Leases,
        db_wait: Duration,
    ) -> Counters {
        Counters {
            leases,
            db_wait,
            max_running: pool.max_size().max(1),
            pool,
            linger,
            clock_shift,
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

    /// Joins the pending batch and returns this request's entry's answer and its 0-based
    /// position among its key's requests in the batch.
    fn take(
        &self,
        key_id: i64,
        user_id: i64,
        limits: &Limits,
        demand: Demand,
    ) -> Result<(Arc<[Taken]>, i32)> {
        let mut st = self.lock();
        let (entry, me) = st.pending.join(key_id, user_id, limits, 1, demand);
        let batch = st.pending.batch.clone();
        let answer = self.answered(st, &batch);
        answer_for(answer, entry).map(|t| (t, me))
    }

    /// Runs the keeper's rounds (refills, units given back) as one batch; requests join it.
    fn take_jobs(&self, jobs: Vec<Job>) -> Result<()> {
        let mut st = self.lock();
        for j in jobs {
            st.pending.join(j.key, j.user, &j.limits, 0, j.demand);
        }
        let batch = st.pending.batch.clone();
        match self.answered(st, &batch) {
            Ok(_) => Ok(()),
            Err(true) => Err(Error::DatabaseUnavailable),
            Err(false) => Err(Error::Internal("rate-limit statement failed".into())),
        }
    }

    /// Waits until `batch` (joined under `st`) is answered, leading it when a counter
    /// connection is free; otherwise waiting until the batch has been answered or a
    /// connection frees up while it is still pending.
    fn answered<'a, 'b>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        batch: &'b Arc<Batch>,
    ) -> &'b Answer {
        loop {
            if let Some(answer) = batch.answer.get() {
                return answer;
            }
            if Arc::ptr_eq(&st.pending.batch, batch)
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
    fn lead(&self, mut pending: Pending) {
        pending.entries.min_room = self.leases.min_room;
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

    fn run(&self, p: &Pending) -> Result<Vec<Arc<[Taken]>>> {
        let e = &p.entries;
        let wanting: Vec<i64> = (e.keys.iter().zip(&e.wants))
            .filter(|(_, &w)| w > 0)
            .map(|(&k, _)| k)
            .collect();
        let mut granting = Granting {
            leases: &self.leases,
            sent: Instant::now(),
            grants: Vec::new(),
            keys: wanting,
        };
        if !granting.keys.is_empty() {
            self.leases.granting(&granting.keys);
        }
        let taken = counters::count(&self.pool, &e.subjects(), self.clock_shift, |rows, now| {
            e.allocate(rows, now)
        })?;
        let taken: Vec<Arc<[Taken]>> = taken.into_iter().map(Arc::from).collect();
        for (i, t) in taken.iter().enumerate() {
            if t.first().is_some_and(|t| t.leased > 0) {
                granting.grants.push(Grant {
                    key: e.keys[i],
                    user: e.users[i],
                    key_checks: e.key_checks[i].clone(),
                    user_checks: e.user_checks.get(&e.users[i]).cloned().unwrap_or_default(),
                    taken: t.clone(),
                });
            }
        }
        drop(granting);
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.counted.fetch_add(
            e.counts
                .iter()
                .map(|&n| u64::try_from(n).unwrap_or(0))
                .sum(),
            Ordering::Relaxed,
        );
        // Shared by the entry's members: each reads it, none copies it.
        Ok(taken)
    }

    /// Counts one request of `key_id` (of `user_id`) under `limits` in a round, with what
    /// its key's lease wants or gives back, and decides it.
    fn check_in_round(
        &self,
        key_id: i64,
        user_id: i64,
        limits: &Limits,
        demand: Demand,
    ) -> Result<Decision> {
        let (taken, me) = self.take(key_id, user_id, limits, demand)?;
        let d = decide_member(&taken, me)?;
        if !d.allowed {
            if let Some(taken) = self.leases.admit_refused(key_id, limits, self.db_wait) {
                return decide_member(&taken, 0);
            }
        }
        Ok(d)
    }

    /// Gives every lease's unused units back (at shutdown, once no request is in flight),
    /// so a replica stopped for a deploy keeps nothing from the others. Not tried during
    /// a known outage, which would hold the shutdown up for `db_wait`.
    pub fn give_back_leases(&self, health: &DbHealth) {
        let jobs = self.leases.all_back();
        if jobs.is_empty() {
            return;
        }
        match health.call(|| self.take_jobs(jobs)) {
            Ok(()) => log::info!("shutdown: unused lease units given back"),
            Err(e) => log::warn!("shutdown: lease units not given back: {e}"),
        }
    }

    /// The lease keeper's loop (its own thread): refills the leases requests asked for
    /// and gives back the idle and expired ones, each pass as one round.
    pub fn keep_leases(&self, health: &DbHealth) -> ! {
        let mut next_sweep = Instant::now();
        loop {
            let jobs = self.leases.due(&mut next_sweep);
            if jobs.is_empty() {
                continue;
            }
            // A failed round may have committed before its answer was lost: its units are
            // not given back twice (under-admission, never over), they age out.
            if let Err(e) = health.call(|| self.take_jobs(jobs)) {
                log::debug!("lease round failed: {e}");
            }
        }
    }

    /// Where every limit and quota of a key stands, counting nothing (`GET /me`). With
    /// only `limits.user`, where a user's owner-wide ones stand (any `key_id`).
    pub fn peek(&self, key_id: i64, user_id: i64, limits: &Limits) -> Result<Vec<LimitState>> {
        let mut p = Pending::default();
        p.join(key_id, user_id, limits, 0, Demand::default());
        let e = &p.entries;
        let (rows, now) = counters::read(&self.pool, &e.subjects(), self.clock_shift)?;
        let taken = e
            .allocate(rows, now)
            .0
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(taken.iter().map(|t| state(t, t.before, false)).collect())
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
        if !st.pending.entries.keys.is_empty() {
            st.pending.batch.cv.notify_one();
        }
    }
}

/// A round's leases until it ends: installed (or, if the round failed, only released)
/// whatever happens, so requests waiting on them are freed.
struct Granting<'a> {
    leases: &'a Leases,
    sent: Instant,
    grants: Vec<Grant>,
    keys: Vec<i64>,
}

impl Drop for Granting<'_> {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            let grants = std::mem::take(&mut self.grants);
            self.leases.granted(self.sent, grants, &self.keys);
        }
    }
}

/// One entry's share of a batch's answer.
fn answer_for(answer: &Answer, entry: usize) -> Result<Arc<[Taken]>> {
    match answer {
        Ok(taken) => taken
            .get(entry)
            .cloned()
            .ok_or_else(|| Error::Internal("rate-limit batch lost an entry".into())),
        Err(true) => Err(Error::DatabaseUnavailable),
        Err(false) => Err(Error::Internal("rate-limit statement failed".into())),
    }
}

/// This member's decision: the entry's requests took positions `before + 1 ..= before +
/// admitted` of every check in order, so member `me` is admitted when `me < admitted`, and
/// then counts as `before + me + 1`; a refused member sees every check after the admitted
/// ones.
fn decide_member(taken: &[Taken], me: i32) -> Result<Decision> {
    let admitted = taken
        .first()
        .map(|t| t.admitted)
        .ok_or_else(|| Error::Internal("counting round answered no check".into()))?;
    let allowed = i64::from(me) < admitted;
    let count = |t: &Taken| {
        if allowed {
            t.before + i64::from(me) + 1
        } else {
            t.before + admitted
        }
    };
    let states: Vec<LimitState> = taken.iter().map(|t| state(t, count(t), !allowed)).collect();
    let shown = if allowed {
        // Closest to refusing: fewest left, the shorter window on a tie.
        (0..states.len())
            .min_by_key(|&i| (states[i].remaining, states[i].window_secs))
            .unwrap_or(0)
    } else {
        // The refusal that lasts longest is the one the client must wait out.
        (0..states.len())
            .max_by_key(|&i| states[i].retry_after)
            .unwrap_or(0)
    };
    Ok(Decision {
        allowed,
        states,
        shown,
    })
}

/// One check after `count` requests, with the time to wait if `refused` and it is full.
fn state(t: &Taken, count: i64, refused: bool) -> LimitState {
    let quota = t.window == 0;
    let room = if quota {
        t.limit as f64 - count as f64
    } else {
        t.limit as f64 - t.weighted - count as f64
    };
    let reset_in = (t.ends - t.now).ceil().max(0.0) as u64;
    let full = room < 1.0;
    let retry_after = match (refused && full, quota) {
        (false, _) => 0,
        (true, true) => reset_in.max(1),
        (true, false) => retry_after_secs(count, t.weighted, t.now, f64::from(t.window), t.limit),
    };
    LimitState {
        name: t.name.clone(),
        owner_wide: t.owner_wide,
        quota,
        limit: t.limit,
        used: if quota {
            count
        } else {
            (t.weighted + count as f64).round() as i64
        },
        window_secs: if quota {
            t.period_secs.round().max(1.0) as u64
        } else {
            u64::from(t.window)
        },
        remaining: room.floor().max(0.0) as i64,
        reset_at: t.ends.ceil() as u64,
        reset_in,
        retry_after,
    }
}

/// Seconds until `prev·(1 − x/W) + cur + 1 ≤ limit` holds again, solving for the elapsed
/// share `x` of the current bucket or, when the current bucket alone is full, of the next
/// one (where today's count becomes the weighted previous). Rounded up, at least 1.
fn retry_after_secs(current: i64, weighted: f64, now: f64, window: f64, limit: i64) -> u64 {
    let limit = limit as f64;
    let cur = current as f64;
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

impl LimitState {
    /// The name headers, errors and `/me` show.
    pub fn label(&self) -> String {
        if self.owner_wide {
            format!("user.{}", self.name)
        } else {
            self.name.to_string()
        }
    }

    fn write_label(&self, out: &mut String) {
        if self.owner_wide {
            out.push_str("user.");
        }
        out.push_str(&self.name);
    }
}

impl Decision {
    fn shown(&self) -> Option<&LimitState> {
        self.states.get(self.shown)
    }

    /// The 429 for a refused request: which limit refused, `Retry-After` until it admits
    /// again, and the limit headers.
    pub fn refusal(&self) -> Reply {
        let (name, quota, retry) = match self.shown() {
            Some(s) => (s.label(), s.quota, s.retry_after.max(1)),
            None => (String::new(), false, 1),
        };
        let err = if quota {
            Error::QuotaExceeded {
                retry_after: retry,
                limit: name,
            }
        } else {
            Error::RateLimited {
                retry_after: retry,
                limit: name,
            }
        };
        let mut reply = Reply::error(&err);
        self.add_headers(&mut reply);
        reply
    }

    /// The IETF draft's `RateLimit-Policy` (every limit and quota) and `RateLimit` (the
    /// shown one), and the classic `X-RateLimit-*` trio describing the shown one.
    pub fn add_headers(&self, reply: &mut Reply) {
        let Some(s) = self.shown() else {
            return;
        };
        reply.header("X-RateLimit-Limit", s.limit.to_string());
        reply.header("X-RateLimit-Remaining", s.remaining.to_string());
        reply.header("X-RateLimit-Reset", s.reset_at.to_string());
        use std::fmt::Write;
        let mut policy = String::with_capacity(32 * self.states.len());
        for (i, p) in self.states.iter().enumerate() {
            policy.push_str(if i == 0 { "\"" } else { ", \"" });
            p.write_label(&mut policy);
            let _ = write!(policy, "\";q={};w={}", p.limit, p.window_secs);
        }
        reply.header("RateLimit-Policy", policy);
        let mut now = String::from("\"");
        s.write_label(&mut now);
        let _ = write!(now, "\";r={};t={}", s.remaining, s.reset_in);
        reply.header("RateLimit", now);
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

/// A limit decision; none because the counter was unreachable and the policy is
/// fail-open; or none because nothing limits the key (a plan without limits or quota).
pub enum Limit {
    Decided(Decision),
    Degraded,
    Unlimited,
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
    pub fn check(
        &self,
        health: &DbHealth,
        key_id: i64,
        user_id: i64,
        limits: &Limits,
    ) -> Result<Limit> {
        if limits.is_empty() {
            return Ok(Limit::Unlimited);
        }
        // A lease admits without the database, also while it cannot be reached.
        let c = &self.counters;
        let demand = match c.leases.admit(key_id, user_id, limits) {
            Ok(taken) => return decide_member(&taken, 0).map(Limit::Decided),
            Err(demand) => demand,
        };
        match health.call(|| c.check_in_round(key_id, user_id, limits, demand)) {
            Ok(d) => Ok(Limit::Decided(d)),
            Err(Error::DatabaseUnavailable) if self.fail_open => Ok(Limit::Degraded),
            Err(e) => Err(e),
        }
    }
}

impl Limit {
    /// The 429 to answer, if the request is over a limit or quota.
    pub fn refusal(&self, metrics: &Metrics) -> Option<Reply> {
        match self {
            Limit::Decided(d) if !d.allowed => {
                metrics.rate_limited();
                Some(d.refusal())
            }
            _ => None,
        }
    }

    /// Whether the limit phase admitted the request.
    pub fn admitted(&self) -> bool {
        match self {
            Limit::Decided(d) => d.allowed,
            Limit::Degraded | Limit::Unlimited => true,
        }
    }

    pub fn add_headers(&self, limiter: &Limiter, reply: &mut Reply) {
        match self {
            Limit::Decided(d) => d.add_headers(reply),
            Limit::Degraded => {
                limiter.degraded.fetch_add(1, Ordering::Relaxed);
                reply.header("X-RateLimit-Degraded", "1");
            }
            Limit::Unlimited => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::policy::{Check, QUOTA_NAME};
    use crate::store::counters::Subject;

    fn check(name: &str, window_secs: u32, limit: i64) -> Check {
        crate::gateway::policy::window_check(name.into(), window_secs, limit)
    }

    fn taken(name: &str, window: u32, limit: i64, admitted: i64, before: i64) -> Taken {
        Taken {
            admitted,
            leased: 0,
            bucket: 17,
            owner_wide: false,
            name: name.into(),
            window,
            limit,
            before,
            weighted: 0.0,
            ends: 1_080.0,
            period_secs: 60.0,
            now: 1_030.0,
        }
    }

    #[test]
    fn a_batch_has_one_entry_per_key_and_numbers_each_keys_requests_from_zero() {
        let mut p = Pending::default();
        let joins: Vec<(usize, i32)> = [7, 9, 7, 7, 3, 9]
            .iter()
            .map(|&k| {
                let limits = Limits {
                    key: vec![check("default", 60, 100 + k)].into(),
                    ..Default::default()
                };
                p.join(k, 1, &limits, 1, Demand::default())
            })
            .collect();
        assert_eq!(joins, [(0, 0), (1, 0), (0, 1), (0, 2), (2, 0), (1, 1)]);
        let e = &p.entries;
        assert_eq!(e.keys, [7, 9, 3]);
        assert_eq!(e.counts, [3, 2, 1]);
        let limits: Vec<i64> = e.key_checks.iter().map(|c| c[0].limit).collect();
        assert_eq!(limits, [107, 109, 103]);
    }

    #[test]
    fn a_users_owner_wide_checks_are_sent_once_per_batch() {
        let mut p = Pending::default();
        let limits = Limits {
            key: vec![check("default", 60, 10)].into(),
            user: vec![check("minute", 60, 15)].into(),
            ..Default::default()
        };
        p.join(2, 5, &limits, 1, Demand::default());
        p.join(1, 5, &limits, 1, Demand::default());
        assert_eq!(
            p.entries.subjects(),
            [(Subject::Key, 1), (Subject::Key, 2), (Subject::User, 5)]
        );
    }

    #[test]
    fn admitted_request_reports_what_is_left_of_the_tightest_limit() {
        // 30 s into a 60 s bucket, previous bucket weighted 5, 2 counted before this one.
        let mut minute = taken("minute", 60, 10, 1, 2);
        minute.weighted = 5.0;
        let day = taken("day", 86_400, 1_000, 1, 2);
        let d = decide_member(&[minute, day], 0).unwrap();
        assert!(d.allowed);
        assert_eq!(d.shown, 0);
        assert_eq!(d.states[0].remaining, 2);
        assert_eq!(d.states[0].reset_at, 1_080);
        assert_eq!(d.states[0].reset_in, 50);
        assert_eq!(d.states[1].remaining, 997);
    }

    #[test]
    fn group_members_take_consecutive_positions_and_the_rest_are_refused() {
        // limit 10, 7 already counted, a group of 5 arrives: 3 admitted (positions 8..10).
        let t = taken("default", 60, 10, 3, 7);
        let d: Vec<Decision> = (0..5)
            .map(|me| decide_member(std::slice::from_ref(&t), me).unwrap())
            .collect();
        assert_eq!(
            d.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert_eq!(
            d.iter().map(|d| d.states[0].remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0, 0]
        );
        assert!(d[3].states[0].retry_after >= 1);
    }

    #[test]
    fn a_full_quota_refuses_until_its_period_ends_and_names_itself() {
        let quota = Taken {
            window: 0,
            ends: 2_000.0,
            ..taken(QUOTA_NAME, 0, 5, 0, 5)
        };
        let minute = taken("minute", 60, 100, 0, 3);
        let d = decide_member(&[minute, quota], 0).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.states[d.shown].label(), "quota");
        assert_eq!(d.states[d.shown].retry_after, 970);
        let body = d.refusal().json_body();
        assert_eq!(body["error"]["code"], "quota_exceeded");
        assert_eq!(body["error"]["limit"], "quota");
    }

    #[test]
    fn every_policy_is_listed_and_the_closest_is_reported() {
        let burst = taken("burst", 1, 10, 1, 8);
        let mut user = taken("minute", 60, 600, 1, 100);
        user.owner_wide = true;
        let d = decide_member(&[burst, user], 0).unwrap();
        let mut reply = Reply::empty(200);
        d.add_headers(&mut reply);
        let h = |n: &str| {
            let found = reply.headers.iter().find(|(k, _)| k == n);
            found.map(|(_, v)| v.clone()).unwrap_or_default()
        };
        assert_eq!(
            h("RateLimit-Policy"),
            "\"burst\";q=10;w=1, \"user.minute\";q=600;w=60"
        );
        assert_eq!(h("RateLimit"), "\"burst\";r=1;t=50");
        assert_eq!(h("X-RateLimit-Limit"), "10");
    }

    #[test]
    fn refused_request_waits_until_the_previous_bucket_has_slid_far_enough() {
        // 10 s into the bucket, previous bucket had 6 (weighted 5), 5 now, limit 10:
        // needs 6·(1 − x/60) ≤ 4, x ≥ 20 s, so 10 s from now.
        assert_eq!(
            retry_after_secs(5, 6.0 * (50.0 / 60.0), 1_210.0, 60.0, 10),
            10
        );
    }

    #[test]
    fn full_current_bucket_waits_into_the_next_one() {
        // limit 5, 5 used now, 20 s into the bucket: next bucket needs 5·(1 − x/60) + 1 ≤ 5,
        // x ≥ 12 s, so 40 + 12 s.
        assert_eq!(retry_after_secs(5, 0.0, 1_220.0, 60.0, 5), 52);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert!(retry_after_secs(0, 1.0, 1_259.9, 60.0, 1) >= 1);
    }
}
