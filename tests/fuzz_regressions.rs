//! Regression tests for what the fuzz targets (fuzz/) found, each named after the
//! finding, on the in-memory backend. Both findings so far were in the HTTP layer as it
//! was when the fuzzing began: a head was re-parsed by httparse on every read, whole or
//! not. Since 3793cf2 (issue 13 item 4) httparse runs once the head is complete and
//! within `max_head`, and both tests pass; they fail on the layer before that commit.

use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
use gracering::sim::Sim;

/// Answers 200 to everything.
struct Ok200;

impl Service for Ok200 {
    type Message = ();
    fn call(&mut self, _: &Request<'_>, res: &mut Response<'_>) {
        res.text(Status::OK, "ok");
    }
}

/// The status line the server answers `pieces` with, sent one after another.
fn status_line(pieces: &[&[u8]]) -> String {
    status_line_with(HttpConfig::default(), pieces)
}

/// [`status_line`] with `config`.
fn status_line_with(config: HttpConfig, pieces: &[&[u8]]) -> String {
    let mut sim = Sim::new(Http::new(config, Ok200));
    let peer = sim.connect();
    for piece in pieces {
        sim.send(peer, piece);
        sim.run_until_idle();
    }
    let got = sim.take_received(peer);
    let line = got.split(|&b| b == b'\r').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

/// fuzz target http_head: a request line claiming another HTTP version was answered
/// 505 when it arrived whole, but 400 when httparse saw the version only in part
/// (`HTTP/2.`, then `1`): the answer depended on how the bytes were split. The version
/// check (`claims_other_version` in src/http/parse.rs) looked at whatever part of the
/// request line had arrived when httparse reported `Error::Version` (it reports it as
/// soon as a byte cannot be a 1.x version, before the line is complete). Now httparse
/// sees only complete heads.
#[test]
fn another_version_gets_the_same_status_in_any_split() {
    let wire = b"GET / HTTP/2.1\r\nHost: a\r\n\r\n";
    let whole = status_line(&[wire]);
    assert_eq!(whole, "HTTP/1.1 505 HTTP Version Not Supported");
    for cut in 1..wire.len() {
        let (a, b) = wire.split_at(cut);
        assert_eq!(status_line(&[a, b]), whole, "split after {cut} bytes");
    }
}

/// fuzz target http_head: a head longer than `max_head` whose first malformed byte lies
/// past the limit was answered 400 when that byte arrived in the same read as the bytes
/// over the limit, and 431 when the bytes over the limit arrived first: `Http::on_data`
/// (src/http/mod.rs) mapped an httparse error to its status before it looked at the
/// size. Now the head's end is looked for within `max_head` bytes only, and httparse
/// never sees a head over the limit: 431 in any split.
#[test]
fn an_oversized_head_gets_the_same_status_in_any_split() {
    let config = HttpConfig::default().max_head(300);
    let mut wire = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    wire.resize(310, b'a');
    let bad_at = wire.len();
    wire.extend_from_slice(b"\x04\r\n\r\n"); // a control byte in a field value: malformed
    let whole = status_line_with(config.clone(), &[&wire]);
    let (over_the_limit, rest) = wire.split_at(bad_at);
    let split = status_line_with(config, &[over_the_limit, rest]);
    assert_eq!(whole, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(
        split, whole,
        "the same bytes, the malformed one in a later read"
    );
}
