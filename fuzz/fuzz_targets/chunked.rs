//! The chunked body decoder (src/http/chunked.rs) fed arbitrary bytes in arbitrary
//! pieces.
//!
//! Input: a seed byte and a shape byte (how to split, and the body limit), then the wire
//! bytes. Checks:
//! - decoding in one piece and in the pieces the input chooses gives the same body, the
//!   same number of bytes used and the same completion, or the same error status;
//! - the body never exceeds the limit, and the decoder never uses more than it was given;
//! - the wire bytes taken as a body, chunk-encoded (chunk sizes, extensions and a trailer
//!   chosen by the input), decode back to exactly those bytes, in any pieces.
#![no_main]

use gracering::fuzzing::ChunkedDecoder;
use gracering::http::Status;
use gracering_fuzz::{Rng, pieces};
use libfuzzer_sys::fuzz_target;

/// What decoding produced: the body, the bytes used and whether it completed; or the
/// error status.
type Outcome = Result<(Vec<u8>, usize, bool), u16>;

fn decode(parts: &[&[u8]], max_body: u64) -> Outcome {
    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut used = 0;
    for part in parts {
        let result: Result<(usize, bool), Status> = decoder.feed(part, &mut body, max_body);
        let (n, done) = result.map_err(|status| status.0)?;
        assert!(n <= part.len(), "used {n} of a {}-byte piece", part.len());
        assert!(body.len() as u64 <= max_body, "the body is over its limit");
        used += n;
        if done {
            return Ok((body, used, true));
        }
        assert_eq!(n, part.len(), "stopped early without completing");
    }
    Ok((body, used, false))
}

/// `body` chunk-encoded, with chunk sizes, extensions and a trailer chosen by `rng`.
fn encode(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rng.upto(300).min(rest.len()));
        match rng.next_u32() % 4 {
            0 => wire.extend_from_slice(format!("{:X}", chunk.len()).as_bytes()),
            1 => wire.extend_from_slice(format!("{:x};ext=\"v\"", chunk.len()).as_bytes()),
            2 => wire.extend_from_slice(format!("{:04x} ;a", chunk.len()).as_bytes()),
            _ => wire.extend_from_slice(format!("{:x}", chunk.len()).as_bytes()),
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
        rest = tail;
    }
    wire.extend_from_slice(b"0\r\n");
    if rng.next_u32().is_multiple_of(2) {
        wire.extend_from_slice(b"Trailer-Field: value\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&[seed, shape], wire)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_body = if shape & 0x80 != 0 {
        u64::from(shape & 0x7f) * 8
    } else {
        1 << 20
    };
    let whole = decode(&[wire], max_body);
    let split = decode(&pieces(wire, seed, shape), max_body);
    assert_eq!(whole, split, "one piece and pieces disagree");

    let mut rng = Rng::new(u32::from(seed) | u32::from(shape) << 8);
    let encoded = encode(wire, &mut rng);
    let expected: Outcome = Ok((wire.to_vec(), encoded.len(), true));
    let round_trip = decode(&pieces(&encoded, seed.rotate_left(3), shape), 1 << 20);
    assert_eq!(round_trip, expected, "an encoded body does not decode back");
});
