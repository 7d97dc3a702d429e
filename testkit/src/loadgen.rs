//! A single-threaded, event-driven TCP load generator on raw epoll.
//!
//! Each of `conns` connections runs a closed loop: send one request, wait until the
//! whole reply is back, check it, send the next. One thread drives them all from one
//! level-triggered epoll set, so the client's own cost per message stays small: one
//! `send`, one `recv` and a share of an `epoll_wait`, no allocation. Reads loop until the
//! reply is complete or the socket is empty (EAGAIN); stopping at a complete reply saves
//! the extra `recv` that would only return EAGAIN, and is safe because the epoll set is
//! level-triggered: unexpected extra bytes are reported again and fail the next check.
//!
//! A run has an optional warm-up, then a measured window that ends after `duration` or
//! `max_messages` completed messages, whichever comes first, or when no connection is
//! left. Messages, elapsed time and the server's CPU time are counted in the window only;
//! errors are counted over the whole run, so a failure during warm-up is never hidden.
//! A broken connection is closed and not replaced.
//!
//! Drain-aware runs ([`Config::drain_aware`]) are for servers that stop during the run:
//! a connection the server ends with a clean EOF while no byte of the current reply has
//! arrived (between two messages, as seen by the client) is closed at once and counted
//! in [`Report::eof`], not as an error; a reset or a reply cut short stays an error.
//! [`spawn`] runs the load in the background while the caller stops the server.
//!
//! Holding after EOF ([`Config::hold_after_eof`], off by default) is for a client that
//! stops at the server's EOF but keeps its socket open: such a connection sends nothing
//! more and is not closed; once no connection is left busy, the held sockets stay open
//! until the caller releases them ([`Hold::release`]) or the hold's time limit passes,
//! whichever comes first, and are closed then. A held socket the kernel reports broken
//! meanwhile (a reset from the server) counts in [`Report::resets`].
//!
//! What is sent and what counts as a correct reply is the [`Workload`]: echo today; an
//! HTTP mode slots in as another variant with its own `request` and `judge`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::epoll::Epoll;
use crate::{pin, procstat};

/// How often connections are checked for replies that take too long.
const SCAN_EVERY: Duration = Duration::from_millis(100);
/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;
/// How often the held sockets' release is checked once no connection is busy.
const RELEASE_POLL: Duration = Duration::from_millis(2);

/// What each connection sends, and what counts as a correct reply.
#[derive(Clone, Debug)]
pub enum Workload {
    /// Send `size` bytes and expect the same bytes back. The first 8 bytes carry the
    /// message's sequence number, so a stale or duplicated reply does not match.
    Echo { size: usize },
}

/// Where a reply stands after the bytes received so far.
enum Progress {
    Partial,
    Complete,
    Invalid,
}

impl Workload {
    /// The first request of a connection.
    fn request(&self) -> Box<[u8]> {
        match self {
            Workload::Echo { size } => (0..*size).map(|i| b'a' + (i % 26) as u8).collect(),
        }
    }

    /// Rewrites `req` in place as message number `seq`.
    fn stamp(&self, req: &mut [u8], seq: u64) {
        match self {
            Workload::Echo { .. } => {
                let n = req.len().min(8);
                req[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
            }
        }
    }

    /// Room for one reply; a reply that fills it is invalid.
    fn reply_capacity(&self) -> usize {
        match self {
            Workload::Echo { size } => size + 1024,
        }
    }

    fn judge(&self, req: &[u8], reply: &[u8]) -> Progress {
        match self {
            Workload::Echo { .. } if !req.starts_with(reply) => Progress::Invalid,
            Workload::Echo { .. } if reply.len() == req.len() => Progress::Complete,
            Workload::Echo { .. } => Progress::Partial,
        }
    }
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server, on 127.0.0.1 for every benchmark of this crate.
    pub addr: SocketAddr,
    pub conns: usize,
    pub workload: Workload,
    /// Length of the measured window.
    pub duration: Duration,
    /// Time before the measured window, not counted (connections open during it).
    pub warmup: Duration,
    /// The window also ends once this many messages completed in it.
    pub max_messages: u64,
    /// A connection that waits longer than this for a reply is counted and closed.
    pub timeout: Duration,
    /// Pin the load generator's thread to this CPU.
    pub cpu: Option<usize>,
    /// Measure this process's CPU time over the window (see [`procstat`]).
    pub server_pid: Option<u32>,
    /// The server is expected to end connections during the run (it drains): a clean
    /// EOF between two messages ends that connection without counting as an error.
    pub drain_aware: bool,
    /// Drain-aware runs only: a connection the server ends with a clean EOF is held
    /// open (no more sends, no close) instead of closed at once, until the hold is
    /// released or its time is up (see [`Hold`]). `None` (the default): closed at EOF.
    pub hold_after_eof: Option<Hold>,
}

/// How long the sockets of [`Config::hold_after_eof`] stay open. Clones share one
/// release, so the caller keeps a clone to call [`Hold::release`] on.
#[derive(Clone, Debug)]
pub struct Hold {
    /// The held sockets are closed at the latest this long after the last busy
    /// connection ended (when the load itself is over).
    pub max: Duration,
    released: Arc<AtomicBool>,
}

impl Hold {
    /// A hold of at most `max` once the load is over, not released yet.
    pub fn new(max: Duration) -> Hold {
        Hold {
            max,
            released: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Lets the held sockets be closed: at once if the load is over, else as soon as it
    /// is (within a few milliseconds).
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// Whether [`Hold::release`] was called on this hold or a clone of it.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
}

impl Config {
    /// Echo of `size` bytes: 5 s window, 1 s warm-up, 5 s timeout, no pinning.
    pub fn echo(addr: SocketAddr, conns: usize, size: usize) -> Self {
        Config {
            addr,
            conns,
            workload: Workload::Echo { size },
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            max_messages: u64::MAX,
            timeout: Duration::from_secs(5),
            cpu: None,
            server_pid: None,
            drain_aware: false,
            hold_after_eof: None,
        }
    }
}

/// What a run counted.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Messages completed and verified in the measured window.
    pub messages: u64,
    /// Length of the measured window (zero if it never started).
    pub elapsed: Duration,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Connections broken by an I/O error: reset, broken pipe, and the like.
    pub resets: u64,
    /// Replies that did not match, or were cut short by the peer closing. Without
    /// [`Config::drain_aware`], any EOF from the server counts here.
    pub invalid: u64,
    /// Connections the server ended with a clean EOF between two messages (drain-aware
    /// runs only); not an error.
    pub eof: u64,
    /// Of [`Report::eof`], the connections held open after it ([`Config::hold_after_eof`]).
    pub held: u64,
    /// Connections that waited longer than the timeout for a reply.
    pub timeouts: u64,
    /// The server's CPU time over the window, if a server PID was given.
    pub server_cpu_secs: Option<f64>,
    /// The load generator thread's own CPU time over the window.
    pub client_cpu_secs: f64,
    /// When the first connection saw a clean EOF (drain-aware runs).
    pub first_eof: Option<Instant>,
    /// When the last connection saw a clean EOF (drain-aware runs).
    pub last_eof: Option<Instant>,
    /// When the last connection was closed, whatever the cause (held ones included).
    pub last_close: Option<Instant>,
}

impl Report {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.resets + self.invalid + self.timeouts
    }

    pub fn per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Share of one core the load generator used in the window (1.0: saturated).
    pub fn client_load(&self) -> f64 {
        self.client_cpu_secs / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU microseconds per completed message.
    pub fn cpu_us_per_message(&self) -> Option<f64> {
        let cpu = self.server_cpu_secs?;
        (self.messages > 0).then(|| cpu * 1e6 / self.messages as f64)
    }
}

/// Runs the load on a thread of its own (pinned if asked) and waits for its report.
pub fn run(cfg: &Config) -> io::Result<Report> {
    join(spawn(cfg)?)
}

/// Starts the load on a thread of its own (pinned if asked); [`join`] gives its report.
/// The run ends by itself (see the module docs), so joining is bounded by the
/// configuration's times.
pub fn spawn(cfg: &Config) -> io::Result<JoinHandle<io::Result<Report>>> {
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("loadgen".into())
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
        .map_err(|_| io::Error::other("load generator thread panicked"))?
}

/// The event loop: all connections, the phase of the run, and the counts.
struct Driver<'a> {
    cfg: &'a Config,
    epoll: Epoll,
    conns: Vec<Option<Conn>>,
    live: usize,
    /// Sockets held open after their EOF, by token (empty unless holding is on).
    held: Vec<Option<TcpStream>>,
    held_live: usize,
    report: Report,
    now: Instant,
    warm_end: Instant,
    window: Option<Instant>,
    cpu_start: Option<f64>,
    client_cpu_start: f64,
    max_reached: bool,
}

impl<'a> Driver<'a> {
    fn new(cfg: &'a Config) -> io::Result<Self> {
        let now = Instant::now();
        Ok(Driver {
            cfg,
            epoll: Epoll::new()?,
            conns: Vec::with_capacity(cfg.conns),
            live: 0,
            held: Vec::new(),
            held_live: 0,
            report: Report::default(),
            now,
            warm_end: now + cfg.warmup,
            window: None,
            cpu_start: None,
            client_cpu_start: 0.0,
            max_reached: false,
        })
    }

    fn run(mut self) -> io::Result<Report> {
        self.connect_all()?;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let mut next_scan = self.now + SCAN_EVERY;
        loop {
            self.now = Instant::now();
            if !self.keep_going()? {
                break;
            }
            if self.now >= next_scan {
                self.expire_slow();
                next_scan = self.now + SCAN_EVERY;
            }
            let n = self.epoll.wait(&mut events, self.wait_ms(next_scan))?;
            for ev in &events[..n] {
                self.on_ready(ev.u64 as usize);
                if self.max_reached {
                    break;
                }
            }
        }
        self.close_window()?;
        self.hold_until_released(&mut events)?;
        Ok(self.report)
    }

    /// Opens every connection (each connect waits at most `timeout`; none is tried once
    /// the run's time is up) and sends its first request.
    fn connect_all(&mut self) -> io::Result<()> {
        let run_end = self.warm_end + self.cfg.duration;
        for token in 0..self.cfg.conns {
            let opened = match Instant::now() < run_end {
                true => Conn::open(self.cfg, token as u64, self.now),
                false => Err(io::ErrorKind::TimedOut.into()),
            };
            let Ok(conn) = opened else {
                self.report.connect_errors += 1;
                self.conns.push(None);
                continue;
            };
            self.epoll
                .add(conn.fd(), token as u64, libc::EPOLLIN as u32)?;
            self.conns.push(Some(conn));
            self.live += 1;
            self.on_ready(token);
        }
        Ok(())
    }

    /// Starts the window when warm-up ends; false once the run is over.
    fn keep_going(&mut self) -> io::Result<bool> {
        if self.window.is_none() && self.now >= self.warm_end {
            self.cpu_start = self.server_cpu()?;
            self.client_cpu_start = procstat::thread_cpu_seconds();
            self.window = Some(self.now);
        }
        let in_time = self
            .window
            .is_none_or(|start| self.now < start + self.cfg.duration);
        Ok(in_time && !self.max_reached && self.live > 0)
    }

    /// Milliseconds until the next phase change or scan, rounded up.
    fn wait_ms(&self, next_scan: Instant) -> i32 {
        let phase_end = self.window.map_or(self.warm_end, |s| s + self.cfg.duration);
        let until = phase_end.min(next_scan).saturating_duration_since(self.now);
        until.as_micros().div_ceil(1000) as i32
    }

    fn on_ready(&mut self, token: usize) {
        // Events for a connection closed earlier in the same batch find `None`.
        let Some(conn) = self.conns[token].as_mut() else {
            self.on_held(token);
            return;
        };
        match conn.on_ready(&self.epoll, self.cfg, self.now) {
            Ok(false) => {}
            Ok(true) => self.count_message(),
            Err(fault) => {
                match fault {
                    Fault::Reset => self.report.resets += 1,
                    Fault::Invalid => self.report.invalid += 1,
                    Fault::Eof => {
                        let now = Instant::now();
                        self.report.eof += 1;
                        self.report.first_eof.get_or_insert(now);
                        self.report.last_eof = Some(now);
                        if self.cfg.hold_after_eof.is_some() {
                            return self.hold(token);
                        }
                    }
                }
                self.close(token);
            }
        }
    }

    /// Takes a connection out of the load and keeps its socket open, watched for
    /// errors only (a reset or a hang-up wakes the set; the EOF already read does not).
    fn hold(&mut self, token: usize) {
        let Some(conn) = self.conns[token].take() else {
            return;
        };
        self.live -= 1;
        if self.held.is_empty() {
            self.held.resize_with(self.conns.len(), || None);
        }
        if self.epoll.modify(conn.fd(), token as u64, 0).is_err() {
            // Not watched: it cannot be told from a broken one, so it is one.
            self.report.resets += 1;
            self.report.last_close = Some(Instant::now());
            return;
        }
        self.report.held += 1;
        self.held[token] = Some(conn.stream);
        self.held_live += 1;
    }

    /// An event on a held socket: only an error or a hang-up can raise one, so the
    /// connection was broken while held; it is counted as a reset and closed.
    fn on_held(&mut self, token: usize) {
        if let Some(stream) = self.held.get_mut(token).and_then(Option::take) {
            drop(stream);
            self.held_live -= 1;
            self.report.resets += 1;
            self.report.last_close = Some(Instant::now());
        }
    }

    /// Once the load is over: keeps the held sockets open until the hold is released or
    /// its time is up, then closes them.
    fn hold_until_released(&mut self, events: &mut [libc::epoll_event]) -> io::Result<()> {
        let Some(hold) = self.cfg.hold_after_eof.as_ref() else {
            return Ok(());
        };
        let deadline = Instant::now() + hold.max;
        while self.held_live > 0 && !hold.is_released() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = left.min(RELEASE_POLL).as_micros().div_ceil(1000) as i32;
            let n = self.epoll.wait(events, wait)?;
            for ev in &events[..n] {
                self.on_held(ev.u64 as usize);
            }
        }
        if self.held_live > 0 {
            // Dropping the sockets closes them (a FIN each: nothing unread is left).
            self.held.clear();
            self.held_live = 0;
            self.report.last_close = Some(Instant::now());
        }
        Ok(())
    }

    fn count_message(&mut self) {
        if self.window.is_some() {
            self.report.messages += 1;
            self.max_reached = self.report.messages >= self.cfg.max_messages;
        }
    }

    /// Closes connections that have waited too long for their reply.
    fn expire_slow(&mut self) {
        for token in 0..self.conns.len() {
            let waited = self.conns[token].as_ref().map(|c| self.now - c.since);
            if waited.is_some_and(|w| w > self.cfg.timeout) {
                self.report.timeouts += 1;
                self.close(token);
            }
        }
    }

    fn close(&mut self, token: usize) {
        // Dropping the socket closes it, which also removes it from the epoll set.
        if self.conns[token].take().is_some() {
            self.live -= 1;
            self.report.last_close = Some(Instant::now());
        }
    }

    /// Ends the measured window: its length and the CPU times over it.
    fn close_window(&mut self) -> io::Result<()> {
        if let Some(start) = self.window {
            self.report.elapsed = Instant::now() - start;
            self.report.client_cpu_secs = procstat::thread_cpu_seconds() - self.client_cpu_start;
            let end = self.server_cpu()?;
            self.report.server_cpu_secs = end.zip(self.cpu_start).map(|(e, s)| e - s);
        }
        Ok(())
    }

    fn server_cpu(&self) -> io::Result<Option<f64>> {
        self.cfg.server_pid.map(procstat::cpu_seconds).transpose()
    }
}

/// Why a connection was given up.
enum Fault {
    Reset,
    Invalid,
    /// A clean EOF between two messages, in a drain-aware run.
    Eof,
}

/// One client connection and its message in flight.
struct Conn {
    stream: TcpStream,
    token: u64,
    req: Box<[u8]>,
    sent: usize,
    reply: Box<[u8]>,
    got: usize,
    seq: u64,
    /// When the message in flight was started.
    since: Instant,
    /// Whether the epoll interest includes EPOLLOUT (only while a send is stuck).
    want_out: bool,
}

impl Conn {
    fn open(cfg: &Config, token: u64, now: Instant) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&cfg.addr, cfg.timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut req = cfg.workload.request();
        cfg.workload.stamp(&mut req, 0);
        let reply = vec![0; cfg.workload.reply_capacity()].into_boxed_slice();
        let (sent, got, seq, since, want_out) = (0, 0, 0, now, false);
        let conn = Conn {
            stream,
            token,
            req,
            sent,
            reply,
            got,
            seq,
            since,
            want_out,
        };
        Ok(conn)
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Makes whatever progress the socket allows; true when a message completed.
    /// Level-triggered epoll reports the socket again if anything is left to do.
    fn on_ready(&mut self, ep: &Epoll, cfg: &Config, now: Instant) -> Result<bool, Fault> {
        let w = &cfg.workload;
        if self.sent < self.req.len() {
            self.flush(ep)?;
        }
        if !self.receive(w, cfg.drain_aware)? {
            return Ok(false);
        }
        self.seq += 1;
        w.stamp(&mut self.req, self.seq);
        (self.sent, self.got, self.since) = (0, 0, now);
        self.flush(ep)?;
        Ok(true)
    }

    /// Sends what is left of the request; asks for EPOLLOUT only if the socket is full.
    fn flush(&mut self, ep: &Epoll) -> Result<(), Fault> {
        while self.sent < self.req.len() {
            match self.stream.write(&self.req[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.want_out(ep, true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Fault::Reset),
            }
        }
        self.want_out(ep, false)
    }

    /// Reads until the reply is complete or the socket is empty; true when complete.
    /// An EOF is an error unless `drain_aware` and no byte of the reply has come yet.
    fn receive(&mut self, w: &Workload, drain_aware: bool) -> Result<bool, Fault> {
        loop {
            if self.got == self.reply.len() {
                return Err(Fault::Invalid);
            }
            match self.stream.read(&mut self.reply[self.got..]) {
                Ok(0) if drain_aware && self.got == 0 => return Err(Fault::Eof),
                Ok(0) => return Err(Fault::Invalid),
                Ok(n) => self.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Fault::Reset),
            }
            match w.judge(&self.req, &self.reply[..self.got]) {
                Progress::Partial => {}
                Progress::Complete => return Ok(true),
                Progress::Invalid => return Err(Fault::Invalid),
            }
        }
    }

    fn want_out(&mut self, ep: &Epoll, on: bool) -> Result<(), Fault> {
        if self.want_out != on {
            let out = if on { libc::EPOLLOUT } else { 0 };
            let events = (libc::EPOLLIN | out) as u32;
            ep.modify(self.fd(), self.token, events)
                .map_err(|_| Fault::Reset)?;
            self.want_out = on;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener};

    /// A one-connection echo server: echoes `messages` messages of `size` bytes, sends
    /// FIN, then returns how long the client kept its socket open after that (the time
    /// to its EOF), or `None` if it sent none within `wait`.
    fn serve_then_fin(
        listener: TcpListener,
        size: usize,
        messages: usize,
        wait: Duration,
    ) -> io::Result<Option<Duration>> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0; size];
        for _ in 0..messages {
            stream.read_exact(&mut buf)?;
            stream.write_all(&buf)?;
        }
        // The client's next message may be on its way: a drain reads it off.
        stream.shutdown(Shutdown::Write)?;
        let fin_sent = Instant::now();
        stream.set_read_timeout(Some(wait))?;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(Some(fin_sent.elapsed())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn config(addr: SocketAddr, hold: Option<Hold>) -> Config {
        let mut cfg = Config::echo(addr, 1, 64);
        cfg.warmup = Duration::ZERO;
        cfg.duration = Duration::from_secs(10);
        cfg.drain_aware = true;
        cfg.hold_after_eof = hold;
        cfg
    }

    #[test]
    fn a_held_socket_stays_open_until_released() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let hold = Hold::new(Duration::from_secs(10));
        let load = spawn(&config(listener.local_addr()?, Some(hold.clone())))?;
        let server =
            std::thread::spawn(move || serve_then_fin(listener, 64, 3, Duration::from_millis(300)));
        // The client sent no FIN in 300 ms after ours: it holds its socket.
        assert_eq!(server.join().unwrap()?, None);
        hold.release();
        let report = join(load)?;
        assert_eq!((report.eof, report.held, report.errors()), (1, 1, 0));
        assert!(report.last_close >= report.last_eof);
        Ok(())
    }

    #[test]
    fn a_held_socket_is_closed_when_the_hold_times_out() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let hold = Hold::new(Duration::from_millis(200));
        let load = spawn(&config(listener.local_addr()?, Some(hold)))?;
        let server =
            std::thread::spawn(move || serve_then_fin(listener, 64, 3, Duration::from_secs(5)));
        let held_for = server.join().unwrap()?.expect("closed by the hold's limit");
        assert!(held_for >= Duration::from_millis(150), "{held_for:?}");
        let report = join(load)?;
        assert_eq!((report.eof, report.held, report.errors()), (1, 1, 0));
        Ok(())
    }

    #[test]
    fn without_a_hold_the_socket_closes_at_eof() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let load = spawn(&config(listener.local_addr()?, None))?;
        let server =
            std::thread::spawn(move || serve_then_fin(listener, 64, 3, Duration::from_secs(5)));
        let held_for = server.join().unwrap()?.expect("closed at EOF");
        assert!(held_for < Duration::from_secs(1), "{held_for:?}");
        let report = join(load)?;
        assert_eq!((report.eof, report.held, report.errors()), (1, 0, 0));
        Ok(())
    }
}
