//! The schema: `sql/NNN_*.sql`, embedded in the binary and applied in order under an
//! advisory lock, so replicas starting together apply each file once.

use super::pg_config;
use crate::config::Config;
use crate::error::{describe, Error, Result};
use postgres::NoTls;
use std::time::{Duration, Instant};

/// `sql/NNN_*.sql` in order. A file is applied once, in its own transaction, and recorded in
/// `schema_migrations`; landed files are never edited.
const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../sql/001_init.sql")),
    (
        "002_route_options",
        include_str!("../../sql/002_route_options.sql"),
    ),
    ("003_rollups", include_str!("../../sql/003_rollups.sql")),
    (
        "004_counters_and_sync",
        include_str!("../../sql/004_counters_and_sync.sql"),
    ),
    (
        "005_batched_counters",
        include_str!("../../sql/005_batched_counters.sql"),
    ),
    ("006_plans", include_str!("../../sql/006_plans.sql")),
    ("007_usage", include_str!("../../sql/007_usage.sql")),
    (
        "008_key_lifecycle",
        include_str!("../../sql/008_key_lifecycle.sql"),
    ),
    (
        "009_route_identity",
        include_str!("../../sql/009_route_identity.sql"),
    ),
    ("010_audit", include_str!("../../sql/010_audit.sql")),
    ("011_ip_rules", include_str!("../../sql/011_ip_rules.sql")),
    (
        "012_route_cors",
        include_str!("../../sql/012_route_cors.sql"),
    ),
    (
        "013_upstream_pools",
        include_str!("../../sql/013_upstream_pools.sql"),
    ),
    ("014_counting", include_str!("../../sql/014_counting.sql")),
    (
        "015_rollup_compaction",
        include_str!("../../sql/015_rollup_compaction.sql"),
    ),
];

/// Applies pending migrations, retrying the first connection for up to `wait` so that a
/// gateway started together with its database does not race it.
pub fn migrate(cfg: &Config, wait: Duration) -> Result<Vec<&'static str>> {
    let pg = pg_config(cfg)?;
    let deadline = Instant::now() + wait;
    let mut client = loop {
        match pg.connect(NoTls) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                log::info!("waiting for the database: {}", describe(&e));
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot connect to database: {}",
                    describe(&e)
                )))
            }
        }
    };
    let mut applied = Vec::new();
    let mut tx = client.transaction()?;
    // Replicas starting together must not apply the same file twice.
    tx.execute("SELECT pg_advisory_xact_lock(7316002871)", &[])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )?;
        applied.push(*version);
    }
    tx.commit()?;
    Ok(applied)
}
