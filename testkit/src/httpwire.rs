//! The client's side of HTTP/1.1 for the drain benchmarks: the one request they send,
//! an incremental response parser, and idle keep-alive connections opened by one
//! request each.
//!
//! Responses are framed by `Content-Length` only (every server measured here sends it
//! for its small bodies); a response without it, or chunked, is counted invalid. What
//! the drains care about besides the status is whether the response carries
//! `Connection: close`, which [`Parsed::Complete`] reports.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Headers a response may carry before it counts as invalid.
const MAX_HEADERS: usize = 32;
/// Room for one response; a bigger one is invalid (the bodies here are a few bytes).
pub const MAX_RESPONSE: usize = 8192;

/// The bytes of `GET path HTTP/1.1` with a `Host` header, keep-alive (HTTP/1.1's
/// default).
pub fn request(path: &str) -> Box<[u8]> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: gracering-bench\r\n\r\n")
        .into_bytes()
        .into_boxed_slice()
}

/// One complete response, as far as a drain cares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    /// The response carries `Connection: close`.
    pub close: bool,
    /// Bytes of the whole response, head and body.
    pub len: usize,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Where a response stands after the bytes received so far.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Partial,
    Complete(Response),
    Invalid,
}

/// Parses the start of `buf` as one response.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE => return Parsed::Partial,
        _ => return Parsed::Invalid,
    };
    let (mut length, mut close) = (None, res.version == Some(0));
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return Parsed::Invalid;
            };
            if length.replace(n).is_some_and(|m| m != n) {
                return Parsed::Invalid;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let tokens = h.value.split(|&b| b == b',');
            close |= tokens
                .map(<[u8]>::trim_ascii)
                .any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid;
        }
    }
    let (Some(status), Some(length)) = (res.code, length) else {
        return Parsed::Invalid;
    };
    let len = head + length;
    match buf.len() {
        n if n < len && len <= MAX_RESPONSE => Parsed::Partial,
        n if n < len => Parsed::Invalid,
        _ => Parsed::Complete(Response { status, close, len }),
    }
}

/// Sends one `GET path` on a blocking `stream` and reads its response, all before
/// `deadline`. Bytes beyond the response are an error (nothing is pipelined).
pub fn get(stream: &mut TcpStream, path: &str, deadline: Instant) -> io::Result<Response> {
    stream.set_write_timeout(Some(left(deadline)?))?;
    stream.write_all(&request(path))?;
    let mut buf = vec![0u8; MAX_RESPONSE];
    let mut got = 0;
    loop {
        stream.set_read_timeout(Some(left(deadline)?))?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        match parse(&buf[..got]) {
            Parsed::Partial => {}
            Parsed::Complete(r) if r.len == got => return Ok(r),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad response")),
        }
    }
}

/// Idle keep-alive connections, each opened by one successful `GET path`.
pub struct IdleSet {
    /// Non-blocking, ready to hand to [`crate::idle::hold`].
    pub streams: Vec<TcpStream>,
    /// Connections that failed to open, or whose request failed, was not 2xx or was
    /// answered with `Connection: close`.
    pub open_errors: u64,
}

/// Opens `conns` connections to `addr`, one after the other, each doing one `GET path`
/// that must succeed and keep the connection alive; all within `timeout`.
pub fn open_idle(addr: SocketAddr, conns: usize, path: &str, timeout: Duration) -> IdleSet {
    let deadline = Instant::now() + timeout;
    let mut set = IdleSet {
        streams: Vec::with_capacity(conns),
        open_errors: 0,
    };
    for _ in 0..conns {
        let opened = (|| {
            let mut stream = TcpStream::connect_timeout(&addr, left(deadline)?)?;
            stream.set_nodelay(true)?;
            let r = get(&mut stream, path, deadline)?;
            if !r.is_success() || r.close {
                return Err(io::Error::other("idle request refused keep-alive"));
            }
            stream.set_nonblocking(true)?;
            Ok::<_, io::Error>(stream)
        })();
        match opened {
            Ok(stream) => set.streams.push(stream),
            Err(_) => set.open_errors += 1,
        }
    }
    set
}

/// Time left until `deadline`, or a timeout error once it passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    match deadline.saturating_duration_since(Instant::now()) {
        d if d.is_zero() => Err(io::ErrorKind::TimedOut.into()),
        d => Ok(d),
    }
}
