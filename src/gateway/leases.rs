//! Leases: a replica's share of a key's room, counted in Postgres ahead of need, from
//! which it admits requests without a round trip (keys and plans with `counting: "lease"`,
//! the default; docs/limits.md#leases).
//!
//! A lease is N units that a counting round added to the current bucket of every limit of
//! the key and its user and to their quotas' counts, exactly as N admitted requests would
//! be (`counting.rs` grants it after the round's own requests, from what room is left). The
//! replica then admits up to N requests from it locally. That keeps the guarantee of exact
//! counting, never more than a limit across all replicas, because:
//! - every request admitted from a lease was counted, before it arrived, by a round that
//!   found room for it under every check (the count only drops when unused units are
//!   given back, and the sliding estimate's weighted previous bucket only shrinks as time
//!   passes within a bucket);
//! - a unit admits only within the buckets and periods it was counted in: the lease
//!   expires at the earliest of their ends, measured from an instant taken before the
//!   round was sent (so a little early, never late, on this replica's monotonic clock);
//! - units are given back only when unused, and taken off the bucket they were counted in
//!   (or its successor's previous count, once the row has moved on one bucket).
//!
//! What a lease costs is under-admission: units one replica holds are refused to the
//! others until it uses them or gives them back (when they idle `LEASE_IDLE`, when their
//! bucket ends, or when the key's limits change). A replica that dies holding a lease never
//! gives it back: for sliding limits the units count in their bucket and, weighted down,
//! in the next, so they are gone by the end of the bucket after the one they were counted
//! in; a quota keeps them as used until its period ends. Sizes keep this small: a lease is
//! the key's rate on this replica over `TOLLGATE_LEASE_HORIZON_MS`, at most `LEASE_SHARE`
//! of the room left, and none is granted below `TOLLGATE_LEASE_MIN_ROOM` of room.

use super::counting::{Held, Taken};
use super::policy::{Check, Limits};
use crate::config::{LEASE_FIRST_HITS, LEASE_FIRST_SPAN, LEASE_IDLE, LEASE_KEYS_MAX, LEASE_SWEEP};
use crate::store::counters::Subject;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Units to count with a key's next round: a lease wanted, and units given back.
#[derive(Debug, Default)]
pub struct Demand {
    pub want: i64,
    pub returns: Vec<(Held, i64)>,
}

/// A round the keeper runs for one key: a refill, units given back, or both.
pub struct Job {
    pub key: i64,
    pub user: i64,
    pub limits: Limits,
    pub demand: Demand,
}

/// What one round granted one key: its answer and the checks it was counted under.
pub struct Grant {
    pub key: i64,
    pub user: i64,
    pub key_checks: Arc<[Check]>,
    pub user_checks: Arc<[Check]>,
    pub taken: Arc<[Taken]>,
}

/// Units held for one key, counted in `held`'s buckets.
struct Lease {
    units: i64,
    held: Vec<Held>,
    /// Before the earliest end of those buckets and periods.
    expires: Instant,
    /// Each check as the granting round left it, `before` being its count with every unit
    /// of the lease included; `now` the database's clock then.
    snapshot: Vec<Taken>,
    granted_at: Instant,
    /// A refill is asked for once `units` falls to this.
    low: i64,
}

/// What a replica knows of one key.
struct Local {
    user: i64,
    key_checks: Arc<[Check]>,
    user_checks: Arc<[Check]>,
    lease: Option<Lease>,
    /// Unused units to give back with the key's next round.
    owed: Vec<(Held, i64)>,
    /// Requests since `since`, and the rate measured over the last full horizon (or, for
    /// the first, over the key's first `LEASE_FIRST_HITS` requests).
    hits: u32,
    since: Instant,
    rate: f64,
    /// Whether `rate` is the early measure of the first requests, not a full horizon's.
    first: bool,
    last_used: Instant,
    /// Rounds in flight that may grant this key a lease.
    granting: u32,
    refilling: bool,
}

impl Local {
    fn same_checks(&self, limits: &Limits) -> bool {
        let same = |a: &Arc<[Check]>, b: &Arc<[Check]>| Arc::ptr_eq(a, b) || a == b;
        same(&self.key_checks, &limits.key) && same(&self.user_checks, &limits.user)
    }

    /// Moves the lease's unused units to `owed`.
    fn give_back(&mut self) {
        if let Some(l) = self.lease.take() {
            if l.units > 0 {
                self.owed.extend(l.held.into_iter().map(|h| (h, l.units)));
            }
        }
    }
}

pub struct Leases {
    /// `TOLLGATE_LEASE_HORIZON_MS`; zero: no leases.
    horizon: Duration,
    pub min_room: i64,
    map: Mutex<HashMap<i64, Local>>,
    /// Signalled when a granting round has installed (or failed to install) its leases.
    granted: Condvar,
    refills: (Sender<i64>, Receiver<i64>),
    /// Requests admitted from a lease, for /admin/stats.
    pub admitted: AtomicU64,
}

impl Leases {
    pub fn new(horizon: Duration, min_room: i64) -> Leases {
        Leases {
            horizon,
            min_room,
            map: Mutex::new(HashMap::new()),
            granted: Condvar::new(),
            refills: crossbeam_channel::unbounded(),
            admitted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Local>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on(&self, limits: &Limits) -> bool {
        limits.lease && !self.horizon.is_zero()
    }

    /// Admits one request of `key` from its lease: the checks as this replica last saw
    /// them (for the headers), or what the key's round must carry when the lease cannot.
    pub fn admit(
        &self,
        key: i64,
        user: i64,
        limits: &Limits,
    ) -> std::result::Result<Vec<Taken>, Demand> {
        if !self.on(limits) {
            return Err(Demand::default());
        }
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= LEASE_KEYS_MAX && !map.contains_key(&key) {
            // Full of busy keys (the keeper forgets idle ones): this one is counted exactly.
            return Err(Demand::default());
        }
        let local = map.entry(key).or_insert_with(|| Local {
            user,
            key_checks: limits.key.clone(),
            user_checks: limits.user.clone(),
            lease: None,
            owed: Vec::new(),
            hits: 0,
            since: now,
            rate: 0.0,
            first: false,
            last_used: now,
            granting: 0,
            refilling: false,
        });
        if now.duration_since(local.last_used) >= self.horizon {
            // Idle a whole horizon: whatever rate it had says nothing now; measured afresh.
            local.hits = 0;
            local.since = now;
            local.rate = 0.0;
            local.first = false;
        }
        local.hits += 1;
        local.last_used = now;
        let elapsed = now.duration_since(local.since);
        if elapsed >= self.horizon {
            local.rate = f64::from(local.hits) / elapsed.as_secs_f64();
            local.hits = 0;
            local.since = now;
            local.first = false;
        } else if local.rate == 0.0
            && local.hits >= LEASE_FIRST_HITS
            && elapsed >= self.horizon / LEASE_FIRST_SPAN
        {
            // A key new to this replica, or back from idling, is measured early, from the
            // intervals between its first requests, so that a busy key is not counted one
            // round at a time for a whole horizon first; until a full horizon measures it,
            // its leases are capped by the requests it has sent (`want`).
            local.rate = f64::from(local.hits - 1) / elapsed.as_secs_f64();
            local.first = true;
        }
        if !local.same_checks(limits) {
            // The key's limits changed: what was leased under the old ones goes back.
            local.give_back();
            local.key_checks = limits.key.clone();
            local.user_checks = limits.user.clone();
            local.user = user;
        } else if let Some(taken) = take_one(local, now) {
            if local.lease.as_ref().is_some_and(|l| l.units <= l.low) && !local.refilling {
                local.refilling = true;
                let _ = self.refills.0.send(key);
            }
            self.admitted.fetch_add(1, Ordering::Relaxed);
            return Ok(taken);
        } else if local.lease.as_ref().is_some_and(|l| now >= l.expires) {
            local.give_back();
        }
        Err(Demand {
            want: self.want(local),
            returns: std::mem::take(&mut local.owed),
        })
    }

    /// After the database refused a request of `key`: its own lease may hold units a
    /// round of this replica counted meanwhile (a refill granted just before), which
    /// exact counting would have admitted. Waits for rounds granting the key to install
    /// their leases, then admits from the lease if it can.
    pub fn admit_refused(&self, key: i64, limits: &Limits, wait: Duration) -> Option<Vec<Taken>> {
        if !self.on(limits) {
            return None;
        }
        let deadline = Instant::now() + wait;
        let mut map = self.lock();
        loop {
            let granting = map.get(&key).map_or(0, |l| l.granting);
            let now = Instant::now();
            if granting == 0 || now >= deadline {
                break;
            }
            map = self
                .granted
                .wait_timeout(map, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let local = map.get_mut(&key).filter(|l| l.same_checks(limits))?;
        let taken = take_one(local, Instant::now())?;
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Some(taken)
    }

    fn want(&self, local: &Local) -> i64 {
        // Rounded down: a key seeing less than a request a horizon is not leased (a
        // lease of one unit would only add the round that gives it back).
        let want = (local.rate * self.horizon.as_secs_f64()).floor() as i64;
        // Measured early, a burst would look like a high rate: no more than it has sent.
        if local.first {
            want.min(i64::from(local.hits))
        } else {
            want
        }
    }

    /// Notes rounds in flight that may grant these keys a lease.
    pub fn granting(&self, keys: &[i64]) {
        let mut map = self.lock();
        for k in keys {
            if let Some(l) = map.get_mut(k) {
                l.granting += 1;
            }
        }
    }

    /// A round has ended (answered or not): installs the leases it granted, each with
    /// `sent` taken before the round was sent, and lets refused requests waiting on the
    /// keys in `was_granting` look again.
    pub fn granted(&self, sent: Instant, grants: Vec<Grant>, was_granting: &[i64]) {
        let mut map = self.lock();
        for g in grants {
            let units = g.taken.first().map_or(0, |t| t.leased);
            let Some(local) = map.get_mut(&g.key) else {
                continue;
            };
            let Some(held) = held(&g) else {
                continue;
            };
            let same = Arc::ptr_eq(&local.key_checks, &g.key_checks)
                || (local.key_checks == g.key_checks && local.user_checks == g.user_checks);
            if units <= 0 {
                continue;
            }
            if !same {
                // The key's limits changed while the round ran: give these back.
                local.owed.extend(held.into_iter().map(|h| (h, units)));
                continue;
            }
            let left = g
                .taken
                .iter()
                .map(|t| t.ends - t.now)
                .fold(f64::INFINITY, f64::min)
                .max(0.0);
            let expires = sent + Duration::from_secs_f64(left.min(1e9));
            let mut units = units;
            match local.lease.take() {
                // Counted in the same buckets: the old units are as good as the new.
                Some(old) if old.held == held => units += old.units,
                Some(old) => {
                    local.lease = Some(old);
                    local.give_back();
                }
                None => {}
            }
            let snapshot = g
                .taken
                .iter()
                .map(|t| Taken {
                    before: t.before + t.admitted + t.leased,
                    ..t.clone()
                })
                .collect();
            local.lease = Some(Lease {
                units,
                held,
                expires,
                snapshot,
                granted_at: Instant::now(),
                low: units / 2,
            });
        }
        for k in was_granting {
            if let Some(l) = map.get_mut(k) {
                l.granting = l.granting.saturating_sub(1);
            }
        }
        self.granted.notify_all();
    }

    /// Keys whose refill was asked for by a request, waiting until `next_sweep` for the
    /// first; and once `next_sweep` has come (it then moves `LEASE_SWEEP` on), every lease
    /// idle for `LEASE_IDLE` or past its expiry given back, with whatever any key owes. The
    /// keeper runs each as a round. A refill looks up its own key only: a sweep of every key
    /// for each refill held the lock every request takes for as long as the map is big
    /// (docs/performance.md).
    pub fn due(&self, next_sweep: &mut Instant) -> Vec<Job> {
        let wait = next_sweep.saturating_duration_since(Instant::now());
        let mut asked: Vec<i64> = self.refills.1.recv_timeout(wait).into_iter().collect();
        asked.extend(self.refills.1.try_iter());
        asked.sort_unstable();
        asked.dedup();
        let now = Instant::now();
        let mut map = self.lock();
        let mut jobs = Vec::new();
        for &key in &asked {
            if let Some(local) = map.get_mut(&key) {
                local.refilling = false;
                let want = self.want(local);
                if want > 0 || !local.owed.is_empty() {
                    jobs.push(job(key, local, want));
                }
            }
        }
        if now < *next_sweep {
            return jobs;
        }
        *next_sweep = now + LEASE_SWEEP;
        if map.len() >= LEASE_KEYS_MAX / 2 {
            forget_idle(&mut map, now);
        }
        for (&key, local) in map.iter_mut() {
            if asked.binary_search(&key).is_ok() {
                continue;
            }
            let stale = local.lease.as_ref().is_some_and(|l| {
                now >= l.expires || now.duration_since(local.last_used) >= LEASE_IDLE
            });
            if stale {
                local.give_back();
            }
            if !local.owed.is_empty() {
                jobs.push(job(key, local, 0));
            }
        }
        jobs
    }

    /// Every lease given back (at shutdown): the rounds that take their units off.
    pub fn all_back(&self) -> Vec<Job> {
        let mut map = self.lock();
        let mut jobs = Vec::new();
        for (&key, local) in map.iter_mut() {
            local.give_back();
            if !local.owed.is_empty() {
                jobs.push(job(key, local, 0));
            }
        }
        jobs
    }
}

/// A keeper's round for `key`: `want` units, and what the key owes back.
fn job(key: i64, local: &mut Local, want: i64) -> Job {
    Job {
        key,
        user: local.user,
        limits: Limits {
            plan_id: None,
            key: local.key_checks.clone(),
            user: local.user_checks.clone(),
            lease: true,
        },
        demand: Demand {
            want,
            returns: std::mem::take(&mut local.owed),
        },
    }
}

/// Takes one unit of the key's lease if it has one and is not past its expiry: the
/// checks as they stand for this request.
fn take_one(local: &mut Local, now: Instant) -> Option<Vec<Taken>> {
    let lease = local
        .lease
        .as_mut()
        .filter(|l| l.units > 0 && now < l.expires)?;
    let since = now.duration_since(lease.granted_at).as_secs_f64();
    let taken = lease
        .snapshot
        .iter()
        .map(|t| Taken {
            admitted: 1,
            before: t.before - lease.units,
            now: t.now + since,
            ..t.clone()
        })
        .collect();
    lease.units -= 1;
    Some(taken)
}

/// Where a lease was counted, check by check: in the checks its round counted it under.
fn held(g: &Grant) -> Option<Vec<Held>> {
    if g.taken.len() != g.key_checks.len() + g.user_checks.len() {
        return None;
    }
    let subjects = g
        .key_checks
        .iter()
        .map(|c| (Subject::Key, g.key, c))
        .chain(g.user_checks.iter().map(|c| (Subject::User, g.user, c)));
    Some(
        subjects
            .zip(g.taken.iter())
            .map(|((subject, owner, c), t)| Held {
                subject,
                owner,
                slot: c.slot.clone(),
                quota: c.period.is_some(),
                bucket: t.bucket,
            })
            .collect(),
    )
}

/// Forgets keys with nothing leased, owed or in flight that have been idle a while, so
/// the map keeps room under `LEASE_KEYS_MAX` for keys that become busy.
fn forget_idle(map: &mut HashMap<i64, Local>, now: Instant) {
    map.retain(|_, l| {
        l.lease.is_some()
            || !l.owed.is_empty()
            || l.granting > 0
            || now.duration_since(l.last_used) < LEASE_IDLE
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::policy::window_check;

    fn limits() -> Limits {
        Limits {
            key: vec![window_check("minute".into(), 60, 1_000)].into(),
            lease: true,
            ..Default::default()
        }
    }

    /// What a round answers for `key` granting `leased` units, 7 counted before, its
    /// bucket ending `left` seconds after the round read the clock.
    fn grant(l: &Limits, key: i64, leased: i64, left: f64) -> Grant {
        Grant {
            key,
            user: 1,
            key_checks: l.key.clone(),
            user_checks: l.user.clone(),
            taken: vec![Taken {
                admitted: 1,
                leased,
                bucket: 100,
                owner_wide: false,
                name: "minute".into(),
                window: 60,
                limit: 1_000,
                before: 7,
                weighted: 0.0,
                ends: 6_060.0,
                period_secs: 60.0,
                now: 6_060.0 - left,
            }]
            .into(),
        }
    }

    #[test]
    fn a_lease_admits_its_units_asks_for_more_at_half_and_shows_its_own_count() {
        let (leases, l) = (Leases::new(Duration::from_millis(100), 4), limits());
        assert!(leases.admit(7, 1, &l).is_err(), "no lease yet");
        leases.granting(&[7]);
        leases.granted(Instant::now(), vec![grant(&l, 7, 4, 30.0)], &[7]);
        // 7 before, the round's own request, then 4 leased: this replica's next is 9th.
        let used: Vec<i64> = (0..4)
            .map(|_| leases.admit(7, 1, &l).unwrap()[0].before + 1)
            .collect();
        assert_eq!(used, [9, 10, 11, 12]);
        assert_eq!(leases.refills.1.try_iter().collect::<Vec<_>>(), [7]);
        let demand = leases.admit(7, 1, &l).unwrap_err();
        assert!(demand.returns.is_empty(), "nothing left to give back");
        assert_eq!(leases.admitted.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn an_expired_lease_admits_nothing_and_its_units_go_back_where_they_were_counted() {
        let (leases, l) = (Leases::new(Duration::from_millis(100), 4), limits());
        assert!(leases.admit(7, 1, &l).is_err());
        // The bucket ended as the round read the clock: the lease is born expired.
        leases.granted(Instant::now(), vec![grant(&l, 7, 5, 0.0)], &[]);
        let demand = leases.admit(7, 1, &l).unwrap_err();
        let held = Held {
            subject: Subject::Key,
            owner: 7,
            slot: "minute/60".into(),
            quota: false,
            bucket: 100,
        };
        assert_eq!(demand.returns, [(held, 5)]);
        assert!(leases.admit(7, 1, &l).is_err());
    }

    #[test]
    fn changed_limits_give_the_lease_back_and_an_exact_key_never_touches_it() {
        let (leases, l) = (Leases::new(Duration::from_millis(100), 4), limits());
        assert!(leases.admit(7, 1, &l).is_err());
        leases.granted(Instant::now(), vec![grant(&l, 7, 5, 30.0)], &[]);
        let exact = Limits {
            lease: false,
            ..l.clone()
        };
        assert!(leases.admit(7, 1, &exact).unwrap_err().returns.is_empty());
        let lowered = Limits {
            key: vec![window_check("minute".into(), 60, 500)].into(),
            ..l
        };
        let demand = leases.admit(7, 1, &lowered).unwrap_err();
        assert_eq!(demand.returns.len(), 1);
        assert_eq!(demand.returns[0].1, 5);
    }

    /// Before `next_sweep` only the keys that asked for a refill get a round; once it has
    /// come, an idle key's lease goes back, and a key that just asked keeps its own.
    #[test]
    fn a_refill_runs_for_its_own_key_and_idle_leases_go_back_only_when_the_sweep_is_due() {
        let (leases, l) = (Leases::new(Duration::from_millis(100), 4), limits());
        for key in [7, 8] {
            assert!(leases.admit(key, 1, &l).is_err(), "no lease yet");
            leases.granted(Instant::now(), vec![grant(&l, key, 4, 30.0)], &[]);
        }
        let long_ago = Instant::now().checked_sub(LEASE_IDLE * 2).unwrap();
        {
            let mut map = leases.lock();
            map.get_mut(&7).unwrap().rate = 100.0; // a refill of 10 units a horizon
            map.get_mut(&8).unwrap().last_used = long_ago;
        }
        // Key 7 down to half its lease: it asks for a refill.
        for _ in 0..2 {
            leases.admit(7, 1, &l).unwrap();
        }
        let mut next_sweep = Instant::now() + Duration::from_secs(3600);
        let jobs = leases.due(&mut next_sweep);
        let keys: Vec<i64> = jobs.iter().map(|j| j.key).collect();
        assert_eq!(keys, [7]);
        assert_eq!(jobs[0].demand.want, 10);
        assert!(
            leases.lock()[&8].lease.is_some(),
            "no sweep before it is due"
        );

        // Due, with key 7 idle too but asking again: 8's 4 units go back, 7 is skipped.
        {
            let mut map = leases.lock();
            let seven = map.get_mut(&7).unwrap();
            seven.last_used = long_ago;
            seven.refilling = true;
        }
        leases.refills.0.send(7).unwrap();
        next_sweep = Instant::now();
        let jobs = leases.due(&mut next_sweep);
        let keys: Vec<(i64, i64, usize)> = jobs
            .iter()
            .map(|j| (j.key, j.demand.want, j.demand.returns.len()))
            .collect();
        assert_eq!(keys, [(7, 10, 0), (8, 0, 1)]);
        assert_eq!(jobs[1].demand.returns[0].1, 4);
        let map = leases.lock();
        assert!(map[&7].lease.is_some() && map[&8].lease.is_none());
        assert!(
            next_sweep > Instant::now(),
            "the next sweep is LEASE_SWEEP on"
        );
    }
}
