//! Failures contained, on both backends: a handler that panics in `on_data`, in
//! `on_drain` and in a teardown; a worker whose wait on the kernel fails; a panic that
//! unwinds through a worker's loop. Each through a real server in this process, real
//! sockets and the shutdown handle: the panicking connection is closed and counted,
//! the others keep being served, the drain completes and the report says what happened,
//! and no descriptor is left open.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gracering::{Backend, Conn, Fault, Handler, Report, ShutdownHandle, Worker};

mod support;
use support::inproc::{self, backends};

/// Echoes lines; `panic` panics in `on_data`; `mark` makes `on_drain` panic later.
struct Fragile;

#[derive(Default)]
struct LineState {
    marked: bool,
}

impl Handler for Fragile {
    type State = LineState;
    type Message = ();

    fn on_open(&mut self, _conn: &mut Conn<'_>) -> LineState {
        LineState::default()
    }

    fn on_data(&mut self, state: &mut LineState, conn: &mut Conn<'_>, data: &[u8]) -> usize {
        let Some(end) = data.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        let line = &data[..end];
        match line {
            b"panic" => panic!("the handler failed on purpose"),
            b"mark" => state.marked = true,
            _ => {}
        }
        conn.write(&data[..=end]);
        end + 1
    }

    fn on_drain(&mut self, state: &mut LineState, conn: &mut Conn<'_>) {
        assert!(!state.marked, "on_drain failed on purpose");
        conn.close_when_idle();
    }
}

/// A server running in a thread of this process.
struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    join: JoinHandle<std::io::Result<Report>>,
}

impl Running {
    fn start(
        backend: Backend,
        workers: usize,
        fault: Option<(Fault, Arc<AtomicBool>)>,
        teardown_log: Option<Arc<Mutex<Vec<&'static str>>>>,
    ) -> Running {
        let mut builder = inproc::builder(backend, workers)
            .linger(Duration::from_millis(200))
            .grace_period(Duration::from_secs(10));
        if let Some((fault, flag)) = fault {
            builder = builder.inject_fault(0, fault, flag);
        }
        let server = builder.bind().expect("bind");
        let (addr, handle) = (server.local_addr(), server.shutdown_handle());
        let join = std::thread::spawn(move || {
            server.run(move |worker: &mut Worker| {
                if let Some(log) = &teardown_log {
                    let after = log.clone();
                    worker.on_teardown("after", move || after.lock().unwrap().push("after"));
                    let explodes = log.clone();
                    worker.on_teardown("explodes", move || {
                        explodes.lock().unwrap().push("explodes");
                        panic!("the teardown failed on purpose");
                    });
                }
                Fragile
            })
        });
        Running { addr, handle, join }
    }

    /// Waits for `run` to return (within 10 s: nothing hangs or spins).
    fn finish(self) -> Report {
        let start = Instant::now();
        while !self.join.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.join.join().expect("run panicked").expect("run failed")
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn echo(s: &mut TcpStream, line: &str) {
    s.write_all(line.as_bytes()).unwrap();
    let mut back = vec![0; line.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, line.as_bytes());
}

/// Reads until the server ends the connection: EOF or a reset, never a timeout.
fn expect_end(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: the connection did not end: {e}"),
        }
    }
}

/// The tests of this file run one at a time: they count this process's descriptors.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_panic_in_on_data_closes_only_its_connection() {
    let _serial = serial();
    for backend in backends("a_panic_in_on_data_closes_only_its_connection") {
        let server = Running::start(backend, 1, None, None);
        let mut a = connect(server.addr);
        echo(&mut a, "hello\n");
        let mut b = connect(server.addr);
        b.write_all(b"panic\n").unwrap();
        expect_end(&mut b, "the panicking connection");
        echo(&mut a, "still served\n");
        let mut c = connect(server.addr);
        echo(&mut c, "a new connection too\n");
        server.handle.shutdown();
        expect_end(&mut a, "a bystander at the drain");
        expect_end(&mut c, "a later connection at the drain");
        let report = server.finish();
        let total = report.total();
        assert_eq!(total.handler_panics, 1, "{backend}: {}", report.to_json());
        assert_eq!(total.accepted, 3);
        assert_eq!(total.closed, 3);
        assert_eq!(report.failed_workers(), 0);
        assert_eq!(report.aborted(), 0);
        assert!(!report.is_clean(), "a panic is not a clean run");
        assert!(report.to_json().contains("\"panics\":1"));
    }
}

#[test]
fn a_panic_in_on_drain_still_drains_the_rest() {
    let _serial = serial();
    for backend in backends("a_panic_in_on_drain_still_drains_the_rest") {
        let server = Running::start(backend, 1, None, None);
        let mut marked = connect(server.addr);
        echo(&mut marked, "mark\n");
        let mut idle = connect(server.addr);
        echo(&mut idle, "idle\n");
        server.handle.shutdown();
        expect_end(&mut marked, "the connection whose on_drain panicked");
        expect_end(&mut idle, "an idle connection");
        let report = server.finish();
        let total = report.total();
        assert_eq!(total.handler_panics, 1, "{backend}: {}", report.to_json());
        assert_eq!(total.closed, 2);
        assert_eq!(report.failed_workers(), 0);
        assert!(report.workers[0].drain.finished_after.is_some());
    }
}

#[test]
fn a_panicking_teardown_does_not_stop_the_others() {
    let _serial = serial();
    for backend in backends("a_panicking_teardown_does_not_stop_the_others") {
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = Running::start(backend, 1, None, Some(log.clone()));
        let mut a = connect(server.addr);
        echo(&mut a, "hi\n");
        server.handle.shutdown();
        expect_end(&mut a, "a connection at the drain");
        let report = server.finish();
        assert_eq!(
            *log.lock().unwrap(),
            ["explodes", "after"],
            "{backend}: last registered first, and the one after the panic still runs"
        );
        assert_eq!(report.total().teardown_panics, 1);
        assert_eq!(report.panics(), 1);
        assert!(report.workers[0].drain.finished_after.is_some());
    }
}

/// Several clients, so that both workers hold some (SO_REUSEPORT spreads them).
fn clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = connect(addr);
            echo(&mut s, &format!("client {i}\n"));
            s
        })
        .collect()
}

/// Worker 0 meets `fault` while connections are open on both workers: its clients see
/// their connections end, the other worker drains, `run` returns a report that names
/// the failure, and every descriptor is closed.
fn worker_fault(test: &str, fault: Fault, says: &str) {
    let _serial = serial();
    for backend in backends(test) {
        let before = open_fds();
        let flag = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = Running::start(backend, 2, Some((fault, flag.clone())), Some(log.clone()));
        let mut conns = clients(server.addr, 16);
        flag.store(true, Ordering::Release);
        for s in &mut conns {
            // Wakes worker 0 (its clients' bytes are an event); a write may already fail
            // where the connection ended.
            let _ = s.write_all(b"wake\n");
        }
        for s in &mut conns {
            expect_end(s, "a connection of the failed or the draining worker");
        }
        let handle = server.handle.clone();
        let report = server.finish();
        assert_eq!(
            handle.live_connections(),
            0,
            "{backend}: none counted as live"
        );
        drop(handle); // it holds the workers' eventfds
        let json = report.to_json();
        let failure = report.workers[0].failure.as_deref().unwrap_or_default();
        assert!(failure.contains(says), "{backend}: {json}");
        assert!(report.workers[1].failure.is_none(), "{backend}: {json}");
        assert!(report.workers[1].drain.finished_after.is_some(), "{json}");
        assert_eq!(report.failed_workers(), 1);
        assert_eq!(
            report.trigger.map(|t| t.as_str()),
            Some("worker-failed"),
            "{json}"
        );
        // The healthy worker's teardowns ran after its drain; the failed worker's too
        // when its wait failed (a panic through the loop leaves no handler to run them).
        let teardowns = log.lock().unwrap().len();
        let want = if fault == Fault::WaitError { 4 } else { 2 };
        assert_eq!(teardowns, want, "{backend}: {:?}", log.lock().unwrap());
        drop(conns);
        assert_eq!(
            open_fds(),
            before,
            "{backend}: every socket, ring and eventfd is closed"
        );
    }
}

#[test]
fn a_failing_wait_ends_the_worker_and_closes_its_sockets() {
    worker_fault(
        "a_failing_wait_ends_the_worker_and_closes_its_sockets",
        Fault::WaitError,
        "wait failed: injected wait failure",
    );
}

#[test]
fn a_panic_through_the_loop_ends_the_worker_and_closes_its_sockets() {
    worker_fault(
        "a_panic_through_the_loop_ends_the_worker_and_closes_its_sockets",
        Fault::Panic,
        "panicked: injected panic in the worker loop",
    );
}
