//! API keys: which header carries the credential and that it is never forwarded; missing,
//! malformed, unknown and wrong keys; expiry by the clock and through the admin API; scopes;
//! revocation; the key cache (bcrypt once, changes applied on the next request); and where
//! a key or a secret must never appear.

use crate::util::{Gateway, Upstream, ADMIN_SECRET};
use serde_json::json;
use std::time::{Duration, Instant};

fn setup(env: &[(&str, &str)]) -> (Gateway, Upstream, i64) {
    crate::util::gateway_with_api_route(env)
}

/// The key is accepted in `x-api-key` or as a bearer token, with the scheme in any case
/// (RFC 9110 §11.1); the header that carried it is not forwarded, the others are.
#[test]
fn the_key_works_in_x_api_key_or_as_a_bearer_token_of_any_case_and_is_not_forwarded() {
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
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let value = format!("{scheme} {key}");
        let r = gw.request("GET", "/api/y", &[("authorization", &value)], None);
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
        assert_eq!(up.last().header("authorization"), None, "{scheme}");
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
fn missing_malformed_unknown_and_wrong_keys_get_401_json_and_reach_nothing() {
    let (gw, up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({}));
    let r = gw.get("/api", &[]);
    assert_eq!((r.status, r.code().as_str()), (401, "missing_api_key"));
    let (public, secret) = key.rsplit_once('_').unwrap();
    // The right public id with a wrong secret, before the key was ever verified.
    let mut wrong = key.clone();
    wrong.pop();
    wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
    let cases = [
        "nonsense".to_string(),
        // Well-formed, but no such key.
        "gw_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".to_string(),
        wrong,
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
fn a_cached_key_expires_by_the_clock_without_any_admin_call() {
    let (gw, _up, user) = setup(&[]);
    let stamp = (chrono::Utc::now() + chrono::Duration::milliseconds(1500))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // The expiry as stored: the stamp drops sub-millisecond digits, so it may be up to 1 ms
    // earlier than the time it was made from (comparing against that time once failed).
    let expires = chrono::DateTime::parse_from_rfc3339(&stamp).unwrap();
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
fn expiring_a_cached_key_through_the_admin_api_refuses_it_at_once() {
    let (gw, _up, user) = setup(&[]);
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (key, id) = gw.create_key(user, json!({"expiresAt": soon}));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    let r = gw.admin_patch(
        &format!("/admin/api-keys/{id}"),
        json!({"expiresAt": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (401, "expired_api_key"));
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
    // The policy names the new quota over the default window of 60 s.
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=7;w=60"));
}

#[test]
fn a_revoked_key_is_refused_on_the_next_request_and_the_owners_other_keys_keep_working() {
    let (gw, _up, user) = setup(&[]);
    let (a, a_id) = gw.create_key(user, json!({}));
    let (b, _) = gw.create_key(user, json!({}));
    assert_eq!(gw.with_key("GET", "/api", &a).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &b).status, 200);
    let r = gw.admin_delete(&format!("/admin/api-keys/{a_id}"));
    assert_eq!(r.status, 200);
    assert!(r.json()["revokedAt"].is_string(), "{}", r.body);
    assert_eq!(r.json()["isActive"], false, "{}", r.body);
    let r = gw.with_key("GET", "/api", &a);
    assert_eq!((r.status, r.code().as_str()), (401, "revoked_api_key"));
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

/// Only a bcrypt hash of a key is stored, and no key, key secret or admin secret (right or
/// wrong) reaches any column of any table, the gateway's output at trace level (every
/// crate's log, the database driver's included) or the upstream.
#[test]
fn only_a_bcrypt_hash_is_stored_and_no_secret_reaches_a_table_the_log_or_the_upstream() {
    let (gw, up, user) = setup(&[("RUST_LOG", "trace")]);
    let (key, id) = gw.create_key(user, json!({}));
    let (public, secret) = key.rsplit_once('_').unwrap();
    let wrong = format!("{public}_{:0>32}", 4242);
    let wrong_secret = wrong.rsplit('_').next().unwrap();
    let wrong_admin = "wrong-admin-secret-0123456789";
    // Every way a secret arrives: the key in x-api-key and as a bearer token, on a proxied
    // request and on analytics; a wrong key; the key again once revoked; a wrong admin
    // secret (the right one is on every admin call of the harness).
    assert_eq!(gw.with_key("GET", "/api?k=1", &key).status, 200);
    let bearer = format!("Bearer {key}");
    assert_eq!(
        gw.request("POST", "/api", &[("authorization", &bearer)], Some(b"x"))
            .status,
        200
    );
    assert_eq!(gw.with_key("GET", "/analytics/overview", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/api/wrong", &wrong).status, 401);
    let r = gw.request(
        "GET",
        "/admin/users",
        &[("x-admin-secret", wrong_admin)],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.admin_delete(&format!("/admin/api-keys/{id}")).status,
        200
    );
    assert_eq!(gw.with_key("GET", "/api/revoked", &key).status, 401);
    // The proxied requests and the two refusals; analytics and admin calls are not logged.
    assert_eq!(gw.wait_for_log_rows(4), 4);
    let secrets = [
        ("raw key", key.as_str()),
        ("key secret", secret),
        ("wrong key secret", wrong_secret),
        ("admin secret", ADMIN_SECRET),
        ("wrong admin secret", wrong_admin),
    ];
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
        for (what, needle) in secrets {
            let n: i64 = db.query_one(sql.as_str(), &[&needle]).unwrap().get(0);
            assert_eq!(n, 0, "{table}.{column} holds the {what}");
        }
    }
    let out = gw.output();
    assert!(out.contains("DEBUG"), "not a trace-level run:\n{out}");
    for (what, needle) in secrets {
        assert!(
            !out.contains(needle),
            "the {what} appears in the gateway's output"
        );
    }
    for seen in up.requests() {
        let headers = format!("{:?}", seen.headers);
        assert!(
            !headers.contains(secret),
            "key forwarded upstream: {headers}"
        );
    }
}

fn bcrypt_shaped(h: &str) -> bool {
    // $2b$04$ + 53 chars of salt and hash.
    h.len() == 60 && h.as_bytes()[3] == b'$' && h[4..6].parse::<u32>().is_ok()
}
