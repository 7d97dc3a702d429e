//! The echo peer of `echo_load`: a tokio current-thread echo server, one task per
//! connection. It serves on `GRACERING_BENCH_ADDR` (`127.0.0.1:0`) and prints
//! `listening on IP:PORT` on stdout; it serves until killed, or for an hour at most
//! (then it exits with 0).

use std::time::Duration;

use gracering_peers::{Error, listen_addr, run_peer_on};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The peer exits by itself after this long, whatever happens to the benchmark.
const LIFETIME: Duration = Duration::from_secs(3600);

fn main() -> Result<(), Error> {
    // Normally killed by the benchmark (or with it, by PR_SET_PDEATHSIG); no time
    // driver, as the peer has no use for one.
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    run_peer_on(runtime.enable_io(), LIFETIME, 0, serve(&listen_addr()))?
}

async fn serve(addr: &str) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    // Rust's stdout is line-buffered: the line leaves at once.
    println!("listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => drop(tokio::spawn(echo(stream))),
            Err(e) => eprintln!("tokio-echo: accept: {e}"),
        }
    }
}

async fn echo(mut stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
