//! Settings and the [`Builder`] that makes a [`Server`](crate::Server).

use std::io;
use std::net::SocketAddr;
#[cfg(feature = "sim")]
use std::sync::{Arc, atomic::AtomicBool};
use std::time::Duration;

use crate::server::Server;
use crate::sys::Backend;

/// Every setting of a server, with its default. Made by [`Builder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub addr: SocketAddr,
    pub workers: Option<usize>,
    pub pin_workers: bool,
    pub backlog: u32,
    pub ring_entries: u32,
    pub buffer_size: u32,
    pub buffer_count: u16,
    pub max_unsent: usize,
    pub max_pending_input: usize,
    pub send_timeout: Duration,
    pub max_discard: usize,
    pub accept_backoff_min: Duration,
    pub accept_backoff_max: Duration,
    pub drain_delay: Duration,
    pub grace_period: Duration,
    pub linger: Duration,
    pub handle_signals: bool,
    pub socket_activation: bool,
    pub upgrade_socket: Option<std::path::PathBuf>,
    pub upgrade_from: Option<std::path::PathBuf>,
    pub backend: Backend,
    pub mailbox_capacity: usize,
    /// Test hook: worker N meets the fault once the flag is set.
    #[cfg(feature = "sim")]
    pub fault: Option<(usize, Fault, Arc<AtomicBool>)>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: None,
            pin_workers: true,
            backlog: 4096,
            ring_entries: 1024,
            buffer_size: 4096,
            buffer_count: 1024,
            max_unsent: 1024 * 1024,
            max_pending_input: 256 * 1024,
            send_timeout: Duration::from_secs(5),
            max_discard: 16 * 1024 * 1024,
            accept_backoff_min: Duration::from_millis(5),
            accept_backoff_max: Duration::from_millis(500),
            drain_delay: Duration::ZERO,
            grace_period: Duration::from_secs(25),
            linger: Duration::from_secs(1),
            handle_signals: true,
            socket_activation: true,
            upgrade_socket: None,
            upgrade_from: None,
            backend: Backend::Auto,
            mailbox_capacity: 65536,
            #[cfg(feature = "sim")]
            fault: None,
        }
    }
}

/// A fault a test can inject into a worker's loop ([`Builder::inject_fault`]).
#[cfg(feature = "sim")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The wait on the kernel fails, as a broken ring would: the worker releases its
    /// backend, closes its sockets and reports the failure; the others drain.
    WaitError,
    /// The loop panics (as an engine bug would), unwinding through it: the backend's
    /// `Drop` cancels and reaps what is in flight and closes the sockets.
    Panic,
}

/// Configures and binds a [`Server`].
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let server = gracering::Server::builder()
///     .addr("127.0.0.1:7000".parse().unwrap())
///     .workers(2)
///     .bind()?;
/// println!("listening on {}", server.local_addr());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// A builder with every setting at its default.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The address to listen on (IPv4 or IPv6). Port 0 picks a free port once, and every
    /// worker binds that same port. Default `127.0.0.1:8080`.
    pub fn addr(mut self, addr: SocketAddr) -> Builder {
        self.config.addr = addr;
        self
    }

    /// How many worker threads, each with its own ring and listener. Default: the number
    /// of CPUs in the process's affinity mask.
    pub fn workers(mut self, workers: usize) -> Builder {
        self.config.workers = Some(workers.max(1));
        self
    }

    /// Whether each worker pins itself to its own CPU (from the process's affinity mask,
    /// round robin). Default `true`.
    pub fn pin_workers(mut self, pin: bool) -> Builder {
        self.config.pin_workers = pin;
        self
    }

    /// The listen backlog of each worker's listener, capped by `net.core.somaxconn`.
    /// Default 4096.
    pub fn backlog(mut self, backlog: u32) -> Builder {
        self.config.backlog = backlog.max(1);
        self
    }

    /// Submission queue entries of each worker's ring (the completion queue gets four
    /// times as many). Default 1024.
    pub fn ring_entries(mut self, entries: u32) -> Builder {
        self.config.ring_entries = entries.clamp(8, 32768);
        self
    }

    /// Size in bytes of each receive buffer in a worker's provided buffer ring.
    /// Default 4096.
    pub fn buffer_size(mut self, size: u32) -> Builder {
        self.config.buffer_size = size.max(64);
        self
    }

    /// How many receive buffers each worker's buffer ring holds, rounded up to a power of
    /// two (at most 32768). Default 1024.
    pub fn buffer_count(mut self, count: u16) -> Builder {
        self.config.buffer_count = count.clamp(1, 1 << 15).next_power_of_two();
        self
    }

    /// Back-pressure: once a connection has more than this many bytes written but not yet
    /// sent, the engine stops reading from it until half of them are sent. Default 1 MiB.
    pub fn max_unsent(mut self, bytes: usize) -> Builder {
        self.config.max_unsent = bytes.max(1);
        self
    }

    /// The most input a handler may leave unconsumed on one connection; past it the
    /// connection is closed with [`CloseReason::InputLimit`](crate::CloseReason::InputLimit).
    /// Default 256 KiB.
    pub fn max_pending_input(mut self, bytes: usize) -> Builder {
        self.config.max_pending_input = bytes.max(1);
        self
    }

    /// The send timeout: a connection whose output has made no progress for this long
    /// (its peer stopped reading) is closed at once, its output dropped, with
    /// [`CloseReason::SendTimeout`](crate::CloseReason::SendTimeout), and counted in
    /// [`WorkerStats::send_timeouts`](crate::WorkerStats::send_timeouts). Progress is any
    /// byte the kernel takes; a peer that reads slowly but steadily is not cut. Default
    /// 5 s; at least 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = gracering::Server::builder().send_timeout(Duration::from_secs(10));
    /// # drop(builder);
    /// ```
    pub fn send_timeout(mut self, timeout: Duration) -> Builder {
        self.config.send_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The most input a closing connection reads (and drops) so that its close does
    /// not turn into a reset: a client still uploading a body that was refused, say.
    /// Past it the connection stops reading and closes as soon as its output is sent
    /// (its peer may then see a reset); counted in
    /// [`WorkerStats::discard_limits`](crate::WorkerStats::discard_limits). Default
    /// 16 MiB.
    pub fn max_discard(mut self, bytes: usize) -> Builder {
        self.config.max_discard = bytes;
        self
    }

    /// When `accept` fails for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM), the worker waits before trying again: `min` at first, doubling up to
    /// `max`. Defaults 5 ms and 500 ms.
    pub fn accept_backoff(mut self, min: Duration, max: Duration) -> Builder {
        self.config.accept_backoff_min = min.max(Duration::from_micros(100));
        self.config.accept_backoff_max = max.max(self.config.accept_backoff_min);
        self
    }

    /// Readiness delay: after the drain begins, keep accepting and serving for this long
    /// while [`Conn::is_draining`](crate::Conn::is_draining) reports it (health checks
    /// answer 503), so load balancers stop routing before the listener goes away.
    /// Default 0.
    pub fn drain_delay(mut self, delay: Duration) -> Builder {
        self.config.drain_delay = delay;
        self
    }

    /// How long the drain may take, counted from the signal. When it passes, the
    /// connections still open are closed and counted as aborted. Default 25 s (inside
    /// Kubernetes' default 30 s termination grace period).
    pub fn grace_period(mut self, grace: Duration) -> Builder {
        self.config.grace_period = grace;
        self
    }

    /// How long a gracefully closing connection keeps reading (and discarding) what the
    /// peer still sends after its write side was shut down, so unread bytes cannot turn
    /// the close into a reset that destroys the last response. Ends early at the peer's
    /// FIN. Default 1 s.
    pub fn linger(mut self, linger: Duration) -> Builder {
        self.config.linger = linger;
        self
    }

    /// Whether signals drive the drain: SIGTERM, SIGINT and SIGQUIT (first: drain,
    /// second: force); SIGHUP, SIGUSR1 and SIGUSR2 are read too and only logged (their
    /// default action would kill the process mid-request).
    /// Default `true`. Without it only the
    /// [`ShutdownHandle`](crate::ShutdownHandle) stops the server.
    pub fn handle_signals(mut self, handle: bool) -> Builder {
        self.config.handle_signals = handle;
        self
    }

    /// Whether listening sockets passed by a service manager (systemd socket
    /// activation: `LISTEN_PID` naming this process, `LISTEN_FDS`) are used instead of
    /// binding [`addr`](Builder::addr). Default `true`. One socket per worker (systemd
    /// `ReusePort=yes` with a `ListenStream=` per worker; with [`workers`](Builder::workers)
    /// unset there is one worker per socket), or one socket that every worker accepts
    /// from (each ring keeps a multishot accept on it; the kernel hands each connection
    /// to one of them). An inherited socket is never filtered or drained of its queue at
    /// the drain: what waits there is left to the next instance (see
    /// docs/SHUTDOWN.md).
    pub fn socket_activation(mut self, on: bool) -> Builder {
        self.config.socket_activation = on;
        self
    }

    /// Offers the listening sockets at this Unix socket path to a successor (an
    /// in-place upgrade: a new process started with [`upgrade_from`](Builder::upgrade_from)
    /// the same path takes them over, starts serving, and then this one drains).
    /// Binding fails if a live server already offers there.
    pub fn upgrade_socket(mut self, path: impl Into<std::path::PathBuf>) -> Builder {
        self.config.upgrade_socket = Some(path.into());
        self
    }

    /// Takes over the listening sockets of the server offering them at this path
    /// instead of binding; once every worker accepts, that server is told to drain.
    /// If this process fails before, the old one keeps serving (a rollback).
    pub fn upgrade_from(mut self, path: impl Into<std::path::PathBuf>) -> Builder {
        self.config.upgrade_from = Some(path.into());
        self
    }

    /// How many messages each worker's [`Mailbox`](crate::Mailbox) holds before a post
    /// is refused with [`PostError::Full`](crate::PostError::Full) (posters racing each
    /// other may overshoot it by one message each). Default 65,536; memory grows with
    /// what is queued, not with the capacity.
    pub fn mailbox_capacity(mut self, messages: usize) -> Builder {
        self.config.mailbox_capacity = messages.max(1);
        self
    }

    /// The kernel interface: [`Backend::Auto`] (the default) picks io_uring where the
    /// kernel offers it and epoll otherwise.
    pub fn backend(mut self, backend: Backend) -> Builder {
        self.config.backend = backend;
        self
    }

    /// Fault injection for tests (feature `sim`): once `flag` is set, worker `worker`
    /// meets `fault` at the end of its next turn, with its operations in flight.
    #[cfg(feature = "sim")]
    #[doc(hidden)]
    pub fn inject_fault(mut self, worker: usize, fault: Fault, flag: Arc<AtomicBool>) -> Builder {
        self.config.fault = Some((worker, fault, flag));
        self
    }

    /// The settings as they stand.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Creates the workers' listening sockets (bound, listening) and returns the server,
    /// ready to [`run`](Server::run). Unless [`handle_signals`](Builder::handle_signals)
    /// is off, the signals it reads are blocked in the calling thread from here on, so that
    /// a signal that comes between `bind` and `run` (a supervisor that signals as soon as
    /// the address is printed) starts the drain instead of killing the process: call
    /// `run` on the same thread.
    pub fn bind(self) -> io::Result<Server> {
        Server::bind(self.config)
    }
}
