//! The per-core loop, written once for every backend: a [`Runner`] owns one worker's
//! engine and its [`Driver`], and turns the loop.
//!
//! ```text
//!  serve:    loop {
//!              now = clock                          one clock read per turn
//!              turn(now):
//!                engine.begin_turn(now)             timers, lingers, drain deadlines
//!                driver.reap(event -> engine)       completions in; handler calls
//!                engine.end_turn()                  coalesced sends, closes
//!                (reap + end_turn again while the driver has events ready)
//!                driver.publish()                   recycled receive buffers
//!                log the engine's notes; run the teardowns once they are due
//!                (the engine closes the outbound links between them)
//!              until the engine is done
//!              driver.submit_and_wait(next deadline)   the turn's one kernel entry
//!            }
//!  release:  driver.begin_release(abort)           cancel the backend's own reads
//!            reap until nothing is in flight       bounded in time; never spins
//! ```
//!
//! The in-memory backend calls [`Runner::turn`] with its virtual clock; the servers call
//! [`Runner::serve`], then [`Runner::release`]. A driver dropped without a release (a
//! panic unwinding through the loop) cancels and reaps on its own before it frees
//! anything the kernel may touch.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use std::sync::Arc;
#[cfg(feature = "sim")]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "sim")]
use crate::config::Fault;
use crate::contract::{Driver, Intents};
use crate::drain::LOG_TARGET as DRAIN;
use crate::engine::{Engine, Note, panic_message};
use crate::handler::Handler;
use crate::mailbox;
use crate::shared::Shared;
use crate::stats::WorkerReport;

/// Extra reap passes in one turn for events a driver produced during the turn (epoll's
/// writes that completed at once), before it waits again.
const EXTRA_PASSES: usize = 4;
/// The release warns once it has waited this long for the kernel.
const RELEASE_WARN: Duration = Duration::from_secs(1);
/// The release gives up after this long (the driver then leaks what the kernel holds).
const RELEASE_LIMIT: Duration = Duration::from_secs(5);
/// How long one wait of the release may block.
const RELEASE_POLL: Duration = Duration::from_millis(100);

/// One worker's loop: its engine and its backend.
pub(crate) struct Runner<H: Handler, D: Driver> {
    engine: Engine<H>,
    driver: D,
    /// Whether the loop reads the real clock (serving) or is handed a virtual one.
    real_clock: bool,
    /// Workers to wake at the end of the turn (this worker posted into their mailbox).
    wakes: Vec<usize>,
    /// Test hook: the serving loop meets the fault once the flag is set.
    #[cfg(feature = "sim")]
    fault: Option<(Fault, Arc<AtomicBool>)>,
}

impl<H: Handler, D: Driver> Runner<H, D> {
    /// Starts the engine on the driver (arms accepting, unless the server is draining).
    pub fn new(mut engine: Engine<H>, mut driver: D) -> Runner<H, D> {
        driver.with_queue(|q| engine.start(q));
        Runner {
            engine,
            driver,
            real_clock: false,
            wakes: Vec::new(),
            #[cfg(feature = "sim")]
            fault: None,
        }
    }

    /// Makes the serving loop meet `fault` once `flag` is set (for tests).
    #[cfg(feature = "sim")]
    pub fn inject_fault(&mut self, fault: Fault, flag: Arc<AtomicBool>) {
        self.fault = Some((fault, flag));
    }

    /// The engine.
    #[cfg(feature = "sim")]
    pub fn engine(&self) -> &Engine<H> {
        &self.engine
    }

    /// The driver.
    #[cfg(feature = "sim")]
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The driver, to change (the in-memory backend's peers act through it).
    #[cfg(feature = "sim")]
    pub fn driver_mut(&mut self) -> &mut D {
        &mut self.driver
    }

    /// One loop turn at `now`, without the wait. Returns how many events it reaped.
    pub fn turn(&mut self, now: Instant) -> usize {
        let Runner { engine, driver, .. } = self;
        let mut events = 0;
        mailbox::begin_batch();
        driver.with_queue(|q| engine.begin_turn(now, q));
        driver.reap(|event, q| {
            events += 1;
            engine.handle(event, q);
        });
        driver.with_queue(|q| {
            events += engine.deliver_messages(q);
            engine.end_turn(q);
        });
        for _ in 0..EXTRA_PASSES {
            if !driver.has_ready() {
                break;
            }
            driver.reap(|event, q| {
                events += 1;
                engine.handle(event, q);
            });
            driver.with_queue(|q| engine.end_turn(q));
        }
        driver.publish();
        self.after_turn(now);
        self.engine.publish(); // the turn's counters, for the metrics' readers
        // Workers this turn's handlers posted to (teardowns included): one wake-up each,
        // through the ring; posts after this point wake their targets directly.
        mailbox::end_batch(&mut self.wakes);
        if !self.wakes.is_empty() {
            let wakes = &mut self.wakes;
            self.driver.with_queue(|q| {
                for j in wakes.drain(..) {
                    q.wake_worker(j);
                }
            });
        }
        events
    }

    /// Logs what the engine noted, and runs the teardowns once the drain reached them.
    fn after_turn(&mut self, now: Instant) {
        let index = self.engine.index();
        self.engine.drain_notes(|note| log_note(index, note));
        if let Some(teardowns) = self.engine.take_teardowns() {
            let panics = run_teardowns(index, teardowns);
            let Runner { engine, driver, .. } = self;
            driver.with_queue(|q| engine.teardowns_ran(panics, q));
            self.engine.drain_notes(|note| log_note(index, note));
        }
        if self.engine.teardown_complete() {
            let done = if self.real_clock { Instant::now() } else { now };
            self.engine.torn_down(done, 0);
        }
    }

    /// After a failed serve and its release: the handler is told its connections are
    /// gone, queued messages come back, and the teardowns run (closing what the worker
    /// held, as after a drain).
    pub fn abandon(&mut self) {
        let index = self.engine.index();
        let teardowns = self.engine.abandon();
        let panics = run_teardowns(index, teardowns);
        self.engine.torn_down(Instant::now(), panics);
        self.engine.drain_notes(|note| log_note(index, note));
    }

    /// The serving phase: turns until the engine is done. An error from the wait ends
    /// it; the caller then releases with `abort`.
    pub fn serve(&mut self, shared: &Arc<Shared>) -> io::Result<()> {
        self.real_clock = true;
        let index = self.engine.index();
        let _worker_thread = mailbox::enter_worker(shared, index);
        shared.worker_started();
        let notify = shared.notify.as_ref();
        let max_wait = notify.and_then(|n| n.max_wait());
        if let Some(n) = notify {
            n.started(index);
        }
        loop {
            let now = Instant::now();
            self.turn(now);
            if let Some(n) = notify {
                n.beat(index);
                if shared.draining() {
                    n.draining(shared.live());
                }
            }
            if self.engine.is_done() {
                self.engine.close_mailbox();
                return Ok(());
            }
            #[cfg(feature = "sim")]
            if let Some((fault, flag)) = &self.fault
                && flag.load(Ordering::Acquire)
            {
                match fault {
                    Fault::WaitError => {
                        return Err(io::Error::other("injected wait failure (test hook)"));
                    }
                    Fault::Panic => panic!("injected panic in the worker loop (test hook)"),
                }
            }
            let timeout = if self.driver.has_ready() || !self.engine.may_sleep() {
                Some(Duration::ZERO)
            } else {
                self.engine
                    .next_deadline()
                    .map(|at| at.saturating_duration_since(now))
            };
            // Under systemd's watchdog an idle worker still turns (its heartbeat).
            let timeout = match (timeout, max_wait) {
                (Some(t), Some(m)) => Some(t.min(m)),
                (t, m) => t.or(m),
            };
            // Before a wait that may block, the engine learns when it began: a signal
            // seen next was received at the earliest then, if the wait blocked (one
            // clock read per such wait, no arithmetic on the way).
            let blocking = timeout != Some(Duration::ZERO);
            self.engine.waiting_from(blocking.then(Instant::now));
            self.driver.submit_and_wait(timeout)?;
        }
    }

    /// The releasing phase: the backend's own reads are cancelled (with `abort`, every
    /// operation) and every completion still owed is reaped, into the engine unless
    /// aborting. Bounded in time: returns false if the kernel still held operations at
    /// the limit (the driver then leaks their memory instead of freeing it).
    pub fn release(&mut self, abort: bool) -> bool {
        let index = self.engine.index();
        self.driver.begin_release(abort);
        let started = Instant::now();
        let mut warned = false;
        let mut wait_errors = 0u32;
        loop {
            let Runner { engine, driver, .. } = self;
            if abort {
                driver.reap(|_, _| {});
            } else {
                driver.reap(|event, q| engine.handle(event, q));
            }
            driver.publish();
            let left = driver.in_flight();
            if left == 0 {
                return true;
            }
            let waited = started.elapsed();
            if waited >= RELEASE_LIMIT {
                log::warn!(
                    "worker {index}: {left} operations still in flight after {waited:?}; \
                     giving up on them"
                );
                return false;
            }
            if waited >= RELEASE_WARN && !warned {
                warned = true;
                log::warn!("worker {index}: {left} operations still in flight at release");
            }
            if let Err(e) = driver.submit_and_wait(Some(RELEASE_POLL)) {
                wait_errors += 1;
                if wait_errors == 1 {
                    log::warn!("worker {index}: wait failed at release: {e}");
                }
                // The kernel refuses to wait: pause instead of spinning; the time limit
                // above ends the release.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The worker's counters and drain figures.
    pub fn report(&self) -> WorkerReport {
        self.engine.publish(); // the last figures, as the report has them
        WorkerReport {
            stats: self.engine.stats().clone(),
            drain: self.engine.drain_report(),
            failure: None,
        }
    }
}

/// Runs teardowns in the order given, each logged and its panic caught; returns how
/// many panicked.
fn run_teardowns(index: usize, teardowns: Vec<crate::handler::Teardown>) -> u64 {
    let mut panics = 0;
    for (name, close) in teardowns {
        log::info!(target: DRAIN, "worker {index}: teardown {name}");
        if let Err(payload) = catch_unwind(AssertUnwindSafe(close)) {
            panics += 1;
            log::warn!(
                target: DRAIN,
                "worker {index}: teardown {name} panicked: {}",
                panic_message(&*payload)
            );
        }
    }
    panics
}

/// Logs one of the engine's notes as `worker N: ...`: the drain's under
/// `gracering::drain`, the others under this module's target.
fn log_note(index: usize, note: &Note) {
    let target = if note.is_drain() {
        DRAIN
    } else {
        module_path!()
    };
    let level = if note.is_warning() {
        log::Level::Warn
    } else {
        log::Level::Info
    };
    log::log!(target: target, level, "worker {index}: {note}");
}
