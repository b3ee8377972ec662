//! `GET /openapi.json` against the real binary: the document matches what server.rs
//! dispatches (method by method, and each 405's `Allow`), and schemathesis (PyPI, installed
//! into .data/venv by `scripts/deps.sh schemathesis`) runs every check it has (`-c all`:
//! no 5xx, no undocumented status or header, responses true to the schemas, schema-valid
//! requests accepted and schema-violating ones refused, 405s with `Allow`, deleted things
//! gone, credentials never ignored), with a fixed example budget and seed and the settings
//! in tests/schemathesis.toml. A crate of its own: schemathesis is an external process that
//! explores one gateway for a minute or two.
//! The document-against-dispatch check stays beside it: both judge the same document.

// The whole harness; this crate uses part of it.
#[allow(dead_code)]
mod util;

use serde_json::{json, Value};
use std::process::Command;
use std::time::Instant;
use util::{Gateway, Upstream, ADMIN_SECRET};

/// The per-IP failed-credential limits (429 `too_many_failed_attempts`, documented) are
/// raised for these gateways: schemathesis sends wrong keys as it explores, and a limit
/// spent early would turn the rest of its run into 429s instead of the real endpoints.
const GENEROUS_FAIL_LIMITS: &[(&str, &str)] = &[
    ("TOLLGATE_ADMIN_FAIL_LIMIT", "100000"),
    ("TOLLGATE_AUTH_FAIL_LIMIT", "100000"),
];

fn document(gw: &Gateway) -> Value {
    let r = gw.get("/openapi.json", &[]);
    assert_eq!(r.status, 200, "served without credentials: {}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

#[test]
fn every_documented_method_is_dispatched_every_dispatched_one_documented_and_405_says_which() {
    let gw = Gateway::start();
    let doc = document(&gw);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{:?}", paths.keys());
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "1");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let r = gw.admin_raw(method, &concrete, "{}");
            let dispatched =
                !(r.status == 405 || (r.status == 404 && r.body.contains("endpoint not found")));
            let documented = ops.get(method.to_ascii_lowercase()).is_some();
            assert_eq!(
                dispatched, documented,
                "{method} {path}: answered {} {}, documented: {documented}",
                r.status, r.body
            );
            checked += 1;
        }
        // A 405 lists what the path takes (RFC 9110 §15.5.6): the documented methods,
        // HEAD wherever GET is.
        let r = gw.admin_raw("TRACE", &concrete, "");
        assert_eq!(r.status, 405, "TRACE {path}: {}", r.body);
        let mut allow: Vec<String> = r
            .header("allow")
            .unwrap_or_else(|| panic!("TRACE {path}: 405 without Allow"))
            .split(", ")
            .map(str::to_string)
            .collect();
        allow.sort();
        let mut documented: Vec<String> = ops
            .as_object()
            .expect("operations")
            .keys()
            .filter(|m| !matches!(m.as_str(), "parameters" | "summary" | "description"))
            .map(|m| m.to_ascii_uppercase())
            .collect();
        if documented.iter().any(|m| m == "GET") && !documented.iter().any(|m| m == "HEAD") {
            documented.push("HEAD".into());
        }
        documented.sort();
        assert_eq!(allow, documented, "Allow of {path}");
    }
    assert!(checked >= 100, "{checked}");
}

/// Runs schemathesis against the gateway's document with `examples` test cases per
/// operation and `args` added; panics with its report unless it finds no issue.
fn schemathesis(gw: &Gateway, label: &str, examples: u32, args: &[&str]) {
    let st = std::env::var("TOLLGATE_TEST_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!(
            "TOLLGATE_TEST_SCHEMATHESIS is not set: run the suite with `make test`, which runs \
             `scripts/deps.sh schemathesis` (schemathesis in .data/venv) and sets it to \
             .data/venv/bin/schemathesis"
        )
    });
    let dir = std::env::temp_dir().join(format!(
        "tollgate-schemathesis-{}-{label}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let mut cmd = Command::new(&st);
    cmd.current_dir(&dir)
        .args(["--config-file", config, "run"])
        .arg(format!("{}/openapi.json", gw.direct_addr))
        .args([
            "--checks",
            "all",
            "--max-examples",
            &examples.to_string(),
            "--seed",
            "7",
            "--request-timeout",
            "20",
            // Every warning but `validation_mismatch`: a key's body must name a user and
            // a plan that exist, which random ids rarely do, so most generated keys are
            // rightly refused (400 on `userId`/`planId`); the stateful phase creates them
            // with real ids through the document's links.
            "--warnings",
            "missing_auth,missing_test_data,base_url_mismatch,missing_deserializer,\
             unused_openapi_auth,unsupported_regex,method_not_allowed,unmatched_filter,\
             unresolvable_reference,rate_limited,dictionary_mismatch",
        ])
        .args(args);
    let started = Instant::now();
    let out = cmd.output().expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("schemathesis ({label}) took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("No issues found"), "{stdout}");
    // It really exercised every selected operation rather than stopping early.
    let selected = stdout
        .split_once(" selected / ")
        .and_then(|(before, _)| before.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no operation count in:\n{stdout}"));
    assert!(
        stdout.contains(&format!("Tested: {selected}\n")),
        "not every operation was tested:\n{stdout}"
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}

#[test]
fn schemathesis_with_every_check_finds_nothing() {
    let gw = Gateway::start_with(GENEROUS_FAIL_LIMITS);
    // Data for the reads to find: a user with a key and a route, and some logged traffic.
    let up = Upstream::start();
    let user = gw.create_user("schema@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    gw.create_route(user, "/api", &up.addr);
    for path in ["/api/a", "/api/b?x=1", "/api/c", "/nowhere"] {
        gw.with_key("GET", path, &key);
    }
    gw.wait_for_log_rows(4);
    // Analytics and `/me` as a key holder sees them: scoped to its own user, analytics
    // counted against its limits.
    let key_header = format!("x-api-key: {key}");
    schemathesis(
        &gw,
        "key-holder",
        10,
        &[
            "--header",
            &key_header,
            "--include-path-regex",
            "^/(analytics/|me$)",
            "--phases",
            "coverage,fuzzing",
        ],
    );
    // `/me/rotate` with a key of its own. A rotation with no grace ends the very key the
    // run authenticates with, so after the first one every answer is a (documented) 401:
    // schemathesis' `missing_auth` warning is expected here and only here (the later
    // `--warnings` wins over the default list).
    let (rotating, _) = gw.create_key(user, json!({}));
    let key_header = format!("x-api-key: {rotating}");
    schemathesis(
        &gw,
        "key-rotation",
        10,
        &[
            "--header",
            &key_header,
            "--include-path",
            "/me/rotate",
            "--phases",
            "coverage,fuzzing",
            "--warnings",
            "missing_test_data,base_url_mismatch,missing_deserializer,unused_openapi_auth,\
             unsupported_regex,method_not_allowed,unmatched_filter,unresolvable_reference,\
             rate_limited,dictionary_mismatch",
        ],
    );
    // The whole document as the operator sees it (after: it may delete that key's user),
    // but for `/me` and `/me/rotate`, which only a key holder may call.
    let admin = format!("x-admin-secret: {ADMIN_SECRET}");
    schemathesis(
        &gw,
        "operator",
        30,
        &["--header", &admin, "--exclude-path-regex", "^/me"],
    );
    // schemathesis leaves the document's own path out unless it is named.
    schemathesis(
        &gw,
        "document",
        5,
        &[
            "--include-path",
            "/openapi.json",
            "--phases",
            "coverage,fuzzing",
        ],
    );
    assert!(!gw.output().contains("panicked"), "{}", gw.output());
}
