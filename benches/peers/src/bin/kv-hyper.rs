//! The peer of the kv benchmark (`benches/kv_load.rs`): gracering's `kv` example written
//! the way most Rust users would write it. hyper 1.x on a tokio current-thread runtime
//! (one worker), SQLite (rusqlite, bundled) through `tokio::task::spawn_blocking`, with
//! a small pool: `GRACERING_BENCH_DB_THREADS` (2) connections in a `Mutex<Vec<_>>` and a
//! semaphore of as many permits, taken before the blocking call, so that no more
//! blocking threads than connections ever wait on the database.
//!
//! Routes and status codes as the `kv` example's: `PUT /kv/{key}` with the value as body
//! answers 201 when the key is new and 200 when it replaced a value; `GET /kv/{key}`
//! 200 with the value, or 404; `DELETE /kv/{key}` 200, or 404; `GET /healthz` 200;
//! `GET /readyz` 200 (the listener is closed at the signal, so nobody asks it while
//! draining); anything else 404 (405 for another method on `/kv/`).
//!
//! The database is `GRACERING_BENCH_DB` (required): the kv example's table
//! `kv(k TEXT PRIMARY KEY NOT NULL, v BLOB NOT NULL)` and its statements (a PUT is an
//! IMMEDIATE transaction, UPDATE then INSERT when nothing was updated), in WAL mode
//! with `synchronous=NORMAL` and a busy timeout of `GRACERING_BENCH_BUSY_TIMEOUT_MS`
//! (5000) on every connection; a lock still taken past it is a 503, any other database
//! error a 500. A key is 1 to 256 bytes without `/`, else 400.
//!
//! On SIGTERM (read from a signalfd) it drops the listener, asks every connection to shut
//! down gracefully (hyper's `graceful_shutdown`: idle ones close at once, busy ones after
//! their response, so requests waiting on the database are answered) and waits for
//! them at most the grace period (`GRACERING_BENCH_GRACE_MS`, 25000), then checkpoints
//! the WAL (`wal_checkpoint(TRUNCATE)`, as the kv example does) and closes the
//! database connections. It prints one JSON line `{"drain":{...}}` on stderr and exits
//! 0, or 3 when the grace period ran out and the rest was cut. It serves on
//! `GRACERING_BENCH_ADDR` (`127.0.0.1:0`) and prints `kv-hyper: listening on IP:PORT`.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracering_peers::{Error, accept_until_sigterm, env_ms, listen_addr, run_peer, sigterm_fd};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// The peer exits by itself after this long, whatever happens to the benchmark.
const LIFETIME: Duration = Duration::from_secs(600);
/// Exit code when the grace period ran out, as gracering's examples use.
const EXIT_CUT: i32 = 3;
/// The longest key, in bytes, as the kv example's.
const MAX_KEY: usize = 256;
/// The largest value a PUT may carry.
const MAX_VALUE: usize = 1 << 20;

/// Why a database call failed: the write lock stayed taken past the busy timeout (503),
/// or anything else (500).
enum DbError {
    Busy(String),
    Other(String),
}

/// The database connections and the permits that guard them.
struct Pool {
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Pool {
    fn open(path: &str, size: usize, busy_timeout: Duration) -> Result<Pool, Error> {
        let mut conns = Vec::with_capacity(size);
        for _ in 0..size {
            let conn = Connection::open(path)?;
            conn.busy_timeout(busy_timeout)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute(
                "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY NOT NULL, v BLOB NOT NULL)",
                [],
            )?;
            conns.push(conn);
        }
        Ok(Pool {
            conns: Mutex::new(conns),
            permits: Semaphore::new(size),
        })
    }

    /// Runs `work` on a connection, on tokio's blocking pool.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let _permit = (self.permits.acquire().await).map_err(|e| DbError::Other(e.to_string()))?;
        let pool = self.clone();
        let blocking = tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .conns
                .lock()
                .unwrap()
                .pop()
                .expect("a permit per connection");
            let result = work(&mut conn);
            pool.conns.lock().unwrap().push(conn);
            result
        });
        match blocking.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                Err(DbError::Busy(e.to_string()))
            }
            Ok(Err(e)) => Err(DbError::Other(e.to_string())),
            Err(e) => Err(DbError::Other(e.to_string())),
        }
    }

    /// Checkpoints the WAL into the database file (`wal_checkpoint(TRUNCATE)`, as the
    /// kv example does at its end), then closes every connection.
    fn close(&self) -> Result<(), Error> {
        let conns: Vec<Connection> = self.conns.lock().unwrap().drain(..).collect();
        if let Some(conn) = conns.first() {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        for conn in conns {
            conn.close().map_err(|(_, e)| e)?;
        }
        Ok(())
    }
}

/// Serves until SIGTERM, drains, and exits the process (see the module docs).
fn main() -> Result<(), Error> {
    let grace = env_ms("GRACERING_BENCH_GRACE_MS", 25_000)?;
    let busy = env_ms("GRACERING_BENCH_BUSY_TIMEOUT_MS", 5000)?;
    let db = std::env::var("GRACERING_BENCH_DB").map_err(|_| "set GRACERING_BENCH_DB")?;
    let threads: usize = match std::env::var("GRACERING_BENCH_DB_THREADS") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("bad GRACERING_BENCH_DB_THREADS {v:?}"))?,
        Err(_) => 2,
    };
    // Before any thread starts, so that no thread can take SIGTERM's default action.
    let signals = sigterm_fd()?;
    let pool = Arc::new(Pool::open(&db, threads.max(1), busy)?);
    let code = run_peer(
        LIFETIME,
        1,
        serve(&listen_addr(), signals, grace, pool.clone()),
    )??;
    // The runtime is gone (and with it any connection left): every permit is back.
    pool.close()?;
    std::process::exit(code);
}

/// Serves until SIGTERM, then drains; returns the exit code.
async fn serve(
    addr: &str,
    signals: OwnedFd,
    grace: Duration,
    pool: Arc<Pool>,
) -> Result<i32, Error> {
    let listener = TcpListener::bind(addr).await?;
    // Rust's stdout is line-buffered: the line leaves at once.
    println!("kv-hyper: listening on {}", listener.local_addr()?);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = accept_until_sigterm(&listener, signals, "kv-hyper", |stream| {
        connection(stream, stopped.clone(), pool.clone())
    })
    .await?;
    let began = Instant::now();
    drop(listener);
    let connections = tasks.len();
    let _ = stop.send(true);
    let all_done = async { while tasks.join_next().await.is_some() {} };
    let clean = tokio::time::timeout(grace, all_done).await.is_ok();
    eprintln!(
        r#"{{"drain":{{"peer":"kv-hyper","duration_ms":{:.3},"connections":{connections},"clean":{clean}}}}}"#,
        began.elapsed().as_secs_f64() * 1e3
    );
    Ok(if clean { 0 } else { EXIT_CUT })
}

/// Serves one connection until it ends; once `stop` turns true, asks hyper to finish
/// gracefully (an idle connection closes at once, a busy one after its response).
async fn connection(stream: TcpStream, mut stop: watch::Receiver<bool>, pool: Arc<Pool>) {
    let service = service_fn(move |req| route(req, pool.clone()));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        // Clients reset or leave in the middle of a drain: errors are expected.
        _ = conn.as_mut() => return,
        _ = async { stop.wait_for(|&stop| stop).await.is_ok() } => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

type Reply = Response<Full<Bytes>>;

async fn route(req: Request<Incoming>, pool: Arc<Pool>) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_owned();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    Ok(match path.as_str() {
        "/healthz" if get => reply(StatusCode::OK, "ok"),
        "/readyz" if get => reply(StatusCode::OK, "ready"),
        p => match p.strip_prefix("/kv/") {
            Some(key) if key.is_empty() || key.len() > MAX_KEY || key.contains('/') => reply(
                StatusCode::BAD_REQUEST,
                "a key is 1 to 256 bytes, without '/'",
            ),
            Some(key) => kv(req, key.to_owned(), pool).await,
            None => reply(StatusCode::NOT_FOUND, "not found"),
        },
    })
}

/// One request on `/kv/{key}`.
async fn kv(req: Request<Incoming>, key: String, pool: Arc<Pool>) -> Reply {
    let result = match req.method().clone() {
        Method::GET | Method::HEAD => {
            let found = pool
                .run(move |db| {
                    let mut get = db.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
                    get.query_row(params![key], |row| row.get::<_, Vec<u8>>(0))
                        .optional()
                })
                .await;
            found.map(|value| match value {
                Some(value) => {
                    let mut res = bytes(StatusCode::OK, value.into());
                    let octets = HeaderValue::from_static("application/octet-stream");
                    res.headers_mut().insert(CONTENT_TYPE, octets);
                    res
                }
                None => reply(StatusCode::NOT_FOUND, "no such key"),
            })
        }
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_VALUE).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "value too large"),
            };
            let put = pool.run(move |db| {
                // IMMEDIATE: the write lock is taken first, through the busy handler.
                let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let replaced = tx
                    .prepare_cached("UPDATE kv SET v = ?2 WHERE k = ?1")?
                    .execute(params![key, &body[..]])?
                    > 0;
                if !replaced {
                    tx.prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")?
                        .execute(params![key, &body[..]])?;
                }
                tx.commit()?;
                Ok(!replaced)
            });
            put.await.map(|new| match new {
                true => reply(StatusCode::CREATED, "created"),
                false => reply(StatusCode::OK, "replaced"),
            })
        }
        Method::DELETE => {
            let deleted = pool.run(move |db| {
                let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx
                    .prepare_cached("DELETE FROM kv WHERE k = ?1")?
                    .execute(params![key])?;
                tx.commit()?;
                Ok(n)
            });
            deleted.await.map(|n| match n {
                0 => reply(StatusCode::NOT_FOUND, "no such key"),
                _ => reply(StatusCode::OK, "deleted"),
            })
        }
        _ => Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, PUT or DELETE",
        )),
    };
    result.unwrap_or_else(|e| match e {
        DbError::Busy(e) => {
            eprintln!("kv-hyper: database busy: {e}");
            reply(StatusCode::SERVICE_UNAVAILABLE, "database busy")
        }
        DbError::Other(e) => {
            eprintln!("kv-hyper: database: {e}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "database error")
        }
    })
}

fn reply(status: StatusCode, body: &'static str) -> Reply {
    bytes(status, Bytes::from_static(body.as_bytes()))
}

fn bytes(status: StatusCode, body: Bytes) -> Reply {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}
