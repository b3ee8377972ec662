//! The retention job: a background thread that first folds ended minutes into their hour
//! and day rollups (`rollups::compact`, `ROLLUP_COMPACT_LAG` after they end), then deletes
//! raw `request_logs` older than `log_retention`, and rollups, usage and audit rows older
//! than `rollup_retention` (minute and hour rollups at most `FINE_ROLLUP_MAX_AGE`, and never
//! before the hour or day they make up is rebuilt), a few thousand rows per statement with
//! a pause between, so it never holds locks or floods the WAL for long.
//! Batched deletes rather than partitions: see docs/api.md ("Retention"). The statements
//! are in `store/logs.rs`, `store/rollups.rs`, `store/usage.rs` and `store/audit.rs`.

use crate::config::{Config, FINE_ROLLUP_MAX_AGE, RETENTION_PAUSE, ROLLUP_COMPACT_LAG};
use crate::error::Result;
use crate::store::rollups::{self, GRAINS};
use crate::store::{audit, logs, usage, Pool};
use std::time::Duration;

pub fn spawn(pool: Pool, cfg: &Config) {
    let (logs, keep_rollups) = (cfg.log_retention, cfg.rollup_retention);
    let (every, batch) = (cfg.retention_interval, cfg.retention_batch);
    let spawned = std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            match rollups::compact(&pool, ROLLUP_COMPACT_LAG.as_secs() as i64) {
                Ok(0) => {}
                Ok(n) => log::debug!("rollups: folded {n} minutes into hour and day rows"),
                Err(e) => log::warn!("rollup compaction failed: {e}"),
            }
            match run_once(&pool, logs, keep_rollups, batch) {
                Ok((0, 0)) => {}
                Ok((l, r)) => {
                    log::info!("retention: deleted {l} log rows and {r} rollup and usage rows")
                }
                Err(e) => log::warn!("retention pass failed: {e}"),
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the retention thread: {e}");
    }
}

/// Deletes everything expired, batch by batch; returns (log rows, rollup and usage rows)
/// deleted.
fn run_once(pool: &Pool, logs: Duration, rollups: Duration, batch: i64) -> Result<(u64, u64)> {
    let logs_secs = logs.as_secs_f64();
    let deleted_logs = in_batches(batch, || logs::delete_expired(pool, logs_secs, batch))?;
    let mut deleted_rollups = 0;
    let compacted_to = rollups::compacted_to(&mut **pool.get()?)?;
    for grain in GRAINS {
        let keep = if grain < 86_400 {
            rollups.min(FINE_ROLLUP_MAX_AGE)
        } else {
            rollups
        };
        let rollup_secs = keep.as_secs_f64();
        deleted_rollups += in_batches(batch, || {
            rollups::delete_expired(pool, grain, rollup_secs, batch, compacted_to)
        })?;
    }
    // Usage is billed from day rows: kept as long as the day rollups.
    let usage_secs = rollups.as_secs_f64();
    deleted_rollups += in_batches(batch, || usage::delete_expired(pool, usage_secs, batch))?;
    // The audit log is kept as long as the rollups it would explain.
    deleted_rollups += in_batches(batch, || audit::delete_expired(pool, usage_secs, batch))?;
    Ok((deleted_logs, deleted_rollups))
}

/// Repeats `delete` until a statement deletes less than a full batch.
fn in_batches(batch: i64, mut delete: impl FnMut() -> Result<u64>) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = delete()?;
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
        std::thread::sleep(RETENTION_PAUSE);
    }
}
