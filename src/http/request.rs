//! The request a [`Service`](super::Service) sees: head fields borrowed from the
//! connection's input, and the body.

use std::fmt;

/// One HTTP/1.x request, borrowed from the connection's buffers for the duration of
/// [`Service::call`](super::Service::call). Parsing it allocated nothing.
pub struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) minor_version: u8,
    pub(crate) headers: &'a [httparse::Header<'a>],
    pub(crate) body: &'a [u8],
}

impl<'a> Request<'a> {
    /// The method, such as `GET`.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request target as sent (`/path?query` for the usual origin form).
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The target's path: everything before `?`.
    pub fn path(&self) -> &'a str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The target's query: everything after the first `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// The value of the first header field called `name` (compared without regard to
    /// case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every header field, in the order received, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// The body, de-chunked; empty when the request had none.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("version", &format_args!("HTTP/1.{}", self.minor_version))
            .field("headers", &self.headers.len())
            .field("body", &self.body.len())
            .finish()
    }
}
