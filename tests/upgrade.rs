//! In-place upgrade of the http example under continuous load: five upgrades in a row,
//! each new process taking over the very listening sockets of the old one (SCM_RIGHTS
//! over `--upgrade-socket`), with new connections (over 2,000 a second) and keep-alive
//! traffic throughout: no connect refused, no request failed or reset, every old process
//! exits 0. And a rollback: a new process that cannot start leaves the old one serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::{ChildServer, example_path, spawn_example};

#[derive(Default)]
struct Tally {
    fresh_ok: AtomicU64,
    keepalive_ok: AtomicU64,
    /// A reused keep-alive connection closed before answering a request sent as the
    /// server closed it (the race every HTTP client retries an idempotent request on,
    /// RFC 9112 section 9.3.1): the request was resent on a new connection.
    retried: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(what);
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// Reads one response: (status, whether the server closes after it). `Err` with
/// `got_nothing` when the connection ended before any byte of it.
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, bool), (bool, String)> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Err((true, "EOF before the status line".into())),
        Ok(_) => {}
        Err(e) => return Err((true, format!("{e}"))),
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or((false, format!("bad status line {line:?}")))?;
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map_err(|e| (false, format!("{e}")))? == 0 {
            return Err((false, "EOF in the head".into()));
        }
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if h == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| (false, format!("body: {e}")))?;
    Ok((status, close))
}

fn fresh_loop(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    while !stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("connect: {e}"));
                continue;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if let Err(e) = s.write_all(GET_CLOSE) {
            tally.fail(format!("write: {e}"));
            continue;
        }
        let mut r = BufReader::new(s);
        match read_response(&mut r) {
            Ok((200, _)) => tally.fresh_ok.fetch_add(1, Ordering::Relaxed),
            Ok((status, _)) => {
                tally.fail(format!("status {status}"));
                continue;
            }
            Err((_, e)) => {
                tally.fail(format!("fresh connection: {e}"));
                continue;
            }
        };
    }
}

fn keepalive_loop(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let connect = || {
        let s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(BufReader::new(s))
    };
    let mut conn = connect();
    let mut reused = false;
    while !stop.load(Ordering::Relaxed) {
        let Some(r) = conn.as_mut() else {
            tally.fail("keep-alive connect refused".into());
            conn = connect();
            reused = false;
            continue;
        };
        if r.get_mut().write_all(GET).is_err() && !reused {
            tally.fail("keep-alive write on a new connection".into());
        }
        match read_response(r) {
            Ok((200, close)) => {
                tally.keepalive_ok.fetch_add(1, Ordering::Relaxed);
                reused = true;
                if close {
                    conn = connect();
                    reused = false;
                }
            }
            Ok((status, _)) => {
                tally.fail(format!("keep-alive status {status}"));
                conn = connect();
                reused = false;
            }
            Err((nothing, e)) => {
                if reused && nothing {
                    tally.retried.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.fail(format!("keep-alive: {e}"));
                }
                conn = connect();
                reused = false;
            }
        }
    }
}

fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gracering-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("upgrade.sock")
}

fn start(path: &Path, from: bool) -> ChildServer {
    let p = path.to_str().unwrap();
    let mut args = vec![
        "--workers",
        "2",
        "--drain-delay",
        "0ms",
        "--upgrade-socket",
        p,
    ];
    if from {
        args.extend(["--upgrade-from", p]);
    }
    spawn_example("http", &args, |_| {})
}

#[test]
fn five_upgrades_under_load_lose_nothing() {
    let _serial = support::serial::serial();
    let path = socket_path("upgrade");
    let mut old = start(&path, false);
    let addr = old.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    for i in 0..6 {
        let (stop, tally) = (stop.clone(), tally.clone());
        load.push(thread::spawn(move || {
            if i < 4 {
                fresh_loop(addr, &stop, &tally)
            } else {
                keepalive_loop(addr, &stop, &tally)
            }
        }));
    }
    let started = Instant::now();
    thread::sleep(Duration::from_millis(500));
    for round in 1..=5 {
        let new = start(&path, true);
        assert_eq!(new.addr, addr, "round {round}: the same sockets");
        let (code, took) = old.wait_exit(Duration::from_secs(15));
        assert_eq!(
            code,
            Some(0),
            "round {round}: the old process: {:?}",
            old.stderr_lines()
        );
        assert!(
            old.wait_for_stderr("\"trigger\":\"upgrade\"", Duration::from_secs(2)),
            "{:?}",
            old.stderr_lines()
        );
        eprintln!("upgrade {round}: the old process exited 0 after {took:?}");
        old = new;
        thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    old.signal(libc::SIGTERM);
    let (code, _) = old.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let fresh = tally.fresh_ok.load(Ordering::Relaxed);
    let rate = fresh as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{fresh} new connections ({rate:.0}/s), {} keep-alive requests, {} retried on a \
         closing keep-alive connection, {} failed, in {elapsed:?}",
        tally.keepalive_ok.load(Ordering::Relaxed),
        tally.retried.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        tally.errors.lock().unwrap()
    );
    assert!(rate >= 2000.0, "only {rate:.0} new connections per second");
    assert!(tally.keepalive_ok.load(Ordering::Relaxed) > 1000);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let _serial = support::serial::serial();
    let path = socket_path("rollback");
    let mut old = start(&path, false);
    let p = path.to_str().unwrap();
    // Two sockets cannot serve three workers: the new process fails after taking them.
    let out = Command::new(example_path("http"))
        .args(["--workers", "3", "--upgrade-from", p, "--upgrade-socket", p])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = TcpStream::connect(old.addr).unwrap();
    s.write_all(GET_CLOSE).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "the old one still serves: {got}"
    );
    assert!(
        old.wait_for_stderr("rolled back", Duration::from_secs(5)),
        "{:?}",
        old.stderr_lines()
    );
    // And it still offers: the next upgrade works.
    let mut new = start(&path, true);
    let (code, _) = old.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    new.signal(libc::SIGTERM);
    assert_eq!(new.wait_exit(Duration::from_secs(10)).0, Some(0));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Only this user can ask for the listening sockets: the offer's socket file is 0600
/// (and the hand-over checks the peer's user too).
#[test]
fn another_user_cannot_take_the_sockets() {
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        support::skip::skip(
            "another_user_cannot_take_the_sockets",
            support::skip::Need::Root,
            "a child of another user is needed",
        );
        return;
    }
    let path = socket_path("others");
    let mut old = start(&path, false);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the upgrade socket's mode: {mode:o}");
    let script = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
        path.to_str().unwrap()
    );
    let out = std::os::unix::process::CommandExt::uid(
        Command::new("python3").args(["-c", &script]),
        65534,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nobody connected to the upgrade socket"
    );
    assert!(stderr.contains("PermissionError"), "{stderr}");
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_exit(Duration::from_secs(10)).0, Some(0));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
