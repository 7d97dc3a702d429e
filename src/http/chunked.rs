//! An incremental, strict decoder for `Transfer-Encoding: chunked` request bodies
//! (RFC 9112 7.1). Bytes may arrive in any pieces; the decoded body accumulates in a
//! buffer. Framing lines must end in CRLF (a bare LF is refused: lenient chunk framing
//! is a classic request-smuggling vector); extensions are skipped; trailer fields are
//! read and discarded.

use super::Status;

/// The longest chunk-size line extension or trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk size; `digits` so far.
    Size {
        digits: u8,
    },
    /// Whitespace after the size, before `;`.
    SizeSpace,
    /// Inside a chunk extension.
    Ext,
    /// After the CR that ends the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// The decoder's position within a chunked body.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    remaining: u64,
    line: usize,
    trailers: usize,
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            line: 0,
            trailers: 0,
        }
    }

    /// Decodes from `input`, appending chunk data to `body` (at most `max_body` bytes in
    /// all). Returns how many input bytes were used and whether the body is complete.
    pub fn feed(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: u64,
    ) -> Result<(usize, bool), Status> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = (self.remaining.min((input.len() - i) as u64)) as usize;
                body.extend_from_slice(&input[i..i + take]);
                i += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.step(b, body.len() as u64, max_body)?;
            if self.state == State::Done {
                return Ok((i, true));
            }
        }
        Ok((i, self.state == State::Done))
    }

    fn step(&mut self, b: u8, decoded: u64, max_body: u64) -> Result<(), Status> {
        const BAD: Status = Status::BAD_REQUEST;
        self.state = match self.state {
            State::Size { digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 16 => {
                    let v = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self.size * 16 + v;
                    State::Size { digits: digits + 1 }
                }
                b'\r' if digits > 0 => State::SizeLf,
                b';' if digits > 0 => State::Ext,
                b' ' | b'\t' if digits > 0 => State::SizeSpace,
                _ => return Err(BAD),
            },
            State::SizeSpace => match b {
                b' ' | b'\t' => State::SizeSpace,
                b';' => State::Ext,
                _ => return Err(BAD),
            },
            State::Ext => match b {
                b'\r' => State::SizeLf,
                b'\n' | 0..=0x08 | 0x0a..=0x1f | 0x7f => return Err(BAD),
                _ => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(BAD);
                    }
                    State::Ext
                }
            },
            State::SizeLf => match b {
                b'\n' => {
                    self.line = 0;
                    if self.size == 0 {
                        State::TrailerStart
                    } else if decoded.saturating_add(self.size) > max_body {
                        return Err(Status::CONTENT_TOO_LARGE);
                    } else {
                        self.remaining = self.size;
                        self.size = 0;
                        State::Data
                    }
                }
                _ => return Err(BAD),
            },
            State::Data => State::Data, // handled in bulk by `feed`
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(BAD),
            },
            State::DataLf => match b {
                b'\n' => State::Size { digits: 0 },
                _ => return Err(BAD),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return Err(BAD),
                _ => self.trailer_byte(State::TrailerLine)?,
            },
            State::TrailerLine => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(BAD),
                _ => self.trailer_byte(State::TrailerLine)?,
            },
            State::TrailerLf => match b {
                b'\n' => State::TrailerStart,
                _ => return Err(BAD),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(BAD),
            },
            State::Done => State::Done,
        };
        Ok(())
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, Status> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(Status::HEADERS_TOO_LARGE);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), Status> {
        let mut d = Chunked::new();
        let mut body = Vec::new();
        let mut used = 0;
        while used < input.len() {
            let end = (used + piece).min(input.len());
            let (n, done) = d.feed(&input[used..end], &mut body, 1 << 20)?;
            used += n;
            if done {
                return Ok((body, used));
            }
        }
        Err(Status::BAD_REQUEST)
    }

    #[test]
    fn decodes_in_any_pieces_and_stops_at_the_end() {
        let wire = b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET /next";
        for piece in [1, 2, 3, 7, 100] {
            let (body, used) = decode_in_pieces(wire, piece).unwrap();
            assert_eq!(body, b"hello world");
            assert_eq!(&wire[used..], b"GET /next", "piece {piece}");
        }
    }

    #[test]
    fn rejects_sloppy_framing() {
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(
                decode_in_pieces(wire, 3).unwrap_err(),
                Status::BAD_REQUEST,
                "{wire:?}"
            );
        }
    }

    #[test]
    fn enforces_the_body_limit_before_reading_the_chunk() {
        let mut d = Chunked::new();
        let mut body = Vec::new();
        assert_eq!(
            d.feed(b"10\r\n", &mut body, 15),
            Err(Status::CONTENT_TOO_LARGE)
        );
    }
}
