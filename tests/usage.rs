//! `/analytics/usage`, what billing reads: admitted and refused requests per key, user and
//! plan, per day and month, against exactly what the test sent; the CSV parsed and compared
//! with the JSON; key holders scoped to their own user; 400s naming the parameter; an
//! upstream's own 429 billed as admitted; day rows kept 400 days by default.

use crate::util::{Gateway, Resp, Upstream};
use chrono::{Datelike, NaiveDate, TimeDelta, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn rows(v: &Value) -> &Vec<Value> {
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {v}"))
}

/// `(admitted, refused)` per value of `id` (summed over buckets, so a run that crosses
/// midnight UTC still adds up).
fn totals(v: &Value, id: &str) -> BTreeMap<i64, (i64, i64)> {
    let mut out = BTreeMap::new();
    for r in rows(v) {
        let t: &mut (i64, i64) = out.entry(r[id].as_i64().unwrap_or(0)).or_default();
        t.0 += r["admitted"].as_i64().unwrap();
        t.1 += r["refused"].as_i64().unwrap();
    }
    out
}

/// Sends `n` requests; returns how many the gateway answered 429.
fn send(gw: &Gateway, key: &str, path: &str, n: usize) -> usize {
    (0..n)
        .map(|_| gw.with_key("GET", path, key))
        .filter(|r: &Resp| r.status == 429)
        .count()
}

/// RFC 4180: CRLF-terminated records, fields quoted when they hold a comma, a quote (doubled)
/// or a line break. Panics on anything else, so a malformed export fails the test.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_field_start => {
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => field.push(c),
                        None => panic!("unterminated quoted field in {text:?}"),
                    }
                }
                let next = chars.peek();
                assert!(
                    matches!(next, Some(',') | Some('\r')),
                    "text after a closing quote: {next:?} in {text:?}"
                );
                at_field_start = false;
            }
            '"' => panic!("a quote inside an unquoted field in {text:?}"),
            ',' => {
                record.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF in {text:?}");
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                at_field_start = true;
            }
            '\n' => panic!("a bare LF ends a record in {text:?}"),
            c => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the last record has no CRLF: {text:?}"
    );
    records
}

#[test]
fn usage_counts_what_the_limit_admitted_and_refused_per_key_user_and_plan() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let alice = gw.create_user("alice@example.com");
    let bob = gw.create_user("bob@example.com");
    let (a1, a1_id) = gw.create_key(alice, json!({"rateLimit": 3, "name": "alice-tight"}));
    let (a2, a2_id) = gw.create_key(alice, json!({"rateLimit": 1000, "name": "alice-main"}));
    let (b1, b1_id) = gw.create_key(bob, json!({"rateLimit": 2, "name": "bob-main"}));
    gw.create_route(alice, "/a", &up.addr);
    gw.create_route(bob, "/b", &up.addr);
    assert_eq!(send(&gw, &a1, "/a/x", 5), 2);
    assert_eq!(send(&gw, &a2, "/a/y", 4), 0);
    assert_eq!(send(&gw, &b1, "/b/z", 4), 2);
    // Refused before the limit phase (no route for this key, a bad key): not usage.
    assert_eq!(gw.with_key("GET", "/b/z", &a2).status, 404);
    assert_eq!(gw.with_key("GET", "/a/x", "gw_nope_nope").status, 401);
    assert_eq!(gw.wait_for_log_rows(15), 15);

    let by_key = gw
        .admin_get("/analytics/usage?groupBy=key&bucket=day")
        .json();
    assert_eq!(by_key["groupBy"], "key");
    assert_eq!(by_key["bucket"], "day");
    let expected = BTreeMap::from([(a1_id, (3, 2)), (a2_id, (4, 0)), (b1_id, (2, 2))]);
    assert_eq!(totals(&by_key, "keyId"), expected, "{by_key}");
    let today = Utc::now().date_naive();
    for r in rows(&by_key) {
        let owner = if r["keyId"] == b1_id { bob } else { alice };
        assert_eq!(r["userId"], owner, "{r}");
        let day = r["bucket"].as_str().unwrap();
        assert!(
            NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok_and(|d| d <= today),
            "{r}"
        );
    }
    let names: BTreeMap<i64, &str> = rows(&by_key)
        .iter()
        .map(|r| (r["keyId"].as_i64().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        BTreeMap::from([
            (a1_id, "alice-tight"),
            (a2_id, "alice-main"),
            (b1_id, "bob-main")
        ])
    );

    let by_user = gw.admin_get("/analytics/usage?groupBy=user").json();
    assert_eq!(by_user["bucket"], "month", "the default bucket");
    assert_eq!(
        totals(&by_user, "userId"),
        BTreeMap::from([(alice, (7, 2)), (bob, (2, 2))])
    );
    assert!(rows(&by_user)
        .iter()
        .any(|r| r["userId"] == alice && r["name"] == "alice@example.com"));
    let month = today.format("%Y-%m").to_string();
    assert!(
        rows(&by_user)
            .iter()
            .all(|r| r["bucket"].as_str().is_some_and(|b| b <= month.as_str())),
        "{by_user}"
    );

    // No key is on a plan yet: everything is the plan-less group.
    let by_plan = gw.admin_get("/analytics/usage?groupBy=plan").json();
    assert_eq!(totals(&by_plan, "planId"), BTreeMap::from([(0, (9, 4))]));
    assert!(rows(&by_plan)
        .iter()
        .all(|r| r["planId"].is_null() && r["name"].is_null()));

    // Filters narrow the admin's view.
    let one_key = gw.admin_get(&format!("/analytics/usage?groupBy=key&keyId={a1_id}"));
    assert_eq!(
        totals(&one_key.json(), "keyId"),
        BTreeMap::from([(a1_id, (3, 2))])
    );
    let one_user = gw.admin_get(&format!("/analytics/usage?groupBy=key&userId={bob}"));
    assert_eq!(
        totals(&one_user.json(), "keyId"),
        BTreeMap::from([(b1_id, (2, 2))])
    );
}

/// Usage by plan follows the plan each request was counted under: a key that moves from
/// one plan to another bills its earlier requests to the first and its later ones to the
/// second.
#[test]
fn usage_by_plan_follows_the_plan_each_request_was_counted_under() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("alice@example.com");
    let plan = |name: &str, limit: i64| -> i64 {
        let r = gw.admin_post(
            "/admin/plans",
            json!({"name": name, "limits": [{"name": "hour", "limit": limit, "windowSecs": 3600}]}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_i64().unwrap()
    };
    let (free, pro) = (plan("free", 2), plan("pro", 100));
    let (key, key_id) = gw.create_key(user, json!({"planId": free}));
    gw.create_route(user, "/a", &up.addr);
    assert_eq!(send(&gw, &key, "/a/x", 3), 1);
    let r = gw.admin_patch(&format!("/admin/api-keys/{key_id}"), json!({"planId": pro}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(send(&gw, &key, "/a/x", 2), 0);
    assert_eq!(gw.wait_for_log_rows(5), 5);
    let by_plan = gw.admin_get("/analytics/usage?groupBy=plan").json();
    assert_eq!(
        totals(&by_plan, "planId"),
        BTreeMap::from([(free, (2, 1)), (pro, (2, 0))]),
        "{by_plan}"
    );
    let names: Vec<&str> = rows(&by_plan)
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["free", "pro"]);
}

#[test]
fn an_upstream_429_is_admitted_usage_and_only_the_limits_429_is_refused() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("a@example.com");
    let (key, key_id) = gw.create_key(user, json!({"rateLimit": 2}));
    gw.create_route(user, "/api", &up.addr);
    for _ in 0..2 {
        let r = gw.with_key("GET", "/api/status/429", &key);
        assert_eq!(r.status, 429, "the upstream's own answer");
    }
    let r = gw.with_key("GET", "/api/status/429", &key);
    assert_eq!(r.code(), "rate_limited", "{}", r.body);
    assert_eq!(
        up.requests().len(),
        2,
        "the third never reached the upstream"
    );
    gw.wait_for_log_rows(3);
    let v = gw.admin_get("/analytics/usage?groupBy=key").json();
    assert_eq!(totals(&v, "keyId"), BTreeMap::from([(key_id, (2, 1))]));
}

/// Day and month buckets over rows of past days (written straight into `usage_daily`, as
/// the logger would have on those days): months are UTC calendar months, `from`/`to` take
/// days or months and clip the buckets, and the CSV says what the JSON says.
#[test]
fn months_are_utc_calendar_months_and_the_csv_parses_to_the_json() {
    let gw = Gateway::start();
    let alice = gw.create_user("alice@example.com");
    let (_, k1) = gw.create_key(alice, json!({"rateLimit": 10, "name": "plain"}));
    let (_, k2) = gw.create_key(alice, json!({"rateLimit": 10, "name": "x"}));
    let mut db = gw.db();
    // A name that needs every kind of CSV quoting (the admin API refuses line breaks in
    // names, so it is written directly).
    let tricky = "billing, \"main\"\nline two";
    db.execute(
        "UPDATE api_keys SET name = $1 WHERE id = $2",
        &[&tricky, &k2],
    )
    .unwrap();
    // The previous month's first and last day, and the current month's first day (all
    // within the 400-day retention, whatever today is).
    let this_month = Utc::now().date_naive().with_day(1).unwrap();
    let last_of_prev = this_month - TimeDelta::days(1);
    let prev_month = last_of_prev.with_day(1).unwrap();
    let plan: i64 = db
        .query_one(
            "INSERT INTO plans (name) VALUES ('pro, yearly') RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO usage_daily (day, api_key_id, user_id, plan_id, admitted, refused)
         VALUES ($1, $4, $6, 0, 5, 0), ($2, $4, $6, 0, 7, 1), ($2, $5, $6, $7, 11, 3),
                ($3, $5, $6, $7, 13, 0)",
        &[
            &prev_month,
            &last_of_prev,
            &this_month,
            &k1,
            &k2,
            &alice,
            &plan,
        ],
    )
    .unwrap();
    let (prev, this) = (
        prev_month.format("%Y-%m").to_string(),
        this_month.format("%Y-%m").to_string(),
    );
    let q = format!("from={prev}&to={this}");

    let months = gw
        .admin_get(&format!("/analytics/usage?{q}&groupBy=key&bucket=month"))
        .json();
    assert_eq!(months["from"], prev_month.to_string());
    let last_day = (this_month + chrono::Months::new(1)) - TimeDelta::days(1);
    assert_eq!(
        months["to"],
        last_day.to_string(),
        "a month as `to` is its last day"
    );
    let got: Vec<(String, i64, i64, i64)> = rows(&months)
        .iter()
        .map(|r| {
            (
                r["bucket"].as_str().unwrap().to_string(),
                r["keyId"].as_i64().unwrap(),
                r["admitted"].as_i64().unwrap(),
                r["refused"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (prev.clone(), k1, 12, 1),
            (prev.clone(), k2, 11, 3),
            (this.clone(), k2, 13, 0)
        ]
    );

    let by_plan = gw
        .admin_get(&format!("/analytics/usage?{q}&groupBy=plan&bucket=month"))
        .json();
    let plans: Vec<(String, Value, Value, i64)> = rows(&by_plan)
        .iter()
        .map(|r| {
            (
                r["bucket"].as_str().unwrap().to_string(),
                r["planId"].clone(),
                r["name"].clone(),
                r["admitted"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        plans,
        vec![
            (prev.clone(), Value::Null, Value::Null, 12),
            (prev.clone(), json!(plan), json!("pro, yearly"), 11),
            (this.clone(), json!(plan), json!("pro, yearly"), 13)
        ]
    );

    // Days: `from`/`to` as days clip to just the previous month's last day.
    let day = last_of_prev.to_string();
    let days = gw
        .admin_get(&format!(
            "/analytics/usage?from={day}&to={day}&groupBy=key&bucket=day"
        ))
        .json();
    assert_eq!(
        rows(&days)
            .iter()
            .map(|r| (
                r["bucket"].as_str().unwrap(),
                r["admitted"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![(day.as_str(), 7), (day.as_str(), 11)]
    );

    // The CSV of each question is its JSON, row for row, with the same columns.
    for (group, columns) in [
        (
            "key",
            &["bucket", "keyId", "userId", "name", "admitted", "refused"][..],
        ),
        (
            "user",
            &["bucket", "userId", "name", "admitted", "refused"][..],
        ),
        (
            "plan",
            &["bucket", "planId", "name", "admitted", "refused"][..],
        ),
    ] {
        for bucket in ["day", "month"] {
            let path = format!("/analytics/usage?{q}&groupBy={group}&bucket={bucket}");
            let json = gw.admin_get(&path).json();
            let r = gw.admin_get(&format!("{path}&format=csv"));
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
            let disposition = r.header("content-disposition").unwrap_or_default();
            assert!(
                disposition.starts_with("attachment; filename=\"usage-")
                    && disposition.ends_with(".csv\""),
                "{disposition}"
            );
            let records = parse_csv(&r.body);
            assert_eq!(records[0], columns, "{path}");
            let expected: Vec<Vec<String>> = rows(&json)
                .iter()
                .map(|row| {
                    columns
                        .iter()
                        .map(|c| match &row[*c] {
                            Value::Null => String::new(),
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect();
            assert!(!expected.is_empty(), "{path}");
            assert_eq!(records[1..], expected[..], "{path}");
        }
    }
    let csv = gw.admin_get(&format!("/analytics/usage?{q}&groupBy=key&format=csv"));
    assert!(
        parse_csv(&csv.body).iter().any(|r| r[3] == tricky),
        "{}",
        csv.body
    );
}

#[test]
fn a_key_holder_sees_only_its_own_users_usage() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let alice = gw.create_user("alice@example.com");
    let bob = gw.create_user("bob@example.com");
    let (ak, ak_id) = gw.create_key(alice, json!({"rateLimit": 1000}));
    let (bk, bk_id) = gw.create_key(bob, json!({"rateLimit": 1000}));
    gw.create_route(alice, "/a", &up.addr);
    gw.create_route(bob, "/b", &up.addr);
    send(&gw, &ak, "/a/1", 2);
    send(&gw, &bk, "/b/1", 3);
    gw.wait_for_log_rows(5);
    let get = |p: &str| gw.with_key("GET", p, &ak);
    for group in ["key", "user", "plan"] {
        let r = get(&format!("/analytics/usage?groupBy={group}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.header("x-ratelimit-limit").is_some(),
            "counted like any call"
        );
        let admitted: i64 = rows(&r.json())
            .iter()
            .map(|r| r["admitted"].as_i64().unwrap())
            .sum();
        assert_eq!(admitted, 2, "{group}: {}", r.body);
        assert!(!r.body.contains("bob@"), "{}", r.body);
    }
    let mine = get("/analytics/usage?groupBy=key").json();
    assert_eq!(totals(&mine, "keyId"), BTreeMap::from([(ak_id, (2, 0))]));
    assert_eq!(
        get(&format!("/analytics/usage?userId={bob}")).code(),
        "insufficient_scope"
    );
    let via_bobs_key = get(&format!("/analytics/usage?groupBy=key&keyId={bk_id}")).json();
    assert!(rows(&via_bobs_key).is_empty(), "{via_bobs_key}");
    let csv = get("/analytics/usage?groupBy=user&format=csv");
    assert_eq!(
        parse_csv(&csv.body).len(),
        2,
        "header and alice: {}",
        csv.body
    );
    assert!(!csv.body.contains("bob@"), "{}", csv.body);
}

#[test]
fn bad_usage_parameters_are_400s_naming_them() {
    let gw = Gateway::start();
    for (q, field) in [
        ("groupBy=route", "groupBy"),
        ("bucket=hour", "bucket"),
        ("format=xlsx", "format"),
        ("from=2026-02-30", "from"),
        ("to=2026-13", "to"),
        ("from=2026-03-01&to=2026-02-28", "from"),
        ("userId=-1", "userId"),
        ("keyId=x", "keyId"),
    ] {
        let r = gw.admin_get(&format!("/analytics/usage?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_field", "{q}");
        assert_eq!(r.json()["error"]["field"], field, "{q}: {}", r.body);
    }
    // A parameter this endpoint does not take is named, not ignored (a misspelt filter
    // would otherwise answer with everyone's usage).
    for (q, name) in [("window=24h", "window"), ("userid=3", "userid")] {
        let r = gw.admin_get(&format!("/analytics/usage?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert_eq!(r.code(), "bad_request");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(&format!("\"{name}\"")), "{message}");
    }
}

/// The default retention keeps day rows 400 days, so every month of last year can still be
/// billed: usage and day rollups 399 days old stay, 402 days old go.
#[test]
fn usage_and_day_rollups_are_kept_400_days_by_default() {
    let gw = Gateway::start_with(&[("TOLLGATE_RETENTION_INTERVAL_MS", "200")]);
    let mut db = gw.db();
    db.batch_execute(
        "INSERT INTO usage_daily (day, api_key_id, user_id, plan_id, admitted, refused)
         SELECT (now() AT TIME ZONE 'UTC')::date - d, 1, 1, 0, 1, 0
           FROM (VALUES (399), (402)) AS v(d);
         INSERT INTO request_rollups (grain_secs, bucket_start, user_id, api_key_id, route_id,
                status_class, count, errors_4xx, errors_5xx, rate_limited, latency_sum,
                bytes_in, bytes_out)
         SELECT 86400, date_trunc('day', now() - make_interval(days => d)), 0, 0, 0, 2, 1, 0,
                0, 0, 1, 0, 0
           FROM (VALUES (399), (402)) AS v(d);",
    )
    .unwrap();
    let ages = |db: &mut postgres::Client| -> (Vec<i32>, Vec<i32>) {
        let usage = db
            .query(
                "SELECT ((now() AT TIME ZONE 'UTC')::date - day)::int4 FROM usage_daily
                  ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let rollups = db
            .query(
                "SELECT extract(day FROM now() - bucket_start)::int4 FROM request_rollups
                  ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (usage, rollups)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = ages(&mut db);
        if now == (vec![399], vec![399]) {
            break;
        }
        assert!(Instant::now() < deadline, "left: {now:?}: {}", gw.output());
        std::thread::sleep(Duration::from_millis(100));
    }
}
