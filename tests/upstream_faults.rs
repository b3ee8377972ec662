//! Upstream faults: timeouts, refusals, the circuit breaker, the retry of a dead pooled
//! connection, a hung upstream next to healthy ones, and no leaks after many failures.
use crate::util::{dead_upstream, headers_named, proc_status_kib, read_head, Gateway, Upstream};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn setup(env: &[(&str, &str)]) -> (Gateway, i64, String) {
    crate::util::gateway_with_key("resilience@example.com", env)
}

/// Polls `f` every 25 ms until it returns `Some`, or panics with `what` after `within`.
fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The `/readyz` entry for `upstream` (`http://host:port`).
fn breaker_state(gw: &Gateway, upstream: &str) -> Option<String> {
    let r = gw.direct("GET", "/readyz", &[], None);
    let v: Value = r.json();
    v["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["upstream"].as_str().is_some_and(|s| s.contains(upstream)))
        .map(|u| u["state"].as_str().unwrap_or("").to_string())
}

/// A listener whose accept queue is full: further connections are neither accepted nor
/// refused (Linux drops their SYNs), so connecting to it hangs until a connect timeout.
struct Blackhole {
    addr: String,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Blackhole {
    fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sa = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..10_000 {
            match TcpStream::connect_timeout(&sa, Duration::from_millis(200)) {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Blackhole {
                        addr: format!("http://{sa}"),
                        _listener: listener,
                        _queued: queued,
                    };
                }
                Err(e) => panic!("filling the accept queue: {e}"),
            }
        }
        panic!("the accept queue never filled");
    }
}

#[test]
fn timeouts_answer_504_refusals_502_and_both_are_logged() {
    let up = Upstream::start();
    let hole = Blackhole::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route_with(
        user,
        "/connect",
        &hole.addr,
        json!({"connectTimeoutMs": 300}),
    );
    gw.create_route_with(user, "/read", &up.addr, json!({"readTimeoutMs": 300}));
    gw.create_route_with(user, "/total", &up.addr, json!({"timeoutMs": 400}));
    gw.create_route(user, "/refused", &dead_upstream());

    for (path, status, code) in [
        ("/connect/x", 504, "upstream_timeout"),
        ("/read/slow/3000", 504, "upstream_timeout"),
        ("/total/slow/3000", 504, "upstream_timeout"),
        ("/refused/x", 502, "upstream_unreachable"),
    ] {
        let t0 = Instant::now();
        let r = gw.with_key_direct("GET", path, &key);
        assert_eq!((r.status, r.code().as_str()), (status, code), "{path}");
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{path} took {:?}",
            t0.elapsed()
        );
    }
    // A read timeout is per read, not for the whole answer: within it, slow is fine.
    assert_eq!(
        gw.with_key_direct("GET", "/read/slow/100", &key).status,
        200
    );

    let mut db = gw.db.client();
    let rows: Vec<(String, i32)> = poll(Duration::from_secs(10), "the log rows", || {
        let rows: Vec<(String, i32)> = db
            .query(
                "SELECT path, status FROM request_logs WHERE status >= 500 ORDER BY path",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        (rows.len() >= 4).then_some(rows)
    });
    assert_eq!(
        rows,
        [
            ("/connect/x".to_string(), 504),
            ("/read/slow/3000".to_string(), 504),
            ("/refused/x".to_string(), 502),
            ("/total/slow/3000".to_string(), 504),
        ]
    );
}

/// Answers every request `200 ok` and closes.
fn serve_ok(listener: TcpListener, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            if read_request(&mut r).is_some() {
                let _ = w.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
    }
}

#[test]
fn the_circuit_opens_after_consecutive_failures_and_a_probe_closes_it() {
    let (gw, user, key) = setup(&[
        ("TOLLGATE_BREAKER_FAILURES", "3"),
        ("TOLLGATE_BREAKER_COOLDOWN_MS", "1000"),
    ]);
    let dead = dead_upstream();
    let authority = dead.trim_start_matches("http://").to_string();
    gw.create_route(user, "/flaky", &dead);
    for i in 0..3 {
        let r = gw.with_key_direct("GET", "/flaky/x", &key);
        assert_eq!(
            (r.status, r.code().as_str()),
            (502, "upstream_unreachable"),
            "failure {i}"
        );
    }
    let t0 = Instant::now();
    let r = gw.with_key_direct("GET", "/flaky/x", &key);
    let took = t0.elapsed();
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "upstream_circuit_open")
    );
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(took < Duration::from_millis(200), "answered in {took:?}");
    assert_eq!(breaker_state(&gw, &authority).as_deref(), Some("open"));

    // The upstream comes back on the same port; after the cool-down one probe goes
    // through and closes the circuit.
    let listener = TcpListener::bind(&authority).expect("rebind the dead upstream's port");
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    std::thread::spawn(move || serve_ok(listener, st));
    let opened = Instant::now();
    let r = poll(Duration::from_secs(5), "a probe to pass", || {
        let r = gw.with_key_direct("GET", "/flaky/x", &key);
        match r.status {
            200 => Some(r),
            503 => {
                assert_eq!(r.code(), "upstream_circuit_open");
                std::thread::sleep(Duration::from_millis(75));
                None
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    });
    assert_eq!(r.body, "ok");
    assert!(
        opened.elapsed() >= Duration::from_millis(700),
        "no request passed before the cool-down: {:?}",
        opened.elapsed()
    );
    assert_eq!(breaker_state(&gw, &authority).as_deref(), Some("closed"));
    assert_eq!(gw.with_key_direct("GET", "/flaky/y", &key).status, 200);
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(&authority);
}

#[test]
fn upstream_5xx_opens_the_circuit_only_with_breaker_on_5xx() {
    let (counted, ignored) = (Upstream::start(), Upstream::start());
    let (gw, user, key) = setup(&[
        ("TOLLGATE_BREAKER_FAILURES", "3"),
        ("TOLLGATE_BREAKER_COOLDOWN_MS", "60000"),
    ]);
    gw.create_route_with(
        user,
        "/strict",
        &counted.addr,
        json!({"breakerOn5xx": true}),
    );
    gw.create_route(user, "/lenient", &ignored.addr);
    for _ in 0..3 {
        assert_eq!(
            gw.with_key_direct("GET", "/strict/status/500", &key).status,
            500
        );
    }
    let r = gw.with_key_direct("GET", "/strict/status/500", &key);
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "upstream_circuit_open")
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(counted.requests().len(), 3, "the open circuit sent nothing");

    for _ in 0..6 {
        assert_eq!(
            gw.with_key_direct("GET", "/lenient/status/500", &key)
                .status,
            500
        );
    }
    assert_eq!(ignored.requests().len(), 6);
    let authority = ignored.addr.trim_start_matches("http://");
    assert_eq!(breaker_state(&gw, authority).as_deref(), Some("closed"));
}

/// Reads one request (head and Content-Length body); returns its method.
fn read_request(r: &mut impl BufRead) -> Option<String> {
    let (line, headers) = read_head(r)?;
    let len = match headers_named(&headers, "content-length").first() {
        Some(v) => v.parse().ok()?,
        None => 0,
    };
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(line.split(' ').next().unwrap_or("").to_string())
}

/// An upstream that answers the first request on each connection with `Connection:
/// keep-alive`, then reads the next request on that connection and closes it without a
/// byte of answer: an upstream that dropped an idle keep-alive connection just as the
/// gateway reused it from its pool. Records what it answered and what it dropped.
struct Dropper {
    addr: String,
    answered: Arc<Mutex<Vec<String>>>,
    dropped: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Dropper {
    fn start() -> Dropper {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let answered = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, d, st) = (answered.clone(), dropped.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (a, d) = (a.clone(), d.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    let Some(method) = read_request(&mut r) else {
                        return;
                    };
                    a.lock().unwrap().push(method);
                    let _ = w.write_all(
                        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                    );
                    if let Some(method) = read_request(&mut r) {
                        d.lock().unwrap().push(method);
                    }
                    let _ = w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Dropper {
            addr,
            answered,
            dropped,
            stop,
        }
    }

    fn count(list: &Mutex<Vec<String>>, method: &str) -> usize {
        list.lock().unwrap().iter().filter(|m| *m == method).count()
    }
}

impl Drop for Dropper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
    }
}

#[test]
fn a_dead_pooled_connection_is_retried_for_get_but_never_for_post() {
    let up = Dropper::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/drop", &up.addr);
    for i in 0..5 {
        let r = gw.with_key_direct("GET", "/drop/x", &key);
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "GET {i}");
    }
    // GETs that met a pooled connection dead were sent again, on a fresh connection (which
    // is not pooled, so the next GET opens its own): each answered exactly once.
    assert_eq!(Dropper::count(&up.answered, "GET"), 5);
    let dropped = Dropper::count(&up.dropped, "GET");
    assert!(
        (1..=4).contains(&dropped),
        "{dropped} GETs met a dead connection"
    );
    // Leave a used connection in the pool: a GET that needed no retry went out on a new
    // pooled connection (a retried one went out on a fresh, unpooled one).
    for _ in 0..3 {
        let before = Dropper::count(&up.dropped, "GET");
        assert_eq!(gw.with_key_direct("GET", "/drop/x", &key).status, 200);
        if Dropper::count(&up.dropped, "GET") == before {
            break;
        }
    }
    // The worker hands the connection back just after the client has its answer.
    std::thread::sleep(Duration::from_millis(100));
    // A POST meets that dead connection: it is not sent a second time.
    let r = gw.direct(
        "POST",
        "/drop/x",
        &[("x-api-key", &key)],
        Some(b"{\"n\":1}"),
    );
    assert_eq!((r.status, r.code().as_str()), (502, "upstream_unreachable"));
    let posts = Dropper::count(&up.answered, "POST") + Dropper::count(&up.dropped, "POST");
    assert_eq!(posts, 1, "the POST reached the upstream {posts} times");
}

// Worker-pool policy (docs/operations.md, "Upstream failures"): a request holds a worker for its
// whole life, so each upstream may have at most TOLLGATE_UPSTREAM_MAX_INFLIGHT requests in
// flight (three quarters of TOLLGATE_WORKERS by default: 6 of 8 here); the next ones to the
// same upstream get 503 `upstream_busy` at once, and the remaining workers keep serving
// every other route.
#[test]
fn a_hung_upstream_holds_at_most_its_share_of_workers_and_other_routes_stay_fast() {
    let (hung, healthy) = (Upstream::start(), Upstream::start());
    let (gw, user, key) = setup(&[("TOLLGATE_WORKERS", "8")]);
    gw.create_route(user, "/hang", &hung.addr);
    gw.create_route(user, "/ok", &healthy.addr);
    let addr = gw.direct_addr.clone();
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let (addr, key) = (addr.clone(), key.clone());
            std::thread::spawn(move || {
                // Staggered so each connection is accepted on its own; a simultaneous burst
                // is the regression test
                // `a_burst_of_new_connections_is_read_at_once_not_after_other_requests_finish`.
                std::thread::sleep(Duration::from_millis(30 * i));
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(20)))
                    .build()
                    .into();
                let t0 = Instant::now();
                let r = agent
                    .get(format!("{addr}/hang/slow/3000"))
                    .header("x-api-key", &key)
                    .call()
                    .unwrap();
                let status = r.status().as_u16();
                let body = r.into_body().read_to_string().unwrap();
                (status, body, t0.elapsed())
            })
        })
        .collect();
    poll(
        Duration::from_secs(5),
        "6 requests hanging upstream",
        || (hung.requests().len() >= 6).then_some(()),
    );
    for i in 0..10 {
        let t0 = Instant::now();
        let r = gw.with_key_direct("GET", &format!("/ok/{i}"), &key);
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(took < Duration::from_millis(500), "/ok/{i} took {took:?}");
    }
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    let busy: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!((ok, busy.len()), (6, 4), "{results:?}");
    for (_, body, took) in busy {
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_busy");
        assert!(*took < Duration::from_millis(1000), "busy after {took:?}");
    }
    assert_eq!(hung.requests().len(), 6);
}

fn count_entries(dir: String) -> usize {
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

#[test]
fn a_thousand_requests_to_a_dead_upstream_leak_no_threads_sockets_or_memory() {
    let (gw, user, key) = setup(&[("TOLLGATE_BREAKER_FAILURES", "1000000")]);
    gw.create_route(user, "/dead", &dead_upstream());
    let pid = gw.pid();
    let tasks = || count_entries(format!("/proc/{pid}/task"));
    let fds = || count_entries(format!("/proc/{pid}/fd"));
    let served = AtomicUsize::new(0);
    let hit = |n: usize| {
        for _ in 0..n {
            let r = gw.with_key_direct("GET", "/dead/x", &key);
            assert_eq!(r.status, 502, "{}", r.body);
            served.fetch_add(1, Ordering::Relaxed);
        }
    };
    hit(50);
    let (tasks0, fds0) = (tasks(), fds());
    let t0 = Instant::now();
    hit(1000);
    let took = t0.elapsed();
    // Memory: the first thousand may still grow allocator arenas and pools to their
    // working size; a second thousand must not grow it further (a leak of even 1 KiB a
    // request would show as 1 MiB).
    let rss0 = proc_status_kib(pid, "VmRSS");
    hit(1000);
    let rss1 = proc_status_kib(pid, "VmRSS");
    // Give the logger a flush and any finished connection thread time to go away.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (tasks1, fds1) = loop {
        let (t, f) = (tasks(), fds());
        if (t <= tasks0 + 5 && f <= fds0 + 5) || Instant::now() > deadline {
            break (t, f);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "1000 requests to a dead upstream in {:.1} s: threads {tasks0} -> {tasks1}, fds {fds0} -> {fds1}, \
         RSS {rss0} KiB -> {rss1} KiB over the next 1000",
        took.as_secs_f64()
    );
    assert_eq!(served.load(Ordering::Relaxed), 2050);
    assert!(
        rss1 <= rss0 + 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB over 1000 requests"
    );
    assert!(
        tasks1 <= tasks0 + 5,
        "threads grew from {tasks0} to {tasks1}"
    );
    assert!(
        fds1 <= fds0 + 5,
        "file descriptors grew from {fds0} to {fds1}"
    );
}
