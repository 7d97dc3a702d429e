//! HTTP/1.1 on the engine: a [`Handler`] that parses requests and hands each to a
//! per-worker [`Service`].
//!
//! ```text
//! bytes ─▶ head (httparse, then the RFC 9112 checks in `parse`) ─▶ body framing
//!          (Content-Length, or the chunked decoder) ─▶ Service::call(&Request, &mut Response)
//!          ─▶ status line, Date, Content-Length, Connection, fields, body ─▶ output
//! ```
//!
//! - Keep-alive by default for HTTP/1.1, for HTTP/1.0 with `Connection: keep-alive`;
//!   pipelined requests are answered in order. Those behind a deferred response wait in
//!   the connection's input, held ([`Conn::hold_input`]): past the server's
//!   pending-input limit it stops reading until the answer is written, then takes them.
//! - A head is scanned for its end once, however it arrives (byte by byte, say), and
//!   parsed once it is complete.
//! - Request bodies with `Content-Length` or `Transfer-Encoding: chunked`, up to
//!   [`HttpConfig::max_body`]; `Expect: 100-continue` is answered before the body.
//! - A plain GET allocates nothing: the head is parsed into a stack array, the request
//!   borrows the connection's input, the response is written into its output buffer.
//! - Limits, each with its own status, every error closing only its own connection:
//!   head over [`HttpConfig::max_head`] 431, body over the limit 413, malformed 400,
//!   ambiguous framing (Content-Length with Transfer-Encoding, differing lengths) 400,
//!   unsupported transfer coding 501, an `Expect` other than 100-continue 417,
//!   HTTP/2+ on this port 505, a head slower than [`HttpConfig::header_timeout`] 408,
//!   a body silent for [`HttpConfig::body_timeout`] or slower on average than
//!   [`HttpConfig::min_body_rate`] 408.
//!   Idle keep-alive connections close after [`HttpConfig::idle_timeout`].
//! - Lines end in CRLF, in the head and in chunked framing alike: a bare LF is 400
//!   wherever it is. RFC 9112 2.2 lets a recipient accept a bare LF as a line end in the
//!   head, and httparse does; but a server that splits lines one way where a proxy in
//!   front splits them another is a request-smuggling target, and chunked framing read
//!   leniently is a known one, so both refuse it. (A bare CR is refused too: 400.)
//! - During the drain every response carries `Connection: close` and its connection
//!   closes after it (after the last of the requests already received). A connection
//!   busy within the last [`HttpConfig::drain_busy_window`] is about to carry a request,
//!   so it gets that long to send it; connections idle longer close at once.
//!
//! ```no_run
//! use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
//!
//! struct Hello;
//! impl Service for Hello {
//!     type Message = ();
//!     fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
//!         match req.path() {
//!             "/" => res.text(Status::OK, "Hello, World!"),
//!             _ => res.text(Status::NOT_FOUND, "not found"),
//!         }
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let server = gracering::Server::builder().bind()?;
//! server.run(|_| Http::new(HttpConfig::default(), Hello))?;
//! # Ok(()) }
//! ```

pub(crate) mod chunked;
mod parse;
mod request;
mod response;

use std::mem::{self, MaybeUninit};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::handler::{Conn, Handler, Worker};
use crate::mailbox::ConnAddr;
use crate::metrics::HttpBlock;
use chunked::Chunked;
use parse::{Framing, HeadEnd, HeadInfo, MAX_HEADERS, check_head, find_head_end, parse_error};
use response::{DateCache, write_head};

pub use request::Request;
pub use response::{Response, Status};

/// A per-worker service: gets each request and writes its response.
pub trait Service {
    /// The answers other threads post back for deferred responses ([`Response::wait`]),
    /// and other messages into the worker. `()` for a service that takes none.
    type Message: Send + 'static;

    /// Answers one request. Write exactly one response with [`Response::send`] (or
    /// [`Response::text`]), or defer it ([`Response::wait`], [`Response::defer`]); a
    /// request left unanswered gets a 500.
    fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>);

    /// The answer to a response deferred with [`Response::wait`] arrived: write the
    /// response from it, or wait again. The default answers 500.
    fn resume(&mut self, msg: Self::Message, res: &mut Response<'_>) {
        let _ = msg;
        res.text(Status::INTERNAL_ERROR, "deferred response not implemented");
    }

    /// Writes a response deferred with [`Response::defer`], once its time has come (or
    /// defers again). The default answers 500.
    fn resume_timer(&mut self, tag: u64, res: &mut Response<'_>) {
        let _ = tag;
        res.text(Status::INTERNAL_ERROR, "deferred response not implemented");
    }

    /// A message posted to the worker itself ([`Mailbox::post`](crate::Mailbox::post)).
    /// The default drops it.
    fn on_message(&mut self, msg: Self::Message) {
        let _ = msg;
    }

    /// An answer that found no request waiting for it (its connection closed, or its
    /// deadline already answered 504), handed back so that what it carries is released.
    /// The default drops it.
    fn on_undelivered(&mut self, msg: Self::Message) {
        let _ = msg;
    }
}

/// The largest [`HttpConfig::max_head`] accepted.
const MAX_HEAD_LIMIT: usize = 16 * 1024 * 1024;

/// Limits and timeouts of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    max_head: usize,
    max_body: u64,
    header_timeout: Duration,
    body_timeout: Duration,
    min_body_rate: u64,
    idle_timeout: Duration,
    drain_busy_window: Duration,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_head: 16 * 1024,
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            min_body_rate: 500,
            idle_timeout: Duration::from_secs(60),
            drain_busy_window: Duration::from_millis(200),
        }
    }
}

impl HttpConfig {
    /// The largest request head (request line and header fields); larger: 431, with
    /// an orderly close. Default 16 KiB; at least 256 bytes, at most 16 MiB. The server's
    /// [`max_pending_input`](crate::Builder::max_pending_input) is raised to it if
    /// smaller ([`Handler::min_pending_input`]), so a head under this limit is never cut
    /// by that one.
    pub fn max_head(mut self, bytes: usize) -> HttpConfig {
        self.max_head = bytes.clamp(256, MAX_HEAD_LIMIT);
        self
    }

    /// The largest request body; larger: 413. Default 1 MiB.
    pub fn max_body(mut self, bytes: u64) -> HttpConfig {
        self.max_body = bytes;
        self
    }

    /// How long a request head may take from its first byte; slower: 408. Default 10 s.
    pub fn header_timeout(mut self, timeout: Duration) -> HttpConfig {
        self.header_timeout = timeout;
        self
    }

    /// How long a request body may go without a byte arriving; slower: 408 and the
    /// connection closes. Also the grace the body gets before
    /// [`min_body_rate`](HttpConfig::min_body_rate) applies. Default 10 s.
    pub fn body_timeout(mut self, timeout: Duration) -> HttpConfig {
        self.body_timeout = timeout;
        self
    }

    /// The slowest a request body may arrive, in bytes per second on average since the
    /// body began, after a first [`body_timeout`](HttpConfig::body_timeout) of grace:
    /// the body must be complete by its start + `body_timeout` + (bytes received) /
    /// rate, or it gets 408 (so a client trickling a byte now and then cannot hold a
    /// connection and its buffered body forever). 0 turns the rate off (the body timeout
    /// between two reads still holds). Default 500 bytes/s.
    pub fn min_body_rate(mut self, bytes_per_second: u64) -> HttpConfig {
        self.min_body_rate = bytes_per_second;
        self
    }

    /// How long a keep-alive connection may wait for its next request. Default 60 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> HttpConfig {
        self.idle_timeout = timeout;
        self
    }

    /// During the drain, a connection active this recently is treated as busy: it may
    /// still send the request it is about to send, answered with `Connection: close`.
    /// Default 200 ms.
    pub fn drain_busy_window(mut self, window: Duration) -> HttpConfig {
        self.drain_busy_window = window;
        self
    }
}

/// The HTTP [`Handler`]: one per worker, wrapping that worker's [`Service`].
pub struct Http<S> {
    service: S,
    config: HttpConfig,
    date: DateCache,
    /// Where responses are counted: the worker's block of the server's metrics
    /// ([`with_metrics`](Http::with_metrics)), else one of its own that nobody reads.
    metrics: Arc<HttpBlock>,
}

impl<S: Service> Http<S> {
    /// An HTTP handler serving `service` with `config`.
    pub fn new(config: HttpConfig, service: S) -> Http<S> {
        Http {
            service,
            config,
            date: DateCache::new(),
            metrics: Arc::new(HttpBlock::new()),
        }
    }

    /// Counts this handler's responses in the server's [`Metrics`](crate::Metrics),
    /// as `worker`'s (by status code, and in the request duration histogram): call it
    /// in the factory, with the factory's `Worker`, for one `Http` per worker.
    ///
    /// ```no_run
    /// # use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
    /// # struct Hello;
    /// # impl Service for Hello {
    /// #     type Message = ();
    /// #     fn call(&mut self, _: &Request<'_>, res: &mut Response<'_>) { res.text(Status::OK, "hi") }
    /// # }
    /// # fn main() -> std::io::Result<()> {
    /// let server = gracering::Server::builder().bind()?;
    /// server.run(|worker| Http::new(HttpConfig::default(), Hello).with_metrics(worker))?;
    /// # Ok(()) }
    /// ```
    pub fn with_metrics<M>(mut self, worker: &Worker<M>) -> Http<S> {
        self.metrics = worker.http_block();
        self
    }
}

/// Where a connection is between requests.
#[derive(Debug)]
enum Phase {
    /// Waiting for the first byte of a request.
    Idle,
    /// Part of a head arrived.
    Head,
    /// The head is complete; the body is arriving.
    Body(Box<Partial>),
    /// The service deferred its response (`Response::defer`); later requests wait.
    Waiting(Deferred),
}

/// What wakes a deferred response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Its timer ([`Response::defer`]), with the service's tag.
    Timer(u64),
    /// A message for this request number ([`Response::wait`]); 504 at the timer.
    Message(u64),
}

/// What a deferred response needs to be written later.
#[derive(Debug, Clone, Copy)]
struct Deferred {
    wake: Wake,
    keep_alive: bool,
    minor_version: u8,
    head_only: bool,
    last_received: bool,
}

/// A request whose body is still arriving: its head, copied, and the body so far.
#[derive(Debug)]
struct Partial {
    head: Vec<u8>,
    info: HeadInfo,
    body: Vec<u8>,
    decoder: BodyDecoder,
    /// When the body began (its head was complete), for the minimum rate.
    since: Instant,
    /// Body bytes received so far (as sent: chunked framing included).
    received: u64,
}

#[derive(Debug)]
enum BodyDecoder {
    Length(u64),
    Chunked(Chunked),
}

/// Per-connection HTTP state.
#[derive(Debug)]
pub struct HttpConn {
    phase: Phase,
    last_active: Instant,
    /// The drain reached this connection while it was busy: close after the next
    /// response.
    close_after: bool,
    /// Requests begun on this connection: the tag of a waiting request's address.
    requests: u64,
    /// The turn clock when the current request's first byte was read.
    started: Instant,
    /// How much of the head in progress was scanned for its end (every later call
    /// scans only what arrived since).
    scanned: usize,
}

impl<S: Service> Handler for Http<S> {
    type State = HttpConn;
    type Message = S::Message;

    fn on_open(&mut self, conn: &mut Conn<'_>) -> HttpConn {
        // The first request's head is due within the header timeout: a connection that
        // sends nothing is not held for a keep-alive's idle timeout.
        let first = self.config.header_timeout.min(self.config.idle_timeout);
        conn.set_timer(first);
        HttpConn {
            phase: Phase::Idle,
            last_active: conn.now(),
            close_after: false,
            requests: 0,
            started: conn.now(),
            scanned: 0,
        }
    }

    fn on_data(&mut self, state: &mut HttpConn, conn: &mut Conn<'_>, data: &[u8]) -> usize {
        match state.phase {
            Phase::Body(_) => return self.continue_body(state, conn, data),
            Phase::Waiting(_) => return 0, // pipelined requests wait, held (see `settle`)
            Phase::Idle if data.starts_with(b"\r\n") => return 2, // RFC 9112 2.2: ignored
            Phase::Idle if data == b"\r" => return 0,
            Phase::Idle => {
                state.started = conn.now();
                state.scanned = 0;
            }
            Phase::Head => {}
        }
        // The head is parsed once it is complete; until then only the bytes that are new
        // since the last call are scanned for its end.
        let head_len = match find_head_end(data, state.scanned, self.config.max_head) {
            Ok(HeadEnd::Found(n)) => n,
            Ok(HeadEnd::Scanned(_)) if data.len() > self.config.max_head => {
                return self.fail(state, conn, Status::HEADERS_TOO_LARGE);
            }
            Ok(HeadEnd::Scanned(n)) => {
                state.scanned = n;
                if matches!(state.phase, Phase::Idle) {
                    state.phase = Phase::Head;
                    conn.set_timer(self.config.header_timeout);
                }
                return 0;
            }
            Err(status) => return self.fail(state, conn, status),
        };
        let head = &data[..head_len];
        parse::count_scanned(head.len());
        // Uninitialised header slots: nothing is zeroed per request.
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, &mut headers) {
            Ok(httparse::Status::Complete(n)) if n == head_len => {}
            Ok(_) => return self.fail(state, conn, Status::BAD_REQUEST),
            Err(e) => return self.fail(state, conn, parse_error(e, head)),
        }
        let info = match check_head(&req, self.config.max_body) {
            Ok(info) => info,
            Err(status) => return self.fail(state, conn, status),
        };
        let rest = &data[head_len..];
        match info.framing {
            Framing::None => {
                self.respond(state, conn, &req, info, &[], rest.is_empty());
                head_len
            }
            Framing::Length(n) if rest.len() as u64 >= n => {
                let n = n as usize;
                self.respond(state, conn, &req, info, &rest[..n], rest.len() == n);
                head_len + n
            }
            Framing::Length(_) | Framing::Chunked => {
                let partial = Partial {
                    head: data[..head_len].to_vec(),
                    info,
                    body: Vec::new(),
                    decoder: match info.framing {
                        Framing::Length(n) => BodyDecoder::Length(n),
                        Framing::None | Framing::Chunked => BodyDecoder::Chunked(Chunked::new()),
                    },
                    since: conn.now(),
                    received: 0,
                };
                state.phase = Phase::Body(Box::new(partial));
                conn.set_timer(self.config.body_timeout);
                if info.expect_continue && rest.is_empty() {
                    conn.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                head_len.saturating_add(self.continue_body(state, conn, rest))
            }
        }
    }

    fn on_conn_message(
        &mut self,
        state: &mut HttpConn,
        conn: &mut Conn<'_>,
        to: ConnAddr,
        msg: S::Message,
    ) {
        match state.phase {
            Phase::Waiting(d) if d.wake == Wake::Message(to.tag()) => {
                self.resume(state, conn, d, |service, res| service.resume(msg, res))
            }
            // An answer for a request that already got its 504, or for no request.
            _ => self.service.on_undelivered(msg),
        }
    }

    fn on_message(&mut self, msg: S::Message) {
        self.service.on_message(msg);
    }

    fn on_undelivered(&mut self, msg: S::Message) {
        self.service.on_undelivered(msg);
    }

    /// A head is kept whole until it is complete: up to `max_head` bytes.
    fn min_pending_input(&self) -> usize {
        self.config.max_head
    }

    fn on_drain(&mut self, state: &mut HttpConn, conn: &mut Conn<'_>) {
        let quiet = conn.now().saturating_duration_since(state.last_active);
        match state.phase {
            Phase::Head | Phase::Body(_) | Phase::Waiting(_) => state.close_after = true,
            Phase::Idle if quiet < self.config.drain_busy_window => {
                state.close_after = true;
                conn.set_timer(self.config.drain_busy_window - quiet);
            }
            Phase::Idle => conn.close_when_idle(),
        }
    }

    fn on_timer(&mut self, state: &mut HttpConn, conn: &mut Conn<'_>) {
        match state.phase {
            Phase::Waiting(
                d @ Deferred {
                    wake: Wake::Timer(tag),
                    ..
                },
            ) => self.resume(state, conn, d, |service, res| {
                service.resume_timer(tag, res)
            }),
            Phase::Waiting(
                d @ Deferred {
                    wake: Wake::Message(_),
                    ..
                },
            ) => self.resume(state, conn, d, |_, res| {
                res.text(Status::GATEWAY_TIMEOUT, "the answer did not come in time")
            }),
            Phase::Idle if conn.is_draining() => conn.close_when_idle(),
            Phase::Idle => conn.close(),
            Phase::Head | Phase::Body(_) => {
                self.fail(state, conn, Status::REQUEST_TIMEOUT);
            }
        }
    }
}

impl<S: Service> Http<S> {
    /// Feeds body bytes to the request waiting for them; answers it once complete.
    fn continue_body(&mut self, state: &mut HttpConn, conn: &mut Conn<'_>, data: &[u8]) -> usize {
        let Phase::Body(partial) = &mut state.phase else {
            return 0;
        };
        let (used, done) = match &mut partial.decoder {
            BodyDecoder::Length(remaining) => {
                let take = (*remaining).min(data.len() as u64) as usize;
                partial.body.extend_from_slice(&data[..take]);
                *remaining -= take as u64;
                (take, *remaining == 0)
            }
            BodyDecoder::Chunked(decoder) => {
                match decoder.feed(data, &mut partial.body, self.config.max_body) {
                    Ok(progress) => progress,
                    Err(status) => return self.fail(state, conn, status),
                }
            }
        };
        if !done {
            if used > 0 {
                partial.received = partial.received.saturating_add(used as u64);
                let due = self.body_deadline(partial, conn.now());
                conn.set_timer(due.saturating_duration_since(conn.now()));
            }
            return used;
        }
        let Phase::Body(partial) = mem::replace(&mut state.phase, Phase::Idle) else {
            return used;
        };
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(&partial.head, &mut headers);
        if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
            return self.fail(state, conn, Status::BAD_REQUEST);
        }
        self.respond(
            state,
            conn,
            &req,
            partial.info,
            &partial.body,
            used == data.len(),
        );
        used
    }

    /// When a body still arriving gets 408, after some progress just now: a body timeout
    /// from now, or sooner where the minimum rate says (its start, plus the body timeout,
    /// plus the time its bytes so far are worth at that rate).
    fn body_deadline(&self, partial: &Partial, now: Instant) -> Instant {
        let idle = crate::clock::after(now, self.config.body_timeout);
        if self.config.min_body_rate == 0 {
            return idle;
        }
        let rate = self.config.min_body_rate;
        let nanos = u128::from(partial.received % rate) * 1_000_000_000 / u128::from(rate);
        let earned = Duration::from_secs(partial.received / rate)
            .saturating_add(Duration::from_nanos(nanos as u64));
        let start = crate::clock::after(partial.since, self.config.body_timeout);
        idle.min(crate::clock::after(start, earned))
    }

    /// Runs the service for one complete request and finishes the exchange.
    fn respond(
        &mut self,
        state: &mut HttpConn,
        conn: &mut Conn<'_>,
        req: &httparse::Request<'_, '_>,
        info: HeadInfo,
        body: &[u8],
        last_received: bool,
    ) {
        let request = Request {
            method: req.method.unwrap_or(""),
            target: parse::origin_form(req.path.unwrap_or("")),
            minor_version: req.version.unwrap_or(1),
            headers: req.headers,
            body,
        };
        let draining = conn.is_draining();
        let close = !info.keep_alive || (draining || state.close_after) && last_received;
        let now = conn.now();
        state.requests += 1;
        let addr = conn.addr().with_tag(state.requests);
        let mut res = Response {
            out: conn.output(),
            date: self.date.get(now),
            close,
            keep_alive_1_0: info.keep_alive && request.minor_version == 0,
            head_only: request.method == "HEAD",
            draining,
            sent: false,
            status: 0,
            deferred: None,
            waiting: None,
            addr,
        };
        self.service.call(&request, &mut res);
        let d = Deferred {
            wake: Wake::Timer(0),
            keep_alive: info.keep_alive,
            minor_version: request.minor_version,
            head_only: res.head_only,
            last_received,
        };
        let wait = waits(&mut res);
        let status = res.status;
        self.settle(state, conn, wait, d, (close, status));
    }

    /// After the service wrote (or deferred) a response: wait for its wake-up, or
    /// count the response (its status) and finish.
    fn settle(
        &mut self,
        state: &mut HttpConn,
        conn: &mut Conn<'_>,
        wait: Option<(Wake, Duration)>,
        d: Deferred,
        (close, status): (bool, u16),
    ) {
        match wait {
            Some((wake, after)) => {
                // The requests pipelined behind this one wait in the pending input; past
                // the engine's limit it stops reading rather than closing (`resume`
                // releases the hold).
                conn.hold_input();
                state.phase = Phase::Waiting(Deferred { wake, ..d });
                state.last_active = conn.now();
                conn.set_timer(after);
            }
            None => {
                let now = conn.now();
                if now == state.started {
                    self.metrics.record_now(status); // written in the turn that read it
                } else {
                    let took = now.saturating_duration_since(state.started);
                    self.metrics.record(status, took);
                }
                self.finish(state, conn, close)
            }
        }
    }

    /// After a response: the connection closes, or waits for the next request.
    fn finish(&mut self, state: &mut HttpConn, conn: &mut Conn<'_>, close: bool) {
        state.phase = Phase::Idle;
        state.last_active = conn.now();
        if close {
            conn.close();
        } else {
            conn.set_timer(self.config.idle_timeout);
        }
    }

    /// A deferred response is due (its timer, its answer, or its deadline): `write`
    /// writes it now, or defers it again.
    fn resume(
        &mut self,
        state: &mut HttpConn,
        conn: &mut Conn<'_>,
        d: Deferred,
        write: impl FnOnce(&mut S, &mut Response<'_>),
    ) {
        conn.release_input(); // the pipelined requests are taken again once it is written
        let draining = conn.is_draining();
        // Requests pipelined behind this one while it waited are in the pending input:
        // then it is not the last received, and the connection stays open for them.
        let last_received = d.last_received && conn.pending_input == 0;
        let close = !d.keep_alive || (draining || state.close_after) && last_received;
        let d = Deferred { last_received, ..d };
        let now = conn.now();
        // A new tag for each wait: an answer to an earlier one cannot be taken for it.
        state.requests += 1;
        let addr = conn.addr().with_tag(state.requests);
        let mut res = Response {
            out: conn.output(),
            date: self.date.get(now),
            close,
            keep_alive_1_0: d.keep_alive && d.minor_version == 0,
            head_only: d.head_only,
            draining,
            sent: false,
            status: 0,
            deferred: None,
            waiting: None,
            addr,
        };
        write(&mut self.service, &mut res);
        let wait = waits(&mut res);
        let status = res.status;
        self.settle(state, conn, wait, d, (close, status));
    }

    /// Answers with an error status and closes the connection. Returns `usize::MAX`:
    /// everything received counts as consumed (the engine caps it at what it offered)
    /// and further input is discarded, since its framing cannot be trusted.
    fn fail(&mut self, state: &mut HttpConn, conn: &mut Conn<'_>, status: Status) -> usize {
        let body = status.reason().as_bytes();
        let now = conn.now();
        let out = conn.output();
        write_head(out, status, self.date.get(now), body.len(), true, false);
        out.extend_from_slice(b"content-type: text/plain\r\n\r\n");
        out.extend_from_slice(body);
        state.phase = Phase::Idle;
        let took = now.saturating_duration_since(state.started);
        self.metrics.record(status.0, took);
        conn.close();
        usize::MAX
    }
}

/// What the service left: a deferral to wait for, or a response (a 500 if it wrote none).
fn waits(res: &mut Response<'_>) -> Option<(Wake, Duration)> {
    match (res.sent, res.deferred, res.waiting) {
        (false, Some((after, tag)), _) => Some((Wake::Timer(tag), after)),
        (false, None, Some(deadline)) => Some((Wake::Message(res.addr.tag()), deadline)),
        (false, None, None) => {
            res.text(Status::INTERNAL_ERROR, "no response");
            None
        }
        (true, _, _) => None,
    }
}

impl<S> Http<S> {
    /// The service, for inspection.
    pub fn service(&self) -> &S {
        &self.service
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::BufPool;
    use crate::handler::{CloseRequest, ConnId};

    struct Hello;
    impl Service for Hello {
        type Message = ();
        fn call(&mut self, _: &Request<'_>, res: &mut Response<'_>) {
            res.text(Status::OK, "hi");
        }
    }

    /// What the engine keeps for one connection: enough to lend the handler a `Conn`.
    struct Parts {
        timer: Option<Instant>,
        out: Vec<u8>,
        pool: BufPool,
        close: CloseRequest,
        hold: bool,
    }

    impl Parts {
        fn new() -> Parts {
            Parts {
                timer: None,
                out: Vec::new(),
                pool: BufPool::new(4096, 4),
                close: CloseRequest::None,
                hold: false,
            }
        }
        fn conn(&mut self, pending_input: usize) -> Conn<'_> {
            Conn {
                id: ConnId(0),
                serial: 1,
                pending_input,
                worker: 0,
                draining: false,
                now: Instant::now(),
                timer: &mut self.timer,
                out: &mut self.out,
                unsent: 0,
                pool: &mut self.pool,
                close: &mut self.close,
                hold: &mut self.hold,
            }
        }
    }

    /// A head of about 60 KB arriving one byte per read, offered as the engine offers
    /// it (the whole unconsumed input each time), is scanned in linear work: before,
    /// httparse re-parsed the whole pending head on every byte (quadratic: about 1.8
    /// billion bytes for this head).
    #[test]
    fn a_head_arriving_byte_by_byte_is_scanned_once() {
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..99 {
            head.extend_from_slice(format!("x-pad-{i:02}: {}\r\n", "p".repeat(600)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(head.len() > 60_000);
        let config = HttpConfig::default().max_head(64 * 1024);
        let mut http = Http::new(config, Hello);
        let mut parts = Parts::new();
        let mut state = http.on_open(&mut parts.conn(0));
        parse::HEAD_WORK.with(|w| w.set(0));
        for end in 1..=head.len() {
            let used = http.on_data(&mut state, &mut parts.conn(end - 1), &head[..end]);
            let expected = if end == head.len() { head.len() } else { 0 };
            assert_eq!(used, expected, "at byte {end}");
        }
        assert!(parts.out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let work = parse::HEAD_WORK.with(|w| w.get());
        assert!(
            work <= 3 * head.len() as u64,
            "{work} bytes looked at for a head of {}",
            head.len()
        );
    }
}
