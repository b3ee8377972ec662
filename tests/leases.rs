//! Leases (`counting: "lease"`, docs/limits.md#leases) on one replica: a busy key is
//! admitted from units counted ahead of need and still gets exactly its limit and quota,
//! no more and no less; `counting: "exact"` on a plan or a key counts one request at a
//! time as before. Leases need room: these gateways grant them down to 4 units of room
//! (`TOLLGATE_LEASE_MIN_ROOM`), measure a key's rate every 20 ms, and the limits are large
//! enough for a burst to be leased. Two replicas and a replica killed holding a lease are
//! in tests/cluster.rs.

use crate::limits::{self, status_counts};
use crate::util::{gateway_with_api_route, Gateway};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Leases granted down to 4 units of room, a key's rate measured over 20 ms.
pub const LEASE_ENV: &[(&str, &str)] = &[
    ("TOLLGATE_LEASE_MIN_ROOM", "4"),
    ("TOLLGATE_LEASE_HORIZON_MS", "20"),
];

/// `threads` × `each` requests with `key` at once; (admitted, refused).
fn burst(gw: &Gateway, key: &str, threads: usize, each: usize) -> (usize, usize) {
    status_counts(&limits::burst(&[gw], &[key.to_string()], threads, each))
}

/// Polls until the key's counts are `want` (unused lease units given back) or 5 s pass.
fn counts_become(gw: &Gateway, key_id: i64, want: &(Vec<i64>, i64)) -> (Vec<i64>, i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = gw.key_counts(key_id);
        if &now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn plan(gw: &Gateway, body: Value) -> i64 {
    let r = gw.admin_post("/admin/plans", body);
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_i64().unwrap()
}

/// Two hour-long limits and a daily quota, the quota the tightest.
fn limits_and_quota(name: &str, counting: Value) -> Value {
    json!({"name": name, "counting": counting,
           "limits": [{"name": "hour", "limit": 400, "windowSecs": 3600},
                      {"name": "day", "limit": 350, "windowSecs": 86400}],
           "quota": {"limit": 300, "period": "day"}})
}

#[test]
fn one_replica_admits_exactly_the_quota_from_leases_and_gives_back_nothing_unused() {
    let (gw, up, user) = gateway_with_api_route(LEASE_ENV);
    let plan = plan(&gw, limits_and_quota("leased", json!("lease")));
    let (key, key_id) = gw.create_key(user, json!({"planId": plan}));
    let rs = limits::burst(&[&gw], std::slice::from_ref(&key), 16, 25);
    assert_eq!(status_counts(&rs), (300, 100), "the quota, exactly");
    // Admitted from a lease or not, every answer describes the quota, the closest to
    // refusing, with what this replica knows is left of it.
    for r in rs.iter().filter(|r| r.status == 200) {
        assert_eq!(r.header("X-RateLimit-Limit"), Some("300"));
        let left: i64 = r.header("X-RateLimit-Remaining").unwrap().parse().unwrap();
        assert!((0..300).contains(&left), "{left}");
    }
    assert_eq!(up.requests().len(), 300);
    assert!(gw.lease_admitted() > 0, "the burst was never leased");
    // Every unit was used: the rows hold exactly what was admitted, on every check.
    assert_eq!(gw.key_counts(key_id), (vec![300, 300], 300));
    let refused = gw.with_key("GET", "/api", &key);
    assert_eq!(refused.code(), "quota_exceeded");
}

#[test]
fn unused_units_are_given_back_once_the_key_goes_quiet() {
    let (gw, _up, user) = gateway_with_api_route(LEASE_ENV);
    let plan = plan(&gw, limits_and_quota("leased", Value::Null));
    let (key, key_id) = gw.create_key(user, json!({"planId": plan}));
    // Well under the quota: leases are granted and some units are left over.
    let (ok, _) = burst(&gw, &key, 8, 12);
    assert_eq!(ok, 96);
    assert!(gw.lease_admitted() > 0, "the burst was never leased");
    let ok = ok as i64;
    let want = (vec![ok, ok], ok);
    assert_eq!(counts_become(&gw, key_id, &want), want);
}

#[test]
fn a_replica_stopped_by_sigterm_gives_its_unused_units_back_on_the_way_out() {
    // No drain: during one, the idle lease would be given back by the keeper before the
    // shutdown path this test is about.
    let env = [LEASE_ENV, &[("TOLLGATE_SHUTDOWN_DRAIN_MS", "0")]].concat();
    let (mut gw, _up, user) = gateway_with_api_route(&env);
    let plan = plan(&gw, limits_and_quota("leased", Value::Null));
    let (key, key_id) = gw.create_key(user, json!({"planId": plan}));
    // A burst may end with its last lease used up, leaving nothing to give back: burst
    // until the database counts more than was admitted, i.e. a lease holds unused units.
    let mut ok = 0;
    // Three bursts stay under the quota of 300.
    for _ in 0..3 {
        ok += burst(&gw, &key, 8, 12).0 as i64;
        if gw.key_counts(key_id).1 > ok {
            break;
        }
    }
    assert!(gw.key_counts(key_id).1 > ok, "no lease held unused units");
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(25)).is_some());
    assert_eq!(gw.key_counts(key_id), (vec![ok, ok], ok));
    assert!(
        gw.output().contains("unused lease units given back"),
        "{}",
        gw.output()
    );
}

/// A key new to the replica is leased once its first three requests span a tenth of the
/// horizon, not after a whole horizon: here a 10 s horizon, and requests 250 ms apart
/// (well under the 500 ms after which an idle lease is given back).
#[test]
fn a_new_keys_first_lease_comes_after_three_requests_not_a_whole_horizon() {
    let env = [
        ("TOLLGATE_LEASE_MIN_ROOM", "4"),
        ("TOLLGATE_LEASE_HORIZON_MS", "10000"),
    ];
    let (gw, _up, user) = gateway_with_api_route(&env);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    let started = Instant::now();
    for _ in 0..8 {
        assert_eq!(gw.with_key("GET", "/api", &key).status, 200);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "too slow to tell"
    );
    // The 5th request (1 s in) measured the rate and its round granted a lease of at most
    // the 5 requests sent; the 6th to 8th were admitted from it.
    assert!(
        gw.lease_admitted() >= 1,
        "no lease within the first horizon"
    );
}

#[test]
fn exact_counting_on_a_plan_or_a_key_counts_every_request_in_a_round() {
    let (gw, up, user) = gateway_with_api_route(LEASE_ENV);
    let exact = plan(&gw, limits_and_quota("exact", json!("exact")));
    let leased = plan(&gw, limits_and_quota("leased", json!("lease")));
    let (on_exact, exact_id) = gw.create_key(user, json!({"planId": exact}));
    // A key's own `counting` wins over its plan's.
    let (own_exact, own_id) = gw.create_key(user, json!({"planId": leased, "counting": "exact"}));
    let r = gw.admin_get(&format!("/admin/api-keys/{own_id}"));
    assert_eq!(r.json()["counting"], "exact");
    for (key, id) in [(&on_exact, exact_id), (&own_exact, own_id)] {
        let (ok, refused) = burst(&gw, key, 16, 25);
        assert_eq!((ok, refused), (300, 100));
        assert_eq!(gw.key_counts(id), (vec![300, 300], 300));
    }
    assert_eq!(
        gw.lease_admitted(),
        0,
        "an exact key was admitted from a lease"
    );
    assert_eq!(up.requests().len(), 600);
    // Cleared, a key's counting is its plan's again: leased.
    let (third, third_id) = gw.create_key(user, json!({"planId": leased, "counting": "exact"}));
    let r = gw.admin_patch(
        &format!("/admin/api-keys/{third_id}"),
        json!({"counting": null}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["counting"], Value::Null);
    burst(&gw, &third, 8, 12);
    assert!(
        gw.lease_admitted() > 0,
        "the plan's lease counting did not apply"
    );
}

#[test]
fn counting_is_exact_or_lease_and_anything_else_is_refused_naming_it() {
    let (gw, _up, user) = gateway_with_api_route(&[]);
    let quota = json!({"limit": 5, "period": "day"});
    let r = gw.admin_post(
        "/admin/plans",
        json!({"name": "p", "quota": quota, "counting": "exact"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["counting"], "exact");
    let id = r.json()["id"].as_i64().unwrap();
    let r = gw.admin_patch(&format!("/admin/plans/{id}"), json!({"counting": null}));
    assert_eq!(r.json()["counting"], Value::Null);
    for bad in [json!("fast"), json!(1), json!(["exact"])] {
        for r in [
            gw.admin_post(
                "/admin/plans",
                json!({"name": "q", "quota": quota, "counting": bad}),
            ),
            gw.admin_patch(&format!("/admin/plans/{id}"), json!({"counting": bad})),
            gw.admin_post(
                "/admin/api-keys",
                json!({"userId": user, "name": "k", "counting": bad}),
            ),
        ] {
            assert_eq!(r.status, 400, "{}", r.body);
            assert_eq!(r.json()["error"]["field"], "counting", "{}", r.body);
        }
    }
}
