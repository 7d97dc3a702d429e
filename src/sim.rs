//! An in-memory backend: runs a worker's engine and a [`Handler`] without a kernel.
//!
//! [`Sim`] plays both the kernel and the peers, on a virtual clock. Operations the engine
//! asks for complete at the next [`Sim::turn`]: a send delivers its bytes to the peer at
//! once (in full), a receive delivers what the peer [`send`](Sim::send)s in chunks of the
//! buffer size, a shutdown shows the peer an EOF, a close completes. That makes it a
//! fast, deterministic harness for a handler's logic, for the engine's bookkeeping, and
//! for the drain (benchmarks use it for the per-event cost).
//!
//! ```
//! use gracering::sim::Sim;
//! use gracering::{Conn, Handler};
//!
//! struct Upper;
//! impl Handler for Upper {
//!     type State = ();
//!     fn on_open(&mut self, _: &mut Conn<'_>) {}
//!     fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
//!         conn.write(&data.to_ascii_uppercase());
//!         data.len()
//!     }
//! }
//!
//! let mut sim = Sim::new(Upper);
//! let peer = sim.connect();
//! sim.send(peer, b"hello");
//! sim.run_until_idle();
//! assert_eq!(sim.take_received(peer), b"HELLO");
//!
//! sim.signal(libc::SIGTERM); // the drain: the idle connection closes, the worker ends
//! sim.run_until_idle();
//! assert!(sim.saw_eof(peer) && sim.is_done());
//! ```

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::config::{Builder, Config};
use crate::engine::Engine;
use crate::handler::{Handler, Worker};
use crate::shared::Shared;
use crate::stats::{WorkerDrain, WorkerStats};
use crate::sys::{ConnRef, Event, Ops, OutBuf, RecvEnd};

/// A simulated peer: the client end of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    index: usize,
}

/// What the simulated kernel knows of one connection.
#[derive(Debug, Default)]
struct PeerState {
    conn: Option<ConnRef>,
    recv_armed: bool,
    /// Bytes the peer sent that the server has not received yet.
    outbox: VecDeque<u8>,
    /// Bytes the server sent to the peer.
    inbox: Vec<u8>,
    fin: bool,
    reset: bool,
    /// The server shut down its write side or closed: the peer reads EOF.
    eof: bool,
    /// The peer ignores EOF instead of closing its own side in answer.
    holds_open: bool,
    closed: bool,
}

/// A completion waiting to be delivered at the next turn.
#[derive(Debug)]
enum Pending {
    Sent(ConnRef, usize, OutBuf),
    RecvEnded(ConnRef, RecvEnd),
    Closed(ConnRef),
    AcceptEnded(i32),
    Signal(i32),
    Stale(ConnRef, Vec<u8>),
}

/// The simulated kernel's side of the [`Ops`] boundary.
#[derive(Debug, Default)]
struct Kernel {
    accept_armed: bool,
    listening: bool,
    accept_queue: VecDeque<usize>,
    peers: Vec<PeerState>,
    completions: VecDeque<Pending>,
    next_fd: RawFd,
    ops: u64,
}

impl Kernel {
    fn peer_of(&mut self, conn: ConnRef) -> Option<&mut PeerState> {
        self.peers
            .iter_mut()
            .find(|p| p.conn == Some(conn) && !p.closed)
    }

    fn new_fd(&mut self) -> RawFd {
        self.next_fd += 1;
        self.next_fd
    }
}

impl Ops for Kernel {
    fn accept(&mut self) {
        self.ops += 1;
        self.accept_armed = true;
    }

    fn recv(&mut self, conn: ConnRef, _fd: RawFd) {
        self.ops += 1;
        if let Some(p) = self.peer_of(conn) {
            p.recv_armed = true;
        }
    }

    fn send(&mut self, conn: ConnRef, _fd: RawFd, buf: OutBuf) {
        self.ops += 1;
        let n = buf.remaining().len();
        if let Some(p) = self.peer_of(conn) {
            p.inbox.extend_from_slice(buf.remaining());
        }
        self.completions.push_back(Pending::Sent(conn, n, buf));
    }

    fn cancel_recv(&mut self, conn: ConnRef) {
        self.ops += 1;
        if let Some(p) = self.peer_of(conn)
            && p.recv_armed
        {
            p.recv_armed = false;
            self.completions
                .push_back(Pending::RecvEnded(conn, RecvEnd::Cancelled));
        }
    }

    fn cancel_send(&mut self, _conn: ConnRef) {
        self.ops += 1; // sends complete in full at once; nothing to cancel
    }

    fn shutdown_write(&mut self, conn: ConnRef, _fd: RawFd) {
        self.ops += 1;
        if let Some(p) = self.peer_of(conn) {
            p.eof = true;
        }
    }

    fn shutdown_both(&mut self, conn: ConnRef, _fd: RawFd) {
        self.ops += 1;
        if let Some(p) = self.peer_of(conn) {
            p.eof = true;
            if p.recv_armed {
                p.recv_armed = false;
                self.completions
                    .push_back(Pending::RecvEnded(conn, RecvEnd::Eof));
            }
        }
    }

    fn close(&mut self, conn: ConnRef, _fd: RawFd) {
        self.ops += 1;
        if let Some(p) = self.peer_of(conn) {
            p.closed = true;
            p.eof = true;
        }
        self.completions.push_back(Pending::Closed(conn));
    }

    fn cancel_accept(&mut self) {
        self.ops += 1;
        if self.accept_armed {
            self.accept_armed = false;
            self.completions
                .push_back(Pending::AcceptEnded(libc::ECANCELED));
        }
    }

    fn close_listener(&mut self, backlog: &mut Vec<RawFd>) -> Option<i32> {
        self.ops += 1;
        self.listening = false;
        while let Some(index) = self.accept_queue.pop_front() {
            let fd = self.new_fd();
            self.peers[index].conn = Some(ConnRef {
                key: u32::MAX,
                generation: fd as u32,
            });
            backlog.push(fd);
        }
        None
    }

    fn wake_workers(&mut self) {
        self.ops += 1; // one simulated worker: nobody else to wake
    }
}

/// A worker's engine running against simulated peers. See the [module docs](self).
pub struct Sim<H: Handler> {
    engine: Engine<H>,
    kernel: Kernel,
    chunk: usize,
    /// One receive buffer, reused (the sim itself allocates nothing per turn).
    scratch: Vec<u8>,
    now: Instant,
}

impl<H: Handler> Sim<H> {
    /// A simulated worker 0 with default settings.
    pub fn new(handler: H) -> Sim<H> {
        Sim::with_config(handler, &Builder::new())
    }

    /// A simulated worker 0 with the settings of `builder` (buffer size, limits, drain
    /// settings). Signals are delivered with [`signal`](Sim::signal).
    pub fn with_config(handler: H, builder: &Builder) -> Sim<H> {
        let config: &Config = builder.config();
        let shared = Shared::new(1).expect("eventfd for the simulated worker");
        let mut sim = Sim {
            engine: Engine::new(handler, Worker::new(0), config, shared),
            kernel: Kernel {
                listening: true,
                next_fd: 1000,
                ..Kernel::default()
            },
            chunk: config.buffer_size as usize,
            scratch: vec![0; config.buffer_size as usize],
            now: Instant::now(),
        };
        sim.engine.start(&mut sim.kernel);
        sim
    }

    /// A new peer connects; it is accepted at the next turn in which the accept is
    /// armed, or from the backlog when the drain stops accepting. Once the listener is
    /// closed, the connection is refused: the peer sees EOF at once.
    pub fn connect(&mut self) -> Peer {
        let index = self.kernel.peers.len();
        let mut state = PeerState::default();
        if self.kernel.listening {
            self.kernel.accept_queue.push_back(index);
        } else {
            state.eof = true;
            state.closed = true;
        }
        self.kernel.peers.push(state);
        Peer { index }
    }

    /// The peer sends bytes; the server receives them (in buffer-size chunks) at the next
    /// turn in which its receive is armed.
    pub fn send(&mut self, peer: Peer, bytes: &[u8]) {
        self.kernel.peers[peer.index].outbox.extend(bytes);
    }

    /// The peer shuts down its write side (FIN) after the bytes it already sent.
    pub fn shutdown_write(&mut self, peer: Peer) {
        self.kernel.peers[peer.index].fin = true;
    }

    /// The peer keeps its side open after it reads EOF (most clients close in answer,
    /// which ends the server's linger at once).
    pub fn hold_open(&mut self, peer: Peer) {
        self.kernel.peers[peer.index].holds_open = true;
    }

    /// The peer resets the connection (the server's receive fails with ECONNRESET).
    pub fn reset(&mut self, peer: Peer) {
        self.kernel.peers[peer.index].reset = true;
    }

    /// A signal (SIGTERM or SIGINT) arrives through the worker's signalfd.
    pub fn signal(&mut self, signo: i32) {
        self.kernel.completions.push_back(Pending::Signal(signo));
    }

    /// Moves the virtual clock forward (for readiness delays, lingers, grace deadlines).
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Delivers a receive completion for the peer's connection as it was when the peer
    /// connected, even if the server has closed it since: what a late completion from the
    /// kernel looks like. The engine must ignore it when the slot moved on.
    pub fn deliver_stale(&mut self, peer: Peer, bytes: &[u8]) {
        if let Some(conn) = self.kernel.peers[peer.index].conn {
            self.kernel
                .completions
                .push_back(Pending::Stale(conn, bytes.to_vec()));
        }
    }

    /// Takes the bytes the server sent to the peer so far.
    pub fn take_received(&mut self, peer: Peer) -> Vec<u8> {
        std::mem::take(&mut self.kernel.peers[peer.index].inbox)
    }

    /// How many bytes the server has sent to the peer and the peer has not taken.
    pub fn received_len(&self, peer: Peer) -> usize {
        self.kernel.peers[peer.index].inbox.len()
    }

    /// Drops what the server sent to the peer so far, keeping the buffer's capacity.
    pub fn clear_received(&mut self, peer: Peer) {
        self.kernel.peers[peer.index].inbox.clear();
    }

    /// Whether the peer has read EOF (the server shut down its write side or closed).
    pub fn saw_eof(&self, peer: Peer) -> bool {
        self.kernel.peers[peer.index].eof
    }

    /// Whether the server has closed the peer's connection.
    pub fn is_closed(&self, peer: Peer) -> bool {
        self.kernel.peers[peer.index].closed
    }

    /// Whether the worker finished its drain.
    pub fn is_done(&self) -> bool {
        self.engine.is_done()
    }

    /// The engine's counters.
    pub fn stats(&self) -> &WorkerStats {
        self.engine.stats()
    }

    /// The worker's drain figures so far.
    pub fn drain_report(&self) -> WorkerDrain {
        self.engine.drain_report()
    }

    /// Connections open (or closing) in the engine.
    pub fn live(&self) -> usize {
        self.engine.live()
    }

    /// How many operations the engine has asked of the simulated kernel so far.
    pub fn ops_issued(&self) -> u64 {
        self.kernel.ops
    }

    /// One loop turn: deliver what the kernel completed, run the handlers, flush.
    /// Returns how many events were delivered.
    pub fn turn(&mut self) -> usize {
        let Sim { engine, kernel, .. } = self;
        engine.begin_turn(self.now, kernel);
        let mut events = 0;
        while kernel.accept_armed
            && let Some(index) = kernel.accept_queue.pop_front()
        {
            let fd = kernel.new_fd();
            kernel.peers[index].conn = Some(ConnRef {
                key: u32::MAX,
                generation: fd as u32,
            });
            engine.handle(Event::Accepted { fd }, kernel);
            events += 1;
        }
        self.bind_accepted();
        let Sim { engine, kernel, .. } = self;
        for _ in 0..kernel.completions.len() {
            let Some(done) = kernel.completions.pop_front() else {
                break;
            };
            events += 1;
            match done {
                Pending::Sent(conn, n, buf) => engine.handle(
                    Event::Sent {
                        conn,
                        result: Ok(n),
                        buf,
                    },
                    kernel,
                ),
                Pending::RecvEnded(conn, why) => {
                    engine.handle(Event::RecvEnded { conn, why }, kernel)
                }
                Pending::Closed(conn) => engine.handle(Event::Closed { conn }, kernel),
                Pending::AcceptEnded(errno) => engine.handle(Event::AcceptEnded { errno }, kernel),
                Pending::Signal(signo) => engine.handle(Event::Signal { signo }, kernel),
                Pending::Stale(conn, data) => engine.handle(
                    Event::Received {
                        conn,
                        data: &data,
                        queued: false,
                    },
                    kernel,
                ),
            }
        }
        self.bind_accepted();
        events += self.deliver_peer_input();
        let Sim { engine, kernel, .. } = self;
        engine.end_turn(kernel);
        events
    }

    /// Turns until nothing more happens and no timer is due on the virtual clock (at most
    /// 10,000 turns). Returns the turn count.
    pub fn run_until_idle(&mut self) -> usize {
        for turns in 0..10_000 {
            let due = self.engine.next_deadline().is_some_and(|at| at <= self.now);
            if self.turn() == 0 && !due && self.kernel.completions.is_empty() {
                return turns;
            }
        }
        10_000
    }

    /// Peers accepted this turn carry their descriptor as a placeholder reference; swap
    /// in the engine's slot reference, found through the descriptor.
    fn bind_accepted(&mut self) {
        for p in self.kernel.peers.iter_mut() {
            if let Some(ConnRef {
                key: u32::MAX,
                generation: fd,
            }) = p.conn
            {
                p.conn = self.engine.conn_ref_of_fd(fd as RawFd);
                p.recv_armed = p.conn.is_some();
            }
        }
    }

    fn deliver_peer_input(&mut self) -> usize {
        let Sim {
            engine,
            kernel,
            chunk,
            scratch: buf,
            ..
        } = self;
        let mut events = 0;
        for i in 0..kernel.peers.len() {
            let p = &mut kernel.peers[i];
            let (Some(conn), true, false) = (p.conn, p.recv_armed, p.closed) else {
                continue;
            };
            if p.reset {
                p.recv_armed = false;
                events += 1;
                engine.handle(
                    Event::RecvEnded {
                        conn,
                        why: RecvEnd::Error(libc::ECONNRESET),
                    },
                    kernel,
                );
                continue;
            }
            while let p = &mut kernel.peers[i]
                && p.recv_armed
                && !p.outbox.is_empty()
            {
                let n = p.outbox.len().min(*chunk);
                for (dst, src) in buf.iter_mut().zip(p.outbox.drain(..n)) {
                    *dst = src;
                }
                let queued_empty = p.outbox.is_empty();
                events += 1;
                engine.handle(
                    Event::Received {
                        conn,
                        data: &buf[..n],
                        queued: !queued_empty,
                    },
                    kernel,
                );
            }
            let p = &mut kernel.peers[i];
            if p.eof && !p.holds_open {
                p.fin = true; // a well-behaved client closes when it reads EOF
            }
            if p.fin && p.recv_armed && p.outbox.is_empty() {
                p.recv_armed = false;
                events += 1;
                engine.handle(
                    Event::RecvEnded {
                        conn,
                        why: RecvEnd::Eof,
                    },
                    kernel,
                );
            }
        }
        events
    }
}
