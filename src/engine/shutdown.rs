//! The engine's side of the drain: turns signals and wake-ups into inputs of the drain
//! state machine ([`crate::drain`]) and carries out the steps it returns on the
//! connections, the accept and the registered resources.

use std::time::{Duration, Instant};

use super::conn::NO_LINK;
use super::{Callback, Engine, Note, Resource, after_handler, contain, guarded};
use crate::contract::{BacklogEnd, ConnRef, Intents};
use crate::drain::{Input, Phase, Steps};
use crate::handler::{CloseReason, Handler, Teardown};
use crate::outbound::LinkId;
use crate::shared::Trigger;
use crate::stats::WorkerDrain;

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
            forced: self.drain.forced(),
            ..self.drain_counts.clone()
        }
    }

    /// A shutdown signal: the first starts the drain, a later one forces it.
    pub(super) fn on_signal(&mut self, signo: i32, q: &mut impl Intents) {
        if let Some(name) = Trigger::ignored_signal(signo) {
            self.notes.push(Note::SignalIgnored { name });
            return;
        }
        let trigger = Trigger::from_signal(signo);
        let now = self.linger.now;
        if !self.shared.draining() {
            // The drain's clock starts when the process received the signal, not when
            // a busy worker got to read it.
            if self.shared.begin(trigger, self.happened_at_least_since()) {
                q.wake_workers();
            }
        } else if self.shared.force(trigger, now) {
            let live = self.shared.live();
            self.notes.push(Note::DrainForced { trigger, live });
            q.wake_workers();
        }
        self.sync_drain(q);
    }

    /// Brings this worker's drain in line with the server's shared state.
    pub(super) fn sync_drain(&mut self, q: &mut impl Intents) {
        let Some(began) = self.shared.began() else {
            return;
        };
        if !self.drain.draining() {
            self.notes.push(Note::DrainBegan {
                trigger: began.trigger,
                open: self.inbound,
                delay: self.limits.drain_delay,
            });
            let steps = self.drain.on(Input::Begin {
                now: began.at,
                delay: self.limits.drain_delay,
                grace: self.limits.grace_period,
            });
            self.apply(steps, q);
            // The readiness delay or the deadline may already be due.
            self.tick(self.linger.now.max(began.at), q);
        }
        if self.shared.forced() && !self.drain.forced() {
            let steps = self.drain.on(Input::Force {
                now: self.linger.now,
            });
            self.apply(steps, q);
        }
    }

    pub(super) fn tick(&mut self, now: Instant, q: &mut impl Intents) {
        let steps = self.drain.on(Input::Tick { now });
        self.apply(steps, q);
    }

    fn apply(&mut self, steps: Steps, q: &mut impl Intents) {
        let Steps {
            stop_accepting,
            notify_connections,
            abort_connections,
            teardown,
        } = steps;
        if stop_accepting {
            self.stop_accepting(q);
        }
        if notify_connections {
            self.notify_connections(q);
        }
        if abort_connections {
            self.abort_connections(q);
            if self.acceptor.backlog_waiting {
                self.finish_stop_accepting(q); // forced: the queue is given up on
            }
            if self.drain.tearing_down() {
                self.cut_links(q);
            }
        }
        if teardown {
            self.begin_teardown(q);
        }
        self.check_drained(q);
    }

    fn stop_accepting(&mut self, q: &mut impl Intents) {
        self.acceptor.retry_at = None;
        if self.acceptor.armed {
            q.cancel_accept(); // its last completion finishes the stop
        } else {
            self.finish_stop_accepting(q);
        }
    }

    /// The accept is no longer in flight: serve the backlog, close the listener. Out of
    /// descriptors, the listener stays open with its queue while the open connections
    /// are told of the drain (the idle ones close, freeing descriptors), and the backlog
    /// is taken again as connections close (and on a timer), until it is empty or the
    /// drain is forced; what is then still queued is counted as aborted.
    pub(super) fn finish_stop_accepting(&mut self, q: &mut impl Intents) {
        if self.acceptor.listener_closed {
            return;
        }
        let mut backlog = Vec::new();
        let end = q.close_listener_now(&mut backlog, self.drain.forced());
        self.acceptor.from_backlog += backlog.len();
        for fd in backlog {
            self.on_accepted(fd, q);
        }
        match end {
            BacklogEnd::Waiting(errno) => {
                if !self.acceptor.backlog_waiting {
                    self.acceptor.backlog_waiting = true;
                    self.notes.push(Note::BacklogWaiting {
                        errno,
                        open: self.inbound,
                    });
                }
                self.notify_connections(q);
                let retry = self.limits.backoff_max.min(Duration::from_millis(100));
                self.acceptor.retry_at = Some(crate::clock::after(self.linger.now, retry));
                return;
            }
            BacklogEnd::Closed => {}
            BacklogEnd::GaveUp { errno, lost } => {
                self.drain_counts.aborted += lost as u64;
                self.notes.push(Note::BacklogStopped { errno, lost });
            }
        }
        self.acceptor.listener_closed = true;
        self.acceptor.backlog_waiting = false;
        self.acceptor.retry_at = None;
        let from_backlog = self.acceptor.from_backlog;
        self.notes.push(Note::AcceptStopped {
            from_backlog,
            open: self.inbound,
        });
        let steps = self.drain.on(Input::AcceptStopped {
            now: self.linger.now,
        });
        self.apply(steps, q);
    }

    /// Tells every open connection the drain began. The handler decides: by default a
    /// connection closes once its output is flushed (at once when it is idle).
    fn notify_connections(&mut self, q: &mut impl Intents) {
        let turn = self.turn;
        let mut now = Vec::with_capacity(self.inbound);
        for (_, c) in self.conns.iter() {
            if c.link != NO_LINK {
                continue; // links serve on until the teardown
            }
            if c.born_turn == turn {
                self.drain_later.push(c.conn_ref());
            } else {
                now.push(c.conn_ref());
            }
        }
        self.notify(&now, q);
    }

    /// Tells the connections deferred from an earlier turn.
    pub(super) fn notify_later(&mut self, q: &mut impl Intents) {
        let turn = self.turn;
        let (due, wait): (Vec<ConnRef>, Vec<ConnRef>) = self.drain_later.drain(..).partition(|r| {
            self.conns
                .get(r.key as usize)
                .is_none_or(|c| c.born_turn < turn)
        });
        self.drain_later = wait;
        self.notify(&due, q);
    }

    fn notify(&mut self, conns: &[ConnRef], q: &mut impl Intents) {
        let reason = CloseReason::Shutdown;
        for &r in conns {
            let Some(c) = self
                .conns
                .get_mut(r.key as usize)
                .filter(|c| c.generation == r.generation)
            else {
                continue;
            };
            if c.idle_at_drain.is_some() {
                continue; // told already (while the backlog waited for descriptors)
            }
            c.idle_at_drain = Some(c.is_idle());
            if c.closing != Closing::Open {
                continue;
            }
            let (mut conn, state) =
                c.view(self.worker.index, true, self.linger.now, &mut self.pool);
            let Some(state) = state.as_mut() else {
                continue;
            };
            if let Err(note) = guarded(Callback::Drain, || self.handler.on_drain(state, &mut conn))
            {
                contain(
                    c,
                    *note,
                    &mut self.stats,
                    &mut self.notes,
                    q,
                    &mut self.linger,
                );
            }
            c.file_timer(&mut self.timers);
            after_handler(c, reason, &mut self.flush, q, &mut self.linger);
        }
    }

    /// Closes every remaining connection now.
    fn abort_connections(&mut self, q: &mut impl Intents) {
        let mut cut = 0;
        for (_, c) in self.conns.iter_mut() {
            if c.link == NO_LINK && !matches!(c.closing, Closing::Submitted(_)) {
                c.aborted = true;
                cut += 1;
                c.begin_close(CloseReason::Shutdown, false, q, &mut self.linger);
            }
        }
        if cut > 0 {
            self.notes.push(Note::Cutting { count: cut });
        }
    }

    /// Counts a closed connection in the drain figures.
    pub(super) fn count_drained(&mut self, c: &Connection<H::State>) {
        if c.aborted {
            self.drain_counts.aborted += 1;
        } else if c.idle_at_drain == Some(true) && !c.worked_in_drain {
            // Idle when the drain reached it and nothing came or went since (a request
            // that arrived later, or a deferred answer, makes it a drained one).
            self.drain_counts.closed_idle += 1;
        } else if self.drain.draining() {
            self.drain_counts.drained += 1;
        }
    }

    /// Moves on once the worker's last connection is gone.
    pub(super) fn check_drained(&mut self, q: &mut impl Intents) {
        if self.drain.phase() == Phase::Draining && self.inbound == 0 {
            self.notes.push(Note::LastClosed {
                drained: self.drain_counts.drained,
                idle: self.drain_counts.closed_idle,
                aborted: self.drain_counts.aborted,
            });
            let steps = self.drain.on(Input::ConnectionsGone {
                now: self.linger.now,
            });
            self.apply(steps, q);
        }
    }

    /// The drain reached its teardown: the registered teardowns and the links, in one
    /// list by order of registration, are closed last first.
    fn begin_teardown(&mut self, q: &mut impl Intents) {
        let mut plan: Vec<(u64, Resource)> = std::mem::take(&mut self.worker.teardown)
            .into_iter()
            .map(|(seq, t)| (seq, Resource::Run(t)))
            .collect();
        plan.extend(
            self.links
                .iter()
                .flatten()
                .map(|l| (l.seq, Resource::Link(l.id))),
        );
        plan.sort_by_key(|(seq, _)| *seq);
        let links = self.link_count();
        if links > 0 {
            self.notes.push(Note::ClosingLinks { links });
        }
        self.plan = plan.into_iter().map(|(_, r)| r).collect();
        self.advance_teardown(q);
    }

    /// Moves the teardown on: the teardowns up to the next link are handed to the
    /// worker; a link is closed (with its goodbye, unless the drain was forced) and
    /// waited for.
    pub(super) fn advance_teardown(&mut self, q: &mut impl Intents) {
        if !self.drain.tearing_down() || self.teardown_complete || self.advancing {
            return;
        }
        if self.waiting_link.is_some_and(|id| self.link_exists(id)) || self.teardown_due {
            return;
        }
        self.waiting_link = None;
        self.advancing = true;
        while let Some(step) = self.plan.pop() {
            match step {
                Resource::Run(t) => self.ready.push(t),
                Resource::Link(id) if !self.ready.is_empty() => {
                    self.plan.push(Resource::Link(id)); // after the teardowns before it
                    break;
                }
                Resource::Link(id) => {
                    if self.drain.forced() {
                        self.cut_links(q);
                    } else {
                        self.close_link(id, true, q);
                    }
                    if self.link_exists(id) {
                        self.waiting_link = Some(id);
                        break;
                    }
                }
            }
        }
        self.advancing = false;
        if !self.ready.is_empty() {
            self.teardown_due = true;
        } else if self.plan.is_empty() && self.waiting_link.is_none() {
            self.teardown_complete = true;
        }
    }

    fn link_exists(&self, id: LinkId) -> bool {
        self.links
            .get(id.key as usize)
            .and_then(Option::as_ref)
            .is_some_and(|l| l.id == id)
    }

    /// The teardowns to run now, last registered first. The worker runs them (embedder
    /// code, outside the engine) and then calls [`teardowns_ran`](Engine::teardowns_ran).
    /// `None` until some are due.
    pub fn take_teardowns(&mut self) -> Option<Vec<Teardown>> {
        if !self.teardown_due {
            return None;
        }
        self.teardown_due = false;
        Some(std::mem::take(&mut self.ready))
    }

    /// The teardowns handed out ran (`panics` of them panicked): the teardown goes on.
    pub fn teardowns_ran(&mut self, panics: u64, q: &mut impl Intents) {
        self.stats.teardown_panics += panics;
        self.advance_teardown(q);
    }

    /// Whether everything is torn down: the worker then calls
    /// [`torn_down`](Engine::torn_down).
    pub fn teardown_complete(&self) -> bool {
        self.teardown_complete && !self.is_done()
    }

    /// The worker failed (its backend is gone, its descriptors closed by the driver):
    /// every connection still open is told it closed (`on_close` with an EIO error,
    /// counted as aborted), queued messages come back (`on_undelivered`), and the
    /// teardowns are handed to the worker to run, last registered first.
    pub fn abandon(&mut self) -> Vec<Teardown> {
        let open: Vec<Connection<H::State>> = self.conns.drain().collect();
        for c in open {
            if c.link != NO_LINK {
                continue;
            }
            self.inbound -= 1;
            self.stats.closed += 1;
            self.stats.closed_by.error += 1; // EIO: its backend is gone
            self.drain_counts.aborted += 1;
            self.shared.closed();
            if let Some(state) = c.state {
                let reason = CloseReason::Error(libc::EIO);
                if let Err(note) = guarded(Callback::Close, || self.handler.on_close(state, reason))
                {
                    self.stats.handler_panics += 1;
                    self.notes.push(*note);
                }
            }
        }
        self.abandon_links();
        self.close_mailbox();
        let mut list = std::mem::take(&mut self.worker.teardown);
        list.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        list.into_iter().map(|(_, t)| t).collect()
    }

    /// The worker is done (after its teardown, or after `abandon` with `panics` of its
    /// teardowns panicking).
    pub fn torn_down(&mut self, now: Instant, panics: u64) {
        self.stats.teardown_panics += panics;
        self.drain.on(Input::TornDown { now });
    }
}
