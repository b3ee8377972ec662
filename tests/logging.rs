//! The request log: one row for every gateway answer, whatever its outcome, with its
//! columns as they were; operator traffic not logged; no row lost or doubled under
//! concurrency; a full queue that drops rows without blocking and counts every drop.

use crate::util::{dead_upstream, Gateway, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn count(v: &Value) -> i64 {
    v["totalRequests"].as_i64().unwrap_or_else(|| panic!("{v}"))
}

fn user_with_key(gw: &Gateway, email: &str) -> (i64, String, i64) {
    let user = gw.create_user(email);
    let (key, key_id) = gw.create_key(user, json!({"rateLimit": 1000}));
    (user, key, key_id)
}

/// Every answer a client gets from the gateway is one row with its status, method, path
/// and, where known, its key, user and route: proxied answers (200, the upstream's 500),
/// refusals before the upstream (401, 403, 404, 413, 429) and upstream failures (502, 504).
/// Operator traffic is not logged.
#[test]
fn every_gateway_answer_is_logged_with_its_status_key_user_and_route() {
    let gw = Gateway::start_with(&[
        ("TOLLGATE_MAX_BODY_BYTES", "100"),
        ("TOLLGATE_UPSTREAM_TIMEOUT_MS", "300"),
    ]);
    let up = Upstream::start();
    let (user, key, key_id) = user_with_key(&gw, "a@example.com");
    let (ro_key, ro_id) = gw.create_key(user, json!({"scopes": ["read"], "rateLimit": 1}));
    let api = gw.create_route(user, "/api", &up.addr);
    let dead = gw.create_route(user, "/dead", &dead_upstream());
    let sent = [
        gw.request(
            "GET",
            "/api/ok?q=1",
            &[("x-api-key", &key), ("user-agent", "t/1")],
            None,
        ),
        gw.get("/api/nokey", &[]),
        gw.with_key("POST", "/api/ro", &ro_key),
        gw.with_key("GET", "/nowhere", &key),
        // Uses the read-only key's one request; the next is over its limit.
        gw.with_key("GET", "/api/a", &ro_key),
        gw.with_key("GET", "/api/b", &ro_key),
        gw.with_key("GET", "/api/status/500", &key),
        gw.request(
            "POST",
            "/api/big",
            &[("x-api-key", &key)],
            Some(&[b'x'; 101][..]),
        ),
        gw.with_key("GET", "/dead/x", &key),
        gw.with_key("GET", "/api/slow/1500", &key),
    ];
    let statuses: Vec<u16> = sent.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 403, 404, 200, 429, 500, 413, 502, 504]);
    gw.admin("GET", "/admin/users", None); // operator traffic: not logged
    assert_eq!(gw.wait_for_log_rows(10), 10);
    std::thread::sleep(Duration::from_millis(200));
    let rows = gw
        .db()
        .query(
            "SELECT status, method, path, api_key_id, user_id, route_id, query, bytes_out,
                    user_agent, client_ip, latency_ms
               FROM request_logs ORDER BY created_at, id",
            &[],
        )
        .unwrap();
    type Row = (i32, String, String, Option<i64>, Option<i64>, Option<i64>);
    let got: Vec<Row> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let (k, ro, u) = (Some(key_id), Some(ro_id), Some(user));
    let row = |status, method: &str, path: &str, key: Option<i64>, route| {
        let user = key.and(u);
        (
            status,
            method.to_string(),
            path.to_string(),
            key,
            user,
            route,
        )
    };
    assert_eq!(
        got,
        vec![
            row(200, "GET", "/api/ok", k, Some(api)),
            // No key: no key, user or route.
            row(401, "GET", "/api/nokey", None, None),
            // The scope is checked before the route is matched.
            row(403, "POST", "/api/ro", ro, None),
            // No route matched.
            row(404, "GET", "/nowhere", k, None),
            row(200, "GET", "/api/a", ro, Some(api)),
            row(429, "GET", "/api/b", ro, Some(api)),
            row(500, "GET", "/api/status/500", k, Some(api)),
            row(413, "POST", "/api/big", k, Some(api)),
            row(502, "GET", "/dead/x", k, Some(dead)),
            row(504, "GET", "/api/slow/1500", k, Some(api)),
        ],
        "admin requests are not logged"
    );
    let first = &rows[0];
    assert_eq!(first.get::<_, Option<String>>(6).as_deref(), Some("q=1"));
    assert!(first.get::<_, i64>(7) > 0);
    assert_eq!(first.get::<_, Option<String>>(8).as_deref(), Some("t/1"));
    // What it holds of the address is `privacy`'s topic.
    assert!(first.get::<_, String>(9).starts_with("hmac:"));
    let timeout_latency: f64 = rows[9].get(10);
    assert!(timeout_latency >= 250.0, "504 after {timeout_latency} ms");
}

#[test]
fn a_log_row_records_request_id_query_bytes_and_latency_as_they_were() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, _) = gw.create_key(user, json!({}));
    gw.create_route(user, "/api", &up.addr);
    let r = gw.request(
        "POST",
        "/api/items?b=2&a=%20",
        &[("x-api-key", &key), ("x-request-id", "req-abc-123")],
        Some(b"hello world"),
    );
    assert_eq!(r.status, 200);
    let r2 = gw.with_key("GET", "/api/slow/300", &key);
    assert_eq!(r2.status, 200);
    let generated = r2.header("x-request-id").unwrap().to_string();
    gw.get(
        "/api/anon",
        &[(
            "x-api-key",
            "gw_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        )],
    );
    assert_eq!(gw.wait_for_log_rows_within(3, Duration::from_secs(3)), 3);
    let rows = gw
        .db()
        .query(
            "SELECT request_id, query, bytes_in, bytes_out, latency_ms, api_key_id, user_id,
                    route_id, status
               FROM request_logs ORDER BY created_at, id",
            &[],
        )
        .unwrap();
    let post = &rows[0];
    assert_eq!(post.get::<_, String>(0), "req-abc-123");
    assert_eq!(
        post.get::<_, Option<String>>(1).as_deref(),
        Some("b=2&a=%20")
    );
    assert_eq!(post.get::<_, i64>(2), 11);
    assert_eq!(post.get::<_, i64>(3), r.body.len() as i64);
    let slow = &rows[1];
    assert_eq!(slow.get::<_, String>(0), generated);
    assert_eq!(
        slow.get::<_, Option<String>>(1),
        None,
        "no query is NULL, not ''"
    );
    assert_eq!(slow.get::<_, i64>(2), 0);
    assert!(
        slow.get::<_, f64>(4) >= 300.0,
        "latency {}",
        slow.get::<_, f64>(4)
    );
    let unknown = &rows[2];
    assert_eq!(unknown.get::<_, i32>(8), 401);
    assert_eq!(
        (
            unknown.get::<_, Option<i64>>(5),
            unknown.get::<_, Option<i64>>(6),
            unknown.get::<_, Option<i64>>(7)
        ),
        (None, None, None),
        "an unknown key logs no key, user or route"
    );
}

#[test]
fn health_readiness_and_analytics_requests_are_not_logged() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, _) = gw.create_key(user, json!({}));
    gw.create_route(user, "/api", &up.addr);
    assert_eq!(gw.with_key("GET", "/api/first", &key).status, 200);
    gw.get("/healthz", &[]);
    gw.get("/readyz", &[]);
    gw.with_key("GET", "/analytics/overview", &key);
    gw.admin_get("/analytics/recent");
    gw.admin_get("/admin/stats");
    assert_eq!(gw.with_key("GET", "/api/last", &key).status, 200);
    assert_eq!(gw.wait_for_log_rows_within(2, Duration::from_secs(3)), 2);
    std::thread::sleep(Duration::from_millis(300)); // several flush intervals
    let paths: Vec<String> = gw
        .db()
        .query("SELECT path FROM request_logs ORDER BY created_at, id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(paths, vec!["/api/first", "/api/last"]);
}

#[test]
fn every_one_of_two_hundred_concurrent_requests_becomes_exactly_one_row() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, key_id) = gw.create_key(user, json!({"rateLimit": 100000}));
    gw.create_route(user, "/api", &up.addr);
    let gw = std::sync::Arc::new(gw);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (gw, key) = (gw.clone(), key.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let r = gw.request(
                        "GET",
                        &format!("/api/c/{t}/{i}"),
                        &[("x-api-key", &key), ("x-request-id", &format!("c-{t}-{i}"))],
                        None,
                    );
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        gw.wait_for_log_rows_within(200, Duration::from_secs(5)),
        200
    );
    std::thread::sleep(Duration::from_millis(200));
    let row = gw
        .db()
        .query_one(
            "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE api_key_id = $1)
               FROM request_logs",
            &[&key_id],
        )
        .unwrap();
    let (n, distinct, mine): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((n, distinct, mine), (200, 200, 200));
    let overview = gw.admin_get("/analytics/overview").json();
    assert_eq!(count(&overview), 200);
    assert_eq!(overview["errorRate"], "0.00");
    assert_eq!(gw.admin_get("/admin/stats").json()["logRowsDropped"], 0);
}

#[test]
fn a_full_log_queue_drops_rows_without_blocking_and_counts_every_drop() {
    // A queue of one row: under a burst most rows cannot be queued. Requests still get
    // their answers, and every row is either written or counted as dropped.
    let (gw, _up, user) = crate::util::gateway_with_api_route(&[("TOLLGATE_LOG_QUEUE", "1")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 100000}));
    let gw = std::sync::Arc::new(gw);
    // 20 clients (below the in-flight cap of 24 for 32 workers), 3 requests each.
    let n = 60;
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (gw, key) = (gw.clone(), key.clone());
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| gw.with_key("GET", "/api", &key).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![200; 3]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = gw.admin("GET", "/admin/stats", None).json();
        let written = s["logRowsWritten"].as_i64().unwrap();
        let dropped = s["logRowsDropped"].as_i64().unwrap();
        if written + dropped == n {
            let rows: i64 = gw
                .db
                .client()
                .query_one("SELECT count(*) FROM request_logs", &[])
                .unwrap()
                .get(0);
            assert_eq!(rows, written);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "written {written} + dropped {dropped} != {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
