//! Keys and rate limits, end to end: the real binary, a real Postgres, a real upstream.
mod util;

use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use util::{Gateway, Upstream};

fn setup(env: &[(&str, &str)]) -> (Gateway, Upstream, i64) {
    util::gateway_with_api_route(env)
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
        !gw.output().contains(util::ADMIN_SECRET),
        "admin secret in the log output"
    );
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
fn read_only_key_may_get_but_not_post() {
    let (gw, _up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({"scopes": ["read"]}));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("HEAD", "/api", &key).status, 200);
    let r = gw.with_key("POST", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (403, "insufficient_scope"));
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
fn the_sixth_request_at_limit_five_gets_429_with_retry_after() {
    let (gw, _up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 5}));
    for i in 0..5 {
        let r = gw.with_key("GET", "/api", &key);
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(&*(4 - i).to_string())
        );
        assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=5;w=60"));
        let rl = r.header("ratelimit").unwrap();
        assert!(
            rl.starts_with(&format!("\"default\";r={};t=", 4 - i)),
            "{rl}"
        );
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(reset > now && reset <= now + 61, "{reset} vs {now}");
    }
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // Until the estimate admits one more: up to the rest of this bucket plus part of the
    // next, where this bucket's count still weighs in (so at most two windows).
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}

/// Waits until `offset` seconds into a window bucket of `window` seconds.
fn align(window: f64, offset: f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let into = now % window;
    let wait = if into <= offset {
        offset - into
    } else {
        window - into + offset
    };
    std::thread::sleep(Duration::from_secs_f64(wait));
}

#[test]
fn the_window_slides_requests_free_up_gradually_not_at_the_boundary() {
    // 4 s window, limit 4: fill the bucket early, then probe the next bucket. The estimate
    // is prev·(1 − elapsed/W) + cur, so one request frees per second, not all at once.
    let (gw, _up, user) = setup(&[("TOLLGATE_RATE_WINDOW_SECS", "4")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 4}));
    align(4.0, 0.3);
    for _ in 0..4 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    }
    assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
    // 0.3 s into the next bucket: 4·(1 − 0.3/4) = 3.7 ⇒ nothing fits yet (a fixed window
    // would allow 4 here).
    align(4.0, 0.3);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
    // 1.5 s in: 4·(1 − 1.5/4) = 2.5 ⇒ exactly one more fits (2.5 + 1 ≤ 4, 2.5 + 2 > 4).
    align(4.0, 1.5);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
    // 3.3 s in: 4·(1 − 3.3/4) = 0.7, one used ⇒ two more fit (0.7 + 1 + 2 ≤ 4, not 3).
    align(4.0, 3.3);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
}

#[test]
fn refused_requests_do_not_consume_quota() {
    let (gw, _up, user) = setup(&[("TOLLGATE_RATE_WINDOW_SECS", "2")]);
    let (key, id) = gw.create_key(user, json!({"rateLimit": 3}));
    align(2.0, 0.1);
    for _ in 0..3 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    }
    // Hammer while limited: none of these may count.
    for _ in 0..20 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
    }
    let mut db = gw.db.client();
    let total: i64 = db
        .query_one(
            "SELECT coalesce(sum(count), 0)::int8 FROM rate_limit_counters WHERE api_key_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(total, 3);
    // Two windows later the previous bucket is empty again: the full quota is back.
    align(2.0, 0.1);
    align(2.0, 0.1);
    for _ in 0..3 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    }
}

#[test]
fn concurrent_requests_on_one_key_admit_exactly_the_limit() {
    let (gw, _up, user) = setup(&[]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 10}));
    let gw = std::sync::Arc::new(gw);
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (gw, key) = (gw.clone(), key.clone());
            std::thread::spawn(move || gw.with_key("GET", "/api", &key).status)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        10,
        "{statuses:?}"
    );
}

#[test]
fn old_counter_windows_are_purged_in_the_background() {
    // 1 s window: a bucket older than the previous one can no longer affect any estimate,
    // and the purge thread (one pass per window) deletes it.
    let (gw, _up, user) = setup(&[("TOLLGATE_RATE_WINDOW_SECS", "1")]);
    let (key, id) = gw.create_key(user, json!({"rateLimit": 100}));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    let mut db = gw.db.client();
    let rows = |db: &mut postgres::Client| -> i64 {
        db.query_one(
            "SELECT count(*) FROM rate_limit_counters WHERE api_key_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(rows(&mut db), 1);
    let deadline = Instant::now() + Duration::from_secs(8);
    while rows(&mut db) > 0 {
        assert!(Instant::now() < deadline, "counter row never purged");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_log_queue_drops_rows_without_blocking_and_counts_every_drop() {
    // A queue of one row: under a burst most rows cannot be queued. Requests still get
    // their answers, and every row is either written or counted as dropped.
    let (gw, _up, user) = setup(&[("TOLLGATE_LOG_QUEUE", "1")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 100000}));
    let gw = std::sync::Arc::new(gw);
    // 20 clients (below the in-flight cap of 24 for 32 workers), 3 requests each.
    let n = 60;
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (gw, key) = (gw.clone(), key.clone());
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| gw.with_key("GET", "/api", &key).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![200; 3]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = gw.admin("GET", "/admin/stats", None).json();
        let written = s["logRowsWritten"].as_i64().unwrap();
        let dropped = s["logRowsDropped"].as_i64().unwrap();
        if written + dropped == n {
            let rows: i64 = gw
                .db
                .client()
                .query_one("SELECT count(*) FROM request_logs", &[])
                .unwrap()
                .get(0);
            assert_eq!(rows, written);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "written {written} + dropped {dropped} != {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
