//! What the workers of one server share: the shutdown state, the live-connection count,
//! and the way to wake each worker. Touched only when a connection opens or closes (one
//! relaxed atomic add) and when the drain starts; never per byte or per request.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::metrics::Slot;
use crate::notify::Notify;
use crate::sys::eventfd::EventFd;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const FORCED: u8 = 2;

/// What started the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// SIGTERM arrived.
    Sigterm,
    /// SIGINT arrived.
    Sigint,
    /// SIGQUIT arrived (a graceful stop, as for nginx).
    Sigquit,
    /// [`ShutdownHandle::shutdown`] (or `force`) was called.
    Handle,
    /// A worker failed (its wait on the kernel returned an error, or the engine
    /// panicked): the others drain so that the process ends and can be restarted.
    WorkerFailed,
    /// A new process took over the listening sockets (in-place upgrade).
    Upgrade,
}

impl Trigger {
    pub(crate) fn from_signal(signo: i32) -> Trigger {
        if signo == libc::SIGINT {
            Trigger::Sigint
        } else if signo == libc::SIGQUIT {
            Trigger::Sigquit
        } else {
            Trigger::Sigterm
        }
    }

    /// The name of a signal the server takes but does not act on (SIGHUP, SIGUSR1,
    /// SIGUSR2: their default action would kill the process mid-request).
    pub(crate) fn ignored_signal(signo: i32) -> Option<&'static str> {
        match signo {
            libc::SIGHUP => Some("SIGHUP"),
            libc::SIGUSR1 => Some("SIGUSR1"),
            libc::SIGUSR2 => Some("SIGUSR2"),
            _ => None,
        }
    }

    /// The trigger's name, as the drain report prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Sigterm => "SIGTERM",
            Trigger::Sigint => "SIGINT",
            Trigger::Sigquit => "SIGQUIT",
            Trigger::Handle => "handle",
            Trigger::WorkerFailed => "worker-failed",
            Trigger::Upgrade => "upgrade",
        }
    }
}

/// The moment the drain began, on the clock of whoever began it (a worker's turn clock,
/// or the shutdown handle's caller).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Began {
    pub trigger: Trigger,
    pub at: Instant,
}

/// One worker's wake-up channels: an eventfd (any thread can write it) and, once the
/// worker's ring exists, the ring's fd (other rings reach it with IORING_OP_MSG_RING).
#[derive(Debug)]
pub(crate) struct Waker {
    eventfd: EventFd,
    ring_fd: AtomicI32,
}

impl Waker {
    fn new() -> io::Result<Waker> {
        Ok(Waker {
            eventfd: EventFd::new()?,
            ring_fd: AtomicI32::new(-1),
        })
    }

    /// The eventfd the worker keeps a read in flight on.
    pub fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }

    /// The worker's ring fd, or -1 when it has none (yet, or any more).
    pub fn ring_fd(&self) -> RawFd {
        self.ring_fd.load(Ordering::Acquire)
    }

    /// Publishes (or, with -1, withdraws) the worker's ring fd.
    pub fn set_ring_fd(&self, fd: RawFd) {
        self.ring_fd.store(fd, Ordering::Release);
    }

    /// Wakes the worker through its eventfd.
    pub fn wake(&self) {
        if let Err(e) = self.eventfd.notify() {
            log::warn!("cannot wake a worker through its eventfd: {e}");
        }
    }
}

/// State shared by the workers of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    state: AtomicU8,
    began: OnceLock<Began>,
    live: AtomicU64,
    /// Workers whose loop has started (accept armed).
    started: AtomicUsize,
    pub wakers: Box<[Waker]>,
    /// systemd's notifications, when `NOTIFY_SOCKET` asks for them.
    pub notify: Option<Notify>,
    /// Each worker's live metrics (its own cache lines; only that worker writes them).
    pub slots: Box<[Slot]>,
}

impl Shared {
    pub fn new(workers: usize, notify: Option<Notify>) -> io::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            state: AtomicU8::new(RUNNING),
            began: OnceLock::new(),
            live: AtomicU64::new(0),
            started: AtomicUsize::new(0),
            wakers: (0..workers)
                .map(|_| Waker::new())
                .collect::<io::Result<_>>()?,
            notify,
            slots: (0..workers).map(|_| Slot::new()).collect(),
        }))
    }

    /// Shared state for one simulated worker: no wake-up channels (and no eventfd).
    #[cfg(feature = "sim")]
    pub fn without_wakers() -> Arc<Shared> {
        Arc::new(Shared {
            state: AtomicU8::new(RUNNING),
            began: OnceLock::new(),
            live: AtomicU64::new(0),
            started: AtomicUsize::new(0),
            wakers: Box::new([]),
            notify: None,
            slots: Box::new([Slot::new()]),
        })
    }

    /// Starts the drain at `now`. Returns true for the call that started it.
    pub fn begin(&self, trigger: Trigger, now: Instant) -> bool {
        self.record(trigger, now);
        self.state
            .compare_exchange(RUNNING, DRAINING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Forces the drain (starting it first if needed). Returns true for the call that
    /// forced it.
    pub fn force(&self, trigger: Trigger, now: Instant) -> bool {
        self.record(trigger, now);
        self.state.swap(FORCED, Ordering::AcqRel) != FORCED
    }

    fn record(&self, trigger: Trigger, at: Instant) {
        self.began.get_or_init(|| Began { trigger, at });
    }

    pub fn draining(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }

    pub fn forced(&self) -> bool {
        self.state.load(Ordering::Acquire) == FORCED
    }

    pub fn began(&self) -> Option<Began> {
        self.began.get().copied()
    }

    pub fn opened(&self) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// A worker's loop started (its accept is armed).
    pub fn worker_started(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every worker's loop has started.
    pub fn all_started(&self) -> bool {
        self.started.load(Ordering::Acquire) >= self.wakers.len()
    }

    /// Worker `index`'s metrics.
    #[inline]
    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    /// Wakes every worker through its eventfd (for callers without a ring).
    pub fn wake_all(&self) {
        for waker in self.wakers.iter() {
            waker.wake();
        }
    }
}

/// Starts the drain from any thread: the same sequence as SIGTERM.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// # use gracering::{Conn, Handler, Server};
/// # struct Echo;
/// # impl Handler for Echo {
/// #     type State = ();
/// #     type Message = ();
/// #     fn on_open(&mut self, _: &mut Conn<'_>) {}
/// #     fn on_data(&mut self, _: &mut (), c: &mut Conn<'_>, d: &[u8]) -> usize { c.write(d); d.len() }
/// # }
/// let server = Server::builder().bind()?;
/// let handle = server.shutdown_handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(60));
///     handle.shutdown();
/// });
/// let report = server.run(|_| Echo)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Starts the drain; a second call does nothing (use [`force`](Self::force)).
    pub fn shutdown(&self) {
        if self.shared.begin(Trigger::Handle, Instant::now()) {
            self.shared.wake_all();
        }
    }

    /// Ends the drain now: remaining connections are closed and counted as aborted, as
    /// on a second signal or at the grace deadline.
    pub fn force(&self) {
        if self.shared.force(Trigger::Handle, Instant::now()) {
            self.shared.wake_all();
        }
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.draining()
    }

    /// Connections open across all workers right now.
    pub fn live_connections(&self) -> u64 {
        self.shared.live()
    }
}
