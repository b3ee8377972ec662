//! Plans and the limit fields of keys and users through the admin API: plan CRUD and its
//! 409s, `planId` / `limits` / `quota` on keys and users (absent keeps, null clears),
//! `PATCH /admin/users/:id`, quota resets, and bodies with fields no endpoint takes. How
//! the gateway counts by these fields is tested in limits (and across replicas in
//! tests/cluster.rs).

use crate::util::Gateway;
use serde_json::{json, Value};

fn limits() -> Value {
    json!([{"name": "burst", "limit": 10, "windowSecs": 1},
           {"name": "day", "limit": 50000, "windowSecs": 86400}])
}

fn quota() -> Value {
    json!({"limit": 50000, "period": "month", "anchor": "created"})
}

fn create_plan(gw: &Gateway, name: &str) -> i64 {
    let r = gw.admin_post(
        "/admin/plans",
        json!({"name": name, "limits": limits(), "quota": quota()}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_i64().unwrap()
}

/// Asserts a 400 `invalid_field` naming `field`.
fn assert_refused(r: &crate::util::Resp, field: &str, what: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_field"),
        "{what}: {}",
        r.body
    );
    assert_eq!(r.json()["error"]["field"], field, "{what}: {}", r.body);
}

#[test]
fn plans_can_be_created_listed_fetched_changed_and_deleted() {
    let gw = Gateway::start();
    let r = gw.admin_post(
        "/admin/plans",
        json!({"name": "pro", "limits": limits(), "quota": quota()}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let pro = r.json();
    let id = pro["id"].as_i64().unwrap();
    assert_eq!(pro["name"], "pro");
    assert_eq!(pro["limits"], limits());
    assert_eq!(pro["quota"], quota());
    assert_eq!(
        (pro["keys"].clone(), pro["users"].clone()),
        (json!(0), json!(0))
    );
    assert!(pro["createdAt"].is_string() && pro["updatedAt"].is_string());
    // Limits default to none, the quota's anchor to the calendar.
    let free = gw
        .admin_post(
            "/admin/plans",
            json!({"name": "free", "quota": {"limit": 100, "period": "day"}}),
        )
        .json();
    assert_eq!(free["limits"], json!([]));
    assert_eq!(
        free["quota"],
        json!({"limit": 100, "period": "day", "anchor": "calendar"})
    );
    assert_eq!(gw.admin_get(&format!("/admin/plans/{id}")).json(), pro);
    let list = gw.admin_get("/admin/plans").json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        (list[0]["name"].clone(), list[1]["name"].clone()),
        (json!("pro"), json!("free"))
    );

    // PATCH: absent keeps, quota null clears, limits null is no limits.
    let r = gw.admin_patch(&format!("/admin/plans/{id}"), json!({"name": "pro-2"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let renamed = r.json();
    assert_eq!(renamed["name"], "pro-2");
    assert_eq!(
        (renamed["limits"].clone(), renamed["quota"].clone()),
        (limits(), quota())
    );
    let r = gw.admin_patch(&format!("/admin/plans/{id}"), json!({"quota": null}));
    assert_eq!(r.json()["quota"], Value::Null);
    assert_eq!(r.json()["limits"], limits());
    let r = gw.admin_patch(&format!("/admin/plans/{id}"), json!({"limits": null}));
    assert_eq!(r.json()["limits"], json!([]));
    let one = json!([{"name": "minute", "limit": 600, "windowSecs": 60}]);
    let r = gw.admin_patch(
        &format!("/admin/plans/{id}"),
        json!({"limits": one, "quota": quota()}),
    );
    assert_eq!(
        (r.json()["limits"].clone(), r.json()["quota"].clone()),
        (one, quota())
    );
    assert_eq!(gw.admin_get(&format!("/admin/plans/{id}")).json(), r.json());

    assert_eq!(gw.admin_delete(&format!("/admin/plans/{id}")).status, 204);
    let gone = gw.admin_get(&format!("/admin/plans/{id}"));
    assert_eq!((gone.status, gone.code().as_str()), (404, "not_found"));
    for (method, body) in [("PATCH", Some(json!({"name": "x"}))), ("DELETE", None)] {
        let r = gw.admin(method, &format!("/admin/plans/{id}"), body);
        assert_eq!(r.status, 404, "{method}");
    }
    assert_eq!(gw.admin("PUT", "/admin/plans", None).status, 405);
}

#[test]
fn plan_fields_are_validated_naming_the_field() {
    let gw = Gateway::start();
    let id = create_plan(&gw, "pro");
    let limit = |name: &str, limit: Value, window: Value| json!([{"name": name, "limit": limit, "windowSecs": window}]);
    let seventeen: Vec<Value> = (0..17)
        .map(|i| json!({"name": format!("l{i}"), "limit": 1, "windowSecs": 1}))
        .collect();
    let cases = [
        (json!({"limits": []}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "p", "limits": {}}), "limits"),
        (json!({"name": "p", "limits": [7]}), "limits"),
        (
            json!({"name": "p", "limits": limit("a", json!(0), json!(1))}),
            "limits",
        ),
        (
            json!({"name": "p", "limits": limit("a", json!(1.5), json!(1))}),
            "limits",
        ),
        (
            json!({"name": "p", "limits": limit("a", json!(1), json!(0))}),
            "limits",
        ),
        (
            json!({"name": "p", "limits": limit("a", json!(1), json!(86401))}),
            "limits",
        ),
        (
            json!({"name": "p", "limits": limit("quota", json!(1), json!(1))}),
            "limits",
        ),
        (
            json!({"name": "p", "limits": limit("user.a", json!(1), json!(1))}),
            "limits",
        ),
        (
            json!({"name": "p", "limits": limit("", json!(1), json!(1))}),
            "limits",
        ),
        (
            json!({"name": "p", "limits": [{"name": "a", "limit": 1, "windowSecs": 1},
                                           {"name": "a", "limit": 2, "windowSecs": 60}]}),
            "limits",
        ),
        (json!({"name": "p", "limits": seventeen}), "limits"),
        (
            json!({"name": "p", "limits": [{"name": "a", "limit": 1, "windowSecs": 1, "x": 1}]}),
            "limits.x",
        ),
        (json!({"name": "p", "quota": 5}), "quota"),
        (
            json!({"name": "p", "quota": {"limit": 0, "period": "day"}}),
            "quota",
        ),
        (
            json!({"name": "p", "quota": {"limit": 5, "period": "week"}}),
            "quota",
        ),
        (json!({"name": "p", "quota": {"limit": 5}}), "quota"),
        (
            json!({"name": "p", "quota": {"limit": 5, "period": "day", "anchor": "noon"}}),
            "quota",
        ),
        (
            json!({"name": "p", "quota": {"limit": 5, "period": "day", "reset": 1}}),
            "quota.reset",
        ),
        (json!({"name": "p", "rateLimit": 5}), "rateLimit"),
    ];
    for (body, field) in &cases {
        assert_refused(
            &gw.admin_post("/admin/plans", body.clone()),
            field,
            &body.to_string(),
        );
    }
    for (body, field) in [
        (json!({"name": null}), "name"),
        (json!({"limits": 5}), "limits"),
        (json!({"quota": {"limit": -1, "period": "day"}}), "quota"),
        (json!({"keys": 3}), "keys"),
    ] {
        let r = gw.admin_patch(&format!("/admin/plans/{id}"), body.clone());
        assert_refused(&r, field, &body.to_string());
    }
    let n: i64 = gw
        .db()
        .query_one("SELECT count(*) FROM plans", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "a refused body created a plan");
    assert_eq!(
        gw.admin_get(&format!("/admin/plans/{id}")).json()["name"],
        "pro"
    );
}

#[test]
fn a_plan_name_is_unique_and_a_plan_in_use_cannot_be_deleted() {
    let gw = Gateway::start();
    let pro = create_plan(&gw, "pro");
    let free = create_plan(&gw, "free");
    let dup = gw.admin_post("/admin/plans", json!({"name": "pro"}));
    assert_eq!((dup.status, dup.code().as_str()), (409, "conflict"));
    let dup = gw.admin_patch(&format!("/admin/plans/{free}"), json!({"name": "pro"}));
    assert_eq!((dup.status, dup.code().as_str()), (409, "conflict"));

    // In use by a key directly.
    let user = gw.create_user("a@example.com");
    let (_, key) = gw.create_key(user, json!({"planId": pro}));
    let plan = gw.admin_get(&format!("/admin/plans/{pro}")).json();
    assert_eq!(
        (plan["keys"].clone(), plan["users"].clone()),
        (json!(1), json!(0))
    );
    let r = gw.admin_delete(&format!("/admin/plans/{pro}"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "conflict"),
        "{}",
        r.body
    );
    // In use by a user (whose keys inherit it).
    let r = gw.admin_patch(&format!("/admin/users/{user}"), json!({"planId": free}));
    assert_eq!(r.status, 200, "{}", r.body);
    let plan = gw.admin_get(&format!("/admin/plans/{free}")).json();
    assert_eq!(
        (plan["keys"].clone(), plan["users"].clone()),
        (json!(0), json!(1))
    );
    let r = gw.admin_delete(&format!("/admin/plans/{free}"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "conflict"),
        "{}",
        r.body
    );

    // Moved off, each can go.
    gw.admin_patch(&format!("/admin/api-keys/{key}"), json!({"planId": null}));
    gw.admin_patch(&format!("/admin/users/{user}"), json!({"planId": null}));
    assert_eq!(gw.admin_delete(&format!("/admin/plans/{pro}")).status, 204);
    assert_eq!(gw.admin_delete(&format!("/admin/plans/{free}")).status, 204);
    assert_eq!(gw.admin_get("/admin/plans").json(), json!([]));
}

#[test]
fn a_key_gets_the_default_rate_limit_only_when_nothing_else_limits_it() {
    let gw = Gateway::start();
    let plan = create_plan(&gw, "pro");
    let plain = gw.create_user("plain@example.com");
    let on_plan = gw.admin_post(
        "/admin/users",
        json!({"email": "p@example.com", "name": "P", "planId": plan}),
    );
    assert_eq!(on_plan.status, 201, "{}", on_plan.body);
    assert_eq!(on_plan.json()["planId"], plan);
    let on_plan = on_plan.json()["id"].as_i64().unwrap();
    let key = |user: i64, extra: Value| {
        let (_, id) = gw.create_key(user, extra);
        gw.admin_get(&format!("/admin/api-keys/{id}")).json()
    };

    // Today's key, unchanged: the default limit, no plan, nothing of its own.
    let k = key(plain, json!({}));
    assert_eq!(k["rateLimit"], 100);
    for field in ["planId", "limits", "quota"] {
        assert!(k[field].is_null(), "{field}: {k}");
    }
    assert_eq!(k["effective"], json!({"planId": null}));
    // On a plan, its own or its user's: no limit of its own unless given.
    let k = key(plain, json!({"planId": plan}));
    assert!(k["rateLimit"].is_null(), "{k}");
    assert_eq!(
        (k["planId"].clone(), k["effective"]["planId"].clone()),
        (json!(plan), json!(plan))
    );
    let k = key(on_plan, json!({}));
    assert!(k["rateLimit"].is_null() && k["planId"].is_null(), "{k}");
    assert_eq!(k["effective"]["planId"], plan);
    let k = key(on_plan, json!({"rateLimit": 5}));
    assert_eq!(k["rateLimit"], 5);
    // Its own limits replace the default too; a quota alone does not.
    let k = key(plain, json!({"limits": limits()}));
    assert!(k["rateLimit"].is_null(), "{k}");
    assert_eq!(k["limits"], limits());
    let k = key(plain, json!({"quota": quota()}));
    assert_eq!(
        (k["rateLimit"].clone(), k["quota"].clone()),
        (json!(100), quota())
    );

    // `rateLimit` is the limit named `default`: both on one key names it twice.
    let twice = json!([{"name": "default", "limit": 5, "windowSecs": 60}]);
    let r = gw.admin_post(
        "/admin/api-keys",
        json!({"userId": plain, "name": "k", "rateLimit": 5, "limits": twice}),
    );
    assert_refused(&r, "limits", "rateLimit with a limit named default");
    let r = gw.admin_post(
        "/admin/api-keys",
        json!({"userId": plain, "name": "k", "planId": 987654}),
    );
    assert_refused(&r, "planId", "a plan that does not exist");
    let r = gw.admin_post(
        "/admin/api-keys",
        json!({"userId": plain, "name": "k", "planId": "pro"}),
    );
    assert_refused(&r, "planId", "a plan named, not numbered");
}

#[test]
fn patching_a_key_keeps_absent_fields_and_clears_null_ones() {
    let gw = Gateway::start();
    let plan = create_plan(&gw, "pro");
    let user = gw.create_user("a@example.com");
    let (_, id) = gw.create_key(user, json!({"rateLimit": 7}));
    let path = format!("/admin/api-keys/{id}");
    let r = gw.admin_patch(
        &path,
        json!({"planId": plan, "limits": limits(), "quota": quota()}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let k = gw.admin_get(&path).json();
    assert_eq!(k["planId"], plan);
    assert_eq!(
        (k["limits"].clone(), k["quota"].clone()),
        (limits(), quota())
    );
    assert_eq!(k["rateLimit"], 7, "absent keeps");

    // A limit named default beside the stored rateLimit; then with it cleared.
    let named_default = json!([{"name": "default", "limit": 3, "windowSecs": 1}]);
    let r = gw.admin_patch(&path, json!({"limits": named_default}));
    assert_refused(&r, "limits", "a default limit beside the stored rateLimit");
    let r = gw.admin_patch(&path, json!({"limits": named_default, "rateLimit": null}));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = gw.admin_patch(&path, json!({"rateLimit": 9}));
    assert_refused(&r, "limits", "a rateLimit beside the stored default limit");

    let r = gw.admin_patch(
        &path,
        json!({"limits": null, "quota": null, "planId": null}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let k = gw.admin_get(&path).json();
    for field in ["planId", "limits", "quota", "rateLimit"] {
        assert!(k[field].is_null(), "{field}: {k}");
    }
    assert_eq!(k["name"], "test key");
    let r = gw.admin_patch(&path, json!({"rateLimit": 11}));
    assert_eq!(r.json()["rateLimit"], 11);
    for (body, field) in [
        (json!({"planId": 987654}), "planId"),
        (json!({"planId": 0}), "planId"),
        (json!({"limits": [{"name": "a"}]}), "limits"),
        (json!({"quota": {"limit": 1, "period": "year"}}), "quota"),
        (json!({"rateLimit": "5"}), "rateLimit"),
    ] {
        assert_refused(
            &gw.admin_patch(&path, body.clone()),
            field,
            &body.to_string(),
        );
    }
    assert_eq!(gw.admin_get(&path).json()["rateLimit"], 11);
}

#[test]
fn users_can_be_patched_keeping_absent_fields_and_clearing_null_ones() {
    let gw = Gateway::start();
    let plan = create_plan(&gw, "pro");
    let user = gw.create_user("a@example.com");
    gw.create_user("taken@example.com");
    let (_, key) = gw.create_key(user, json!({}));
    let path = format!("/admin/users/{user}");
    let r = gw.admin_patch(
        &path,
        json!({"planId": plan, "limits": limits(), "quota": quota()}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let u = gw.admin_get(&path).json();
    assert_eq!(u["planId"], plan);
    assert_eq!(
        (u["limits"].clone(), u["quota"].clone()),
        (limits(), quota())
    );
    assert_eq!(
        (u["email"].clone(), u["name"].clone()),
        (json!("a@example.com"), json!("Test"))
    );
    // Its keys inherit the plan: their record says so at once.
    let k = gw.admin_get(&format!("/admin/api-keys/{key}")).json();
    assert_eq!(
        (k["planId"].clone(), k["effective"]["planId"].clone()),
        (Value::Null, json!(plan))
    );

    let r = gw.admin_patch(&path, json!({"email": "b@example.com", "name": "B"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(
        (u["email"].clone(), u["name"].clone()),
        (json!("b@example.com"), json!("B"))
    );
    assert_eq!(u["planId"], plan, "absent keeps");
    let r = gw.admin_patch(
        &path,
        json!({"planId": null, "limits": null, "quota": null}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for field in ["planId", "limits", "quota"] {
        assert!(r.json()[field].is_null(), "{field}: {}", r.body);
    }
    let k = gw.admin_get(&format!("/admin/api-keys/{key}")).json();
    assert_eq!(k["effective"]["planId"], Value::Null);

    let dup = gw.admin_patch(&path, json!({"email": "taken@example.com"}));
    assert_eq!((dup.status, dup.code().as_str()), (409, "conflict"));
    for (body, field) in [
        (json!({"email": null}), "email"),
        (json!({"email": "nope"}), "email"),
        (json!({"name": null}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"planId": 987654}), "planId"),
        (json!({"planId": -1}), "planId"),
        (json!({"limits": "many"}), "limits"),
        (json!({"quota": {"period": "day"}}), "quota"),
    ] {
        assert_refused(
            &gw.admin_patch(&path, body.clone()),
            field,
            &body.to_string(),
        );
    }
    let missing = gw.admin_patch("/admin/users/987654", json!({"name": "x"}));
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "not_found")
    );
    // Creating a user takes the same fields.
    let r = gw.admin_post(
        "/admin/users",
        json!({"email": "c@example.com", "name": "C", "limits": limits(), "quota": quota()}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (r.json()["limits"].clone(), r.json()["quota"].clone()),
        (limits(), quota())
    );
    assert!(r.json()["planId"].is_null());
}

#[test]
fn a_quota_reset_zeroes_the_period_of_a_key_or_a_user_and_404s_when_absent() {
    let gw = Gateway::start();
    let user = gw.create_user("a@example.com");
    let (_, key) = gw.create_key(user, json!({"quota": quota()}));
    let mut db = gw.db();
    db.execute("UPDATE limit_counters SET quota_used = 42", &[])
        .unwrap();
    let used = |db: &mut postgres::Client, kind: i8, id: i64| -> i64 {
        db.query_one(
            "SELECT quota_used FROM limit_counters WHERE kind = $1 AND owner_id = $2",
            &[&kind, &id],
        )
        .unwrap()
        .get(0)
    };
    let r = gw.admin_post(&format!("/admin/api-keys/{key}/quota/reset"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"id": key, "quotaReset": true}));
    assert_eq!(used(&mut db, b'k' as i8, key), 0);
    assert_eq!(used(&mut db, b'u' as i8, user), 42, "the user's is its own");
    let r = gw.admin("POST", &format!("/admin/users/{user}/quota/reset"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"id": user, "quotaReset": true}));
    assert_eq!(used(&mut db, b'u' as i8, user), 0);
    for path in [
        "/admin/api-keys/987654/quota/reset",
        "/admin/users/987654/quota/reset",
    ] {
        let r = gw.admin("POST", path, None);
        assert_eq!((r.status, r.code().as_str()), (404, "not_found"), "{path}");
    }
    let r = gw.admin("GET", &format!("/admin/api-keys/{key}/quota/reset"), None);
    assert_eq!(r.status, 405);
}

/// A misspelt field that were ignored would leave the setting it meant unchanged behind a
/// 2xx; every admin body names the field it does not take.
#[test]
fn unknown_body_fields_are_refused_naming_them_and_change_nothing() {
    let gw = Gateway::start();
    let user = gw.create_user("a@example.com");
    let (_, key) = gw.create_key(user, json!({}));
    let route = gw.create_route(user, "/r", "http://127.0.0.1:9");
    let plan = create_plan(&gw, "pro");
    let cases = [
        (
            "POST",
            "/admin/users".to_string(),
            json!({"email": "b@example.com", "name": "B", "plan": 1}),
            "plan",
        ),
        (
            "PATCH",
            format!("/admin/users/{user}"),
            json!({"rate_limit": 5}),
            "rate_limit",
        ),
        (
            "POST",
            "/admin/api-keys".to_string(),
            json!({"userId": user, "name": "k", "ratelimit": 5}),
            "ratelimit",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key}"),
            json!({"name": "x", "expires": null}),
            "expires",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key}"),
            json!({"userId": user}),
            "userId",
        ),
        (
            "POST",
            "/admin/plans".to_string(),
            json!({"name": "p", "limit": 5}),
            "limit",
        ),
        (
            "PATCH",
            format!("/admin/plans/{plan}"),
            json!({"name": "x", "id": 3}),
            "id",
        ),
        (
            "POST",
            "/admin/routes".to_string(),
            json!({"userId": user, "prefix": "/a", "targetUrl": "http://h", "timeout": 5}),
            "timeout",
        ),
        (
            "PATCH",
            format!("/admin/routes/{route}"),
            json!({"prefix": "/b", "userId": user}),
            "userId",
        ),
    ];
    // Inside the objects a body holds, named by their path.
    let limit = json!({"name": "m", "limit": 5, "windowSec": 60});
    let nested = [
        (
            "POST",
            "/admin/plans".to_string(),
            json!({"name": "p", "limits": [limit]}),
            "limits.windowSec",
        ),
        (
            "PATCH",
            format!("/admin/users/{user}"),
            json!({"quota": {"limit": 5, "period": "day", "anchr": "created"}}),
            "quota.anchr",
        ),
        (
            "PATCH",
            format!("/admin/api-keys/{key}"),
            json!({"limits": [limit]}),
            "limits.windowSec",
        ),
        (
            "PUT",
            format!("/admin/routes/{route}"),
            json!({"cors": {"allowedOrigin": ["https://a.example"]}}),
            "cors.allowedOrigin",
        ),
    ];
    // Every admin write the document lists (and a key's own rotation), including those
    // that take no body at all, refuses a misspelt field before anything else.
    let doc = gw.get("/openapi.json", &[]).json();
    let mut every = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch", "delete"] {
            if ops.get(method).is_some() && (path.starts_with("/admin/") || path == "/me/rotate") {
                let concrete = path.replace("{id}", &id_for(path, user, key, route, plan));
                every.push((method.to_uppercase(), concrete));
            }
        }
    }
    assert!(every.len() >= 17, "{every:?}");
    let (raw_key, _) = gw.create_key(user, json!({"name": "own"}));
    let audited = gw.audit_rows();
    for (method, path) in &every {
        let body = json!({"stripprefix": true});
        let r = if path == "/me/rotate" {
            let raw = body.to_string();
            let headers = [
                ("x-api-key", raw_key.as_str()),
                ("content-type", "application/json"),
            ];
            gw.request("POST", path, &headers, Some(raw.as_bytes()))
        } else {
            gw.admin(method, path, Some(body))
        };
        assert_refused(&r, "stripprefix", &format!("{method} {path}"));
    }
    for (method, path, body, field) in cases.iter().chain(&nested) {
        let r = gw.admin(method, path, Some(body.clone()));
        assert_refused(&r, field, &format!("{method} {path} {body}"));
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field"));
    }
    let count = |table: &str| -> i64 {
        gw.db()
            .query_one(&format!("SELECT count(*) FROM {table}") as &str, &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(
        (
            count("users"),
            count("api_keys"),
            count("routes"),
            count("plans")
        ),
        (1, 2, 1, 1)
    );
    // Nothing refused was recorded as done, the own key's rotation included.
    assert_eq!(gw.audit_rows(), audited);
    assert!(
        gw.request("GET", "/me", &[("x-api-key", &raw_key)], None)
            .status
            == 200
    );
    assert_eq!(
        gw.admin_get(&format!("/admin/api-keys/{key}")).json()["name"],
        "test key"
    );
    assert_eq!(
        gw.admin_get(&format!("/admin/routes/{route}")).json()["prefix"],
        "/r"
    );
    assert_eq!(
        gw.admin_get(&format!("/admin/plans/{plan}")).json()["name"],
        "pro"
    );
}

/// The id a document path's `{id}` stands for in the test above.
fn id_for(path: &str, user: i64, key: i64, route: i64, plan: i64) -> String {
    let id = match path.split('/').nth(2) {
        Some("users") => user,
        Some("api-keys") => key,
        Some("routes") => route,
        _ => plan,
    };
    id.to_string()
}

/// Scripts send ids both as numbers and as numeric strings (the admin API has always taken
/// both for `userId`, and `planId` reads the same way); anything else names the field.
#[test]
fn ids_in_bodies_may_be_numeric_strings_and_nothing_else() {
    let gw = Gateway::start();
    let user = gw.create_user("a@example.com");
    let plan = create_plan(&gw, "pro");
    let r = gw.admin_post(
        "/admin/api-keys",
        json!({"userId": user.to_string(), "name": "k", "planId": plan.to_string()}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (r.json()["userId"].clone(), r.json()["planId"].clone()),
        (json!(user), json!(plan))
    );
    for bad in [
        json!("1.5"),
        json!("0x1"),
        json!(" "),
        json!(true),
        json!(1.5),
        json!([1]),
    ] {
        let r = gw.admin_post("/admin/api-keys", json!({"userId": bad, "name": "k"}));
        assert_refused(&r, "userId", &bad.to_string());
        let r = gw.admin_patch(&format!("/admin/users/{user}"), json!({"planId": bad}));
        assert_refused(&r, "planId", &bad.to_string());
    }
}
