//! The sliding-window limit beyond the basics: headers on the 429 with a short window,
//! an honest Retry-After, quotas per key, and refusals that come before the limit stage.
mod util;

use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use util::{Gateway, Resp, Upstream};

fn setup(env: &[(&str, &str)]) -> (Gateway, Upstream, i64) {
    util::gateway_with_api_route(env)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until `offset` seconds into a bucket of `window` seconds.
fn align(window: f64, offset: f64) {
    let into = now_secs() % window;
    let wait = if into <= offset {
        offset - into
    } else {
        window - into + offset
    };
    std::thread::sleep(Duration::from_secs_f64(wait));
}

fn num(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
        .parse()
        .unwrap_or_else(|_| panic!("{name} not a number: {:?}", r.header(name)))
}

#[test]
fn the_429_carries_every_limit_header_and_reset_is_the_end_of_the_bucket() {
    let (gw, up, user) = setup(&[("TOLLGATE_RATE_WINDOW_SECS", "4")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 2}));
    align(4.0, 0.2);
    let bucket_end = ((now_secs() / 4.0).floor() as u64 + 1) * 4;
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=2;w=4"));
    assert_eq!(num(&r, "x-ratelimit-remaining"), 1);
    assert_eq!(num(&r, "x-ratelimit-reset"), bucket_end);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    assert!(r.header("content-type").unwrap_or("").contains("json"));
    assert_eq!(num(&r, "x-ratelimit-limit"), 2);
    assert_eq!(num(&r, "x-ratelimit-remaining"), 0);
    assert_eq!(num(&r, "x-ratelimit-reset"), bucket_end);
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=2;w=4"));
    let rl = r.header("ratelimit").expect("RateLimit header on the 429");
    assert!(rl.starts_with("\"default\";r=0;t="), "{rl}");
    let t: u64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
    assert!(t <= 8, "{rl}");
    // The bucket is full until it ends (~3.8 s), then the previous count 2 weighs
    // 2·(1 − e/4) and one more fits once that is ≤ 1, at e = 2 s: ~5.8 s from now.
    let retry = num(&r, "retry-after");
    assert!((5..=6).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        up.requests().len(),
        2,
        "the refused request never reached the upstream"
    );
}

#[test]
fn waiting_retry_after_seconds_is_enough_to_be_admitted() {
    let (gw, _up, user) = setup(&[("TOLLGATE_RATE_WINDOW_SECS", "2")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 3}));
    for _ in 0..3 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    }
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!(r.status, 429);
    let retry = num(&r, "retry-after");
    // At most the rest of this bucket plus the next one.
    assert!((1..=6).contains(&retry), "{retry}");
    let refused_at = Instant::now();
    // Retry-After is the admission time rounded up: a second earlier it is still too soon.
    std::thread::sleep(
        Duration::from_millis(retry * 1000 - 1000).saturating_sub(Duration::from_millis(150)),
    );
    assert_eq!(
        gw.with_key("GET", "/api", &key).status,
        429,
        "admitted well before Retry-After"
    );
    let wait = Duration::from_millis(retry * 1000 + 100).saturating_sub(refused_at.elapsed());
    std::thread::sleep(wait);
    let r = gw.with_key("GET", "/api", &key);
    assert_eq!(
        r.status, 200,
        "still refused {retry} s after a Retry-After of {retry}"
    );
}

#[test]
fn each_key_has_its_own_quota_even_for_the_same_user() {
    let (gw, _up, user) = setup(&[]);
    let (a, _) = gw.create_key(user, json!({"rateLimit": 2}));
    let (b, _) = gw.create_key(user, json!({"rateLimit": 2}));
    for _ in 0..2 {
        assert_eq!(gw.with_key("GET", "/api", &a).status, 200);
    }
    assert_eq!(gw.with_key("GET", "/api", &a).status, 429);
    for _ in 0..2 {
        assert_eq!(gw.with_key("GET", "/api", &b).status, 200);
    }
    assert_eq!(gw.with_key("GET", "/api", &b).status, 429);
}

#[test]
fn requests_refused_before_the_limit_stage_consume_no_quota() {
    let (gw, up, user) = setup(&[]);
    let (key, id) = gw.create_key(user, json!({"rateLimit": 2, "scopes": ["read"]}));
    for _ in 0..5 {
        assert_eq!(gw.with_key("GET", "/no-such-route", &key).status, 404);
        assert_eq!(gw.with_key("POST", "/api", &key).status, 403);
    }
    let n: i64 = gw
        .db()
        .query_one(
            "SELECT coalesce(sum(count), 0)::int8 FROM rate_limit_counters WHERE api_key_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "refused requests were counted");
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn a_full_window_after_a_burst_the_whole_quota_is_back_and_not_before() {
    // Window 2 s, limit 4: a burst at the start of a bucket is still weighing on the next
    // bucket (so a fixed window's reset is not what happens) and is gone one bucket later.
    let (gw, _up, user) = setup(&[("TOLLGATE_RATE_WINDOW_SECS", "2")]);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 4}));
    align(2.0, 0.1);
    let start = Instant::now();
    for _ in 0..4 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
    }
    // 0.1 s into the next bucket: 4·0.95 = 3.8 ⇒ nothing fits.
    align(2.0, 0.1);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
    // Two buckets after the burst the previous bucket is empty: 4 fit, the 5th does not.
    align(2.0, 0.1);
    for i in 0..4 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200, "request {i}");
    }
    assert_eq!(gw.with_key("GET", "/api", &key).status, 429);
}

#[test]
fn concurrent_bursts_on_two_keys_admit_exactly_each_limit() {
    let (gw, _up, user) = setup(&[]);
    let (a, _) = gw.create_key(user, json!({"rateLimit": 6}));
    let (b, _) = gw.create_key(user, json!({"rateLimit": 4}));
    let gw = std::sync::Arc::new(gw);
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let gw = gw.clone();
            let key = if i % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || (i % 2, gw.with_key("GET", "/api", &key).status))
        })
        .collect();
    let results: Vec<(i32, u16)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = |k| results.iter().filter(|(w, s)| *w == k && *s == 200).count();
    let limited = |k| results.iter().filter(|(w, s)| *w == k && *s == 429).count();
    assert_eq!((ok(0), limited(0)), (6, 6), "{results:?}");
    assert_eq!((ok(1), limited(1)), (4, 8), "{results:?}");
}
