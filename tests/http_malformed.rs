//! Malformed and smuggling-style requests, one table: each row is the raw bytes of one
//! connection, the status the server must answer with, and the connection's end, which
//! must be an orderly close (FIN; a reset would show as ECONNRESET on the read to EOF).
//! A well-formed request on another connection is answered 200 between the rows and
//! after them. Runs on the backend `GRACERING_BACKEND` names, like every end-to-end test.
//!
//! What the rows pin down (see the module docs of `gracering::http`): framing that could
//! be read two ways is 400 (Content-Length with Transfer-Encoding, differing lengths,
//! chunked not last); a transfer coding other than chunked 501; lines end in CRLF
//! everywhere, a bare LF or bare CR is 400, in the head and in chunked framing alike;
//! HTTP/2 and later 505; a head over `max_head` (request line included: there is no
//! separate 414) or over 100 fields 431; a body over `max_body` 413; a request that
//! stalls 408.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::Duration;

use gracering::Server;
use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
use support::connect;
use support::http1::read_response;

/// `/echo` answers with the body; anything else with "method target".
struct Echo;

impl Service for Echo {
    type Message = ();
    fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
        match req.path() {
            "/echo" => res.send(Status::OK, &[], req.body()),
            _ => res.text(Status::OK, &format!("{} {}", req.method(), req.target())),
        }
    }
}

const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: u64 = 1000;

fn serve() -> SocketAddr {
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .handle_signals(false)
        .bind()
        .unwrap();
    let addr = server.local_addr();
    let config = HttpConfig::default()
        .max_head(MAX_HEAD)
        .max_body(MAX_BODY)
        .header_timeout(Duration::from_millis(300))
        .body_timeout(Duration::from_millis(300));
    thread::spawn(move || server.run(|_| Http::new(config.clone(), Echo)));
    addr
}

/// How a row's client ends its side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Keeps the connection open and waits for the answer.
    Wait,
    /// Shuts down its write side (FIN) after the bytes.
    HalfClose,
}

const GET: &str = "GET / HTTP/1.1\r\nHost: h\r\n";
const POST: &str = "POST /echo HTTP/1.1\r\nHost: h\r\n";
const CHUNKED: &str = "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";

/// A row's status when the server closes without answering.
const NONE: u16 = 0;

/// One row: what it tests, the bytes, the expected status, how the client ends.
struct Row {
    what: &'static str,
    raw: Vec<u8>,
    status: u16,
    then: Then,
}

fn row(what: &'static str, raw: impl AsRef<[u8]>, status: u16) -> Row {
    Row {
        what,
        raw: raw.as_ref().to_vec(),
        status,
        then: Then::Wait,
    }
}

fn head(extra: &str) -> String {
    format!("{GET}{extra}\r\n")
}

fn post(fields: &str, body: &str) -> String {
    format!("{POST}{fields}\r\n{body}")
}

fn chunked(body: &str) -> String {
    format!("{CHUNKED}{body}")
}

#[rustfmt::skip]
fn table() -> Vec<Row> {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(MAX_HEAD));
    let long_field = head(&format!("X-Long: {}\r\n", "b".repeat(MAX_HEAD)));
    let many_fields = head(&"X-F: 1\r\n".repeat(101));
    vec![
        // Content-Length and Transfer-Encoding: framing read two ways.
        row("CL then TE", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 400),
        row("TE then CL", post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"), 400),
        row("TE with CL 0", post("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", "0\r\n\r\n"), 400),
        row("two differing CL fields", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), 400),
        row("a CL list that differs", post("Content-Length: 5, 6\r\n", "hello!"), 400),
        row("CL with a plus sign", post("Content-Length: +5\r\n", "hello"), 400),
        row("CL negative", post("Content-Length: -5\r\n", "hello"), 400),
        row("CL in hex", post("Content-Length: 0x5\r\n", "hello"), 400),
        row("CL with a space inside", post("Content-Length: 5 5\r\n", "hello"), 400),
        row("CL with a letter", post("Content-Length: 5a\r\n", "hello"), 400),
        row("CL in exponent form", post("Content-Length: 1e1\r\n", "hello"), 400),
        row("CL empty", post("Content-Length:\r\n", "hello"), 400),
        row("CL a lone comma", post("Content-Length: ,\r\n", "hello"), 400),
        row("CL too large to count", post("Content-Length: 99999999999999999999999\r\n", ""), 413),
        row("CL over max_body", post("Content-Length: 1001\r\n", ""), 413),
        // Transfer-Encoding: chunked must be the last (and only) coding.
        row("TE chunked then gzip", post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), 400),
        row("TE chunked twice in a list", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), 400),
        row("TE chunked in two fields", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 400),
        row("TE gzip", post("Transfer-Encoding: gzip\r\n", ""), 501),
        row("TE gzip then chunked", post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), 501),
        row("TE gzip field then chunked field", post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 501),
        row("TE identity", post("Transfer-Encoding: identity\r\n", ""), 501),
        row("TE xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), 501),
        row("TE chunkedx", post("Transfer-Encoding: chunkedx\r\n", "0\r\n\r\n"), 501),
        row("TE chunked with a parameter", post("Transfer-Encoding: chunked;q=1\r\n", "0\r\n\r\n"), 501),
        row("TE quoted", post("Transfer-Encoding: \"chunked\"\r\n", "0\r\n\r\n"), 501),
        row("TE with a vertical tab", post("Transfer-Encoding: \x0bchunked\r\n", "0\r\n\r\n"), 400),
        row("TE empty", post("Transfer-Encoding:\r\n", ""), 400),
        row("TE a lone comma", post("Transfer-Encoding: ,\r\n", ""), 400),
        row("TE in HTTP/1.0", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        // Not Transfer-Encoding at all: no body, and what follows is not executed.
        row("TE name with an underscore", post("Transfer_Encoding: chunked\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"), 200),
        // Accepted spellings, for contrast (RFC 9110: codings are case-insensitive,
        // whitespace around list members and empty members are ignored).
        row("TE in capitals (accepted)", post("Transfer-Encoding: CHUNKED\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"), 200),
        row("TE after a tab (accepted)", post("Transfer-Encoding:\tchunked\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"), 200),
        row("TE `chunked ,` (accepted)", post("Transfer-Encoding: chunked ,\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"), 200),
        // Field syntax.
        row("obs-fold", head("X-A: a\r\n folded\r\n"), 400),
        row("obs-fold with a tab", head("X-A: a\r\n\tfolded\r\n"), 400),
        row("a line starting with a space before the first field", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400),
        row("space before the colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        row("tab before the colon", "GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", 400),
        row("CL with space before the colon", post("Content-Length : 5\r\n", "hello"), 400),
        row("a field name with a space", head("X A: b\r\n"), 400),
        row("a field name with @", head("X@A: b\r\n"), 400),
        row("a field name with parentheses", head("X(A): b\r\n"), 400),
        row("a field name with a slash", head("X/A: b\r\n"), 400),
        row("an empty field name", head(": b\r\n"), 400),
        row("a field without a colon", head("X-A b\r\n"), 400),
        row("NUL in a value", head("X-A: a\0b\r\n"), 400),
        row("CR in a value", head("X-A: a\rb\r\n"), 400),
        row("DEL in a value", head("X-A: a\x7fb\r\n"), 400),
        row("a control byte in a value", head("X-A: a\x01b\r\n"), 400),
        row("a NUL in a field name", head("X\0A: b\r\n"), 400),
        // Line ends: CRLF only.
        row("bare LF ending the request line", "GET / HTTP/1.1\nHost: h\r\n\r\n", 400),
        row("bare LF ending a field", "GET / HTTP/1.1\r\nHost: h\n\r\n", 400),
        row("bare LF ending the head", "GET / HTTP/1.1\r\nHost: h\r\n\n", 400),
        row("bare LF everywhere", "GET / HTTP/1.1\nHost: h\n\n", 400),
        row("bare LF hiding a CL", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nContent-Length: 3\r\n\r\nabc", 400),
        row("a bare LF before the request line", "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("bare CR ending a field", "GET / HTTP/1.1\r\nHost: h\rX-A: b\r\n\r\n", 400),
        row("bare CR ending the request line", "GET / HTTP/1.1\rHost: h\r\n\r\n", 400),
        row("CR CR LF", "GET / HTTP/1.1\r\r\nHost: h\r\n\r\n", 400),
        // The request line.
        row("two spaces after the method", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("a space in the target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("a control byte in the target", "GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("no version", "GET /\r\nHost: h\r\n\r\n", 400),
        row("a lower-case version", "GET / http/1.1\r\nHost: h\r\n\r\n", 400),
        row("version 1.2", "GET / HTTP/1.2\r\nHost: h\r\n\r\n", 400),
        row("version 11", "GET / HTTP/11\r\nHost: h\r\n\r\n", 400),
        row("a space after the version", "GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400),
        row("version 2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        row("version 3", "GET / HTTP/3\r\nHost: h\r\n\r\n", 505),
        row("version 0.9", "GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505),
        row("the HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        row("a method with a parenthesis", "G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("no method", " / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("a TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        row("binary junk", b"\x00\x01\x02\x03\r\n\r\n", 400),
        // Targets that do not fit the method.
        row("no leading slash", "GET nopath HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("asterisk with GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("CONNECT to a path", "CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("absolute form without a host", "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("absolute form with a query and no path", "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        row("absolute form of another scheme", "GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        // Host.
        row("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400),
        row("two Hosts", head("Host: i\r\n"), 400),
        row("two Hosts in HTTP/1.0", "GET / HTTP/1.0\r\nHost: h\r\nHost: i\r\n\r\n", 400),
        row("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        row("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", 400),
        row("Host with a path", "GET / HTTP/1.1\r\nHost: h/p\r\n\r\n", 400),
        // Expectations.
        row("an unknown expectation", post("Content-Length: 1\r\nExpect: teapot\r\n", "x"), 417),
        // Sizes.
        row("a request line over max_head", long_target, 431),
        row("a field over max_head", long_field, 431),
        row("101 fields", many_fields, 431),
        // Chunked framing.
        row("chunk size in junk hex", chunked("zz\r\n"), 400),
        row("chunk size overflowing 64 bits", chunked("11111111111111111\r\n"), 400),
        row("chunk size negative", chunked("-5\r\nhello\r\n0\r\n\r\n"), 400),
        row("chunk size with 0x", chunked("0x5\r\nhello\r\n0\r\n\r\n"), 400),
        row("chunk size after a space", chunked(" 5\r\nhello\r\n0\r\n\r\n"), 400),
        row("chunk size missing", chunked("\r\nhello\r\n0\r\n\r\n"), 400),
        row("chunk size ended by a bare LF", chunked("5\nhello\r\n0\r\n\r\n"), 400),
        row("chunk size ended by a bare CR", chunked("5\rhello\r\n0\r\n\r\n"), 400),
        row("chunk extension ended by a bare LF", chunked("5;a=b\nhello\r\n0\r\n\r\n"), 400),
        row("chunk extension with a control byte", chunked("5;a=\x01\r\nhello\r\n0\r\n\r\n"), 400),
        row("chunk data longer than its size", chunked("5\r\nhelloXX\r\n0\r\n\r\n"), 400),
        row("chunk data without its CRLF", chunked("5\r\nhello0\r\n\r\n"), 400),
        row("chunk data ended by a bare LF", chunked("5\r\nhello\n0\r\n\r\n"), 400),
        row("last chunk ended by a bare LF", chunked("5\r\nhello\r\n0\r\n\n"), 400),
        row("a trailer ended by a bare LF", chunked("0\r\nX-T: 1\n\r\n"), 400),
        row("a chunk over max_body", chunked("3e9\r\n"), 413),
        row("chunks adding up over max_body", chunked(&format!("3e8\r\n{}\r\n3e8\r\n", "c".repeat(1000))), 413),
        row("no final CRLF", chunked("5\r\nhello\r\n0\r\n"), 408),
        row("a trailer section that never ends", chunked("0\r\nX-T: 1\r\n"), 408),
        // An incomplete request and the client's FIN: nothing to answer; closed in order.
        Row {
            what: "no final CRLF, then the client's FIN",
            raw: chunked("5\r\nhello\r\n0\r\n").into_bytes(),
            status: NONE,
            then: Then::HalfClose,
        },
        Row {
            what: "a body shorter than its CL, then the client's FIN",
            raw: post("Content-Length: 10\r\n", "hello").into_bytes(),
            status: NONE,
            then: Then::HalfClose,
        },
        row("a head that stops", "GET / HTTP/1.1\r\nHost: h\r\nX-A: b", 408),
        row("a body that stops", post("Content-Length: 10\r\n", "hello"), 408),
    ]
}

/// Sends one row on a fresh connection; returns the status and whether the connection
/// then ended in order (EOF, no reset).
fn run(addr: SocketAddr, row: &Row) -> (u16, Result<(), String>) {
    let mut s = connect(addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    // The server may answer and stop reading before the last bytes of a long row.
    let _ = s.write_all(&row.raw);
    if row.then == Then::HalfClose {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let resp = match read_response(&mut r) {
        Ok(resp) => resp,
        // A clean end before any byte of a response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return (NONE, Ok(())),
        Err(e) => return (NONE, Err(format!("no response: {e}"))),
    };
    if resp.header("connection") != Some("close") {
        return (
            resp.status,
            Err(format!("no `connection: close`: {resp:?}")),
        );
    }
    let mut rest = Vec::new();
    let end = match r.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(()),
        Ok(_) => Err(format!("{} bytes after the response", rest.len())),
        Err(e) => Err(format!("not an orderly close: {e}")),
    };
    (resp.status, end)
}

#[test]
fn malformed_and_smuggling_style_requests_get_their_status_and_an_orderly_close() {
    let addr = serve();
    let table = table();
    assert!(table.len() >= 60, "{} rows", table.len());
    let bystander = connect(addr);
    let mut bystander_r = BufReader::new(bystander.try_clone().unwrap());
    let mut bystander_w = bystander;
    let mut ask = |i: usize| {
        write!(bystander_w, "GET /bystander{i} HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let resp = read_response(&mut bystander_r).expect("the bystander is answered");
        assert_eq!(
            (resp.status, resp.body),
            (200, format!("GET /bystander{i}").into_bytes())
        );
    };
    let mut failures = Vec::new();
    for (i, row) in table.iter().enumerate() {
        let (status, end) = run(addr, row);
        if status != row.status || end.is_err() {
            failures.push(format!(
                "{}: status {status} (expected {}), end {end:?}",
                row.what, row.status
            ));
        }
        if i % 10 == 0 {
            ask(i);
        }
    }
    ask(table.len());
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The accepted rows' contrast: the same shapes, well formed, are served.
#[test]
fn the_well_formed_shapes_are_served() {
    let addr = serve();
    for raw in [
        format!("{GET}Connection: close\r\n\r\n"),
        post(
            "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n",
            "hello",
        ),
        post(
            "Transfer-Encoding: chunked\r\nConnection: close\r\n",
            "5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        ),
        "\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_string(),
        "GET http://h/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_string(),
        "OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_string(),
        "GET / HTTP/1.0\r\n\r\n".to_string(),
    ] {
        let row = row("well formed", raw.as_bytes(), 200);
        let (status, end) = run(addr, &row);
        assert_eq!(status, 200, "{raw:?}");
        assert!(end.is_ok(), "{raw:?}: {end:?}");
    }
}
