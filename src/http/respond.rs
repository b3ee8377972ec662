//! The one place a [`Reply`] becomes bytes on a connection: framing exactly as RFC 9110
//! allows for the status and method, bodies relayed as they arrive, and what to do with a
//! body the handler never read (drain it, hand it to tiny_http, or abandon the
//! connection).

use super::server::ServerStats;
use super::{Body, Ctx, Reply};
use crate::config::DRAIN_LIMIT_BYTES;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tiny_http::{Header, Request, StatusCode};

/// Writes the reply and returns the body bytes sent. `head` is a HEAD request's answer:
/// headers only.
pub fn respond(rq: Request, reply: Reply, head: bool) -> u64 {
    let no_body = head || matches!(reply.status, 100..=199 | 204 | 304);
    let streamed = matches!(reply.body, Body::Stream { .. });
    let (reader, len): (Box<dyn Read + Send>, Option<u64>) = match reply.body {
        Body::Bytes(b) => {
            let n = b.len() as u64;
            (Box::new(io::Cursor::new(b)), Some(n))
        }
        Body::Stream { reader, len } => (reader, len),
    };
    if no_body {
        // tiny_http would add `Content-Length: 0` to a 204 and chunked framing to a 304
        // without a length; RFC 9110 §8.6 forbids the first, §15.4.5 the second.
        let declared = len.filter(|_| !matches!(reply.status, 100..=199 | 204));
        let framing = declared.map_or(Framing::None, Framing::Length);
        return write_raw(rq, reply.status, &reply.headers, framing);
    }
    if streamed && len.is_none() && *rq.http_version() == (1, 1) {
        return write_raw(rq, reply.status, &reply.headers, Framing::Chunked(reader));
    }
    // tiny_http drops a `Connection` header from its responses; a closing answer (the
    // shutdown's, see `server::shutdown`) is written raw to keep it.
    let closing = reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"));
    if let (true, Some(n)) = (streamed || closing, len) {
        // An upstream body of known length that trickles in (long polls, drips) is relayed
        // as it arrives; tiny_http's buffered writer would hold it back until complete.
        return write_raw(rq, reply.status, &reply.headers, Framing::Sized(n, reader));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let reader = Counting {
        inner: reader,
        count: sent.clone(),
    };
    let headers = reply
        .headers
        .iter()
        .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
        .collect();
    let response = tiny_http::Response::new(
        StatusCode(reply.status),
        headers,
        reader,
        len.and_then(|n| usize::try_from(n).ok()),
        None,
    )
    // tiny_http would switch bodies of 32 KiB and more to chunked; keep the length the
    // upstream declared so clients can show progress and detect truncation.
    .with_chunked_threshold(usize::MAX);
    if let Err(e) = rq.respond(response) {
        log::debug!("client went away during the response: {e}");
    }
    sent.load(Ordering::Relaxed)
}

enum Framing {
    /// Head only (HEAD, 1xx, 204, 304 without a length).
    None,
    /// Head only, declaring the length the full response would have (HEAD, 304).
    Length(u64),
    /// A body of declared length, relayed as it arrives.
    Sized(u64, Box<dyn Read + Send>),
    /// A body of unknown length, relayed chunk by chunk as the upstream produces it.
    /// tiny_http's own chunked encoder buffers 8 KiB before writing, which would hold back
    /// server-sent events and slow drips; here each read is framed and flushed at once.
    Chunked(Box<dyn Read + Send>),
}

/// Writes the response on the raw connection, framing exactly as given. Returns body bytes.
fn write_raw(rq: Request, status: u16, headers: &[(String, String)], framing: Framing) -> u64 {
    let mut out = rq.into_writer();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status,
        StatusCode(status).default_reason_phrase()
    );
    for (k, v) in headers {
        if valid_header(k, v) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    match &framing {
        Framing::None => {}
        Framing::Length(n) | Framing::Sized(n, _) => {
            head.push_str(&format!("Content-Length: {n}\r\n"))
        }
        Framing::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    let mut sent = 0u64;
    // Each piece goes out as one write: the head with the first piece of body, each chunk
    // with its framing. Separate small writes would meet Nagle's algorithm and the client's
    // delayed ACK (40 ms a response, measured) — tiny_http gives no access to TCP_NODELAY.
    let mut pending = head.into_bytes();
    let result = (|| -> io::Result<()> {
        let mut send = |pending: &mut Vec<u8>| -> io::Result<()> {
            out.write_all(pending)?;
            out.flush()?;
            pending.clear();
            Ok(())
        };
        let mut buf = vec![0u8; 64 * 1024];
        match framing {
            Framing::None | Framing::Length(_) => send(&mut pending),
            Framing::Sized(n, mut body) => {
                // Read to the end (ureq hands the upstream connection back to its pool only
                // once the body reports its end), writing never more than declared.
                loop {
                    let got = body.read(&mut buf)?;
                    let room = usize::try_from(n - sent).unwrap_or(usize::MAX).min(got);
                    pending.extend_from_slice(&buf[..room]);
                    sent += room as u64;
                    if got == 0 || !pending.is_empty() {
                        send(&mut pending)?;
                    }
                    if got == 0 {
                        return Ok(());
                    }
                }
            }
            Framing::Chunked(mut body) => loop {
                let got = body.read(&mut buf)?;
                if got > 0 {
                    pending.extend_from_slice(format!("{got:x}\r\n").as_bytes());
                    pending.extend_from_slice(&buf[..got]);
                    pending.extend_from_slice(b"\r\n");
                    sent += got as u64;
                } else {
                    pending.extend_from_slice(b"0\r\n\r\n");
                }
                send(&mut pending)?;
                if got == 0 {
                    return Ok(());
                }
            },
        }
    })();
    if let Err(e) = result {
        // The client or the upstream went away mid-body; the missing final chunk tells the
        // client the response is incomplete.
        log::debug!("streamed response cut short: {e}");
    }
    sent
}

/// A header tiny_http would accept: a token name and a value without CR, LF or NUL.
fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Whether the request may go back to tiny_http with what is left of its body. tiny_http
/// does not drain an unread chunked body (its bytes would be read as the next request), so
/// we drain it here, up to `max_body + 1` bytes; whatever follows a broken or oversized
/// chunked body is parsed as a new request and meets the full auth path like any other.
/// tiny_http does drain an unread `Content-Length` body, but by allocating the whole
/// remainder at once, so only a bounded remainder is safe to hand back.
pub fn body_is_safe_to_drop(rq: &mut Request, ctx: &Ctx, bytes_read: u64, max_body: u64) -> bool {
    // A body whose framing was refused is not drained: tiny_http would decode a
    // `Transfer-Encoding: gzip` body as chunked and wait forever for a chunk size.
    if ctx.chunked && ctx.bad_framing.is_none() {
        let _ = io::copy(&mut rq.as_reader().take(max_body + 1), &mut io::sink());
        return true;
    }
    let remaining = ctx.content_length.unwrap_or(0).saturating_sub(bytes_read);
    remaining <= DRAIN_LIMIT_BYTES
}

/// Answers a request whose unread body cannot be dropped safely: the response is written
/// through `upgrade` and the connection is deliberately leaked (one thread and socket), which
/// beats aborting the process. Counted in `ServerStats` (`/admin/stats`); the nginx edge
/// (`client_max_body_size`) keeps such requests from ever reaching tollgate.
pub fn abandon(stats: &ServerStats, rq: Request, reply: Reply) -> u64 {
    stats.abandoned_bodies.fetch_add(1, Ordering::Relaxed);
    log::warn!("answered with an oversized unread body; connection abandoned");
    let body = match reply.body {
        Body::Bytes(b) => b,
        Body::Stream { .. } => Vec::new(),
    };
    // `upgrade` writes the status line and headers but no framing and no body (it expects
    // the caller to take over the socket), so the JSON follows and the client reads it to
    // the end of the connection.
    let mut headers: Vec<Header> = reply
        .headers
        .iter()
        .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
        .collect();
    headers.retain(|h| !h.field.equiv("Content-Length"));
    let head = tiny_http::Response::new(StatusCode(reply.status), headers, io::empty(), None, None);
    let mut stream = rq.upgrade("close", head);
    let _ = stream.write_all(&body).and_then(|()| stream.flush());
    std::mem::forget(stream);
    body.len() as u64
}

struct Counting {
    inner: Box<dyn Read + Send>,
    count: Arc<AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
