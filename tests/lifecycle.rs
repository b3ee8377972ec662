//! A key's life after minting: rotation with a grace period (admin and `/me/rotate`),
//! pause and resume, and metadata on keys and users with the user's `externalId`.

use crate::util::Gateway;
use serde_json::json;
use std::time::Duration;

fn setup() -> (Gateway, crate::util::Upstream, i64) {
    crate::util::gateway_with_api_route(&[])
}

fn stat(gw: &Gateway, name: &str) -> i64 {
    gw.admin_get("/admin/stats").json()[name].as_i64().unwrap()
}

#[test]
fn a_rotated_key_keeps_its_id_and_both_secrets_work_until_the_grace_ends() {
    let (gw, _up, user) = setup();
    let (old, id) = gw.create_key(user, json!({"metadata": {"tier": "gold"}}));
    assert_eq!(gw.with_key("GET", "/api/x", &old).status, 200);
    let r = gw.admin_post(
        &format!("/admin/api-keys/{id}/rotate"),
        json!({"graceSecs": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let new = v["rawKey"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(v["id"], id);
    assert_eq!(v["metadata"], json!({"tier": "gold"}));
    assert!(new.starts_with(v["keyPrefix"].as_str().unwrap()));
    assert!(old.starts_with(v["keyPrefix"].as_str().unwrap()));
    assert!(v["rotatedAt"].is_string() && v["previousKeyValidUntil"].is_string());
    // Both secrets work, and after one use each both are answered from the cache.
    assert_eq!(gw.with_key("GET", "/api/x", &new).status, 200);
    assert_eq!(gw.with_key("GET", "/api/x", &old).status, 200);
    let bcrypts = stat(&gw, "bcryptVerifications");
    for _ in 0..3 {
        assert_eq!(gw.with_key("GET", "/api/x", &new).status, 200);
        assert_eq!(gw.with_key("GET", "/api/x", &old).status, 200);
    }
    assert_eq!(stat(&gw, "bcryptVerifications"), bcrypts);
    std::thread::sleep(Duration::from_millis(2_200));
    let r = gw.with_key("GET", "/api/x", &old);
    assert_eq!((r.status, r.code()), (401, "rotated_api_key".into()));
    assert_eq!(gw.with_key("GET", "/api/x", &new).status, 200);
    // Every admitted request, through either secret, was logged under the one key.
    assert_eq!(gw.wait_for_log_rows(11), 11);
    let mut db = gw.db();
    let ids: Vec<Option<i64>> = db
        .query(
            "SELECT DISTINCT api_key_id FROM request_logs WHERE status = 200",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![Some(id)]);
}

#[test]
fn grace_zero_ends_the_old_secret_at_once_and_other_secrets_stay_invalid() {
    let (gw, _up, user) = setup();
    // Never used before the rotation, so the old secret is judged by bcrypt, not the cache.
    let (old, id) = gw.create_key(user, json!({}));
    let r = gw.admin_post(
        &format!("/admin/api-keys/{id}/rotate"),
        json!({"graceSecs": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.json()["rawKey"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let r = gw.with_key("GET", "/api/x", &old);
        assert_eq!((r.status, r.code()), (401, "rotated_api_key".into()));
    }
    assert_eq!(gw.with_key("GET", "/api/x", &new).status, 200);
    let wrong = format!("{}{}", &old[..16], "A".repeat(32));
    let r = gw.with_key("GET", "/api/x", &wrong);
    assert_eq!((r.status, r.code()), (401, "invalid_api_key".into()));
    // A second rotation forgets the first secret: it is now merely wrong.
    let r = gw.admin_post(
        &format!("/admin/api-keys/{id}/rotate"),
        json!({"graceSecs": 60}),
    );
    let newer = r.json()["rawKey"].as_str().unwrap().to_string();
    assert_eq!(gw.with_key("GET", "/api/x", &old).code(), "invalid_api_key");
    assert_eq!(gw.with_key("GET", "/api/x", &new).status, 200);
    assert_eq!(gw.with_key("GET", "/api/x", &newer).status, 200);
}

#[test]
fn rotation_bodies_are_checked_and_revoked_keys_cannot_be_rotated() {
    let (gw, _up, user) = setup();
    let (_, id) = gw.create_key(user, json!({}));
    let path = format!("/admin/api-keys/{id}/rotate");
    for (body, field) in [
        (json!({"graceSecs": -1}), "graceSecs"),
        (json!({"graceSecs": 2_592_001}), "graceSecs"),
        (json!({"graceSecs": "1h"}), "graceSecs"),
        (json!({"grace": 1}), "grace"),
    ] {
        let r = gw.admin_post(&path, body.clone());
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    // No body: the default grace, a day.
    let r = gw.admin_raw("POST", &path, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let until = r.json()["previousKeyValidUntil"]
        .as_str()
        .unwrap()
        .to_string();
    let until = chrono::DateTime::parse_from_rfc3339(&until).unwrap();
    let left = until
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((86_300..=86_400).contains(&left), "{left}");
    assert_eq!(
        gw.admin_post("/admin/api-keys/999999/rotate", json!({}))
            .status,
        404
    );
    assert_eq!(
        gw.admin_delete(&format!("/admin/api-keys/{id}")).status,
        200
    );
    assert_eq!(gw.admin_post(&path, json!({})).status, 409);
}

#[test]
fn a_key_holder_rotates_its_own_key_through_me_rotate() {
    let (gw, _up, user) = setup();
    let (old, id) = gw.create_key(user, json!({"scopes": ["read"]}));
    let r = gw.request("GET", "/me/rotate", &[("x-api-key", &old)], None);
    assert_eq!(r.status, 405);
    let r = gw.request(
        "POST",
        "/me/rotate",
        &[("x-api-key", &old)],
        Some(br#"{"graceSecs":0}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], id);
    let new = r.json()["rawKey"].as_str().unwrap().to_string();
    assert_eq!(gw.with_key("GET", "/me", &old).code(), "rotated_api_key");
    let me = gw.with_key("GET", "/me", &new);
    assert_eq!((me.status, me.json()["keyId"].as_i64()), (200, Some(id)));
    // An empty body takes the default grace; a field it does not take is refused.
    let r = gw.request(
        "POST",
        "/me/rotate",
        &[("x-api-key", &new)],
        Some(b"{\"x\":1}"),
    );
    assert_eq!(r.json()["error"]["field"], "x");
    let r = gw.request("POST", "/me/rotate", &[("x-api-key", &new)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.with_key("GET", "/me", &new).status, 200);
    assert_eq!(
        gw.request("POST", "/me/rotate", &[], None).code(),
        "missing_api_key"
    );
}

#[test]
fn a_paused_key_is_refused_at_once_and_works_again_when_resumed() {
    let (gw, _up, user) = setup();
    let (key, id) = gw.create_key(user, json!({}));
    let path = format!("/admin/api-keys/{id}");
    assert_eq!(gw.with_key("GET", "/api/x", &key).status, 200);
    let r = gw.admin_patch(&path, json!({"isActive": false}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["isActive"], false);
    assert!(r.json()["pausedAt"].is_string());
    assert!(r.json()["revokedAt"].is_null());
    let r = gw.with_key("GET", "/api/x", &key);
    assert_eq!((r.status, r.code()), (401, "inactive_api_key".into()));
    let r = gw.admin_patch(&path, json!({"isActive": true}));
    assert_eq!(r.json()["isActive"], true);
    assert!(r.json()["pausedAt"].is_null());
    assert_eq!(gw.with_key("GET", "/api/x", &key).status, 200);
    let r = gw.admin_patch(&path, json!({"isActive": "no"}));
    assert_eq!(r.json()["error"]["field"], "isActive");
    // Revocation stays final.
    assert_eq!(gw.admin_delete(&path).status, 200);
    assert_eq!(gw.admin_patch(&path, json!({"isActive": true})).status, 409);
    assert_eq!(gw.with_key("GET", "/api/x", &key).code(), "revoked_api_key");
}

#[test]
fn metadata_and_external_ids_are_kept_returned_and_searchable() {
    let gw = Gateway::start();
    let r = gw.admin_post(
        "/admin/users",
        json!({"email": "a@example.com", "name": "A", "externalId": "cus_1",
               "metadata": {"crm": {"owner": "ada"}}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let user = r.json()["id"].as_i64().unwrap();
    assert_eq!(r.json()["externalId"], "cus_1");
    let r = gw.admin_post(
        "/admin/users",
        json!({"email": "b@example.com", "name": "B", "externalId": "cus_1"}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let found = gw.admin_get("/admin/users?externalId=cus_1").json();
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], user);
    assert_eq!(found[0]["metadata"], json!({"crm": {"owner": "ada"}}));
    assert_eq!(
        gw.admin_get("/admin/users?externalId=cus_2").json(),
        json!([])
    );
    let big = json!({"notes": "x".repeat(4 * 1024)});
    for (body, field) in [
        (json!({"metadata": big}), "metadata"),
        (json!({"metadata": [1]}), "metadata"),
        (json!({"metadata": {"a": "\u{0}"}}), "metadata"),
        (json!({"externalId": ""}), "externalId"),
        (json!({"externalId": 7}), "externalId"),
    ] {
        let r = gw.admin_patch(&format!("/admin/users/{user}"), body.clone());
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    let r = gw.admin_patch(
        &format!("/admin/users/{user}"),
        json!({"externalId": null, "metadata": {"plan": "x"}}),
    );
    assert!(r.json()["externalId"].is_null());
    assert_eq!(r.json()["metadata"], json!({"plan": "x"}));
    let r = gw.admin_patch(
        &format!("/admin/users/{user}"),
        json!({"externalId": "cus_9"}),
    );
    assert_eq!(r.json()["externalId"], "cus_9");

    let (key, id) = gw.create_key(user, json!({"metadata": {"app": "ios"}}));
    assert_eq!(
        gw.admin_get(&format!("/admin/api-keys/{id}")).json()["metadata"],
        json!({"app": "ios"})
    );
    let me = gw.with_key("GET", "/me", &key).json();
    assert_eq!(me["metadata"], json!({"app": "ios"}));
    assert_eq!(
        me["user"],
        json!({"externalId": "cus_9", "metadata": {"plan": "x"}})
    );
    let r = gw.admin_patch(&format!("/admin/api-keys/{id}"), json!({"metadata": null}));
    assert_eq!(r.json()["metadata"], json!({}));
    let fresh = gw.create_key(user, json!({})).1;
    assert_eq!(
        gw.admin_get(&format!("/admin/api-keys/{fresh}")).json()["metadata"],
        json!({})
    );
}
