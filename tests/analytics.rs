//! The analytics endpoints against exactly what the test sent, and the rollups they read
//! against the raw rows they summarise: counts per dimension and grain, percentiles from
//! histogram buckets against `percentile_cont`, zero-filled timeseries, top routes and keys,
//! paging and filters of `recent`, scoping of key holders, 400s naming the field, the
//! retention job, and a rollup write that fails.

use crate::util::{run_tollgate_ok, Gateway, Upstream};
use postgres::{GenericClient, IsolationLevel};
use serde_json::{json, Value};
use std::time::Duration;

/// Histogram buckets per rollup row (`rollup::LATENCY_BUCKETS`).
const BUCKETS: usize = 76;

fn count(v: &Value) -> i64 {
    v["totalRequests"].as_i64().unwrap_or_else(|| panic!("{v}"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

/// Writes `n` synthetic rows over the last `span_secs` through the logger's own batch write
/// (`tollgate dev-load-logs`), into the gateway's database.
fn load_logs(gw: &Gateway, n: u64, span_secs: u64) {
    run_tollgate_ok(
        &["dev-load-logs", &n.to_string(), &span_secs.to_string()],
        &gw.db.url(),
    );
}

/// One bucket's width at `ms`: buckets are 20% wide above 0.1 ms, 0.1 ms wide below.
fn bucket_width(ms: f64) -> f64 {
    (ms * 0.2).max(0.1)
}

fn assert_within_a_bucket(got: &Value, exact: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
    assert!(
        (got - exact).abs() <= bucket_width(got.max(exact)) + 0.01,
        "{what}: {got} from buckets vs {exact} exact"
    );
}

/// Mixed traffic: two users, three keys (one rate-limited at 2 a minute), two routes,
/// 2xx, 4xx from the upstream, 5xx, 429, an unrouted path and a bad key.
fn mixed_traffic(gw: &Gateway, up: &Upstream) -> (i64, i64, String, i64, String, i64) {
    let alice = gw.create_user("alice@example.com");
    let bob = gw.create_user("bob@example.com");
    let (ak, ak_id) = gw.create_key(alice, json!({"rateLimit": 1000, "name": "alice-main"}));
    let (tight, _) = gw.create_key(alice, json!({"rateLimit": 2, "name": "alice-tight"}));
    let (bk, bk_id) = gw.create_key(bob, json!({"rateLimit": 1000, "name": "bob-main"}));
    gw.create_route(alice, "/a", &up.addr);
    gw.create_route(bob, "/b", &up.addr);
    let mut sent = 0;
    let mut send = |path: &str, key: &str| {
        gw.with_key("GET", path, key);
        sent += 1;
    };
    for i in 0..6 {
        send(&format!("/a/ok/{i}"), &ak);
    }
    send("/a/status/404", &ak);
    send("/a/status/503", &ak);
    send("/a/slow/30", &ak);
    for _ in 0..4 {
        send("/a/tight", &tight); // 2 pass, 2 are 429
    }
    for _ in 0..3 {
        send("/b/x", &bk);
    }
    send("/b/status/500", &bk);
    send("/nowhere/at/all", &bk); // no route: 404
    send("/a/ok", "gw_nope_nope"); // bad key: 401
    assert_eq!(gw.wait_for_log_rows(sent), sent);
    (alice, bob, ak, ak_id, bk, bk_id)
}

fn alice_and_bob_traffic(gw: &Gateway) -> (Upstream, i64, String, i64, String) {
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
    let (_up, alice, alice_key, bob, _bob_key) = alice_and_bob_traffic(&gw);
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
    let (_up, _alice, _k, _bob, _bk) = alice_and_bob_traffic(&gw);
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

/// Bucket start, user, key, route, status class, count, 4xx, 5xx, 429, bytes in, bytes out.
type Dims = (i64, i64, i64, i64, i16, i64, i64, i64, i64, i64, i64);

/// Where rollup compaction stands (sql/015), Unix seconds.
fn compacted_to(db: &mut impl GenericClient) -> i64 {
    db.query_one(
        "SELECT extract(epoch FROM compacted_to)::int8 FROM rollup_compaction",
        &[],
    )
    .unwrap()
    .get(0)
}

/// The rollups of `grain` against the raw rows, per dimension and bucket, and each
/// bucket's whole-traffic row against the sum of its dimensions. Hour and day rows hold
/// the minutes compaction has folded (before `compacted_to`); minute rows all.
fn assert_grain_matches_raw(db: &mut impl GenericClient, grain: i32) {
    let upto = if grain == 60 {
        i64::MAX / 2
    } else {
        compacted_to(db)
    };
    let rollups: Vec<Dims> = db
        .query(
            "SELECT extract(epoch FROM bucket_start)::int8, user_id, api_key_id, route_id,
                    status_class, sum(count)::int8, sum(errors_4xx)::int8,
                    sum(errors_5xx)::int8, sum(rate_limited)::int8, sum(bytes_in)::int8,
                    sum(bytes_out)::int8
               FROM request_rollups WHERE grain_secs = $1 AND user_id <> -1
              GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
            &[&grain],
        )
        .unwrap()
        .iter()
        .map(dims)
        .collect();
    let raw: Vec<Dims> = db
        .query(
            "SELECT (floor(extract(epoch FROM created_at)::float8 / $1::float8) * $1::float8)::int8,
                    coalesce(user_id, 0), coalesce(api_key_id, 0), coalesce(route_id, 0),
                    (status / 100)::int2, count(*),
                    count(*) FILTER (WHERE status BETWEEN 400 AND 499),
                    count(*) FILTER (WHERE status >= 500),
                    count(*) FILTER (WHERE status = 429),
                    sum(bytes_in)::int8, sum(bytes_out)::int8
               FROM request_logs
              WHERE floor(extract(epoch FROM created_at) / 60)::int8 * 60 < $2
              GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
            &[&f64::from(grain), &upto],
        )
        .unwrap()
        .iter()
        .map(dims)
        .collect();
    assert!(!raw.is_empty(), "grain {grain}: nothing to compare");
    assert_eq!(rollups, raw, "grain {grain}");
    // Each bucket's whole-traffic row (ids -1) sums its per-dimension rows.
    let whole: Vec<Dims> = db
        .query(
            "SELECT extract(epoch FROM bucket_start)::int8, -1::int8, -1::int8, -1::int8,
                    0::int2, count, errors_4xx, errors_5xx, rate_limited, bytes_in,
                    bytes_out
               FROM request_rollups WHERE grain_secs = $1 AND user_id = -1 ORDER BY 1",
            &[&grain],
        )
        .unwrap()
        .iter()
        .map(dims)
        .collect();
    let mut summed: Vec<Dims> = Vec::new();
    for r in &raw {
        match summed.last_mut() {
            Some(w) if w.0 == r.0 => {
                (w.5, w.6, w.7, w.8, w.9, w.10) = (
                    w.5 + r.5,
                    w.6 + r.6,
                    w.7 + r.7,
                    w.8 + r.8,
                    w.9 + r.9,
                    w.10 + r.10,
                )
            }
            _ => summed.push((r.0, -1, -1, -1, 0, r.5, r.6, r.7, r.8, r.9, r.10)),
        }
    }
    assert_eq!(whole, summed, "grain {grain} whole-traffic rows");
    let hist_sum = (0..BUCKETS)
        .map(|i| format!("h{i}"))
        .collect::<Vec<_>>()
        .join(" + ");
    let bad: i64 = db
        .query_one(
            &format!(
                "SELECT count(*) FROM request_rollups
                  WHERE grain_secs = $1 AND count <> {hist_sum}"
            ),
            &[&grain],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "every row's histogram holds its count");
}

/// Every grain against the raw rows, all in one snapshot: a fold between two reads would
/// otherwise show rollups and raw rows out of step.
fn assert_rollups_match_raw(db: &mut postgres::Client) {
    let mut tx = db
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    for grain in [60, 3_600, 86_400] {
        assert_grain_matches_raw(&mut tx, grain);
    }
    tx.commit().unwrap();
}

/// Runs `sql` as one transaction holding the compaction's lock (`rollups::COMPACTION_LOCK`),
/// so a fold running meanwhile neither sees it half done nor deadlocks with it.
fn under_compaction_lock(db: &mut postgres::Client, sql: &str) {
    db.batch_execute(&format!("SELECT pg_advisory_xact_lock(7316002873); {sql}"))
        .unwrap();
}

/// The overview of `window` against the raw rows, and the hourly and daily series' sums.
fn assert_answers_match_raw(gw: &Gateway, db: &mut postgres::Client, window: &str) {
    let raw = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status BETWEEN 400 AND 499),
                    count(*) FILTER (WHERE status >= 500), count(*) FILTER (WHERE status = 429),
                    sum(bytes_in)::int8, sum(bytes_out)::int8, avg(latency_ms)
               FROM request_logs",
            &[],
        )
        .unwrap();
    let o = gw
        .admin_get(&format!("/analytics/overview?window={window}"))
        .json();
    assert_eq!(o["totalRequests"], raw.get::<_, i64>(0), "{window}: {o}");
    assert_eq!(o["clientErrors"], raw.get::<_, i64>(1));
    assert_eq!(o["serverErrors"], raw.get::<_, i64>(2));
    assert_eq!(o["rateLimited"], raw.get::<_, i64>(3));
    assert_eq!(o["rateLimited"], 2);
    assert_eq!(o["errorCount"], raw.get::<_, i64>(1) + raw.get::<_, i64>(2));
    assert_eq!(o["bytesIn"], raw.get::<_, i64>(4));
    assert_eq!(o["bytesOut"], raw.get::<_, i64>(5));
    let avg: f64 = raw.get(6);
    assert!(
        (o["avgLatencyMs"].as_f64().unwrap() - avg).abs() <= 0.011,
        "{o}"
    );
    assert_eq!(o["window"], window);
    for bucket in ["hour", "day"] {
        let ts = gw
            .admin_get(&format!(
                "/analytics/timeseries?window={window}&bucket={bucket}"
            ))
            .json();
        let total: i64 = arr(&ts).iter().map(|p| p["count"].as_i64().unwrap()).sum();
        // The series' first bucket may start after the window does (a 24 h window by day
        // is today alone).
        let first = ts[0]["start"].as_str().unwrap();
        let since: i64 = db
            .query_one(
                "SELECT count(*) FROM request_logs WHERE created_at >= $1::text::timestamptz",
                &[&first],
            )
            .unwrap()
            .get(0);
        assert_eq!(total, since, "{window} by {bucket}");
    }
}

/// Minute rollups are written with the raw rows; hour and day rows are folded from them a
/// minute after it ends (the retention job's compaction) and rebuilt when the hour or day
/// has ended, and a row later than its minute's fold is added to them by the logger. At
/// every stage the rollups equal the raw rows and the answers read folded and unfolded
/// rows without counting anything twice.
#[test]
fn rollups_equal_the_raw_rows_for_every_dimension_and_grain() {
    let gw = Gateway::start_with(&[("TOLLGATE_RETENTION_INTERVAL_MS", "200")]);
    let up = Upstream::start();
    let (_, _, ak, _, _, _) = mixed_traffic(&gw, &up);
    let mut db = gw.db();
    // Folded or not yet, the answers add up.
    assert_rollups_match_raw(&mut db);
    assert_answers_match_raw(&gw, &mut db, "24h");
    // Move the traffic two days back and compaction to before it: the job folds its
    // minutes, rebuilds its hours and its day, and the answers then read those.
    under_compaction_lock(
        &mut db,
        "UPDATE request_logs SET created_at = created_at - interval '50 hours';
         UPDATE request_rollups SET bucket_start = bucket_start - interval '50 hours'
          WHERE grain_secs = 60;
         DELETE FROM request_rollups WHERE grain_secs > 60;
         UPDATE rollup_compaction SET compacted_to =
                to_timestamp(floor((extract(epoch FROM now()) - 52 * 3600) / 86400) * 86400);",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let caught_up = |db: &mut postgres::Client| -> bool {
        db.query_one(
            "SELECT compacted_to > now() - interval '3 minutes' FROM rollup_compaction",
            &[],
        )
        .unwrap()
        .get(0)
    };
    while !caught_up(&mut db) {
        assert!(
            std::time::Instant::now() < deadline,
            "compaction did not catch up: {}",
            gw.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_rollups_match_raw(&mut db);
    assert_answers_match_raw(&gw, &mut db, "7d");
    // Fresh traffic, moved five minutes back and compaction to ten: the job adds those
    // minutes to the current hour and day rows (rebuilding the hour if one ended between).
    let count_raw = |db: &mut postgres::Client| -> i64 {
        db.query_one("SELECT count(*) FROM request_logs", &[])
            .unwrap()
            .get(0)
    };
    let before = count_raw(&mut db);
    for i in 0..3 {
        gw.with_key("GET", &format!("/a/ok/fresh/{i}"), &ak);
    }
    assert_eq!(gw.wait_for_log_rows(before + 3), before + 3);
    under_compaction_lock(
        &mut db,
        "UPDATE request_logs SET created_at = created_at - interval '5 minutes'
          WHERE created_at > now() - interval '1 hour';
         UPDATE request_rollups SET bucket_start = bucket_start - interval '5 minutes'
          WHERE grain_secs = 60 AND bucket_start > now() - interval '1 hour';
         UPDATE rollup_compaction SET compacted_to =
                to_timestamp(floor((extract(epoch FROM now()) - 600) / 60) * 60);",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !caught_up(&mut db) {
        assert!(std::time::Instant::now() < deadline, "{}", gw.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_rollups_match_raw(&mut db);
    assert_answers_match_raw(&gw, &mut db, "7d");
    // A request whose minute is already folded (as after an outage) is added to the hour
    // and day rows by the logger itself.
    under_compaction_lock(
        &mut db,
        "UPDATE rollup_compaction SET compacted_to = compacted_to + interval '2 days'",
    );
    let before = count_raw(&mut db);
    gw.with_key("GET", "/a/ok/late", &ak);
    assert_eq!(gw.wait_for_log_rows(before + 1), before + 1);
    assert_rollups_match_raw(&mut db);
    assert_answers_match_raw(&gw, &mut db, "7d");
}

fn dims(r: &postgres::Row) -> Dims {
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
        r.get(10),
    )
}

#[test]
fn percentiles_from_buckets_are_within_one_bucket_of_percentile_cont() {
    let gw = Gateway::start();
    load_logs(&gw, 5_000, 600);
    let mut db = gw.db();
    let mut exact = |filter: &str| -> [f64; 3] {
        let r = db
            .query_one(
                &format!(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
                            percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
                            percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)
                       FROM request_logs WHERE {filter}"
                ),
                &[],
            )
            .unwrap();
        [r.get(0), r.get(1), r.get(2)]
    };
    let all = exact("true");
    let o = gw.admin_get("/analytics/overview?window=15m").json();
    assert_eq!(count(&o), 5_000);
    for (field, x) in ["p50Ms", "p95Ms", "p99Ms"].iter().zip(all) {
        assert_within_a_bucket(&o[field], x, field);
    }
    assert!(all[2] > 2.0 * all[0], "the load has a tail: {all:?}");
    // The same through a filter, and per route in top-routes.
    let k1 = exact("api_key_id = 1");
    let o = gw
        .admin_get("/analytics/overview?window=15m&keyId=1")
        .json();
    for (field, x) in ["p50Ms", "p95Ms", "p99Ms"].iter().zip(k1) {
        assert_within_a_bucket(&o[field], x, &format!("keyId=1 {field}"));
    }
    let top = gw
        .admin_get("/analytics/top-routes?window=15m&limit=3")
        .json();
    assert_eq!(arr(&top).len(), 3);
    for t in arr(&top) {
        let route = t["routeId"].as_i64().unwrap();
        let x = exact(&format!("route_id = {route}"))[1];
        assert_within_a_bucket(&t["p95Ms"], x, &format!("route {route} p95"));
    }
}

#[test]
fn timeseries_buckets_are_zero_filled_and_each_equals_its_raw_rows() {
    let gw = Gateway::start();
    // Three days of synthetic rows, one every ~130 s, so minute buckets have gaps.
    load_logs(&gw, 2_000, 3 * 86_400);
    let mut db = gw.db();
    for (bucket, window, points, g) in [
        ("minute", "1h", 60usize, 60i64),
        ("hour", "24h", 24, 3_600),
        ("day", "7d", 7, 86_400),
    ] {
        let ts = gw
            .admin_get(&format!(
                "/analytics/timeseries?bucket={bucket}&window={window}"
            ))
            .json();
        let ts = arr(&ts);
        assert_eq!(ts.len(), points, "{bucket}");
        let raw: std::collections::HashMap<String, i64> = db
            .query(
                "SELECT to_char(to_timestamp(floor(extract(epoch FROM created_at)::float8 / $1::float8) * $1::float8)
                                AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.000\"Z\"'),
                        count(*)
                   FROM request_logs GROUP BY 1",
                &[&(g as f64)],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut prev = String::new();
        let mut zeros = 0;
        for p in ts {
            let start = p["start"].as_str().unwrap().to_string();
            assert!(start > prev, "oldest first: {start} after {prev}");
            let expect = raw.get(&start).copied().unwrap_or(0);
            assert_eq!(p["count"], expect, "{bucket} {start}");
            zeros += usize::from(expect == 0);
            for f in [
                "errorCount",
                "clientErrors",
                "serverErrors",
                "p50Ms",
                "p95Ms",
                "p99Ms",
                "bytesIn",
                "bytesOut",
            ] {
                assert!(p.get(f).is_some(), "{bucket} point lacks {f}: {p}");
            }
            assert_eq!(p.get("hour").is_some(), bucket == "hour", "{p}");
            prev = start;
        }
        if bucket != "hour" {
            // Minutes without a row, and days before the load began, are present as zeros.
            assert!(zeros > 0, "{bucket}: no empty bucket in {ts:?}");
        }
    }
}

#[test]
fn top_keys_rank_keys_with_their_names_and_users_and_requests_without_a_key() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (alice, bob, _ak, ak_id, _bk, bk_id) = mixed_traffic(&gw, &up);
    let top = gw.admin_get("/analytics/top-keys").json();
    let top = arr(&top);
    assert_eq!(top[0]["keyId"], ak_id);
    assert_eq!(top[0]["keyName"], "alice-main");
    assert_eq!(top[0]["userId"], alice);
    assert_eq!(top[0]["count"], 9);
    assert_eq!(top[0]["errorCount"], 2);
    assert!(top[0]["avgLatencyMs"].as_f64().unwrap() > 0.0);
    assert_eq!(top[1]["keyId"], bk_id);
    assert_eq!(top[1]["userId"], bob);
    assert_eq!(top[1]["count"], 5);
    let no_key = top.iter().find(|k| k["keyId"].is_null()).unwrap();
    assert_eq!(
        (no_key["count"].clone(), no_key["keyName"].clone()),
        (json!(1), Value::Null)
    );
    let one = gw.admin_get("/analytics/top-keys?limit=1").json();
    assert_eq!(arr(&one).len(), 1);
    let bobs = gw
        .admin_get(&format!("/analytics/top-keys?userId={bob}"))
        .json();
    assert_eq!(arr(&bobs).len(), 1);
    assert_eq!(bobs[0]["keyName"], "bob-main");
    // Unrouted paths are listed by raw path in top-routes.
    let routes = gw.admin_get("/analytics/top-routes").json();
    let unrouted = arr(&routes)
        .iter()
        .find(|r| r["path"] == "/nowhere/at/all")
        .unwrap_or_else(|| panic!("{routes}"));
    assert_eq!(unrouted["routeId"], Value::Null);
    assert_eq!(unrouted["count"], 1);
    assert_eq!(unrouted["errorCount"], 1);
}

#[test]
fn recent_pages_with_a_cursor_and_filters_by_status_route_and_key() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (_alice, _bob, _ak, ak_id, _bk, _bk_id) = mixed_traffic(&gw, &up);
    let total = gw.wait_for_log_rows(19);
    let mut seen = Vec::new();
    let mut path = "/analytics/recent?limit=5".to_string();
    loop {
        let r = gw.admin_get(&path);
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        seen.extend(arr(&page).iter().map(|row| row["id"].as_i64().unwrap()));
        match r.header("x-next-cursor") {
            Some(c) => path = format!("/analytics/recent?limit=5&before={c}"),
            None => break,
        }
        assert!(seen.len() <= 100, "the cursor must end");
    }
    assert_eq!(seen.len() as i64, total);
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "no row on two pages");
    let statuses = |q: &str| -> Vec<i64> {
        arr(&gw.admin_get(&format!("/analytics/recent?{q}")).json())
            .iter()
            .map(|r| r["status"].as_i64().unwrap())
            .collect()
    };
    let mut four = statuses("status=4xx");
    four.sort();
    assert_eq!(four, vec![401, 404, 404, 429, 429]);
    assert_eq!(statuses("status=429"), vec![429, 429]);
    assert_eq!(statuses("status=5xx").len(), 2);
    let rows = gw
        .admin_get(&format!("/analytics/recent?keyId={ak_id}&status=2xx"))
        .json();
    assert_eq!(arr(&rows).len(), 7);
    assert!(arr(&rows).iter().all(|r| r["apiKeyId"] == ak_id));
    let route = arr(&rows)[0]["routeId"].as_i64().unwrap();
    let by_route = gw
        .admin_get(&format!("/analytics/recent?routeId={route}&limit=100"))
        .json();
    assert_eq!(arr(&by_route).len(), 13, "everything under /a");
}

#[test]
fn recent_is_newest_first_defaults_to_twenty_and_caps_the_limit_at_a_hundred() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1000}));
    gw.create_route(user, "/api", &up.addr);
    for i in 0..105 {
        assert_eq!(
            gw.with_key("GET", &format!("/api/r/{i}?i={i}"), &key)
                .status,
            200
        );
    }
    assert_eq!(
        gw.wait_for_log_rows_within(105, Duration::from_secs(5)),
        105
    );
    let paths = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    };
    let expect = |from: i32, n: i32| -> Vec<String> {
        (0..n).map(|k| format!("/api/r/{}", from - k)).collect()
    };
    let recent = gw.admin_get("/analytics/recent").json();
    assert_eq!(paths(recent.clone()), expect(104, 20));
    let first = &recent[0];
    for field in [
        "id",
        "requestId",
        "apiKeyId",
        "userId",
        "routeId",
        "method",
        "path",
        "query",
        "status",
        "latencyMs",
        "bytesIn",
        "bytesOut",
        "clientIp",
        "userAgent",
        "createdAt",
    ] {
        assert!(
            first.get(field).is_some(),
            "recent row lacks {field}: {first}"
        );
    }
    assert_eq!(first["query"], "i=104");
    assert_eq!(
        paths(gw.admin_get("/analytics/recent?limit=5").json()),
        expect(104, 5)
    );
    assert_eq!(
        paths(gw.admin_get("/analytics/recent?limit=1000").json()),
        expect(104, 100)
    );
    let mine = gw.with_key("GET", "/analytics/recent?limit=3", &key);
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(paths(mine.json()), expect(104, 3));
    for bad in ["0", "-1", "abc"] {
        let r = gw.admin_get(&format!("/analytics/recent?limit={bad}"));
        assert_eq!(r.status, 400, "limit={bad}: {}", r.body);
    }
}

#[test]
fn the_admin_filters_by_key_and_route_and_top_routes_ignore_the_query() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (k1, k1_id) = gw.create_key(user, json!({"rateLimit": 1000}));
    let (k2, k2_id) = gw.create_key(user, json!({"rateLimit": 1000}));
    let ra = gw.create_route(user, "/a", &up.addr);
    let rb = gw.create_route(user, "/b", &up.addr);
    for i in 0..3 {
        gw.with_key("GET", &format!("/a?i={i}"), &k1);
    }
    for i in 0..2 {
        gw.with_key("GET", &format!("/a?j={i}"), &k2);
    }
    for _ in 0..4 {
        gw.with_key("GET", "/b/x", &k2);
    }
    assert_eq!(gw.wait_for_log_rows_within(9, Duration::from_secs(3)), 9);
    let overview = |q: &str| gw.admin_get(&format!("/analytics/overview{q}")).json();
    assert_eq!(count(&overview("")), 9);
    assert_eq!(count(&overview(&format!("?keyId={k1_id}"))), 3);
    assert_eq!(count(&overview(&format!("?keyId={k2_id}"))), 6);
    assert_eq!(count(&overview(&format!("?routeId={rb}"))), 4);
    assert_eq!(count(&overview(&format!("?routeId={ra}&keyId={k2_id}"))), 2);
    assert_eq!(count(&overview(&format!("?userId={user}&routeId={ra}"))), 5);
    assert_eq!(count(&overview("?userId=999999")), 0);
    let top = gw.admin_get("/analytics/top-routes").json();
    let got: Vec<(String, i64)> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap().to_string(),
                t["count"].as_i64().unwrap(),
            )
        })
        .collect();
    // Per route, named by its prefix (rollups keep the route, not the raw path).
    assert_eq!(got, vec![("/a".to_string(), 5), ("/b".to_string(), 4)]);
    let top_k2 = gw
        .admin_get(&format!("/analytics/top-routes?keyId={k2_id}"))
        .json();
    assert_eq!(top_k2[0]["path"], "/b");
    assert_eq!(top_k2[0]["routeId"], rb);
    assert_eq!(top_k2[0]["count"], 4);
    // The key holder's view is its user's, whichever of the user's keys asks.
    let via_k1 = gw.with_key("GET", "/analytics/overview", &k1).json();
    assert_eq!(count(&via_k1), 9);
    let ts = gw
        .admin_get(&format!("/analytics/timeseries?routeId={rb}"))
        .json();
    let ts = ts.as_array().unwrap();
    assert_eq!(ts.len(), 24);
    let hour = chrono::Utc::now().format("%Y-%m-%dT%H:00:00Z").to_string();
    let last = ts.last().unwrap();
    if last["hour"] == hour.as_str() {
        assert_eq!(last["count"], 4, "{last}");
    } else {
        // The hour turned between the requests and this check.
        assert_eq!(
            ts[ts.len() - 2]["hour"].as_str().map(|h| h < hour.as_str()),
            Some(true)
        );
    }
    let hours: Vec<&str> = ts.iter().map(|h| h["hour"].as_str().unwrap()).collect();
    let mut sorted = hours.clone();
    sorted.sort();
    assert_eq!(hours, sorted, "oldest first");
    assert_eq!(
        ts.iter().map(|h| h["count"].as_i64().unwrap()).sum::<i64>(),
        4
    );
}

/// A key holder sees its own user's figures on every analytics endpoint, and no filter
/// shows it anything of another user's.
#[test]
fn a_key_holder_sees_only_its_own_users_figures_through_every_endpoint_and_filter() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let (alice, bob, ak, _ak_id, _bk, bk_id) = mixed_traffic(&gw, &up);
    let get = |p: &str| gw.with_key("GET", p, &ak);
    assert_eq!(count(&get("/analytics/overview").json()), 13);
    let keys = get("/analytics/top-keys").json();
    assert!(arr(&keys).iter().all(|k| k["userId"] == alice), "{keys}");
    let routes = get("/analytics/top-routes").json();
    assert_eq!(arr(&routes).len(), 1, "{routes}");
    assert_eq!(routes[0]["path"], "/a");
    let ts = get("/analytics/timeseries?bucket=minute&window=15m").json();
    assert_eq!(
        arr(&ts)
            .iter()
            .map(|p| p["count"].as_i64().unwrap())
            .sum::<i64>(),
        13
    );
    let recent = get("/analytics/recent?limit=100").json();
    assert_eq!(arr(&recent).len(), 13);
    for p in [
        format!("/analytics/top-keys?userId={bob}"),
        format!("/analytics/timeseries?userId={bob}"),
    ] {
        assert_eq!(get(&p).status, 403, "{p}");
    }
    let via_bob_key = get(&format!("/analytics/top-keys?keyId={bk_id}")).json();
    assert_eq!(
        arr(&via_bob_key).len(),
        0,
        "bob's key filtered within alice's user"
    );
    // No filter naming bob's key, route or user, alone or beside alice's, shows alice
    // anything of bob's: a 403, or alice's own figures at most.
    let bob_route = gw.admin_get(&format!("/admin/routes?userId={bob}")).json()[0]["id"]
        .as_i64()
        .unwrap();
    for q in [
        format!("?keyId={bk_id}"),
        format!("?routeId={bob_route}"),
        format!("?userId={bob}"),
        format!("?userId={alice}&userId={bob}"),
    ] {
        for endpoint in ["overview", "recent", "top-routes", "top-keys", "timeseries"] {
            let r = get(&format!("/analytics/{endpoint}{q}"));
            let leaked = ["\"/b", "/nowhere", "bob-main"]
                .iter()
                .any(|bobs| r.body.contains(bobs));
            assert!(
                r.status == 403 || (r.status == 200 && !leaked),
                "{endpoint}{q}: {} {}",
                r.status,
                r.body
            );
            if r.status == 200 && endpoint == "overview" {
                assert!(count(&r.json()) <= 13, "{endpoint}{q}: {}", r.body);
            }
            if r.status == 200 && endpoint == "timeseries" {
                let n: i64 = arr(&r.json())
                    .iter()
                    .map(|p| p["count"].as_i64().unwrap())
                    .sum();
                assert!(n <= 13, "{endpoint}{q}: {}", r.body);
            }
        }
    }
    assert!(
        get("/analytics/overview")
            .header("x-ratelimit-limit")
            .is_some(),
        "analytics via a key carries limit headers"
    );
}

#[test]
fn bad_analytics_parameters_get_400_naming_the_field() {
    let gw = Gateway::start();
    for (q, field) in [
        ("overview?window=1m", "window"),
        ("overview?window=31d", "window"),
        ("overview?window=24", "window"),
        ("timeseries?bucket=week", "bucket"),
        ("timeseries?bucket=minute&window=30d", "bucket"),
        ("top-routes?limit=0", "limit"),
        ("top-keys?limit=abc", "limit"),
        ("recent?status=9xx", "status"),
        ("recent?status=abc", "status"),
        ("recent?before=0", "before"),
        ("recent?before=x", "before"),
        ("overview?userId=abc", "userId"),
        ("top-keys?keyId=-1", "keyId"),
        ("timeseries?routeId=1.5", "routeId"),
    ] {
        let r = gw.admin_get(&format!("/analytics/{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert_eq!(r.json()["error"]["field"], field, "{q}: {}", r.body);
    }
    assert_eq!(gw.admin_get("/analytics/top-keys?limit=1000").status, 200);
}

#[test]
fn retention_deletes_old_raw_rows_and_older_rollups_and_keeps_new_ones() {
    let gw = Gateway::start_with(&[
        ("TOLLGATE_LOG_RETENTION", "1h"),
        ("TOLLGATE_ROLLUP_RETENTION", "60d"),
        ("TOLLGATE_RETENTION_INTERVAL_MS", "200"),
        ("TOLLGATE_RETENTION_BATCH", "7"),
    ]);
    let mut db = gw.db();
    // 30 raw rows 2 h old (past the 1 h retention) and 5 from now. Rollups: minute rows
    // 3 and 40 days old (minute rows are kept at most 32 days), day rows 40 and 70 days old.
    db.batch_execute(
        "INSERT INTO request_logs (request_id, method, path, status, latency_ms, bytes_in,
                bytes_out, client_ip, created_at)
         SELECT 'r' || i, 'GET', '/x', 200, 1, 0, 0, '127.0.0.1',
                CASE WHEN i <= 30 THEN now() - interval '2 hours' ELSE now() END
           FROM generate_series(1, 35) AS i;
         INSERT INTO request_rollups (grain_secs, bucket_start, user_id, api_key_id, route_id,
                status_class, count, errors_4xx, errors_5xx, rate_limited, latency_sum,
                bytes_in, bytes_out)
         SELECT g, date_trunc('minute', now() - make_interval(days => d)), 0, 0, 0, 2, 1, 0, 0,
                0, 1, 0, 0
           FROM (VALUES (60, 3), (60, 40), (86400, 40), (86400, 70)) AS v(g, d);",
    )
    .unwrap();
    let left = |db: &mut postgres::Client| -> (i64, Vec<(i32, i32)>) {
        let raw: i64 = db
            .query_one("SELECT count(*) FROM request_logs", &[])
            .unwrap()
            .get(0);
        let rollups = db
            .query(
                "SELECT grain_secs, extract(day FROM now() - bucket_start)::int4
                   FROM request_rollups ORDER BY 1, 2",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        (raw, rollups)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = left(&mut db);
        if now == (5, vec![(60, 3), (86_400, 40)]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left: {now:?}: {}",
            gw.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_batch_whose_rollups_fail_is_retried_whole_and_raw_rows_never_run_ahead() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1000}));
    gw.create_route(user, "/api", &up.addr);
    let mut db = gw.db();
    // Every rollup write now fails, so the whole batch (raw rows too) must roll back.
    db.batch_execute(
        "ALTER TABLE request_rollups ADD CONSTRAINT refuse_all CHECK (count < 0) NOT VALID",
    )
    .unwrap();
    for i in 0..5 {
        assert_eq!(gw.with_key("GET", &format!("/api/{i}"), &key).status, 200);
    }
    std::thread::sleep(Duration::from_millis(800));
    let raw = |db: &mut postgres::Client| -> i64 {
        db.query_one("SELECT count(*) FROM request_logs", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(raw(&mut db), 0, "raw rows committed without their rollups");
    db.batch_execute("ALTER TABLE request_rollups DROP CONSTRAINT refuse_all")
        .unwrap();
    assert_eq!(gw.wait_for_log_rows(5), 5);
    // The minute rows; hour and day rows are folded from them once the hour has ended
    // (`rollups_equal_the_raw_rows_for_every_dimension_and_grain`).
    let r = db
        .query_one(
            "SELECT coalesce(sum(count) FILTER (WHERE user_id = -1), 0)::int8,
                    coalesce(sum(count) FILTER (WHERE user_id <> -1), 0)::int8
               FROM request_rollups WHERE grain_secs = 60",
            &[],
        )
        .unwrap();
    let (whole, detail): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!((whole, detail), (5, 5), "counted once each");
    assert_eq!(count(&gw.admin_get("/analytics/overview").json()), 5);
}

/// The reference (Express) gateway's dashboard reads `statusCode` from recent rows and
/// `avg_latency` from top routes; both are sent beside tollgate's own names, with the
/// same values, so that dashboard works with only the admin secret added.
#[test]
fn the_reference_dashboards_field_names_carry_the_same_values() {
    let gw = Gateway::start();
    let (_up, _alice, _k, _bob, _bk) = alice_and_bob_traffic(&gw);
    let recent = gw.admin_get("/analytics/recent").json();
    let errors = arr(&recent)
        .iter()
        .filter(|r| r["statusCode"].as_u64().unwrap_or_else(|| panic!("{r}")) >= 400)
        .count();
    assert_eq!(errors, 3, "{recent}");
    assert!(arr(&recent).iter().all(|r| r["statusCode"] == r["status"]));
    let top = gw.admin_get("/analytics/top-routes").json();
    for r in arr(&top) {
        let avg = r["avg_latency"].as_f64().unwrap_or_else(|| panic!("{r}"));
        assert!(avg > 0.0, "{r}");
        assert_eq!(r["avg_latency"], r["avgLatencyMs"]);
    }
}
