//! Caller identity upstream: `X-Tollgate-*` headers from the key, never from the client,
//! and their signature checked by an independent implementation (Python's `hmac`, running
//! the README's own recipe).

use crate::util::{Gateway, Seen, Upstream};
use serde_json::{json, Value};
use std::process::Command;

const SECRET: &str = "0123456789abcdef0123456789abcdef-upstream";

/// Headers a client might send to pass as someone else, or as the gateway.
const FORGED: &[(&str, &str)] = &[
    ("X-Tollgate-User-Id", "999999"),
    ("x-tollgate-key-id", "999999"),
    ("X-TOLLGATE-SCOPES", "read,write"),
    ("X-Tollgate-External-Id", "someone-else"),
    ("X-Tollgate-Timestamp", "1"),
    ("X-Tollgate-Signature", "v1=00"),
    ("X-Tollgate-Anything", "x"),
];

fn tollgate_headers(seen: &Seen) -> Vec<(String, String)> {
    seen.headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-tollgate-"))
        .cloned()
        .collect()
}

fn forged_request(gw: &Gateway, path: &str, key: &str) {
    let mut headers = vec![("x-api-key", key)];
    headers.extend_from_slice(FORGED);
    let r = gw.request("GET", path, &headers, None);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_upstream_sees_who_called_only_where_asked_and_never_a_forged_header() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("ident@example.com");
    let r = gw.admin_patch(
        &format!("/admin/users/{user}"),
        json!({"externalId": "cus_42"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (key, key_id) = gw.create_key(user, json!({"scopes": ["write", "read"]}));
    gw.create_route_with(user, "/on", &up.addr, json!({"identityHeaders": true}));
    gw.create_route(user, "/off", &up.addr);

    forged_request(&gw, "/on/x", &key);
    let mut want = vec![
        ("x-tollgate-user-id", user.to_string()),
        ("x-tollgate-key-id", key_id.to_string()),
        ("x-tollgate-scopes", "read,write".to_string()),
        ("x-tollgate-external-id", "cus_42".to_string()),
    ];
    let seen: Vec<(String, String)> = tollgate_headers(&up.last())
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let as_pairs = |w: &[(&str, String)]| -> Vec<(String, String)> {
        w.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    assert_eq!(seen, as_pairs(&want), "each once, from the key");

    forged_request(&gw, "/off/x", &key);
    assert_eq!(
        tollgate_headers(&up.last()),
        vec![],
        "none on a route without the option"
    );

    // The user's external id is cached with the key; a change reaches the next request.
    gw.admin_patch(
        &format!("/admin/users/{user}"),
        json!({"externalId": "cus_43"}),
    );
    forged_request(&gw, "/on/x", &key);
    want[3].1 = "cus_43".to_string();
    let seen: Vec<(String, String)> = tollgate_headers(&up.last())
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    assert_eq!(seen, as_pairs(&want));
}

/// The README's verification function, run by Python on what the upstream saw.
fn python_verifies(secret: &str, seen: &Seen) -> bool {
    let readme = include_str!("../README.md");
    let start = readme.find("```python\n").expect("README has the recipe") + 10;
    let recipe = &readme[start..start + readme[start..].find("```").unwrap()];
    let (path, query) = seen
        .target
        .split_once('?')
        .unwrap_or((seen.target.as_str(), ""));
    let headers: serde_json::Map<String, Value> = tollgate_headers(seen)
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v)))
        .collect();
    let args = json!([secret, seen.method, path, query, headers]);
    let script = format!("{recipe}\nimport json, sys\nprint(verify(*json.loads(sys.argv[1])))");
    let out = Command::new("python3")
        .args(["-c", &script, &args.to_string()])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    match String::from_utf8(out.stdout).unwrap().trim() {
        "True" => true,
        "False" => false,
        other => panic!("python said {other}"),
    }
}

#[test]
fn a_signed_request_verifies_with_pythons_hmac_and_a_tampered_one_does_not() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("signed@example.com");
    gw.admin_patch(
        &format!("/admin/users/{user}"),
        json!({"externalId": "Büro 7"}),
    );
    let (key, _) = gw.create_key(user, json!({"scopes": ["read"]}));
    // A signing secret implies the identity headers; the path signed is the one sent.
    gw.create_route_with(
        user,
        "/signed",
        &up.addr,
        json!({"signingSecret": SECRET, "stripPrefix": true}),
    );
    forged_request(&gw, "/signed/a%20b/c?x=1&y=%2F", &key);
    let seen = up.last();
    assert_eq!(seen.target, "/a%20b/c?x=1&y=%2F");
    assert_eq!(seen.headers_named("x-tollgate-signature").len(), 1);
    assert_eq!(seen.header("x-tollgate-scopes"), Some("read"));
    assert_eq!(seen.header("x-tollgate-external-id"), Some("B%C3%BCro%207"));
    let ts: i64 = seen
        .header("x-tollgate-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60, "{ts}");
    assert!(python_verifies(SECRET, &seen), "{seen:?}");

    // Any change to what is signed, or another secret, fails the check.
    let mut forged = seen.clone();
    for (k, v) in forged.headers.iter_mut() {
        if k.eq_ignore_ascii_case("x-tollgate-user-id") {
            *v = "999999".into();
        }
    }
    assert!(!python_verifies(SECRET, &forged));
    let mut other_path = seen.clone();
    other_path.target = "/a%20b/d?x=1&y=%2F".into();
    assert!(!python_verifies(SECRET, &other_path));
    assert!(!python_verifies(&SECRET.replace('0', "1"), &seen));

    // A request without a query signs an empty line for it.
    forged_request(&gw, "/signed", &key);
    let seen = up.last();
    assert_eq!(seen.target, "/");
    assert!(python_verifies(SECRET, &seen), "{seen:?}");
}

#[test]
fn route_identity_options_are_validated_and_the_secret_is_never_shown() {
    let gw = Gateway::start();
    let user = gw.create_user("opts@example.com");
    let base = json!({"userId": user, "prefix": "/p", "targetUrl": "http://127.0.0.1:9"});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (bad, field) in [
        (json!({"signingSecret": "too-short"}), "signingSecret"),
        (json!({"signingSecret": "x".repeat(257)}), "signingSecret"),
        (
            json!({"signingSecret": format!("{} {}", "a".repeat(20), "b".repeat(20))}),
            "signingSecret",
        ),
        (json!({"identityHeaders": "yes"}), "identityHeaders"),
        (json!({"signingsecret": SECRET}), "signingsecret"),
        (json!({"hasSigningSecret": true}), "hasSigningSecret"),
    ] {
        let r = gw.admin_post("/admin/routes", with(bad.clone()));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["field"], field, "{bad}");
    }

    let r = gw.admin_post(
        "/admin/routes",
        with(json!({"identityHeaders": true, "signingSecret": SECRET})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    let shown = |r: &crate::util::Resp| {
        assert!(!r.body.contains(SECRET), "secret shown: {}", r.body);
        assert!(r.json().get("signingSecret").is_none(), "{}", r.body);
    };
    shown(&r);
    assert_eq!(r.json()["hasSigningSecret"], true);
    assert_eq!(r.json()["identityHeaders"], true);
    let r = gw.admin_get(&format!("/admin/routes/{id}"));
    shown(&r);
    assert_eq!(r.json()["hasSigningSecret"], true);
    let list = gw.admin_get("/admin/routes");
    assert!(!list.body.contains(SECRET), "{}", list.body);

    let r = gw.admin_patch(
        &format!("/admin/routes/{id}"),
        json!({"signingSecret": "short"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = gw.admin_patch(
        &format!("/admin/routes/{id}"),
        json!({"signingSecret": null, "identityHeaders": null}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["hasSigningSecret"], false);
    assert_eq!(r.json()["identityHeaders"], false);
}
