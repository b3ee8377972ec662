//! tollgate: a self-hosted API gateway, one synchronous binary plus one PostgreSQL.
//! `tollgate [serve]` applies migrations and serves; `tollgate migrate` only migrates.
#![forbid(unsafe_code)]

mod admin;
mod analytics;
mod auth;
mod breaker;
mod config;
mod dashboard;
mod db;
mod devload;
mod error;
mod hostile;
mod input;
mod logger;
mod metrics;
mod openapi;
mod proxy;
mod ratelimit;
mod retention;
mod rollup;
mod server;
mod sync;
mod throttle;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How long start-up waits for the database before giving up: long enough for a database
/// started alongside the gateway (systemd, compose, `make run`) to come up.
const STARTUP_DB_WAIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    // Hidden: the counter statement, for `make bench-cluster`'s pgbench; needs no config.
    if cmd == "dev-counter-sql" {
        println!("{}", ratelimit::TAKE_SQL);
        return ExitCode::SUCCESS;
    }
    let cfg = match config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "serve" => serve(cfg),
        "migrate" => migrate(&cfg),
        // Hidden: synthetic traffic for benchmarks and tests (src/devload.rs).
        "dev-load-logs" => dev_load_logs(&cfg),
        "-V" | "--version" => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(format!(
            "unknown command {other:?}; use `serve` or `migrate`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(cfg: &config::Config) -> Result<(), String> {
    let applied = db::migrate(cfg, STARTUP_DB_WAIT).map_err(|e| format!("migrate: {e:?}"))?;
    if applied.is_empty() {
        log::info!("migrations: schema is up to date");
    } else {
        log::info!("migrations applied: {}", applied.join(", "));
    }
    Ok(())
}

/// `dev-load-logs N [SPAN_SECS]`: migrate, then write N synthetic rows over the last
/// SPAN_SECS (default 86400) through the logger's batch write.
fn dev_load_logs(cfg: &config::Config) -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let usage = "usage: tollgate dev-load-logs N [SPAN_SECS]";
    let n: u64 = args.first().and_then(|a| a.parse().ok()).ok_or(usage)?;
    let span: u64 = match args.get(1) {
        Some(a) => a.parse().ok().filter(|s| *s > 0).ok_or(usage)?,
        None => 86_400,
    };
    migrate(cfg)?;
    let pool = db::pool(cfg).map_err(|e| e.to_string())?;
    devload::load(&pool, n, Duration::from_secs(span))
}

fn serve(cfg: config::Config) -> Result<(), String> {
    migrate(&cfg)?;
    let pool = db::pool(&cfg).map_err(|e| e.to_string())?;
    let logger = logger::Logger::start(
        pool.clone(),
        cfg.log_queue,
        cfg.log_flush,
        cfg.log_buffer_max,
    );
    let agent = proxy::agent(&cfg);
    let counters = ratelimit::Counters::new(
        db::counter_pool(&cfg).map_err(|e| e.to_string())?,
        cfg.rate_window_secs,
        cfg.coalesce_window,
    );
    let app = Arc::new(server::App::new(cfg, pool, logger, agent, counters));
    let n = app
        .routes
        .reload(&app.pool)
        .map_err(|e| format!("loading routes: {e}"))?;
    log::info!("{n} routes loaded");
    ratelimit::spawn_purger(app.pool.clone(), app.cfg.rate_window_secs);
    retention::spawn(app.pool.clone(), &app.cfg);
    sync::spawn(app.clone());
    if let Some(addr) = &app.cfg.metrics_addr {
        metrics::spawn_listener(app.clone(), addr).map_err(|e| e.to_string())?;
    }
    server::serve(app).map_err(|e| e.to_string())
}
