//! The operator surface: admin CRUD and validation, analytics figures, health, start-up.
mod util;

use serde_json::{json, Value};
use std::process::Command;
use util::{run_tollgate_ok, Gateway, TestDb, Upstream, ADMIN_SECRET};

#[test]
fn admin_endpoints_refuse_a_missing_or_wrong_secret() {
    let gw = Gateway::start();
    for secret in [None, Some("wrong-secret-but-long-enough")] {
        let headers: Vec<(&str, &str)> =
            secret.map(|s| ("x-admin-secret", s)).into_iter().collect();
        let r = gw.request("GET", "/admin/users", &headers, None);
        assert_eq!((r.status, r.code().as_str()), (401, "unauthorized"));
        let r = gw.request("POST", "/admin/users", &headers, Some(b"{}"));
        assert_eq!(r.status, 401);
    }
}

#[test]
fn bad_admin_input_gets_400_naming_the_field_never_500() {
    let gw = Gateway::start();
    let user = gw.create_user("a@example.com");
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("POST", "/admin/users", json!({"name": "x"}), "email"),
        (
            "POST",
            "/admin/users",
            json!({"email": 5, "name": "x"}),
            "email",
        ),
        (
            "POST",
            "/admin/users",
            json!({"email": "not-an-email", "name": "x"}),
            "email",
        ),
        (
            "POST",
            "/admin/users",
            json!({"email": "b@example.com"}),
            "name",
        ),
        ("POST", "/admin/api-keys", json!({"name": "k"}), "userId"),
        (
            "POST",
            "/admin/api-keys",
            json!({"userId": "abc", "name": "k"}),
            "userId",
        ),
        (
            "POST",
            "/admin/api-keys",
            json!({"userId": 999999, "name": "k"}),
            "userId",
        ),
        (
            "POST",
            "/admin/api-keys",
            json!({"userId": user, "name": "k", "rateLimit": 0}),
            "rateLimit",
        ),
        (
            "POST",
            "/admin/api-keys",
            json!({"userId": user, "name": "k", "rateLimit": "5"}),
            "rateLimit",
        ),
        (
            "POST",
            "/admin/api-keys",
            json!({"userId": user, "name": "k", "scopes": ["admin"]}),
            "scopes",
        ),
        (
            "POST",
            "/admin/api-keys",
            json!({"userId": user, "name": "k", "expiresAt": "tomorrow"}),
            "expiresAt",
        ),
        (
            "POST",
            "/admin/routes",
            json!({"userId": user, "prefix": "users", "targetUrl": "http://h"}),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes",
            json!({"userId": user, "prefix": "/admin", "targetUrl": "http://h"}),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes",
            json!({"userId": user, "prefix": "/a", "targetUrl": "ftp://h"}),
            "targetUrl",
        ),
        (
            "POST",
            "/admin/routes",
            json!({"userId": user, "prefix": "/a", "targetUrl": "not a url"}),
            "targetUrl",
        ),
        (
            "POST",
            "/admin/routes",
            json!({"userId": user, "prefix": "/a"}),
            "targetUrl",
        ),
        ("GET", "/admin/users/abc", Value::Null, "id"),
        ("GET", "/admin/users?limit=-1", Value::Null, "limit"),
    ];
    for (method, path, body, field) in cases {
        let body = (!body.is_null()).then_some(body);
        let r = gw.admin(method, path, body.clone());
        assert_eq!(r.status, 400, "{method} {path} {body:?}: {}", r.body);
        assert_eq!(
            r.json()["error"]["field"],
            field,
            "{method} {path} {body:?}"
        );
    }
    for raw in [&b"{not json"[..], b"[1,2]", b""] {
        let r = gw.request(
            "POST",
            "/admin/users",
            &[("x-admin-secret", ADMIN_SECRET)],
            Some(raw),
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "bad_request"),
            "{raw:?}"
        );
    }
}

#[test]
fn users_can_be_created_listed_fetched_and_deleted_with_their_keys() {
    let gw = Gateway::start();
    let id = gw.create_user("a@example.com");
    let dup = gw.admin(
        "POST",
        "/admin/users",
        Some(json!({"email": "a@example.com", "name": "x"})),
    );
    assert_eq!((dup.status, dup.code().as_str()), (409, "conflict"));
    let got = gw.admin("GET", &format!("/admin/users/{id}"), None).json();
    assert_eq!(got["email"], "a@example.com");
    let (key, key_id) = gw.create_key(id, json!({}));
    let keys = gw
        .admin("GET", &format!("/admin/users/{id}/api-keys"), None)
        .json();
    assert_eq!(keys[0]["id"], key_id);
    assert!(keys[0].get("rawKey").is_none());
    assert!(keys[0]["keyPrefix"].as_str().unwrap().starts_with("gw_"));
    assert!(key.starts_with(keys[0]["keyPrefix"].as_str().unwrap()));
    assert_eq!(
        gw.admin("DELETE", &format!("/admin/users/{id}"), None)
            .status,
        204
    );
    assert_eq!(
        gw.admin("GET", &format!("/admin/users/{id}"), None).status,
        404
    );
    assert_eq!(gw.with_key("GET", "/x", &key).status, 401);
}

#[test]
fn lists_paginate_with_a_cursor_and_cap_the_limit_at_100() {
    let gw = Gateway::start();
    let ids: Vec<i64> = (0..5)
        .map(|i| gw.create_user(&format!("u{i}@example.com")))
        .collect();
    let mut seen = Vec::new();
    let mut path = "/admin/users?limit=2".to_string();
    loop {
        let r = gw.admin("GET", &path, None);
        assert_eq!(r.status, 200);
        let page = r.json();
        assert!(page.as_array().unwrap().len() <= 2);
        seen.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_i64().unwrap()),
        );
        match r.header("x-next-cursor") {
            Some(c) => path = format!("/admin/users?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    for i in 5..105 {
        gw.create_user(&format!("u{i}@example.com"));
    }
    let r = gw.admin("GET", "/admin/users?limit=1000", None);
    assert_eq!(r.json().as_array().unwrap().len(), 100);
    assert!(r.header("x-next-cursor").is_some());
}

fn traffic(gw: &Gateway) -> (Upstream, i64, String, i64, String) {
    let up = Upstream::start();
    let alice = gw.create_user("alice@example.com");
    let bob = gw.create_user("bob@example.com");
    let (alice_key, _) = gw.create_key(alice, json!({"rateLimit": 1000}));
    let (bob_key, _) = gw.create_key(bob, json!({"rateLimit": 1000}));
    gw.create_route(alice, "/a", &up.addr);
    gw.create_route(bob, "/b", &up.addr);
    for _ in 0..7 {
        assert_eq!(gw.with_key("GET", "/a/ok", &alice_key).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(gw.with_key("GET", "/a/status/500", &alice_key).status, 500);
    }
    for _ in 0..2 {
        assert_eq!(gw.with_key("GET", "/b/ok", &bob_key).status, 200);
    }
    assert_eq!(gw.wait_for_log_rows(12), 12);
    (up, alice, alice_key, bob, bob_key)
}

#[test]
fn analytics_numbers_equal_what_was_sent_and_keys_see_only_their_user() {
    let gw = Gateway::start();
    let (_up, alice, alice_key, bob, _bob_key) = traffic(&gw);
    let all = gw.admin("GET", "/analytics/overview", None).json();
    assert_eq!(all["totalRequests"], 12);
    assert_eq!(all["errorCount"], 3);
    assert_eq!(all["errorRate"], "25.00");
    assert!(all["avgLatencyMs"].as_f64().unwrap() > 0.0);
    let a = gw
        .admin("GET", &format!("/analytics/overview?userId={alice}"), None)
        .json();
    assert_eq!(
        (a["totalRequests"].clone(), a["errorRate"].clone()),
        (json!(10), json!("30.00"))
    );
    let b = gw
        .admin("GET", &format!("/analytics/overview?userId={bob}"), None)
        .json();
    assert_eq!(b["totalRequests"], 2);
    // Alice's key sees exactly Alice's traffic, whatever it asks for.
    let mine = gw.with_key("GET", "/analytics/overview", &alice_key).json();
    assert_eq!(
        (mine["totalRequests"].clone(), mine["errorCount"].clone()),
        (json!(10), json!(3))
    );
    let other = gw.with_key(
        "GET",
        &format!("/analytics/overview?userId={bob}"),
        &alice_key,
    );
    assert_eq!(other.status, 403);
    let recent = gw.with_key("GET", "/analytics/recent", &alice_key).json();
    assert_eq!(recent.as_array().unwrap().len(), 10);
    assert!(recent
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["userId"] == alice));
}

#[test]
fn timeseries_top_routes_and_recent_reflect_the_traffic() {
    let gw = Gateway::start();
    let (_up, _alice, _k, _bob, _bk) = traffic(&gw);
    let ts = gw.admin("GET", "/analytics/timeseries", None).json();
    let ts = ts.as_array().unwrap();
    assert_eq!(ts.len(), 24);
    let last = ts.last().unwrap();
    assert_eq!(
        (last["count"].clone(), last["errorCount"].clone()),
        (json!(12), json!(3))
    );
    assert_eq!(
        ts.iter().map(|h| h["count"].as_i64().unwrap()).sum::<i64>(),
        12
    );
    // Top routes are per route (its prefix), from the rollups: /a/ok and /a/status/500
    // both count for /a.
    let top = gw.admin("GET", "/analytics/top-routes", None).json();
    assert_eq!(top[0]["path"], "/a");
    assert_eq!(top[0]["count"], 10);
    assert_eq!(top[0]["errorCount"], 3);
    assert_eq!(top[1]["path"], "/b");
    assert_eq!(top[1]["count"], 2);
    let recent = gw.admin("GET", "/analytics/recent", None).json();
    let recent = recent.as_array().unwrap();
    assert_eq!(recent.len(), 12);
    assert_eq!(recent[0]["path"], "/b/ok", "newest first");
    let short = gw
        .admin("GET", "/analytics/timeseries?window=3h", None)
        .json();
    assert_eq!(short.as_array().unwrap().len(), 3);
    let bad = gw.admin("GET", "/analytics/overview?window=forever", None);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["field"], "window");
    let none = gw.get("/analytics/overview", &[]);
    assert_eq!(none.status, 401);
}

#[test]
fn health_and_readiness_answer() {
    let gw = Gateway::start();
    let r = gw.get("/healthz", &[]);
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
    let r = gw.get("/readyz", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["database"], "ok");
}

#[test]
fn the_server_refuses_to_start_without_a_strong_admin_secret() {
    let db = TestDb::create();
    for secret in [None, Some("short")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.env_clear()
            .env("DATABASE_URL", db.url())
            .env("LISTEN_ADDR", "127.0.0.1:1");
        if let Some(s) = secret {
            cmd.env("ADMIN_SECRET", s);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ADMIN_SECRET"), "{err}");
    }
}

#[test]
fn migrate_applies_the_schema_and_is_idempotent() {
    let db = TestDb::create();
    for _ in 0..2 {
        run_tollgate_ok(&["migrate"], &db.url());
    }
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .unwrap()
        .get(0);
    assert!(n >= 2);
}
