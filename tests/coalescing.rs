//! Batched counting: concurrent requests share one counter statement, for one key or many,
//! and each still gets its own exact position (admitted or not, its own `Remaining`).
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

#[test]
fn requests_for_different_keys_share_one_statement_and_each_key_gets_exactly_its_limit() {
    let (gw, up, user) = gateway_with_api_route(&[
        ("TOLLGATE_COALESCE_WINDOW_US", "20000"),
        ("TOLLGATE_RATE_WINDOW_SECS", "3600"),
    ]);
    const KEYS: usize = 6;
    const LIMIT: usize = 4;
    const PER_KEY: usize = 6;
    let keys: Vec<String> = (0..KEYS)
        .map(|_| gw.create_key(user, json!({ "rateLimit": LIMIT })).0)
        .collect();
    // One request each first, so that bcrypt (first use only) does not spread the burst.
    for key in &keys {
        assert_eq!(gw.with_key("GET", "/api", key).status, 200);
    }
    let before = gw.admin_get("/admin/stats").json()["counterStatements"]
        .as_u64()
        .unwrap();
    let start = Barrier::new(KEYS * PER_KEY);
    let answers: Vec<(usize, u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..KEYS * PER_KEY)
            .map(|i| {
                let (start, key) = (&start, &keys[i % KEYS]);
                let gw = &gw;
                s.spawn(move || {
                    start.wait();
                    let r = gw.with_key("GET", "/api", key);
                    let remaining = r.header("X-RateLimit-Remaining").map(str::to_string);
                    (i % KEYS, r.status, remaining)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for k in 0..KEYS {
        let mut remaining: Vec<i64> = answers
            .iter()
            .filter(|(key, status, _)| *key == k && *status == 200)
            .map(|(_, _, rem)| rem.as_deref().unwrap_or("none").parse().unwrap())
            .collect();
        remaining.sort_unstable();
        // The warm-up took position 1; the burst gets positions 2..=LIMIT, once each.
        assert_eq!(
            remaining,
            (0..LIMIT as i64 - 1).collect::<Vec<_>>(),
            "{answers:?}"
        );
        let refused = answers.iter().filter(|(key, s, _)| *key == k && *s == 429);
        assert_eq!(refused.count(), PER_KEY - (LIMIT - 1), "{answers:?}");
    }
    let stats = gw.admin_get("/admin/stats").json();
    let statements = stats["counterStatements"].as_u64().unwrap() - before;
    // Per-key grouping alone would need at least one statement per key.
    assert!(
        statements < KEYS as u64,
        "{statements} statements for {KEYS} keys: no batch spanned keys"
    );
    assert_eq!(gw.counted_requests(), (KEYS * LIMIT) as i64);
    assert_eq!(up.requests().len(), KEYS * LIMIT);
}
