//! The request log's columns for every kind of outcome, and analytics filters, paging and
//! labels checked against exactly what the test sent.
mod util;

use serde_json::{json, Value};
use std::time::Duration;
use util::{dead_upstream, Gateway, Upstream};

fn count(v: &Value) -> i64 {
    v["totalRequests"].as_i64().unwrap_or_else(|| panic!("{v}"))
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
fn recent_is_newest_first_defaults_to_twenty_and_caps_the_limit_at_a_hundred() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1000}));
    gw.create_route(user, "/api", &up.addr);
    for i in 0..105 {
        assert_eq!(
            gw.with_key("GET", &format!("/api/r/{i}?i={i}"), &key)
                .status,
            200
        );
    }
    assert_eq!(
        gw.wait_for_log_rows_within(105, Duration::from_secs(5)),
        105
    );
    let paths = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    };
    let expect = |from: i32, n: i32| -> Vec<String> {
        (0..n).map(|k| format!("/api/r/{}", from - k)).collect()
    };
    let recent = gw.admin_get("/analytics/recent").json();
    assert_eq!(paths(recent.clone()), expect(104, 20));
    let first = &recent[0];
    for field in [
        "id",
        "requestId",
        "apiKeyId",
        "userId",
        "routeId",
        "method",
        "path",
        "query",
        "status",
        "latencyMs",
        "bytesIn",
        "bytesOut",
        "clientIp",
        "userAgent",
        "createdAt",
    ] {
        assert!(
            first.get(field).is_some(),
            "recent row lacks {field}: {first}"
        );
    }
    assert_eq!(first["query"], "i=104");
    assert_eq!(
        paths(gw.admin_get("/analytics/recent?limit=5").json()),
        expect(104, 5)
    );
    assert_eq!(
        paths(gw.admin_get("/analytics/recent?limit=1000").json()),
        expect(104, 100)
    );
    let mine = gw.with_key("GET", "/analytics/recent?limit=3", &key);
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(paths(mine.json()), expect(104, 3));
    for bad in ["0", "-1", "abc"] {
        let r = gw.admin_get(&format!("/analytics/recent?limit={bad}"));
        assert_eq!(r.status, 400, "limit={bad}: {}", r.body);
    }
}

#[test]
fn the_admin_filters_by_key_and_route_and_top_routes_ignore_the_query() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (k1, k1_id) = gw.create_key(user, json!({"rateLimit": 1000}));
    let (k2, k2_id) = gw.create_key(user, json!({"rateLimit": 1000}));
    let ra = gw.create_route(user, "/a", &up.addr);
    let rb = gw.create_route(user, "/b", &up.addr);
    for i in 0..3 {
        gw.with_key("GET", &format!("/a?i={i}"), &k1);
    }
    for i in 0..2 {
        gw.with_key("GET", &format!("/a?j={i}"), &k2);
    }
    for _ in 0..4 {
        gw.with_key("GET", "/b/x", &k2);
    }
    assert_eq!(gw.wait_for_log_rows_within(9, Duration::from_secs(3)), 9);
    let overview = |q: &str| gw.admin_get(&format!("/analytics/overview{q}")).json();
    assert_eq!(count(&overview("")), 9);
    assert_eq!(count(&overview(&format!("?keyId={k1_id}"))), 3);
    assert_eq!(count(&overview(&format!("?keyId={k2_id}"))), 6);
    assert_eq!(count(&overview(&format!("?routeId={rb}"))), 4);
    assert_eq!(count(&overview(&format!("?routeId={ra}&keyId={k2_id}"))), 2);
    assert_eq!(count(&overview(&format!("?userId={user}&routeId={ra}"))), 5);
    assert_eq!(count(&overview("?userId=999999")), 0);
    let top = gw.admin_get("/analytics/top-routes").json();
    let got: Vec<(String, i64)> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap().to_string(),
                t["count"].as_i64().unwrap(),
            )
        })
        .collect();
    // Per route, named by its prefix (rollups keep the route, not the raw path).
    assert_eq!(got, vec![("/a".to_string(), 5), ("/b".to_string(), 4)]);
    let top_k2 = gw
        .admin_get(&format!("/analytics/top-routes?keyId={k2_id}"))
        .json();
    assert_eq!(top_k2[0]["path"], "/b");
    assert_eq!(top_k2[0]["routeId"], rb);
    assert_eq!(top_k2[0]["count"], 4);
    // The key holder's view is its user's, whichever of the user's keys asks.
    let via_k1 = gw.with_key("GET", "/analytics/overview", &k1).json();
    assert_eq!(count(&via_k1), 9);
    let ts = gw
        .admin_get(&format!("/analytics/timeseries?routeId={rb}"))
        .json();
    let ts = ts.as_array().unwrap();
    assert_eq!(ts.len(), 24);
    let hour = chrono::Utc::now().format("%Y-%m-%dT%H:00:00Z").to_string();
    let last = ts.last().unwrap();
    if last["hour"] == hour.as_str() {
        assert_eq!(last["count"], 4, "{last}");
    } else {
        // The hour turned between the requests and this check.
        assert_eq!(
            ts[ts.len() - 2]["hour"].as_str().map(|h| h < hour.as_str()),
            Some(true)
        );
    }
    let hours: Vec<&str> = ts.iter().map(|h| h["hour"].as_str().unwrap()).collect();
    let mut sorted = hours.clone();
    sorted.sort();
    assert_eq!(hours, sorted, "oldest first");
    assert_eq!(
        ts.iter().map(|h| h["count"].as_i64().unwrap()).sum::<i64>(),
        4
    );
}

#[test]
fn a_key_holder_cannot_see_another_users_traffic_through_any_filter() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let alice = gw.create_user("alice@example.com");
    let bob = gw.create_user("bob@example.com");
    let (alice_key, _) = gw.create_key(alice, json!({"rateLimit": 1000}));
    let (bob_key, bob_key_id) = gw.create_key(bob, json!({"rateLimit": 1000}));
    gw.create_route(alice, "/a", &up.addr);
    let bob_route = gw.create_route(bob, "/b", &up.addr);
    gw.with_key("GET", "/a", &alice_key);
    for _ in 0..4 {
        gw.with_key("GET", "/b/secret-path", &bob_key);
    }
    assert_eq!(gw.wait_for_log_rows_within(5, Duration::from_secs(3)), 5);
    for q in [
        format!("?keyId={bob_key_id}"),
        format!("?routeId={bob_route}"),
        format!("?userId={bob}"),
        format!("?userId={alice}&userId={bob}"),
    ] {
        for endpoint in ["overview", "recent", "top-routes", "timeseries"] {
            let r = gw.with_key("GET", &format!("/analytics/{endpoint}{q}"), &alice_key);
            assert!(
                r.status == 403 || (r.status == 200 && !r.body.contains("secret-path")),
                "{endpoint}{q}: {} {}",
                r.status,
                r.body
            );
            if r.status == 200 && endpoint == "overview" {
                assert!(count(&r.json()) <= 1, "{endpoint}{q}: {}", r.body);
            }
            if r.status == 200 && endpoint == "timeseries" {
                let n: i64 = r
                    .json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["count"].as_i64().unwrap())
                    .sum();
                assert!(n <= 1, "{endpoint}{q}: {}", r.body);
            }
        }
    }
    let r = gw.with_key("GET", "/analytics/overview", &alice_key);
    assert_eq!(count(&r.json()), 1);
    assert!(
        r.header("x-ratelimit-limit").is_some(),
        "analytics via a key carries limit headers"
    );
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
