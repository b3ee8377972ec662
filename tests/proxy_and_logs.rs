//! Routing, forwarding and the request log, end to end.
mod util;

use serde_json::json;
use std::time::Duration;
use util::{dead_upstream, raw_request, Gateway, Upstream};

fn user_with_key(gw: &Gateway, email: &str) -> (i64, String, i64) {
    let user = gw.create_user(email);
    let (key, key_id) = gw.create_key(user, json!({"rateLimit": 1000}));
    (user, key, key_id)
}

#[test]
fn prefix_matches_on_segment_boundaries_only() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    gw.create_route(user, "/users", &up.addr);
    assert_eq!(gw.with_key("GET", "/users", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/users/7", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/users?x=1", &key).status, 200);
    let r = gw.with_key("GET", "/usersX", &key);
    assert_eq!((r.status, r.code().as_str()), (404, "route_not_found"));
    assert_eq!(up.requests().len(), 3);
}

#[test]
fn longest_prefix_wins() {
    let gw = Gateway::start();
    let (a, b) = (Upstream::start(), Upstream::start());
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    gw.create_route(user, "/api", &a.addr);
    gw.create_route(user, "/api/v2", &b.addr);
    gw.with_key("GET", "/api/v2/things", &key);
    gw.with_key("GET", "/api/v1/things", &key);
    assert_eq!(b.last().target, "/api/v2/things");
    assert_eq!(a.last().target, "/api/v1/things");
    assert_eq!((a.requests().len(), b.requests().len()), (1, 1));
}

#[test]
fn a_key_reaches_only_its_owners_routes() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (_alice, alice_key, _) = user_with_key(&gw, "alice@example.com");
    let (bob, _bob_key, _) = user_with_key(&gw, "bob@example.com");
    gw.create_route(bob, "/bob", &up.addr);
    let r = gw.with_key("GET", "/bob", &alice_key);
    assert_eq!((r.status, r.code().as_str()), (404, "route_not_found"));
    assert!(up.requests().is_empty());
}

#[test]
fn method_path_query_headers_and_body_arrive_unchanged() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    gw.create_route(user, "/api", &up.addr);
    let target = "/api/a%2Fb/%C3%A9?a=1&a=2&b=&c=%20x+y";
    let r = gw.request(
        "POST",
        target,
        &[
            ("x-api-key", &key),
            ("x-custom", "1"),
            ("content-type", "application/json"),
        ],
        Some(br#"{"hello":"world"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, target);
    assert_eq!(seen.body, br#"{"hello":"world"}"#);
    assert_eq!(seen.header("x-custom"), Some("1"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("content-length"), Some("17"));
    for method in ["PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert_eq!(gw.with_key(method, "/api/m", &key).status, 200, "{method}");
        assert_eq!(up.last().method, method);
    }
}

#[test]
fn request_id_is_generated_or_kept_and_travels_both_ways() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    gw.create_route(user, "/api", &up.addr);
    let r = gw.with_key("GET", "/api", &key);
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(up.last().header("x-request-id"), Some(id.as_str()));
    let r = gw.request(
        "GET",
        "/api",
        &[("x-api-key", &key), ("x-request-id", "abc-123")],
        None,
    );
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(up.last().header("x-request-id"), Some("abc-123"));
}

#[test]
fn upstream_status_headers_and_redirects_pass_through() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    gw.create_route(user, "/api", &up.addr);
    for code in [404, 500, 503, 418] {
        let r = gw.with_key("GET", &format!("/api/status/{code}"), &key);
        assert_eq!(r.status, code);
        assert_eq!(r.json()["target"], format!("/api/status/{code}"));
    }
    let r = gw.with_key("GET", "/api/redirect", &key);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/elsewhere"));
    assert_eq!(up.requests().len(), 5, "the redirect was not followed");
    let r = gw.with_key("GET", "/api/set-cookies", &key);
    assert_eq!(r.headers_named("set-cookie"), vec!["a=1", "b=2"]);
}

#[test]
fn route_changes_apply_on_the_next_request_without_restart() {
    let gw = Gateway::start();
    let (a, b) = (Upstream::start(), Upstream::start());
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    assert_eq!(gw.with_key("GET", "/svc", &key).status, 404);
    let id = gw.create_route(user, "/svc", &a.addr);
    assert_eq!(gw.with_key("GET", "/svc", &key).status, 200);
    let r = gw.admin(
        "PATCH",
        &format!("/admin/routes/{id}"),
        Some(json!({"targetUrl": b.addr})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.with_key("GET", "/svc", &key).status, 200);
    assert_eq!((a.requests().len(), b.requests().len()), (1, 1));
    assert_eq!(
        gw.admin("DELETE", &format!("/admin/routes/{id}"), None)
            .status,
        204
    );
    assert_eq!(gw.with_key("GET", "/svc", &key).status, 404);
}

#[test]
fn dead_upstream_is_502_and_slow_upstream_is_504() {
    let gw = Gateway::start_with(&[("TOLLGATE_UPSTREAM_TIMEOUT_MS", "500")]);
    let up = Upstream::start();
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    gw.create_route(user, "/dead", &dead_upstream());
    gw.create_route(user, "/slow", &up.addr);
    let r = gw.with_key("GET", "/dead", &key);
    assert_eq!((r.status, r.code().as_str()), (502, "upstream_unreachable"));
    let r = gw.with_key("GET", "/slow/slow/2000", &key);
    assert_eq!((r.status, r.code().as_str()), (504, "upstream_timeout"));
}

#[test]
fn oversized_bodies_get_413_and_ambiguous_framing_gets_400() {
    let gw = Gateway::start_with(&[("TOLLGATE_MAX_BODY_BYTES", "1000")]);
    let up = Upstream::start();
    let (user, key, _) = user_with_key(&gw, "a@example.com");
    gw.create_route(user, "/api", &up.addr);
    let big = vec![b'x'; 1001];
    let r = gw.request("POST", "/api", &[("x-api-key", &key)], Some(&big));
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
    let ok = vec![b'x'; 1000];
    assert_eq!(
        gw.request("POST", "/api", &[("x-api-key", &key)], Some(&ok))
            .status,
        200
    );
    let smuggle = format!(
        "POST /api HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let out = raw_request(&gw.addr, smuggle.as_bytes(), Duration::from_millis(500));
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("bad_request"), "{out}");
    // A declared length far beyond anything drainable neither crashes nor stalls the gateway.
    let huge = format!(
        "POST /api HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 10000000000000\r\n\r\nabc"
    );
    let out = raw_request(&gw.addr, huge.as_bytes(), Duration::from_millis(500));
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(gw.get("/healthz", &[]).status, 200);
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
