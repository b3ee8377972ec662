//! Storage: the connection pools, outage tracking, the migrations, and every SQL
//! statement the gateway runs, one file per table family. Callers get typed records
//! (`ApiKey`, `User`, `Route`, `LogRow`, ...), never rows; SQL appears nowhere else.

pub mod analytics;
pub mod audit;
pub mod counters;
mod health;
pub mod ip_rules;
pub mod keys;
pub mod logs;
mod migrate;
pub mod plans;
pub mod rollups;
pub mod routes;
pub mod usage;
pub mod users;

pub use health::{DbHealth, OUTAGE_LOG};
pub use migrate::migrate;

use crate::config::{Config, DB_CONNECT_TIMEOUT};
use crate::error::{describe, Error, Result};
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Inner = r2d2::Pool<Manager>;

/// The r2d2 pool plus what r2d2 does not tell: how many callers are inside `get` right now
/// (waiting for a connection) and how many gave up. Everything else (`state`, ...) is the
/// r2d2 pool's own, through `Deref`.
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
        if let Err(e) = &got {
            self.waits.failed.fetch_add(1, Ordering::Relaxed);
            // During an outage every caller fails alike; the outage log has said so once.
            if OUTAGE_LOG.is_down() {
                log::debug!("no database connection: {e}");
            } else {
                log::warn!("no database connection: {e}");
            }
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

/// `r2d2_postgres`'s manager does the connecting, validating and breakage checks; this
/// wrapper only hands out a [`Conn`], which remembers the SQL-level `PREPARE`s run on it, so
/// the hot path (the counting round) is parsed and planned once per connection.
#[derive(Debug)]
pub struct Manager(PostgresConnectionManager<NoTls>);

/// A pooled connection: derefs to `postgres::Client` for ordinary queries, and adds
/// [`Conn::prepared_sql`] for the statements worth keeping.
pub struct Conn {
    client: postgres::Client,
    /// `PREPARE` scripts already run on this connection (see `Conn::prepared_sql`).
    prepared_sql: Vec<&'static str>,
}

impl Conn {
    /// Runs a script of SQL-level `PREPARE`s the first time this connection is asked to,
    /// for statements that run inside multi-statement simple queries (`EXECUTE name(..)`).
    pub fn prepared_sql(&mut self, script: &'static str) -> Result<()> {
        if !self.prepared_sql.contains(&script) {
            self.client.batch_execute(script)?;
            self.prepared_sql.push(script);
        }
        Ok(())
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
            client: self.0.connect()?,
            prepared_sql: Vec::new(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> std::result::Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

pub fn pg_config(cfg: &Config) -> Result<postgres::Config> {
    let mut pg: postgres::Config = cfg
        .database_url
        .parse()
        .map_err(|e| Error::Internal(format!("DATABASE_URL: {e}")))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(DB_CONNECT_TIMEOUT);
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
/// use the other pool and stay durable. Its statements (`counters::ROUND_SQL`) also run with
/// a generic plan: with array parameters Postgres otherwise keeps re-planning them for every
/// execution (docs/performance.md); and with `random_page_cost` for data in memory, so the
/// primary-key lookups of a few counter rows are not planned as a scan of the table.
pub fn counter_pool(cfg: &Config) -> Result<Pool> {
    let mut pg = pg_config(cfg)?;
    const SESSION: &str = "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan \
                           -c random_page_cost=1.1";
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
        .error_handler(Box::new(ReportOutage))
        .event_handler(Box::new(ReportOutage))
        .build_unchecked(Manager(PostgresConnectionManager::new(config, NoTls)));
    Pool {
        inner,
        waits: Arc::default(),
    }
}

pub use postgres::Transaction;

/// The transaction `tollgate apply` makes its changes in, holding a lock until it ends: two
/// applies at once would each compare their file with a state the other is changing.
pub fn config_transaction(conn: &mut Conn) -> Result<Transaction<'_>> {
    let mut tx = conn.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7316002872)", &[])?;
    Ok(tx)
}

/// A read-only transaction that sees one snapshot throughout (`tollgate export`: routes
/// and the users they name read at the same instant).
pub fn snapshot(conn: &mut Conn) -> Result<Transaction<'_>> {
    Ok(conn
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?)
}

/// Hands r2d2's connect failures and new connections to the outage log, instead of r2d2
/// logging every failed connect.
#[derive(Debug)]
struct ReportOutage;

impl r2d2::HandleError<postgres::Error> for ReportOutage {
    fn handle_error(&self, e: postgres::Error) {
        OUTAGE_LOG.failed(&describe(&e));
    }
}

impl r2d2::HandleEvent for ReportOutage {
    fn handle_acquire(&self, _: r2d2::event::AcquireEvent) {
        OUTAGE_LOG.reached();
    }
}

/// Whether the database answers a trivial query (`/readyz`).
pub fn ping(pool: &Pool) -> bool {
    pool.get().ok().is_some_and(|mut c| alive(&mut c).is_ok())
}

/// The channel the triggers of sql/004 notify when a route or a key's metadata changes.
pub const CONFIG_CHANNEL: &str = "tollgate_config";

/// A connection of its own (not pooled) listening on [`CONFIG_CHANNEL`].
pub fn config_listener(cfg: &Config) -> std::result::Result<postgres::Client, String> {
    let pg = pg_config(cfg).map_err(|e| e.to_string())?;
    let mut client = pg.connect(NoTls).map_err(|e| describe(&e))?;
    client
        .batch_execute(&format!("LISTEN {CONFIG_CHANNEL}"))
        .map_err(|e| describe(&e))?;
    Ok(client)
}

/// Proves a connection is alive with an empty query (a quiet listening one, a pooled one).
pub fn alive(client: &mut postgres::Client) -> std::result::Result<(), String> {
    client
        .simple_query("")
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// True when a database error is a unique-constraint violation (mapped to 409 by callers).
fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// True when a database error is a foreign-key violation (the referenced row is gone).
fn is_fk_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
}
