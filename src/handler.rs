//! The embedding API: the [`Handler`] a service implements, the [`Conn`] handle it
//! writes through, the [`CloseReason`] it is told at the end, and the [`Worker`] its
//! factory registers per-core resources with.
//!
//! One handler instance lives on each worker thread (made by the factory given to
//! [`Server::run`](crate::Server::run)), so a handler needs no locks: per-worker state
//! such as a database pool lives in the handler, per-connection state in
//! [`Handler::State`].

use std::io;
use std::time::{Duration, Instant};

use crate::buf::BufPool;
use crate::mailbox::{ConnAddr, Mailbox};
use crate::outbound::Local;

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
///     type Message = ();
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

    /// What other threads post into this worker through its [`Mailbox`] (answers from
    /// a database pool, say). `()` for a handler that takes no messages.
    type Message: Send + 'static;

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

    /// The server started draining (SIGTERM, say) while this connection is open, or the
    /// connection arrived from the listen backlog during the drain. The handler decides
    /// how the connection ends: write a goodbye and [`Conn::close`], or let the current
    /// exchange finish. The default, [`Conn::close_when_idle`], closes the connection
    /// the first time it has sent everything and holds no unconsumed input: at once for
    /// an idle connection, after the reply for a busy one. A connection the handler
    /// keeps open is cut at the grace deadline.
    fn on_drain(&mut self, state: &mut Self::State, conn: &mut Conn<'_>) {
        let _ = state;
        conn.close_when_idle();
    }

    /// The timer set with [`Conn::set_timer`] fired. Not called once the connection is
    /// closing.
    fn on_timer(&mut self, state: &mut Self::State, conn: &mut Conn<'_>) {
        let _ = (state, conn);
    }

    /// A message posted to the worker ([`Mailbox::post`]). The default drops it.
    fn on_message(&mut self, msg: Self::Message) {
        let _ = msg;
    }

    /// A message posted to one of this worker's open connections
    /// ([`Mailbox::post_to`]) at address `to` (its tag is the poster's): write the answer
    /// to `conn`. Input that waited meanwhile is offered again after it. The default
    /// drops the message.
    fn on_conn_message(
        &mut self,
        state: &mut Self::State,
        conn: &mut Conn<'_>,
        to: ConnAddr,
        msg: Self::Message,
    ) {
        let _ = (state, conn, to, msg);
    }

    /// A message for a connection that closed before it arrived (or is closing), or one
    /// still queued when the worker stopped: handed back so that what it carries can be
    /// released. Counted in `messages_undelivered`. The default drops it. (A post that
    /// races with the worker's very last look is dropped with the mailbox, its
    /// destructor run; later posts get [`PostError::Closed`](crate::PostError::Closed).)
    fn on_undelivered(&mut self, msg: Self::Message) {
        let _ = msg;
    }

    /// The least unconsumed input this handler may need to keep on one connection to
    /// make progress (for [`Http`](crate::http::Http), a whole request head: its
    /// [`max_head`](crate::http::HttpConfig::max_head)). The engine raises its
    /// [`max_pending_input`](crate::Builder::max_pending_input) to it (logged at the
    /// start), so that what is too much is the handler's call (a 431 for a head, with
    /// an orderly close) and not a reset by the engine's limit. Default 0.
    fn min_pending_input(&self) -> usize {
        0
    }

    /// The connection is closed (its descriptor is released). Called exactly once for
    /// every connection whose [`on_open`](Handler::on_open) returned (a connection whose
    /// `on_open` panicked has no state to close).
    ///
    /// Every callback runs under `catch_unwind`: a panic closes its connection
    /// ([`CloseReason::HandlerPanic`]) and the worker serves on.
    fn on_close(&mut self, state: Self::State, reason: CloseReason) {
        let _ = (state, reason);
    }
}

/// A boxed teardown action and its name.
pub(crate) type Teardown = (String, Box<dyn FnOnce()>);

/// What a handler factory gets: the worker's index, its [`Mailbox`] (messages of the
/// handler's type `M` from other threads), and where to register the per-worker resources
/// (a database pool per core, say) that must be closed when the worker stops.
///
/// Teardowns run on the worker's thread once its last connection has closed during the
/// drain, in reverse order of registration (like destructors), each logged as
/// `worker N: teardown NAME`. The listener is closed before that, when the drain stops
/// accepting; after the teardowns the worker releases its backend (cancels and reaps
/// its remaining operations, then frees the buffer ring and the ring). A teardown that
/// panics is logged and counted (`teardown_panics`); the ones after it still run.
///
/// ```
/// use std::rc::Rc;
/// use gracering::{Conn, Handler, Worker};
///
/// struct Pool; // a per-core database pool, say
/// impl Pool {
///     fn close(&self) {}
/// }
///
/// struct Service {
///     pool: Rc<Pool>,
/// }
/// # impl Handler for Service {
/// #     type State = ();
/// #     type Message = ();
/// #     fn on_open(&mut self, _: &mut Conn<'_>) {}
/// #     fn on_data(&mut self, _: &mut (), _: &mut Conn<'_>, d: &[u8]) -> usize { d.len() }
/// # }
///
/// fn make(worker: &mut Worker) -> Service {
///     let pool = Rc::new(Pool);
///     let closing = pool.clone();
///     worker.on_teardown("db-pool", move || closing.close());
///     Service { pool }
/// }
/// ```
pub struct Worker<M = ()> {
    pub(crate) index: usize,
    /// Each teardown with its place in the order of registration (shared with links).
    pub(crate) teardown: Vec<(u64, Teardown)>,
    pub(crate) mailbox: Mailbox<M>,
    pub(crate) local: Local<M>,
}

impl<M> Worker<M> {
    pub(crate) fn new(index: usize, mailbox: Mailbox<M>) -> Worker<M> {
        Worker {
            index,
            teardown: Vec::new(),
            mailbox,
            local: Local::new(index),
        }
    }

    /// This worker's index (0 to workers - 1).
    pub fn index(&self) -> usize {
        self.index
    }

    /// A handle to this worker's mailbox, to give to other threads (a database pool's
    /// threads, say) so they can post answers back ([`Handler::on_message`],
    /// [`Handler::on_conn_message`]).
    pub fn mailbox(&self) -> Mailbox<M> {
        self.mailbox.clone()
    }

    /// The worker's [`Local`] handle: open outbound links
    /// ([`Local::connect`](crate::Local::connect)), write to them, post to this worker's
    /// connections. Keep it in the handler to use it from any callback.
    pub fn local(&self) -> Local<M> {
        self.local.clone()
    }

    /// The server's live [`Metrics`](crate::Metrics) (every worker's), to serve them
    /// from a handler (`/metrics`, say) or read them from a thread of its own.
    pub fn metrics(&self) -> crate::Metrics {
        crate::Metrics {
            shared: self.mailbox.shared().clone(),
        }
    }

    /// This worker's HTTP block of the metrics.
    pub(crate) fn http_block(&self) -> std::sync::Arc<crate::metrics::HttpBlock> {
        let shared = self.mailbox.shared();
        shared.slots.get(self.index).map_or_else(
            || std::sync::Arc::new(crate::metrics::HttpBlock::new()),
            |slot| slot.http.clone(),
        )
    }

    /// Registers a resource's teardown. Teardowns (and links, see
    /// [`Local::connect`](crate::Local::connect)) are closed in reverse order of
    /// registration, after the worker's last accepted connection closed.
    pub fn on_teardown(&mut self, name: impl Into<String>, close: impl FnOnce() + 'static) {
        let seq = self.local.next_seq();
        self.teardown.push((seq, (name.into(), Box::new(close))));
    }
}

impl<M> std::fmt::Debug for Worker<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.teardown.iter().map(|(_, (n, _))| n.as_str()).collect();
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("teardown", &names)
            .finish()
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
    /// A handler callback for this connection panicked; the connection was closed at
    /// once, without flushing its output (the panic is logged and counted).
    HandlerPanic,
    /// An outbound connect was refused (ECONNREFUSED: nothing listens there).
    Refused,
    /// An outbound connect found no route (ENETUNREACH, EHOSTUNREACH).
    Unreachable,
    /// An outbound connect took longer than its timeout
    /// ([`ConnectOptions::timeout`](crate::ConnectOptions::timeout)), or the kernel
    /// gave up on the peer (ETIMEDOUT).
    TimedOut,
    /// The connection's output made no progress for the send timeout (its peer stopped
    /// reading, see [`Builder::send_timeout`](crate::Builder::send_timeout)); the
    /// output left was dropped.
    SendTimeout,
}

impl CloseReason {
    /// The reason as an [`io::Error`], where it is one.
    pub fn as_io_error(&self) -> Option<io::Error> {
        match *self {
            CloseReason::Error(errno) => Some(io::Error::from_raw_os_error(errno)),
            CloseReason::Reset => Some(io::ErrorKind::ConnectionReset.into()),
            CloseReason::Refused => Some(io::ErrorKind::ConnectionRefused.into()),
            CloseReason::Unreachable => Some(io::Error::from_raw_os_error(libc::EHOSTUNREACH)),
            CloseReason::TimedOut | CloseReason::SendTimeout => {
                Some(io::ErrorKind::TimedOut.into())
            }
            CloseReason::PeerClosed
            | CloseReason::Handler
            | CloseReason::InputLimit
            | CloseReason::Shutdown
            | CloseReason::HandlerPanic => None,
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
    pub(crate) serial: u64,
    /// Bytes of input waiting, unconsumed, when the callback began.
    pub(crate) pending_input: usize,
    pub(crate) worker: usize,
    pub(crate) draining: bool,
    pub(crate) now: Instant,
    pub(crate) timer: &'a mut Option<Instant>,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) unsent: usize,
    pub(crate) pool: &'a mut BufPool,
    pub(crate) close: &'a mut CloseRequest,
    /// The handler holds its input ([`Conn::hold_input`]).
    pub(crate) hold: &'a mut bool,
}

/// What a handler asked about closing its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum CloseRequest {
    /// Nothing: keep serving.
    #[default]
    None,
    /// Close the first time the connection is idle (all sent, no input pending).
    WhenIdle,
    /// Close once the output written so far is sent; discard further input.
    AfterFlush,
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

    /// This connection's address, for answers posted from other threads
    /// ([`Mailbox::post_to`]): unlike [`ConnId`], never the address of a later
    /// connection in the same slot.
    pub fn addr(&self) -> ConnAddr {
        ConnAddr {
            worker: self.worker as u32,
            key: self.id.0,
            serial: self.serial,
            tag: 0,
        }
    }

    /// The current loop turn's clock (read once per turn; cheaper than `Instant::now`).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sets the connection's timer to fire `after` from now, replacing any earlier one:
    /// [`Handler::on_timer`] is called then (at most a few milliseconds late, never
    /// early). Cheap enough to reset on every request.
    pub fn set_timer(&mut self, after: Duration) {
        *self.timer = Some(crate::clock::after(self.now, after));
    }

    /// Cancels the connection's timer.
    pub fn clear_timer(&mut self) {
        *self.timer = None;
    }

    /// Whether the server is draining: from the instant the drain begins (including the
    /// readiness delay), a health check should report not-ready.
    pub fn is_draining(&self) -> bool {
        self.draining
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

    /// Asks to close the connection once its output is flushed: the write side is shut
    /// down (FIN), what the peer still sends is read and discarded for a short linger,
    /// then the descriptor is closed. Input that arrives after this call is discarded.
    pub fn close(&mut self) {
        *self.close = CloseRequest::AfterFlush;
    }

    /// Asks to close the connection the first time it is idle: every written byte sent
    /// and no input left unconsumed. Input keeps being served until then.
    pub fn close_when_idle(&mut self) {
        if *self.close == CloseRequest::None {
            *self.close = CloseRequest::WhenIdle;
        }
    }

    /// Holds the input: the handler cannot take more now (the requests queued behind
    /// one whose answer it waits for, say) but will once [`release_input`] is called.
    /// Until then, unconsumed input past the server's
    /// [`max_pending_input`](crate::Builder::max_pending_input) no longer closes the
    /// connection ([`CloseReason::InputLimit`]): the engine stops reading from it
    /// instead, and what the peer sends waits in the kernel (TCP flow control pushes
    /// back). Reading resumes once the handler consumed enough to be back under the
    /// limit. The pending input is offered again after each callback that may have
    /// changed the handler's mind (a timer, a message), as always.
    ///
    /// [`release_input`]: Conn::release_input
    pub fn hold_input(&mut self) {
        *self.hold = true;
    }

    /// Ends [`hold_input`](Conn::hold_input): input past the limit closes the connection
    /// again. Call it once the handler takes input again (its answer came).
    pub fn release_input(&mut self) {
        *self.hold = false;
    }

    /// Whether [`close`](Conn::close) or [`close_when_idle`](Conn::close_when_idle) was
    /// called.
    pub fn is_closing(&self) -> bool {
        *self.close != CloseRequest::None
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
