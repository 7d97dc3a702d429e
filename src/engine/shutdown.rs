//! The engine's side of the drain: turns signals and wake-ups into inputs of the drain
//! state machine ([`crate::drain`]) and carries out the steps it returns on the
//! connections, the accept and the registered resources.

use std::time::Instant;

use super::{Engine, after_handler};
use crate::drain::{Input, Phase, Steps};
use crate::handler::{CloseReason, Handler};
use crate::log;
use crate::shared::Trigger;
use crate::stats::WorkerDrain;
use crate::sys::{ConnRef, Ops};

use super::conn::{Closing, Connection};

impl<H: Handler> Engine<H> {
    /// Whether this worker has finished: drained, torn down, ready to release its ring.
    pub fn is_done(&self) -> bool {
        self.drain.phase() == Phase::Done
    }

    /// This worker's drain figures, times measured from when the drain began.
    pub fn drain_report(&self) -> WorkerDrain {
        let (began, accept_stopped, finished) = self.drain.timeline();
        let since = |t: Option<Instant>| Some(t?.saturating_duration_since(began?));
        WorkerDrain {
            accept_stopped_after: since(accept_stopped),
            finished_after: since(finished),
            ..self.drain_counts.clone()
        }
    }

    /// A shutdown signal: the first starts the drain, a later one forces it.
    pub(super) fn on_signal(&mut self, signo: i32, ops: &mut impl Ops) {
        let trigger = Trigger::from_signal(signo);
        if !self.shared.draining() {
            if self.shared.begin(trigger) {
                log::info(format_args!(
                    "worker {}: {} received, draining {} connections",
                    self.worker.index,
                    trigger.as_str(),
                    self.shared.live()
                ));
                ops.wake_workers();
            }
        } else if self.shared.force(trigger) {
            log::info(format_args!(
                "worker {}: second {}, closing {} connections now",
                self.worker.index,
                trigger.as_str(),
                self.shared.live()
            ));
            ops.wake_workers();
        }
        self.sync_drain(ops);
    }

    /// Brings this worker's drain in line with the server's shared state.
    pub(super) fn sync_drain(&mut self, ops: &mut impl Ops) {
        let Some(began) = self.shared.began() else {
            return;
        };
        if !self.drain.draining() {
            let steps = self.drain.on(Input::Begin {
                now: began.at,
                delay: self.limits.drain_delay,
                grace: self.limits.grace_period,
            });
            self.apply(steps, ops);
            // The readiness delay or the deadline may already be due.
            self.tick(self.linger.now.max(began.at), ops);
        }
        if self.shared.forced() && !self.drain.forced() {
            let steps = self.drain.on(Input::Force {
                now: self.linger.now,
            });
            self.apply(steps, ops);
        }
    }

    pub(super) fn tick(&mut self, now: Instant, ops: &mut impl Ops) {
        let steps = self.drain.on(Input::Tick { now });
        self.apply(steps, ops);
    }

    fn apply(&mut self, steps: Steps, ops: &mut impl Ops) {
        let Steps {
            stop_accepting,
            notify_connections,
            abort_connections,
            teardown,
        } = steps;
        if stop_accepting {
            self.stop_accepting(ops);
        }
        if notify_connections {
            self.notify_connections(ops);
        }
        if abort_connections {
            self.abort_connections(ops);
        }
        if teardown {
            self.teardown();
        }
        self.check_drained(ops);
    }

    fn stop_accepting(&mut self, ops: &mut impl Ops) {
        self.acceptor.retry_at = None;
        if self.acceptor.armed {
            ops.cancel_accept(); // its last completion finishes the stop
        } else {
            self.finish_stop_accepting(ops);
        }
    }

    /// The accept is no longer in flight: serve the backlog, close the listener.
    pub(super) fn finish_stop_accepting(&mut self, ops: &mut impl Ops) {
        if self.acceptor.listener_closed {
            return;
        }
        self.acceptor.listener_closed = true;
        let mut backlog = Vec::new();
        if let Some(errno) = ops.close_listener(&mut backlog) {
            log::warn(format_args!(
                "worker {}: backlog accept stopped early: {}",
                self.worker.index,
                std::io::Error::from_raw_os_error(errno)
            ));
        }
        let from_backlog = backlog.len();
        for fd in backlog {
            self.on_accepted(fd, ops);
        }
        log::info(format_args!(
            "worker {}: accept stopped ({from_backlog} from the backlog), {} connections open",
            self.worker.index,
            self.conns.len()
        ));
        let steps = self.drain.on(Input::AcceptStopped {
            now: self.linger.now,
        });
        self.apply(steps, ops);
    }

    /// Tells every open connection the drain began. The handler decides: by default a
    /// connection closes once its output is flushed (at once when it is idle).
    fn notify_connections(&mut self, ops: &mut impl Ops) {
        let turn = self.turn;
        let mut now = Vec::with_capacity(self.conns.len());
        for (_, c) in self.conns.iter() {
            if c.born_turn == turn {
                self.drain_later.push(c.conn_ref());
            } else {
                now.push(c.conn_ref());
            }
        }
        self.notify(&now, ops);
    }

    /// Tells the connections deferred from an earlier turn.
    pub(super) fn notify_later(&mut self, ops: &mut impl Ops) {
        let turn = self.turn;
        let (due, wait): (Vec<ConnRef>, Vec<ConnRef>) = self.drain_later.drain(..).partition(|r| {
            self.conns
                .get(r.key as usize)
                .is_none_or(|c| c.born_turn < turn)
        });
        self.drain_later = wait;
        self.notify(&due, ops);
    }

    fn notify(&mut self, conns: &[ConnRef], ops: &mut impl Ops) {
        let reason = CloseReason::Shutdown;
        for &r in conns {
            let Some(c) = self
                .conns
                .get_mut(r.key as usize)
                .filter(|c| c.generation == r.generation)
            else {
                continue;
            };
            c.idle_at_drain = Some(c.is_idle());
            if c.closing != Closing::Open {
                continue;
            }
            let (mut conn, state) =
                c.handle(self.worker.index, true, self.linger.now, &mut self.pool);
            let Some(state) = state.as_mut() else {
                continue;
            };
            self.handler.on_drain(state, &mut conn);
            c.file_timer(&mut self.timers);
            after_handler(c, reason, &mut self.flush, ops, &mut self.linger);
        }
    }

    /// Closes every remaining connection now.
    fn abort_connections(&mut self, ops: &mut impl Ops) {
        let mut cut = 0;
        for (_, c) in self.conns.iter_mut() {
            if !matches!(c.closing, Closing::Submitted(_)) {
                c.aborted = true;
                cut += 1;
                c.begin_close(CloseReason::Shutdown, false, ops, &mut self.linger);
            }
        }
        if cut > 0 {
            log::warn(format_args!(
                "worker {}: cutting {cut} connections (grace period over or forced)",
                self.worker.index
            ));
        }
    }

    /// Counts a closed connection in the drain figures.
    pub(super) fn count_drained(&mut self, c: &Connection<H::State>) {
        if c.aborted {
            self.drain_counts.aborted += 1;
        } else if c.idle_at_drain == Some(true) {
            self.drain_counts.closed_idle += 1;
        } else if self.drain.draining() {
            self.drain_counts.drained += 1;
        }
    }

    /// Moves on once the worker's last connection is gone.
    pub(super) fn check_drained(&mut self, ops: &mut impl Ops) {
        if self.drain.phase() == Phase::Draining && self.conns.is_empty() {
            log::info(format_args!(
                "worker {}: last connection closed ({} drained, {} idle, {} aborted)",
                self.worker.index,
                self.drain_counts.drained,
                self.drain_counts.closed_idle,
                self.drain_counts.aborted
            ));
            let steps = self.drain.on(Input::ConnectionsGone {
                now: self.linger.now,
            });
            self.apply(steps, ops);
        }
    }

    /// Runs the registered teardowns, last registered first, then finishes.
    fn teardown(&mut self) {
        while let Some((name, close)) = self.worker.teardown.pop() {
            log::info(format_args!(
                "worker {}: teardown {name}",
                self.worker.index
            ));
            close();
        }
        self.drain.on(Input::TornDown {
            now: Instant::now(),
        });
    }
}
