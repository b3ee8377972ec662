//! CORS per route: preflights answered before auth and never counted, `Access-Control-*`
//! headers on actual answers, and the admin API's validation of `cors`. The browser's view
//! of the same is in tests/browser.rs.

use crate::util::*;
use serde_json::json;

const APP: &str = "https://app.example.com";

/// A gateway, an upstream, a user with a key, and `/api` to the upstream with `cors`.
fn cors_route(
    cors: serde_json::Value,
    key_extra: serde_json::Value,
) -> (Gateway, Upstream, String, i64) {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("cors@example.com");
    gw.create_route_with(user, "/api", &up.addr, json!({ "cors": cors }));
    let (key, key_id) = gw.create_key(user, key_extra);
    (gw, up, key, key_id)
}

fn preflight(gw: &Gateway, path: &str, origin: &str) -> Resp {
    gw.direct(
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-api-key"),
        ],
        None,
    )
}

fn cors_headers(r: &Resp) -> Vec<&(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
        .collect()
}

#[test]
fn a_preflight_from_an_allowed_origin_is_answered_without_a_key_and_not_counted() {
    let (gw, up, _, key_id) = cors_route(
        json!({"allowedOrigins": [APP], "allowedMethods": ["GET", "POST"], "maxAgeSecs": 600,
               "allowCredentials": true}),
        json!({}),
    );
    let r = preflight(&gw, "/api/items", APP);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some(APP));
    assert_eq!(r.header("Access-Control-Allow-Methods"), Some("GET, POST"));
    assert_eq!(
        r.header("Access-Control-Allow-Headers"),
        Some("x-api-key, authorization")
    );
    assert_eq!(r.header("Access-Control-Max-Age"), Some("600"));
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(r.header("Vary"), Some("Origin"));
    assert!(
        up.requests().is_empty(),
        "a preflight never reaches the upstream"
    );
    assert_eq!(gw.counted_for_key(Some(key_id)), 0);
    assert_eq!(gw.counted_requests(), 0);
    // Gateway traffic is logged, with the route but no key.
    gw.wait_for_log_rows(1);
    let row = gw
        .db()
        .query_one(
            "SELECT status, route_id IS NOT NULL, api_key_id IS NULL FROM request_logs",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2)
        ),
        (204, true, true)
    );
}

#[test]
fn a_wildcard_origin_allows_subdomains_and_anything_else_gets_no_cors_headers() {
    let (gw, _up, _, _) = cors_route(
        json!({"allowedOrigins": ["https://*.example.com"]}),
        json!({}),
    );
    for ok in [APP, "https://a.b.example.com"] {
        let r = preflight(&gw, "/api", ok);
        assert_eq!(r.status, 204, "{ok}: {}", r.body);
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some(ok));
    }
    for refused in [
        "https://example.com",
        "http://app.example.com",
        "https://app.example.com.evil.test",
        "https://app.example.com:8443",
    ] {
        let r = preflight(&gw, "/api", refused);
        assert_eq!(r.status, 403, "{refused}");
        assert_eq!(r.code(), "cors_origin_not_allowed");
        assert!(cors_headers(&r).is_empty(), "{refused}: {:?}", r.headers);
    }
    assert_eq!(gw.counted_requests(), 0);
}

#[test]
fn a_preflight_on_a_route_without_cors_is_refused_as_before() {
    let (gw, up, _) = gateway_with_api_route(&[]);
    let r = preflight(&gw, "/api", APP);
    assert_eq!(r.status, 401);
    assert!(cors_headers(&r).is_empty());
    assert!(up.requests().is_empty());
}

#[test]
fn an_allowed_origin_can_read_the_answer_and_its_rate_limit_headers() {
    let (gw, up, key, _) = cors_route(
        json!({"allowedOrigins": [APP], "exposeHeaders": ["X-Total-Count"]}),
        json!({"rateLimit": 1}),
    );
    let r = gw.direct(
        "GET",
        "/api/x",
        &[("x-api-key", &key), ("Origin", APP)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some(APP));
    assert!(r.header("Access-Control-Allow-Credentials").is_none());
    assert!(r.headers_named("Vary").contains(&"Origin"));
    let exposed = r
        .header("Access-Control-Expose-Headers")
        .unwrap()
        .to_string();
    for h in [
        "RateLimit",
        "RateLimit-Policy",
        "X-RateLimit-Remaining",
        "Retry-After",
        "X-Request-Id",
        "x-total-count",
    ] {
        assert!(exposed.split(", ").any(|e| e == h), "{h} in {exposed}");
    }
    assert!(r.header("RateLimit").is_some());
    assert_eq!(up.last().header("origin"), Some(APP));
    // The gateway's own answers once the route is known carry them too.
    let refused = gw.direct(
        "GET",
        "/api/x",
        &[("x-api-key", &key), ("Origin", APP)],
        None,
    );
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("Access-Control-Allow-Origin"), Some(APP));
    assert!(refused.header("Access-Control-Expose-Headers").is_some());
    // Another origin gets the answer (the key is valid) but no CORS headers.
    let other = gw.direct(
        "GET",
        "/api/x",
        &[("x-api-key", &key), ("Origin", "https://evil.test")],
        None,
    );
    assert!(cors_headers(&other).is_empty(), "{:?}", other.headers);
}

#[test]
fn upstream_cors_headers_are_replaced_on_a_cors_route() {
    // The recording upstream echoes nothing CORS-like; a route to a tiny upstream that does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = read_head(&mut std::io::BufReader::new(conn.try_clone().unwrap()));
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
    });
    let gw = Gateway::start();
    let user = gw.create_user("cors@example.com");
    gw.create_route_with(
        user,
        "/api",
        &addr,
        json!({"cors": {"allowedOrigins": [APP]}}),
    );
    let (key, _) = gw.create_key(user, json!({}));
    let r = gw.direct(
        "GET",
        "/api",
        &[("x-api-key", &key), ("Origin", "https://evil.test")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    let r = gw.direct("GET", "/api", &[("x-api-key", &key), ("Origin", APP)], None);
    assert_eq!(r.headers_named("Access-Control-Allow-Origin"), [APP]);
}

#[test]
fn the_admin_api_validates_stores_and_clears_cors() {
    let gw = Gateway::start();
    let user = gw.create_user("cors@example.com");
    for (cors, field) in [
        (
            json!({"allowedOrigins": ["*"], "allowCredentials": true}),
            "cors.allowedOrigins",
        ),
        (
            json!({"allowedOrigins": ["https://app.example.com/path"]}),
            "cors.allowedOrigins",
        ),
        (
            json!({"allowedOrigins": [APP], "maxAgeSecs": 86401}),
            "cors.maxAgeSecs",
        ),
        (
            json!({"allowedOrigins": [APP], "allowedMethods": ["GE T"]}),
            "cors.allowedMethods",
        ),
        (
            json!({"allowedOrigins": [APP], "origins": [APP]}),
            "cors.origins",
        ),
    ] {
        let r = gw.admin_post(
            "/admin/routes",
            json!({"userId": user, "prefix": "/api", "targetUrl": "http://h", "cors": cors}),
        );
        assert_eq!(r.status, 400, "{cors}: {}", r.body);
        assert_eq!(r.json()["error"]["field"], field, "{}", r.body);
    }
    let id = gw.create_route_with(
        user,
        "/api",
        "http://h",
        json!({"cors": {"allowedOrigins": ["HTTPS://App.Example.com"], "allowedMethods": ["get"]}}),
    );
    let got = gw.admin_get(&format!("/admin/routes/{id}")).json();
    assert_eq!(
        got["cors"],
        json!({"allowedOrigins": [APP], "allowedMethods": ["GET"], "allowedHeaders": [],
               "exposeHeaders": [], "allowCredentials": false, "maxAgeSecs": null})
    );
    let r = gw.admin_patch(&format!("/admin/routes/{id}"), json!({"cors": null}));
    assert_eq!(r.json()["cors"], json!(null));
    assert_eq!(preflight(&gw, "/api", APP).status, 401);
}
