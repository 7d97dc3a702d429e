//! Request heads: parsed by httparse, then checked against what RFC 9112 and RFC 9110
//! say a server must reject, and turned into the body's framing.
//!
//! Every rejection carries the status to answer with; the connection is closed after
//! it, since the framing of what follows can no longer be trusted.

use super::Status;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the head says beyond the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadInfo {
    pub framing: Framing,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// The most header fields a request may carry (more: 431).
pub(crate) const MAX_HEADERS: usize = 100;

/// Maps an httparse error to the status to answer with.
pub(crate) fn parse_error(e: httparse::Error, head: &[u8]) -> Status {
    match e {
        httparse::Error::TooManyHeaders => Status::HEADERS_TOO_LARGE,
        httparse::Error::Version if claims_other_version(head) => Status::VERSION_NOT_SUPPORTED,
        _ => Status::BAD_REQUEST,
    }
}

/// Whether the request line ends in a well-formed `HTTP/x.y` other than 1.x.
fn claims_other_version(head: &[u8]) -> bool {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    match line.rsplit(|&b| b == b' ').next() {
        Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor]) => {
            major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1'
        }
        Some([b'H', b'T', b'T', b'P', b'/', major]) => major.is_ascii_digit() && *major != b'1',
        _ => false,
    }
}

/// Where the search for the end of a request head stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadEnd {
    /// The head is complete: its length, up to and with the empty line.
    Found(usize),
    /// Not yet: every byte before this offset is scanned (resume from there).
    Scanned(usize),
}

/// Looks for the empty line that ends a request head in `head[from..]`, the bytes
/// before `from` having been scanned by earlier calls, so that a head arriving byte by
/// byte is scanned once in all, not once per byte. Only the first `max` bytes are
/// looked at: a head that does not end within them is over the limit.
///
/// A LF must follow a CR: a bare LF is refused (`Err`). httparse accepts one (RFC 9112
/// 2.2 lets a recipient), but the chunked decoder does not, and no line may be read one
/// way here and another way by a proxy in front (a request-smuggling vector).
pub(crate) fn find_head_end(head: &[u8], from: usize, max: usize) -> Result<HeadEnd, Status> {
    let window = &head[..head.len().min(max)];
    let mut i = from.min(window.len());
    count_scanned(window.len() - i);
    while let Some(p) = window[i..].iter().position(|&b| b == b'\n') {
        let at = i + p;
        if at == 0 || window[at - 1] != b'\r' {
            return Err(Status::BAD_REQUEST);
        }
        if at >= 3 && &window[at - 3..at - 1] == b"\r\n" {
            return Ok(HeadEnd::Found(at + 1));
        }
        i = at + 1;
    }
    Ok(HeadEnd::Scanned(window.len()))
}

#[cfg(test)]
thread_local! {
    /// Bytes the head scanner and httparse looked at on this thread (tests count work).
    pub(crate) static HEAD_WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts `n` bytes of head parsing work (in tests; nothing otherwise).
#[inline(always)]
pub(crate) fn count_scanned(n: usize) {
    #[cfg(test)]
    HEAD_WORK.with(|w| w.set(w.get() + n as u64));
    #[cfg(not(test))]
    let _ = n;
}

/// Checks a parsed head and works out its framing.
pub(crate) fn check_head(
    req: &httparse::Request<'_, '_>,
    max_body: u64,
) -> Result<HeadInfo, Status> {
    let minor = req.version.unwrap_or(1);
    let method = req.method.unwrap_or("");
    check_target(method, req.path.unwrap_or(""))?;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        // Dispatch on the length first: most fields are none of these five.
        let is = |wanted: &str| name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted);
        if !matches!(name.len(), 4 | 6 | 10 | 14 | 17) {
            continue;
        }
        if is("host") {
            hosts += 1;
            check_host(h.value)?;
        } else if is("content-length") {
            let value = content_length(h.value)?;
            if length.is_some_and(|l| l != value) {
                return Err(Status::BAD_REQUEST); // differing lengths: smuggling
            }
            length = Some(value);
        } else if is("transfer-encoding") {
            transfer_encoding = true;
            chunked = transfer_codings(h.value, chunked)?;
        } else if is("connection") {
            for token in list(h.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is("expect") {
            if !h.value.eq_ignore_ascii_case(b"100-continue") {
                return Err(Status::EXPECTATION_FAILED);
            }
            expect_continue = true;
        }
    }
    if minor == 1 && hosts != 1 || hosts > 1 {
        return Err(Status::BAD_REQUEST); // RFC 9112 3.2: exactly one Host in HTTP/1.1
    }
    let framing = match (transfer_encoding, length) {
        (true, Some(_)) => return Err(Status::BAD_REQUEST), // both: smuggling
        (true, None) if minor == 0 => return Err(Status::BAD_REQUEST),
        (true, None) if !chunked => return Err(Status::BAD_REQUEST), // chunked must be last
        (true, None) => Framing::Chunked,
        (false, Some(n)) if n > max_body => return Err(Status::CONTENT_TOO_LARGE),
        (false, Some(0) | None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = if minor == 0 {
        keep_alive_token && !close
    } else {
        !close
    };
    Ok(HeadInfo {
        framing,
        keep_alive,
        expect_continue: expect_continue && minor == 1 && framing != Framing::None,
    })
}

/// The request target must fit the method (RFC 9112 3.2).
fn check_target(method: &str, target: &str) -> Result<(), Status> {
    let ok = match method {
        "CONNECT" => !target.is_empty() && !target.starts_with('/'),
        "OPTIONS" if target == "*" => true,
        // Absolute form: a host, then a path or nothing (`http://h?q` is refused).
        _ => {
            target.starts_with('/')
                || absolute_path(target).is_some_and(|p| p.is_empty() || p.starts_with('/'))
        }
    };
    if ok { Ok(()) } else { Err(Status::BAD_REQUEST) }
}

/// The path and query of an absolute-form target (`http://host/p?q`: `/p?q`; no path:
/// ``), or `None` if it is not one (or names no host).
fn absolute_path(target: &str) -> Option<&str> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end == 0 {
        return None; // no authority
    }
    Some(&rest[end..])
}

/// The origin form of a checked target (RFC 9112 3.2.2: a server must accept the
/// absolute form): `http://host/p?q` is served as `/p?q`, `http://host` as `/`.
pub(crate) fn origin_form(target: &str) -> &str {
    match absolute_path(target) {
        Some("") => "/",
        Some(path) => path,
        None => target,
    }
}

/// A Host value: no whitespace, no controls, no userinfo (RFC 9110 7.2).
fn check_host(value: &[u8]) -> Result<(), Status> {
    if value
        .iter()
        .any(|&b| b <= b' ' || b == 0x7f || b == b'@' || b == b'/')
    {
        return Err(Status::BAD_REQUEST);
    }
    Ok(())
}

/// A Content-Length value: digits only; a list is accepted only when every member is
/// the same number (RFC 9110 8.6). Too large to count: 413.
fn content_length(value: &[u8]) -> Result<u64, Status> {
    let mut result: Option<u64> = None;
    for member in list(value) {
        if member.is_empty() || !member.iter().all(u8::is_ascii_digit) {
            return Err(Status::BAD_REQUEST);
        }
        let n = member
            .iter()
            .try_fold(0u64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or(Status::CONTENT_TOO_LARGE)?;
        if result.is_some_and(|r| r != n) {
            return Err(Status::BAD_REQUEST);
        }
        result = Some(n);
    }
    result.ok_or(Status::BAD_REQUEST)
}

/// Reads one Transfer-Encoding field. Returns whether `chunked` is now the final coding;
/// any coding after `chunked`, a second `chunked` or an unknown coding is refused.
fn transfer_codings(value: &[u8], mut chunked: bool) -> Result<bool, Status> {
    let mut any = false;
    for coding in list(value) {
        any = true;
        if chunked {
            return Err(Status::BAD_REQUEST); // something after chunked, or chunked twice
        }
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked = true;
        } else {
            return Err(Status::NOT_IMPLEMENTED); // gzip, deflate, compress, ...
        }
    }
    if !any {
        return Err(Status::BAD_REQUEST);
    }
    Ok(chunked)
}

/// The members of a comma-separated field value, trimmed of spaces and tabs, empty
/// members skipped.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|m| m.trim_ascii())
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {

    #[test]
    fn absolute_form_targets_are_served_in_origin_form() {
        assert_eq!(origin_form("http://example.com/a/b?x=1"), "/a/b?x=1");
        assert_eq!(origin_form("https://example.com"), "/");
        assert_eq!(origin_form("/plain"), "/plain");
        assert!(check_target("GET", "http://example.com/a").is_ok());
        assert!(check_target("GET", "http://example.com").is_ok());
        assert!(check_target("GET", "http:///nohost").is_err());
        assert!(check_target("GET", "http://example.com?q").is_err());
    }

    use super::*;

    fn check(raw: &str) -> Result<HeadInfo, Status> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(raw.as_bytes()) {
            Ok(httparse::Status::Complete(_)) => check_head(&req, 1000),
            Ok(httparse::Status::Partial) => panic!("partial: {raw:?}"),
            Err(e) => Err(parse_error(e, raw.as_bytes())),
        }
    }

    #[test]
    fn the_end_of_a_head_is_found_in_any_pieces_and_a_bare_lf_refused() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next";
        for piece in [1, 2, 3, 5, 100] {
            let mut from = 0;
            let mut end = 0;
            while end < head.len() {
                end = (end + piece).min(head.len());
                match find_head_end(&head[..end], from, 1000) {
                    Ok(HeadEnd::Found(n)) => {
                        assert_eq!(n, head.len() - 9, "piece {piece}");
                        break;
                    }
                    Ok(HeadEnd::Scanned(n)) => from = n,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let at_limit = find_head_end(head, 0, 20);
        assert_eq!(
            at_limit,
            Ok(HeadEnd::Scanned(20)),
            "only `max` bytes are looked at"
        );
        for head in [
            &b"\nGET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        ] {
            assert_eq!(
                find_head_end(head, 0, 1000),
                Err(Status::BAD_REQUEST),
                "{head:?}"
            );
        }
    }

    #[test]
    fn plain_get_keeps_alive() {
        let info = check("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            info,
            HeadInfo {
                framing: Framing::None,
                keep_alive: true,
                expect_continue: false
            }
        );
        assert!(
            !check("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!check("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            check("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn bodies_are_framed() {
        let info = check("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(info.framing, Framing::Length(5));
        let info =
            check("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(info.framing, Framing::Chunked);
        let info = check(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            info.framing,
            Framing::Length(5),
            "identical repeats are one length"
        );
        let info = check(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(info.unwrap().expect_continue);
    }

    #[test]
    fn smuggling_shapes_are_rejected_with_400() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET nopath HTTP/1.1\r\nHost: a\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(check(raw), Err(Status::BAD_REQUEST), "{raw:?}");
        }
    }

    #[test]
    fn other_statuses() {
        let te = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(check(te), Err(Status::NOT_IMPLEMENTED));
        let big = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n";
        assert_eq!(check(big), Err(Status::CONTENT_TOO_LARGE));
        let huge = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(check(huge), Err(Status::CONTENT_TOO_LARGE));
        assert_eq!(
            check("GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            Err(Status::VERSION_NOT_SUPPORTED)
        );
        let expect = "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: something\r\n\r\n";
        assert_eq!(check(expect), Err(Status::EXPECTATION_FAILED));
        assert!(check("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(check("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").is_ok());
    }
}
