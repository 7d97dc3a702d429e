//! The tests' own reading of HTTP/1.1 responses off a buffered stream: status line,
//! lower-cased header lines, a Content-Length framed body. Written by hand so the tests
//! do not trust the server's framing to a library that might paper over a mistake.

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::TcpStream;

/// One parsed response: status, lower-cased header lines, body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.headers.iter().find_map(|h| h.strip_prefix(&prefix))
    }
}

/// Reads one response (Content-Length framed; no body for a HEAD request's answer).
pub fn read_response_to(r: &mut BufReader<TcpStream>, head_only: bool) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        headers.push(h);
    }
    let len: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length: "))
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    r.read_exact(&mut body)?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Reads one response to a request that is not HEAD.
pub fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Resp> {
    read_response_to(r, false)
}

/// One keep-alive connection that sends requests with a Content-Length body and reads
/// the responses with [`read_response_to`].
pub struct Client {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
}

impl Client {
    pub fn new(addr: std::net::SocketAddr) -> Client {
        let w = super::connect(addr);
        let r = BufReader::new(w.try_clone().unwrap());
        Client { w, r }
    }

    pub fn send(&mut self, method: &str, path: &str, body: &[u8]) {
        use std::io::Write;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.w.write_all(&req).unwrap();
    }

    /// Reads one response (Content-Length framed; none for HEAD).
    pub fn read(&mut self, head_only: bool) -> std::io::Result<Resp> {
        read_response_to(&mut self.r, head_only)
    }

    pub fn try_call(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Resp> {
        self.send(method, path, body);
        self.read(method == "HEAD")
    }

    pub fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Resp {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// The kv example's mixed load against a model: `threads` client threads, each doing
/// `ops` PUTs (40%), GETs (40%) and DELETEs (20%) on `keys` keys of its own over two
/// keep-alive connections (alternating, so every worker serves each thread's keys),
/// every status and body checked against the thread's model. Returns the models, for
/// the caller to compare with the store.
pub fn kv_mixed_operations(
    addr: std::net::SocketAddr,
    (threads, ops, keys): (usize, usize, u64),
    seed: u64,
) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    use std::collections::HashMap;
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut conns = [Client::new(addr), Client::new(addr)];
                    let mut rng = super::Rng::new(seed + t as u64);
                    let mut model: HashMap<String, Vec<u8>> = HashMap::new();
                    for i in 0..ops {
                        let key = format!("t{t}-{}", rng.next_u64() % keys);
                        let path = format!("/kv/{key}");
                        let c = &mut conns[i % 2];
                        let (method, body, want): (&str, Vec<u8>, (u16, Vec<u8>)) =
                            match rng.next_u64() % 10 {
                                0..=3 => {
                                    let mut value = vec![0u8; rng.log_size(2048) - 1];
                                    rng.fill(&mut value);
                                    let want = match model.insert(key.clone(), value.clone()) {
                                        Some(_) => (200, b"replaced".to_vec()),
                                        None => (201, b"created".to_vec()),
                                    };
                                    ("PUT", value, want)
                                }
                                4..=7 => match model.get(&key) {
                                    Some(v) => ("GET", Vec::new(), (200, v.clone())),
                                    None => ("GET", Vec::new(), (404, b"no such key".to_vec())),
                                },
                                _ => match model.remove(&key) {
                                    Some(_) => ("DELETE", Vec::new(), (200, b"deleted".to_vec())),
                                    None => ("DELETE", Vec::new(), (404, b"no such key".to_vec())),
                                },
                            };
                        let got = c.call(method, &path, &body);
                        assert_eq!((got.status, got.body), want, "op {i}: {method} {key}");
                    }
                    model
                })
            })
            .collect();
        clients.into_iter().map(|h| h.join().unwrap()).collect()
    })
}
