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

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use support::kv::{self, Drain, Error, GRACE, LOAD_CPU, Load, SERVER_CPU, START_TIMEOUT, Server};
use support::settings::env_or;
use testkit::build;
use testkit::process::ServerProcess;

/// The busy timeout both servers set on their database connections.
const BUSY_TIMEOUT_MS: u64 = 5000;

fn main() -> ExitCode {
    support::exit_code("kv_load", bench())
}

struct Settings {
    kv: kv::Settings,
    db_threads: usize,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let s = Settings {
            kv: kv::Settings::from_env()?,
            db_threads: env_or("BENCH_DB_THREADS", 2)?,
        };
        if s.db_threads == 0 {
            return Err("BENCH_DB_THREADS must be > 0".into());
        }
        Ok(s)
    }

    fn conditions(&self) -> String {
        format!(
            "{}, {} database threads, WAL + synchronous=NORMAL; servers on CPU {SERVER_CPU} (1 \
             worker), load on CPU {LOAD_CPU}; {} runs",
            self.kv.load_conditions(),
            self.db_threads,
            self.kv.runs
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
    if s.kv.servers.contains(&Server::Gracering) && !kv::has_kv_example() {
        println!(
            "kv_load: examples/kv/main.rs is not in this tree: skipping gracering, measuring the peer alone"
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
            true => build::build_peer("kv-hyper", None)?,
            false => PathBuf::new(),
        },
    };
    let mix = kv::mix(&s.kv);
    println!("kv_load: {}", s.conditions());
    let mut loads: Vec<Vec<Load>> = vec![Vec::new(); s.kv.servers.len()];
    let mut drains: Vec<Vec<Drain>> = vec![Vec::new(); s.kv.servers.len()];
    for run in 1..=s.kv.runs {
        for (i, &server) in s.kv.servers.iter().enumerate() {
            if s.kv.load {
                let (process, _dir) = start(server, &bins, &s, run)?;
                let l = kv::measure_load(process, &s.kv, &mix, None)?;
                println!("run {run} load  {:<9} {}", server.name(), l.describe());
                loads[i].push(l);
            }
            if s.kv.drain {
                let (process, _dir) = start(server, &bins, &s, run)?;
                let d = kv::measure_drain(
                    process,
                    server.name(),
                    &s.kv,
                    &mix,
                    Default::default(),
                    || Ok(()),
                )?
                .drain;
                println!("run {run} drain {:<9} {}", server.name(), d.describe());
                drains[i].push(d);
            }
        }
    }
    if s.kv.load {
        kv::print_load(&s.kv, &s.conditions(), "", &loads);
    }
    if s.kv.drain {
        kv::print_drain(&s.kv, &s.conditions(), &drains);
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
    kv::preload(process.addr(), &s.kv)?;
    Ok((process, dir))
}
