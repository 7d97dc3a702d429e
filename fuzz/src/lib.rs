//! What the fuzz targets share: splitting an input into pieces the fuzz input decides,
//! and reading back the responses of the HTTP layer.

/// A small deterministic generator (xorshift32), so that a split is a function of the
/// fuzz input alone.
pub struct Rng(u32);

impl Rng {
    /// A generator seeded with `seed` (any value).
    pub fn new(seed: u32) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9) | 1)
    }

    /// The next value.
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// A value in `1..=max`.
    pub fn upto(&mut self, max: usize) -> usize {
        1 + self.next_u32() as usize % max.max(1)
    }
}

/// Cuts `input` into pieces of pseudo-random lengths, from 1 byte to a largest piece
/// chosen by `shape` (so that runs of one-byte pieces and of larger pieces both occur).
pub fn pieces(input: &[u8], seed: u8, shape: u8) -> Vec<&[u8]> {
    let max = [1, 2, 3, 7, 16, 64, 500, 5000][usize::from(shape & 7)];
    let mut rng = Rng::new(u32::from(seed) << 8 | u32::from(shape));
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(rng.upto(max).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Replaces the value of a `date:` header line (29 bytes) in a response head with a
/// fixed one: the HTTP layer reads the wall clock for it, so two runs may differ there
/// and nowhere else. Only the head is touched (a body may echo anything).
fn mask_date(head: &mut [u8]) {
    const KEY: &[u8] = b"\r\ndate: ";
    if let Some(at) = head.windows(KEY.len()).position(|w| w == KEY) {
        let start = at + KEY.len();
        let end = (start + 29).min(head.len());
        head[start..end].fill(b'D');
    }
}

/// Splits what the server sent into responses and checks that each is well formed:
/// starts with `HTTP/1.1 `, parses, and carries exactly its `Content-Length` of body
/// (none after a 100 Continue, or when it answers a HEAD: the service marks those with
/// `x-head`). Returns each response with its status code, its `Date` value masked.
/// Panics on anything else.
pub fn responses(mut wire: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut statuses = Vec::new();
    while !wire.is_empty() {
        assert!(
            wire.starts_with(b"HTTP/1.1 "),
            "a response does not start with HTTP/1.1: {:?}",
            String::from_utf8_lossy(&wire[..wire.len().min(200)])
        );
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let head = match res.parse(wire) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "an unparseable response ({other:?}): {:?}",
                String::from_utf8_lossy(&wire[..wire.len().min(400)])
            ),
        };
        let status = res.code.unwrap_or(0);
        let field = |name: &str| {
            res.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let body = if status == 100 || field("x-head").is_some() {
            0
        } else {
            let length = field("content-length").expect("a response without Content-Length");
            std::str::from_utf8(length)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .expect("a malformed Content-Length")
        };
        assert!(
            wire.len() >= head + body,
            "a response shorter than its Content-Length"
        );
        let mut response = wire[..head + body].to_vec();
        mask_date(&mut response[..head]);
        statuses.push((status, response));
        wire = &wire[head + body..];
    }
    statuses
}
