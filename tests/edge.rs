//! The gateway behind the shipped nginx edge (scripts/edge/nginx.conf). In this crate, and
//! only here, every `Gateway` the harness starts has nginx in front: `gw.addr` is the
//! edge, `gw.direct_addr` the gateway itself (util::BEHIND_EDGE is true for the crate named
//! `edge`). A crate of its own because that is a process shape of its own: nginx between
//! the client and every gateway.
//!
//! Two parts. The tests in this file show what the edge stops before tollgate, which has no
//! defence of its own against it (slow clients, huge headers, huge declared bodies, request
//! smuggling, non-ASCII header values), and that tollgate neither crashes nor stalls. The
//! modules below are topics of tests/tests.rs, the same files, run a second time here: what
//! a client sees must not change behind the edge. A test in them that judges tollgate's own
//! handling of something nginx rewrites talks to `gw.direct_addr` (or `Gateway::direct`).

// The whole harness; this crate uses part of it.
#[allow(dead_code)]
mod util;

// Topics of tests/tests.rs whose every test also runs behind the edge.
mod admin;
mod analytics;
mod auth;
mod identity;
mod logging;
mod proxy;
mod ratelimit;

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use util::{raw_request, Gateway, Upstream};

/// A gateway (nginx in front, as every gateway in this crate), an upstream, and a key for
/// the route `/api` to it.
fn setup() -> (Gateway, Upstream, String) {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("edge@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 100000}));
    gw.create_route(user, "/api", &up.addr);
    (gw, up, key)
}

fn get_via(addr: &str, path: &str, key: &str) -> (String, Duration) {
    let t = Instant::now();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: edge.test\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
    );
    let out = raw_request(addr, req.as_bytes(), Duration::from_secs(5));
    (out, t.elapsed())
}

#[test]
fn requests_pass_through_the_edge_with_the_client_address_believed() {
    let gw = Gateway::start_with(&[("TOLLGATE_LOG_CLIENT_IP", "raw")]);
    let up = Upstream::start();
    let user = gw.create_user("edge@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 100000}));
    gw.create_route(user, "/api", &up.addr);
    let (out, _) = get_via(&gw.addr, "/api/x?q=1", &key);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.last();
    assert_eq!(seen.target, "/api/x?q=1");
    assert_eq!(seen.header("x-forwarded-host"), Some("edge.test"));
    gw.wait_for_log_rows(1);
    let ip: String = gw
        .db
        .client()
        .query_one("SELECT client_ip FROM request_logs", &[])
        .unwrap()
        .get(0);
    assert_eq!(ip, "127.0.0.1");
}

#[test]
fn slow_clients_do_not_stall_tollgate() {
    let (gw, _up, key) = setup();
    // 200 clients that send half a request line and stop (slowloris).
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr.trim_start_matches("http://")).unwrap();
            s.write_all(b"GET /api/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    for _ in 0..10 {
        let (out, took) = get_via(&gw.addr, "/api/fast", &key);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            took < Duration::from_secs(1),
            "took {took:?} behind slow clients"
        );
    }
    // Directly too: tollgate's workers never saw the incomplete requests.
    let (out, took) = get_via(&gw.direct_addr, "/api/direct", &key);
    assert!(
        out.starts_with("HTTP/1.1 200") && took < Duration::from_secs(1),
        "{out}"
    );
    for s in &mut slow {
        let _ = s.write_all(b"x");
    }
}

#[test]
fn a_64_kib_header_is_refused_at_the_edge() {
    let (gw, _up, key) = setup();
    let big = "a".repeat(64 * 1024);
    let req = format!("GET /api/x HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nX-Big: {big}\r\n\r\n");
    let out = raw_request(&gw.addr, req.as_bytes(), Duration::from_secs(3));
    assert!(
        out.starts_with("HTTP/1.1 400"),
        "{}",
        &out[..out.len().min(300)]
    );
    assert!(out.contains("header_too_large"), "{out}");
    assert_eq!(gw.get("/healthz", &[]).status, 200);
}

#[test]
fn a_huge_declared_body_is_refused_before_any_byte_reaches_tollgate() {
    let (gw, up, key) = setup();
    let req = format!(
        "POST /api/x HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 10000000000000\r\n\r\nabc"
    );
    let out = raw_request(&gw.addr, req.as_bytes(), Duration::from_secs(3));
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(up.requests().is_empty());
    assert_eq!(gw.get("/healthz", &[]).status, 200);
    let stats = gw.admin("GET", "/admin/stats", None).json();
    assert_eq!(
        stats["abandonedBodies"], 0,
        "nothing reached tollgate's drain"
    );
}

#[test]
fn a_content_length_plus_transfer_encoding_smuggling_attempt_is_refused_and_closed() {
    let (gw, up, key) = setup();
    let req = format!(
        "POST /api/x HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 44\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let mut s = TcpStream::connect(gw.addr.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "one answer, connection closed: {out}"
    );
    assert!(up.requests().iter().all(|r| !r.target.contains("smuggled")));
    assert_eq!(gw.get("/healthz", &[]).status, 200);
}

/// A header value that is not ASCII (invalid UTF-8 here): tiny_http drops such a
/// connection without answering (`hostile_input` in tests/tests.rs), so behind the edge the
/// client gets the edge's JSON 502, not a 400; nothing is forwarded, and tollgate keeps
/// serving.
#[test]
fn a_non_ascii_header_value_gets_a_json_answer_from_the_edge_and_is_not_forwarded() {
    let (gw, up, key) = setup();
    let mut req =
        format!("GET /api/x HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nConnection: close\r\n")
            .into_bytes();
    req.extend_from_slice(b"X-Bad: \xff\xfe\xc3(\r\n\r\n");
    let out = raw_request(&gw.addr, &req, Duration::from_secs(5));
    // nginx forwards the bytes (it checks only header names); tiny_http hangs up on them.
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.contains(r#"{"error":{"code":"gateway_unavailable""#),
        "{out}"
    );
    assert!(up.requests().is_empty());
    let (ok, _) = get_via(&gw.addr, "/api/after", &key);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(gw.get("/healthz", &[]).status, 200);
}
