//! Outage tracking: whether the database answered lately, so that during an outage
//! requests fail fast instead of each waiting for a pooled connection; and the outage's
//! two lines in the diagnostics log.

use crate::config::DB_PROBE_INTERVAL;
use crate::error::{Error, Result};
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether the database answered lately. Once a request finds it unreachable, others skip
/// it without waiting `db_wait` for a connection, and one probe per
/// `config::DB_PROBE_INTERVAL` tries again; the first success marks it up.
pub struct DbHealth {
    epoch: Instant,
    /// Milliseconds since `epoch` before which nobody tries; 0 while the database is up.
    next_try_ms: AtomicU64,
}

impl Default for DbHealth {
    fn default() -> DbHealth {
        DbHealth {
            epoch: Instant::now(),
            next_try_ms: AtomicU64::new(0),
        }
    }
}

impl DbHealth {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_up(&self) -> bool {
        self.next_try_ms.load(Ordering::Relaxed) == 0
    }

    /// Runs `f` unless the database is known down and this is not the moment to probe it,
    /// in which case `Err(DatabaseUnavailable)` at once. `f`'s outcome updates the state.
    pub fn call<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let next = self.next_try_ms.load(Ordering::Relaxed);
        if next != 0 {
            let now = self.now_ms();
            let probe = now.max(1) + DB_PROBE_INTERVAL.as_millis() as u64;
            // Exactly one caller wins the right to probe; the rest fail fast.
            if now < next
                || self
                    .next_try_ms
                    .compare_exchange(next, probe, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return Err(Error::DatabaseUnavailable);
            }
        }
        let result = f();
        match &result {
            Err(Error::DatabaseUnavailable) => self.mark_down(),
            Ok(_) => self.next_try_ms.store(0, Ordering::Relaxed),
            Err(_) => {}
        }
        result
    }

    pub fn mark_up(&self) {
        self.next_try_ms.store(0, Ordering::Relaxed);
    }

    /// Notes a failure: nobody tries again for `config::DB_PROBE_INTERVAL` from now (also
    /// after a failed probe, which may itself have waited `db_wait`).
    pub fn mark_down(&self) {
        let probe = self.now_ms().max(1) + DB_PROBE_INTERVAL.as_millis() as u64;
        self.next_try_ms.store(probe, Ordering::Relaxed);
    }
}

/// The process's one outage log: an outage is the database's, not a pool's or a thread's,
/// so every pool, the config listener and the log writer report to it.
pub static OUTAGE_LOG: OutageLog = OutageLog::new();

/// One line when the database goes away and one when it is back, with how long it was
/// gone, however many connections fail in between (r2d2 alone logs every failed connect:
/// ~20 lines a second under light traffic).
pub struct OutageLog {
    /// When the outage began and how many attempts have failed since; `None` while up.
    down: Mutex<Option<(Instant, u64)>>,
}

impl OutageLog {
    const fn new() -> OutageLog {
        OutageLog {
            down: Mutex::new(None),
        }
    }

    pub fn is_down(&self) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Notes a failed attempt to reach the database; only the outage's first is logged.
    pub fn failed(&self, cause: &dyn Display) {
        if self.note_failure() {
            log::warn!(
                "database unreachable: {cause}; further failures are not logged until it is back"
            );
        }
    }

    /// Notes that a connection was made; logs the end of an outage, with its length.
    pub fn reached(&self) {
        if let Some((length, failures)) = self.note_success() {
            log::warn!(
                "database reachable again after {:.1} s ({failures} failed attempts)",
                length.as_secs_f64()
            );
        }
    }

    /// Whether this failure began an outage.
    fn note_failure(&self) -> bool {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.as_mut() {
            Some((_, failures)) => {
                *failures += 1;
                false
            }
            None => {
                *down = Some((Instant::now(), 1));
                true
            }
        }
    }

    /// The outage this success ended: its length and failed attempts.
    fn note_success(&self) -> Option<(Duration, u64)> {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.take()
            .map(|(since, failures)| (since.elapsed(), failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn after_an_outage_is_noticed_callers_skip_the_database_until_the_next_probe() {
        let h = DbHealth::default();
        assert!(h.call(|| Ok(())).is_ok());
        assert!(h.is_up());
        let failed: Result<()> = h.call(|| Err(Error::DatabaseUnavailable));
        assert!(failed.is_err() && !h.is_up());
        let mut ran = false;
        let skipped: Result<()> = h.call(|| {
            ran = true;
            Ok(())
        });
        assert!(matches!(skipped, Err(Error::DatabaseUnavailable)));
        assert!(!ran, "the database was tried during a known outage");
        // A probe is due one interval after the failure; its success ends the outage.
        h.next_try_ms.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.call(|| Ok(())).is_ok());
        assert!(h.is_up());
    }

    #[test]
    fn an_outage_is_reported_once_when_it_begins_and_once_when_it_ends() {
        let log = OutageLog::new();
        assert_eq!(log.note_success(), None, "no outage, nothing to report");
        assert!(log.note_failure(), "the first failure begins the outage");
        assert!(!log.note_failure() && !log.note_failure());
        assert!(log.is_down());
        let (_, failures) = log.note_success().expect("the outage ends");
        assert_eq!(failures, 3);
        assert!(!log.is_down());
        assert_eq!(log.note_success(), None, "ended once");
    }
}
