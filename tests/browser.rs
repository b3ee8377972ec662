//! `/dashboard` in a real browser: headless Chromium driven through `chromedriver` with the
//! W3C WebDriver protocol (plain JSON over HTTP). The test signs in with the admin secret,
//! waits for the cards and checks them against `/analytics/overview`, then saves a
//! screenshot to `target/dashboard-test.png`; another picks a key and a user and checks
//! the plan panel, the usage by month and its CSV download. `make test` installs both through
//! `scripts/deps.sh browser`. A crate of its own: it drives a browser process (chromedriver
//! and Chromium) beside the gateway. The page as served is `dashboard` in tests/tests.rs.

// The whole harness; this crate uses part of it.
#[allow(dead_code)]
mod util;

use chrono::{Datelike, Months, Utc};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::{free_port, Gateway, Upstream, ADMIN_SECRET};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The browser itself; Debian's `/usr/bin/chromium` is a wrapper script around it.
const CHROMIUM: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
/// W3C WebDriver's key for an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, the browser session and its profile directory; all gone on drop, also
/// when the test fails half-way.
struct Browser {
    base: String,
    session: Option<String>,
    driver: Child,
    profile: std::path::PathBuf,
    agent: ureq::Agent,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let profile =
            std::env::temp_dir().join(format!("tollgate-chromium-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&profile).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (make test installs it: scripts/deps.sh browser)");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut b = Browser {
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            driver,
            profile,
            agent,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = b
                .agent
                .get(format!("{}/status", b.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let binary = CHROMIUM
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromium is installed");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,1800",
            &format!("--user-data-dir={}", b.profile.display()),
        ];
        // Downloads land in the profile directory, without asking, so a test can read them.
        let prefs = json!({
            "download.default_directory": b.downloads().display().to_string(),
            "download.prompt_for_download": false,
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": args, "prefs": prefs}
        }}});
        let v = b.call("POST", "/session", Some(caps));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b.session = Some(id);
        b
    }

    /// One WebDriver command; returns its `value`, failing the test on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let result = match body {
            Some(b) => self
                .agent
                .run(
                    ureq::http::Request::builder()
                        .method(method)
                        .uri(&url)
                        .header("content-type", "application/json")
                        .body(b.to_string())
                        .unwrap(),
                )
                .map(|r| r.into_body()),
            None => self
                .agent
                .run(
                    ureq::http::Request::builder()
                        .method(method)
                        .uri(&url)
                        .body(())
                        .unwrap(),
                )
                .map(|r| r.into_body()),
        };
        let text = result
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        if v["value"]["error"].is_string() {
            panic!("{method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn downloads(&self) -> std::path::PathBuf {
        self.profile.join("downloads")
    }

    /// Waits (30 s at most) for a finished download of this name and returns its bytes.
    fn downloaded(&self, name: &str) -> Vec<u8> {
        let path = self.downloads().join(name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Chromium writes to `<name>.crdownload` and renames it when done.
            if let Ok(bytes) = std::fs::read(&path) {
                return bytes;
            }
            assert!(Instant::now() < deadline, "no download {name}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().unwrap_or(""))
    }

    fn cmd(&self, method: &str, rest: &str, body: Option<Value>) -> Value {
        self.call(method, &self.session_path(rest), body)
    }

    fn open(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.cmd("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn script(&self, js: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        base64_decode(b64.as_str().expect("screenshot is base64"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            // Ends the browser; a failed call still leaves the kills below.
            let _ = self
                .agent
                .delete(format!("{}/session/{id}", self.base))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Any browser process still running from this test's own profile directory.
        let marker = format!("--user-data-dir={}", self.profile.display());
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.split('\0').any(|a| a == marker) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (RFC 4648 §4) with padding, as WebDriver returns screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len()]);
    }
    out
}

/// Waits (30 s at most) until a JavaScript expression yields a non-empty string.
fn wait_for(browser: &Browser, expr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = browser.script(&format!("return ({expr}) || ''"));
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            return s.to_string();
        }
        assert!(Instant::now() < deadline, "waited in vain for {expr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Picks `value` in the `<select>` with this id and waits until the page has loaded it
/// (its load counter moves past `after`); returns the new counter.
fn choose(browser: &Browser, select: &str, value: &str, after: &str) -> String {
    browser.script(&format!(
        "const s = document.getElementById('{select}'); s.value = '{value}'; \
         s.dispatchEvent(new Event('change')); return 0"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = wait_for(browser, "document.body.dataset.loaded");
        if now != after {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "no reload after choosing {value} in #{select}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A number as the page shows it: thousands separators removed.
fn shown_number(text: &str) -> f64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number on screen: {text:?}"))
}

/// Text as shown, its cells and lines joined by single spaces.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn base64_decodes_padded_input() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}

#[test]
fn dashboard_in_headless_chromium_shows_the_overview_numbers() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("dash@example.com");
    gw.create_route(user, "/api", &up.addr);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1000, "name": "main key"}));
    let (tight, _) = gw.create_key(user, json!({"rateLimit": 2, "name": "tight key"}));
    let mut sent = 0;
    for i in 0..12 {
        let r = gw.with_key_direct("GET", &format!("/api/items/{i}"), &key);
        assert_eq!(r.status, 200);
        sent += 1;
    }
    for _ in 0..3 {
        assert_eq!(
            gw.with_key_direct("GET", "/api/status/404", &key).status,
            404
        );
        assert_eq!(
            gw.with_key_direct("POST", "/api/status/503", &key).status,
            503
        );
        assert_eq!(gw.direct("GET", "/api/anon", &[], None).status, 401);
        sent += 3;
    }
    for expected in [200, 200, 429, 429] {
        assert_eq!(gw.with_key_direct("GET", "/api/t", &tight).status, expected);
        sent += 1;
    }
    assert_eq!(gw.wait_for_log_rows(sent), sent);
    let overview = gw.admin_get("/analytics/overview").json();
    assert_eq!(overview["totalRequests"], json!(sent));

    let browser = Browser::start();
    browser.open(&format!("{}/dashboard", gw.direct_addr));
    // A wrong secret sends the page back to the sign-in form with the server's reason.
    browser.type_into("#credential", "not-the-admin-secret");
    browser.click("#sign-in");
    let refused = wait_for(
        &browser,
        "document.getElementById('login-error').textContent",
    );
    assert!(refused.starts_with("Refused"), "{refused}");
    browser.type_into("#credential", ADMIN_SECRET);
    browser.click("#sign-in");
    let first = wait_for(&browser, "document.body.dataset.loaded");

    let total = browser.text("#totalRequests");
    assert_eq!(
        shown_number(&total),
        overview["totalRequests"].as_f64().unwrap()
    );
    let errors = browser.text("#errorCount");
    assert_eq!(
        shown_number(&errors),
        overview["errorCount"].as_f64().unwrap()
    );
    assert_eq!(
        browser.text("#errorRate"),
        overview["errorRate"].as_str().unwrap()
    );
    let avg = shown_number(&browser.text("#avgLatencyMs"));
    let want = overview["avgLatencyMs"].as_f64().unwrap();
    assert!(
        (avg - want).abs() < 0.0051,
        "avg latency {avg} on screen, {want} served"
    );
    // Fields of the full analytics contract, when this server reports them.
    for field in ["clientErrors", "serverErrors", "rateLimited"] {
        if let Some(n) = overview[field].as_f64() {
            assert_eq!(
                shown_number(&browser.text(&format!("#{field}"))),
                n,
                "{field}"
            );
        }
    }
    for field in ["p50Ms", "p95Ms", "p99Ms"] {
        if let Some(n) = overview[field].as_f64() {
            let shown = shown_number(&browser.text(&format!("#{field}")));
            let tolerance = if n >= 100.0 { 0.51 } else { 0.0051 };
            assert!((shown - n).abs() < tolerance, "{field}: {shown} vs {n}");
        }
    }

    // The stylesheet and the charts made it through the content security policy.
    let radius = browser
        .script("return getComputedStyle(document.querySelector('.card')).borderTopLeftRadius");
    assert_eq!(radius, json!("10px"), "app.css applied");
    let bars = browser.script("return document.querySelectorAll('#chart-requests rect').length");
    assert!(
        bars.as_u64().unwrap_or(0) >= 1,
        "request bars drawn: {bars}"
    );
    let recent = browser.script("return document.querySelectorAll('#recent tr').length");
    assert_eq!(
        recent,
        json!(15),
        "the recent table shows the 15 newest requests"
    );
    let routes = browser.text("#top-routes");
    assert!(routes.contains("/api"), "{routes}");

    // Another window: a fresh load, and all of this traffic is within 15 minutes too.
    let second = choose(&browser, "window", "15m", &first);
    assert_eq!(
        shown_number(&browser.text("#totalRequests")),
        overview["totalRequests"].as_f64().unwrap()
    );
    choose(&browser, "window", "24h", &second);

    // The page's own requests (page, script, style, analytics calls) are operator traffic
    // and it asks for no favicon: none of it lands in the request log.
    let rows: i64 = gw
        .db()
        .query_one("SELECT count(*) FROM request_logs", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, sent, "the dashboard added no client traffic");

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-test.png");
    std::fs::write(&out, &png).unwrap();

    // Signed in with an API key, the page shows that key's user only: the anonymous 401s
    // belong to nobody and drop out.
    browser.click("#sign-out");
    browser.type_into("#credential", &key);
    browser.click("#sign-in");
    wait_for(&browser, "document.body.dataset.loaded");
    let own = gw
        .admin_get(&format!("/analytics/overview?userId={user}"))
        .json();
    assert_eq!(own["totalRequests"], json!(sent - 3));
    assert_eq!(
        shown_number(&browser.text("#totalRequests")),
        own["totalRequests"].as_f64().unwrap()
    );
    assert!(browser.text("#who").starts_with("API key"));
    drop(browser);
}

/// `/docs` renders every operation of `/openapi.json`, its search narrows them, and Try it
/// sends real requests with the credential typed into the page: an admin read, an admin
/// write the database then holds, a wrong secret's 401, and a key holder's `/me`.
#[test]
fn docs_page_renders_every_operation_filters_them_and_tries_them_for_real() {
    let gw = Gateway::start();
    let user = gw.create_user("docs@example.com");
    let (key, key_id) = gw.create_key(user, json!({"name": "docs key"}));
    let doc = gw.get("/openapi.json", &[]).json();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| {
            let ops = ops.as_object().unwrap();
            ["get", "post", "put", "patch", "delete"]
                .iter()
                .filter(|m| ops.contains_key(**m))
                .count()
        })
        .sum();

    let browser = Browser::start();
    browser.open(&format!("{}/docs", gw.direct_addr));
    wait_for(&browser, "document.body.dataset.ready");
    let count = |css: &str| {
        browser
            .script(&format!("return document.querySelectorAll('{css}').length"))
            .as_u64()
            .unwrap() as usize
    };
    assert_eq!(count(".op"), operations, "one section per operation");
    assert_eq!(count("#toc li"), operations, "one contents entry each");
    let create_user = browser.text("#op-post-admin-users");
    for expected in ["POST", "/admin/users", "email", "required", "201", "409"] {
        assert!(create_user.contains(expected), "{expected}: {create_user}");
    }
    let all = browser.text("#ops");
    assert!(
        !all.lines().any(|l| l.trim() == "null"),
        "no absent part shown"
    );
    // The stylesheet made it through the content security policy.
    let radius = browser
        .script("return getComputedStyle(document.querySelector('.op')).borderTopLeftRadius");
    assert_eq!(radius, json!("8px"), "app.css applied");

    // Search: every word must match, in any case; the rest is hidden, contents included.
    browser.type_into("#search", "POST quota/reset");
    let shown = || {
        browser
            .script(
                "return [...document.querySelectorAll('.op')].filter(s => !s.hidden)\
                 .map(s => s.dataset.method + ' ' + s.dataset.path).sort().join(',')",
            )
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        shown(),
        "post /admin/api-keys/{id}/quota/reset,post /admin/users/{id}/quota/reset"
    );
    assert_eq!(count("#toc li:not([hidden])"), 2);
    assert_eq!(
        browser.text("#count"),
        format!("2 of {operations} operations")
    );
    browser.script("const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')); return 0");
    assert_eq!(count(".op:not([hidden])"), operations);

    // Try it, as the operator: a read, then a write.
    browser.type_into("#credential", ADMIN_SECRET);
    let answer = |op: &str| {
        wait_for(
            &browser,
            &format!("document.querySelector('#{op} .answer').dataset.status"),
        );
        browser.text(&format!("#{op} .answer"))
    };
    browser.click("#op-get-admin-users-id summary");
    browser.type_into("#op-get-admin-users-id [data-param=id]", &user.to_string());
    browser.click("#op-get-admin-users-id .send");
    let got = answer("op-get-admin-users-id");
    assert!(got.starts_with("HTTP 200"), "{got}");
    assert!(got.contains("docs@example.com"), "{got}");

    browser.click("#op-post-admin-users summary");
    browser.script(
        "document.querySelector('#op-post-admin-users textarea').value = \
         JSON.stringify({email: 'tried@example.com', name: 'Tried'}); return 0",
    );
    browser.click("#op-post-admin-users .send");
    let got = answer("op-post-admin-users");
    assert!(got.starts_with("HTTP 201"), "{got}");
    let users = gw.admin_get("/admin/users").json();
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["email"] == "tried@example.com"),
        "the write reached the database: {users}"
    );

    // A wrong secret gets the server's 401, shown as it came.
    browser.script("document.getElementById('credential').value = ''; return 0");
    browser.type_into("#credential", "not-the-admin-secret");
    browser.click("#op-get-admin-stats summary");
    browser.click("#op-get-admin-stats .send");
    let got = answer("op-get-admin-stats");
    assert!(
        got.starts_with("HTTP 401") && got.contains("unauthorized"),
        "{got}"
    );

    // An API key goes in x-api-key: `/me` answers for that key.
    browser.script("document.getElementById('credential').value = ''; return 0");
    browser.type_into("#credential", &key);
    browser.click("#op-get-me summary");
    browser.click("#op-get-me .send");
    let got = answer("op-get-me");
    assert!(got.starts_with("HTTP 200"), "{got}");
    let me: Value = serde_json::from_str(got.split_once("\n\n").unwrap().1).unwrap();
    assert_eq!(me["keyId"], json!(key_id), "{me}");
    drop(browser);
}

/// The plan panel and the usage table: the admin picks a key, then its user, and sees the
/// plan, where each limit and the quota stand, the months' usage, and a CSV download equal
/// to the API's; a key holder sees its own key without a picker.
#[test]
fn dashboard_shows_the_chosen_keys_plan_quota_use_and_monthly_usage_as_csv() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("billing@example.com");
    gw.create_route(user, "/api", &up.addr);
    let plan = gw.admin_post(
        "/admin/plans",
        json!({"name": "pro", "limits": [{"name": "minute", "limit": 600, "windowSecs": 60}],
               "quota": {"limit": 1000, "period": "month"}}),
    );
    assert_eq!(plan.status, 201, "{}", plan.body);
    let plan_id = plan.json()["id"].as_i64().unwrap();
    let owner = gw.admin_patch(
        &format!("/admin/users/{user}"),
        json!({"limits": [{"name": "day", "limit": 5000, "windowSecs": 86400}]}),
    );
    assert_eq!(owner.status, 200, "{}", owner.body);
    let (pro, pro_id) = gw.create_key(user, json!({"planId": plan_id, "name": "pro key"}));
    let (tight, tight_id) = gw.create_key(user, json!({"rateLimit": 2, "name": "tight key"}));
    for i in 0..7 {
        assert_eq!(
            gw.with_key_direct("GET", &format!("/api/{i}"), &pro).status,
            200
        );
    }
    for expected in [200, 200, 429, 429] {
        assert_eq!(gw.with_key_direct("GET", "/api/t", &tight).status, expected);
    }
    assert_eq!(gw.wait_for_log_rows(11), 11);
    let month = Utc::now().format("%Y-%m").to_string();
    // The page's default range: this month and the two before it.
    let from = (Utc::now().date_naive().with_day(1).unwrap() - Months::new(2))
        .format("%Y-%m")
        .to_string();

    let browser = Browser::start();
    browser.open(&format!("{}/dashboard", gw.direct_addr));
    browser.type_into("#credential", ADMIN_SECRET);
    browser.click("#sign-in");
    let loaded = wait_for(&browser, "document.body.dataset.loaded");
    assert!(browser
        .text("#plan-limits")
        .contains("choose a key or user"));
    wait_for(
        &browser,
        &format!("document.querySelector('#subject option[value=\"key:{pro_id}\"]')?.text"),
    );
    let loaded = choose(&browser, "subject", &format!("key:{pro_id}"), &loaded);
    assert_eq!(browser.text("#plan-name"), "plan pro");
    assert!(browser.text("#plan-subject").contains("pro key"));
    // One row per limit and quota: the plan's window, the user's owner-wide day, the plan's
    // quota (counted exactly; a sliding window's `used` is an estimate, so only its limit).
    let rows: Vec<String> = (1..=3)
        .map(|i| words(&browser.text(&format!("#plan-limits tr:nth-child({i})"))))
        .collect();
    assert!(
        rows[0].starts_with("minute") && rows[0].contains("/ 600"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("user.day") && rows[1].contains("owner-wide"),
        "{rows:?}"
    );
    assert!(rows[1].contains("/ 5,000"), "{rows:?}");
    assert!(
        rows[2].starts_with("quota") && rows[2].contains("month"),
        "{rows:?}"
    );
    assert!(rows[2].contains("7 / 1,000 (0.7 %)"), "{rows:?}");
    let meters = browser.script("return document.querySelectorAll('#plan-limits meter').length");
    assert_eq!(meters, json!(3));

    // Usage by month, per key, scoped to the chosen key.
    let loaded = choose(&browser, "usage-group", "key", &loaded);
    assert_eq!(browser.text("#usage-who"), "Key");
    assert!(browser
        .text("#usage-scope")
        .contains(&format!("key #{pro_id}")));
    let usage = words(&browser.text("#usage"));
    assert_eq!(usage, format!("{month} #{pro_id} pro key 7 0"), "{usage}");

    // The CSV: fetched with the secret in a header, saved from a blob: URL under the
    // page's content security policy, equal to what the API serves for the same query.
    browser.click("#usage-csv");
    let href = wait_for(
        &browser,
        "document.getElementById('usage-csv').href.startsWith('blob:') && 'yes'",
    );
    assert_eq!(href, "yes");
    let served = gw.admin_get(&format!(
        "/analytics/usage?groupBy=key&bucket=month&from={from}&keyId={pro_id}&format=csv"
    ));
    assert_eq!(served.status, 200);
    let name = browser.script("return document.getElementById('usage-csv').download");
    let disposition = served.header("content-disposition").unwrap_or_default();
    assert_eq!(
        disposition,
        format!("attachment; filename=\"{}\"", name.as_str().unwrap())
    );
    let csv = String::from_utf8(browser.downloaded(name.as_str().unwrap())).unwrap();
    assert_eq!(csv, served.body);
    assert_eq!(
        csv,
        format!(
            "bucket,keyId,userId,name,admitted,refused\r\n{month},{pro_id},{user},pro key,7,0\r\n"
        )
    );

    // The user: its owner-wide limit, and its keys' usage.
    let loaded = choose(&browser, "subject", &format!("user:{user}"), &loaded);
    assert!(browser
        .text("#plan-subject")
        .contains("billing@example.com"));
    let limits = words(&browser.text("#plan-limits"));
    assert!(
        limits.starts_with("user.day") && limits.contains("/ 5,000"),
        "{limits}"
    );
    let usage = words(&browser.text("#usage"));
    assert!(
        usage.contains(&format!("{month} #{pro_id} pro key 7 0")),
        "{usage}"
    );
    assert!(
        usage.contains(&format!("{month} #{tight_id} tight key 2 2")),
        "{usage}"
    );
    assert_eq!(browser.text("#usage-admitted"), "9");
    assert_eq!(browser.text("#usage-refused"), "2");
    choose(&browser, "usage-group", "plan", &loaded);
    let usage = words(&browser.text("#usage"));
    assert!(
        usage.contains(&format!("{month} #{plan_id} pro 7 0")),
        "{usage}"
    );
    assert!(usage.contains(&format!("{month} (no plan) 2 2")), "{usage}");

    // A key holder sees its own key's plan, from /me, with no picker.
    browser.click("#sign-out");
    browser.type_into("#credential", &pro);
    browser.click("#sign-in");
    wait_for(&browser, "document.body.dataset.loaded");
    assert_eq!(browser.text("#plan-name"), "plan pro");
    assert!(browser.text("#plan-subject").starts_with("Your key"));
    assert_eq!(
        browser.script("return document.getElementById('subject').hidden"),
        json!(true)
    );
    drop(browser);
}

/// Serves `html` for every request, from its own port: a page on another origin than the
/// gateway (which origin exactly depends on the name the browser opens it by).
fn serve_page(html: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let html = html.clone();
            // A thread per connection: Chromium opens spare connections it may never use.
            std::thread::spawn(move || {
                let _ = util::read_head(&mut std::io::BufReader::new(conn.try_clone().unwrap()));
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    html.len()
                );
                let _ = std::io::Write::write_all(&mut conn, head.as_bytes());
                let _ = std::io::Write::write_all(&mut conn, html.as_bytes());
            });
        }
    });
    port
}

#[test]
fn a_page_on_an_allowed_origin_calls_a_cors_route_with_a_key_and_reads_the_rate_limit() {
    let gw = Gateway::start();
    let up = Upstream::start();
    let user = gw.create_user("cors@example.com");
    let (key, key_id) = gw.create_key(user, json!({"rateLimit": 100}));
    // The page fetches the gateway with the key in a header, which forces a preflight,
    // and writes what it could read, or the error, into the DOM.
    let html = format!(
        r#"<!doctype html><title>app</title><pre id="out"></pre><script>
fetch("{gw}/api/items", {{headers: {{"x-api-key": "{key}"}}}})
  .then(r => r.text().then(() => {{
    document.getElementById("out").textContent =
      r.status + " " + r.headers.get("RateLimit") + " " + r.headers.get("X-Request-Id");
  }}))
  .catch(e => {{ document.getElementById("out").textContent = e.name; }});
</script>"#,
        gw = gw.direct_addr
    );
    let port = serve_page(html);
    // Same page, two origins: allowed by its IP address, refused by the name localhost.
    let allowed = format!("http://127.0.0.1:{port}");
    gw.create_route_with(
        user,
        "/api",
        &up.addr,
        json!({"cors": {"allowedOrigins": [allowed]}}),
    );

    let browser = Browser::start();
    browser.open(&allowed);
    let out = wait_for(&browser, "document.getElementById('out').textContent");
    let parts: Vec<&str> = out.split(' ').collect();
    assert_eq!(parts[0], "200", "{out}");
    assert!(parts[1].contains(";r=99;"), "RateLimit readable: {out}");
    assert_ne!(
        parts.get(2).copied(),
        Some("null"),
        "X-Request-Id readable: {out}"
    );
    // The preflight was answered by the gateway and only the actual request counted.
    assert_eq!(up.requests().len(), 1);
    assert_eq!(up.last().method, "GET");
    assert_eq!(gw.counted_for_key(Some(key_id)), 1);

    browser.open(&format!("http://localhost:{port}"));
    let out = wait_for(&browser, "document.getElementById('out').textContent");
    assert_eq!(out, "TypeError", "a refused origin cannot call the route");
    assert_eq!(
        up.requests().len(),
        1,
        "the refused preflight stopped the request"
    );
    assert_eq!(gw.counted_for_key(Some(key_id)), 1);
}
