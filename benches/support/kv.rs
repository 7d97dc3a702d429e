//! What the kv benchmarks share, whatever the store behind the servers: `kv_load`
//! (SQLite) and `kv_redis` (Redis) start their servers their own way and hand the
//! running process to the load and drain scenarios here.
//!
//! - [`Settings`]: the settings both read from the environment (`BENCH_RUNS`,
//!   `BENCH_SECS`, `BENCH_CONNS`, `BENCH_KEYS`, `BENCH_PUT_PERCENT`,
//!   `BENCH_VALUE_BYTES`, `BENCH_DRAIN_AFTER`, `BENCH_SERVERS`, `BENCH_SCENARIOS`,
//!   `BENCH_VERBOSE`).
//! - [`mix`]: the load's fixed list of `GET /kv/{key}` and `PUT /kv/{key}` requests;
//!   [`preload`]: every key PUT once through the server under test.
//! - [`measure_load`]: a warm-up, then the measured window (requests per second, the
//!   server's CPU per request, and a store process's CPU per request when there is one,
//!   latency p50 and p99); [`measure_drain`]: SIGTERM under load, what was lost.
//! - [`print_load`], [`print_drain`]: the tables of medians and the ratios.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::drain_servers::{Running, Stopped};
use super::settings::env_or;
use super::stats;
use testkit::httpwire::{self, Parsed};
use testkit::process::ServerProcess;
use testkit::{build, httpgen, procstat};

pub const SERVER_CPU: usize = 0;
pub const LOAD_CPU: usize = 1;
const WARMUP: Duration = Duration::from_secs(1);
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A response not complete this long after its request counts as a timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(8);
/// The grace period both servers get in the drain scenario.
pub const GRACE: Duration = Duration::from_secs(10);
/// Time a server gets beyond the grace period before it is killed.
const EXIT_SLACK: Duration = Duration::from_secs(5);
/// Time the preload may take.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// PUTs per write while preloading.
const PRELOAD_BATCH: usize = 64;
/// Requests in the load's list, taken in turn (a fixed pseudo-random mix).
const MIX_LEN: usize = 1 << 16;

pub type Error = Box<dyn std::error::Error>;

/// The two servers of a kv benchmark: gracering's `kv` example and its peer.
#[derive(Clone, Copy, PartialEq)]
pub enum Server {
    Gracering,
    Hyper,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Gracering => "gracering",
            Server::Hyper => "hyper",
        }
    }
}

/// Whether the `kv` example is in this tree (one file, or a directory of its own).
pub fn has_kv_example() -> bool {
    let examples = build::workspace_dir().join("examples");
    examples.join("kv.rs").exists() || examples.join("kv/main.rs").exists()
}

/// The settings both kv benchmarks read from the environment.
pub struct Settings {
    pub runs: usize,
    pub secs: f64,
    pub conns: usize,
    pub keys: usize,
    pub put_percent: u32,
    pub value_bytes: usize,
    pub drain_after: f64,
    pub servers: Vec<Server>,
    pub load: bool,
    pub drain: bool,
    pub verbose: bool,
}

impl Settings {
    pub fn from_env() -> Result<Settings, Error> {
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
            drain_after: env_or("BENCH_DRAIN_AFTER", 2.0)?,
            servers,
            load: scenarios.iter().any(|s| s == "load"),
            drain: scenarios.iter().any(|s| s == "drain"),
            verbose: std::env::var_os("BENCH_VERBOSE").is_some(),
        };
        let bad = s.runs == 0 || s.conns == 0 || s.keys == 0;
        if bad || s.put_percent > 100 || !(s.secs > 0.0 && s.drain_after > 0.0) {
            return Err(
                "BENCH_RUNS, BENCH_SECS, BENCH_CONNS, BENCH_KEYS, BENCH_DRAIN_AFTER must be \
                 > 0, BENCH_PUT_PERCENT <= 100"
                    .into(),
            );
        }
        Ok(s)
    }

    /// The load's part of the conditions line.
    pub fn load_conditions(&self) -> String {
        format!(
            "{} connections, {}% PUT ({} B values) / GET over {} preloaded keys",
            self.conns, self.put_percent, self.value_bytes, self.keys
        )
    }
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
pub fn mix(s: &Settings) -> Arc<[Box<[u8]>]> {
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
pub fn preload(addr: SocketAddr, s: &Settings) -> Result<(), Error> {
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
pub struct Load {
    pub rps: f64,
    pub cpu_us_per_req: f64,
    /// The store process's CPU per request (Redis), when it has one.
    pub store_cpu_us_per_req: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    /// The generator's CPU load (share of one CPU).
    pub load_cpu: f64,
    pub stop_note: Option<String>,
}

impl Load {
    pub fn describe(&self) -> String {
        format!(
            "{:>8.0} req/s  {:>6.2} us CPU/req{}  latency p50 {:.0} us p99 {:.0} us  errors {}  load {:.0}% CPU{}",
            self.rps,
            self.cpu_us_per_req,
            self.store_cpu_us_per_req
                .map_or(String::new(), |us| format!("  store {us:.2} us CPU/req")),
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

/// A store's CPU time so far (Redis's), read around the measured window.
pub type StoreCpu<'a> = &'a dyn Fn() -> io::Result<Duration>;

/// One `load` run against `process` (already preloaded), stopped with SIGTERM after it.
pub fn measure_load(
    process: ServerProcess,
    s: &Settings,
    mix: &Arc<[Box<[u8]>]>,
    store_cpu: Option<StoreCpu<'_>>,
) -> Result<Load, Error> {
    let addr = process.addr();
    httpgen::join(httpgen::spawn(&load_config(addr, s, mix, WARMUP))?)?;
    let pid = process.pid();
    let limit = Duration::from_secs_f64(s.secs);
    let store_before = store_cpu.map(|f| f()).transpose()?;
    let (cpu_before, me_before) = (procstat::cpu_seconds(pid)?, own_cpu_seconds());
    let t0 = Instant::now();
    let report = httpgen::join(httpgen::spawn(&load_config(addr, s, mix, limit))?)?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(pid)? - cpu_before;
    let load_cpu = (own_cpu_seconds() - me_before) / wall;
    let store = match (store_cpu, store_before) {
        (Some(f), Some(before)) => Some(f()? - before),
        _ => None,
    };
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
    let per_req = |secs: f64| secs * 1e6 / report.completed.max(1) as f64;
    Ok(Load {
        rps: report.completed as f64 / wall,
        cpu_us_per_req: per_req(cpu),
        store_cpu_us_per_req: store.map(|d| per_req(d.as_secs_f64())),
        p50_us: stats::quantile(&lat, 0.5),
        p99_us: stats::quantile(&lat, 0.99),
        errors: load_errors(&report),
        load_cpu,
        stop_note,
    })
}

/// One `drain` run.
#[derive(Clone)]
pub struct Drain {
    pub exit_ms: f64,
    pub code: Option<i32>,
    pub killed: bool,
    pub lost: u64,
    /// Of those, answered by a reset and by a clean close.
    pub resets: u64,
    pub eof: u64,
    /// Errors besides the lost requests.
    pub other_errors: u64,
    /// 2xx responses completed after the signal, and those of requests started before it.
    pub after_signal: u64,
    pub in_flight_answered: u64,
    pub refused_after_signal: u64,
}

impl Drain {
    pub fn describe(&self) -> String {
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

/// A drain run's summary, with the load's report and how the server stopped (for a
/// store's own checks).
pub struct Drained {
    pub drain: Drain,
    pub report: httpgen::Report,
    pub stopped: Stopped,
}

/// One `drain` run against `process` (already preloaded): the load, `before_signal`
/// run `lead` before SIGTERM (at `BENCH_DRAIN_AFTER` s), the load until the server
/// exited.
pub fn measure_drain(
    process: ServerProcess,
    name: &str,
    s: &Settings,
    mix: &Arc<[Box<[u8]>]>,
    lead: Duration,
    before_signal: impl FnOnce() -> Result<(), Error>,
) -> Result<Drained, Error> {
    let before = Duration::from_secs_f64(s.drain_after);
    let exit_limit = GRACE + EXIT_SLACK;
    let cfg = load_config(process.addr(), s, mix, before + exit_limit + EXIT_SLACK);
    let signal = cfg.signal.clone();
    let load = httpgen::spawn(&cfg)?;
    std::thread::sleep(before.saturating_sub(lead));
    let prepared = before_signal();
    std::thread::sleep(lead.min(before));
    let stopped = Running::Own(process).stop(exit_limit, &signal);
    let report = httpgen::join(load);
    let (stopped, report) = (stopped?, report?);
    prepared?;
    if s.verbose {
        for line in stopped.stderr.lines() {
            println!("    {name} stderr: {line}");
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
    let drain = Drain {
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
    };
    Ok(Drained {
        drain,
        report,
        stopped,
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

pub fn med<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    stats::median(&runs.iter().map(f).collect::<Vec<_>>())
}

/// The load table: medians per server, the ratios gracering / hyper; a column of the
/// store's CPU per request when the runs measured it (`store`: its name).
pub fn print_load(s: &Settings, conditions: &str, store: &str, loads: &[Vec<Load>]) {
    println!(
        "\nload: {:.0} s per run after a 1 s warm-up; {conditions}",
        s.secs
    );
    let has_store = loads
        .iter()
        .flatten()
        .any(|r| r.store_cpu_us_per_req.is_some());
    let store_head = format!("{store} CPU us/req");
    let store_col = |runs: &[Load]| match has_store {
        true => format!(
            " {:>w$.2}",
            med(runs, |r| r.store_cpu_us_per_req.unwrap_or(f64::NAN)),
            w = store_head.len()
        ),
        false => String::new(),
    };
    println!(
        "{:<10} {:>12} {:>17}{} {:>8} {:>8} {:>7} {:>9}",
        "server",
        "req/s median",
        "CPU us/req median",
        if has_store {
            format!(" {store_head}")
        } else {
            String::new()
        },
        "p50 us",
        "p99 us",
        "errors",
        "load CPU"
    );
    for (server, runs) in s.servers.iter().zip(loads) {
        println!(
            "{:<10} {:>12.0} {:>17.2}{} {:>8.0} {:>8.0} {:>7} {:>8.0}%",
            server.name(),
            med(runs, |r| r.rps),
            med(runs, |r| r.cpu_us_per_req),
            store_col(runs),
            med(runs, |r| r.p50_us),
            med(runs, |r| r.p99_us),
            runs.iter().map(|r| r.errors).sum::<u64>(),
            med(runs, |r| r.load_cpu) * 100.0
        );
    }
    if let [g, h] = loads {
        let store_ratio = match has_store {
            true => format!(
                ", {store} CPU/req x{:.2}",
                med(g, |r| r.store_cpu_us_per_req.unwrap_or(f64::NAN))
                    / med(h, |r| r.store_cpu_us_per_req.unwrap_or(f64::NAN))
            ),
            false => String::new(),
        };
        println!(
            "gracering/hyper: req/s x{:.2}, CPU/req x{:.2}, p99 x{:.2}{store_ratio} (differences under about 15% are noise here)",
            med(g, |r| r.rps) / med(h, |r| r.rps),
            med(g, |r| r.cpu_us_per_req) / med(h, |r| r.cpu_us_per_req),
            med(g, |r| r.p99_us) / med(h, |r| r.p99_us)
        );
    }
}

/// The drain table: per server, medians and sums over the runs.
pub fn print_drain(s: &Settings, conditions: &str, drains: &[Vec<Drain>]) {
    println!(
        "\ndrain: SIGTERM after {:.1} s of load, grace {} s; {conditions}",
        s.drain_after,
        GRACE.as_secs(),
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
