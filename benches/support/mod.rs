//! Code shared by the benchmark binaries; each one includes it with `mod support;`.
//!
//! What the end-to-end tests need too (child servers, load generators, /proc readings,
//! building the examples and peers) is the workspace's `testkit` crate, which the
//! benches use directly. What is the benches' own:
//!
//! - [`stats`]: medians and percentiles over runs.
//! - [`timeline`]: per-millisecond client-side timelines around a signal, as CSV.
//! - [`floor`]: the kernel's cost of closing N loopback connections (a child role).
//! - [`exit_code`] (here): `main`'s result as the process's exit code.
//! - [`settings`]: settings read from the environment ([`settings::env_or`]).
//! - [`peers`]: nginx and Go's net/http as peer servers, where installed.
//! - [`svg`]: a small SVG line-chart writer.
//! - [`drain_servers`]: the servers `drain_http` stops, started and timed alike;
//!   [`drain_report`]: its runs, tables and JSON line.
//! - [`kv`]: the kv benchmarks' settings, request mix, preload, load and drain
//!   scenarios and tables, whatever the store (`kv_load`: SQLite, `kv_redis`: Redis);
//!   [`redis_close`]: when a server's Redis connections ended, as Redis saw it.
//!
//! The tokio and hyper peers are binaries of the `gracering-peers` member
//! (`benches/peers`), built with `testkit::build::build_peers` and run as child processes.
//!
//! A typical run: start the server on CPU 0, run the load from CPU 1 with
//! `server_pid` set so the report carries the server's CPU time, then kill the server.

// Every bench binary compiles this whole tree but uses only part of it.
#![allow(dead_code)]

pub mod drain_report;
pub mod drain_servers;
pub mod floor;
pub mod kv;
pub mod peers;
pub mod redis_close;
pub mod settings;
pub mod stats;
pub mod svg;
pub mod timeline;

use std::process::ExitCode;

/// The result of `main`'s role (the bench itself or a child role) as the process's exit
/// code; an error is printed on stderr as `{bench}: {error}` first.
pub fn exit_code(bench: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bench}: {e}");
            ExitCode::FAILURE
        }
    }
}
