//! HTTP throughput: gracering's `http` example against a hyper 1.x hello-world server,
//! both loaded by `wrk`.
//!
//! Each server runs alone on CPU 0 (one worker); `wrk -t1 -c100` runs on CPU 1, plain
//! (one request in flight per connection) and pipelined (16 per write, through
//! `benches/pipeline.lua`). On these machines wrk on one core tops out near 100k to
//! 120k plain requests per second, before a fast server does, so besides requests per
//! second the figure that ranks the servers is their CPU time per request: user +
//! system time from `/proc/PID/task/*/stat`, sampled just before and just after the
//! measured wrk run, divided by the requests wrk completed. Runs alternate A B A B
//! within each mode; medians are reported, with the ratios gracering / hyper.
//!
//! ```text
//! cargo bench --bench http_load
//! BENCH_RUNS=1 BENCH_SECS=3 BENCH_MODES=pipelined BENCH_SERVERS=gracering cargo bench --bench http_load
//! ```
//!
//! Environment: `BENCH_RUNS` (3), `BENCH_SECS` (10, after a 1 s warm-up run of wrk),
//! `BENCH_CONNS` (100), `BENCH_MODES` (`plain,pipelined`), `BENCH_SERVERS`
//! (`gracering,hyper`). Without `wrk` on the `PATH` the bench prints
//! `wrk not installed: skipping` and exits 0.
//!
//! Besides the table and one JSON line on stdout, each measured wrk report is kept in
//! `target/http_load/MODE-SERVER-RUN.txt`. Each run line also shows wrk's own CPU load
//! (near 100% means wrk was the limit), the CPU time used by anything else on the
//! machine meanwhile ("other": a busy neighbour spoils the run) and the time the
//! hypervisor stole. Latency percentiles are wrk's, for plain mode only: wrk's are
//! wrong when pipelining.
//!
//! The hyper peer is the `hyper-hello` binary of `benches/peers`, built on the way and
//! run with `GRACERING_BENCH_PIPELINE_FLUSH=1` (hyper batches pipelined answers).

mod support;

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use support::settings::env_or;
use support::stats;
use testkit::process::ServerProcess;
use testkit::{build, procstat};

const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;
/// Length of the unmeasured wrk run before each measured one.
const WARMUP_SECS: u32 = 1;
/// Time a server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time gracering gets to drain after SIGTERM (its default grace period is 25 s; with
/// wrk gone there is nothing left to drain).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time wrk gets beyond its own `-d`, before it is killed and the run fails.
const WRK_SLACK: Duration = Duration::from_secs(30);
/// Requests per write in pipelined mode: the depth set in `benches/pipeline.lua`.
const PIPELINE_DEPTH: usize = 16;
/// What the targets ask of gracering against hyper: CPU per request at most this ratio.
const TARGET_CPU_RATIO: f64 = 0.75;
/// ... and requests per second at least this ratio.
const TARGET_RPS_RATIO: f64 = 1.0;

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    // `cargo bench` passes arguments such as `--bench`: there is nothing to take from them.
    support::exit_code("http_load", bench())
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

    /// The server's command line, given the `http` example and the `hyper-hello` peer.
    fn command(self, http_example: &Path, hyper_peer: &Path) -> Command {
        match self {
            Server::Gracering => {
                let mut cmd = Command::new(http_example);
                cmd.args(["--addr", "127.0.0.1:0", "--workers", "1"]);
                cmd
            }
            Server::Hyper => {
                let mut cmd = Command::new(hyper_peer);
                cmd.env("GRACERING_BENCH_ADDR", "127.0.0.1:0")
                    .env("GRACERING_BENCH_PIPELINE_FLUSH", "1");
                cmd
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Pipelined,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Pipelined => "pipelined",
        }
    }
}

struct Settings {
    modes: Vec<Mode>,
    servers: Vec<Server>,
    runs: usize,
    secs: u32,
    conns: usize,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let modes = list("BENCH_MODES", "plain,pipelined", |name| match name {
            "plain" => Some(Mode::Plain),
            "pipelined" => Some(Mode::Pipelined),
            _ => None,
        })?;
        let servers = list("BENCH_SERVERS", "gracering,hyper", |name| match name {
            "gracering" => Some(Server::Gracering),
            "hyper" => Some(Server::Hyper),
            _ => None,
        })?;
        let s = Settings {
            modes,
            servers,
            runs: env_or("BENCH_RUNS", 3)?,
            secs: env_or("BENCH_SECS", 10)?,
            conns: env_or("BENCH_CONNS", 100)?,
        };
        if s.runs == 0 || s.secs == 0 || s.conns == 0 {
            return Err("BENCH_RUNS, BENCH_SECS and BENCH_CONNS must be > 0".into());
        }
        Ok(s)
    }
}

/// A comma-separated list from `name` (or `default`), each item known to `parse`.
fn list<T>(name: &str, default: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, Error> {
    let value = env::var(name).unwrap_or(default.into());
    let items: Vec<T> = value
        .split(',')
        .map(|item| {
            parse(item.trim()).ok_or(format!("{name}: unknown item {item:?} (default {default})"))
        })
        .collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Err(format!("{name} is empty").into());
    }
    Ok(items)
}

/// The `wrk` binary on the `PATH`, if there is one.
fn find_wrk() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|candidate| candidate.is_file())
}

fn bench() -> Result<(), Error> {
    let s = Settings::from_env()?;
    let Some(wrk) = find_wrk() else {
        println!("http_load: wrk not installed: skipping (Debian package `wrk`)");
        return Ok(());
    };
    let script = build::workspace_dir().join("benches/pipeline.lua");
    let target = build::target_dir();
    let http_example = match s.servers.contains(&Server::Gracering) {
        true => build::build_example(
            "http",
            Some("set BENCH_SERVERS=hyper to measure the hyper peer alone"),
        )?,
        false => PathBuf::new(),
    };
    let hyper_peer = match s.servers.contains(&Server::Hyper) {
        true => build::build_peer("hyper-hello", None)?,
        false => PathBuf::new(),
    };
    let out_dir = target.join("http_load");
    std::fs::create_dir_all(&out_dir)?;
    println!(
        "http_load: wrk's reports go to {}; \"other\" below is CPU time used by anything \
         but the server and wrk during the run (other processes, per cent of one CPU), \
         \"steal\" is time the hypervisor took",
        out_dir.display()
    );
    println!(
        "http_load: wrk -t1 -c{} -d{}s (after a {WARMUP_SECS} s warm-up), {} runs per server and mode; \
         server on CPU {SERVER_CPU} (1 worker), wrk on CPU {LOAD_CPU}; pipelined = {PIPELINE_DEPTH} requests per write",
        s.conns, s.secs, s.runs
    );
    let mut results = Vec::new();
    for &mode in &s.modes {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); s.servers.len()];
        for run in 1..=s.runs {
            for (i, &server) in s.servers.iter().enumerate() {
                let mut cmd = server.command(&http_example, &hyper_peer);
                let r = measure(&mut cmd, server, mode, &wrk, &script, &s)?;
                let file = format!("{}-{}-{run}.txt", mode.name(), server.name());
                std::fs::write(out_dir.join(file), &r.report)?;
                println!(
                    "run {run} {:<9} {:<10} {}",
                    mode.name(),
                    server.name(),
                    r.describe()
                );
                runs[i].push(r);
            }
        }
        let summaries = s.servers.iter().zip(&runs).map(Summary::of).collect();
        results.push((mode, summaries));
    }
    print_table(&results);
    println!("{}", json_line(&s, &results));
    Ok(())
}

/// What one wrk run printed, and the server's CPU time over it.
#[derive(Clone)]
struct Run {
    wrk: WrkOutput,
    /// wrk's report as printed.
    report: String,
    /// Server CPU time (user + system, all threads) over the measured wrk run.
    server_cpu_s: f64,
    /// wrk's own CPU time over the measured run, and the run's wall time.
    client_cpu_s: f64,
    wall_s: f64,
    /// Machine-wide CPU time used by anything but the server and wrk over the run, and
    /// time stolen by the hypervisor (both summed over all CPUs).
    other_cpu_s: f64,
    steal_s: f64,
    /// How the server stopped: `None` when all was well, else a note.
    stop_note: Option<String>,
}

impl Run {
    fn cpu_us_per_request(&self) -> Option<f64> {
        (self.wrk.requests > 0).then(|| self.server_cpu_s * 1e6 / self.wrk.requests as f64)
    }

    fn describe(&self) -> String {
        let w = &self.wrk;
        let cpu = self
            .cpu_us_per_request()
            .map_or("-".into(), |us| format!("{us:.2}"));
        let lat = |v: Option<f64>| v.map_or("-".into(), |us| format!("{us:.0}"));
        let mut line = format!(
            "{:>9.0} req/s  {cpu:>6} us CPU/req  server {:>3.0}% CPU  wrk {:>3.0}% CPU  \
             other {:>2.0}% steal {:>2.0}%  latency p50 {} us p99 {} us  errors {} (socket {}, non-2xx {})",
            w.requests_per_sec,
            self.server_cpu_s / self.wall_s * 100.0,
            self.client_cpu_s / self.wall_s * 100.0,
            self.other_cpu_s.max(0.0) / self.wall_s * 100.0,
            self.steal_s / self.wall_s * 100.0,
            lat(w.p50_us),
            lat(w.p99_us),
            w.errors(),
            w.socket_errors,
            w.non_2xx
        );
        if let Some(note) = &self.stop_note {
            let _ = write!(line, "  [{note}]");
        }
        line
    }
}

/// One run: start the server, warm it up, load it while sampling its CPU time, stop it.
fn measure(
    cmd: &mut Command,
    server_kind: Server,
    mode: Mode,
    wrk: &Path,
    script: &Path,
    s: &Settings,
) -> Result<Run, Error> {
    // gracering logs its drain on stderr: kept, and shown only if it did not stop cleanly.
    let server = match server_kind {
        Server::Gracering => ServerProcess::start_capturing(cmd, SERVER_CPU, START_TIMEOUT)?,
        Server::Hyper => ServerProcess::start(cmd, SERVER_CPU, START_TIMEOUT)?,
    };
    let url = format!("http://{}/", server.addr());
    let wrk_cmd = |secs: u32| {
        let mut cmd = Command::new(wrk);
        cmd.args(["-t1", &format!("-c{}", s.conns), &format!("-d{secs}s")]);
        if mode == Mode::Pipelined {
            cmd.arg("-s").arg(script);
        }
        cmd.args(["--latency", &url]);
        cmd
    };
    run_wrk(&mut wrk_cmd(WARMUP_SECS), WARMUP_SECS)?;

    let pid = server.pid();
    let cpu_before = procstat::cpu_seconds(pid)?;
    let client_before = children_cpu_seconds();
    let system_before = procstat::system_cpu()?;
    let started = Instant::now();
    let output = run_wrk(&mut wrk_cmd(s.secs), s.secs)?;
    let wall_s = started.elapsed().as_secs_f64();
    let system_after = procstat::system_cpu()?;
    let client_cpu_s = children_cpu_seconds() - client_before;
    let server_cpu_s = procstat::cpu_seconds(pid)? - cpu_before;
    let busy_s = system_after.busy - system_before.busy;

    let stop_note = match server_kind {
        Server::Gracering => {
            let exit = server.terminate(STOP_TIMEOUT)?;
            let note = match (exit.killed, exit.status.success()) {
                (true, _) => Some(format!(
                    "not stopped {STOP_TIMEOUT:?} after SIGTERM: killed"
                )),
                (false, false) => Some(format!("exited with {} after SIGTERM", exit.status)),
                (false, true) => None,
            };
            if note.is_some() {
                eprintln!("http_load: gracering's stderr:\n{}", exit.stderr);
            }
            note
        }
        Server::Hyper => {
            server.kill()?;
            None
        }
    };
    let mut wrk =
        WrkOutput::parse(&output).ok_or_else(|| format!("cannot read wrk's output:\n{output}"))?;
    if mode == Mode::Pipelined {
        // wrk's latency percentiles do not hold when pipelining (see `WrkOutput::p99_us`).
        (wrk.p50_us, wrk.p99_us) = (None, None);
    }
    Ok(Run {
        wrk,
        report: output,
        server_cpu_s,
        client_cpu_s,
        wall_s,
        other_cpu_s: busy_s - server_cpu_s - client_cpu_s,
        steal_s: system_after.steal - system_before.steal,
        stop_note,
    })
}

/// Runs wrk pinned to the load CPU (as `taskset -c 1 wrk ...` would) and returns its
/// stdout; a failed or overlong run is an error.
fn run_wrk(cmd: &mut Command, secs: u32) -> Result<String, Error> {
    let limit = Duration::from_secs(secs.into()) + WRK_SLACK;
    Ok(testkit::process::run_pinned(cmd, LOAD_CPU, limit)?.stdout_if_success("wrk")?)
}

/// CPU time (user + system) of all our children reaped so far, in seconds. The only
/// child reaped during a measured run is wrk itself (servers are reaped after it), so
/// the difference across the run is wrk's CPU time.
fn children_cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage that lives through the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The figures taken from wrk's report.
#[derive(Clone, Debug, Default, PartialEq)]
struct WrkOutput {
    /// Responses wrk completed (`N requests in ...`).
    requests: u64,
    /// `Requests/sec:`.
    requests_per_sec: f64,
    /// connect + read + write + timeout errors (`Socket errors:`).
    socket_errors: u64,
    /// `Non-2xx or 3xx responses:`.
    non_2xx: u64,
    /// The 50% and 99% lines of `Latency Distribution` (`--latency`), in microseconds.
    /// With pipelining wrk records one latency per batch of responses, yet ranks its
    /// percentiles by responses: the upper ones come out as `0.00us` (read as unknown)
    /// or as some value that means little, so pipelined runs report no latency.
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

impl WrkOutput {
    /// Reads wrk 4's text report; `None` if the request count or rate is missing.
    fn parse(text: &str) -> Option<WrkOutput> {
        let mut out = WrkOutput::default();
        let (mut requests, mut rate) = (None, None);
        for line in text.lines().map(str::trim) {
            if line.contains(" requests in ") {
                requests = line.split_whitespace().next()?.parse().ok();
            } else if let Some(v) = line.strip_prefix("Requests/sec:") {
                rate = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 0, write 0, timeout 0"
                out.socket_errors = v
                    .split(',')
                    .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
            } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
                out.non_2xx = v.trim().parse().ok()?;
            } else if let Some(v) = line.strip_prefix("50%") {
                out.p50_us = parse_wrk_time(v.trim());
            } else if let Some(v) = line.strip_prefix("99%") {
                out.p99_us = parse_wrk_time(v.trim());
            }
        }
        out.requests = requests?;
        out.requests_per_sec = rate?;
        Some(out)
    }

    fn errors(&self) -> u64 {
        self.socket_errors + self.non_2xx
    }
}

/// A wrk duration such as `812.00us`, `1.23ms` or `2.01s`, in microseconds; `None` for
/// zero (see [`WrkOutput::p99_us`]).
fn parse_wrk_time(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    let us = number.parse::<f64>().ok()? * scale;
    (us > 0.0).then_some(us)
}

/// Medians over the runs of one server in one mode; errors summed.
struct Summary {
    name: &'static str,
    rps: f64,
    cpu_us_per_req: Option<f64>,
    p99_us: Option<f64>,
    client_load: f64,
    /// Median share of one CPU used by anything else during the runs.
    other_load: f64,
    errors: u64,
    stop_notes: usize,
}

impl Summary {
    fn of((server, runs): (&Server, &Vec<Run>)) -> Summary {
        let cpu: Option<Vec<f64>> = runs.iter().map(Run::cpu_us_per_request).collect();
        let p99: Option<Vec<f64>> = runs.iter().map(|r| r.wrk.p99_us).collect();
        let rps: Vec<f64> = runs.iter().map(|r| r.wrk.requests_per_sec).collect();
        let load: Vec<f64> = runs.iter().map(|r| r.client_cpu_s / r.wall_s).collect();
        let other: Vec<f64> = runs
            .iter()
            .map(|r| r.other_cpu_s.max(0.0) / r.wall_s)
            .collect();
        Summary {
            name: server.name(),
            rps: stats::median(&rps),
            cpu_us_per_req: cpu.map(|v| stats::median(&v)),
            p99_us: p99.map(|v| stats::median(&v)),
            client_load: stats::median(&load),
            other_load: stats::median(&other),
            errors: runs.iter().map(|r| r.wrk.errors()).sum(),
            stop_notes: runs.iter().filter(|r| r.stop_note.is_some()).count(),
        }
    }
}

/// gracering / hyper: (req/s ratio, CPU per request ratio), when both were measured.
fn ratios(summaries: &[Summary]) -> Option<(f64, Option<f64>)> {
    let find = |name| summaries.iter().find(|s| s.name == name);
    let (g, h) = (find("gracering")?, find("hyper")?);
    let cpu = g.cpu_us_per_req.zip(h.cpu_us_per_req).map(|(g, h)| g / h);
    Some((g.rps / h.rps, cpu))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn print_table(results: &[(Mode, Vec<Summary>)]) {
    println!(
        "\n{:<10} {:<10} {:>12} {:>17} {:>13} {:>8} {:>6} {:>7}",
        "mode",
        "server",
        "req/s median",
        "CPU us/req median",
        "p99 latency",
        "wrk CPU",
        "other",
        "errors"
    );
    for (mode, summaries) in results {
        for s in summaries {
            let cpu = s.cpu_us_per_req.map_or("-".into(), |c| format!("{c:.2}"));
            let p99 = s.p99_us.map_or("-".into(), |c| format!("{c:.0} us"));
            let mut line = format!(
                "{:<10} {:<10} {:>12.0} {:>17} {:>13} {:>7.0}% {:>5.0}% {:>7}",
                mode.name(),
                s.name,
                s.rps,
                cpu,
                p99,
                s.client_load * 100.0,
                s.other_load * 100.0,
                s.errors
            );
            if s.stop_notes > 0 {
                let _ = write!(line, "  ({} runs did not stop cleanly)", s.stop_notes);
            }
            println!("{line}");
        }
    }
    for (mode, summaries) in results {
        let Some((rps, cpu)) = ratios(summaries) else {
            continue;
        };
        let cpu_text = cpu.map_or("-".into(), |c| {
            let ok = c <= TARGET_CPU_RATIO;
            format!("x{c:.3} (target <= {TARGET_CPU_RATIO}: {})", verdict(ok))
        });
        println!(
            "gracering/hyper {:<9}: CPU/req {cpu_text}, req/s x{rps:.3} (target >= {TARGET_RPS_RATIO}: {})",
            mode.name(),
            verdict(rps >= TARGET_RPS_RATIO)
        );
    }
    println!("(differences under about 15% are noise on these machines)\n");
}

/// The machine-readable result, formatted by hand.
fn json_line(s: &Settings, results: &[(Mode, Vec<Summary>)]) -> String {
    let num = |v: Option<f64>, digits: usize| v.map_or("null".into(), |v| format!("{v:.digits$}"));
    let mut out = format!(
        r#"{{"bench":"http_load","conns":{},"runs":{},"secs":{},"pipeline_depth":{PIPELINE_DEPTH}"#,
        s.conns, s.runs, s.secs
    );
    for (mode, summaries) in results {
        let _ = write!(out, r#","{}":{{"#, mode.name());
        for name in ["gracering", "hyper"] {
            let server = summaries.iter().find(|s| s.name == name).map(|s| {
                format!(
                    r#"{{"req_per_s":{},"cpu_us_per_req":{},"p99_latency_us":{},"wrk_cpu":{},"other_cpu":{},"errors":{}}}"#,
                    num(Some(s.rps), 0),
                    num(s.cpu_us_per_req, 3),
                    num(s.p99_us, 0),
                    num(Some(s.client_load), 3),
                    num(Some(s.other_load), 3),
                    s.errors
                )
            });
            let _ = write!(out, r#""{name}":{},"#, server.unwrap_or("null".into()));
        }
        let ratio = ratios(summaries).map(|(rps, cpu)| {
            format!(
                r#"{{"req_per_s":{},"cpu_per_req":{}}}"#,
                num(Some(rps), 3),
                num(cpu, 3)
            )
        });
        let _ = write!(out, r#""ratio":{}}}"#, ratio.unwrap_or("null".into()));
    }
    out.push('}');
    out
}
