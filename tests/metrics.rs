//! `/metrics` end to end: the http and kv examples as child processes, known traffic,
//! and the exposition text read by a real Prometheus parser (Python's
//! `prometheus_client`, which `.ci/run` installs), whose figures must agree with what
//! the test did; then a `/metrics` request on a kept-alive connection during the drain.

mod support;

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gracering::{Conn, Handler, Metrics, Server};
use support::http1::{Resp, read_response};
use support::observe::wait_server_read;
use support::skip::{Need, skip};
use support::{ChildServer, connect, round_trip, spawn_example, wait_until};

/// Parses the text on stdin with prometheus_client and prints one line per family
/// (`F`, name, type) and per sample (`S`, name, labels as k=v joined by commas, value).
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    print("F\t%s\t%s" % (f.name, f.type))
    for s in f.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("S\t%s\t%s\t%r" % (s.name, labels, s.value))
"#;

/// Whether `python3` can import prometheus_client; else the test is skipped (on CI it
/// fails: `.ci/run` installs it).
fn have_parser(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            Need::PrometheusClient,
            "python3 -c 'import prometheus_client' failed (pip install prometheus-client)",
        );
    }
    ok
}

/// The parsed exposition: family types and samples.
#[derive(Debug, Default)]
struct Parsed {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Parsed {
    /// The samples of `name` whose labels include every pair of `with`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .map(|(_, labels, v)| (labels, *v))
    }

    /// The sum of the matching samples.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|(_, v)| v).sum()
    }

    /// The one matching sample's value.
    fn one(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self.matching(name, with).map(|(_, v)| v).collect();
        assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
        found[0]
    }

    /// The `worker` labels of `name`'s samples.
    fn workers(&self, name: &str) -> Vec<String> {
        let mut w: Vec<String> = self
            .matching(name, &[])
            .filter_map(|(l, _)| l.get("worker").cloned())
            .collect();
        w.sort();
        w.dedup();
        w
    }
}

/// Runs the real parser over `text`.
fn parse(text: &str) -> Parsed {
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parsed = Parsed::default();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "F" => {
                parsed.types.insert(f[1].into(), f[2].into());
            }
            "S" => {
                let labels = f[2]
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                parsed
                    .samples
                    .push((f[1].into(), labels, f[3].parse().unwrap()));
            }
            _ => panic!("unexpected parser output {line}"),
        }
    }
    parsed
}

/// A kept-alive client that counts what it wrote and read.
struct Client {
    s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(server: &ChildServer) -> Client {
        let s = connect(server.addr);
        let r = BufReader::new(s.try_clone().unwrap());
        Client { s, r }
    }

    /// Sends `raw`, adding its length to `written`.
    fn send(&mut self, raw: &str, written: &mut u64) {
        self.s.write_all(raw.as_bytes()).unwrap();
        *written += raw.len() as u64;
    }

    fn get(&mut self, path: &str, written: &mut u64) -> Resp {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"), written);
        read_response(&mut self.r).unwrap()
    }
}

/// Fetches /metrics on `c` and parses it; checks the response's content type.
fn scrape(c: &mut Client, written: &mut u64) -> (Resp, Parsed) {
    let resp = c.get("/metrics", written);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let parsed = parse(std::str::from_utf8(&resp.body).unwrap());
    (resp, parsed)
}

/// Waits for the server to exit; it must exit 0 (a clean drain).
fn exits_cleanly(mut server: ChildServer) {
    let (code, _) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "stderr: {:?}", server.stderr_lines());
}

#[test]
fn http_metrics_agree_with_the_traffic_and_answer_during_the_drain() {
    if !have_parser("http_metrics_agree_with_the_traffic_and_answer_during_the_drain") {
        return;
    }
    let server = spawn_example("http", &["--workers", "2"], |_| {});
    let mut written = 0u64; // every byte the test sends, on every connection
    let mut m = Client::new(&server);
    let mut scrapes = 0u64; // /metrics requests answered so far (each a 200)
    let (_, first) = scrape(&mut m, &mut written);
    scrapes += 1;
    assert_eq!(
        first.workers("gracering_connections_accepted_total"),
        ["0", "1"]
    );
    assert_eq!(first.sum("gracering_draining", &[]), 0.0);

    // Known traffic: 5 connections with 3 x 200, 2 x 404 and 1 x 400 each, closed by
    // the client; one malformed request (400), closed by the server.
    for _ in 0..5 {
        let mut c = Client::new(&server);
        for _ in 0..3 {
            assert_eq!(c.get("/", &mut written).status, 200);
        }
        for _ in 0..2 {
            assert_eq!(c.get("/nope", &mut written).status, 404);
        }
        assert_eq!(c.get("/slow?ms=x", &mut written).status, 400);
    }
    let mut bad = Client::new(&server);
    bad.send("GET / HTTP/1.1\r\nno colon here\r\n\r\n", &mut written);
    assert_eq!(read_response(&mut bad.r).unwrap().status, 400);
    let mut rest = Vec::new();
    let _ = bad.r.read_to_end(&mut rest); // the server closes it
    drop(bad);

    // The closes reach the server asynchronously: scrape until all six are counted.
    let start = Instant::now();
    let (resp, p) = loop {
        let before = written;
        let (resp, p) = scrape(&mut m, &mut written);
        let current = written - before;
        scrapes += 1;
        if p.sum("gracering_connections_closed_total", &[]) >= 6.0
            || start.elapsed() > Duration::from_secs(10)
        {
            // What the server had read before this request (its own bytes are counted
            // in the turn that serves it, published at that turn's end).
            assert_eq!(
                p.sum("gracering_received_bytes_total", &[]),
                (written - current) as f64,
                "bytes received"
            );
            break (resp, p);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        p.types
            .get("gracering_connections_accepted")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        p.types
            .get("gracering_connections_active")
            .map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        p.types
            .get("gracering_http_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    for family in [
        "gracering_connections_accepted_total",
        "gracering_connections_active",
        "gracering_sent_bytes_total",
        "gracering_accept_backoffs_total",
        "gracering_recv_enobufs_total",
        "gracering_mailbox_depth",
        "gracering_outbound_connections",
        "gracering_draining",
        "gracering_drain_connections_total",
        "gracering_connections_closed_total",
        "gracering_http_request_duration_seconds_count",
    ] {
        assert_eq!(p.workers(family), ["0", "1"], "{family}");
    }
    assert_eq!(p.sum("gracering_connections_accepted_total", &[]), 7.0);
    assert_eq!(p.sum("gracering_connections_active", &[]), 1.0);
    assert_eq!(p.sum("gracering_connections_closed_total", &[]), 6.0);
    let closed = |reason| p.sum("gracering_connections_closed_total", &[("reason", reason)]);
    assert_eq!(closed("peer_closed"), 5.0);
    assert_eq!(closed("handler"), 1.0);
    assert_eq!(p.sum("gracering_accept_backoffs_total", &[]), 0.0);
    assert_eq!(p.sum("gracering_recv_enobufs_total", &[]), 0.0);
    assert_eq!(p.sum("gracering_mailbox_depth", &[]), 0.0);
    assert_eq!(p.sum("gracering_outbound_connections", &[]), 0.0);
    assert_eq!(p.sum("gracering_draining", &[]), 0.0);
    assert_eq!(p.sum("gracering_drain_connections_total", &[]), 0.0);
    // Sent: every response the test read, but perhaps not yet the last one's send
    // completion (the client can read a response before the server reaps its send).
    let sent = p.sum("gracering_sent_bytes_total", &[]);
    assert!(sent > 0.0, "{sent}");
    // By status: this scrape is counted once it is written, so not in itself.
    let code = |c| p.sum("gracering_http_requests_total", &[("code", c)]);
    let before_this = scrapes - 1;
    assert_eq!(code("200"), (15 + before_this) as f64);
    assert_eq!(code("404"), 10.0);
    assert_eq!(code("400"), 6.0);
    let requests = p.sum("gracering_http_requests_total", &[]);
    assert_eq!(requests, (31 + before_this) as f64);
    let name = "gracering_http_request_duration_seconds";
    assert_eq!(p.sum(&format!("{name}_count"), &[]), requests);
    assert_eq!(
        p.sum(&format!("{name}_bucket"), &[("le", "+Inf")]),
        requests
    );
    for w in ["0", "1"] {
        // Each worker's histogram counts exactly its own responses.
        assert_eq!(
            p.one(&format!("{name}_count"), &[("worker", w)]),
            p.sum("gracering_http_requests_total", &[("worker", w)]),
            "worker {w}"
        );
    }
    assert!(resp.header("connection").is_none(), "{resp:?}");

    // The drain: a slow request with a /metrics request pipelined behind it on the
    // kept-alive connection, then SIGTERM. The slow one holds the drain in its
    // draining phase; the /metrics request behind it is answered there.
    m.send(
        "GET /slow?ms=1000 HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        &mut written,
    );
    assert!(wait_server_read(&m.s, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(50));
    server.signal(libc::SIGTERM);
    let slow = read_response(&mut m.r).unwrap();
    assert_eq!((slow.status, slow.body.as_slice()), (200, &b"slow"[..]));
    let resp = read_response(&mut m.r).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("connection"), Some("close"));
    let p = parse(std::str::from_utf8(&resp.body).unwrap());
    for w in ["0", "1"] {
        assert_eq!(
            p.one("gracering_draining", &[("worker", w)]),
            1.0,
            "worker {w}"
        );
        assert_eq!(
            p.one(
                "gracering_drain_phase",
                &[("worker", w), ("phase", "running")]
            ),
            0.0
        );
        // Both got past stopping the accept (no readiness delay: no time not ready).
        assert_eq!(
            p.matching(
                "gracering_drain_phase_seconds",
                &[("worker", w), ("phase", "stopping_accept")]
            )
            .count(),
            1,
            "worker {w}"
        );
    }
    // The worker serving this request is still draining its connections (this one),
    // for about as long as the slow request had left.
    let draining = p.sum("gracering_drain_phase", &[("phase", "draining")]);
    assert!(draining >= 1.0, "no worker in its draining phase");
    let in_draining = p.sum("gracering_drain_phase_seconds", &[("phase", "draining")]);
    assert!(in_draining > 0.5, "{in_draining}");
    assert_eq!(
        p.sum("gracering_drain_connections_total", &[("outcome", "cut")]),
        0.0
    );
    let mut rest = Vec::new();
    let _ = m.r.read_to_end(&mut rest);
    assert!(rest.is_empty());
    exits_cleanly(server);
}

/// A folder of its own under the temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("gracering-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn kv_on_sqlite_metrics_agree_and_answer_during_the_readiness_delay() {
    if !have_parser("kv_on_sqlite_metrics_agree_and_answer_during_the_readiness_delay") {
        return;
    }
    let dir = TempDir::new();
    let db = dir.0.join("kv.db");
    let server = spawn_example(
        "kv",
        &[
            "--workers",
            "2",
            "--db",
            db.to_str().unwrap(),
            "--drain-delay",
            "2s",
        ],
        |_| {},
    );
    let mut written = 0u64;
    let mut m = Client::new(&server);
    let mut c = Client::new(&server);
    let mut exchange = |c: &mut Client, method: &str, path: &str, body: &str| {
        c.send(
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            &mut written,
        );
        read_response(&mut c.r).unwrap().status
    };
    assert_eq!(exchange(&mut c, "PUT", "/kv/a", "1"), 201);
    assert_eq!(exchange(&mut c, "PUT", "/kv/a", "22"), 200);
    assert_eq!(exchange(&mut c, "GET", "/kv/a", ""), 200);
    assert_eq!(exchange(&mut c, "GET", "/kv/zz", ""), 404);
    assert_eq!(exchange(&mut c, "DELETE", "/kv/a", ""), 200);
    assert_eq!(exchange(&mut c, "GET", "/kv/", ""), 400);
    assert_eq!(exchange(&mut c, "POST", "/kv/a", ""), 405);
    // A worker publishes its figures at the end of each turn: the scrape's own accept,
    // and the last answers, may show one turn later. Scrape until they are all in.
    // Each earlier scrape is a 200 of its own in the figures of the next.
    let mut p = scrape(&mut m, &mut written).1;
    let mut scrapes = 0.0;
    for _ in 0..50 {
        let name = "gracering_http_request_duration_seconds_count";
        if p.sum("gracering_connections_accepted_total", &[]) == 2.0
            && p.sum(name, &[]) >= 7.0 + scrapes
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        p = scrape(&mut m, &mut written).1;
        scrapes += 1.0;
    }
    let code = |c| p.sum("gracering_http_requests_total", &[("code", c)]);
    assert_eq!(code("201"), 1.0);
    assert_eq!(code("200"), 3.0 + scrapes);
    assert_eq!(code("404"), 1.0);
    assert_eq!(code("400"), 1.0);
    assert_eq!(code("405"), 1.0);
    let name = "gracering_http_request_duration_seconds";
    assert_eq!(p.sum(&format!("{name}_count"), &[]), 7.0 + scrapes);
    // Five of them waited for a database thread's answer, in a later loop turn.
    assert!(p.sum(&format!("{name}_sum"), &[]) > 0.0);
    assert_eq!(p.sum("gracering_mailbox_messages_total", &[]), 5.0);
    assert_eq!(p.sum("gracering_mailbox_depth", &[]), 0.0);
    assert_eq!(p.sum("gracering_connections_accepted_total", &[]), 2.0);
    assert_eq!(p.sum("gracering_connections_active", &[]), 2.0);
    assert!(p.sum("gracering_received_bytes_total", &[]) > 0.0);
    assert!(p.sum("gracering_sent_bytes_total", &[]) > 0.0);
    assert_eq!(p.workers("gracering_draining"), ["0", "1"]);
    assert_eq!(p.sum("gracering_draining", &[]), 0.0);

    // SIGTERM: for the 2 s readiness delay every worker still accepts and serves.
    // Scrape on fresh connections until every worker shows its drain begun, then on
    // the kept-alive one.
    server.signal(libc::SIGTERM);
    let start = Instant::now();
    loop {
        let mut fresh = Client::new(&server);
        let mut ignored = 0;
        // (Right after the signal, its worker may not have seen the drain yet.)
        let (_, p) = scrape(&mut fresh, &mut ignored);
        if p.sum("gracering_draining", &[]) == 2.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "the workers did not show their drain"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (resp, p) = scrape(&mut m, &mut written);
    assert_eq!(resp.header("connection"), Some("close"));
    for w in ["0", "1"] {
        assert_eq!(p.one("gracering_draining", &[("worker", w)]), 1.0);
        assert_eq!(
            p.one(
                "gracering_drain_phase",
                &[("worker", w), ("phase", "not_ready")]
            ),
            1.0
        );
        let not_ready = p.one(
            "gracering_drain_phase_seconds",
            &[("worker", w), ("phase", "not_ready")],
        );
        assert!(not_ready > 0.0 && not_ready < 2.0, "{not_ready}");
    }
    drop(c);
    exits_cleanly(server);
}

struct Echo;

impl Handler for Echo {
    type State = ();
    type Message = ();
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.write(data);
        data.len()
    }
}

#[test]
fn the_api_reads_every_workers_counters_while_serving_and_after() {
    fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .handle_signals(false)
        .bind()
        .unwrap();
    let metrics = server.metrics();
    shareable(&metrics);
    let (handle, addr) = (server.shutdown_handle(), server.local_addr());
    let from_factory = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Metrics>::new()));
    let kept = from_factory.clone();
    let run = std::thread::spawn(move || {
        server.run(move |worker| {
            kept.lock().unwrap().push(worker.metrics());
            Echo
        })
    });
    let total =
        |f: fn(&gracering::WorkerMetrics) -> u64| -> u64 { metrics.snapshot().iter().map(f).sum() };
    assert_eq!(metrics.snapshot().len(), 2);
    let mut s = connect(addr);
    assert_eq!(round_trip(&mut s, b"hello").unwrap(), b"hello");
    assert!(wait_until(Duration::from_secs(5), || {
        total(|w| w.stats.bytes_in) == 5 && total(|w| w.stats.bytes_out) == 5
    }));
    assert_eq!(total(|w| w.stats.accepted), 1);
    assert_eq!(total(|w| w.active), 1);
    assert!(
        metrics
            .snapshot()
            .iter()
            .all(|w| !w.draining && w.phase == "running")
    );
    drop(s);
    assert!(wait_until(Duration::from_secs(5), || total(|w| w
        .stats
        .closed)
        == 1));
    assert_eq!(total(|w| w.stats.closed_by.peer_closed), 1);
    assert_eq!(total(|w| w.active), 0);
    // The factory's handles read the same figures.
    let theirs = from_factory.lock().unwrap()[0].snapshot();
    assert_eq!(theirs.iter().map(|w| w.stats.accepted).sum::<u64>(), 1);
    handle.shutdown();
    let report = run.join().unwrap().unwrap();
    let after = metrics.snapshot();
    for (w, r) in after.iter().zip(&report.workers) {
        assert_eq!(w.stats, r.stats, "worker {}", w.worker);
        assert!(w.draining && w.phase == "done", "{w:?}");
        assert_eq!(
            w.drain.finished_after.is_some(),
            r.drain.finished_after.is_some()
        );
        let phases: Vec<&str> = w.phase_durations.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            phases,
            ["not_ready", "stopping_accept", "draining", "teardown"]
        );
    }
    let text = metrics.render();
    assert!(
        text.contains("gracering_drain_phase{worker=\"1\",phase=\"done\"} 1\n"),
        "{text}"
    );
}
