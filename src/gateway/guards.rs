//! Brakes on clients that cost the gateway work without ever authenticating: per-IP limits
//! on failed API-key and admin-secret checks (429 with `Retry-After` past the limit), and
//! the bound on concurrent bcrypt verifications. `auth` and `admin` consult them; nothing
//! here touches the database.

use crate::config::AUTH_FAIL_TRACKED_IPS;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failed attempts per client IP in a fixed window that starts at the IP's first failure.
pub struct FailureLimit {
    limit: u32,
    window: Duration,
    map: Mutex<HashMap<String, (Instant, u32)>>,
}

impl FailureLimit {
    /// `limit` 0 turns the limit off.
    pub fn new(limit: u32, window: Duration) -> FailureLimit {
        FailureLimit {
            limit,
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, u32)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(TooManyFailures)` while `ip` has used up its failures for the window.
    pub fn check(&self, ip: &str) -> Result<()> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: &str, now: Instant) -> Result<()> {
        if self.limit == 0 {
            return Ok(());
        }
        match self.lock().get(ip) {
            Some((start, n)) if *n >= self.limit && now < *start + self.window => {
                let left = (*start + self.window).saturating_duration_since(now);
                Err(Error::TooManyFailures {
                    retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure for `ip`.
    pub fn record(&self, ip: &str) {
        self.record_at(ip, Instant::now());
    }

    fn record_at(&self, ip: &str, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= AUTH_FAIL_TRACKED_IPS && !map.contains_key(ip) {
            let window = self.window;
            map.retain(|_, (start, _)| now < *start + window);
            if map.len() >= AUTH_FAIL_TRACKED_IPS {
                map.clear();
            }
        }
        let entry = map.entry(ip.to_string()).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// A counting semaphore over bcrypt verifications.
pub struct BcryptGate {
    max: usize,
    busy: Mutex<usize>,
    freed: Condvar,
}

/// One bcrypt slot, given back when dropped.
pub struct Slot<'a>(&'a BcryptGate);

impl BcryptGate {
    pub fn new(max: usize) -> BcryptGate {
        BcryptGate {
            max: max.max(1),
            busy: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits up to `wait` for a slot; `Err(AuthBusy)` if none came free.
    pub fn acquire(&self, wait: Duration) -> Result<Slot<'_>> {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (mut busy, _) = self
            .freed
            .wait_timeout_while(busy, wait, |n| *n >= self.max)
            .unwrap_or_else(|p| p.into_inner());
        if *busy >= self.max {
            return Err(Error::AuthBusy);
        }
        *busy += 1;
        Ok(Slot(self))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(|p| p.into_inner());
        *busy = busy.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_is_refused_after_its_limit_until_the_window_ends() {
        let l = FailureLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("10.0.0.1", t0).is_ok());
            l.record_at("10.0.0.1", t0);
        }
        match l.check_at("10.0.0.1", t0 + Duration::from_secs(20)) {
            Err(Error::TooManyFailures { retry_after }) => assert_eq!(retry_after, 40),
            other => panic!("{other:?}"),
        }
        assert!(
            l.check_at("10.0.0.2", t0).is_ok(),
            "other IPs are unaffected"
        );
        assert!(l.check_at("10.0.0.1", t0 + Duration::from_secs(60)).is_ok());
        l.record_at("10.0.0.1", t0 + Duration::from_secs(61));
        assert!(l.check_at("10.0.0.1", t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn a_zero_limit_never_refuses() {
        let l = FailureLimit::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            l.record("10.0.0.1");
        }
        assert!(l.check("10.0.0.1").is_ok());
    }

    #[test]
    fn the_bcrypt_gate_admits_at_most_its_bound_and_frees_on_drop() {
        let g = BcryptGate::new(2);
        let a = g.acquire(Duration::ZERO).unwrap();
        let _b = g.acquire(Duration::ZERO).unwrap();
        assert!(matches!(
            g.acquire(Duration::from_millis(10)),
            Err(Error::AuthBusy)
        ));
        drop(a);
        assert!(g.acquire(Duration::ZERO).is_ok());
    }
}
