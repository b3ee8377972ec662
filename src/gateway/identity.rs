//! Part of the forward phase: who called, told to the upstream in `X-Tollgate-*` headers,
//! optionally signed so an upstream can refuse requests that did not come through the
//! gateway. Client-sent `X-Tollgate-*` headers are dropped on every route, so none of these
//! can be forged by a client of the gateway.

use crate::store::keys::KeyInfo;
use crate::store::routes::Route;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt::Write;

/// The prefix of every header the gateway sets about the caller (lower-case).
const PREFIX: &str = "x-tollgate-";

/// Whether a client-sent header is one of ours, which only the gateway may set.
pub fn is_reserved(name: &str) -> bool {
    name.len() >= PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

/// What the upstream is told about a request, signed or not.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent upstream (after `stripPrefix`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

/// The identity headers for `key` on `route`, plus the timestamp and signature when the
/// route has a signing secret; none when the route asks for neither.
pub fn headers(route: &Route, key: &KeyInfo, rq: &Request) -> Vec<(String, String)> {
    if !route.sends_identity() {
        return Vec::new();
    }
    let external_id = key
        .owner_external_id
        .as_deref()
        .map(header_safe)
        .unwrap_or_default();
    let mut out = vec![
        ("x-tollgate-user-id".to_string(), key.user_id.to_string()),
        ("x-tollgate-key-id".to_string(), key.id.to_string()),
        ("x-tollgate-scopes".to_string(), key.scopes.clone()),
    ];
    if !external_id.is_empty() {
        out.push(("x-tollgate-external-id".to_string(), external_id.clone()));
    }
    if let Some(secret) = &route.signing_secret {
        let signed = signed_string(rq, key, &external_id);
        out.push(("x-tollgate-timestamp".to_string(), rq.now.to_string()));
        out.push((
            "x-tollgate-signature".to_string(),
            signature(secret, &signed),
        ));
    }
    out
}

/// The signed string, version 1: nine lines joined by `\n` (no trailing newline):
/// `v1`, timestamp, method, path, query (empty when none), user id, key id, scopes,
/// external id (empty when none), each exactly as the headers and request line carry
/// them. No field can hold a line break (targets with control characters are refused
/// and the external id is percent-encoded), so the lines cannot be shifted.
fn signed_string(rq: &Request, key: &KeyInfo, external_id: &str) -> String {
    format!(
        "v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        rq.now,
        rq.method,
        rq.path,
        rq.query.unwrap_or(""),
        key.user_id,
        key.id,
        key.scopes,
        external_id
    )
}

/// `v1=` and the lower-case hex HMAC-SHA256 of `signed` under `secret`.
fn signature(secret: &str, signed: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(signed.as_bytes());
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in mac.finalize().into_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The external id as a header value: UTF-8 bytes outside visible ASCII, and `%`, are
/// percent-encoded, so a non-ASCII id reaches every upstream framework intact and its
/// signature does not depend on how the framework decodes header bytes.
fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_are_matched_without_regard_to_case() {
        assert!(is_reserved("X-Tollgate-User-Id"));
        assert!(is_reserved("x-TOLLGATE-anything"));
        assert!(!is_reserved("x-tollgate"));
        assert!(!is_reserved("x-toll"));
        assert!(!is_reserved("x-request-id"));
    }

    #[test]
    fn the_external_id_is_percent_encoded_outside_visible_ascii() {
        assert_eq!(header_safe("cus_42"), "cus_42");
        assert_eq!(header_safe("a b%é"), "a%20b%25%C3%A9");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_documented_string() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let rq = Request {
            method: "GET",
            path: "/a/b",
            query: None,
            now: 1_700_000_000,
        };
        let route = Route {
            signing_secret: Some("k".repeat(32)),
            ..Route::default()
        };
        let key = test_key();
        assert_eq!(
            signed_string(&rq, &key, "cus%201"),
            "v1\n1700000000\nGET\n/a/b\n\n7\n9\nread,write\ncus%201"
        );
        let names: Vec<String> = headers(&route, &key, &rq)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            names,
            [
                "x-tollgate-user-id",
                "x-tollgate-key-id",
                "x-tollgate-scopes",
                "x-tollgate-external-id",
                "x-tollgate-timestamp",
                "x-tollgate-signature"
            ]
        );
        assert!(headers(&Route::default(), &key, &rq).is_empty());
    }

    fn test_key() -> KeyInfo {
        use crate::store::keys::Hashes;
        use crate::store::plans::Policy;
        let now = chrono::Utc::now();
        KeyInfo {
            id: 9,
            user_id: 7,
            rate_limit: None,
            write: true,
            expires_at: None,
            revoked: false,
            paused: false,
            created_at: now,
            own: Policy::default(),
            owner: Policy::default(),
            owner_created_at: now,
            hashes: Hashes {
                current: String::new(),
                previous: None,
                prev_valid_until: None,
            },
            scopes: "read,write".into(),
            owner_external_id: Some("cus 1".into()),
            ip_rules: Default::default(),
            counting: None,
        }
    }
}
