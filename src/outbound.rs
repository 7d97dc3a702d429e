//! Outbound connections: TCP connections a worker opens itself (to a database, a cache,
//! an upstream), driven by the worker's own ring like the connections it accepts.
//!
//! ```text
//!  handler code on worker k            engine of worker k                 kernel
//!  (a callback, a teardown, the        ───────────────────                ──────
//!   factory)                           socket now, connect queued   ──▶   IORING_OP_CONNECT
//!  Local::connect(addr, opts, client)  (epoll: non-blocking connect,      (timeout: the
//!     └─▶ LinkId                        completed on writability)          engine's timer)
//!  Local::write(link, bytes) ──staged──▶ end of turn: one coalesced send per link
//!  Outbound::on_data(link, bytes) ◀───── multishot receive into the buffer ring
//!     link.post(addr, msg) ──────────▶  Handler::on_conn_message on worker k (no channel)
//!  Outbound::on_down(reason, retry) ◀── refused / unreachable / timed out / reset / EOF;
//!                                        reconnect after a capped exponential back-off
//! ```
//!
//! A link is one registration: it survives its TCP connection, reconnecting after a
//! back-off (never faster than [`ConnectOptions::reconnect`]'s minimum, so nothing spins
//! while the peer is down) until it is closed for good ([`Local::close`], or the drain).
//!
//! In the drain, links are not connections being drained: they do not count as live,
//! the drain's start does not touch them, and they stay usable until the worker's last
//! accepted connection has closed (every request answered). Then the teardown closes
//! them, together with the resources registered with
//! [`Worker::on_teardown`](crate::Worker::on_teardown), in reverse order of
//! registration: each link is told [`Outbound::on_drain`] (write a goodbye, such as
//! Redis `QUIT`, then [`Link::close`]) and the next resource waits until its socket is
//! closed. The grace deadline bounds all of it: past it, links are closed at once.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::handler::{CloseReason, Conn};
use crate::mailbox::{ConnAddr, PostError};

/// Names one link of a worker: never the name of a later link in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId {
    pub(crate) key: u32,
    pub(crate) serial: u32,
}

impl LinkId {
    /// The link's slot on its worker (small, dense; reused after the link is gone).
    pub fn index(self) -> usize {
        self.key as usize
    }
}

/// How a link connects, and reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    pub(crate) timeout: Duration,
    pub(crate) reconnect: Option<(Duration, Duration)>,
}

impl Default for ConnectOptions {
    /// A 5 s connect timeout; reconnecting after 100 ms, doubling up to 5 s.
    fn default() -> ConnectOptions {
        ConnectOptions {
            timeout: Duration::from_secs(5),
            reconnect: Some((Duration::from_millis(100), Duration::from_secs(5))),
        }
    }
}

impl ConnectOptions {
    /// The defaults ([`Default`]).
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    /// How long a connect may take before it fails with [`CloseReason::TimedOut`]
    /// (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Reconnect after a failure or a close the link did not ask for: first after
    /// `min` (at least 1 ms), doubling on each failure in a row up to `max`; back to
    /// `min` once a connection has lasted `max` (a peer that accepts and drops at once
    /// keeps the back-off growing).
    pub fn reconnect(mut self, min: Duration, max: Duration) -> ConnectOptions {
        let min = min.max(Duration::from_millis(1));
        self.reconnect = Some((min, max.max(min)));
        self
    }

    /// Never reconnect: the first failure or close ends the link.
    pub fn once(mut self) -> ConnectOptions {
        self.reconnect = None;
        self
    }
}

/// Where a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    /// A connect is in progress.
    Connecting,
    /// Connected: writes are sent.
    Up,
    /// Not connected; a reconnect is due later.
    Down,
    /// Closing for good, or gone (the id names nothing any more).
    Closed,
}

/// Why a write to a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// The link is connecting or down: nothing would carry the bytes now.
    NotConnected,
    /// The link is closing for good, or gone.
    Closed,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkError::NotConnected => "the link is not connected",
            LinkError::Closed => "the link is closed",
        })
    }
}

impl std::error::Error for LinkError {}

/// The protocol logic of one outbound link (a database client's connection, say),
/// called from the worker's loop. Every callback runs under `catch_unwind`: a panic
/// closes the link's connection (counted in `handler_panics`) and the link reconnects
/// as after any other failure.
///
/// # Example
///
/// A client that sends `PING` on connect and posts each line it gets back to a waiting
/// connection:
///
/// ```
/// use std::cell::RefCell;
/// use std::collections::VecDeque;
/// use std::rc::Rc;
/// use gracering::{CloseReason, ConnAddr, Link, Local, Outbound};
///
/// struct Pinger {
///     waiting: Rc<RefCell<VecDeque<ConnAddr>>>,
/// }
///
/// impl Outbound<String> for Pinger {
///     fn on_connect(&mut self, link: &mut Link<'_, String>) {
///         link.write(b"PING\r\n");
///     }
///     fn on_data(&mut self, link: &mut Link<'_, String>, data: &[u8]) -> usize {
///         let Some(end) = data.iter().position(|&b| b == b'\n') else {
///             return 0; // wait for the rest of the line
///         };
///         if let Some(to) = self.waiting.borrow_mut().pop_front() {
///             let line = String::from_utf8_lossy(&data[..end]).into_owned();
///             let _ = link.post(to, line);
///         }
///         end + 1
///     }
///     fn on_down(&mut self, local: &Local<String>, reason: CloseReason, _retry: Option<std::time::Duration>) {
///         for to in self.waiting.borrow_mut().drain(..) {
///             let _ = local.post(to, format!("down: {reason:?}"));
///         }
///     }
/// }
/// ```
///
/// Opened from a handler factory (or any callback, with a [`Local`] kept from it):
///
/// ```no_run
/// # use gracering::{Link, Outbound, ConnectOptions, Worker};
/// # struct Pinger;
/// # impl Outbound<()> for Pinger {
/// #     fn on_data(&mut self, _: &mut Link<'_, ()>, d: &[u8]) -> usize { d.len() }
/// # }
/// fn make(worker: &mut Worker) {
///     let to = "127.0.0.1:6379".parse().unwrap();
///     let link = worker.local().connect(to, ConnectOptions::new(), Pinger);
///     # let _ = link;
/// }
/// ```
pub trait Outbound<M> {
    /// The connection is up (again, after a reconnect). What is written here is sent
    /// before anything staged with [`Local::write`] after it.
    fn on_connect(&mut self, link: &mut Link<'_, M>) {
        let _ = link;
    }

    /// Bytes arrived. Returns how many were consumed; the rest is offered again with
    /// the next bytes (as [`Handler::on_data`](crate::Handler::on_data)).
    fn on_data(&mut self, link: &mut Link<'_, M>, data: &[u8]) -> usize;

    /// The timer set with [`Link::set_timer`] fired.
    fn on_timer(&mut self, link: &mut Link<'_, M>) {
        let _ = link;
    }

    /// The worker's teardown reached this link (its accepted connections are all
    /// closed): write a goodbye if the protocol has one, then [`Link::close`]. The
    /// default closes at once. Not called when the drain was forced.
    fn on_drain(&mut self, link: &mut Link<'_, M>) {
        link.close();
    }

    /// The connection ended, or a connect failed: `reason` says how
    /// ([`CloseReason::Refused`], [`CloseReason::Unreachable`],
    /// [`CloseReason::TimedOut`], [`CloseReason::Reset`], [`CloseReason::PeerClosed`],
    /// ...). `retry` is when the engine connects again (`None`: the link is gone, its
    /// id names nothing any more). Whatever waited on the link should be answered here.
    fn on_down(&mut self, local: &Local<M>, reason: CloseReason, retry: Option<Duration>) {
        let _ = (local, reason, retry);
    }
}

/// A link's connection during one of its callbacks: where its output goes. Like
/// [`Conn`] for an accepted connection.
pub struct Link<'a, M> {
    pub(crate) conn: Conn<'a>,
    pub(crate) id: LinkId,
    pub(crate) local: &'a Local<M>,
}

impl<M> Link<'_, M> {
    /// This link.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// The current loop turn's clock.
    pub fn now(&self) -> Instant {
        self.conn.now()
    }

    /// Appends bytes to the link's output, sent at the end of the turn.
    pub fn write(&mut self, bytes: &[u8]) {
        self.conn.write(bytes);
    }

    /// The link's output buffer, for encoders that write in place. Only append.
    pub fn output(&mut self) -> &mut Vec<u8> {
        self.conn.output()
    }

    /// Bytes written and not yet acknowledged by the kernel.
    pub fn unsent(&self) -> usize {
        self.conn.unsent()
    }

    /// Sets the link's timer ([`Outbound::on_timer`]), replacing an earlier one.
    pub fn set_timer(&mut self, after: Duration) {
        self.conn.set_timer(after);
    }

    /// Cancels the link's timer.
    pub fn clear_timer(&mut self) {
        self.conn.clear_timer();
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.conn.is_draining()
    }

    /// Closes the link for good once its output is sent (FIN; what the peer still
    /// sends is read off until it closes, so the close does not reset): no reconnect.
    pub fn close(&mut self) {
        self.conn.close();
        self.local.mark_closing(self.id);
    }

    /// Drops this connection and connects again after the back-off (the link stays
    /// registered): for a peer that sent what cannot be understood, after which
    /// nothing more it sends can be trusted. Output already written is sent first (FIN
    /// after it); writes are refused from now on, until [`Outbound::on_connect`] of the
    /// new connection. [`Outbound::on_down`] is told first, with the retry delay.
    pub fn reconnect(&mut self) {
        self.conn.close();
        self.local.set_status(self.id, LinkStatus::Down);
    }

    /// Posts `msg` to a connection of this worker ([`Local::post`]).
    pub fn post(&mut self, to: ConnAddr, msg: M) -> Result<(), PostError<M>> {
        self.local.post(to, msg)
    }

    /// The worker's [`Local`] handle.
    pub fn local(&self) -> &Local<M> {
        self.local
    }
}

/// A handle on the worker's own connections for code running on the worker's thread:
/// open links, write to them, post to accepted connections without a channel. Cheap to
/// clone (an `Rc`); not `Send`. Got from [`Worker::local`](crate::Worker::local).
///
/// Requests are taken by the engine at the end of the loop turn they were made in
/// (writes leave in that turn's one send per link; posts are delivered before it).
pub struct Local<M> {
    inner: Rc<Inner<M>>,
}

impl<M> Clone for Local<M> {
    fn clone(&self) -> Local<M> {
        Local {
            inner: self.inner.clone(),
        }
    }
}

impl<M> fmt::Debug for Local<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("worker", &self.inner.worker)
            .finish_non_exhaustive()
    }
}

/// A link as the handle sees it.
#[derive(Debug)]
pub(crate) struct Meta {
    pub serial: u32,
    pub status: LinkStatus,
    /// Bytes written with [`Local::write`], not yet taken by the engine.
    pub staged: Vec<u8>,
}

/// A connect asked for, not yet taken by the engine.
pub(crate) struct Connect<M> {
    pub id: LinkId,
    pub to: SocketAddr,
    pub options: ConnectOptions,
    pub client: Box<dyn Outbound<M>>,
    /// Its place in the worker's order of registration (teardowns and links).
    pub seq: u64,
}

/// What the handles asked since the engine last looked.
pub(crate) struct Requests<M> {
    pub links: Slab<Meta>,
    pub connects: Vec<Connect<M>>,
    /// Links with staged bytes (each key once).
    pub written: Vec<u32>,
    /// Links to close for good.
    pub closes: Vec<LinkId>,
    pub posts: Vec<(ConnAddr, M)>,
}

struct Inner<M> {
    worker: usize,
    requests: RefCell<Requests<M>>,
    /// Something was asked since the engine last looked.
    asked: Cell<bool>,
    next_serial: Cell<u32>,
    /// The worker's order of registration, shared with the teardowns.
    seq: Cell<u64>,
}

impl<M> Local<M> {
    pub(crate) fn new(worker: usize) -> Local<M> {
        Local {
            inner: Rc::new(Inner {
                worker,
                requests: RefCell::new(Requests {
                    links: Slab::new(),
                    connects: Vec::new(),
                    written: Vec::new(),
                    closes: Vec::new(),
                    posts: Vec::new(),
                }),
                asked: Cell::new(false),
                next_serial: Cell::new(0),
                seq: Cell::new(0),
            }),
        }
    }

    /// The index of the worker this handle belongs to.
    pub fn worker(&self) -> usize {
        self.inner.worker
    }

    /// Opens a link to `to` (IPv4 or IPv6), driven by `client`. The connect starts at
    /// the end of this turn (or when the worker starts, from the factory);
    /// [`Outbound::on_connect`] says when it is up, [`Outbound::on_down`] if it failed.
    pub fn connect(
        &self,
        to: SocketAddr,
        options: ConnectOptions,
        client: impl Outbound<M> + 'static,
    ) -> LinkId {
        let serial = self.inner.next_serial.get().wrapping_add(1);
        self.inner.next_serial.set(serial);
        let mut r = self.inner.requests.borrow_mut();
        let key = r.links.insert(Meta {
            serial,
            status: LinkStatus::Connecting,
            staged: Vec::new(),
        }) as u32;
        let id = LinkId { key, serial };
        r.connects.push(Connect {
            id,
            to,
            options,
            client: Box::new(client),
            seq: self.next_seq(),
        });
        self.inner.asked.set(true);
        id
    }

    /// Where `link` is.
    pub fn status(&self, link: LinkId) -> LinkStatus {
        let r = self.inner.requests.borrow();
        match r.links.get(link.key as usize) {
            Some(m) if m.serial == link.serial => m.status,
            _ => LinkStatus::Closed,
        }
    }

    /// Appends bytes to the link's output, sent at the end of this turn (after what
    /// its own callbacks wrote). Refused unless the link is [`LinkStatus::Up`].
    pub fn write(&self, link: LinkId, bytes: &[u8]) -> Result<(), LinkError> {
        self.write_with(link, |out| out.extend_from_slice(bytes))
    }

    /// Like [`write`](Local::write), for encoders that append to the output in place.
    pub fn write_with(&self, link: LinkId, f: impl FnOnce(&mut Vec<u8>)) -> Result<(), LinkError> {
        let mut r = self.inner.requests.borrow_mut();
        let Requests { links, written, .. } = &mut *r;
        let meta = match links.get_mut(link.key as usize) {
            Some(m) if m.serial == link.serial => m,
            _ => return Err(LinkError::Closed),
        };
        match meta.status {
            LinkStatus::Up => {}
            LinkStatus::Connecting | LinkStatus::Down => return Err(LinkError::NotConnected),
            LinkStatus::Closed => return Err(LinkError::Closed),
        }
        if meta.staged.is_empty() {
            written.push(link.key);
        }
        f(&mut meta.staged);
        self.inner.asked.set(true);
        Ok(())
    }

    /// Closes the link for good: its output is sent first, no reconnect follows;
    /// [`Outbound::on_down`] is told (with no retry) once its socket is closed.
    pub fn close(&self, link: LinkId) {
        if self.mark_closing(link) {
            self.inner.requests.borrow_mut().closes.push(link);
            self.inner.asked.set(true);
        }
    }

    /// Posts `msg` to a connection of this worker
    /// ([`Handler::on_conn_message`](crate::Handler::on_conn_message)), delivered at
    /// the end of this turn without going through the mailbox's channel. A connection
    /// that is gone by then gets it back as
    /// [`Handler::on_undelivered`](crate::Handler::on_undelivered).
    pub fn post(&self, to: ConnAddr, msg: M) -> Result<(), PostError<M>> {
        if to.worker() != self.inner.worker {
            return Err(PostError::WrongWorker(msg));
        }
        self.inner.requests.borrow_mut().posts.push((to, msg));
        self.inner.asked.set(true);
        Ok(())
    }

    /// Marks the link closing (writes are refused from now on). False if it already
    /// was, or is gone.
    pub(crate) fn mark_closing(&self, link: LinkId) -> bool {
        let mut r = self.inner.requests.borrow_mut();
        match r.links.get_mut(link.key as usize) {
            Some(m) if m.serial == link.serial && m.status != LinkStatus::Closed => {
                m.status = LinkStatus::Closed;
                true
            }
            _ => false,
        }
    }

    /// The next number in the worker's order of registration.
    pub(crate) fn next_seq(&self) -> u64 {
        let seq = self.inner.seq.get() + 1;
        self.inner.seq.set(seq);
        seq
    }

    /// Whether anything was asked since the last [`take`](Local::take).
    #[inline]
    pub(crate) fn asked(&self) -> bool {
        self.inner.asked.get()
    }

    /// Runs `f` on the requests (the engine takes them); the flag is cleared first, so
    /// requests made inside `f`'s callees are seen by the next look.
    pub(crate) fn take<R>(&self, f: impl FnOnce(&mut Requests<M>) -> R) -> R {
        self.inner.asked.set(false);
        f(&mut self.inner.requests.borrow_mut())
    }

    /// Sets a link's status as the engine sees it (a link already marked closing stays
    /// closed).
    pub(crate) fn set_status(&self, link: LinkId, status: LinkStatus) {
        let mut r = self.inner.requests.borrow_mut();
        if let Some(m) = r.links.get_mut(link.key as usize)
            && m.serial == link.serial
            && (m.status != LinkStatus::Closed || status == LinkStatus::Closed)
        {
            m.status = status;
            if status != LinkStatus::Up {
                m.staged.clear();
            }
        }
    }

    /// The link is gone: its slot may be reused.
    pub(crate) fn forget(&self, link: LinkId) {
        let mut r = self.inner.requests.borrow_mut();
        if r.links
            .get(link.key as usize)
            .is_some_and(|m| m.serial == link.serial)
        {
            r.links.remove(link.key as usize);
        }
    }
}
