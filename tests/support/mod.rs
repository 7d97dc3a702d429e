//! Shared helpers for the end-to-end tests: child servers, /proc readings, a small RNG.
//!
//! The child-process launching, address parsing and /proc readings are the
//! workspace's `testkit` crate (shared with the benchmarks); this module gives them the
//! panicking, test-shaped signatures the tests call.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::process::{self, Launch};

pub mod http1;
pub mod inproc;
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
        wait_until(timeout, || {
            self.stderr_lines().iter().any(|l| l.contains(needle))
        })
    }
}

impl ChildServer {
    /// Sends a signal to this child (by its PID).
    pub fn signal(&self, sig: i32) {
        let pid = self.child.id();
        process::signal(pid, sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
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
    testkit::json::json_number(line, key)
        .unwrap_or_else(|| panic!("{key} is not a number in {line}"))
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
    testkit::build::example_path(name)
}

/// Starts an example server with `args` (plus `--addr 127.0.0.1:0` unless given), its
/// logger at the default level, and waits for its "listening on ADDR" line. `configure` may adjust the command (limits).
pub fn spawn_example(
    name: &str,
    args: &[&str],
    configure: impl FnOnce(&mut Command),
) -> ChildServer {
    let mut cmd = Command::new(example_path(name));
    if !args.contains(&"--addr") {
        cmd.args(["--addr", "127.0.0.1:0"]);
    }
    cmd.args(args);
    // The lines the tests wait for are the default level's (`info`), whatever the
    // environment of the test run says; `configure` may set another.
    cmd.env_remove("RUST_LOG");
    configure(&mut cmd);
    let spawned = process::spawn_server(&mut cmd, &Launch::capturing())
        .unwrap_or_else(|e| panic!("example {name}: {e}"));
    ChildServer {
        child: spawned.child,
        addr: spawned.addr,
        stderr: spawned.stderr.expect("stderr is captured").shared(),
    }
}

/// The echo example on a free port.
pub fn spawn_echo(args: &[&str]) -> ChildServer {
    spawn_example("echo", args, |_| {})
}

/// The first `IP:PORT` in a line such as
/// `gracering echo: listening on 127.0.0.1:7000, workers=2, backend=io_uring`.
pub fn parse_addr(line: &str) -> Option<SocketAddr> {
    process::parse_addr(line)
}

/// CPU time (user + system) a process has used, summed over its threads, in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    testkit::procstat::cpu_seconds(pid as u32).expect("read the process's CPU time")
}

/// The CPU time a process uses while the caller sleeps for `window`: an observation
/// window (spinning is a rate), not a wait for something to happen.
pub fn cpu_used_over(pid: i32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    cpu_seconds(pid) - before
}

/// How many descriptors a process has open.
pub fn open_fds(pid: i32) -> usize {
    testkit::procstat::open_fds(pid as u32).expect("read fds")
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
/// Limits the child's descriptors to `n` (RLIMIT_NOFILE, soft and hard), set in the
/// forked child before exec.
pub fn limit_descriptors(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec and calls only setrlimit, which is
    // async-signal-safe; the struct lives on its stack.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

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
