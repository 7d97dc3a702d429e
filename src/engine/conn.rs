//! One connection's state inside the engine: its buffers, which of its operations are in
//! flight, and how far it is on the way to closing. No syscalls; the engine drives it.
//!
//! The close sequence, for a graceful close:
//!
//! ```text
//! Open ─▶ AfterFlush ─▶ Lingering ─────────────▶ Now ─▶ Submitted ─▶ (slot freed on Closed)
//!         output still   FIN sent (shutdown);     no op in flight:
//!         being sent;    input read and dropped   close issued
//!         input dropped  until EOF, quiet, or the
//!                        linger time, so unread bytes
//!                        cannot turn the close
//!                        into a reset
//! ```
//!
//! The linger is adaptive ([`Linger`]): it lasts while the peer may still send, and ends
//! once both sides were quiet for a few of the connection's round trips (at most the
//! linger time). A peer that already sent FIN, or that was quiet that long already,
//! skips it (the close itself sends the FIN); an abort (reset, error, forced
//! drain) goes straight to `Now`, cancelling what is in flight.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::timer::Wheel;
use crate::buf::BufPool;
use crate::contract::{ConnRef, Intents};
use crate::handler::{CloseReason, CloseRequest, Conn, ConnId};

/// Whether the connection has a receive operation in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recv {
    /// No receive in flight (never armed, ended, or paused).
    Off,
    /// A (multishot) receive is in flight.
    Armed,
    /// A cancel was requested; the receive's last completion is still to come.
    Cancelling,
}

/// How far the connection is on its way to closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Open and serving.
    Open,
    /// Close once every written byte is sent; further input is discarded.
    AfterFlush(CloseReason),
    /// FIN sent; reading off what the peer still sends until EOF, until both sides were
    /// quiet for the connection's quiet time, or the linger time.
    Lingering(CloseReason),
    /// Close as soon as no operation is in flight; unsent output is dropped.
    Now(CloseReason),
    /// The close was issued; the slot is freed when it completes.
    Submitted(CloseReason),
}

/// The shortest quiet a lingering connection waits for, whatever its round trip.
const QUIET_FLOOR: Duration = Duration::from_millis(10);
/// A lingering connection's quiet, in round trips: its peer's bytes sent before our
/// FIN reached it, or in answer to the last output, arrive well within it.
const QUIET_RTTS: u32 = 8;

/// The worker's lingering connections, by when each is next looked at.
///
/// Lingering is adaptive: a connection lingers while its peer may still send (it sent,
/// or we did, within its quiet time, or bytes wait unread), and closes once both sides
/// were quiet for that long: [`QUIET_RTTS`] of its round trip, at least [`QUIET_FLOOR`]
/// (the whole linger where the round trip is unknown), and never past the linger time.
#[derive(Debug)]
pub(crate) struct Linger {
    pub time: Duration,
    pub now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl Linger {
    pub fn new(time: Duration, now: Instant) -> Linger {
        Linger {
            time,
            now,
            queue: BinaryHeap::new(),
        }
    }

    /// The quiet a connection with this round trip waits for.
    pub fn quiet_for(&self, rtt: Option<Duration>) -> Duration {
        match rtt {
            Some(rtt) => rtt
                .saturating_mul(QUIET_RTTS)
                .max(QUIET_FLOOR)
                .min(self.time),
            None => self.time,
        }
    }

    /// Looks at `conn` again at `at`.
    pub fn check_at(&mut self, at: Instant, conn: ConnRef) {
        self.queue.push(Reverse((at, conn.key, conn.generation)));
    }

    /// A connection due to be looked at by `now`, if any.
    pub fn expired(&mut self, now: Instant) -> Option<ConnRef> {
        match self.queue.peek() {
            Some(&Reverse((at, key, generation))) if at <= now => {
                self.queue.pop();
                Some(ConnRef { key, generation })
            }
            _ => None,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.peek().map(|&Reverse((at, _, _))| at)
    }
}

/// `Connection::link` of an accepted connection.
pub(crate) const NO_LINK: u32 = u32::MAX;

/// A connection slot in the worker's slab: an accepted connection, or the socket of an
/// outbound link (`link` names it; the slab's keys are one space for both backends).
#[derive(Debug)]
pub(crate) struct Connection<S> {
    pub fd: RawFd,
    pub key: u32,
    pub generation: u32,
    /// The worker's count of accepted connections when this one came: its mailbox
    /// address, never reused.
    pub serial: u64,
    /// The handler's per-connection state; taken out for `on_close` (always `None` on
    /// a link's socket).
    pub state: Option<S>,
    /// The outbound link this socket belongs to, or [`NO_LINK`].
    pub link: u32,
    /// An outbound connect is in flight (counts as an operation, like a receive).
    pub connecting: bool,
    /// A link's socket that connected.
    pub up: bool,
    /// Output written by the handler and not yet handed to the kernel.
    pub out: Vec<u8>,
    /// Input the handler left unconsumed.
    pub pending: Vec<u8>,
    /// Bytes of the send in flight still unacknowledged; meaningful while `sending`.
    pub inflight: usize,
    pub sending: bool,
    pub recv: Recv,
    /// The peer sent FIN: nothing more to read.
    pub read_done: bool,
    /// The last receive said more bytes wait in the socket.
    pub input_queued: bool,
    /// The turn in which the connection, waiting to close when idle, was first seen idle.
    pub quiet_since: Option<u64>,
    /// Reading is paused by back-pressure.
    pub paused: bool,
    /// The handler holds its input ([`Conn::hold_input`]).
    pub hold: bool,
    /// Reading is paused because held input passed the pending-input limit.
    pub input_full: bool,
    /// What the handler asked about closing.
    pub close_requested: CloseRequest,
    /// Queued for the end-of-turn flush.
    pub flush_queued: bool,
    pub closing: Closing,
    /// Set when the drain reached this connection: whether it was idle then.
    pub idle_at_drain: Option<bool>,
    /// Closed by force (grace deadline or second signal).
    pub aborted: bool,
    /// The loop turn in which the connection was accepted.
    pub born_turn: u64,
    /// When bytes last arrived (or the connection was accepted).
    pub last_input: Instant,
    /// When the handler's timer fires, if set.
    pub timer_at: Option<Instant>,
    /// The earliest deadline at which the timer wheel holds an entry for this connection.
    pub timer_filed: Option<Instant>,
    /// When its output last made progress (or began to wait to be sent).
    pub progress_at: Instant,
    /// The send timeout's queue holds an entry for this connection.
    pub stall_watched: bool,
    /// Input read and dropped since it began to close.
    pub discarded: usize,
    /// It dropped all the input a closing connection may: reading stopped for good.
    pub discard_full: bool,
    /// Bytes came in or went out after the drain reached it: it was not idle then.
    pub worked_in_drain: bool,
    /// Lingering: when the FIN went, the quiet it waits for, and when it ends anyway.
    pub linger_from: Instant,
    pub linger_quiet: Duration,
    pub linger_end: Instant,
    /// Found quiet at a check (the turn's number): closed at a later check if no byte
    /// came in between, so a whole reap of completions separates the two (a long turn
    /// cannot pass for a quiet peer).
    pub quiet_seen: Option<u64>,
    /// It lingered and the linger ended for quiet (not an abort, not the peer's FIN).
    pub lingered: bool,
}

impl<S> Connection<S> {
    pub fn new(
        fd: RawFd,
        (key, generation, serial): (u32, u32, u64),
        born_turn: u64,
        now: Instant,
    ) -> Connection<S> {
        Connection {
            serial,
            fd,
            key,
            generation,
            state: None,
            link: NO_LINK,
            connecting: false,
            up: false,
            out: Vec::new(),
            pending: Vec::new(),
            inflight: 0,
            sending: false,
            recv: Recv::Off,
            read_done: false,
            input_queued: false,
            quiet_since: None,
            paused: false,
            hold: false,
            input_full: false,
            close_requested: CloseRequest::None,
            flush_queued: false,
            closing: Closing::Open,
            idle_at_drain: None,
            aborted: false,
            born_turn,
            last_input: now,
            timer_at: None,
            timer_filed: None,
            progress_at: now,
            stall_watched: false,
            discarded: 0,
            discard_full: false,
            worked_in_drain: false,
            linger_from: now,
            linger_quiet: Duration::ZERO,
            linger_end: now,
            quiet_seen: None,
            lingered: false,
        }
    }

    /// The handler's view of this connection for one callback, and its state.
    pub fn view<'a>(
        &'a mut self,
        worker: usize,
        draining: bool,
        now: Instant,
        pool: &'a mut BufPool,
    ) -> (Conn<'a>, &'a mut Option<S>) {
        let unsent = if self.sending { self.inflight } else { 0 };
        let conn = Conn {
            id: ConnId(self.key),
            serial: self.serial,
            pending_input: self.pending.len(),
            worker,
            draining,
            now,
            timer: &mut self.timer_at,
            out: &mut self.out,
            unsent,
            pool,
            close: &mut self.close_requested,
            hold: &mut self.hold,
        };
        (conn, &mut self.state)
    }

    /// Files the handler's timer in the wheel unless an entry at or before its deadline
    /// is already there (a later deadline is re-filed when that entry comes due).
    pub fn file_timer(&mut self, wheel: &mut Wheel) {
        if let Some(at) = self.timer_at
            && self.timer_filed.is_none_or(|filed| at < filed)
        {
            wheel.insert(at, self.conn_ref());
            self.timer_filed = Some(at);
        }
    }

    pub fn conn_ref(&self) -> ConnRef {
        ConnRef {
            key: self.key,
            generation: self.generation,
        }
    }

    /// Bytes written and not yet sent.
    pub fn unsent(&self) -> usize {
        self.out.len() + if self.sending { self.inflight } else { 0 }
    }

    /// Nothing to send, nothing half-received, nothing waiting in the socket: the
    /// connection waits for its peer.
    pub fn is_idle(&self) -> bool {
        self.unsent() == 0 && self.pending.is_empty() && !self.input_queued
    }

    /// Whether a receive should be in flight now.
    pub fn wants_read(&self) -> bool {
        match self.closing {
            Closing::Open => {
                !self.read_done && !self.paused && !self.discard_full && !self.input_full
            }
            Closing::AfterFlush(_) | Closing::Lingering(_) => !self.read_done && !self.discard_full,
            Closing::Now(_) | Closing::Submitted(_) => false,
        }
    }

    /// Arms the receive if the connection wants to read and none is in flight.
    pub fn arm_recv(&mut self, q: &mut impl Intents) {
        if self.recv == Recv::Off && !self.connecting && self.wants_read() {
            q.recv(self.conn_ref(), self.fd);
            self.recv = Recv::Armed;
        }
    }

    /// Cancels the receive if one is armed.
    pub fn cancel_recv(&mut self, q: &mut impl Intents) {
        if self.recv == Recv::Armed {
            q.cancel_recv(self.conn_ref());
            self.recv = Recv::Cancelling;
        }
    }

    /// Starts closing: `graceful` flushes output first, otherwise in-flight work is
    /// cancelled. A later, harsher request overrides a graceful one.
    pub fn begin_close(
        &mut self,
        reason: CloseReason,
        graceful: bool,
        q: &mut impl Intents,
        linger: &mut Linger,
    ) {
        match (self.closing, graceful) {
            (Closing::Open, true) => self.closing = Closing::AfterFlush(reason),
            (Closing::Open | Closing::AfterFlush(_) | Closing::Lingering(_), false) => {
                self.closing = Closing::Now(reason);
                self.lingered = false; // an abort does not read on
                self.out.clear();
                if self.sending {
                    q.cancel_send(self.conn_ref());
                }
                if self.connecting {
                    q.cancel_connect(self.conn_ref());
                }
                self.cancel_recv(q);
            }
            (
                Closing::AfterFlush(_)
                | Closing::Lingering(_)
                | Closing::Now(_)
                | Closing::Submitted(_),
                _,
            ) => {}
        }
        self.advance_close(q, linger);
    }

    /// The last time either side sent: bytes came in, output made progress, or (while
    /// lingering) the FIN went.
    pub fn last_activity(&self) -> Instant {
        let mut last = self.last_input.max(self.progress_at);
        if matches!(self.closing, Closing::Lingering(_)) {
            last = last.max(self.linger_from);
        }
        last
    }

    /// A lingering connection's check came due: it stops lingering if the linger time is
    /// over or both sides have been quiet for its quiet time (and no byte waits unread),
    /// else it is looked at again when that could be so.
    pub fn linger_check(&mut self, turn: u64, q: &mut impl Intents, linger: &mut Linger) {
        if !matches!(self.closing, Closing::Lingering(_)) {
            return;
        }
        let now = linger.now;
        if now >= self.linger_end {
            return self.end_linger(q, linger);
        }
        let quiet_until = crate::clock::after(self.last_activity(), self.linger_quiet);
        if now >= quiet_until && !self.input_queued {
            match self.quiet_seen {
                // Quiet at two checks with a reap between, and nothing waits in the
                // socket: nothing is on the way.
                Some(seen) if seen < turn && q.unread_now(self.fd) == 0 => {
                    self.lingered = true;
                    return self.end_linger(q, linger);
                }
                Some(seen) if seen < turn => self.quiet_seen = None, // bytes wait: read on
                Some(_) | None => {
                    self.quiet_seen = Some(turn);
                    // Looked at again after the next reap.
                    let soon = crate::clock::after(now, Duration::from_micros(1));
                    return linger.check_at(soon, self.conn_ref());
                }
            }
        }
        let at = if now >= quiet_until || self.input_queued {
            crate::clock::after(now, self.linger_quiet)
        } else {
            quiet_until
        };
        linger.check_at(at.min(self.linger_end), self.conn_ref());
    }

    /// The peer sent FIN (or the linger time is over): stop lingering.
    pub fn end_linger(&mut self, q: &mut impl Intents, linger: &mut Linger) {
        if let Closing::Lingering(reason) = self.closing {
            self.closing = Closing::Now(reason);
            self.cancel_recv(q);
        }
        self.advance_close(q, linger);
    }

    /// Moves the close forward as far as the in-flight operations allow.
    pub fn advance_close(&mut self, q: &mut impl Intents, linger: &mut Linger) {
        if let Closing::AfterFlush(reason) = self.closing
            && self.connecting
        {
            // Closing before the connect finished: nothing was sent, nothing to flush.
            self.closing = Closing::Now(reason);
            q.cancel_connect(self.conn_ref());
        }
        if let Closing::AfterFlush(reason) = self.closing
            && !self.sending
            && self.out.is_empty()
        {
            let quiet = linger.quiet_for(q.rtt_now(self.fd));
            let silent = linger.now.saturating_duration_since(self.last_activity());
            if self.read_done || self.discard_full {
                self.closing = Closing::Now(reason);
            } else if silent >= linger.time && q.unread_now(self.fd) == 0 {
                // Both sides quiet for a whole linger already: no byte of the peer is on
                // the way. (Not for the shorter quiet: the engine's view of the peer may
                // be a long turn old; the linger's own checks confirm it after a reap.)
                // Shutting down both directions sends the FIN now and ends the receive
                // in flight (it completes with EOF), which saves cancelling it.
                self.closing = Closing::Now(reason);
                q.shutdown_both_now(self.conn_ref(), self.fd);
                if self.recv == Recv::Armed {
                    self.recv = Recv::Cancelling;
                }
            } else {
                self.closing = Closing::Lingering(reason);
                q.shutdown_write_now(self.conn_ref(), self.fd);
                self.linger_from = linger.now;
                self.linger_quiet = quiet;
                self.linger_end = crate::clock::after(linger.now, linger.time);
                linger.check_at(
                    crate::clock::after(linger.now, quiet).min(self.linger_end),
                    self.conn_ref(),
                );
                self.arm_recv(q);
            }
        }
        if let Closing::Now(reason) = self.closing {
            self.cancel_recv(q);
            if !self.sending && self.recv == Recv::Off && !self.connecting {
                if self.lingered
                    && !self.read_done
                    && linger.now < self.linger_end
                    && q.unread_now(self.fd) > 0
                {
                    // Bytes came after the linger judged the peer quiet: read them off
                    // first, a close now would reset the connection.
                    self.closing = Closing::Lingering(reason);
                    self.quiet_seen = None;
                    linger.check_at(
                        crate::clock::after(linger.now, self.linger_quiet).min(self.linger_end),
                        self.conn_ref(),
                    );
                    self.arm_recv(q);
                    return;
                }
                q.close(self.conn_ref(), self.fd);
                self.closing = Closing::Submitted(reason);
            }
        }
    }

    /// Applies the pending-input limit after a handler call: past `max` unconsumed bytes
    /// a connection whose handler holds its input stops reading, and reads again once
    /// back at or under `max`. Returns true when the connection is over the limit
    /// without a hold: the caller closes it.
    pub fn check_input(&mut self, max: usize, q: &mut impl Intents) -> bool {
        let over = self.pending.len() > max;
        if over && !self.hold {
            return true;
        }
        if over && !self.input_full {
            self.input_full = true;
            self.cancel_recv(q);
        } else if !over && self.input_full {
            self.input_full = false;
            self.arm_recv(q);
        }
        false
    }

    /// Applies back-pressure: pauses reading above `max` unsent bytes, resumes at half.
    /// Returns true when it paused.
    #[inline]
    pub fn check_pressure(&mut self, max: usize, q: &mut impl Intents) -> bool {
        let unsent = self.unsent();
        if !self.paused && unsent <= max {
            return false; // the common case, without a call
        }
        self.pressure_changed(unsent, max, q)
    }

    #[inline(never)]
    fn pressure_changed(&mut self, unsent: usize, max: usize, q: &mut impl Intents) -> bool {
        if !self.paused && unsent > max && self.closing == Closing::Open {
            self.paused = true;
            self.cancel_recv(q);
            return true;
        }
        if self.paused && unsent <= max / 2 {
            self.paused = false;
            self.arm_recv(q);
        }
        false
    }
}
