//! An in-memory backend: runs a worker's engine and a [`Handler`] without a kernel.
//!
//! [`Sim`] plays both the kernel and the peers, on a virtual clock: it is a third
//! backend of the one worker loop (its turn is the loop's turn, its clock is handed in,
//! so a run is deterministic, drain deadlines included). Intents the engine asks for
//! complete at the next [`Sim::turn`]: a send delivers its bytes to the peer at
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
//!     type Message = ();
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
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::config::{Builder, Config};
use crate::contract::{BacklogEnd, ConnRef, Driver, Event, Intents, OutBuf, RecvEnd};
use crate::engine::Engine;
use crate::handler::{Handler, Worker};
use crate::mailbox::{self, Mailbox};
use crate::shared::Shared;
use crate::stats::{WorkerDrain, WorkerStats};
use crate::worker::Runner;

/// A simulated peer: the client end of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    index: usize,
}

/// What the simulated kernel knows of one connection.
#[derive(Debug, Default)]
struct PeerState {
    /// The descriptor the server got for it, once accepted.
    fd: Option<RawFd>,
    /// The engine's reference, learnt from the first intent that names the descriptor.
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
    /// The peer stopped reading: a send to it waits (in `held`) until it reads again.
    stopped_reading: bool,
    /// The send waiting for the peer to read, with the engine's reference.
    held: Option<(ConnRef, OutBuf)>,
    closed: bool,
    /// An outbound connection (the worker dialed it): where to, and whether its
    /// connect is still waiting for the test's answer.
    dialed: Option<SocketAddr>,
    dialing: bool,
}

/// A completion waiting to be delivered at the next turn.
#[derive(Debug)]
enum Pending {
    Sent(ConnRef, Result<usize, i32>, OutBuf),
    RecvEnded(ConnRef, RecvEnd),
    Closed(ConnRef),
    Connected(ConnRef, Result<(), i32>),
    AcceptEnded(i32),
    Signal(i32),
    Stale(ConnRef, Vec<u8>),
}

/// The simulated kernel: the in-memory backend's queue of intents.
#[derive(Debug, Default)]
pub(crate) struct Kernel {
    accept_armed: bool,
    listening: bool,
    accept_queue: VecDeque<usize>,
    peers: Vec<PeerState>,
    completions: VecDeque<Pending>,
    next_fd: RawFd,
    ops: u64,
}

impl Kernel {
    /// The peer of `conn`, binding the peer that holds `fd` to it on first sight.
    fn bind(&mut self, conn: ConnRef, fd: RawFd) -> Option<&mut PeerState> {
        let i = self
            .peers
            .iter()
            .position(|p| p.conn == Some(conn) && !p.closed)
            .or_else(|| {
                self.peers
                    .iter()
                    .position(|p| p.fd == Some(fd) && p.conn.is_none() && !p.closed)
            })?;
        let p = &mut self.peers[i];
        p.conn = Some(conn);
        Some(p)
    }

    /// Panics if an operation of an earlier connection in `conn`'s slot (same key,
    /// another generation) is still in flight: the engine reused the slot too early.
    fn check_slot(&self, conn: ConnRef) {
        let other = |c: &ConnRef| c.key == conn.key && c.generation != conn.generation;
        let armed = self.peers.iter().any(|p| {
            p.conn.as_ref().is_some_and(other)
                && !p.closed
                && (p.recv_armed || p.held.is_some() || p.dialing)
        });
        let pending = self.completions.iter().any(|done| match done {
            Pending::Sent(c, ..)
            | Pending::RecvEnded(c, _)
            | Pending::Closed(c)
            | Pending::Connected(c, _) => other(c),
            Pending::AcceptEnded(_) | Pending::Signal(_) | Pending::Stale(..) => false,
        });
        assert!(
            !armed && !pending,
            "slot {} reused (generation {}) while an operation of an earlier generation \
             is in flight",
            conn.key,
            conn.generation
        );
    }

    /// Panics unless `conn` has no operation in flight (the contract of `close`).
    fn check_quiet(&self, conn: ConnRef) {
        let busy = self.peers.iter().any(|p| {
            p.conn == Some(conn) && !p.closed && (p.recv_armed || p.held.is_some() || p.dialing)
        });
        let pending = self.completions.iter().any(|done| match done {
            Pending::Sent(c, ..) | Pending::RecvEnded(c, _) | Pending::Connected(c, _) => {
                *c == conn
            }
            Pending::Closed(_) | Pending::AcceptEnded(_) | Pending::Signal(_) => false,
            Pending::Stale(..) => false,
        });
        assert!(
            !busy && !pending,
            "close of slot {} (generation {}) with an operation in flight",
            conn.key,
            conn.generation
        );
    }

    fn peer_of(&mut self, conn: ConnRef) -> Option<&mut PeerState> {
        self.peers
            .iter_mut()
            .find(|p| p.conn == Some(conn) && !p.closed)
    }

    /// A new descriptor for the peer at `index` (accepted now).
    fn accept_peer(&mut self, index: usize) -> RawFd {
        self.next_fd += 1;
        self.peers[index].fd = Some(self.next_fd);
        self.next_fd
    }
}

impl Intents for Kernel {
    fn accept(&mut self) {
        self.ops += 1;
        self.accept_armed = true;
    }

    fn recv(&mut self, conn: ConnRef, fd: RawFd) {
        self.ops += 1;
        self.check_slot(conn);
        if let Some(p) = self.bind(conn, fd) {
            p.recv_armed = true;
        }
    }

    fn send(&mut self, conn: ConnRef, fd: RawFd, buf: OutBuf) {
        self.ops += 1;
        self.check_slot(conn);
        let n = buf.remaining().len();
        if let Some(p) = self.bind(conn, fd) {
            assert!(
                p.held.is_none(),
                "a second send in flight on one connection"
            );
            if p.stopped_reading {
                p.held = Some((conn, buf));
                return;
            }
            p.inbox.extend_from_slice(buf.remaining());
        }
        self.completions.push_back(Pending::Sent(conn, Ok(n), buf));
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

    fn cancel_send(&mut self, conn: ConnRef) {
        self.ops += 1; // only a send to a peer that stopped reading is still in flight
        if let Some(p) = self.peer_of(conn)
            && let Some((conn, buf)) = p.held.take()
        {
            let cancelled = Pending::Sent(conn, Err(libc::ECANCELED), buf);
            self.completions.push_back(cancelled);
        }
    }

    fn close(&mut self, conn: ConnRef, fd: RawFd) {
        self.ops += 1;
        self.check_slot(conn);
        self.check_quiet(conn);
        if let Some(p) = self.bind(conn, fd) {
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

    fn wake_workers(&mut self) {
        self.ops += 1; // one simulated worker: nobody else to wake
    }

    fn wake_worker(&mut self, _index: usize) {
        self.ops += 1;
    }

    fn open_socket_now(&mut self, _v6: bool) -> Result<RawFd, i32> {
        self.ops += 1;
        self.next_fd += 1;
        Ok(self.next_fd)
    }

    fn connect(&mut self, conn: ConnRef, fd: RawFd, to: SocketAddr) {
        self.ops += 1;
        self.peers.push(PeerState {
            fd: Some(fd),
            conn: Some(conn),
            dialed: Some(to),
            dialing: true,
            ..PeerState::default()
        });
    }

    fn cancel_connect(&mut self, conn: ConnRef) {
        self.ops += 1;
        if let Some(p) = self.peer_of(conn)
            && p.dialing
        {
            p.dialing = false;
            p.closed = true;
            self.completions
                .push_back(Pending::Connected(conn, Err(libc::ECANCELED)));
        }
    }

    fn shutdown_write_now(&mut self, conn: ConnRef, fd: RawFd) {
        self.ops += 1;
        if let Some(p) = self.bind(conn, fd) {
            p.eof = true;
        }
    }

    fn shutdown_both_now(&mut self, conn: ConnRef, fd: RawFd) {
        self.ops += 1;
        if let Some(p) = self.bind(conn, fd) {
            p.eof = true;
            if p.recv_armed {
                p.recv_armed = false;
                self.completions
                    .push_back(Pending::RecvEnded(conn, RecvEnd::Eof));
            }
        }
    }

    fn close_listener_now(&mut self, backlog: &mut Vec<RawFd>, give_up: bool) -> BacklogEnd {
        self.ops += 1;
        self.listening = false;
        if give_up {
            // Closing the listener resets what is still queued: those peers' connections
            // end here (they never reach the engine).
            let lost = self.accept_queue.len();
            for index in self.accept_queue.drain(..) {
                let p = &mut self.peers[index];
                p.closed = true;
                p.eof = true;
            }
            return BacklogEnd::GaveUp { errno: 0, lost };
        }
        while let Some(index) = self.accept_queue.pop_front() {
            let fd = self.accept_peer(index);
            backlog.push(fd);
        }
        BacklogEnd::Closed
    }
}

/// The in-memory backend as the worker loop drives it.
pub(crate) struct SimDriver {
    kernel: Kernel,
    chunk: usize,
    /// One receive buffer, reused (the sim itself allocates nothing per turn).
    scratch: Vec<u8>,
}

impl Driver for SimDriver {
    type Queue<'q> = Kernel;

    fn with_queue<R>(&mut self, f: impl FnOnce(&mut Kernel) -> R) -> R {
        f(&mut self.kernel)
    }

    fn reap(&mut self, mut handle: impl FnMut(Event<'_>, &mut Kernel)) {
        let kernel = &mut self.kernel;
        while kernel.accept_armed
            && let Some(index) = kernel.accept_queue.pop_front()
        {
            let fd = kernel.accept_peer(index);
            handle(Event::Accepted { fd }, kernel);
        }
        for _ in 0..kernel.completions.len() {
            let Some(done) = kernel.completions.pop_front() else {
                break;
            };
            match done {
                Pending::Sent(conn, result, buf) => {
                    handle(Event::Sent { conn, result, buf }, kernel)
                }
                Pending::RecvEnded(conn, why) => handle(Event::RecvEnded { conn, why }, kernel),
                Pending::Closed(conn) => handle(Event::Closed { conn }, kernel),
                Pending::Connected(conn, result) => {
                    handle(Event::Connected { conn, result }, kernel)
                }
                Pending::AcceptEnded(errno) => handle(Event::AcceptEnded { errno }, kernel),
                Pending::Signal(signo) => handle(Event::Signal { signo }, kernel),
                Pending::Stale(conn, data) => {
                    let (data, queued) = (&data[..], false);
                    handle(Event::Received { conn, data, queued }, kernel)
                }
            }
        }
        self.deliver_peer_input(&mut handle);
    }

    fn has_ready(&self) -> bool {
        false // what a turn produces is delivered at the next turn
    }

    fn publish(&mut self) {}

    fn submit_and_wait(&mut self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(()) // the virtual clock moves only when the test says so
    }

    fn begin_release(&mut self, _abort: bool) {}

    fn in_flight(&self) -> usize {
        0
    }
}

impl SimDriver {
    /// What the peers sent (and their FINs and resets), as receive completions.
    fn deliver_peer_input(&mut self, handle: &mut impl FnMut(Event<'_>, &mut Kernel)) {
        let SimDriver {
            kernel,
            chunk,
            scratch: buf,
        } = self;
        for i in 0..kernel.peers.len() {
            let p = &mut kernel.peers[i];
            let (Some(conn), true, false) = (p.conn, p.recv_armed, p.closed) else {
                continue;
            };
            if p.reset {
                p.recv_armed = false;
                let why = RecvEnd::Error(libc::ECONNRESET);
                handle(Event::RecvEnded { conn, why }, kernel);
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
                let queued = !p.outbox.is_empty();
                let data = &buf[..n];
                handle(Event::Received { conn, data, queued }, kernel);
            }
            let p = &mut kernel.peers[i];
            if p.eof && !p.holds_open {
                p.fin = true; // a well-behaved client closes when it reads EOF
            }
            if p.fin && p.recv_armed && p.outbox.is_empty() {
                p.recv_armed = false;
                let why = RecvEnd::Eof;
                handle(Event::RecvEnded { conn, why }, kernel);
            }
        }
    }
}

/// A worker's engine running against simulated peers. See the [module docs](self).
pub struct Sim<H: Handler> {
    runner: Runner<H, SimDriver>,
    now: Instant,
    mailbox: Mailbox<H::Message>,
}

impl<H: Handler> Sim<H> {
    /// A simulated worker 0 with default settings.
    pub fn new(handler: H) -> Sim<H> {
        Sim::with_config(handler, &Builder::new())
    }

    /// A simulated worker 0 with the settings of `builder` (buffer size, limits, drain
    /// settings). Signals are delivered with [`signal`](Sim::signal).
    pub fn with_config(handler: H, builder: &Builder) -> Sim<H> {
        Sim::with_factory(builder, |_| handler)
    }

    /// A simulated worker 0 whose handler `factory` makes, as a server's factory does
    /// (it may register teardowns and open links).
    pub fn with_factory(
        builder: &Builder,
        factory: impl FnOnce(&mut Worker<H::Message>) -> H,
    ) -> Sim<H> {
        let config: &Config = builder.config();
        let now = Instant::now(); // the virtual clock's origin; it moves by `advance`
        let shared = Shared::without_wakers();
        let (mailbox, inbox) = mailbox::channel(shared.clone(), 0, config.mailbox_capacity);
        let mut worker = Worker::new(0, mailbox.clone());
        let handler = factory(&mut worker);
        let engine = Engine::new(handler, (worker, inbox), config, shared, now);
        let driver = SimDriver {
            kernel: Kernel {
                listening: true,
                next_fd: 1000,
                ..Kernel::default()
            },
            chunk: config.buffer_size as usize,
            scratch: vec![0; config.buffer_size as usize],
        };
        Sim {
            runner: Runner::new(engine, driver),
            now,
            mailbox,
        }
    }

    fn kernel(&self) -> &Kernel {
        &self.runner.driver().kernel
    }

    fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.runner.driver_mut().kernel
    }

    /// A new peer connects; it is accepted at the next turn in which the accept is
    /// armed, or from the backlog when the drain stops accepting. Once the listener is
    /// closed, the connection is refused: the peer sees EOF at once.
    pub fn connect(&mut self) -> Peer {
        let index = self.kernel_mut().peers.len();
        let mut state = PeerState::default();
        if self.kernel_mut().listening {
            self.kernel_mut().accept_queue.push_back(index);
        } else {
            state.eof = true;
            state.closed = true;
        }
        self.kernel_mut().peers.push(state);
        Peer { index }
    }

    /// The outbound connects the worker started since the last call: the peer that
    /// plays the remote end of each, and the address dialed. Each waits for
    /// [`answer_dial`](Sim::answer_dial) (or the connect timeout).
    pub fn take_dials(&mut self) -> Vec<(Peer, SocketAddr)> {
        let mut dials = Vec::new();
        for (index, p) in self.kernel_mut().peers.iter_mut().enumerate() {
            if p.dialing
                && let Some(to) = p.dialed.take()
            {
                dials.push((Peer { index }, to));
            }
        }
        dials
    }

    /// Completes a dial: `Ok` connects, `Err(errno)` fails it (ECONNREFUSED, say).
    pub fn answer_dial(&mut self, peer: Peer, result: Result<(), i32>) {
        let p = &mut self.kernel_mut().peers[peer.index];
        if !p.dialing {
            return;
        }
        p.dialing = false;
        if result.is_err() {
            p.closed = true;
        }
        if let Some(conn) = p.conn {
            let done = Pending::Connected(conn, result);
            self.kernel_mut().completions.push_back(done);
        }
    }

    /// The worker's [`Local`](crate::Local) handle.
    pub fn local(&self) -> crate::Local<H::Message> {
        self.runner.engine().local()
    }

    /// The peer sends bytes; the server receives them (in buffer-size chunks) at the next
    /// turn in which its receive is armed.
    pub fn send(&mut self, peer: Peer, bytes: &[u8]) {
        self.kernel_mut().peers[peer.index].outbox.extend(bytes);
    }

    /// The peer shuts down its write side (FIN) after the bytes it already sent.
    pub fn shutdown_write(&mut self, peer: Peer) {
        self.kernel_mut().peers[peer.index].fin = true;
    }

    /// The peer keeps its side open after it reads EOF (most clients close in answer,
    /// which ends the server's linger at once).
    pub fn hold_open(&mut self, peer: Peer) {
        self.kernel_mut().peers[peer.index].holds_open = true;
    }

    /// The peer resets the connection (the server's receive fails with ECONNRESET, and
    /// so does a send waiting for the peer to read).
    pub fn reset(&mut self, peer: Peer) {
        let p = &mut self.kernel_mut().peers[peer.index];
        p.reset = true;
        if let Some((conn, buf)) = p.held.take() {
            let failed = Pending::Sent(conn, Err(libc::ECONNRESET), buf);
            self.kernel_mut().completions.push_back(failed);
        }
    }

    /// The peer stops reading (its receive window is full): a send to it stays in
    /// flight until [`resume_reading`](Sim::resume_reading), or until it is cancelled.
    pub fn stop_reading(&mut self, peer: Peer) {
        self.kernel_mut().peers[peer.index].stopped_reading = true;
    }

    /// The peer, still not reading on, takes `n` bytes of the send waiting for it: that
    /// send completes short (`n` of its bytes) at the next turn, and the engine sends the
    /// rest. Nothing happens with no send waiting or `n` of 0.
    pub fn read_some(&mut self, peer: Peer, n: usize) {
        let p = &mut self.kernel_mut().peers[peer.index];
        if n == 0 {
            return;
        }
        if let Some((conn, buf)) = p.held.take() {
            let n = n.min(buf.remaining().len());
            p.inbox.extend_from_slice(&buf.remaining()[..n]);
            let short = Pending::Sent(conn, Ok(n), buf);
            self.kernel_mut().completions.push_back(short);
        }
    }

    /// The peer reads again: the send waiting for it completes (in full) at the next turn.
    pub fn resume_reading(&mut self, peer: Peer) {
        let p = &mut self.kernel_mut().peers[peer.index];
        p.stopped_reading = false;
        if let Some((conn, buf)) = p.held.take() {
            p.inbox.extend_from_slice(buf.remaining());
            let n = buf.remaining().len();
            self.kernel_mut()
                .completions
                .push_back(Pending::Sent(conn, Ok(n), buf));
        }
    }

    /// A signal (SIGTERM, SIGINT or SIGQUIT stop the server; others are logged and
    /// ignored) arrives through the worker's signalfd.
    pub fn signal(&mut self, signo: i32) {
        self.kernel_mut()
            .completions
            .push_back(Pending::Signal(signo));
    }

    /// The simulated worker's mailbox: what is posted is delivered at the next turn.
    pub fn mailbox(&self) -> Mailbox<H::Message> {
        self.mailbox.clone()
    }

    /// Moves the virtual clock forward (for readiness delays, lingers, grace deadlines).
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Delivers a receive completion for the peer's connection as it was when the peer
    /// connected, even if the server has closed it since: what a late completion from the
    /// kernel looks like. The engine must ignore it when the slot moved on.
    pub fn deliver_stale(&mut self, peer: Peer, bytes: &[u8]) {
        if let Some(conn) = self.kernel_mut().peers[peer.index].conn {
            let stale = Pending::Stale(conn, bytes.to_vec());
            self.kernel_mut().completions.push_back(stale);
        }
    }

    /// Takes the bytes the server sent to the peer so far.
    pub fn take_received(&mut self, peer: Peer) -> Vec<u8> {
        std::mem::take(&mut self.kernel_mut().peers[peer.index].inbox)
    }

    /// How many bytes the server has sent to the peer and the peer has not taken.
    pub fn received_len(&self, peer: Peer) -> usize {
        self.kernel().peers[peer.index].inbox.len()
    }

    /// Drops what the server sent to the peer so far, keeping the buffer's capacity.
    pub fn clear_received(&mut self, peer: Peer) {
        self.kernel_mut().peers[peer.index].inbox.clear();
    }

    /// Whether the peer has read EOF (the server shut down its write side or closed).
    pub fn saw_eof(&self, peer: Peer) -> bool {
        self.kernel().peers[peer.index].eof
    }

    /// Whether the server has closed the peer's connection.
    pub fn is_closed(&self, peer: Peer) -> bool {
        self.kernel().peers[peer.index].closed
    }

    /// Whether the worker finished its drain.
    pub fn is_done(&self) -> bool {
        self.runner.engine().is_done()
    }

    /// The engine's counters.
    pub fn stats(&self) -> &WorkerStats {
        self.runner.engine().stats()
    }

    /// The worker's drain figures so far.
    pub fn drain_report(&self) -> WorkerDrain {
        self.runner.engine().drain_report()
    }

    /// Connections open (or closing) in the engine.
    pub fn live(&self) -> usize {
        self.runner.engine().live()
    }

    /// How many operations the engine has asked of the simulated kernel so far.
    pub fn ops_issued(&self) -> u64 {
        self.kernel().ops
    }

    /// One loop turn of the worker loop at the virtual clock's time: deliver what the
    /// kernel completed, run the handlers, flush. Returns how many events were delivered.
    pub fn turn(&mut self) -> usize {
        self.runner.turn(self.now)
    }

    /// Turns until nothing more happens and no timer is due on the virtual clock (at most
    /// 10,000 turns). Returns the turn count.
    pub fn run_until_idle(&mut self) -> usize {
        for turns in 0..10_000 {
            let due = (self.runner.engine().next_deadline()).is_some_and(|at| at <= self.now);
            let quiet = self.kernel().completions.is_empty() && self.mailbox.is_empty();
            if self.turn() == 0 && !due && quiet {
                return turns;
            }
        }
        10_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::Conn;

    /// Keeps every connection open through the drain (never closes on its own).
    struct Stubborn;
    impl Handler for Stubborn {
        type State = ();
        type Message = ();
        fn on_open(&mut self, _: &mut Conn<'_>) {}
        fn on_data(&mut self, _: &mut (), _: &mut Conn<'_>, data: &[u8]) -> usize {
            data.len()
        }
        fn on_drain(&mut self, _: &mut (), _: &mut Conn<'_>) {}
    }

    /// Writes 10 KiB for every byte it receives.
    struct Flood;
    impl Handler for Flood {
        type State = ();
        type Message = ();
        fn on_open(&mut self, _: &mut Conn<'_>) {}
        fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
            for _ in data {
                conn.write(&[b'x'; 10 * 1024]);
            }
            data.len()
        }
    }

    /// A peer that stops reading holds the send in flight; what it reads in part comes
    /// back as a short send and the engine sends the rest; once it reads again the rest
    /// arrives whole.
    #[test]
    fn a_peer_that_stops_reading_holds_the_send_and_short_sends_resume() {
        let mut sim = Sim::new(Flood);
        let peer = sim.connect();
        sim.stop_reading(peer);
        sim.send(peer, b"a");
        sim.run_until_idle();
        assert_eq!(sim.received_len(peer), 0, "nothing read yet");
        sim.read_some(peer, 1000);
        sim.run_until_idle();
        assert_eq!(sim.received_len(peer), 1000);
        sim.resume_reading(peer);
        sim.run_until_idle();
        assert_eq!(sim.take_received(peer), vec![b'x'; 10 * 1024]);
    }

    /// The grace deadline cancels a send the peer never reads: the connection is cut
    /// (aborted) and the drain ends.
    #[test]
    fn the_grace_deadline_cancels_a_send_the_peer_never_reads() {
        let grace = Duration::from_secs(1);
        let mut sim = Sim::with_config(Flood, &Builder::new().grace_period(grace));
        let peer = sim.connect();
        sim.stop_reading(peer);
        sim.send(peer, b"a");
        sim.run_until_idle();
        sim.signal(libc::SIGTERM);
        sim.run_until_idle();
        assert!(!sim.is_done(), "the send is still in flight");
        sim.advance(grace);
        sim.run_until_idle();
        assert!(sim.is_closed(peer) && sim.is_done());
        assert_eq!(sim.drain_report().aborted, 1);
    }

    /// The drain's clock is the simulation's: the grace deadline falls exactly where the
    /// virtual clock says, however long the test itself takes.
    #[test]
    fn the_grace_deadline_is_on_the_virtual_clock() {
        let grace = Duration::from_secs(2);
        let builder = Builder::new().grace_period(grace);
        let mut sim = Sim::with_config(Stubborn, &builder);
        let peer = sim.connect();
        sim.run_until_idle();
        sim.advance(Duration::from_secs(3600)); // an hour of uptime before the signal
        sim.signal(libc::SIGTERM);
        sim.run_until_idle();
        sim.advance(grace - Duration::from_millis(1));
        sim.run_until_idle();
        assert!(!sim.is_closed(peer), "cut before the grace deadline");
        assert_eq!(sim.drain_report().aborted, 0);
        sim.advance(Duration::from_millis(1));
        sim.run_until_idle();
        assert!(sim.is_closed(peer) && sim.is_done());
        assert_eq!(sim.drain_report().aborted, 1);
        let took = sim.drain_report().finished_after.unwrap();
        assert_eq!(took, grace, "the report's times are virtual too");
    }
}
