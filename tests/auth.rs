//! API keys: which header carries the credential and that it is never forwarded; missing,
//! malformed, unknown and wrong keys; expiry by the clock and through the admin API; scopes;
//! revocation; the key cache (bcrypt once, changes applied on the next request); and where
//! the raw key must never appear.

use crate::util::{Gateway, Upstream};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn setup(env: &[(&str, &str)]) -> (Gateway, Upstream, i64) {
    crate::util::gateway_with_api_route(env)
}

#[test]
fn key_works_in_x_api_key_and_in_bearer_and_is_not_forwarded() {
    let (gw, up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let r = gw.request(
        "GET",
        "/api/x",
        &[("x-api-key", &key), ("x-other", "kept")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("x-other"), Some("kept"));
    let bearer = format!("Bearer {key}");
    let r = gw.request("GET", "/api/y", &[("Authorization", &bearer)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().header("authorization"), None);
}

#[test]
fn lowercase_bearer_scheme_is_accepted() {
    // RFC 9110 §11.1: the auth scheme is case-insensitive.
    let (gw, up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    for scheme in ["bearer", "BEARER"] {
        let value = format!("{scheme} {key}");
        let r = gw.request("GET", "/api", &[("authorization", &value)], None);
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
        assert_eq!(up.last().header("authorization"), None);
    }
}

#[test]
fn an_authorization_header_that_is_not_the_credential_is_forwarded() {
    let (gw, up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let r = gw.request(
        "GET",
        "/api",
        &[("x-api-key", &key), ("authorization", "Basic dXNlcjpwYXNz")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.header("authorization"), Some("Basic dXNlcjpwYXNz"));
    assert_eq!(seen.header("x-api-key"), None);
}

#[test]
fn missing_malformed_unknown_and_wrong_keys_get_401_json() {
    let (gw, _up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    assert_eq!(gw.get("/api", &[]).code(), "missing_api_key");
    assert_eq!(
        gw.with_key("GET", "/api", "nonsense").code(),
        "invalid_api_key"
    );
    let unknown = "gw_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let r = gw.with_key("GET", "/api", unknown);
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_api_key"));
    let mut wrong = key.clone();
    wrong.pop();
    wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
    let r = gw.with_key("GET", "/api", &wrong);
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_api_key"));
    // Also after the right key is cached.
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &wrong).code(), "invalid_api_key");
}

#[test]
fn malformed_keys_of_every_shape_get_invalid_api_key() {
    let (gw, up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let (public, secret) = key.rsplit_once('_').unwrap();
    let cases = [
        "gw_".to_string(),
        "gw__".to_string(),
        "gw_abc_def".to_string(),
        public.to_string(),
        format!("{public}_"),
        format!("_{secret}"),
        format!("xx{}", &key[2..]),
        format!("{key}x"),
        format!("{key}_x"),
        format!("{public}__{secret}"),
        key[..key.len() - 1].to_string(),
        format!("{}{key}", "a".repeat(5000)),
    ];
    for bad in &cases {
        let r = gw.with_key("GET", "/api", bad);
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
        assert_eq!(r.code(), "invalid_api_key", "{bad}");
        let bearer = format!("Bearer {bad}");
        let r = gw.request("GET", "/api", &[("authorization", &bearer)], None);
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "invalid_api_key"),
            "Bearer {bad}"
        );
    }
    // An empty credential is no credential; either code is a 401 with a JSON error.
    for headers in [[("x-api-key", "")], [("authorization", "Bearer ")]] {
        let r = gw.request("GET", "/api", &headers, None);
        assert_eq!(r.status, 401, "{headers:?}");
        assert!(["missing_api_key", "invalid_api_key"].contains(&r.code().as_str()));
    }
    assert!(
        up.requests().is_empty(),
        "no refused request reached the upstream"
    );
}

#[test]
fn a_wrong_secret_does_not_evict_or_replace_the_cached_key() {
    let (gw, _up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let (public, secret) = key.rsplit_once('_').unwrap();
    let wrong = format!("{public}_{}", secret.chars().rev().collect::<String>());
    assert_ne!(wrong, key);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    for _ in 0..3 {
        assert_eq!(gw.with_key("GET", "/api", &wrong).code(), "invalid_api_key");
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    }
}

#[test]
fn a_non_ascii_key_is_refused_and_does_not_disturb_the_gateway() {
    // tiny_http drops a request whose header is not ASCII before tollgate sees it (through
    // the nginx edge that surfaces as the edge's 502 JSON); what matters here is that
    // nothing is proxied and the gateway keeps serving.
    let (gw, up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let bad = format!("gw_{}_{}", "é".repeat(12), key.rsplit('_').next().unwrap());
    let r = gw.with_key("GET", "/api", &bad);
    assert!(
        r.status == 0
            || r.status == 400
            || r.status == 401
            || (crate::util::BEHIND_EDGE && r.status == 502),
        "{} {}",
        r.status,
        r.body
    );
    assert!(up.requests().is_empty());
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
}

#[test]
fn a_cached_key_expires_by_the_clock_without_any_admin_call() {
    let (gw, _up, user) = setup(&[]);
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let stamp = expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (key, _) = gw.create_key(user, json!({"expiresAt": stamp}));
    assert_eq!(
        gw.with_key("GET", "/api", &key).status,
        200,
        "valid before expiry"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let before = chrono::Utc::now();
        let r = gw.with_key("GET", "/api", &key);
        if r.status == 401 {
            assert_eq!(r.code(), "expired_api_key");
            assert!(
                chrono::Utc::now() >= expires,
                "refused before its expiry time"
            );
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            before < expires + chrono::Duration::milliseconds(500),
            "served after expiry"
        );
        assert!(Instant::now() < deadline, "key never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        assert_eq!(gw.with_key("GET", "/api", &key).code(), "expired_api_key");
    }
}

#[test]
fn expired_key_is_refused() {
    let (gw, _up, user) = setup(&[]);
    let soon = chrono_in(Duration::from_secs(2));
    let (key, id) = gw.create_key(user, json!({"expiresAt": soon}));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    // Expiring through the admin API takes effect at once, cached or not.
    let r = gw.admin(
        "PATCH",
        &format!("/admin/api-keys/{id}"),
        Some(json!({"expiresAt": "2020-01-01T00:00:00Z"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (401, "expired_api_key"));
    let past = gw.admin(
        "POST",
        "/admin/api-keys",
        Some(json!({"userId": user, "name": "x", "expiresAt": "2020-01-01T00:00:00Z"})),
    );
    assert_eq!(past.status, 400);
    assert_eq!(past.json()["error"]["field"], "expiresAt");
}

fn chrono_in(d: Duration) -> String {
    let t = SystemTime::now() + d;
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    // Format as RFC 3339 without pulling a date crate into the tests.
    let days = secs / 86_400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[test]
fn read_scope_allows_only_safe_methods_and_refusals_never_reach_the_upstream() {
    let (gw, up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({"scopes": ["read"]}));
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let r = gw.with_key(method, "/api/x", &key);
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "insufficient_scope"),
            "{method}"
        );
    }
    assert!(up.requests().is_empty());
    for method in ["GET", "HEAD", "OPTIONS"] {
        assert_eq!(gw.with_key(method, "/api/x", &key).status, 200, "{method}");
    }
    assert_eq!(up.requests().len(), 3);
}

#[test]
fn read_only_key_may_get_but_not_post() {
    let (gw, _up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({"scopes": ["read"]}));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("HEAD", "/api", &key).status, 200);
    let r = gw.with_key("POST", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (403, "insufficient_scope"));
}

#[test]
fn scope_and_limit_changes_apply_to_a_cached_key_on_the_next_request() {
    let (gw, _up, user) = setup(&[]);
    let (key, id) = gw.create_key(user, json!({}));
    assert_eq!(gw.with_key("POST", "/api", &key).status, 200);
    let path = format!("/admin/api-keys/{id}");
    let r = gw.admin_patch(&path, json!({"scopes": ["read"]}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scopes"], json!(["read"]));
    assert_eq!(
        gw.with_key("POST", "/api", &key).code(),
        "insufficient_scope"
    );
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(
        gw.admin_patch(&path, json!({"scopes": ["read", "write"]}))
            .status,
        200
    );
    assert_eq!(gw.with_key("POST", "/api", &key).status, 200);
    assert_eq!(gw.admin_patch(&path, json!({"rateLimit": 7})).status, 200);
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!(r.header("x-ratelimit-limit"), Some("7"));
}

#[test]
fn revoked_key_is_refused_on_the_next_request() {
    let (gw, _up, user) = setup(&[]);
    let (key, id) = gw.create_key(user, json!({}));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    let r = gw.admin("DELETE", &format!("/admin/api-keys/{id}"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["isActive"], false);
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (401, "revoked_api_key"));
}

#[test]
fn revoking_one_key_leaves_the_owners_other_keys_working() {
    let (gw, _up, user) = setup(&[]);
    let (a, a_id) = gw.create_key(user, json!({}));
    let (b, _) = gw.create_key(user, json!({}));
    assert_eq!(gw.with_key("GET", "/api", &a).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &b).status, 200);
    let r = gw.admin_delete(&format!("/admin/api-keys/{a_id}"));
    assert_eq!(r.status, 200);
    assert!(r.json()["revokedAt"].is_string(), "{}", r.body);
    assert_eq!(gw.with_key("GET", "/api", &a).code(), "revoked_api_key");
    assert_eq!(gw.with_key("GET", "/api", &b).status, 200);
    let revoked_at: Option<chrono::DateTime<chrono::Utc>> = gw
        .db()
        .query_one("SELECT revoked_at FROM api_keys WHERE id = $1", &[&a_id])
        .unwrap()
        .get(0);
    assert!(revoked_at.is_some());
}

#[test]
fn a_key_is_verified_with_bcrypt_once_then_served_from_the_cache() {
    let (gw, _up, user) = setup(&[]);
    let (key, id) = gw.create_key(user, json!({}));
    for _ in 0..20 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    }
    let stats = gw.admin("GET", "/admin/stats", None).json();
    assert_eq!(stats["bcryptVerifications"], 1, "{stats}");
    assert_eq!(stats["authCacheHits"], 19, "{stats}");
    // last_used_at is stamped by the logger, off the request path.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let k = gw
            .admin("GET", &format!("/admin/api-keys/{id}"), None)
            .json();
        if !k["lastUsedAt"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "lastUsedAt never set");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn only_a_bcrypt_hash_of_the_secret_is_stored_and_even_trace_logs_never_show_the_key() {
    let (gw, _up, user) = setup(&[("RUST_LOG", "trace")]);
    let (key, id) = gw.create_key(user, json!({}));
    let bearer = format!("Bearer {key}");
    assert_eq!(gw.with_key("GET", "/api?k=1", &key).status, 200);
    assert_eq!(
        gw.request("POST", "/api", &[("authorization", &bearer)], Some(b"x"))
            .status,
        200
    );
    assert_eq!(gw.wait_for_log_rows(2), 2);
    let (public, secret) = key.rsplit_once('_').unwrap();
    let mut db = gw.db();
    let row = db
        .query_one(
            "SELECT public_id, key_hash FROM api_keys WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let (public_id, hash): (String, String) = (row.get(0), row.get(1));
    assert_eq!(format!("gw_{public_id}"), public);
    assert!(hash.starts_with("$2"), "not a bcrypt hash: {hash}");
    assert!(bcrypt_shaped(&hash), "{hash}");
    // Every column of every table, whatever its type, as text.
    let columns = db
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
              WHERE table_schema = 'public'",
            &[],
        )
        .unwrap();
    assert!(columns.len() > 20);
    for c in columns {
        let (table, column): (String, String) = (c.get(0), c.get(1));
        let sql =
            format!("SELECT count(*) FROM \"{table}\" WHERE strpos(\"{column}\"::text, $1) > 0");
        for needle in [key.as_str(), secret] {
            let n: i64 = db.query_one(sql.as_str(), &[&needle]).unwrap().get(0);
            assert_eq!(n, 0, "{table}.{column} holds the raw key or its secret");
        }
    }
    let out = gw.output();
    assert!(!out.is_empty(), "no stderr captured");
    assert!(
        !out.contains(secret),
        "the secret appears in the trace output"
    );
}

fn bcrypt_shaped(h: &str) -> bool {
    // $2b$04$ + 53 chars of salt and hash.
    h.len() == 60 && h.as_bytes()[3] == b'$' && h[4..6].parse::<u32>().is_ok()
}

#[test]
fn raw_key_and_secret_appear_in_no_table_and_no_log_line() {
    let (gw, _up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    gw.wait_for_log_rows(1);
    let secret = key.rsplit('_').next().unwrap().to_string();
    let mut db = gw.db.client();
    let tables = db
        .query(
            "SELECT table_name, column_name FROM information_schema.columns
              WHERE table_schema = 'public' AND data_type IN ('text', 'ARRAY')",
            &[],
        )
        .unwrap();
    for t in tables {
        let (table, column): (String, String) = (t.get(0), t.get(1));
        let sql =
            format!("SELECT count(*) FROM {table} WHERE {column}::text LIKE '%' || $1 || '%'");
        let n: i64 = db.query_one(sql.as_str(), &[&secret]).unwrap().get(0);
        assert_eq!(n, 0, "secret found in {table}.{column}");
    }
    assert!(!gw.output().contains(&secret), "secret in the log output");
    assert!(
        !gw.output().contains(crate::util::ADMIN_SECRET),
        "admin secret in the log output"
    );
}
