//! The hello peer of `http_load` and `footprint`: hyper 1.x on a tokio current-thread
//! runtime, one task per connection, answering `Hello, World!` as gracering's `http`
//! example does (`GET /` or `HEAD /`; anything else is a 404). It serves on
//! `GRACERING_BENCH_ADDR` (`127.0.0.1:0`) and prints `hyper-hello: listening on IP:PORT`
//! on stdout. With `GRACERING_BENCH_PIPELINE_FLUSH=1`, hyper batches the answers to
//! pipelined requests into one write. It serves until killed, or for an hour at most
//! (then it exits with 0).

use std::convert::Infallible;
use std::time::Duration;

use gracering_peers::{Error, listen_addr, run_peer, text};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The peer exits by itself after this long, whatever happens to the benchmark.
const LIFETIME: Duration = Duration::from_secs(3600);

fn main() -> Result<(), Error> {
    let pipeline_flush = std::env::var("GRACERING_BENCH_PIPELINE_FLUSH").is_ok_and(|v| v == "1");
    // Normally killed by the benchmark (or with it, by PR_SET_PDEATHSIG); a last resort.
    run_peer(LIFETIME, 0, serve(&listen_addr(), pipeline_flush))?
}

async fn serve(addr: &str, pipeline_flush: bool) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    // Rust's stdout is line-buffered: the line leaves at once.
    println!("hyper-hello: listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => drop(tokio::spawn(connection(stream, pipeline_flush))),
            Err(e) => eprintln!("hyper-hello: accept: {e}"),
        }
    }
}

async fn connection(stream: TcpStream, pipeline_flush: bool) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    // Keep-alive is on by default.
    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    if pipeline_flush {
        builder.pipeline_flush(true);
    }
    let conn = builder.serve_connection(TokioIo::new(stream), service_fn(hello));
    // Clients (wrk too) close their connections at the end of a run: errors then are
    // expected.
    let _ = conn.await;
}

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    Ok(match req.uri().path() {
        "/" if get => text(StatusCode::OK, "Hello, World!"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}
