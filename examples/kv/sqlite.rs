//! The SQLite store: a pool of threads per worker, each with its own connection, fed by
//! a bounded job queue and answering through the worker's mailbox.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use gracering::http::{Response, Status};
use gracering::{ConnAddr, Mailbox, PostError, Worker};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use crate::{Answer, KeyOp, Trouble, log_once};

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

/// How the database is opened.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub path: PathBuf,
    pub threads: usize,
    pub queue: usize,
    pub busy_timeout: Duration,
    /// `synchronous=FULL` instead of `NORMAL`.
    pub sync_full: bool,
    /// Pools open now, one per worker: the last to close checkpoints.
    pub open_pools: Arc<AtomicUsize>,
}

impl Default for DbConfig {
    fn default() -> DbConfig {
        DbConfig {
            path: PathBuf::from("./gracering-kv.db"),
            threads: 2,
            queue: 1024,
            busy_timeout: Duration::from_secs(2),
            sync_full: false,
            open_pools: Arc::new(AtomicUsize::new(0)),
        }
    }
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
pub fn prepare(cfg: &DbConfig) -> rusqlite::Result<()> {
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

/// One worker's SQLite store as the service sees it: the job queue to its threads.
pub struct Sqlite {
    /// The job queue to this worker's database threads; taken (closed) by the teardown.
    jobs: Rc<RefCell<Option<Sender<Job>>>>,
    db_timeout: Duration,
}

impl Sqlite {
    /// Starts one worker's database threads, and the teardown that closes them.
    pub fn start(worker: &mut Worker<Answer>, db: &DbConfig, db_timeout: Duration) -> Sqlite {
        let index = worker.index();
        let (pool, tx) = Pool::start(db, index, worker.mailbox())
            .unwrap_or_else(|e| panic!("kv: worker {index}: cannot open the database: {e}"));
        let jobs = Rc::new(RefCell::new(Some(tx)));
        let closing = jobs.clone();
        worker.on_teardown("kv-db", move || {
            closing.borrow_mut().take(); // the queue closes: the threads end once it is empty
            pool.close();
        });
        Sqlite { jobs, db_timeout }
    }

    /// Hands a checked key operation to the pool; the answer comes through the mailbox.
    pub fn submit(&mut self, op: KeyOp<'_>, key: &str, res: &mut Response<'_>) {
        let jobs = self.jobs.borrow();
        let Some(jobs) = jobs.as_ref() else {
            return res.text(Status::SERVICE_UNAVAILABLE, "database closed");
        };
        let reply_to = res.wait(self.db_timeout);
        let op = match op {
            KeyOp::Get => Op::Get,
            KeyOp::Put(body) => Op::Put(body.to_vec()),
            KeyOp::Delete => Op::Delete,
        };
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
