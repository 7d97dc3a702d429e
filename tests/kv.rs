//! The kv example end to end: a child server on a real SQLite file in a folder of its
//! own under the temporary directory, real sockets, real signals. The routes and their
//! statuses; 10,000 mixed operations from several clients compared with a model; a
//! locked database (held by a test connection) answering 503 or 504; SIGTERM while
//! hundreds of writes wait on the database lock, every one answered and still there
//! after a restart, with the file intact. Both backends: CI runs the suite once per
//! backend (`GRACERING_BACKEND`), which the example's Auto backend reads.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;

mod support;
use support::http1::{Client, kv_mixed_operations};
use support::observe::wait_server_read;
use support::serial::serial;
use support::{ChildServer, connect, spawn_example};

/// A folder of its own under the temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gracering-kv-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("kv.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kv example on `db`, two workers, with `args` on top.
fn spawn_kv(db: &Path, args: &[&str]) -> ChildServer {
    let db = db.to_str().expect("a UTF-8 temporary path");
    let mut all = vec!["--workers", "2", "--db", db];
    all.extend_from_slice(args);
    spawn_example("kv", &all, |_| {})
}

/// SIGTERM, then the exit code, which must be 0; returns the server's stderr.
fn stop(server: ChildServer) -> Vec<String> {
    server.signal(libc::SIGTERM);
    exited(server)
}

/// Waits for a server already told to stop; its exit code must be 0. Returns its stderr.
fn exited(mut server: ChildServer) -> Vec<String> {
    let (code, _) = server.wait_exit(Duration::from_secs(20));
    let lines = server.stderr_lines();
    assert_eq!(code, Some(0), "stderr: {lines:?}");
    lines
}

/// Every row of the database file, read by a connection of the test's own.
fn table(db: &Path) -> HashMap<String, Vec<u8>> {
    let conn = Connection::open(db).unwrap();
    let mut rows = conn.prepare("SELECT k, v FROM kv").unwrap();
    rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn integrity(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// A test connection holding the database's write lock until dropped (rolled back).
fn hold_write_lock(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

/// Whether a response (any byte) waits on `s`, without reading it.
fn answered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let got = s.peek(&mut [0u8; 1]);
    s.set_nonblocking(false).unwrap();
    match got {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek: {e}"),
    }
}

#[test]
fn routes_statuses_and_bad_input() {
    let dir = TempDir::new();
    let server = spawn_kv(&dir.db(), &["--max-body", "1024"]);
    let mut c = Client::new(server.addr);
    let put = c.call("PUT", "/kv/alpha", b"one");
    assert_eq!((put.status, put.body.as_slice()), (201, &b"created"[..]));
    assert_eq!(c.call("PUT", "/kv/alpha", b"two").status, 200, "replaced");
    let got = c.call("GET", "/kv/alpha", b"");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"two"[..]));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    let head = c.call("HEAD", "/kv/alpha", b"");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("3"))
    );
    assert_eq!(c.call("GET", "/kv/absent", b"").status, 404);
    assert_eq!(c.call("DELETE", "/kv/alpha", b"").status, 200);
    assert_eq!(c.call("DELETE", "/kv/alpha", b"").status, 404);
    assert_eq!(c.call("GET", "/kv/alpha", b"").status, 404);
    // An empty value is a value.
    assert_eq!(c.call("PUT", "/kv/empty", b"").status, 201);
    assert_eq!(c.call("GET", "/kv/empty", b"").body, b"");

    let post = c.call("POST", "/kv/alpha", b"x");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("get, head, put, delete"));
    assert_eq!(c.call("DELETE", "/healthz", b"").status, 405);
    let long = format!("/kv/{}", "k".repeat(257));
    let too_long = c.call("PUT", &long, b"x");
    assert_eq!(
        (too_long.status, too_long.body.as_slice()),
        (400, &b"key longer than 256 bytes"[..])
    );
    let longest = format!("/kv/{}", "é".repeat(128)); // 256 bytes of UTF-8
    assert_eq!(c.call("PUT", &longest, b"x").status, 201);
    assert_eq!(c.call("GET", &longest, b"").body, b"x");
    assert_eq!(c.call("GET", "/kv/", b"").status, 400, "empty key");
    assert_eq!(c.call("GET", "/kv/a/b", b"").status, 400, "two segments");
    assert_eq!(c.call("GET", "/elsewhere", b"").status, 404);
    assert_eq!(c.call("GET", "/healthz", b"").status, 200);
    assert_eq!(c.call("GET", "/readyz", b"").status, 200);
    let big = c.call("PUT", "/kv/big", &[7u8; 1025]);
    assert_eq!(big.status, 413, "over --max-body");

    // A target that is not UTF-8: the HTTP layer refuses it.
    let mut raw = connect(server.addr);
    raw.write_all(b"GET /kv/\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let lines = stop(server);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("database closed (checkpoint ok)")),
        "{lines:?}"
    );
    assert_eq!(integrity(&dir.db()), "ok");
    let rows = table(&dir.db());
    assert_eq!(
        rows.len(),
        2,
        "empty and the 256-byte key: {:?}",
        rows.keys()
    );
}

#[test]
fn ten_thousand_mixed_operations_match_a_model() {
    const THREADS: usize = 4;
    const OPS: usize = 2500;
    const KEYS: u64 = 40;
    let _serial = serial(); // loads both cores
    let dir = TempDir::new();
    let server = spawn_kv(&dir.db(), &[]);
    let addr = server.addr;
    let models = kv_mixed_operations(addr, (THREADS, OPS, KEYS), 0x6b76);
    stop(server);
    let mut want: HashMap<String, Vec<u8>> = HashMap::new();
    for model in models {
        want.extend(model);
    }
    let rows = table(&dir.db());
    assert_eq!(rows.len(), want.len());
    assert!(rows == want, "the file holds what the model holds");
    assert_eq!(integrity(&dir.db()), "ok");
}

#[test]
fn a_locked_database_answers_503_and_a_slow_one_504() {
    let _serial = serial();
    let dir = TempDir::new();
    let server = spawn_kv(
        &dir.db(),
        &["--busy-timeout", "200ms", "--db-timeout", "10s"],
    );
    let mut c = Client::new(server.addr);
    assert_eq!(c.call("PUT", "/kv/a", b"before").status, 201);
    let lock = hold_write_lock(&dir.db());
    for _ in 0..2 {
        let busy = c.call("PUT", "/kv/a", b"during");
        assert_eq!(
            (busy.status, busy.body.as_slice()),
            (503, &b"database busy"[..])
        );
    }
    // WAL: readers do not wait for the writer.
    assert_eq!(c.call("GET", "/kv/a", b"").body, b"before");
    drop(lock);
    assert_eq!(c.call("PUT", "/kv/a", b"after").status, 200);
    let lines = stop(server);
    let logged = lines.iter().filter(|l| l.contains("database busy")).count();
    assert_eq!(logged, 1, "logged once: {lines:?}");

    // The database answers later than --db-timeout: 504, and the server is not stuck.
    let server = spawn_kv(
        &dir.db(),
        &["--busy-timeout", "5s", "--db-timeout", "300ms"],
    );
    let mut c = Client::new(server.addr);
    let lock = hold_write_lock(&dir.db());
    assert_eq!(c.call("PUT", "/kv/a", b"late").status, 504);
    assert_eq!(c.call("GET", "/kv/a", b"").body, b"after");
    drop(lock);
    stop(server);
    assert_eq!(integrity(&dir.db()), "ok");
}

#[test]
fn sigterm_while_hundreds_of_writes_wait_on_the_database() {
    const WAITING: usize = 220;
    let _serial = serial();
    let dir = TempDir::new();
    let args = [
        "--busy-timeout",
        "30s",
        "--db-timeout",
        "30s",
        "--drain-delay",
        "1s",
    ];
    let server = spawn_kv(&dir.db(), &args);
    let mut c = Client::new(server.addr);
    for i in 0..20 {
        assert_eq!(
            c.call("PUT", &format!("/kv/before-{i}"), b"early").status,
            201
        );
    }
    drop(c);

    // The writes wait in SQLite's busy handler, behind a lock the test holds.
    let lock = hold_write_lock(&dir.db());
    let mut waiting: Vec<Client> = (0..WAITING).map(|_| Client::new(server.addr)).collect();
    for (i, c) in waiting.iter_mut().enumerate() {
        c.send(
            "PUT",
            &format!("/kv/during-{i}"),
            format!("value {i}").as_bytes(),
        );
    }
    for c in &waiting {
        assert!(
            wait_server_read(&c.w, Duration::from_secs(10)),
            "the server reads every PUT"
        );
    }
    for c in &waiting {
        assert!(
            !answered(&c.w),
            "a PUT was answered while the lock was held"
        );
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_stderr("SIGTERM received", Duration::from_secs(5)));
    // Readiness fails while the writes still wait (accepting goes on for the delay).
    let ready = Client::new(server.addr).call("GET", "/readyz", b"");
    assert_eq!(ready.status, 503, "{ready:?}");
    drop(lock);

    for (i, c) in waiting.iter_mut().enumerate() {
        let resp = c
            .read(false)
            .unwrap_or_else(|e| panic!("PUT during-{i}: no answer: {e}"));
        assert_eq!(resp.status, 201, "PUT during-{i}: {resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "PUT during-{i}");
    }
    // The drain is under way already: a second SIGTERM would force it (and cut the
    // connections still lingering for these clients' FIN). Close them; wait for the exit.
    drop(waiting);
    let lines = exited(server);
    let closed = lines
        .iter()
        .position(|l| l.contains("database closed (checkpoint ok)"));
    assert!(closed.is_some(), "{lines:?}");

    // Restarted on the same file: every acknowledged write is there.
    let server = spawn_kv(&dir.db(), &[]);
    let mut c = Client::new(server.addr);
    for i in 0..20 {
        assert_eq!(
            c.call("GET", &format!("/kv/before-{i}"), b"").body,
            b"early"
        );
    }
    for i in 0..WAITING {
        let got = c.call("GET", &format!("/kv/during-{i}"), b"");
        assert_eq!(
            (got.status, got.body),
            (200, format!("value {i}").into_bytes())
        );
    }
    drop(c);
    stop(server);
    assert_eq!(integrity(&dir.db()), "ok");
    assert_eq!(table(&dir.db()).len(), 20 + WAITING);
}
