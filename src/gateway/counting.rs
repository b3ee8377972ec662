//! One counting round for a batch of requests: from every key's and user's counter row
//! (locked for the round, `store::counters::count`) and the database's clock, how many of
//! each key's requests are admitted, where each of its limits stands, and the rows to write
//! back. Pure arithmetic: the batching around it is in `ratelimit.rs`.
//!
//! A key's requests are admitted up to the smallest room left under its own checks; then
//! the keys of one user, in batch order, share the smallest room left under the user's
//! checks. So every limit and quota admits every admitted request, a refused request counts
//! in none, and no count passes its limit.
//!
//! A round also gives back the unused units of leases (`leases.rs`) and grants new ones:
//! units given back are taken off the bucket they were counted in first; units granted
//! come after every request of the round, from what room is left, and are counted like
//! admitted requests, so a lease never lets a count pass its limit either.

use super::policy::Check;
use crate::config::LEASE_SHARE;
use crate::store::counters::{Row, Subject, QUOTA_RESET_STEP};
use crate::store::plans::Period;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// The requests of one batch: entry `i` is `counts[i]` requests of key `keys[i]` (of user
/// `users[i]`), counted against `key_checks[i]` and its user's `user_checks`.
#[derive(Default)]
pub struct Entries {
    pub keys: Vec<i64>,
    pub users: Vec<i64>,
    pub counts: Vec<i32>,
    pub key_checks: Vec<Arc<[Check]>>,
    /// Each user's owner-wide checks, as its first request in the batch saw them.
    pub user_checks: HashMap<i64, Arc<[Check]>>,
    /// Lease units wanted for each entry's key beyond its requests (0: none).
    pub wants: Vec<i64>,
    /// Leased units given back: taken off their buckets before anything is admitted.
    pub returns: Vec<(Held, i64)>,
    /// A lease is granted only while at least this much room is left after the round's
    /// requests (`TOLLGATE_LEASE_MIN_ROOM`).
    pub min_room: i64,
}

/// Where a lease's units were counted for one check: the subject's row, the check's slot
/// and the bucket (the quota: the period's start) they went into.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub subject: Subject,
    pub owner: i64,
    pub slot: Arc<str>,
    pub quota: bool,
    pub bucket: i64,
}

/// One check's answer for one entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    /// Requests of the entry admitted (the same on each of its checks).
    pub admitted: i64,
    /// Lease units granted to the entry's key, counted after its admitted requests.
    pub leased: i64,
    /// The bucket counted in (`floor(now / window)`; the quota: its period's start).
    pub bucket: i64,
    /// A user's (owner-wide) check rather than the key's own.
    pub owner_wide: bool,
    pub name: Arc<str>,
    /// Seconds; 0 for the quota.
    pub window: u32,
    pub limit: i64,
    /// The count before this entry's requests (after earlier entries of the same user).
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

/// Where one check stands before the round.
struct Eval {
    /// How many more requests it admits (may be negative after a limit was lowered).
    room: i64,
    cur: i64,
    prev: i64,
    weighted: f64,
    /// The bucket (`floor(now / window)`), or the quota period's start.
    bucket: i64,
    starts: f64,
    ends: f64,
}

impl Entries {
    /// Every key and user whose row the round must lock: those with checks, and those
    /// given back units.
    pub fn subjects(&self) -> Vec<(Subject, i64)> {
        let keys = self
            .keys
            .iter()
            .zip(&self.key_checks)
            .filter(|(_, c)| !c.is_empty())
            .map(|(k, _)| (Subject::Key, *k));
        let users = self
            .user_checks
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(u, _)| (Subject::User, *u));
        let returns = self.returns.iter().map(|(h, _)| (h.subject, h.owner));
        let mut all: Vec<(Subject, i64)> = keys.chain(users).chain(returns).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The round: each entry's answer, one `Taken` per check (key's first, then its
    /// user's), and the rows that changed.
    pub fn allocate(&self, rows: Vec<Row>, now: f64) -> (Vec<Vec<Taken>>, Vec<Row>) {
        let mut rows: HashMap<(Subject, i64), Row> =
            rows.into_iter().map(|r| ((r.kind, r.owner), r)).collect();
        let mut touched: Vec<(Subject, i64)> = Vec::new();
        for (held, units) in &self.returns {
            if let Some(r) = rows.get_mut(&(held.subject, held.owner)) {
                give_back(r, held, *units);
                touched.push((held.subject, held.owner));
            }
        }
        let rows = rows;
        let row = |s: Subject, id: i64| rows.get(&(s, id));
        let key_evals: Vec<Vec<Eval>> = self
            .keys
            .iter()
            .zip(&self.key_checks)
            .map(|(k, checks)| evals(checks, row(Subject::Key, *k), now))
            .collect();
        let user_evals: HashMap<i64, Vec<Eval>> = self
            .user_checks
            .iter()
            .map(|(u, checks)| (*u, evals(checks, row(Subject::User, *u), now)))
            .collect();
        let room = |e: &[Eval]| e.iter().map(|e| e.room).min();

        // Each user's room is shared by its keys in batch order.
        let mut taken_before: HashMap<i64, i64> = HashMap::new();
        let mut user_added: HashMap<i64, i64> = HashMap::new();
        let mut answers = Vec::with_capacity(self.keys.len());
        let mut admitted_of = Vec::with_capacity(self.keys.len());
        for (i, &user) in self.users.iter().enumerate() {
            let n = i64::from(self.counts[i]);
            let k = room(&key_evals[i]).map_or(n, |r| r.min(n)).max(0);
            let ucap = user_evals.get(&user).and_then(|e| room(e));
            let before = taken_before.entry(user).or_default();
            let (admitted, ubefore) = match ucap {
                Some(cap) => ((cap - *before).clamp(0, k), cap.max(0).min(*before)),
                None => (k, 0),
            };
            *before += k;
            *user_added.entry(user).or_default() += admitted;
            admitted_of.push(admitted);
            let mut answer = Vec::new();
            let key_checks = &*self.key_checks[i];
            answer.extend(taken(key_checks, &key_evals[i], admitted, 0, false, now));
            if let Some(checks) = self.user_checks.get(&user) {
                answer.extend(taken(
                    checks,
                    &user_evals[&user],
                    admitted,
                    ubefore,
                    true,
                    now,
                ));
            }
            answers.push(answer);
        }
        // Leases come after every request of the round: each takes at most its want and
        // `LEASE_SHARE` of the room left under its key's and its user's checks, and none
        // is granted below `min_room`.
        for (i, &user) in self.users.iter().enumerate() {
            let want = self.wants.get(i).copied().unwrap_or(0);
            if want <= 0 {
                continue;
            }
            let key_left = room(&key_evals[i]).map_or(i64::MAX, |r| r - admitted_of[i]);
            let user_left = user_evals
                .get(&user)
                .and_then(|e| room(e))
                .map_or(i64::MAX, |cap| {
                    cap - user_added.get(&user).copied().unwrap_or(0)
                });
            let left = key_left.min(user_left);
            if left == i64::MAX || left < self.min_room.max(1) {
                continue;
            }
            let grant = want.min((left as f64 * LEASE_SHARE).floor() as i64).max(0);
            *user_added.entry(user).or_default() += grant;
            for t in &mut answers[i] {
                t.leased = grant;
            }
        }
        let mut changed = Vec::new();
        for (i, &key) in self.keys.iter().enumerate() {
            let key_checks = &*self.key_checks[i];
            let added = admitted_of[i] + answers[i].first().map_or(0, |t| t.leased);
            if added > 0 && !key_checks.is_empty() {
                let old = row(Subject::Key, key);
                changed.push(updated(
                    Subject::Key,
                    key,
                    old,
                    key_checks,
                    &key_evals[i],
                    added,
                ));
            }
        }
        for (user, added) in user_added {
            if added > 0 {
                if let Some(checks) = self.user_checks.get(&user).filter(|c| !c.is_empty()) {
                    let old = row(Subject::User, user);
                    changed.push(updated(
                        Subject::User,
                        user,
                        old,
                        checks,
                        &user_evals[&user],
                        added,
                    ));
                }
            }
        }
        // A row given units back and not otherwise changed is written as given back.
        for s in touched {
            if !changed.iter().any(|r| (r.kind, r.owner) == s) {
                changed.extend(rows.get(&s).cloned());
            }
        }
        // Rows absent from the database (deleted a moment ago) are not written.
        changed.retain(|r| rows.contains_key(&(r.kind, r.owner)));
        (answers, changed)
    }
}

/// Takes `units` leased and unused off the bucket they were counted in: the current one,
/// or the previous one if the row has moved on by one; nothing if it has moved further
/// (they no longer count) or the slot is gone. Never below zero.
fn give_back(r: &mut Row, held: &Held, units: i64) {
    if held.quota {
        if r.quota_start == held.bucket {
            r.quota_used = (r.quota_used - units).max(0);
        }
        return;
    }
    let Some(i) = r.names.iter().position(|n| **n == *held.slot) else {
        return;
    };
    if r.buckets[i] == held.bucket {
        r.counts[i] = (r.counts[i] - units).max(0);
    } else if r.buckets[i] == held.bucket + 1 {
        r.prevs[i] = (r.prevs[i] - units).max(0);
    }
}

fn taken<'a>(
    checks: &'a [Check],
    evals: &'a [Eval],
    admitted: i64,
    before: i64,
    owner_wide: bool,
    now: f64,
) -> impl Iterator<Item = Taken> + 'a {
    checks.iter().zip(evals).map(move |(c, e)| Taken {
        admitted,
        leased: 0,
        bucket: e.bucket,
        owner_wide,
        name: c.name.clone(),
        window: c.window_secs,
        limit: c.limit,
        before: e.cur + before,
        weighted: e.weighted,
        ends: e.ends,
        period_secs: e.ends - e.starts,
        now,
    })
}

fn evals(checks: &[Check], row: Option<&Row>, now: f64) -> Vec<Eval> {
    checks.iter().map(|c| eval(c, row, now)).collect()
}

fn eval(c: &Check, row: Option<&Row>, now: f64) -> Eval {
    let Some(row) = row else {
        // No row: the key or user is gone; admit nothing.
        return Eval {
            room: 0,
            cur: 0,
            prev: 0,
            weighted: 0.0,
            bucket: 0,
            starts: now,
            ends: now,
        };
    };
    match c.period {
        Some(period) => {
            let (start, end) = period_bounds(period, c.anchor, now);
            let start_secs = start.timestamp();
            // This period's count, under however many admin resets it has had: the stored
            // value (with its resets) is kept, so units leased before a reset no longer
            // match it.
            let stored = row.quota_start;
            let this_period = stored >= 0 && stored % QUOTA_RESET_STEP == start_secs;
            let cur = if this_period { row.quota_used } else { 0 };
            Eval {
                room: c.limit - cur,
                cur,
                prev: 0,
                weighted: 0.0,
                bucket: if this_period { stored } else { start_secs },
                starts: start_secs as f64,
                ends: end.timestamp() as f64,
            }
        }
        None => {
            let w = f64::from(c.window_secs.max(1));
            let bucket = (now / w).floor() as i64;
            let at = row.names.iter().position(|n| **n == *c.slot);
            let stored = at.map(|i| (row.buckets[i], row.counts[i], row.prevs[i]));
            let (cur, prev) = match stored {
                Some((b, count, prev)) if b == bucket => (count, prev),
                Some((b, count, _)) if b == bucket - 1 => (0, count),
                _ => (0, 0),
            };
            let starts = bucket as f64 * w;
            let weighted = prev as f64 * (1.0 - (now - starts) / w);
            Eval {
                room: (c.limit as f64 - weighted).floor() as i64 - cur,
                cur,
                prev,
                weighted,
                bucket,
                starts,
                ends: starts + w,
            }
        }
    }
}

/// The subject's row after `added` more requests: every current sliding limit in the
/// order of its checks (limits no longer configured are dropped), and the quota's period
/// and count (kept as they were if the subject has no quota now).
fn updated(
    kind: Subject,
    owner: i64,
    old: Option<&Row>,
    checks: &[Check],
    evals: &[Eval],
    added: i64,
) -> Row {
    let mut r = Row {
        kind,
        owner,
        quota_start: old.map_or(0, |o| o.quota_start),
        quota_used: old.map_or(0, |o| o.quota_used),
        ..Default::default()
    };
    for (c, e) in checks.iter().zip(evals) {
        if c.period.is_some() {
            r.quota_start = e.bucket;
            r.quota_used = e.cur + added;
        } else {
            r.names.push(c.slot.to_string());
            r.buckets.push(e.bucket);
            r.counts.push(e.cur + added);
            r.prevs.push(e.prev);
        }
    }
    r
}

/// The quota period that contains `now` (Unix seconds): UTC calendar days and months
/// (`anchor` None), or periods starting at the anchor's time of day (days) and on its day
/// of the month at that time, clamped to the month's length (months: created Jan 31, the
/// February period starts on the 28th, or the 29th in a leap year).
pub fn period_bounds(
    period: Period,
    anchor: Option<DateTime<Utc>>,
    now: f64,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let t = DateTime::<Utc>::from_timestamp(now.floor() as i64, 0).unwrap_or_default();
    let time_of_day = anchor.map_or(Duration::zero(), |a| {
        a.naive_utc() - a.date_naive().and_hms_opt(0, 0, 0).unwrap_or_default()
    });
    let utc = |n: NaiveDateTime| n.and_utc();
    match period {
        Period::Day => {
            let start = (t.naive_utc() - time_of_day)
                .date()
                .and_time(Default::default())
                + time_of_day;
            (utc(start), utc(start + Duration::days(1)))
        }
        Period::Month => {
            let day = anchor.map_or(1, |a| a.day());
            let at = |y: i32, m: u32| month_anchor(y, m, day) + time_of_day;
            let (y, m) = (t.year(), t.month());
            let mut start = at(y, m);
            let (mut sy, mut sm) = (y, m);
            if start > t.naive_utc() {
                (sy, sm) = previous_month(y, m);
                start = at(sy, sm);
            }
            let (ny, nm) = next_month(sy, sm);
            (utc(start), utc(at(ny, nm)))
        }
    }
}

/// Midnight of day `day` of the month, or of the month's last day if it is shorter.
fn month_anchor(year: i32, month: u32, day: u32) -> NaiveDateTime {
    let (ny, nm) = next_month(year, month);
    let last = NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day());
    NaiveDate::from_ymd_opt(year, month, day.min(last))
        .unwrap_or_default()
        .and_time(Default::default())
}

fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 {
        (y + 1, 1)
    } else {
        (y, m + 1)
    }
}

fn previous_month(y: i32, m: u32) -> (i32, u32) {
    if m == 1 {
        (y - 1, 12)
    } else {
        (y, m - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plans::Period;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn bounds(period: Period, anchor: Option<&str>, now: &str) -> (String, String) {
        let (s, e) = period_bounds(period, anchor.map(at), at(now).timestamp() as f64);
        let f = |d: DateTime<Utc>| d.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        (f(s), f(e))
    }

    fn pair(s: &str, e: &str) -> (String, String) {
        (s.into(), e.into())
    }

    #[test]
    fn calendar_periods_are_utc_days_and_months() {
        assert_eq!(
            bounds(Period::Day, None, "2027-02-14T23:59:59Z"),
            pair("2027-02-14T00:00:00Z", "2027-02-15T00:00:00Z")
        );
        assert_eq!(
            bounds(Period::Month, None, "2027-12-31T23:59:59Z"),
            pair("2027-12-01T00:00:00Z", "2028-01-01T00:00:00Z")
        );
    }

    #[test]
    fn created_months_start_on_the_creation_day_clamped_to_short_months() {
        let jan31 = Some("2027-01-31T10:00:00Z");
        assert_eq!(
            bounds(Period::Month, jan31, "2027-02-28T09:59:59Z"),
            pair("2027-01-31T10:00:00Z", "2027-02-28T10:00:00Z")
        );
        assert_eq!(
            bounds(Period::Month, jan31, "2027-02-28T10:00:00Z"),
            pair("2027-02-28T10:00:00Z", "2027-03-31T10:00:00Z")
        );
        assert_eq!(
            bounds(Period::Month, jan31, "2028-02-29T10:00:00Z"),
            pair("2028-02-29T10:00:00Z", "2028-03-31T10:00:00Z")
        );
        assert_eq!(
            bounds(Period::Month, jan31, "2027-04-30T09:00:00Z"),
            pair("2027-03-31T10:00:00Z", "2027-04-30T10:00:00Z")
        );
        assert_eq!(
            bounds(Period::Month, jan31, "2027-12-31T10:00:00Z"),
            pair("2027-12-31T10:00:00Z", "2028-01-31T10:00:00Z")
        );
        assert_eq!(
            bounds(Period::Month, jan31, "2028-01-15T00:00:00Z"),
            pair("2027-12-31T10:00:00Z", "2028-01-31T10:00:00Z")
        );
    }

    #[test]
    fn created_days_start_at_the_creation_time_of_day() {
        let anchor = Some("2027-01-31T10:00:00Z");
        assert_eq!(
            bounds(Period::Day, anchor, "2027-03-05T09:00:00Z"),
            pair("2027-03-04T10:00:00Z", "2027-03-05T10:00:00Z")
        );
        assert_eq!(
            bounds(Period::Day, anchor, "2027-03-05T10:00:00Z"),
            pair("2027-03-05T10:00:00Z", "2027-03-06T10:00:00Z")
        );
    }

    fn check(name: &str, window_secs: u32, limit: i64) -> Check {
        crate::gateway::policy::window_check(name.into(), window_secs, limit)
    }

    fn row(kind: Subject, owner: i64, slots: &[(&str, i64, i64, i64)]) -> Row {
        Row {
            kind,
            owner,
            names: slots.iter().map(|s| s.0.to_string()).collect(),
            buckets: slots.iter().map(|s| s.1).collect(),
            counts: slots.iter().map(|s| s.2).collect(),
            prevs: slots.iter().map(|s| s.3).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_check_must_have_room_and_a_refused_request_counts_nowhere() {
        // 30 s into bucket 100 of a 60 s window (now = 6030): "minute" has 7 of 10 used,
        // "hour" (bucket 1) 9 of 100: 3 of 5 requests fit.
        let e = Entries {
            keys: vec![7],
            users: vec![1],
            counts: vec![5],
            key_checks: vec![vec![check("minute", 60, 10), check("hour", 3600, 100)].into()],
            ..Default::default()
        };
        let rows = vec![row(
            Subject::Key,
            7,
            &[("minute/60", 100, 7, 0), ("hour/3600", 1, 9, 0)],
        )];
        let (answers, changed) = e.allocate(rows, 6_030.0);
        assert_eq!(answers[0][0].admitted, 3);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].counts, [10, 12]);
    }

    #[test]
    fn the_previous_bucket_slides_and_an_old_bucket_is_forgotten() {
        let e = Entries {
            keys: vec![7],
            users: vec![1],
            counts: vec![1],
            key_checks: vec![vec![check("minute", 60, 10)].into()],
            ..Default::default()
        };
        // Last counted in bucket 99 (8 requests); now 15 s into bucket 100: 8·0.75 = 6.
        let rows = vec![row(Subject::Key, 7, &[("minute/60", 99, 8, 3)])];
        let (answers, changed) = e.allocate(rows.clone(), 6_015.0);
        assert_eq!((answers[0][0].before, answers[0][0].weighted), (0, 6.0));
        assert_eq!(
            (
                changed[0].buckets[0],
                changed[0].counts[0],
                changed[0].prevs[0]
            ),
            (100, 1, 8)
        );
        // Two buckets later nothing of it remains.
        let (answers, _) = e.allocate(rows, 6_135.0);
        assert_eq!((answers[0][0].before, answers[0][0].weighted), (0, 0.0));
    }

    #[test]
    fn a_users_keys_share_its_room_in_batch_order() {
        // User 1 has 5 left this hour; keys 7 and 8 bring 4 requests each.
        let e = Entries {
            keys: vec![7, 8],
            users: vec![1, 1],
            counts: vec![4, 4],
            key_checks: vec![
                vec![check("default", 60, 100)].into(),
                vec![check("default", 60, 100)].into(),
            ],
            user_checks: HashMap::from([(1, vec![check("hour", 3600, 10)].into())]),
            ..Default::default()
        };
        let rows = vec![
            row(Subject::Key, 7, &[]),
            row(Subject::Key, 8, &[]),
            row(Subject::User, 1, &[("hour/3600", 1, 5, 0)]),
        ];
        let (answers, changed) = e.allocate(rows, 3_700.0);
        assert_eq!((answers[0][0].admitted, answers[1][0].admitted), (4, 1));
        // The second key's user check counts from after the first key's 4.
        assert_eq!(answers[1][1].before, 9);
        let user = changed.iter().find(|r| r.kind == Subject::User).unwrap();
        assert_eq!(user.counts, [10]);
    }

    /// `count` requests of key 7 (user 1), whose one check is a daily quota of `limit`.
    fn day_quota_on_key_7(limit: i64, count: i32) -> Entries {
        let quota = Check {
            name: "quota".into(),
            slot: "quota".into(),
            window_secs: 0,
            limit,
            period: Some(Period::Day),
            anchor: None,
        };
        Entries {
            keys: vec![7],
            users: vec![1],
            counts: vec![count],
            key_checks: vec![vec![quota].into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_quota_keeps_its_count_within_the_period_and_restarts_in_the_next() {
        let e = day_quota_on_key_7(6, 5);
        let mut r = row(Subject::Key, 7, &[]);
        r.quota_start = 86_400;
        r.quota_used = 4;
        let (answers, changed) = e.allocate(vec![r.clone()], 86_400.0 * 1.5);
        assert_eq!(answers[0][0].admitted, 2);
        assert_eq!((changed[0].quota_start, changed[0].quota_used), (86_400, 6));
        let (answers, changed) = e.allocate(vec![r], 86_400.0 * 2.5);
        assert_eq!(answers[0][0].admitted, 5);
        assert_eq!(
            (changed[0].quota_start, changed[0].quota_used),
            (172_800, 5)
        );
    }

    #[test]
    fn a_subject_without_a_row_admits_nothing_and_writes_nothing() {
        let e = Entries {
            keys: vec![7],
            users: vec![1],
            counts: vec![2],
            key_checks: vec![vec![check("default", 60, 100)].into()],
            ..Default::default()
        };
        let (answers, changed) = e.allocate(Vec::new(), 100.0);
        assert_eq!(answers[0][0].admitted, 0);
        assert!(changed.is_empty());
    }

    #[test]
    fn a_lease_comes_after_the_rounds_requests_and_takes_a_share_of_what_is_left() {
        // "minute" has 7 of 1000 used, the user's "hour" 600 of 2000: 3 requests, then a
        // lease of at most a quarter of min(1000 - 10, 2000 - 603) = 247.
        let e = Entries {
            keys: vec![7],
            users: vec![1],
            counts: vec![3],
            key_checks: vec![vec![check("minute", 60, 1000)].into()],
            user_checks: HashMap::from([(1, vec![check("hour", 3600, 2000)].into())]),
            wants: vec![500],
            min_room: 100,
            ..Default::default()
        };
        let rows = vec![
            row(Subject::Key, 7, &[("minute/60", 100, 7, 0)]),
            row(Subject::User, 1, &[("hour/3600", 1, 600, 0)]),
        ];
        let (answers, changed) = e.allocate(rows.clone(), 6_030.0);
        assert_eq!((answers[0][0].admitted, answers[0][0].leased), (3, 247));
        assert_eq!(answers[0][1].leased, 247);
        let count = |k: Subject| changed.iter().find(|r| r.kind == k).unwrap().counts[0];
        assert_eq!((count(Subject::Key), count(Subject::User)), (257, 850));
        // Wanting less takes less; below the minimum room nothing is leased.
        let small = Entries {
            wants: vec![20],
            ..e
        };
        assert_eq!(small.allocate(rows.clone(), 6_030.0).0[0][0].leased, 20);
        let near = Entries {
            min_room: 1_000,
            ..small
        };
        let (answers, changed) = near.allocate(rows, 6_030.0);
        assert_eq!((answers[0][0].admitted, answers[0][0].leased), (3, 0));
        assert_eq!(changed[0].counts, [10]);
    }

    #[test]
    fn units_given_back_leave_the_bucket_they_were_counted_in() {
        let held = |slot: &str, quota: bool, bucket: i64| Held {
            subject: Subject::Key,
            owner: 7,
            slot: slot.into(),
            quota,
            bucket,
        };
        let e = Entries {
            keys: vec![7],
            users: vec![1],
            counts: vec![0],
            key_checks: vec![vec![check("minute", 60, 100), check("hour", 3600, 100)].into()],
            // Bucket 100 is still current for "minute"; "hour" has moved on to bucket 1,
            // so its units are in the previous count; "day" is gone; the quota period 50
            // is over.
            returns: vec![
                (held("minute/60", false, 100), 4),
                (held("hour/3600", false, 0), 5),
                (held("day/86400", false, 0), 9),
                (held("quota", true, 50), 3),
            ],
            ..Default::default()
        };
        let mut r = row(
            Subject::Key,
            7,
            &[("minute/60", 100, 10, 2), ("hour/3600", 1, 1, 8)],
        );
        r.quota_start = 60;
        r.quota_used = 6;
        let (answers, changed) = e.allocate(vec![r], 6_030.0);
        assert_eq!(answers[0][0].admitted, 0);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].counts.clone(), changed[0].prevs.clone()),
            (vec![6, 1], vec![2, 3])
        );
        assert_eq!(changed[0].quota_used, 6);
    }

    #[test]
    fn units_leased_before_an_admin_reset_are_not_given_back_into_the_new_count() {
        let e = day_quota_on_key_7(100, 3);
        // 40 used in the day starting at 86 400 (a lease's units among them), then an
        // admin reset (store::counters::reset_quota): the count is 0 under a new mark.
        let mut r = row(Subject::Key, 7, &[]);
        r.quota_start = 86_400 + QUOTA_RESET_STEP;
        r.quota_used = 0;
        let (answers, changed) = e.allocate(vec![r], 86_400.0 * 1.5);
        assert_eq!(answers[0][0].admitted, 3);
        assert_eq!(answers[0][0].bucket, 86_400 + QUOTA_RESET_STEP);
        let after = changed[0].clone();
        assert_eq!(
            (after.quota_start, after.quota_used),
            (86_400 + QUOTA_RESET_STEP, 3)
        );
        // The lease granted before the reset gives 10 back: not into the new count.
        let back = Entries {
            counts: vec![0],
            returns: vec![(
                Held {
                    subject: Subject::Key,
                    owner: 7,
                    slot: "quota".into(),
                    quota: true,
                    bucket: 86_400,
                },
                10,
            )],
            ..e
        };
        let (_, changed) = back.allocate(vec![after], 86_400.0 * 1.6);
        assert!(changed.iter().all(|r| r.quota_used == 3), "{changed:?}");
    }
}
