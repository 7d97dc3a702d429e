//! Live metrics: each worker's counters, readable from any thread while the server runs,
//! and their rendering in the Prometheus text exposition format (version 0.0.4).
//!
//! ```text
//!  worker k (the only writer)                     any thread (readers)
//!  engine: plain u64s (WorkerStats), bumped       Metrics::snapshot() / render():
//!    on the hot path as before                      relaxed loads of every worker's
//!  end of each loop turn: one batch of relaxed      blocks, the mailbox depth, the
//!    stores into worker k's EngineBlock             drain's start on the shared clock
//!  HTTP layer (Http::with_metrics): per request,
//!    store(load + 1) into worker k's HttpBlock
//! ```
//!
//! Each worker's blocks are `#[repr(align(128))]`: no two workers' counters share a
//! cache line (nor an adjacent-line prefetch pair), and nothing else is written on
//! them. A worker is the only writer of its blocks, so a counter needs no
//! read-modify-write instruction: a relaxed load and a relaxed store. The engine's
//! figures are published once per loop turn, so a reader sees them as of the end of
//! the worker's last turn (a worker that sleeps has published everything); the HTTP
//! figures as of the last response written.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::drain::Phase;
use crate::shared::Shared;
use crate::stats::{ClosedBy, WorkerDrain, WorkerStats};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The upper bounds, in seconds, of the HTTP request duration histogram's buckets (a
/// last one, `+Inf`, takes the rest).
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The bucket bounds in nanoseconds.
const BOUNDS_NS: [u64; 12] = [
    1_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Status codes 0 to 999, one counter each (a code is three digits on the wire).
const CODES: usize = 1000;

/// The drain's phases, by the code the engine publishes.
const PHASES: [&str; 6] = [
    "running",
    "not_ready",
    "stopping_accept",
    "draining",
    "teardown",
    "done",
];

/// One increment by the only writer: no read-modify-write needed.
#[inline(always)]
fn bump(a: &AtomicU64, by: u64) {
    a.store(a.load(Relaxed).wrapping_add(by), Relaxed);
}

macro_rules! engine_block {
    ($($field:ident),* $(,)?) => {
        /// One worker's engine figures, published at the end of each of its turns.
        #[repr(align(128))]
        #[derive(Debug, Default)]
        pub(crate) struct EngineBlock {
            $($field: AtomicU64,)*
            closed_by: [AtomicU64; 7],
            /// The drain phase's code (an index into `PHASES`).
            phase: AtomicU64,
            drained: AtomicU64,
            closed_idle: AtomicU64,
            aborted: AtomicU64,
            /// 1 once the drain was forced (deadline or second signal).
            forced: AtomicU64,
            /// When each drain phase began, in nanoseconds after the drain began, plus
            /// one (0: not yet).
            milestones: [AtomicU64; 5],
        }

        impl EngineBlock {
            fn stats(&self) -> WorkerStats {
                let mut s = WorkerStats::default();
                $(s.$field = self.$field.load(Relaxed);)*
                let c = |i: usize| self.closed_by[i].load(Relaxed);
                s.closed_by = ClosedBy {
                    peer_closed: c(0),
                    reset: c(1),
                    error: c(2),
                    handler: c(3),
                    input_limit: c(4),
                    shutdown: c(5),
                    handler_panic: c(6),
                };
                s
            }
        }
    };
}

engine_block!(
    accepted,
    closed,
    accept_backoffs,
    accept_errors,
    recv_no_buffers,
    reads_paused,
    stale_completions,
    input_limit_closes,
    send_timeouts,
    discard_limits,
    handler_panics,
    teardown_panics,
    messages,
    wakeups,
    messages_undelivered,
    bytes_in,
    bytes_out,
    outbound_connects,
    outbound_connected,
    outbound_failed,
    outbound_closed,
    outbound_cut,
    outbound_bytes_in,
    outbound_bytes_out,
);

impl EngineBlock {
    /// Publishes the counters: one relaxed store each, skipping two groups that did not
    /// change (the close reasons, unless `closed` moved; the outbound counters, while no
    /// link was ever opened).
    #[inline]
    pub(crate) fn publish(&self, s: &WorkerStats) {
        self.accepted.store(s.accepted, Relaxed);
        self.bytes_in.store(s.bytes_in, Relaxed);
        self.bytes_out.store(s.bytes_out, Relaxed);
        self.messages.store(s.messages, Relaxed);
        self.wakeups.store(s.wakeups, Relaxed);
        self.accept_backoffs.store(s.accept_backoffs, Relaxed);
        self.accept_errors.store(s.accept_errors, Relaxed);
        self.recv_no_buffers.store(s.recv_no_buffers, Relaxed);
        self.reads_paused.store(s.reads_paused, Relaxed);
        self.stale_completions.store(s.stale_completions, Relaxed);
        self.input_limit_closes.store(s.input_limit_closes, Relaxed);
        self.send_timeouts.store(s.send_timeouts, Relaxed);
        self.discard_limits.store(s.discard_limits, Relaxed);
        self.handler_panics.store(s.handler_panics, Relaxed);
        self.teardown_panics.store(s.teardown_panics, Relaxed);
        self.messages_undelivered
            .store(s.messages_undelivered, Relaxed);
        // Only this thread stores `closed`: the load reads its own last store.
        if self.closed.load(Relaxed) != s.closed {
            let (c, by) = (&self.closed_by, &s.closed_by);
            c[0].store(by.peer_closed, Relaxed);
            c[1].store(by.reset, Relaxed);
            c[2].store(by.error, Relaxed);
            c[3].store(by.handler, Relaxed);
            c[4].store(by.input_limit, Relaxed);
            c[5].store(by.shutdown, Relaxed);
            c[6].store(by.handler_panic, Relaxed);
            self.closed.store(s.closed, Relaxed);
        }
        if s.outbound_connects != 0 {
            self.outbound_connects.store(s.outbound_connects, Relaxed);
            self.outbound_connected.store(s.outbound_connected, Relaxed);
            self.outbound_failed.store(s.outbound_failed, Relaxed);
            self.outbound_closed.store(s.outbound_closed, Relaxed);
            self.outbound_cut.store(s.outbound_cut, Relaxed);
            self.outbound_bytes_in.store(s.outbound_bytes_in, Relaxed);
            self.outbound_bytes_out.store(s.outbound_bytes_out, Relaxed);
        }
    }

    /// Publishes the drain's state (only once it has begun).
    pub(crate) fn publish_drain(
        &self,
        phase: Phase,
        counts: &WorkerDrain,
        milestones: [Option<Instant>; 5],
    ) {
        let code = match phase {
            Phase::Running => 0,
            Phase::NotReady { .. } => 1,
            Phase::StoppingAccept => 2,
            Phase::Draining => 3,
            Phase::Teardown => 4,
            Phase::Done => 5,
        };
        self.phase.store(code, Relaxed);
        self.drained.store(counts.drained, Relaxed);
        self.closed_idle.store(counts.closed_idle, Relaxed);
        self.aborted.store(counts.aborted, Relaxed);
        self.forced.store(u64::from(counts.forced), Relaxed);
        let Some(began) = milestones[0] else {
            return;
        };
        for (a, at) in self.milestones.iter().zip(milestones) {
            let offset = at.map_or(0, |t| {
                let ns = t.saturating_duration_since(began).as_nanos();
                u64::try_from(ns).unwrap_or(u64::MAX - 1) + 1
            });
            a.store(offset, Relaxed);
        }
    }
}

/// One worker's HTTP figures, written by its HTTP layer per response.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct HttpBlock {
    codes: [AtomicU64; CODES],
    /// Responses per duration bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl HttpBlock {
    pub(crate) fn new() -> HttpBlock {
        HttpBlock {
            codes: [const { AtomicU64::new(0) }; CODES],
            buckets: [const { AtomicU64::new(0) }; BOUNDS_NS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one response with status `code` (above 999: as 999) written in the
    /// loop turn that read its request: it took no time on the turn clock.
    #[inline]
    pub(crate) fn record_now(&self, code: u16) {
        bump(&self.codes[(code as usize).min(CODES - 1)], 1);
        bump(&self.buckets[0], 1);
    }

    /// Counts one response with status `code` (above 999: as 999) that took `took`.
    pub(crate) fn record(&self, code: u16, took: Duration) {
        bump(&self.codes[(code as usize).min(CODES - 1)], 1);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        bump(&self.buckets[bucket], 1);
        if ns != 0 {
            bump(&self.sum_ns, ns);
        }
    }

    fn snapshot(&self) -> HttpMetrics {
        let requests = self
            .codes
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Relaxed);
                (n > 0).then_some((code as u16, n))
            })
            .collect();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len());
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            if let Some(&le) = DURATION_BUCKETS.get(i) {
                buckets.push((le, cumulative));
            }
        }
        HttpMetrics {
            requests,
            buckets,
            count: cumulative,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
        }
    }
}

/// One worker's place in the registry: its blocks and its mailbox's depth.
#[derive(Debug)]
pub(crate) struct Slot {
    pub engine: EngineBlock,
    pub http: Arc<HttpBlock>,
    pub mailbox: OnceLock<Arc<AtomicUsize>>,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            engine: EngineBlock::default(),
            http: Arc::new(HttpBlock::new()),
            mailbox: OnceLock::new(),
        }
    }
}

/// A handle on a server's live metrics, readable from any thread at any time (before,
/// during and after [`Server::run`](crate::Server::run)). Cheap to clone. Get one from
/// [`Server::metrics`](crate::Server::metrics), or in the handler factory from
/// [`Worker::metrics`](crate::Worker::metrics).
///
/// The engine's figures are as of the end of each worker's last loop turn; the HTTP
/// figures (with [`Http::with_metrics`](crate::http::Http::with_metrics)) as of the last
/// response written.
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
/// let metrics = server.metrics();
/// std::thread::spawn(move || loop {
///     std::thread::sleep(std::time::Duration::from_secs(10));
///     let accepted: u64 = metrics.snapshot().iter().map(|w| w.stats.accepted).sum();
///     eprintln!("{accepted} connections so far");
/// });
/// server.run(|_| Echo)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Metrics {
    pub(crate) shared: Arc<Shared>,
}

/// One worker's figures at one moment ([`Metrics::snapshot`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// The worker's index.
    pub worker: usize,
    /// Its counters.
    pub stats: WorkerStats,
    /// Accepted connections open now.
    pub active: u64,
    /// Messages waiting in its mailbox now.
    pub mailbox_depth: u64,
    /// Whether its drain has begun (it stays so until the process ends).
    pub draining: bool,
    /// Its drain phase: `running`, `not_ready`, `stopping_accept`, `draining`,
    /// `teardown` or `done`.
    pub phase: &'static str,
    /// Its drain's counts and times so far.
    pub drain: WorkerDrain,
    /// How long each drain phase begun so far lasted (or has lasted, for the current
    /// one), by phase name, in order.
    pub phase_durations: Vec<(&'static str, Duration)>,
    /// Its HTTP figures (zero unless its handler is an [`Http`](crate::http::Http) made
    /// [`with_metrics`](crate::http::Http::with_metrics)).
    pub http: HttpMetrics,
}

/// One worker's HTTP figures.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HttpMetrics {
    /// Responses written, by status code (codes with none left out), in code order.
    pub requests: Vec<(u16, u64)>,
    /// The duration histogram: for each bound of [`DURATION_BUCKETS`] (seconds), the
    /// responses that took at most that long.
    pub buckets: Vec<(f64, u64)>,
    /// Responses counted in the histogram (all of them).
    pub count: u64,
    /// Their durations added up.
    pub sum: Duration,
}

impl Metrics {
    /// Every worker's figures, by worker index.
    pub fn snapshot(&self) -> Vec<WorkerMetrics> {
        let now = Instant::now();
        let began = self.shared.began().map(|b| b.at);
        self.shared
            .slots
            .iter()
            .enumerate()
            .map(|(worker, slot)| read_slot(worker, slot, began, now))
            .collect()
    }

    /// Every worker's figures in the Prometheus text exposition format (version 0.0.4,
    /// content type [`CONTENT_TYPE`]), each sample labelled with its `worker`.
    pub fn render(&self) -> String {
        render(&self.snapshot())
    }
}

fn read_slot(worker: usize, slot: &Slot, began: Option<Instant>, now: Instant) -> WorkerMetrics {
    let e = &slot.engine;
    let stats = e.stats();
    let code = (e.phase.load(Relaxed) as usize).min(PHASES.len() - 1);
    let marks: Vec<Option<Duration>> = e
        .milestones
        .iter()
        .map(|m| match m.load(Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        })
        .collect();
    let elapsed = began.map(|b| now.saturating_duration_since(b));
    let mut phase_durations = Vec::new();
    for (i, name) in PHASES[1..].iter().enumerate().take(4) {
        let Some(start) = marks[i] else { continue };
        let end = marks[i + 1].or(if code == i + 1 { elapsed } else { None });
        match end {
            Some(end) => phase_durations.push((*name, end.saturating_sub(start))),
            // A phase skipped (no readiness delay): no time in it.
            None => phase_durations.push((*name, Duration::ZERO)),
        }
    }
    let mailbox_depth = slot.mailbox.get().map_or(0, |q| q.load(Relaxed) as u64);
    WorkerMetrics {
        worker,
        active: stats.accepted.saturating_sub(stats.closed),
        mailbox_depth,
        draining: code != 0,
        phase: PHASES[code],
        drain: WorkerDrain {
            accept_stopped_after: marks[2],
            finished_after: marks[4],
            drained: e.drained.load(Relaxed),
            closed_idle: e.closed_idle.load(Relaxed),
            aborted: e.aborted.load(Relaxed),
            forced: e.forced.load(Relaxed) != 0,
        },
        phase_durations,
        http: slot.http.snapshot(),
        stats,
    }
}

/// A counter or gauge family with one sample per worker.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&WorkerMetrics) -> u64,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "gracering_connections_accepted_total",
        kind: "counter",
        help: "Connections accepted.",
        value: |w| w.stats.accepted,
    },
    Family {
        name: "gracering_connections_active",
        kind: "gauge",
        help: "Accepted connections open now.",
        value: |w| w.active,
    },
    Family {
        name: "gracering_received_bytes_total",
        kind: "counter",
        help: "Bytes received on accepted connections.",
        value: |w| w.stats.bytes_in,
    },
    Family {
        name: "gracering_sent_bytes_total",
        kind: "counter",
        help: "Bytes sent on accepted connections.",
        value: |w| w.stats.bytes_out,
    },
    Family {
        name: "gracering_accept_backoffs_total",
        kind: "counter",
        help: "Times accepting backed off for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).",
        value: |w| w.stats.accept_backoffs,
    },
    Family {
        name: "gracering_accept_errors_total",
        kind: "counter",
        help: "Other accept failures (aborted handshakes and the like).",
        value: |w| w.stats.accept_errors,
    },
    Family {
        name: "gracering_recv_enobufs_total",
        kind: "counter",
        help: "Receives that found the provided buffer ring empty (ENOBUFS) and were re-armed.",
        value: |w| w.stats.recv_no_buffers,
    },
    Family {
        name: "gracering_reads_paused_total",
        kind: "counter",
        help: "Times a connection stopped being read because its unsent output passed the limit.",
        value: |w| w.stats.reads_paused,
    },
    Family {
        name: "gracering_send_timeouts_total",
        kind: "counter",
        help: "Connections closed because their output made no progress for the send timeout.",
        value: |w| w.stats.send_timeouts,
    },
    Family {
        name: "gracering_discard_limits_total",
        kind: "counter",
        help: "Closing connections that stopped reading after dropping the most input they may.",
        value: |w| w.stats.discard_limits,
    },
    Family {
        name: "gracering_stale_completions_total",
        kind: "counter",
        help: "Completions for a connection slot already closed; ignored.",
        value: |w| w.stats.stale_completions,
    },
    Family {
        name: "gracering_handler_panics_total",
        kind: "counter",
        help: "Handler callbacks that panicked.",
        value: |w| w.stats.handler_panics,
    },
    Family {
        name: "gracering_teardown_panics_total",
        kind: "counter",
        help: "Teardowns that panicked.",
        value: |w| w.stats.teardown_panics,
    },
    Family {
        name: "gracering_mailbox_depth",
        kind: "gauge",
        help: "Messages waiting in the worker's mailbox.",
        value: |w| w.mailbox_depth,
    },
    Family {
        name: "gracering_mailbox_messages_total",
        kind: "counter",
        help: "Messages taken from the worker's mailbox.",
        value: |w| w.stats.messages,
    },
    Family {
        name: "gracering_mailbox_undelivered_total",
        kind: "counter",
        help: "Messages whose connection had closed, handed back to the handler.",
        value: |w| w.stats.messages_undelivered,
    },
    Family {
        name: "gracering_wakeups_total",
        kind: "counter",
        help: "Wake-ups the worker got from other threads.",
        value: |w| w.stats.wakeups,
    },
    Family {
        name: "gracering_outbound_connections",
        kind: "gauge",
        help: "Outbound connections up now.",
        value: |w| {
            w.stats
                .outbound_connected
                .saturating_sub(w.stats.outbound_closed)
        },
    },
    Family {
        name: "gracering_outbound_connects_total",
        kind: "counter",
        help: "Outbound connects started.",
        value: |w| w.stats.outbound_connects,
    },
    Family {
        name: "gracering_outbound_connected_total",
        kind: "counter",
        help: "Outbound connects that succeeded.",
        value: |w| w.stats.outbound_connected,
    },
    Family {
        name: "gracering_outbound_connect_failures_total",
        kind: "counter",
        help: "Outbound connects that failed.",
        value: |w| w.stats.outbound_failed,
    },
    Family {
        name: "gracering_outbound_closed_total",
        kind: "counter",
        help: "Outbound connections closed after they had connected.",
        value: |w| w.stats.outbound_closed,
    },
    Family {
        name: "gracering_outbound_cut_total",
        kind: "counter",
        help: "Outbound links closed without their goodbye at the teardown's deadline.",
        value: |w| w.stats.outbound_cut,
    },
    Family {
        name: "gracering_outbound_received_bytes_total",
        kind: "counter",
        help: "Bytes received on outbound connections.",
        value: |w| w.stats.outbound_bytes_in,
    },
    Family {
        name: "gracering_outbound_sent_bytes_total",
        kind: "counter",
        help: "Bytes sent on outbound connections.",
        value: |w| w.stats.outbound_bytes_out,
    },
    Family {
        name: "gracering_draining",
        kind: "gauge",
        help: "1 once the worker's drain has begun, else 0.",
        value: |w| u64::from(w.draining),
    },
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Seconds as the text format writes a float.
fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The exposition text of `workers`' figures.
pub(crate) fn render(workers: &[WorkerMetrics]) -> String {
    let mut out = String::with_capacity(4096 + 2048 * workers.len());
    for f in FAMILIES {
        header(&mut out, f.name, f.kind, f.help);
        for w in workers {
            let _ = writeln!(
                out,
                "{}{{worker=\"{}\"}} {}",
                f.name,
                w.worker,
                (f.value)(w)
            );
        }
    }
    let name = "gracering_connections_closed_total";
    header(
        &mut out,
        name,
        "counter",
        "Accepted connections closed, by reason.",
    );
    for w in workers {
        for (reason, n) in w.stats.closed_by.by_label() {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{}\",reason=\"{reason}\"}} {n}",
                w.worker
            );
        }
    }
    let name = "gracering_drain_phase";
    header(
        &mut out,
        name,
        "gauge",
        "The worker's drain phase: 1 for the current one.",
    );
    for w in workers {
        for phase in PHASES {
            let on = u8::from(phase == w.phase);
            let _ = writeln!(
                out,
                "{name}{{worker=\"{}\",phase=\"{phase}\"}} {on}",
                w.worker
            );
        }
    }
    let name = "gracering_drain_phase_seconds";
    header(
        &mut out,
        name,
        "gauge",
        "Time spent in each drain phase begun so far (the current one: so far).",
    );
    for w in workers {
        for (phase, d) in &w.phase_durations {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{}\",phase=\"{phase}\"}} {}",
                w.worker,
                seconds(*d)
            );
        }
    }
    let name = "gracering_drain_connections_total";
    header(
        &mut out,
        name,
        "counter",
        "Connections the drain reached, by how they ended: drained (busy, finished), closed_idle, cut (at the grace deadline or a second signal).",
    );
    for w in workers {
        for (outcome, n) in [
            ("drained", w.drain.drained),
            ("closed_idle", w.drain.closed_idle),
            ("cut", w.drain.aborted),
        ] {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{}\",outcome=\"{outcome}\"}} {n}",
                w.worker
            );
        }
    }
    let name = "gracering_http_requests_total";
    header(
        &mut out,
        name,
        "counter",
        "HTTP responses written, by status code.",
    );
    for w in workers {
        for (code, n) in &w.http.requests {
            let _ = writeln!(out, "{name}{{worker=\"{}\",code=\"{code}\"}} {n}", w.worker);
        }
    }
    let name = "gracering_http_request_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "HTTP request duration, from the loop turn that read its first byte to the one that wrote its response (one turn: 0).",
    );
    for w in workers {
        let id = w.worker;
        for (le, n) in &w.http.buckets {
            let _ = writeln!(out, "{name}_bucket{{worker=\"{id}\",le=\"{le}\"}} {n}");
        }
        let (count, sum) = (w.http.count, seconds(w.http.sum));
        let _ = writeln!(out, "{name}_bucket{{worker=\"{id}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{worker=\"{id}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{worker=\"{id}\"}} {count}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_codes_counted() {
        let h = HttpBlock::new();
        h.record(200, Duration::ZERO);
        h.record(200, Duration::from_millis(3));
        h.record(404, Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.requests, vec![(200, 2), (404, 1)]);
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.001, 1));
        assert_eq!(s.buckets[1], (0.005, 2));
        assert_eq!(s.buckets.last(), Some(&(10.0, 2)));
        assert_eq!(s.sum, Duration::from_millis(20_003));
    }

    #[test]
    fn engine_block_round_trips_the_counters() {
        let b = EngineBlock::default();
        let mut s = WorkerStats {
            accepted: 3,
            closed: 2,
            bytes_in: 100,
            outbound_connects: 1,
            outbound_bytes_out: 7,
            ..WorkerStats::default()
        };
        s.closed_by.peer_closed = 1;
        s.closed_by.handler = 1;
        b.publish(&s);
        assert_eq!(b.stats(), s);
        s.closed += 1;
        s.closed_by.reset += 1;
        s.handler_panics += 1;
        b.publish(&s);
        assert_eq!(b.stats(), s);
    }
}
