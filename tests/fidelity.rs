//! Proxy fidelity: what a client sends reaches the upstream as sent, and what the upstream
//! answers reaches the client as answered. The upstream is httpbin served by gunicorn (a
//! real-world WSGI stack), the harness `Upstream` where the raw request must be compared
//! byte for byte, or a tiny `std::net` server in this file where neither can produce the
//! case (a 1 GiB body, a 200 MiB sink).
use crate::util::{free_port, headers_named, proc_status_kib, read_head, Gateway, Upstream};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// httpbin under gunicorn on a free loopback port; stopped (workers included) on drop.
struct Httpbin {
    addr: String,
    child: Child,
    log: std::path::PathBuf,
}

impl Httpbin {
    fn start() -> Httpbin {
        let gunicorn = std::env::var("TOLLGATE_TEST_GUNICORN").unwrap_or_else(|_| {
            panic!(
                "TOLLGATE_TEST_GUNICORN is not set: run the suite with `make test`, which runs \
                 `scripts/deps.sh httpbin` (httpbin and gunicorn in .data/venv) and sets it to \
                 .data/venv/bin/gunicorn"
            )
        });
        let port = free_port();
        let log = std::env::temp_dir().join(format!("tollgate-httpbin-{}-{port}.log", {
            std::process::id()
        }));
        let child = Command::new(&gunicorn)
            .args(["-b", &format!("127.0.0.1:{port}")])
            .args(["-w", "2", "-k", "gthread", "--threads", "16"])
            .args(["--graceful-timeout", "1", "httpbin:app"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {gunicorn}: {e}"));
        let mut hb = Httpbin {
            addr: format!("http://127.0.0.1:{port}"),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = hb.child.try_wait() {
                panic!(
                    "gunicorn exited early ({status}): {}",
                    std::fs::read_to_string(&hb.log).unwrap_or_default()
                );
            }
            if let Some(r) = try_exchange(&hb.addr, "GET /get HTTP/1.1\r\nHost: x\r\n\r\n") {
                if r.status == 200 && r.header("server") == Some("gunicorn") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "httpbin did not come up: {}",
                std::fs::read_to_string(&hb.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        hb
    }
}

impl Drop for Httpbin {
    fn drop(&mut self) {
        // SIGINT is gunicorn's quick shutdown: the master stops its workers, then exits.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A tiny upstream: `handler` serves each accepted connection on a thread of its own.
struct TinyServer {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl TinyServer {
    fn start(handler: fn(TcpStream)) -> TinyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || handler(conn));
                }
            }
        });
        TinyServer { addr, stop }
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
    }
}

/// A response as read off the wire by `read_response`.
#[derive(Debug)]
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Reads one response with HTTP/1.1 framing: no body for HEAD, 1xx, 204 and 304; else
/// chunked, Content-Length, or up to the end of the connection.
fn read_response(r: &mut impl BufRead, head_request: bool) -> std::io::Result<RawResp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header line");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = RawResp {
        status,
        headers,
        body: Vec::new(),
        chunked: false,
    };
    if head_request || matches!(status, 100..=199 | 204 | 304) {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        resp.chunked = true;
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
            if n == 0 {
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = resp.header("content-length") {
        let n: usize = n.parse().unwrap();
        resp.body = vec![0; n];
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    BufReader::new(s)
}

/// Writes `request` on the connection and reads one response.
fn exchange_on(conn: &mut BufReader<TcpStream>, request: &str) -> RawResp {
    conn.get_mut().write_all(request.as_bytes()).unwrap();
    let head = request.starts_with("HEAD ");
    read_response(conn, head).unwrap_or_else(|e| panic!("no response to {request:?}: {e}"))
}

/// One request on a fresh connection.
fn exchange(addr: &str, request: &str) -> RawResp {
    exchange_on(&mut connect(addr), request)
}

fn try_exchange(addr: &str, request: &str) -> Option<RawResp> {
    let s = TcpStream::connect(addr.trim_start_matches("http://")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut conn = BufReader::new(s);
    conn.get_mut().write_all(request.as_bytes()).ok()?;
    read_response(&mut conn, false).ok()
}

fn host_of(addr: &str) -> &str {
    addr.trim_start_matches("http://")
}

fn setup(env: &[(&str, &str)]) -> (Gateway, i64, String) {
    crate::util::gateway_with_key("fidelity@example.com", env)
}

/// A header of httpbin's `/headers` or `/anything` echo, by case-insensitive name.
fn echoed<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["headers"]
        .as_object()
        .unwrap_or_else(|| panic!("no headers in {v}"))
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------
// Methods

#[test]
fn every_method_reaches_httpbin_and_head_keeps_content_length_without_a_body() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/anything", &hb.addr);
    gw.create_route(user, "/html", &hb.addr);
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let r = gw.direct(method, "/anything/m", &[("x-api-key", &key)], None);
        assert_eq!(r.status, 200, "{method}: {}", r.body);
        assert_eq!(r.json()["method"], method, "{method}");
    }
    // OPTIONS is answered by httpbin itself (Flask's automatic OPTIONS lists the methods).
    let r = gw.direct("OPTIONS", "/anything/m", &[("x-api-key", &key)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let allow = r.header("allow").expect("httpbin's Allow came back");
    assert!(allow.contains("PATCH"), "{allow}");
    // HEAD: same Content-Length as the GET body, no body bytes (framing checked on the
    // wire in `head_then_get_on_one_keep_alive_connection_both_parse`).
    let get = gw.direct("GET", "/html", &[("x-api-key", &key)], None);
    assert_eq!(get.status, 200);
    let head = gw.direct("HEAD", "/html", &[("x-api-key", &key)], None);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
}

#[test]
fn an_arbitrary_method_is_forwarded_as_sent() {
    let up = Upstream::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/api", &up.addr);
    let r = exchange(
        &gw.direct_addr,
        &format!(
            "PURGE /api/cache/item?x=1 HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("PURGE", "/api/cache/item?x=1")
    );
}

// ---------------------------------------------------------------------------------------
// Path and query

#[test]
fn path_and_query_reach_the_upstream_byte_for_byte() {
    let up = Upstream::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/api", &up.addr);
    let targets = [
        "/api/a%2Fb/c%20d",
        "/api/x?q=a+b&q=c%20d&empty=&flag&slash=%2F",
        "/api/%C3%A9t%C3%A9?city=K%C3%B8benhavn&emoji=%F0%9F%98%80",
        "/api/a+b/~u;p=1?k=%26%3D%3F&k=2&k=3",
        "/api/UPPER%2fcase?%2F=%2f",
    ];
    for target in targets {
        let r = exchange(
            &gw.direct_addr,
            &format!(
                "GET {target} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(up.last().target, target);
    }
}

// ---------------------------------------------------------------------------------------
// Streaming

const GIB: u64 = 1 << 30;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Answers every request with 1 GiB of zeros, written 64 KiB at a time.
fn serve_one_gib(conn: TcpStream) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    while read_head(&mut r).is_some() {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {GIB}\r\n\r\n"
        );
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        let zeros = [0u8; 64 * 1024];
        for _ in 0..GIB / zeros.len() as u64 {
            if w.write_all(&zeros).is_err() {
                return;
            }
        }
    }
}

#[test]
fn a_one_gib_download_streams_through_with_gateway_rss_under_64_mib() {
    let up = TinyServer::start(serve_one_gib);
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/big", &up.addr);
    let mut conn = connect(&gw.direct_addr);
    let t0 = Instant::now();
    conn.get_mut()
        .write_all(
            format!(
                "GET /big/zeros HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut length = None;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.trim().parse::<u64>().unwrap());
            }
        }
    }
    assert_eq!(length, Some(GIB), "the upstream's length is kept");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while total < GIB {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {total} bytes");
        assert!(buf[..n].iter().all(|&b| b == 0));
        total += n as u64;
    }
    assert_eq!(total, GIB);
    let secs = t0.elapsed().as_secs_f64();
    let peak = proc_status_kib(gw.pid(), "VmHWM");
    eprintln!(
        "1 GiB download through tollgate: {secs:.1} s ({:.0} MiB/s), gateway VmHWM {:.1} MiB",
        1024.0 / secs,
        peak as f64 / 1024.0
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "gateway peak RSS {peak} KiB during a 1 GiB download"
    );
}

/// Reads each request's Content-Length body, counting and discarding it, and answers with
/// the count.
fn serve_sink(conn: TcpStream) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    while let Some((_, headers)) = read_head(&mut r) {
        let len = headers_named(&headers, "content-length")
            .first()
            .map(|v| v.parse::<u64>().unwrap());
        let count = match len {
            Some(n) => std::io::copy(&mut (&mut r).take(n), &mut std::io::sink()).unwrap(),
            None => u64::MAX, // not framed by length: the test fails on this
        };
        let body = count.to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_200_mib_streamed_upload_passes_through_with_gateway_rss_under_64_mib() {
    const SIZE: u64 = 200 << 20;
    let up = TinyServer::start(serve_sink);
    let (gw, user, key) = setup(&[]);
    gw.create_route_with(user, "/up", &up.addr, json!({"maxBodyBytes": 300_000_000}));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{}/up/sink", gw.direct_addr))
        .header("x-api-key", &key)
        .header("content-type", "application/octet-stream")
        .header("content-length", SIZE.to_string())
        .body(ureq::SendBody::from_owned_reader(
            std::io::repeat(b'x').take(SIZE),
        ))
        .unwrap();
    let t0 = Instant::now();
    let resp = agent.run(request).expect("upload through tollgate");
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, SIZE.to_string(), "bytes the upstream counted");
    let peak = proc_status_kib(gw.pid(), "VmHWM");
    eprintln!(
        "200 MiB upload through tollgate: {secs:.1} s ({:.0} MiB/s), gateway VmHWM {:.1} MiB",
        200.0 / secs,
        peak as f64 / 1024.0
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "gateway peak RSS {peak} KiB during a 200 MiB upload"
    );
}

#[test]
fn a_chunked_request_body_arrives_intact() {
    let up = Upstream::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/api", &up.addr);
    let r = exchange(
        &gw.direct_addr,
        &format!(
            "POST /api/chunked HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n\
             Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
             6\r\nhello \r\n8;ext=1\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(String::from_utf8_lossy(&seen.body), "hello chunked world");
    assert_eq!(seen.header("content-type"), Some("text/plain"));
}

/// Sends `request` on a fresh connection (which the server closes after answering) and
/// returns (time to the first body byte, time to the end, the response as parsed).
fn time_body(addr: &str, request: &str) -> (Duration, Duration, RawResp) {
    let mut s = TcpStream::connect(host_of(addr)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    let mut first = None;
    let mut head_end = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            head_end = all.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let (None, Some(h)) = (first, head_end) {
            if all.len() > h {
                first = Some(t0.elapsed());
            }
        }
    }
    let total = t0.elapsed();
    let resp = read_response(&mut &all[..], false).expect("a whole response");
    (first.expect("a body byte"), total, resp)
}

fn get_request(path: &str, key: Option<&str>) -> String {
    let key_header = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{key_header}Connection: close\r\n\r\n")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// httpbin's `/drip` declares `Content-Length: 4` and writes one byte every 500 ms: each
/// byte must reach the client when the upstream sends it, not when the body is complete.
#[test]
fn a_drip_response_arrives_byte_by_byte_through_the_gateway() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/drip", &hb.addr);
    let drip = "/drip?duration=2&numbytes=4&delay=0";
    let (d_first, d_total, direct) = time_body(&hb.addr, &get_request(drip, None));
    let (g_first, g_total, via) = time_body(&gw.direct_addr, &get_request(drip, Some(&key)));
    eprintln!(
        "drip 4 bytes over 2 s: direct TTFB {:.0} ms / total {:.0} ms; through tollgate TTFB \
         {:.0} ms / total {:.0} ms",
        ms(d_first),
        ms(d_total),
        ms(g_first),
        ms(g_total)
    );
    assert_eq!(direct.body, b"****");
    assert_eq!(via.body, b"****");
    assert_eq!(via.header("content-length"), Some("4"));
    assert!(
        g_total >= Duration::from_millis(1200),
        "the drip takes time: {g_total:?}"
    );
    assert!(
        g_first.as_secs_f64() < 0.6 * g_total.as_secs_f64(),
        "the first byte came at {g_first:?} of {g_total:?}: the body was held back"
    );
}

#[test]
fn a_stream_response_of_unknown_length_is_relayed_chunked() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/stream", &hb.addr);
    let (d_first, d_total, _) = time_body(&hb.addr, &get_request("/stream/5", None));
    let (g_first, g_total, via) = time_body(&gw.direct_addr, &get_request("/stream/5", Some(&key)));
    eprintln!(
        "stream/5 (chunked): direct TTFB {:.1} ms / total {:.1} ms; through tollgate TTFB \
         {:.1} ms / total {:.1} ms",
        ms(d_first),
        ms(d_total),
        ms(g_first),
        ms(g_total)
    );
    assert_eq!(via.status, 200);
    assert!(via.chunked, "{:?}", via.headers);
    let text = String::from_utf8_lossy(&via.body);
    assert_eq!(text.lines().count(), 5, "{text}");
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], i, "{line}");
    }
}

/// An upstream that answers without a length and writes its body in pieces 400 ms apart:
/// the gateway must relay each piece as it comes (chunked), not wait for the end.
fn serve_slow_unknown_length(conn: TcpStream) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    if read_head(&mut r).is_none() {
        return;
    }
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in ["one\n", "two\n", "three\n"] {
        let _ = w.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
        std::thread::sleep(Duration::from_millis(400));
    }
    let _ = w.write_all(b"0\r\n\r\n");
}

#[test]
fn a_chunked_response_of_unknown_length_is_relayed_piece_by_piece() {
    let up = TinyServer::start(serve_slow_unknown_length);
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/slowchunks", &up.addr);
    let (first, total, body) = time_body(
        &gw.direct_addr,
        &format!(
            "GET /slowchunks HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
        ),
    );
    eprintln!(
        "slow chunked upstream through tollgate: TTFB {:.0} ms / total {:.0} ms",
        first.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
    assert_eq!(body.body, b"one\ntwo\nthree\n");
    assert!(
        first.as_secs_f64() < 0.6 * total.as_secs_f64(),
        "first byte at {first:?} of {total:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Headers

#[test]
fn end_to_end_headers_pass_both_ways_and_set_cookies_stay_separate() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/headers", &hb.addr);
    gw.create_route(user, "/response-headers", &hb.addr);
    let r = gw.direct(
        "GET",
        "/headers",
        &[
            ("x-api-key", &key),
            ("x-custom", "one two"),
            ("accept-language", "da, en;q=0.8"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(echoed(&v, "x-custom"), Some("one two"));
    assert_eq!(echoed(&v, "accept-language"), Some("da, en;q=0.8"));

    let r = exchange(
        &gw.direct_addr,
        &format!(
            "GET /response-headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2&X-Resp=hello HTTP/1.1\r\n\
             Host: gw\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers_named("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(r.header("x-resp"), Some("hello"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "httpbin's own headers come back"
    );
}

#[test]
fn hop_by_hop_headers_and_the_credential_never_reach_httpbin() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/headers", &hb.addr);
    let mut conn = connect(&gw.direct_addr);
    let r = exchange_on(
        &mut conn,
        &format!(
            "GET /headers?show_env=1 HTTP/1.1\r\nHost: gw.example:8080\r\nx-api-key: {key}\r\n\
             Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             TE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic c2VjcmV0\r\n\
             Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(echoed(&v, "x-kept"), Some("yes"));
    for name in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-api-key",
    ] {
        assert_eq!(echoed(&v, name), None, "{name} reached the upstream: {v}");
    }
    // Nor does the Connection header tollgate sends name the header it dropped.
    let connection = echoed(&v, "connection").unwrap_or("").to_ascii_lowercase();
    assert!(!connection.contains("x-secret-hop"), "{connection}");
    let text = v.to_string();
    assert!(!text.contains(&key), "the key reached the upstream: {text}");

    // The key as a Bearer token is removed too.
    let r = exchange_on(
        &mut conn,
        &format!(
            "GET /headers?show_env=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(echoed(&v, "authorization"), None, "{v}");
    assert!(!v.to_string().contains(&key));
}

#[test]
fn forwarding_headers_are_added_and_host_is_the_upstreams_unless_preserved() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/headers", &hb.addr);
    gw.create_route_with(user, "/anything", &hb.addr, json!({"preserveHost": true}));
    let r = exchange(
        &gw.direct_addr,
        &format!(
            "GET /headers?show_env=1 HTTP/1.1\r\nHost: client.example:8080\r\nx-api-key: {key}\r\n\
             X-Forwarded-For: 203.0.113.9\r\nVia: 1.0 edge\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(echoed(&v, "host"), Some(host_of(&hb.addr)), "{v}");
    assert_eq!(
        echoed(&v, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1"),
        "{v}"
    );
    assert_eq!(echoed(&v, "x-forwarded-proto"), Some("http"));
    assert_eq!(echoed(&v, "x-forwarded-host"), Some("client.example:8080"));
    let via = echoed(&v, "via").unwrap_or("");
    assert!(via.contains("1.1 tollgate"), "{via}");
    assert!(via.contains("1.0 edge"), "{via}");

    let r = exchange(
        &gw.direct_addr,
        &format!(
            "GET /anything/h HTTP/1.1\r\nHost: client.example:8080\r\nx-api-key: {key}\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(echoed(&v, "host"), Some("client.example:8080"), "{v}");
}

// ---------------------------------------------------------------------------------------
// Status codes and framing

#[test]
fn status_codes_pass_through_exactly_and_redirects_are_not_followed() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/status", &hb.addr);
    gw.create_route(user, "/redirect-to", &hb.addr);
    for code in [200, 201, 202, 204, 301, 304, 404, 418, 500, 503] {
        let r = gw.direct(
            "GET",
            &format!("/status/{code}"),
            &[("x-api-key", &key)],
            None,
        );
        assert_eq!(r.status, code, "{}", r.body);
    }
    let r = gw.direct("GET", "/redirect-to?url=/get", &[("x-api-key", &key)], None);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/get"));
}

#[test]
fn no_content_and_not_modified_carry_no_body_on_a_reused_connection() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/status", &hb.addr);
    gw.create_route(user, "/get", &hb.addr);
    let mut conn = connect(&gw.direct_addr);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n\r\n");
    let r = exchange_on(&mut conn, &get("/status/204"));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    assert_eq!(r.header("transfer-encoding"), None, "{:?}", r.headers);
    let r = exchange_on(&mut conn, &get("/status/304"));
    assert_eq!(r.status, 304);
    assert_eq!(r.header("transfer-encoding"), None, "{:?}", r.headers);
    // Any stray body byte after either answer would corrupt this one.
    let r = exchange_on(&mut conn, &get("/get?after=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["args"]["after"], "1");
}

#[test]
fn head_then_get_on_one_keep_alive_connection_both_parse() {
    let hb = Httpbin::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route(user, "/html", &hb.addr);
    gw.create_route(user, "/stream", &hb.addr);
    let mut conn = connect(&gw.direct_addr);
    let req = |m: &str, path: &str| {
        format!("{m} {path} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n\r\n")
    };
    let head = exchange_on(&mut conn, &req("HEAD", "/html"));
    assert_eq!(head.status, 200);
    let declared: usize = head
        .header("content-length")
        .expect("HEAD keeps Content-Length")
        .parse()
        .unwrap();
    let get = exchange_on(&mut conn, &req("GET", "/html"));
    assert_eq!(get.status, 200);
    assert_eq!(get.body.len(), declared);
    assert!(String::from_utf8_lossy(&get.body).contains("Herman Melville"));
    // HEAD of a response httpbin would send chunked, then GET again.
    let head = exchange_on(&mut conn, &req("HEAD", "/stream/2"));
    assert_eq!(head.status, 200);
    let get = exchange_on(&mut conn, &req("GET", "/stream/2"));
    assert_eq!(get.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&get.body).lines().count(),
        2,
        "{:?}",
        String::from_utf8_lossy(&get.body)
    );
}

// ---------------------------------------------------------------------------------------
// Route options

#[test]
fn strip_prefix_forwards_the_rest_of_the_path() {
    let up = Upstream::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route_with(user, "/users", &up.addr, json!({"stripPrefix": true}));
    assert_eq!(
        gw.with_key_direct("GET", "/users/7?fields=name", &key)
            .status,
        200
    );
    assert_eq!(up.last().target, "/7?fields=name");
    assert_eq!(gw.with_key_direct("GET", "/users", &key).status, 200);
    assert_eq!(up.last().target, "/");
}

#[test]
fn methods_option_refuses_others_with_405_and_allow() {
    let up = Upstream::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route_with(user, "/ro", &up.addr, json!({"methods": ["GET", "POST"]}));
    assert_eq!(gw.with_key_direct("GET", "/ro/x", &key).status, 200);
    assert_eq!(gw.with_key_direct("POST", "/ro/x", &key).status, 200);
    let r = gw.with_key_direct("DELETE", "/ro/x", &key);
    assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"));
    let allow = r.header("allow").expect("Allow header");
    let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "POST"]);
    assert_eq!(
        up.requests().len(),
        2,
        "the DELETE never reached the upstream"
    );
}

#[test]
fn host_option_matches_only_that_host_with_any_port() {
    let (tenant, other) = (Upstream::start(), Upstream::start());
    let (gw, user, key) = setup(&[]);
    gw.create_route_with(
        user,
        "/t",
        &tenant.addr,
        json!({"host": "acme.example.com"}),
    );
    let req = |host: &str| {
        format!(
            "GET /t/x HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
        )
    };
    assert_eq!(
        exchange(&gw.direct_addr, &req("acme.example.com")).status,
        200
    );
    assert_eq!(
        exchange(&gw.direct_addr, &req("ACME.example.com:8443")).status,
        200
    );
    let r = exchange(&gw.direct_addr, &req("other.example.com"));
    assert_eq!((r.status, r.code().as_str()), (404, "route_not_found"));
    assert_eq!(tenant.requests().len(), 2);
    // A host-less route with the same prefix serves every other host.
    gw.create_route(user, "/t", &other.addr);
    assert_eq!(
        exchange(&gw.direct_addr, &req("other.example.com")).status,
        200
    );
    assert_eq!(
        exchange(&gw.direct_addr, &req("acme.example.com")).status,
        200
    );
    assert_eq!((tenant.requests().len(), other.requests().len()), (3, 1));
}

#[test]
fn max_body_bytes_refuses_declared_and_streamed_chunked_bodies_over_the_limit() {
    let up = Upstream::start();
    let (gw, user, key) = setup(&[]);
    gw.create_route_with(user, "/small", &up.addr, json!({"maxBodyBytes": 100}));
    // Exactly the limit passes.
    let body = "x".repeat(100);
    let r = exchange(
        &gw.direct_addr,
        &format!(
            "POST /small HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nContent-Length: 100\r\n\
             Connection: close\r\n\r\n{body}"
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body.len(), 100);
    // Declared over the limit: refused from the head alone (no body byte is ever sent).
    let t0 = Instant::now();
    let r = exchange(
        &gw.direct_addr,
        &format!(
            "POST /small HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nContent-Length: 5000000\r\n\r\n"
        ),
    );
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Chunked over the limit: refused while streaming.
    let chunk = "y".repeat(80);
    let r = exchange(
        &gw.direct_addr,
        &format!(
            "POST /small HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n50\r\n{chunk}\r\n50\r\n{chunk}\r\n0\r\n\r\n"
        ),
    );
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
    assert_eq!(
        up.requests().len(),
        1,
        "only the body within the limit arrived"
    );
}
