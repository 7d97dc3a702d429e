//! The dev-only hello peer of `http_load` and `footprint`: hyper 1.x on a tokio
//! current-thread runtime, one task per connection, answering `Hello, World!` as
//! gracering's `http` example does (`GET /` or `HEAD /`; anything else is a 404). It
//! serves on `GRACERING_BENCH_ADDR` (`127.0.0.1:0`) and prints
//! `hyper-hello: listening on IP:PORT` on stdout.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::peer::run_peer;

/// The role name (`GRACERING_BENCH_ROLE`) that runs [`run`].
pub const ROLE: &str = "hyper-hello";

type Error = Box<dyn std::error::Error>;

/// Serves until killed, or until `lifetime` has passed (then it exits with 0). With
/// `pipeline_flush`, hyper batches the answers to pipelined requests into one write.
pub fn run(lifetime: Duration, pipeline_flush: bool) -> Result<(), Error> {
    let addr = std::env::var("GRACERING_BENCH_ADDR").unwrap_or("127.0.0.1:0".into());
    // Normally killed by the benchmark (or with it, by PR_SET_PDEATHSIG); a last resort.
    run_peer(lifetime, 0, serve(&addr, pipeline_flush))?
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
    let (status, body) = match req.uri().path() {
        "/" if get => (StatusCode::OK, "Hello, World!"),
        _ => (StatusCode::NOT_FOUND, "not found"),
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(res)
}
