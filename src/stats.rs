//! Counters each worker keeps, and the report [`Server::run`](crate::Server::run) returns.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::shared::Trigger;

/// What one worker counted while it ran. Plain integers owned by the worker thread; no
/// atomics on the hot path. Displays as one JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed (every accepted connection is closed exactly once).
    pub closed: u64,
    /// Times accepting backed off because descriptors or memory ran out
    /// (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    pub accept_backoffs: u64,
    /// Other accept failures (aborted handshakes and the like).
    pub accept_errors: u64,
    /// Times a receive found the provided buffer ring empty (ENOBUFS) and was re-armed.
    pub recv_no_buffers: u64,
    /// Times a connection stopped being read because its unsent output passed the limit.
    pub reads_paused: u64,
    /// Completions that arrived for a connection slot already closed and reused; ignored.
    pub stale_completions: u64,
    /// Connections closed because the handler left too much input unconsumed.
    pub input_limit_closes: u64,
    /// Connections closed because their output made no progress for the send timeout
    /// ([`Builder::send_timeout`](crate::Builder::send_timeout)).
    pub send_timeouts: u64,
    /// Closing connections that stopped reading after dropping the most input a
    /// closing connection reads ([`Builder::max_discard`](crate::Builder::max_discard)).
    pub discard_limits: u64,
    /// Handler callbacks that panicked (each closed its connection).
    pub handler_panics: u64,
    /// Teardowns that panicked (the ones after them still ran).
    pub teardown_panics: u64,
    /// Messages taken from the worker's mailbox.
    pub messages: u64,
    /// Wake-ups the worker got from other threads (mailbox posts, the drain); posts to
    /// a worker that is awake need none.
    pub wakeups: u64,
    /// Messages whose connection had closed (or that were still queued when the worker
    /// stopped), handed back through `Handler::on_undelivered`.
    pub messages_undelivered: u64,
    /// Bytes received on accepted connections.
    pub bytes_in: u64,
    /// Bytes sent on accepted connections.
    pub bytes_out: u64,
    /// Outbound connects started (every attempt of every link).
    pub outbound_connects: u64,
    /// Outbound connects that succeeded.
    pub outbound_connected: u64,
    /// Outbound connects that failed (refused, unreachable, timed out, no descriptor).
    pub outbound_failed: u64,
    /// Outbound connections closed after they had connected.
    pub outbound_closed: u64,
    /// Outbound links still open at the teardown's deadline (or at a forced end),
    /// closed without their goodbye.
    pub outbound_cut: u64,
    /// Bytes received on outbound connections.
    pub outbound_bytes_in: u64,
    /// Bytes sent on outbound connections.
    pub outbound_bytes_out: u64,
    /// Accepted connections closed, by why (they add up to `closed`).
    pub closed_by: ClosedBy,
}

/// Accepted connections closed, by [`CloseReason`](crate::CloseReason).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClosedBy {
    /// The peer closed its side (FIN) and all output was sent.
    pub peer_closed: u64,
    /// The peer reset the connection.
    pub reset: u64,
    /// The socket failed with an OS error (timeouts, send timeouts and unreachable peers
    /// included).
    pub error: u64,
    /// The handler asked to close.
    pub handler: u64,
    /// The unconsumed input passed the limit.
    pub input_limit: u64,
    /// The drain closed it (cut ones included: see the drain's `aborted`).
    pub shutdown: u64,
    /// A handler callback panicked.
    pub handler_panic: u64,
}

impl ClosedBy {
    /// Counts one connection closed for `reason`.
    #[inline]
    pub(crate) fn count(&mut self, reason: crate::CloseReason) {
        use crate::CloseReason as R;
        let n = match reason {
            R::PeerClosed => &mut self.peer_closed,
            R::Reset => &mut self.reset,
            R::Handler => &mut self.handler,
            R::InputLimit => &mut self.input_limit,
            R::Shutdown => &mut self.shutdown,
            R::HandlerPanic => &mut self.handler_panic,
            R::Error(_) | R::Refused | R::Unreachable | R::TimedOut | R::SendTimeout => {
                &mut self.error
            }
        };
        *n += 1;
    }

    /// Each reason's label (as the metrics name it) and count.
    pub fn by_label(&self) -> [(&'static str, u64); 7] {
        [
            ("peer_closed", self.peer_closed),
            ("reset", self.reset),
            ("error", self.error),
            ("handler", self.handler),
            ("input_limit", self.input_limit),
            ("shutdown", self.shutdown),
            ("handler_panic", self.handler_panic),
        ]
    }

    fn add(&mut self, other: &ClosedBy) {
        self.peer_closed += other.peer_closed;
        self.reset += other.reset;
        self.error += other.error;
        self.handler += other.handler;
        self.input_limit += other.input_limit;
        self.shutdown += other.shutdown;
        self.handler_panic += other.handler_panic;
    }
}

impl WorkerStats {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &WorkerStats) {
        self.accepted += other.accepted;
        self.closed += other.closed;
        self.accept_backoffs += other.accept_backoffs;
        self.accept_errors += other.accept_errors;
        self.recv_no_buffers += other.recv_no_buffers;
        self.reads_paused += other.reads_paused;
        self.stale_completions += other.stale_completions;
        self.input_limit_closes += other.input_limit_closes;
        self.send_timeouts += other.send_timeouts;
        self.discard_limits += other.discard_limits;
        self.handler_panics += other.handler_panics;
        self.teardown_panics += other.teardown_panics;
        self.messages += other.messages;
        self.wakeups += other.wakeups;
        self.messages_undelivered += other.messages_undelivered;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.outbound_connects += other.outbound_connects;
        self.outbound_connected += other.outbound_connected;
        self.outbound_failed += other.outbound_failed;
        self.outbound_closed += other.outbound_closed;
        self.outbound_cut += other.outbound_cut;
        self.outbound_bytes_in += other.outbound_bytes_in;
        self.outbound_bytes_out += other.outbound_bytes_out;
        self.closed_by.add(&other.closed_by);
    }
}

impl fmt::Display for WorkerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{\"accepted\":{},\"closed\":{},\"accept_backoffs\":{},\"accept_errors\":{},\
             \"recv_no_buffers\":{},\"reads_paused\":{},\"stale_completions\":{},\
             \"input_limit_closes\":{},\"send_timeouts\":{},\"discard_limits\":{},\
             \"handler_panics\":{},\"teardown_panics\":{},\
             \"messages\":{},\"messages_undelivered\":{},\"wakeups\":{},\"bytes_in\":{},\
             \"bytes_out\":{},\"outbound_connects\":{},\"outbound_connected\":{},\
             \"outbound_failed\":{},\"outbound_closed\":{},\"outbound_cut\":{},\
             \"outbound_bytes_in\":{},\"outbound_bytes_out\":{}}}",
            self.accepted,
            self.closed,
            self.accept_backoffs,
            self.accept_errors,
            self.recv_no_buffers,
            self.reads_paused,
            self.stale_completions,
            self.input_limit_closes,
            self.send_timeouts,
            self.discard_limits,
            self.handler_panics,
            self.teardown_panics,
            self.messages,
            self.messages_undelivered,
            self.wakeups,
            self.bytes_in,
            self.bytes_out,
            self.outbound_connects,
            self.outbound_connected,
            self.outbound_failed,
            self.outbound_closed,
            self.outbound_cut,
            self.outbound_bytes_in,
            self.outbound_bytes_out
        )
    }
}

/// How one worker's drain went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerDrain {
    /// From the drain's start until this worker's listener was closed (after the
    /// readiness delay and the backlog).
    pub accept_stopped_after: Option<Duration>,
    /// From the drain's start until this worker's last connection closed and its
    /// resources were torn down.
    pub finished_after: Option<Duration>,
    /// Connections that were busy when the drain reached them and finished cleanly.
    pub drained: u64,
    /// Connections that were idle when the drain reached them and were closed at once.
    pub closed_idle: u64,
    /// Connections cut at the grace deadline or by a second signal.
    pub aborted: u64,
    /// This worker's drain was forced: its grace deadline passed with work left, or a
    /// second signal (or the handle's `force`) came.
    pub forced: bool,
}

/// One worker's part of the [`Report`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WorkerReport {
    /// The worker's counters.
    pub stats: WorkerStats,
    /// The worker's drain.
    pub drain: WorkerDrain,
    /// Why the worker stopped early, if it did: its wait on the kernel failed, or it
    /// panicked outside a handler callback. Its sockets were closed and the other
    /// workers drained.
    pub failure: Option<String>,
}

impl WorkerReport {
    /// The report of a worker that failed before it could report for itself.
    pub(crate) fn failed(failure: String) -> WorkerReport {
        WorkerReport {
            failure: Some(failure),
            ..WorkerReport::default()
        }
    }
}

/// What [`Server::run`](crate::Server::run) returns once every worker has stopped: the
/// drain report.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Report {
    /// The backend the workers ran on.
    pub backend: &'static str,
    /// What started the drain.
    pub trigger: Option<Trigger>,
    /// When the drain began (wall clock).
    pub began_at: Option<SystemTime>,
    /// From the drain's start until every worker had released its ring.
    pub drain_duration: Option<Duration>,
    /// Whether the drain was forced (grace deadline or a second signal).
    pub forced: bool,
    /// Each worker's part, by worker index.
    pub workers: Vec<WorkerReport>,
}

impl Report {
    /// The counters of all workers added up.
    pub fn total(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for w in &self.workers {
            total.add(&w.stats);
        }
        total
    }

    /// Connections cut short, over all workers: accepted connections aborted and
    /// outbound links closed without their goodbye (`outbound_cut`).
    pub fn aborted(&self) -> u64 {
        let links: u64 = self.workers.iter().map(|w| w.stats.outbound_cut).sum();
        self.workers.iter().map(|w| w.drain.aborted).sum::<u64>() + links
    }

    /// Handler callbacks and teardowns that panicked, over all workers.
    pub fn panics(&self) -> u64 {
        let total = self.total();
        total.handler_panics + total.teardown_panics
    }

    /// Workers that stopped early ([`WorkerReport::failure`]).
    pub fn failed_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.failure.is_some()).count()
    }

    /// Whether the run ended as it should: no worker failed, nothing panicked, no
    /// connection was cut.
    pub fn is_clean(&self) -> bool {
        self.aborted() == 0 && self.panics() == 0 && self.failed_workers() == 0
    }

    /// The drain in one line, as the server logs it when it stops:
    /// `drain done: SIGTERM, 12.345 ms, 10 drained, 3 idle, 0 aborted, not forced`.
    pub(crate) fn summary(&self) -> String {
        let sum =
            |f: fn(&WorkerDrain) -> u64| -> u64 { self.workers.iter().map(|w| f(&w.drain)).sum() };
        let mut line = match (self.trigger, self.drain_duration) {
            (Some(trigger), Some(took)) => format!(
                "drain done: {}, {:.3} ms, {} drained, {} idle, {} aborted, {}",
                trigger.as_str(),
                took.as_secs_f64() * 1e3,
                sum(|d| d.drained),
                sum(|d| d.closed_idle),
                self.aborted(),
                if self.forced { "forced" } else { "not forced" }
            ),
            _ => "stopped without a drain".to_string(),
        };
        let (failed, panics) = (self.failed_workers(), self.panics());
        if failed > 0 {
            line.push_str(&format!(", {failed} workers failed"));
        }
        if panics > 0 {
            line.push_str(&format!(", {panics} panics"));
        }
        line
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("null".to_string(), |d| {
                format!("{:.3}", d.as_secs_f64() * 1e3)
            })
        };
        let sum =
            |f: fn(&WorkerDrain) -> u64| self.workers.iter().map(|w| f(&w.drain)).sum::<u64>();
        let workers: Vec<String> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{\"worker\":{i},\"accept_stopped_ms\":{},\"finished_ms\":{},\"drained\":{},\
                     \"closed_idle\":{},\"aborted\":{},\"failure\":{},\"stats\":{}}}",
                    ms(w.drain.accept_stopped_after),
                    ms(w.drain.finished_after),
                    w.drain.drained,
                    w.drain.closed_idle,
                    w.drain.aborted,
                    w.failure.as_deref().map_or("null".to_string(), json_string),
                    w.stats
                )
            })
            .collect();
        let began = self
            .began_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        format!(
            "{{\"drain\":{{\"backend\":\"{}\",\"trigger\":{},\"began_unix_ms\":{},\"duration_ms\":{},\
             \"forced\":{},\"drained\":{},\"closed_idle\":{},\"aborted\":{},\"panics\":{},\
             \"failed_workers\":{},\"workers\":[{}]}}}}",
            self.backend,
            self.trigger
                .map_or("null".to_string(), |t| format!("\"{}\"", t.as_str())),
            began.map_or("null".to_string(), |d| d.as_millis().to_string()),
            ms(self.drain_duration),
            self.forced,
            sum(|d| d.drained),
            sum(|d| d.closed_idle),
            sum(|d| d.aborted),
            self.panics(),
            self.failed_workers(),
            workers.join(",")
        )
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_escaped_json() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        let report = Report {
            workers: vec![WorkerReport::failed("wait: \"EBADF\"".into())],
            ..Report::default()
        };
        let json = report.to_json();
        assert!(
            json.contains("\"failure\":\"wait: \\\"EBADF\\\"\""),
            "{json}"
        );
        assert!(json.contains("\"failed_workers\":1"), "{json}");
        assert!(!report.is_clean());
    }
}
