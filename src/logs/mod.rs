//! The request log: workers hand rows to a bounded channel and never wait; one logger
//! thread writes them in batches with binary COPY, at least every flush interval, and in
//! the same transaction stamps `api_keys.last_used_at` and adds the batch to the rollups
//! (`store/logs.rs`, `store/rollups.rs`). Rows the database refuses are kept (up to a bound) and retried whole, so an
//! outage delays logs instead of losing them, and raw rows and rollups never disagree. At
//! shutdown `Logger::shutdown` writes everything queued before the process exits.

pub mod client_ip;
pub mod devload;
pub mod retention;

use crate::config::{LOG_BATCH_MAX, LOG_DRAIN_TICK, LOG_RETRY_BACKOFF};
use crate::store::logs::{write_batch, LogRow};
use crate::store::{Pool, OUTAGE_LOG};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Counters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub buffered: AtomicU64,
    /// Times the logger thread panicked and restarted its loop.
    pub restarts: AtomicU64,
    /// Set by `shutdown`: write everything queued, then stop.
    closing: AtomicBool,
    /// Debug builds only: the next loop turn panics (see `Logger::panic_once_for_test`).
    #[cfg(debug_assertions)]
    panic_next: AtomicBool,
}

pub struct Logger {
    tx: Sender<LogRow>,
    pub counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Logger {
    /// Starts the logger thread. It restarts its loop if it ever panics.
    pub fn start(pool: Pool, queue: usize, flush: Duration, buffer_max: usize) -> Logger {
        let (tx, rx) = bounded(queue);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let spawned = std::thread::Builder::new()
            .name("logger".into())
            .spawn(move || {
                let mut pending = VecDeque::new();
                loop {
                    let run = catch_unwind(AssertUnwindSafe(|| {
                        run(&pool, &rx, &c, &mut pending, flush, buffer_max)
                    }));
                    match run {
                        Ok(()) => return,
                        Err(_) => {
                            c.restarts.fetch_add(1, Ordering::Relaxed);
                            log::error!("logger thread panicked; restarting it");
                        }
                    }
                }
            });
        let thread = match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                log::error!("cannot start the logger thread: {e}");
                None
            }
        };
        Logger {
            tx,
            counters,
            thread: Mutex::new(thread),
        }
    }

    /// Writes every row queued so far and stops the thread, waiting until `deadline` at
    /// most (the database may be down). Returns the rows not written.
    pub fn shutdown(&self, deadline: Instant) -> u64 {
        self.counters.closing.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = thread {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        self.tx.len() as u64 + self.counters.buffered.load(Ordering::Relaxed)
    }

    /// Debug builds only: the logger thread panics on its next turn, once, for the test
    /// that it restarts itself (see `Config::test_panic_path`).
    #[cfg(debug_assertions)]
    pub fn panic_once_for_test(&self) {
        self.counters.panic_next.store(true, Ordering::SeqCst);
    }

    /// Never blocks: a full queue drops the row and counts it.
    pub fn send(&self, row: LogRow) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(row) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }
}

fn run(
    pool: &Pool,
    rx: &Receiver<LogRow>,
    counters: &Counters,
    pending: &mut VecDeque<LogRow>,
    flush: Duration,
    buffer_max: usize,
) {
    let mut last_flush = Instant::now();
    let mut retry_at = Instant::now();
    loop {
        #[cfg(debug_assertions)]
        if counters.panic_next.swap(false, Ordering::SeqCst) {
            panic!("test-only panic in the logger thread");
        }
        let closing = counters.closing.load(Ordering::SeqCst);
        // Closing: take everything queued now and write it without waiting for a tick.
        let wait = if closing {
            Duration::ZERO
        } else {
            flush.saturating_sub(last_flush.elapsed())
        };
        let mut disconnected = false;
        if pending.is_empty() && !closing {
            // Nothing to write: block until the first row arrives.
            match rx.recv_timeout(wait) {
                Ok(row) => pending.push_back(row),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
        } else if !closing {
            // Rows wait for the flush anyway: sleep in slices and take what queued meanwhile,
            // instead of blocking on the channel, which made every request's send wake this
            // thread (a context switch on both sides, per request).
            std::thread::sleep(wait.min(LOG_DRAIN_TICK));
        }
        // Every turn, so rows that queued while a failed write blocked join the bounded
        // buffer before the next attempt: the bound holds for everything an outage produced.
        disconnected |= take_queued(rx, pending, counters, buffer_max);
        // Closing: everything queued is taken; write it and stop.
        disconnected |= closing && rx.is_empty();
        let due = last_flush.elapsed() >= flush || pending.len() >= LOG_BATCH_MAX;
        if (due || disconnected) && !pending.is_empty() && Instant::now() >= retry_at {
            last_flush = Instant::now();
            while !pending.is_empty() {
                let n = pending.len().min(LOG_BATCH_MAX);
                let batch: Vec<&LogRow> = pending.range(..n).collect();
                match write_batch(pool, &batch) {
                    Ok(()) => {
                        pending.drain(..n);
                        counters.written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // Once per outage (the outage log has it), else every failed write.
                        if OUTAGE_LOG.is_down() {
                            log::debug!("log write failed, {} rows kept: {e}", pending.len());
                        } else {
                            log::warn!("log write failed, {} rows kept: {e}", pending.len());
                        }
                        retry_at = Instant::now() + LOG_RETRY_BACKOFF;
                        break;
                    }
                }
            }
            counters
                .buffered
                .store(pending.len() as u64, Ordering::Relaxed);
        } else if due {
            last_flush = Instant::now();
        }
        if disconnected && pending.is_empty() {
            return;
        }
        if (disconnected || closing) && Instant::now() < retry_at {
            // The database refused the last write: wait out the backoff (the caller of
            // `shutdown` bounds the whole wait), then try again. Closing skips every other
            // wait, so without this it would spin until the deadline.
            std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
        }
    }
}

/// Moves whatever is queued onto `pending` without waiting, then drops the oldest rows
/// beyond `buffer_max` (counted), so memory stays bounded while the database refuses writes.
/// True when every sender is gone and nothing is left on the channel.
fn take_queued(
    rx: &Receiver<LogRow>,
    pending: &mut VecDeque<LogRow>,
    counters: &Counters,
    buffer_max: usize,
) -> bool {
    let mut disconnected = false;
    // Everything queued now (at most the channel's capacity), so that during an outage the
    // buffer, not the channel, holds the rows and the oldest are the ones dropped.
    for _ in 0..=rx.len() {
        match rx.try_recv() {
            Ok(row) => {
                pending.push_back(row);
                if pending.len() > buffer_max {
                    pending.pop_front();
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(crossbeam_channel::TryRecvError::Empty) => break,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                disconnected = true;
                break;
            }
        }
    }
    while pending.len() > buffer_max {
        pending.pop_front();
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
    counters
        .buffered
        .store(pending.len() as u64, Ordering::Relaxed);
    disconnected
}
