//! Footprint: memory per idle connection, and the server's user-space share of CPU time
//! under saturating load, for gracering beside hyper, nginx and Go's net/http.
//!
//! **Memory per idle connection** = (RSS with `BENCH_IDLE` idle keep-alive connections
//! − RSS with none) / connections. Each server runs alone, pinned to CPU 0 with one
//! worker. It first serves `BENCH_WARMUP` requests (echo: round trips) one after another
//! on one connection, which is then closed: state shared by all connections but built lazily
//! is then in the baseline, not counted per connection (gracering's pool of 1024
//! receive buffers of 4 KiB has its pages touched one buffer per receive, the first
//! time round the ring). Its RSS (`VmRSS` of `/proc/PID/status`, summed over all its
//! processes: nginx's master and worker) is read once it has settled. Then the
//! connections are opened in `BENCH_STEPS` steps, each after one successful request
//! (HTTP) or one 16-byte round trip (echo), and RSS is read again after every step; the
//! steps draw `target/footprint/idle_rss.svg`, and the growth from the first step to the
//! last gives the marginal cost per connection as a cross-check. At the end every
//! connection is checked to be still open. Servers: `gracering` (the `http` example, idle
//! timeout raised to 10 min so none closes while measured), `gracering-echo` (the `echo`
//! example), `hyper` (hyper 1.x on a tokio current-thread runtime: the `hyper-hello`
//! binary of `benches/peers`), `nginx` and `go` (see `benches/support/peers.rs`; skipped with one line when
//! not installed). Only user-space memory is counted: the kernel's socket memory is the
//! same whoever serves. The client side holds one descriptor per connection:
//! `BENCH_IDLE` must stay under the open-file limit (20 000 here), less what the bench
//! itself uses.
//!
//! **User-space share of CPU** = utime / (utime + stime) of the server (fields 14 and 15
//! of `/proc/PID/task/*/stat`, all threads of all its processes) over a saturating run:
//! `wrk -t1 -c100` on CPU 1 for HTTP, after a 1 s warm-up run (skipped with one line when
//! wrk is missing), and for echo the closed-loop load generator of
//! `benches/support/loadgen.rs` (100 connections, 64-byte messages) on CPU 1. What is not
//! user space is the kernel's TCP stack and system calls: the closer the share is to
//! zero, the closer the server is to what the kernel allows. `BENCH_RUNS` runs per
//! server, alternating between servers (A B A B); medians are reported. The times are in
//! clock ticks, so a 5 s run resolves the share to a fraction of a per cent.
//!
//! Targets for gracering: under 300 bytes per idle connection, and a user-space share
//! below 20%.
//!
//! ```text
//! cargo bench --bench footprint
//! BENCH_IDLE=2000 BENCH_SERVERS=gracering,nginx BENCH_PARTS=memory cargo bench --bench footprint
//! ```
//!
//! Environment: `BENCH_IDLE` (10000), `BENCH_STEPS` (5), `BENCH_WARMUP` (4096; 1 gives
//! the baseline after a single request, where gracering's buffer pool is counted as
//! connections touch it), `BENCH_SECS` (5, the measured
//! load run), `BENCH_RUNS` (3, load runs per server), `BENCH_PARTS` (`memory,cpu`),
//! `BENCH_SERVERS` (`gracering,gracering-echo,hyper,nginx,go`). Prints a line per
//! measurement, a table and one JSON line.

mod support;

use std::env;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use support::peers::{self, PeerProcess};
use support::settings::env_or;
use support::{stats, svg};
use testkit::{build, loadgen, procstat};

const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;
/// Time allowed for opening one step's connections.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Time each request or round trip of the opening may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// RSS counts as settled once two successive reads this far apart differ by at most
/// `SETTLE_SLACK` bytes, or after `SETTLE_POLLS` reads.
const SETTLE_EVERY: Duration = Duration::from_millis(200);
const SETTLE_SLACK: u64 = 16 * 1024;
const SETTLE_POLLS: usize = 25;
/// The warm-up wrk run before the measured one, and the load generator's warm-up.
const WARMUP_SECS: u32 = 1;
/// Time wrk gets beyond its own `-d`, before it is killed and the run fails.
const WRK_SLACK: Duration = Duration::from_secs(30);
/// Connections of the saturating loads.
const LOAD_CONNS: usize = 100;
/// Echo message size of the saturating load and of the opening round trip.
const ECHO_SIZE: usize = 64;
const PING_SIZE: usize = 16;
/// The targets for gracering.
const TARGET_BYTES_PER_CONN: f64 = 300.0;
const TARGET_USER_SHARE: f64 = 0.20;

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    // `cargo bench` passes arguments such as `--bench`: there is nothing to take from them.
    support::exit_code("footprint", bench())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gracering,
    GraceringEcho,
    Hyper,
    Nginx,
    Go,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gracering => "gracering",
            Kind::GraceringEcho => "gracering-echo",
            Kind::Hyper => "hyper",
            Kind::Nginx => "nginx",
            Kind::Go => "go",
        }
    }

    fn is_echo(self) -> bool {
        self == Kind::GraceringEcho
    }
}

struct Settings {
    idle: usize,
    steps: usize,
    /// Exchanges on the warm-up connection before the baseline (`BENCH_WARMUP`).
    warmup: usize,
    secs: u32,
    runs: usize,
    memory: bool,
    cpu: bool,
    servers: Vec<Kind>,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let parts = env::var("BENCH_PARTS").unwrap_or("memory,cpu".into());
        let servers =
            env::var("BENCH_SERVERS").unwrap_or("gracering,gracering-echo,hyper,nginx,go".into());
        let servers = servers
            .split(',')
            .map(|name| match name.trim() {
                "gracering" => Ok(Kind::Gracering),
                "gracering-echo" => Ok(Kind::GraceringEcho),
                "hyper" => Ok(Kind::Hyper),
                "nginx" => Ok(Kind::Nginx),
                "go" => Ok(Kind::Go),
                other => Err(format!("BENCH_SERVERS: unknown server {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = Settings {
            idle: env_or("BENCH_IDLE", 10_000)?,
            steps: env_or("BENCH_STEPS", 5)?,
            // More than gracering's 1024 receive buffers: the whole pool has been written
            // to once (its pages are in RSS) before the baseline.
            warmup: env_or("BENCH_WARMUP", 4096)?,
            secs: env_or("BENCH_SECS", 5)?,
            runs: env_or("BENCH_RUNS", 3)?,
            memory: parts.split(',').any(|p| p.trim() == "memory"),
            cpu: parts.split(',').any(|p| p.trim() == "cpu"),
            servers,
        };
        if s.idle == 0 || s.steps == 0 || s.steps > s.idle || s.secs == 0 {
            return Err(
                "BENCH_IDLE, BENCH_STEPS (<= BENCH_IDLE) and BENCH_SECS must be > 0".into(),
            );
        }
        Ok(s)
    }
}

fn bench() -> Result<(), Error> {
    let s = Settings::from_env()?;
    let target = build::target_dir();
    let examples = match build::build_examples(&["http", "echo"], None)?.as_slice() {
        [http, echo] => Examples {
            http: http.clone(),
            echo: echo.clone(),
            hyper: match s.servers.contains(&Kind::Hyper) {
                true => build::build_peer("hyper-hello", None)?,
                false => PathBuf::new(),
            },
        },
        _ => unreachable!("two examples built, two paths"),
    };
    let out_dir = target.join("footprint");
    println!(
        "footprint: servers on CPU {SERVER_CPU} (1 worker), clients on CPU {LOAD_CPU}; \
         {} idle connections in {} steps after {} warm-up exchanges; {} load runs of {} s \
         per server with {LOAD_CONNS} connections",
        s.idle, s.steps, s.warmup, s.runs, s.secs
    );

    let mut memory = Vec::new();
    if s.memory {
        for &kind in &s.servers {
            if let Some(m) = idle_memory(kind, &examples, &s)? {
                println!("memory {:<15} {}", kind.name(), m.describe());
                memory.push(m);
            }
        }
        if !memory.is_empty() {
            let series: Vec<svg::Series> = memory.iter().map(Memory::series).collect();
            let title = "RSS growth with idle keep-alive connections";
            let chart = svg::line_chart(title, "idle connections", "RSS growth (MiB)", &series);
            let path = out_dir.join("idle_rss.svg");
            svg::write(&path, &chart)?;
            println!("footprint: chart in {}", path.display());
        }
    }

    let mut shares = Vec::new();
    if s.cpu {
        let wrk = find_program("wrk");
        if wrk.is_none() {
            println!("footprint: wrk not installed: skipping HTTP load (Debian package `wrk`)");
        }
        // Runs alternate between the servers (A B A B); a server that cannot run (a
        // missing peer or wrk) is dropped after its first try.
        let mut runs: Vec<(Kind, Vec<Share>)> =
            s.servers.iter().map(|&k| (k, Vec::new())).collect();
        for run in 1..=s.runs {
            for (kind, done) in runs.iter_mut() {
                if run > 1 && done.is_empty() {
                    continue;
                }
                let share = match (kind.is_echo(), &wrk) {
                    (true, _) => echo_share(*kind, &examples, &s)?,
                    (false, Some(wrk)) => http_share(*kind, &examples, wrk, &s)?,
                    (false, None) => None,
                };
                if let Some(share) = share {
                    println!("cpu run {run} {:<15} {}", kind.name(), share.describe());
                    done.push(share);
                }
            }
        }
        shares = runs
            .into_iter()
            .filter(|(_, done)| !done.is_empty())
            .map(|(kind, done)| ShareSummary::of(kind, &done))
            .collect();
    }
    print_table(&memory, &shares);
    println!("{}", json_line(&s, &memory, &shares));
    Ok(())
}

/// The server binaries: gracering's examples, and the `hyper-hello` peer.
struct Examples {
    http: PathBuf,
    echo: PathBuf,
    hyper: PathBuf,
}

/// Starts `kind` pinned to the server CPU; `None` for a peer that is not installed.
fn start(kind: Kind, examples: &Examples) -> Result<Option<PeerProcess>, Error> {
    let own = |name, mut cmd: Command| peers::start(name, &mut cmd, SERVER_CPU, libc::SIGTERM);
    Ok(match kind {
        Kind::Gracering => {
            let mut cmd = Command::new(&examples.http);
            cmd.args([
                "--addr",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--idle-timeout",
                "10m",
            ]);
            Some(own(kind.name(), cmd)?)
        }
        Kind::GraceringEcho => {
            let mut cmd = Command::new(&examples.echo);
            cmd.args(["--addr", "127.0.0.1:0", "--workers", "1"]);
            Some(own(kind.name(), cmd)?)
        }
        Kind::Hyper => {
            let mut cmd = Command::new(&examples.hyper);
            cmd.env("GRACERING_BENCH_ADDR", "127.0.0.1:0");
            Some(own(kind.name(), cmd)?)
        }
        Kind::Nginx => peers::nginx(SERVER_CPU)?,
        Kind::Go => peers::go(SERVER_CPU)?,
    })
}

/// The idle-connection memory of one server.
struct Memory {
    name: &'static str,
    /// Settled RSS after the warm-up, with no connection open.
    before: u64,
    /// Settled RSS with all the connections open.
    after: u64,
    /// Connections opened, and those that failed to open.
    opened: usize,
    failed: usize,
    /// Opened connections still open at the end.
    alive: usize,
    /// (connections open, RSS growth in bytes) after each step, from (0, 0).
    steps: Vec<(usize, i64)>,
}

impl Memory {
    fn bytes_per_conn(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.opened.max(1) as f64
    }

    /// RSS growth per connection from the first step to the last, when there are two.
    fn marginal(&self) -> Option<f64> {
        let (&(n0, b0), &(n1, b1)) = (self.steps.get(1)?, self.steps.last()?);
        (n1 > n0).then(|| (b1 - b0) as f64 / (n1 - n0) as f64)
    }

    fn describe(&self) -> String {
        let marginal = self.marginal().map_or("-".into(), |m| format!("{m:.0}"));
        format!(
            "RSS {:.0} KiB -> {:.0} KiB with {} idle connections: {:.0} bytes each, \
             marginal {marginal} (open failures {}, still open at the end {})",
            self.before as f64 / 1024.0,
            self.after as f64 / 1024.0,
            self.opened,
            self.bytes_per_conn(),
            self.failed,
            self.alive
        )
    }

    fn series(&self) -> svg::Series {
        svg::Series {
            name: self.name.into(),
            points: self
                .steps
                .iter()
                .map(|&(n, bytes)| (n as f64, bytes as f64 / (1024.0 * 1024.0)))
                .collect(),
        }
    }
}

/// Measures the memory per idle connection of `kind` (see the module docs).
fn idle_memory(kind: Kind, examples: &Examples, s: &Settings) -> Result<Option<Memory>, Error> {
    let Some(server) = start(kind, examples)? else {
        return Ok(None);
    };
    let addr = server.addr();
    let pids = server.pids();
    // Requests on one connection then closed, so that state built lazily but shared by
    // all connections (a receive-buffer pool whose pages are touched on first use) is
    // in the baseline rather than counted per connection.
    warm_up(kind, addr, s.warmup)?;
    let before = settled_rss(&pids)?;
    let mut conns = Vec::with_capacity(s.idle);
    let mut steps = vec![(0, 0)];
    let mut failed = 0;
    let mut after = before;
    for step in 1..=s.steps {
        let goal = s.idle * step / s.steps;
        let deadline = Instant::now() + OPEN_TIMEOUT;
        while conns.len() + failed < goal && Instant::now() < deadline {
            match open_one(kind, addr) {
                Ok(stream) => conns.push(stream),
                Err(_) => failed += 1,
            }
        }
        after = settled_rss(&pids)?;
        steps.push((conns.len(), after as i64 - before as i64));
    }
    let alive = conns.iter().filter(|c| still_open(c)).count();
    server.kill()?;
    drop(conns);
    Ok(Some(Memory {
        name: kind.name(),
        before,
        after,
        opened: steps.last().map_or(0, |&(n, _)| n),
        failed,
        alive,
        steps,
    }))
}

/// Opens a connection and does one request (HTTP) or round trip (echo) on it.
fn open_one(kind: Kind, addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    exchange(kind, &mut stream)?;
    Ok(stream)
}

/// One request and its response (HTTP) or one round trip (echo).
fn exchange(kind: Kind, stream: &mut TcpStream) -> io::Result<()> {
    if kind.is_echo() {
        let ping = [b'p'; PING_SIZE];
        stream.write_all(&ping)?;
        let mut pong = [0; PING_SIZE];
        stream.read_exact(&mut pong)?;
        if pong != ping {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "echo mismatch"));
        }
        Ok(())
    } else {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        read_response(stream)
    }
}

/// `count` exchanges one after another on one connection, then closed.
fn warm_up(kind: Kind, addr: SocketAddr, count: usize) -> io::Result<()> {
    let mut stream = open_one(kind, addr)?;
    for _ in 1..count {
        exchange(kind, &mut stream)?;
    }
    Ok(())
}

/// Reads one `200` response with a `Content-Length` body, and nothing more.
fn read_response(stream: &mut TcpStream) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed before a whole response"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > 16 * 1024 {
                return Err(bad("response head too long"));
            }
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-UTF-8 head"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(bad("not a 200"));
        }
        let length = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .ok_or_else(|| bad("no Content-Length"))?;
        if buf.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

/// Whether the server kept `stream` open: nothing to read and no EOF or error.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0];
    stream.set_nonblocking(true).is_ok()
        && matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The summed RSS of `pids` once it stopped moving (see `SETTLE_*`).
fn settled_rss(pids: &[u32]) -> io::Result<u64> {
    let mut last = rss(pids)?;
    let mut calm = 0;
    for _ in 0..SETTLE_POLLS {
        std::thread::sleep(SETTLE_EVERY);
        let now = rss(pids)?;
        calm = if now.abs_diff(last) <= SETTLE_SLACK {
            calm + 1
        } else {
            0
        };
        last = now;
        if calm >= 2 {
            break;
        }
    }
    Ok(last)
}

/// `VmRSS` of each of `pids` from `/proc/PID/status`, summed, in bytes.
fn rss(pids: &[u32]) -> io::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("no VmRSS for {pid}")))?;
        total += kib * 1024;
    }
    Ok(total)
}

/// utime and stime of all threads of `pids` (fields 14 and 15 of
/// `/proc/PID/task/TID/stat`), in clock ticks.
fn cpu_split(pids: &[u32]) -> io::Result<(u64, u64)> {
    let (mut user, mut system) = (0, 0);
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = match std::fs::read_to_string(task?.path().join("stat")) {
                Ok(stat) => stat,
                // The thread exited between listing and reading.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let fields = stat
                .rfind(')')
                .map(|i| stat[i + 1..].split_whitespace().skip(11).take(2));
            let mut fields = fields.into_iter().flatten().map(str::parse::<u64>);
            match (fields.next(), fields.next()) {
                (Some(Ok(u)), Some(Ok(s))) => (user, system) = (user + u, system + s),
                _ => return Err(io::Error::other(format!("unexpected stat line: {stat}"))),
            }
        }
    }
    Ok((user, system))
}

/// The user-space share of a server's CPU time over one saturating load run.
struct Share {
    load: &'static str,
    /// utime and stime over the run, in seconds.
    user_s: f64,
    system_s: f64,
    wall_s: f64,
    /// CPU time used on the whole machine over the run, less the server's: the client
    /// (about one core when it is the limit) and anything else that ran.
    rest_s: f64,
    /// Requests or messages completed in the run.
    ops: u64,
    errors: u64,
}

impl Share {
    fn user_share(&self) -> f64 {
        self.user_s / (self.user_s + self.system_s).max(1e-9)
    }

    fn describe(&self) -> String {
        format!(
            "{:<28} user {:>5.1}% of {:.2} s CPU ({:.0}% of its core), {:.0} ops/s, \
             {:.2} us CPU/op, errors {}; rest of the machine {:.0}% of a core (the client \
             and anything else)",
            self.load,
            self.user_share() * 100.0,
            self.user_s + self.system_s,
            (self.user_s + self.system_s) / self.wall_s * 100.0,
            self.ops as f64 / self.wall_s,
            (self.user_s + self.system_s) * 1e6 / self.ops.max(1) as f64,
            self.errors,
            self.rest_s.max(0.0) / self.wall_s * 100.0
        )
    }
}

/// Medians over the runs of one server.
struct ShareSummary {
    name: &'static str,
    load: &'static str,
    user_share: f64,
    /// The server's CPU time per wall second (1.0: its core was saturated).
    core_busy: f64,
    ops_per_s: f64,
    cpu_us_per_op: f64,
    errors: u64,
    /// The user-space share of each run, in order.
    runs: Vec<f64>,
}

impl ShareSummary {
    fn of(kind: Kind, runs: &[Share]) -> ShareSummary {
        let med =
            |f: &dyn Fn(&Share) -> f64| stats::median(&runs.iter().map(f).collect::<Vec<_>>());
        ShareSummary {
            name: kind.name(),
            load: runs.first().map_or("", |r| r.load),
            user_share: med(&Share::user_share),
            core_busy: med(&|r| (r.user_s + r.system_s) / r.wall_s),
            ops_per_s: med(&|r| r.ops as f64 / r.wall_s),
            cpu_us_per_op: med(&|r| (r.user_s + r.system_s) * 1e6 / r.ops.max(1) as f64),
            errors: runs.iter().map(|r| r.errors).sum(),
            runs: runs.iter().map(Share::user_share).collect(),
        }
    }
}

/// Samples the server's utime and stime around `run`, which returns (ops, errors).
fn sample_share(
    load: &'static str,
    pids: &[u32],
    run: impl FnOnce() -> Result<(u64, u64), Error>,
) -> Result<Share, Error> {
    let ticks = procstat::ticks_per_second() as f64;
    let (u0, s0) = cpu_split(pids)?;
    let machine0 = procstat::system_cpu()?;
    let started = Instant::now();
    let (ops, errors) = run()?;
    let wall_s = started.elapsed().as_secs_f64();
    let machine1 = procstat::system_cpu()?;
    let (u1, s1) = cpu_split(pids)?;
    let server_s = (u1 + s1 - u0 - s0) as f64 / ticks;
    Ok(Share {
        load,
        user_s: (u1 - u0) as f64 / ticks,
        system_s: (s1 - s0) as f64 / ticks,
        wall_s,
        rest_s: machine1.busy - machine0.busy - server_s,
        ops,
        errors,
    })
}

/// `wrk -t1 -c100` against an HTTP server: a warm-up run, then the measured one.
fn http_share(
    kind: Kind,
    examples: &Examples,
    wrk: &Path,
    s: &Settings,
) -> Result<Option<Share>, Error> {
    let Some(server) = start(kind, examples)? else {
        return Ok(None);
    };
    let url = format!("http://{}/", server.addr());
    let pids = server.pids();
    let run_wrk = |secs: u32| -> Result<(u64, u64), Error> {
        let mut cmd = Command::new(wrk);
        cmd.args([
            "-t1",
            &format!("-c{LOAD_CONNS}"),
            &format!("-d{secs}s"),
            &url,
        ]);
        let limit = Duration::from_secs(secs.into()) + WRK_SLACK;
        let stdout =
            testkit::process::run_pinned(&mut cmd, LOAD_CPU, limit)?.stdout_if_success("wrk")?;
        parse_wrk(&stdout).ok_or_else(|| format!("cannot read wrk's output:\n{stdout}").into())
    };
    run_wrk(WARMUP_SECS)?;
    let share = sample_share("HTTP, wrk -t1 -c100", &pids, || run_wrk(s.secs))?;
    server.kill()?;
    Ok(Some(share))
}

/// The echo load generator (100 connections, 64-byte messages) against an echo server.
fn echo_share(kind: Kind, examples: &Examples, s: &Settings) -> Result<Option<Share>, Error> {
    let Some(server) = start(kind, examples)? else {
        return Ok(None);
    };
    let pids = server.pids();
    let mut cfg = loadgen::Config::echo(server.addr(), LOAD_CONNS, ECHO_SIZE);
    cfg.duration = Duration::from_secs(s.secs.into());
    cfg.warmup = Duration::from_secs(WARMUP_SECS.into());
    cfg.cpu = Some(LOAD_CPU);
    let handle = loadgen::spawn(&cfg)?;
    // Sample from the end of the warm-up to the end of the window.
    std::thread::sleep(cfg.warmup);
    let share = sample_share("echo, loadgen 100 x 64 B", &pids, || {
        let report = loadgen::join(handle)?;
        Ok((report.messages, report.errors()))
    })?;
    server.kill()?;
    Ok(Some(share))
}

/// (requests completed, socket errors + non-2xx) from wrk's report.
fn parse_wrk(text: &str) -> Option<(u64, u64)> {
    let mut requests = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if line.contains(" requests in ") {
            requests = line.split_whitespace().next()?.parse().ok();
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().ok()?;
        }
    }
    Some((requests?, errors))
}

/// `name` on the `PATH`, if it is there.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn print_table(memory: &[Memory], shares: &[ShareSummary]) {
    if !memory.is_empty() {
        println!(
            "\n{:<15} {:>12} {:>12} {:>8} {:>11} {:>9} {:>7}",
            "server", "RSS before", "RSS after", "idle", "bytes/conn", "marginal", "alive"
        );
        for m in memory {
            let marginal = m.marginal().map_or("-".into(), |v| format!("{v:.0}"));
            println!(
                "{:<15} {:>8.0} KiB {:>8.0} KiB {:>8} {:>11.0} {:>9} {:>7}",
                m.name,
                m.before as f64 / 1024.0,
                m.after as f64 / 1024.0,
                m.opened,
                m.bytes_per_conn(),
                marginal,
                m.alive
            );
        }
    }
    if !shares.is_empty() {
        println!(
            "\n{:<15} {:<28} {:>10} {:>10} {:>11} {:>10} {:>7}   (medians)",
            "server", "load", "user share", "core busy", "ops/s", "CPU us/op", "errors"
        );
        for sh in shares {
            println!(
                "{:<15} {:<28} {:>9.1}% {:>9.0}% {:>11.0} {:>10.2} {:>7}",
                sh.name,
                sh.load,
                sh.user_share * 100.0,
                sh.core_busy * 100.0,
                sh.ops_per_s,
                sh.cpu_us_per_op,
                sh.errors
            );
        }
    }
    for m in memory.iter().filter(|m| m.name.starts_with("gracering")) {
        let b = m.bytes_per_conn();
        let ok = b < TARGET_BYTES_PER_CONN && m.alive == m.opened;
        println!(
            "target {:<15} memory per idle connection {b:.0} B < {TARGET_BYTES_PER_CONN} B: {}",
            m.name,
            verdict(ok)
        );
    }
    for sh in shares.iter().filter(|s| s.name.starts_with("gracering")) {
        let share = sh.user_share;
        println!(
            "target {:<15} user-space share {:.1}% < {:.0}%: {}",
            sh.name,
            share * 100.0,
            TARGET_USER_SHARE * 100.0,
            verdict(share < TARGET_USER_SHARE)
        );
    }
    println!();
}

/// The machine-readable result, formatted by hand.
fn json_line(s: &Settings, memory: &[Memory], shares: &[ShareSummary]) -> String {
    let mut out = format!(
        r#"{{"bench":"footprint","idle":{},"steps":{},"warmup":{},"secs":{},"runs":{},"load_conns":{LOAD_CONNS},"memory":{{"#,
        s.idle, s.steps, s.warmup, s.secs, s.runs
    );
    for (i, m) in memory.iter().enumerate() {
        let steps: Vec<String> = m.steps.iter().map(|(n, b)| format!("[{n},{b}]")).collect();
        let _ = write!(
            out,
            r#"{}"{}":{{"rss_before":{},"rss_after":{},"conns":{},"failed":{},"alive":{},"bytes_per_conn":{:.1},"marginal_bytes_per_conn":{},"steps":[{}]}}"#,
            if i > 0 { "," } else { "" },
            m.name,
            m.before,
            m.after,
            m.opened,
            m.failed,
            m.alive,
            m.bytes_per_conn(),
            m.marginal().map_or("null".into(), |v| format!("{v:.1}")),
            steps.join(",")
        );
    }
    out.push_str(r#"},"cpu":{"#);
    for (i, sh) in shares.iter().enumerate() {
        let runs: Vec<String> = sh.runs.iter().map(|r| format!("{r:.4}")).collect();
        let _ = write!(
            out,
            r#"{}"{}":{{"load":"{}","user_share":{:.4},"core_busy":{:.3},"ops_per_s":{:.0},"cpu_us_per_op":{:.3},"errors":{},"runs":[{}]}}"#,
            if i > 0 { "," } else { "" },
            sh.name,
            sh.load,
            sh.user_share,
            sh.core_busy,
            sh.ops_per_s,
            sh.cpu_us_per_op,
            sh.errors,
            runs.join(",")
        );
    }
    out.push_str("}}");
    out
}
