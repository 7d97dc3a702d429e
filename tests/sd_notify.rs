//! systemd's notifications, received by the test on a real datagram socket it listens on
//! (`NOTIFY_SOCKET`): READY=1 once every worker listens, WATCHDOG=1 every half interval
//! only while every worker's loop turns (a stuck worker stops them), STOPPING=1 when the
//! drain begins, STATUS= with the live count and EXTEND_TIMEOUT_USEC= while connections
//! remain; and nothing of the watchdog when systemd asks for none.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{spawn_example, wait_until};

/// What the test's notify socket received, with when.
struct Received {
    path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

fn listen() -> Received {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gracering-notify-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let m = messages.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    m.lock().unwrap().push((Instant::now(), text));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    Received { path, messages }
}

impl Received {
    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }
    /// When each message holding `line` arrived.
    fn times(&self, line: &str) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == line || l.starts_with(line)))
            .map(|(t, _)| t)
            .collect()
    }
    fn wait_for(&self, line: &str, timeout: Duration) -> bool {
        wait_until(timeout, || !self.times(line).is_empty())
    }
}

fn get(addr: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

fn answer(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn ready_watchdog_only_while_every_loop_turns_stopping_status_and_extend() {
    let _serial = support::serial::serial();
    let rx = listen();
    let mut server = spawn_example(
        "http",
        &["--workers", "2", "--debug-stall", "--drain-delay", "0ms"],
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &rx.path)
                .env("WATCHDOG_USEC", "400000");
        },
    );
    assert!(
        rx.wait_for("READY=1", Duration::from_secs(5)),
        "{:?}",
        rx.all()
    );
    let ready = rx
        .all()
        .into_iter()
        .find(|(_, m)| m.contains("READY=1"))
        .unwrap()
        .1;
    assert!(
        ready.contains(&format!("STATUS=serving on {}: 2 workers", server.addr)),
        "{ready}"
    );
    // Pings every half interval (200 ms) while both loops turn, idle or not.
    std::thread::sleep(Duration::from_millis(1200));
    let pings = rx.times("WATCHDOG=1").len();
    assert!(
        (4..=8).contains(&pings),
        "{pings} pings in 1.2 s: {:?}",
        rx.all()
    );

    // One worker stuck for 1.5 s: no ping meanwhile, pings again after.
    let stalled_at = Instant::now();
    let stall = get(server.addr, "/debug/stall?ms=1500");
    let stalled = answer(stall);
    let back_at = Instant::now();
    assert!(stalled.starts_with("HTTP/1.1 200"), "{stalled}");
    assert!(back_at - stalled_at >= Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(700));
    let during = rx
        .times("WATCHDOG=1")
        .into_iter()
        .filter(|&t| t > stalled_at + Duration::from_millis(300) && t < back_at)
        .count();
    assert_eq!(during, 0, "pings while a worker was stuck: {:?}", rx.all());
    let after = rx
        .times("WATCHDOG=1")
        .into_iter()
        .filter(|&t| t > back_at)
        .count();
    assert!(
        after >= 1,
        "the pings came back after the stall: {:?}",
        rx.all()
    );

    // The drain: STOPPING at once, the live count, more time asked while a request runs.
    let slow = get(server.addr, "/slow?ms=1500");
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(rx.wait_for("STOPPING=1", Duration::from_secs(2)));
    let stopping = rx.times("STOPPING=1")[0];
    assert!(
        stopping - signalled < Duration::from_millis(300),
        "{:?}",
        stopping - signalled
    );
    assert!(answer(slow).starts_with("HTTP/1.1 200"));
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{:?}", server.stderr_lines());
    let all = rx.all();
    assert!(
        all.iter()
            .any(|(_, m)| m.contains("STATUS=draining: 1 connections open")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|(_, m)| m.contains("EXTEND_TIMEOUT_USEC=600000")),
        "{all:?}"
    );
    let _ = std::fs::remove_dir_all(rx.path.parent().unwrap());
}

#[test]
fn without_a_watchdog_there_are_no_pings() {
    let _serial = support::serial::serial();
    let rx = listen();
    let mut server = spawn_example("http", &["--workers", "1", "--drain-delay", "0ms"], |cmd| {
        cmd.env("NOTIFY_SOCKET", &rx.path);
    });
    assert!(rx.wait_for("READY=1", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(600));
    server.signal(libc::SIGTERM);
    assert!(rx.wait_for("STOPPING=1", Duration::from_secs(2)));
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(rx.times("WATCHDOG=1").is_empty(), "{:?}", rx.all());
    let _ = std::fs::remove_dir_all(rx.path.parent().unwrap());
}
