//! Hostile request targets and headers, judged once in `context::build` before dispatch:
//! the path is normalised or refused (so route matching, the operator endpoints and the
//! upstream all see one and the same path), header names and values are checked, and the
//! strings a log row keeps from a refused request are made safe to store.
//! The table of what is normalised and what is refused is in docs/operations.md.

use crate::config::{MAX_HEADER_BYTES, MAX_HEADER_VALUE_BYTES, MAX_URI_BYTES};
use crate::error::{Error, Result};

/// The path to dispatch on, or why the request is refused. `query` is the raw query
/// string (without `?`); it is checked but never rewritten.
pub fn check(path: &str, query: Option<&str>, headers: &[(String, String)]) -> Result<String> {
    let target_len = path.len() + query.map_or(0, |q| q.len() + 1);
    if target_len > MAX_URI_BYTES {
        return Err(Error::UriTooLong(MAX_URI_BYTES));
    }
    check_headers(headers)?;
    if query.is_some_and(|q| q.bytes().any(is_control)) {
        return Err(Error::BadRequest(
            "control character in the query string".into(),
        ));
    }
    normalize(path)
}

/// Normalises a request path, or refuses it with the reason:
/// - `//` runs collapse to one `/` (as nginx's `merge_slashes` does);
/// - percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) are
///   decoded, so `/%61dmin` is `/admin` (§6.2.2.2 says they are the same path);
/// - an encoded slash or backslash (`%2F`, `%5C`) stays as sent, part of its segment: route
///   prefixes match on real `/` only, so `/users%2Fx` is not under `/users`;
/// - refused: a target that is not a path (`*`, `http://...`), raw or encoded control
///   characters (NUL included), a raw backslash, malformed `%` escapes, and `.`/`..`
///   segments in any spelling (`%2e%2e`, and `..%2F` since an upstream may decode `%2F` or
///   `%5C` into a separator), which an upstream would resolve past the route's prefix.
///
/// Every other byte, other escapes included (`%20`, `%C3%A9`), is kept as sent.
pub fn normalize(path: &str) -> Result<String> {
    let bad = |why: &str| Err(Error::BadRequest(format!("refused path: {why}")));
    if !path.starts_with('/') {
        return bad("the request target must be a path starting with /");
    }
    let bytes = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    // The path as an upstream that decodes `%2F` and `%5C` into separators would split it.
    let mut view: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let Some(v) = hex_pair(bytes.get(i + 1..i + 3)) else {
                    return bad("malformed percent-encoding");
                };
                if is_control(v) {
                    return bad("encoded control character");
                }
                if v == b'/' || v == b'\\' {
                    view.push(b'/');
                    out.extend_from_slice(&bytes[i..i + 3]);
                } else if is_unreserved(v) {
                    view.push(v);
                    out.push(v);
                } else {
                    view.extend_from_slice(&bytes[i..i + 3]);
                    out.extend_from_slice(&bytes[i..i + 3]);
                }
                i += 3;
                continue;
            }
            b if is_control(b) => return bad("control character"),
            b'\\' => return bad("backslash"),
            b'/' if out.last() == Some(&b'/') => {}
            b => {
                view.push(b);
                out.push(b);
            }
        }
        i += 1;
    }
    if view.split(|b| *b == b'/').any(|s| s == b"." || s == b"..") {
        return bad("dot segment");
    }
    // Only ASCII bytes were replaced, each by ASCII, so the result is still UTF-8.
    String::from_utf8(out).map_err(|_| Error::BadRequest("refused path: not UTF-8".into()))
}

/// Header checks tiny_http does not make: sizes (431), names that are not tokens, control
/// characters in values (a bare CR or LF stays inside a value in tiny_http, while nginx and
/// most upstreams end the header there: a smuggling gap), and a repeated `Host` (RFC 9112
/// §3.2: which one names the route?).
pub fn check_headers(headers: &[(String, String)]) -> Result<()> {
    let mut total = 0usize;
    let mut hosts = 0;
    for h in headers {
        let (name, value) = (h.0.as_str(), h.1.as_str());
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(Error::HeaderTooLarge(MAX_HEADER_VALUE_BYTES));
        }
        total += name.len() + value.len() + 4;
        if total > MAX_HEADER_BYTES {
            return Err(Error::HeaderTooLarge(MAX_HEADER_BYTES));
        }
        if !is_token(name) {
            return Err(Error::BadRequest("a header name is not a token".into()));
        }
        if value.bytes().any(|b| is_control(b) && b != b'\t') {
            return Err(Error::BadRequest(format!(
                "control character in the {name} header"
            )));
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 {
                return Err(Error::BadRequest("repeated Host header".into()));
            }
        }
    }
    Ok(())
}

/// A string fit for a log row: control characters percent-encoded (Postgres text cannot
/// hold NUL, and a bare newline would forge lines in a text log) and at most
/// `MAX_URI_BYTES` long. Borrowed unchanged in the common case.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_URI_BYTES && !s.bytes().any(is_control) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len().min(MAX_URI_BYTES));
    for c in s.chars() {
        if out.len() + c.len_utf8() + 3 > MAX_URI_BYTES {
            break;
        }
        match u8::try_from(c) {
            Ok(b) if is_control(b) => out.push_str(&format!("%{b:02X}")),
            _ => out.push(c),
        }
    }
    out.into()
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let [hi, lo] = pair? else { return None };
    let digit = |b: &u8| (*b as char).to_digit(16);
    Some((digit(hi)? * 16 + digit(lo)?) as u8)
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// RFC 9110 §5.6.2 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(p: &str) -> String {
        normalize(p).unwrap_or_else(|e| panic!("{p:?} refused: {e}"))
    }

    #[test]
    fn slashes_collapse_and_unreserved_escapes_decode() {
        assert_eq!(ok("//users"), "/users");
        assert_eq!(ok("/users//7///x"), "/users/7/x");
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/a%7Eb%2dc"), "/a~b-c");
        assert_eq!(ok("/file%2ejson"), "/file.json");
        assert_eq!(ok("/caf%C3%A9/x%20y"), "/caf%C3%A9/x%20y");
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/users/"), "/users/");
        assert_eq!(ok("/a/..b/.c/c."), "/a/..b/.c/c.");
        assert_eq!(ok("/users%2Fx"), "/users%2Fx");
        assert_eq!(ok("/a%5cb%2f%2Fc"), "/a%5cb%2f%2Fc");
    }

    #[test]
    fn escapes_out_of_the_prefix_are_refused() {
        for bad in [
            "/users/../admin",
            "/users/./x",
            "/users/..",
            "/users/%2e%2e/admin",
            "/users/%2E./admin",
            "/users/.%2e",
            "/users/%2e",
            "/users/7%2f..%2fsecret",
            "/users/..%2Fadmin",
            "/users/%2e%2e%5cadmin",
            "/users%2F..",
            "/users\\..\\admin",
            "/users\0",
            "/users%00",
            "/users%0d%0aX:1",
            "/users/\r\n",
            "/users%",
            "/users%4",
            "/users%zz",
            "/users%+1",
            "*",
            "http://example.com/users",
            "",
        ] {
            let e = normalize(bad).expect_err(bad);
            assert_eq!(e.status(), 400, "{bad:?}");
        }
    }

    #[test]
    fn headers_with_controls_repeats_or_bad_names_are_refused() {
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(check_headers(&[h("Host", "a"), h("X", "b\tc")]).is_ok());
        for bad in [
            vec![h("Host", "a"), h("host", "b")],
            vec![h("X", "a\rb")],
            vec![h("X", "a\nb")],
            vec![h("X", "a\0b")],
            vec![h("X\0", "a")],
            vec![h("X(", "a")],
        ] {
            assert_eq!(check_headers(&bad).unwrap_err().status(), 400, "{bad:?}");
        }
        let long = "a".repeat(MAX_HEADER_VALUE_BYTES + 1);
        assert_eq!(check_headers(&[h("X", &long)]).unwrap_err().status(), 431);
        let fine = "a".repeat(MAX_HEADER_VALUE_BYTES);
        let many: Vec<(String, String)> = (0..MAX_HEADER_BYTES / MAX_HEADER_VALUE_BYTES + 1)
            .map(|_| h("X", &fine))
            .collect();
        assert_eq!(check_headers(&many).unwrap_err().status(), 431);
    }

    #[test]
    fn an_over_long_target_is_414() {
        let long = format!("/{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(check(&long, None, &[]).unwrap_err().status(), 414);
        let q = "a".repeat(MAX_URI_BYTES);
        assert_eq!(check("/a", Some(&q), &[]).unwrap_err().status(), 414);
        assert_eq!(check("/a", Some("b\0"), &[]).unwrap_err().status(), 400);
        assert_eq!(check("/a//b", Some("x=1"), &[]).unwrap(), "/a/b");
    }

    #[test]
    fn printable_encodes_controls_and_bounds_length() {
        assert_eq!(printable("/a\0b\n"), "/a%00b%0A");
        assert_eq!(printable("/é"), "/é");
        assert!(printable(&"é".repeat(MAX_URI_BYTES)).len() <= MAX_URI_BYTES);
    }

    /// Whether `p` has a `.` or `..` segment for an upstream that decodes `%2F`/`%5C`.
    pub fn has_dot_segment(p: &str) -> bool {
        let lower = p
            .to_ascii_lowercase()
            .replace("%2f", "/")
            .replace("%5c", "/");
        lower.split('/').any(|s| s == "." || s == "..")
    }

    /// Path segments as a client could spell them, hostile spellings included.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_~-]{0,6}",
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e%2E".to_string()),
            Just("%2F".to_string()),
            Just("%5c".to_string()),
            Just("%00".to_string()),
            Just("%41".to_string()),
            Just("%C3%A9".to_string()),
            "[ -~]{0,4}",
            any::<String>().prop_map(|s| s.chars().take(3).collect()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..8).prop_map(|s| format!("/{}", s.join("/")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// What the normaliser lets through can never step out of a prefix: it starts with
        /// `/`, has no empty, `.` or `..` segment in any spelling, no control character, no
        /// backslash and no encoded slash; and normalising it again changes nothing.
        #[test]
        fn normalised_paths_are_canonical_and_cannot_climb(p in path()) {
            if let Ok(n) = normalize(&p) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"), "{n}");
                prop_assert!(!n.bytes().any(|b| is_control(b) || b == b'\\'));
                prop_assert!(!n.to_ascii_lowercase().contains("%2e"));
                prop_assert!(!has_dot_segment(&n), "{}", n);
                prop_assert_eq!(normalize(&n).ok(), Some(n.clone()));
            }
        }

        /// Any string at all: an answer (normalised or refused), never a panic.
        #[test]
        fn any_target_is_answered_without_panic(s in any::<String>(), q in proptest::option::of(any::<String>())) {
            let _ = check(&s, q.as_deref(), &[]);
            prop_assert!(printable(&s).len() <= MAX_URI_BYTES.max(s.len()));
        }

        /// Any ASCII header section: an answer, never a panic; what passes has token names,
        /// no control character but tab in values, at most one Host, and fits the limits.
        #[test]
        fn header_checks_answer_any_ascii_headers(
            pairs in prop::collection::vec(
                (
                    prop_oneof![Just("Host".to_string()), "[A-Za-z-]{1,8}", "[\\x00-\\x7f]{0,12}"],
                    prop_oneof!["[ -~\\t]{0,40}", "[\\x00-\\x7f]{0,40}"],
                ),
                0..8,
            ),
        ) {
            if check_headers(&pairs).is_ok() {
                let hosts = pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case("host")).count();
                prop_assert!(hosts <= 1);
                for (k, v) in &pairs {
                    prop_assert!(is_token(k));
                    prop_assert!(!v.bytes().any(|b| is_control(b) && b != b'\t'));
                }
            }
        }

        /// A path refused for a dot segment stays refused however its dots are encoded.
        #[test]
        fn dot_segments_are_refused_in_every_spelling(
            before in "[a-z]{1,5}", after in "[a-z]{1,5}",
            dots in prop::sample::select(vec!["..", ".%2e", "%2e.", "%2E%2e", ".", "%2e"]),
        ) {
            let p = format!("/{before}/{dots}/{after}");
            prop_assert!(normalize(&p).is_err(), "{}", p);
        }
    }
}
