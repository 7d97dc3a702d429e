//! The per-worker engine: connection state and handler calls, driven by [`Event`]s and
//! answering with [`Intents`]. It makes no syscalls, reads no clock (the worker hands it
//! `now`) and logs nothing (it records [`Note`]s the worker logs), so every backend
//! shares it and the in-memory backend runs it deterministically.
//!
//! One loop turn, as the worker loop ([`crate::worker`]) drives it:
//!
//! ```text
//!   begin_turn(now)            the turn's clock, read once by the worker; timers fire
//!   handle(event) ...          one call per decoded completion; handler callbacks run here
//!   end_turn()                 coalesced sends go out, back-pressure and closes advance
//!   next_deadline()            how long the worker may wait for the next completion
//! ```
//!
//! Every handler callback runs under `catch_unwind`: a panic closes that connection
//! (counted in `handler_panics`, noted for the log), and the worker serves on.
//!
//! The drain (see [`crate::drain`]) is driven from `shutdown.rs`; this file is the data
//! path: accept, receive, send, close.

mod conn;
mod links;
mod messages;
mod note;
mod shutdown;
mod stall;
mod timer;

use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::buf::BufPool;
use crate::config::Config;
use crate::contract::{ConnRef, Event, GEN_MASK, Intents, OutBuf, RecvEnd};
use crate::drain::Drain;
use crate::handler::{CloseReason, CloseRequest, Conn, Handler, Teardown, Worker};
use crate::mailbox::Inbox;
use crate::outbound::{LinkId, Local};
use crate::shared::Shared;
use crate::stats::{WorkerDrain, WorkerStats};

use conn::{Closing, Connection, Linger, NO_LINK, Recv};
use links::LinkSlot;
pub(crate) use note::{Callback, Note, panic_message};
use stall::Stalls;
use timer::Wheel;

/// The accept side of a worker: whether an accept is in the kernel, and the back-off
/// that keeps a worker out of descriptors from spinning.
#[derive(Debug, Default)]
struct Acceptor {
    armed: bool,
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
    listener_closed: bool,
    /// Stopping: the backlog waits for descriptors, the listener is still open.
    backlog_waiting: bool,
    /// Connections taken from the backlog while stopping.
    from_backlog: usize,
}

/// Settings the engine reads on its paths.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_unsent: usize,
    max_pending_input: usize,
    max_discard: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    drain_delay: Duration,
    grace_period: Duration,
}

/// One worker's engine.
pub(crate) struct Engine<H: Handler> {
    handler: H,
    worker: Worker<H::Message>,
    inbox: Inbox<H::Message>,
    conns: Slab<Connection<H::State>>,
    pool: BufPool,
    flush: Vec<u32>,
    /// The other half of `flush`, swapped in each turn so neither is reallocated.
    flush_spare: Vec<u32>,
    next_generation: u32,
    acceptor: Acceptor,
    linger: Linger,
    /// Connections with output in flight, for the send timeout.
    stalls: Stalls,
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
    /// When the turn before this one began.
    prev_turn_at: Instant,
    /// When the worker entered its last wait in the kernel, if that wait could block;
    /// the outer `None` until the loop first says (the in-memory backend never does:
    /// its turns are its waits).
    wait_began: Option<Option<Instant>>,
    stats: WorkerStats,
    /// What happened that the worker should log, oldest first.
    notes: Vec<Note>,
    /// The worker's handle on its own connections, shared with the handler's code.
    local: Local<H::Message>,
    /// The outbound links, by the key their [`LinkId`]s carry.
    links: Vec<Option<LinkSlot<H::Message>>>,
    /// Accepted connections open (the slab also holds the links' sockets).
    inbound: usize,
    /// The teardown: what is left to close, last registered at the end.
    plan: Vec<Resource>,
    /// Teardowns handed to the worker to run next.
    ready: Vec<Teardown>,
    /// The link whose close the teardown waits for.
    waiting_link: Option<LinkId>,
    /// The teardown is being advanced (its steps may call back into it).
    advancing: bool,
    /// Teardowns are ready for the worker to run.
    teardown_due: bool,
    /// Everything is torn down: the worker may finish.
    teardown_complete: bool,
}

/// One step of the teardown.
enum Resource {
    /// A teardown registered with [`Worker::on_teardown`], run by the worker.
    Run(Teardown),
    /// A link, closed by the engine (goodbye, FIN, its close awaited).
    Link(LinkId),
}

impl<H: Handler> Engine<H> {
    pub fn new(
        handler: H,
        (worker, inbox): (Worker<H::Message>, Inbox<H::Message>),
        config: &Config,
        shared: Arc<Shared>,
        now: Instant,
    ) -> Engine<H> {
        let local = worker.local.clone();
        let max_pending_input = config.max_pending_input.max(handler.min_pending_input());
        Engine {
            handler,
            worker,
            inbox,
            conns: Slab::with_capacity(1024),
            pool: BufPool::new(16 * 1024, 4096),
            flush: Vec::with_capacity(1024),
            flush_spare: Vec::with_capacity(1024),
            next_generation: 0,
            acceptor: Acceptor::default(),
            linger: Linger::new(config.linger, now),
            stalls: Stalls::new(config.send_timeout),
            limits: Limits {
                max_unsent: config.max_unsent,
                max_pending_input,
                max_discard: config.max_discard,
                backoff_min: config.accept_backoff_min,
                backoff_max: config.accept_backoff_max,
                drain_delay: config.drain_delay,
                grace_period: config.grace_period,
            },
            shared,
            drain: Drain::new(),
            drain_counts: WorkerDrain::default(),
            drain_later: Vec::new(),
            timers: Wheel::new(now),
            due: Vec::new(),
            idle_watch: Vec::new(),
            turn: 0,
            prev_turn_at: now,
            wait_began: None,
            stats: WorkerStats::default(),
            notes: Vec::new(),
            local,
            links: Vec::new(),
            inbound: 0,
            plan: Vec::new(),
            ready: Vec::new(),
            waiting_link: None,
            advancing: false,
            teardown_due: false,
            teardown_complete: false,
        }
    }

    /// Hands each note recorded since the last call to `f`, oldest first.
    pub fn drain_notes(&mut self, mut f: impl FnMut(&Note)) {
        if !self.notes.is_empty() {
            for note in self.notes.drain(..) {
                f(&note);
            }
        }
    }

    /// The worker's index.
    pub fn index(&self) -> usize {
        self.worker.index
    }

    /// Arms accepting (unless the server is already draining). Called once, before the
    /// first turn.
    pub fn start(&mut self, q: &mut impl Intents) {
        self.arm_accept(q);
        self.take_local(q); // the links the factory opened
        self.sync_drain(q);
    }

    /// The worker's handle on its own connections.
    #[cfg(feature = "sim")]
    pub fn local(&self) -> Local<H::Message> {
        self.local.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Publishes the counters (and, once it began, the drain's state) to the worker's
    /// metrics block: one batch of relaxed stores, once per loop turn.
    #[inline]
    pub fn publish(&self) {
        let block = &self.shared.slot(self.worker.index).engine;
        block.publish(&self.stats);
        if self.drain.draining() {
            block.publish_drain(
                self.drain.phase(),
                &self.drain_report(),
                self.drain.milestones(),
            );
        }
    }

    /// How many accepted connections are open (or closing) on this worker.
    #[cfg(any(test, feature = "sim"))]
    pub fn live(&self) -> usize {
        self.inbound
    }

    /// Sets the turn's clock and fires the timers that are due.
    pub fn begin_turn(&mut self, now: Instant, q: &mut impl Intents) {
        self.prev_turn_at = self.linger.now;
        self.linger.now = now;
        self.turn += 1;
        if let Some(at) = self.acceptor.retry_at
            && at <= now
        {
            self.acceptor.retry_at = None;
            if !self.drain.accept_closed() {
                self.arm_accept(q);
            } else if self.acceptor.backlog_waiting {
                self.finish_stop_accepting(q);
            }
        }
        if self.next_retry().is_some_and(|at| at <= now) {
            self.retry_links(now, q);
        }
        while let Some(conn) = self.linger.expired(now) {
            if let Some(c) = self
                .conns
                .get_mut(conn.key as usize)
                .filter(|c| c.generation == conn.generation)
            {
                c.linger_check(self.turn, q, &mut self.linger);
            }
        }
        if self.stalls.next_deadline().is_some_and(|at| at <= now) {
            self.check_stalls(now, q);
        }
        if self.drain.next_deadline().is_some_and(|at| at <= now) {
            self.tick(now, q);
        }
        if self.timers.next_deadline().is_some_and(|at| at <= now) {
            self.fire_timers(now, q);
        }
    }

    /// Closes the connections whose output made no progress for the send timeout.
    fn check_stalls(&mut self, now: Instant, q: &mut impl Intents) {
        let time = self.stalls.time;
        while let Some(conn) = self.stalls.expired(now) {
            let Some(c) = self
                .conns
                .get_mut(conn.key as usize)
                .filter(|c| c.generation == conn.generation)
            else {
                continue; // closed since
            };
            c.stall_watched = false;
            if c.unsent() == 0 || matches!(c.closing, Closing::Now(_) | Closing::Submitted(_)) {
                continue;
            }
            if now.saturating_duration_since(c.progress_at) < time {
                c.stall_watched = true;
                self.stalls.watch(conn, c.progress_at);
                continue;
            }
            if c.link == NO_LINK {
                self.stats.send_timeouts += 1;
                // Output dropped during the drain: a response that never arrived.
                c.aborted |= self.drain.draining();
            }
            c.begin_close(CloseReason::SendTimeout, false, q, &mut self.linger);
        }
    }

    /// Calls `on_timer` for every connection whose timer is due.
    fn fire_timers(&mut self, now: Instant, q: &mut impl Intents) {
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
                Some(_) if c.closing == Closing::Open && c.link != NO_LINK => {
                    c.timer_at = None;
                    let key = c.key;
                    self.link_timer(key, q);
                }
                Some(_) if c.closing == Closing::Open => {
                    c.timer_at = None;
                    let (mut handle, state) =
                        c.view(self.worker.index, draining, now, &mut self.pool);
                    let mut outcome = Ok(());
                    if let Some(state) = state.as_mut() {
                        outcome = guarded(Callback::Timer, || {
                            self.handler.on_timer(state, &mut handle)
                        });
                    }
                    if outcome.is_ok()
                        && !c.pending.is_empty()
                        && c.close_requested != CloseRequest::AfterFlush
                    {
                        // Input the handler set aside (while it waited on this timer, say)
                        // is offered again.
                        let ctx = (self.worker.index, draining, now);
                        outcome = feed_handler(&mut self.handler, c, &mut self.pool, ctx, &[]);
                    }
                    if let Err(note) = outcome {
                        contain(
                            c,
                            *note,
                            &mut self.stats,
                            &mut self.notes,
                            q,
                            &mut self.linger,
                        );
                    }
                    c.file_timer(&mut self.timers);
                    after_handler(c, reason, &mut self.flush, q, &mut self.linger);
                }
                Some(_) | None => c.timer_at = None,
            }
        }
        self.due = due;
    }

    /// The earliest instant at which the engine has something to do without an event.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.idle_watch.is_empty() || !self.flush.is_empty() || self.local_pending() {
            // Look again right after one more kernel entry: idle connections to check,
            // output queued after the turn's end (a teardown's goodbye), requests made
            // by code that ran after it.
            return Some(self.linger.now);
        }
        [
            self.next_retry(),
            self.acceptor.retry_at,
            self.linger.next_deadline(),
            self.stalls.next_deadline(),
            self.drain.next_deadline(),
            self.timers.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event<'_>, q: &mut impl Intents) {
        match event {
            Event::Accepted { fd } => self.on_accepted(fd, q),
            Event::AcceptEnded { errno } => self.on_accept_ended(errno, q),
            Event::Received { conn, data, queued } => self.on_received(conn, data, queued, q),
            Event::RecvEnded { conn, why } => self.on_recv_ended(conn, why, q),
            Event::Sent { conn, result, buf } => self.on_sent(conn, result, buf, q),
            Event::Connected { conn, result } => self.on_connected(conn, result, q),
            Event::Closed { conn } => self.on_closed(conn, q),
            Event::Signal { signo } => self.on_signal(signo, q),
            Event::Wake => {
                self.stats.wakeups += 1;
                self.sync_drain(q);
            }
        }
    }

    /// The worker is about to wait in the kernel, from `at`, for as long as it may (not
    /// called before a wait that returns at once).
    pub fn waiting_from(&mut self, at: Option<Instant>) {
        self.wait_began = Some(at);
    }

    /// When a completion seen in this turn happened at the earliest: in the wait, if the
    /// worker blocked in it (what woke it is what came, so at about `now`), else any
    /// time since the turn before began (the worker was busy: the completion waited).
    pub(super) fn happened_at_least_since(&self) -> Instant {
        let now = self.linger.now;
        match self.wait_began {
            None => now,
            Some(Some(w)) if now.saturating_duration_since(w) > Duration::from_millis(1) => now,
            Some(_) => self.prev_turn_at.min(now),
        }
    }

    /// Ends the turn: everything written during it leaves in one send per connection.
    pub fn end_turn(&mut self, q: &mut impl Intents) {
        if self.local.asked() {
            self.take_local(q);
        }
        if !self.drain_later.is_empty() {
            self.notify_later(q);
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
                if !c.stall_watched {
                    c.progress_at = self.linger.now;
                    c.stall_watched = true;
                    self.stalls.watch(c.conn_ref(), self.linger.now);
                }
                c.worked_in_drain |= self.drain.draining();
                let buf = mem::take(&mut c.out);
                c.inflight = buf.len();
                c.sending = true;
                q.send(c.conn_ref(), c.fd, OutBuf { buf, pos: 0 });
            }
            if c.check_pressure(self.limits.max_unsent, q) {
                self.stats.reads_paused += 1;
            }
            if c.input_full && c.check_input(self.limits.max_pending_input, q) {
                // Held input past the limit, and the hold released: as on a receive.
                self.stats.input_limit_closes += 1;
                c.begin_close(CloseReason::InputLimit, false, q, &mut self.linger);
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
                    c.begin_close(reason, true, q, &mut self.linger);
                } else {
                    c.quiet_since.get_or_insert(self.turn);
                    self.idle_watch.push(c.key);
                }
            }
            c.advance_close(q, &mut self.linger);
        }
        self.flush_spare = keys;
    }

    fn arm_accept(&mut self, q: &mut impl Intents) {
        if !self.acceptor.armed && !self.acceptor.listener_closed {
            q.accept();
            self.acceptor.armed = true;
        }
    }

    fn on_accepted(&mut self, fd: i32, q: &mut impl Intents) {
        self.stats.accepted += 1;
        self.inbound += 1;
        self.shared.opened();
        if self.acceptor.backoff.take().is_some() {
            self.notes.push(Note::AcceptRecovered {
                backoffs: self.stats.accept_backoffs,
            });
        }
        let reason = self.close_reason();
        self.next_generation = (self.next_generation + 1) & GEN_MASK;
        let entry = self.conns.vacant_entry();
        let key = entry.key() as u32;
        let serial = self.stats.accepted;
        let c = entry.insert(Connection::new(
            fd,
            (key, self.next_generation, serial),
            self.turn,
            self.linger.now,
        ));
        let (mut conn, state) = c.view(
            self.worker.index,
            self.drain.draining(),
            self.linger.now,
            &mut self.pool,
        );
        match guarded(Callback::Open, || self.handler.on_open(&mut conn)) {
            Ok(opened) => *state = Some(opened),
            Err(note) => contain(
                c,
                *note,
                &mut self.stats,
                &mut self.notes,
                q,
                &mut self.linger,
            ),
        }
        c.arm_recv(q);
        c.file_timer(&mut self.timers);
        after_handler(c, reason, &mut self.flush, q, &mut self.linger);
    }

    fn on_accept_ended(&mut self, errno: i32, q: &mut impl Intents) {
        self.acceptor.armed = false;
        if self.drain.accept_closed() {
            self.finish_stop_accepting(q);
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
                self.arm_accept(q);
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
            self.notes.push(Note::AcceptBackingOff { errno });
        }
        if !matches!(
            errno,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        ) {
            self.stats.accept_errors += 1;
        }
        self.stats.accept_backoffs += 1;
        self.acceptor.backoff = Some(delay);
        self.acceptor.retry_at = Some(crate::clock::after(self.linger.now, delay));
    }

    fn on_received(&mut self, conn: ConnRef, data: &[u8], queued: bool, q: &mut impl Intents) {
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
        c.quiet_seen = None;
        c.last_input = now;
        if c.link != NO_LINK {
            let key = c.key;
            return self.link_received(key, data, q);
        }
        self.stats.bytes_in += data.len() as u64;
        c.worked_in_drain |= draining;
        if c.closing != Closing::Open || c.close_requested == CloseRequest::AfterFlush {
            // Closing: input is read only so that the close does not reset, and only
            // so much of it.
            c.discarded = c.discarded.saturating_add(data.len());
            if c.discarded > self.limits.max_discard && !c.discard_full {
                c.discard_full = true;
                self.stats.discard_limits += 1;
                c.cancel_recv(q);
                c.end_linger(q, &mut self.linger);
            }
            return;
        }
        let fed = feed_handler(
            &mut self.handler,
            c,
            &mut self.pool,
            (worker, draining, now),
            data,
        );
        if let Err(note) = fed {
            contain(
                c,
                *note,
                &mut self.stats,
                &mut self.notes,
                q,
                &mut self.linger,
            );
        } else if c.check_input(max_pending, q) {
            self.stats.input_limit_closes += 1;
            c.begin_close(CloseReason::InputLimit, false, q, &mut self.linger);
        }
        c.file_timer(&mut self.timers);
        after_handler(c, reason, &mut self.flush, q, &mut self.linger);
        // Back-pressure at once, not only at the end of the turn: a backend may deliver
        // many reads of one fast peer in one turn (epoll reads up to its budget).
        if c.unsent() > self.limits.max_unsent && c.check_pressure(self.limits.max_unsent, q) {
            self.stats.reads_paused += 1;
        }
    }

    fn on_recv_ended(&mut self, conn: ConnRef, why: RecvEnd, q: &mut impl Intents) {
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
                c.begin_close(CloseReason::PeerClosed, true, q, &mut self.linger);
                c.end_linger(q, &mut self.linger);
            }
            RecvEnd::Rearm | RecvEnd::NoBuffers | RecvEnd::Cancelled => c.arm_recv(q),
            RecvEnd::Error(errno) => c.begin_close(error_reason(errno), false, q, &mut self.linger),
        }
        c.advance_close(q, &mut self.linger);
    }

    fn on_sent(
        &mut self,
        conn: ConnRef,
        result: Result<usize, i32>,
        mut buf: OutBuf,
        q: &mut impl Intents,
    ) {
        let Some(c) = lookup(&mut self.conns, &mut self.stats, conn) else {
            self.pool.put(buf.buf);
            return;
        };
        c.sending = false;
        match result {
            Ok(n) if n > 0 => {
                if c.link == NO_LINK {
                    self.stats.bytes_out += n as u64;
                } else {
                    self.stats.outbound_bytes_out += n as u64;
                }
                buf.pos += n;
                c.progress_at = self.linger.now;
                if buf.pos < buf.buf.len() && !matches!(c.closing, Closing::Now(_)) {
                    c.inflight = buf.buf.len() - buf.pos;
                    c.sending = true;
                    q.send(c.conn_ref(), c.fd, buf);
                } else {
                    self.pool.put(buf.buf);
                    queue_flush(c, &mut self.flush);
                }
            }
            Ok(_) => {
                self.pool.put(buf.buf);
                c.begin_close(CloseReason::Error(libc::EIO), false, q, &mut self.linger);
            }
            Err(errno) => {
                self.pool.put(buf.buf);
                if errno != libc::ECANCELED {
                    c.begin_close(error_reason(errno), false, q, &mut self.linger);
                }
            }
        }
        if c.check_pressure(self.limits.max_unsent, q) {
            self.stats.reads_paused += 1;
        }
        c.advance_close(q, &mut self.linger);
    }

    fn on_closed(&mut self, conn: ConnRef, q: &mut impl Intents) {
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
        if c.link != NO_LINK {
            return self.link_closed(c, reason, q);
        }
        self.inbound -= 1;
        self.stats.closed += 1;
        self.stats.closed_by.count(reason);
        self.shared.closed();
        self.count_drained(&c);
        self.pool.put(c.out);
        self.pool.put(c.pending);
        if let Some(state) = c.state {
            let closed = guarded(Callback::Close, || self.handler.on_close(state, reason));
            if let Err(note) = closed {
                self.stats.handler_panics += 1;
                self.notes.push(*note);
            }
        }
        if self.acceptor.backlog_waiting {
            self.finish_stop_accepting(q); // a descriptor is free: the backlog's turn
        }
        self.check_drained(q);
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

impl<H: Handler> Drop for Engine<H> {
    /// An engine dropped with connections open belongs to a worker that failed (its
    /// backend closes their descriptors): they no longer count as live for the server.
    fn drop(&mut self) {
        for _ in 0..self.inbound {
            self.shared.closed();
        }
    }
}

/// After a handler call: queue the output and honour a close request.
fn after_handler<S>(
    c: &mut Connection<S>,
    reason: CloseReason,
    flush: &mut Vec<u32>,
    q: &mut impl Intents,
    linger: &mut Linger,
) {
    if !c.out.is_empty() || c.input_full {
        queue_flush(c, flush); // end_turn also resumes reading held input once it shrank
    }
    match c.close_requested {
        CloseRequest::None => {}
        CloseRequest::WhenIdle => queue_flush(c, flush), // end_turn closes it once idle
        CloseRequest::AfterFlush if c.closing == Closing::Open => {
            c.begin_close(reason, true, q, linger);
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

/// The handler's `on_data` for one accepted connection's bytes (a connection whose
/// `on_open` panicked has no state: its input is dropped).
#[inline(always)]
fn feed_handler<H: Handler>(
    handler: &mut H,
    c: &mut Connection<H::State>,
    pool: &mut BufPool,
    ctx: (usize, bool, Instant),
    data: &[u8],
) -> Result<(), Box<Note>> {
    feed(c, pool, ctx, data, &mut |mut conn, state, rest| {
        let Some(state) = state.as_mut() else {
            return Ok(rest.len());
        };
        guarded(Callback::Data, || handler.on_data(state, &mut conn, rest))
    })
}

/// Offers the connection's pending input followed by `data` to `consume`; what it
/// leaves unconsumed stays pending (in a pooled buffer, freed once empty). A panic in
/// the callback comes back as its note; the input is then dropped.
#[inline(always)]
fn feed<S>(
    c: &mut Connection<S>,
    pool: &mut BufPool,
    (worker, draining, now): (usize, bool, Instant),
    data: &[u8],
    consume: &mut impl FnMut(Conn<'_>, &mut Option<S>, &[u8]) -> Result<usize, Box<Note>>,
) -> Result<(), Box<Note>> {
    if c.pending.is_empty() {
        let used = deliver(c, pool, worker, draining, now, data, consume)?;
        if used < data.len() && c.close_requested != CloseRequest::AfterFlush {
            c.pending = pool.take();
            c.pending.extend_from_slice(&data[used..]);
        }
    } else {
        let mut pending = mem::take(&mut c.pending);
        pending.extend_from_slice(data);
        let delivered = deliver(c, pool, worker, draining, now, &pending, consume);
        let used = match delivered {
            Ok(used) => used,
            Err(note) => {
                pool.put(pending);
                return Err(note);
            }
        };
        pending.drain(..used);
        if pending.is_empty() || c.close_requested == CloseRequest::AfterFlush {
            pool.put(pending);
        } else {
            c.pending = pending;
        }
    }
    Ok(())
}

/// Offers `data` to `consume` until it consumes all of it, stops making progress, or
/// asks to close. Returns how many bytes it consumed.
#[inline(always)]
fn deliver<S>(
    c: &mut Connection<S>,
    pool: &mut BufPool,
    worker: usize,
    draining: bool,
    now: Instant,
    data: &[u8],
    consume: &mut impl FnMut(Conn<'_>, &mut Option<S>, &[u8]) -> Result<usize, Box<Note>>,
) -> Result<usize, Box<Note>> {
    let mut used = 0;
    while used < data.len() && c.close_requested != CloseRequest::AfterFlush {
        let (conn, state) = c.view(worker, draining, now, pool);
        let rest = &data[used..];
        let n = consume(conn, state, rest)?;
        let n = n.min(data.len() - used);
        if n == 0 {
            break;
        }
        used += n;
    }
    Ok(used)
}

/// Runs one handler callback, turning a panic into the note that reports it (boxed,
/// so that the result of a callback that returned stays small enough for registers).
#[inline(always)]
fn guarded<R>(callback: Callback, f: impl FnOnce() -> R) -> Result<R, Box<Note>> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panicked(callback, &*payload))
}

/// The note of a callback's panic (out of line: the path that returns stays short).
#[cold]
#[inline(never)]
fn panicked(callback: Callback, payload: &(dyn std::any::Any + Send)) -> Box<Note> {
    Box::new(Note::HandlerPanic {
        callback,
        message: panic_message(payload),
    })
}

/// A handler callback panicked on this connection: count and note it, drop the input
/// and output it left, and close the connection at once (`on_close` still follows).
fn contain<S>(
    c: &mut Connection<S>,
    note: Note,
    stats: &mut WorkerStats,
    notes: &mut Vec<Note>,
    q: &mut impl Intents,
    linger: &mut Linger,
) {
    stats.handler_panics += 1;
    notes.push(note);
    c.pending.clear();
    c.begin_close(CloseReason::HandlerPanic, false, q, linger);
}

fn error_reason(errno: i32) -> CloseReason {
    match errno {
        libc::ECONNRESET | libc::EPIPE => CloseReason::Reset,
        _ => CloseReason::Error(errno),
    }
}

#[cfg(test)]
mod tests;
