//! Outage tracking: whether the database answered lately, so that during an outage
//! requests fail fast instead of each waiting for a pooled connection; and the outage's
//! two lines in the diagnostics log.

use crate::config::DB_PROBE_INTERVAL;
use crate::error::{Error, Result};
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether the database answered lately. Once a call finds it unreachable, every call
/// fails at once without waiting `db_wait` for a connection, and only the prober
/// (`watch`, its own thread) tries it again, every `config::DB_PROBE_INTERVAL`: a request
/// never waits on a probe (when requests probed, the few counted in the probing round each
/// waited `db_wait`, 2 s, once a second: docs/performance.md, "During an outage no request
/// waits"). The prober, or `/readyz` reaching it, marks it up.
#[derive(Default)]
pub struct DbHealth {
    down: AtomicBool,
}

impl DbHealth {
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Runs `f` unless the database is known down, in which case
    /// `Err(DatabaseUnavailable)` at once. `f` finding it unreachable marks it down.
    pub fn call<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.is_up() {
            return Err(Error::DatabaseUnavailable);
        }
        let result = f();
        // Only a failure changes the state here: it was up, and a success keeps it so
        // without every round writing the flag all workers read.
        if let Err(Error::DatabaseUnavailable) = &result {
            self.mark_down();
        }
        result
    }

    pub fn mark_up(&self) {
        self.down.store(false, Ordering::Relaxed);
    }

    pub fn mark_down(&self) {
        self.down.store(true, Ordering::Relaxed);
    }

    /// The prober's loop: while the database is known down, tries it through each of
    /// `pools` every `config::DB_PROBE_INTERVAL` (waiting up to `db_wait` for a connection)
    /// and marks it up once one answers. Any one will do: a pool exhausted by busy
    /// connections times out like an outage, and must not keep the others' callers from
    /// the database.
    pub fn watch(&self, pools: &[&super::Pool]) -> ! {
        loop {
            std::thread::sleep(DB_PROBE_INTERVAL);
            if !self.is_up() && pools.iter().any(|p| super::ping(p)) {
                self.mark_up();
            }
        }
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

    #[test]
    fn after_an_outage_is_noticed_callers_skip_the_database_until_the_prober_reaches_it() {
        let h = DbHealth::default();
        assert!(h.call(|| Ok(())).is_ok());
        assert!(h.is_up());
        let failed: Result<()> = h.call(|| Err(Error::DatabaseUnavailable));
        assert!(failed.is_err() && !h.is_up());
        // However long the outage lasts, no caller tries the database: only the prober.
        std::thread::sleep(DB_PROBE_INTERVAL + Duration::from_millis(50));
        let mut ran = false;
        let skipped: Result<()> = h.call(|| {
            ran = true;
            Ok(())
        });
        assert!(matches!(skipped, Err(Error::DatabaseUnavailable)));
        assert!(!ran, "a caller tried the database during a known outage");
        // The prober (or /readyz) reaching it ends the outage for everyone.
        h.mark_up();
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
