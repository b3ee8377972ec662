//! tiny_http, the worker pool and graceful shutdown. A worker takes one request at a time:
//! it builds the [`Request`] (`context.rs`), asks the [`Handler`] for a [`Reply`], writes
//! it (`respond.rs`), then tells the handler what was sent, for its log row. A panic
//! anywhere in that answers 500 and the worker goes on. `serve` returns after a graceful
//! shutdown on SIGTERM/SIGINT.

use super::{context, respond, Ctx, Reply, Request};
use crate::config::{self, Config};
use crate::error::Error;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::Server;

/// What the layers above plug into the server loop.
pub trait Handler: Send + Sync + 'static {
    /// What `handle` learns about a request that `finish` needs (for the log row).
    type Trace: Default;
    /// Answers one request. The body may be read, partly or not at all.
    fn handle(&self, rq: &mut Request, trace: &mut Self::Trace) -> Reply;
    /// Called once the answer has been written (or the connection given up).
    fn finish(&self, ctx: &Ctx, trace: Self::Trace, status: u16, sent: Sent);
    /// Called once after the workers stopped: write out whatever is still queued (the log),
    /// by `deadline`.
    fn on_shutdown(&self, deadline: Instant);
    fn stats(&self) -> &ServerStats;
}

/// What crossed the connection for one request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Body bytes received: read by the handler, or drained unread.
    pub bytes_in: u64,
    /// Body bytes of the answer written.
    pub bytes_out: u64,
}

/// The server loop's own state, read by `/admin/stats` and `/metrics`.
#[derive(Default)]
pub struct ServerStats {
    /// Requests answered with a declared body too large to drain safely
    /// (`respond::abandon`).
    pub abandoned_bodies: AtomicU64,
    /// Set by the first SIGTERM/SIGINT: workers finish their request and stop.
    pub shutting_down: AtomicBool,
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully (see `shutdown`).
pub fn serve<H: Handler>(cfg: &Config, handler: Arc<H>) -> io::Result<()> {
    // Registered before listening, so a signal during start-up is not lost.
    let signals = shutdown_signals()?;
    let server = Server::http(&cfg.listen_addr)
        .map_err(|e| io::Error::other(format!("cannot listen on {}: {e}", cfg.listen_addr)))?;
    let server = Arc::new(server);
    if let Some(addr) = server.server_addr().to_ip() {
        spawn_pool_nudger(addr);
    }
    log::info!(
        "listening on {} with {} workers",
        cfg.listen_addr,
        cfg.workers
    );
    let limits = Arc::new(Limits {
        trusted_proxies: cfg.trusted_proxies.clone(),
        max_body_bytes: cfg.max_body_bytes,
    });
    let mut handles = Vec::new();
    for i in 0..cfg.workers {
        let (server, handler, limits) = (server.clone(), handler.clone(), limits.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(&server, &*handler, &limits))?,
        );
    }
    let signal = signals
        .recv()
        .map_err(|_| io::Error::other("the signal thread stopped"))?;
    shutdown(cfg.shutdown_grace, &*handler, server, handles, signal);
    Ok(())
}

/// The settings a worker needs for every request.
struct Limits {
    trusted_proxies: Vec<std::net::IpAddr>,
    /// The most of an unread chunked body drained before the connection is reused.
    max_body_bytes: u64,
}

/// The first SIGTERM or SIGINT arrives on the returned channel; a second one exits the
/// process at once (status 1), whatever is still running.
fn shutdown_signals() -> io::Result<crossbeam_channel::Receiver<i32>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (n, signal) in signals.forever().enumerate() {
                if n == 0 {
                    let _ = tx.send(signal);
                } else {
                    log::warn!("second signal ({signal}): exiting at once");
                    std::process::exit(1);
                }
            }
        })?;
    Ok(rx)
}

/// Stops taking requests, lets the ones in flight finish within `grace`, then lets the
/// handler write what it has queued (within the same grace, but at least
/// `config::SHUTDOWN_LOG_FLUSH_MIN`) and returns, so `main` exits 0.
fn shutdown<H: Handler>(
    grace: Duration,
    handler: &H,
    server: Arc<Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
    signal: i32,
) {
    let deadline = Instant::now() + grace;
    log::info!(
        "signal {signal}: finishing requests in flight (grace {} ms)",
        grace.as_millis()
    );
    handler.stats().shutting_down.store(true, Ordering::SeqCst);
    // Each unblock wakes one worker waiting in `recv`; a busy worker sees the flag when
    // its request is done.
    for _ in 0..workers.len() {
        server.unblock();
    }
    while Instant::now() < deadline && workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = workers.iter().filter(|w| !w.is_finished()).count();
    if busy > 0 {
        log::warn!("{busy} requests still in flight at the end of the grace period");
    }
    // The last reference (once the workers are gone) closes the listening socket.
    drop(server);
    handler.on_shutdown(deadline.max(Instant::now() + config::SHUTDOWN_LOG_FLUSH_MIN));
}

/// tiny_http 0.12 runs each connection on a pool thread for the connection's whole life,
/// and its pool can queue a burst of new connections behind a single waking thread; while
/// the other connections stay open (keep-alive) a queued one is then never read. A short
/// self-connection either starts a fresh pool thread (which, done with it at once, takes
/// the next queued connection) or wakes a waiting one. Every `config::POOL_NUDGE` the
/// nudger connects and half-closes; while that nudge is not closed by the pool within
/// `config::POOL_NUDGE_QUEUED` it is itself queued behind new connections, so the nudger
/// sends another, each freeing one, until the first is served: a queued connection waits
/// about one tick, not until some other connection closes.
fn spawn_pool_nudger(addr: std::net::SocketAddr) {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let nudge = move || {
        let stream = std::net::TcpStream::connect_timeout(&target, config::POOL_NUDGE).ok()?;
        let _ = stream.shutdown(std::net::Shutdown::Write);
        Some(stream)
    };
    let spawned = std::thread::Builder::new()
        .name("pool-nudge".into())
        .spawn(move || loop {
            std::thread::sleep(config::POOL_NUDGE);
            let Some(mut first) = nudge() else { continue };
            if first
                .set_read_timeout(Some(config::POOL_NUDGE_QUEUED))
                .is_err()
            {
                continue;
            }
            for _ in 0..config::POOL_NUDGE_MAX_BURST {
                match io::Read::read(&mut first, &mut [0u8; 1]) {
                    // Still queued: free one queued connection with another nudge.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        nudge();
                    }
                    _ => break,
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the pool nudger: {e}");
    }
}

fn worker<H: Handler>(server: &Server, handler: &H, limits: &Limits) {
    let stopping = || handler.stats().shutting_down.load(Ordering::SeqCst);
    while !stopping() {
        let request = match server.recv() {
            Ok(rq) => rq,
            Err(_) if stopping() => return,
            Err(e) => {
                log::error!("accept failed: {e}");
                continue;
            }
        };
        // A panic in respond or finish must not take the worker with it either.
        if catch_unwind(AssertUnwindSafe(|| handle(handler, limits, request))).is_err() {
            log::error!("panic while answering a request; worker continues");
        }
    }
}

fn handle<H: Handler>(handler: &H, limits: &Limits, mut raw: tiny_http::Request) {
    let headers = raw
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_owned(),
                h.value.as_str().to_owned(),
            )
        })
        .collect();
    let peer = raw.remote_addr().map(|a| a.ip());
    let ctx = context::build(
        raw.method().as_str(),
        raw.url(),
        headers,
        peer,
        &limits.trusted_proxies,
    );
    let mut trace = H::Trace::default();
    let mut rq = Request::from_socket(ctx, &mut raw);
    let reply = catch_unwind(AssertUnwindSafe(|| handler.handle(&mut rq, &mut trace)))
        .unwrap_or_else(|_| {
            log::error!("handler panicked on {} {}", rq.ctx.method, rq.ctx.path);
            Reply::error(&Error::Internal("handler panicked".into()))
        });
    let read = rq.body.bytes_read();
    let ctx = rq.ctx;
    let status = reply.status;
    let safe = respond::body_is_safe_to_drop(&mut raw, &ctx, read, limits.max_body_bytes);
    // A body answered without being read is still received: drained by us or tiny_http.
    let bytes_in = if safe {
        read.max(ctx.content_length.unwrap_or(0))
    } else {
        read
    };
    let bytes_out = if safe {
        respond::respond(raw, reply, ctx.method == "HEAD")
    } else {
        respond::abandon(handler.stats(), raw, reply)
    };
    handler.finish(
        &ctx,
        trace,
        status,
        Sent {
            bytes_in,
            bytes_out,
        },
    );
}

/// A listener of its own with one thread, for small side endpoints (the credential-free
/// `/metrics` listener): `answer` gets the method and path of each request.
pub fn spawn_single_thread(
    addr: &str,
    name: &str,
    answer: impl Fn(&str, &str) -> Reply + Send + 'static,
) -> io::Result<()> {
    let server = Server::http(addr)
        .map_err(|e| io::Error::other(format!("cannot listen on {addr}: {e}")))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for rq in server.incoming_requests() {
                let path = rq.url().split('?').next().unwrap_or("").to_string();
                let method = rq.method().as_str().to_string();
                let reply = answer(&method, &path);
                respond::respond(rq, reply, method == "HEAD");
            }
        })?;
    Ok(())
}
