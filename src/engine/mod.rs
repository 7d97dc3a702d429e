//! The per-worker engine: connection state and handler calls, driven by [`Event`]s and
//! answering with [`Ops`] requests. It makes no syscalls, so every backend shares it and
//! the in-memory [`sim`](crate::sim) backend can run it without a kernel.
//!
//! One loop turn, as a backend drives it:
//!
//! ```text
//!   begin_turn(now)            the turn's clock, read once by the backend; timers fire
//!   handle(event) ...          one call per decoded completion; handler callbacks run here
//!   end_turn()                 coalesced sends go out, back-pressure and closes advance
//!   next_deadline()            how long the backend may wait for the next completion
//! ```
//!
//! The drain (see [`crate::drain`]) is driven from `shutdown.rs`; this file is the data
//! path: accept, receive, send, close.

mod conn;
mod shutdown;
mod timer;

use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::buf::BufPool;
use crate::config::Config;
use crate::drain::Drain;
use crate::handler::{CloseReason, CloseRequest, Handler, Worker};
use crate::log;
use crate::shared::Shared;
use crate::stats::{WorkerDrain, WorkerStats};
use crate::sys::{ConnRef, Event, GEN_MASK, Ops, OutBuf, RecvEnd};

use conn::{Closing, Connection, Linger, Recv};
use timer::Wheel;

/// The accept side of a worker: whether an accept is in the kernel, and the back-off
/// that keeps a worker out of descriptors from spinning.
#[derive(Debug, Default)]
struct Acceptor {
    armed: bool,
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
    listener_closed: bool,
}

/// Settings the engine reads on its paths.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_unsent: usize,
    max_pending_input: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    drain_delay: Duration,
    grace_period: Duration,
}

/// One worker's engine.
pub(crate) struct Engine<H: Handler> {
    handler: H,
    worker: Worker,
    conns: Slab<Connection<H::State>>,
    pool: BufPool,
    flush: Vec<u32>,
    /// The other half of `flush`, swapped in each turn so neither is reallocated.
    flush_spare: Vec<u32>,
    next_generation: u32,
    acceptor: Acceptor,
    linger: Linger,
    limits: Limits,
    shared: Arc<Shared>,
    drain: Drain,
    drain_counts: WorkerDrain,
    /// Connections accepted in the turn the drain reached them: told one turn later,
    /// once their first receive has run, so bytes already in their socket are served.
    drain_later: Vec<ConnRef>,
    /// The handlers' per-connection timers.
    timers: Wheel,
    due: Vec<ConnRef>,
    /// Connections waiting to close when idle that were idle at the end of this turn:
    /// checked again at the end of the next one.
    idle_watch: Vec<u32>,
    turn: u64,
    stats: WorkerStats,
}

impl<H: Handler> Engine<H> {
    pub fn new(handler: H, worker: Worker, config: &Config, shared: Arc<Shared>) -> Engine<H> {
        Engine {
            handler,
            worker,
            conns: Slab::with_capacity(1024),
            pool: BufPool::new(16 * 1024, 4096),
            flush: Vec::with_capacity(1024),
            flush_spare: Vec::with_capacity(1024),
            next_generation: 0,
            acceptor: Acceptor::default(),
            linger: Linger::new(config.linger),
            limits: Limits {
                max_unsent: config.max_unsent,
                max_pending_input: config.max_pending_input,
                backoff_min: config.accept_backoff_min,
                backoff_max: config.accept_backoff_max,
                drain_delay: config.drain_delay,
                grace_period: config.grace_period,
            },
            shared,
            drain: Drain::new(),
            drain_counts: WorkerDrain::default(),
            drain_later: Vec::new(),
            timers: Wheel::new(Instant::now()),
            due: Vec::new(),
            idle_watch: Vec::new(),
            turn: 0,
            stats: WorkerStats::default(),
        }
    }

    /// Arms accepting (unless the server is already draining). Called once, before the
    /// first turn.
    pub fn start(&mut self, ops: &mut impl Ops) {
        self.arm_accept(ops);
        self.sync_drain(ops);
    }

    /// The counters so far.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// How many connections are open (or closing) on this worker.
    pub fn live(&self) -> usize {
        self.conns.len()
    }

    /// The slot reference of the open connection with descriptor `fd` (for the simulator).
    pub fn conn_ref_of_fd(&self, fd: i32) -> Option<ConnRef> {
        self.conns
            .iter()
            .find(|(_, c)| c.fd == fd)
            .map(|(_, c)| c.conn_ref())
    }

    /// Sets the turn's clock and fires the timers that are due.
    pub fn begin_turn(&mut self, now: Instant, ops: &mut impl Ops) {
        self.linger.now = now;
        self.turn += 1;
        if let Some(at) = self.acceptor.retry_at
            && at <= now
        {
            self.acceptor.retry_at = None;
            if !self.drain.accept_closed() {
                self.arm_accept(ops);
            }
        }
        while let Some(conn) = self.linger.expired(now) {
            if let Some(c) = lookup(&mut self.conns, &mut self.stats, conn) {
                c.end_linger(ops, &mut self.linger);
            }
        }
        if self.drain.next_deadline().is_some_and(|at| at <= now) {
            self.tick(now, ops);
        }
        if self.timers.next_deadline().is_some_and(|at| at <= now) {
            self.fire_timers(now, ops);
        }
    }

    /// Calls `on_timer` for every connection whose timer is due.
    fn fire_timers(&mut self, now: Instant, ops: &mut impl Ops) {
        let mut due = mem::take(&mut self.due);
        self.timers.expire(now, &mut due);
        let reason = self.close_reason();
        let draining = self.drain.draining();
        for conn in due.drain(..) {
            let Some(c) = self
                .conns
                .get_mut(conn.key as usize)
                .filter(|c| c.generation == conn.generation)
            else {
                continue; // closed since: its entry is simply dropped
            };
            if c.timer_filed.is_some_and(|filed| filed <= now) {
                c.timer_filed = None; // the earliest entry came due (later ones may remain)
            }
            match c.timer_at {
                Some(at) if at > now => c.file_timer(&mut self.timers),
                Some(_) if c.closing == Closing::Open => {
                    c.timer_at = None;
                    let (mut handle, state) =
                        c.handle(self.worker.index, draining, now, &mut self.pool);
                    if let Some(state) = state.as_mut() {
                        self.handler.on_timer(state, &mut handle);
                    }
                    if !c.pending.is_empty() && c.close_requested != CloseRequest::AfterFlush {
                        // Input the handler set aside (while it waited on this timer, say)
                        // is offered again.
                        let ctx = (self.worker.index, draining, now);
                        feed(&mut self.handler, c, &mut self.pool, ctx, &[]);
                    }
                    c.file_timer(&mut self.timers);
                    after_handler(c, reason, &mut self.flush, ops, &mut self.linger);
                }
                Some(_) | None => c.timer_at = None,
            }
        }
        self.due = due;
    }

    /// The earliest instant at which the engine has something to do without an event.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.idle_watch.is_empty() {
            return Some(self.linger.now); // look again right after one more kernel entry
        }
        [
            self.acceptor.retry_at,
            self.linger.next_deadline(),
            self.drain.next_deadline(),
            self.timers.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event<'_>, ops: &mut impl Ops) {
        match event {
            Event::Accepted { fd } => self.on_accepted(fd, ops),
            Event::AcceptEnded { errno } => self.on_accept_ended(errno, ops),
            Event::Received { conn, data, queued } => self.on_received(conn, data, queued, ops),
            Event::RecvEnded { conn, why } => self.on_recv_ended(conn, why, ops),
            Event::Sent { conn, result, buf } => self.on_sent(conn, result, buf, ops),
            Event::Closed { conn } => self.on_closed(conn, ops),
            Event::Signal { signo } => self.on_signal(signo, ops),
            Event::Wake => self.sync_drain(ops),
        }
    }

    /// Ends the turn: everything written during it leaves in one send per connection.
    pub fn end_turn(&mut self, ops: &mut impl Ops) {
        if !self.drain_later.is_empty() {
            self.notify_later(ops);
        }
        let mut watch = mem::take(&mut self.idle_watch);
        for &key in &watch {
            if let Some(c) = self.conns.get_mut(key as usize) {
                queue_flush(c, &mut self.flush);
            }
        }
        watch.clear();
        self.idle_watch = watch; // keeps its capacity: no allocation per turn
        let mut keys = mem::take(&mut self.flush_spare);
        mem::swap(&mut keys, &mut self.flush);
        for key in keys.drain(..) {
            let Some(c) = self.conns.get_mut(key as usize) else {
                continue;
            };
            c.flush_queued = false;
            let flushing = matches!(c.closing, Closing::Open | Closing::AfterFlush(_));
            if !c.sending && !c.out.is_empty() && flushing {
                let buf = mem::take(&mut c.out);
                c.inflight = buf.len();
                c.sending = true;
                ops.send(c.conn_ref(), c.fd, OutBuf { buf, pos: 0 });
            }
            if c.check_pressure(self.limits.max_unsent, ops) {
                self.stats.reads_paused += 1;
            }
            if c.close_requested == CloseRequest::WhenIdle && c.closing == Closing::Open {
                if !c.is_idle() {
                    c.quiet_since = None;
                } else if c.quiet_since.is_some_and(|t| t < self.turn)
                    || self.linger.now.saturating_duration_since(c.last_input) >= self.linger.time
                {
                    // Idle at the end of two turns with a kernel entry between them, so
                    // bytes that reached the socket meanwhile would have shown up; or
                    // silent for a whole linger already, so none are on the way.
                    let reason = if self.drain.draining() {
                        CloseReason::Shutdown
                    } else {
                        CloseReason::Handler
                    };
                    c.begin_close(reason, true, ops, &mut self.linger);
                } else {
                    c.quiet_since.get_or_insert(self.turn);
                    self.idle_watch.push(c.key);
                }
            }
            c.advance_close(ops, &mut self.linger);
        }
        self.flush_spare = keys;
    }

    fn arm_accept(&mut self, ops: &mut impl Ops) {
        if !self.acceptor.armed && !self.acceptor.listener_closed {
            ops.accept();
            self.acceptor.armed = true;
        }
    }

    fn on_accepted(&mut self, fd: i32, ops: &mut impl Ops) {
        self.stats.accepted += 1;
        self.shared.opened();
        if self.acceptor.backoff.take().is_some() {
            log::info(format_args!(
                "worker {}: accepting again after {} back-offs",
                self.worker.index, self.stats.accept_backoffs
            ));
        }
        let reason = self.close_reason();
        self.next_generation = (self.next_generation + 1) & GEN_MASK;
        let entry = self.conns.vacant_entry();
        let key = entry.key() as u32;
        let c = entry.insert(Connection::new(
            fd,
            key,
            self.next_generation,
            self.turn,
            self.linger.now,
        ));
        let (mut conn, state) = c.handle(
            self.worker.index,
            self.drain.draining(),
            self.linger.now,
            &mut self.pool,
        );
        *state = Some(self.handler.on_open(&mut conn));
        c.arm_recv(ops);
        c.file_timer(&mut self.timers);
        after_handler(c, reason, &mut self.flush, ops, &mut self.linger);
    }

    fn on_accept_ended(&mut self, errno: i32, ops: &mut impl Ops) {
        self.acceptor.armed = false;
        if self.drain.accept_closed() {
            self.finish_stop_accepting(ops);
            return;
        }
        match errno {
            0
            | libc::ECANCELED
            | libc::ECONNABORTED
            | libc::EINTR
            | libc::EAGAIN
            | libc::EPROTO => {
                if errno != 0 && errno != libc::ECANCELED {
                    self.stats.accept_errors += 1;
                }
                self.arm_accept(ops);
            }
            _ => self.back_off(errno),
        }
    }

    /// Waits before accepting again: the listener's queue still holds the connection that
    /// failed, so re-arming at once would spin.
    fn back_off(&mut self, errno: i32) {
        let delay = match self.acceptor.backoff {
            None => self.limits.backoff_min,
            Some(d) => (d * 2).min(self.limits.backoff_max),
        };
        if self.acceptor.backoff.is_none() {
            log::warn(format_args!(
                "worker {}: accept failed ({}), backing off",
                self.worker.index,
                std::io::Error::from_raw_os_error(errno)
            ));
        }
        if !matches!(
            errno,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        ) {
            self.stats.accept_errors += 1;
        }
        self.stats.accept_backoffs += 1;
        self.acceptor.backoff = Some(delay);
        self.acceptor.retry_at = Some(self.linger.now + delay);
    }

    fn on_received(&mut self, conn: ConnRef, data: &[u8], queued: bool, ops: &mut impl Ops) {
        self.stats.bytes_in += data.len() as u64;
        let worker = self.worker.index;
        let draining = self.drain.draining();
        let now = self.linger.now;
        let max_pending = self.limits.max_pending_input;
        let reason = self.close_reason();
        let Some(c) = lookup(&mut self.conns, &mut self.stats, conn) else {
            return;
        };
        c.input_queued = queued;
        c.quiet_since = None;
        c.last_input = now;
        if c.closing != Closing::Open || c.close_requested == CloseRequest::AfterFlush {
            return; // closing: input is read only so that the close does not reset
        }
        feed(
            &mut self.handler,
            c,
            &mut self.pool,
            (worker, draining, now),
            data,
        );
        if c.pending.len() > max_pending {
            self.stats.input_limit_closes += 1;
            c.begin_close(CloseReason::InputLimit, false, ops, &mut self.linger);
        }
        c.file_timer(&mut self.timers);
        after_handler(c, reason, &mut self.flush, ops, &mut self.linger);
    }

    fn on_recv_ended(&mut self, conn: ConnRef, why: RecvEnd, ops: &mut impl Ops) {
        if why == RecvEnd::NoBuffers {
            self.stats.recv_no_buffers += 1;
        }
        let Some(c) = lookup(&mut self.conns, &mut self.stats, conn) else {
            return;
        };
        c.recv = Recv::Off;
        match why {
            RecvEnd::Eof => {
                c.read_done = true;
                c.begin_close(CloseReason::PeerClosed, true, ops, &mut self.linger);
                c.end_linger(ops, &mut self.linger);
            }
            RecvEnd::Rearm | RecvEnd::NoBuffers | RecvEnd::Cancelled => c.arm_recv(ops),
            RecvEnd::Error(errno) => {
                c.begin_close(error_reason(errno), false, ops, &mut self.linger)
            }
        }
        c.advance_close(ops, &mut self.linger);
    }

    fn on_sent(
        &mut self,
        conn: ConnRef,
        result: Result<usize, i32>,
        mut buf: OutBuf,
        ops: &mut impl Ops,
    ) {
        let Some(c) = lookup(&mut self.conns, &mut self.stats, conn) else {
            self.pool.put(buf.buf);
            return;
        };
        c.sending = false;
        match result {
            Ok(n) if n > 0 => {
                self.stats.bytes_out += n as u64;
                buf.pos += n;
                if buf.pos < buf.buf.len() && !matches!(c.closing, Closing::Now(_)) {
                    c.inflight = buf.buf.len() - buf.pos;
                    c.sending = true;
                    ops.send(c.conn_ref(), c.fd, buf);
                } else {
                    self.pool.put(buf.buf);
                    queue_flush(c, &mut self.flush);
                }
            }
            Ok(_) => {
                self.pool.put(buf.buf);
                c.begin_close(CloseReason::Error(libc::EIO), false, ops, &mut self.linger);
            }
            Err(errno) => {
                self.pool.put(buf.buf);
                if errno != libc::ECANCELED {
                    c.begin_close(error_reason(errno), false, ops, &mut self.linger);
                }
            }
        }
        if c.check_pressure(self.limits.max_unsent, ops) {
            self.stats.reads_paused += 1;
        }
        c.advance_close(ops, &mut self.linger);
    }

    fn on_closed(&mut self, conn: ConnRef, ops: &mut impl Ops) {
        if lookup(&mut self.conns, &mut self.stats, conn).is_none() {
            return;
        }
        let c = self.conns.remove(conn.key as usize);
        let reason = match c.closing {
            Closing::Submitted(reason) => reason,
            Closing::Open | Closing::AfterFlush(_) | Closing::Lingering(_) | Closing::Now(_) => {
                CloseReason::Error(libc::EBADF)
            }
        };
        self.stats.closed += 1;
        self.shared.closed();
        self.count_drained(&c);
        self.pool.put(c.out);
        self.pool.put(c.pending);
        if let Some(state) = c.state {
            self.handler.on_close(state, reason);
        }
        self.check_drained(ops);
    }

    /// The reason a handler-requested close gets: `Shutdown` once the drain began.
    fn close_reason(&self) -> CloseReason {
        if self.drain.draining() {
            CloseReason::Shutdown
        } else {
            CloseReason::Handler
        }
    }
}

/// After a handler call: queue the output and honour a close request.
fn after_handler<S>(
    c: &mut Connection<S>,
    reason: CloseReason,
    flush: &mut Vec<u32>,
    ops: &mut impl Ops,
    linger: &mut Linger,
) {
    if !c.out.is_empty() {
        queue_flush(c, flush);
    }
    match c.close_requested {
        CloseRequest::None => {}
        CloseRequest::WhenIdle => queue_flush(c, flush), // end_turn closes it once idle
        CloseRequest::AfterFlush if c.closing == Closing::Open => {
            c.begin_close(reason, true, ops, linger);
            queue_flush(c, flush);
        }
        CloseRequest::AfterFlush => {}
    }
}

/// Finds the connection a completion belongs to, or counts the completion as stale: its
/// slot was closed (and perhaps reused) since the operation was issued.
fn lookup<'a, S>(
    conns: &'a mut Slab<Connection<S>>,
    stats: &mut WorkerStats,
    conn: ConnRef,
) -> Option<&'a mut Connection<S>> {
    match conns.get_mut(conn.key as usize) {
        Some(c) if c.generation == conn.generation => Some(c),
        _ => {
            stats.stale_completions += 1;
            None
        }
    }
}

fn queue_flush<S>(c: &mut Connection<S>, flush: &mut Vec<u32>) {
    if !c.flush_queued {
        c.flush_queued = true;
        flush.push(c.key);
    }
}

/// Offers the connection's pending input followed by `data` to the handler; what it
/// leaves unconsumed stays pending (in a pooled buffer, freed once empty).
fn feed<H: Handler>(
    handler: &mut H,
    c: &mut Connection<H::State>,
    pool: &mut BufPool,
    (worker, draining, now): (usize, bool, Instant),
    data: &[u8],
) {
    if c.pending.is_empty() {
        let used = deliver(handler, c, pool, worker, draining, now, data);
        if used < data.len() && c.close_requested != CloseRequest::AfterFlush {
            c.pending = pool.take();
            c.pending.extend_from_slice(&data[used..]);
        }
    } else {
        let mut pending = mem::take(&mut c.pending);
        pending.extend_from_slice(data);
        let used = deliver(handler, c, pool, worker, draining, now, &pending);
        pending.drain(..used);
        if pending.is_empty() || c.close_requested == CloseRequest::AfterFlush {
            pool.put(pending);
        } else {
            c.pending = pending;
        }
    }
}

/// Offers `data` to the handler until it consumes all of it, stops making progress, or
/// asks to close. Returns how many bytes it consumed.
fn deliver<H: Handler>(
    handler: &mut H,
    c: &mut Connection<H::State>,
    pool: &mut BufPool,
    worker: usize,
    draining: bool,
    now: Instant,
    data: &[u8],
) -> usize {
    let mut used = 0;
    while used < data.len() && c.close_requested != CloseRequest::AfterFlush {
        let (mut conn, state) = c.handle(worker, draining, now, pool);
        let Some(state) = state.as_mut() else {
            return data.len();
        };
        let n = handler
            .on_data(state, &mut conn, &data[used..])
            .min(data.len() - used);
        if n == 0 {
            break;
        }
        used += n;
    }
    used
}

fn error_reason(errno: i32) -> CloseReason {
    match errno {
        libc::ECONNRESET | libc::EPIPE => CloseReason::Reset,
        _ => CloseReason::Error(errno),
    }
}

#[cfg(test)]
mod tests;
