//! Counters each worker keeps, and the report [`Server::run`](crate::Server::run) returns.

use std::fmt;

/// What one worker counted while it ran. Plain integers owned by the worker thread; no
/// atomics on the hot path.
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
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
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
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

impl fmt::Display for WorkerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{\"accepted\":{},\"closed\":{},\"accept_backoffs\":{},\"accept_errors\":{},\
             \"recv_no_buffers\":{},\"reads_paused\":{},\"stale_completions\":{},\
             \"input_limit_closes\":{},\"bytes_in\":{},\"bytes_out\":{}}}",
            self.accepted,
            self.closed,
            self.accept_backoffs,
            self.accept_errors,
            self.recv_no_buffers,
            self.reads_paused,
            self.stale_completions,
            self.input_limit_closes,
            self.bytes_in,
            self.bytes_out
        )
    }
}

/// What [`Server::run`](crate::Server::run) returns once every worker has stopped.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Report {
    /// The backend the workers ran on.
    pub backend: &'static str,
    /// Each worker's counters, by worker index.
    pub workers: Vec<WorkerStats>,
}

impl Report {
    /// The counters of all workers added up.
    pub fn total(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for w in &self.workers {
            total.add(w);
        }
        total
    }
}
