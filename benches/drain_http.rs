//! HTTP drain: how gracering's `http` example stops under SIGTERM, beside peers measured
//! in the same run, and the kernel's own floor.
//!
//! For each scenario and run, each server starts as a child pinned to CPU 0 (gracering
//! with `BENCH_WORKERS` workers, `--drain-delay 0` and the scenario's grace period).
//! From CPU 1 the clients open K idle keep-alive connections (one successful `GET /`
//! each, then waiting in epoll; each ends with FIN, RST or not at all) and C load
//! connections (one request at a time, reconnecting when a response says `Connection:
//! close` or the connection ends; see `support/httpgen.rs` for every outcome counted).
//! After the scenario's load time the server gets its graceful-stop signal (SIGTERM;
//! nginx SIGQUIT) by its PID, and we record: signal to exit, to the last client
//! connection closed, to the first and last idle end; 2xx responses completed after the
//! signal; lost requests, refusals after the signal, every error by kind; exit code.
//!
//! Scenarios (`BENCH_SCENARIOS`, all by default):
//! - `idle`: K = 1000, C = 0, signal once the idle connections are old enough.
//! - `loaded`: K = 1000, C = 100 on `GET /`, signal after `BENCH_LOAD_SECS` (1 s).
//! - `long`: K = 1000, C = 100 on `GET /slow?ms=2000`, signal after 1 s: every load
//!   connection has a request in flight that must complete (with `Connection: close`).
//! - `deadline`: K = 1000, C = 10 on `GET /slow?ms=5000`, grace period 1 s, signal
//!   after 0.5 s: the requests must be cut at the deadline (exit code 3); those cuts
//!   are counted apart, not as errors.
//!
//! Servers (`BENCH_SERVERS`, default `gracering,hyper,nginx,go`): hyper 1.x drained as
//! hyper-util's `GracefulShutdown` does it (the `hyper-drain` binary of `benches/peers`),
//! nginx (SIGQUIT) and Go's `Server.Shutdown` where installed; a server without `/slow`
//! is skipped for the scenarios that need it, with one line. The floor of each scenario
//! is the close loop of K + C loopback connections on CPU 0 with their clients on CPU 1
//! (`floor.rs`). Runs alternate the servers; per-run lines, then per scenario a table
//! of median and high quantile per figure (p99, the maximum below 100 runs), the
//! outcomes summed, the ratios of gracering's median exit to each peer's and to the
//! floor, the targets checked, and one JSON line at the end.
//!
//! Each run's client-side timeline (`ms_since_signal,completed,live`) goes to
//! `target/drain_http/SCENARIO-SERVER-RUN.csv`; per scenario, charts of the first run
//! go to `target/drain_http/drain-SCENARIO-live.svg` and `-completed.svg`.
//!
//! ```text
//! cargo bench --bench drain_http
//! BENCH_RUNS=5 BENCH_SCENARIOS=loaded BENCH_SERVERS=gracering,hyper cargo bench --bench drain_http
//! ```
//!
//! Environment: `BENCH_RUNS` (3), `BENCH_WORKERS` (1), `BENCH_IDLE` (K for every
//! scenario), `BENCH_CONNS` (C of `loaded` and `long`), `BENCH_LOAD_SECS` (1.0),
//! `BENCH_IDLE_AGE` (1.5: seconds from the idle connections' request to the signal, at
//! least; the load starts later if need be), `BENCH_VERBOSE` (the servers' stderr).
//!
//! The idle age matters to gracering: a connection silent for less than its linger
//! time (1 s by default) gets a FIN and is closed only at the client's FIN, while one
//! silent for longer is shut down both ways and closed at once. The default age puts
//! every idle connection in the second case, as long-idle keep-alive connections are;
//! `BENCH_IDLE_AGE=0.2` measures the first.

mod support;

use std::env;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use support::drain_report::{self, Run, Summary};
use support::drain_servers::{self, Kind, Spec};
use support::floor;
use support::settings::env_or;
use support::timeline::{self, ms_since};
use testkit::{build, httpgen, httpwire, idle, pin};

const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// Time allowed for opening all idle connections.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A response not complete this long after its request is a timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(8);
/// Time a server gets beyond its grace period before it is killed.
const EXIT_SLACK: Duration = Duration::from_secs(5);
/// Extra time the clients hold on after the server's time limit.
const CLIENT_SLACK: Duration = Duration::from_secs(5);
/// Timeline rows before the signal, at most.
const TIMELINE_BEFORE_MS: i64 = 200;

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    // `cargo bench` passes arguments such as `--bench`: there is nothing to take from them.
    let result = match env::var(floor::ROLE_VAR).as_deref() {
        Ok(floor::ROLE) => floor::run().map_err(Error::from),
        _ => bench(),
    };
    support::exit_code("drain_http", result)
}

/// One scenario's conditions.
struct Scenario {
    name: &'static str,
    idle: usize,
    conns: usize,
    path: String,
    /// Load (or waiting) before the signal.
    before: Duration,
    /// The idle connections' request is at least this long ago at the signal.
    idle_age: Duration,
    grace: Duration,
    /// Requests in flight at the signal outlive the grace period and must be cut.
    expect_cut: bool,
}

impl Scenario {
    fn needs_slow(&self) -> bool {
        self.path.starts_with("/slow")
    }

    fn conditions(&self, workers: usize, runs: usize) -> String {
        format!(
            "{} idle (silent >= {:.1} s) + {} busy (GET {}), signal after {:.1} s of load, \
             grace {:.1} s, {workers} gracering worker(s), {runs} runs; servers on CPU \
             {SERVER_CPU}, clients on CPU {CLIENT_CPU}",
            self.idle,
            self.idle_age.as_secs_f64(),
            self.conns,
            if self.conns > 0 { &self.path } else { "-" },
            self.before.as_secs_f64(),
            self.grace.as_secs_f64()
        )
    }
}

struct Settings {
    runs: usize,
    workers: usize,
    scenarios: Vec<Scenario>,
    servers: Vec<Kind>,
    verbose: bool,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let idle: usize = env_or("BENCH_IDLE", 1000)?;
        let conns: usize = env_or("BENCH_CONNS", 100)?;
        let load = Duration::try_from_secs_f64(env_or("BENCH_LOAD_SECS", 1.0)?)?;
        let idle_age = Duration::try_from_secs_f64(env_or("BENCH_IDLE_AGE", 1.5)?)?;
        let sc = |name, conns, path: &str, before, grace, expect_cut| Scenario {
            name,
            idle,
            conns,
            path: path.into(),
            before,
            idle_age,
            grace,
            expect_cut,
        };
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        let all = [
            sc("idle", 0, "/", Duration::ZERO, s(5), false),
            sc("loaded", conns, "/", load, s(5), false),
            sc("long", conns, "/slow?ms=2000", s(1), s(5), false),
            sc("deadline", 10, "/slow?ms=5000", ms(500), s(1), true),
        ];
        let wanted = list("BENCH_SCENARIOS", "idle,loaded,long,deadline");
        let mut scenarios = Vec::new();
        for sc in all {
            if wanted.iter().any(|w| w == sc.name) {
                scenarios.push(sc);
            }
        }
        if let Some(w) = wanted
            .iter()
            .find(|w| !scenarios.iter().any(|s| s.name == w.as_str()))
        {
            return Err(format!("unknown scenario {w:?} (idle, loaded, long, deadline)").into());
        }
        let servers = list("BENCH_SERVERS", "gracering,hyper,nginx,go")
            .iter()
            .map(|n| Kind::parse(n).ok_or(format!("unknown server {n:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let s = Settings {
            runs: env_or("BENCH_RUNS", 3)?,
            workers: env_or("BENCH_WORKERS", 1)?,
            scenarios,
            servers,
            verbose: env::var_os("BENCH_VERBOSE").is_some(),
        };
        if s.runs == 0 || s.workers == 0 || s.servers.is_empty() || s.scenarios.is_empty() {
            return Err(
                "BENCH_RUNS, BENCH_WORKERS, BENCH_SERVERS, BENCH_SCENARIOS: none empty".into(),
            );
        }
        Ok(s)
    }
}

fn list(name: &str, default: &str) -> Vec<String> {
    let v = env::var(name).unwrap_or(default.into());
    v.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn bench() -> Result<(), Error> {
    let mut s = Settings::from_env()?;
    let target = build::target_dir();
    let example = match s.servers.contains(&Kind::Gracering) {
        true => build::build_example("http", None)?,
        false => PathBuf::new(),
    };
    let hyper_peer = match s.servers.contains(&Kind::Hyper) {
        true => build::build_peer("hyper-drain", None)?,
        false => PathBuf::new(),
    };
    let out_dir = target.join("drain_http");
    std::fs::create_dir_all(&out_dir)?;
    // Everything of ours runs on the client CPU; servers are pinned to theirs at spawn.
    pin::pin_current_thread(CLIENT_CPU)?;
    let spec = |kind, grace| Spec {
        kind,
        http_example: &example,
        hyper_peer: &hyper_peer,
        workers: s.workers,
        grace,
        cpu: SERVER_CPU,
    };
    // Peers missing here say so once (from `peers`) and are left out; the others are
    // probed for `/slow`.
    let mut available = Vec::new();
    let mut slow = Vec::new();
    for &kind in &s.servers {
        if let Some(server) = drain_servers::start(&spec(kind, Duration::from_secs(1)))? {
            available.push(kind);
            if server.serves("/slow?ms=1") {
                slow.push(kind);
            } else if s.scenarios.iter().any(Scenario::needs_slow) {
                println!(
                    "{}: GET /slow?ms=1 is not 2xx: skipping it in long and deadline",
                    kind.name()
                );
            }
            drop(server);
        }
    }
    s.servers = available;
    println!(
        "drain_http: servers {}; outputs in {}",
        s.servers
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        out_dir.display()
    );
    let mut results = Vec::new();
    for sc in &s.scenarios {
        let servers: Vec<Kind> = (s.servers.iter().copied())
            .filter(|k| !sc.needs_slow() || slow.contains(k))
            .collect();
        println!("\n{}: {}", sc.name, sc.conditions(s.workers, s.runs));
        let mut runs: Vec<Vec<Run>> = servers.iter().map(|_| Vec::new()).collect();
        let mut lines: Vec<Vec<timeline::Row>> = servers.iter().map(|_| Vec::new()).collect();
        let mut floors = Vec::new();
        for n in 1..=s.runs {
            for (i, &kind) in servers.iter().enumerate() {
                let Some((run, rows)) = measure(sc, &spec(kind, sc.grace), &s)? else {
                    continue;
                };
                println!("run {n} {:<9} {}", kind.name(), run.describe());
                let csv = out_dir.join(format!("{}-{}-{n}.csv", sc.name, kind.name()));
                std::fs::write(csv, timeline::csv(&rows))?;
                if n == 1 {
                    lines[i] = rows;
                }
                runs[i].push(run);
            }
            let f = floor::measure(sc.idle + sc.conns, SERVER_CPU, CLIENT_CPU)?;
            println!(
                "run {n} {:<9} close loop {:.2} ms for {} ({:.1} us/conn, CPU {:.2} ms), clients closed {} ms, EOF {}/{}",
                "floor",
                f.close_ms,
                f.n,
                f.us_per_conn(),
                f.close_cpu_ms,
                f.clients_closed_ms
                    .map_or("-".into(), |v| format!("{v:.2}")),
                f.eof,
                f.n
            );
            floors.push(f);
        }
        let names: Vec<&str> = servers.iter().map(|k| k.name()).collect();
        timeline::write_charts(&out_dir, sc.name, &names, &lines)?;
        let summaries = servers
            .iter()
            .zip(&runs)
            .filter(|(_, r)| !r.is_empty())
            .map(|(k, r)| Summary::of(k.name(), r))
            .collect();
        let result = drain_report::Scenario {
            name: sc.name,
            conditions: sc.conditions(s.workers, s.runs),
            servers: summaries,
            floors,
            floor_ratio: !sc.needs_slow(),
        };
        drain_report::print(&result);
        results.push(result);
    }
    let targets = drain_report::targets(&results);
    println!("\ntargets:");
    for (_, line, met) in &targets {
        let verdict = met.map_or("not measured", |m| if m { "met" } else { "NOT met" });
        println!("  {line}: {verdict}");
    }
    let verdicts: Vec<String> = (targets.iter())
        .map(|(key, _, met)| {
            format!(
                r#""{key}":{}"#,
                met.map_or("null".into(), |m| m.to_string())
            )
        })
        .collect();
    let head = format!(
        r#""workers":{},"runs":{},"high":"{}","targets":{{{}}}"#,
        s.workers,
        s.runs,
        support::stats::quantile_label(s.runs),
        verdicts.join(",")
    );
    println!("\n{}", drain_report::json(&head, &results));
    Ok(())
}

/// Builds gracering's `http` example in release mode; returns the binary's path.
/// One drain of one server; `None` when the server is not available.
fn measure(
    sc: &Scenario,
    spec: &Spec<'_>,
    s: &Settings,
) -> Result<Option<(Run, Vec<timeline::Row>)>, Error> {
    let Some(server) = drain_servers::start(spec)? else {
        return Ok(None);
    };
    let addr = server.addr();
    let exit_limit = sc.grace + EXIT_SLACK;
    let client_limit = sc.idle_age.max(sc.before) + exit_limit + CLIENT_SLACK;
    let opened = httpwire::open_idle(addr, sc.idle, "/", OPEN_TIMEOUT);
    let holders = idle::hold(opened.streams, Some(CLIENT_CPU), client_limit)?;
    // The load starts late enough for the idle connections to reach their age.
    std::thread::sleep(sc.idle_age.saturating_sub(sc.before));
    let signal = Arc::new(OnceLock::new());
    let cfg = httpgen::Config {
        addr,
        conns: sc.conns,
        path: sc.path.clone(),
        requests: Arc::new([]),
        timeout: REPLY_TIMEOUT,
        limit: client_limit,
        cpu: Some(CLIENT_CPU),
        signal: signal.clone(),
    };
    let load_started = Instant::now();
    let load = (sc.conns > 0).then(|| httpgen::spawn(&cfg)).transpose()?;
    std::thread::sleep(sc.before);
    let stopped = server.stop(exit_limit, &signal)?;
    let idle = holders.wait()?;
    let mut load = load.map(httpgen::join).transpose()?.unwrap_or_default();

    let at = stopped.signalled_at;
    let since = |t: Option<Instant>| t.map(|t| ms_since(at, t));
    let exit_ms = stopped.exit.as_secs_f64() * 1e3;
    let last_close = idle.last_end.max(load.last_close);
    let before = load.completions.iter().filter(|&&t| t < at).count();
    let load_secs = at.saturating_duration_since(load_started).as_secs_f64();
    // The expected cut: requests lost from the grace deadline on (deadline scenario).
    let grace_ms = sc.grace.as_secs_f64() * 1e3;
    let cut_at: Vec<f64> = (load.lost_at.iter())
        .map(|&t| ms_since(at, t))
        .filter(|&ms| ms > 0.0)
        .collect();
    let cut = match sc.expect_cut {
        true => cut_at.iter().filter(|&&ms| ms >= grace_ms - 1.0).count(),
        false => 0,
    };
    let drain_line = stopped
        .stderr
        .lines()
        .rev()
        .find(|l| l.contains("\"drain\""));
    let num = |key| drain_line.and_then(|l| testkit::json::json_number(l, key));
    let mut note = String::new();
    if spec.kind == Kind::Gracering {
        let v = |key| num(key).map_or("?".into(), |v| format!("{v}"));
        // From the log line `accept stopped (N from the backlog)`.
        let backlog = (stopped.stderr.split("accept stopped (").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?");
        note = format!(
            "; server: accept stopped {} ms ({backlog} from the backlog), drained {}, closed idle {}, aborted {}",
            v("accept_stopped_ms"),
            v("drained"),
            v("closed_idle"),
            v("aborted")
        );
    }
    if idle.first_end.is_some_and(|t| t < at) {
        note.push_str("; an idle connection ended before the signal");
    }
    if s.verbose {
        for line in stopped.stderr.lines() {
            println!("    {} stderr: {line}", spec.kind.name());
        }
    }
    let to_ms = (exit_ms.max(since(last_close).unwrap_or(0.0)) as i64 + 20).min(60_000);
    // Enough of the time before the signal to see the steady state, not so much that a
    // drain of a few milliseconds disappears in the chart.
    let from_ms = -(to_ms / 2).clamp(20, TIMELINE_BEFORE_MS);
    let rows = timeline::build(
        &timeline::Events {
            signal: at,
            completions: &load.completions,
            live_changes: &load.live_changes,
            idle_opened: idle.opened,
            idle_ends: &idle.ends,
        },
        from_ms,
        to_ms,
    );
    let after_signal = (load.completions.len() - before) as u64;
    (load.completions, load.lost_at, load.live_changes) = Default::default();
    let run = Run {
        exit_ms,
        closed_ms: since(last_close),
        idle_first_ms: since(idle.first_end),
        idle_last_ms: since(idle.last_end),
        after_signal,
        cut_ms: cut_at.iter().copied().reduce(f64::max),
        cut: cut as u64,
        keepalive_sent_ms: since(load.last_keepalive_sent),
        cpu_ms: stopped.cpu.map(|d| d.as_secs_f64() * 1e3),
        server_ms: num("duration_ms"),
        rate: (sc.conns > 0).then(|| before as f64 / load_secs.max(1e-9)),
        idle: idle::Report {
            ends: Vec::new(),
            ..idle
        },
        idle_open_errors: opened.open_errors,
        load,
        exit_code: stopped.code,
        killed: stopped.killed,
        note,
    };
    Ok(Some((run, rows)))
}
