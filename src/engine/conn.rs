//! One connection's state inside the engine: its buffers, which of its operations are in
//! flight, and how far it is on the way to closing. No syscalls; the engine drives it.

use std::os::fd::RawFd;

use crate::handler::CloseReason;
use crate::sys::{ConnRef, Ops};

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
    /// Close as soon as no operation is in flight; unsent output is dropped.
    Now(CloseReason),
    /// The close was issued; the slot is freed when it completes.
    Submitted(CloseReason),
}

/// A connection slot in the worker's slab.
#[derive(Debug)]
pub(crate) struct Connection<S> {
    pub fd: RawFd,
    pub key: u32,
    pub generation: u32,
    /// The handler's per-connection state; taken out for `on_close`.
    pub state: Option<S>,
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
    /// Reading is paused by back-pressure.
    pub paused: bool,
    /// The handler called `Conn::close`.
    pub close_requested: bool,
    /// Queued for the end-of-turn flush.
    pub flush_queued: bool,
    pub closing: Closing,
}

impl<S> Connection<S> {
    pub fn new(fd: RawFd, key: u32, generation: u32) -> Connection<S> {
        Connection {
            fd,
            key,
            generation,
            state: None,
            out: Vec::new(),
            pending: Vec::new(),
            inflight: 0,
            sending: false,
            recv: Recv::Off,
            read_done: false,
            paused: false,
            close_requested: false,
            flush_queued: false,
            closing: Closing::Open,
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

    /// Whether a receive should be in flight now.
    pub fn wants_read(&self) -> bool {
        self.closing == Closing::Open && !self.read_done && !self.paused
    }

    /// Arms the receive if the connection wants to read and none is in flight.
    pub fn arm_recv(&mut self, ops: &mut impl Ops) {
        if self.recv == Recv::Off && self.wants_read() {
            ops.recv(self.conn_ref(), self.fd);
            self.recv = Recv::Armed;
        }
    }

    /// Cancels the receive if one is armed.
    pub fn cancel_recv(&mut self, ops: &mut impl Ops) {
        if self.recv == Recv::Armed {
            ops.cancel_recv(self.conn_ref());
            self.recv = Recv::Cancelling;
        }
    }

    /// Starts closing: `graceful` flushes output first, otherwise in-flight work is
    /// cancelled. A later, harsher request overrides a graceful one.
    pub fn begin_close(&mut self, reason: CloseReason, graceful: bool, ops: &mut impl Ops) {
        match (self.closing, graceful) {
            (Closing::Open, true) => self.closing = Closing::AfterFlush(reason),
            (Closing::Open | Closing::AfterFlush(_), false) => {
                self.closing = Closing::Now(reason);
                self.out.clear();
                if self.sending {
                    ops.cancel_send(self.conn_ref());
                }
                self.cancel_recv(ops);
            }
            (Closing::AfterFlush(_) | Closing::Now(_) | Closing::Submitted(_), _) => {}
        }
        self.advance_close(ops);
    }

    /// Moves the close forward as far as the in-flight operations allow.
    pub fn advance_close(&mut self, ops: &mut impl Ops) {
        if let Closing::AfterFlush(reason) = self.closing
            && !self.sending
            && self.out.is_empty()
        {
            self.closing = Closing::Now(reason);
            self.cancel_recv(ops);
        }
        if let Closing::Now(reason) = self.closing
            && !self.sending
            && self.recv == Recv::Off
        {
            ops.close(self.conn_ref(), self.fd);
            self.closing = Closing::Submitted(reason);
        }
    }

    /// Applies back-pressure: pauses reading above `max` unsent bytes, resumes at half.
    pub fn check_pressure(&mut self, max: usize, ops: &mut impl Ops) -> bool {
        let unsent = self.unsent();
        if !self.paused && unsent > max {
            self.paused = true;
            self.cancel_recv(ops);
            return true;
        }
        if self.paused && unsent <= max / 2 {
            self.paused = false;
            self.arm_recv(ops);
        }
        false
    }
}
