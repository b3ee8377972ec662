//! tollgate: a self-hosted API gateway, one synchronous binary plus one PostgreSQL.
//! `tollgate [serve]` applies migrations and serves; `tollgate migrate` only migrates.
#![forbid(unsafe_code)]

mod admin;
mod analytics;
mod auth;
mod breaker;
mod config;
mod db;
mod error;
mod input;
mod logger;
mod proxy;
mod ratelimit;
mod server;
mod sync;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How long start-up waits for the database before giving up: long enough for a database
/// started alongside the gateway (systemd, compose, `make run`) to come up.
const STARTUP_DB_WAIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
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

fn serve(cfg: config::Config) -> Result<(), String> {
    migrate(&cfg)?;
    let pool = db::pool(&cfg).map_err(|e| e.to_string())?;
    let app = Arc::new(server::App {
        logger: logger::Logger::start(
            pool.clone(),
            cfg.log_queue,
            cfg.log_flush,
            cfg.log_buffer_max,
        ),
        keys: auth::KeyCache::default(),
        routes: proxy::RouteTable::default(),
        agent: proxy::agent(&cfg),
        breakers: Arc::new(breaker::Breakers::new(
            cfg.breaker_failures,
            cfg.breaker_cooldown,
            cfg.upstream_max_in_flight,
        )),
        abandoned_bodies: Default::default(),
        counters: ratelimit::Counters::new(
            db::counter_pool(&cfg).map_err(|e| e.to_string())?,
            cfg.coalesce_window,
        ),
        pool,
        cfg,
    });
    let n = app
        .routes
        .reload(&app.pool)
        .map_err(|e| format!("loading routes: {e}"))?;
    log::info!("{n} routes loaded");
    ratelimit::spawn_purger(app.pool.clone(), app.cfg.rate_window_secs);
    sync::spawn(app.clone());
    server::serve(app).map_err(|e| e.to_string())
}
