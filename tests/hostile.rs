//! Hostile peers against the release examples, through real sockets and signals (issue
//! 13): a peer that sends without reading, one that stops reading its responses, one
//! that keeps sending to a connection that is closing. Each must cost the server a
//! bounded amount of memory and time, leave the other clients served, and not keep the
//! drain from ending. Run once per backend (`GRACERING_BACKEND=epoll cargo test`).

mod support;

use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::http1::read_response;
use support::*;

/// The server's resident memory, in bytes.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A connection whose receive buffer is tiny: it takes almost none of the server's
/// output, like a peer that stopped reading.
fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = s.into();
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Sends `chunk` over and over without reading, until `stop` or `limit` (bounded in
/// time), or the server ends the connection. Returns the bytes sent.
fn flood(addr: SocketAddr, chunk: Vec<u8>, stop: Arc<AtomicBool>, limit: Duration) -> u64 {
    let mut s = connect_small_window(addr);
    let start = Instant::now();
    let sent = AtomicU64::new(0);
    let mut at = 0; // the stream stays whole across partial writes
    while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
        match s.write(&chunk[at..]) {
            Ok(n) => {
                sent.fetch_add(n as u64, Ordering::Relaxed);
                at = (at + n) % chunk.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break, // the server closed it
        }
    }
    sent.into_inner()
}

/// One fast peer that never reads: the server's memory stays bounded, another client is
/// answered at once, and SIGTERM ends the process within the grace period (before: on
/// epoll, 1.2 to 1.8 GB, the other client timed out, and the signal waited for the
/// flood to stop).
fn a_flood_that_never_reads(example: &str, chunk: Vec<u8>, probe: &[u8], expect: &[u8]) {
    let mut server = spawn_example(
        example,
        &[
            "--workers",
            "1",
            "--grace-period",
            "1s",
            "--drain-delay",
            "0ms",
        ],
        |_| {},
    );
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        thread::spawn(move || flood(addr, chunk, stop, Duration::from_secs(8)))
    };
    thread::sleep(Duration::from_millis(1500));

    // Another client is served while the flood goes on.
    let mut other = connect(addr);
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let asked = Instant::now();
    other.write_all(probe).unwrap();
    let mut reader = BufReader::new(other.try_clone().unwrap());
    let answered = if example == "http" {
        read_response(&mut reader).map(|r| r.body)
    } else {
        let mut back = vec![0; expect.len()];
        std::io::Read::read_exact(&mut reader, &mut back).map(|_| back)
    };
    let waited = asked.elapsed();
    let rss = rss_bytes(server.pid());

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    eprintln!(
        "{example}: flood sent {} MiB; probe answered in {waited:?}; rss {} MiB; \
         exit {code:?} {took:?} after SIGTERM",
        sent >> 20,
        rss >> 20
    );

    assert_eq!(
        answered.expect("the other client is answered during the flood"),
        expect
    );
    assert!(
        waited < Duration::from_secs(1),
        "the other client waited {waited:?}"
    );
    assert!(
        rss < 64 << 20,
        "one peer that never reads grew the server to {} MiB",
        rss >> 20
    );
    assert!(code.is_some(), "the server did not exit after SIGTERM");
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} after SIGTERM with a 1 s grace period"
    );
}

#[test]
fn a_pipelining_flood_that_never_reads_is_bounded() {
    let chunk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2400);
    a_flood_that_never_reads(
        "http",
        chunk,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"Hello, World!",
    );
}

#[test]
fn an_echo_flood_that_never_reads_is_bounded() {
    a_flood_that_never_reads("echo", vec![b'x'; 64 * 1024], b"probe", b"probe");
}

/// A peer that stops reading its output is closed after the send timeout (before: held
/// with up to 1 MiB of output forever). The peer writes without reading until the
/// server ends the connection (a failed write: the server's close meets unread input,
/// so the peer gets a reset), for at most 10 s.
fn a_peer_that_stops_reading(example: &str, chunk: &[u8]) {
    let mut server = spawn_example(example, &["--workers", "1", "--send-timeout", "1s"], |_| {});
    let mut s = connect_small_window(server.addr);
    let (start, mut at, mut ended) = (Instant::now(), 0, false);
    while start.elapsed() < Duration::from_secs(10) {
        match s.write(&chunk[at..]) {
            Ok(n) => at = (at + n) % chunk.len(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    let took = start.elapsed();
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    assert!(
        ended,
        "{example}: a peer that stopped reading was held for {took:?}"
    );
    // Filling the buffers takes a moment, then the timeout runs: 1 s plus slack.
    assert!(
        took < Duration::from_secs(6),
        "{example}: ended {took:?} after it began, with a 1 s send timeout"
    );
    assert!(report.contains("\"send_timeouts\":1"), "{report}");
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn an_http_peer_that_stops_reading_is_closed_after_the_send_timeout() {
    a_peer_that_stops_reading("http", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2400));
}

#[test]
fn an_echo_peer_that_stops_reading_is_closed_after_the_send_timeout() {
    a_peer_that_stops_reading("echo", &[b'y'; 64 * 1024]);
}

/// A connection that is closing reads (and drops) a bounded amount of what its peer
/// still sends: here a request answered 400 and closed, then the peer sends without
/// pause while the server lingers (before: about a gigabyte within the linger second,
/// 8.2 GB in 4 s when the answer could not be flushed).
#[test]
fn a_closing_connection_reads_a_bounded_amount() {
    let mut server = spawn_example("http", &["--workers", "1"], |_| {});
    let mut s = connect_small_window(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
        .unwrap();
    let junk = vec![b'z'; 64 * 1024];
    let (start, mut sent) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs(3) {
        match s.write(&junk) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break, // the server closed it
        }
    }
    drop(s);
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    eprintln!("sent {} MiB to a closing connection", sent >> 20);
    assert!(
        sent < 64 << 20,
        "a closing connection took {} MiB",
        sent >> 20
    );
    // What the server read: the discard limit (16 MiB) and one read budget at most,
    // unless the linger ended first (the peer paused for its quiet time).
    let read = json_number(&report, "bytes_in");
    assert!(
        read <= (17 << 20) as f64,
        "the server read {read} bytes: {report}"
    );
    assert_eq!(code, Some(0), "{report}");
}

/// An upload in progress when the drain began, finished and answered during it, is
/// counted as drained, not as closed idle (before: `closed_idle` 1, as its unfinished
/// body was the HTTP layer's, not input the engine held).
#[test]
fn an_upload_finished_during_the_drain_counts_as_drained() {
    let mut server = spawn_example("http", &["--workers", "1", "--drain-delay", "0ms"], |_| {});
    let mut s = connect(server.addr);
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    assert!(support::observe::wait_server_read(
        &s,
        Duration::from_secs(5)
    ));
    thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_stderr("draining", Duration::from_secs(5)));
    s.write_all(b"world").unwrap();
    let resp = read_response(&mut BufReader::new(s.try_clone().unwrap())).unwrap();
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    assert_eq!(resp.status, 404, "{report}"); // answered (the example has no POST route)
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("\"drained\":1,\"closed_idle\":0,\"aborted\":0"),
        "{report}"
    );
}

/// A request whose answer is deferred (the service waits on something) when the drain
/// begins is counted as drained once answered (before: closed idle).
#[test]
fn a_deferred_answer_during_the_drain_counts_as_drained() {
    let mut server = spawn_example("http", &["--workers", "1", "--drain-delay", "0ms"], |_| {});
    let mut s = connect(server.addr);
    s.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(support::observe::wait_server_read(
        &s,
        Duration::from_secs(5)
    ));
    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_stderr("draining", Duration::from_secs(5)));
    // The drain began while the answer was still deferred (a loaded machine can delay
    // the signal: then this run proves nothing, and says so).
    assert!(
        asked.elapsed() < Duration::from_millis(1000),
        "the drain began {:?} after the request: too late to test",
        asked.elapsed()
    );
    let resp = read_response(&mut BufReader::new(s.try_clone().unwrap())).unwrap();
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    assert_eq!(resp.status, 200, "{report}");
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("\"drained\":1,\"closed_idle\":0,\"aborted\":0"),
        "{report}"
    );
}

/// The drain's clock starts when the process received the signal, not when a busy
/// worker got to read it: a worker stalled for 1.5 s (the example's debug route, which
/// blocks the loop) with SIGTERM arriving 300 ms into the stall reports a drain of at
/// least the rest of the stall (before: about 0 ms, from when the ring was read).
#[test]
fn the_drain_duration_counts_from_the_signal() {
    let mut server = spawn_example(
        "http",
        &["--workers", "1", "--drain-delay", "0ms", "--debug-stall"],
        |_| {},
    );
    let mut s = connect(server.addr);
    s.write_all(b"GET /debug/stall?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(support::observe::wait_server_read(
        &s,
        Duration::from_secs(5)
    ));
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let resp = read_response(&mut BufReader::new(s.try_clone().unwrap())).unwrap();
    let stall_left = signalled.elapsed();
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    assert_eq!(resp.status, 200, "{report}");
    assert_eq!(code, Some(0), "{report}");
    let reported = json_number(&report, "duration_ms");
    assert!(
        reported >= stall_left.as_secs_f64() * 1000.0 - 50.0,
        "the drain reported {reported} ms; the signal came {stall_left:?} before the answer"
    );
}

/// Busy echo clients (a message every 2 ms) that stop at the server's EOF and hold their sockets open: the
/// drain lingers only while they may still send, then closes, well inside the linger
/// (1 s), and none of them sees a reset or loses an echo (before: each connection
/// lingered the whole second, so the drain took over 1 s).
#[test]
fn lingering_ends_once_the_peers_are_quiet() {
    let mut server = spawn_example("echo", &["--workers", "1", "--drain-delay", "0ms"], |_| {});
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || -> Result<(TcpStream, u64), String> {
                let mut s = connect(addr);
                let msg = [b'a' + i as u8; 64];
                let mut back = [0u8; 64];
                let mut echoed = 0;
                loop {
                    if s.write_all(&msg).is_err() {
                        return Err(format!("client {i}: write failed after {echoed}"));
                    }
                    let mut got = 0;
                    while got < back.len() {
                        match std::io::Read::read(&mut s, &mut back[got..]) {
                            Ok(0) if got == 0 => return Ok((s, echoed)), // EOF between echoes
                            Ok(0) => return Err(format!("client {i}: echo cut short")),
                            Ok(n) => got += n,
                            Err(e) => return Err(format!("client {i}: {e} after {echoed}")),
                        }
                    }
                    assert_eq!(back, msg);
                    echoed += 1;
                    // A pause between messages: the drain finds each connection idle
                    // between two of them, and closes it there (a client in a tight
                    // loop keeps it busy longer: that wait is not the linger's).
                    thread::sleep(Duration::from_millis(2));
                    if stop.load(Ordering::Relaxed) && echoed > 1_000_000 {
                        return Err("never ended".into());
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    // The sockets are held (not closed) until here: the server did not wait for them.
    let held: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let report = server.drain_report();
    for r in &held {
        if let Err(e) = r {
            panic!("{e}: {report}");
        }
    }
    let took = json_number(&report, "duration_ms");
    assert_eq!(code, Some(0), "{report}");
    assert!(
        took < 500.0,
        "the drain took {took} ms with a 1 s linger: it waited for the linger: {report}"
    );
}

/// Timeouts far in the future (here 198 days, under the examples' one-year bound) do
/// not make the worker spin (before: `--idle-timeout 17179870s` took 100% of a core).
/// An observation window: spinning is a rate.
#[test]
fn a_huge_idle_timeout_does_not_spin() {
    let server = spawn_example(
        "http",
        &[
            "--workers",
            "1",
            "--idle-timeout",
            "17179870s",
            "--header-timeout",
            "17179870s",
        ],
        |_| {},
    );
    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = read_response(&mut BufReader::new(s.try_clone().unwrap())).unwrap();
    assert_eq!(resp.status, 200);
    let _slow = connect(server.addr); // a new connection's header timer too
    let cpu = cpu_used_over(server.pid(), Duration::from_secs(1));
    assert!(
        cpu < 0.2,
        "{cpu:.3} s of CPU in 1 s with two idle connections"
    );
}
