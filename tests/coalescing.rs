//! Coalesced counting: concurrent requests for one key share one counter statement, and
//! each still gets its own exact position (admitted or not, its own `Remaining`).
mod util;

use serde_json::json;
use std::sync::Barrier;
use util::gateway_with_api_route;

#[test]
fn a_burst_on_one_key_shares_counter_statements_and_each_request_gets_its_own_position() {
    // A 20 ms gathering window (TOLLGATE_COALESCE_WINDOW_US) makes groups certain even on a
    // slow machine; an hour-long window keeps the estimate free of a previous bucket.
    let (gw, up, user) = gateway_with_api_route(&[
        ("TOLLGATE_COALESCE_WINDOW_US", "20000"),
        ("TOLLGATE_RATE_WINDOW_SECS", "3600"),
    ]);
    const LIMIT: usize = 10;
    const CLIENTS: usize = 24;
    let (key, _) = gw.create_key(user, json!({ "rateLimit": LIMIT }));
    let start = Barrier::new(CLIENTS);
    let answers: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let r = gw.with_key("GET", "/api", &key);
                    let remaining = r.header("X-RateLimit-Remaining").map(str::to_string);
                    (r.status, remaining)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut admitted_remaining: Vec<i64> = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, rem)| rem.as_deref().unwrap_or("none").parse().unwrap())
        .collect();
    let refused = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(admitted_remaining.len(), LIMIT, "{answers:?}");
    assert_eq!(refused, CLIENTS - LIMIT, "{answers:?}");
    // Positions 1..=LIMIT, each handed out once: Remaining LIMIT-1 down to 0.
    admitted_remaining.sort_unstable();
    assert_eq!(admitted_remaining, (0..LIMIT as i64).collect::<Vec<_>>());
    assert_eq!(up.requests().len(), LIMIT);
    let stats = gw.admin_get("/admin/stats").json();
    let (statements, counted) = (
        stats["counterStatements"].as_u64().unwrap(),
        stats["counterRequests"].as_u64().unwrap(),
    );
    assert_eq!(counted, CLIENTS as u64);
    assert!(
        statements < counted,
        "{statements} statements for {counted} requests: nothing was coalesced"
    );
    assert_eq!(gw.counted_requests(), LIMIT as i64);
}
