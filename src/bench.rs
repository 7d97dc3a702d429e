//! Internals exposed for the criterion benches in `benches/` only (feature `sim`); not
//! part of the API and not covered by semantic versioning.
//!
//! [`BenchEngine`] runs the real worker loop turn over an in-memory driver: each turn it
//! delivers a receive completion for every connection, and completes the sends of the
//! turn before at once, so a bench measures the loop's and the engine's per-completion
//! work without the kernel.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::contract::{BacklogEnd, ConnRef, Driver, Event, Intents, OutBuf};
use crate::engine::Engine;
use crate::handler::{Conn, Handler, Worker};
use crate::mailbox;
use crate::shared::Shared;
use crate::sys::token::{Kind, decode, encode};
use crate::sys::uring::UnregisteredBufRing;
use crate::worker::Runner;

/// Decodes a `user_data` into (kind, key, generation); `None` for an unknown kind.
pub fn decode_user_data(user_data: u64) -> Option<(u8, u32, u32)> {
    decode(user_data).map(|(kind, c)| (kind as u8, c.key, c.generation))
}

/// The `user_data` of a receive on slot `key` with generation `generation`.
pub fn recv_user_data(key: u32, generation: u32) -> u64 {
    encode(Kind::Recv, ConnRef { key, generation })
}

/// A provided buffer ring, unregistered: the user-space half of recycling a buffer.
pub struct BufRingBench(UnregisteredBufRing);

impl BufRingBench {
    /// A ring of `count` (a power of two) buffers of `size` bytes.
    pub fn new(count: u16, size: u32) -> BufRingBench {
        BufRingBench(UnregisteredBufRing::new(count, size).expect("buffer ring"))
    }

    /// Reads buffer `bid` as a completion of `len` bytes would, and puts it back.
    pub fn consume_and_recycle(&mut self, bid: u16, len: usize) -> u8 {
        self.0.consume_and_recycle(bid, len)
    }

    /// Publishes the tail (once per loop turn in the real loop).
    pub fn publish(&mut self) {
        self.0.publish();
    }
}

/// The echo handler of [`EchoEngine`].
pub struct Echo;

impl Handler for Echo {
    type State = ();
    type Message = ();
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.write(data);
        data.len()
    }
}

/// The bench driver's queue: it parks the engine's sends to complete them next turn.
#[derive(Default)]
pub(crate) struct Parked {
    sends: Vec<(ConnRef, OutBuf)>,
    recvs: Vec<ConnRef>,
}

impl Intents for Parked {
    fn accept(&mut self) {}
    fn recv(&mut self, conn: ConnRef, _fd: RawFd) {
        self.recvs.push(conn);
    }
    fn send(&mut self, conn: ConnRef, _fd: RawFd, buf: OutBuf) {
        self.sends.push((conn, buf));
    }
    fn cancel_recv(&mut self, _conn: ConnRef) {}
    fn cancel_send(&mut self, _conn: ConnRef) {}
    fn close(&mut self, _conn: ConnRef, _fd: RawFd) {}
    fn cancel_accept(&mut self) {}
    fn wake_workers(&mut self) {}
    fn wake_worker(&mut self, _index: usize) {}
    fn open_socket_now(&mut self, _v6: bool) -> Result<RawFd, i32> {
        Err(libc::EMFILE) // the benches open no links
    }
    fn connect(&mut self, _conn: ConnRef, _fd: RawFd, _to: std::net::SocketAddr) {}
    fn cancel_connect(&mut self, _conn: ConnRef) {}
    fn shutdown_write_now(&mut self, _conn: ConnRef, _fd: RawFd) {}
    fn shutdown_both_now(&mut self, _conn: ConnRef, _fd: RawFd) {}
    fn close_listener_now(&mut self, _backlog: &mut Vec<RawFd>, _give_up: bool) -> BacklogEnd {
        BacklogEnd::Closed
    }
}

/// An in-memory driver: `accepts` descriptors first, then every turn the sends of the
/// turn before complete in full and `msg` arrives on every connection.
pub(crate) struct BenchDriver {
    q: Parked,
    accepts: Vec<RawFd>,
    conns: Vec<u64>,
    completing: Vec<(ConnRef, OutBuf)>,
    msg: Vec<u8>,
}

impl Driver for BenchDriver {
    type Queue<'q> = Parked;

    fn with_queue<R>(&mut self, f: impl FnOnce(&mut Parked) -> R) -> R {
        f(&mut self.q)
    }

    fn reap(&mut self, mut handle: impl FnMut(Event<'_>, &mut Parked)) {
        for fd in self.accepts.drain(..) {
            handle(Event::Accepted { fd }, &mut self.q);
        }
        for (conn, buf) in self.completing.drain(..) {
            let result = Ok(buf.remaining().len());
            handle(Event::Sent { conn, result, buf }, &mut self.q);
        }
        for &user_data in &self.conns {
            if let Some((Kind::Recv, conn)) = decode(user_data) {
                let (data, queued) = (&self.msg[..], false);
                handle(Event::Received { conn, data, queued }, &mut self.q);
            }
        }
    }

    fn has_ready(&self) -> bool {
        false
    }

    fn publish(&mut self) {}

    fn submit_and_wait(&mut self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn begin_release(&mut self, _abort: bool) {}

    fn in_flight(&self) -> usize {
        0
    }
}

/// A real engine with an echo handler, fed from memory.
pub type EchoEngine = BenchEngine<Echo>;

impl EchoEngine {
    /// An echo engine with `conns` accepted connections.
    pub fn new(conns: usize) -> EchoEngine {
        BenchEngine::with_handler(Echo, conns)
    }
}

/// A real engine with any handler and `n` open connections, fed from memory through the
/// worker loop's turn.
pub struct BenchEngine<H: Handler> {
    runner: Runner<H, BenchDriver>,
}

impl<H: Handler> BenchEngine<H> {
    /// An engine running `handler` with `conns` accepted connections.
    pub fn with_handler(handler: H, conns: usize) -> BenchEngine<H> {
        let now = Instant::now();
        let config = Config::default();
        let shared = Shared::without_wakers();
        let (mailbox, inbox) = mailbox::channel(shared.clone(), 0, config.mailbox_capacity);
        let worker = Worker::new(0, mailbox);
        let engine = Engine::new(handler, (worker, inbox), &config, shared, now);
        let driver = BenchDriver {
            q: Parked::default(),
            accepts: (0..conns).map(|fd| fd as RawFd + 100).collect(),
            conns: Vec::new(),
            completing: Vec::new(),
            msg: Vec::new(),
        };
        let mut runner = Runner::new(engine, driver);
        runner.turn(now); // accepts every connection
        let driver = runner.driver_mut();
        driver.conns = driver
            .q
            .recvs
            .drain(..)
            .map(|c| encode(Kind::Recv, c))
            .collect();
        driver.completing = std::mem::take(&mut driver.q.sends);
        BenchEngine { runner }
    }

    /// One loop turn: the sends of the turn before complete, a receive completion of
    /// `msg` arrives for every connection (decoded from its `user_data`), then the
    /// end-of-turn flush. Returns the bytes this turn sends.
    pub fn turn(&mut self, msg: &[u8]) -> usize {
        let driver = self.runner.driver_mut();
        driver.msg.clear();
        driver.msg.extend_from_slice(msg);
        self.runner.turn(Instant::now());
        let driver = self.runner.driver_mut();
        std::mem::swap(&mut driver.completing, &mut driver.q.sends);
        driver
            .completing
            .iter()
            .map(|(_, buf)| buf.remaining().len())
            .sum()
    }
}
