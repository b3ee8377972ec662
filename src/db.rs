//! The connection pool, the migrations embedded from `sql/`, and small helpers shared by
//! the stages that talk to Postgres (auth, ratelimit, logger, admin, analytics), and
//! `DbHealth`, which lets requests skip a database known to be down.

use crate::config::Config;
use crate::error::{Error, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use postgres::types::Type;
use postgres::{NoTls, Statement};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Inner = r2d2::Pool<Manager>;

/// The r2d2 pool plus what r2d2 does not tell: how many callers are inside `get` right now
/// (waiting for a connection) and how many gave up. Everything else (`state`, ...) is the
/// r2d2 pool's own, through `Deref`; `get` keeps r2d2's signature so callers write
/// `pool.get()?` as before.
#[derive(Clone)]
pub struct Pool {
    inner: Inner,
    waits: Arc<PoolWaits>,
}

#[derive(Default)]
pub struct PoolWaits {
    /// Callers inside `get` at this moment.
    pub waiting: AtomicU64,
    /// `get` calls that timed out (`TOLLGATE_DB_WAIT_MS`) or failed to connect.
    pub failed: AtomicU64,
}

impl Pool {
    pub fn get(&self) -> std::result::Result<r2d2::PooledConnection<Manager>, r2d2::Error> {
        self.waits.waiting.fetch_add(1, Ordering::Relaxed);
        let got = self.inner.get();
        self.waits.waiting.fetch_sub(1, Ordering::Relaxed);
        if got.is_err() {
            self.waits.failed.fetch_add(1, Ordering::Relaxed);
        }
        got
    }

    pub fn waits(&self) -> &PoolWaits {
        &self.waits
    }
}

impl Deref for Pool {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// Opens the pool's connections. Unlike `r2d2_postgres`'s manager it hands out a [`Conn`],
/// which keeps the statements prepared on it, so the hot path (the counter statement, the
/// key lookup) is parsed and planned once per connection instead of once per request.
#[derive(Debug)]
pub struct Manager {
    config: postgres::Config,
}

/// A pooled connection: derefs to `postgres::Client` for everyone's ordinary queries, and
/// adds [`Conn::prepared`] for the statements worth keeping.
pub struct Conn {
    client: postgres::Client,
    prepared: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The statement for `sql`, prepared on this connection the first time it is asked for.
    /// Only for `&'static str` SQL: a fixed, small set, so the map never grows unbounded.
    pub fn prepared(&mut self, sql: &'static str, types: &[Type]) -> Result<Statement> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare_typed(sql, types)?;
        self.prepared.insert(sql, s.clone());
        Ok(s)
    }
}

impl Deref for Conn {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<Conn, postgres::Error> {
        Ok(Conn {
            client: self.config.connect(NoTls)?,
            prepared: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// `sql/NNN_*.sql` in order. A file is applied once, in its own transaction, and recorded in
/// `schema_migrations`; landed files are never edited.
const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../sql/001_init.sql")),
    (
        "002_route_options",
        include_str!("../sql/002_route_options.sql"),
    ),
    ("003_rollups", include_str!("../sql/003_rollups.sql")),
    (
        "004_counters_and_sync",
        include_str!("../sql/004_counters_and_sync.sql"),
    ),
    (
        "005_batched_counters",
        include_str!("../sql/005_batched_counters.sql"),
    ),
];

pub fn pg_config(cfg: &Config) -> Result<postgres::Config> {
    let mut pg: postgres::Config = cfg
        .database_url
        .parse()
        .map_err(|e| Error::Internal(format!("DATABASE_URL: {e}")))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("tollgate");
    }
    Ok(pg)
}

/// A pool that starts even while the database is down (`build_unchecked`): requests that
/// need it get 503 until it returns, everything else keeps working.
pub fn pool(cfg: &Config) -> Result<Pool> {
    Ok(build(pg_config(cfg)?, cfg.db_pool_size, cfg.db_wait))
}

/// The pool the rate-limit counters use: its sessions commit with `synchronous_commit =
/// off`, so a counter transaction does not wait for its WAL flush (the hot key's row lock
/// is held for microseconds instead of a disk flush). A crash can lose the last few hundred
/// ms of counts (at most 3 × `wal_writer_delay`), never corrupt them; log and admin writes
/// use the other pool and stay durable. Its one statement (`ratelimit::TAKE_SQL`) also runs
/// with a generic plan: with array parameters Postgres otherwise keeps re-planning it for
/// every execution, which at one request per statement cost more than the statement (one
/// wrk connection: 2.3 k req/s and 286 µs of Postgres CPU per request, then 3.3 k and 160).
pub fn counter_pool(cfg: &Config) -> Result<Pool> {
    let mut pg = pg_config(cfg)?;
    const SESSION: &str = "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan";
    let options = match pg.get_options() {
        Some(o) => format!("{o} {SESSION}"),
        None => SESSION.to_string(),
    };
    pg.options(&options);
    Ok(build(pg, cfg.counter_pool_size, cfg.db_wait))
}

fn build(config: postgres::Config, size: u32, wait: Duration) -> Pool {
    let inner = r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(size.min(4)))
        .connection_timeout(wait)
        .test_on_check_out(false)
        .build_unchecked(Manager { config });
    Pool {
        inner,
        waits: Arc::default(),
    }
}

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

/// RFC 3339 in UTC with milliseconds, the form every JSON timestamp of the API uses.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn ts_opt(t: Option<DateTime<Utc>>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| ts(t).into())
}

/// True when a database error is a unique-constraint violation (mapped to 409 by callers).
pub fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// True when a database error is a foreign-key violation (the referenced row is gone).
pub fn is_fk_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
}

/// A database error with its server message or cause; `postgres::Error`'s own `Display`
/// says only "db error" for errors the server reports.
pub fn describe(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

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
            let probe = now.max(1) + crate::config::DB_PROBE_INTERVAL.as_millis() as u64;
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
        let probe = self.now_ms().max(1) + crate::config::DB_PROBE_INTERVAL.as_millis() as u64;
        self.next_try_ms.store(probe, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
