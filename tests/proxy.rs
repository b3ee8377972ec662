//! Routing and forwarding through the recording upstream: prefix matching on segment
//! boundaries, the longest prefix, a key's own routes only, route changes without a
//! restart, the gateway's own paths never proxied; method, path, query, headers and body as
//! sent, the request id both ways, statuses and bodies of every framing relayed as
//! answered; bodies over the limit and ambiguous framing refused; dead and slow upstreams;
//! JSON errors. (Against httpbin, and hop-by-hop headers: `fidelity`.)

use crate::util::{dead_upstream, raw_request, Gateway, Upstream};
use serde_json::json;
use std::time::{Duration, Instant};

fn user_with_key(gw: &Gateway, email: &str) -> (i64, String, i64) {
    let user = gw.create_user(email);
    let (key, key_id) = gw.create_key(user, json!({"rateLimit": 1000}));
    (user, key, key_id)
}

fn setup(env: &[(&str, &str)]) -> (Gateway, Upstream, i64, String) {
    let gw = Gateway::start_with(env);
    let up = Upstream::start();
    let user = gw.create_user("owner@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1000}));
    gw.create_route(user, "/api", &up.addr);
    (gw, up, user, key)
}

fn host(gw: &Gateway) -> &str {
    gw.addr.trim_start_matches("http://")
}

/// Raw bytes on a connection that the request asks to close; everything read back.
fn raw_close(gw: &Gateway, bytes: &[u8]) -> String {
    raw_request(&gw.addr, bytes, Duration::from_secs(5))
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
fn the_target_urls_base_path_is_prepended_to_the_original_path_and_query() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("owner@example.com");
    let (key, _) = gw.create_key(user, json!({}));
    gw.create_route(user, "/api", &format!("{}/base/", up.addr));
    let r = gw.with_key("GET", "/api/items?x=1&y=%2F", &key);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().target, "/base/api/items?x=1&y=%2F");
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(up.last().target, "/base/api");
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
fn paths_that_only_start_like_gateway_paths_are_proxied() {
    let (gw, up, user, key) = setup(&[]);
    for prefix in ["/healthzz", "/administrator", "/analyticsx", "/readyz2"] {
        let r = gw.admin_post(
            "/admin/routes",
            json!({"userId": user, "prefix": prefix, "targetUrl": up.addr}),
        );
        assert_eq!(r.status, 201, "{prefix}: {}", r.body);
        let r = gw.with_key("GET", &format!("{prefix}/x"), &key);
        assert_eq!(r.status, 200, "{prefix}: {}", r.body);
        assert_eq!(up.last().target, format!("{prefix}/x"));
    }
}

#[test]
fn gateway_paths_are_never_proxied_even_under_a_catch_all_route() {
    let (gw, up, user, key) = setup(&[]);
    let r = gw.admin_post(
        "/admin/routes",
        json!({"userId": user, "prefix": "/", "targetUrl": up.addr}),
    );
    if r.status != 201 {
        // Refusing a catch-all route is a valid choice too, as a 400 naming the field.
        assert_eq!(
            (r.status, r.json()["error"]["field"].clone()),
            (400, json!("prefix"))
        );
        return;
    }
    assert_eq!(gw.with_key("GET", "/anything/else", &key).status, 200);
    let before = up.requests().len();
    let r = gw.with_key("GET", "/admin/users", &key);
    assert_eq!((r.status, r.code().as_str()), (401, "unauthorized"));
    let r = gw.with_key("GET", "/healthz", &key);
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_eq!(
        gw.with_key("GET", "/readyz", &key).json()["status"],
        "ready"
    );
    assert_eq!(
        up.requests().len(),
        before,
        "a gateway path reached the upstream"
    );
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
fn repeated_request_headers_all_arrive_in_order() {
    let (gw, up, _user, key) = setup(&[]);
    let req = format!(
        "GET /api/dup HTTP/1.1\r\nHost: {}\r\nx-api-key: {key}\r\nX-Dup: one\r\n\
         X-Other: o\r\nX-Dup: two\r\nConnection: close\r\n\r\n",
        host(&gw)
    );
    let out = raw_close(&gw, req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.last();
    // Two fields or one comma-joined field mean the same (RFC 9110 §5.3); order must hold.
    assert_eq!(
        seen.headers_named("x-dup").join(", "),
        "one, two",
        "{:?}",
        seen.headers
    );
}

#[test]
fn a_two_megabyte_body_travels_to_the_upstream_and_back_intact() {
    let (gw, up, _user, key) = setup(&[]);
    let body: String = (0..2_000_000u32)
        .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
        .collect();
    let r = gw.request(
        "PUT",
        "/api/big",
        &[("x-api-key", &key), ("content-type", "text/plain")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(300)]);
    assert_eq!(up.last().body.len(), body.len());
    assert!(up.last().body == body.as_bytes());
    assert_eq!(r.json()["body"].as_str().unwrap(), body);
    assert_eq!(r.header("content-type"), Some("application/json"));
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
fn chunked_and_close_delimited_upstream_bodies_reach_the_client_whole() {
    let (gw, up, _user, key) = setup(&[]);
    for path in ["/api/chunked-response?x=1", "/api/close-delimited?x=2"] {
        let r = gw.with_key("GET", path, &key);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let echo = r.json();
        assert_eq!(echo["target"], path, "{path}");
        assert_eq!(echo["method"], "GET");
    }
    assert_eq!(up.requests().len(), 2);
    // And the connection to the client stays usable after each.
    assert_eq!(
        gw.with_key("GET", "/api/after", &key).json()["target"],
        "/api/after"
    );
}

#[test]
fn repeated_or_non_numeric_content_length_and_te_with_cl_get_400() {
    let (gw, up, _user, key) = setup(&[]);
    let h = host(&gw);
    let cases = [
        format!("POST /api HTTP/1.1\r\nHost: {h}\r\nx-api-key: {key}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("POST /api HTTP/1.1\r\nHost: {h}\r\nx-api-key: {key}\r\nContent-Length: abc\r\n\r\nabc"),
        format!("POST /api HTTP/1.1\r\nHost: {h}\r\nx-api-key: {key}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        format!("POST /api HTTP/1.1\r\nHost: {h}\r\nx-api-key: {key}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ];
    for req in &cases {
        let out = raw_request(&gw.addr, req.as_bytes(), Duration::from_millis(700));
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "expected 400 for {req:?}, got {out:?}"
        );
        assert!(out.contains("bad_request"), "{out}");
    }
    assert!(
        up.requests().is_empty(),
        "an ambiguous request reached the upstream"
    );
    assert_eq!(gw.get("/healthz", &[]).status, 200);
}

/// A body over the limit (TOLLGATE_MAX_BODY_BYTES) gets 413 whether its length is declared
/// or it comes chunked, and none of it reaches the upstream; exactly the limit passes; a
/// declared length far beyond anything drainable neither crashes nor stalls the gateway.
#[test]
fn bodies_over_the_limit_get_413_whether_declared_or_chunked() {
    let (gw, up, _user, key) = setup(&[("TOLLGATE_MAX_BODY_BYTES", "1000")]);
    let big = vec![b'x'; 1001];
    let r = gw.request("POST", "/api", &[("x-api-key", &key)], Some(&big));
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
    let ok = vec![b'x'; 1000];
    assert_eq!(
        gw.request("POST", "/api", &[("x-api-key", &key)], Some(&ok))
            .status,
        200
    );
    let chunk = "y".repeat(600);
    let chunked = format!(
        "POST /api/big HTTP/1.1\r\nHost: {}\r\nx-api-key: {key}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n",
        host(&gw)
    );
    let out = raw_close(&gw, chunked.as_bytes());
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("payload_too_large"), "{out}");
    assert!(
        up.requests().iter().all(|s| s.body.len() <= 1000),
        "an oversized body reached the upstream"
    );
    let huge = format!(
        "POST /api HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 10000000000000\r\n\r\nabc"
    );
    let out = raw_request(&gw.addr, huge.as_bytes(), Duration::from_millis(500));
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(gw.get("/healthz", &[]).status, 200);
}

#[test]
fn a_dead_upstream_is_502_and_a_slow_one_504_promptly_and_the_next_request_is_served() {
    let (gw, up, user, key) = setup(&[("TOLLGATE_UPSTREAM_TIMEOUT_MS", "300")]);
    gw.create_route(user, "/dead", &dead_upstream());
    let r = gw.with_key("GET", "/dead", &key);
    assert_eq!((r.status, r.code().as_str()), (502, "upstream_unreachable"));
    let t = Instant::now();
    let r = gw.with_key("GET", "/api/slow/2000", &key);
    assert_eq!((r.status, r.code().as_str()), (504, "upstream_timeout"));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t.elapsed()
    );
    let r = gw.with_key("GET", "/api/slow/50", &key);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["target"], "/api/slow/50");
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn error_answers_are_json_with_a_message_and_a_request_id() {
    let (gw, _up, _user, key) = setup(&[]);
    for (path, key, code) in [
        ("/api", "", "missing_api_key"),
        ("/nowhere", key.as_str(), "route_not_found"),
    ] {
        let headers: Vec<(&str, &str)> = if key.is_empty() {
            vec![]
        } else {
            vec![("x-api-key", key)]
        };
        let r = gw.request("GET", path, &headers, None);
        assert!(r
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json"));
        assert_eq!(r.code(), code);
        assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
        assert!(
            r.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "{code}"
        );
    }
}
