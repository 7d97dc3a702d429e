//! The boundary between the engine and the kernel.
//!
//! A backend turns OS events (io_uring completions, later epoll readiness) into
//! [`Event`]s for the engine, and carries out the engine's requests through the [`Ops`]
//! trait. Nothing on the engine side of this boundary makes a syscall; everything on the
//! backend side is mechanical translation. That is what lets the io_uring backend, an
//! epoll backend and the in-memory [`sim`](crate::sim) backend share one engine.
//!
//! Buffer ownership crosses the boundary explicitly: a send buffer ([`OutBuf`]) is moved
//! into the backend by [`Ops::send`] and only comes back inside [`Event::Sent`], after the
//! kernel is done with it, so the engine cannot touch memory the kernel may still read.

use std::os::fd::RawFd;
use std::{fmt, io};

pub(crate) mod epoll;
pub(crate) mod socket;
pub(crate) mod token;
pub(crate) mod uring;

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
    /// back to the engine.
    Sent {
        conn: ConnRef,
        result: Result<usize, i32>,
        buf: OutBuf,
    },
    /// The connection's descriptor is closed; no operation of it is in flight any more.
    Closed { conn: ConnRef },
    /// A shutdown signal (SIGTERM or SIGINT) was read from the signalfd.
    Signal { signo: i32 },
    /// Another worker, or the shutdown handle, woke this worker: look at the shared state.
    Wake,
}

/// What the engine asks a backend to do. Calls are batched by the backend and reach the
/// kernel together at the end of the loop turn.
pub(crate) trait Ops {
    /// Arm accepting on this worker's listener (multishot where available).
    fn accept(&mut self);
    /// Start receiving on a connection (multishot into the provided buffer ring).
    fn recv(&mut self, conn: ConnRef, fd: RawFd);
    /// Send `buf.remaining()`; the buffer is owned by the backend until [`Event::Sent`].
    fn send(&mut self, conn: ConnRef, fd: RawFd, buf: OutBuf);
    /// Cancel the connection's receive; an [`Event::RecvEnded`] follows.
    fn cancel_recv(&mut self, conn: ConnRef);
    /// Cancel the connection's send; its [`Event::Sent`] follows.
    fn cancel_send(&mut self, conn: ConnRef);
    /// Shut down the write side (send FIN) now. Synchronous: a TCP shutdown does not
    /// block, and io_uring's IORING_OP_SHUTDOWN always goes through a kernel worker
    /// thread, which costs a thread hand-off per connection.
    fn shutdown_write(&mut self, conn: ConnRef, fd: RawFd);
    /// Shut down both directions now (FIN; a receive in flight ends with EOF).
    /// Synchronous, like [`Ops::shutdown_write`].
    fn shutdown_both(&mut self, conn: ConnRef, fd: RawFd);
    /// Close the descriptor; [`Event::Closed`] follows. Only issued with no op in flight.
    fn close(&mut self, conn: ConnRef, fd: RawFd);
    /// Cancel the accept; its [`Event::AcceptEnded`] follows (if it was armed).
    fn cancel_accept(&mut self);
    /// Accept what waits in the listen backlog (non-blocking, until EAGAIN) into
    /// `backlog`, then close the listening socket. Returns the errno that stopped the
    /// backlog early (EMFILE, say), if one did.
    fn close_listener(&mut self, backlog: &mut Vec<RawFd>) -> Option<i32>;
    /// Wake every other worker of the server (they read the shared state).
    fn wake_workers(&mut self);
}

/// Which kernel interface the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring when the kernel offers what the engine needs, epoll otherwise (the
    /// reason is logged once). The `GRACERING_BACKEND` environment variable
    /// (`uring`, `epoll`, `auto`) overrides this default.
    #[default]
    Auto,
    /// io_uring; starting fails with a clear error where it is unavailable.
    Uring,
    /// Edge-triggered epoll readiness, on any Linux.
    Epoll,
}

impl Backend {
    /// The backend's name as the examples print it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }

    /// The backend `GRACERING_BACKEND` asks for, if it is set.
    pub(crate) fn from_env() -> io::Result<Option<Backend>> {
        match std::env::var("GRACERING_BACKEND").as_deref() {
            Err(_) | Ok("") => Ok(None),
            Ok("auto") => Ok(Some(Backend::Auto)),
            Ok("uring" | "io_uring") => Ok(Some(Backend::Uring)),
            Ok("epoll") => Ok(Some(Backend::Epoll)),
            Ok(other) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("GRACERING_BACKEND={other}: expected uring, epoll or auto"),
            )),
        }
    }

    /// Resolves `Auto` (and the environment) to the backend that will run.
    pub(crate) fn resolve(self) -> io::Result<Backend> {
        let wanted = match self {
            Backend::Auto => Backend::from_env()?.unwrap_or(Backend::Auto),
            explicit => explicit,
        };
        match wanted {
            Backend::Epoll => Ok(Backend::Epoll),
            Backend::Uring => match uring::build_ring(8) {
                Ok((_, features)) => {
                    crate::log::info(format_args!("{features}"));
                    Ok(Backend::Uring)
                }
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("io_uring backend unavailable: {e}"),
                )),
            },
            Backend::Auto => match uring::build_ring(8) {
                Ok((_, features)) => {
                    crate::log::info(format_args!("{features}"));
                    Ok(Backend::Uring)
                }
                Err(e) => {
                    crate::log::warn(format_args!(
                        "io_uring unavailable ({e}); using the epoll backend"
                    ));
                    Ok(Backend::Epoll)
                }
            },
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
