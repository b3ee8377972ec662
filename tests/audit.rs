//! The audit log: one row per admin write (and per `POST /me/rotate`), with who, from
//! where, what, on which record, and the record before and after, never a secret;
//! `GET /admin/audit` with its filter and pages.

use crate::util::{Gateway, ADMIN_SECRET};
use serde_json::{json, Value};

/// Every row, oldest first, through the endpoint.
fn rows(gw: &Gateway) -> Vec<Value> {
    let r = gw.admin_get("/admin/audit");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut all = r.json().as_array().unwrap().clone();
    all.reverse();
    all
}

/// A route's signing secret, set in the walk above: it must never reach the audit log.
const SIGNING_SECRET: &str = "audit-signing-secret-0123456789abcdef";
#[test]
fn every_admin_write_appends_one_row_with_actor_target_and_records_but_no_secret() {
    let gw = Gateway::start();
    let up = crate::util::Upstream::start();
    let ok = |r: crate::util::Resp, want: u16| {
        assert_eq!(r.status, want, "{}", r.body);
        r
    };
    let user = gw.create_user("audit@example.com");
    ok(
        gw.admin_patch(&format!("/admin/users/{user}"), json!({"name": "Renamed"})),
        200,
    );
    ok(
        gw.admin_post(&format!("/admin/users/{user}/quota/reset"), json!({})),
        200,
    );
    let (raw, key) = gw.create_key(user, json!({}));
    ok(
        gw.admin_patch(
            &format!("/admin/api-keys/{key}"),
            json!({"isActive": false}),
        ),
        200,
    );
    ok(
        gw.admin_patch(&format!("/admin/api-keys/{key}"), json!({"isActive": true})),
        200,
    );
    let rotated = ok(
        gw.admin_post(
            &format!("/admin/api-keys/{key}/rotate"),
            json!({"graceSecs": 0}),
        ),
        200,
    );
    let raw2 = rotated.json()["rawKey"].as_str().unwrap().to_string();
    let mine = gw.request("POST", "/me/rotate", &[("x-api-key", &raw2)], Some(b"{}"));
    let raw3 = ok(mine, 200).json()["rawKey"].as_str().unwrap().to_string();
    ok(
        gw.admin_post(&format!("/admin/api-keys/{key}/quota/reset"), json!({})),
        200,
    );
    ok(gw.admin_delete(&format!("/admin/api-keys/{key}")), 200);
    let route = gw.create_route(user, "/audited", &up.addr);
    ok(
        gw.admin_patch(
            &format!("/admin/routes/{route}"),
            json!({"timeoutMs": 5000, "signingSecret": SIGNING_SECRET}),
        ),
        200,
    );
    ok(gw.admin_delete(&format!("/admin/routes/{route}")), 204);
    let plan = ok(gw.admin_post("/admin/plans", json!({"name": "basic"})), 201).json()["id"]
        .as_i64()
        .unwrap();
    ok(
        gw.admin_patch(&format!("/admin/plans/{plan}"), json!({"name": "basic 2"})),
        200,
    );
    ok(gw.admin_delete(&format!("/admin/plans/{plan}")), 204);
    ok(gw.admin_delete(&format!("/admin/users/{user}")), 204);

    let all = rows(&gw);
    let (u, k, r, p) = (
        format!("user:{user}"),
        format!("key:{key}"),
        format!("route:{route}"),
        format!("plan:{plan}"),
    );
    let admin = "admin".to_string();
    let by_key = format!("key:{key}");
    let want: Vec<(&str, &String, &String)> = vec![
        ("user.create", &u, &admin),
        ("user.update", &u, &admin),
        ("user.quota_reset", &u, &admin),
        ("key.create", &k, &admin),
        ("key.update", &k, &admin),
        ("key.update", &k, &admin),
        ("key.rotate", &k, &admin),
        ("key.rotate", &k, &by_key),
        ("key.quota_reset", &k, &admin),
        ("key.revoke", &k, &admin),
        ("route.create", &r, &admin),
        ("route.update", &r, &admin),
        ("route.delete", &r, &admin),
        ("plan.create", &p, &admin),
        ("plan.update", &p, &admin),
        ("plan.delete", &p, &admin),
        ("user.delete", &u, &admin),
    ];
    let got: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["target"].as_str().unwrap(),
                a["actor"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str)> = want
        .iter()
        .map(|(a, t, w)| (*a, t.as_str(), w.as_str()))
        .collect();
    assert_eq!(got, want);

    // Creates have no before, deletes no after; a change has both, as the API shows them.
    assert_eq!(all[0]["before"], Value::Null);
    assert_eq!(all[0]["after"]["email"], "audit@example.com");
    assert_eq!(
        (&all[1]["before"]["name"], &all[1]["after"]["name"]),
        (&json!("Test"), &json!("Renamed"))
    );
    assert_eq!(
        (&all[2]["before"], &all[2]["after"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(all[3]["after"]["rawKey"], "[redacted]");
    assert_eq!(
        (&all[4]["before"]["isActive"], &all[4]["after"]["isActive"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(all[6]["after"]["rawKey"], "[redacted]");
    assert!(all[9]["after"]["revokedAt"].is_string());
    assert_eq!(all[11]["after"]["timeoutMs"], 5000);
    assert_eq!(all[12]["after"], Value::Null);
    assert_eq!(all[12]["before"]["prefix"], "/audited");
    assert_eq!(all[14]["after"]["name"], "basic 2");
    assert_eq!(all[16]["before"]["name"], "Renamed");
    for a in &all {
        // hmac by default: the address itself is never kept.
        let ip = a["clientIp"].as_str().unwrap();
        assert!(ip.starts_with("hmac:") && !ip.contains("127.0.0.1"), "{a}");
        assert!(a["at"].is_string() && a["id"].is_i64(), "{a}");
    }

    let mut db = gw.db();
    let table: Vec<String> = db
        .query("SELECT audit_log::text FROM audit_log", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(table.len(), want.len());
    let text = table.join("\n");
    let secrets: Vec<String> = [raw.as_str(), &raw2, &raw3, ADMIN_SECRET, SIGNING_SECRET]
        .iter()
        .flat_map(|s| {
            // The secret part alone, too (the key prefix is meant to be shown).
            let tail = s.rsplit('_').next().unwrap_or(s).to_string();
            [s.to_string(), tail]
        })
        .collect();
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "{s} in the audit log");
    }
    // No bcrypt hash, of any key.
    assert!(!text.contains("$2"), "{text}");
}

#[test]
fn a_write_that_fails_leaves_no_row() {
    let gw = Gateway::start();
    let user = gw.create_user("fails@example.com");
    let plan = gw
        .admin_post("/admin/plans", json!({"name": "used"}))
        .json()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        gw.admin_patch(&format!("/admin/users/{user}"), json!({"planId": plan}))
            .status,
        200
    );
    let before = rows(&gw).len();
    for (method, path, body, status) in [
        (
            "POST",
            "/admin/users".to_string(),
            json!({"email": "nope", "name": "x"}),
            400,
        ),
        (
            "POST",
            "/admin/users".to_string(),
            json!({"email": "fails@example.com", "name": "x"}),
            409,
        ),
        (
            "PATCH",
            format!("/admin/users/{user}"),
            json!({"colour": "red"}),
            400,
        ),
        (
            "PATCH",
            "/admin/users/999999".to_string(),
            json!({"name": "x"}),
            404,
        ),
        ("DELETE", format!("/admin/plans/{plan}"), Value::Null, 409),
        (
            "POST",
            "/admin/api-keys/999999/rotate".to_string(),
            json!({}),
            404,
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let r = gw.admin(method, &path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
    }
    assert_eq!(rows(&gw).len(), before);
}

#[test]
fn the_log_pages_newest_first_filters_by_target_and_refuses_unknown_parameters() {
    let gw = Gateway::start_with(&[("TOLLGATE_LOG_CLIENT_IP", "raw")]);
    let a = gw.create_user("a@example.com");
    let b = gw.create_user("b@example.com");
    for n in 0..3 {
        let r = gw.admin_patch(
            &format!("/admin/users/{a}"),
            json!({"name": format!("A{n}")}),
        );
        assert_eq!(r.status, 200);
    }
    // Raw mode keeps the address.
    assert_eq!(rows(&gw)[0]["clientIp"], "127.0.0.1");

    let target = format!("user:{a}");
    let first = gw.admin_get(&format!("/admin/audit?target={target}&limit=2"));
    assert_eq!(first.status, 200);
    let page: Vec<Value> = first.json().as_array().unwrap().clone();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["after"]["name"], "A2");
    assert_eq!(page[1]["after"]["name"], "A1");
    let cursor = first
        .header("x-next-cursor")
        .expect("a next page")
        .to_string();
    assert_eq!(cursor, page[1]["id"].to_string());
    let next = gw.admin_get(&format!(
        "/admin/audit?target={target}&limit=2&before={cursor}"
    ));
    let rest: Vec<Value> = next.json().as_array().unwrap().clone();
    let actions: Vec<&str> = rest.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["user.update", "user.create"]);
    assert!(rest.iter().all(|r| r["target"] == json!(target)));
    assert_eq!(next.header("x-next-cursor"), None);
    let other = gw
        .admin_get(&format!("/admin/audit?target=user:{b}"))
        .json();
    assert_eq!(other.as_array().unwrap().len(), 1);

    for (query, field) in [
        ("colour=red", "colour"),
        ("target=user", "target"),
        ("target=widget:1", "target"),
        ("limit=0", "limit"),
        ("before=x", "before"),
    ] {
        let r = gw.admin_get(&format!("/admin/audit?{query}"));
        assert_eq!(r.status, 400, "{query}");
        assert!(r.body.contains(field), "{query}: {}", r.body);
    }
    assert_eq!(gw.admin_delete("/admin/audit").status, 405);
    assert_eq!(gw.get("/admin/audit", &[]).status, 401);
}
