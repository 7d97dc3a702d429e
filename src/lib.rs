//! # gracering
//!
//! A thread-per-core TCP server engine for Linux on io_uring, built to stop without
//! dropping anything.
//!
//! Each worker thread is pinned to its own CPU and owns its own io_uring, its own
//! `SO_REUSEPORT` listener and its own connections: nothing is shared on the hot path.
//! A service plugs in through the [`Handler`] trait; one handler instance lives on each
//! worker.
//!
//! ```text
//!        kernel (one per worker)                    worker thread, pinned to CPU k
//!  ┌──────────────────────────────┐  completions  ┌──────────────────────────────────────┐
//!  │ io_uring                     │ ────────────▶ │ driver (sys::uring): user_data →     │
//!  │   multishot accept ◀─ listener k (REUSEPORT) │   Event { Accepted, Received, Sent,  │
//!  │   multishot recv ──▶ buffer ring             │           RecvEnded, Closed, ... }   │
//!  │   send, cancel, close        │               │ engine: connection slab, handler     │
//!  └──────────────────────────────┘               │   calls, back-pressure, closes       │
//!                 ▲   one submit-and-wait per turn│ intents: accept recv send cancel ... │
//!                 └───────────────────────────────┴──────────────────────────────────────┘
//! ```
//!
//! Bytes flow like this: the kernel fills a buffer from the worker's provided buffer
//! ring; the engine hands that slice to [`Handler::on_data`]; the handler writes its
//! reply into the connection's output; the buffer goes straight back to the ring (any
//! unconsumed bytes are copied to the connection's own pending buffer); at the end of the
//! turn each connection's output leaves in one send.
//!
//! ## Example
//!
//! ```no_run
//! use gracering::{CloseReason, Conn, Handler, Server};
//!
//! /// Echoes every byte back, counting connections per worker.
//! struct Echo {
//!     open: usize,
//! }
//!
//! impl Handler for Echo {
//!     type State = ();
//!     type Message = ();
//!
//!     fn on_open(&mut self, _conn: &mut Conn<'_>) {
//!         self.open += 1;
//!     }
//!
//!     fn on_data(&mut self, _state: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
//!         conn.write(data);
//!         data.len()
//!     }
//!
//!     fn on_close(&mut self, _state: (), _reason: CloseReason) {
//!         self.open -= 1;
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let server = Server::builder()
//!         .addr("127.0.0.1:7000".parse().unwrap())
//!         .workers(2)
//!         .bind()?;
//!     println!("listening on {}", server.local_addr());
//!     let report = server.run(|_worker| Echo { open: 0 })?;
//!     eprintln!("{}", report.total());
//!     Ok(())
//! }
//! ```
//!
//! ## Modules
//!
//! - `worker`: the per-core loop, written once, generic over a backend `Driver`.
//! - `contract`: what the engine, the loop and the backends agree on: events in,
//!   intents out, connection references. Depends on neither `engine` nor `sys`.
//! - `engine`: connection state and handler calls; no syscalls, no clock, no logging.
//! - `sys`: everything that touches the kernel (the io_uring and epoll backends,
//!   signals, CPU pinning); the only module with `unsafe` code.
//! - `outbound`: connections the worker opens itself ([`Local::connect`], the
//!   [`Outbound`] trait), on the same ring and machinery as accepted ones, closed in
//!   the drain's teardown after the last request is answered.
//! - `drain`, `shared`: the shutdown sequence ([`ShutdownHandle`]).
//! - [`http`]: HTTP/1.1 on the engine.
//! - `sim` (cargo feature `sim`): an in-memory backend, to drive a handler and the engine
//!   deterministically without a kernel.
//! - `server`, `config`, `handler`, `listener`, `buf`, `stats`: the embedding API,
//!   listening sockets, output buffers, counters and the report.
//!
//! ## Logging
//!
//! The engine logs through the [`log`](https://docs.rs/log) facade and prints nothing by
//! itself: without a logger installed (`env_logger`, `tracing`'s `log` bridge, or your
//! own) it is silent. With one, a server logs one line at start (address, workers,
//! backend and the kernel features it found, or why io_uring was not used), one line
//! per drain phase and worker, one summary line when [`Server::run`] returns, and a
//! warning for each back-off and error; nothing per connection or request, so `info`
//! is fit for production. Targets follow the modules: `gracering::server` (start, and
//! the worker-level failures), `gracering::drain` (the drain's phases and its summary),
//! `gracering::worker` (accept back-offs, handler panics), `gracering::sys` and below
//! (the backends' errors). The drain report ([`Report`]) is returned either way.
//! - `metrics`: the live per-worker counters ([`Metrics`]) and their Prometheus text.

#![warn(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod bench;
mod buf;
mod clock;
mod config;
mod contract;
mod drain;
mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
pub mod http;
mod listener;
mod mailbox;
mod metrics;
mod notify;
mod outbound;
mod server;
mod shared;
#[cfg(feature = "sim")]
pub mod sim;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod upgrade;
mod worker;

pub use config::Builder;
#[cfg(feature = "sim")]
#[doc(hidden)]
pub use config::Fault;
pub use handler::{CloseReason, Conn, ConnId, Handler, Worker};
pub use mailbox::{ConnAddr, Mailbox, PostError};
pub use metrics::{CONTENT_TYPE, DURATION_BUCKETS, HttpMetrics, Metrics, WorkerMetrics};
pub use outbound::{ConnectOptions, Link, LinkError, LinkId, LinkStatus, Local, Outbound};
pub use server::Server;
pub use shared::{ShutdownHandle, Trigger};
pub use stats::{ClosedBy, Report, WorkerDrain, WorkerReport, WorkerStats};
pub use sys::Backend;
pub use sys::signal::block_shutdown_signals;
