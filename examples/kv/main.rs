//! The key-value example: HTTP in front of a store, SQLite (the default) on threads of
//! its own, or Redis over connections the workers open themselves.
//!
//! ```text
//! cargo run --release --example kv                 # 127.0.0.1:8080, ./gracering-kv.db
//! cargo run --release --example kv -- --addr 127.0.0.1:9000 --workers 2 \
//!     --db /tmp/kv.db --db-threads 2 --busy-timeout 2s --db-timeout 5s
//! cargo run --release --example kv -- --store redis://127.0.0.1:6379 \
//!     --redis-conns 2 --redis-timeout 5s --redis-max-inflight 1024
//! ```
//!
//! ```text
//!  SQLite (--store sqlite, the default)
//!  worker k (loop)                        database threads of worker k (std threads,
//!  Service::call ── Job ──▶ bounded ──▶    each with its own SQLite connection)
//!    Response::wait        job queue        run the statement (busy handler waits
//!                                           for the write lock, up to --busy-timeout)
//!  Service::resume ◀── Mailbox::post_to(the request's address, Answer)
//!
//!  Redis (--store redis://HOST:PORT)
//!  worker k (loop, one thread: no locks)
//!  Service::call ── Local::write_with(link, RESP command) ──▶ link j of worker k
//!    Response::wait: the request's address      (round-robin over the links that are
//!    goes on link j's FIFO                       up and not full; pipelined)
//!  Service::resume ◀── Link::post(FIFO front, Answer) ◀── Outbound::on_data (one
//!                                                         RESP reply per FIFO entry)
//! ```
//!
//! Routes: `PUT /kv/{key}` stores the body (201 when new, 200 when replaced),
//! `GET /kv/{key}` answers it (`application/octet-stream`, 404 when absent),
//! `DELETE /kv/{key}` removes it (200, or 404 when absent); `/healthz` is 200 until
//! the process ends, `/readyz` 200 while serving and 503 from the drain's first
//! instant (on Redis also 503 `redis unavailable` while the worker that answers has no
//! Redis connection up); `GET /metrics` answers every worker's figures in the
//! Prometheus text format (during the drain too). The key is the path segment's bytes as sent (no percent-decoding), 1 to
//! 256 bytes; longer, empty or holding `/`: 400 with the reason. A target that is not
//! UTF-8 is refused by the HTTP layer (400), a body over `--max-body` too (413). Other
//! methods: 405 with `Allow`. Each kind of trouble below is logged once.
//!
//! SQLite: a full job queue or a database still locked after `--busy-timeout`: 503
//! `database busy`; any other database error: 500 with a short reason; no answer
//! within `--db-timeout`: 504. The loop never touches the database: each worker owns a
//! pool of `--db-threads` threads (default 2), fed by a bounded queue, answering
//! through the worker's mailbox. The database is in WAL mode with `synchronous=NORMAL`
//! (or `--sync full`): a write is acknowledged once committed to the WAL, so it
//! survives the process being killed; only an OS crash or power loss can take the last
//! commits, which `full` prevents at the cost of an fsync per commit.
//!
//! Redis: `PUT` is `SET key body GET`, `GET`/`HEAD` is `GET key`, `DELETE` is
//! `DEL key`. Each worker opens `--redis-conns` connections (default 2), named
//! `gracering-kv-wN-cK` with `CLIENT SETNAME`, and pipelines requests on them in
//! order, at most `--redis-max-inflight` (default 1024) per connection: past that,
//! 503 `redis busy`. No connection up (Redis down, or not started yet): 503
//! `redis unavailable` at once; a connection that goes down answers the requests
//! waiting on it the same way, and reconnects by itself (50 ms, doubling up to 2 s).
//! A `WRONGTYPE` error reply: 409; `OOM`: 503 `redis out of memory`; any other error
//! reply: 502 with Redis's message; no answer within `--redis-timeout` (default 5 s):
//! 504 (the late answer is counted and dropped). What Redis keeps, and whether it
//! survives a restart, is Redis's configuration.
//!
//! SIGTERM or SIGINT drains: readiness fails, the requests waiting on the store get
//! their answers (with `Connection: close`). SQLite: then each worker's teardown
//! closes its job queue, lets its threads finish what is queued and closes their
//! connections; the last worker to get there checkpoints the WAL into the database
//! file first (`PRAGMA wal_checkpoint(TRUNCATE)`), logging
//! `kv: worker N: database closed (checkpoint ok)`. Redis: once a worker's last
//! accepted connection closed, each of its Redis connections sends `QUIT` and closes
//! (`kv: worker N: redis connection K closed`), then the worker prints its counts
//! (`kv: worker N: redis: value=.. absent=.. ... late=..`). Exit codes as for the other
//! examples: 0 after a clean drain, 3 when connections had to be cut, 4 when a worker
//! failed, 1 when the server or the database could not start, 2 for bad arguments.

#[path = "../common/mod.rs"]
mod common;
mod redis;
mod sqlite;

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{SERVER_USAGE, ServerArgs};
use gracering::Worker;
use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};

use redis::{Redis, RedisConfig};
use sqlite::{DbConfig, Sqlite};

/// The longest key, in bytes.
const MAX_KEY: usize = 256;

/// What a request asks of the store (checked: a valid key, a known method).
#[derive(Debug, Clone, Copy)]
pub enum KeyOp<'a> {
    Get,
    Put(&'a [u8]),
    Delete,
}

/// A store's answer, posted back to the waiting request.
#[derive(Debug)]
pub enum Answer {
    Value(Vec<u8>),
    Created,
    Replaced,
    Deleted,
    Absent,
    /// SQLite: the write lock stayed taken past the busy timeout.
    Busy,
    /// SQLite: any other database error, with a short reason.
    Failed(String),
    /// Redis: a `WRONGTYPE` error reply (the key holds another type), with its message.
    Conflict(String),
    /// Redis: an `OOM` error reply.
    OutOfMemory,
    /// Redis: any other error reply (or a reply that makes no sense), with its message.
    RedisError(String),
    /// Redis: the connection carrying the request went down before its reply.
    Unavailable,
}

impl Answer {
    /// What the answer is, in a word (for logs: a value may be large).
    fn kind(&self) -> &'static str {
        match self {
            Answer::Value(_) => "value",
            Answer::Created => "created",
            Answer::Replaced => "replaced",
            Answer::Deleted => "deleted",
            Answer::Absent => "absent",
            Answer::Busy => "busy",
            Answer::Failed(_) => "failed",
            Answer::Conflict(_) => "wrongtype",
            Answer::OutOfMemory => "oom",
            Answer::RedisError(_) => "redis error",
            Answer::Unavailable => "unavailable",
        }
    }
}

/// The kinds of trouble, each logged once (the first time) per process.
#[derive(Debug, Clone, Copy)]
pub enum Trouble {
    Busy,
    Database,
    QueueFull,
    MailboxFull,
    MailboxClosed,
    Late,
    RedisWrongType,
    RedisOom,
    RedisError,
    RedisUnavailable,
    RedisBusy,
    RedisProtocol,
}

/// Whether each [`Trouble`] was logged yet.
static LOGGED: [AtomicBool; 12] = [const { AtomicBool::new(false) }; 12];

/// Logs `what` if it is the first trouble of its kind.
pub fn log_once(kind: Trouble, what: impl Display) {
    if !LOGGED[kind as usize].swap(true, Ordering::Relaxed) {
        eprintln!("kv: {what} (logged once)");
    }
}

// ---------------------------------------------------------------------------------
// The HTTP side: runs on the worker's loop, never waits for the store.
// ---------------------------------------------------------------------------------

/// Where one worker's key operations go.
enum Store {
    Sqlite(Sqlite),
    Redis(Redis),
}

/// One worker's service: routes requests, hands key operations to the store.
struct Kv {
    store: Store,
    metrics: gracering::Metrics,
}

impl Service for Kv {
    type Message = Answer;

    fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
        let path = req.path();
        if let Some(key) = path.strip_prefix("/kv/") {
            return self.key_op(req, key, res);
        }
        let get = matches!(req.method(), "GET" | "HEAD");
        match path {
            "/healthz" | "/readyz" | "/metrics" if !get => res.send(
                Status::METHOD_NOT_ALLOWED,
                &[("allow", b"GET, HEAD"), ("content-type", b"text/plain")],
                b"use GET",
            ),
            "/healthz" => res.text(Status::OK, "ok"),
            "/metrics" => common::serve_metrics(&self.metrics, res),
            "/readyz" if res.is_draining() => res.text(Status::SERVICE_UNAVAILABLE, "draining"),
            "/readyz" => match &self.store {
                Store::Redis(redis) if !redis.any_up() => {
                    res.text(Status::SERVICE_UNAVAILABLE, "redis unavailable")
                }
                _ => res.text(Status::OK, "ready"),
            },
            _ => res.text(Status::NOT_FOUND, "not found: use /kv/{key}"),
        }
    }

    fn resume(&mut self, answer: Answer, res: &mut Response<'_>) {
        match answer {
            Answer::Value(v) => res.send(
                Status::OK,
                &[("content-type", b"application/octet-stream")],
                &v,
            ),
            Answer::Created => res.text(Status::CREATED, "created"),
            Answer::Replaced => res.text(Status::OK, "replaced"),
            Answer::Deleted => res.text(Status::OK, "deleted"),
            Answer::Absent => res.text(Status::NOT_FOUND, "no such key"),
            Answer::Busy => res.text(Status::SERVICE_UNAVAILABLE, "database busy"),
            Answer::Failed(why) => res.text(Status::INTERNAL_ERROR, &why),
            Answer::Conflict(why) => res.text(Status(409), &why),
            Answer::OutOfMemory => res.text(Status::SERVICE_UNAVAILABLE, "redis out of memory"),
            Answer::RedisError(why) => res.text(Status(502), &why),
            Answer::Unavailable => res.text(Status::SERVICE_UNAVAILABLE, "redis unavailable"),
        }
    }

    fn on_undelivered(&mut self, answer: Answer) {
        if let Store::Redis(redis) = &self.store {
            redis.count_late();
        }
        log_once(
            Trouble::Late,
            format_args!(
                "an answer ({}) came after its request was gone (504 or closed)",
                answer.kind()
            ),
        );
    }
}

impl Kv {
    /// `GET`, `HEAD`, `PUT` or `DELETE` on `/kv/{key}`: checked here, run by the store.
    fn key_op(&mut self, req: &Request<'_>, key: &str, res: &mut Response<'_>) {
        let op = match req.method() {
            "GET" | "HEAD" => KeyOp::Get,
            "PUT" => KeyOp::Put(req.body()),
            "DELETE" => KeyOp::Delete,
            _ => {
                return res.send(
                    Status::METHOD_NOT_ALLOWED,
                    &[
                        ("allow", b"GET, HEAD, PUT, DELETE"),
                        ("content-type", b"text/plain"),
                    ],
                    b"use GET, HEAD, PUT or DELETE",
                );
            }
        };
        if let Err(why) = check_key(key) {
            return res.text(Status::BAD_REQUEST, why);
        }
        match &mut self.store {
            Store::Sqlite(db) => db.submit(op, key, res),
            Store::Redis(redis) => redis.submit(op, key, res),
        }
    }
}

/// Why `key` is not a key, if it is not one.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("empty key: use /kv/{key}")
    } else if key.len() > MAX_KEY {
        Err("key longer than 256 bytes")
    } else if key.contains('/') {
        Err("a key is one path segment: no '/'")
    } else {
        Ok(())
    }
}

/// Which store the workers use.
enum StoreConfig {
    Sqlite,
    Redis(SocketAddr),
}

/// Makes one worker's service: its store (database threads, or Redis connections),
/// and the teardown that closes it.
fn make(worker: &mut Worker<Answer>, args: &Args) -> Http<Kv> {
    let store = match args.store {
        StoreConfig::Sqlite => Store::Sqlite(Sqlite::start(worker, &args.db, args.db_timeout)),
        StoreConfig::Redis(addr) => Store::Redis(Redis::start(worker, addr, &args.redis)),
    };
    let metrics = worker.metrics();
    Http::new(args.http.clone(), Kv { store, metrics }).with_metrics(worker)
}

// ---------------------------------------------------------------------------------
// Flags and main.
// ---------------------------------------------------------------------------------

struct Args {
    server: ServerArgs,
    http: HttpConfig,
    store: StoreConfig,
    db: DbConfig,
    db_timeout: Duration,
    redis: RedisConfig,
}

const KV_USAGE: &str = "  [--store sqlite|redis://IP:PORT]\n  \
[--db PATH] [--db-threads N] [--db-queue N] [--busy-timeout DUR] \
[--db-timeout DUR] [--sync normal|full]\n  [--redis-conns N] [--redis-timeout DUR] \
[--redis-max-inflight N]\n  [--header-timeout DUR] [--idle-timeout DUR] \
[--max-head BYTES] [--max-body BYTES]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: ServerArgs::default(),
        http: HttpConfig::default(),
        store: StoreConfig::Sqlite,
        db: DbConfig::default(),
        db_timeout: Duration::from_secs(5),
        redis: RedisConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        if args.server.take(&flag, &mut value)? {
            continue;
        }
        let duration = |v: String| common::parse_duration(&v).map_err(|e| format!("{flag}: {e}"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--store" => {
                args.store = match value()?.as_str() {
                    "sqlite" => StoreConfig::Sqlite,
                    url => StoreConfig::Redis(
                        redis::parse_url(url).map_err(|e| format!("{flag}: {e}"))?,
                    ),
                }
            }
            "--db" => args.db.path = PathBuf::from(value()?),
            "--db-threads" => args.db.threads = number(value()?)?.clamp(1, 64) as usize,
            "--db-queue" => args.db.queue = number(value()?)?.clamp(1, 1 << 20) as usize,
            "--busy-timeout" => args.db.busy_timeout = duration(value()?)?,
            "--db-timeout" => args.db_timeout = duration(value()?)?,
            "--sync" => {
                args.db.sync_full = match value()?.as_str() {
                    "normal" => false,
                    "full" => true,
                    other => return Err(format!("--sync: {other:?} is not normal or full")),
                }
            }
            "--redis-conns" => args.redis.conns = number(value()?)?.clamp(1, 64) as usize,
            "--redis-timeout" => args.redis.timeout = duration(value()?)?,
            "--redis-max-inflight" => {
                args.redis.max_inflight = number(value()?)?.clamp(1, 1 << 20) as usize
            }
            "--header-timeout" => args.http = args.http.header_timeout(duration(value()?)?),
            "--idle-timeout" => args.http = args.http.idle_timeout(duration(value()?)?),
            "--max-head" => args.http = args.http.max_head(number(value()?)? as usize),
            "--max-body" => args.http = args.http.max_body(number(value()?)?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    common::logger::init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}\nusage: kv {SERVER_USAGE}\n{KV_USAGE}");
            return ExitCode::from(2);
        }
    };
    if let StoreConfig::Sqlite = args.store
        && let Err(e) = sqlite::prepare(&args.db)
    {
        eprintln!(
            "kv: cannot open the database {}: {e}",
            args.db.path.display()
        );
        return ExitCode::FAILURE;
    }
    let builder = args
        .server
        .builder(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let server = match builder.bind() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("kv: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = match args.store {
        StoreConfig::Sqlite => format!("sqlite {}", args.db.path.display()),
        StoreConfig::Redis(addr) => format!("redis {addr}"),
    };
    println!(
        "gracering kv: listening on {}, workers={}, backend={}, store={store}",
        server.local_addr(),
        server.workers(),
        server.backend()
    );
    let _ = std::io::stdout().flush();
    let args = &args;
    match server.run(|worker: &mut Worker<Answer>| make(worker, args)) {
        Ok(report) => common::finish(&report),
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::FAILURE
        }
    }
}
