//! systemd socket activation, with the test playing systemd: it binds the listening
//! sockets, passes them to the http example as descriptors 3.. with `LISTEN_FDS`,
//! `LISTEN_FDNAMES` and `LISTEN_PID` set to the example's own PID (a shell that sets it
//! to `$$`, then execs the example), and keeps its own descriptors, as the manager
//! does. Checked: the example serves on the passed sockets (one shared by two workers,
//! fairly; or one per worker), and its drain leaves the manager's socket as it found
//! it: no SYN filter left on it, and connections queued during the drain not reset but
//! waiting for the next instance (the test accepts and answers them itself).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use testkit::process::{Launch, spawn_server};

mod support;
use support::{ChildServer, example_path};

/// Makes the child get `fds` as 3, 4, ... (without close-on-exec), the way systemd
/// passes them: each is first copied above 100, so that one already at a target number
/// (or another's target) is neither left close-on-exec nor overwritten.
fn pass_fds(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: runs in the forked child before exec: fcntl, dup2 and close are single,
    // async-signal-safe system calls on descriptors the child inherited; nothing
    // allocates.
    assert!(fds.len() <= 8, "at most 8 passed descriptors");
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0 as RawFd; 8];
            for (i, &fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &h) in high[..fds.len()].iter().enumerate() {
                if libc::dup2(h, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(h);
            }
            Ok(())
        })
    };
}

/// Starts the http example with `fds` passed as 3, 4, ... the way systemd does.
fn activate(fds: &[RawFd], args: &[&str]) -> ChildServer {
    activate_with(fds, args, |_| {})
}

/// [`activate`], with `prepare` applied to the command last.
fn activate_with(fds: &[RawFd], args: &[&str], prepare: impl FnOnce(&mut Command)) -> ChildServer {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
        .arg(example_path("http"))
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", vec!["http"; fds.len()].join(":"));
    pass_fds(&mut cmd, fds.to_vec());
    prepare(&mut cmd);
    let spawned =
        spawn_server(&mut cmd, &Launch::capturing()).expect("the activated example starts");
    ChildServer {
        child: spawned.child,
        addr: spawned.addr,
        stderr: spawned.stderr.expect("stderr is captured").shared(),
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The `accepted` count of each worker in a drain report.
fn accepted_per_worker(report: &str) -> Vec<u64> {
    report
        .split("{\"worker\":")
        .skip(1)
        .map(|w| support::json_number(w, "accepted") as u64)
        .collect()
}

#[test]
fn one_passed_socket_is_shared_fairly_and_left_usable_for_the_next_instance() {
    let _serial = support::serial::serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = activate(
        &[listener.as_raw_fd()],
        &["--workers", "2", "--drain-delay", "0ms"],
    );
    assert_eq!(server.addr, addr, "it serves on the passed socket");
    const N: usize = 400;
    for _ in 0..N {
        assert!(get(addr, "/").starts_with("HTTP/1.1 200"));
    }
    // A slow request keeps the drain open while clients connect after the accept
    // stopped: they wait in the passed socket's queue.
    let mut slow = TcpStream::connect(addr).unwrap();
    write!(slow, "GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_for_stderr("accept stopped", Duration::from_secs(5)),
        "{:?}",
        server.stderr_lines()
    );
    let queued: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .expect("the handshake completes in the manager's queue");
            writeln!(c, "queued {i}").unwrap();
            c
        })
        .collect();
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{:?}", server.stderr_lines());
    let mut slow_answer = String::new();
    slow.read_to_string(&mut slow_answer).unwrap();
    assert!(slow_answer.starts_with("HTTP/1.1 200"), "{slow_answer}");

    // The next instance (the test) finds the queued clients, none reset.
    listener.set_nonblocking(false).unwrap();
    for mut c in queued {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = [0u8; 9];
        s.read_exact(&mut line).unwrap();
        assert!(line.starts_with(b"queued "));
        s.write_all(b"served by the next instance\n").unwrap();
        drop(s);
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).expect("not reset");
        assert_eq!(got, "served by the next instance\n");
    }
    // No filter left on the socket: a new handshake still completes.
    let late = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(
        late.is_ok(),
        "a SYN filter was left on the manager's socket"
    );
    let _ = listener.accept().unwrap();

    let report = server.drain_report();
    let per = accepted_per_worker(&report);
    assert_eq!(per.len(), 2, "{report}");
    let total: u64 = per.iter().sum();
    assert_eq!(total as usize, N + 1, "{report}");
    let smaller = *per.iter().min().unwrap() as f64 / total as f64;
    eprintln!("one shared socket, 2 workers: accepted {per:?} of {total}");
    assert!(
        smaller >= 0.25,
        "the shared socket's connections are spread unfairly: {per:?}"
    );
}

/// Out of descriptors with clients queued on the one shared socket, both workers back
/// off without spinning, and serve the queue once descriptors free up. Before, on
/// epoll, the shared listener stayed in each worker's set, level-triggered: while the
/// engine backed off, every wait returned at once (two cores busy for the whole
/// back-off).
#[test]
fn a_shared_socket_out_of_descriptors_backs_off_without_spinning() {
    let _serial = support::serial::serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = activate_with(&[listener.as_raw_fd()], &["--workers", "2"], |cmd| {
        support::limit_descriptors(cmd, 64)
    });
    // Keep-alive connections, each answered once, until the server stops answering.
    let (mut held, mut queued) = (Vec::new(), Vec::new());
    while queued.len() < 5 {
        assert!(held.len() < 200, "the server never ran out of descriptors");
        let mut c = support::http1::Client::new(addr);
        c.w.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c.send("GET", "/", b"");
        if queued.is_empty() && c.read(false).is_ok() {
            held.push(c);
        } else {
            queued.push(c);
        }
    }
    assert!(
        server.wait_for_stderr("backing off", Duration::from_secs(2)),
        "{:?}",
        server.stderr_lines()
    );
    let cpu = support::cpu_used_over(server.pid(), Duration::from_secs(2));
    eprintln!(
        "out of descriptors, {} held and {} queued: {cpu:.3} s of CPU in 2 s",
        held.len(),
        queued.len()
    );
    assert!(
        cpu < 0.2,
        "the server used {cpu:.3} s of CPU in 2 s of back-off"
    );
    drop(held);
    for (i, c) in queued.iter_mut().enumerate() {
        c.w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let resp = c.read(false);
        assert!(
            resp.as_ref().is_ok_and(|r| r.status == 200),
            "queued client {i}: {:?}",
            resp.map(|r| r.status)
        );
    }
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", server.drain_report());
}

#[test]
fn one_passed_socket_per_worker() {
    let _serial = support::serial::serial();
    let bind = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s
    };
    let first = bind();
    first
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    first.listen(128).unwrap();
    let addr = first.local_addr().unwrap().as_socket().unwrap();
    let second = bind();
    second.bind(&addr.into()).unwrap();
    second.listen(128).unwrap();
    let mut server = activate(&[first.as_raw_fd(), second.as_raw_fd()], &[]);
    assert_eq!(server.addr, addr);
    for _ in 0..200 {
        assert!(get(addr, "/").starts_with("HTTP/1.1 200"));
    }
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let per = accepted_per_worker(&server.drain_report());
    eprintln!("a socket per worker (SO_REUSEPORT): accepted {per:?}");
    assert_eq!(per.len(), 2, "one worker per passed socket");
    assert_eq!(per.iter().sum::<u64>(), 200);
    assert!(per.iter().all(|&n| n > 0), "{per:?}");
}

#[test]
fn passed_sockets_that_do_not_fit_the_workers_are_refused() {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
        .arg(example_path("http"))
        .args(["--workers", "3"])
        .env("LISTEN_FDS", "2");
    pass_fds(&mut cmd, vec![a.as_raw_fd(), b.as_raw_fd()]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("passed 2 sockets for 3 workers"),
        "{stderr}"
    );
}
