//! End-to-end echo tests against the echo example run as a child process, and against
//! in-process servers where the test needs to see inside a worker.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use gracering::{Conn, Handler, Server};
use support::serial::serial;
use support::skip::{Need, skip};
use support::*;

const CONNS: usize = 500;
const MAX_PAYLOAD: usize = 1 << 20;

/// Writes the payload from a second thread while this one reads the echo, so neither
/// side's socket buffer can deadlock the exchange.
fn echo_exchange(mut stream: TcpStream, payload: Vec<u8>) -> Result<(), String> {
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let len = payload.len();
    let w = thread::spawn(move || writer.write_all(&payload).map(|_| payload));
    let mut back = vec![0u8; len];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("read {len} bytes: {e}"))?;
    let payload = w.join().unwrap().map_err(|e| format!("write: {e}"))?;
    if back != payload {
        let at = back
            .iter()
            .zip(&payload)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!("{len}-byte payload differs at byte {at}"));
    }
    Ok(())
}

#[test]
fn five_hundred_concurrent_connections_echo_random_payloads_byte_for_byte() {
    let _serial = serial(); // it loads both cores: not beside a timing test
    let server = spawn_echo(&["--workers", "2"]);
    let mut rng = Rng::new(0x5eed);
    let mut sizes: Vec<usize> = (0..CONNS).map(|_| rng.log_size(MAX_PAYLOAD)).collect();
    sizes[0] = 1;
    sizes[1] = MAX_PAYLOAD;
    let total: usize = sizes.iter().sum();
    let barrier = Barrier::new(CONNS);
    let results: Vec<Result<(), String>> = thread::scope(|s| {
        let handles: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let barrier = &barrier;
                let addr = server.addr;
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let stream = connect(addr);
                        let mut payload = vec![0u8; size];
                        Rng::new(i as u64 + 1).fill(&mut payload);
                        barrier.wait(); // all 500 connections are open at once
                        echo_exchange(stream, payload)
                    })
                    .unwrap()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {CONNS} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    eprintln!("echoed {total} bytes over {CONNS} concurrent connections");
}

/// Tells each client which worker accepted it.
struct WhichWorker;

impl Handler for WhichWorker {
    type State = ();
    type Message = ();
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(&[conn.worker() as u8]);
    }
    fn on_data(&mut self, _: &mut (), _conn: &mut Conn<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

#[test]
fn every_worker_accepts_connections() {
    const WORKERS: usize = 4;
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(WORKERS)
        .bind()
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(server.workers(), WORKERS);
    thread::spawn(move || server.run(|_| WhichWorker));
    let mut seen = [0usize; WORKERS];
    let mut streams = Vec::new();
    for _ in 0..200 {
        let mut s = connect(addr);
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        seen[b[0] as usize] += 1;
        streams.push(s);
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "connections per worker: {seen:?}"
    );
}

#[test]
fn ipv6_loopback_serves_too() {
    let server = match Server::builder()
        .addr("[::1]:0".parse().unwrap())
        .workers(2)
        .bind()
    {
        Ok(server) => server,
        Err(e) => {
            let why = format!("cannot bind [::1]:0: {e}");
            return skip("ipv6_loopback_serves_too", Need::Ipv6Loopback, why);
        }
    };
    let addr = server.local_addr();
    thread::spawn(move || server.run(|_| WhichWorker));
    let mut s = connect(addr);
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert!(b[0] < 2);
}

#[test]
fn client_half_close_gets_every_byte_then_a_clean_eof() {
    let server = spawn_echo(&["--workers", "1"]);
    let mut s = connect(server.addr);
    let mut payload = vec![0u8; 300_000];
    Rng::new(7).fill(&mut payload);
    let mut writer = s.try_clone().unwrap();
    let sent = payload.clone();
    let w = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("a clean EOF, not a reset");
    w.join().unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo differs");
}

#[test]
fn client_reset_mid_transfer_leaves_other_connections_unharmed() {
    let server = spawn_echo(&["--workers", "1"]);
    let baseline = settled_fds(&server);
    let mut bystander = connect(server.addr);
    assert_eq!(round_trip(&mut bystander, b"before").unwrap(), b"before");
    for i in 0..50 {
        let mut s = connect(server.addr);
        let chunk = vec![i as u8; 200_000];
        // Write without reading, so the echo backs up in the server, then reset.
        let _ = s.write_all(&chunk);
        set_linger_zero(&s);
        drop(s);
    }
    assert_eq!(round_trip(&mut bystander, b"after").unwrap(), b"after");
    let settled = wait_until(Duration::from_secs(5), || {
        open_fds(server.pid()) == baseline + 1
    });
    assert!(
        settled,
        "server fds: {} (baseline {baseline} + 1 bystander)",
        open_fds(server.pid())
    );
}

#[test]
fn a_closed_client_does_not_disturb_the_server() {
    let server = spawn_echo(&["--workers", "1"]);
    let s = connect(server.addr);
    drop(s); // FIN without sending anything
    let mut s = connect(server.addr);
    s.write_all(b"x").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    match s.read_to_end(&mut back) {
        Ok(_) => assert_eq!(back, b"x"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => panic!("reset instead of echo + EOF"),
        Err(e) => panic!("{e}"),
    }
}

/// A connection whose last read filled the read buffer exactly (64 KiB on epoll) and
/// that is idle since is idle for the drain: it closes at once and the exit is 0.
/// Before, epoll took such a read for "more input queued" until another read said
/// otherwise, so the drain waited for the grace deadline (exit 3). The server is
/// stopped (SIGSTOP) while the 64 KiB arrive, so that one read takes them all.
#[test]
fn an_idle_connection_after_a_full_read_does_not_hold_the_drain() {
    let mut server = spawn_echo(&[
        "--workers",
        "1",
        "--grace-period",
        "3s",
        "--drain-delay",
        "0ms",
    ]);
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"warm").unwrap();
    let mut warm = [0u8; 4];
    c.read_exact(&mut warm).unwrap();
    server.signal(libc::SIGSTOP);
    let block = vec![7u8; 64 * 1024];
    c.write_all(&block).unwrap();
    thread::sleep(Duration::from_millis(100)); // all of it in the server's socket
    server.signal(libc::SIGCONT);
    let mut back = vec![0u8; block.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, block);
    thread::sleep(Duration::from_millis(50));
    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{:?}", server.stderr_lines());
    assert!(took < Duration::from_secs(2), "the drain waited {took:?}");
}
