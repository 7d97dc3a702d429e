//! The contract between the engine, the worker loop and the backends: the [`Event`]s a
//! backend decodes from the kernel, the [`Intents`] the engine asks of it, and the
//! [`Driver`] trait the one worker loop ([`crate::worker`]) runs every backend through.
//!
//! This module depends on neither `engine` nor `sys`: both depend on it. Buffer
//! ownership crosses it explicitly: a send buffer ([`OutBuf`]) moves into the backend
//! with [`Intents::send`] and comes back only inside [`Event::Sent`], after the kernel is
//! done with it, so the engine cannot touch memory the kernel may still read; a receive
//! buffer is lent to the engine for the one [`Event::Received`] call that names it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// Names one connection slot at one moment: the slab key plus the generation the slot
/// had when the operation was issued. A completion whose generation no longer matches
/// the slot belongs to an earlier connection and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnRef {
    pub key: u32,
    pub generation: u32,
}

/// Bits of the generation that survive the round trip through `user_data`.
pub(crate) const GEN_MASK: u32 = (1 << 24) - 1;

/// An output buffer on its way to the kernel: the bytes and how many were already sent.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    pub buf: Vec<u8>,
    pub pos: usize,
}

impl OutBuf {
    /// The bytes still to send.
    pub fn remaining(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
}

/// Why a receive operation ended (it no longer delivers data and must be re-armed to
/// read again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvEnd {
    /// The peer closed its write side (a read of zero bytes).
    Eof,
    /// The multishot receive stopped for a reason of its own (CQ pressure, a single-shot
    /// receive on older kernels): re-arm if still reading.
    Rearm,
    /// No provided buffer was free; the data waits in the socket.
    NoBuffers,
    /// The receive was cancelled at the engine's request.
    Cancelled,
    /// The socket reported an error (a positive errno).
    Error(i32),
}

/// Something the kernel did, decoded by a backend.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// The listener accepted a connection.
    Accepted { fd: RawFd },
    /// The accept operation is no longer armed; `errno` is 0 when it ended without an
    /// error (cancelled, or a single-shot accept that completed).
    AcceptEnded { errno: i32 },
    /// Bytes arrived on a connection. The slice is only valid during the call. `queued`
    /// says more bytes already wait in the socket (another `Received` will follow).
    Received {
        conn: ConnRef,
        data: &'a [u8],
        queued: bool,
    },
    /// The connection's receive operation ended.
    RecvEnded { conn: ConnRef, why: RecvEnd },
    /// A send finished: `result` is the byte count or a positive errno. The buffer comes
    /// back to the engine (empty when the backend lost track of it: then `result` is an
    /// error and the connection closes).
    Sent {
        conn: ConnRef,
        result: Result<usize, i32>,
        buf: OutBuf,
    },
    /// An outbound connect finished: `Ok` once connected, or a positive errno
    /// (ECANCELED when the engine cancelled it).
    Connected {
        conn: ConnRef,
        result: Result<(), i32>,
    },
    /// The connection's descriptor is closed; no operation of it is in flight any more.
    Closed { conn: ConnRef },
    /// A shutdown signal (SIGTERM or SIGINT) was read from the signalfd.
    Signal { signo: i32 },
    /// Another worker, or the shutdown handle, woke this worker: look at the shared state.
    Wake,
}

/// What the engine asks a backend to do.
///
/// Every method is one of two kinds, and its name says which:
/// - queued: the request joins the turn's batch and reaches the kernel at the turn's one
///   submit-and-wait; its outcome comes back later as the [`Event`] its doc names. The
///   engine never learns anything from the call itself.
/// - synchronous (`*_now`): done during the call, with a plain syscall, because the
///   kernel answers it at once and a queued form would cost more (io_uring's
///   IORING_OP_SHUTDOWN always goes through a kernel worker thread).
pub(crate) trait Intents {
    /// Queued: arm accepting on this worker's listener (multishot where available).
    /// Answered by [`Event::Accepted`]s, and [`Event::AcceptEnded`] once it stops.
    fn accept(&mut self);
    /// Queued: start receiving on a connection (multishot into the provided buffer
    /// ring). Answered by [`Event::Received`]s, then one [`Event::RecvEnded`].
    fn recv(&mut self, conn: ConnRef, fd: RawFd);
    /// Queued: send `buf.remaining()`; the buffer belongs to the backend until the
    /// [`Event::Sent`] that answers it.
    fn send(&mut self, conn: ConnRef, fd: RawFd, buf: OutBuf);
    /// Queued: cancel the connection's receive; its [`Event::RecvEnded`] follows.
    fn cancel_recv(&mut self, conn: ConnRef);
    /// Queued: cancel the connection's send; its [`Event::Sent`] follows.
    fn cancel_send(&mut self, conn: ConnRef);
    /// Queued: close the descriptor; answered by [`Event::Closed`]. Only issued with no
    /// other operation of the connection in flight.
    fn close(&mut self, conn: ConnRef, fd: RawFd);
    /// Queued: cancel the accept; its [`Event::AcceptEnded`] follows (if it was armed).
    /// New handshakes are refused from this call on (a socket filter, set at once).
    fn cancel_accept(&mut self);
    /// Queued: wake every other worker of the server (they read the shared state). No
    /// event answers it.
    fn wake_workers(&mut self);
    /// Queued: wake worker `index` (this worker posted into its mailbox). No event
    /// answers it.
    fn wake_worker(&mut self, index: usize);
    /// Synchronous: create a non-blocking TCP socket (IPv6 when `v6`) for an outbound
    /// connection: the descriptor, or a positive errno (EMFILE, say).
    fn open_socket_now(&mut self, v6: bool) -> Result<RawFd, i32>;
    /// Queued: connect the socket made by [`open_socket_now`](Intents::open_socket_now)
    /// to `to`; answered by one [`Event::Connected`].
    fn connect(&mut self, conn: ConnRef, fd: RawFd, to: SocketAddr);
    /// Queued: cancel the connection's connect; its [`Event::Connected`] follows (with
    /// ECANCELED unless it completed first).
    fn cancel_connect(&mut self, conn: ConnRef);
    /// Synchronous: shut down the write side (send FIN) now.
    fn shutdown_write_now(&mut self, conn: ConnRef, fd: RawFd);
    /// Synchronous: shut down both directions now (FIN; a receive in flight ends with
    /// EOF, reported by its [`Event::RecvEnded`]).
    fn shutdown_both_now(&mut self, conn: ConnRef, fd: RawFd);
    /// Synchronous: the connection's smoothed round-trip time as the kernel measured it,
    /// if known (the in-memory backends know none).
    fn rtt_now(&mut self, fd: RawFd) -> Option<std::time::Duration> {
        let _ = fd;
        None
    }
    /// Synchronous: how many received bytes wait unread in the socket (0 on the
    /// in-memory backends, which deliver everything).
    fn unread_now(&mut self, fd: RawFd) -> usize {
        let _ = fd;
        0
    }
    /// Synchronous: refuse new handshakes, accept what waits in the listen backlog
    /// (non-blocking, until EAGAIN) into `backlog`, and close the listening socket once
    /// its queue is empty. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM) the listener stays open, its queue intact, for a later call
    /// ([`BacklogEnd::Waiting`]); with `give_up`, nothing more is accepted and the
    /// listener is closed, resetting what is still queued ([`BacklogEnd::GaveUp`]).
    fn close_listener_now(&mut self, backlog: &mut Vec<RawFd>, give_up: bool) -> BacklogEnd;
}

/// How [`Intents::close_listener_now`] left the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BacklogEnd {
    /// Its queue is empty (or another process's to serve): closed.
    Closed,
    /// Accepting failed with this errno for lack of descriptors or memory: still open,
    /// connections still queued.
    Waiting(i32),
    /// Closed with `lost` connections still queued (reset by the close); `errno` is the
    /// failure that stopped the backlog, 0 when it was given up on.
    GaveUp { errno: i32, lost: usize },
}

/// A backend as the worker loop drives it: the only code that touches the kernel.
///
/// One loop turn, written once in [`crate::worker`]: [`with_queue`](Driver::with_queue)
/// for the engine's start of turn, [`reap`](Driver::reap) every completion into the
/// engine, `with_queue` again for the end of turn, [`publish`](Driver::publish) the
/// recycled buffers, then one [`submit_and_wait`](Driver::submit_and_wait).
pub(crate) trait Driver {
    /// The turn's queue of intents.
    type Queue<'q>: Intents
    where
        Self: 'q;

    /// Runs `f` with the turn's queue of intents.
    fn with_queue<R>(&mut self, f: impl FnOnce(&mut Self::Queue<'_>) -> R) -> R;

    /// Hands every event ready now to `handle`, with the queue for what it asks next.
    fn reap(&mut self, handle: impl FnMut(Event<'_>, &mut Self::Queue<'_>));

    /// Whether events are ready without waiting (a backend whose requests complete
    /// during the call, like epoll's writes, reports them this way).
    fn has_ready(&self) -> bool;

    /// End of turn: recycled receive buffers become the kernel's again.
    fn publish(&mut self);

    /// Hands the turn's batch to the kernel and blocks until an event arrives or
    /// `timeout` passes (`None`: no limit).
    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Starts the release: the backend's own reads (signalfd, wake-up) are cancelled,
    /// and with `abort` every other operation in flight too.
    fn begin_release(&mut self, abort: bool);

    /// Operations issued whose last completion has not been reaped yet.
    fn in_flight(&self) -> usize;
}
