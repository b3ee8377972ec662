//! Upstream pools (issue 14): routes with several targets, each a real HTTP server process
//! (tests/util/pool_target.py) on its own loopback port, through the real binary: the
//! balancing methods, retries on another target when one dies under load, active health
//! checks, every target down, and what operators see (the health endpoint, `/metrics`,
//! the log's `upstream` and `attempts`).

use crate::util::{dead_upstream, eventually, free_port, Gateway, Resp};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One pool target process; killed on drop.
struct Target {
    name: String,
    url: String,
    child: Child,
}

impl Target {
    fn start(name: &str) -> Target {
        Target::start_with(name, 0, None)
    }

    /// `delay_ms`: every client request waits this long; `sick`: while this file exists,
    /// `/health` answers 503.
    fn start_with(name: &str, delay_ms: u64, sick: Option<&Path>) -> Target {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/util/pool_target.py");
        let mut cmd = Command::new("python3");
        cmd.args([script, name, &port.to_string(), &delay_ms.to_string()]);
        if let Some(p) = sick {
            cmd.arg(p);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let t = Target {
            name: name.into(),
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.try_stats().is_none() {
            assert!(Instant::now() < deadline, "target {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        t
    }

    fn try_stats(&self) -> Option<Value> {
        let mut r = ureq::get(format!("{}/_stats", self.url)).call().ok()?;
        serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
    }

    /// `{"served", "inFlight", "healthUserAgent"}`, asked of the target directly.
    fn stats(&self) -> Value {
        self.try_stats().expect("target stats")
    }

    /// SIGKILL: open connections are reset, new ones refused.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway, one user with a key, and a route `/svc` over `targets` with `extra` fields.
fn pool_route(targets: Value, extra: Value, env: &[(&str, &str)]) -> (Gateway, String, i64) {
    let gw = Gateway::start_with(env);
    let user = gw.create_user("pools@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    let mut body = json!({"userId": user, "prefix": "/svc", "targets": targets});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = gw.admin_post("/admin/routes", body);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    (gw, key, id)
}

/// Which target answered.
fn answered_by(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["target"].as_str().unwrap().to_string()
}

fn tally(names: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

#[test]
fn round_robin_splits_traffic_by_weight_within_five_percent() {
    let (a, b, c) = (Target::start("a"), Target::start("b"), Target::start("c"));
    let (gw, key, route) = pool_route(
        json!([{"url": a.url, "weight": 1}, {"url": b.url, "weight": 2}, {"url": c.url, "weight": 3}]),
        json!({}),
        &[],
    );
    let names = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..250 {
                    let r = gw.with_key("GET", "/svc/x", &key);
                    names.lock().unwrap().push(answered_by(&r));
                }
            });
        }
    });
    let seen = tally(names.into_inner().unwrap());
    for (name, weight) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
        let share = seen.get(name).copied().unwrap_or(0) as f64 / 1000.0;
        assert!(
            (share - weight / 6.0).abs() <= 0.05,
            "{name}: {share} of 1000, expected {} ({seen:?})",
            weight / 6.0
        );
    }
    // Each target counted what it served, and the log names the one that answered.
    for t in [&a, &b, &c] {
        assert_eq!(t.stats()["served"], seen[&t.name] as u64, "{}", t.name);
    }
    assert_eq!(gw.wait_for_log_rows(1000), 1000);
    let rows = gw
        .db()
        .query(
            "SELECT upstream, count(*), max(attempts) FROM request_logs GROUP BY upstream",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        let url: String = r.get(0);
        let t = [&a, &b, &c].into_iter().find(|t| t.url == url).unwrap();
        assert_eq!(r.get::<_, i64>(1), seen[&t.name] as i64);
        assert_eq!(r.get::<_, Option<i16>>(2), Some(1));
    }
    // The admin's top routes list the targets (the dashboard shows them); a key holder's
    // do not show internal addresses.
    let top = gw.admin_get("/analytics/top-routes?window=1h").json();
    let shown: Vec<&str> = top[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["state"], "healthy");
            t["url"].as_str().unwrap()
        })
        .collect();
    assert_eq!(shown, [&a.url, &b.url, &c.url]);
    let own = gw
        .with_key("GET", "/analytics/top-routes?window=1h", &key)
        .json();
    assert!(own[0].get("targets").is_none(), "{own}");
    // `/metrics` has the same counts per target.
    let metrics = gw.admin_get("/metrics").body;
    for t in [&a, &b, &c] {
        let line = format!(
            "tollgate_target_requests_total{{route_id=\"{route}\",route=\"/svc\",target=\"{}\"}} {}",
            t.url, seen[&t.name]
        );
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
        let healthy = format!(
            "tollgate_target_healthy{{route_id=\"{route}\",route=\"/svc\",target=\"{}\"}} 1",
            t.url
        );
        assert!(metrics.contains(&healthy), "{healthy}");
    }
}

#[test]
fn least_inflight_sends_new_requests_to_the_idle_target_while_one_hangs() {
    let slow = Target::start_with("slow", 4_000, None);
    let idle = Target::start("idle");
    let (gw, key, _) = pool_route(
        json!([{"url": slow.url}, {"url": idle.url}]),
        json!({"balance": "least-inflight"}),
        &[],
    );
    std::thread::scope(|s| {
        // Ties rotate, so within a few requests one lands on the slow target and hangs.
        s.spawn(|| while answered_by(&gw.with_key("GET", "/svc/a", &key)) != "slow" {});
        assert!(
            eventually(Duration::from_secs(5), || slow.stats()["inFlight"] == 1),
            "no request reached the slow target"
        );
        for _ in 0..10 {
            assert_eq!(answered_by(&gw.with_key("GET", "/svc/b", &key)), "idle");
        }
        assert_eq!(
            slow.stats()["inFlight"],
            1,
            "nothing more joined the hung request"
        );
    });
}

#[test]
fn hash_keeps_each_key_on_one_target_and_moves_only_the_removed_targets_keys() {
    let targets = [Target::start("a"), Target::start("b"), Target::start("c")];
    let urls: Vec<Value> = targets.iter().map(|t| json!({"url": t.url})).collect();
    let (gw, _, route) = pool_route(json!(urls), json!({"balance": "hash"}), &[]);
    let user = gw.admin_get(&format!("/admin/routes/{route}")).json()["userId"]
        .as_i64()
        .unwrap();
    let keys: Vec<String> = (0..30)
        .map(|_| gw.create_key(user, json!({"rateLimit": 1_000_000})).0)
        .collect();
    let place = |key: &str| {
        let first = answered_by(&gw.with_key("GET", "/svc/k", key));
        for _ in 0..2 {
            assert_eq!(
                answered_by(&gw.with_key("GET", "/svc/k", key)),
                first,
                "a key moved"
            );
        }
        first
    };
    let before: Vec<String> = keys.iter().map(|k| place(k)).collect();
    let per = tally(before.clone());
    assert_eq!(per.len(), 3, "every target holds some keys: {per:?}");
    let r = gw.admin_patch(
        &format!("/admin/routes/{route}"),
        json!({"targets": [{"url": targets[0].url}, {"url": targets[1].url}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let after: Vec<String> = keys.iter().map(|k| place(k)).collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(moved, per["c"], "only the removed target's keys moved");
    for (b, a) in before.iter().zip(&after) {
        assert!(a != "c" && (b == "c" || a == b), "{b} -> {a}");
    }
}

#[test]
fn a_target_removed_from_the_pool_finishes_its_requests_in_flight() {
    let slow = Target::start_with("slow", 1_500, None);
    let fast = Target::start("fast");
    let (gw, key, route) = pool_route(
        json!([{"url": slow.url}, {"url": fast.url}]),
        json!({}),
        &[],
    );
    std::thread::scope(|s| {
        // Equal weights: the first pick is the first target.
        let in_flight = s.spawn(|| gw.with_key("GET", "/svc/long", &key));
        assert!(eventually(Duration::from_secs(5), || slow.stats()
            ["inFlight"]
            == 1));
        let r = gw.admin_patch(
            &format!("/admin/routes/{route}"),
            json!({"targets": [{"url": fast.url}]}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        for _ in 0..4 {
            assert_eq!(answered_by(&gw.with_key("GET", "/svc/new", &key)), "fast");
        }
        assert_eq!(answered_by(&in_flight.join().unwrap()), "slow");
    });
}

#[test]
fn killing_a_target_under_load_loses_no_idempotent_request() {
    let a = Target::start("a");
    let mut b = Target::start("b");
    let c = Target::start("c");
    let (gw, key, _) = pool_route(
        json!([{"url": a.url}, {"url": b.url}, {"url": c.url}]),
        json!({}),
        &[],
    );
    let started = Instant::now();
    let kill_at = Duration::from_millis(800);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        // `make bench`'s concurrency: 32 clients at once.
        for t in 0..32 {
            let (gw, key, results) = (&gw, &key, &results);
            s.spawn(move || {
                let mut i = 0;
                while started.elapsed() < Duration::from_millis(2_500) {
                    let method = if (t + i) % 4 == 0 { "POST" } else { "GET" };
                    let r = if method == "POST" {
                        let headers = [
                            ("x-api-key", key.as_str()),
                            ("content-type", "application/json"),
                        ];
                        gw.request("POST", "/svc/load", &headers, Some(&b"{\"n\":1}"[..]))
                    } else {
                        gw.request("GET", "/svc/load", &[("x-api-key", key)], None)
                    };
                    results.lock().unwrap().push((method, r.status, r.body));
                    i += 1;
                }
            });
        }
        std::thread::sleep(kill_at);
        b.kill();
    });
    let results = results.into_inner().unwrap();
    let gets: Vec<_> = results.iter().filter(|r| r.0 == "GET").collect();
    let posts: Vec<_> = results.iter().filter(|r| r.0 == "POST").collect();
    assert!(gets.len() > 100, "too little load: {}", gets.len());
    for (_, status, body) in &gets {
        assert_eq!(*status, 200, "an idempotent request was lost: {body}");
    }
    let lost_posts: Vec<_> = posts.iter().filter(|r| r.1 != 200).collect();
    for (_, status, body) in &lost_posts {
        // Only a request already sent to the killed target, never one it never got.
        assert_eq!(*status, 502, "{body}");
        assert!(body.contains("upstream_unreachable"), "{body}");
    }
    eprintln!(
        "killed target: {} GET all 200, {} POST of which {} got 502",
        gets.len(),
        posts.len(),
        lost_posts.len()
    );
    // Requests that found the dead target retried on another, and the log says so.
    let n = results.len() as i64;
    assert_eq!(gw.wait_for_log_rows(n), n);
    let retried = gw
        .db()
        .query(
            "SELECT upstream FROM request_logs WHERE attempts = 2 AND status = 200",
            &[],
        )
        .unwrap();
    assert!(!retried.is_empty(), "no request was retried");
    for r in retried {
        assert_ne!(
            r.get::<_, String>(0),
            b.url,
            "a retry went to the dead target"
        );
    }
}

#[test]
fn an_unhealthy_target_gets_no_traffic_until_it_recovers() {
    let dir = std::env::temp_dir().join(format!("tollgate-pools-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let sick: PathBuf = dir.join("sick");
    let a = Target::start("a");
    let b = Target::start_with("b", 0, Some(&sick));
    let (interval_ms, unhealthy_after) = (100, 2);
    let (gw, key, route) = pool_route(
        json!([{"url": a.url}, {"url": b.url}]),
        json!({"healthCheck": {"path": "/health", "intervalMs": interval_ms, "timeoutMs": 500,
                               "healthyAfter": 2, "unhealthyAfter": unhealthy_after}}),
        &[],
    );
    let health = || {
        gw.admin_get(&format!("/admin/routes/{route}/health"))
            .json()
    };
    let state_of_b = || {
        health()["targets"][1]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let spread = || tally((0..20).map(|_| answered_by(&gw.with_key("GET", "/svc/h", &key))));
    assert!(eventually(Duration::from_secs(5), || {
        health()["targets"][1]["lastProbe"]["status"] == 200
    }));
    assert_eq!(spread().len(), 2, "both targets serve while healthy");
    assert_eq!(b.stats()["healthUserAgent"], "tollgate-health");

    std::fs::write(&sick, "").unwrap();
    let marked = Instant::now();
    // unhealthyAfter probes, one interval for the first to come round, and slack for a
    // busy machine.
    let bound = Duration::from_millis(unhealthy_after * interval_ms + interval_ms + 1_000);
    assert!(
        eventually(bound, || state_of_b() == "unhealthy"),
        "still {} after {:?}",
        state_of_b(),
        marked.elapsed()
    );
    let h = health();
    assert_eq!(h["targets"][1]["lastProbe"]["status"], 503);
    assert_eq!(h["targets"][1]["lastProbe"]["ok"], false);
    assert_eq!(h["targets"][0]["state"], "healthy");
    let metrics = gw.admin_get("/metrics").body;
    let down = format!(
        "tollgate_target_healthy{{route_id=\"{route}\",route=\"/svc\",target=\"{}\"}} 0",
        b.url
    );
    assert!(metrics.contains(&down), "{down}");
    let served_by_b = b.stats()["served"].clone();
    assert_eq!(
        spread().get("a"),
        Some(&20),
        "the unhealthy target got traffic"
    );
    assert_eq!(b.stats()["served"], served_by_b);

    std::fs::remove_file(&sick).unwrap();
    assert!(eventually(Duration::from_secs(5), || state_of_b() == "healthy"));
    assert!(
        spread().get("b").is_some_and(|n| *n >= 5),
        "traffic came back"
    );
    // Probes never appear as client requests.
    assert_eq!(gw.wait_for_log_rows(60), 60);
    let probes: i64 = gw
        .db()
        .query_one(
            "SELECT count(*) FROM request_logs WHERE user_agent = 'tollgate-health'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(probes, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_target_down_is_503_upstream_unavailable_with_retry_after() {
    let (gw, key, route) = pool_route(
        json!([{"url": dead_upstream()}, {"url": dead_upstream()}]),
        json!({}),
        &[("TOLLGATE_BREAKER_FAILURES", "2")],
    );
    // Each request tries one target and retries on the other: both refuse.
    let first = gw.with_key("GET", "/svc/x", &key);
    assert_eq!(
        (first.status, first.code().as_str()),
        (502, "upstream_unreachable")
    );
    let r = gw.with_key("GET", "/svc/x", &key);
    assert_eq!(r.status, 502);
    // Both circuits are open now.
    let r = gw.with_key("GET", "/svc/x", &key);
    assert_eq!((r.status, r.code().as_str()), (503, "upstream_unavailable"));
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!(retry >= 1);
    let h = gw
        .admin_get(&format!("/admin/routes/{route}/health"))
        .json();
    for t in h["targets"].as_array().unwrap() {
        assert_eq!(t["state"], "circuit open", "{h}");
    }
    assert_eq!(gw.wait_for_log_rows(3), 3);
    let attempts: Vec<Option<i16>> = gw
        .db()
        .query("SELECT attempts FROM request_logs ORDER BY status", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(attempts, [Some(2), Some(2), None]);
}

#[test]
fn pools_are_shown_as_given_and_a_target_url_is_a_pool_of_one() {
    let gw = Gateway::start();
    let user = gw.create_user("pool-admin@example.com");
    let r = gw.admin_post(
        "/admin/routes",
        json!({"userId": user, "prefix": "/p", "balance": "hash", "retries": 0,
               "targets": [{"url": "http://10.0.0.5:8080/v1/", "weight": 2},
                           {"url": "http://10.0.0.6:8080/v1"}],
               "healthCheck": {"path": "/health"}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let id = v["id"].as_i64().unwrap();
    assert_eq!(v["targetUrl"], "http://10.0.0.5:8080/v1");
    assert_eq!(
        v["targets"],
        json!([{"url": "http://10.0.0.5:8080/v1", "weight": 2},
               {"url": "http://10.0.0.6:8080/v1", "weight": 1}])
    );
    assert_eq!(
        (v["balance"].clone(), v["retries"].clone()),
        (json!("hash"), json!(0))
    );
    assert_eq!(
        v["healthCheck"],
        json!({"path": "/health", "intervalMs": 2000, "timeoutMs": 500, "healthyAfter": 2,
               "unhealthyAfter": 3, "expectStatus": "2xx"})
    );
    // `targetUrl` replaces the pool with a pool of one.
    let r = gw.admin_patch(
        &format!("/admin/routes/{id}"),
        json!({"targetUrl": "http://10.0.0.7:8080"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["targets"],
        json!([{"url": "http://10.0.0.7:8080", "weight": 1}])
    );
    let plain = gw.create_route(user, "/one", "http://10.0.0.8:9000");
    let v = gw.admin_get(&format!("/admin/routes/{plain}")).json();
    assert_eq!(
        (
            v["targets"].clone(),
            v["balance"].clone(),
            v["retries"].clone()
        ),
        (
            json!([{"url": "http://10.0.0.8:9000", "weight": 1}]),
            json!("round-robin"),
            json!(1)
        )
    );
    assert!(v["healthCheck"].is_null());
    // Refused naming the field (the rules themselves: unit tests in admin/routes.rs).
    for (body, field) in [
        (
            json!({"userId": user, "prefix": "/q", "targetUrl": "http://h:1", "targets": [{"url": "http://h:2"}]}),
            "targets",
        ),
        (
            json!({"userId": user, "prefix": "/q", "targets": [{"url": "http://h:1/a"}, {"url": "http://h:2/b"}]}),
            "targets[1].url",
        ),
        (json!({"userId": user, "prefix": "/q"}), "targetUrl"),
    ] {
        let r = gw.admin_post("/admin/routes", body);
        assert_eq!((r.status, r.code().as_str()), (400, "invalid_field"));
        assert_eq!(r.json()["error"]["field"], field);
    }
    let r = gw.admin_get("/admin/routes/999999/health");
    assert_eq!(r.status, 404);
}
