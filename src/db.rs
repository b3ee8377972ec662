//! The connection pool, the migrations embedded from `sql/`, and small helpers shared by
//! the stages that talk to Postgres (auth, ratelimit, logger, admin, analytics).

use crate::config::Config;
use crate::error::{Error, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use postgres::types::Type;
use postgres::{NoTls, Statement};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

pub type Pool = r2d2::Pool<Manager>;

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
    (
        "004_counters_and_sync",
        include_str!("../sql/004_counters_and_sync.sql"),
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
/// use the other pool and stay durable.
pub fn counter_pool(cfg: &Config) -> Result<Pool> {
    let mut pg = pg_config(cfg)?;
    let options = match pg.get_options() {
        Some(o) => format!("{o} -c synchronous_commit=off"),
        None => "-c synchronous_commit=off".to_string(),
    };
    pg.options(&options);
    Ok(build(pg, cfg.counter_pool_size, cfg.db_wait))
}

fn build(config: postgres::Config, size: u32, wait: Duration) -> Pool {
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(size.min(4)))
        .connection_timeout(wait)
        .test_on_check_out(false)
        .build_unchecked(Manager { config })
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
