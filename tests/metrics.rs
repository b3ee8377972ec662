//! `GET /metrics`: access rules, a strict parse of the text exposition format (0.0.4), and
//! the values moving with known traffic. `promtool check metrics` runs too when installed
//! (`make test` installs it through `scripts/deps.sh promtool`).

use crate::util::{dead_upstream, free_port, Gateway, Upstream, ADMIN_SECRET};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    valid_name(n) && !n.contains(':')
}

/// Parses `{a="x",b="y"}` (the part after the metric name); returns the labels and the rest.
fn parse_labels(s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let Some(body) = s.strip_prefix('{') else {
        return (labels, s.to_string());
    };
    let mut chars = body.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == '}' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.peek() == Some(&'}') && name.is_empty() {
            chars.next();
            break;
        }
        assert!(
            valid_label_name(&name),
            "bad label name {name:?} in {line:?}"
        );
        assert_eq!(chars.next(), Some('='), "no = after label in {line:?}");
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value not quoted in {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('"') => break,
                Some('\n') | None => panic!("unterminated label value in {line:?}"),
                Some(c) => value.push(c),
            }
        }
        assert!(
            labels.insert(name.clone(), value).is_none(),
            "label {name} twice in {line:?}"
        );
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            other => panic!("expected , or }} but got {other:?} in {line:?}"),
        }
    }
    (labels, chars.collect())
}

fn parse_value(v: &str, line: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
    }
}

/// Checks the exposition line by line and returns its samples. Rules of the 0.0.4 text
/// format: HELP and TYPE at most once per family and before its samples, a family's samples
/// together, valid names and labels, no repeated series, counters never negative, histogram
/// buckets cumulative in increasing `le` ending with `+Inf` equal to `_count`.
fn validate(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, ()> = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    let mut series = std::collections::HashSet::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in the exposition");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(valid_name(name), "bad name in {line:?}");
            assert!(
                !finished.contains(&name.to_string()),
                "{name}: metadata after its samples ended"
            );
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    finished.push(c);
                }
                current = Some(name.to_string());
            }
            match kw {
                "HELP" => {
                    assert!(
                        helps.insert(name.into(), ()).is_none(),
                        "HELP twice: {name}"
                    );
                    assert!(!tail.is_empty(), "empty HELP for {name}");
                }
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail),
                        "bad TYPE in {line:?}"
                    );
                    assert!(
                        types.insert(name.into(), tail.into()).is_none(),
                        "TYPE twice: {name}"
                    );
                    assert!(
                        !samples
                            .iter()
                            .any(|s: &Sample| family_of(&s.name, &types) == name),
                        "TYPE after samples of {name}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment {line:?}");
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(valid_name(name), "bad metric name in {line:?}");
        let (labels, rest) = parse_labels(&line[name_end..], line);
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().expect("sample without value"), line);
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
        }
        assert!(fields.next().is_none(), "trailing fields in {line:?}");
        let family = family_of(name, &types);
        assert!(
            types.contains_key(&family),
            "{name}: sample without a TYPE line before it"
        );
        assert_eq!(
            current.as_deref(),
            Some(family.as_str()),
            "{name}: samples of a family must follow its metadata, together"
        );
        if types[&family] == "counter" {
            assert!(value >= 0.0, "negative counter in {line:?}");
            assert!(
                name.ends_with("_total"),
                "counter {name} should end in _total"
            );
        }
        assert!(
            series.insert(format!("{name}{labels:?}")),
            "series twice: {line:?}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (family, kind) in &types {
        if kind == "histogram" {
            check_histogram(family, &samples);
        }
    }
    samples
}

/// `x_bucket`, `x_sum`, `x_count` belong to histogram `x`; anything else to itself.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn check_histogram(family: &str, samples: &[Sample]) {
    let bucket = format!("{family}_bucket");
    let buckets: Vec<&Sample> = samples.iter().filter(|s| s.name == bucket).collect();
    assert!(!buckets.is_empty(), "{family}: no buckets");
    let mut last_le = f64::NEG_INFINITY;
    let mut last_count = 0.0;
    for b in &buckets {
        let le = parse_value(&b.labels["le"], "le");
        assert!(le > last_le, "{family}: le not increasing at {le}");
        assert!(
            b.value >= last_count,
            "{family}: buckets not cumulative at le={le}"
        );
        last_le = le;
        last_count = b.value;
    }
    assert_eq!(last_le, f64::INFINITY, "{family}: last bucket must be +Inf");
    let count = samples
        .iter()
        .find(|s| s.name == format!("{family}_count"))
        .expect("histogram _count");
    assert_eq!(count.value, last_count, "{family}: +Inf bucket != _count");
    assert!(
        samples.iter().any(|s| s.name == format!("{family}_sum")),
        "{family}: no _sum"
    );
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

fn scrape(gw: &Gateway) -> (String, Vec<Sample>) {
    let r = gw.direct("GET", "/metrics", &[("x-admin-secret", ADMIN_SECRET)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = validate(&r.body);
    (r.body, samples)
}

/// `promtool check metrics` on the exposition, when promtool is installed.
fn promtool_accepts(text: &str) {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(promtool) = promtool else {
        eprintln!("promtool not installed (scripts/deps.sh promtool): format checked here only");
        return;
    };
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_need_the_admin_secret_in_its_header_or_as_a_bearer_token() {
    let gw = Gateway::start();
    assert_eq!(gw.direct("GET", "/metrics", &[], None).status, 401);
    let wrong = gw.direct(
        "GET",
        "/metrics",
        &[("x-admin-secret", "not-the-secret")],
        None,
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.code(), "unauthorized");
    let bearer = format!("Bearer {ADMIN_SECRET}");
    let ok = gw.direct("GET", "/metrics", &[("authorization", &bearer)], None);
    assert_eq!(ok.status, 200, "{}", ok.body);
    validate(&ok.body);
    let post = gw.direct(
        "POST",
        "/metrics",
        &[("x-admin-secret", ADMIN_SECRET)],
        None,
    );
    assert_eq!(post.status, 405);
    // No route may claim the path: it is the gateway's own.
    let user = gw.create_user("m@example.com");
    let r = gw.admin_post(
        "/admin/routes",
        json!({"userId": user, "prefix": "/metrics", "targetUrl": "http://127.0.0.1:9"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn exposition_is_well_formed_and_counts_known_traffic() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("traffic@example.com");
    let api = gw.create_route(user, "/api", &up.addr);
    let dead = gw.create_route(user, "/dead", &dead_upstream());
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1000}));
    let (tight, _) = gw.create_key(user, json!({"rateLimit": 1}));

    let (text, before) = scrape(&gw);
    promtool_accepts(&text);
    assert_eq!(
        value(&before, "tollgate_request_duration_seconds_count", &[]),
        0.0
    );

    let mut sent = 0;
    for _ in 0..3 {
        assert_eq!(gw.with_key_direct("GET", "/api/ok", &key).status, 200);
        sent += 1;
    }
    for _ in 0..2 {
        assert_eq!(
            gw.with_key_direct("GET", "/api/status/500", &key).status,
            500
        );
        sent += 1;
    }
    assert_eq!(
        gw.with_key_direct("GET", "/api/status/404", &key).status,
        404
    );
    assert_eq!(gw.with_key_direct("GET", "/nowhere", &key).status, 404);
    assert_eq!(gw.direct("GET", "/api/ok", &[], None).status, 401);
    assert_eq!(gw.with_key_direct("GET", "/dead/x", &key).status, 502);
    assert_eq!(gw.with_key_direct("GET", "/api/ok", &tight).status, 200);
    assert_eq!(gw.with_key_direct("GET", "/api/ok", &tight).status, 429);
    sent += 6;

    // A request is counted once its response is written, a moment after the client has
    // read it: wait until the last one is in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, after) = loop {
        let (text, now) = scrape(&gw);
        let counted = value(&now, "tollgate_request_duration_seconds_count", &[]);
        if counted >= sent as f64 || Instant::now() > deadline {
            break (text, now);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    promtool_accepts(&text);
    let api_id = api.to_string();
    let dead_id = dead.to_string();
    let req = |route: &str, class: &str| {
        value(
            &after,
            "tollgate_requests_total",
            &[("route_id", route), ("class", class)],
        )
    };
    assert_eq!(req(&api_id, "2xx"), 4.0);
    assert_eq!(
        req(&api_id, "4xx"),
        2.0,
        "the upstream's 404 and the limiter's 429"
    );
    assert_eq!(req(&api_id, "5xx"), 2.0);
    assert_eq!(req(&dead_id, "5xx"), 1.0);
    assert_eq!(
        req("none", "4xx"),
        2.0,
        "no route: unknown path and missing key"
    );
    assert_eq!(
        value(
            &after,
            "tollgate_requests_total",
            &[("route_id", &api_id), ("class", "2xx")]
        ),
        4.0
    );
    assert!(after
        .iter()
        .any(|s| s.name == "tollgate_requests_total" && s.labels["route"] == "/api"));
    assert_eq!(
        value(&after, "tollgate_request_duration_seconds_count", &[]),
        sent as f64
    );
    assert!(value(&after, "tollgate_request_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(value(&after, "tollgate_rate_limited_total", &[]), 1.0);
    assert_eq!(
        value(
            &after,
            "tollgate_upstream_errors_total",
            &[("kind", "unreachable")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "tollgate_upstream_errors_total",
            &[("kind", "timeout")]
        ),
        0.0
    );
    let up_label = up.addr.clone();
    assert_eq!(
        value(
            &after,
            "tollgate_upstream_circuit_state",
            &[("upstream", &up_label), ("state", "closed")]
        ),
        1.0
    );
    assert_eq!(value(&after, "tollgate_auth_cache_misses_total", &[]), 2.0);
    assert_eq!(
        value(&after, "tollgate_bcrypt_verifications_total", &[]),
        2.0
    );
    assert!(value(&after, "tollgate_auth_cache_hits_total", &[]) >= 8.0);
    assert_eq!(value(&after, "tollgate_log_rows_dropped_total", &[]), 0.0);
    let pool_total = value(&after, "tollgate_db_pool_connections_in_use", &[])
        + value(&after, "tollgate_db_pool_connections_idle", &[]);
    assert!(pool_total >= 1.0, "the pool holds connections");
    assert!(value(&after, "tollgate_db_pool_waiting", &[]) >= 0.0);

    // The logger writes every row it was handed; the counter follows.
    gw.wait_for_log_rows(sent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = scrape(&gw);
        let written = value(&now, "tollgate_log_rows_written_total", &[]);
        if written == sent as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "log rows written: {written}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_listener_serves_metrics_without_credentials_and_nothing_else() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let gw = Gateway::start_with(&[("TOLLGATE_METRICS_ADDR", &addr)]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(format!("http://{addr}/metrics"))
        .call()
        .expect("metrics listener answers");
    assert_eq!(r.status(), 200);
    let text = r.body_mut().read_to_string().unwrap();
    validate(&text);
    assert!(text.contains("tollgate_build_info{version="));
    let r = agent
        .get(format!("http://{addr}/admin/users"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 404, "only /metrics on the metrics listener");
    let r = agent
        .post(format!("http://{addr}/metrics"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers().get("allow").and_then(|v| v.to_str().ok());
    assert_eq!(allow, Some("GET, HEAD"));
    drop(gw);
}

#[test]
fn validator_rejects_what_promtool_would() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 1\n";
    assert_eq!(validate(ok).len(), 1);
    let bad = [
        "a_total 1\n",             // no TYPE
        "# TYPE a counter\na 1\n", // counter without _total
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
        "# TYPE g gauge\ng{1a=\"x\"} 1\n",
        "# TYPE g gauge\ng 1\n# TYPE g2 gauge\ng2 1\ng 2\n",
    ];
    for b in bad {
        let r = std::panic::catch_unwind(|| validate(b));
        assert!(r.is_err(), "accepted: {b:?}");
    }
}
