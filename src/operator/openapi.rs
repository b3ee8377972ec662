//! `GET /openapi.json`: the OpenAPI 3.0 description of the operator endpoints (admin,
//! analytics, health, metrics, dashboard), embedded in the binary and served without auth.
//! tests/openapi.rs checks it against the running binary with schemathesis.

use crate::http::{Body, Reply};

/// The document, as shipped in `src/operator/openapi.json`.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn reply() -> Reply {
    Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Body::Bytes(DOCUMENT.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("src/operator/openapi.json is JSON")
    }

    #[test]
    fn the_document_is_openapi_3_with_both_credentials() {
        let d = doc();
        assert!(d["openapi"].as_str().is_some_and(|v| v.starts_with("3.0.")));
        let schemes = &d["components"]["securitySchemes"];
        assert_eq!(schemes["adminSecret"]["name"], "x-admin-secret");
        assert_eq!(schemes["adminSecret"]["in"], "header");
        assert_eq!(schemes["apiKey"]["name"], "x-api-key");
        assert_eq!(schemes["bearerKey"]["scheme"], "bearer");
        // /metrics also takes the admin secret as a bearer token (Prometheus' form).
        assert_eq!(schemes["adminBearer"]["scheme"], "bearer");
        let metrics = &d["paths"]["/metrics"]["get"]["security"];
        assert_eq!(metrics[1]["adminBearer"], serde_json::json!([]));
    }

    /// Every `$ref` points at something the document defines.
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, root: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let ptr = r.trim_start_matches('#');
                        assert!(root.pointer(ptr).is_some(), "dangling {r}");
                    }
                    m.values().for_each(|x| walk(x, root));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, root)),
                _ => {}
            }
        }
        let d = doc();
        walk(&d, &d);
    }

    /// Each gateway-owned prefix is described, and each operation says which errors it
    /// answers with the one JSON error shape.
    #[test]
    fn every_operator_prefix_is_described_with_json_errors() {
        let d = doc();
        let paths = d["paths"].as_object().expect("paths");
        for prefix in crate::operator::OPERATOR_PREFIXES {
            assert!(
                paths
                    .keys()
                    .any(|p| crate::gateway::routes::prefix_matches(prefix, p)),
                "{prefix} is dispatched by operator::dispatch but not in openapi.json"
            );
        }
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("operations") {
                for (status, resp) in op["responses"].as_object().expect("responses") {
                    if status.starts_with('4') || status.starts_with('5') {
                        let r = resp["$ref"].as_str().map_or(resp.clone(), |r| {
                            d.pointer(r.trim_start_matches('#'))
                                .cloned()
                                .unwrap_or_default()
                        });
                        let schema = &r["content"]["application/json"]["schema"]["$ref"];
                        let ok = schema == "#/components/schemas/Error"
                            || (path == "/readyz" && status == "503");
                        assert!(ok, "{method} {path} {status} is not the JSON error shape");
                    }
                }
            }
        }
    }
}
