//! Drain latency: how long gracering's `echo` example takes from SIGTERM to exit while
//! 1,000 idle connections are open and 100 more carry continuous echo load, beside
//! references measured in the same run.
//!
//! - **gracering**: `examples/echo --workers 1`, pinned to CPU 0.
//! - **tokio**: a tokio current-thread echo server (`tokio-drain-echo` of
//!   `benches/peers`, built on the way) doing the same drain: on SIGTERM it stops accepting, every connection finishes the echo it is
//!   doing, shuts down its write side, reads off what the client still sends until the
//!   client's FIN (at most 1 s), and the process exits once every connection is gone.
//! - **floor**: the kernel's own cost of closing that many connections. This binary,
//!   re-executed and pinned to CPU 0, opens N = idle + busy loopback connections to a
//!   listener it owns (one round trip each), hands the client ends to a thread on CPU 1
//!   waiting in epoll (closing each on EOF), then times closing its own ends.
//! - **floor-fin**: the same set-up, timing the drains' protocol done as plainly as
//!   possible on one thread: `shutdown(SHUT_WR)` on every connection, then epoll until
//!   each client's EOF arrives, closing each then. A drain that waits for the clients'
//!   FIN cannot beat this; the gap between the two floors is the protocol's own cost.
//! - **tokio-drop** (not run by default): the tokio peer dropping each socket right
//!   after shutting down its write side, with no read-off (the naive drain).
//!
//! For each server the clients run on CPU 1: the idle connections (one echo round trip
//! each, then waiting in epoll, closing at EOF) and the load generator (64-byte
//! ping-pong, drain-aware: a clean EOF between two messages ends a connection, a reset
//! or a reply cut short is an error). After about 1 s of load the server gets SIGTERM
//! (by its PID) and we time the kill call to the child's exit (a pidfd turning
//! readable), the server's CPU time in between (scheduler time before, `wait4` after),
//! the first, median and last end seen by the clients, and how every connection ended.
//! Beside the resets the clients saw, the kernel's own count of resets sent for sockets
//! closed with unread data or receiving data after their close (`TCPAbortOnClose` +
//! `TCPAbortOnData` of `/proc/net/netstat`, from the signal until every client closed;
//! for the floors over the whole child) shows the ones a client that already closed never
//! sees. It is machine-wide: another process resetting connections meanwhile counts too.
//! The floors report the same from inside (their figure is the timed loop). Runs
//! alternate the subjects; medians and the maximum (p99 once there are 100 runs) are
//! reported, then one JSON line.
//!
//! Two scenarios, for the busy connections' clients (the idle ones always close at EOF):
//!
//! - **close** (the default): a load client closes its socket as soon as it reads the
//!   server's clean EOF, as the idle ones do.
//! - **hold** (`BENCH_HOLD=1`): a load client that reads the server's clean EOF stops
//!   (sends nothing more) and holds its socket open, without closing it, until the
//!   server has exited (or was killed), or at the latest [`HOLD_MAX`] after the last
//!   busy connection's EOF; then it closes. A server that waits for the client's FIN
//!   waits for all of its linger here. Issue 13 item 9's target is stated on this
//!   scenario: gracering's median signal-to-exit within x1.5 the `floor` subject's
//!   (closing N connections), the plain close floor, not floor-fin.
//!
//! The floors are the same in both scenarios (they have no load clients). The scenario
//! is named in the first line, above the table and in the JSON line (`"scenario"`).
//!
//! ```text
//! cargo bench --bench drain_echo
//! BENCH_RUNS=9 BENCH_SERVERS=gracering,tokio,tokio-drop,floor cargo bench --bench drain_echo
//! BENCH_IDLE=1100 BENCH_CONNS=0 BENCH_VERBOSE=1 cargo bench --bench drain_echo
//! BENCH_HOLD=1 cargo bench --bench drain_echo
//! ```
//!
//! Environment: `BENCH_RUNS` (5), `BENCH_IDLE` (1000), `BENCH_CONNS` (100),
//! `BENCH_LOAD_SECS` (1.0, load before the signal), `BENCH_SERVERS` (default
//! `gracering,tokio,floor,floor-fin`; `GRACERING_BENCH_SERVERS` also works),
//! `BENCH_HOLD` (0; 1: the hold scenario), `BENCH_VERBOSE` (set: print each server's
//! stderr).
//! The tokio peer's read-off is `GRACERING_BENCH_LINGER_MS` (1000; 0 = drop at once).
//! Role (`GRACERING_BENCH_ROLE`): `floor` measures the floor for `GRACERING_BENCH_FLOOR_N` connections, in
//! `GRACERING_BENCH_FLOOR_MODE` `close` (default) or `fin`.

mod support;

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use support::settings::env_or;
use support::stats::{median, quantile, quantile_label};
use testkit::process::ServerProcess;
use testkit::{build, idle, loadgen, pin};

const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// Bytes of each idle connection's single round trip.
const PING: usize = 16;
/// Bytes of each load message.
const MESSAGE: usize = 64;
/// Time a server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for opening all idle connections.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a server gets from SIGTERM to exit before it is killed (gracering's grace
/// period is 25 s by default).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// A load connection with no reply for this long counts as a timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time clients hold on after the server's exit limit, so they see how it ended.
const CLIENT_SLACK: Duration = Duration::from_secs(10);
/// Hold scenario: the longest a load client holds its socket after the last busy
/// connection's EOF, if the server has not exited by then (each server's linger, 1 s,
/// is well within it).
const HOLD_MAX: Duration = Duration::from_secs(5);
/// The floor lets the connections settle this long before closing them.
const FLOOR_SETTLE: Duration = Duration::from_millis(200);
/// Time the floor child may take in all.
const FLOOR_TIMEOUT: Duration = Duration::from_secs(120);

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    // `cargo bench` passes arguments such as `--bench`: there is nothing to take from them.
    let result = match env::var("GRACERING_BENCH_ROLE").as_deref() {
        Ok("floor") => floor::run(),
        _ => bench(),
    };
    support::exit_code("drain_echo", result)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Subject {
    Gracering,
    Tokio,
    TokioDrop,
    Floor,
    FloorFin,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Gracering => "gracering",
            Subject::Tokio => "tokio",
            Subject::TokioDrop => "tokio-drop",
            Subject::Floor => "floor",
            Subject::FloorFin => "floor-fin",
        }
    }

    fn parse(name: &str) -> Result<Subject, Error> {
        [
            Subject::Gracering,
            Subject::Tokio,
            Subject::TokioDrop,
            Subject::Floor,
            Subject::FloorFin,
        ]
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| {
            format!("unknown subject {name:?} (gracering, tokio, tokio-drop, floor, floor-fin)")
                .into()
        })
    }

    fn is_floor(self) -> bool {
        matches!(self, Subject::Floor | Subject::FloorFin)
    }

    /// The server's command line (not for the floors).
    fn command(self, servers: &Servers) -> Result<Command, Error> {
        let peer = |linger_ms: &str| -> Result<Command, Error> {
            let mut cmd = Command::new(&servers.tokio_peer);
            cmd.env("GRACERING_BENCH_ADDR", "127.0.0.1:0")
                .env("GRACERING_BENCH_LINGER_MS", linger_ms);
            Ok(cmd)
        };
        match self {
            Subject::Gracering => {
                let mut cmd = Command::new(&servers.echo_example);
                cmd.args(["--addr", "127.0.0.1:0", "--workers", "1"]);
                Ok(cmd)
            }
            Subject::Tokio => peer("1000"),
            Subject::TokioDrop => peer("0"),
            Subject::Floor | Subject::FloorFin => Err("a floor is not a server".into()),
        }
    }
}

/// The server binaries, built for the subjects that need them.
struct Servers {
    /// gracering's `echo` example.
    echo_example: PathBuf,
    /// The `tokio-drain-echo` peer.
    tokio_peer: PathBuf,
}

struct Settings {
    subjects: Vec<Subject>,
    runs: usize,
    idle: usize,
    conns: usize,
    load: Duration,
    /// The hold scenario: load clients hold their socket open after the server's EOF.
    hold: bool,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        // `GRACERING_BENCH_SERVERS` is what `echo_load` reads; either name works here.
        let names = env::var("BENCH_SERVERS")
            .or_else(|_| env::var("GRACERING_BENCH_SERVERS"))
            .unwrap_or("gracering,tokio,floor,floor-fin".into());
        let subjects = names.split(',').map(|n| Subject::parse(n.trim()));
        let s = Settings {
            subjects: subjects.collect::<Result<_, _>>()?,
            runs: env_or("BENCH_RUNS", 5)?,
            idle: env_or("BENCH_IDLE", 1000)?,
            conns: env_or("BENCH_CONNS", 100)?,
            load: Duration::try_from_secs_f64(env_or("BENCH_LOAD_SECS", 1.0)?)?,
            hold: match env_or("BENCH_HOLD", 0u8)? {
                0 => false,
                1 => true,
                other => return Err(format!("bad BENCH_HOLD: {other} (0 or 1)").into()),
            },
        };
        if s.runs == 0 || s.subjects.is_empty() || s.idle + s.conns == 0 {
            return Err(
                "BENCH_RUNS, BENCH_SERVERS and BENCH_IDLE + BENCH_CONNS must be > 0".into(),
            );
        }
        Ok(s)
    }

    fn total(&self) -> usize {
        self.idle + self.conns
    }

    /// The scenario's name, as printed and in the JSON line.
    fn scenario(&self) -> &'static str {
        match self.hold {
            true => "hold",
            false => "close",
        }
    }

    /// What the load clients do at the server's EOF, for the first line and the table.
    fn scenario_text(&self) -> &'static str {
        match self.hold {
            true => "hold: busy clients stop and hold their socket open after the server's EOF",
            false => "close: every client closes at the server's EOF",
        }
    }
}

/// What one run of one subject measured.
#[derive(Default)]
struct Run {
    /// Servers: SIGTERM to exit. Floor: the close loop. Floor-fin: from the first FIN
    /// to the last close.
    exit_ms: f64,
    /// Servers: what the server itself reported as its drain's duration.
    server_ms: Option<f64>,
    /// From the signal (floor: the first close) to the last connection closed by the
    /// clients.
    clients_closed_ms: Option<f64>,
    /// From the signal (floor: the first close) to the first idle connection's end.
    first_end_ms: Option<f64>,
    /// From the signal (floor: the first close) until half the idle connections ended.
    half_ended_ms: Option<f64>,
    /// Servers: from the signal to the last busy connection's clean EOF.
    last_load_eof_ms: Option<f64>,
    /// Servers: CPU time from the signal to exit. Floors: CPU time of the timed part.
    cpu_ms: Option<f64>,
    /// Connections the figure covers (for microseconds per connection).
    conns: usize,
    idle: idle::Report,
    load: Option<loadgen::Report>,
    /// Load messages per second before the signal (approximately).
    load_rate: Option<f64>,
    exit_code: Option<i32>,
    killed: bool,
    /// Extra detail for the run's line (gracering's drain report).
    note: String,
    /// Resets the kernel sent over the run, machine-wide ([`testkit::procstat::tcp_aborts`]).
    kernel_aborts: Option<u64>,
}

impl Run {
    fn us_per_conn(&self) -> f64 {
        self.exit_ms * 1e3 / self.conns.max(1) as f64
    }

    fn resets(&self) -> u64 {
        self.idle.resets + self.load.as_ref().map_or(0, |l| l.resets)
    }

    /// Everything that should not happen, resets included.
    fn errors(&self) -> u64 {
        let i = &self.idle;
        let idle = i.open_errors + i.resets + i.other_errors + i.unexpected_data + i.still_open;
        let load = self.load.as_ref().map_or(0, loadgen::Report::errors);
        idle + load + u64::from(self.killed)
    }
}

fn bench() -> Result<(), Error> {
    let s = Settings::from_env()?;
    let echo_example = match s.subjects.contains(&Subject::Gracering) {
        true => build::build_example(
            "echo",
            Some("set BENCH_SERVERS=tokio,floor to measure the references alone"),
        )?,
        false => PathBuf::new(),
    };
    let tokio = [Subject::Tokio, Subject::TokioDrop];
    let tokio_peer = match s.subjects.iter().any(|s| tokio.contains(s)) {
        true => build::build_peer("tokio-drain-echo", None)?,
        false => PathBuf::new(),
    };
    let servers = Servers {
        echo_example,
        tokio_peer,
    };
    // Everything of ours runs on the client CPU; servers are pinned to theirs at spawn.
    pin::pin_current_thread(CLIENT_CPU)?;
    println!(
        "drain_echo: {} idle + {} busy connections ({MESSAGE} B echo ping-pong), SIGTERM after {:.1} s of load, \
         {} runs; server on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}; scenario {}",
        s.idle,
        s.conns,
        s.load.as_secs_f64(),
        s.runs,
        s.scenario_text()
    );
    let mut runs: Vec<Vec<Run>> = (0..s.subjects.len()).map(|_| Vec::new()).collect();
    for n in 1..=s.runs {
        for (i, &subject) in s.subjects.iter().enumerate() {
            let run = match subject {
                Subject::Floor | Subject::FloorFin => measure_floor(subject, &s)?,
                _ => measure_drain(subject, &servers, &s)?,
            };
            println!("run {n} {:<10} {}", subject.name(), describe(subject, &run));
            runs[i].push(run);
        }
    }
    let summaries: Vec<Summary> = s
        .subjects
        .iter()
        .zip(&runs)
        .map(|(&subject, runs)| Summary::of(subject, runs))
        .collect();
    print_table(&s, &summaries);
    println!("{}", json_line(&s, &summaries));
    Ok(())
}

/// One drain of one server: idle connections and load, SIGTERM, and how it all ended.
fn measure_drain(subject: Subject, servers: &Servers, s: &Settings) -> Result<Run, Error> {
    let mut cmd = subject.command(servers)?;
    let server = ServerProcess::start_capturing(&mut cmd, SERVER_CPU, START_TIMEOUT)?;
    let addr = server.addr();
    let client_time = s.load + EXIT_TIMEOUT + CLIENT_SLACK;
    let holders = idle::open(&idle::Config {
        addr,
        conns: s.idle,
        ping: PING,
        timeout: OPEN_TIMEOUT,
        hold: client_time,
        cpu: Some(CLIENT_CPU),
    })?;
    let mut cfg = loadgen::Config::echo(addr, s.conns, MESSAGE);
    cfg.warmup = Duration::ZERO;
    cfg.duration = client_time;
    cfg.timeout = REPLY_TIMEOUT;
    cfg.cpu = Some(CLIENT_CPU);
    cfg.drain_aware = true;
    let hold = s.hold.then(|| loadgen::Hold::new(HOLD_MAX));
    cfg.hold_after_eof = hold.clone();
    let load_started = Instant::now();
    let load = loadgen::spawn(&cfg)?;
    std::thread::sleep(s.load);
    let aborts_before = testkit::procstat::tcp_aborts().ok();
    let exit = server.terminate(EXIT_TIMEOUT);
    // The held sockets close once the server is gone (or could not be stopped).
    if let Some(hold) = &hold {
        hold.release();
    }
    let exit = exit?;
    let idle = holders.wait()?;
    let load = loadgen::join(load)?;
    let aborts_after = testkit::procstat::tcp_aborts().ok();

    let since_signal = |t: Option<Instant>| {
        t.map(|t| t.saturating_duration_since(exit.signalled_at).as_secs_f64() * 1e3)
    };
    if env::var_os("BENCH_VERBOSE").is_some() {
        for line in exit.stderr.lines() {
            println!("    {} stderr: {line}", subject.name());
        }
    }
    let last_close = idle.last_end.max(load.last_close);
    let drain_line = exit.stderr.lines().rev().find(|l| l.contains("\"drain\""));
    let num = |key| drain_line.and_then(|l| testkit::json::json_number(l, key));
    let mut note = String::new();
    if subject == Subject::Gracering {
        let int = |key| num(key).map_or("?".into(), |v| format!("{v:.0}"));
        let ms = |key| num(key).map_or("?".into(), |v| format!("{v:.2}"));
        note = format!(
            "[server: accept stopped {} ms, worker finished {} ms, drained {}, closed idle {}, aborted {}]",
            ms("accept_stopped_ms"),
            ms("finished_ms"),
            int("drained"),
            int("closed_idle"),
            int("aborted"),
        );
    }
    if drain_line.is_none() {
        let tail: String = exit
            .stderr
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        note.push_str(&format!(" [no drain report; stderr ends: {tail:?}]"));
    }
    if idle.first_end.is_some_and(|t| t < exit.signalled_at) {
        note.push_str(" [an idle connection ended before the signal]");
    }
    let load_secs = exit
        .signalled_at
        .saturating_duration_since(load_started)
        .as_secs_f64();
    Ok(Run {
        exit_ms: exit.after.as_secs_f64() * 1e3,
        server_ms: num("duration_ms"),
        clients_closed_ms: since_signal(last_close),
        first_end_ms: since_signal(idle.first_end),
        half_ended_ms: since_signal(half_ended(&idle.ends)),
        last_load_eof_ms: since_signal(load.last_eof),
        cpu_ms: exit.cpu.map(|d| d.as_secs_f64() * 1e3),
        conns: s.total(),
        load_rate: Some(load.messages as f64 / load_secs.max(1e-9)),
        load: Some(load),
        idle,
        exit_code: exit.status.code(),
        killed: exit.killed,
        note,
        kernel_aborts: aborts_before
            .zip(aborts_after)
            .map(|(b, a)| a.saturating_sub(b)),
    })
}

/// One floor measurement, in a child pinned to the server CPU.
fn measure_floor(subject: Subject, s: &Settings) -> Result<Run, Error> {
    let mode = match subject {
        Subject::FloorFin => "fin",
        _ => "close",
    };
    let mut cmd = Command::new(env::current_exe()?);
    cmd.env("GRACERING_BENCH_ROLE", "floor")
        .env("GRACERING_BENCH_FLOOR_N", s.total().to_string())
        .env("GRACERING_BENCH_FLOOR_MODE", mode);
    let aborts_before = testkit::procstat::tcp_aborts().ok();
    let out = testkit::process::run_pinned(&mut cmd, SERVER_CPU, FLOOR_TIMEOUT)?;
    let aborts_after = testkit::procstat::tcp_aborts().ok();
    let line = out.stdout.lines().find(|l| l.contains("\"floor\""));
    let (Some(line), true) = (line, out.status.success()) else {
        return Err(format!("floor failed ({}): {}", out.status, out.stderr.trim()).into());
    };
    let num = |key| testkit::json::json_number(line, key);
    let count = |key| num(key).unwrap_or(0.0) as u64;
    Ok(Run {
        exit_ms: num("close_ms").ok_or("floor: no close_ms")?,
        clients_closed_ms: num("clients_closed_ms"),
        first_end_ms: num("first_eof_ms"),
        half_ended_ms: num("half_eof_ms"),
        cpu_ms: num("close_cpu_ms"),
        conns: count("n") as usize,
        idle: idle::Report {
            opened: count("n"),
            eof: count("eof"),
            resets: count("resets"),
            other_errors: count("other_errors"),
            unexpected_data: count("unexpected_data"),
            still_open: count("still_open"),
            ..idle::Report::default()
        },
        exit_code: out.status.code(),
        kernel_aborts: aborts_before
            .zip(aborts_after)
            .map(|(b, a)| a.saturating_sub(b)),
        ..Run::default()
    })
}

/// When half of the connections had ended (the median of `ends`).
fn half_ended(ends: &[Instant]) -> Option<Instant> {
    let mut ends = ends.to_vec();
    ends.sort();
    ends.get(ends.len().saturating_sub(1) / 2).copied()
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn opt_count(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn describe(subject: Subject, r: &Run) -> String {
    let i = &r.idle;
    let timeline = format!(
        "first EOF {} ms, half the idle EOFs {} ms, clients closed {} ms",
        opt_ms(r.first_end_ms),
        opt_ms(r.half_ended_ms),
        opt_ms(r.clients_closed_ms)
    );
    if subject.is_floor() {
        return format!(
            "close {:.2} ms for {} ({:.1} us/conn, CPU {} ms); {timeline}; \
             EOF {}/{} reset {} other {} still open {}; kernel resets {}",
            r.exit_ms,
            r.conns,
            r.us_per_conn(),
            opt_ms(r.cpu_ms),
            i.eof,
            i.opened,
            i.resets,
            i.other_errors,
            i.still_open,
            opt_count(r.kernel_aborts)
        );
    }
    let load = r.load.as_ref().map_or("-".into(), |l| {
        format!(
            "load {:.0} msg/s, EOF {} (held {}, last {} ms) reset {} invalid {} timeout {} connect {}",
            r.load_rate.unwrap_or(0.0),
            l.eof,
            l.held,
            opt_ms(r.last_load_eof_ms),
            l.resets,
            l.invalid,
            l.timeouts,
            l.connect_errors
        )
    });
    format!(
        "exit {:.2} ms ({:.1} us/conn; server says {} ms, CPU {} ms); {timeline}; \
         idle EOF {}/{} reset {} other {} data {} open-err {} still open {}; {load}; kernel resets {}; exit code {}{} {}",
        r.exit_ms,
        r.us_per_conn(),
        opt_ms(r.server_ms),
        opt_ms(r.cpu_ms),
        i.eof,
        i.opened,
        i.resets,
        i.other_errors,
        i.unexpected_data,
        i.open_errors,
        i.still_open,
        opt_count(r.kernel_aborts),
        r.exit_code.map_or("none".into(), |c| c.to_string()),
        if r.killed { " (KILLED)" } else { "" },
        r.note
    )
}

/// One subject over all runs: medians, the high quantile of the headline figure, and
/// counts summed over the runs.
struct Summary {
    subject: Subject,
    exit_median: f64,
    exit_high: f64,
    us_per_conn: f64,
    server_median: Option<f64>,
    cpu_median: Option<f64>,
    first_end_median: Option<f64>,
    half_ended_median: Option<f64>,
    clients_closed_median: Option<f64>,
    resets: u64,
    /// Summed over the runs; `None` if any run could not read the count.
    kernel_aborts: Option<u64>,
    errors: u64,
    idle_eof: u64,
    idle_total: u64,
    load_eof: u64,
    /// Of `load_eof`, the connections whose client held its socket open.
    load_held: u64,
    last_load_eof_median: Option<f64>,
    exit_codes: String,
}

impl Summary {
    fn of(subject: Subject, runs: &[Run]) -> Summary {
        let exits: Vec<f64> = runs.iter().map(|r| r.exit_ms).collect();
        let med = |f: fn(&Run) -> Option<f64>| -> Option<f64> {
            let v: Option<Vec<f64>> = runs.iter().map(f).collect();
            v.map(|v| median(&v))
        };
        let us: Vec<f64> = runs.iter().map(Run::us_per_conn).collect();
        let code = |r: &Run| r.exit_code.map_or("none".into(), |c| c.to_string());
        let mut codes: Vec<String> = runs.iter().map(code).collect();
        codes.sort();
        codes.dedup();
        let exit_codes = codes
            .iter()
            .map(|c| format!("{c}x{}", runs.iter().filter(|r| code(r) == *c).count()))
            .collect::<Vec<_>>()
            .join(",");
        Summary {
            subject,
            exit_median: median(&exits),
            exit_high: quantile(&exits, 0.99),
            us_per_conn: median(&us),
            server_median: med(|r| r.server_ms),
            cpu_median: med(|r| r.cpu_ms),
            first_end_median: med(|r| r.first_end_ms),
            half_ended_median: med(|r| r.half_ended_ms),
            clients_closed_median: med(|r| r.clients_closed_ms),
            resets: runs.iter().map(Run::resets).sum(),
            kernel_aborts: runs.iter().map(|r| r.kernel_aborts).sum(),
            errors: runs.iter().map(Run::errors).sum(),
            idle_eof: runs.iter().map(|r| r.idle.eof).sum(),
            idle_total: runs
                .iter()
                .map(|r| r.idle.opened + r.idle.open_errors)
                .sum(),
            load_eof: runs
                .iter()
                .filter_map(|r| r.load.as_ref())
                .map(|l| l.eof)
                .sum(),
            load_held: runs
                .iter()
                .filter_map(|r| r.load.as_ref())
                .map(|l| l.held)
                .sum(),
            last_load_eof_median: med(|r| r.last_load_eof_ms),
            exit_codes,
        }
    }
}

/// gracering's median signal-to-exit over each reference: (JSON key, wording, target).
/// The floor's target is the close scenario's; the hold scenario's is [`HOLD_FLOOR_TARGET`].
const RATIOS: [(&str, &str, &str); 4] = [
    ("gracering_tokio", "tokio's", " (target <= x1.00)"),
    (
        "gracering_floor",
        "the floor's close loop",
        " (target <= x1.20)",
    ),
    (
        "gracering_floor_clients_closed",
        "the floor's clients-closed time",
        "",
    ),
    ("gracering_floor_fin", "floor-fin's", ""),
];

/// The hold scenario's target over the `floor` subject (issue 13 item 9).
const HOLD_FLOOR_TARGET: &str = " (hold scenario's target <= x1.50)";

/// The values of [`RATIOS`], where both sides were measured.
fn ratios(summaries: &[Summary]) -> [Option<f64>; 4] {
    let find = |s| summaries.iter().find(|x| x.subject == s);
    let g = find(Subject::Gracering).map(|x| x.exit_median);
    let ratio = |other: Option<f64>| g.zip(other).map(|(g, o)| g / o);
    let floor = find(Subject::Floor);
    [
        ratio(find(Subject::Tokio).map(|x| x.exit_median)),
        ratio(floor.map(|x| x.exit_median)),
        ratio(floor.and_then(|x| x.clients_closed_median)),
        ratio(find(Subject::FloorFin).map(|x| x.exit_median)),
    ]
}

fn print_table(s: &Settings, summaries: &[Summary]) {
    let high = quantile_label(s.runs);
    println!(
        "\nscenario {}\n{} idle + {} busy connections, {} runs, medians (floors: {} connections; the exit \
         figure is the close loop, for floor-fin first FIN to last close)",
        s.scenario_text(),
        s.idle,
        s.conns,
        s.runs,
        s.total()
    );
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>10} {:>7} {:>10} {:>9} {:>14}",
        "subject",
        "exit ms",
        format!("{high} ms"),
        "us/conn",
        "server ms",
        "CPU ms",
        "first EOF",
        "half EOF",
        "clients closed"
    );
    for x in summaries {
        println!(
            "{:<10} {:>8.2} {:>8.2} {:>8.1} {:>10} {:>7} {:>10} {:>9} {:>14}",
            x.subject.name(),
            x.exit_median,
            x.exit_high,
            x.us_per_conn,
            opt_ms(x.server_median),
            opt_ms(x.cpu_median),
            opt_ms(x.first_end_median),
            opt_ms(x.half_ended_median),
            opt_ms(x.clients_closed_median),
        );
    }
    println!(
        "\n{:<10} {:>7} {:>10} {:>7} {:>11} {:>9} {:>9} {:>14} {:>10}   (summed over the runs; last load EOF: median ms)",
        "subject",
        "resets",
        "kernel RST",
        "errors",
        "idle EOF",
        "load EOF",
        "held",
        "last load EOF",
        "exit codes"
    );
    for x in summaries {
        let (load_eof, held) = match x.subject {
            Subject::Floor | Subject::FloorFin => ("-".to_string(), "-".to_string()),
            _ => (x.load_eof.to_string(), x.load_held.to_string()),
        };
        println!(
            "{:<10} {:>7} {:>10} {:>7} {:>11} {:>9} {:>9} {:>14} {:>10}",
            x.subject.name(),
            x.resets,
            opt_count(x.kernel_aborts),
            x.errors,
            format!("{}/{}", x.idle_eof, x.idle_total),
            load_eof,
            held,
            opt_ms(x.last_load_eof_median),
            x.exit_codes
        );
    }
    let shown: Vec<String> = RATIOS
        .iter()
        .zip(ratios(summaries))
        .filter_map(|((key, wording, target), r)| {
            let target = match (*key, s.hold) {
                ("gracering_floor", true) => HOLD_FLOOR_TARGET,
                _ => target,
            };
            Some(format!("  x{:.2} {wording}{target}", r?))
        })
        .collect();
    if !shown.is_empty() {
        println!("\ngracering signal-to-exit median (differences under ~15% are noise here):");
        println!("{}", shown.join("\n"));
    }
    println!();
}

/// The machine-readable result, formatted by hand.
fn json_line(s: &Settings, summaries: &[Summary]) -> String {
    let num = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.3}"));
    let mut out = format!(
        r#"{{"bench":"drain_echo","scenario":"{}","idle":{},"conns":{},"runs":{},"load_secs":{}"#,
        s.scenario(),
        s.idle,
        s.conns,
        s.runs,
        s.load.as_secs_f64()
    );
    for x in summaries {
        let _ = write!(
            out,
            r#","{}":{{"exit_ms_median":{},"exit_ms_{}":{},"us_per_conn":{},"server_ms":{},"cpu_ms":{},"first_eof_ms":{},"half_eof_ms":{},"clients_closed_ms":{},"resets":{},"kernel_resets":{},"errors":{},"idle_eof":{},"idle_total":{},"load_eof":{},"load_held":{},"last_load_eof_ms":{},"exit_codes":"{}"}}"#,
            x.subject.name(),
            num(Some(x.exit_median)),
            quantile_label(s.runs),
            num(Some(x.exit_high)),
            num(Some(x.us_per_conn)),
            num(x.server_median),
            num(x.cpu_median),
            num(x.first_end_median),
            num(x.half_ended_median),
            num(x.clients_closed_median),
            x.resets,
            x.kernel_aborts.map_or("null".into(), |v| v.to_string()),
            x.errors,
            x.idle_eof,
            x.idle_total,
            x.load_eof,
            x.load_held,
            num(x.last_load_eof_median),
            x.exit_codes
        );
    }
    let pairs: Vec<String> = RATIOS
        .iter()
        .zip(ratios(summaries))
        .map(|((key, ..), r)| format!(r#""{key}":{}"#, num(r)))
        .collect();
    let _ = write!(out, r#","ratio":{{{}}}}}"#, pairs.join(","));
    out
}

/// The floor: the kernel's own cost of closing N loopback connections from one core.
mod floor {
    use super::*;

    pub fn run() -> Result<(), Error> {
        let n: usize = env_or("GRACERING_BENCH_FLOOR_N", 1100)?;
        // One round trip each, within 30 s, as the shared floor's.
        let (clients, mut servers) = support::floor::open_pairs(n)?;
        let holders = idle::hold(clients, Some(CLIENT_CPU), FLOOR_TIMEOUT / 2)?;
        let fin = match env::var("GRACERING_BENCH_FLOOR_MODE").as_deref() {
            Ok("fin") => true,
            Ok("close") | Err(_) => false,
            Ok(other) => return Err(format!("unknown floor mode {other:?} (close, fin)").into()),
        };
        // Registered before the clock starts: a server has its sockets in its poller.
        let held = if fin {
            Some(idle::Held::new(std::mem::take(&mut servers))?)
        } else {
            None
        };
        std::thread::sleep(FLOOR_SETTLE);
        let cpu_start = testkit::procstat::thread_cpu_seconds();
        let start = Instant::now();
        let close = match held {
            // The bare cost: close every connection (FIN, the rest is the kernel's).
            None => {
                for server in servers {
                    drop(server);
                }
                start.elapsed()
            }
            // The same protocol as the drains: FIN to all, then close each one once
            // its client's FIN (EOF) is read.
            Some(held) => {
                for stream in held.streams() {
                    stream.shutdown(std::net::Shutdown::Write)?;
                }
                let own = held.run(start + FLOOR_TIMEOUT / 2)?;
                if own.eof != n as u64 {
                    return Err(format!("floor-fin: {} of {n} clients sent EOF", own.eof).into());
                }
                own.last_end.map_or(start.elapsed(), |t| t - start)
            }
        };
        let close_cpu = testkit::procstat::thread_cpu_seconds() - cpu_start;
        let r = holders.wait()?;
        let after = |t: Option<Instant>| {
            t.map_or("null".into(), |t| {
                format!("{:.3}", (t - start).as_secs_f64() * 1e3)
            })
        };
        println!(
            r#"{{"floor":{{"n":{n},"close_ms":{:.3},"close_cpu_ms":{:.3},"clients_closed_ms":{},"first_eof_ms":{},"half_eof_ms":{},"eof":{},"resets":{},"other_errors":{},"unexpected_data":{},"still_open":{}}}}}"#,
            close.as_secs_f64() * 1e3,
            close_cpu * 1e3,
            after(r.last_end),
            after(r.first_end),
            after(half_ended(&r.ends)),
            r.eof,
            r.resets,
            r.other_errors,
            r.unexpected_data,
            r.still_open
        );
        Ok(())
    }
}
