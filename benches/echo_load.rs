//! Echo throughput: gracering's `echo` example against a tokio echo server.
//!
//! Each server runs alone on CPU 0 (one worker); the load generator runs on CPU 1 with
//! 100 connections doing 64-byte ping-pong. The load generator saturates its core
//! before a fast server does, so besides messages per second the figure that ranks the
//! servers is their CPU time per message. Runs alternate A B A B; medians are reported.
//!
//! ```text
//! cargo bench --bench echo_load
//! GRACERING_BENCH_SERVERS=tokio BENCH_SECS=3 BENCH_RUNS=1 cargo bench --bench echo_load
//! ```
//!
//! Environment: `GRACERING_BENCH_SERVERS` (default `gracering,tokio`), `BENCH_RUNS` (3),
//! `BENCH_SECS` (5, after a 1 s warm-up), `BENCH_CONNS` (100), `BENCH_SIZE` (64).
//! The tokio peer is the `tokio-echo` binary of `benches/peers`, built on the way.

mod support;

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use support::settings::env_or;
use testkit::build;
use testkit::loadgen::{self, Report};
use testkit::process::ServerProcess;

const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;
const WARMUP: Duration = Duration::from_secs(1);
/// A connection with no reply for this long counts as a timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    // `cargo bench` passes arguments such as `--bench`: there is nothing to take from them.
    support::exit_code("echo_load", bench())
}

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Gracering,
    /// The same echo example, forced onto the epoll backend.
    GraceringEpoll,
    Tokio,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Gracering => "gracering",
            Server::GraceringEpoll => "gracering-epoll",
            Server::Tokio => "tokio",
        }
    }

    /// The server's command line, given the `echo` example and the `tokio-echo` peer.
    fn command(self, echo_example: &Path, tokio_peer: &Path) -> Command {
        let mut cmd = match self {
            Server::Gracering | Server::GraceringEpoll => Command::new(echo_example),
            Server::Tokio => Command::new(tokio_peer),
        };
        match self {
            Server::Gracering => cmd
                .args(["--addr", "127.0.0.1:0", "--workers", "1"])
                .env("GRACERING_BACKEND", "uring"),
            Server::GraceringEpoll => cmd
                .args(["--addr", "127.0.0.1:0", "--workers", "1"])
                .env("GRACERING_BACKEND", "epoll"),
            Server::Tokio => cmd.env("GRACERING_BENCH_ADDR", "127.0.0.1:0"),
        };
        cmd
    }
}

struct Settings {
    servers: Vec<Server>,
    runs: usize,
    secs: f64,
    conns: usize,
    size: usize,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let names =
            env::var("GRACERING_BENCH_SERVERS").unwrap_or("gracering,gracering-epoll,tokio".into());
        let servers = names.split(',').map(|name| match name.trim() {
            "gracering" => Ok(Server::Gracering),
            "gracering-epoll" => Ok(Server::GraceringEpoll),
            "tokio" => Ok(Server::Tokio),
            other => Err(format!(
                "unknown server {other:?} (gracering, gracering-epoll, tokio)"
            )),
        });
        let settings = Settings {
            servers: servers.collect::<Result<_, _>>()?,
            runs: env_or("BENCH_RUNS", 3)?,
            secs: env_or("BENCH_SECS", 5.0)?,
            conns: env_or("BENCH_CONNS", 100)?,
            size: env_or("BENCH_SIZE", 64)?,
        };
        let positive = settings.runs > 0 && settings.secs > 0.0;
        if !positive || settings.conns == 0 || settings.size == 0 {
            return Err("BENCH_RUNS, BENCH_SECS, BENCH_CONNS and BENCH_SIZE must be > 0".into());
        }
        Ok(settings)
    }
}

fn bench() -> Result<(), Error> {
    let s = Settings::from_env()?;
    let gracering = s
        .servers
        .iter()
        .any(|s| matches!(s, Server::Gracering | Server::GraceringEpoll));
    let echo_example = match gracering {
        true => build::build_example(
            "echo",
            Some("set GRACERING_BENCH_SERVERS=tokio to measure the tokio peer alone"),
        )?,
        false => PathBuf::new(),
    };
    let tokio_peer = match s.servers.contains(&Server::Tokio) {
        true => build::build_peer("tokio-echo", None)?,
        false => PathBuf::new(),
    };
    println!(
        "echo_load: {} connections, {} B, {} s after {} s warm-up, {} runs; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}",
        s.conns,
        s.size,
        s.secs,
        WARMUP.as_secs(),
        s.runs
    );
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); s.servers.len()];
    for run in 1..=s.runs {
        for (i, &server) in s.servers.iter().enumerate() {
            let report = measure(&mut server.command(&echo_example, &tokio_peer), &s)?;
            println!("run {run} {:<10} {}", server.name(), describe(&report));
            reports[i].push(report);
        }
    }
    let summaries: Vec<_> = s.servers.iter().zip(&reports).map(Summary::of).collect();
    print_table(&summaries);
    println!("{}", json_line(&s, &summaries));
    Ok(())
}

/// One run: start the server, load it, kill it.
fn measure(cmd: &mut Command, s: &Settings) -> Result<Report, Error> {
    let server = ServerProcess::start(cmd, SERVER_CPU, START_TIMEOUT)?;
    let mut cfg = loadgen::Config::echo(server.addr(), s.conns, s.size);
    cfg.duration = Duration::from_secs_f64(s.secs);
    cfg.warmup = WARMUP;
    cfg.timeout = REPLY_TIMEOUT;
    cfg.cpu = Some(LOAD_CPU);
    cfg.server_pid = Some(server.pid());
    let report = loadgen::run(&cfg)?;
    server.kill()?;
    Ok(report)
}

fn describe(r: &Report) -> String {
    let cpu = r
        .cpu_us_per_message()
        .map_or("-".into(), |us| format!("{us:.2}"));
    format!(
        "{:>9.0} msgs/s  {cpu:>6} us CPU/msg  client {:>3.0}% CPU  errors {} (connect {}, reset {}, invalid {}, timeout {})",
        r.per_sec(),
        r.client_load() * 100.0,
        r.errors(),
        r.connect_errors,
        r.resets,
        r.invalid,
        r.timeouts
    )
}

/// Medians over the runs of one server; errors summed.
struct Summary {
    name: &'static str,
    msgs_per_s: f64,
    cpu_us_per_msg: Option<f64>,
    errors: u64,
}

impl Summary {
    fn of((server, reports): (&Server, &Vec<Report>)) -> Summary {
        let cpu: Option<Vec<f64>> = reports.iter().map(Report::cpu_us_per_message).collect();
        Summary {
            name: server.name(),
            msgs_per_s: median(reports.iter().map(Report::per_sec).collect()),
            cpu_us_per_msg: cpu.map(median),
            errors: reports.iter().map(Report::errors).sum(),
        }
    }
}

/// The ratios reported, as (numerator, denominator) server names.
const RATIOS: [(&str, &str); 3] = [
    ("gracering", "tokio"),
    ("gracering", "gracering-epoll"),
    ("gracering-epoll", "tokio"),
];

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// a / b: (msgs/s ratio, CPU per message ratio), when both were measured.
fn ratios(summaries: &[Summary], a: &str, b: &str) -> Option<(f64, Option<f64>)> {
    let find = |name| summaries.iter().find(|s| s.name == name);
    let (g, t) = (find(a)?, find(b)?);
    let cpu = g.cpu_us_per_msg.zip(t.cpu_us_per_msg).map(|(g, t)| g / t);
    Some((g.msgs_per_s / t.msgs_per_s, cpu))
}

fn print_table(summaries: &[Summary]) {
    println!(
        "\n{:<16} {:>14} {:>18} {:>7}",
        "server", "msgs/s median", "CPU us/msg median", "errors"
    );
    for s in summaries {
        let cpu = s.cpu_us_per_msg.map_or("-".into(), |c| format!("{c:.2}"));
        println!(
            "{:<16} {:>14.0} {:>18} {:>7}",
            s.name, s.msgs_per_s, cpu, s.errors
        );
    }
    for (a, b) in RATIOS {
        if let Some((msgs, cpu)) = ratios(summaries, a, b) {
            let cpu = cpu.map_or("-".into(), |c| format!("{c:.3}"));
            println!("{a}/{b}: msgs/s x{msgs:.3}, CPU/msg x{cpu} (under ~15% is noise)");
        }
    }
    println!();
}

/// The machine-readable result, formatted by hand.
fn json_line(s: &Settings, summaries: &[Summary]) -> String {
    let num = |v: Option<f64>, digits: usize| v.map_or("null".into(), |v| format!("{v:.digits$}"));
    let mut out = format!(
        r#"{{"bench":"echo_load","conns":{},"size":{},"runs":{},"secs":{}"#,
        s.conns, s.size, s.runs, s.secs
    );
    for name in ["gracering", "gracering-epoll", "tokio"] {
        let server = summaries.iter().find(|s| s.name == name).map(|s| {
            let (msgs, cpu) = (num(Some(s.msgs_per_s), 0), num(s.cpu_us_per_msg, 3));
            format!(
                r#"{{"msgs_per_s":{msgs},"cpu_us_per_msg":{cpu},"errors":{}}}"#,
                s.errors
            )
        });
        let _ = write!(out, r#","{name}":{}"#, server.unwrap_or("null".into()));
    }
    for (a, b) in RATIOS {
        let ratio = ratios(summaries, a, b).map(|(msgs, cpu)| {
            format!(
                r#"{{"msgs_per_s":{},"cpu_per_msg":{}}}"#,
                num(Some(msgs), 3),
                num(cpu, 3)
            )
        });
        let _ = write!(out, r#","{a}/{b}":{}"#, ratio.unwrap_or("null".into()));
    }
    out.push('}');
    out
}
