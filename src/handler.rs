//! The embedding API: the [`Handler`] a service implements, the [`Conn`] handle it
//! writes through, and the [`CloseReason`] it is told at the end.
//!
//! One handler instance lives on each worker thread (made by the factory given to
//! [`Server::run`](crate::Server::run)), so a handler needs no locks: per-worker state
//! such as a database pool lives in the handler, per-connection state in
//! [`Handler::State`].

use std::io;

use crate::buf::BufPool;

/// A service's protocol logic, one instance per worker thread.
///
/// The engine calls it from the worker's loop: [`on_open`](Handler::on_open) when a
/// connection is accepted, [`on_data`](Handler::on_data) whenever bytes arrive, and
/// [`on_close`](Handler::on_close) once the connection's descriptor is closed.
///
/// # Example
///
/// An echo service:
///
/// ```
/// use gracering::{CloseReason, Conn, Handler};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     type State = ();
///     fn on_open(&mut self, _conn: &mut Conn<'_>) {}
///     fn on_data(&mut self, _state: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
///         conn.write(data);
///         data.len()
///     }
/// }
/// ```
pub trait Handler {
    /// Per-connection state, created by [`on_open`](Handler::on_open) and handed back to
    /// every later call for that connection.
    type State;

    /// A connection was accepted. Whatever is written to `conn` here is sent first.
    fn on_open(&mut self, conn: &mut Conn<'_>) -> Self::State;

    /// Bytes arrived. Returns how many of them the handler consumed; the rest is kept in
    /// the connection's pending input and offered again, together with the next bytes.
    /// While a call consumes some but not all of its input, the engine calls again with
    /// the rest at once, so a handler may consume one message per call.
    ///
    /// Replies go into `conn` ([`Conn::write`]); everything written during one loop turn
    /// leaves in one send.
    fn on_data(&mut self, state: &mut Self::State, conn: &mut Conn<'_>, data: &[u8]) -> usize;

    /// The connection is closed (its descriptor is released). Called exactly once for
    /// every connection that [`on_open`](Handler::on_open) saw.
    fn on_close(&mut self, state: Self::State, reason: CloseReason) {
        let _ = (state, reason);
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side in an orderly way (FIN) and all output was sent.
    PeerClosed,
    /// The peer reset the connection (ECONNRESET or EPIPE).
    Reset,
    /// The socket failed with this OS error code (errno).
    Error(i32),
    /// The handler asked to close ([`Conn::close`]) and its output was flushed.
    Handler,
    /// The connection's unconsumed input passed the configured limit
    /// ([`Builder::max_pending_input`](crate::Builder::max_pending_input)).
    InputLimit,
    /// The server shut down.
    Shutdown,
}

impl CloseReason {
    /// The reason as an [`io::Error`], where it is one.
    pub fn as_io_error(&self) -> Option<io::Error> {
        match *self {
            CloseReason::Error(errno) => Some(io::Error::from_raw_os_error(errno)),
            CloseReason::Reset => Some(io::ErrorKind::ConnectionReset.into()),
            CloseReason::PeerClosed
            | CloseReason::Handler
            | CloseReason::InputLimit
            | CloseReason::Shutdown => None,
        }
    }
}

/// Identifies a connection within its worker: unique among the connections open on that
/// worker at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub(crate) u32);

impl ConnId {
    /// The id as a number (the connection's slot on its worker).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The handler's handle on one connection during a callback: where its output goes and
/// how it asks to close.
pub struct Conn<'a> {
    pub(crate) id: ConnId,
    pub(crate) worker: usize,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) unsent: usize,
    pub(crate) pool: &'a mut BufPool,
    pub(crate) close: &'a mut bool,
}

impl Conn<'_> {
    /// This connection's id on its worker.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The index of the worker thread that owns this connection.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Appends bytes to the connection's output. They are sent at the end of the loop
    /// turn, coalesced with everything else written in that turn.
    pub fn write(&mut self, bytes: &[u8]) {
        self.output().extend_from_slice(bytes);
    }

    /// The connection's output buffer, for writers that format in place. Only append.
    pub fn output(&mut self) -> &mut Vec<u8> {
        if self.out.capacity() == 0 {
            *self.out = self.pool.take();
        }
        self.out
    }

    /// Bytes written but not yet acknowledged by the kernel (this turn's output plus any
    /// send in flight). A handler can use it to stop producing when a peer reads slowly.
    pub fn unsent(&self) -> usize {
        self.unsent + self.out.len()
    }

    /// Asks to close the connection once its output is flushed. Input that arrives
    /// afterwards is discarded.
    pub fn close(&mut self) {
        *self.close = true;
    }

    /// Whether [`close`](Conn::close) was called.
    pub fn is_closing(&self) -> bool {
        *self.close
    }
}

impl io::Write for Conn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
