//! The log lines, end to end: the examples' logger and its `RUST_LOG` levels, the start
//! line, one line per drain phase and worker, one summary, nothing per request; and the
//! logger's reading of `RUST_LOG`.

mod support;

#[allow(dead_code)]
#[path = "../examples/common/logger.rs"]
mod logger;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use log::LevelFilter;
use logger::Filter;
use support::http1::read_response;
use support::serial::serial;
use support::*;

const WORKERS: usize = 2;

/// `requests` HTTP requests to the server: nine in ten on ten keep-alive connections,
/// the rest on a connection each. Returns the keep-alive connections, left open (idle).
fn load(server: &ChildServer, requests: usize) -> Vec<TcpStream> {
    let one_shot = requests / 10;
    let kept = requests - one_shot;
    let mut conns: Vec<(TcpStream, BufReader<TcpStream>)> = (0..10)
        .map(|_| {
            let s = connect(server.addr);
            let r = BufReader::new(s.try_clone().unwrap());
            (s, r)
        })
        .collect();
    for i in 0..kept {
        let (w, r) = &mut conns[i % 10];
        w.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(r).unwrap().status, 200, "request {i}");
    }
    for i in 0..one_shot {
        let mut s = connect(server.addr);
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_response(&mut r).unwrap().status, 200, "one-shot {i}");
    }
    conns.into_iter().map(|(s, _)| s).collect()
}

/// Runs the http example with `RUST_LOG` as given (unset: `None`), sends 1,000 requests,
/// stops it with SIGTERM and returns its stderr and its drain report.
fn run_http(rust_log: Option<&str>) -> (Vec<String>, String) {
    let workers = WORKERS.to_string();
    let mut server = spawn_example("http", &["--workers", &workers], |cmd| {
        match rust_log {
            Some(v) => cmd.env("RUST_LOG", v),
            None => cmd.env_remove("RUST_LOG"),
        };
    });
    let idle = load(&server, 1_000);
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(10));
    let report = server.drain_report();
    assert_eq!(code, Some(0), "{:?}", server.stderr_lines());
    // Each worker's `"accepted":N`, added up.
    let accepted: f64 = report
        .split("\"accepted\":")
        .skip(1)
        .map(|rest| json_number(&format!("\"n\":{rest}"), "n"))
        .sum();
    assert_eq!(accepted, 110.0, "{report}");
    drop(idle);
    (server.stderr_lines(), report)
}

#[test]
fn at_warn_the_info_lines_are_gone_and_the_json_report_stays() {
    let _serial = serial();
    let (lines, report) = run_http(Some("warn"));
    assert!(report.starts_with("{\"drain\":{"), "{report}");
    for line in &lines {
        assert!(
            !line.starts_with("INFO ") && !line.starts_with("DEBUG "),
            "below warn: {line:?} in {lines:?}"
        );
    }
    // What may remain is a warning (the fallback to epoll, on a kernel without
    // io_uring) and the report; a clean drain warns of nothing else.
    let others: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("{\"drain\"") && !l.contains("using the epoll backend"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

#[test]
fn by_default_one_start_line_one_line_per_drain_phase_one_summary_nothing_per_request() {
    let _serial = serial();
    let (lines, report) = run_http(None);
    let matching =
        |needle: &str| -> Vec<&String> { lines.iter().filter(|l| l.contains(needle)).collect() };
    // The start line: the backend, the workers, the address, what the kernel offers.
    let start = matching("INFO gracering::server: ");
    assert_eq!(start.len(), 1, "{lines:?}");
    let start = start[0];
    let workers = format!("; {WORKERS} workers on 127.0.0.1:");
    assert!(start.contains(&workers), "{start}");
    if report.contains("\"backend\":\"io_uring\"") {
        assert!(start.contains("io_uring backend; "), "{start}");
        for feature in [
            "Linux ",
            "setup=",
            "ext_arg",
            "buf_ring",
            "multishot_accept",
        ] {
            assert!(start.contains(feature), "{feature:?} missing: {start}");
        }
        assert!(start.contains("multishot_recv") || start.contains("single recv"));
        assert!(start.contains("msg_ring"), "{start}");
    } else {
        assert!(start.contains("epoll backend; "), "{start}");
        assert!(
            start.contains("io_uring not used") || start.contains("io_uring unavailable"),
            "why not io_uring: {start}"
        );
    }
    // One line per drain phase and worker, in the phases' order.
    let phases = [
        "SIGTERM received, draining",
        "accept stopped (",
        "last connection closed (",
        "backend released (",
    ];
    for w in 0..WORKERS {
        let mut at = Vec::new();
        for phase in phases {
            let needle = format!("INFO gracering::drain: worker {w}: {phase}");
            let found: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains(&needle))
                .collect();
            assert_eq!(found.len(), 1, "{needle:?} in {lines:?}");
            at.push(found[0]);
        }
        assert!(
            at.is_sorted(),
            "worker {w}'s phases out of order: {lines:?}"
        );
    }
    // One summary, before the report, saying how the drain went.
    let summary = matching("INFO gracering::drain: drain done: ");
    assert_eq!(summary.len(), 1, "{lines:?}");
    let summary = summary[0];
    assert!(
        summary.contains("SIGTERM, ") && summary.contains(" 0 aborted, not forced"),
        "{summary}"
    );
    let idle = format!("{} idle", json_number(&report, "closed_idle"));
    assert!(summary.contains(&idle), "{summary} vs {report}");
    assert_eq!(lines.last(), Some(&report), "the report is the last line");
    // And nothing else: 1,000 requests on 110 connections wrote no line of their own.
    let expected = 1 + WORKERS * phases.len() + 1 + 1;
    let fallback = matching("using the epoll backend").len();
    assert_eq!(lines.len(), expected + fallback, "{lines:#?}");
}

#[test]
fn rust_log_reads_a_default_level_and_target_pairs() {
    let (f, bad) = Filter::parse("");
    assert!(bad.is_empty());
    assert_eq!(f.default, LevelFilter::Info, "info unless given");
    assert_eq!(f.level("gracering::drain"), LevelFilter::Info);

    let (f, bad) = Filter::parse("warn,gracering::drain=info");
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(f.level("gracering::server"), LevelFilter::Warn);
    assert_eq!(f.level("gracering::drain"), LevelFilter::Info);
    assert_eq!(f.level("gracering::drain::sub"), LevelFilter::Info);
    assert_eq!(
        f.level("gracering::drainage"),
        LevelFilter::Warn,
        "whole segments only"
    );
    assert_eq!(f.max(), LevelFilter::Info);

    // The longest matching target decides; case does not matter; `off` silences.
    let (f, bad) = Filter::parse(" gracering=DEBUG , gracering::sys=off,error ");
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(f.default, LevelFilter::Error);
    assert_eq!(f.level("gracering::worker"), LevelFilter::Debug);
    assert_eq!(f.level("gracering::sys::uring"), LevelFilter::Off);
    assert_eq!(f.level("gracering"), LevelFilter::Debug);
    assert_eq!(f.level("kv"), LevelFilter::Error);
    assert_eq!(f.max(), LevelFilter::Debug);

    // Every level name; a bare target means all of its levels; the last default wins.
    for (name, level) in [
        ("off", LevelFilter::Off),
        ("error", LevelFilter::Error),
        ("warn", LevelFilter::Warn),
        ("info", LevelFilter::Info),
        ("debug", LevelFilter::Debug),
        ("trace", LevelFilter::Trace),
    ] {
        assert_eq!(Filter::parse(name).0.default, level, "{name}");
    }
    let (f, _) = Filter::parse("gracering::drain,warn,off");
    assert_eq!(f.level("gracering::drain"), LevelFilter::Trace);
    assert_eq!(f.default, LevelFilter::Off);
    // Of two directives for one target, the later one.
    let (f, _) = Filter::parse("x=debug,x=warn");
    assert_eq!(f.level("x"), LevelFilter::Warn);

    // What it cannot read is reported, and the rest still applies.
    let (f, bad) = Filter::parse("warn,gracering=loud,=info,not a target");
    assert_eq!(bad, ["gracering=loud", "=info", "not a target"]);
    assert_eq!(f.default, LevelFilter::Warn);
    assert!(f.targets.is_empty());
}
