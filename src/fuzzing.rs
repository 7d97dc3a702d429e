//! Entry points for the fuzz targets under `fuzz/` (cargo feature `fuzzing`): thin
//! wrappers over crate-private parsers, so that a target drives exactly the code the
//! server runs. Not part of the API: hidden from the docs, and may change at any time.
//!
//! The HTTP head checks need no wrapper: the targets drive them through the real
//! handler ([`crate::http::Http`]) on the in-memory backend (`gracering::sim`).

use crate::http::Status;
use crate::http::chunked::Chunked;

/// The chunked body decoder the HTTP layer uses (`Transfer-Encoding: chunked`, RFC 9112
/// 7.1), fed in whatever pieces the caller likes.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder(Chunked);

impl Default for ChunkedDecoder {
    fn default() -> ChunkedDecoder {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder(Chunked::new())
    }

    /// Decodes from `input`, appending chunk data to `body` (at most `max_body` bytes in
    /// all): how many input bytes were used and whether the body is complete, or the
    /// status the server answers a malformed or oversized body with.
    pub fn feed(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: u64,
    ) -> Result<(usize, bool), Status> {
        self.0.feed(input, body, max_body)
    }
}
