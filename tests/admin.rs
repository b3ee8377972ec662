//! The admin API: the secret it needs; users, keys and routes created, listed, fetched,
//! updated and deleted, with their cascades in the database; input that must come back as a
//! 400 JSON error naming the field, never a 500; unknown paths; pagination; the stats
//! counters.

use crate::util::{Gateway, Upstream, ADMIN_SECRET};
use serde_json::{json, Value};

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
    // Gone everywhere the path names it, its key list included (not an empty list).
    for path in ["", "/api-keys", "/limits"] {
        let r = gw.admin("GET", &format!("/admin/users/{id}{path}"), None);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    assert_eq!(gw.with_key("GET", "/x", &key).status, 401);
}

#[test]
fn deleting_a_user_removes_its_keys_and_routes_rows() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let gone = gw.create_user("gone@example.com");
    let kept = gw.create_user("kept@example.com");
    let (gone_key, _) = gw.create_key(gone, json!({}));
    let (kept_key, _) = gw.create_key(kept, json!({}));
    gw.create_route(gone, "/g", &up.addr);
    gw.create_route(kept, "/k", &up.addr);
    assert_eq!(gw.with_key("GET", "/g", &gone_key).status, 200);
    assert_eq!(gw.admin_delete(&format!("/admin/users/{gone}")).status, 204);
    let mut db = gw.db();
    for table in ["api_keys", "routes"] {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE user_id = $1") as &str,
                &[&gone],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} rows of the deleted user remain");
    }
    assert_eq!(gw.with_key("GET", "/g", &gone_key).status, 401);
    assert_eq!(gw.with_key("GET", "/k", &kept_key).status, 200);
    let users = gw.admin_get("/admin/users").json();
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["id"], kept);
    assert_eq!(users[0]["email"], "kept@example.com");
    assert!(users[0]["createdAt"].is_string());
}

#[test]
fn keys_can_be_created_with_options_listed_fetched_and_updated() {
    let gw = Gateway::start();
    let user = gw.create_user("a@example.com");
    let expires = (chrono::Utc::now() + chrono::Duration::days(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let r = gw.admin_post(
        "/admin/api-keys",
        json!({"userId": user, "name": "ci", "rateLimit": 7, "scopes": ["read"], "expiresAt": expires}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    let raw = created["rawKey"].as_str().unwrap().to_string();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["userId"], user);
    assert_eq!(created["name"], "ci");
    assert_eq!(created["rateLimit"], 7);
    assert_eq!(created["scopes"], json!(["read"]));
    assert_eq!(created["isActive"], true);
    assert!(created["revokedAt"].is_null() && created["lastUsedAt"].is_null());
    let exp = chrono::DateTime::parse_from_rfc3339(created["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!(
        exp.timestamp(),
        chrono::DateTime::parse_from_rfc3339(&expires)
            .unwrap()
            .timestamp()
    );
    let prefix = created["keyPrefix"].as_str().unwrap();
    assert!(raw.starts_with(&format!("{prefix}_")), "{raw} vs {prefix}");
    let (public, secret) = raw.rsplit_once('_').unwrap();
    assert_eq!(public, prefix);
    assert!(
        secret.len() >= 22 && secret.chars().all(|c| c.is_ascii_alphanumeric()),
        "{secret}"
    );

    let defaults = gw
        .admin_post("/admin/api-keys", json!({"userId": user, "name": "d"}))
        .json();
    assert_eq!(defaults["rateLimit"], 100);
    assert_eq!(defaults["scopes"], json!(["read", "write"]));
    assert!(defaults["expiresAt"].is_null());
    assert_ne!(defaults["rawKey"], created["rawKey"]);

    let fetched = gw.admin_get(&format!("/admin/api-keys/{id}")).json();
    assert!(fetched.get("rawKey").is_none(), "{fetched}");
    assert_eq!(fetched["keyPrefix"], created["keyPrefix"]);
    for path in [
        format!("/admin/api-keys?userId={user}"),
        format!("/admin/users/{user}/api-keys"),
    ] {
        let list = gw.admin_get(&path).json();
        let list = list.as_array().unwrap_or_else(|| panic!("{path}: {list}"));
        assert_eq!(list.len(), 2, "{path}");
        assert!(list.iter().all(|k| k.get("rawKey").is_none()));
        assert!(!serde_json::to_string(list).unwrap().contains(secret));
    }

    let r = gw.admin_patch(
        &format!("/admin/api-keys/{id}"),
        json!({"name": "renamed", "rateLimit": 9, "scopes": ["read", "write"], "expiresAt": null}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let patched = gw.admin_get(&format!("/admin/api-keys/{id}")).json();
    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["rateLimit"], 9);
    assert_eq!(patched["scopes"], json!(["read", "write"]));
    assert!(patched["expiresAt"].is_null(), "{patched}");
    let missing = gw.admin_get("/admin/api-keys/987654");
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "not_found")
    );
    assert_eq!(
        gw.admin_patch("/admin/api-keys/987654", json!({"name": "x"}))
            .status,
        404
    );
    assert_eq!(gw.admin_delete("/admin/api-keys/987654").status, 404);
}

#[test]
fn routes_can_be_fetched_listed_updated_and_deleted() {
    let gw = Gateway::start();
    let (a, b) = (Upstream::start(), Upstream::start());
    let user = gw.create_user("a@example.com");
    let other = gw.create_user("b@example.com");
    let (key, _) = gw.create_key(user, json!({}));
    let created = gw.admin_post(
        "/admin/routes",
        json!({"userId": user, "prefix": "/svc", "targetUrl": a.addr}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let route = created.json();
    let id = route["id"].as_i64().unwrap();
    assert_eq!(route["userId"], user);
    assert_eq!(route["prefix"], "/svc");
    assert_eq!(route["targetUrl"], a.addr.as_str());
    assert!(
        route["createdAt"].is_string() && route["updatedAt"].is_string(),
        "{route}"
    );
    gw.create_route(other, "/other", &a.addr);
    let dup = gw.admin_post(
        "/admin/routes",
        json!({"userId": user, "prefix": "/svc", "targetUrl": b.addr}),
    );
    assert_eq!((dup.status, dup.code().as_str()), (409, "conflict"));
    let same_prefix_other_user = gw.admin_post(
        "/admin/routes",
        json!({"userId": other, "prefix": "/svc", "targetUrl": b.addr}),
    );
    assert_eq!(
        same_prefix_other_user.status, 201,
        "prefixes are unique per user only"
    );
    let nobody = gw.admin_post(
        "/admin/routes",
        json!({"userId": 987654, "prefix": "/x", "targetUrl": b.addr}),
    );
    assert!([400, 404].contains(&nobody.status), "{}", nobody.body);
    assert_eq!(nobody.json()["error"]["field"], "userId");
    assert_eq!(gw.admin_get(&format!("/admin/routes/{id}")).json(), route);
    let listed = gw.admin_get(&format!("/admin/routes?userId={user}")).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id);
    assert_eq!(
        gw.admin_get("/admin/routes")
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let r = gw.admin_patch(
        &format!("/admin/routes/{id}"),
        json!({"prefix": "/svc2", "targetUrl": b.addr}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["prefix"].clone(), r.json()["targetUrl"].clone()),
        (json!("/svc2"), json!(b.addr))
    );
    assert_eq!(gw.with_key("GET", "/svc", &key).code(), "route_not_found");
    assert_eq!(gw.with_key("GET", "/svc2/x", &key).status, 200);
    assert_eq!(b.last().target, "/svc2/x");
    assert!(a.requests().is_empty());
    let bad = gw.admin_patch(&format!("/admin/routes/{id}"), json!({"prefix": "nope"}));
    assert_eq!(
        (bad.status, bad.json()["error"]["field"].clone()),
        (400, json!("prefix"))
    );

    assert_eq!(gw.admin_delete(&format!("/admin/routes/{id}")).status, 204);
    let gone = gw.admin_get(&format!("/admin/routes/{id}"));
    assert_eq!((gone.status, gone.code().as_str()), (404, "not_found"));
    assert_eq!(gw.with_key("GET", "/svc2/x", &key).status, 404);
    let n: i64 = gw
        .db()
        .query_one("SELECT count(*) FROM routes WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// Every kind of bad admin input, from a missing field to hostile JSON, gets a 400 whose
/// JSON error names the field (or says the body is bad), never a 500, and creates nothing.
#[test]
fn bad_admin_input_gets_400_naming_the_field_and_creates_nothing() {
    let gw = Gateway::start();
    let user = gw.create_user("a@example.com");
    let (_, key_id) = gw.create_key(user, json!({}));
    let route_id = gw.create_route(user, "/r", "http://127.0.0.1:9");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let long_email = format!("{}@example.com", "a".repeat(400));
    let field_cases: Vec<(&str, String, String, &str)> = vec![
        (
            "POST",
            "/admin/users".into(),
            json!({"name": "x"}).to_string(),
            "email",
        ),
        (
            "POST",
            "/admin/users".into(),
            json!({"email": 5, "name": "x"}).to_string(),
            "email",
        ),
        (
            "POST",
            "/admin/users".into(),
            json!({"email": "not-an-email", "name": "x"}).to_string(),
            "email",
        ),
        (
            "POST",
            "/admin/users".into(),
            json!({"email": "b@example.com"}).to_string(),
            "name",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"name": "k"}).to_string(),
            "userId",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": "abc", "name": "k"}).to_string(),
            "userId",
        ),
        // A userId that names no user is a validation error of the body (400), like any
        // other bad field; 404 is kept for the resource in the path.
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": 999999, "name": "k"}).to_string(),
            "userId",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "rateLimit": 0}).to_string(),
            "rateLimit",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "rateLimit": "5"}).to_string(),
            "rateLimit",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "scopes": ["admin"]}).to_string(),
            "scopes",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "expiresAt": "tomorrow"}).to_string(),
            "expiresAt",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "expiresAt": "2020-01-01T00:00:00Z"}).to_string(),
            "expiresAt",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "users", "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/admin", "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a", "targetUrl": "ftp://h"}).to_string(),
            "targetUrl",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a", "targetUrl": "not a url"}).to_string(),
            "targetUrl",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a"}).to_string(),
            "targetUrl",
        ),
        ("GET", "/admin/users/abc".into(), String::new(), "id"),
        (
            "GET",
            "/admin/users?limit=-1".into(),
            String::new(),
            "limit",
        ),
        (
            "POST",
            "/admin/users".into(),
            json!({"email": "c@example.com", "name": 5}).to_string(),
            "name",
        ),
        (
            "POST",
            "/admin/users".into(),
            json!({"email": ["c@example.com"], "name": "x"}).to_string(),
            "email",
        ),
        (
            "POST",
            "/admin/users".into(),
            json!({"email": long_email, "name": "x"}).to_string(),
            "email",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "rateLimit": -1}).to_string(),
            "rateLimit",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "rateLimit": 1.5}).to_string(),
            "rateLimit",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "rateLimit": 1e30}).to_string(),
            "rateLimit",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "scopes": "read"}).to_string(),
            "scopes",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "scopes": [1]}).to_string(),
            "scopes",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "expiresAt": 5}).to_string(),
            "expiresAt",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": user, "name": "k", "expiresAt": "2030-13-45T99:00:00Z"}).to_string(),
            "expiresAt",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": -4, "name": "k"}).to_string(),
            "userId",
        ),
        (
            "POST",
            "/admin/api-keys".into(),
            json!({"userId": 99999999999999999999u128 as f64, "name": "k"}).to_string(),
            "userId",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key_id}"),
            json!({"rateLimit": 0}).to_string(),
            "rateLimit",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key_id}"),
            json!({"scopes": ["write", "root"]}).to_string(),
            "scopes",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key_id}"),
            json!({"expiresAt": "yesterday"}).to_string(),
            "expiresAt",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "", "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a b", "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a?x=1", "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/healthz", "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/analytics/x", "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": 7, "targetUrl": "http://h"}).to_string(),
            "prefix",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a", "targetUrl": "http://u:p@h/"}).to_string(),
            "targetUrl",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a", "targetUrl": "/relative"}).to_string(),
            "targetUrl",
        ),
        (
            "POST",
            "/admin/routes".into(),
            json!({"userId": user, "prefix": "/a", "targetUrl": ""}).to_string(),
            "targetUrl",
        ),
        (
            "PATCH",
            format!("/admin/routes/{route_id}"),
            json!({"targetUrl": "javascript:alert(1)"}).to_string(),
            "targetUrl",
        ),
        // What a record always has cannot be cleared with null (nor is null "keep").
        (
            "PATCH",
            format!("/admin/routes/{route_id}"),
            json!({"prefix": null}).to_string(),
            "prefix",
        ),
        (
            "PUT",
            format!("/admin/routes/{route_id}"),
            json!({"targetUrl": null}).to_string(),
            "targetUrl",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key_id}"),
            json!({"name": null}).to_string(),
            "name",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key_id}"),
            json!({"scopes": null}).to_string(),
            "scopes",
        ),
        ("GET", "/admin/users/0".into(), String::new(), "id"),
        (
            "GET",
            "/admin/users/99999999999999999999999".into(),
            String::new(),
            "id",
        ),
        ("GET", "/admin/api-keys/abc".into(), String::new(), "id"),
        ("DELETE", "/admin/api-keys/1.5".into(), String::new(), "id"),
        ("GET", "/admin/routes/-1".into(), String::new(), "id"),
        ("DELETE", "/admin/routes/x".into(), String::new(), "id"),
        (
            "DELETE",
            "/admin/users/%27%3B--".into(),
            String::new(),
            "id",
        ),
        (
            "GET",
            "/admin/api-keys?userId=abc".into(),
            String::new(),
            "userId",
        ),
        (
            "GET",
            "/admin/routes?userId=1%20OR%201=1".into(),
            String::new(),
            "userId",
        ),
        (
            "GET",
            "/admin/users?cursor=xyz".into(),
            String::new(),
            "cursor",
        ),
        ("GET", "/admin/users?limit=0".into(), String::new(), "limit"),
    ];
    for (method, path, body, field) in &field_cases {
        let r = if body.is_empty() {
            gw.admin(method, path, None)
        } else {
            gw.admin_raw(method, path, body)
        };
        let shown = &body[..body.len().min(120)];
        assert_eq!(
            r.status,
            400,
            "{method} {path} {shown}: {}",
            &r.body[..r.body.len().min(300)]
        );
        assert_eq!(
            r.json()["error"]["field"],
            *field,
            "{method} {path} {shown}: {}",
            r.body
        );
        assert_eq!(r.code(), "invalid_field");
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
    for (path, body) in [
        ("/admin/users", deep.as_str()),
        ("/admin/users", "null"),
        ("/admin/users", "\"a string\""),
        ("/admin/api-keys", "{\"userId\": 1,"),
        ("/admin/routes", "\u{feff}{}"),
    ] {
        let r = gw.admin_raw("POST", path, body);
        assert_eq!(
            r.status,
            400,
            "{path} {}: {}",
            &body[..body.len().min(40)],
            r.body
        );
        assert!(r.json()["error"]["code"].is_string());
    }
    let r = gw.request(
        "POST",
        "/admin/users",
        &[("x-admin-secret", ADMIN_SECRET)],
        Some(&[0xff, 0xfe, b'{', b'}']),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Nothing of the above created anything.
    let users: i64 = gw
        .db()
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    let keys: i64 = gw
        .db()
        .query_one("SELECT count(*) FROM api_keys", &[])
        .unwrap()
        .get(0);
    let routes: i64 = gw
        .db()
        .query_one("SELECT count(*) FROM routes", &[])
        .unwrap()
        .get(0);
    assert_eq!((users, keys, routes), (1, 1, 1));
}

#[test]
fn unknown_admin_paths_and_methods_are_json_errors() {
    let gw = Gateway::start();
    for (method, path) in [
        ("GET", "/admin/nope"),
        ("GET", "/admin"),
        ("PUT", "/admin/users"),
        ("POST", "/admin/stats"),
        ("GET", "/analytics/nope"),
    ] {
        let r = gw.admin(method, path, None);
        assert!(
            [404, 405].contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        assert!(
            r.json()["error"]["code"].is_string(),
            "{method} {path}: {}",
            r.body
        );
    }
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

#[test]
fn stats_report_every_counter_as_a_number() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, _) = gw.create_key(user, json!({}));
    gw.create_route(user, "/api", &up.addr);
    for _ in 0..3 {
        gw.with_key("GET", "/api", &key);
    }
    gw.wait_for_log_rows(3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let stats: Value = loop {
        let s = gw.admin_get("/admin/stats").json();
        if s["logRowsWritten"] == 3 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    };
    for field in [
        "logQueueDepth",
        "logRowsWritten",
        "logRowsDropped",
        "authCacheHits",
        "authCacheMisses",
        "bcryptVerifications",
    ] {
        assert!(stats[field].is_u64(), "{field} in {stats}");
    }
    assert_eq!(stats["logRowsWritten"], 3, "{stats}");
    assert_eq!(stats["logRowsDropped"], 0, "{stats}");
    assert_eq!(stats["authCacheMisses"], 1, "{stats}");
    assert_eq!(stats["authCacheHits"], 2, "{stats}");
}
