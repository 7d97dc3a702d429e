//! Internals exposed for the criterion benches in `benches/` only; not part of the API
//! and not covered by semantic versioning.
//!
//! [`EchoEngine`] is an in-memory event source: it feeds decoded completions to a real
//! engine running an echo handler, and completes the engine's sends at once, so a bench
//! measures the engine's per-completion work without the kernel.

use std::os::fd::RawFd;
use std::time::Instant;

use crate::config::Config;
use crate::engine::Engine;
use crate::handler::{Conn, Handler, Worker};
use crate::shared::Shared;
use crate::sys::uring::{BufRing, Kind, decode, encode};
use crate::sys::{ConnRef, Event, Ops, OutBuf};

/// Decodes a `user_data` into (kind, key, generation); `None` for an unknown kind.
pub fn decode_user_data(user_data: u64) -> Option<(u8, u32, u32)> {
    decode(user_data).map(|(kind, c)| (kind as u8, c.key, c.generation))
}

/// The `user_data` of a receive on slot `key` with generation `generation`.
pub fn recv_user_data(key: u32, generation: u32) -> u64 {
    encode(Kind::Recv, ConnRef { key, generation })
}

/// A provided buffer ring, unregistered: the user-space half of recycling a buffer.
pub struct BufRingBench(BufRing);

impl BufRingBench {
    /// A ring of `count` (a power of two) buffers of `size` bytes.
    pub fn new(count: u16, size: u32) -> BufRingBench {
        BufRingBench(BufRing::new(count, size, 0).expect("buffer ring"))
    }

    /// Reads buffer `bid` as a completion of `len` bytes would, and puts it back.
    pub fn consume_and_recycle(&mut self, bid: u16, len: usize) -> u8 {
        let first = self.0.get(bid, len).first().copied().unwrap_or(0);
        self.0.recycle(bid);
        first
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
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.write(data);
        data.len()
    }
}

/// Collects the engine's sends so they can be completed in the next turn.
#[derive(Default)]
struct Parked {
    sends: Vec<(ConnRef, OutBuf)>,
    recvs: Vec<ConnRef>,
}

impl Ops for Parked {
    fn accept(&mut self) {}
    fn recv(&mut self, conn: ConnRef, _fd: RawFd) {
        self.recvs.push(conn);
    }
    fn send(&mut self, conn: ConnRef, _fd: RawFd, buf: OutBuf) {
        self.sends.push((conn, buf));
    }
    fn cancel_recv(&mut self, _conn: ConnRef) {}
    fn cancel_send(&mut self, _conn: ConnRef) {}
    fn shutdown_write(&mut self, _conn: ConnRef, _fd: RawFd) {}
    fn shutdown_both(&mut self, _conn: ConnRef, _fd: RawFd) {}
    fn close(&mut self, _conn: ConnRef, _fd: RawFd) {}
    fn cancel_accept(&mut self) {}
    fn close_listener(&mut self, _backlog: &mut Vec<RawFd>) -> Option<i32> {
        None
    }
    fn wake_workers(&mut self) {}
}

/// A real engine with an echo handler, fed from memory.
pub type EchoEngine = BenchEngine<Echo>;

impl EchoEngine {
    /// An echo engine with `conns` accepted connections.
    pub fn new(conns: usize) -> EchoEngine {
        BenchEngine::with_handler(Echo, conns)
    }
}

/// A real engine with any handler and `n` open connections, fed from memory.
pub struct BenchEngine<H: Handler> {
    engine: Engine<H>,
    ops: Parked,
    conns: Vec<u64>,
}

impl<H: Handler> BenchEngine<H> {
    /// An engine running `handler` with `conns` accepted connections.
    pub fn with_handler(handler: H, conns: usize) -> BenchEngine<H> {
        let mut e = BenchEngine {
            engine: Engine::new(
                handler,
                Worker::new(0),
                &Config::default(),
                Shared::new(1).expect("eventfd"),
            ),
            ops: Parked::default(),
            conns: Vec::new(),
        };
        e.engine.start(&mut e.ops);
        for fd in 0..conns {
            e.engine.handle(
                Event::Accepted {
                    fd: fd as RawFd + 100,
                },
                &mut e.ops,
            );
        }
        e.conns = e
            .ops
            .recvs
            .drain(..)
            .map(|c| encode(Kind::Recv, c))
            .collect();
        e
    }

    /// One loop turn: a receive completion of `msg` for every connection (decoded from
    /// its `user_data`), the end-of-turn flush, then every send completing in full.
    /// Returns the bytes sent.
    pub fn turn(&mut self, msg: &[u8]) -> usize {
        self.engine.begin_turn(Instant::now(), &mut self.ops);
        for &user_data in &self.conns {
            if let Some((Kind::Recv, conn)) = decode(user_data) {
                self.engine.handle(
                    Event::Received {
                        conn,
                        data: msg,
                        queued: false,
                    },
                    &mut self.ops,
                );
            }
        }
        self.engine.end_turn(&mut self.ops);
        let mut sent = 0;
        for (conn, buf) in std::mem::take(&mut self.ops.sends) {
            let n = buf.remaining().len();
            sent += n;
            self.engine.handle(
                Event::Sent {
                    conn,
                    result: Ok(n),
                    buf,
                },
                &mut self.ops,
            );
        }
        sent
    }
}
