//! The request log: workers hand rows to a bounded channel and never wait; one logger
//! thread writes them in batches with binary COPY, at least every flush interval, and in
//! the same transaction stamps `api_keys.last_used_at` and adds the batch to the rollups
//! (`rollup.rs`). Rows the database refuses are kept (up to a bound) and retried whole, so an
//! outage delays logs instead of losing them, and raw rows and rollups never disagree. At
//! shutdown `Logger::shutdown` writes everything queued before the process exits.

use crate::db::Pool;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Rows per COPY: a whole flush interval at ~20 k req/s (the rollups cost per distinct key
/// in a batch, so longer batches cost less per row), small enough that one batch never
/// holds the rollup rows' locks for long (~0.1-0.2 s).
pub const BATCH_MAX: usize = 20_000;
/// Pause between retries while the database refuses writes.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LogRow {
    pub request_id: String,
    pub api_key_id: Option<i64>,
    pub user_id: Option<i64>,
    pub route_id: Option<i64>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: i32,
    pub latency_ms: f64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub client_ip: String,
    pub user_agent: Option<String>,
    pub created_at: SystemTime,
}

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
            std::thread::sleep(wait.min(crate::config::LOG_DRAIN_TICK));
        }
        // Every turn, so rows that queued while a failed write blocked join the bounded
        // buffer before the next attempt: the bound holds for everything an outage produced.
        disconnected |= take_queued(rx, pending, counters, buffer_max);
        // Closing: everything queued is taken; write it and stop.
        disconnected |= closing && rx.is_empty();
        let due = last_flush.elapsed() >= flush || pending.len() >= BATCH_MAX;
        if (due || disconnected) && !pending.is_empty() && Instant::now() >= retry_at {
            last_flush = Instant::now();
            while !pending.is_empty() {
                let n = pending.len().min(BATCH_MAX);
                let batch: Vec<&LogRow> = pending.range(..n).collect();
                match write_batch(pool, &batch) {
                    Ok(()) => {
                        pending.drain(..n);
                        counters.written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        log::warn!("log write failed, {} rows kept: {e}", pending.len());
                        retry_at = Instant::now() + RETRY_BACKOFF;
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

const COPY_SQL: &str = "COPY request_logs (request_id, api_key_id, user_id, route_id, method,
    path, query, status, latency_ms, bytes_in, bytes_out, client_ip, user_agent, created_at)
    FROM STDIN BINARY";

const TYPES: &[Type] = &[
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::FLOAT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
];

/// Stamps each key's newest request time; older stamps never overwrite newer ones.
const LAST_USED_SQL: &str = "UPDATE api_keys k SET last_used_at = v.t
    FROM unnest($1::int8[], $2::timestamptz[]) AS v(id, t)
    WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.t)";

/// Writes one batch: raw rows, rollups and key stamps commit together or not at all.
pub fn write_batch(pool: &Pool, batch: &[&LogRow]) -> Result<(), String> {
    let pg = |e: postgres::Error| crate::db::describe(&e);
    let mut conn = pool.get().map_err(|e| e.to_string())?;
    let mut tx = conn.transaction().map_err(pg)?;
    let sink = tx.copy_in(COPY_SQL).map_err(pg)?;
    let mut w = BinaryCopyInWriter::new(sink, TYPES);
    for r in batch {
        let values: [&(dyn ToSql + Sync); 14] = [
            &r.request_id,
            &r.api_key_id,
            &r.user_id,
            &r.route_id,
            &r.method,
            &r.path,
            &r.query,
            &r.status,
            &r.latency_ms,
            &r.bytes_in,
            &r.bytes_out,
            &r.client_ip,
            &r.user_agent,
            &r.created_at,
        ];
        w.write(&values).map_err(pg)?;
    }
    w.finish().map_err(pg)?;
    crate::rollup::upsert(&mut tx, batch).map_err(pg)?;
    let mut newest: HashMap<i64, SystemTime> = HashMap::new();
    for r in batch {
        if let Some(k) = r.api_key_id {
            let t = newest.entry(k).or_insert(r.created_at);
            *t = (*t).max(r.created_at);
        }
    }
    if !newest.is_empty() {
        let (ids, times): (Vec<i64>, Vec<SystemTime>) = newest.into_iter().unzip();
        tx.execute(LAST_USED_SQL, &[&ids, &times]).map_err(pg)?;
    }
    tx.commit().map_err(pg)
}
