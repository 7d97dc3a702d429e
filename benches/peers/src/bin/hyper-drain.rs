//! The hyper peer of the HTTP drain benchmark: hyper 1.x on a tokio current-thread
//! runtime, drained on SIGTERM the way hyper-util's `GracefulShutdown` does it: a watch
//! channel tells every connection task to call hyper's `Connection::graceful_shutdown`,
//! then the server waits for every task to end. (hyper-util's type itself needs its
//! `http1` feature, which this crate does not enable; the mechanism is the same few
//! lines.)
//!
//! Routes as gracering's `http` example: `GET /` answers `Hello, World!`, `GET
//! /slow?ms=N` answers `slow` after N ms (a tokio sleep, so the thread stays free).
//! On SIGTERM (read from a signalfd) it drops the listener, asks every connection to
//! shut down gracefully (idle ones close at once, busy ones after their response) and
//! waits for them, at most the grace period (`GRACERING_BENCH_GRACE_MS`, 5000). It
//! prints one JSON line `{"drain":{...}}` on stderr and exits 0, or 3 when the grace
//! period ran out and the rest was cut (the runtime dropped with its connections).
//! It serves on `GRACERING_BENCH_ADDR` (`127.0.0.1:0`) and prints
//! `hyper-drain: listening on IP:PORT` on stdout.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use gracering_peers::{
    Error, accept_until_sigterm, env_ms, listen_addr, run_peer, sigterm_fd, text,
};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The peer exits by itself after this long, whatever happens to the benchmark.
const LIFETIME: Duration = Duration::from_secs(600);
/// Exit code when the grace period ran out, as gracering's examples use.
const EXIT_CUT: i32 = 3;

/// Serves until SIGTERM, drains, and exits the process (see the module docs).
fn main() -> Result<(), Error> {
    let grace = env_ms("GRACERING_BENCH_GRACE_MS", 5000)?;
    // Before any thread starts, so that no thread can take SIGTERM's default action.
    let signals = sigterm_fd()?;
    // Normally stopped by the benchmark (or killed with it, by PR_SET_PDEATHSIG). The
    // runtime is dropped when this returns, with whatever connection tasks are left:
    // they are closed.
    let code = run_peer(LIFETIME, 1, serve(&listen_addr(), signals, grace))??;
    std::process::exit(code);
}

/// Serves until SIGTERM, then drains; returns the exit code.
async fn serve(addr: &str, signals: OwnedFd, grace: Duration) -> Result<i32, Error> {
    let listener = TcpListener::bind(addr).await?;
    // Rust's stdout is line-buffered: the line leaves at once.
    println!("hyper-drain: listening on {}", listener.local_addr()?);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = accept_until_sigterm(&listener, signals, "hyper-drain", |stream| {
        connection(stream, stopped.clone())
    })
    .await?;
    let began = Instant::now();
    drop(listener);
    let connections = tasks.len();
    let _ = stop.send(true);
    let all_done = async { while tasks.join_next().await.is_some() {} };
    let clean = tokio::time::timeout(grace, all_done).await.is_ok();
    eprintln!(
        r#"{{"drain":{{"peer":"hyper","duration_ms":{:.3},"connections":{connections},"clean":{clean}}}}}"#,
        began.elapsed().as_secs_f64() * 1e3
    );
    Ok(if clean { 0 } else { EXIT_CUT })
}

/// Serves one connection until it ends; once `stop` turns true, asks hyper to finish
/// gracefully (an idle connection closes at once, a busy one after its response).
async fn connection(stream: TcpStream, mut stop: watch::Receiver<bool>) {
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service_fn(route));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        // Clients reset or leave in the middle of a drain: errors are expected.
        _ = conn.as_mut() => return,
        _ = async { stop.wait_for(|&stop| stop).await.is_ok() } => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn route(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    Ok(match req.uri().path() {
        "/" if get => text(StatusCode::OK, "Hello, World!"),
        "/slow" if get => match slow_ms(req.uri().query()) {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, "slow")
            }
            None => text(StatusCode::BAD_REQUEST, "bad ms"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

/// The `ms=N` of a query string.
fn slow_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
}
