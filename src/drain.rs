//! The drain: how one worker stops without dropping anything.
//!
//! Every worker runs this state machine. It is pure (no I/O, no clock of its own): the
//! engine feeds it [`Input`]s and carries out the [`Steps`] it returns. Read top to
//! bottom, it is the whole shutdown sequence:
//!
//! ```text
//!  signal / handle         drain_delay            accept stopped,        last connection     resources
//!  (first SIGTERM)         elapsed                backlog served         closed              torn down
//!        │                    │                         │                     │                  │
//!  Running ──▶ NotReady ──────┴──▶ StoppingAccept ──────┴──▶ Draining ────────┴──▶ Teardown ─────┴──▶ Done
//!              readiness fails     cancel the accept,       each connection       outbound links and
//!              (503), still        accept the backlog       told (on_drain);      registered resources,
//!              accepting           until EAGAIN, then       idle ones close       reverse order of
//!                                  close the listener       at once (FIN);        registration (a link:
//!                                                           outbound links        goodbye, FIN, wait
//!                                                           serve on              for its close)
//!
//!  grace_period after the signal, or a second signal: every remaining connection is
//!  closed at once and counted as aborted (Force); in the teardown, the links still
//!  open are closed at once.
//! ```
//!
//! The phases only move forward. `Force` can arrive in any phase before `Done`; it
//! never skips stopping the accept or the teardown, it only stops waiting for
//! connections (and, in the teardown, for links to say goodbye).

use std::time::{Duration, Instant};

/// The log target of the drain's lines (its phases, per worker, and the summary).
pub(crate) const LOG_TARGET: &str = module_path!();

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving normally.
    Running,
    /// The drain began: still accepting and serving, but reporting not-ready until the
    /// readiness delay has passed, so load balancers stop routing first.
    NotReady { until: Instant },
    /// The accept is being cancelled; its last completion is awaited.
    StoppingAccept,
    /// The listener is closed; the connections are finishing.
    Draining,
    /// No connection is left; the worker's resources are being torn down.
    Teardown,
    /// Finished: the worker may release its ring and exit.
    Done,
}

/// What happened, as the drain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// The drain was requested (first signal, the shutdown handle, or another worker).
    Begin {
        now: Instant,
        delay: Duration,
        grace: Duration,
    },
    /// Stop waiting: a second signal, or the shutdown handle's `force`.
    Force { now: Instant },
    /// Time passed (the engine's turn clock).
    Tick { now: Instant },
    /// The accept's last completion arrived and the backlog was accepted.
    AcceptStopped { now: Instant },
    /// The worker's last connection closed.
    ConnectionsGone { now: Instant },
    /// The worker's resources were torn down.
    TornDown { now: Instant },
}

/// What the engine must do after an input. Several can be due at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Steps {
    /// Cancel the accept; then accept the backlog and close the listener.
    pub stop_accepting: bool,
    /// Tell every connection the drain began (idle ones close at once).
    pub notify_connections: bool,
    /// Close every remaining connection now, counting it as aborted.
    pub abort_connections: bool,
    /// Tear down the worker's registered resources, in reverse order.
    pub teardown: bool,
}

/// One worker's drain state and its timeline.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    phase: Phase,
    began: Option<Instant>,
    deadline: Option<Instant>,
    forced: bool,
    /// When the accept began to stop (the readiness delay's end).
    stopping: Option<Instant>,
    accept_stopped: Option<Instant>,
    /// When the last connection closed (the teardown began).
    gone: Option<Instant>,
    finished: Option<Instant>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain {
            phase: Phase::Running,
            began: None,
            deadline: None,
            forced: false,
            stopping: None,
            accept_stopped: None,
            gone: None,
            finished: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the drain has begun (readiness must fail from this instant on).
    pub fn draining(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Whether the worker is tearing down (or done): links close, none may open.
    pub fn tearing_down(&self) -> bool {
        matches!(self.phase, Phase::Teardown | Phase::Done)
    }

    /// Whether connections were cut short (deadline or second signal).
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// Whether the accept is stopped (or stopping): new connections are not wanted.
    pub fn accept_closed(&self) -> bool {
        match self.phase {
            Phase::Running | Phase::NotReady { .. } => false,
            Phase::StoppingAccept | Phase::Draining | Phase::Teardown | Phase::Done => true,
        }
    }

    /// The next instant at which a `Tick` changes something.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running | Phase::Done => None,
            Phase::NotReady { until } => Some(until.min(self.deadline?)),
            Phase::StoppingAccept | Phase::Draining | Phase::Teardown => {
                self.deadline.filter(|_| !self.forced)
            }
        }
    }

    /// When the drain began, when the accept stopped, and when the worker finished.
    pub fn timeline(&self) -> (Option<Instant>, Option<Instant>, Option<Instant>) {
        (self.began, self.accept_stopped, self.finished)
    }

    /// When each phase of the drain began: the drain itself (readiness fails), stopping
    /// the accept, draining the connections, the teardown, and the end.
    pub fn milestones(&self) -> [Option<Instant>; 5] {
        [
            self.began,
            self.stopping,
            self.accept_stopped,
            self.gone,
            self.finished,
        ]
    }

    /// Advances the state machine.
    pub fn on(&mut self, input: Input) -> Steps {
        let mut steps = Steps::default();
        match (self.phase, input) {
            (Phase::Running, Input::Begin { now, delay, grace }) => {
                self.began = Some(now);
                self.deadline = Some(crate::clock::after(now, grace));
                if delay.is_zero() {
                    self.phase = Phase::StoppingAccept;
                    self.stopping = Some(now);
                    steps.stop_accepting = true;
                } else {
                    self.phase = Phase::NotReady {
                        until: crate::clock::after(now, delay),
                    };
                }
            }
            (Phase::Running | Phase::NotReady { .. }, Input::Force { now }) => {
                self.began.get_or_insert(now);
                self.phase = Phase::StoppingAccept;
                self.stopping = Some(now);
                self.forced = true;
                steps.stop_accepting = true;
                steps.abort_connections = true;
            }
            (Phase::NotReady { until }, Input::Tick { now }) => {
                if self.deadline.is_some_and(|d| now >= d) {
                    return self.on(Input::Force { now });
                }
                if now >= until {
                    self.phase = Phase::StoppingAccept;
                    self.stopping = Some(now);
                    steps.stop_accepting = true;
                }
            }
            (Phase::StoppingAccept | Phase::Draining | Phase::Teardown, Input::Force { .. }) => {
                self.forced = true;
                steps.abort_connections = true;
            }
            (Phase::StoppingAccept | Phase::Draining | Phase::Teardown, Input::Tick { now }) => {
                if !self.forced && self.deadline.is_some_and(|d| now >= d) {
                    self.forced = true;
                    steps.abort_connections = true;
                }
            }
            (Phase::StoppingAccept, Input::AcceptStopped { now }) => {
                self.accept_stopped = Some(now);
                self.phase = Phase::Draining;
                steps.notify_connections = true;
                steps.abort_connections = self.forced;
            }
            (Phase::Draining, Input::ConnectionsGone { now }) => {
                self.gone = Some(now);
                self.phase = Phase::Teardown;
                steps.teardown = true;
            }
            (Phase::Teardown, Input::TornDown { now }) => {
                self.finished = Some(now);
                self.phase = Phase::Done;
            }
            // Inputs that mean nothing in a phase: a repeated Begin, a Tick with nothing
            // due, connections reaching zero before the accept stopped (more may come
            // from the backlog), anything once tearing down.
            (
                Phase::Running,
                Input::Tick { .. }
                | Input::AcceptStopped { .. }
                | Input::ConnectionsGone { .. }
                | Input::TornDown { .. },
            )
            | (
                Phase::NotReady { .. },
                Input::Begin { .. }
                | Input::AcceptStopped { .. }
                | Input::ConnectionsGone { .. }
                | Input::TornDown { .. },
            )
            | (
                Phase::StoppingAccept,
                Input::Begin { .. } | Input::ConnectionsGone { .. } | Input::TornDown { .. },
            )
            | (
                Phase::Draining,
                Input::Begin { .. } | Input::AcceptStopped { .. } | Input::TornDown { .. },
            )
            | (
                Phase::Teardown,
                Input::Begin { .. } | Input::AcceptStopped { .. } | Input::ConnectionsGone { .. },
            )
            | (
                Phase::Done,
                Input::Begin { .. }
                | Input::Force { .. }
                | Input::Tick { .. }
                | Input::AcceptStopped { .. }
                | Input::ConnectionsGone { .. }
                | Input::TornDown { .. },
            ) => {}
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn begin(d: &mut Drain, now: Instant, delay: Duration) -> Steps {
        d.on(Input::Begin {
            now,
            delay,
            grace: 100 * MS,
        })
    }

    #[test]
    fn clean_drain_without_delay_walks_every_phase_in_order() {
        let t = Instant::now();
        let mut d = Drain::new();
        assert!(!d.draining());
        let s = begin(&mut d, t, Duration::ZERO);
        assert_eq!(
            s,
            Steps {
                stop_accepting: true,
                ..Steps::default()
            }
        );
        assert_eq!(d.phase(), Phase::StoppingAccept);
        assert!(d.draining() && d.accept_closed());
        let s = d.on(Input::AcceptStopped { now: t + MS });
        assert_eq!(
            s,
            Steps {
                notify_connections: true,
                ..Steps::default()
            }
        );
        assert_eq!(d.phase(), Phase::Draining);
        let s = d.on(Input::ConnectionsGone { now: t + 2 * MS });
        assert_eq!(
            s,
            Steps {
                teardown: true,
                ..Steps::default()
            }
        );
        d.on(Input::TornDown { now: t + 3 * MS });
        assert_eq!(d.phase(), Phase::Done);
        assert!(!d.forced());
        assert_eq!(d.timeline(), (Some(t), Some(t + MS), Some(t + 3 * MS)));
    }

    #[test]
    fn readiness_delay_keeps_accepting_until_it_passes() {
        let t = Instant::now();
        let mut d = Drain::new();
        assert_eq!(begin(&mut d, t, 10 * MS), Steps::default());
        assert!(d.draining(), "not ready from the first instant");
        assert!(!d.accept_closed(), "but still accepting");
        assert_eq!(d.next_deadline(), Some(t + 10 * MS));
        assert_eq!(d.on(Input::Tick { now: t + 9 * MS }), Steps::default());
        let s = d.on(Input::Tick { now: t + 10 * MS });
        assert!(s.stop_accepting);
        assert_eq!(
            d.next_deadline(),
            Some(t + 100 * MS),
            "then the grace deadline"
        );
    }

    #[test]
    fn connections_gone_before_the_accept_stopped_is_not_the_end() {
        let t = Instant::now();
        let mut d = Drain::new();
        begin(&mut d, t, Duration::ZERO);
        assert_eq!(d.on(Input::ConnectionsGone { now: t }), Steps::default());
        assert_eq!(
            d.phase(),
            Phase::StoppingAccept,
            "the backlog may still bring some"
        );
    }

    #[test]
    fn the_grace_deadline_aborts_what_is_left_once() {
        let t = Instant::now();
        let mut d = Drain::new();
        begin(&mut d, t, Duration::ZERO);
        d.on(Input::AcceptStopped { now: t });
        assert_eq!(d.on(Input::Tick { now: t + 99 * MS }), Steps::default());
        let s = d.on(Input::Tick { now: t + 100 * MS });
        assert_eq!(
            s,
            Steps {
                abort_connections: true,
                ..Steps::default()
            }
        );
        assert!(d.forced());
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.on(Input::Tick { now: t + 200 * MS }), Steps::default());
        assert!(d.on(Input::ConnectionsGone { now: t + 101 * MS }).teardown);
    }

    #[test]
    fn a_second_signal_forces_at_once() {
        let t = Instant::now();
        let mut d = Drain::new();
        begin(&mut d, t, Duration::ZERO);
        d.on(Input::AcceptStopped { now: t });
        let s = d.on(Input::Force { now: t + MS });
        assert_eq!(
            s,
            Steps {
                abort_connections: true,
                ..Steps::default()
            }
        );
    }

    #[test]
    fn force_during_the_readiness_delay_stops_accepting_and_aborts() {
        let t = Instant::now();
        let mut d = Drain::new();
        begin(&mut d, t, 50 * MS);
        let s = d.on(Input::Force { now: t + MS });
        assert_eq!(
            s,
            Steps {
                stop_accepting: true,
                abort_connections: true,
                ..Steps::default()
            }
        );
        let s = d.on(Input::AcceptStopped { now: t + 2 * MS });
        assert!(
            s.notify_connections && s.abort_connections,
            "backlog connections are cut too"
        );
    }

    #[test]
    fn deadline_inside_the_readiness_delay_forces() {
        let t = Instant::now();
        let mut d = Drain::new();
        d.on(Input::Begin {
            now: t,
            delay: 500 * MS,
            grace: 100 * MS,
        });
        assert_eq!(d.next_deadline(), Some(t + 100 * MS));
        let s = d.on(Input::Tick { now: t + 100 * MS });
        assert!(s.stop_accepting && s.abort_connections);
    }

    #[test]
    fn force_before_any_begin_starts_and_forces() {
        let t = Instant::now();
        let mut d = Drain::new();
        let s = d.on(Input::Force { now: t });
        assert!(s.stop_accepting && s.abort_connections);
        assert_eq!(d.timeline().0, Some(t));
    }

    #[test]
    fn nothing_moves_a_finished_worker() {
        let t = Instant::now();
        let mut d = Drain::new();
        begin(&mut d, t, Duration::ZERO);
        d.on(Input::AcceptStopped { now: t });
        d.on(Input::ConnectionsGone { now: t });
        assert_eq!(
            d.next_deadline(),
            Some(t + 100 * MS),
            "the teardown is bounded"
        );
        let forced = d.on(Input::Force { now: t });
        assert!(
            forced.abort_connections && !forced.teardown,
            "a force in the teardown cuts its links, and the teardown goes on"
        );
        assert_eq!(d.phase(), Phase::Teardown);
        assert_eq!(d.next_deadline(), None);
        d.on(Input::TornDown { now: t });
        for input in [
            Input::Begin {
                now: t,
                delay: MS,
                grace: MS,
            },
            Input::Force { now: t },
            Input::Tick { now: t },
            Input::AcceptStopped { now: t },
            Input::ConnectionsGone { now: t },
            Input::TornDown { now: t },
        ] {
            assert_eq!(d.on(input), Steps::default());
            assert_eq!(d.phase(), Phase::Done);
        }
    }
}
