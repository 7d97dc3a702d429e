//! An echo server on gracering: every byte a client sends comes back.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:7000 --workers 2
//! ```
//!
//! Prints one line with the address, the worker count and the backend, then serves until
//! SIGTERM or SIGINT: the first starts the drain (connections finish, idle ones close at
//! once), a second one, or the grace period, cuts what is left. The drain report goes to
//! stderr as one JSON line.
//!
//! Exit codes: 0 after a clean drain; 3 when connections had to be cut (grace deadline
//! or second signal); 1 when the server could not start; 2 for bad arguments.
//!
//! gracering's log lines (start, drain phases, summary, warnings) go to stderr as
//! `LEVEL target: message`, levels from `RUST_LOG` (`warn`, `warn,gracering::drain=info`,
//! `off`; default `info`: see `common/logger.rs`). The JSON report is printed at any level.
//!
//! `--resources a,b` registers demonstration per-worker resources; each logs
//! `worker N: teardown NAME` when the worker tears it down (in reverse order, after the
//! worker's last connection closed).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use common::{SERVER_USAGE, ServerArgs};
use gracering::{Conn, Handler, Worker};

/// Echoes every byte back.
struct Echo;

impl Handler for Echo {
    type State = ();
    type Message = ();

    fn on_open(&mut self, _conn: &mut Conn<'_>) {}

    fn on_data(&mut self, _state: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.write(data);
        data.len()
    }
}

fn parse_args() -> Result<(ServerArgs, Vec<String>), String> {
    let mut server = ServerArgs::default();
    let mut resources = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        if server.take(&flag, &mut value)? {
            continue;
        }
        match flag.as_str() {
            "--resources" => resources = value()?.split(',').map(str::to_string).collect(),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((server, resources))
}

fn main() -> ExitCode {
    common::logger::init();
    let (args, resources) = match parse_args() {
        Ok(parsed) => parsed,
        Err(msg) => {
            eprintln!("{msg}\nusage: echo {SERVER_USAGE} [--resources NAME,NAME]");
            return ExitCode::from(2);
        }
    };
    let builder = args.builder(SocketAddr::from(([127, 0, 0, 1], 7000)));
    let server = match builder.bind() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("echo: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "gracering echo: listening on {}, workers={}, backend={}",
        server.local_addr(),
        server.workers(),
        server.backend()
    );
    let _ = std::io::stdout().flush();
    let make = |worker: &mut Worker| {
        for name in &resources {
            // Stands in for a per-core resource such as a database pool; gracering logs
            // its teardown.
            worker.on_teardown(name.clone(), || {});
        }
        Echo
    };
    match server.run(make) {
        Ok(report) => common::finish(&report),
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
