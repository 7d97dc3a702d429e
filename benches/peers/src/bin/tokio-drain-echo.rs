//! The echo peer of `drain_echo`: a tokio current-thread echo server with a graceful
//! drain. On SIGTERM (read from a signalfd) it drops the listener, tells every
//! connection to stop, and waits for all of them: each finishes the echo in progress,
//! shuts down its write side (FIN) and reads off what the client still sends until its
//! FIN, for at most `GRACERING_BENCH_LINGER_MS` (1000; 0 drops the socket at once). It
//! then prints one JSON line `{"drain":{...}}` on stderr and exits 0. It serves on
//! `GRACERING_BENCH_ADDR` (`127.0.0.1:0`) and prints `listening on IP:PORT` on stdout.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use gracering_peers::{Error, accept_until_sigterm, env_ms, listen_addr, run_peer, sigterm_fd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The peer exits by itself after this long, whatever happens to the benchmark.
const LIFETIME: Duration = Duration::from_secs(600);

fn main() -> Result<(), Error> {
    let linger = env_ms("GRACERING_BENCH_LINGER_MS", 1000)?;
    // Before any thread starts, so that no thread can take SIGTERM's default action.
    let signals = sigterm_fd()?;
    // Normally stopped by the benchmark (or killed with it, by PR_SET_PDEATHSIG).
    run_peer(LIFETIME, 1, serve(&listen_addr(), signals, linger))?
}

async fn serve(addr: &str, signals: OwnedFd, linger: Duration) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    // Rust's stdout is line-buffered: the line leaves at once.
    println!("listening on {}", listener.local_addr()?);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = accept_until_sigterm(&listener, signals, "tokio-drain-echo", |stream| {
        echo(stream, stopped.clone(), linger)
    })
    .await?;
    let began = Instant::now();
    // Stop accepting: nothing connects during the benchmark's drain, so closing the
    // listener resets nobody.
    drop(listener);
    let conns = tasks.len();
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    eprintln!(
        r#"{{"drain":{{"peer":"tokio","duration_ms":{:.3},"connections":{conns},"linger_ms":{}}}}}"#,
        began.elapsed().as_secs_f64() * 1e3,
        linger.as_millis()
    );
    Ok(())
}

/// Echoes until the client leaves or the drain begins; then finishes the echo in
/// progress, shuts down the write side (FIN) and reads off what the client still
/// sends until its FIN, for at most `linger` (none: the socket is dropped at once).
async fn echo(mut stream: TcpStream, mut stop: watch::Receiver<bool>, linger: Duration) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            biased;
            // The guard `wait_for` returns is dropped inside, so that the task's
            // future stays `Send`.
            _ = async { stop.wait_for(|&stop| stop).await.is_ok() } => break,
            read = stream.read(&mut buf) => match read {
                Ok(1..) => {
                    let n = read.unwrap_or(0);
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
        }
    }
    if stream.shutdown().await.is_err() || linger.is_zero() {
        return;
    }
    let read_off = async { while let Ok(1..) = stream.read(&mut buf).await {} };
    let _ = tokio::time::timeout(linger, read_off).await;
}
