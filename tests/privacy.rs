//! What the request log keeps of a client's address (`TOLLGATE_LOG_CLIENT_IP`): by default
//! a keyed hash, never the address; `raw` and `none`. Client IPs are told apart with
//! `X-Forwarded-For` from a trusted 127.0.0.1. (The per-IP failure limits, which count on
//! the address in memory, are tested in `failed_credentials`, in the default mode.)

use crate::util::{Gateway, CLIENT_IP_KEY};
use serde_json::json;
use std::process::Command;

const TRUST_LOOPBACK: (&str, &str) = ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1");
const CLIENTS: [&str; 3] = ["203.0.113.7", "2001:db8::7", "127.0.0.1"];

/// Sends, from each of `CLIENTS`, a request with the key (200) and one without (401);
/// returns every row's `client_ip` in the order sent.
fn logged_ips(gw: &Gateway) -> Vec<String> {
    let up = crate::util::Upstream::start();
    let user = gw.create_user("privacy@example.com");
    let (key, _) = gw.create_key(user, json!({}));
    gw.create_route(user, "/api", &up.addr);
    for ip in CLIENTS {
        let with_key = [("x-api-key", key.as_str()), ("x-forwarded-for", ip)];
        assert_eq!(gw.request("GET", "/api/a", &with_key, None).status, 200);
        assert_eq!(gw.get("/api/b", &[("x-forwarded-for", ip)]).status, 401);
    }
    let n = 2 * CLIENTS.len() as i64;
    assert_eq!(gw.wait_for_log_rows(n), n);
    gw.db()
        // By arrival: a row is queued after its answer, so ids may not follow the requests.
        .query(
            "SELECT client_ip FROM request_logs ORDER BY created_at, id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// HMAC-SHA256 by Python's `hmac`, an implementation independent of the gateway's.
fn python_hmac(key: &str, ip: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys\n\
             print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())",
            key,
            ip,
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    format!("hmac:{}", &String::from_utf8(out.stdout).unwrap()[..32])
}

#[test]
fn by_default_the_log_keeps_a_keyed_hash_of_each_address_and_never_the_address() {
    let gw = Gateway::start_with(&[TRUST_LOOPBACK]);
    let ips = logged_ips(&gw);
    for (i, ip) in CLIENTS.iter().enumerate() {
        let want = python_hmac(CLIENT_IP_KEY, ip);
        // The same address gives the same value, so per-IP analytics still group.
        assert_eq!(ips[2 * i..2 * i + 2], [want.clone(), want], "{ip}");
    }
    assert_ne!(ips[0], ips[2], "two addresses, one value");
    // No column of any row holds a client's address (`upstream` holds the target's, on
    // loopback here too).
    let raw: i64 = gw
        .db()
        .query_one(
            "SELECT count(*) FROM request_logs r
              WHERE (to_jsonb(r) - 'upstream')::text
                    LIKE ANY(ARRAY['%203.0.113.7%', '%2001:db8::7%', '%127.0.0.1%'])",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(raw, 0, "a raw address in request_logs: {ips:?}");
    let recent = gw.admin_get("/analytics/recent").json();
    assert_eq!(recent[0]["clientIp"], json!(ips[ips.len() - 1]));
}

#[test]
fn another_key_gives_other_values_for_the_same_addresses() {
    let key = "another-client-ip-key-0123456789abcdef";
    let gw = Gateway::start_with(&[TRUST_LOOPBACK, ("TOLLGATE_CLIENT_IP_KEY", key)]);
    let ips = logged_ips(&gw);
    for (i, ip) in CLIENTS.iter().enumerate() {
        assert_eq!(ips[2 * i], python_hmac(key, ip));
        assert_ne!(ips[2 * i], python_hmac(CLIENT_IP_KEY, ip));
    }
}

#[test]
fn raw_keeps_the_address_and_none_keeps_nothing() {
    let raw = Gateway::start_with(&[TRUST_LOOPBACK, ("TOLLGATE_LOG_CLIENT_IP", "raw")]);
    let want: Vec<String> = CLIENTS
        .iter()
        .flat_map(|ip| [ip.to_string(), ip.to_string()])
        .collect();
    assert_eq!(logged_ips(&raw), want);
    let none = Gateway::start_with(&[TRUST_LOOPBACK, ("TOLLGATE_LOG_CLIENT_IP", "none")]);
    assert_eq!(logged_ips(&none), vec![String::new(); 2 * CLIENTS.len()]);
}
