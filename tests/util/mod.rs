//! The harness every integration test uses: a fresh database on the test Postgres cluster,
//! a real upstream HTTP server that records what it receives, and the real `tollgate`
//! binary in between; in the crate tests/edge.rs, the shipped nginx edge in front of it.
//! Everything started here is stopped when its handle is dropped.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN_SECRET: &str = "test-admin-secret-0123456789abcdef";
/// `TOLLGATE_CLIENT_IP_KEY` of every gateway the tests start: `hmac`, the default mode,
/// refuses to start without one.
pub const CLIENT_IP_KEY: &str = "test-client-ip-key-0123456789abcdef";

/// Connection string of the test cluster, without a database name (set by `make test`).
pub fn pg_base() -> String {
    std::env::var("TOLLGATE_TEST_PG").expect(
        "TOLLGATE_TEST_PG is not set: run the suite with `make test`, which starts the \
         test Postgres cluster and sets it",
    )
}

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `tollgate <args>` to completion against `database_url` with nothing else in its
/// environment but the admin secret and the client IP key, and asserts that it succeeded.
pub fn run_tollgate_ok(args: &[&str], database_url: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("ADMIN_SECRET", ADMIN_SECRET)
        .env("TOLLGATE_CLIENT_IP_KEY", CLIENT_IP_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tollgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A database of its own, dropped with the handle.
pub struct TestDb {
    pub name: String,
    /// Dropped with this handle only when it created the database.
    owned: bool,
    /// Connection string of its cluster, without a database name.
    base: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        TestDb::create_in(&pg_base())
    }

    /// A database of its own on the cluster at `base` (e.g. a `PrivatePg`).
    pub fn create_in(base: &str) -> TestDb {
        let name = unique("tg");
        let mut c = postgres::Client::connect(&format!("{base} dbname=postgres"), postgres::NoTls)
            .expect("connect to the test cluster");
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        TestDb {
            name,
            owned: true,
            base: base.to_string(),
        }
    }

    pub fn url(&self) -> String {
        format!("{} dbname={}", self.base, self.name)
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    /// The same database, not dropped with the returned handle.
    fn alias(&self) -> TestDb {
        TestDb {
            name: self.name.clone(),
            owned: false,
            base: self.base.clone(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Ok(mut c) =
            postgres::Client::connect(&format!("{} dbname=postgres", self.base), postgres::NoTls)
        {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        headers_named(&self.headers, name).first().copied()
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        headers_named(&self.headers, name)
    }
}

/// Every value of header `name` (case-insensitive), in order.
pub fn headers_named<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A gateway, an upstream, and one user owning the route `/api` to it.
pub fn gateway_with_api_route(env: &[(&str, &str)]) -> (Gateway, Upstream, i64) {
    let gw = Gateway::start_with(env);
    let up = Upstream::start();
    let user = gw.create_user("owner@example.com");
    gw.create_route(user, "/api", &up.addr);
    (gw, up, user)
}

/// A gateway, one user, and a key whose limit no test reaches: (gateway, user id, raw key).
pub fn gateway_with_key(email: &str, env: &[(&str, &str)]) -> (Gateway, i64, String) {
    let gw = Gateway::start_with(env);
    let user = gw.create_user(email);
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    (gw, user, key)
}

/// A small HTTP/1.1 upstream: echoes requests as JSON and records them. Paths containing
/// `/status/<code>` answer that code, `/slow/<ms>` sleep first, `/redirect` answers 302,
/// `/set-cookies` sends two `Set-Cookie` headers, `/chunked-response` answers chunked and
/// `/close-delimited` answers without a length, closing the connection after the body.
pub struct Upstream {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve_conn(conn, &s));
            }
        });
        Upstream { addr, seen, stop }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
    }
}

/// Reads one request head off a connection: the request line (without its CRLF) and the
/// headers as sent, names in their own case; `None` once the connection ends or fails.
pub fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            return Some((line.trim_end().to_string(), headers));
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

fn serve_conn(conn: TcpStream, seen: &Mutex<Vec<Seen>>) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    while let Some((line, headers)) = read_head(&mut r) {
        let mut parts = line.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let size = size.split(';').next().unwrap_or("").trim();
                let n = usize::from_str_radix(size, 16).unwrap_or(0);
                if n == 0 {
                    // Trailer section: lines up to the empty one.
                    loop {
                        let mut t = String::new();
                        if r.read_line(&mut t).unwrap_or(0) == 0 || t.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body = vec![0; n];
            if r.read_exact(&mut body).is_err() {
                return;
            }
        }
        let req = Seen {
            method: method.clone(),
            target: target.clone(),
            headers: headers.clone(),
            body: body.clone(),
        };
        seen.lock().unwrap().push(req);
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut status = 200;
        let mut extra: Vec<(String, String)> = Vec::new();
        let segs: Vec<&str> = target.split('?').next().unwrap().split('/').collect();
        for w in segs.windows(2) {
            match w[0] {
                "status" => status = w[1].parse().unwrap_or(200),
                "slow" => std::thread::sleep(Duration::from_millis(w[1].parse().unwrap_or(0))),
                _ => {}
            }
        }
        if segs.contains(&"redirect") {
            status = 302;
            extra.push(("Location".into(), "/elsewhere".into()));
        }
        if segs.contains(&"set-cookies") {
            extra.push(("Set-Cookie".into(), "a=1".into()));
            extra.push(("Set-Cookie".into(), "b=2".into()));
        }
        let payload = json!({
            "method": method,
            "target": target,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        let mut resp = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n");
        for (k, v) in &extra {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            resp.push_str("Connection: close\r\n");
        }
        let send_body = method != "HEAD" && status != 204 && status != 304;
        // `/chunked-response`: the echo in two chunks; `/close-delimited`: no length at all,
        // the end of the body is the end of the connection.
        if segs.contains(&"chunked-response") && send_body {
            resp.push_str("Transfer-Encoding: chunked\r\n\r\n");
            let (a, b) = payload.split_at(payload.len() / 2);
            let wire = format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
            if out.write_all(resp.as_bytes()).is_err() || out.write_all(wire.as_bytes()).is_err() {
                return;
            }
            if close {
                return;
            }
            continue;
        }
        if segs.contains(&"close-delimited") && send_body {
            resp.push_str("Connection: close\r\n\r\n");
            let _ = out.write_all(resp.as_bytes());
            let _ = out.write_all(payload.as_bytes());
            return;
        }
        if status != 204 && status != 304 {
            resp.push_str(&format!("Content-Length: {}\r\n", payload.len()));
        }
        resp.push_str("\r\n");
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
        if send_body && out.write_all(payload.as_bytes()).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// Polls `f` every 20 ms until it returns true or `within` passes; returns whether it did.
#[allow(dead_code)] // used by tests/cluster.rs and tests/pools.rs only
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An address nothing listens on: connections are refused.
pub fn dead_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// The real binary with its own database.
pub struct Gateway {
    /// Where tests send requests: the gateway itself, or in the crate tests/edge.rs the
    /// nginx edge in front of it (see `BEHIND_EDGE`).
    pub addr: String,
    /// The gateway itself, whatever is in front of it.
    pub direct_addr: String,
    pub db: TestDb,
    edge: Option<Edge>,
    child: Child,
    pub log_path: std::path::PathBuf,
    agent: ureq::Agent,
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        headers_named(&self.headers, name).first().copied()
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        headers_named(&self.headers, name)
    }
    /// The `error.code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {:?}", self.body))
            .to_string()
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Gateway {
        Gateway::start_on(TestDb::create(), env)
    }

    /// A gateway on a database made by the caller (e.g. on a `PrivatePg`).
    pub fn start_on(db: TestDb, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_on_port(db, None, env)
    }

    /// Starts the binary on `port`, or on port 0, the system picking a free one that the
    /// gateway's own "listening on" line reports: a port looked up beforehand and then
    /// bound could be taken by another test's gateway in between, which then answered this
    /// test's requests.
    fn start_on_port(db: TestDb, port: Option<u16>, env: &[(&str, &str)]) -> Gateway {
        let mut gw = Gateway::spawn(db, port.unwrap_or(0), env);
        if let Err(e) = gw.wait_ready() {
            panic!("{e}");
        }
        gw
    }

    fn spawn(db: TestDb, port: u16, env: &[(&str, &str)]) -> Gateway {
        let dir = std::env::temp_dir().join(unique("tollgate-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("ADMIN_SECRET", ADMIN_SECRET)
            .env("TOLLGATE_CLIENT_IP_KEY", CLIENT_IP_KEY)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("TOLLGATE_BCRYPT_COST", "4")
            .env("TOLLGATE_LOG_FLUSH_MS", "50")
            .env("TOLLGATE_WORKERS", "32")
            .env("TOLLGATE_DB_POOL_SIZE", "8")
            .env("RUST_LOG", "info");
        if BEHIND_EDGE {
            cmd.env("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("start tollgate");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let direct_addr = format!("http://127.0.0.1:{port}");
        Gateway {
            addr: direct_addr.clone(),
            direct_addr,
            db,
            edge: None,
            child,
            log_path,
            agent,
        }
    }

    /// Waits until this process says where it listens and answers there, then puts the
    /// edge in front in an edge run; Err with what went wrong otherwise.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "tollgate exited early ({status}): {}",
                    self.output()
                ));
            }
            let output = self.output();
            let bound = output
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(bound) = bound {
                self.direct_addr = format!("http://{bound}");
                self.addr = self.direct_addr.clone();
                if self.get("/healthz", &[]).status == 200 {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("tollgate did not come up: {}", self.output()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if BEHIND_EDGE {
            let edge = Edge::start(&self.direct_addr);
            self.addr = edge.addr.clone();
            self.edge = Some(edge);
        }
        Ok(())
    }

    /// Everything the binary wrote to stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        self.send(&self.addr, method, path, headers, body)
    }

    /// A request to the gateway itself, bypassing the edge even in an edge run: for tests
    /// of tollgate's own behaviour (uploads over the edge's body limit, upstream faults).
    pub fn request_direct(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        self.send(&self.direct_addr, method, path, headers, body)
    }

    /// `request_direct` for tests of tollgate's own behaviour: a client-side failure (no
    /// HTTP answer at all) fails the test.
    pub fn direct(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let r = self.request_direct(method, path, headers, body);
        assert_ne!(r.status, 0, "{method} {path}: {}", r.body);
        r
    }

    pub fn with_key_direct(&self, method: &str, path: &str, key: &str) -> Resp {
        self.direct(method, path, &[("x-api-key", key)], None)
    }

    fn send(
        &self,
        base: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let result = match body {
            Some(bytes) => self.agent.run(b.body(bytes.to_vec()).unwrap()),
            None => self.agent.run(b.body(()).unwrap()),
        };
        match result {
            Ok(r) => {
                let status = r.status().as_u16();
                let headers = r
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let body = r.into_body().read_to_string().unwrap_or_default();
                Resp {
                    status,
                    headers,
                    body,
                }
            }
            Err(e) => Resp {
                status: 0,
                headers: vec![],
                body: format!("client error: {e}"),
            },
        }
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, None)
    }

    pub fn with_key(&self, method: &str, path: &str, key: &str) -> Resp {
        self.request(method, path, &[("x-api-key", key)], None)
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.request(
            method,
            path,
            &[
                ("x-admin-secret", ADMIN_SECRET),
                ("content-type", "application/json"),
            ],
            bytes.as_deref(),
        )
    }

    pub fn create_user(&self, email: &str) -> i64 {
        let r = self.admin(
            "POST",
            "/admin/users",
            Some(json!({"email": email, "name": "Test"})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_i64().unwrap()
    }

    /// A key for `user` with extra fields merged in; returns (raw key, key id).
    pub fn create_key(&self, user: i64, extra: Value) -> (String, i64) {
        let mut body = json!({"userId": user, "name": "test key"});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let r = self.admin("POST", "/admin/api-keys", Some(body));
        assert_eq!(r.status, 201, "{}", r.body);
        let v = r.json();
        (
            v["rawKey"].as_str().unwrap().to_string(),
            v["id"].as_i64().unwrap(),
        )
    }

    pub fn create_route(&self, user: i64, prefix: &str, target: &str) -> i64 {
        self.create_route_with(user, prefix, target, json!({}))
    }

    pub fn create_route_with(&self, user: i64, prefix: &str, target: &str, extra: Value) -> i64 {
        let mut body = json!({"userId": user, "prefix": prefix, "targetUrl": target});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let r = self.admin("POST", "/admin/routes", Some(body));
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_i64().unwrap()
    }

    pub fn admin_get(&self, path: &str) -> Resp {
        self.admin("GET", path, None)
    }

    pub fn admin_post(&self, path: &str, body: Value) -> Resp {
        self.admin("POST", path, Some(body))
    }

    pub fn admin_patch(&self, path: &str, body: Value) -> Resp {
        self.admin("PATCH", path, Some(body))
    }

    pub fn admin_delete(&self, path: &str) -> Resp {
        self.admin("DELETE", path, None)
    }

    /// An admin request with a raw (possibly malformed) body.
    pub fn admin_raw(&self, method: &str, path: &str, body: &str) -> Resp {
        self.request(
            method,
            path,
            &[
                ("x-admin-secret", ADMIN_SECRET),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
    }

    /// A connection to this gateway's database.
    pub fn db(&self) -> postgres::Client {
        self.db.client()
    }

    /// Requests counted in the keys' sliding windows (`limit_counters`), every key and
    /// both buckets together (exact while a test's traffic spans at most two buckets).
    pub fn counted_requests(&self) -> i64 {
        self.counted_for_key(None)
    }

    /// Requests counted in one key's (or every key's) sliding windows, as above.
    pub fn counted_for_key(&self, key_id: Option<i64>) -> i64 {
        self.db()
            .query_one(
                "SELECT coalesce(sum(c + p), 0)::bigint
                   FROM limit_counters, unnest(counts, prevs) AS x(c, p)
                  WHERE kind = 'k' AND ($1::int8 IS NULL OR owner_id = $1)",
                &[&key_id],
            )
            .unwrap()
            .get(0)
    }

    /// A key's counter row: each sliding limit's current count, and the quota's count.
    pub fn key_counts(&self, key_id: i64) -> (Vec<i64>, i64) {
        let row = self
            .db()
            .query_one(
                "SELECT counts, quota_used FROM limit_counters WHERE kind = 'k' AND owner_id = $1",
                &[&key_id],
            )
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// Requests this gateway admitted from leases (`/admin/stats`).
    pub fn lease_admitted(&self) -> i64 {
        self.admin_get("/admin/stats").json()["leaseAdmitted"]
            .as_i64()
            .unwrap()
    }

    /// The count of the first sliding limit of each of `user`'s keys, in this window.
    pub fn first_counts_of_keys(&self, user: i64) -> Vec<i64> {
        self.db()
            .query(
                "SELECT coalesce(counts[1], 0) FROM limit_counters l
                   JOIN api_keys k ON k.id = l.owner_id
                  WHERE l.kind = 'k' AND k.user_id = $1",
                &[&user],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Waits (at most 10 s) until `request_logs` holds at least `n` rows; returns the count.
    pub fn wait_for_log_rows(&self, n: i64) -> i64 {
        self.wait_for_log_rows_within(n, Duration::from_secs(10))
    }

    /// Rows in `audit_log`.
    pub fn audit_rows(&self) -> i64 {
        self.db()
            .query_one("SELECT count(*) FROM audit_log", &[])
            .unwrap()
            .get(0)
    }

    /// Waits (at most `within`) until `request_logs` holds at least `n` rows; returns the
    /// count seen last.
    pub fn wait_for_log_rows_within(&self, n: i64, within: Duration) -> i64 {
        let mut db = self.db.client();
        let deadline = Instant::now() + within;
        loop {
            let c: i64 = db
                .query_one("SELECT count(*) FROM request_logs", &[])
                .unwrap()
                .get(0);
            if c >= n || Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The request ids `request_logs` holds.
    pub fn logged_request_ids(&self) -> std::collections::HashSet<String> {
        self.db()
            .query("SELECT request_id FROM request_logs", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// What only the process-shape crates use: a second instance on one database
/// (tests/cluster.rs), signals and the exit status (tests/faults.rs).
#[allow(dead_code)] // compiled, unused, in the other crates
impl Gateway {
    /// A second instance on this gateway's database (the database stays owned by `self`).
    pub fn start_beside(&self, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_on_port(self.db.alias(), None, env)
    }

    /// `start_beside` listening on `port`: a replica restarted where a load balancer's
    /// fixed server list expects it.
    pub fn start_beside_on(&self, port: u16, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_on_port(self.db.alias(), Some(port), env)
    }

    /// The port the gateway itself listens on.
    pub fn port(&self) -> u16 {
        let port = self.direct_addr.rsplit(':').next().expect("host:port");
        port.parse().expect("a port")
    }

    /// Sends a signal (`TERM`, `INT`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A PostgreSQL cluster of one test's own, for tests that stop and start the database:
/// initdb in a temp dir as user `postgres`, unix socket in that dir, no TCP listener, so
/// the shared test cluster is never touched. Stopped and deleted on drop.
#[allow(dead_code)] // tests/faults.rs only; compiled, unused, in the other crates
pub struct PrivatePg {
    pub dir: std::path::PathBuf,
    port: u16,
}

#[allow(dead_code)] // as the struct
impl PrivatePg {
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    /// Runs a Postgres program as the `postgres` user (initdb and the server refuse root).
    fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{}/{program}", Self::BIN)])
            .args(args)
            .current_dir("/")
            .output()
            .expect("runuser (the tests run as root, like `make test`)")
    }

    pub fn start() -> PrivatePg {
        let dir = std::env::temp_dir().join(unique("tollgate-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown postgres {dir:?}");
        let pg = PrivatePg {
            dir,
            port: free_port(),
        };
        let data = pg.data();
        let out = Self::as_postgres(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"],
        );
        assert!(out.status.success(), "initdb: {:?}", out);
        pg.start_again();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_string()
    }

    /// Connection string without a database name, like `pg_base()`.
    pub fn base(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-k {} -p {} -c listen_addresses='' -c fsync=off",
            self.dir.display(),
            self.port
        );
        let log = self.dir.join("pg.log");
        let out = Self::as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(out.status.success(), "pg_ctl start: {:?}", out);
    }

    /// Kills the cluster the way a crash would (`pg_ctl stop -m immediate`).
    pub fn kill(&self) {
        let out = self.stop_immediately();
        assert!(out.status.success(), "pg_ctl stop: {:?}", out);
    }

    fn stop_immediately(&self) -> std::process::Output {
        Self::as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.stop_immediately();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.edge.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.log_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Sends raw bytes and returns everything read back until the server closes or goes
/// quiet for `quiet`.
pub fn raw_request(addr: &str, bytes: &[u8], quiet: Duration) -> String {
    let mut s = TcpStream::connect(addr.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether every gateway this crate starts has the shipped nginx edge in front of it: true
/// in the crate tests/edge.rs (whose name is the switch) and nowhere else. There `addr` is
/// the edge's address, `direct_addr` the gateway's own, and the gateway believes the edge's
/// `X-Forwarded-For` (TOLLGATE_TRUSTED_PROXIES=127.0.0.1).
pub const BEHIND_EDGE: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"edge");

/// nginx with the shipped edge configuration (scripts/edge/nginx.conf) in front of one
/// gateway.
pub struct Edge {
    pub addr: String,
    child: Child,
    dir: std::path::PathBuf,
}

impl Edge {
    pub fn start(gateway_addr: &str) -> Edge {
        let port = free_port();
        let gw_port = gateway_addr.rsplit(':').next().unwrap().to_string();
        let dir = std::env::temp_dir().join(unique("tollgate-edge"));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let conf = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/edge/nginx.conf"
        ))
        .unwrap()
        .replace("__TOLLGATE_PORT__", &gw_port)
        .replace("__EDGE_PORT__", &port.to_string());
        // The tests run as root; nginx's workers would otherwise switch to `nobody`.
        std::fs::write(dir.join("nginx.conf"), format!("user root;\n{conf}")).unwrap();
        let nginx =
            std::env::var("TOLLGATE_TEST_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        let child = Command::new(nginx)
            .args([
                "-p",
                dir.to_str().unwrap(),
                "-c",
                "nginx.conf",
                "-g",
                "daemon off;",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (make test installs it)");
        let addr = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr.trim_start_matches("http://")).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Edge { addr, child, dir }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers instead of orphaning them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A memory figure of a process from `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}
