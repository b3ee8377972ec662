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

#[test]
fn every_gateway_response_is_logged_with_its_status() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (user, key, key_id) = user_with_key(&gw, "a@example.com");
    let (ro_key, _) = gw.create_key(user, json!({"scopes": ["read"], "rateLimit": 1}));
    let route = gw.create_route(user, "/api", &up.addr);
    gw.request(
        "GET",
        "/api/ok?q=1",
        &[("x-api-key", &key), ("user-agent", "t/1")],
        None,
    ); // 200
    gw.get("/api/nokey", &[]); // 401
    gw.with_key("POST", "/api/ro", &ro_key); // 403
    gw.with_key("GET", "/nowhere", &key); // 404
    gw.with_key("GET", "/api/a", &ro_key); // 200, uses the one request
    gw.with_key("GET", "/api/b", &ro_key); // 429
    gw.with_key("GET", "/api/status/500", &key); // 500 from upstream
    gw.admin("GET", "/admin/users", None); // operator traffic: not logged
    assert_eq!(gw.wait_for_log_rows(7), 7);
    std::thread::sleep(Duration::from_millis(200));
    let mut db = gw.db.client();
    let rows = db
        .query(
            "SELECT path, status, api_key_id, user_id, route_id, query, method, bytes_out,
                    user_agent, client_ip
               FROM request_logs ORDER BY created_at, id",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 7, "admin requests are not logged");
    let got: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("/api/ok".into(), 200),
            ("/api/nokey".into(), 401),
            ("/api/ro".into(), 403),
            ("/nowhere".into(), 404),
            ("/api/a".into(), 200),
            ("/api/b".into(), 429),
            ("/api/status/500".into(), 500),
        ]
    );
    let first = &rows[0];
    assert_eq!(first.get::<_, Option<i64>>(2), Some(key_id));
    assert_eq!(first.get::<_, Option<i64>>(3), Some(user));
    assert_eq!(first.get::<_, Option<i64>>(4), Some(route));
    assert_eq!(first.get::<_, Option<String>>(5).as_deref(), Some("q=1"));
    assert_eq!(first.get::<_, String>(6), "GET");
    assert!(first.get::<_, i64>(7) > 0);
    assert_eq!(first.get::<_, Option<String>>(8).as_deref(), Some("t/1"));
    assert_eq!(first.get::<_, String>(9), "127.0.0.1");
    assert_eq!(rows[1].get::<_, Option<i64>>(2), None, "401 has no key");
    assert_eq!(rows[3].get::<_, Option<i64>>(4), None, "404 has no route");
}

#[test]
fn payload_too_large_unreachable_and_timeout_answers_are_logged_with_key_user_and_route() {
    let gw = Gateway::start_with(&[
        ("TOLLGATE_MAX_BODY_BYTES", "100"),
        ("TOLLGATE_UPSTREAM_TIMEOUT_MS", "300"),
    ]);
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, key_id) = gw.create_key(user, json!({}));
    let api = gw.create_route(user, "/api", &up.addr);
    let dead = gw.create_route(user, "/dead", &dead_upstream());
    let big = vec![b'x'; 101];
    assert_eq!(
        gw.request("POST", "/api/big", &[("x-api-key", &key)], Some(&big))
            .status,
        413
    );
    assert_eq!(gw.with_key("GET", "/dead/x", &key).status, 502);
    assert_eq!(gw.with_key("GET", "/api/slow/1500", &key).status, 504);
    assert_eq!(gw.wait_for_log_rows_within(3, Duration::from_secs(3)), 3);
    let rows = gw
        .db()
        .query(
            "SELECT status, path, api_key_id, user_id, route_id, method, latency_ms
               FROM request_logs ORDER BY created_at, id",
            &[],
        )
        .unwrap();
    type Row = (i32, String, Option<i64>, Option<i64>, Option<i64>, String);
    let got: Vec<Row> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                413,
                "/api/big".into(),
                Some(key_id),
                Some(user),
                Some(api),
                "POST".into()
            ),
            (
                502,
                "/dead/x".into(),
                Some(key_id),
                Some(user),
                Some(dead),
                "GET".into()
            ),
            (
                504,
                "/api/slow/1500".into(),
                Some(key_id),
                Some(user),
                Some(api),
                "GET".into()
            ),
        ]
    );
    let timeout_latency: f64 = rows[2].get(6);
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
