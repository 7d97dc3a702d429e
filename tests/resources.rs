//! Resource exhaustion and leaks: a server out of descriptors must not spin and must
//! recover by itself; thousands of connections must leave no descriptor behind.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::serial::serial;
use support::*;

const NOFILE: u64 = 64;

fn echoes_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut b = [0u8; 4];
    let ok = s.read_exact(&mut b).is_ok() && &b == b"ping";
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    ok
}

/// The echo example with [`NOFILE`] descriptors, draining at once on SIGTERM.
fn spawn_short_of_descriptors() -> ChildServer {
    spawn_example(
        "echo",
        &[
            "--workers",
            "1",
            "--drain-delay",
            "0ms",
            "--grace-period",
            "10s",
        ],
        |cmd| limit_descriptors(cmd, NOFILE),
    )
}

/// Opens connections that each send "ping" until the server stops answering (out of
/// descriptors): the served ones, then `extra` more that wait in the backlog.
fn exhaust(addr: std::net::SocketAddr, extra: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let (mut served, mut queued) = (Vec::new(), Vec::new());
    while queued.len() < extra {
        assert!(
            served.len() < 4 * NOFILE as usize,
            "the server never ran out"
        );
        let mut s = connect(addr);
        s.write_all(b"ping").unwrap();
        if queued.is_empty() && echoes_within(&mut s, Duration::from_millis(500)) {
            served.push(s);
        } else {
            queued.push(s);
        }
    }
    (served, queued)
}

/// SIGTERM while out of descriptors with clients in the backlog: the idle connections
/// close first, the backlog is accepted as their descriptors free up, and every queued
/// client is served and then closed in order (before: the listener was closed while
/// accepting the backlog failed with EMFILE, the queued clients were reset, and the
/// report said 0 aborted, exit 0).
#[test]
fn the_drain_serves_the_backlog_as_descriptors_free_up() {
    let mut server = spawn_short_of_descriptors();
    let (served, mut queued) = exhaust(server.addr, 20);
    assert!(server.wait_for_stderr("backing off", Duration::from_secs(2)));
    server.signal(libc::SIGTERM);
    for (i, s) in queued.iter_mut().enumerate() {
        assert!(
            echoes_within(s, Duration::from_secs(5)),
            "queued connection {i} was not served: {:?}",
            server.stderr_lines()
        );
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let end = s.read_to_end(&mut rest);
        assert!(
            end.is_ok(),
            "queued connection {i} ended with {end:?}, not a FIN"
        );
    }
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    drop(served);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("\"aborted\":0"), "{report}");
}

/// Forced before descriptors free up: what is still queued is reset, and the report
/// and the exit code say so.
#[test]
fn a_backlog_given_up_on_is_counted_as_aborted() {
    let mut server = spawn_short_of_descriptors();
    // The served connections are kept busy (their clients send without reading, so
    // echoes wait unsent): their descriptors stay taken, and the second signal lands
    // while the backlog waits.
    let (mut served, _queued) = exhaust(server.addr, 10);
    let burst = vec![b'b'; 64 * 1024];
    for s in &mut served {
        s.set_nonblocking(true).unwrap();
        for _ in 0..64 {
            if s.write(&burst).is_err() {
                break; // the client's buffers are full: the server's echo backs up
            }
        }
    }
    assert!(server.wait_for_stderr("backing off", Duration::from_secs(2)));
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_stderr("backlog waits", Duration::from_secs(5)));
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    assert_eq!(code, Some(3), "{report}");
    let aborted = json_number(&report, "aborted");
    assert!(aborted >= 10.0, "{aborted} aborted: {report}");
    assert!(
        server.wait_for_stderr("queued connections reset", Duration::from_secs(1)),
        "{:?}",
        server.stderr_lines()
    );
}

#[test]
fn out_of_descriptors_backs_off_without_spinning_and_recovers() {
    let server = spawn_example("echo", &["--workers", "1"], |cmd| {
        limit_descriptors(cmd, NOFILE)
    });
    // Fill the server's descriptor table: every connection that echoes holds one.
    let mut served = Vec::new();
    let mut queued = Vec::new();
    for _ in 0..(NOFILE as usize + 20) {
        let mut s = connect(server.addr);
        s.write_all(b"ping").unwrap();
        if queued.is_empty() && echoes_within(&mut s, Duration::from_millis(500)) {
            served.push(s);
        } else {
            queued.push(s);
        }
    }
    assert!(
        served.len() > 20,
        "served {} before exhaustion",
        served.len()
    );
    assert!(
        queued.len() >= 20,
        "{} connections wait in the backlog",
        queued.len()
    );
    assert!(
        server.wait_for_stderr("backing off", Duration::from_secs(2)),
        "no back-off logged: {:?}",
        server.stderr_lines()
    );

    // Two seconds out of descriptors, with connections waiting: no spinning. This is
    // an observation window (spinning is a rate), not a wait for something to happen.
    let t0 = Instant::now();
    let cpu = cpu_used_over(server.pid(), Duration::from_secs(2));
    let exhausted = t0.elapsed();
    eprintln!(
        "CPU while exhausted: {cpu:.3} s over {:.2} s",
        exhausted.as_secs_f64()
    );
    assert!(
        cpu < 0.2,
        "server used {cpu:.3} s of CPU in 2 s of exhaustion"
    );

    // Free descriptors: every queued connection is served without any client retrying.
    drop(served);
    for (i, s) in queued.iter_mut().enumerate() {
        assert!(
            echoes_within(s, Duration::from_secs(5)),
            "queued connection {i} was not served"
        );
    }
    assert!(server.wait_for_stderr("accepting again", Duration::from_secs(2)));
    // The back-off doubles from 5 ms to 500 ms: about ten retries in those two seconds.
    // A server retrying at once would count thousands.
    let backoffs: u64 = server
        .stderr_lines()
        .iter()
        .find_map(|l| {
            l.split("accepting again after ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no back-off count: {:?}", server.stderr_lines()));
    let bound = 20 + exhausted.as_millis() as u64 / 100;
    assert!(backoffs <= bound, "{backoffs} back-offs in {exhausted:?}");
    let mut fresh = connect(server.addr);
    assert_eq!(round_trip(&mut fresh, b"fresh").unwrap(), b"fresh");
}

#[test]
fn ten_thousand_connect_close_cycles_leak_no_descriptor() {
    let _serial = serial(); // it loads both cores: not beside a timing test
    let server = spawn_echo(&["--workers", "2"]);
    let baseline = settled_fds(&server);
    for i in 0..10_000u32 {
        let mut s = connect(server.addr);
        match i % 4 {
            0 => assert_eq!(round_trip(&mut s, b"x").unwrap(), b"x"),
            1 => {} // connect and close at once
            2 => {
                s.write_all(b"unread echo").unwrap();
                set_linger_zero(&s); // reset with data in flight
            }
            _ => {
                s.write_all(b"y").unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                assert_eq!(rest, b"y");
            }
        }
    }
    let settled = wait_until(Duration::from_secs(10), || {
        open_fds(server.pid()) == baseline
    });
    assert!(
        settled,
        "server holds {} fds after 10,000 cycles, {baseline} before",
        open_fds(server.pid())
    );
}
