//! Several named limits, quotas and owner-wide limits (docs/limits.md), enforced through
//! the real binary: every limit must admit, a refusal consumes nothing, the 429 names the
//! limit that refused, quotas reset at period boundaries (the database clock shifted in
//! the counting round, never slept through; the boundaries themselves are unit-tested in
//! `gateway/counting.rs`), a changed quota keeps its count, a user's limits hold
//! across all of its keys under concurrency. Limits are set through the admin API.

use crate::util::{gateway_with_api_route, Gateway, Resp};
use serde_json::{json, Value};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn status_counts(rs: &[Resp]) -> (usize, usize) {
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let refused = rs.iter().filter(|r| r.status == 429).count();
    assert_eq!(ok + refused, rs.len(), "only 200s and 429s expected");
    (ok, refused)
}

/// `n` requests with `key`, one after another.
fn send(gw: &Gateway, key: &str, n: usize) -> Vec<Resp> {
    (0..n).map(|_| gw.with_key("GET", "/api", key)).collect()
}

/// `threads` × `each` requests at once, spread over `keys` and `gateways`.
pub fn burst(gateways: &[&Gateway], keys: &[String], threads: usize, each: usize) -> Vec<Resp> {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let gw = gateways[i % gateways.len()];
                let key = &keys[i % keys.len()];
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    send(gw, key, each)
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn patch_user(gw: &Gateway, user: i64, body: Value) {
    let r = gw.admin_patch(&format!("/admin/users/{user}"), body);
    assert_eq!(r.status, 200, "{}", r.body);
}

fn patch_key(gw: &Gateway, id: i64, body: Value) {
    let r = gw.admin_patch(&format!("/admin/api-keys/{id}"), body);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A request is admitted only while every limit admits it; the 429 names the one that
/// refused; the refused requests were added to none of the limits.
#[test]
fn every_named_limit_must_admit_and_the_refusal_names_the_limit() {
    let (gw, up, user) = gateway_with_api_route(&[]);
    let limits = json!([
        {"name": "hour", "limit": 5, "windowSecs": 3600},
        {"name": "tight", "limit": 3, "windowSecs": 3600},
        {"name": "day", "limit": 100, "windowSecs": 86400},
    ]);
    let (key, id) = gw.create_key(user, json!({"limits": limits}));
    let rs = send(&gw, &key, 6);
    assert_eq!(status_counts(&rs), (3, 3));
    let first = &rs[0];
    assert_eq!(
        first.header("RateLimit-Policy"),
        Some("\"hour\";q=5;w=3600, \"tight\";q=3;w=3600, \"day\";q=100;w=86400")
    );
    // Closest to refusing after one request: "tight" with 2 left.
    let shown = first.header("RateLimit").unwrap();
    assert!(shown.starts_with("\"tight\";r=2;t="), "{shown}");
    assert_eq!(first.header("X-RateLimit-Limit"), Some("3"));
    let refused = &rs[3];
    assert_eq!(refused.code(), "rate_limited");
    assert_eq!(refused.json()["error"]["limit"], "tight");
    assert!(refused.header("Retry-After").is_some());
    assert_eq!(up.requests().len(), 3);
    // Nothing refused was counted: each window holds exactly the 3 admitted.
    let counts: Vec<i64> = gw
        .db()
        .query_one(
            "SELECT counts FROM limit_counters WHERE kind = 'k' AND owner_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(counts, [3, 3, 3]);
    // Raising the tight limit lets the others decide: "hour" has 2 left.
    patch_key(
        &gw,
        id,
        json!({"limits": [
            {"name": "hour", "limit": 5, "windowSecs": 3600},
            {"name": "tight", "limit": 30, "windowSecs": 3600},
        ]}),
    );
    let rs = send(&gw, &key, 3);
    assert_eq!(status_counts(&rs), (2, 1));
    assert_eq!(rs[2].json()["error"]["limit"], "hour");
}

/// `rateLimit` stays what it was: the limit named `default` over the gateway window.
#[test]
fn rate_limit_is_the_limit_named_default() {
    let (gw, _up, user) = gateway_with_api_route(&[("TOLLGATE_RATE_WINDOW_SECS", "120")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 2}));
    let rs = send(&gw, &key, 3);
    assert_eq!(status_counts(&rs), (2, 1));
    assert_eq!(
        rs[0].header("RateLimit-Policy"),
        Some("\"default\";q=2;w=120")
    );
    assert_eq!(rs[2].json()["error"]["limit"], "default");
}

/// A quota counts admitted requests per period: used up → 429 `quota_exceeded` with
/// `Retry-After` reaching the next UTC midnight. Raising its limit mid-period keeps the
/// count (4 used of a new 6 leaves 2), and the admin reset zeroes it.
#[test]
fn a_quota_refuses_until_the_period_ends_keeps_its_count_when_changed_and_can_be_reset() {
    let (gw, up, user) = gateway_with_api_route(&[]);
    let (key, id) = gw.create_key(
        user,
        json!({"rateLimit": 1000, "quota": {"limit": 4, "period": "day"}}),
    );
    let rs = send(&gw, &key, 6);
    assert_eq!(status_counts(&rs), (4, 2));
    assert_eq!(
        rs[3]
            .header("RateLimit")
            .map(|h| h.starts_with("\"quota\";r=0;")),
        Some(true)
    );
    let refused = &rs[4];
    assert_eq!(refused.code(), "quota_exceeded");
    assert_eq!(refused.json()["error"]["limit"], "quota");
    let retry: f64 = refused.header("Retry-After").unwrap().parse().unwrap();
    let to_midnight = 86_400.0 - now_secs().rem_euclid(86_400.0);
    assert!(
        (retry - to_midnight).abs() <= 2.0,
        "Retry-After {retry} s, midnight in {to_midnight} s"
    );
    assert!(refused
        .header("RateLimit-Policy")
        .unwrap()
        .contains("\"quota\";q=4;w=86400"));
    // The limit changes, the count stays.
    patch_key(&gw, id, json!({"quota": {"limit": 6, "period": "day"}}));
    let rs = send(&gw, &key, 3);
    assert_eq!(status_counts(&rs), (2, 1));
    let r = gw.admin_post(&format!("/admin/api-keys/{id}/quota/reset"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let rs = send(&gw, &key, 7);
    assert_eq!(status_counts(&rs), (6, 1));
    assert_eq!(up.requests().len(), 12);
}

/// A user's own limits and quota are counted across all of its keys at once: however many
/// keys it mints and however its requests interleave, the user gets its allowance, and
/// every key keeps its own limit too.
#[test]
fn owner_wide_limits_hold_across_all_of_a_users_keys_under_concurrency() {
    let (gw, up, user) = gateway_with_api_route(&[]);
    patch_user(
        &gw,
        user,
        json!({"limits": [{"name": "hour", "limit": 40, "windowSecs": 3600}],
               "quota": {"limit": 1000, "period": "month"}}),
    );
    let keys: Vec<String> = (0..4)
        .map(|_| gw.create_key(user, json!({"rateLimit": 15})).0)
        .collect();
    let rs = burst(&[&gw], &keys, 16, 8);
    let (ok, _) = status_counts(&rs);
    assert_eq!(ok, 40, "the user's hour limit");
    assert_eq!(up.requests().len(), 40);
    let refused = rs.iter().find(|r| r.status == 429).unwrap();
    let limit = refused.json()["error"]["limit"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(limit == "user.hour" || limit == "default", "{limit}");
    // The user's counters hold the 40, the keys' counters sum to 40, none over 15.
    let mut db = gw.db();
    let user_row = db
        .query_one(
            "SELECT counts, quota_used FROM limit_counters WHERE kind = 'u' AND owner_id = $1",
            &[&user],
        )
        .unwrap();
    assert_eq!(user_row.get::<_, Vec<i64>>(0), [40]);
    assert_eq!(user_row.get::<_, i64>(1), 40);
    let per_key = gw.first_counts_of_keys(user);
    assert_eq!(per_key.iter().sum::<i64>(), 40);
    assert!(per_key.iter().all(|&n| n <= 15), "{per_key:?}");
    // A fresh key of the same user gets nothing: the allowance is the user's.
    let (fresh, _) = gw.create_key(user, json!({"rateLimit": 15}));
    let r = gw.with_key("GET", "/api", &fresh);
    assert_eq!(
        (r.status, r.json()["error"]["limit"].clone()),
        (429, json!("user.hour"))
    );
}

/// A created-anchored monthly quota rolls over while requests are in flight: the gateway's
/// database clock is shifted (TOLLGATE_TEST_CLOCK_SHIFT_SECS, debug builds only) to a few
/// seconds before the anchored boundary of a key created on Jan 31 (in a leap year, Feb 29
/// 10:00 UTC), and 8 clients keep sending across it. Each period admits exactly its quota:
/// 5 before the boundary (the rest refused with a Retry-After that reaches it) and 5 after.
#[test]
fn a_created_anchored_quota_rolls_over_at_the_clamped_boundary_while_requests_are_in_flight() {
    const LEAD: f64 = 4.0;
    let boundary = 1_835_431_200.0; // 2028-02-29T10:00:00Z
    let t0 = Instant::now();
    let shift = boundary - LEAD - now_secs();
    let env = [("TOLLGATE_TEST_CLOCK_SHIFT_SECS", format!("{shift}"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (gw, up, user) = gateway_with_api_route(&env);
    let (key, id) = gw.create_key(
        user,
        json!({"rateLimit": 100000,
               "quota": {"limit": 5, "period": "month", "anchor": "created"}}),
    );
    gw.db()
        .execute(
            "UPDATE api_keys SET created_at = '2028-01-31T10:00:00Z' WHERE id = $1",
            &[&id],
        )
        .unwrap();
    // (sent, answered) in seconds since t0; the boundary is at LEAD.
    let rs: Vec<(f64, f64, Resp)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (gw, key) = (&gw, &key);
                s.spawn(move || {
                    let mut out = Vec::new();
                    while t0.elapsed().as_secs_f64() < LEAD + 2.5 {
                        let sent = t0.elapsed().as_secs_f64();
                        let r = gw.with_key("GET", "/api", key);
                        out.push((sent, t0.elapsed().as_secs_f64(), r));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let ok = |f: &dyn Fn(f64, f64) -> bool| {
        rs.iter()
            .filter(|(s, a, r)| r.status == 200 && f(*s, *a))
            .count()
    };
    assert_eq!(ok(&|_, _| true), 10, "5 in each period");
    assert_eq!(up.requests().len(), 10);
    // 0.2 s for the clocks of test and database to disagree: the old period's 5 are
    // answered before the boundary, the new period's 5 are sent after it.
    assert_eq!(ok(&|_, a| a < LEAD - 0.2), 5, "the old period");
    assert_eq!(ok(&|s, _| s > LEAD - 0.2), 5, "the new period");
    let (_, _, early) = rs
        .iter()
        .find(|(_, a, r)| *a < LEAD - 0.2 && r.status == 429)
        .expect("the quota ran out before the boundary");
    assert_eq!(early.code(), "quota_exceeded");
    let retry: f64 = early.header("Retry-After").unwrap().parse().unwrap();
    assert!(
        (1.0..=LEAD + 1.0).contains(&retry),
        "Retry-After {retry} s to a boundary at most {LEAD} s away"
    );
}

/// `GET /me`: a key holder reads its plan and where every limit and quota stands (its
/// user's owner-wide ones too), without the read counting; the admin reads the same for any
/// key or user.
#[test]
fn me_shows_the_plan_and_every_limit_and_quota_without_counting() {
    let (gw, _up, user) = gateway_with_api_route(&[]);
    let plan = gw.admin_post(
        "/admin/plans",
        json!({"name": "pro", "limits": [{"name": "minute", "limit": 600, "windowSecs": 60}],
               "quota": {"limit": 50000, "period": "month"}}),
    );
    assert_eq!(plan.status, 201, "{}", plan.body);
    let plan_id = plan.json()["id"].as_i64().unwrap();
    patch_user(
        &gw,
        user,
        json!({"limits": [{"name": "day", "limit": 1000, "windowSecs": 86400}]}),
    );
    let (key, key_id) = gw.create_key(user, json!({"planId": plan_id}));
    assert_eq!(status_counts(&send(&gw, &key, 3)), (3, 0));
    let me = |gw: &Gateway| {
        let r = gw.get("/me", &[("x-api-key", &key)]);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let v = me(&gw);
    assert_eq!(v["keyId"], key_id);
    assert_eq!(v["userId"], user);
    assert_eq!(v["plan"], json!({"id": plan_id, "name": "pro"}));
    let limits = v["limits"].as_array().unwrap();
    let names: Vec<&str> = limits.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["minute", "user.day"]);
    assert_eq!(
        (limits[0]["used"].clone(), limits[0]["remaining"].clone()),
        (json!(3), json!(597))
    );
    assert_eq!(limits[1]["remaining"], 997);
    let quota = &v["quotas"][0];
    assert_eq!(
        (quota["name"].clone(), quota["used"].clone()),
        (json!("quota"), json!(3))
    );
    assert_eq!(quota["remaining"], 49_997);
    assert!(
        quota["resetsAt"]
            .as_str()
            .unwrap()
            .ends_with("-01T00:00:00.000Z"),
        "{quota}"
    );
    // Reading counted nothing.
    assert_eq!(me(&gw)["quotas"][0]["used"], 3);
    // The admin's views of the key and of the user.
    let k = gw.admin_get(&format!("/admin/api-keys/{key_id}/limits"));
    assert_eq!(k.status, 200, "{}", k.body);
    assert_eq!(k.json()["quotas"], v["quotas"]);
    let u = gw.admin_get(&format!("/admin/users/{user}/limits")).json();
    assert_eq!(u["limits"][0]["name"], "user.day");
    assert_eq!(u["limits"][0]["used"], 3);
    assert_eq!(u["quotas"], json!([]));
    // Without a key, or with the wrong method: JSON errors.
    assert_eq!(gw.get("/me", &[]).code(), "missing_api_key");
    let post = gw.request("POST", "/me", &[("x-api-key", &key)], None);
    assert_eq!(post.status, 405);
}

/// A key holder's analytics calls count against its sliding limits (they protect the
/// gateway) but not its quota, which counts the API traffic that is logged and billed.
#[test]
fn analytics_calls_count_against_limits_but_not_the_quota() {
    let (gw, _up, user) = gateway_with_api_route(&[]);
    let (key, _) = gw.create_key(
        user,
        json!({"limits": [{"name": "hour", "limit": 8, "windowSecs": 3600}],
               "quota": {"limit": 3, "period": "day"}}),
    );
    for _ in 0..4 {
        let r = gw.get("/analytics/overview", &[("x-api-key", &key)]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.header("RateLimit-Policy").unwrap().contains("quota"));
    }
    let rs = send(&gw, &key, 5);
    assert_eq!(status_counts(&rs), (3, 2));
    assert_eq!(rs[3].code(), "quota_exceeded");
    // The hour limit saw 4 + 3: one more analytics call fits, the next does not.
    let ok = gw.get("/analytics/overview", &[("x-api-key", &key)]);
    assert_eq!(ok.status, 200);
    let refused = gw.get("/analytics/overview", &[("x-api-key", &key)]);
    assert_eq!(
        (refused.status, refused.code()),
        (429, "rate_limited".to_string())
    );
}
