//! The mailbox: messages from any thread into one worker, for the work a handler cannot
//! finish inside a callback (a database query on a pool thread, a call to another
//! worker, a heavy computation).
//!
//! ```text
//!  any thread ── Mailbox::post / post_to ──▶ bounded channel (crossbeam) of worker k
//!                   │  first message of a batch only (the `awake` flag):
//!                   ├─ from a plain thread: eventfd write ──▶ the eventfd read armed
//!                   │                                          in worker k's ring
//!                   └─ from another worker: IORING_OP_MSG_RING, queued in that
//!                      worker's own ring at the end of its turn (epoll: the eventfd)
//!  worker k, each turn: drains the channel into Handler::on_message (to the worker) or
//!  Handler::on_conn_message (to one connection, checked by its serial: a closed or
//!  reused slot gets Handler::on_undelivered instead)
//! ```
//!
//! The worker keeps `awake` set while it turns and clears it only before it sleeps (and
//! then looks at the channel once more), so a message posted while it is awake costs no
//! syscall at all.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::shared::Shared;

/// The address of one connection, for messages: its worker, its slot and the serial
/// the connection got when it was accepted (never reused), so a message for a
/// connection that has closed never reaches the one that took its slot. It also carries
/// a tag of the handler's choosing, handed back with the message (HTTP uses it to tell
/// which request an answer is for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnAddr {
    pub(crate) worker: u32,
    pub(crate) key: u32,
    pub(crate) serial: u64,
    pub(crate) tag: u64,
}

impl ConnAddr {
    /// The index of the worker that owns the connection.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }

    /// The same address with another tag.
    pub fn with_tag(self, tag: u64) -> ConnAddr {
        ConnAddr { tag, ..self }
    }

    /// The tag ([`Conn::addr`](crate::Conn::addr) gives 0).
    pub fn tag(&self) -> u64 {
        self.tag
    }
}

/// A message on its way: to the worker, or to one of its connections.
pub(crate) struct Envelope<M> {
    pub to: Option<ConnAddr>,
    pub msg: M,
}

/// Why a message was not posted. The message comes back, so nothing it carries is lost.
pub enum PostError<M> {
    /// The worker's mailbox is full ([`Builder::mailbox_capacity`](crate::Builder::mailbox_capacity)):
    /// the worker is behind; try later or answer the request otherwise.
    Full(M),
    /// The worker has stopped (its drain finished); nothing will read the message.
    Closed(M),
    /// The address names a connection of another worker than this mailbox's.
    WrongWorker(M),
}

impl<M> PostError<M> {
    /// The message that was not posted.
    pub fn into_inner(self) -> M {
        match self {
            PostError::Full(m) | PostError::Closed(m) | PostError::WrongWorker(m) => m,
        }
    }
}

impl<M> fmt::Debug for PostError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PostError::Full(_) => "PostError::Full(..)",
            PostError::Closed(_) => "PostError::Closed(..)",
            PostError::WrongWorker(_) => "PostError::WrongWorker(..)",
        })
    }
}

impl<M> fmt::Display for PostError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PostError::Full(_) => "the worker's mailbox is full",
            PostError::Closed(_) => "the worker has stopped",
            PostError::WrongWorker(_) => "the connection belongs to another worker",
        })
    }
}

impl<M> std::error::Error for PostError<M> {}

/// The sending side of one worker's mailbox, shared by every [`Mailbox`] clone.
struct Door<M> {
    tx: Sender<Envelope<M>>,
    /// The most messages the mailbox holds (checked before each post: concurrent
    /// posters can overshoot it by one message each).
    capacity: usize,
    worker: usize,
    /// Set while the worker turns (it looks at the channel before it sleeps), or while a
    /// wake-up is on its way: a post that finds it set needs no syscall.
    awake: Arc<AtomicBool>,
    /// Messages posted and not yet taken: the capacity check, and the worker's one-load
    /// test of whether anything waits.
    queued: Arc<AtomicUsize>,
    /// Set once the worker stopped reading: posts fail with `Closed` from then on.
    closed: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

/// A handle to post messages of the handler's type `M` into one worker, from any thread.
/// Cheap to clone (`Send + Sync`); get one from [`Worker::mailbox`](crate::Worker::mailbox).
///
/// ```no_run
/// use gracering::{Conn, ConnAddr, Handler, Mailbox, Server, Worker};
///
/// /// Counts lines; a thread of its own reports the count back into the worker.
/// struct Counter {
///     lines: u64,
///     mailbox: Mailbox<u64>,
/// }
///
/// impl Handler for Counter {
///     type State = ();
///     type Message = u64;
///     fn on_open(&mut self, _: &mut Conn<'_>) {}
///     fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
///         self.lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
///         let (mailbox, addr, seen) = (self.mailbox.clone(), conn.addr(), self.lines);
///         std::thread::spawn(move || {
///             // Work off the loop, then answer that very connection.
///             let _ = mailbox.post_to(addr, seen);
///         });
///         data.len()
///     }
///     fn on_conn_message(&mut self, _: &mut (), conn: &mut Conn<'_>, _to: ConnAddr, seen: u64) {
///         conn.write(format!("{seen} lines so far\n").as_bytes());
///     }
/// }
///
/// # fn main() -> std::io::Result<()> {
/// let server = Server::builder().bind()?;
/// server.run(|worker: &mut Worker<u64>| Counter { lines: 0, mailbox: worker.mailbox() })?;
/// # Ok(()) }
/// ```
pub struct Mailbox<M> {
    door: Arc<Door<M>>,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Mailbox<M> {
        Mailbox {
            door: self.door.clone(),
        }
    }
}

impl<M> fmt::Debug for Mailbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("worker", &self.door.worker)
            .field("queued", &self.door.tx.len())
            .finish()
    }
}

impl<M> Mailbox<M> {
    /// Posts a message to the worker itself ([`Handler::on_message`](crate::Handler::on_message)).
    /// Never blocks: a full mailbox gives the message back at once.
    pub fn post(&self, msg: M) -> Result<(), PostError<M>> {
        self.send(Envelope { to: None, msg })
    }

    /// Posts a message to one connection of this worker
    /// ([`Handler::on_conn_message`](crate::Handler::on_conn_message)); if that
    /// connection has closed by the time the worker reads it, the handler gets it back
    /// in [`Handler::on_undelivered`](crate::Handler::on_undelivered).
    pub fn post_to(&self, to: ConnAddr, msg: M) -> Result<(), PostError<M>> {
        if to.worker() != self.door.worker {
            return Err(PostError::WrongWorker(msg));
        }
        self.send(Envelope { to: Some(to), msg })
    }

    /// The server's shared state (the metrics reach it through the worker).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.door.shared
    }

    /// The index of the worker this mailbox reaches.
    pub fn worker(&self) -> usize {
        self.door.worker
    }

    /// Messages waiting in the mailbox now.
    pub fn len(&self) -> usize {
        self.door.queued.load(Ordering::Relaxed)
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn send(&self, envelope: Envelope<M>) -> Result<(), PostError<M>> {
        if self.door.closed.load(Ordering::Acquire) {
            return Err(PostError::Closed(envelope.msg));
        }
        let queued = &self.door.queued;
        if queued.fetch_add(1, Ordering::AcqRel) >= self.door.capacity {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(PostError::Full(envelope.msg));
        }
        let refused = match self.door.tx.try_send(envelope) {
            Ok(()) => None,
            Err(TrySendError::Full(e)) => Some(PostError::Full(e.msg)),
            Err(TrySendError::Disconnected(e)) => Some(PostError::Closed(e.msg)),
        };
        if let Some(refused) = refused {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(refused);
        }
        // Pairs with the worker's fence between clearing `awake` and its last look at
        // the channel: either it sees this message, or this sees `awake` cleared.
        fence(Ordering::SeqCst);
        if !self.door.awake.swap(true, Ordering::AcqRel) {
            wake(&self.door.shared, self.door.worker);
        }
        Ok(())
    }
}

thread_local! {
    /// On a worker thread: its server and index, and the workers its handlers posted to
    /// during the current turn (woken through the ring at the end of the turn).
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
    /// Whether `CURRENT` holds wake-ups to send: the one load the end of a turn pays.
    static HAS_WAKES: Cell<bool> = const { Cell::new(false) };
    /// Whether a worker's turn is under way on this thread (it sends the batch at its
    /// end); outside a turn a post wakes its target at once.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
}

struct Current {
    shared: Arc<Shared>,
    index: usize,
    wakes: Vec<usize>,
}

/// Wakes worker `worker`: through the calling worker's ring when the caller is another
/// worker of the same server (batched until the end of its turn), else its eventfd.
fn wake(shared: &Arc<Shared>, worker: usize) {
    let batched = BATCHING.with(Cell::get)
        && CURRENT.with(|c| match c.borrow_mut().as_mut() {
            Some(cur) if Arc::ptr_eq(&cur.shared, shared) && cur.index != worker => {
                if !cur.wakes.contains(&worker) {
                    cur.wakes.push(worker);
                }
                HAS_WAKES.with(|h| h.set(true));
                true
            }
            _ => false,
        });
    if !batched && let Some(waker) = shared.wakers.get(worker) {
        waker.wake();
    }
}

/// Marks the calling thread as worker `index` of `shared`'s server (for the batching of
/// wake-ups between workers); cleared when the guard drops.
pub(crate) fn enter_worker(shared: &Arc<Shared>, index: usize) -> WorkerThread {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            shared: shared.clone(),
            index,
            wakes: Vec::new(),
        })
    });
    WorkerThread(())
}

/// The worker's turn begins: wake-ups its handlers cause wait for the end of the turn.
#[inline]
pub(crate) fn begin_batch() {
    BATCHING.with(|b| b.set(true));
}

/// Clears the worker mark of the thread when dropped.
pub(crate) struct WorkerThread(());

impl Drop for WorkerThread {
    fn drop(&mut self) {
        // A batch left over (the loop unwound mid-turn) goes out through the eventfds.
        let left = CURRENT.with(|c| c.borrow_mut().take());
        HAS_WAKES.with(|h| h.set(false));
        BATCHING.with(|b| b.set(false));
        if let Some(cur) = left {
            for &worker in &cur.wakes {
                if let Some(waker) = cur.shared.wakers.get(worker) {
                    waker.wake();
                }
            }
        }
    }
}

/// The turn is over: the workers its handlers posted to, to wake through the ring
/// (posts from now until the next turn wake their targets at once).
#[inline]
pub(crate) fn end_batch(into: &mut Vec<usize>) {
    BATCHING.with(|b| b.set(false));
    if !HAS_WAKES.with(Cell::get) {
        return;
    }
    HAS_WAKES.with(|h| h.set(false));
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            into.append(&mut cur.wakes);
        }
    });
}

/// The receiving side, owned by the worker's engine.
pub(crate) struct Inbox<M> {
    rx: Receiver<Envelope<M>>,
    awake: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

impl<M> Inbox<M> {
    /// The next message, if one waits.
    #[inline]
    pub fn try_take(&self) -> Option<Envelope<M>> {
        if self.queued.load(Ordering::Acquire) == 0 {
            return None; // nothing posted: one load, no channel access
        }
        let envelope = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(envelope)
    }

    /// Before the worker sleeps: clears `awake`, then looks once more. Returns true when
    /// messages wait (then `awake` is set again and the worker must not sleep long).
    pub fn may_sleep(&self) -> bool {
        if self.rx.is_empty() {
            self.awake.store(false, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.rx.is_empty() {
                return true;
            }
        }
        self.awake.store(true, Ordering::SeqCst);
        false
    }

    /// The worker stops reading: later posts fail with `Closed` (what is queued is
    /// still taken by the caller).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The worker woke: posts need no wake-up until it sleeps again.
    #[inline]
    pub fn set_awake(&self) {
        if !self.awake.load(Ordering::Relaxed) {
            self.awake.store(true, Ordering::Relaxed);
        }
    }
}

/// A worker's mailbox, both sides: the handle the factory hands out and the inbox the
/// engine reads.
pub(crate) fn channel<M>(
    shared: Arc<Shared>,
    worker: usize,
    capacity: usize,
) -> (Mailbox<M>, Inbox<M>) {
    // Unbounded underneath (it grows in blocks as messages come, where a bounded channel
    // would allocate every slot up front), bounded by the length check in `send`.
    let (tx, rx) = crossbeam_channel::unbounded();
    let awake = Arc::new(AtomicBool::new(true));
    let queued = Arc::new(AtomicUsize::new(0));
    if let Some(slot) = shared.slots.get(worker) {
        let _ = slot.mailbox.set(queued.clone()); // its depth, for the metrics
    }
    let closed = Arc::new(AtomicBool::new(false));
    let door = Door {
        tx,
        capacity: capacity.max(1),
        worker,
        awake: awake.clone(),
        queued: queued.clone(),
        closed: closed.clone(),
        shared,
    };
    (
        Mailbox {
            door: Arc::new(door),
        },
        Inbox {
            rx,
            awake,
            queued,
            closed,
        },
    )
}
