//! An echo server on gracering: every byte a client sends comes back.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:7000 --workers 2
//! ```
//!
//! Prints one line with the address, the worker count and the backend, then serves
//! until the process is stopped.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use gracering::{Conn, Handler, Server};

/// Echoes every byte back.
struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_open(&mut self, _conn: &mut Conn<'_>) {}

    fn on_data(&mut self, _state: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.write(data);
        data.len()
    }
}

struct Args {
    addr: SocketAddr,
    workers: Option<usize>,
    backlog: Option<u32>,
}

const USAGE: &str = "usage: echo [--addr IP:PORT] [--workers N] [--backlog N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        workers: None,
        backlog: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--addr" => args.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--workers" => {
                args.workers = Some(value()?.parse().map_err(|e| format!("--workers: {e}"))?)
            }
            "--backlog" => {
                args.backlog = Some(value()?.parse().map_err(|e| format!("--backlog: {e}"))?)
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mut builder = Server::builder().addr(args.addr);
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    if let Some(backlog) = args.backlog {
        builder = builder.backlog(backlog);
    }
    let server = match builder.bind() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("echo: cannot listen on {}: {e}", args.addr);
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
    match server.run(|_worker| Echo) {
        Ok(report) => {
            eprintln!("{{\"stats\":{}}}", report.total());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
