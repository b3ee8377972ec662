//! tollgate: a self-hosted API gateway, one synchronous binary plus one PostgreSQL.
//! `tollgate [serve]` applies migrations and serves; `tollgate migrate` only migrates;
//! `tollgate export` and `tollgate apply FILE [--dry-run] [--prune]` read and write the
//! configuration as a file (docs/operations.md, "Config as code").
//!
//! Layers, bottom to top (docs/architecture.md; `make lint` checks that every `use`
//! points down): `config`, `error` → `http` → `store` → `logs` → `gateway` →
//! `operator` → `app` → `main`.
#![forbid(unsafe_code)]

mod app;
mod config;
mod error;
mod gateway;
mod http;
mod logs;
mod operator;
mod store;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// env_logger, minus what tiny_http logs once its accept thread was stopped on purpose at
/// shutdown (`http::server::accept_stopped`): an ERROR line on every clean stop would
/// teach operators to ignore errors.
struct Diagnostics(env_logger::Logger);

impl log::Log for Diagnostics {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.0.enabled(m)
    }

    fn log(&self, r: &log::Record) {
        if r.target().starts_with("tiny_http") && http::server::accept_stopped() {
            return;
        }
        self.0.log(r);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

fn main() -> ExitCode {
    let logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(config::DEFAULT_LOG_FILTER),
    )
    .build();
    log::set_max_level(logger.filter());
    let _ = log::set_boxed_logger(Box::new(Diagnostics(logger)));
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    // Hidden: the counting round's prepared statements, for `make bench-cluster`'s
    // pgbench; needs no config.
    if cmd == "dev-counter-sql" {
        println!("{}", store::counters::ROUND_SQL);
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
        "export" => export(&cfg),
        "apply" => apply(&cfg),
        // Hidden: synthetic traffic for benchmarks and tests (src/logs/devload.rs).
        "dev-load-logs" => dev_load_logs(&cfg),
        "-V" | "--version" => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(format!(
            "unknown command {other:?}; use `serve`, `migrate`, `export` or `apply`"
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
    let applied =
        store::migrate(cfg, config::STARTUP_DB_WAIT).map_err(|e| format!("migrate: {e:?}"))?;
    if applied.is_empty() {
        log::info!("migrations: schema is up to date");
    } else {
        log::info!("migrations applied: {}", applied.join(", "));
    }
    Ok(())
}

/// `export`: the plans, users and routes as a config file, on stdout.
fn export(cfg: &config::Config) -> Result<(), String> {
    migrate(cfg)?;
    let pool = store::pool(cfg).map_err(|e| e.to_string())?;
    let file = operator::config_file::export(&pool).map_err(|e| format!("export: {e}"))?;
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// `apply FILE [--dry-run] [--prune]` (FILE `-`: stdin): checks the whole file, then makes
/// the database match it in one transaction and prints each change, one per line.
fn apply(cfg: &config::Config) -> Result<(), String> {
    let usage = "usage: tollgate apply FILE [--dry-run] [--prune]";
    let (mut path, mut dry_run, mut prune) = (None, false, false);
    for arg in std::env::args().skip(2) {
        match arg.as_str() {
            "--dry-run" => dry_run = true,
            "--prune" => prune = true,
            _ if path.is_none() && (arg == "-" || !arg.starts_with('-')) => path = Some(arg),
            _ => return Err(usage.into()),
        }
    }
    let path = path.ok_or(usage)?;
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&path)
    }
    .map_err(|e| format!("{path}: {e}"))?;
    let nothing = "nothing applied";
    let desired =
        operator::config_file::parse(&text).map_err(|e| format!("{path}: {e}; {nothing}"))?;
    migrate(cfg)?;
    let pool = store::pool(cfg).map_err(|e| e.to_string())?;
    let outcomes = operator::config_file::apply(&pool, &desired, prune, dry_run)
        .map_err(|e| format!("{path}: {e}; {nothing}"))?;
    use operator::config_file::Verb;
    let count = |v| outcomes.iter().filter(|o| o.verb == v).count();
    for o in &outcomes {
        println!("{o}");
    }
    let (c, u, d) = (
        count(Verb::Created),
        count(Verb::Updated),
        count(Verb::Deleted),
    );
    let summary = if c + u + d == 0 {
        "no changes".to_string()
    } else {
        format!("{c} created, {u} updated, {d} deleted")
    };
    if dry_run {
        println!("{summary} (dry run: nothing applied)");
    } else {
        println!("{summary}");
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
    let pool = store::pool(cfg).map_err(|e| e.to_string())?;
    logs::devload::load(&pool, n, Duration::from_secs(span))
}

/// Builds every layer's state bottom-up, starts the background threads, then serves.
fn serve(cfg: config::Config) -> Result<(), String> {
    migrate(&cfg)?;
    let pool = store::pool(&cfg).map_err(|e| e.to_string())?;
    let counter_pool = store::counter_pool(&cfg).map_err(|e| e.to_string())?;
    let logger = logs::Logger::start(
        pool.clone(),
        cfg.log_queue,
        cfg.log_flush,
        cfg.log_buffer_max,
    );
    let gateway = gateway::Gateway::new(&cfg, counter_pool);
    let n = gateway
        .routes
        .reload(&pool)
        .map_err(|e| format!("loading routes: {e}"))?;
    log::info!("{n} routes loaded");
    gateway
        .plans
        .reload(&pool)
        .map_err(|e| format!("loading plans: {e}"))?;
    let app = Arc::new(app::App::new(cfg, pool, gateway, logger));
    let cfg = &app.cfg;
    logs::retention::spawn(app.pool.clone(), cfg);
    gateway::sync::spawn(cfg, app.pool.clone(), app.gateway.clone());
    gateway::health::spawn(app.gateway.clone());
    let prober = app.clone();
    std::thread::Builder::new()
        .name("db-probe".into())
        .spawn(move || {
            let counters = prober.gateway.limiter.counters.pool();
            prober.health.watch(&[counters, &prober.pool])
        })
        .map_err(|e| format!("starting the database prober: {e}"))?;
    if !cfg.lease_horizon.is_zero() {
        let keeper = app.clone();
        std::thread::Builder::new()
            .name("lease-keeper".into())
            .spawn(move || keeper.gateway.limiter.counters.keep_leases(&keeper.health))
            .map_err(|e| format!("starting the lease keeper: {e}"))?;
    }
    if let Some(addr) = &cfg.metrics_addr {
        let side = app.clone();
        http::server::spawn_single_thread(addr, "metrics", move |method, path| {
            operator::metrics::side_listener(&side.operator(), method, path)
        })
        .map_err(|e| e.to_string())?;
        log::info!("metrics on http://{addr}/metrics (no credentials)");
    }
    http::server::serve(cfg, app.clone()).map_err(|e| e.to_string())
}

/// The layer rule, checked: every `crate::<module>` path in a file names a module its own
/// module may use (docs/architecture.md's table), or its own; and no layer's top file
/// reaches the crate root through `super::`. `make lint` runs this (so does `make test`).
#[cfg(test)]
mod layers {
    use std::path::{Path, PathBuf};

    /// Each module and the modules it may use, bottom to top.
    const MAY_USE: &[(&str, &[&str])] = &[
        ("config", &[]),
        ("error", &[]),
        ("http", &["config", "error"]),
        ("store", &["config", "error"]),
        ("logs", &["config", "error", "store"]),
        ("gateway", &["config", "error", "http", "store"]),
        (
            "operator",
            &["config", "error", "http", "store", "logs", "gateway"],
        ),
        (
            "app",
            &[
                "config", "error", "http", "store", "logs", "gateway", "operator",
            ],
        ),
        (
            "main",
            &[
                "config", "error", "http", "store", "logs", "gateway", "operator", "app",
            ],
        ),
    ];

    fn may_use(module: &str) -> Option<&'static [&'static str]> {
        MAY_USE
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, uses)| *uses)
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The modules a line names as `crate::<module>` in code: not in a comment, not inside
    /// a string literal.
    fn crate_paths(line: &str) -> Vec<&str> {
        let code = line.split("//").next().unwrap_or("");
        code.match_indices("crate::")
            .filter(|(i, _)| !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
            .filter(|(i, _)| code[..*i].matches('"').count().is_multiple_of(2))
            .map(|(i, m)| {
                let rest = &code[i + m.len()..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    #[test]
    fn imports_only_point_down() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut upward = Vec::new();
        for file in &files {
            let rel = file.strip_prefix(&src).expect("under src/");
            let depth = rel.components().count();
            let first = rel.components().next().expect("a path");
            let module = first.as_os_str().to_string_lossy();
            let module = module.trim_end_matches(".rs");
            let uses = may_use(module).unwrap_or_else(|| panic!("{rel:?}: add it to MAY_USE"));
            // In `src/x.rs` and `src/x/mod.rs`, `super::` is the crate root.
            let top = depth == 1 || (depth == 2 && rel.ends_with("mod.rs"));
            let text = std::fs::read_to_string(file).expect("readable");
            for (n, line) in text.lines().enumerate() {
                let at = format!("{}:{}", rel.display(), n + 1);
                for used in crate_paths(line) {
                    if used != module && !uses.contains(&used) {
                        upward.push(format!("{at}: {module} uses crate::{used}"));
                    }
                }
                let code = line.split("//").next().unwrap_or("").trim_start();
                let own_tests =
                    code.starts_with("use super::*") || code.starts_with("use super::super::*");
                if top && module != "main" && code.contains("super::") && !own_tests {
                    upward.push(format!("{at}: super:: from the top of {module}"));
                }
            }
        }
        assert!(
            upward.is_empty(),
            "imports outside the layer rule:\n{}",
            upward.join("\n")
        );
    }

    #[test]
    fn the_check_sees_paths_in_use_lists_and_code() {
        assert_eq!(crate_paths("use crate::store::{self, Pool};"), ["store"]);
        assert_eq!(
            crate_paths("let x = crate::http::Reply::empty(1); // crate::app"),
            ["http"]
        );
        assert!(crate_paths("/// see crate::app").is_empty());
        assert!(crate_paths("let s = \"crate::app\";").is_empty());
    }
}
