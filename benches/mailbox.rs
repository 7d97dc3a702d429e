//! The mailbox: the round trip of a message from a foreign thread into a worker and
//! back, and the rate at which one worker takes messages, beside the floor of a thread
//! hop and tokio's `mpsc`, measured in the same run.
//!
//! Contenders, each on CPU 0 with the foreign thread on CPU 1:
//! - `gracering-uring`, `gracering-epoll`: an in-process server, 1 worker (pinned by the
//!   builder), `handle_signals(false)`, stopped through its `ShutdownHandle`; the
//!   handler's `on_message` answers on the reply channel the message carries. A fresh
//!   server per phase, so the report's wake-ups (`report.total().wakeups`) are the
//!   phase's own.
//! - `thread`: a plain thread blocked in `recv` on a crossbeam channel, the same handler
//!   code: the floor of a hop from one thread to another and back.
//! - `tokio`: a task on a tokio current-thread runtime (all drivers on, as an
//!   application has them) receiving from a `tokio::sync::mpsc` unbounded channel, the
//!   same reply path; it is the `tokio-mailbox` binary of `benches/peers` (tokio lives
//!   in that member only), which runs both phases itself and prints one JSON line.
//!
//! Every reply channel is a crossbeam `Sender<u64>` cloned into the message.
//!
//! Phases:
//! - latency: `BENCH_ROUND_TRIPS` round trips one after the other (after 1/10 as many
//!   unmeasured), each timed from just before the post to the reply's arrival: p50,
//!   p90, p99, p99.9; the worker sleeps between them, so each one pays a wake-up.
//! - throughput: `BENCH_MESSAGES` messages posted as fast as the mailbox takes them (a
//!   post refused as full is retried after a `yield_now`), the last one with a reply:
//!   messages per second from the first post to that reply, wake-ups per message.
//!
//! Both also give the receiving thread's CPU time per message (the scheduler's run time
//! of that thread, `/proc/self/task/TID/schedstat`, in nanoseconds). Each phase is bounded in count and in time (`BENCH_SECS`, a failure
//! past it). Runs alternate the contenders; medians over `BENCH_RUNS`.
//!
//! ```text
//! cargo bench --bench mailbox
//! BENCH_RUNS=1 BENCH_ROUND_TRIPS=20000 BENCH_MESSAGES=500000 cargo bench --bench mailbox
//! ```
//!
//! Environment: `BENCH_RUNS` (3), `BENCH_ROUND_TRIPS` (100000), `BENCH_MESSAGES`
//! (2000000), `BENCH_SECS` (20), `BENCH_CONTENDERS`
//! (`gracering-uring,gracering-epoll,thread,tokio`).

mod support;

use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use gracering::{Backend, Conn, Handler, Mailbox, PostError, Server, Worker};
use support::settings::env_or;
use support::stats;
use testkit::{build, pin};

const WORKER_CPU: usize = 0;
const FOREIGN_CPU: usize = 1;

/// Errors cross the threads of a phase, so they are `Send`.
type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    support::exit_code(
        "mailbox",
        bench().map_err(|e| -> Box<dyn std::error::Error> { e }),
    )
}

/// [`env_or`], with an error that may cross threads.
fn setting<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Error> {
    env_or(name, default).map_err(|e| e.to_string().into())
}

/// What the foreign thread posts: a reply channel on the messages that want an answer.
struct Ping {
    reply: Option<Sender<u64>>,
}

/// The receiving side's work, the same for every contender: count, answer if asked.
#[derive(Default)]
struct Echo {
    seen: u64,
}

impl Echo {
    fn take(&mut self, ping: Ping) {
        self.seen += 1;
        if let Some(reply) = ping.reply {
            let _ = reply.send(self.seen);
        }
    }
}

impl Handler for Echo {
    type State = ();
    type Message = Ping;
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), _: &mut Conn<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_message(&mut self, ping: Ping) {
        self.take(ping);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Contender {
    Gracering(Backend),
    Thread,
    Tokio,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Gracering(Backend::Epoll) => "gracering-epoll",
            Contender::Gracering(_) => "gracering-uring",
            Contender::Thread => "thread",
            Contender::Tokio => "tokio",
        }
    }

    fn parse(name: &str) -> Option<Contender> {
        Some(match name {
            "gracering-uring" => Contender::Gracering(Backend::Uring),
            "gracering-epoll" => Contender::Gracering(Backend::Epoll),
            "thread" => Contender::Thread,
            "tokio" => Contender::Tokio,
            _ => return None,
        })
    }
}

struct Settings {
    runs: usize,
    round_trips: u64,
    messages: u64,
    limit: Duration,
    contenders: Vec<Contender>,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let names = std::env::var("BENCH_CONTENDERS")
            .unwrap_or("gracering-uring,gracering-epoll,thread,tokio".into());
        let contenders = (names.split(','))
            .map(|n| Contender::parse(n.trim()).ok_or(format!("unknown contender {n:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let s = Settings {
            runs: setting("BENCH_RUNS", 3)?,
            round_trips: setting("BENCH_ROUND_TRIPS", 100_000)?,
            messages: setting("BENCH_MESSAGES", 2_000_000)?,
            limit: Duration::from_secs(setting("BENCH_SECS", 20)?),
            contenders,
        };
        if s.runs == 0 || s.round_trips < 10 || s.messages == 0 || s.contenders.is_empty() {
            return Err("BENCH_RUNS, BENCH_MESSAGES > 0, BENCH_ROUND_TRIPS >= 10".into());
        }
        Ok(s)
    }
}

/// One contender's figures in one run.
#[derive(Clone, Default)]
struct Sample {
    /// Round-trip latency p50, p90, p99, p99.9, in nanoseconds.
    latency_ns: [f64; 4],
    /// Receiving thread's CPU per round trip, nanoseconds.
    latency_cpu_ns: f64,
    /// Wake-ups per round trip (gracering only).
    latency_wakeups: Option<f64>,
    /// Messages per second in the throughput phase.
    rate: f64,
    /// Receiving thread's CPU per message there, nanoseconds.
    rate_cpu_ns: f64,
    /// Wake-ups per message there (gracering only).
    rate_wakeups: Option<f64>,
    /// Posts refused as full and retried, per message.
    full: f64,
}

impl Sample {
    fn describe(&self) -> String {
        let [p50, p90, p99, p999] = self.latency_ns.map(|ns| ns / 1e3);
        let w = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        format!(
            "round trip p50 {p50:.1} us p90 {p90:.1} p99 {p99:.1} p99.9 {p999:.1}, CPU {:.0} ns, \
             wake-ups {} | {:.2} M msg/s, CPU {:.0} ns/msg, wake-ups {}/msg, full {:.3}/msg",
            self.latency_cpu_ns,
            w(self.latency_wakeups),
            self.rate / 1e6,
            self.rate_cpu_ns,
            w(self.rate_wakeups),
            self.full
        )
    }
}

fn bench() -> Result<(), Error> {
    let s = Settings::from_env()?;
    let tokio_peer = match s.contenders.contains(&Contender::Tokio) {
        true => build::build_peer("tokio-mailbox", None).map_err(|e| e.to_string())?,
        false => Default::default(),
    };
    println!(
        "mailbox: worker (or receiving thread) on CPU {WORKER_CPU}, foreign thread on CPU \
         {FOREIGN_CPU}; {} round trips (+{} warm-up), {} messages, {} runs",
        s.round_trips,
        s.round_trips / 10,
        s.messages,
        s.runs
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); s.contenders.len()];
    for run in 1..=s.runs {
        for (i, &c) in s.contenders.iter().enumerate() {
            let sample = match c {
                Contender::Gracering(backend) => gracering(backend, &s)?,
                Contender::Thread => plain_thread(&s)?,
                Contender::Tokio => tokio(&tokio_peer, &s)?,
            };
            println!("run {run} {:<16} {}", c.name(), sample.describe());
            samples[i].push(sample);
        }
    }
    print_table(&s, &samples);
    Ok(())
}

/// The foreign thread's side of a receiver: posts a message, `Err` with it back when
/// the mailbox is full.
type Post<'a> = dyn FnMut(Ping) -> Result<Result<(), Ping>, Error> + 'a;

/// What the foreign thread measured in one phase (besides the wake-ups).
struct Phase {
    latency_ns: [f64; 4],
    rate: f64,
    full: u64,
    /// Receiving thread's CPU over the phase, seconds.
    cpu_s: f64,
}

/// The latency phase, on the calling thread: warm-up, then `n` timed round trips.
fn round_trips(post: &mut Post<'_>, tid: i32, n: u64, limit: Duration) -> Result<Phase, Error> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let deadline = Instant::now() + limit;
    let one = |post: &mut Post<'_>| -> Result<Duration, Error> {
        let started = Instant::now();
        let msg = Ping {
            reply: Some(tx.clone()),
        };
        if post(msg)?.is_err() {
            return Err("the mailbox is full with one message in flight".into());
        }
        rx.recv_deadline(deadline)
            .map_err(|_| format!("no reply within {limit:?}"))?;
        Ok(started.elapsed())
    };
    for _ in 0..n / 10 {
        one(post)?;
    }
    let cpu_before = thread_cpu(tid)?;
    let mut ns: Vec<f64> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        ns.push(one(post)?.as_nanos() as f64);
    }
    let cpu_s = thread_cpu(tid)? - cpu_before;
    let q = |q| stats::quantile(&ns, q);
    Ok(Phase {
        latency_ns: [q(0.5), q(0.9), q(0.99), q(0.999)],
        rate: 0.0,
        full: 0,
        cpu_s,
    })
}

/// The throughput phase: `m` messages as fast as they are taken, the last with a reply.
fn flood(post: &mut Post<'_>, tid: i32, m: u64, limit: Duration) -> Result<Phase, Error> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let cpu_before = thread_cpu(tid)?;
    let started = Instant::now();
    let deadline = started + limit;
    let mut full = 0;
    for i in 0..m {
        let reply = (i + 1 == m).then(|| tx.clone());
        let mut msg = Ping { reply };
        while let Err(back) = post(msg)? {
            full += 1;
            if full % 1024 == 0 && Instant::now() >= deadline {
                return Err(format!("{i} of {m} messages posted in {limit:?}").into());
            }
            msg = back;
            thread::yield_now();
        }
    }
    rx.recv_deadline(deadline)
        .map_err(|_| format!("the last message was not answered within {limit:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    Ok(Phase {
        latency_ns: [0.0; 4],
        rate: m as f64 / secs,
        full,
        cpu_s: thread_cpu(tid)? - cpu_before,
    })
}

/// The worker's mailbox and thread id, handed out by its factory.
type Door = (Mailbox<Ping>, i32);

/// One gracering server per phase: runs `phase` on a thread pinned to the foreign CPU;
/// returns what it measured and the server's wake-up count.
fn with_server(
    backend: Backend,
    limit: Duration,
    phase: impl FnOnce(&mut Post<'_>, i32) -> Result<Phase, Error> + Send,
) -> Result<(Phase, u64), Error> {
    let server = Server::builder()
        .addr("127.0.0.1:0".parse()?)
        .workers(1)
        .pin_workers(true)
        .handle_signals(false)
        .backend(backend)
        .bind()?;
    let handle = server.shutdown_handle();
    let door: Arc<Mutex<Option<Door>>> = Arc::default();
    let d = door.clone();
    let run = thread::spawn(move || {
        server.run(move |worker: &mut Worker<Ping>| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            *d.lock().unwrap() = Some((worker.mailbox(), tid));
            Echo::default()
        })
    });
    let started = Instant::now();
    let (mailbox, tid) = loop {
        if let Some(door) = door.lock().unwrap().take() {
            break door;
        }
        if started.elapsed() > limit || run.is_finished() {
            handle.shutdown();
            run.join().map_err(|_| "server thread panicked")??;
            return Err("the worker did not start".into());
        }
        thread::sleep(Duration::from_millis(1));
    };
    let measured = thread::scope(|scope| {
        scope
            .spawn(|| {
                pin::pin_current_thread(FOREIGN_CPU)?;
                let mut post = |msg| match mailbox.post(msg) {
                    Ok(()) => Ok(Ok(())),
                    Err(PostError::Full(msg)) => Ok(Err(msg)),
                    Err(e) => Err(Error::from(format!("post: {e}"))),
                };
                phase(&mut post, tid)
            })
            .join()
            .map_err(|_| Error::from("foreign thread panicked"))
    });
    handle.shutdown();
    let report = run.join().map_err(|_| "server thread panicked")??;
    Ok((measured??, report.total().wakeups))
}

fn gracering(backend: Backend, s: &Settings) -> Result<Sample, Error> {
    let (n, m, limit) = (s.round_trips, s.messages, s.limit);
    let (lat, lat_wakeups) =
        with_server(backend, limit, |post, tid| round_trips(post, tid, n, limit))?;
    let (tp, tp_wakeups) = with_server(backend, limit, |post, tid| flood(post, tid, m, limit))?;
    // The latency server's wake-ups include the warm-up's.
    let trips = (n + n / 10) as f64;
    Ok(Sample {
        latency_ns: lat.latency_ns,
        latency_cpu_ns: lat.cpu_s * 1e9 / n as f64,
        latency_wakeups: Some(lat_wakeups as f64 / trips),
        rate: tp.rate,
        rate_cpu_ns: tp.cpu_s * 1e9 / m as f64,
        rate_wakeups: Some(tp_wakeups as f64 / m as f64),
        full: tp.full as f64 / m as f64,
    })
}

/// The floor: a plain thread on the worker CPU, `recv` on a crossbeam channel.
fn plain_thread(s: &Settings) -> Result<Sample, Error> {
    let phase = |which: &(dyn Fn(&mut Post<'_>, i32) -> Result<Phase, Error> + Sync)| {
        let (tx, rx): (Sender<Ping>, Receiver<Ping>) = crossbeam_channel::unbounded();
        let (tid_tx, tid_rx) = crossbeam_channel::bounded(1);
        let receiver = thread::spawn(move || -> Result<(), Error> {
            pin::pin_current_thread(WORKER_CPU)?;
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            let mut echo = Echo::default();
            while let Ok(ping) = rx.recv() {
                echo.take(ping);
            }
            Ok(())
        });
        let tid = tid_rx.recv_timeout(s.limit)?;
        let measured = thread::scope(|scope| {
            scope
                .spawn(|| {
                    pin::pin_current_thread(FOREIGN_CPU)?;
                    let mut post = |msg| {
                        tx.send(msg).map_err(|_| "receiver gone")?;
                        Ok(Ok(()))
                    };
                    which(&mut post, tid)
                })
                .join()
                .map_err(|_| Error::from("foreign thread panicked"))
        });
        drop(tx);
        receiver.join().map_err(|_| "receiver panicked")??;
        measured?
    };
    let (n, m, limit) = (s.round_trips, s.messages, s.limit);
    let lat = phase(&|post, tid| round_trips(post, tid, n, limit))?;
    let tp = phase(&|post, tid| flood(post, tid, m, limit))?;
    Ok(Sample {
        latency_ns: lat.latency_ns,
        latency_cpu_ns: lat.cpu_s * 1e9 / n as f64,
        latency_wakeups: None,
        rate: tp.rate,
        rate_cpu_ns: tp.cpu_s * 1e9 / m as f64,
        rate_wakeups: None,
        full: 0.0,
    })
}

/// The tokio peer: a child process that runs both phases and prints one JSON line.
fn tokio(peer: &std::path::Path, s: &Settings) -> Result<Sample, Error> {
    let mut cmd = Command::new(peer);
    cmd.env("GRACERING_BENCH_ROUND_TRIPS", s.round_trips.to_string())
        .env("GRACERING_BENCH_MESSAGES", s.messages.to_string())
        .env("GRACERING_BENCH_SECS", s.limit.as_secs().to_string())
        .env("GRACERING_BENCH_WORKER_CPU", WORKER_CPU.to_string())
        .env("GRACERING_BENCH_FOREIGN_CPU", FOREIGN_CPU.to_string());
    // Started on the foreign CPU; its runtime thread moves itself to the worker CPU.
    let limit = s.limit * 3 + Duration::from_secs(10);
    let out = testkit::process::run_pinned(&mut cmd, FOREIGN_CPU, limit)?;
    let text = out.stdout_if_success("tokio-mailbox")?;
    let line = (text.lines().find(|l| l.contains("\"mailbox\"")))
        .ok_or_else(|| format!("tokio-mailbox printed no result: {text:?}"))?;
    let num = |key: &str| {
        testkit::json::json_number(line, key).ok_or(format!("tokio-mailbox: no {key} in {line}"))
    };
    Ok(Sample {
        latency_ns: [
            num("p50_ns")?,
            num("p90_ns")?,
            num("p99_ns")?,
            num("p999_ns")?,
        ],
        latency_cpu_ns: num("latency_cpu_ns")?,
        latency_wakeups: None,
        rate: num("rate")?,
        rate_cpu_ns: num("rate_cpu_ns")?,
        rate_wakeups: None,
        full: 0.0,
    })
}

/// The CPU time thread `tid` of this process has run so far, in seconds: the first
/// field of `/proc/self/task/TID/schedstat`, the scheduler's own nanosecond count (user
/// and system time alike, without the tick rounding of `stat`).
fn thread_cpu(tid: i32) -> Result<f64, Error> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))?;
    let ns: u64 = (text.split_whitespace().next())
        .ok_or("empty schedstat")?
        .parse()?;
    Ok(ns as f64 * 1e-9)
}

fn print_table(s: &Settings, samples: &[Vec<Sample>]) {
    let med = |i: usize, f: &dyn Fn(&Sample) -> f64| {
        stats::median(&samples[i].iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "\n{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>9}",
        "contender",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "CPU/rt",
        "wake/rt",
        "M msg/s",
        "CPU/msg",
        "wake/msg"
    );
    for (i, c) in s.contenders.iter().enumerate() {
        let opt = |f: &dyn Fn(&Sample) -> Option<f64>| {
            let v: Option<Vec<f64>> = samples[i].iter().map(f).collect();
            v.map_or("-".into(), |v| format!("{:.3}", stats::median(&v)))
        };
        println!(
            "{:<16} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>5.0} ns {:>9} {:>10.2} {:>6.0} ns {:>9}",
            c.name(),
            med(i, &|x| x.latency_ns[0] / 1e3),
            med(i, &|x| x.latency_ns[1] / 1e3),
            med(i, &|x| x.latency_ns[2] / 1e3),
            med(i, &|x| x.latency_ns[3] / 1e3),
            med(i, &|x| x.latency_cpu_ns),
            opt(&|x| x.latency_wakeups),
            med(i, &|x| x.rate / 1e6),
            med(i, &|x| x.rate_cpu_ns),
            opt(&|x| x.rate_wakeups),
        );
    }
    let find = |name| s.contenders.iter().position(|c| c.name() == name);
    for g in ["gracering-uring", "gracering-epoll"] {
        let Some(gi) = find(g) else { continue };
        for peer in ["thread", "tokio"] {
            let Some(pi) = find(peer) else { continue };
            println!(
                "{g}/{peer}: p50 x{:.2}, p99 x{:.2}, msg/s x{:.2}",
                med(gi, &|x| x.latency_ns[0]) / med(pi, &|x| x.latency_ns[0]),
                med(gi, &|x| x.latency_ns[2]) / med(pi, &|x| x.latency_ns[2]),
                med(gi, &|x| x.rate) / med(pi, &|x| x.rate),
            );
        }
    }
    println!(
        "(medians over {} runs; differences under about 15% are noise here)",
        s.runs
    );
}
