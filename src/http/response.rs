//! Writing responses: the status line, a cached `Date`, `Content-Length`, the
//! connection's fate, the service's own fields and the body, straight into the
//! connection's output buffer.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::mailbox::ConnAddr;

/// An HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// 200 OK.
    pub const OK: Status = Status(200);
    /// 400 Bad Request: a malformed or ambiguous request.
    pub const BAD_REQUEST: Status = Status(400);
    /// 404 Not Found.
    pub const NOT_FOUND: Status = Status(404);
    /// 408 Request Timeout: the head (or body) did not arrive in time.
    pub const REQUEST_TIMEOUT: Status = Status(408);
    /// 413 Content Too Large: the body is over the limit.
    pub const CONTENT_TOO_LARGE: Status = Status(413);
    /// 417 Expectation Failed: an `Expect` other than `100-continue`.
    pub const EXPECTATION_FAILED: Status = Status(417);
    /// 431 Request Header Fields Too Large.
    pub const HEADERS_TOO_LARGE: Status = Status(431);
    /// 500 Internal Server Error.
    pub const INTERNAL_ERROR: Status = Status(500);
    /// 501 Not Implemented: a transfer coding the server does not support.
    pub const NOT_IMPLEMENTED: Status = Status(501);
    /// 503 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    /// 504 Gateway Timeout: a deferred answer did not come in time.
    pub const GATEWAY_TIMEOUT: Status = Status(504);
    /// 201 Created.
    pub const CREATED: Status = Status(201);
    /// 405 Method Not Allowed (send an `Allow` field with it).
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    /// 505 HTTP Version Not Supported.
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);

    /// The standard reason phrase.
    pub fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            301 => "Moved Permanently",
            302 => "Found",
            304 => "Not Modified",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            413 => "Content Too Large",
            417 => "Expectation Failed",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

/// The `Date` header value, formatted at most once a second per worker. The wall clock
/// is read only when the second is over, judged by the loop turn's monotonic clock.
#[derive(Debug)]
pub(crate) struct DateCache {
    next: Option<Instant>,
    text: [u8; 29],
}

impl DateCache {
    pub fn new() -> DateCache {
        DateCache {
            next: None,
            text: [b' '; 29],
        }
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT` for the current second, given the turn's clock.
    pub fn get(&mut self, now: Instant) -> &[u8; 29] {
        if self.next.is_none_or(|next| now >= next) {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.text = imf_fixdate(wall.as_secs());
            let rest =
                Duration::from_secs(1) - Duration::from_nanos(u64::from(wall.subsec_nanos()));
            self.next = Some(crate::clock::after(now, rest));
        }
        &self.text
    }
}

/// Formats seconds since the epoch as an IMF-fixdate (RFC 9110 5.6.7).
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [b' '; 29];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3] = b',';
    two(&mut out[5..7], day as u64);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    let y = year as u64;
    two(&mut out[12..14], y / 100);
    two(&mut out[14..16], y % 100);
    two(&mut out[17..19], h);
    out[19] = b':';
    two(&mut out[20..22], m);
    out[22] = b':';
    two(&mut out[23..25], s);
    out[26..29].copy_from_slice(b"GMT");
    out
}

fn two(dst: &mut [u8], v: u64) {
    dst[0] = b'0' + (v / 10 % 10) as u8;
    dst[1] = b'0' + (v % 10) as u8;
}

/// Where a [`Service`](super::Service) writes its response. One response per request;
/// `Date`, `Content-Length` and, when the connection will close, `Connection: close`
/// are added by gracering.
pub struct Response<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) date: &'a [u8; 29],
    pub(crate) close: bool,
    pub(crate) keep_alive_1_0: bool,
    pub(crate) head_only: bool,
    pub(crate) draining: bool,
    pub(crate) sent: bool,
    /// The status sent (0 until then), for the metrics.
    pub(crate) status: u16,
    pub(crate) deferred: Option<(Duration, u64)>,
    /// Set by [`wait`](Response::wait): the answer comes as a message, by this deadline.
    pub(crate) waiting: Option<Duration>,
    /// This request's address for messages (its tag: the connection's request number).
    pub(crate) addr: ConnAddr,
}

impl Response<'_> {
    /// Writes the response: status, the service's header fields, and the body.
    ///
    /// ```
    /// # fn f(res: &mut gracering::http::Response<'_>) {
    /// use gracering::http::Status;
    /// res.send(Status::OK, &[("content-type", b"application/json")], br#"{"ok":true}"#);
    /// # }
    /// ```
    pub fn send(&mut self, status: Status, headers: &[(&str, &[u8])], body: &[u8]) {
        if self.sent {
            return;
        }
        if let Some(bad) = headers.iter().find(|(n, v)| !header_ok(n, v)) {
            // Response splitting or a second framing header: never sent as given.
            log::warn!(
                "a service set the response header {:?}, which is refused (a name that is \
                 not a token, a value with CR, LF or NUL, or a framing header the HTTP \
                 layer writes itself): answered 500 instead",
                bad.0
            );
            return self.send(
                Status::INTERNAL_ERROR,
                &[("content-type", b"text/plain")],
                b"invalid response header",
            );
        }
        self.sent = true;
        self.status = status.0;
        write_head(
            self.out,
            status,
            self.date,
            body.len(),
            self.close,
            self.keep_alive_1_0,
        );
        for (name, value) in headers {
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value);
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !self.head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// Answers later instead of now, without holding up the worker: after `after`,
    /// [`Service::resume_timer`](super::Service::resume_timer) is called with `tag` to
    /// write the response. Meanwhile the connection reads nothing more (pipelined
    /// requests wait); a drain that begins meanwhile lets it finish and closes the
    /// connection after it.
    pub fn defer(&mut self, after: Duration, tag: u64) {
        if !self.sent {
            self.deferred = Some((after, tag));
        }
    }

    /// Answers later, when a message arrives: returns the address to post the answer to
    /// ([`Mailbox::post_to`](crate::Mailbox::post_to), from any thread), and
    /// [`Service::resume`](super::Service::resume) then writes the response from it (or
    /// waits again). If no answer comes within `deadline`, the client gets 504 and a
    /// late answer goes to [`Service::on_undelivered`](super::Service::on_undelivered).
    /// Meanwhile pipelined requests wait, in order; a drain lets the request finish (the
    /// connection closes after its answer) until the grace deadline. A response sent
    /// after `wait` in the same call (the job could not be queued, say) replaces the wait.
    ///
    /// ```no_run
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
    /// use gracering::{ConnAddr, Mailbox, Server, Worker};
    ///
    /// /// Hands each request to a thread that stands for a database, and answers from
    /// /// what that thread posts back.
    /// struct Lookup {
    ///     jobs: mpsc::Sender<(ConnAddr, String)>,
    /// }
    ///
    /// impl Service for Lookup {
    ///     type Message = String;
    ///     fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
    ///         let addr = res.wait(Duration::from_secs(2)); // 504 if no answer by then
    ///         let _ = self.jobs.send((addr, req.path().to_string()));
    ///     }
    ///     fn resume(&mut self, row: String, res: &mut Response<'_>) {
    ///         res.text(Status::OK, &row);
    ///     }
    /// }
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let server = Server::builder().bind()?;
    /// server.run(|worker: &mut Worker<String>| {
    ///     let mailbox: Mailbox<String> = worker.mailbox();
    ///     let (jobs, queue) = mpsc::channel::<(ConnAddr, String)>();
    ///     std::thread::spawn(move || {
    ///         for (addr, key) in queue {
    ///             // The slow part, off the worker's loop; then post the answer back.
    ///             let _ = mailbox.post_to(addr, format!("row for {key}"));
    ///         }
    ///     });
    ///     Http::new(HttpConfig::default(), Lookup { jobs })
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn wait(&mut self, deadline: Duration) -> ConnAddr {
        if !self.sent {
            self.waiting = Some(deadline);
        }
        self.addr
    }

    /// Writes a `text/plain` response.
    pub fn text(&mut self, status: Status, body: &str) {
        self.send(status, &[("content-type", b"text/plain")], body.as_bytes());
    }

    /// Whether the server is draining: a readiness check should answer 503 from the
    /// drain's first instant.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether the connection closes after this response.
    pub fn will_close(&self) -> bool {
        self.close
    }
}

/// The status line and the fields gracering owns.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    status: Status,
    date: &[u8; 29],
    len: usize,
    close: bool,
    keep_alive_1_0: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = [0u8; 3];
    code[0] = b'0' + (status.0 / 100 % 10) as u8;
    code[1] = b'0' + (status.0 / 10 % 10) as u8;
    code[2] = b'0' + (status.0 % 10) as u8;
    out.extend_from_slice(&code);
    out.push(b' ');
    out.extend_from_slice(status.reason().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\ncontent-length: ");
    let mut digits = [0u8; 20];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    } else if keep_alive_1_0 {
        out.extend_from_slice(b"\r\nconnection: keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a service's header field may be written: a token for a name (RFC 9110 5.1),
/// no CR, LF or NUL in the value (response splitting), and none of the fields the HTTP
/// layer writes itself (`content-length`, `transfer-encoding`, `connection`, `date`).
fn header_ok(name: &str, value: &[u8]) -> bool {
    const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~";
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TCHAR.contains(&b));
    let reserved = ["content-length", "transfer-encoding", "connection", "date"]
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r));
    token && !reserved && !value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_headers_are_checked() {
        use super::header_ok;
        assert!(header_ok("content-type", b"text/plain"));
        assert!(header_ok("x-a.b_c", b"v; q=1"));
        assert!(!header_ok("x-a", b"v\r\nx-injected: 1"));
        assert!(!header_ok("x-a", b"v\n"));
        assert!(!header_ok("x-a", b"v\0"));
        assert!(!header_ok("bad name", b"v"));
        assert!(!header_ok("x:y", b"v"));
        assert!(!header_ok("", b"v"));
        assert!(!header_ok("Content-Length", b"5"));
        assert!(!header_ok("transfer-encoding", b"chunked"));
    }

    use super::*;

    #[test]
    fn formats_imf_fixdate() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_709_210_096),
            b"Thu, 29 Feb 2024 12:34:56 GMT"
        );
    }

    #[test]
    fn writes_a_complete_response() {
        let mut out = Vec::new();
        let date = *b"Sun, 06 Nov 1994 08:49:37 GMT";
        let mut res = Response {
            out: &mut out,
            date: &date,
            close: true,
            keep_alive_1_0: false,
            head_only: false,
            draining: false,
            sent: false,
            status: 0,
            deferred: None,
            waiting: None,
            addr: ConnAddr {
                worker: 0,
                key: 0,
                serial: 0,
                tag: 0,
            },
        };
        res.text(Status::NOT_FOUND, "nope");
        res.text(Status::OK, "ignored: one response per request");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 4\r\n\
             connection: close\r\ncontent-type: text/plain\r\n\r\nnope"
        );
    }
}
