//! The kv service on Redis under load: gracering's `kv` example with its Redis store
//! (`--store redis://..`, `--redis-conns` pipelined connections, `BENCH_REDIS_CONNS`,
//! 2) against `kv-redis-hyper` of `benches/peers` (hyper on a tokio current-thread
//! runtime, the `redis` crate's one multiplexed connection), one worker each.
//!
//! Each run starts a fresh `redis-server` (testkit's: nothing saved, a fresh directory)
//! pinned to CPU 1, the server as a child pinned to CPU 0 pointed at it, waits until the
//! server answers `GET /kv/k0` with a 404 (its Redis connections are up), preloads
//! `BENCH_KEYS` keys through the server (PUTs over one connection, 64 per write, each a
//! 201) and loads it from CPU 1 with testkit's `httpgen`, as `kv_load` does (the same
//! mix of `GET` and `PUT`, see `support/kv.rs`). Redis shares CPU 1 with the load
//! generator, the same for both servers: the server under test has CPU 0 to itself.
//!
//! Scenarios (`BENCH_SCENARIOS`, both by default):
//! - `load`: a 1 s warm-up, then `BENCH_SECS` measured: requests per second, server CPU
//!   per request, Redis's CPU per request (its CPU time over the window, from
//!   `/proc/PID/task/*/schedstat`, divided by the requests answered: what each server
//!   costs Redis), latency p50 and p99, errors, the generator's own CPU.
//! - `drain`: the same load, SIGTERM after `BENCH_DRAIN_AFTER` s (2.0). `BENCH_PAUSE_LEAD_MS`
//!   (100) before the signal the bench's own connection sends `CLIENT PAUSE
//!   BENCH_PAUSE_MS WRITE` (300): the first `SET` on each of the server's pipelined
//!   connections stops that connection until the pause ends, so at the signal every
//!   request is waiting on Redis. Reported as in `kv_load` (signal to exit, exit code,
//!   requests lost, answered after the signal and how many were in flight at it), and
//!   whether the server's Redis connections ended after its last response: when Redis
//!   ran a connection's `QUIT` (from a `MONITOR` connection), else read its EOF (its
//!   verbose log), else stopped listing it in `CLIENT LIST` (polled about every
//!   millisecond from the pause on), beside the instant the client received the last
//!   response (`support/redis_close.rs`).
//!   gracering runs with `--drain-delay 0`; both with a grace period of 10 s.
//!
//! Runs alternate gracering and hyper; medians over `BENCH_RUNS`, ratios gracering /
//! hyper. Without `examples/kv/redis.rs` in the tree the bench says so in one line and
//! runs the peer alone. `redis-server` must be on the `PATH`.
//!
//! ```text
//! cargo bench --bench kv_redis
//! BENCH_RUNS=1 BENCH_SECS=2 BENCH_SERVERS=hyper cargo bench --bench kv_redis
//! ```
//!
//! Environment: as `kv_load` (`BENCH_RUNS`, `BENCH_SECS`, `BENCH_CONNS`, `BENCH_KEYS`,
//! `BENCH_PUT_PERCENT`, `BENCH_VALUE_BYTES`, `BENCH_DRAIN_AFTER`, `BENCH_SERVERS`,
//! `BENCH_SCENARIOS`, `BENCH_VERBOSE`), and `BENCH_REDIS_CONNS` (2), `BENCH_PAUSE_MS`
//! (300), `BENCH_PAUSE_LEAD_MS` (100).

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::kv::{
    self, Drain, Drained, Error, GRACE, LOAD_CPU, Load, SERVER_CPU, START_TIMEOUT, Server, med,
};
use support::redis_close::{CloseCheck, Order, Watch};
use support::settings::env_or;
use testkit::process::ServerProcess;
use testkit::redis::{RedisServer, Reply};
use testkit::{build, httpwire};

/// Time the server gets to answer a GET with Redis behind it.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    support::exit_code("kv_redis", bench())
}

struct Settings {
    kv: kv::Settings,
    redis_conns: usize,
    pause_ms: u64,
    pause_lead_ms: u64,
    redis_version: String,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let s = Settings {
            kv: kv::Settings::from_env()?,
            redis_conns: env_or("BENCH_REDIS_CONNS", 2)?,
            pause_ms: env_or("BENCH_PAUSE_MS", 300)?,
            pause_lead_ms: env_or("BENCH_PAUSE_LEAD_MS", 100)?,
            redis_version: redis_version(),
        };
        if s.redis_conns == 0 || s.pause_ms == 0 || s.pause_lead_ms >= s.pause_ms {
            return Err(
                "BENCH_REDIS_CONNS and BENCH_PAUSE_MS must be > 0, BENCH_PAUSE_LEAD_MS < \
                 BENCH_PAUSE_MS"
                    .into(),
            );
        }
        Ok(s)
    }

    fn conditions(&self) -> String {
        format!(
            "{}, a fresh redis-server {} per run (nothing saved) on CPU {LOAD_CPU} with the \
             load; gracering --redis-conns {}, hyper one multiplexed connection; servers on \
             CPU {SERVER_CPU} (1 worker); {} runs",
            self.kv.load_conditions(),
            self.redis_version,
            self.redis_conns,
            self.kv.runs
        )
    }
}

/// `redis-server`'s version (`v=7.0.15` of `--version`), or `?`.
fn redis_version() -> String {
    let out = Command::new("redis-server").arg("--version").output();
    let text = out.map_or(String::new(), |o| String::from_utf8_lossy(&o.stdout).into());
    (text.split_whitespace())
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("?")
        .to_string()
}

/// The binaries, built on the way.
struct Binaries {
    kv: PathBuf,
    peer: PathBuf,
}

fn bench() -> Result<(), Error> {
    let mut s = Settings::from_env()?;
    let has_store = build::workspace_dir().join("examples/kv/redis.rs").exists();
    if s.kv.servers.contains(&Server::Gracering) && !has_store {
        println!(
            "kv_redis: examples/kv/redis.rs is not in this tree: skipping gracering, measuring the peer alone"
        );
        s.kv.servers.retain(|&k| k != Server::Gracering);
    }
    if s.kv.servers.is_empty() {
        return Ok(());
    }
    let bins = Binaries {
        kv: match s.kv.servers.contains(&Server::Gracering) {
            true => build::build_example("kv", None)?,
            false => PathBuf::new(),
        },
        peer: match s.kv.servers.contains(&Server::Hyper) {
            true => build::build_peer("kv-redis-hyper", None)?,
            false => PathBuf::new(),
        },
    };
    let mix = kv::mix(&s.kv);
    println!("kv_redis: {}", s.conditions());
    let n = s.kv.servers.len();
    let mut loads: Vec<Vec<Load>> = vec![Vec::new(); n];
    let mut drains: Vec<Vec<Drain>> = vec![Vec::new(); n];
    let mut closes: Vec<Vec<CloseCheck>> = vec![Vec::new(); n];
    for run in 1..=s.kv.runs {
        for (i, &server) in s.kv.servers.iter().enumerate() {
            if s.kv.load {
                let redis = RedisServer::start_pinned(LOAD_CPU)?;
                let process = start(server, &bins, &s, &redis)?;
                let redis_cpu = || redis.cpu_time();
                let l = kv::measure_load(process, &s.kv, &mix, Some(&redis_cpu))?;
                println!("run {run} load  {:<9} {}", server.name(), l.describe());
                loads[i].push(l);
            }
            if s.kv.drain {
                let (d, c) = measure_drain(server, &bins, &s, &mix)?;
                println!("run {run} drain {:<9} {}", server.name(), d.describe());
                println!("            {:<9} {}", "", c.describe());
                drains[i].push(d);
                closes[i].push(c);
            }
        }
    }
    if s.kv.load {
        kv::print_load(&s.kv, &s.conditions(), "redis", &loads);
    }
    if s.kv.drain {
        kv::print_drain(&s.kv, &s.conditions(), &drains);
        print_closes(&s, &closes);
    }
    Ok(())
}

/// Starts `server` on `redis`, waits until it serves and preloads it.
fn start(
    server: Server,
    bins: &Binaries,
    s: &Settings,
    redis: &RedisServer,
) -> Result<ServerProcess, Error> {
    let grace = GRACE.as_millis().to_string();
    let mut cmd = match server {
        Server::Gracering => {
            let mut cmd = Command::new(&bins.kv);
            cmd.args(["--addr", "127.0.0.1:0", "--workers", "1"])
                .args(["--store", &redis.url()])
                .args(["--redis-conns", &s.redis_conns.to_string()])
                .args([
                    "--drain-delay",
                    "0ms",
                    "--grace-period",
                    &format!("{grace}ms"),
                ]);
            cmd
        }
        Server::Hyper => {
            let mut cmd = Command::new(&bins.peer);
            cmd.env("GRACERING_BENCH_ADDR", "127.0.0.1:0")
                .env("GRACERING_BENCH_REDIS", redis.url())
                .env("GRACERING_BENCH_GRACE_MS", grace);
            cmd
        }
    };
    let process = ServerProcess::start_capturing(&mut cmd, SERVER_CPU, START_TIMEOUT)?;
    wait_ready(process.addr())?;
    kv::preload(process.addr(), &s.kv)?;
    Ok(process)
}

/// Waits until `GET /kv/k0` (not stored yet) answers 404: Redis is reachable through
/// the server (gracering's connections come up after it listens, answering 503 until).
fn wait_ready(addr: SocketAddr) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let got = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(|mut c| {
            httpwire::get(&mut c, "/kv/k0", Instant::now() + Duration::from_secs(1))
        });
        let last = match got {
            Ok(r) if r.status == 404 => return Ok(()),
            Ok(r) => format!("status {}", r.status),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!("GET /kv/k0 not a 404 within {READY_TIMEOUT:?}: {last}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One drain run: the pause, the signal, and the check of the server's connections.
fn measure_drain(
    server: Server,
    bins: &Binaries,
    s: &Settings,
    mix: &Arc<[Box<[u8]>]>,
) -> Result<(Drain, CloseCheck), Error> {
    let redis = RedisServer::start_pinned(LOAD_CPU)?;
    let process = start(server, bins, s, &redis)?;
    let mut ctl = redis.client()?;
    let mut watch = None;
    let lead = Duration::from_millis(s.pause_lead_ms);
    let pause = s.pause_ms.to_string();
    let drained = kv::measure_drain(process, server.name(), &s.kv, mix, lead, || {
        watch = Some(Watch::start(&redis, &mut ctl, LOAD_CPU)?);
        match ctl.cmd(&[b"CLIENT", b"PAUSE", pause.as_bytes(), b"WRITE"])? {
            Reply::Simple(ok) if ok == "OK" => Ok(()),
            other => Err(format!("CLIENT PAUSE answered {other:?}").into()),
        }
    })?;
    let conns = watch.ok_or("the pause was never sent")?.finish()?;
    let Drained {
        drain,
        report,
        stopped,
    } = drained;
    let signal = stopped.signalled_at;
    let last = report.completions.iter().max().copied().unwrap_or(signal);
    let check = CloseCheck::new(&conns, signal, last, signal + stopped.exit);
    Ok((drain, check))
}

fn print_closes(s: &Settings, closes: &[Vec<CloseCheck>]) {
    println!(
        "\nredis connections at the drain: CLIENT PAUSE {} WRITE sent {} ms before the signal; \
         ms after the signal, medians; the end of a connection as Redis saw it (QUIT run, EOF \
         logged, or gone from CLIENT LIST)",
        s.pause_ms, s.pause_lead_ms
    );
    println!(
        "{:<10} {:>14} {:>13} {:>13} {:>12} {:>8} {:>10} {:>22}",
        "server",
        "conns ended by",
        "last command",
        "last response",
        "last end",
        "exit",
        "end - resp",
        "ended after resp read"
    );
    let opt = |runs: &[CloseCheck], f: fn(&CloseCheck) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        match v.is_empty() {
            true => "-".to_string(),
            false => format!("{:.2}", support::stats::median(&v)),
        }
    };
    for (server, runs) in s.kv.servers.iter().zip(closes) {
        let after = runs.iter().filter(|c| c.order == Order::After).count();
        let orders: Vec<&str> = runs.iter().map(|c| c.order.name()).collect();
        let mut seen: Vec<String> = runs.iter().map(|c| c.seen_as()).collect();
        seen.dedup();
        println!(
            "{:<10} {:>14} {:>13} {:>13.2} {:>12} {:>8.2} {:>10} {:>22}",
            server.name(),
            seen.join("; "),
            opt(runs, |c| c.last_command_ms),
            med(runs, |c| c.last_response_ms),
            opt(runs, |c| c.last_end_ms()),
            med(runs, |c| c.exit_ms),
            opt(runs, |c| c.gap_ms),
            format!("{after} of {} ({})", runs.len(), orders.join(","))
        );
    }
}
