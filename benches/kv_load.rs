//! The kv service under load: gracering's `kv` example (HTTP in front of SQLite, a pool
//! of database threads answering through the mailbox) against `kv-hyper` of
//! `benches/peers` (hyper on a tokio current-thread runtime, the same SQLite through
//! `spawn_blocking` and a pool), one worker each, the same database settings (WAL,
//! `synchronous=NORMAL`, `BENCH_DB_THREADS` connections, busy timeout 5 s).
//!
//! Each run starts the server as a child pinned to CPU 0 on a fresh database file in a
//! temporary directory, preloads `BENCH_KEYS` keys (PUTs over one connection, 64 per
//! write) and loads it from CPU 1 with testkit's HTTP load generator (`httpgen`): C
//! keep-alive connections, one request in flight each, a fixed mix of `GET /kv/{key}`
//! and `PUT /kv/{key}` (`BENCH_PUT_PERCENT` of them, a value of `BENCH_VALUE_BYTES`) on
//! keys drawn uniformly from the preloaded ones, so every answer is a 200.
//!
//! Scenarios (`BENCH_SCENARIOS`, both by default):
//! - `load`: a 1 s warm-up, then `BENCH_SECS` measured: requests per second, server CPU
//!   per request (utime + stime of all its threads from `/proc/PID/task/*/stat`, before
//!   and after), latency p50 and p99 (of every response), errors, the generator's own CPU.
//! - `drain`: the same load, SIGTERM after `BENCH_DRAIN_AFTER` s (2.0): signal to exit,
//!   the exit code, requests lost (sent and answered by a reset or a close instead of a
//!   response), the other errors, responses completed after the signal and how many of
//!   those were requests already in flight at the signal (waiting on the database).
//!   gracering runs with `--drain-delay 0`; both with a grace period of 10 s.
//!
//! Runs alternate gracering and hyper; medians over `BENCH_RUNS`, ratios gracering /
//! hyper. Without `examples/kv/main.rs` in the tree the bench says so in one line and runs
//! the peer alone.
//!
//! ```text
//! cargo bench --bench kv_load
//! BENCH_RUNS=1 BENCH_SECS=2 BENCH_SCENARIOS=load cargo bench --bench kv_load
//! ```
//!
//! Environment: `BENCH_RUNS` (3), `BENCH_SECS` (10), `BENCH_CONNS` (50), `BENCH_KEYS`
//! (10000), `BENCH_PUT_PERCENT` (10), `BENCH_VALUE_BYTES` (100), `BENCH_DB_THREADS` (2),
//! `BENCH_DRAIN_AFTER` (2.0), `BENCH_SERVERS` (`gracering,hyper`), `BENCH_SCENARIOS`
//! (`load,drain`), `BENCH_VERBOSE` (the servers' stderr after a drain).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use support::drain_servers::Running;
use support::settings::env_or;
use support::stats;
use testkit::httpwire::{self, Parsed};
use testkit::process::ServerProcess;
use testkit::{build, httpgen, procstat};

const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;
const WARMUP: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A response not complete this long after its request counts as a timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(8);
/// The grace period both servers get in the drain scenario.
const GRACE: Duration = Duration::from_secs(10);
/// Time a server gets beyond the grace period before it is killed.
const EXIT_SLACK: Duration = Duration::from_secs(5);
/// Time the preload may take.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// PUTs per write while preloading.
const PRELOAD_BATCH: usize = 64;
/// Requests in the load's list, taken in turn (a fixed pseudo-random mix).
const MIX_LEN: usize = 1 << 16;
/// The busy timeout both servers set on their database connections.
const BUSY_TIMEOUT_MS: u64 = 5000;

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    support::exit_code("kv_load", bench())
}

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Gracering,
    Hyper,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Gracering => "gracering",
            Server::Hyper => "hyper",
        }
    }
}

struct Settings {
    runs: usize,
    secs: f64,
    conns: usize,
    keys: usize,
    put_percent: u32,
    value_bytes: usize,
    db_threads: usize,
    drain_after: f64,
    servers: Vec<Server>,
    load: bool,
    drain: bool,
    verbose: bool,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let list = |name: &str, default: &str| {
            let v = std::env::var(name).unwrap_or(default.into());
            v.split(',')
                .map(|x| x.trim().to_string())
                .collect::<Vec<_>>()
        };
        let mut servers = Vec::new();
        for name in list("BENCH_SERVERS", "gracering,hyper") {
            servers.push(match name.as_str() {
                "gracering" => Server::Gracering,
                "hyper" => Server::Hyper,
                _ => return Err(format!("unknown server {name:?}").into()),
            });
        }
        let scenarios = list("BENCH_SCENARIOS", "load,drain");
        if let Some(bad) = scenarios
            .iter()
            .find(|s| !["load", "drain"].contains(&s.as_str()))
        {
            return Err(format!("unknown scenario {bad:?} (load, drain)").into());
        }
        let s = Settings {
            runs: env_or("BENCH_RUNS", 3)?,
            secs: env_or("BENCH_SECS", 10.0)?,
            conns: env_or("BENCH_CONNS", 50)?,
            keys: env_or("BENCH_KEYS", 10_000)?,
            put_percent: env_or("BENCH_PUT_PERCENT", 10)?,
            value_bytes: env_or("BENCH_VALUE_BYTES", 100)?,
            db_threads: env_or("BENCH_DB_THREADS", 2)?,
            drain_after: env_or("BENCH_DRAIN_AFTER", 2.0)?,
            servers,
            load: scenarios.iter().any(|s| s == "load"),
            drain: scenarios.iter().any(|s| s == "drain"),
            verbose: std::env::var_os("BENCH_VERBOSE").is_some(),
        };
        let bad = s.runs == 0 || s.conns == 0 || s.keys == 0 || s.db_threads == 0;
        if bad || s.put_percent > 100 || !(s.secs > 0.0 && s.drain_after > 0.0) {
            return Err(
                "BENCH_RUNS, BENCH_SECS, BENCH_CONNS, BENCH_KEYS, BENCH_DB_THREADS, \
                 BENCH_DRAIN_AFTER must be > 0, BENCH_PUT_PERCENT <= 100"
                    .into(),
            );
        }
        Ok(s)
    }

    fn conditions(&self) -> String {
        format!(
            "{} connections, {}% PUT ({} B values) / GET over {} preloaded keys, {} database \
             threads, WAL + synchronous=NORMAL; servers on CPU {SERVER_CPU} (1 worker), load on \
             CPU {LOAD_CPU}; {} runs",
            self.conns, self.put_percent, self.value_bytes, self.keys, self.db_threads, self.runs
        )
    }
}

/// The binaries, built on the way.
struct Binaries {
    kv: PathBuf,
    peer: PathBuf,
}

fn bench() -> Result<(), Error> {
    let mut s = Settings::from_env()?;
    let has_kv = build::workspace_dir().join("examples/kv/main.rs").exists();
    if s.servers.contains(&Server::Gracering) && !has_kv {
        println!(
            "kv_load: examples/kv/main.rs is not in this tree: skipping gracering, measuring the peer alone"
        );
        s.servers.retain(|&k| k != Server::Gracering);
    }
    if s.servers.is_empty() {
        return Ok(());
    }
    let bins = Binaries {
        kv: match s.servers.contains(&Server::Gracering) {
            true => build::build_example("kv", None)?,
            false => PathBuf::new(),
        },
        peer: match s.servers.contains(&Server::Hyper) {
            true => build::build_peer("kv-hyper", None)?,
            false => PathBuf::new(),
        },
    };
    let mix: Arc<[Box<[u8]>]> = mix(&s).into();
    println!("kv_load: {}", s.conditions());
    let mut loads: Vec<Vec<Load>> = vec![Vec::new(); s.servers.len()];
    let mut drains: Vec<Vec<Drain>> = vec![Vec::new(); s.servers.len()];
    for run in 1..=s.runs {
        for (i, &server) in s.servers.iter().enumerate() {
            if s.load {
                let l = measure_load(server, &bins, &s, &mix, run)?;
                println!("run {run} load  {:<9} {}", server.name(), l.describe());
                loads[i].push(l);
            }
            if s.drain {
                let d = measure_drain(server, &bins, &s, &mix, run)?;
                println!("run {run} drain {:<9} {}", server.name(), d.describe());
                drains[i].push(d);
            }
        }
    }
    if s.load {
        print_load(&s, &loads);
    }
    if s.drain {
        print_drain(&s, &drains);
    }
    Ok(())
}

/// The temporary directory of one run's database, removed when dropped.
struct DbDir(PathBuf);

impl Drop for DbDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `server` on a fresh database and preloads it.
fn start(
    server: Server,
    bins: &Binaries,
    s: &Settings,
    run: usize,
) -> Result<(ServerProcess, DbDir), Error> {
    let dir = std::env::temp_dir().join(format!(
        "gracering-kv-load-{}-{}-{run}",
        std::process::id(),
        server.name()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = DbDir(dir);
    let db = dir.0.join("kv.sqlite");
    let mut cmd = match server {
        Server::Gracering => {
            let mut cmd = Command::new(&bins.kv);
            let grace = format!("{}ms", GRACE.as_millis());
            cmd.args(["--addr", "127.0.0.1:0", "--workers", "1", "--db"])
                .arg(&db)
                .args(["--db-threads", &s.db_threads.to_string()])
                .args(["--busy-timeout", &format!("{BUSY_TIMEOUT_MS}ms")])
                .args(["--drain-delay", "0ms", "--grace-period", &grace]);
            cmd
        }
        Server::Hyper => {
            let mut cmd = Command::new(&bins.peer);
            cmd.env("GRACERING_BENCH_ADDR", "127.0.0.1:0")
                .env("GRACERING_BENCH_DB", &db)
                .env("GRACERING_BENCH_DB_THREADS", s.db_threads.to_string())
                .env(
                    "GRACERING_BENCH_BUSY_TIMEOUT_MS",
                    BUSY_TIMEOUT_MS.to_string(),
                )
                .env("GRACERING_BENCH_GRACE_MS", GRACE.as_millis().to_string());
            cmd
        }
    };
    let process = ServerProcess::start_capturing(&mut cmd, SERVER_CPU, START_TIMEOUT)?;
    preload(process.addr(), s)?;
    Ok((process, dir))
}

/// `PUT /kv/{key}` with `value` as its body.
fn put(key: usize, value: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "PUT /kv/k{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: gracering-bench\r\n\
         Content-Length: {}\r\n\r\n",
        value.len()
    )
    .into_bytes();
    req.extend_from_slice(value);
    req
}

/// The load's requests: `MIX_LEN` of them, GET or PUT on a uniformly drawn key.
fn mix(s: &Settings) -> Vec<Box<[u8]>> {
    let value = vec![b'v'; s.value_bytes];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        // xorshift64*: a fixed sequence, the same for every server and run.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..MIX_LEN)
        .map(|_| {
            let key = (next() % s.keys as u64) as usize;
            match next() % 100 < u64::from(s.put_percent) {
                true => put(key, &value).into_boxed_slice(),
                false => httpwire::request(&format!("/kv/k{key}")),
            }
        })
        .collect()
}

/// PUTs every key once over one connection, `PRELOAD_BATCH` per write; each answer must
/// be a 201.
fn preload(addr: SocketAddr, s: &Settings) -> Result<(), Error> {
    let deadline = Instant::now() + PRELOAD_TIMEOUT;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let value = vec![b'v'; s.value_bytes];
    let mut buf = vec![0u8; 1 << 20];
    for first in (0..s.keys).step_by(PRELOAD_BATCH) {
        if Instant::now() > deadline {
            return Err(
                format!("preload: {first} of {} keys in {PRELOAD_TIMEOUT:?}", s.keys).into(),
            );
        }
        let batch = PRELOAD_BATCH.min(s.keys - first);
        let reqs: Vec<u8> = (first..first + batch)
            .flat_map(|k| put(k, &value))
            .collect();
        stream.write_all(&reqs)?;
        let (mut got, mut pos, mut answered) = (0, 0, 0);
        while answered < batch {
            match httpwire::parse(&buf[pos..got]) {
                Parsed::Complete(r) if r.status == 201 => {
                    pos += r.len;
                    answered += 1;
                    continue;
                }
                Parsed::Complete(r) => {
                    return Err(format!("preload: PUT answered {}", r.status).into());
                }
                Parsed::Invalid => return Err("preload: a response did not parse".into()),
                Parsed::Partial => {}
            }
            let n = stream.read(&mut buf[got..])?;
            if n == 0 {
                return Err("preload: the server closed the connection".into());
            }
            got += n;
        }
    }
    Ok(())
}

fn load_config(
    addr: SocketAddr,
    s: &Settings,
    mix: &Arc<[Box<[u8]>]>,
    limit: Duration,
) -> httpgen::Config {
    httpgen::Config {
        addr,
        conns: s.conns,
        path: "/".into(),
        requests: mix.clone(),
        timeout: REPLY_TIMEOUT,
        limit,
        cpu: Some(LOAD_CPU),
        signal: Arc::new(OnceLock::new()),
    }
}

/// One `load` run.
#[derive(Clone)]
struct Load {
    rps: f64,
    cpu_us_per_req: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// The generator's CPU load (share of one CPU).
    load_cpu: f64,
    stop_note: Option<String>,
}

impl Load {
    fn describe(&self) -> String {
        format!(
            "{:>8.0} req/s  {:>6.2} us CPU/req  latency p50 {:.0} us p99 {:.0} us  errors {}  load {:.0}% CPU{}",
            self.rps,
            self.cpu_us_per_req,
            self.p50_us,
            self.p99_us,
            self.errors,
            self.load_cpu * 100.0,
            self.stop_note
                .as_ref()
                .map_or(String::new(), |n| format!("  [{n}]"))
        )
    }
}

/// Errors of a load that ran to its time limit: the connections still open then are not.
fn load_errors(r: &httpgen::Report) -> u64 {
    r.errors() - r.still_open
}

fn measure_load(
    server: Server,
    bins: &Binaries,
    s: &Settings,
    mix: &Arc<[Box<[u8]>]>,
    run: usize,
) -> Result<Load, Error> {
    let (process, _dir) = start(server, bins, s, run)?;
    let addr = process.addr();
    httpgen::join(httpgen::spawn(&load_config(addr, s, mix, WARMUP))?)?;
    let pid = process.pid();
    let limit = Duration::from_secs_f64(s.secs);
    let (cpu_before, me_before) = (procstat::cpu_seconds(pid)?, own_cpu_seconds());
    let t0 = Instant::now();
    let report = httpgen::join(httpgen::spawn(&load_config(addr, s, mix, limit))?)?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(pid)? - cpu_before;
    let load_cpu = (own_cpu_seconds() - me_before) / wall;
    let exit = process.terminate(GRACE + EXIT_SLACK)?;
    let stop_note = match (exit.killed, exit.status.code()) {
        (true, _) => Some("killed after SIGTERM".to_string()),
        (false, Some(0)) => None,
        (false, code) => Some(format!("exit {code:?} after SIGTERM")),
    };
    let lat: Vec<f64> = report
        .latencies_ns
        .iter()
        .map(|&ns| ns as f64 / 1e3)
        .collect();
    Ok(Load {
        rps: report.completed as f64 / wall,
        cpu_us_per_req: cpu * 1e6 / report.completed.max(1) as f64,
        p50_us: stats::quantile(&lat, 0.5),
        p99_us: stats::quantile(&lat, 0.99),
        errors: load_errors(&report),
        load_cpu,
        stop_note,
    })
}

/// One `drain` run.
#[derive(Clone)]
struct Drain {
    exit_ms: f64,
    code: Option<i32>,
    killed: bool,
    lost: u64,
    /// Of those, answered by a reset and by a clean close.
    resets: u64,
    eof: u64,
    /// Errors besides the lost requests.
    other_errors: u64,
    /// 2xx responses completed after the signal, and those of requests started before it.
    after_signal: u64,
    in_flight_answered: u64,
    refused_after_signal: u64,
}

impl Drain {
    fn describe(&self) -> String {
        format!(
            "exit {:.1} ms after SIGTERM, code {}{}, lost {} (reset {}, closed {}), other errors \
             {}, answered after the signal {} ({} in flight at it), refused after it {}",
            self.exit_ms,
            self.code.map_or("-".into(), |c| c.to_string()),
            if self.killed { " (killed)" } else { "" },
            self.lost,
            self.resets,
            self.eof,
            self.other_errors,
            self.after_signal,
            self.in_flight_answered,
            self.refused_after_signal
        )
    }
}

fn measure_drain(
    server: Server,
    bins: &Binaries,
    s: &Settings,
    mix: &Arc<[Box<[u8]>]>,
    run: usize,
) -> Result<Drain, Error> {
    let (process, _dir) = start(server, bins, s, run)?;
    let before = Duration::from_secs_f64(s.drain_after);
    let exit_limit = GRACE + EXIT_SLACK;
    let cfg = load_config(process.addr(), s, mix, before + exit_limit + EXIT_SLACK);
    let signal = cfg.signal.clone();
    let load = httpgen::spawn(&cfg)?;
    std::thread::sleep(before);
    let stopped = Running::Own(process).stop(exit_limit, &signal);
    let report = httpgen::join(load);
    let (stopped, report) = (stopped?, report?);
    if s.verbose {
        for line in stopped.stderr.lines() {
            println!("    {} stderr: {line}", server.name());
        }
    }
    let at = stopped.signalled_at;
    let (mut after, mut in_flight) = (0, 0);
    for (&done, &ns) in report.completions.iter().zip(&report.latencies_ns) {
        if done > at {
            after += 1;
            in_flight += u64::from(done - Duration::from_nanos(ns) < at);
        }
    }
    Ok(Drain {
        exit_ms: stopped.exit.as_secs_f64() * 1e3,
        code: stopped.code,
        killed: stopped.killed,
        lost: report.lost(),
        resets: report.resets,
        eof: report.unanswered_eof,
        other_errors: report.errors() - report.lost(),
        after_signal: after,
        in_flight_answered: in_flight,
        refused_after_signal: report.refused_after_signal,
    })
}

/// CPU time (user + system) of this process so far, threads that ended included: the
/// load generator's thread is gone by the time it is read.
fn own_cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage that lives through the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn med<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    stats::median(&runs.iter().map(f).collect::<Vec<_>>())
}

fn print_load(s: &Settings, loads: &[Vec<Load>]) {
    println!(
        "\nload: {:.0} s per run after a 1 s warm-up; {}",
        s.secs,
        s.conditions()
    );
    println!(
        "{:<10} {:>12} {:>17} {:>8} {:>8} {:>7} {:>9}",
        "server", "req/s median", "CPU us/req median", "p50 us", "p99 us", "errors", "load CPU"
    );
    for (server, runs) in s.servers.iter().zip(loads) {
        println!(
            "{:<10} {:>12.0} {:>17.2} {:>8.0} {:>8.0} {:>7} {:>8.0}%",
            server.name(),
            med(runs, |r| r.rps),
            med(runs, |r| r.cpu_us_per_req),
            med(runs, |r| r.p50_us),
            med(runs, |r| r.p99_us),
            runs.iter().map(|r| r.errors).sum::<u64>(),
            med(runs, |r| r.load_cpu) * 100.0
        );
    }
    if let [g, h] = loads {
        println!(
            "gracering/hyper: req/s x{:.2}, CPU/req x{:.2}, p99 x{:.2} (differences under about 15% are noise here)",
            med(g, |r| r.rps) / med(h, |r| r.rps),
            med(g, |r| r.cpu_us_per_req) / med(h, |r| r.cpu_us_per_req),
            med(g, |r| r.p99_us) / med(h, |r| r.p99_us)
        );
    }
}

fn print_drain(s: &Settings, drains: &[Vec<Drain>]) {
    println!(
        "\ndrain: SIGTERM after {:.1} s of load, grace {} s; {}",
        s.drain_after,
        GRACE.as_secs(),
        s.conditions()
    );
    println!(
        "{:<10} {:>14} {:>11} {:>6} {:>13} {:>15} {:>14}",
        "server",
        "exit ms median",
        "exit codes",
        "lost",
        "other errors",
        "answered after",
        "in flight at"
    );
    for (server, runs) in s.servers.iter().zip(drains) {
        let codes: Vec<String> = (runs.iter())
            .map(|r| match (r.killed, r.code) {
                (true, _) => "killed".into(),
                (false, c) => c.map_or("-".into(), |c| c.to_string()),
            })
            .collect();
        println!(
            "{:<10} {:>14.1} {:>11} {:>6} {:>13} {:>15.0} {:>14.0}",
            server.name(),
            med(runs, |r| r.exit_ms),
            codes.join(","),
            runs.iter().map(|r| r.lost).sum::<u64>(),
            runs.iter().map(|r| r.other_errors).sum::<u64>(),
            med(runs, |r| r.after_signal as f64),
            med(runs, |r| r.in_flight_answered as f64)
        );
    }
    println!("(lost and other errors summed over the runs; the rest medians)");
}
