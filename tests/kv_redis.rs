//! The kv example on its Redis store, end to end: a real `redis-server` of the test's
//! own (testkit's [`RedisServer`], a free loopback port, nothing saved), the example as
//! a child process, real sockets, real signals. 10,000 mixed operations compared with a
//! model; SIGTERM while hundreds of requests wait on a paused Redis, every one answered
//! before the server's Redis connections say `QUIT` (seen in Redis's own `MONITOR`);
//! Redis killed under load (503 at once, no spin, recovery after a restart on the same
//! port); Redis's error replies (409, 503, 502) and the per-request deadline (504), as
//! the teardown's per-worker counts tell them too.
//!
//! `redis-server` must be installed (`.ci/run` installs it): without it every test here
//! fails, saying so. Both backends: CI runs the suite once per backend
//! (`GRACERING_BACKEND`), which the example's Auto backend reads; each test checks the
//! backend the example reports is the one asked for.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use testkit::procstat;
use testkit::redis::{MonitorLine, RedisClient, RedisServer};

mod support;
use support::http1::{Client, kv_mixed_operations};
use support::observe::wait_server_read_all;
use support::serial::serial;
use support::{ChildServer, spawn_example, wait_until};

/// A Redis server of this test's own; a missing `redis-server` fails the test loudly.
fn redis() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| {
        panic!("the kv example's Redis tests need a redis-server (.ci/run installs it): {e}")
    })
}

/// The test's own connection to `redis`.
fn redis_client(redis: &RedisServer) -> RedisClient {
    redis
        .client()
        .unwrap_or_else(|e| panic!("connect to redis: {e}"))
}

/// The kv example on `redis`, two workers, with `args` on top; checks the backend it
/// runs is the one `GRACERING_BACKEND` asks for.
fn spawn_kv(redis: &RedisServer, args: &[&str]) -> ChildServer {
    let url = redis.url();
    let mut all = vec!["--workers", "2", "--store", url.as_str()];
    all.extend_from_slice(args);
    let server = spawn_example("kv", &all, |_| {});
    // Serving starts before the workers' connections to Redis are up (a request then
    // gets 503 at once): wait until all are, named (two per worker unless told).
    let per_worker: usize = args
        .iter()
        .position(|&a| a == "--redis-conns")
        .map_or(2, |i| args[i + 1].parse().unwrap());
    let mut r = redis_client(redis);
    let up = wait_until(Duration::from_secs(5), || {
        gracering_clients(&mut r).len() == 2 * per_worker
    });
    assert!(
        up,
        "the server's Redis connections: {:?}",
        gracering_clients(&mut r)
    );
    let want = match std::env::var("GRACERING_BACKEND").as_deref() {
        Ok("epoll") => Some("epoll backend; "),
        Ok("uring") => Some("io_uring backend; "),
        _ => None,
    };
    if let Some(want) = want {
        assert!(
            server.wait_for_stderr(want, Duration::from_secs(2)),
            "GRACERING_BACKEND asks for the {want:?}: {:?}",
            server.stderr_lines()
        );
    }
    server
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

/// The counts of the teardown lines `kv: worker N: redis: name=n ...`, summed over
/// the workers (one line per worker, every one there).
fn redis_counts(lines: &[String], workers: usize) -> HashMap<String, u64> {
    let mut sum = HashMap::new();
    let mut seen = 0;
    for line in lines {
        let Some((_, counts)) = line.split_once(": redis: ") else {
            continue;
        };
        seen += 1;
        for field in counts.split_whitespace() {
            let (name, n) = field.split_once('=').unwrap_or_else(|| panic!("{line}"));
            *sum.entry(name.to_string()).or_insert(0) += n.parse::<u64>().unwrap();
        }
    }
    assert_eq!(seen, workers, "one summary line per worker: {lines:?}");
    sum
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

/// The addresses of the server's connections (named `gracering-kv-wN-cK`), by name.
fn gracering_clients(redis: &mut RedisClient) -> HashMap<SocketAddr, String> {
    redis
        .client_list()
        .expect("CLIENT LIST")
        .into_iter()
        .filter(|c| c.name.starts_with("gracering-kv-"))
        .map(|c| (c.addr, c.name))
        .collect()
}

#[test]
fn routes_statuses_and_the_store_in_redis() {
    let redis = redis();
    let server = spawn_kv(&redis, &["--max-body", "1024"]);
    let mut c = Client::new(server.addr);
    let put = c.call("PUT", "/kv/alpha", b"one");
    assert_eq!((put.status, put.body.as_slice()), (201, &b"created"[..]));
    let put = c.call("PUT", "/kv/alpha", b"two");
    assert_eq!((put.status, put.body.as_slice()), (200, &b"replaced"[..]));
    let got = c.call("GET", "/kv/alpha", b"");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"two"[..]));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    let head = c.call("HEAD", "/kv/alpha", b"");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("3"))
    );
    let absent = c.call("GET", "/kv/absent", b"");
    assert_eq!(
        (absent.status, absent.body.as_slice()),
        (404, &b"no such key"[..])
    );
    assert_eq!(
        redis_client(&redis).get(b"alpha").unwrap(),
        Some(b"two".to_vec())
    );
    let del = c.call("DELETE", "/kv/alpha", b"");
    assert_eq!((del.status, del.body.as_slice()), (200, &b"deleted"[..]));
    assert_eq!(c.call("DELETE", "/kv/alpha", b"").status, 404);
    assert_eq!(c.call("PUT", "/kv/empty", b"").status, 201);
    assert_eq!(c.call("GET", "/kv/empty", b"").body, b"");
    // Binary values and keys Redis would have to quote.
    let value: Vec<u8> = (0..=255u8).collect();
    assert_eq!(c.call("PUT", "/kv/a%20b*c", &value).status, 201);
    assert_eq!(c.call("GET", "/kv/a%20b*c", b"").body, value);
    assert_eq!(
        redis_client(&redis).get(b"a%20b*c").unwrap(),
        Some(value.clone())
    );

    let post = c.call("POST", "/kv/alpha", b"x");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("get, head, put, delete"));
    let long = format!("/kv/{}", "k".repeat(257));
    assert_eq!(c.call("PUT", &long, b"x").status, 400);
    assert_eq!(c.call("GET", "/kv/", b"").status, 400, "empty key");
    assert_eq!(c.call("GET", "/kv/a/b", b"").status, 400, "two segments");
    assert_eq!(c.call("GET", "/healthz", b"").status, 200);
    assert_eq!(c.call("GET", "/readyz", b"").status, 200);
    assert_eq!(c.call("PUT", "/kv/big", &[7u8; 1025]).status, 413);
    drop(c);
    let lines = stop(server);
    let counts = redis_counts(&lines, 2);
    assert_eq!(counts["created"], 3, "{counts:?}");
    assert_eq!(counts["replaced"], 1, "{counts:?}");
    assert_eq!(counts["deleted"], 1, "{counts:?}");
    assert_eq!(counts["absent"], 2, "{counts:?}");
    assert_eq!(counts["value"], 4, "{counts:?}");
}

#[test]
fn bad_store_urls_exit_2() {
    for url in [
        "redis://localhost:6379",
        "redis://127.0.0.1",
        "redis://127.0.0.1:6379/0",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:0",
        "mysql",
    ] {
        let out = std::process::Command::new(support::example_path("kv"))
            .args(["--addr", "127.0.0.1:0", "--store", url])
            .output()
            .expect("run kv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("redis://IP:PORT"), "{url}: {stderr}");
    }
}

#[test]
fn ten_thousand_mixed_operations_match_a_model() {
    const THREADS: usize = 4;
    const OPS: usize = 2500;
    const KEYS: u64 = 50;
    let _serial = serial(); // loads both cores
    let redis = redis();
    let server = spawn_kv(&redis, &[]);
    let addr = server.addr;
    let models = kv_mixed_operations(addr, (THREADS, OPS, KEYS), 0x7265);
    let lines = stop(server);
    let counts = redis_counts(&lines, 2);
    let answers: u64 = ["value", "absent", "created", "replaced", "deleted"]
        .iter()
        .map(|k| counts[*k])
        .sum();
    assert_eq!(answers, (THREADS * OPS) as u64, "{counts:?}");
    for kind in [
        "wrongtype",
        "oom",
        "error",
        "unavailable",
        "busy",
        "late",
        "down",
    ] {
        assert_eq!(counts[kind], 0, "{kind}: {counts:?}");
    }
    // Redis holds what the models hold, and nothing else of these keys.
    let mut r = redis_client(&redis);
    for (t, model) in models.iter().enumerate() {
        for k in 0..KEYS {
            let key = format!("t{t}-{k}");
            assert_eq!(
                r.get(key.as_bytes()).unwrap().as_ref(),
                model.get(&key),
                "{key}"
            );
        }
    }
}

#[test]
fn sigterm_while_hundreds_of_requests_wait_on_a_paused_redis() {
    const WAITING: usize = 220;
    const PAUSE_MS: u64 = 2000;
    let _serial = serial();
    let redis = redis();
    // A linger long enough that the test, not the engine's clock, decides when the
    // clients' connections close (they close after every response was read).
    let server = spawn_kv(
        &redis,
        &[
            "--redis-timeout",
            "30s",
            "--linger",
            "10s",
            "--grace-period",
            "15s",
        ],
    );
    let mut c = Client::new(server.addr);
    assert_eq!(c.call("PUT", "/kv/held", b"the value").status, 201);
    drop(c);
    let mut r = redis_client(&redis);
    // Each worker's connections are named once up (CLIENT SETNAME, their first command).
    let mut ours = HashMap::new();
    wait_until(Duration::from_secs(5), || {
        ours = gracering_clients(&mut r);
        ours.len() == 4
    });
    let names: HashSet<&str> = ours.values().map(String::as_str).collect();
    let want: HashSet<&str> = [
        "gracering-kv-w0-c0",
        "gracering-kv-w0-c1",
        "gracering-kv-w1-c0",
        "gracering-kv-w1-c1",
    ]
    .into();
    assert_eq!(names, want, "the server's connections, by name");
    let monitor = redis.monitor().expect("MONITOR");

    // Redis runs no command of anyone for PAUSE_MS: the GETs wait in Redis.
    r.client_pause(PAUSE_MS).expect("CLIENT PAUSE");
    let paused = Instant::now();
    let mut waiting: Vec<Client> = (0..WAITING).map(|_| Client::new(server.addr)).collect();
    for c in &mut waiting {
        c.send("GET", "/kv/held", b"");
    }
    let streams: Vec<&TcpStream> = waiting.iter().map(|c| &c.w).collect();
    assert!(
        wait_server_read_all(&streams, Duration::from_secs(5)),
        "the server reads every GET"
    );
    for c in &waiting {
        assert!(!answered(&c.w), "a GET was answered while Redis was paused");
    }
    let sigterm_at = SystemTime::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_stderr("SIGTERM received", Duration::from_secs(5)));
    assert!(
        paused.elapsed() < Duration::from_millis(PAUSE_MS - 300),
        "the SIGTERM came {:?} into the {PAUSE_MS} ms pause: too late to test anything",
        paused.elapsed()
    );

    for (i, c) in waiting.iter_mut().enumerate() {
        let resp = c
            .read(false)
            .unwrap_or_else(|e| panic!("GET {i}: no answer: {e}"));
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, &b"the value"[..]),
            "GET {i}"
        );
        assert_eq!(resp.header("connection"), Some("close"), "GET {i}");
    }
    let last_response = SystemTime::now();
    // The server's last accepted connections close when these do (the linger waits for
    // the clients' FIN): only then may its Redis connections go.
    drop(waiting);
    let lines = exited(server);
    assert!(
        paused.elapsed() < Duration::from_secs(15),
        "exit within the grace period"
    );

    // What Redis ran, in its own order: every GET of the server's connections, then
    // their QUITs (all four), each after the client had its last response.
    assert!(
        wait_until(Duration::from_secs(2), || monitor
            .lines()
            .iter()
            .filter(|l| l.command() == "quit")
            .count()
            >= 4),
        "four QUITs: {:?}",
        monitor.lines()
    );
    let seen: Vec<MonitorLine> = monitor.stop();
    let from_server = |l: &&MonitorLine| l.addr().is_some_and(|a| ours.contains_key(&a));
    let server_lines: Vec<&MonitorLine> = seen.iter().filter(from_server).collect();
    let gets: Vec<usize> = (0..server_lines.len())
        .filter(|&i| server_lines[i].command() == "get")
        .collect();
    assert_eq!(gets.len(), WAITING, "each waiting GET ran once in Redis");
    let last_get = *gets.last().unwrap();
    let first_get_time = server_lines[gets[0]].system_time();
    assert!(
        first_get_time > sigterm_at,
        "the GETs ran after the SIGTERM (Redis was paused until then)"
    );
    let quits: Vec<usize> = (0..server_lines.len())
        .filter(|&i| server_lines[i].command() == "quit")
        .collect();
    assert_eq!(quits.len(), 4, "one QUIT per connection: {server_lines:?}");
    let quitters: HashSet<SocketAddr> = quits
        .iter()
        .map(|&i| server_lines[i].addr().unwrap())
        .collect();
    assert_eq!(quitters.len(), 4, "each connection said QUIT");
    assert!(
        quits[0] > last_get,
        "a QUIT came before the last GET in Redis's log"
    );
    // Redis stamps MONITOR lines with its wall clock (microseconds; the same clock as
    // SystemTime::now() here): the first QUIT ran after the client read the last
    // response. The margin is the clocks' granularity only: the QUITs are written after
    // the clients closed, which they did after `last_response` was taken.
    let first_quit = server_lines[quits[0]].system_time();
    assert!(
        first_quit >= last_response,
        "first QUIT at {first_quit:?}, last response at {last_response:?}"
    );
    assert!(
        !server_lines[last_get..]
            .iter()
            .any(|l| !matches!(l.command().as_str(), "get" | "quit")),
        "nothing else after the GETs: {:?}",
        &server_lines[last_get..]
    );

    assert!(
        wait_until(Duration::from_secs(2), || gracering_clients(&mut r)
            .is_empty()),
        "no gracering client left in CLIENT LIST: {:?}",
        gracering_clients(&mut r)
    );
    for k in 0..2 {
        for w in 0..2 {
            let closed = format!("kv: worker {w}: redis connection {k} closed");
            assert!(lines.iter().any(|l| l == &closed), "{closed}: {lines:?}");
        }
    }
    let counts = redis_counts(&lines, 2);
    assert_eq!(counts["value"], WAITING as u64, "{counts:?}");
}

/// One load request: when it was sent, how long its answer took, its status and body.
type Sample = (Instant, Duration, u16, Vec<u8>);

#[test]
fn redis_killed_under_load_answers_503_at_once_then_recovers() {
    const THREADS: usize = 4;
    let _serial = serial();
    let mut redis = redis();
    let server = spawn_kv(&redis, &[]);
    let addr = server.addr;
    let mut c = Client::new(addr);
    assert_eq!(c.call("PUT", "/kv/x", b"1").status, 201);

    let stop_load = AtomicBool::new(false);
    let killed_at: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let results: Vec<Vec<Sample>> = std::thread::scope(|s| {
        let load: Vec<_> = (0..THREADS)
            .map(|t| {
                let stop_load = &stop_load;
                s.spawn(move || {
                    let mut seen = Vec::new();
                    let mut c = Client::new(addr);
                    let mut i = 0u64;
                    while !stop_load.load(Ordering::Relaxed) && i < 1_000_000 {
                        i += 1;
                        let (method, body) = if i.is_multiple_of(2) {
                            ("GET", Vec::new())
                        } else {
                            ("PUT", format!("{t}-{i}").into_bytes())
                        };
                        let sent = Instant::now();
                        let resp = c
                            .try_call(method, &format!("/kv/load-{t}"), &body)
                            .unwrap_or_else(|e| panic!("{method} during the kill: {e}"));
                        seen.push((sent, sent.elapsed(), resp.status, resp.body));
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        redis.kill().expect("kill redis");
        *killed_at.lock().unwrap() = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        stop_load.store(true, Ordering::Relaxed);
        load.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let killed_at = killed_at.lock().unwrap().unwrap();
    let mut unavailable = 0;
    for (sent, took, status, body) in results.iter().flatten() {
        assert!(
            *took < Duration::from_secs(1),
            "a request took {took:?} (status {status})"
        );
        match status {
            200 | 201 => assert!(*sent < killed_at, "a 2xx sent after Redis was killed"),
            503 => {
                assert_eq!(body, b"redis unavailable");
                unavailable += 1;
            }
            other => panic!("status {other}: {:?}", String::from_utf8_lossy(body)),
        }
    }
    assert!(unavailable > 0, "no 503 after the kill");
    let before = results
        .iter()
        .flatten()
        .filter(|(sent, ..)| *sent < killed_at)
        .count();
    assert!(
        before > 20,
        "the load ran before the kill: {before} requests"
    );

    // Redis stays down: no spin in the server while its connections retry.
    let cpu0 = procstat::cpu_nanos(server.pid() as u32).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = Duration::from_nanos(procstat::cpu_nanos(server.pid() as u32).unwrap() - cpu0);
    let share = cpu.as_secs_f64() / t0.elapsed().as_secs_f64();
    assert!(
        share < 0.1,
        "the server used {cpu:?} of CPU in {:?} with Redis down",
        t0.elapsed()
    );
    for _ in 0..5 {
        let t = Instant::now();
        let resp = c.call("GET", "/kv/x", b"");
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (503, &b"redis unavailable"[..])
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // Readiness says so too, so that a balancer routes elsewhere.
    let ready = c.call("GET", "/readyz", b"");
    assert_eq!(
        (ready.status, ready.body.as_slice()),
        (503, &b"redis unavailable"[..])
    );

    // Back on the same port (empty: nothing was saved): the server reconnects by itself
    // (its back-off is at most 2 s).
    redis.restart().expect("restart redis");
    let restarted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || c
            .call("GET", "/kv/x", b"")
            .status
            == 404),
        "the server did not recover within 5 s of the restart"
    );
    eprintln!("recovered {:?} after the restart", restarted.elapsed());
    // Every connection of both workers is back (round-robin reaches all of them).
    assert!(
        wait_until(Duration::from_secs(5), || gracering_clients(
            &mut redis_client(&redis)
        )
        .len()
            == 4),
        "four connections back"
    );
    assert_eq!(c.call("GET", "/readyz", b"").status, 200);
    for i in 0..20 {
        assert_eq!(c.call("PUT", &format!("/kv/after-{i}"), b"v").status, 201);
        assert_eq!(c.call("GET", &format!("/kv/after-{i}"), b"").body, b"v");
    }
    drop(c);
    let lines = stop(server);
    let counts = redis_counts(&lines, 2);
    assert_eq!(
        counts["down"], 4,
        "each connection went down once: {counts:?}"
    );
    assert!(counts["unavailable"] >= unavailable + 5, "{counts:?}");
}

#[test]
fn redis_error_replies_409_503_502_and_the_counts() {
    let redis = redis();
    let server = spawn_kv(&redis, &[]);
    let mut c = Client::new(server.addr);
    let mut r = redis_client(&redis);

    // A key holding a list: WRONGTYPE for GET and for SET ... GET.
    assert_eq!(
        r.cmd(&[b"LPUSH", b"list", b"a"]).unwrap().ok().unwrap(),
        testkit::redis::Reply::Integer(1)
    );
    let got = c.call("GET", "/kv/list", b"");
    assert_eq!(got.status, 409, "{got:?}");
    assert!(got.body.starts_with(b"WRONGTYPE"), "{got:?}");
    assert_eq!(c.call("PUT", "/kv/list", b"x").status, 409);
    assert_eq!(
        c.call("DELETE", "/kv/list", b"").status,
        200,
        "DEL takes any type"
    );

    // No memory for writes: OOM on SET, reads still fine.
    assert_eq!(c.call("PUT", "/kv/kept", b"v").status, 201);
    r.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"1"])
        .unwrap()
        .ok()
        .unwrap();
    let oom = c.call("PUT", "/kv/new", b"v");
    assert_eq!(
        (oom.status, oom.body.as_slice()),
        (503, &b"redis out of memory"[..])
    );
    assert_eq!(c.call("GET", "/kv/kept", b"").body, b"v");
    r.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"0"])
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(c.call("PUT", "/kv/new", b"v").status, 201);

    // Any other error reply: 502 with Redis's message (GET taken from the user).
    r.cmd(&[b"ACL", b"SETUSER", b"default", b"-get"])
        .unwrap()
        .ok()
        .unwrap();
    let denied = c.call("GET", "/kv/kept", b"");
    r.cmd(&[b"ACL", b"SETUSER", b"default", b"+get"])
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(denied.status, 502, "{denied:?}");
    assert!(denied.body.starts_with(b"NOPERM"), "{denied:?}");
    assert_eq!(c.call("GET", "/kv/kept", b"").body, b"v");
    drop(c);

    let lines = stop(server);
    let counts = redis_counts(&lines, 2);
    assert_eq!(
        (counts["wrongtype"], counts["oom"], counts["error"]),
        (2, 1, 1),
        "{counts:?}"
    );
    for (what, n) in [("WRONGTYPE", 1), ("OOM", 1), ("NOPERM", 1)] {
        let logged = lines.iter().filter(|l| l.contains(what)).count();
        assert_eq!(logged, n, "{what} logged once: {lines:?}");
    }
}

#[test]
fn a_reply_later_than_the_deadline_is_504_and_counted_late() {
    let redis = redis();
    let server = spawn_kv(&redis, &["--redis-timeout", "300ms"]);
    let mut c = Client::new(server.addr);
    assert_eq!(c.call("PUT", "/kv/k", b"v").status, 201);
    let mut r = redis_client(&redis);
    r.client_pause(1500).expect("CLIENT PAUSE");
    let t = Instant::now();
    let late = c.call("GET", "/kv/k", b"");
    let took = t.elapsed();
    assert_eq!(late.status, 504, "{late:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    // Wait the pause out (a command of ours waits for it too), then the connection and
    // its FIFO are still in step: each answer goes to its own request.
    r.ping().expect("PING after the pause");
    assert_eq!(c.call("PUT", "/kv/k2", b"v2").status, 201);
    assert_eq!(c.call("GET", "/kv/k2", b"").body, b"v2");
    assert_eq!(c.call("GET", "/kv/k", b"").body, b"v");
    let mut other = Client::new(server.addr);
    for _ in 0..4 {
        assert_eq!(other.call("GET", "/kv/k", b"").body, b"v");
    }
    drop((c, other));
    let lines = stop(server);
    let counts = redis_counts(&lines, 2);
    assert_eq!(counts["late"], 1, "{counts:?}");
    assert_eq!(
        counts["value"], 7,
        "the late answer is a value too: {counts:?}"
    );
}

#[test]
fn a_full_connection_answers_503_redis_busy() {
    const REQUESTS: usize = 8;
    let redis = redis();
    // One connection per worker, one request in flight on each: two in all.
    let server = spawn_kv(&redis, &["--redis-conns", "1", "--redis-max-inflight", "1"]);
    let mut c = Client::new(server.addr);
    assert_eq!(c.call("PUT", "/kv/k", b"v").status, 201);
    drop(c);
    let mut r = redis_client(&redis);
    r.client_pause(1000).expect("CLIENT PAUSE");
    let mut clients: Vec<Client> = (0..REQUESTS).map(|_| Client::new(server.addr)).collect();
    for c in &mut clients {
        c.send("GET", "/kv/k", b"");
    }
    let (mut busy, mut ok) = (0, 0);
    for c in &mut clients {
        let resp = c.read(false).expect("an answer");
        match (resp.status, resp.body.as_slice()) {
            (503, b"redis busy") => busy += 1,
            (200, b"v") => ok += 1,
            _ => panic!("{resp:?}"),
        }
    }
    assert!(
        (1..=2).contains(&ok),
        "at most one waiting per worker: {ok} answered 200"
    );
    assert_eq!(busy + ok, REQUESTS);
    drop(clients);
    let lines = stop(server);
    let counts = redis_counts(&lines, 2);
    assert_eq!(counts["busy"], busy as u64, "{counts:?}");
}
