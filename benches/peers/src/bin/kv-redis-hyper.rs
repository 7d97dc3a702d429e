//! The peer of the kv benchmark on Redis: gracering's `kv` example with its Redis store
//! (`--store redis://HOST:PORT`), written the way most Rust users would write it.
//! hyper 1.x on a tokio current-thread runtime (one worker), and one
//! `redis::aio::MultiplexedConnection` (the `redis` crate's, with its tokio support),
//! cloned for every request: all requests share its one socket, pipelined.
//!
//! Routes and status codes as the `kv` example answers on Redis:
//! - `PUT /kv/{key}` with the value as body: `SET key value GET`; nil (the key was new)
//!   is 201 `created`, an old value 200 `replaced`. A body over 1 MiB is 413.
//! - `GET` or `HEAD /kv/{key}`: `GET key`; a value is 200 `application/octet-stream`,
//!   nil 404 `no such key`.
//! - `DELETE /kv/{key}`: `DEL key`; 1 is 200 `deleted`, 0 404 `no such key`.
//! - Another method on `/kv/` is 405 with `Allow: GET, HEAD, PUT, DELETE`; a key that is
//!   empty, longer than 256 bytes or holds a `/` is 400; `GET /healthz` and
//!   `GET /readyz` are 200 (the listener is closed at the signal, so nobody asks
//!   `/readyz` while draining), another method on them 405; anything else 404.
//! - Redis's errors: an error reply starting `WRONGTYPE` is 409 and one starting `OOM`
//!   503 `redis out of memory`, any other error reply 502 with Redis's message. No
//!   connection to Redis (refused, reset, closed) is 503 `redis unavailable`; no
//!   answer within `GRACERING_BENCH_REDIS_TIMEOUT_MS` (5000, a `tokio::time::timeout`
//!   around the whole call) is 504. The crate's own response timeout (500 ms by
//!   default) is turned off, so that this one is the only one.
//!
//! Redis is `GRACERING_BENCH_REDIS` (required, `redis://127.0.0.1:6379`); it must answer
//! when the peer starts. The `redis` crate does not reconnect a `MultiplexedConnection`
//! whose socket broke: once a request fails on a dropped connection, the next request
//! opens a new one (one at a time), so the peer serves again when Redis is back.
//!
//! On SIGTERM (read from a signalfd) it drops the listener, asks every connection to shut
//! down gracefully (hyper's `graceful_shutdown`: idle ones close at once, busy ones after
//! their response, so requests waiting on Redis are answered) and waits for them at
//! most the grace period (`GRACERING_BENCH_GRACE_MS`, 25000). Then it drops the Redis
//! connection: dropping the last clone of a `MultiplexedConnection` aborts the task
//! the crate spawned to drive it, and that task owns the `TcpStream`, so the socket is
//! closed (a plain close, no `QUIT`) as tokio drops the task, before the runtime is
//! gone. It prints one JSON line `{"drain":{...}}` on stderr and exits 0, or 3 when the
//! grace period ran out and the rest was cut. It serves on `GRACERING_BENCH_ADDR`
//! (`127.0.0.1:0`) and prints `kv-redis-hyper: listening on IP:PORT`.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracering_peers::{Error, accept_until_sigterm, env_ms, listen_addr, run_peer, sigterm_fd};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The peer exits by itself after this long, whatever happens to the benchmark.
const LIFETIME: Duration = Duration::from_secs(600);
/// Exit code when the grace period ran out, as gracering's examples use.
const EXIT_CUT: i32 = 3;
/// The longest key, in bytes, as the kv example's.
const MAX_KEY: usize = 256;
/// The largest value a PUT may carry.
const MAX_VALUE: usize = 1 << 20;
const NAME: &str = "kv-redis-hyper";

/// The Redis side: the client (to reconnect) and the one multiplexed connection.
struct Redis {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// The connection in use, with a number telling it from the ones before; `None`
    /// once a request found it broken, until the next request opens another.
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while a new connection is opened, so that only one is.
    opening: tokio::sync::Mutex<u64>,
}

impl Redis {
    async fn open(url: &str) -> Result<Redis, Error> {
        let client = redis::Client::open(url)?;
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("connect to redis at {url}: {e}"))?;
        Ok(Redis {
            client,
            config,
            conn: Mutex::new(Some((0, conn))),
            opening: tokio::sync::Mutex::new(0),
        })
    }

    /// A clone of the connection in use, or a new one if it broke.
    async fn conn(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(conn) = self.conn.lock().unwrap().clone() {
            return Ok(conn);
        }
        let mut last = self.opening.lock().await;
        // Another request may have opened one while this one waited.
        if let Some(conn) = self.conn.lock().unwrap().clone() {
            return Ok(conn);
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *last += 1;
        *self.conn.lock().unwrap() = Some((*last, conn.clone()));
        Ok((*last, conn))
    }

    /// Forgets connection `id` after `err`, if `err` says it is broken (and it is
    /// still the one in use).
    fn failed(&self, id: u64, err: &RedisError) {
        if err.is_connection_dropped() || err.is_unrecoverable_error() {
            let mut conn = self.conn.lock().unwrap();
            if conn.as_ref().is_some_and(|(current, _)| *current == id) {
                *conn = None;
            }
        }
    }

    /// Runs `cmd`, its reply converted to `T`.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, RedisError> {
        let (id, mut conn) = self.conn().await?;
        let result = cmd.query_async(&mut conn).await;
        if let Err(e) = &result {
            self.failed(id, e);
        }
        result
    }
}

/// Serves until SIGTERM, drains, and exits the process (see the module docs).
fn main() -> Result<(), Error> {
    let grace = env_ms("GRACERING_BENCH_GRACE_MS", 25_000)?;
    let timeout = env_ms("GRACERING_BENCH_REDIS_TIMEOUT_MS", 5000)?;
    let url = std::env::var("GRACERING_BENCH_REDIS")
        .map_err(|_| "set GRACERING_BENCH_REDIS (redis://HOST:PORT)")?;
    // Before any thread starts, so that no thread can take SIGTERM's default action.
    let signals = sigterm_fd()?;
    let code = run_peer(
        LIFETIME,
        1,
        serve(&listen_addr(), signals, grace, &url, timeout),
    )??;
    std::process::exit(code);
}

/// Serves until SIGTERM, then drains; returns the exit code.
async fn serve(
    addr: &str,
    signals: OwnedFd,
    grace: Duration,
    url: &str,
    timeout: Duration,
) -> Result<i32, Error> {
    let redis = Arc::new(Redis::open(url).await?);
    let listener = TcpListener::bind(addr).await?;
    // Rust's stdout is line-buffered: the line leaves at once.
    println!("{NAME}: listening on {}", listener.local_addr()?);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = accept_until_sigterm(&listener, signals, NAME, |stream| {
        connection(stream, stopped.clone(), redis.clone(), timeout)
    })
    .await?;
    let began = Instant::now();
    drop(listener);
    let connections = tasks.len();
    let _ = stop.send(true);
    let all_done = async { while tasks.join_next().await.is_some() {} };
    let clean = tokio::time::timeout(grace, all_done).await.is_ok();
    // The connections left past the grace period are cut (their tasks aborted), then
    // the last clone of the Redis connection goes, and with it the crate's task that
    // owns its socket; one turn of the runtime lets tokio drop both.
    drop(tasks);
    drop(redis);
    tokio::task::yield_now().await;
    eprintln!(
        r#"{{"drain":{{"peer":"{NAME}","duration_ms":{:.3},"connections":{connections},"clean":{clean}}}}}"#,
        began.elapsed().as_secs_f64() * 1e3
    );
    Ok(if clean { 0 } else { EXIT_CUT })
}

/// Serves one connection until it ends; once `stop` turns true, asks hyper to finish
/// gracefully (an idle connection closes at once, a busy one after its response).
async fn connection(
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
    redis: Arc<Redis>,
    timeout: Duration,
) {
    let service = service_fn(move |req| route(req, redis.clone(), timeout));
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

async fn route(
    req: Request<Incoming>,
    redis: Arc<Redis>,
    timeout: Duration,
) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(key) = path.strip_prefix("/kv/") {
        return Ok(kv(req, key.to_owned(), redis, timeout).await);
    }
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    Ok(match path.as_str() {
        "/healthz" | "/readyz" if !get => not_allowed("GET, HEAD", "use GET"),
        "/healthz" => reply(StatusCode::OK, "ok"),
        "/readyz" => reply(StatusCode::OK, "ready"),
        _ => reply(StatusCode::NOT_FOUND, "not found: use /kv/{key}"),
    })
}

/// Why `key` is not a key, if it is not one (the kv example's words).
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

/// One request on `/kv/{key}`.
async fn kv(req: Request<Incoming>, key: String, redis: Arc<Redis>, timeout: Duration) -> Reply {
    let method = req.method().clone();
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return not_allowed("GET, HEAD, PUT, DELETE", "use GET, HEAD, PUT or DELETE");
    }
    if let Err(why) = check_key(&key) {
        return reply(StatusCode::BAD_REQUEST, why);
    }
    let call = async {
        match method {
            Method::PUT => {
                let body = match Limited::new(req.into_body(), MAX_VALUE).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(_) => return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, "value too large")),
                };
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(&body[..]).arg("GET");
                let old: Option<Vec<u8>> = redis.query(set).await?;
                Ok(match old {
                    None => reply(StatusCode::CREATED, "created"),
                    Some(_) => reply(StatusCode::OK, "replaced"),
                })
            }
            Method::DELETE => {
                let mut del = redis::cmd("DEL");
                del.arg(&key);
                let n: i64 = redis.query(del).await?;
                Ok(match n {
                    0 => reply(StatusCode::NOT_FOUND, "no such key"),
                    _ => reply(StatusCode::OK, "deleted"),
                })
            }
            _ => {
                let mut get = redis::cmd("GET");
                get.arg(&key);
                let value: Option<Vec<u8>> = redis.query(get).await?;
                Ok(match value {
                    Some(value) => {
                        let mut res = bytes(StatusCode::OK, value.into());
                        let octets = HeaderValue::from_static("application/octet-stream");
                        res.headers_mut().insert(CONTENT_TYPE, octets);
                        res
                    }
                    None => reply(StatusCode::NOT_FOUND, "no such key"),
                })
            }
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => redis_error(&e),
        Err(_) => reply(StatusCode::GATEWAY_TIMEOUT, "redis did not answer in time"),
    }
}

/// The response to a failed Redis call.
fn redis_error(e: &RedisError) -> Reply {
    match e.code() {
        // An error reply: Redis answered.
        Some("WRONGTYPE") => message(StatusCode::CONFLICT, e),
        Some("OOM") => reply(StatusCode::SERVICE_UNAVAILABLE, "redis out of memory"),
        Some(_) => message(StatusCode::BAD_GATEWAY, e),
        None if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, "redis unavailable")
        }
        // A reply of a type the command cannot give, or one that does not parse.
        None => {
            eprintln!("{NAME}: redis: {e}");
            message(StatusCode::BAD_GATEWAY, e)
        }
    }
}

/// `status` with Redis's message: its code, then its detail.
fn message(status: StatusCode, e: &RedisError) -> Reply {
    let text = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    };
    bytes(status, Bytes::from(text))
}

fn not_allowed(allow: &'static str, body: &'static str) -> Reply {
    let mut res = reply(StatusCode::METHOD_NOT_ALLOWED, body);
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    res
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
