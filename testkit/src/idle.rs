//! Idle client connections held open in epoll, reporting how each one ended.
//!
//! A drain benchmark needs many connections that do nothing while the server stops, and
//! needs to know how each was ended: a clean EOF (the server's FIN), a reset, or not at
//! all. One thread (pinned if asked) holds them all in a level-triggered epoll set and
//! behaves like a well-mannered client: it closes its end as soon as it reads EOF, so a
//! server that waits for the client's FIN before closing is not kept waiting.
//!
//! [`open`] connects to a server and does one echo round trip on each connection first,
//! so the server has really taken each one in before the measurement; [`hold`] takes
//! sockets the caller already connected. Either way the call returns once the
//! connections are held, and [`Holders::wait`] gives the [`Report`]. Every step has a
//! time limit: opening all connections takes at most [`Config::timeout`], holding them
//! at most [`Config::hold`] (what is still open then is counted in
//! [`Report::still_open`] and closed).
//!
//! [`Held`] is the same holding loop on the calling thread, for a server side that
//! waits for its peers' EOF itself (the floor of a drain that sends FIN first).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::epoll::Epoll;
use crate::pin;

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// A set of idle connections to open with [`open`].
#[derive(Clone, Debug)]
pub struct Config {
    /// The server, on 127.0.0.1 for every benchmark of this crate.
    pub addr: SocketAddr,
    pub conns: usize,
    /// Bytes of the one echo round trip done on each connection before it goes idle.
    pub ping: usize,
    /// Time allowed for opening all the connections, round trips included.
    pub timeout: Duration,
    /// Time the connections are held once open; what is still open then is closed.
    pub hold: Duration,
    /// Pin the holding thread to this CPU.
    pub cpu: Option<usize>,
}

/// How the held connections ended.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Connections opened and held.
    pub opened: u64,
    /// Connections that could not be opened, or whose round trip failed or mismatched.
    pub open_errors: u64,
    /// Ended by a clean EOF from the server (then closed by us).
    pub eof: u64,
    /// Ended by a reset (ECONNRESET).
    pub resets: u64,
    /// Ended by another socket error.
    pub other_errors: u64,
    /// Connections that received bytes while idle (they were read and dropped).
    pub unexpected_data: u64,
    /// Still open when the hold time ran out.
    pub still_open: u64,
    /// When the first held connection ended (EOF or error).
    pub first_end: Option<Instant>,
    /// When the last held connection ended and was closed.
    pub last_end: Option<Instant>,
    /// When each connection that ended did, in the order seen.
    pub ends: Vec<Instant>,
}

/// The thread holding the connections.
pub struct Holders {
    opened: u64,
    handle: JoinHandle<io::Result<Report>>,
}

impl Holders {
    /// Connections being held.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Waits until every connection ended or the hold time ran out.
    pub fn wait(self) -> io::Result<Report> {
        self.handle
            .join()
            .map_err(|_| io::Error::other("idle holder thread panicked"))?
    }
}

/// Opens `cfg.conns` connections (one echo round trip each) on a new thread and holds
/// them; returns once all are open. Failed opens are counted, not fatal.
pub fn open(cfg: &Config) -> io::Result<Holders> {
    let cfg = cfg.clone();
    start(cfg.cpu, cfg.hold, move |report| {
        let deadline = Instant::now() + cfg.timeout;
        let mut streams = Vec::with_capacity(cfg.conns);
        for _ in 0..cfg.conns {
            match open_one(&cfg, deadline) {
                Ok(stream) => streams.push(stream),
                Err(_) => report.open_errors += 1,
            }
        }
        Ok(streams)
    })
}

/// Holds sockets the caller connected (their peers are the caller's business) on a new
/// thread, pinned to `cpu` if given, for at most `hold`; returns once they are held.
pub fn hold(streams: Vec<TcpStream>, cpu: Option<usize>, hold: Duration) -> io::Result<Holders> {
    start(cpu, hold, move |_| Ok(streams))
}

/// Starts the holding thread: `make` provides the sockets, then they are held.
fn start<F>(cpu: Option<usize>, hold: Duration, make: F) -> io::Result<Holders>
where
    F: FnOnce(&mut Report) -> io::Result<Vec<TcpStream>> + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("idle".into())
        .spawn(move || {
            // Only the open errors are counted before holding begins.
            let mut before = Report::default();
            let prepared = (|| {
                if let Some(cpu) = cpu {
                    pin::pin_current_thread(cpu)?;
                }
                let streams = make(&mut before)?;
                Held::new(streams)
            })();
            let held = match prepared {
                Ok(held) => held,
                Err(e) => {
                    let _ = ready_tx.send(None);
                    return Err(e);
                }
            };
            let _ = ready_tx.send(Some(held.live as u64));
            let report = held.run(Instant::now() + hold)?;
            Ok(Report {
                open_errors: before.open_errors,
                ..report
            })
        })?;
    match ready_rx.recv() {
        Ok(Some(opened)) => Ok(Holders { opened, handle }),
        // The thread failed before holding anything: its error is the answer.
        _ => Err(handle
            .join()
            .map_err(|_| io::Error::other("idle holder thread panicked"))?
            .err()
            .unwrap_or_else(|| io::Error::other("idle holder stopped early"))),
    }
}

/// Connects and does one echo round trip, all before `deadline`; leaves the socket
/// non-blocking.
fn open_one(cfg: &Config, deadline: Instant) -> io::Result<TcpStream> {
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        match left.is_zero() {
            true => Err(io::Error::from(io::ErrorKind::TimedOut)),
            false => Ok(left),
        }
    };
    let mut stream = TcpStream::connect_timeout(&cfg.addr, left()?)?;
    stream.set_nodelay(true)?;
    let ping: Vec<u8> = (0..cfg.ping).map(|i| b'A' + (i % 26) as u8).collect();
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(&ping)?;
    let mut pong = vec![0; ping.len()];
    stream.set_read_timeout(Some(left()?))?;
    stream.read_exact(&mut pong)?;
    if pong != ping {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo mismatch"));
    }
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Sockets registered in one epoll set by index, each closed as soon as it reads EOF
/// (or fails).
pub struct Held {
    epoll: Epoll,
    conns: Vec<Option<TcpStream>>,
    /// Whether each connection already counted as having received data.
    noisy: Vec<bool>,
    live: usize,
}

impl Held {
    /// Registers `streams` (made non-blocking) for reading.
    pub fn new(streams: Vec<TcpStream>) -> io::Result<Held> {
        let epoll = Epoll::new()?;
        let interest = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        for (token, stream) in streams.iter().enumerate() {
            stream.set_nonblocking(true)?;
            epoll.add(stream.as_raw_fd(), token as u64, interest)?;
        }
        Ok(Held {
            epoll,
            noisy: vec![false; streams.len()],
            live: streams.len(),
            conns: streams.into_iter().map(Some).collect(),
        })
    }

    /// The sockets still open.
    pub fn streams(&self) -> impl Iterator<Item = &TcpStream> {
        self.conns.iter().flatten()
    }

    /// Waits on the calling thread until every socket ended or `deadline` passed; what
    /// is still open then is counted and closed.
    pub fn run(mut self, deadline: Instant) -> io::Result<Report> {
        let mut report = Report {
            opened: self.live as u64,
            ..Report::default()
        };
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        while self.live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let n = self.epoll.wait(&mut events, ms)?;
            for ev in &events[..n] {
                self.on_ready(ev.u64 as usize, &mut report);
            }
        }
        report.still_open = self.live as u64;
        Ok(report)
    }

    /// Reads what the socket has; closes it on EOF or error and counts how it ended.
    fn on_ready(&mut self, token: usize, report: &mut Report) {
        let Some(stream) = self.conns[token].as_mut() else {
            return;
        };
        let mut buf = [0u8; 512];
        let ended = loop {
            match stream.read(&mut buf) {
                Ok(0) => break Some(&mut report.eof),
                Ok(_) if self.noisy[token] => {}
                Ok(_) => {
                    self.noisy[token] = true;
                    report.unexpected_data += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    break Some(&mut report.resets);
                }
                Err(_) => break Some(&mut report.other_errors),
            }
        };
        if let Some(count) = ended {
            *count += 1;
            // Dropping the socket closes it, which also removes it from the epoll set.
            self.conns[token] = None;
            self.live -= 1;
            let now = Instant::now();
            report.first_end.get_or_insert(now);
            report.last_end = Some(now);
            report.ends.push(now);
        }
    }
}
