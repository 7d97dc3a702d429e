//! When a server's Redis connections ended, as Redis saw it, beside the client's last
//! response: the `kv_redis` drain's order check.
//!
//! [`Watch::start`] (called before the signal) turns Redis's log to `verbose` (it then
//! logs `Client closed connection ... addr=IP:PORT` with a millisecond timestamp when
//! it reads a client's EOF), opens a `MONITOR` connection (every command with Redis's
//! microsecond time: the server's last commands and its `QUIT`, if it sends one) and a
//! thread polling `CLIENT LIST` about every millisecond (when each connection was last
//! listed and first missing). Every client but the bench's own, the poller's and the
//! monitor's is the server's. [`Watch::finish`] (after the server exited) gathers it
//! all per connection.
//!
//! A connection's end as Redis saw it is its `QUIT` (when Redis ran it), else the EOF
//! its log notes (within the millisecond it names), else the window between the last
//! `CLIENT LIST` that listed it (sent) and the first that did not (answered).
//! [`CloseCheck`] compares that with the instant the client received the last
//! response: `after` when the end cannot be earlier, `before-read` when it cannot be
//! later, `within` when the two overlap, `OPEN` when Redis still listed it at the end.
//! The client's instant is when it *read* the response: the generator shares its CPU
//! with Redis, so a read can come a millisecond or two after the server wrote it (even
//! after the server exited), and `before-read` alone does not mean that the server
//! closed before writing its last response; a connection closed while requests
//! waited on it would show as lost requests or errors instead. Redis's
//! wall clock is placed on ours through one `Instant`/`SystemTime` pair (the same
//! machine's clock); its log's times of day are taken as UTC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::pin;
use testkit::redis::{Monitor, RedisClient, RedisServer, Reply};

/// Pause between two `CLIENT LIST` polls.
const POLL_EVERY: Duration = Duration::from_millis(1);
/// Polling goes on at most this long after [`Watch::finish`] was asked.
const POLL_AFTER_STOP: Duration = Duration::from_secs(2);
/// Polling ends after this long whatever happens.
const POLL_LIMIT: Duration = Duration::from_secs(60);
/// What Redis logs (verbose) when it read a client's EOF.
const EOF_LINE: &str = "Client closed connection";

type Error = Box<dyn std::error::Error>;

/// What was seen of one of the server's Redis connections.
#[derive(Clone)]
pub struct Conn {
    pub name: String,
    /// Sent just before the last `CLIENT LIST` that listed it.
    pub last_listed: Instant,
    /// Answered: the first `CLIENT LIST` after that which did not list it.
    pub first_missing: Option<Instant>,
    /// Its last command besides `QUIT`, and its `QUIT` (Redis's times, from `MONITOR`).
    pub last_command: Option<Instant>,
    pub quit: Option<Instant>,
    /// The start of the millisecond Redis's log names for its EOF.
    pub eof_logged: Option<Instant>,
}

/// The `MONITOR` connection, the `CLIENT LIST` poller and the log of one drain run.
pub struct Watch {
    monitor: Monitor,
    /// One instant read with the wall clock, to place Redis's times on ours.
    anchor: (Instant, SystemTime),
    stop: Arc<AtomicBool>,
    poller: JoinHandle<Result<BTreeMap<SocketAddr, Conn>, String>>,
    log: PathBuf,
    log_from: u64,
}

impl Watch {
    /// Turns Redis's log to verbose through `ctl` (the bench's own connection), starts
    /// the monitor and the poller (on `cpu`).
    pub fn start(redis: &RedisServer, ctl: &mut RedisClient, cpu: usize) -> Result<Watch, Error> {
        match ctl.cmd(&[b"CONFIG", b"SET", b"loglevel", b"verbose"])? {
            Reply::Simple(ok) if ok == "OK" => {}
            other => return Err(format!("CONFIG SET loglevel answered {other:?}").into()),
        }
        let log = redis.log_path();
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len());
        let own = ctl.local_addr()?;
        let monitor = redis.monitor()?;
        let anchor = (Instant::now(), SystemTime::now());
        let mut client = RedisClient::connect(redis.addr())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let poller = std::thread::spawn(move || {
            let _ = pin::pin_current_thread(cpu);
            poll(&mut client, own, &flag).map_err(|e| e.to_string())
        });
        Ok(Watch {
            monitor,
            anchor,
            stop,
            poller,
            log,
            log_from,
        })
    }

    /// Stops polling once every connection is gone (at most 2 s more) and gathers what
    /// was seen, per connection of the server.
    pub fn finish(self) -> Result<BTreeMap<SocketAddr, Conn>, Error> {
        self.stop.store(true, Ordering::Relaxed);
        let mut conns = (self.poller.join()).map_err(|_| "the CLIENT LIST poller panicked")??;
        let (at, wall) = self.anchor;
        let wall = wall.duration_since(UNIX_EPOCH)?.as_secs_f64();
        let on_ours = |secs: f64| {
            let d = secs - wall;
            match d >= 0.0 {
                true => at.checked_add(Duration::from_secs_f64(d)),
                false => at.checked_sub(Duration::from_secs_f64(-d)),
            }
        };
        for line in self.monitor.stop() {
            let conn = line.addr().and_then(|a| conns.get_mut(&a));
            let (Some(conn), Some(t)) = (conn, on_ours(line.time)) else {
                continue;
            };
            match line.command() == "quit" {
                true => conn.quit = Some(t),
                false => conn.last_command = Some(t),
            }
        }
        let text = std::fs::read(&self.log)?;
        let from = (self.log_from as usize).min(text.len());
        for line in String::from_utf8_lossy(&text[from..]).lines() {
            let Some((tod, addr)) = eof_line(line) else {
                continue;
            };
            // The time of day nearest the anchor's (UTC), within 10 minutes.
            let mut d = tod - wall.rem_euclid(86_400.0);
            d -= (d / 86_400.0).round() * 86_400.0;
            if let (Some(conn), true) = (conns.get_mut(&addr), d.abs() < 600.0) {
                conn.eof_logged = on_ours(wall + d);
            }
        }
        Ok(conns)
    }
}

/// The time of day (seconds, UTC) and the client's address of a log line
/// `PID:M 02 Dec 2026 04:03:01.123 - Client closed connection id=5 addr=IP:PORT ...`.
fn eof_line(line: &str) -> Option<(f64, SocketAddr)> {
    let (head, rest) = line.split_once(EOF_LINE)?;
    let clock = head.split_whitespace().nth(4)?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    let addr = rest
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addr="))?;
    Some((h * 3600.0 + m * 60.0 + s, addr.parse().ok()?))
}

/// Polls `CLIENT LIST` until `stop` is set and every connection of the server is gone
/// (or `POLL_AFTER_STOP` after `stop`, or `POLL_LIMIT`).
fn poll(
    client: &mut RedisClient,
    own: SocketAddr,
    stop: &AtomicBool,
) -> std::io::Result<BTreeMap<SocketAddr, Conn>> {
    let mine = client.local_addr()?;
    let (started, mut stopped) = (Instant::now(), None);
    let mut conns: BTreeMap<SocketAddr, Conn> = BTreeMap::new();
    while started.elapsed() < POLL_LIMIT {
        let sent = Instant::now();
        let list = client.client_list()?;
        let answered = Instant::now();
        let theirs = list.iter().filter(|c| ![own, mine].contains(&c.addr));
        for c in theirs.filter(|c| c.cmd != "monitor") {
            let conn = conns.entry(c.addr).or_insert(Conn {
                name: c.name.clone(),
                last_listed: sent,
                first_missing: None,
                last_command: None,
                quit: None,
                eof_logged: None,
            });
            conn.last_listed = sent;
        }
        for (addr, conn) in conns.iter_mut() {
            if conn.first_missing.is_none() && !list.iter().any(|c| c.addr == *addr) {
                conn.first_missing = Some(answered);
            }
        }
        if stop.load(Ordering::Relaxed) {
            let at = *stopped.get_or_insert(answered);
            let all_gone = conns.values().all(|c| c.first_missing.is_some());
            if all_gone || at.elapsed() > POLL_AFTER_STOP {
                break;
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
    Ok(conns)
}

/// How a connection's end compares with the last response.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
pub enum Order {
    After,
    Within,
    Before,
    Open,
}

impl Order {
    pub fn name(self) -> &'static str {
        match self {
            Order::After => "after",
            Order::Within => "within",
            Order::Before => "before-read",
            Order::Open => "OPEN",
        }
    }
}

/// How a connection's end was seen.
fn end_of(c: &Conn) -> Option<(&'static str, Instant, Instant)> {
    if let Some(q) = c.quit {
        return Some(("QUIT", q, q));
    }
    if let Some(e) = c.eof_logged {
        return Some(("EOF", e, e + Duration::from_millis(1)));
    }
    c.first_missing.map(|gone| ("poll", c.last_listed, gone))
}

/// One connection's end: its name, how it was seen (`QUIT`, `EOF`, `poll`) and its
/// `(earliest, latest)` bounds in ms after the signal (`None`: still listed).
pub type End = (String, &'static str, Option<(f64, f64)>);

/// One drain run's connections, beside its last response; times in ms after the signal.
#[derive(Clone)]
pub struct CloseCheck {
    pub ends: Vec<End>,
    pub last_response_ms: f64,
    /// The server's last command (not `QUIT`) as Redis ran it.
    pub last_command_ms: Option<f64>,
    pub exit_ms: f64,
    /// The worst of the connections' orders.
    pub order: Order,
    /// The earliest end (its earliest bound) less the last response, in ms.
    pub gap_ms: Option<f64>,
}

pub fn ms_after(t: Instant, at: Instant) -> f64 {
    match t.checked_duration_since(at) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(at - t).as_secs_f64() * 1e3,
    }
}

impl CloseCheck {
    pub fn new(
        conns: &BTreeMap<SocketAddr, Conn>,
        signal: Instant,
        last_response: Instant,
        exit: Instant,
    ) -> CloseCheck {
        let mut order = if conns.is_empty() {
            Order::Open
        } else {
            Order::After
        };
        let mut ends = Vec::new();
        for c in conns.values() {
            let end = end_of(c);
            let this = match end {
                None => Order::Open,
                Some((_, lo, _)) if lo >= last_response => Order::After,
                Some((_, _, hi)) if hi < last_response => Order::Before,
                Some(_) => Order::Within,
            };
            if this > order {
                order = this;
            }
            let name = if c.name.is_empty() {
                "(no name)"
            } else {
                &c.name
            };
            ends.push((
                name.to_string(),
                end.map_or("-", |e| e.0),
                end.map(|(_, lo, hi)| (ms_after(lo, signal), ms_after(hi, signal))),
            ));
        }
        CloseCheck {
            ends,
            last_response_ms: ms_after(last_response, signal),
            last_command_ms: (conns.values().filter_map(|c| c.last_command).max())
                .map(|t| ms_after(t, signal)),
            exit_ms: ms_after(exit, signal),
            order,
            gap_ms: (conns.values().filter_map(end_of).map(|(_, lo, _)| lo).min())
                .map(|lo| ms_after(lo, last_response)),
        }
    }

    /// The latest end seen (its earliest bound), in ms after the signal.
    pub fn last_end_ms(&self) -> Option<f64> {
        self.ends
            .iter()
            .filter_map(|e| e.2.map(|(lo, _)| lo))
            .reduce(f64::max)
    }

    /// How the ends were seen: `2 QUIT`, `1 EOF`, ...
    pub fn seen_as(&self) -> String {
        let mut kinds: Vec<&str> = self.ends.iter().map(|e| e.1).collect();
        kinds.sort();
        kinds.dedup();
        let count = |k: &str| self.ends.iter().filter(|e| e.1 == k).count();
        (kinds.iter().map(|k| format!("{} {k}", count(k))))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    pub fn describe(&self) -> String {
        let ends: Vec<String> = (self.ends.iter())
            .map(|(name, how, end)| match end {
                Some((lo, hi)) if lo == hi => format!("{name} {how} {lo:+.2}"),
                Some((lo, hi)) => format!("{name} {how} {lo:+.2}..{hi:+.2}"),
                None => format!("{name} still listed"),
            })
            .collect();
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:+.2}"));
        format!(
            "redis (ms after the signal): last command {}, last response {:+.2}, ends [{}], exit \
             {:+.2}: ended after the last response was read: {} (first end {} ms after it)",
            ms(self.last_command_ms),
            self.last_response_ms,
            ends.join(", "),
            self.exit_ms,
            self.order.name(),
            ms(self.gap_ms)
        )
    }
}
