//! IP rules (`allowCidrs`, `denyCidrs`) on keys and routes, judged on the client address
//! as resolved through `TOLLGATE_TRUSTED_PROXIES`: clients are told apart with
//! `X-Forwarded-For` from a trusted 127.0.0.1. (CIDR parsing and matching are unit-tested
//! in `src/store/ip_rules.rs`.)

use crate::util::{Gateway, Resp, Upstream};
use serde_json::{json, Value};

const TRUST_LOOPBACK: (&str, &str) = ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1");

fn from(gw: &Gateway, key: &str, path: &str, ip: &str) -> Resp {
    gw.request(
        "GET",
        path,
        &[("x-api-key", key), ("x-forwarded-for", ip)],
        None,
    )
}

fn assert_refused(r: &Resp, ip: &str) {
    assert_eq!(
        (r.status, r.code()),
        (403, "ip_not_allowed".into()),
        "{ip}: {}",
        r.body
    );
}

/// `(status, api_key_id, route_id)` of every logged row, sorted: a row is queued after its
/// answer has been written, so the client's next request may be logged first.
fn logged(gw: &Gateway, n: i64) -> Vec<(i32, Option<i64>, Option<i64>)> {
    assert_eq!(gw.wait_for_log_rows(n), n);
    let mut rows: Vec<(i32, Option<i64>, Option<i64>)> = gw
        .db()
        .query("SELECT status, api_key_id, route_id FROM request_logs", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_key_allow_list_admits_inside_and_refuses_outside_logged_and_not_counted() {
    let gw = Gateway::start_with(&[TRUST_LOOPBACK]);
    let up = Upstream::start();
    let user = gw.create_user("ipkey@example.com");
    let route = gw.create_route(user, "/api", &up.addr);
    let (key, key_id) = gw.create_key(user, json!({"allowCidrs": ["203.0.113.0/24"]}));
    assert_eq!(from(&gw, &key, "/api/a", "203.0.113.9").status, 200);
    for ip in ["198.51.100.1", "203.0.114.1", "2001:db8::1"] {
        assert_refused(&from(&gw, &key, "/api/a", ip), ip);
    }
    // Only the admitted request reached the limits, and the upstream.
    assert_eq!(gw.counted_for_key(Some(key_id)), 1);
    assert_eq!(up.requests().len(), 1);
    // Refused by the key's rules, before a route was looked for.
    let rows = logged(&gw, 4);
    assert_eq!(rows[0], (200, Some(key_id), Some(route)));
    assert_eq!(rows[1..], [(403, Some(key_id), None); 3]);
}

#[test]
fn a_route_deny_list_wins_over_allow_lists_on_the_route_and_the_key() {
    let gw = Gateway::start_with(&[TRUST_LOOPBACK]);
    let up = Upstream::start();
    let user = gw.create_user("iproute@example.com");
    let route = gw.create_route_with(
        user,
        "/api",
        &up.addr,
        json!({"allowCidrs": ["10.0.0.0/8"], "denyCidrs": ["10.1.0.0/16"]}),
    );
    let (key, key_id) = gw.create_key(user, json!({"allowCidrs": ["10.1.2.3"]}));
    let (open_key, open_id) = gw.create_key(user, json!({}));
    // The key allows 10.1.2.3, the route allows 10/8, and the route's deny still wins.
    assert_refused(&from(&gw, &key, "/api/a", "10.1.2.3"), "10.1.2.3");
    assert_eq!(from(&gw, &open_key, "/api/a", "10.2.0.1").status, 200);
    assert_refused(
        &from(&gw, &open_key, "/api/a", "10.1.255.255"),
        "10.1.255.255",
    );
    assert_refused(&from(&gw, &open_key, "/api/a", "192.0.2.1"), "192.0.2.1");
    // Both rule sets apply: inside the route's, outside the key's.
    assert_refused(&from(&gw, &key, "/api/a", "10.2.0.1"), "10.2.0.1");
    assert_eq!(gw.counted_requests(), 1);
    // A refusal by the route's rules names the route; one by the key's rules comes before
    // the route is looked for.
    let mut want = vec![
        (403, Some(key_id), Some(route)),
        (200, Some(open_id), Some(route)),
        (403, Some(open_id), Some(route)),
        (403, Some(open_id), Some(route)),
        (403, Some(key_id), None),
    ];
    want.sort();
    assert_eq!(logged(&gw, 5), want);
}

#[test]
fn cidr_edges_hold_through_the_binary() {
    let gw = Gateway::start_with(&[TRUST_LOOPBACK]);
    let up = Upstream::start();
    let user = gw.create_user("ipedges@example.com");
    gw.create_route(user, "/api", &up.addr);
    // (rules, [(client, admitted)])
    let cases: &[(Value, &[(&str, bool)])] = &[
        (
            json!({"denyCidrs": ["0.0.0.0/0"]}),
            &[
                ("198.51.100.1", false),
                ("255.255.255.255", false),
                ("2001:db8::1", true),
            ],
        ),
        (
            json!({"denyCidrs": ["::/0"]}),
            &[
                ("198.51.100.1", false),
                ("2001:db8::1", false),
                ("::1", false),
            ],
        ),
        (
            json!({"allowCidrs": ["0.0.0.0/0", "::/0"]}),
            &[("198.51.100.1", true), ("2001:db8::1", true)],
        ),
        (
            json!({"allowCidrs": ["192.0.2.7/32"]}),
            &[
                ("192.0.2.7", true),
                ("192.0.2.6", false),
                ("192.0.2.8", false),
            ],
        ),
        (
            json!({"allowCidrs": ["2001:db8::7/128"]}),
            &[
                ("2001:db8::7", true),
                ("2001:db8::8", false),
                ("2001:db8::6", false),
            ],
        ),
        (
            json!({"allowCidrs": ["2001:db8::/32"]}),
            &[
                ("2001:db8:ffff::1", true),
                ("2001:db9::1", false),
                ("192.0.2.1", false),
            ],
        ),
        // A v4-mapped client meets IPv4 rules ...
        (
            json!({"allowCidrs": ["203.0.113.0/24"]}),
            &[("::ffff:203.0.113.5", true), ("::ffff:203.0.114.5", false)],
        ),
        // ... and an IPv6 rule on the mapped range holds IPv4 clients.
        (
            json!({"allowCidrs": ["::ffff:0:0/96"]}),
            &[
                ("198.51.100.1", true),
                ("::ffff:198.51.100.1", true),
                ("2001:db8::1", false),
            ],
        ),
    ];
    for (rules, clients) in cases {
        let (key, _) = gw.create_key(user, rules.clone());
        for (ip, admitted) in *clients {
            let r = from(&gw, &key, "/api/a", ip);
            if *admitted {
                assert_eq!(r.status, 200, "{rules} {ip}: {}", r.body);
            } else {
                assert_refused(&r, &format!("{rules} {ip}"));
            }
        }
    }
}

#[test]
fn rules_are_shown_validated_naming_the_field_and_cleared_by_null() {
    let gw = Gateway::start_with(&[TRUST_LOOPBACK]);
    let up = Upstream::start();
    let user = gw.create_user("ipadmin@example.com");
    let route = gw.create_route(user, "/api", &up.addr);
    let created = gw.admin_post(
        "/admin/api-keys",
        json!({"userId": user, "name": "k", "denyCidrs": ["2001:DB8::/32", "198.51.100.1"]}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let v = created.json();
    assert_eq!(v["denyCidrs"], json!(["2001:db8::/32", "198.51.100.1/32"]));
    assert_eq!(v["allowCidrs"], json!([]));
    let (key, id) = (
        v["rawKey"].as_str().unwrap().to_string(),
        v["id"].as_i64().unwrap(),
    );
    assert_refused(&from(&gw, &key, "/api/a", "198.51.100.1"), "denied");

    let too_many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let bad_bodies = [
        (
            json!({"allowCidrs": ["10.1.2.3/8"]}),
            "allowCidrs",
            "10.0.0.0/8",
        ),
        (
            json!({"denyCidrs": ["example.com"]}),
            "denyCidrs",
            "example.com",
        ),
        (json!({"denyCidrs": ["::/129"]}), "denyCidrs", "0 to 128"),
        (json!({"allowCidrs": too_many}), "allowCidrs", "64"),
        (json!({"allowCidrs": "10.0.0.0/8"}), "allowCidrs", "array"),
        (json!({"allowCidrs": [8]}), "allowCidrs", "array"),
        (
            json!({"allowCidr": ["10.0.0.0/8"]}),
            "allowCidr",
            "unknown field",
        ),
    ];
    for (body, field, says) in &bad_bodies {
        for (path, mut full) in [
            (format!("/admin/api-keys/{id}"), body.clone()),
            (format!("/admin/routes/{route}"), body.clone()),
        ] {
            let r = gw.admin_patch(&path, full.take());
            let e = &r.json()["error"];
            assert_eq!(
                (r.status, e["field"].as_str()),
                (400, Some(*field)),
                "{path} {}",
                r.body
            );
            assert!(e["message"].as_str().unwrap().contains(says), "{}", r.body);
        }
    }
    let mut create_bad = bad_bodies[0].0.clone();
    create_bad["userId"] = json!(user);
    create_bad["name"] = json!("k");
    assert_eq!(gw.admin_post("/admin/api-keys", create_bad).status, 400);

    // PATCH null clears a key's list, and the very next request is judged without it.
    let cleared = gw.admin_patch(&format!("/admin/api-keys/{id}"), json!({"denyCidrs": null}));
    assert_eq!(cleared.json()["denyCidrs"], json!([]), "{}", cleared.body);
    assert_eq!(from(&gw, &key, "/api/a", "198.51.100.1").status, 200);

    // Routes: set, shown, enforced, cleared by null.
    let path = format!("/admin/routes/{route}");
    let set = gw.admin_patch(&path, json!({"allowCidrs": ["192.0.2.0/24"]}));
    assert_eq!(
        set.json()["allowCidrs"],
        json!(["192.0.2.0/24"]),
        "{}",
        set.body
    );
    assert_eq!(
        gw.admin_get(&path).json()["allowCidrs"],
        json!(["192.0.2.0/24"])
    );
    assert_refused(&from(&gw, &key, "/api/a", "198.51.100.1"), "route allow");
    let cleared = gw.admin_patch(&path, json!({"allowCidrs": null}));
    assert_eq!(cleared.json()["allowCidrs"], json!([]));
    assert_eq!(from(&gw, &key, "/api/a", "198.51.100.1").status, 200);
}

/// A key's rules hold wherever the key is used, not only on the gateway path: its
/// analytics and `/me` (rotation included) refuse it from outside its allow list too.
#[test]
fn a_keys_rules_also_hold_on_its_analytics_and_me() {
    let gw = Gateway::start_with(&[TRUST_LOOPBACK]);
    let user = gw.create_user("ipme@example.com");
    let (key, _) = gw.create_key(user, json!({"allowCidrs": ["203.0.113.0/24"]}));
    for path in ["/analytics/overview", "/me"] {
        assert_eq!(from(&gw, &key, path, "203.0.113.9").status, 200, "{path}");
        assert_refused(&from(&gw, &key, path, "198.51.100.1"), path);
    }
    let rotate = gw.request(
        "POST",
        "/me/rotate",
        &[("x-api-key", &key), ("x-forwarded-for", "198.51.100.1")],
        None,
    );
    assert_refused(&rotate, "/me/rotate");
    // The key still works: nothing was rotated.
    assert_eq!(from(&gw, &key, "/me", "203.0.113.9").status, 200);
}
