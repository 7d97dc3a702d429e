//! The tokio peer of the mailbox bench (`benches/mailbox.rs`): not a server, but the
//! same two phases as the bench runs against gracering's mailbox, with a task on a
//! tokio current-thread runtime (all drivers on, as an application has them) receiving
//! from a `tokio::sync::mpsc` unbounded channel and answering on the crossbeam
//! `Sender<u64>` each message may carry.
//!
//! The runtime's thread pins itself to `GRACERING_BENCH_WORKER_CPU` (0), the foreign
//! (main) thread to `GRACERING_BENCH_FOREIGN_CPU` (1). Latency: after
//! `GRACERING_BENCH_ROUND_TRIPS / 10` unmeasured round trips, `GRACERING_BENCH_ROUND_TRIPS`
//! (100000) timed ones; throughput: `GRACERING_BENCH_MESSAGES` (2000000) sent at once,
//! the last with a reply. Each phase fails past `GRACERING_BENCH_SECS` (20). The
//! runtime thread's CPU time (from `/proc/self/task/TID/schedstat`, in nanoseconds) is taken
//! around each phase. It prints one line: `{"mailbox":{"p50_ns":..,"p90_ns":..,
//! "p99_ns":..,"p999_ns":..,"latency_cpu_ns":..,"rate":..,"rate_cpu_ns":..}}`.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use gracering_peers::{Error, pin_current_thread, quantile};
use tokio::sync::mpsc;

/// An error from the runtime's thread.
type Fail = Box<dyn std::error::Error + Send + Sync>;

/// What the foreign thread sends: a reply channel on the messages that want an answer.
struct Ping {
    reply: Option<Sender<u64>>,
}

fn env_u64(name: &str, default: u64) -> Result<u64, Error> {
    match std::env::var(name) {
        Ok(v) => Ok(v.trim().parse().map_err(|_| format!("bad {name}: {v:?}"))?),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), Error> {
    let n = env_u64("GRACERING_BENCH_ROUND_TRIPS", 100_000)?.max(10);
    let m = env_u64("GRACERING_BENCH_MESSAGES", 2_000_000)?.max(1);
    let limit = Duration::from_secs(env_u64("GRACERING_BENCH_SECS", 20)?);
    let worker_cpu = env_u64("GRACERING_BENCH_WORKER_CPU", 0)? as usize;
    let foreign_cpu = env_u64("GRACERING_BENCH_FOREIGN_CPU", 1)? as usize;

    pin_current_thread(foreign_cpu)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Ping>();
    let (tid_tx, tid_rx) = crossbeam_channel::bounded(1);
    let runtime = std::thread::spawn(move || -> Result<(), Fail> {
        pin_current_thread(worker_cpu)?;
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let task = tokio::spawn(async move {
                let mut seen = 0u64;
                while let Some(ping) = rx.recv().await {
                    seen += 1;
                    if let Some(reply) = ping.reply {
                        let _ = reply.send(seen);
                    }
                }
            });
            let _ = task.await;
        });
        Ok(())
    });
    let tid = tid_rx.recv_timeout(limit)?;

    // Latency.
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    let deadline = Instant::now() + limit;
    let one = || -> Result<Duration, Error> {
        let started = Instant::now();
        let reply = Some(reply_tx.clone());
        tx.send(Ping { reply }).map_err(|_| "runtime gone")?;
        reply_rx
            .recv_deadline(deadline)
            .map_err(|_| "no reply in time")?;
        Ok(started.elapsed())
    };
    for _ in 0..n / 10 {
        one()?;
    }
    let cpu = thread_cpu(tid)?;
    let mut ns = Vec::with_capacity(n as usize);
    for _ in 0..n {
        ns.push(one()?.as_nanos() as f64);
    }
    let latency_cpu_ns = (thread_cpu(tid)? - cpu) * 1e9 / n as f64;
    ns.sort_by(f64::total_cmp);
    let q = |q| quantile(&ns, q);

    // Throughput.
    let cpu = thread_cpu(tid)?;
    let started = Instant::now();
    for i in 0..m {
        let reply = (i + 1 == m).then(|| reply_tx.clone());
        tx.send(Ping { reply }).map_err(|_| "runtime gone")?;
    }
    reply_rx
        .recv_deadline(started + limit)
        .map_err(|_| "the last message was not answered in time")?;
    let rate = m as f64 / started.elapsed().as_secs_f64();
    let rate_cpu_ns = (thread_cpu(tid)? - cpu) * 1e9 / m as f64;

    drop(tx);
    (runtime.join())
        .map_err(|_| "runtime thread panicked")?
        .map_err(|e| -> Error { e })?;
    println!(
        r#"{{"mailbox":{{"p50_ns":{:.0},"p90_ns":{:.0},"p99_ns":{:.0},"p999_ns":{:.0},"latency_cpu_ns":{latency_cpu_ns:.1},"rate":{rate:.0},"rate_cpu_ns":{rate_cpu_ns:.1}}}}}"#,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999)
    );
    Ok(())
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
