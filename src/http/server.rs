//! tiny_http, the worker pool and graceful shutdown. A worker takes one request at a time:
//! it builds the [`Request`] (`context.rs`), asks the [`Handler`] for a [`Reply`], writes
//! it (`respond.rs`), then tells the handler what was sent, for its log row. A panic
//! anywhere in that answers 500 and the worker goes on. `serve` returns after a graceful
//! shutdown on SIGTERM/SIGINT (see `shutdown`).

use super::{context, respond, Ctx, Reply, Request};
use crate::config::{self, Config};
use crate::error::Error;
use std::io;
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// The server loop's own state, read by `/admin/stats`, `/metrics` and `/readyz`.
#[derive(Default)]
pub struct ServerStats {
    /// Requests answered with a declared body too large to drain safely
    /// (`respond::abandon`).
    pub abandoned_bodies: AtomicU64,
    /// Set by the first SIGTERM/SIGINT: `/readyz` answers 503 and every answer carries
    /// `Connection: close`, while requests are still served for the drain.
    draining: AtomicBool,
    /// Set at the end of the drain: every request still arriving is answered 503
    /// `shutting_down`.
    stopping: AtomicBool,
    /// Set once nothing is in flight after the drain and the listening socket is shut:
    /// workers answer what tiny_http still holds, then leave.
    closed: AtomicBool,
    /// Requests taken before the drain ended that a worker is still answering: what the
    /// stop waits for (those taken later are answered 503 at once).
    in_flight: AtomicUsize,
}

impl ServerStats {
    /// Whether the process is leaving (from the first signal on).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether the drain is over: requests are refused, not served.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully (see `shutdown`).
pub fn serve<H: Handler>(cfg: &Config, handler: Arc<H>) -> io::Result<()> {
    // Registered before listening, so a signal during start-up is not lost.
    let signals = shutdown_signals()?;
    let cannot = |e: &dyn std::fmt::Display| {
        io::Error::other(format!("cannot listen on {}: {e}", cfg.listen_addr))
    };
    let listener = TcpListener::bind(&cfg.listen_addr).map_err(|e| cannot(&e))?;
    // A second handle on the listening socket: tiny_http owns the first and offers no way
    // to stop accepting while its queue is still served (see `stop_accepting`).
    let listening = listener.try_clone()?;
    let server = Server::from_listener(listener, None).map_err(|e| cannot(&e))?;
    let server = Arc::new(server);
    if let Some(addr) = server.server_addr().to_ip() {
        spawn_pool_nudger(addr);
    }
    // The address bound, not the one asked for: with port 0 the system picks the port, and
    // this line is where a caller (the tests) learns it.
    let bound = listening.local_addr().map(|a| a.to_string());
    log::info!(
        "listening on {} with {} workers",
        bound.as_deref().unwrap_or(&cfg.listen_addr),
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
    drop(server);
    let signal = signals
        .recv()
        .map_err(|_| io::Error::other("the signal thread stopped"))?;
    shutdown(cfg, &*handler, &listening, handles, signal);
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

/// The shutdown a rolling restart behind a load balancer needs (docs/operations.md,
/// "Rolling restarts"), in three steps:
/// 1. drain: for `cfg.shutdown_drain` everything is served as before, but `/readyz`
///    answers 503 so the balancer's health check takes the replica out, and every answer
///    carries `Connection: close` so no client keeps a connection to a leaving process;
/// 2. stop: every request that still arrives, on a new connection or an open one, is
///    answered 503 `shutting_down` while the requests in flight finish, within
///    `cfg.shutdown_grace`; once none is left the listening socket is shut (new
///    connections are refused, never accepted and left unanswered) and the workers answer
///    what tiny_http had already accepted;
/// 3. the handler writes what it has queued (within the same grace, but at least
///    `config::SHUTDOWN_LOG_FLUSH_MIN`) and `serve` returns, so `main` exits 0.
///
/// SIGINT skips the drain. A second signal at any point exits at once
/// (`shutdown_signals`).
fn shutdown<H: Handler>(
    cfg: &Config,
    handler: &H,
    listening: &TcpListener,
    workers: Vec<std::thread::JoinHandle<()>>,
    signal: i32,
) {
    let stats = handler.stats();
    stats.draining.store(true, Ordering::SeqCst);
    // SIGINT is Ctrl-C at a terminal, where no balancer waits for `/readyz`; service
    // managers and orchestrators (systemd, Docker, Kubernetes) send SIGTERM.
    let drain = if signal == signal_hook::consts::SIGINT {
        Duration::ZERO
    } else {
        cfg.shutdown_drain
    };
    log::info!(
        "signal {signal}: /readyz answers 503; serving for the drain ({} ms)",
        drain.as_millis()
    );
    std::thread::sleep(drain);
    let deadline = Instant::now() + cfg.shutdown_grace;
    log::info!(
        "drain over: refusing new requests, finishing those in flight (grace {} ms)",
        cfg.shutdown_grace.as_millis()
    );
    stats.stopping.store(true, Ordering::SeqCst);
    let in_flight = || stats.in_flight.load(Ordering::SeqCst);
    while Instant::now() < deadline && in_flight() > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop_accepting(listening);
    stats.closed.store(true, Ordering::SeqCst);
    while Instant::now() < deadline && workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if in_flight() > 0 {
        log::warn!(
            "{} requests still in flight at the end of the grace period",
            in_flight()
        );
    }
    handler.on_shutdown(deadline.max(Instant::now() + config::SHUTDOWN_LOG_FLUSH_MIN));
}

/// Set when `stop_accepting` has run: the error tiny_http's accept thread then logs once
/// ("Error accepting new client: Invalid argument") is expected, not a fault
/// (`main`'s logger leaves it out).
static ACCEPT_STOPPED: AtomicBool = AtomicBool::new(false);

pub fn accept_stopped() -> bool {
    ACCEPT_STOPPED.load(Ordering::Relaxed)
}

/// Shuts the listening socket for reading: on Linux the kernel then refuses new
/// connections and wakes tiny_http's accept thread with an error, so it stops accepting,
/// while the requests it already queued stay for the workers to answer. (Dropping the
/// `Server`, tiny_http's own way, would drop that queue with them.)
fn stop_accepting(listening: &TcpListener) {
    ACCEPT_STOPPED.store(true, Ordering::SeqCst);
    if let Err(e) = socket2::SockRef::from(listening).shutdown(std::net::Shutdown::Read) {
        log::error!("cannot stop accepting connections: {e}");
    }
}

/// tiny_http 0.12 runs each connection on a pool thread for the connection's whole life,
/// and its pool can queue a burst of new connections with no thread to take them: its
/// `spawn` queues a connection instead of starting a thread while its count of idle threads
/// still includes threads already woken for the connections before. While the other
/// connections stay open (keep-alive) a queued one is then never read. Measured: after a
/// burst of 32 new connections, the last of them waited 1.3 s (docs/performance.md, "A
/// burst of new connections: the pool kept warm").
///
/// Two remedies, both through short self-connections (a "nudge": connect, half-close):
/// - Every `config::POOL_NUDGE` the nudger sends one. Taken by an idle thread, it shows that
///   nothing is queued (a thread waits only on an empty queue). Taken by a fresh thread (the
///   process' thread count grew) or not taken within `config::POOL_NUDGE_QUEUED`, it shows
///   the pool had no idle thread, so connections may be queued: the fresh thread, done with
///   the nudge, takes the next queued connection, and the nudger sends another at once, up
///   to `config::POOL_NUDGE_MAX_BURST`. A queued connection waits at most about one tick.
/// - Every `config::POOL_WARM_EVERY` it holds `config::POOL_WARM` connections open at once
///   for a moment (not half-closed: each keeps a pool thread waiting for a request), so
///   that many pool threads exist and, closed together, wait idle: a burst up to that size
///   meets idle threads and is not queued. (Idle pool threads beyond 4 exit after 5 s; the
///   period is shorter. The held connections can meet the same race, so a renewal may
///   leave fewer; the next one tops them up.)
fn spawn_pool_nudger(addr: std::net::SocketAddr) {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let connect = move || std::net::TcpStream::connect_timeout(&target, config::POOL_NUDGE).ok();
    let nudge = move || {
        let stream = connect()?;
        let _ = stream.shutdown(std::net::Shutdown::Write);
        Some(stream)
    };
    let spawned = std::thread::Builder::new()
        .name("pool-nudge".into())
        .spawn(move || {
            let mut warmed: Option<Instant> = None;
            loop {
                std::thread::sleep(config::POOL_NUDGE);
                if warmed.is_none_or(|w| w.elapsed() >= config::POOL_WARM_EVERY) {
                    warmed = Some(Instant::now());
                    keep_warm(&connect);
                }
                for _ in 0..config::POOL_NUDGE_MAX_BURST {
                    if !nudge_found_queue(&nudge) {
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the pool nudger: {e}");
    }
}

/// Sends one nudge and tells whether connections may be queued behind it: it was taken by
/// a fresh pool thread, or by none within `config::POOL_NUDGE_QUEUED`.
fn nudge_found_queue(nudge: &impl Fn() -> Option<std::net::TcpStream>) -> bool {
    let before = process_threads();
    let Some(mut stream) = nudge() else {
        return false;
    };
    if stream
        .set_read_timeout(Some(config::POOL_NUDGE_QUEUED))
        .is_err()
    {
        return false;
    }
    match io::Read::read(&mut stream, &mut [0u8; 1]) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            true
        }
        _ => matches!((before, process_threads()), (Some(b), Some(a)) if a > b),
    }
}

/// Holds `config::POOL_WARM` connections open (each keeps a pool thread waiting for its
/// request) for `config::POOL_WARM_HOLD`, then closes them together.
fn keep_warm(connect: &impl Fn() -> Option<std::net::TcpStream>) {
    let held: Vec<_> = (0..config::POOL_WARM).filter_map(|_| connect()).collect();
    std::thread::sleep(config::POOL_WARM_HOLD);
    drop(held);
}

/// The process' thread count (Linux: `/proc/self/stat`), None elsewhere.
fn process_threads() -> Option<u64> {
    threads_in_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The 20th field of a `/proc/<pid>/stat` line, num_threads.
fn threads_in_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(17)?.parse().ok()
}

/// Takes requests until the shutdown has closed the listening socket and none has arrived
/// for `config::SHUTDOWN_QUIET`: every request that reached tiny_http is answered.
fn worker<H: Handler>(server: &Server, handler: &H, limits: &Limits) {
    let stats = handler.stats();
    loop {
        let request = match server.recv_timeout(config::SHUTDOWN_QUIET) {
            Ok(Some(rq)) => rq,
            Ok(None) if stats.closed.load(Ordering::SeqCst) => return,
            Ok(None) => continue,
            // The accept thread's error once `stop_accepting` shut the socket.
            Err(_) if stats.stopping() => continue,
            Err(e) => {
                log::error!("accept failed: {e}");
                continue;
            }
        };
        let served = !stats.stopping();
        if served {
            stats.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        // A panic in respond or finish must not take the worker with it either.
        if catch_unwind(AssertUnwindSafe(|| handle(handler, limits, request))).is_err() {
            log::error!("panic while answering a request; worker continues");
        }
        if served {
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
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
    let mut reply = catch_unwind(AssertUnwindSafe(|| handler.handle(&mut rq, &mut trace)))
        .unwrap_or_else(|_| {
            log::error!("handler panicked on {} {}", rq.ctx.method, rq.ctx.path);
            Reply::error(&Error::Internal("handler panicked".into()))
        });
    if handler.stats().draining() {
        // RFC 9112 §9.6: the client opens its next request elsewhere (through the balancer,
        // on another replica) instead of on a connection about to close.
        reply.header("Connection", "close");
    }
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

#[cfg(test)]
mod tests {
    use super::{process_threads, threads_in_stat};

    #[test]
    fn the_thread_count_is_read_from_the_stat_line() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 67 0 \
                    12345 1000000 500 18446744073709551615";
        assert_eq!(threads_in_stat(stat), Some(67));
        assert_eq!(threads_in_stat("no parenthesis"), None);
        // Other tests' threads come and go: only that it reads a count.
        assert!(process_threads().is_some_and(|n| n >= 1));
    }
}
