//! Faults inside tollgate's own process and its database: graceful shutdown on SIGTERM,
//! a second signal, a real Postgres outage (private cluster killed under load), and panics
//! in a handler, in the logger thread and while holding a lock. A crate of its own: its
//! tests signal and wait for the gateway process, and kill and restart a Postgres cluster
//! of their own (`PrivatePg`), never the shared one.

// The whole harness; this crate uses part of it.
#[allow(dead_code)]
mod util;

use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use util::{Gateway, PrivatePg, TestDb, Upstream};

/// One client connection of its own, outside the harness (the harness' gateway handle is
/// borrowed mutably while the process is waited for).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET `addr+path` with `key`: status (0 when no HTTP answer came), X-Request-Id, headers'
/// `X-RateLimit-Degraded`, body.
fn get(agent: &ureq::Agent, url: &str, key: &str) -> (u16, Option<String>, bool, String) {
    match agent.get(url).header("x-api-key", key).call() {
        Ok(r) => {
            let id = r
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let degraded = r.headers().get("x-ratelimit-degraded").is_some();
            let status = r.status().as_u16();
            let body = r.into_body().read_to_string().unwrap_or_default();
            (status, id, degraded, body)
        }
        Err(e) => (0, None, false, e.to_string()),
    }
}

#[test]
fn sigterm_lets_requests_in_flight_finish_logs_every_answered_request_and_exits_zero() {
    let grace = Duration::from_secs(10);
    let (mut gw, up, user) = util::gateway_with_api_route(&[
        ("TOLLGATE_SHUTDOWN_GRACE_MS", "10000"),
        ("TOLLGATE_SHUTDOWN_DRAIN_MS", "500"),
    ]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    let base = gw.direct_addr.clone();
    let answered = Mutex::new(Vec::<(String, Instant)>::new());
    let stop = AtomicBool::new(false);
    let (exit, signalled) = std::thread::scope(|s| {
        for i in 0..8 {
            let (base, key, answered, stop) = (&base, &key, &answered, &stop);
            s.spawn(move || {
                let agent = agent();
                // Half the clients hold requests in flight (300 ms upstream) at any moment.
                let path = if i % 2 == 0 {
                    "/api/slow/300"
                } else {
                    "/api/x"
                };
                while !stop.load(Ordering::Relaxed) {
                    let (status, id, _, body) = get(&agent, &format!("{base}{path}"), key);
                    if status == 0 {
                        // Refused: the gateway has closed its socket; nothing was logged.
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    // After the drain, requests arriving are refused, and logged.
                    let refused = status == 503 && body.contains("\"shutting_down\"");
                    assert!(status == 200 || refused, "{path}: {status} {body}");
                    let id = id.expect("every gateway answer carries X-Request-Id");
                    answered.lock().unwrap().push((id, Instant::now()));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        let signalled = Instant::now();
        gw.signal("TERM");
        let exit = gw.wait_exit(grace + Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        (exit, signalled)
    });
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("still running after the grace period"));
    assert!(exit.success(), "exit status {exit:?}: {}", gw.output());
    assert!(took < grace, "took {took:?}");
    let answered = answered.into_inner().unwrap();
    let after_signal = answered.iter().filter(|(_, t)| *t > signalled).count();
    assert!(
        after_signal > 0,
        "no request in flight at SIGTERM was answered"
    );
    let logged = gw.logged_request_ids();
    let missing: Vec<_> = answered
        .iter()
        .filter(|(id, _)| !logged.contains(id))
        .collect();
    eprintln!(
        "{} answered ({} after SIGTERM), {} rows logged, exit in {:?}",
        answered.len(),
        after_signal,
        logged.len(),
        took
    );
    assert!(
        missing.is_empty(),
        "{} answered requests have no log row",
        missing.len()
    );
    assert!(gw.output().contains("every log row written"));
    drop(up);
}

#[test]
fn a_second_signal_exits_at_once_without_waiting_for_requests_in_flight() {
    let (mut gw, _up, user) =
        util::gateway_with_api_route(&[("TOLLGATE_SHUTDOWN_GRACE_MS", "30000")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    let url = format!("{}/api/slow/20000", gw.direct_addr);
    let exit = std::thread::scope(|s| {
        s.spawn(|| get(&agent(), &url, &key));
        std::thread::sleep(Duration::from_millis(500));
        gw.signal("TERM");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            gw.wait_exit(Duration::ZERO).is_none(),
            "exited before the request in flight finished"
        );
        let t0 = Instant::now();
        gw.signal("INT");
        let exit = gw.wait_exit(Duration::from_secs(5));
        (exit, t0.elapsed())
    });
    let (exit, took) = exit;
    let exit = exit.expect("a second signal must end the process");
    assert!(
        !exit.success(),
        "a forced exit is not a clean one: {exit:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_panicking_handler_answers_500_json_and_the_worker_lives_on() {
    // Two workers, twenty panics: each worker panics ten times and must still serve.
    let (gw, _user, key) = util::gateway_with_key(
        "panic@example.com",
        &[
            ("TOLLGATE_WORKERS", "2"),
            ("TOLLGATE_TEST_PANIC_PATH", "/__test-panic"),
        ],
    );
    for _ in 0..20 {
        let r = gw.direct("GET", "/__test-panic", &[], None);
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(r.code(), "internal");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(gw.direct("GET", "/healthz", &[], None).status, 200);
    let r = gw.with_key_direct("GET", "/nowhere", &key);
    assert_eq!(r.code(), "route_not_found");
    assert!(gw.output().contains("handler panicked"));
}

#[test]
fn the_logger_thread_restarts_after_a_panic_and_loses_no_rows() {
    let (gw, _user, key) = util::gateway_with_key(
        "logger-panic@example.com",
        &[("TOLLGATE_TEST_PANIC_PATH", "/__test-panic")],
    );
    let mut sent = 0;
    for _ in 0..5 {
        gw.with_key_direct("GET", "/before", &key);
        sent += 1;
    }
    // The trigger request is itself a gateway request (401, no key), so it is logged too.
    assert_eq!(
        gw.direct("GET", "/__test-panic/logger", &[], None).status,
        401
    );
    sent += 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.admin_get("/admin/stats").json()["loggerRestarts"] != 1 {
        assert!(Instant::now() < deadline, "the logger never restarted");
        std::thread::sleep(Duration::from_millis(25));
    }
    for _ in 0..5 {
        gw.with_key_direct("GET", "/after", &key);
        sent += 1;
    }
    assert_eq!(gw.wait_for_log_rows(sent), sent);
    assert!(gw
        .output()
        .contains("logger thread panicked; restarting it"));
}

#[test]
fn a_lock_poisoned_by_a_panic_takes_nothing_down() {
    let up = Upstream::start();
    let gw = Gateway::start_with(&[("TOLLGATE_TEST_PANIC_PATH", "/__test-panic")]);
    let user = gw.create_user("poison@example.com");
    gw.create_route(user, "/api", &up.addr);
    let (key, key_id) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    assert_eq!(gw.with_key_direct("GET", "/api/a", &key).status, 200);
    // Panics while holding the key cache's write lock: the lock is now poisoned.
    let r = gw.direct("GET", "/__test-panic/lock", &[], None);
    assert_eq!(r.status, 500, "{}", r.body);
    // Cached reads, cache updates from the admin API and new verifications still work.
    assert_eq!(gw.with_key_direct("GET", "/api/b", &key).status, 200);
    let (key2, _) = gw.create_key(user, json!({}));
    assert_eq!(gw.with_key_direct("GET", "/api/c", &key2).status, 200);
    assert_eq!(
        gw.admin_delete(&format!("/admin/api-keys/{key_id}")).status,
        200
    );
    assert_eq!(
        gw.with_key_direct("GET", "/api/d", &key).code(),
        "revoked_api_key"
    );
    assert_eq!(gw.direct("GET", "/healthz", &[], None).status, 200);
}

/// Sets its flag when dropped, also while unwinding from a failed assertion.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Status counts of what the clients got.
#[derive(Default)]
struct Tally {
    gateway_answers: i64,
    ok: i64,
    degraded: i64,
    other: Vec<(u16, String)>,
}

#[test]
fn a_thirty_second_database_outage_under_load_serves_cached_keys_loses_no_log_rows_and_logs_two_lines(
) {
    let pg = PrivatePg::start();
    // A long wait for a connection, so that a request that waited for one stands out.
    let db_wait = Duration::from_secs(5);
    let gw = Gateway::start_on(
        TestDb::create_in(&pg.base()),
        &[("TOLLGATE_DB_WAIT_MS", "5000")],
    );
    let up = Upstream::start();
    let user = gw.create_user("outage@example.com");
    gw.create_route(user, "/api", &up.addr);
    let (cached, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    let (unknown, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    assert_eq!(gw.with_key_direct("GET", "/api/warm", &cached).status, 200);
    let tally = Mutex::new(Tally {
        gateway_answers: 1,
        ok: 1,
        ..Tally::default()
    });
    let stop = AtomicBool::new(false);
    // When each load request was sent and how long it took.
    let timings = Mutex::new(Vec::<(Instant, Duration)>::new());
    let base = gw.direct_addr.clone();
    let record = |t: &Mutex<Tally>, status: u16, degraded: bool, body: String| {
        let mut t = t.lock().unwrap();
        if status != 0 {
            t.gateway_answers += 1;
        }
        match status {
            200 => t.ok += 1,
            _ => t.other.push((status, body)),
        }
        if degraded {
            t.degraded += 1;
        }
    };
    std::thread::scope(|s| {
        // A failed check below stops the load too, so the scope ends and the test fails
        // instead of waiting on the load for ever.
        let _stop_on_exit = StopOnDrop(&stop);
        for _ in 0..4 {
            let (base, cached, tally, stop) = (&base, &cached, &tally, &stop);
            let timings = &timings;
            s.spawn(move || {
                let agent = agent();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let (status, _, degraded, body) =
                        get(&agent, &format!("{base}/api/load"), cached);
                    timings.lock().unwrap().push((sent, sent.elapsed()));
                    record(tally, status, degraded, body);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        pg.kill();
        let killed = Instant::now();
        // Give the gateway a moment to notice, then check each promise during the outage.
        std::thread::sleep(Duration::from_secs(3));
        let r = gw.with_key_direct("GET", "/api/new", &unknown);
        record(&tally, r.status, false, r.body.clone());
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.code(), "database_unavailable");
        assert!(r.header("retry-after").is_some());
        let r = gw.admin_post(
            "/admin/users",
            json!({"email": "x@example.com", "name": "X"}),
        );
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.code(), "database_unavailable");
        let r = gw.direct("GET", "/readyz", &[], None);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["database"], "unreachable");
        let r = gw.with_key_direct("GET", "/api/during", &cached);
        record(
            &tally,
            r.status,
            r.header("x-ratelimit-degraded").is_some(),
            r.body.clone(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-degraded"), Some("1"));
        std::thread::sleep(Duration::from_secs(30).saturating_sub(killed.elapsed()));
        pg.start_again();
        let back = Instant::now();
        // Once the outage was noticed, no request waited for a connection: only the
        // background prober tries the database (once a second, waiting `db_wait`).
        let slowest = timings
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, _)| *sent > killed + Duration::from_secs(1) && *sent < back)
            .map(|(_, took)| *took)
            .max()
            .unwrap();
        assert!(slowest < db_wait / 2, "a request waited {slowest:?}");
        let deadline = back + Duration::from_secs(30);
        while gw.direct("GET", "/readyz", &[], None).status != 200 {
            assert!(Instant::now() < deadline, "/readyz never recovered");
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("ready again {:?} after restart", back.elapsed());
        // After recovery: new keys verify, admin writes work, limits are counted again.
        let r = gw.with_key_direct("GET", "/api/new-again", &unknown);
        record(&tally, r.status, false, r.body.clone());
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("x-ratelimit-degraded").is_none());
        assert!(r.header("x-ratelimit-remaining").is_some());
        gw.create_user("after@example.com");
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
    });
    let t = tally.into_inner().unwrap();
    eprintln!(
        "answers {}: 200 {}, degraded {}, other {:?}",
        t.gateway_answers,
        t.ok,
        t.degraded,
        t.other.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    // The load's cached key never failed: every non-200 is the one unknown-key probe.
    assert_eq!(t.other.len(), 1, "{:?}", t.other);
    assert!(t.degraded > 50, "few degraded answers: {}", t.degraded);
    let rows = gw.wait_for_log_rows_within(t.gateway_answers, Duration::from_secs(30));
    assert_eq!(
        rows, t.gateway_answers,
        "log rows vs answers the clients got"
    );
    // And no more than that: nothing was written twice.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.wait_for_log_rows(t.gateway_answers), t.gateway_answers);
    let stats = gw.admin_get("/admin/stats").json();
    assert_eq!(stats["logRowsDropped"], 0, "{stats}");
    assert_eq!(stats["databaseUp"], true, "{stats}");
    // The operator reads two lines about it: gone, and back with its length.
    let out = gw.output();
    let lines = |what: &str| out.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("database unreachable"), 1, "{out}");
    assert_eq!(lines("database reachable again after"), 1, "{out}");
    assert_eq!(lines("error connecting to server"), 0, "{out}");
}

#[test]
fn log_rows_beyond_the_buffer_bound_during_an_outage_are_dropped_and_counted() {
    let pg = PrivatePg::start();
    let gw = Gateway::start_on(
        TestDb::create_in(&pg.base()),
        // Held in memory during the outage: the logger's buffer plus what waits on the
        // channel (rows queued while a failed write was blocked are written too).
        &[
            ("TOLLGATE_LOG_BUFFER_MAX", "50"),
            ("TOLLGATE_LOG_QUEUE", "10"),
        ],
    );
    let up = Upstream::start();
    let user = gw.create_user("bound@example.com");
    gw.create_route(user, "/api", &up.addr);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    for _ in 0..10 {
        assert_eq!(gw.with_key_direct("GET", "/api/before", &key).status, 200);
    }
    assert_eq!(gw.wait_for_log_rows(10), 10);
    pg.kill();
    let t0 = Instant::now();
    for _ in 0..200 {
        let r = gw.with_key_direct("GET", "/api/during", &key);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let took = t0.elapsed();
    // During a known outage requests skip the database: 200 requests each waiting for a
    // pooled connection (2 s) would take minutes.
    assert!(took < Duration::from_secs(60), "200 requests took {took:?}");
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        if gw.direct("GET", "/readyz", &[], None).status == 200 {
            let s = gw.admin_get("/admin/stats").json();
            if s["logRowsBuffered"] == 0 && s["logQueueDepth"] == 0 {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "the log buffer never drained");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows = gw.wait_for_log_rows_within(10, Duration::ZERO) - 10;
    let dropped = stats["logRowsDropped"].as_i64().unwrap();
    eprintln!(
        "outage: 200 answered in {took:?}, {rows} rows written after recovery, {dropped} dropped"
    );
    assert!(rows <= 60, "{rows} rows kept beyond the bound of 50 + 10");
    assert!(rows > 0, "nothing kept");
    assert_eq!(
        rows + dropped,
        200,
        "every row is either written or counted"
    );
}
