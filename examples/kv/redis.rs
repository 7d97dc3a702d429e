//! The Redis store: each worker opens its own connections to Redis on its ring
//! ([`Local::connect`]) and pipelines requests on them, one FIFO of waiting requests
//! per connection; replies are RESP2 frames (the `redis-protocol` crate), each posted
//! to the request at the front of its connection's FIFO.
//!
//! Everything here runs on the worker's thread: the service and the links share their
//! state through an `Rc<RefCell<..>>`, with no lock.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use gracering::http::{Response, Status};
use gracering::{CloseReason, ConnAddr, ConnectOptions, Link, LinkId, LinkStatus, Local};
use gracering::{Outbound, Worker};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use crate::{Answer, KeyOp, Trouble, log_once};

/// How the workers reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Connections per worker.
    pub conns: usize,
    /// How long a request waits for its reply before it gets 504.
    pub timeout: Duration,
    /// Requests in flight on one connection at most; past that the request goes to the
    /// next connection, or gets 503 `redis busy` when all are full.
    pub max_inflight: usize,
}

impl Default for RedisConfig {
    fn default() -> RedisConfig {
        RedisConfig {
            conns: 2,
            timeout: Duration::from_secs(5),
            max_inflight: 1024,
        }
    }
}

/// Parses `redis://IP:PORT` (an IPv4 address, or an IPv6 one in brackets, and a port).
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!(
            "{url:?} is neither sqlite nor redis://IP:PORT (an IPv4 address or a [IPv6] \
             one, and a port; no host names, no database number)"
        )
    };
    let rest = url.strip_prefix("redis://").ok_or_else(bad)?;
    let addr: SocketAddr = rest.parse().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(addr)
}

/// The command a reply answers: how to read it.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    /// `GET key`: a bulk string, or nil.
    Get,
    /// `SET key value GET`: nil when the key was new, the old value when replaced.
    Set,
    /// `DEL key`: how many keys were removed.
    Del,
}

/// What waits for the next reply on a connection.
#[derive(Debug)]
enum Waiter {
    /// `CLIENT SETNAME`, written on connect: its `+OK` is ours, not a request's.
    Setname,
    /// `QUIT`, written by the drain.
    Quit,
    /// A request, waiting at `to`.
    Request { to: ConnAddr, cmd: Cmd },
}

/// One connection as the service and its client both see it.
#[derive(Debug)]
struct Slot {
    id: LinkId,
    /// Replies due, in the order the commands were written.
    fifo: VecDeque<Waiter>,
    /// Connected at least once (a later connect is a reconnect).
    was_up: bool,
    /// Up now (as far as the client was told): a down is logged once per outage.
    up: bool,
}

/// What one worker counts, printed at its teardown.
#[derive(Debug, Default)]
struct Counts {
    value: u64,
    absent: u64,
    created: u64,
    replaced: u64,
    deleted: u64,
    wrongtype: u64,
    oom: u64,
    error: u64,
    unavailable: u64,
    busy: u64,
    late: u64,
    /// Times a connection went down (after it had been up).
    down: u64,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "value={} absent={} created={} replaced={} deleted={} wrongtype={} oom={} \
             error={} unavailable={} busy={} late={} down={}",
            self.value,
            self.absent,
            self.created,
            self.replaced,
            self.deleted,
            self.wrongtype,
            self.oom,
            self.error,
            self.unavailable,
            self.busy,
            self.late,
            self.down
        )
    }
}

/// One worker's Redis state, shared by its service and its links.
#[derive(Debug)]
struct Shared {
    worker: usize,
    slots: Vec<Slot>,
    /// Where the round-robin starts next.
    next: usize,
    max_inflight: usize,
    counts: Counts,
}

/// One worker's Redis store as the service sees it.
pub struct Redis {
    shared: Rc<RefCell<Shared>>,
    local: Local<Answer>,
    timeout: Duration,
}

impl Redis {
    /// Opens one worker's connections to `addr`, and registers the teardown that prints
    /// its counts (registered first, so it runs after the connections closed).
    pub fn start(worker: &mut Worker<Answer>, addr: SocketAddr, cfg: &RedisConfig) -> Redis {
        let index = worker.index();
        let shared = Rc::new(RefCell::new(Shared {
            worker: index,
            slots: Vec::with_capacity(cfg.conns),
            next: 0,
            max_inflight: cfg.max_inflight.max(1),
            counts: Counts::default(),
        }));
        let summary = shared.clone();
        worker.on_teardown("kv-redis", move || {
            eprintln!("kv: worker {index}: redis: {}", summary.borrow().counts);
        });
        let local = worker.local();
        let options = ConnectOptions::new()
            .timeout(Duration::from_secs(1))
            .reconnect(Duration::from_millis(50), Duration::from_secs(2));
        for k in 0..cfg.conns.max(1) {
            let client = Client {
                shared: shared.clone(),
                k,
            };
            let id = local.connect(addr, options, client);
            shared.borrow_mut().slots.push(Slot {
                id,
                fifo: VecDeque::new(),
                was_up: false,
                up: false,
            });
        }
        Redis {
            shared,
            local,
            timeout: cfg.timeout,
        }
    }

    /// Writes the request's command to a connection that is up and not full (round
    /// robin), and parks the request on that connection's FIFO; 503 at once when none
    /// is up (`redis unavailable`) or all that are up are full (`redis busy`).
    pub fn submit(&mut self, op: KeyOp<'_>, key: &str, res: &mut Response<'_>) {
        let mut shared = self.shared.borrow_mut();
        let sh = &mut *shared;
        let n = sh.slots.len();
        let mut up = false;
        for i in 0..n {
            let k = (sh.next + i) % n;
            let slot = &mut sh.slots[k];
            if self.local.status(slot.id) != LinkStatus::Up {
                continue;
            }
            up = true;
            if slot.fifo.len() >= sh.max_inflight {
                continue;
            }
            let cmd = match op {
                KeyOp::Get => Cmd::Get,
                KeyOp::Put(_) => Cmd::Set,
                KeyOp::Delete => Cmd::Del,
            };
            let key = key.as_bytes();
            let written = self.local.write_with(slot.id, |out| match op {
                KeyOp::Get => command(out, &[b"GET", key]),
                KeyOp::Put(value) => command(out, &[b"SET", key, value, b"GET"]),
                KeyOp::Delete => command(out, &[b"DEL", key]),
            });
            if written.is_err() {
                continue; // not up after all: try the next one
            }
            let to = res.wait(self.timeout);
            slot.fifo.push_back(Waiter::Request { to, cmd });
            sh.next = (k + 1) % n;
            return;
        }
        if up {
            sh.counts.busy += 1;
            log_once(
                Trouble::RedisBusy,
                format_args!(
                    "worker {}: every Redis connection has {} requests in flight: 503",
                    sh.worker, sh.max_inflight
                ),
            );
            res.text(Status::SERVICE_UNAVAILABLE, "redis busy");
        } else {
            sh.counts.unavailable += 1;
            log_once(
                Trouble::RedisUnavailable,
                format_args!("worker {}: no Redis connection is up: 503", sh.worker),
            );
            res.text(Status::SERVICE_UNAVAILABLE, "redis unavailable");
        }
    }

    /// An answer came after its request was gone (504, or its connection closed).
    pub fn count_late(&self) {
        self.shared.borrow_mut().counts.late += 1;
    }
}

/// Appends a command (an array of bulk strings) to `out`.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // At most four arguments: no allocation for the frame itself.
    let mut parts = [
        BorrowedFrame::Null,
        BorrowedFrame::Null,
        BorrowedFrame::Null,
        BorrowedFrame::Null,
    ];
    for (part, arg) in parts.iter_mut().zip(args) {
        *part = BorrowedFrame::BulkString(arg);
    }
    let frame = BorrowedFrame::Array(&parts[..args.len().min(4)]);
    let at = out.len();
    out.resize(at + frame.encode_len(false), 0);
    let n =
        encode_borrowed(&mut out[at..], &frame, false).expect("the buffer was sized by encode_len");
    out.truncate(at + n);
}

/// The protocol side of one connection.
struct Client {
    shared: Rc<RefCell<Shared>>,
    /// Its index among the worker's connections (its name's `cK`).
    k: usize,
}

impl Outbound<Answer> for Client {
    fn on_connect(&mut self, link: &mut Link<'_, Answer>) {
        let mut sh = self.shared.borrow_mut();
        let worker = sh.worker;
        let slot = &mut sh.slots[self.k];
        let name = format!("gracering-kv-w{worker}-c{}", self.k);
        command(link.output(), &[b"CLIENT", b"SETNAME", name.as_bytes()]);
        slot.fifo.push_back(Waiter::Setname);
        if slot.was_up {
            eprintln!("kv: worker {worker}: redis connection {} up again", self.k);
        }
        slot.was_up = true;
        slot.up = true;
    }

    fn on_data(&mut self, link: &mut Link<'_, Answer>, data: &[u8]) -> usize {
        let mut shared = self.shared.borrow_mut();
        let sh = &mut *shared;
        let worker = sh.worker;
        let slot = &mut sh.slots[self.k];
        let mut used = 0;
        while used < data.len() {
            let frame = match decode(&data[used..]) {
                Ok(Some((frame, n))) => {
                    used += n;
                    frame
                }
                Ok(None) => break, // a partial frame: wait for the rest
                Err(e) => {
                    // Nothing after this can be matched to its request.
                    log_once(
                        Trouble::RedisProtocol,
                        format_args!(
                            "worker {worker}: Redis sent what is not RESP2 ({e:?}): closing the connection"
                        ),
                    );
                    for w in slot.fifo.drain(..) {
                        if let Waiter::Request { to, .. } = w {
                            sh.counts.error += 1;
                            let _ =
                                link.post(to, Answer::RedisError("redis protocol error".into()));
                        }
                    }
                    link.close();
                    return usize::MAX;
                }
            };
            match slot.fifo.pop_front() {
                Some(Waiter::Request { to, cmd }) => {
                    let answer = read_reply(cmd, frame, &mut sh.counts, worker);
                    let _ = link.post(to, answer);
                }
                Some(Waiter::Setname) => {
                    if !matches!(frame, OwnedFrame::SimpleString(_)) {
                        eprintln!(
                            "kv: worker {worker}: redis connection {}: CLIENT SETNAME answered {frame:?}",
                            self.k
                        );
                    }
                }
                Some(Waiter::Quit) => {}
                None => log_once(
                    Trouble::RedisProtocol,
                    format_args!("worker {worker}: a Redis reply nothing waited for: {frame:?}"),
                ),
            }
        }
        used
    }

    fn on_drain(&mut self, link: &mut Link<'_, Answer>) {
        command(link.output(), &[b"QUIT"]);
        self.shared.borrow_mut().slots[self.k]
            .fifo
            .push_back(Waiter::Quit);
        link.close();
    }

    fn on_down(&mut self, local: &Local<Answer>, reason: CloseReason, retry: Option<Duration>) {
        let mut shared = self.shared.borrow_mut();
        let sh = &mut *shared;
        let worker = sh.worker;
        let slot = &mut sh.slots[self.k];
        let mut waiting = 0;
        for w in slot.fifo.drain(..) {
            if let Waiter::Request { to, .. } = w {
                waiting += 1;
                let _ = local.post(to, Answer::Unavailable);
            }
        }
        let was_up = std::mem::replace(&mut slot.up, false);
        sh.counts.unavailable += waiting;
        if retry.is_none() {
            return eprintln!("kv: worker {worker}: redis connection {} closed", self.k);
        }
        if was_up {
            sh.counts.down += 1;
            eprintln!(
                "kv: worker {worker}: redis connection {} down ({reason:?}), {waiting} requests \
                 answered 503; reconnecting",
                self.k
            );
        } else if !sh.slots[self.k].was_up {
            log_once(
                Trouble::RedisUnavailable,
                format_args!("worker {worker}: cannot connect to Redis ({reason:?}); retrying"),
            );
        }
    }
}

/// The answer a reply to `cmd` gives (counted by kind).
fn read_reply(cmd: Cmd, frame: OwnedFrame, counts: &mut Counts, worker: usize) -> Answer {
    let answer = match (cmd, frame) {
        (Cmd::Get, OwnedFrame::BulkString(v)) => Answer::Value(v),
        (Cmd::Get, OwnedFrame::Null) | (Cmd::Del, OwnedFrame::Integer(0)) => Answer::Absent,
        (Cmd::Set, OwnedFrame::Null) => Answer::Created,
        (Cmd::Set, OwnedFrame::BulkString(_)) => Answer::Replaced,
        (Cmd::Del, OwnedFrame::Integer(n)) if n > 0 => Answer::Deleted,
        (_, OwnedFrame::Error(e)) if e.starts_with("WRONGTYPE") => {
            log_once(
                Trouble::RedisWrongType,
                format_args!("worker {worker}: Redis: {e}: 409"),
            );
            Answer::Conflict(e)
        }
        (_, OwnedFrame::Error(e)) if e.starts_with("OOM") => {
            log_once(
                Trouble::RedisOom,
                format_args!("worker {worker}: Redis: {e}: 503"),
            );
            Answer::OutOfMemory
        }
        (_, OwnedFrame::Error(e)) => {
            log_once(
                Trouble::RedisError,
                format_args!("worker {worker}: Redis: {e}: 502"),
            );
            Answer::RedisError(e)
        }
        (cmd, other) => {
            log_once(
                Trouble::RedisError,
                format_args!("worker {worker}: Redis answered {cmd:?} with {other:?}: 502"),
            );
            Answer::RedisError(format!("unexpected reply from redis to {cmd:?}"))
        }
    };
    match &answer {
        Answer::Value(_) => counts.value += 1,
        Answer::Absent => counts.absent += 1,
        Answer::Created => counts.created += 1,
        Answer::Replaced => counts.replaced += 1,
        Answer::Deleted => counts.deleted += 1,
        Answer::Conflict(_) => counts.wrongtype += 1,
        Answer::OutOfMemory => counts.oom += 1,
        _ => counts.error += 1,
    }
    answer
}
