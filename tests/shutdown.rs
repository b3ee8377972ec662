//! SIGTERM as a rolling restart sees it from one replica: `/readyz` answers 503 at once while
//! requests are still served for the drain (`TOLLGATE_SHUTDOWN_DRAIN_MS`), each answer
//! saying `Connection: close`; after the drain a new request gets 503 `shutting_down`, a
//! request in flight since before the signal still gets its 200, every answer is logged
//! and the process exits 0. SIGINT, Ctrl-C at a terminal, skips the drain. The replicas
//! behind haproxy: tests/cluster.rs.

use crate::util::{self, Resp};
use serde_json::json;
use std::time::{Duration, Instant};

const DRAIN: Duration = Duration::from_millis(1500);

/// Polls `f` every 20 ms until it returns `Some`, for at most `within`.
fn within<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn request_id(r: &Resp) -> String {
    r.header("X-Request-Id")
        .expect("every gateway answer carries X-Request-Id")
        .to_string()
}

#[test]
fn sigterm_fails_readiness_serves_through_the_drain_then_refuses_while_requests_in_flight_finish() {
    let (mut gw, _up, user) = util::gateway_with_api_route(&[
        ("TOLLGATE_SHUTDOWN_DRAIN_MS", "1500"),
        ("TOLLGATE_SHUTDOWN_GRACE_MS", "20000"),
    ]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    assert_eq!(gw.get("/readyz", &[]).status, 200);
    let ok = gw.with_key("GET", "/api/before", &key);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.header("Connection"),
        None,
        "keep-alive before the signal"
    );
    let key = key.as_str();
    let gw_ref = &gw;
    let (slow, drained, refused, ready, signalled) = std::thread::scope(|s| {
        // In flight from before the signal until well after the drain.
        let slow = s.spawn(move || gw_ref.with_key("GET", "/api/slow/5000", key));
        std::thread::sleep(Duration::from_millis(300));
        let signalled = Instant::now();
        gw_ref.signal("TERM");
        let ready = within(Duration::from_millis(1000), || {
            let r = gw_ref.get("/readyz", &[]);
            (r.status != 200).then_some(r)
        })
        .expect("/readyz still 200 a second after SIGTERM");
        let drained = gw_ref.with_key("GET", "/api/during-drain", key);
        assert!(
            signalled.elapsed() < DRAIN,
            "the machine is too slow for this test's drain"
        );
        std::thread::sleep(
            (DRAIN + Duration::from_millis(300)).saturating_sub(signalled.elapsed()),
        );
        let refused = gw_ref.with_key("GET", "/api/after-drain", key);
        (slow.join().unwrap(), drained, refused, ready, signalled)
    });
    assert_eq!(
        (ready.status, ready.code().as_str()),
        (503, "shutting_down"),
        "{}",
        ready.body
    );
    assert_eq!(drained.status, 200, "{}", drained.body);
    assert_eq!(drained.header("Connection"), Some("close"));
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (503, "shutting_down"),
        "{}",
        refused.body
    );
    assert_eq!(refused.header("Connection"), Some("close"));
    assert_eq!(slow.status, 200, "the request in flight: {}", slow.body);
    let exit = gw
        .wait_exit(Duration::from_secs(15))
        .expect("still running 15 s after the request in flight finished");
    assert!(exit.success(), "{exit:?}: {}", gw.output());
    assert!(
        signalled.elapsed() >= Duration::from_millis(4500),
        "exited before the request in flight finished"
    );
    let logged = gw.logged_request_ids();
    for r in [&ok, &slow, &drained, &refused] {
        assert!(logged.contains(&request_id(r)), "no log row for {}", r.body);
    }
    assert_eq!(logged.len(), 4, "one row per gateway answer");
    assert!(gw.output().contains("every log row written"));
    // A clean stop logs no error (tiny_http's accept thread, stopped on purpose, would).
    assert!(!gw.output().contains(" ERROR "), "{}", gw.output());
}

#[test]
fn sigint_skips_the_drain() {
    let (mut gw, _up, user) =
        util::gateway_with_api_route(&[("TOLLGATE_SHUTDOWN_DRAIN_MS", "60000")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    let served = gw.with_key("GET", "/api/x", &key);
    assert_eq!(served.status, 200, "{}", served.body);
    gw.signal("INT");
    let exit = gw
        .wait_exit(Duration::from_secs(10))
        .expect("still running 10 s after SIGINT: it waited for the drain");
    assert!(exit.success(), "{exit:?}: {}", gw.output());
    assert!(gw.logged_request_ids().contains(&request_id(&served)));
}
