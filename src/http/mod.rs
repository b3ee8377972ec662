//! The bottom layer: what a request and an answer are, and the server loop that turns
//! tiny_http's connections into them and back. Nothing here knows about keys, routes or
//! the database; everything above depends on these types, never the other way.
//!
//! - [`Request`]: the head as parsed and checked once ([`Ctx`]) plus the body, read through
//!   a counter; [`Request::fake`] builds one without a socket, for handler unit tests.
//! - [`Reply`]: what a handler answers; `respond.rs` is the one place it becomes bytes.
//! - `context.rs`: the head → `Ctx` (client IP, request id, framing).
//! - `target.rs`: request-target normalisation and header checks (hostile input).
//! - `server.rs`: workers, signals, graceful shutdown, the [`Handler`] trait.

mod context;
mod respond;
pub mod server;
pub mod target;

pub use server::{Handler, Sent, ServerStats};

use crate::error::Error;
use serde_json::Value;
use std::io::{self, Read};
use std::time::{Instant, SystemTime};

/// A request as every stage sees it: the parsed head and the body still to be read.
pub struct Request<'a> {
    pub ctx: Ctx,
    pub body: RequestBody<'a>,
}

/// The parts of a request's head every stage reads.
pub struct Ctx {
    pub method: String,
    /// The request target's path, normalised by `target::check` (exactly as sent apart
    /// from merged slashes and decoded unreserved characters); when the request is
    /// `refused`, the path as sent, made printable.
    pub path: String,
    /// The query string without `?`, exactly as sent; `None` when there was no `?`.
    pub query: Option<String>,
    /// Header names and values in the order sent, repeats kept.
    pub headers: Vec<(String, String)>,
    /// The client: the TCP peer, or what a trusted edge proxy says in `X-Forwarded-For`.
    pub client_ip: String,
    /// The TCP peer, the address this hop appends to `X-Forwarded-For`.
    pub peer_ip: String,
    /// `http`, or what a trusted edge proxy says in `X-Forwarded-Proto`.
    pub proto: String,
    pub request_id: String,
    /// Why the message framing is refused (see `context::check_framing`); `None` when it
    /// is sound.
    pub bad_framing: Option<&'static str>,
    /// Why the target or the headers are refused (see `target::check`).
    pub refused: Option<Error>,
    /// Declared `Content-Length`, when `bad_framing` is `None` a plain number.
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub started: Instant,
    /// Wall-clock time the request arrived: the log row's `created_at`, so rows sort in
    /// arrival order whichever worker finishes first.
    pub received_at: SystemTime,
}

impl Ctx {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The request body, counting the bytes read so the server knows how much of a declared
/// body is still unread when the answer goes out.
pub struct RequestBody<'a> {
    inner: Source<'a>,
    read: u64,
}

enum Source<'a> {
    /// Taken from tiny_http on the first read only: `as_reader` answers `Expect:
    /// 100-continue` with `100 Continue`, which a request refused before its body must
    /// not get.
    Socket(&'a mut tiny_http::Request),
    /// A fake request's body.
    #[cfg(test)]
    Bytes(io::Cursor<Vec<u8>>),
}

impl RequestBody<'_> {
    /// Bytes of the body read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Read for RequestBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Source::Socket(rq) => rq.as_reader().read(buf)?,
            #[cfg(test)]
            Source::Bytes(c) => c.read(buf)?,
        };
        self.read += n as u64;
        Ok(n)
    }
}

impl<'a> Request<'a> {
    fn from_socket(ctx: Ctx, body: &'a mut tiny_http::Request) -> Request<'a> {
        Request {
            ctx,
            body: RequestBody {
                inner: Source::Socket(body),
                read: 0,
            },
        }
    }
}

impl Request<'static> {
    /// A request without a socket, as the server would build it from a peer at
    /// 127.0.0.1 that trusts no proxy: for unit tests of handlers. `target` is the
    /// request target (path and query) as sent.
    #[cfg(test)]
    pub fn fake(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ctx = context::build(
            method,
            target,
            headers,
            Some("127.0.0.1".parse().unwrap()),
            &[],
        );
        Request {
            ctx,
            body: RequestBody {
                inner: Source::Bytes(io::Cursor::new(body.to_vec())),
                read: 0,
            },
        }
    }
}

/// What a handler answers; `respond` turns it into bytes on the socket.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

pub enum Body {
    Bytes(Vec<u8>),
    /// The upstream's body, streamed; `len` is its Content-Length when it sent one.
    Stream {
        reader: Box<dyn Read + Send>,
        len: Option<u64>,
    },
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(value.to_string().into_bytes()),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    /// The one place an [`Error`] becomes an answer: its status, its JSON body and, where
    /// it has one, `Retry-After`.
    pub fn error(e: &Error) -> Reply {
        if let Error::Internal(detail) = e {
            log::error!("internal error: {detail}");
        }
        let mut reply = Reply::json(e.status(), &e.body());
        if let Some(secs) = e.retry_after() {
            reply.header("Retry-After", secs.to_string());
        }
        if let Some(allow) = e.allow() {
            reply.header("Allow", allow);
        }
        reply
    }

    pub fn header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    /// The body as JSON, when it is a complete JSON body; for tests.
    #[cfg(test)]
    pub fn json_body(&self) -> Value {
        match &self.body {
            Body::Bytes(b) => serde_json::from_slice(b).expect("a JSON body"),
            Body::Stream { .. } => panic!("a streamed body"),
        }
    }
}
