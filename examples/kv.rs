//! The key-value example: HTTP in front of SQLite, the database on threads of its own.
//!
//! ```text
//! cargo run --release --example kv                 # 127.0.0.1:8080, ./gracering-kv.db
//! cargo run --release --example kv -- --addr 127.0.0.1:9000 --workers 2 \
//!     --db /tmp/kv.db --db-threads 2 --busy-timeout 2s --db-timeout 5s
//! ```
//!
//! ```text
//!  worker k (loop)                        database threads of worker k (std threads,
//!  Service::call ── Job ──▶ bounded ──▶    each with its own SQLite connection)
//!    Response::wait        job queue        run the statement (busy handler waits
//!                                           for the write lock, up to --busy-timeout)
//!  Service::resume ◀── Mailbox::post_to(the request's address, Answer)
//! ```
//!
//! Routes: `PUT /kv/{key}` stores the body (201 when new, 200 when replaced),
//! `GET /kv/{key}` answers it (`application/octet-stream`, 404 when absent),
//! `DELETE /kv/{key}` removes it (200, or 404 when absent); `/healthz` is 200 until
//! the process ends, `/readyz` 200 while serving and 503 from the drain's first
//! instant. The key is the path segment's bytes as sent (no percent-decoding), 1 to
//! 256 bytes; longer, empty or holding `/`: 400 with the reason. A target that is not
//! UTF-8 is refused by the HTTP layer (400), a body over `--max-body` too (413). Other
//! methods: 405 with `Allow`. A full job queue or a database still locked after
//! `--busy-timeout`: 503 `database busy`; any other database error: 500 with a short
//! reason (each kind logged once); no answer within `--db-timeout`: 504.
//!
//! The loop never touches the database: each worker owns a pool of `--db-threads`
//! threads (default 2), fed by a bounded queue, answering through the worker's mailbox.
//! The database is in WAL mode with `synchronous=NORMAL` (or `--sync full`): a write is
//! acknowledged once committed to the WAL, so it survives the process being killed;
//! only an OS crash or power loss can take the last commits, which `full` prevents at
//! the cost of an fsync per commit.
//!
//! SIGTERM or SIGINT drains: readiness fails, the requests waiting on the database get
//! their answers (with `Connection: close`), then each worker's teardown closes its job
//! queue, lets its threads finish what is queued and closes their connections; the
//! last worker to get there checkpoints the WAL into the database file first
//! (`PRAGMA wal_checkpoint(TRUNCATE)`), logging
//! `kv: worker N: database closed (checkpoint ok)`. Exit codes as for the other
//! examples: 0 after a clean drain, 3 when connections had to be cut, 4 when a worker
//! failed, 1 when the server or the database could not start, 2 for bad arguments.

mod common;

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{SERVER_USAGE, ServerArgs};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
use gracering::{ConnAddr, Mailbox, PostError, Worker};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

/// The longest key, in bytes.
const MAX_KEY: usize = 256;
/// How often a database thread retries posting an answer into a full mailbox (1 ms
/// apart) before it gives up (the request then gets its 504).
const POST_RETRIES: u32 = 100;

/// What a request asks of the database.
#[derive(Debug)]
enum Op {
    Get,
    Put(Vec<u8>),
    Delete,
}

/// One request for a database thread, and where its answer goes.
#[derive(Debug)]
struct Job {
    op: Op,
    key: String,
    reply_to: ConnAddr,
}

/// A database thread's answer, posted back to the waiting request.
#[derive(Debug)]
enum Answer {
    Value(Vec<u8>),
    Created,
    Replaced,
    Deleted,
    Absent,
    /// The write lock stayed taken past the busy timeout.
    Busy,
    /// Any other database error, with a short reason.
    Failed(String),
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
        }
    }
}

/// The kinds of trouble, each logged once (the first time) per process.
#[derive(Debug, Clone, Copy)]
enum Trouble {
    Busy,
    Database,
    QueueFull,
    MailboxFull,
    MailboxClosed,
    Late,
}

/// Whether each [`Trouble`] was logged yet.
static LOGGED: [AtomicBool; 6] = [const { AtomicBool::new(false) }; 6];

/// Logs `what` if it is the first trouble of its kind.
fn log_once(kind: Trouble, what: impl Display) {
    if !LOGGED[kind as usize].swap(true, Ordering::Relaxed) {
        eprintln!("kv: {what} (logged once)");
    }
}

// ---------------------------------------------------------------------------------
// The HTTP side: runs on the worker's loop, never waits for the database.
// ---------------------------------------------------------------------------------

/// One worker's service: routes requests, hands key operations to the database threads.
struct Kv {
    /// The job queue to this worker's database threads; taken (closed) by the teardown.
    jobs: Rc<RefCell<Option<Sender<Job>>>>,
    db_timeout: Duration,
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
            "/healthz" | "/readyz" if !get => res.send(
                Status::METHOD_NOT_ALLOWED,
                &[("allow", b"GET, HEAD"), ("content-type", b"text/plain")],
                b"use GET",
            ),
            "/healthz" => res.text(Status::OK, "ok"),
            "/readyz" if res.is_draining() => res.text(Status::SERVICE_UNAVAILABLE, "draining"),
            "/readyz" => res.text(Status::OK, "ready"),
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
        }
    }

    fn on_undelivered(&mut self, answer: Answer) {
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
    /// `GET`, `HEAD`, `PUT` or `DELETE` on `/kv/{key}`: checked here, run by the pool.
    fn key_op(&mut self, req: &Request<'_>, key: &str, res: &mut Response<'_>) {
        let op = match req.method() {
            "GET" | "HEAD" => Op::Get,
            "PUT" => Op::Put(req.body().to_vec()),
            "DELETE" => Op::Delete,
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
        let jobs = self.jobs.borrow();
        let Some(jobs) = jobs.as_ref() else {
            return res.text(Status::SERVICE_UNAVAILABLE, "database closed");
        };
        let reply_to = res.wait(self.db_timeout);
        let job = Job {
            op,
            key: key.to_owned(),
            reply_to,
        };
        // A response written after `wait` replaces the wait.
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                log_once(Trouble::QueueFull, "the database job queue is full: 503");
                res.text(Status::SERVICE_UNAVAILABLE, "database busy (queue full)");
            }
            Err(TrySendError::Disconnected(_)) => {
                res.text(Status::SERVICE_UNAVAILABLE, "database closed");
            }
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

// ---------------------------------------------------------------------------------
// The database side: threads of their own, one connection each.
// ---------------------------------------------------------------------------------

/// How the database is opened.
#[derive(Debug, Clone)]
struct DbConfig {
    path: PathBuf,
    threads: usize,
    queue: usize,
    busy_timeout: Duration,
    /// `synchronous=FULL` instead of `NORMAL`.
    sync_full: bool,
    /// Pools open now, one per worker: the last to close checkpoints.
    open_pools: Arc<AtomicUsize>,
}

/// Opens one connection: WAL, the chosen `synchronous`, the busy timeout.
fn open(cfg: &DbConfig) -> rusqlite::Result<Connection> {
    let conn = Connection::open(&cfg.path)?;
    conn.busy_timeout(cfg.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stays {mode}, not wal"
        )));
    }
    let sync = if cfg.sync_full { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync)?;
    Ok(conn)
}

/// Creates the table if need be (once, before the workers start).
fn prepare(cfg: &DbConfig) -> rusqlite::Result<()> {
    let conn = open(cfg)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY NOT NULL, v BLOB NOT NULL)",
    )?;
    conn.close().map_err(|(_, e)| e)
}

/// One worker's database threads.
struct Pool {
    worker: usize,
    threads: Vec<JoinHandle<Connection>>,
    /// Pools of this process not closed yet (shared by every worker's pool).
    open_pools: Arc<AtomicUsize>,
}

impl Pool {
    /// Opens `cfg.threads` connections and starts a thread on each, answering into
    /// `mailbox`; returns the pool and its job queue.
    fn start(
        cfg: &DbConfig,
        worker: usize,
        mailbox: Mailbox<Answer>,
    ) -> rusqlite::Result<(Pool, Sender<Job>)> {
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue.max(1));
        let mut threads = Vec::with_capacity(cfg.threads);
        for n in 0..cfg.threads.max(1) {
            let conn = open(cfg)?;
            let (rx, mailbox) = (rx.clone(), mailbox.clone());
            let thread = std::thread::Builder::new()
                .name(format!("kv-db-w{worker}-{n}"))
                .spawn(move || serve(conn, rx, mailbox))
                .map_err(|e| rusqlite::Error::InvalidParameterName(format!("spawn: {e}")))?;
            threads.push(thread);
        }
        cfg.open_pools.fetch_add(1, Ordering::AcqRel);
        let open_pools = cfg.open_pools.clone();
        Ok((
            Pool {
                worker,
                threads,
                open_pools,
            },
            tx,
        ))
    }

    /// After the queue was closed: waits for the threads to finish what is queued, then
    /// closes their connections. The last pool of the process to close checkpoints the
    /// WAL into the database file first (no other connection is open by then).
    fn close(self) {
        let mut conns: Vec<Connection> = Vec::with_capacity(self.threads.len());
        for thread in self.threads {
            match thread.join() {
                Ok(conn) => conns.push(conn),
                Err(_) => eprintln!("kv: worker {}: a database thread panicked", self.worker),
            }
        }
        let last = conns.pop();
        let mut failed = conns.into_iter().filter_map(|c| c.close().err()).count();
        let checkpoint = match &last {
            // Counted down after this pool's other connections closed: the last pool
            // to get here is the only one with a connection open.
            Some(conn) if self.open_pools.fetch_sub(1, Ordering::AcqRel) == 1 => {
                Some(checkpoint(conn))
            }
            _ => None,
        };
        failed += last.and_then(|c| c.close().err()).into_iter().count();
        let closed = if failed == 0 {
            "closed".to_string()
        } else {
            format!("closed, {failed} connections with errors")
        };
        match checkpoint {
            Some(how) => eprintln!("kv: worker {}: database {closed} ({how})", self.worker),
            None => eprintln!(
                "kv: worker {}: database threads done, connections {closed}",
                self.worker
            ),
        }
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: copies the WAL into the database file and empties
/// it; says how it went.
fn checkpoint(conn: &Connection) -> String {
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((0, log, done)) if log == done => "checkpoint ok".to_string(),
        Ok((busy, log, done)) => {
            format!("checkpoint incomplete: busy={busy}, {done} of {log} frames")
        }
        Err(e) => format!("checkpoint failed: {e}"),
    }
}

/// A database thread: runs jobs until the queue is closed and empty; gives its
/// connection back.
fn serve(mut conn: Connection, jobs: Receiver<Job>, mailbox: Mailbox<Answer>) -> Connection {
    for job in jobs.iter() {
        let answer = run(&mut conn, job.op, &job.key).unwrap_or_else(classify);
        deliver(&mailbox, job.reply_to, answer);
    }
    conn
}

/// Runs one operation.
fn run(conn: &mut Connection, op: Op, key: &str) -> rusqlite::Result<Answer> {
    match op {
        Op::Get => {
            let mut get = conn.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
            let value = get.query_row([key], |r| r.get(0)).optional()?;
            Ok(value.map_or(Answer::Absent, Answer::Value))
        }
        Op::Put(value) => {
            // IMMEDIATE: the write lock is taken first, through the busy handler.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let replaced = tx
                .prepare_cached("UPDATE kv SET v = ?2 WHERE k = ?1")?
                .execute(params![key, value])?
                > 0;
            if !replaced {
                tx.prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")?
                    .execute(params![key, value])?;
            }
            tx.commit()?;
            Ok(if replaced {
                Answer::Replaced
            } else {
                Answer::Created
            })
        }
        Op::Delete => {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let deleted = tx
                .prepare_cached("DELETE FROM kv WHERE k = ?1")?
                .execute([key])?
                > 0;
            tx.commit()?;
            Ok(if deleted {
                Answer::Deleted
            } else {
                Answer::Absent
            })
        }
    }
}

/// The answer to a failed operation: busy (503) or failed (500), logged once per kind.
fn classify(e: rusqlite::Error) -> Answer {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            log_once(Trouble::Busy, format_args!("database busy: {e}: 503"));
            Answer::Busy
        }
        _ => {
            log_once(Trouble::Database, format_args!("database error: {e}: 500"));
            let mut why = format!("database error: {e}");
            if let Some((cut, _)) = why.char_indices().nth(120) {
                why.truncate(cut);
            }
            Answer::Failed(why)
        }
    }
}

/// Posts an answer to its request; a full mailbox is retried for a while.
fn deliver(mailbox: &Mailbox<Answer>, to: ConnAddr, mut answer: Answer) {
    for _ in 0..POST_RETRIES {
        match mailbox.post_to(to, answer) {
            Ok(()) => return,
            Err(PostError::Full(back)) => answer = back,
            Err(PostError::Closed(_)) => {
                return log_once(Trouble::MailboxClosed, "an answer after its worker stopped");
            }
            Err(PostError::WrongWorker(_)) => {
                return log_once(Trouble::Database, "an answer for another worker (a bug)");
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    log_once(
        Trouble::MailboxFull,
        "the worker's mailbox stayed full: an answer was dropped (its request gets 504)",
    );
}

/// Makes one worker's service: its database threads, and the teardown that closes them.
fn make(
    worker: &mut Worker<Answer>,
    db: &DbConfig,
    http: &HttpConfig,
    db_timeout: Duration,
) -> Http<Kv> {
    let index = worker.index();
    let (pool, tx) = Pool::start(db, index, worker.mailbox())
        .unwrap_or_else(|e| panic!("kv: worker {index}: cannot open the database: {e}"));
    let jobs = Rc::new(RefCell::new(Some(tx)));
    let closing = jobs.clone();
    worker.on_teardown("kv-db", move || {
        closing.borrow_mut().take(); // the queue closes: the threads end once it is empty
        pool.close();
    });
    Http::new(http.clone(), Kv { jobs, db_timeout })
}

// ---------------------------------------------------------------------------------
// Flags and main.
// ---------------------------------------------------------------------------------

struct Args {
    server: ServerArgs,
    http: HttpConfig,
    db: DbConfig,
    db_timeout: Duration,
}

const KV_USAGE: &str = "  [--db PATH] [--db-threads N] [--db-queue N] [--busy-timeout DUR] \
[--db-timeout DUR] [--sync normal|full]\n  [--header-timeout DUR] [--idle-timeout DUR] \
[--max-head BYTES] [--max-body BYTES]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: ServerArgs::default(),
        http: HttpConfig::default(),
        db: DbConfig {
            path: PathBuf::from("./gracering-kv.db"),
            threads: 2,
            queue: 1024,
            busy_timeout: Duration::from_secs(2),
            sync_full: false,
            open_pools: Arc::new(AtomicUsize::new(0)),
        },
        db_timeout: Duration::from_secs(5),
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
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}\nusage: kv {SERVER_USAGE}\n{KV_USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = prepare(&args.db) {
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
    println!(
        "gracering kv: listening on {}, workers={}, backend={}",
        server.local_addr(),
        server.workers(),
        server.backend()
    );
    let _ = std::io::stdout().flush();
    let (db, http, db_timeout) = (&args.db, &args.http, args.db_timeout);
    match server.run(|worker: &mut Worker<Answer>| make(worker, db, http, db_timeout)) {
        Ok(report) => common::finish(&report),
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::FAILURE
        }
    }
}
