//! Two gateway instances on one database, as in a horizontally scaled deployment: the
//! limit is counted in Postgres, and admin changes made through one instance reach the
//! other by its periodic sync (TOLLGATE_SYNC_SECS).
mod util;

use serde_json::json;
use std::time::{Duration, Instant};
use util::{Gateway, Upstream};

/// Polls `f` until it returns true or `within` passes; returns whether it did.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_instances_share_one_rate_limit_per_key() {
    let a = Gateway::start_with(&[("TOLLGATE_SYNC_SECS", "1")]);
    let b = a.start_beside(&[("TOLLGATE_SYNC_SECS", "1")]);
    let up = Upstream::start();
    let user = a.create_user("a@example.com");
    let (key, _) = a.create_key(user, json!({"rateLimit": 4}));
    a.create_route(user, "/api", &up.addr);
    // Until b's sync has loaded the route it answers 404, which counts nothing.
    assert!(
        eventually(Duration::from_secs(5), || b
            .with_key("GET", "/api", &key)
            .status
            == 200),
        "instance b never served the route created on a"
    );
    assert_eq!(a.with_key("GET", "/api", &key).status, 200);
    assert_eq!(b.with_key("GET", "/api", &key).status, 200);
    assert_eq!(a.with_key("GET", "/api", &key).status, 200);
    let r = b.with_key("GET", "/api", &key);
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    assert_eq!(a.with_key("GET", "/api", &key).status, 429);
    assert_eq!(up.requests().len(), 4);
}

#[test]
fn routes_and_revocations_made_on_one_instance_reach_the_other_within_the_sync_interval() {
    let a = Gateway::start_with(&[("TOLLGATE_SYNC_SECS", "1")]);
    let b = a.start_beside(&[("TOLLGATE_SYNC_SECS", "1")]);
    let up = Upstream::start();
    let user = a.create_user("a@example.com");
    let (key, key_id) = a.create_key(user, json!({}));
    let route = a.create_route(user, "/api", &up.addr);
    assert!(
        eventually(Duration::from_secs(5), || b
            .with_key("GET", "/api/x", &key)
            .status
            == 200),
        "a route created on a never served by b"
    );
    // b has now verified and cached the key; revoke it through a.
    assert_eq!(
        a.admin_delete(&format!("/admin/api-keys/{key_id}")).status,
        200
    );
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || b
            .with_key("GET", "/api/x", &key)
            .status
            == 401),
        "b kept accepting a key revoked on a"
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(b.with_key("GET", "/api/x", &key).code(), "revoked_api_key");
    // A route deleted on a disappears from b too.
    let (key2, _) = a.create_key(user, json!({}));
    assert_eq!(b.with_key("GET", "/api/y", &key2).status, 200);
    assert_eq!(
        a.admin_delete(&format!("/admin/routes/{route}")).status,
        204
    );
    assert!(
        eventually(Duration::from_secs(5), || b
            .with_key("GET", "/api/y", &key2)
            .status
            == 404),
        "b kept a route deleted on a"
    );
}
