//! A request's head → [`Ctx`]: the target checked and normalised once, the client's
//! address (believing `X-Forwarded-*` only from a trusted proxy), a request id, and the
//! message framing judged before any byte of the body is touched.

use super::{target, Ctx};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

/// Builds the context of one request from its head: `url` is the request target as sent,
/// `peer` the TCP peer's address.
pub fn build(
    method: &str,
    url: &str,
    headers: Vec<(String, String)>,
    peer: Option<IpAddr>,
    trusted_proxies: &[IpAddr],
) -> Ctx {
    let (raw_path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let (path, refused) = match target::check(raw_path, query.as_deref(), &headers) {
        Ok(path) => (path, None),
        Err(e) => (target::printable(raw_path).into_owned(), Some(e)),
    };
    let trusted = peer.is_some_and(|ip| trusted_proxies.contains(&ip));
    let last = |name: &str| {
        headers
            .iter()
            .rfind(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let peer_ip = peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    // The edge appends the address it saw last; earlier entries are the client's own claims.
    let client_ip = last("X-Forwarded-For")
        .filter(|_| trusted)
        .and_then(|v| v.rsplit(',').next().map(|s| s.trim().to_string()))
        .filter(|s| s.parse::<IpAddr>().is_ok())
        .unwrap_or_else(|| peer_ip.clone());
    let proto = last("X-Forwarded-Proto")
        .filter(|p| trusted && (p == "http" || p == "https"))
        .unwrap_or_else(|| "http".to_string());
    let first = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let request_id = first("X-Request-Id")
        .filter(|v| valid_request_id(v))
        .map_or_else(random_hex_id, str::to_string);
    let bad_framing = check_framing(&headers);
    let chunked = first("Transfer-Encoding").is_some();
    let content_length = first("Content-Length").and_then(|v| v.trim().parse().ok());
    Ctx {
        method: method.to_string(),
        path,
        query,
        client_ip,
        peer_ip,
        proto,
        request_id,
        bad_framing,
        refused,
        content_length,
        chunked,
        headers,
        started: Instant::now(),
        received_at: SystemTime::now(),
    }
}

/// A client-supplied request id is kept only if it is short, printable ASCII: it is echoed
/// in headers and written to the log.
fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Refuses message framing that two HTTP parsers could read differently (RFC 9112 §6.1,
/// §6.3): tiny_http silently prefers Transfer-Encoding and ignores a bad Content-Length,
/// which is how request smuggling starts.
pub fn check_framing(headers: &[(String, String)]) -> Option<&'static str> {
    let values = |name: &'static str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (cls, tes) = (values("Content-Length"), values("Transfer-Encoding"));
    if !cls.is_empty() && !tes.is_empty() {
        return Some("both Content-Length and Transfer-Encoding sent");
    }
    if cls.len() > 1 {
        return Some("repeated Content-Length");
    }
    if cls
        .first()
        .is_some_and(|cl| cl.is_empty() || !cl.bytes().all(|b| b.is_ascii_digit()) || cl.len() > 19)
    {
        return Some("Content-Length is not a number");
    }
    if tes.len() > 1
        || tes
            .first()
            .is_some_and(|te| !te.eq_ignore_ascii_case("chunked"))
    {
        return Some("only Transfer-Encoding: chunked is accepted");
    }
    None
}

/// 128 random bits as 32 hex digits, for request ids.
pub fn random_hex_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Request ids need uniqueness, not secrecy: fall back to time and a counter.
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b[..8].copy_from_slice(&t.to_be_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad: &[&[(&str, &str)]] = &[
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            &[("Content-Length", "5"), ("Content-Length", "5")],
            &[("Content-Length", "5x")],
            &[("Content-Length", "-1")],
            &[("Transfer-Encoding", "gzip, chunked")],
            &[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
        ];
        for h in bad {
            assert!(check_framing(&headers(h)).is_some(), "{h:?}");
        }
        assert_eq!(check_framing(&headers(&[("Content-Length", "5")])), None);
        assert_eq!(
            check_framing(&headers(&[("Transfer-Encoding", "chunked")])),
            None
        );
    }

    #[test]
    fn forwarded_headers_are_believed_only_from_a_trusted_proxy() {
        let h = headers(&[
            ("X-Forwarded-For", "6.6.6.6, 10.0.0.9"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = build("GET", "/x", h.clone(), Some(proxy), &[proxy]);
        assert_eq!(
            (trusted.client_ip.as_str(), trusted.proto.as_str()),
            ("10.0.0.9", "https")
        );
        assert_eq!(trusted.peer_ip, "10.0.0.1");
        let untrusted = build("GET", "/x", h, Some(proxy), &[]);
        assert_eq!(
            (untrusted.client_ip.as_str(), untrusted.proto.as_str()),
            ("10.0.0.1", "http")
        );
    }

    #[test]
    fn request_ids_are_kept_when_printable_and_made_otherwise() {
        let kept = build("GET", "/", headers(&[("X-Request-Id", "abc-1")]), None, &[]);
        assert_eq!(kept.request_id, "abc-1");
        let made = build("GET", "/", headers(&[("X-Request-Id", "a b")]), None, &[]);
        assert_eq!(made.request_id.len(), 32);
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (random_hex_id(), random_hex_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
