//! Shared helpers for the end-to-end tests: child servers, /proc readings, a small RNG.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod observe;
pub mod serial;
pub mod skip;

/// A server running as a child process; killed (by its PID) when dropped.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl ChildServer {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The lines the server wrote to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.stderr_lines().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl ChildServer {
    /// Sends a signal to this child (by its PID).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the PID is our own child's.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the child to exit, polling every millisecond; returns its exit code and
    /// how long the wait took. Panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.code(), start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "server did not exit within {timeout:?}; stderr: {:?}",
                self.stderr_lines()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The drain report line the server printed on stderr.
    pub fn drain_report(&self) -> String {
        assert!(
            self.wait_for_stderr("{\"drain\"", Duration::from_secs(2)),
            "no drain report: {:?}",
            self.stderr_lines()
        );
        self.stderr_lines()
            .into_iter()
            .find(|l| l.starts_with("{\"drain\""))
            .unwrap()
    }
}

/// The number after `"key":` in a JSON line (first occurrence).
pub fn json_number(line: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = line
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} not in {line}"))
        + pat.len();
    let end = line[at..].find([',', '}']).unwrap() + at;
    line[at..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line}"))
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of an example binary built by this `cargo test` run (building it if a
/// filtered run skipped it).
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building example {name} failed");
    }
    path
}

/// Starts an example server with `args` (plus `--addr 127.0.0.1:0` unless given) and
/// waits for its "listening on ADDR" line. `configure` may adjust the command (limits).
pub fn spawn_example(
    name: &str,
    args: &[&str],
    configure: impl FnOnce(&mut Command),
) -> ChildServer {
    let mut cmd = Command::new(example_path(name));
    if !args.contains(&"--addr") {
        cmd.args(["--addr", "127.0.0.1:0"]);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    let mut child = cmd.spawn().expect("spawn example");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let sink = stderr.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("read the address line");
    let addr = parse_addr(&line).unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "no address in {line:?}; stderr: {:?}",
            stderr.lock().unwrap()
        )
    });
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
    });
    ChildServer {
        child,
        addr,
        stderr,
    }
}

/// The echo example on a free port.
pub fn spawn_echo(args: &[&str]) -> ChildServer {
    spawn_example("echo", args, |_| {})
}

/// The first `IP:PORT` after "on " in a line such as
/// `gracering echo: listening on 127.0.0.1:7000, workers=2, backend=io_uring`.
pub fn parse_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("on ").nth(1)?;
    rest.split(|c: char| c == ',' || c.is_whitespace())
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system) a process has used, summed over its threads, in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read tasks") {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the ") " split.
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks as f64 / ticks_per_s
}

/// How many descriptors a process has open.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .count()
}

/// The server's descriptor count once it is serving and quiet: after one echo round
/// trip on a connection that is then closed, and the count has held still for 200 ms.
pub fn settled_fds(server: &ChildServer) -> usize {
    let mut s = connect(server.addr);
    assert_eq!(round_trip(&mut s, b"warm").unwrap(), b"warm");
    drop(s);
    let mut last = open_fds(server.pid());
    let mut still_since = Instant::now();
    let start = Instant::now();
    while still_since.elapsed() < Duration::from_millis(200)
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
        let now = open_fds(server.pid());
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
    last
}

/// Waits until `f` returns true, polling every 10 ms, for at most `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Connects with a timeout and returns a stream with read/write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `msg` and reads back exactly as many bytes; returns them.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// Sets SO_LINGER to zero so that close sends RST.
pub fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized, initialised linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_LINGER");
}

/// xorshift64*: deterministic pseudo-random numbers for payloads and sizes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    /// A size between 1 and `max`, uniform in its logarithm.
    pub fn log_size(&mut self, max: usize) -> usize {
        let bits = (max as f64).log2();
        let x = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (2f64.powf(x * bits) as usize).clamp(1, max)
    }
}
