//! Hostile paths and headers against the real binary: each is normalised (and the upstream
//! receives the normalised path) or refused with a JSON error (and the upstream receives
//! nothing); none reaches an operator endpoint without its credentials, and the gateway
//! keeps serving. The table these tests follow is in docs/operations.md, "Paths and headers".
use crate::util::{Gateway, Upstream, ADMIN_SECRET};
use serde_json::{json, Value};
use std::time::Duration;

fn setup() -> (Gateway, Upstream, String) {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("hostile@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    gw.create_route(user, "/users", &up.addr);
    (gw, up, key)
}

/// One raw request on its own connection: (status, body). Status 0 when nothing came back.
fn raw(gw: &Gateway, target: &[u8], headers: &str) -> (u16, String) {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: hostile.test\r\nConnection: close\r\n");
    req.extend_from_slice(headers.as_bytes());
    req.extend_from_slice(b"\r\n");
    let out = crate::util::raw_request(&gw.direct_addr, &req, Duration::from_secs(5));
    let status = out
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn path_escapes_are_refused_before_any_route_or_operator_endpoint() {
    let (gw, up, key) = setup();
    let with_key = format!("x-api-key: {key}\r\n");
    let with_secret = format!("x-admin-secret: {ADMIN_SECRET}\r\n");
    let targets: &[&[u8]] = &[
        b"/users/../admin",
        b"/users/../admin/users",
        b"/users/%2e%2e/admin",
        b"/users/%2E%2e/admin/users",
        b"/users/.%2e/analytics/overview",
        b"/users/./7",
        b"/users/..%2Fadmin",
        b"/users/7%2f..%2f..%2fsecret",
        b"/users/7%5C..%5Csecret",
        b"/users\\..\\admin",
        b"/users/7%00",
        b"/users/7\0.json",
        b"/users/7%0d%0aX-Injected:%201",
        b"/users/%zz",
        b"*",
        b"http://upstream.test/users/7",
    ];
    for target in targets {
        for headers in [&with_key, &with_secret] {
            let (status, body) = raw(&gw, target, headers);
            let shown = String::from_utf8_lossy(target);
            assert_eq!(status, 400, "{shown}: {body}");
            assert_eq!(error_code(&body), "bad_request", "{shown}");
        }
    }
    assert!(
        up.requests().is_empty(),
        "the upstream received {:?}",
        up.requests()
    );
    // An encoded slash is part of its segment: `/users%2Fx` is not under `/users`.
    let (status, body) = raw(&gw, b"/users%2Fx", &with_key);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "route_not_found")
    );
    assert!(up.requests().is_empty());
    let (status, _) = raw(&gw, b"/users/a%2Fb", &with_key);
    assert_eq!(status, 200);
    assert_eq!(up.last().target, "/users/a%2Fb");
}

#[test]
fn merged_slashes_and_decoded_letters_reach_the_upstream_normalised() {
    let (gw, up, key) = setup();
    let with_key = format!("x-api-key: {key}\r\n");
    for (sent, received) in [
        ("//users/7", "/users/7"),
        ("/users//7///x?q=a//b", "/users/7/x?q=a//b"),
        ("/%75sers/7", "/users/7"),
        (
            "/users/caf%C3%A9%20x/a%2ejson",
            "/users/caf%C3%A9%20x/a.json",
        ),
    ] {
        let (status, body) = raw(&gw, sent.as_bytes(), &with_key);
        assert_eq!(status, 200, "{sent}: {body}");
        assert_eq!(up.last().target, received, "{sent}");
    }
    // The log row holds the path as dispatched.
    gw.wait_for_log_rows(4);
    let paths: Vec<String> = gw
        .db()
        .query("SELECT path FROM request_logs ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(paths[0], "/users/7");
}

#[test]
fn operator_endpoints_spelled_differently_still_need_their_credentials() {
    let (gw, up, key) = setup();
    let with_key = format!("x-api-key: {key}\r\n");
    // Analytics accepts a key (scoped to its owner), admin only the secret.
    for (target, headers) in [
        ("//admin/users", with_key.as_str()),
        ("/%61dmin/users", with_key.as_str()),
        ("//admin/users", ""),
        ("///analytics//overview", ""),
        ("/%61nalytics/overview", ""),
    ] {
        let (status, body) = raw(&gw, target.as_bytes(), headers);
        assert_eq!(status, 401, "{target} without credentials: {body}");
    }
    let (status, body) = raw(
        &gw,
        b"//admin//users",
        &format!("x-admin-secret: {ADMIN_SECRET}\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(up.requests().is_empty());
}

#[test]
fn an_over_long_target_is_414_json_and_reaches_nothing() {
    let (gw, up, key) = setup();
    let with_key = format!("x-api-key: {key}\r\n");
    let long = format!("/users/{}", "a".repeat(9 * 1024));
    let (status, body) = raw(&gw, long.as_bytes(), &with_key);
    assert_eq!(status, 414, "{}", &body[..body.len().min(200)]);
    assert_eq!(error_code(&body), "uri_too_long");
    let long_query = format!("/users/7?q={}", "a".repeat(9 * 1024));
    let (status, _) = raw(&gw, long_query.as_bytes(), &with_key);
    assert_eq!(status, 414);
    // Just under the bound passes.
    let fits = format!("/users/{}", "a".repeat(8000));
    assert_eq!(raw(&gw, fits.as_bytes(), &with_key).0, 200);
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn refused_requests_are_logged_printably_and_do_not_block_other_rows() {
    let (gw, _up, key) = setup();
    let with_key = format!("x-api-key: {key}\r\nUser-Agent: probe\r\n");
    assert_eq!(raw(&gw, b"/users/7\0x?a=\x01", &with_key).0, 400);
    assert_eq!(gw.with_key("GET", "/users/after", &key).status, 200);
    assert_eq!(gw.wait_for_log_rows(2), 2);
    let rows = gw
        .db()
        .query(
            "SELECT path, query, status FROM request_logs ORDER BY id",
            &[],
        )
        .unwrap();
    let first: (String, Option<String>, i32) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_eq!(
        first,
        ("/users/7%00x".to_string(), Some("a=%01".to_string()), 400)
    );
    assert_eq!(rows[1].get::<_, String>(0), "/users/after");
}

#[test]
fn hostile_headers_get_json_errors_and_reach_nothing() {
    let (gw, up, key) = setup();
    let big = "a".repeat(9 * 1024);
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("X-Big: {big}\r\n"), 431, "header_too_large"),
        (
            (0..5)
                .map(|i| format!("X-Part-{i}: {}\r\n", "b".repeat(8000)))
                .collect(),
            431,
            "header_too_large",
        ),
        ("X-Split: a\nX-Injected: 1\r\n".into(), 400, "bad_request"),
        ("X-Split: a\rX-Injected: 1\r\n".into(), 400, "bad_request"),
        ("X-Nul: a\0b\r\n".into(), 400, "bad_request"),
        ("X-Bell: \x07\r\n".into(), 400, "bad_request"),
        ("X\x01Name: v\r\n".into(), 400, "bad_request"),
        ("Host: other.test\r\n".into(), 400, "bad_request"),
        ("HOST: hostile.test\r\n".into(), 400, "bad_request"),
    ];
    for (extra, want_status, want_code) in &cases {
        let headers = format!("x-api-key: {key}\r\n{extra}");
        let (status, body) = raw(&gw, b"/users/7", &headers);
        let shown = &extra[..extra.len().min(40)];
        assert_eq!(status, *want_status, "{shown:?}: {body}");
        assert_eq!(error_code(&body), *want_code, "{shown:?}");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // A tab inside a value is allowed (RFC 9110 §5.5).
    let (status, _) = raw(
        &gw,
        b"/users/7",
        &format!("x-api-key: {key}\r\nX-Tab: a\tb\r\n"),
    );
    assert_eq!(status, 200);
}

/// tiny_http reads every request line and header as ASCII and drops the connection, without
/// an answer, on anything else; tollgate never sees the request. This pins that down: no
/// answer, nothing forwarded, and the gateway keeps serving. (Behind the edge the client
/// gets nginx's JSON 502 instead: see tests/edge.rs.)
#[test]
fn non_ascii_in_a_header_or_the_path_closes_the_connection_without_forwarding() {
    let (gw, up, key) = setup();
    let with_key = format!("x-api-key: {key}\r\n");
    let mut bad_value = with_key.clone().into_bytes();
    bad_value.extend_from_slice(b"X-Bad: \xff\xfe\r\n\r\n");
    let mut req = b"GET /users/7 HTTP/1.1\r\nHost: h\r\n".to_vec();
    req.extend_from_slice(&bad_value);
    let out = crate::util::raw_request(&gw.direct_addr, &req, Duration::from_secs(3));
    assert_eq!(out, "", "no answer expected");
    let mut req = b"GET /users/caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n".to_vec();
    req.extend_from_slice(with_key.as_bytes());
    req.extend_from_slice(b"\r\n");
    let out = crate::util::raw_request(&gw.direct_addr, &req, Duration::from_secs(3));
    assert_eq!(out, "", "no answer expected");
    assert!(up.requests().is_empty());
    assert_eq!(gw.with_key("GET", "/users/7", &key).status, 200);
    assert_eq!(gw.get("/healthz", &[]).status, 200);
}
