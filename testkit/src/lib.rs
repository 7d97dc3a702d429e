//! What gracering's end-to-end tests (`tests/support`) and benchmarks (`benches/support`)
//! share, written once: child servers, load generators, /proc readings.
//!
//! - [`process`]: child servers and tools: spawn (pinned, dying with us), read the
//!   address a server prints ([`process::parse_addr`]), keep its stderr, signal, kill
//!   and time them by PID.
//! - [`build`]: building the examples and the peer servers; the workspace and target
//!   directories.
//! - [`pin`]: pin a thread, or a child process from its start, to one CPU.
//! - [`procstat`]: another process's CPU time, descriptors and descendants, and the
//!   machine's CPU time, read from `/proc`.
//! - [`json`]: numbers from the one-line JSON reports servers print.
//! - [`loadgen`]: the closed-loop TCP echo load generator.
//! - [`httpwire`]: the client's side of HTTP/1.1 (request, response parser, idle
//!   keep-alive connections); [`httpgen`]: the drain-aware HTTP load generator.
//! - [`idle`]: idle connections held open in epoll, reporting how each one ended.
//! - [`epoll`]: the minimal epoll set the client sides use.
//! - [`redis`]: a real `redis-server` child (kill, restart on its port, its CPU time),
//!   a blocking RESP2 client for test commands, and a `MONITOR` reader.
//!
//! It is a `publish = false` member of the workspace and a dev-dependency of the root
//! crate (as `testkit`): compiled once for all test and bench binaries, with its API
//! checked as a library's (no `allow(dead_code)`), and needing nothing but `libc` and `httparse` (both the engine's own dependencies).

pub mod build;
pub mod epoll;
pub mod httpgen;
pub mod httpwire;
pub mod idle;
pub mod json;
pub mod loadgen;
pub mod pin;
pub mod process;
pub mod procstat;
pub mod redis;
