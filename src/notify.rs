//! systemd's notification protocol (sd_notify(3)), when `NOTIFY_SOCKET` is set: the
//! messages go through the `sd-notify` crate (one datagram each, abstract or path
//! sockets).
//!
//! ```text
//!  every worker started its loop (accept armed) ── the last one ──▶ READY=1, STATUS=serving
//!  a worker's turn sees the drain begun (first one) ──────────────▶ STOPPING=1, STATUS=
//!  notifier thread, every tick (half the watchdog interval, or 1 s):
//!    serving: WATCHDOG=1 only if every worker's loop turned within the tick
//!             (each worker stamps its heartbeat once per turn and waits at most half a
//!             tick, so an idle worker still turns; a stuck one stops the pings)
//!    draining: STATUS=draining: N connections open, EXTEND_TIMEOUT_USEC=3 ticks
//!             while connections remain (and WATCHDOG=1 under the same rule)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The notifier's tick without a watchdog.
const STATUS_TICK: Duration = Duration::from_secs(1);

/// One worker's heartbeat: milliseconds since the epoch at its last turn, alone on its
/// cache line (each worker writes only its own).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Beat(AtomicU64);

/// What the workers and the notifier thread share for systemd's notifications.
#[derive(Debug)]
pub(crate) struct Notify {
    epoch: Instant,
    /// The STATUS= sent with READY=1.
    ready_status: String,
    /// systemd's watchdog interval (`WATCHDOG_USEC`), if it asks for pings.
    pub watchdog: Option<Duration>,
    beats: Box<[Beat]>,
    started: AtomicUsize,
    stopping: AtomicBool,
    done: AtomicBool,
    failed: AtomicBool,
}

impl Notify {
    /// The notifier for `workers` workers, if `NOTIFY_SOCKET` asks for one.
    pub fn from_env(workers: usize, ready_status: String) -> Option<Notify> {
        std::env::var_os("NOTIFY_SOCKET")?;
        Some(Notify {
            epoch: Instant::now(),
            ready_status,
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            beats: (0..workers).map(|_| Beat::default()).collect(),
            started: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            done: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        })
    }

    /// How often the notifier looks (half the watchdog interval, as sd_notify(3)
    /// recommends).
    pub fn tick(&self) -> Duration {
        self.watchdog.map_or(STATUS_TICK, |w| w / 2)
    }

    /// The longest a worker may wait in the kernel, so that an idle worker still turns
    /// within the tick.
    pub fn max_wait(&self) -> Option<Duration> {
        self.watchdog.map(|_| self.tick() / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            log::warn!("sd_notify: {e} (further failures not logged)");
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Worker `index` armed its accept and starts turning; the last one says READY.
    pub fn started(&self, index: usize) {
        self.beat(index);
        if self.started.fetch_add(1, Ordering::AcqRel) + 1 == self.beats.len() {
            let status = NotifyState::Status(&self.ready_status);
            self.send(&[NotifyState::Ready, status]);
        }
    }

    /// Worker `index` turned its loop.
    #[inline]
    pub fn beat(&self, index: usize) {
        if let Some(b) = self.beats.get(index) {
            b.0.store(self.now_ms().max(1), Ordering::Relaxed);
        }
    }

    /// A worker saw the drain begun: the first says STOPPING.
    pub fn draining(&self, live: u64) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            let status = format!("draining: {live} connections open");
            self.send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
        }
    }

    /// The workers have all stopped: the notifier thread ends.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Whether every worker's loop turned within `within`.
    fn all_turning(&self, within: Duration) -> bool {
        let now = self.now_ms();
        let limit = within.as_millis() as u64;
        self.started.load(Ordering::Acquire) == self.beats.len()
            && self.beats.iter().all(|b| {
                let at = b.0.load(Ordering::Relaxed);
                at > 0 && now.saturating_sub(at) <= limit
            })
    }

    /// The notifier thread's loop: until [`finish`](Notify::finish), every tick.
    /// `live` reads the connections open across the workers; `draining` whether the
    /// drain has begun.
    pub fn run(&self, live: impl Fn() -> u64, draining: impl Fn() -> bool) {
        const NAP: Duration = Duration::from_millis(20);
        let tick = self.tick();
        let mut next = Instant::now() + tick;
        while !self.done.load(Ordering::Acquire) {
            std::thread::sleep(NAP.min(tick));
            if Instant::now() < next {
                continue;
            }
            next += tick;
            let turning = self.watchdog.is_some() && self.all_turning(tick);
            let mut states = Vec::with_capacity(3);
            let status;
            if turning {
                states.push(NotifyState::Watchdog);
            }
            if draining() {
                let open = live();
                status = format!("draining: {open} connections open");
                states.push(NotifyState::Status(&status));
                if open > 0 {
                    let extend = (tick * 3).as_micros().min(u32::MAX as u128) as u32;
                    states.push(NotifyState::ExtendTimeoutUsec(extend));
                }
            }
            if !states.is_empty() {
                self.send(&states);
            }
        }
    }
}
