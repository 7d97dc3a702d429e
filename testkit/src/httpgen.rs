//! A drain-aware HTTP/1.1 load generator on raw epoll, counting every outcome.
//!
//! Each of `conns` connection slots runs a closed loop on one keep-alive connection:
//! send `GET path` (or the next of [`Config::requests`], taken in turn by all slots),
//! wait until the whole response is back (framed by `Content-Length`, see
//! [`crate::httpwire`]), send the next. One thread drives all slots from one
//! level-triggered epoll set.
//!
//! Whenever a slot's connection ends (the response said `Connection: close`, the server
//! closed or reset it, the response was bad or late) the slot reconnects at once, as a
//! real client would. A reconnect refused before the signal is an error; refused after
//! it ([`Config::signal`] was set) it is what a drained server's closed listener does,
//! counted apart in [`Report::refused_after_signal`], and the slot is done. The run
//! ends when every slot is done or at [`Config::limit`]; what is open then counts in
//! [`Report::still_open`].
//!
//! Every outcome is counted ([`Report`]): responses (2xx or not), connect refusals,
//! requests sent but never answered (the server's FIN or RST came instead: [`Report::
//! lost`]), responses cut short, invalid or late. For the timeline the report keeps the
//! instant of every 2xx response and of every change in the number of open connections,
//! and the latency of every 2xx response (request started to response complete).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::epoll::Epoll;
use crate::httpwire::{self, MAX_RESPONSE, Parsed};
use crate::pin;

/// How often slots are checked for responses that take too long.
const SCAN_EVERY: Duration = Duration::from_millis(50);
/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// One load run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server, on 127.0.0.1.
    pub addr: SocketAddr,
    /// Connection slots, each with one request in flight at a time.
    pub conns: usize,
    /// What every request asks for (`/`, `/slow?ms=2000`), unless `requests` is given.
    pub path: String,
    /// Whole requests (head and body) to send instead of `GET path`, taken in turn:
    /// each request started, on any slot, is the next of the list, wrapping around.
    /// Empty: `GET path` only.
    pub requests: Arc<[Box<[u8]>]>,
    /// A response not complete this long after its request counts as a timeout.
    pub timeout: Duration,
    /// The run ends this long after it started, whatever is still going on.
    pub limit: Duration,
    /// Pin the generator's thread to this CPU.
    pub cpu: Option<usize>,
    /// Set (by the caller) just before the server is signalled.
    pub signal: Arc<OnceLock<Instant>>,
}

/// What a run counted.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// 2xx responses.
    pub completed: u64,
    /// Complete responses with another status.
    pub non_2xx: u64,
    /// Connects refused before the signal (an error).
    pub connect_refused: u64,
    /// Connects refused after the signal: the listener is closed, as it should be.
    pub refused_after_signal: u64,
    /// Connects that failed otherwise (timeout, ...).
    pub connect_errors: u64,
    /// Requests answered by a reset (or a failed send) before any response byte.
    pub resets: u64,
    /// Requests answered by a clean EOF before any response byte.
    pub unanswered_eof: u64,
    /// Responses cut short by an EOF or a reset.
    pub short: u64,
    /// Responses that did not parse, or came with bytes nobody asked for.
    pub invalid: u64,
    /// Responses not complete within the timeout.
    pub timeouts: u64,
    /// Connections still open when the run's time ran out.
    pub still_open: u64,
    /// Connections closed by us because the response said `Connection: close`.
    pub closed_by_header: u64,
    /// Connects that succeeded after the signal.
    pub connects_after_signal: u64,
    /// Responses without `Connection: close` to requests sent after the signal.
    pub keepalive_after_signal: u64,
    /// When the last of those requests was sent.
    pub last_keepalive_sent: Option<Instant>,
    /// When each 2xx response completed.
    pub completions: Vec<Instant>,
    /// The latency of each 2xx response, from the start of its request to the end of
    /// the response, in nanoseconds (in the order of `completions`).
    pub latencies_ns: Vec<u64>,
    /// When each lost request (reset or unanswered EOF) ended.
    pub lost_at: Vec<Instant>,
    /// Open connections: +1 at each connect, -1 at each close, with its instant.
    pub live_changes: Vec<(Instant, i32)>,
    /// When the last connection was closed, whatever the cause.
    pub last_close: Option<Instant>,
}

impl Report {
    /// Requests sent and never answered.
    pub fn lost(&self) -> u64 {
        self.resets + self.unanswered_eof
    }

    /// Everything that should not happen, lost requests included; refusals after the
    /// signal are not counted.
    pub fn errors(&self) -> u64 {
        let connect = self.connect_refused + self.connect_errors;
        let responses = self.non_2xx + self.short + self.invalid + self.timeouts;
        connect + self.lost() + responses + self.still_open
    }
}

/// Starts the load on a thread of its own (pinned if asked); [`join`] gives its report.
/// The run ends by itself, at the latest after [`Config::limit`].
pub fn spawn(cfg: &Config) -> io::Result<JoinHandle<io::Result<Report>>> {
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("httpgen".into())
        .spawn(move || {
            if let Some(cpu) = cfg.cpu {
                pin::pin_current_thread(cpu)?;
            }
            Driver::new(&cfg)?.run()
        })
}

/// Waits for a load started with [`spawn`] and returns its report.
pub fn join(handle: JoinHandle<io::Result<Report>>) -> io::Result<Report> {
    handle
        .join()
        .map_err(|_| io::Error::other("HTTP load generator thread panicked"))?
}

/// Why a connection was given up.
enum Fault {
    /// A reset or failed send before any response byte.
    Reset,
    /// A clean EOF before any response byte.
    Eof,
    /// EOF or reset in the middle of a response.
    Short,
    Invalid,
}

/// The event loop: all slots and the counts.
struct Driver<'a> {
    cfg: &'a Config,
    epoll: Epoll,
    /// The requests to send in turn, and the index of the next one.
    reqs: Vec<Box<[u8]>>,
    next_req: usize,
    slots: Vec<Option<Conn>>,
    live: usize,
    /// Slots to (re)connect once the current batch of events is handled.
    pending: Vec<usize>,
    report: Report,
}

impl<'a> Driver<'a> {
    fn new(cfg: &'a Config) -> io::Result<Self> {
        Ok(Driver {
            cfg,
            epoll: Epoll::new()?,
            reqs: match cfg.requests.is_empty() {
                true => vec![httpwire::request(&cfg.path)],
                false => cfg.requests.to_vec(),
            },
            next_req: 0,
            slots: (0..cfg.conns).map(|_| None).collect(),
            live: 0,
            pending: (0..cfg.conns).rev().collect(),
            report: Report::default(),
        })
    }

    fn run(mut self) -> io::Result<Report> {
        let end = Instant::now() + self.cfg.limit;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let mut next_scan = Instant::now() + SCAN_EVERY;
        loop {
            while let Some(token) = self.pending.pop() {
                if Instant::now() < end {
                    self.connect(token)?;
                }
            }
            let now = Instant::now();
            if now >= end || self.live == 0 {
                break;
            }
            if now >= next_scan {
                self.expire_slow(now);
                next_scan = now + SCAN_EVERY;
                continue;
            }
            let until = end.min(next_scan).saturating_duration_since(now);
            let ms = until.as_micros().div_ceil(1000) as i32;
            let n = self.epoll.wait(&mut events, ms)?;
            for ev in &events[..n] {
                self.on_ready(ev.u64 as usize);
            }
        }
        self.report.still_open = self.live as u64;
        self.slots.clear();
        Ok(self.report)
    }

    /// The index of the next request to send.
    fn pick(&mut self) -> usize {
        let i = self.next_req;
        self.next_req = (i + 1) % self.reqs.len();
        i
    }

    /// Opens slot `token`'s connection and sends its first request.
    fn connect(&mut self, token: usize) -> io::Result<()> {
        let signalled = self.cfg.signal.get().is_some();
        // After the signal a draining server refuses new handshakes by dropping their SYN
        // (the client would retry after a second, then be refused): don't let one such
        // connect stall every other connection of this single-threaded generator.
        let timeout = match signalled {
            true => self.cfg.timeout.min(Duration::from_millis(20)),
            false => self.cfg.timeout,
        };
        let stream = match TcpStream::connect_timeout(&self.cfg.addr, timeout) {
            Ok(stream) => stream,
            Err(e) if signalled && e.kind() == io::ErrorKind::TimedOut => {
                self.report.refused_after_signal += 1;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                match signalled {
                    true => self.report.refused_after_signal += 1,
                    false => self.report.connect_refused += 1,
                }
                return Ok(());
            }
            Err(_) => {
                self.report.connect_errors += 1;
                return Ok(());
            }
        };
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        self.epoll
            .add(stream.as_raw_fd(), token as u64, libc::EPOLLIN as u32)?;
        self.report.connects_after_signal += u64::from(signalled);
        self.live += 1;
        self.report.live_changes.push((Instant::now(), 1));
        let mut conn = Conn {
            stream,
            sent: 0,
            buf: vec![0; MAX_RESPONSE].into_boxed_slice(),
            got: 0,
            since: Instant::now(),
            sent_after_signal: signalled,
            want_out: false,
            req: self.pick(),
        };
        let flushed = conn.flush(&self.epoll, token, &self.reqs[conn.req]);
        self.slots[token] = Some(conn);
        if let Err(fault) = flushed {
            self.fail(token, fault);
        }
        Ok(())
    }

    fn on_ready(&mut self, token: usize) {
        // Events for a connection closed earlier in the same batch find `None`.
        let Some(conn) = self.slots[token].as_mut() else {
            return;
        };
        let response = match conn.advance(&self.epoll, token, &self.reqs[conn.req]) {
            Ok(Some(response)) => response,
            Ok(None) => return,
            Err(fault) => return self.fail(token, fault),
        };
        let now = Instant::now();
        match response.is_success() {
            true => {
                self.report.completed += 1;
                self.report.completions.push(now);
                let latency = now.saturating_duration_since(conn.since);
                self.report.latencies_ns.push(latency.as_nanos() as u64);
            }
            false => self.report.non_2xx += 1,
        }
        if response.close {
            self.report.closed_by_header += 1;
            self.close(token);
            self.pending.push(token);
            return;
        }
        if conn.sent_after_signal {
            self.report.keepalive_after_signal += 1;
            let last = self.report.last_keepalive_sent.get_or_insert(conn.since);
            *last = conn.since.max(*last);
        }
        let signalled = self.cfg.signal.get().is_some();
        let next = self.next_req;
        self.next_req = (next + 1) % self.reqs.len();
        let conn = self.slots[token].as_mut().expect("checked above");
        conn.req = next;
        if let Err(fault) = conn.start(now, signalled, &self.epoll, token, &self.reqs[next]) {
            self.fail(token, fault);
        }
    }

    /// Counts why slot `token`'s connection failed, closes it and reconnects the slot.
    fn fail(&mut self, token: usize, fault: Fault) {
        let r = &mut self.report;
        match fault {
            Fault::Reset => r.resets += 1,
            Fault::Eof => r.unanswered_eof += 1,
            Fault::Short => r.short += 1,
            Fault::Invalid => r.invalid += 1,
        }
        if matches!(fault, Fault::Reset | Fault::Eof) {
            r.lost_at.push(Instant::now());
        }
        self.close(token);
        self.pending.push(token);
    }

    /// Closes connections whose response is late, and reconnects their slots.
    fn expire_slow(&mut self, now: Instant) {
        for token in 0..self.slots.len() {
            let waited = self.slots[token].as_ref().map(|c| now - c.since);
            if waited.is_some_and(|w| w > self.cfg.timeout) {
                self.report.timeouts += 1;
                self.close(token);
                self.pending.push(token);
            }
        }
    }

    fn close(&mut self, token: usize) {
        // Dropping the socket closes it, which also removes it from the epoll set.
        if self.slots[token].take().is_some() {
            self.live -= 1;
            let now = Instant::now();
            self.report.live_changes.push((now, -1));
            self.report.last_close = Some(now);
        }
    }
}

/// One client connection and its request in flight.
struct Conn {
    stream: TcpStream,
    /// Bytes of the request sent so far.
    sent: usize,
    buf: Box<[u8]>,
    /// Bytes of the response received so far.
    got: usize,
    /// When the request in flight was started.
    since: Instant,
    /// The request in flight was started after the signal.
    sent_after_signal: bool,
    /// Whether the epoll interest includes EPOLLOUT (only while a send is stuck).
    want_out: bool,
    /// The index of the request in flight in the driver's list.
    req: usize,
}

impl Conn {
    /// Makes whatever progress the socket allows; the response once it is complete.
    fn advance(
        &mut self,
        ep: &Epoll,
        token: usize,
        req: &[u8],
    ) -> Result<Option<httpwire::Response>, Fault> {
        if self.sent < req.len() {
            self.flush(ep, token, req)?;
        }
        loop {
            if self.got == self.buf.len() {
                return Err(Fault::Invalid);
            }
            match self.stream.read(&mut self.buf[self.got..]) {
                Ok(0) if self.got == 0 => return Err(Fault::Eof),
                Ok(0) => return Err(Fault::Short),
                Ok(n) => self.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.got == 0 => return Err(Fault::Reset),
                Err(_) => return Err(Fault::Short),
            }
            match httpwire::parse(&self.buf[..self.got]) {
                Parsed::Partial => {}
                Parsed::Complete(r) if r.len == self.got => return Ok(Some(r)),
                Parsed::Complete(_) | Parsed::Invalid => return Err(Fault::Invalid),
            }
        }
    }

    /// Starts the next request on this connection.
    fn start(
        &mut self,
        now: Instant,
        signalled: bool,
        ep: &Epoll,
        token: usize,
        req: &[u8],
    ) -> Result<(), Fault> {
        (self.sent, self.got, self.since) = (0, 0, now);
        self.sent_after_signal = signalled;
        self.flush(ep, token, req)
    }

    /// Sends what is left of the request; asks for EPOLLOUT only if the socket is full.
    fn flush(&mut self, ep: &Epoll, token: usize, req: &[u8]) -> Result<(), Fault> {
        while self.sent < req.len() {
            match self.stream.write(&req[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.want_out(ep, token, true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Fault::Reset),
            }
        }
        self.want_out(ep, token, false)
    }

    fn want_out(&mut self, ep: &Epoll, token: usize, on: bool) -> Result<(), Fault> {
        if self.want_out != on {
            let out = if on { libc::EPOLLOUT } else { 0 };
            let events = (libc::EPOLLIN | out) as u32;
            ep.modify(self.stream.as_raw_fd(), token as u64, events)
                .map_err(|_| Fault::Reset)?;
            self.want_out = on;
        }
        Ok(())
    }
}
