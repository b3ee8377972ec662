//! Reading what operators send: bounded JSON bodies, query parameters, path ids and typed
//! fields, each failure a 400 that names the field (used by admin and analytics).

use crate::config::{ADMIN_MAX_BODY_BYTES, MAX_IP_RULES, MAX_METADATA_BYTES, MAX_PAGE_LIMIT};
use crate::error::{Error, Result};
use crate::http::Ctx;
use crate::store::ip_rules::Cidr;
use crate::store::plans::Change;
use serde_json::{Map, Value};
use std::io::Read;

/// The request body as a JSON object, at most `ADMIN_MAX_BODY_BYTES`.
pub fn json_object(body: &mut dyn Read) -> Result<Map<String, Value>> {
    let mut buf = Vec::new();
    body.take(ADMIN_MAX_BODY_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::BadRequest(format!("cannot read the request body: {e}")))?;
    if buf.len() as u64 > ADMIN_MAX_BODY_BYTES {
        return Err(Error::PayloadTooLarge(ADMIN_MAX_BODY_BYTES));
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest(
            "request body must be a JSON object".into(),
        ));
    }
    match serde_json::from_slice(&buf) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::BadRequest(
            "request body must be a JSON object".into(),
        )),
        Err(e) => Err(Error::BadRequest(format!("invalid JSON: {e}"))),
    }
}

/// Like [`json_object`], but an empty body is an empty object (endpoints whose fields are
/// all optional, e.g. a rotation).
pub fn json_object_or_empty(body: &mut dyn Read) -> Result<Map<String, Value>> {
    let mut buf = Vec::new();
    body.take(ADMIN_MAX_BODY_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::BadRequest(format!("cannot read the request body: {e}")))?;
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    json_object(&mut buf.as_slice())
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
pub fn query_param(ctx: &Ctx, name: &'static str) -> Result<Option<String>> {
    let Some(q) = ctx.query.as_deref() else {
        return Ok(None);
    };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k).as_deref() == Some(name) {
            return decode(v)
                .map(Some)
                .ok_or_else(|| Error::field(name, "is not valid percent-encoded UTF-8"));
        }
    }
    Ok(None)
}

/// Refuses any query parameter not in `known`, naming it (a misspelt filter must not be
/// answered as if it were absent).
pub fn only_params(ctx: &Ctx, known: &[&str]) -> Result<()> {
    let Some(q) = ctx.query.as_deref() else {
        return Ok(());
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        let name = decode(k).unwrap_or_else(|| k.to_string());
        if !known.contains(&name.as_str()) {
            return Err(Error::BadRequest(format!(
                "unknown query parameter \"{name}\"; this endpoint takes {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// A positive integer id from a query parameter.
pub fn query_id(ctx: &Ctx, name: &'static str) -> Result<Option<i64>> {
    match query_param(ctx, name)? {
        None => Ok(None),
        Some(v) => parse_id(&v)
            .map(Some)
            .ok_or_else(|| Error::field(name, "must be a positive integer")),
    }
}

/// `?limit=` (default and cap `MAX_PAGE_LIMIT`) and `?cursor=` (an id to continue after).
pub fn page(ctx: &Ctx) -> Result<(i64, i64)> {
    let limit = match query_param(ctx, "limit")? {
        None => MAX_PAGE_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Error::field("limit", "must be a positive integer"))?
            .min(MAX_PAGE_LIMIT),
    };
    let after = match query_param(ctx, "cursor")? {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| Error::field("cursor", "is not a cursor this API returned"))?,
    };
    Ok((limit, after))
}

pub fn parse_id(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().filter(|n| *n > 0)
}

/// A path id (`/admin/users/:id`).
pub fn path_id(s: &str) -> Result<i64> {
    parse_id(s).ok_or_else(|| Error::field("id", "must be a positive integer"))
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A required non-empty string field, trimmed, at most `max` characters.
pub fn string(m: &Map<String, Value>, field: &'static str, max: usize) -> Result<Option<String>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(Error::field(field, "must not be empty"))
            } else if s.chars().any(char::is_control) {
                // Postgres text cannot hold NUL, and a line break in a name forges log lines.
                Err(Error::field(field, "must not contain control characters"))
            } else if s.chars().count() > max {
                Err(Error::field(
                    field,
                    format!("must be at most {max} characters"),
                ))
            } else {
                Ok(Some(s.to_string()))
            }
        }
        Some(_) => Err(Error::field(field, "must be a string")),
    }
}

/// Refuses a body with a field outside `allowed`, naming it: a misspelt field that were
/// ignored would leave the setting it meant unchanged, and the 2xx would hide that.
pub fn only(m: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => {
            // The name is echoed back, so a hostile one is cut short.
            let name: String = k.chars().take(64).collect();
            let takes = match allowed {
                [] => "this endpoint takes no body fields".to_string(),
                _ => format!("this body takes {}", allowed.join(", ")),
            };
            Err(Error::field(name, format!("unknown field; {takes}")))
        }
    }
}

/// The body of an endpoint that takes none (a quota reset, a DELETE): empty or `{}`; any
/// field is refused like an unknown one, since the client believes it does something.
pub fn no_fields(body: &mut dyn Read) -> Result<()> {
    only(&json_object_or_empty(body)?, &[])
}

/// A PATCH field: absent keeps, `null` clears, anything else is read by `parse`.
pub fn change<T>(
    m: &Map<String, Value>,
    field: &str,
    parse: impl FnOnce(&Value) -> Result<T>,
) -> Result<Change<T>> {
    match m.get(field) {
        None => Ok(Change::Keep),
        Some(Value::Null) => Ok(Change::Clear),
        Some(v) => parse(v).map(Change::Set),
    }
}

pub fn required<T>(v: Option<T>, field: &'static str) -> Result<T> {
    v.ok_or_else(|| Error::field(field, "is required"))
}

/// An id field given as a JSON number or a numeric string (both forms appear in scripts).
pub fn id(m: &Map<String, Value>, field: &'static str) -> Result<Option<i64>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| Error::field(field, "must be a positive integer")),
        Some(Value::String(s)) => parse_id(s.trim())
            .map(Some)
            .ok_or_else(|| Error::field(field, "must be a positive integer")),
        Some(_) => Err(Error::field(field, "must be a positive integer")),
    }
}

/// A whole number field within `min..=max`.
pub fn int(m: &Map<String, Value>, field: &'static str, min: i64, max: i64) -> Result<Option<i64>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| {
                Error::field(field, format!("must be a whole number from {min} to {max}"))
            }),
        Some(_) => Err(Error::field(field, "must be a number")),
    }
}

/// A `metadata` field: a JSON object of at most `MAX_METADATA_BYTES` as compact JSON;
/// `null` is the empty object (a PATCH clears with it).
pub fn metadata(m: &Map<String, Value>) -> Result<Option<Value>> {
    match m.get("metadata") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Value::Object(Map::new()))),
        Some(v @ Value::Object(_)) => {
            if v.to_string().len() > MAX_METADATA_BYTES {
                return Err(Error::field(
                    "metadata",
                    format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"),
                ));
            }
            // Postgres' jsonb cannot hold a NUL character, anywhere in the object.
            if has_nul(v) {
                return Err(Error::field("metadata", "must not contain NUL characters"));
            }
            Ok(Some(v.clone()))
        }
        Some(_) => Err(Error::field("metadata", "must be a JSON object")),
    }
}

/// An `allowCidrs` / `denyCidrs` field: an array of at most `MAX_IP_RULES` networks
/// (`10.0.0.0/8`, `2001:db8::/32`, or a bare address); `null` is the empty list (a PATCH
/// clears with it). `None` when absent. A bad entry is named in the message.
pub fn cidrs(m: &Map<String, Value>, field: &'static str) -> Result<Option<Vec<Cidr>>> {
    let list = match m.get(field) {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(Error::field(
                field,
                "must be an array of CIDR strings or null",
            ))
        }
    };
    if list.len() > MAX_IP_RULES {
        return Err(Error::field(
            field,
            format!("must have at most {MAX_IP_RULES} entries"),
        ));
    }
    let mut out: Vec<Cidr> = Vec::with_capacity(list.len());
    for v in list {
        let s = v
            .as_str()
            .ok_or_else(|| Error::field(field, "must be an array of CIDR strings or null"))?;
        // The entry is echoed back in the message, so a hostile one is not; the longest
        // CIDR is under 50 characters.
        if s.len() > 64 {
            return Err(Error::field(field, "entries must be at most 64 characters"));
        }
        let c = Cidr::parse(s).map_err(|e| Error::field(field, e))?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(Some(out))
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_plus_utf8_and_rejects_garbage() {
        assert_eq!(decode("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%C3"), None);
        assert_eq!(decode("%4"), None);
    }

    #[test]
    fn string_fields_refuse_control_characters() {
        let m = |v: &str| {
            json_object(&mut serde_json::json!({ "name": v }).to_string().as_bytes()).unwrap()
        };
        assert_eq!(
            string(&m(" ok "), "name", 10).unwrap().as_deref(),
            Some("ok")
        );
        for bad in ["a\u{0}b", "a\nb", "\u{7f}"] {
            assert_eq!(
                string(&m(bad), "name", 10).unwrap_err().status(),
                400,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn json_body_must_be_an_object() {
        assert!(json_object(&mut &b"{\"a\":1}"[..]).is_ok());
        for bad in [&b""[..], b"[1]", b"{", b"  "] {
            assert_eq!(json_object(&mut &bad[..]).unwrap_err().status(), 400);
        }
    }
}
