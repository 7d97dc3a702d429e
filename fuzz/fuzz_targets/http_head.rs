//! The HTTP layer's request head checks (httparse, then src/http/parse.rs) and body
//! framing, fed arbitrary bytes in arbitrary pieces through the real handler
//! (`gracering::http::Http`) on the in-memory backend.
//!
//! Input: a seed byte and a shape byte (how to split; bit 3: the peer sends FIN after
//! its bytes; bit 4: a small `max_head`), then the bytes the client sends. The same bytes
//! are sent once in one piece and once in the pieces the input chooses, each piece
//! followed by a run until idle; the server's output (with its `Date` values masked)
//! and whether the client saw EOF must be identical, after the bytes, after the header
//! timeout, and after a drain. Every response must be well formed and start with
//! `HTTP/1.1 `, and the drain must end.
#![no_main]

use std::fmt::Write;
use std::time::Duration;

use gracering::Builder;
use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
use gracering::sim::Sim;
use gracering_fuzz::{pieces, responses};
use libfuzzer_sys::fuzz_target;

/// Answers every request with a description of what the layer parsed, so that a
/// difference in parsing shows in the response bytes.
struct Describe;

impl Service for Describe {
    type Message = ();

    fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{:?} {:?} 1.{}",
            req.method(),
            req.target(),
            req.minor_version()
        );
        for (name, value) in req.headers() {
            let _ = writeln!(text, "{name:?}: {:?}", String::from_utf8_lossy(value));
        }
        let _ = write!(text, "body {} bytes: ", req.body().len());
        let mut body = text.into_bytes();
        body.extend_from_slice(req.body());
        let head: &[(&str, &[u8])] = if req.method() == "HEAD" {
            &[("x-head", b"1")]
        } else {
            &[]
        };
        res.send(Status::OK, head, &body);
    }
}

/// What the client saw: the responses (dates masked, interim 100 Continue left out: the
/// layer sends one only when the body did not come with the head, which depends on the
/// split) and whether it read EOF, at each of the three checkpoints.
type Seen = Vec<(Vec<Vec<u8>>, bool)>;

fn run(parts: &[&[u8]], fin: bool, config: &HttpConfig) -> Seen {
    let builder = Builder::new().grace_period(Duration::from_secs(5));
    let mut sim = Sim::with_config(Http::new(config.clone(), Describe), &builder);
    let peer = sim.connect();
    sim.run_until_idle();
    for part in parts {
        sim.send(peer, part);
        sim.run_until_idle();
    }
    if fin {
        sim.shutdown_write(peer);
    }
    sim.run_until_idle();
    let mut seen = Vec::new();
    let mut checkpoint = |sim: &mut Sim<Http<Describe>>| {
        let got = sim.take_received(peer);
        let final_responses = responses(&got)
            .into_iter()
            .filter(|&(status, _)| status != 100)
            .map(|(_, bytes)| bytes)
            .collect();
        seen.push((final_responses, sim.saw_eof(peer)));
    };
    checkpoint(&mut sim);
    sim.advance(Duration::from_secs(11)); // past the header timeout (10 s)
    sim.run_until_idle();
    checkpoint(&mut sim);
    sim.signal(libc::SIGTERM);
    for _ in 0..100 {
        if sim.is_done() {
            break;
        }
        sim.run_until_idle();
        sim.advance(Duration::from_millis(100));
    }
    assert!(
        sim.is_done(),
        "the drain did not end within 10 s (grace 5 s)"
    );
    checkpoint(&mut sim);
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&[seed, shape], wire)) = data.split_first_chunk::<2>() else {
        return;
    };
    let fin = shape & 0x08 != 0;
    let mut config = HttpConfig::default();
    if shape & 0x10 != 0 {
        config = config.max_head(300).max_body(100);
    }
    let whole = run(&[wire], fin, &config);
    let split = run(&pieces(wire, seed, shape), fin, &config);
    assert_eq!(whole, split, "one piece and pieces disagree");
});
