//! Which limits and quota a request is counted against: the key's own fields, else its
//! plan's (the key's plan, else its user's plan), and the user's own limits and quota
//! counted across all of the user's keys. Plans are cached here and reloaded when any
//! replica changes one (the `plans` notification, `sync.rs`).

use crate::config::{
    DEFAULT_KEY_RATE_LIMIT, LEASE_BY_DEFAULT, PLAN_MISS_RELOAD_EVERY, RESOLVED_CACHE_MAX,
};
use crate::error::Result;
use crate::store::keys::KeyInfo;
use crate::store::plans::{self, Anchor, Counting, LimitSpec, Period, Plan, Policy, QuotaSpec};
use crate::store::Pool;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// One limit or quota a request is counted against.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The limit's name; `quota` for the quota.
    pub name: Arc<str>,
    /// `<name>/<windowSecs>`: a sliding limit's place in its counter row, so a limit whose
    /// window changes starts from zero instead of inheriting counts of another length.
    pub slot: Arc<str>,
    /// The sliding window in seconds; 0 for the quota.
    pub window_secs: u32,
    pub limit: i64,
    /// The quota's period, and where its periods start (`None`: the UTC calendar).
    pub period: Option<Period>,
    pub anchor: Option<DateTime<Utc>>,
}

/// Everything one key's requests are counted against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// The plan the key's limits or quota came from, if any.
    pub plan_id: Option<i64>,
    /// Counted for this key alone.
    pub key: Arc<[Check]>,
    /// The user's own limits and quota, counted across all of the user's keys.
    pub user: Arc<[Check]>,
    /// Counted from leases (`counting: "lease"`, see `leases.rs`) rather than one request
    /// at a time.
    pub lease: bool,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.key.is_empty() && self.user.is_empty()
    }

    /// The sliding limits alone.
    pub fn without_quotas(&self) -> Limits {
        let windows = |c: &[Check]| c.iter().filter(|c| c.period.is_none()).cloned().collect();
        // Operator calls are few: counted exactly, apart from the key's lease.
        Limits {
            plan_id: self.plan_id,
            key: windows(&self.key),
            user: windows(&self.user),
            lease: false,
        }
    }
}

/// The name the quota goes by in headers, errors and `/me`.
pub const QUOTA_NAME: &str = "quota";

/// A sliding limit's check (its slot built once, here).
pub fn window_check(name: Arc<str>, window_secs: u32, limit: i64) -> Check {
    Check {
        slot: format!("{name}/{window_secs}").into(),
        name,
        window_secs,
        limit,
        period: None,
        anchor: None,
    }
}

fn window_checks(limits: &[LimitSpec]) -> impl Iterator<Item = Check> + '_ {
    limits
        .iter()
        .map(|l| window_check(l.name.clone(), l.window_secs, l.limit))
}

fn quota_check(q: &QuotaSpec, created: DateTime<Utc>) -> Check {
    Check {
        name: QUOTA_NAME.into(),
        slot: QUOTA_NAME.into(),
        window_secs: 0,
        limit: q.limit,
        period: Some(q.period),
        anchor: (q.anchor == Anchor::Created).then_some(created),
    }
}

/// The checks for one key. Its own `rateLimit` (the limit `default` over the gateway
/// window) and `limits` replace its plan's limits; its own quota replaces its plan's; the
/// plan is the key's own, else its user's; with neither, the gateway default applies. The
/// user's own limits and quota are counted owner-wide, on top. The key's own `counting`
/// wins over its plan's; with neither, [`LEASE_BY_DEFAULT`].
pub fn resolve(k: &KeyInfo, plan: Option<&Plan>, window_secs: u32) -> Limits {
    let mut key: Vec<Check> = Vec::new();
    let own_limits = k.rate_limit.is_some() || k.own.limits.is_some();
    if let Some(n) = k.rate_limit {
        key.push(window_check("default".into(), window_secs, i64::from(n)));
    }
    key.extend(window_checks(k.own.limits.as_deref().unwrap_or_default()));
    match plan {
        Some(p) if !own_limits => key.extend(window_checks(&p.limits)),
        None if !own_limits => key.push(window_check(
            "default".into(),
            window_secs,
            i64::from(DEFAULT_KEY_RATE_LIMIT),
        )),
        _ => {}
    }
    if let Some(q) = k.own.quota.as_ref().or(plan.and_then(|p| p.quota.as_ref())) {
        key.push(quota_check(q, k.created_at));
    }
    Limits {
        plan_id: plan.map(|p| p.id),
        key: key.into(),
        user: owner_wide(&k.owner, k.owner_created_at),
        lease: k
            .counting
            .or(plan.and_then(|p| p.counting))
            .map_or(LEASE_BY_DEFAULT, |c| c == Counting::Lease),
    }
}

/// A user's own limits and quota, counted across all of its keys.
pub fn owner_wide(user: &Policy, created: DateTime<Utc>) -> Arc<[Check]> {
    let mut checks: Vec<Check> =
        window_checks(user.limits.as_deref().unwrap_or_default()).collect();
    if let Some(q) = &user.quota {
        checks.push(quota_check(q, created));
    }
    checks.into()
}

/// A key record and the limits resolved from it.
type Resolved = (Arc<KeyInfo>, Arc<Limits>);

/// Every plan by id (plans are tiers: few, read on every request, changed rarely), and
/// each key's resolved [`Limits`], so a request reuses them instead of rebuilding them.
#[derive(Default)]
pub struct Plans {
    map: RwLock<Arc<HashMap<i64, Arc<Plan>>>>,
    /// By key id: the limits resolved from this exact cached key record (any change to a
    /// key or its user replaces the record) under the current plans (emptied on reload).
    resolved: RwLock<HashMap<i64, Resolved>>,
    /// When a request last found its plan missing and reloaded.
    last_miss: Mutex<Option<Instant>>,
    /// Held from read to replace, so a reload that read earlier never stores last.
    reloading: Mutex<()>,
}

impl Plans {
    /// Re-reads every plan.
    pub fn reload(&self, pool: &Pool) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let fresh: HashMap<i64, Arc<Plan>> = plans::list(pool)?
            .into_iter()
            .map(|p| (p.id, Arc::new(p)))
            .collect();
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        self.resolved
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    pub fn get(&self, id: i64) -> Option<Arc<Plan>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// The key's checks. A plan this replica has not heard of yet (created a moment ago
    /// on another replica, its notification still on the way) is read from the database
    /// rather than counted under the wrong limits; at most one such reload per
    /// `PLAN_MISS_RELOAD_EVERY`.
    pub fn limits_for(&self, pool: &Pool, k: &Arc<KeyInfo>, window_secs: u32) -> Arc<Limits> {
        let cached = self.resolved.read().unwrap_or_else(|p| p.into_inner());
        if let Some((info, limits)) = cached.get(&k.id) {
            if Arc::ptr_eq(info, k) {
                return limits.clone();
            }
        }
        drop(cached);
        let limits = Arc::new(self.resolve_now(pool, k, window_secs));
        let mut cached = self.resolved.write().unwrap_or_else(|p| p.into_inner());
        if cached.len() >= RESOLVED_CACHE_MAX {
            cached.clear();
        }
        cached.insert(k.id, (k.clone(), limits.clone()));
        limits
    }

    /// The key's checks resolved afresh, leaving the memo alone: for views of a key record
    /// read from the database (admin, `/me`), which is not the record requests carry.
    pub fn resolve_now(&self, pool: &Pool, k: &KeyInfo, window_secs: u32) -> Limits {
        let Some(id) = k.own.plan_id.or(k.owner.plan_id) else {
            return resolve(k, None, window_secs);
        };
        let mut plan = self.get(id);
        if plan.is_none() && self.may_reload_on_miss() {
            if let Err(e) = self.reload(pool) {
                log::warn!("plan reload for plan {id} failed: {e}");
            }
            plan = self.get(id);
        }
        if plan.is_none() {
            log::warn!("key {} is on plan {id}, which does not exist", k.id);
        }
        resolve(k, plan.as_deref(), window_secs)
    }

    fn may_reload_on_miss(&self) -> bool {
        let mut last = self.last_miss.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < PLAN_MISS_RELOAD_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}
