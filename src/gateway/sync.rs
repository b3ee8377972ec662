//! Keeps every replica's route table and key cache in step with the database. A dedicated
//! connection LISTENs on `tollgate_config`, which triggers (sql/004) notify on every change
//! to routes or to a key's metadata, so a change made through any replica applies on all
//! of them within milliseconds; a periodic full reload is the safety net.

use super::keys::KeyCache;
use super::routes::RouteTable;
use super::Gateway;
use crate::config::{Config, SYNC_LIVENESS, SYNC_RECONNECT_MAX, SYNC_RECONNECT_MIN};
use crate::error::{describe, Result};
use crate::store::{self, Pool};
use postgres::fallible_iterator::FallibleIterator;
use std::sync::Arc;

/// What the sync threads keep current.
struct Synced {
    cfg: Config,
    pool: Pool,
    gateway: Arc<Gateway>,
}

/// Starts the listener thread and the periodic reload thread.
pub fn spawn(cfg: &Config, pool: Pool, gateway: Arc<Gateway>) {
    let s = Arc::new(Synced {
        cfg: cfg.clone(),
        pool,
        gateway,
    });
    let listener = s.clone();
    spawn_named("sync-listen", move || listen_forever(&listener));
    spawn_named("sync-reload", move || loop {
        std::thread::sleep(s.cfg.sync_interval);
        reload_all(&s);
    });
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        log::error!("cannot start the {name} thread: {e}");
    }
}

/// Reconnects with a growing pause after every failure. Each new connection is followed
/// by a full reload, which covers whatever was notified while no one listened.
fn listen_forever(s: &Synced) {
    let mut pause = SYNC_RECONNECT_MIN;
    loop {
        match listen(s) {
            Ok(()) => pause = SYNC_RECONNECT_MIN,
            Err(e) => {
                // Its connection is usually the first to notice an outage; the outage log
                // says so once, and the retries stay out of the log while it lasts.
                store::OUTAGE_LOG.failed(&format_args!("config listener: {e}"));
                log::debug!("config listener: {e}; retrying in {pause:?}");
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(SYNC_RECONNECT_MAX);
    }
}

/// Listens until the connection fails. Notifications that arrive together (one admin
/// transaction, a user's deletion cascading to many keys) are applied with one reload.
fn listen(s: &Synced) -> std::result::Result<(), String> {
    let describe = |e: postgres::Error| describe(&e);
    let mut client = store::config_listener(&s.cfg)?;
    store::OUTAGE_LOG.reached();
    log::debug!("config listener connected");
    reload_all(s);
    loop {
        let (mut routes, mut keys, mut plans) = (false, false, false);
        {
            let mut n = client.notifications();
            // Wakes up now and then to notice a dead connection even when all is quiet.
            let first = n.timeout_iter(SYNC_LIVENESS).next().map_err(describe)?;
            let mut batch: Vec<_> = first.into_iter().collect();
            if batch.is_empty() {
                // Quiet: a trivial query proves the connection is alive.
                drop(n);
                store::alive(&mut client)?;
                continue;
            }
            let mut more = n.iter();
            while let Some(x) = more.next().map_err(describe)? {
                batch.push(x);
            }
            for note in &batch {
                match note.payload() {
                    "routes" => routes = true,
                    "plans" => plans = true,
                    // "key:<id>" and "user:<id>": cached keys carry their user's fields.
                    _ => keys = true,
                }
            }
        }
        if routes {
            if let Err(e) = s.gateway.routes.reload(&s.pool) {
                failed("route reload after notification", &e);
            }
        }
        if plans {
            if let Err(e) = s.gateway.plans.reload(&s.pool) {
                failed("plan reload after notification", &e);
            }
        }
        if keys {
            if let Err(e) = refresh_keys(&s.pool, &s.gateway.auth.cache) {
                failed("key refresh after notification", &e);
            }
        }
    }
}

fn reload_all(s: &Synced) {
    if let Err(e) = reload_routes(&s.pool, &s.gateway.routes) {
        failed("route reload", &e);
    }
    if let Err(e) = s.gateway.plans.reload(&s.pool) {
        failed("plan reload", &e);
    }
    if let Err(e) = refresh_keys(&s.pool, &s.gateway.auth.cache) {
        failed("key refresh", &e);
    }
}

/// A failed reload is worth a warning, except during a database outage, which the outage
/// log has reported once already (the periodic reload would repeat it every interval).
fn failed(what: &str, e: &dyn std::fmt::Display) {
    if store::OUTAGE_LOG.is_down() {
        log::debug!("{what} failed: {e}");
    } else {
        log::warn!("{what} failed: {e}");
    }
}

/// Re-reads the metadata (revocation, limit, scopes, expiry) of every cached key; keys
/// deleted from the database leave the cache.
pub fn refresh_keys(pool: &Pool, cache: &KeyCache) -> Result<()> {
    let ids = cache.cached_ids();
    if ids.is_empty() {
        return Ok(());
    }
    cache.replace_all(store::keys::infos(pool, &ids)?);
    Ok(())
}

fn reload_routes(pool: &Pool, routes: &RouteTable) -> Result<()> {
    routes.reload(pool).map(|_| ())
}
