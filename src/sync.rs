//! Keeps every replica's route table and key cache in step with the database. A dedicated
//! connection LISTENs on `tollgate_config`, which triggers (sql/004) notify on every change
//! to routes or to a key's metadata, so a change made through any replica applies on all
//! of them within milliseconds; a periodic full reload is the safety net.

use crate::config::SYNC_RECONNECT_MAX;
use crate::error::Result;
use crate::server::App;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::Arc;
use std::time::Duration;

/// The channel the triggers of sql/004 notify.
const CHANNEL: &str = "tollgate_config";

/// Starts the listener thread and the periodic reload thread.
pub fn spawn(app: Arc<App>) {
    let listener = app.clone();
    spawn_named("sync-listen", move || listen_forever(&listener));
    spawn_named("sync-reload", move || loop {
        std::thread::sleep(app.cfg.sync_interval);
        reload_all(&app);
    });
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        log::error!("cannot start the {name} thread: {e}");
    }
}

/// Reconnects with a growing pause after every failure. Each new connection is followed
/// by a full reload, which covers whatever was notified while no one listened.
fn listen_forever(app: &App) {
    let mut pause = Duration::from_millis(100);
    loop {
        match listen(app) {
            Ok(()) => pause = Duration::from_millis(100),
            Err(e) => log::warn!("config listener: {e}; retrying in {pause:?}"),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(SYNC_RECONNECT_MAX);
    }
}

/// Listens until the connection fails. Notifications that arrive together (one admin
/// transaction, a user's deletion cascading to many keys) are applied with one reload.
fn listen(app: &App) -> std::result::Result<(), String> {
    let describe = |e: postgres::Error| crate::db::describe(&e);
    let pg = crate::db::pg_config(&app.cfg).map_err(|e| e.to_string())?;
    let mut client = pg.connect(postgres::NoTls).map_err(describe)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(describe)?;
    log::debug!("config listener connected");
    reload_all(app);
    loop {
        let (mut routes, mut keys) = (false, false);
        {
            let mut n = client.notifications();
            // Wakes up now and then to notice a dead connection even when all is quiet.
            let first = n
                .timeout_iter(Duration::from_secs(10))
                .next()
                .map_err(describe)?;
            let mut batch: Vec<_> = first.into_iter().collect();
            if batch.is_empty() {
                // Quiet: a trivial query proves the connection is alive.
                drop(n);
                client.simple_query("").map_err(describe)?;
                continue;
            }
            let mut more = n.iter();
            while let Some(x) = more.next().map_err(describe)? {
                batch.push(x);
            }
            for note in &batch {
                match note.payload() {
                    "routes" => routes = true,
                    _ => keys = true,
                }
            }
        }
        if routes {
            if let Err(e) = app.routes.reload(&app.pool) {
                log::warn!("route reload after notification failed: {e}");
            }
        }
        if keys {
            if let Err(e) = refresh_keys(app) {
                log::warn!("key refresh after notification failed: {e}");
            }
        }
    }
}

fn reload_all(app: &App) {
    if let Err(e) = app.routes.reload(&app.pool) {
        log::warn!("route reload failed: {e}");
    }
    if let Err(e) = refresh_keys(app) {
        log::warn!("key refresh failed: {e}");
    }
}

/// Re-reads the metadata (revocation, limit, scopes, expiry) of every cached key; keys
/// deleted from the database leave the cache.
fn refresh_keys(app: &App) -> Result<()> {
    let ids = app.keys.cached_ids();
    if ids.is_empty() {
        return Ok(());
    }
    let rows = app.pool.get()?.query(
        "SELECT id, user_id, rate_limit, scopes, expires_at, revoked_at
           FROM api_keys WHERE id = ANY($1)",
        &[&ids],
    )?;
    app.keys
        .replace_all(rows.iter().map(|r| crate::auth::key_info(r, 0)).collect());
    Ok(())
}
