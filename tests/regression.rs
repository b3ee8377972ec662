//! One test per fixed bug, named for the behaviour the fix restored; each test's first line
//! names the commit of the fix and what went wrong before it.

use crate::util::{
    gateway_with_api_route, gateway_with_key, raw_request, Gateway, Upstream, ADMIN_SECRET,
};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// 1c3e0c8: a key sent in `x-api-key` and also as a Bearer token went upstream in
/// `Authorization`; only the header it was read from was removed.
#[test]
fn a_credential_sent_in_both_headers_is_forwarded_in_neither() {
    let (gw, up, user) = gateway_with_api_route(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let bearer = format!("Bearer {key}");
    let r = gw.request(
        "GET",
        "/api",
        &[("x-api-key", &key), ("authorization", &bearer)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.header("x-api-key"), None, "{:?}", seen.headers);
    assert_eq!(seen.header("authorization"), None, "{:?}", seen.headers);
    assert!(!format!("{:?}", seen.headers).contains(key.rsplit('_').next().unwrap()));
}

/// 1c3e0c8: a body whose framing was refused was still drained; under a Transfer-Encoding
/// other than chunked its end is the client's close, so the 400 and the worker waited for it.
#[test]
fn a_transfer_encoding_other_than_chunked_gets_400_without_waiting_for_the_client_to_close() {
    let (gw, up, user) = gateway_with_api_route(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let h = gw.addr.trim_start_matches("http://");
    for te in ["gzip", "identity"] {
        let req = format!(
            "POST /api HTTP/1.1\r\nHost: {h}\r\nx-api-key: {key}\r\nTransfer-Encoding: {te}\r\n\r\nabc"
        );
        let t = Instant::now();
        let out = raw_request(&gw.addr, req.as_bytes(), Duration::from_millis(1500));
        assert!(
            out.starts_with("HTTP/1.1 400") && out.contains("bad_request"),
            "Transfer-Encoding: {te}: no 400 within {:?} (got {out:?})",
            t.elapsed()
        );
    }
    assert!(up.requests().is_empty());
}

/// 3dee6b2: /metrics compared the admin secret without counting failures, a way around
/// TOLLGATE_ADMIN_FAIL_LIMIT with unlimited guesses. Wrong secrets sent here, in either
/// form, count like wrong secrets sent to /admin, and past the limit even the right one
/// gets 429 on both.
#[test]
fn wrong_secrets_on_metrics_count_against_the_admin_failure_limit() {
    let gw = Gateway::start_with(&[("TOLLGATE_ADMIN_FAIL_LIMIT", "3")]);
    let wrong = [
        ("authorization", "Bearer not-the-secret"),
        ("x-admin-secret", "not-the-secret"),
        ("authorization", "bearer also-not-it"),
    ];
    for header in wrong {
        let r = gw.direct("GET", "/metrics", &[header], None);
        assert_eq!(r.status, 401, "{header:?}: {}", r.body);
    }
    let bearer = format!("Bearer {ADMIN_SECRET}");
    let limited = gw.direct("GET", "/metrics", &[("authorization", &bearer)], None);
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.code(), "too_many_failed_attempts");
    assert!(limited.header("retry-after").is_some());
    let admin = gw.direct(
        "GET",
        "/admin/stats",
        &[("x-admin-secret", ADMIN_SECRET)],
        None,
    );
    assert_eq!(admin.status, 429, "{}", admin.body);
}

/// 9129894, c41ed28: tiny_http 0.12's task pool left a burst of new connections unread
/// behind one waking thread (Recv-Q 195 in ss); the pool is now nudged every 50 ms, and a
/// nudge still queued keeps nudging, so a burst waits one tick, not one tick each. Thirty
/// connections for a hung upstream, more than its in-flight cap (24 of 32 workers): the
/// first 24 are answered after the upstream's delay, the rest with an immediate 503
/// `upstream_busy`; none sits unread until another connection's request has finished.
#[test]
fn a_burst_of_new_connections_is_read_at_once_not_after_other_requests_finish() {
    const HANG_MS: u64 = 1500;
    let hung = Upstream::start();
    let (gw, user, key) = gateway_with_key("burst@example.com", &[("TOLLGATE_WORKERS", "32")]);
    gw.create_route(user, "/hang", &hung.addr);
    let target = gw.direct_addr.trim_start_matches("http://").to_string();
    // Thirty clients connect at the same instant, so the gateway accepts them as one burst.
    let start = Arc::new(Barrier::new(30));
    let threads: Vec<_> = (0..30)
        .map(|_| {
            let req = format!(
                "GET /hang/slow/{HANG_MS} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n\
                 Connection: close\r\n\r\n"
            );
            let (target, start) = (target.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let t0 = Instant::now();
                let mut s = TcpStream::connect(&target).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(req.as_bytes()).unwrap();
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                let status = answer.get(9..12).unwrap_or("").to_string();
                (status, answer.contains("upstream_busy"), t0.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut late = Vec::new();
    for (status, busy, took) in &results {
        match (status.as_str(), busy) {
            ("200", false) if *took < Duration::from_millis(HANG_MS + 900) => {}
            ("503", true) if *took < Duration::from_millis(900) => {}
            _ => late.push((status.clone(), *busy, *took)),
        }
    }
    assert!(
        late.is_empty(),
        "answered late (queued behind other connections?): {late:?}; all: {results:?}"
    );
    let ok = results.iter().filter(|(s, _, _)| s == "200").count();
    assert_eq!(ok, 24, "{results:?}");
}

/// Issue 11's restructure took tiny_http's body reader before the handler ran, and taking
/// it answers `Expect: 100-continue`: a request refused before its body (401, 404, 413)
/// got `100 Continue` first, inviting an upload that was then thrown away. The reader is
/// now taken on the first read.
#[test]
fn only_a_request_whose_body_is_read_gets_100_continue() {
    let (gw, _up, user) = gateway_with_api_route(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let h = gw.addr.trim_start_matches("http://");
    let wrong = format!("gw_{}_{}", "A".repeat(12), "B".repeat(32));
    let send = |key: &str, path: &str, length: &str, body: &str| {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {h}\r\nx-api-key: {key}\r\n\
             Expect: 100-continue\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        raw_request(
            h,
            format!("{head}{body}").as_bytes(),
            Duration::from_secs(2),
        )
    };
    for (key, path, length, status) in [
        (wrong.as_str(), "/api", "5", "401"),
        (key.as_str(), "/nowhere", "5", "404"),
        (key.as_str(), "/api", "99999999999", "413"),
    ] {
        let answer = send(key, path, length, "");
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {answer}"
        );
        assert!(!answer.contains("100 Continue"), "{path}: {answer}");
    }
    let admitted = send(&key, "/api", "5", "hello");
    assert!(admitted.starts_with("HTTP/1.1 100 Continue"), "{admitted}");
    assert!(admitted.contains("HTTP/1.1 200"), "{admitted}");
}

/// b6bc4f4: a metadata float near f64::MAX was stored (jsonb prints it as 309 digits) but
/// could not be read back, so the user answered 500 on every read, list and delete.
#[test]
fn metadata_floats_read_back_as_written_even_at_the_edge_of_f64() {
    let gw = Gateway::start();
    let metadata = json!({"max": f64::MAX, "tiny": 5e-324, "min": f64::MIN});
    let r = gw.admin_post(
        "/admin/users",
        json!({"email": "f@example.com", "name": "F", "metadata": metadata}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    let read = gw.admin_get(&format!("/admin/users/{id}"));
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["metadata"], metadata);
    assert_eq!(gw.admin_get("/admin/users").status, 200);
    let gone = gw.admin("DELETE", &format!("/admin/users/{id}"), None);
    assert_eq!(gone.status, 204, "{}", gone.body);
}
