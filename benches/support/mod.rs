//! Code shared by the benchmark binaries; each one includes it with `mod support;`.
//!
//! - [`build`]: building gracering's examples with cargo; the crate and target directories.
//! - [`pin`]: pin a thread, or a child process from its start, to one CPU.
//! - [`procstat`]: another process's CPU time, and the machine's, read from `/proc`.
//! - [`loadgen`]: the closed-loop TCP load generator (echo now; room for HTTP).
//! - [`epoll`]: the minimal epoll set both client sides use.
//! - [`idle`]: idle connections held open in epoll, reporting how each one ended.
//! - [`stats`]: medians and percentiles over runs.
//! - [`httpwire`]: the client's side of HTTP/1.1 (request, response parser, idle
//!   keep-alive connections); [`httpgen`]: the drain-aware HTTP load generator.
//! - [`timeline`]: per-millisecond client-side timelines around a signal, as CSV.
//! - [`floor`]: the kernel's cost of closing N loopback connections (a child role).
//! - [`hyper_drain`]: the hyper 1.x peer drained by hyper-util's `GracefulShutdown`.
//! - [`peer`]: `main`'s exit code, the peers' tokio runtime with its lifetime, and a
//!   SIGTERM signalfd.
//! - [`settings`]: settings read from the environment ([`settings::env_or`]).
//! - [`hyper_hello`]: the hyper 1.x hello-world peer of `http_load` and `footprint`.
//! - [`peers`]: nginx and Go's net/http as peer servers, where installed.
//! - [`svg`]: a small SVG line-chart writer.
//! - [`drain_servers`]: the servers `drain_http` stops, started and timed alike;
//!   [`drain_report`]: its runs, tables and JSON line.
//! - [`ServerProcess`] (here): a server under test run as a pinned child process that
//!   prints the address it listens on; killed (by its PID only) when done with, or
//!   asked to stop with SIGTERM and timed until it exits ([`ServerProcess::terminate`]).
//! - [`run_pinned`] (here): runs a pinned child to its end, with a time limit.
//!
//! A typical run: start the server on CPU 0, run the load from CPU 1 with
//! `server_pid` set so the report carries the server's CPU time, then kill the server.

// Every bench binary compiles this whole tree but uses only part of it.
#![allow(dead_code)]

pub mod build;
pub mod drain_report;
pub mod drain_servers;
pub mod epoll;
pub mod floor;
pub mod httpgen;
pub mod httpwire;
pub mod hyper_drain;
pub mod hyper_hello;
pub mod idle;
pub mod loadgen;
pub mod peer;
pub mod peers;
pub mod pin;
pub mod procstat;
pub mod settings;
pub mod stats;
pub mod svg;
pub mod timeline;

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the helper thread reading a child's stderr may take to finish once the
/// child has exited.
const STDERR_TIMEOUT: Duration = Duration::from_secs(5);

/// A server under test, running as our child process.
pub struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    /// Everything the child wrote on stderr, once it closed it (when captured).
    stderr: Option<mpsc::Receiver<String>>,
}

/// How a child ended after [`ServerProcess::terminate`].
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// When SIGTERM was sent (just before the `kill` call).
    pub signalled_at: Instant,
    /// From just before the `kill` call until the child had exited, or until the time
    /// limit if it had to be killed.
    pub after: Duration,
    /// The child did not exit in time and was killed with SIGKILL.
    pub killed: bool,
    /// CPU time the child used from just before the signal until it exited (all its
    /// threads, including kernel work done on their behalf), if it could be read.
    pub cpu: Option<Duration>,
    /// The child's stderr, if it was captured (see [`ServerProcess::start_capturing`]).
    pub stderr: String,
}

impl ServerProcess {
    /// Spawns `cmd` pinned to `cpu` and waits up to `timeout` for a line on its stdout
    /// holding its address (see [`parse_addr`]). The rest of its stdout is drained by a
    /// helper thread, so the server never blocks on a full pipe. The child is killed if
    /// the spawning *thread* dies first (`PR_SET_PDEATHSIG`), so start servers from a
    /// thread that outlives them (`main`). This adds pre-exec hooks to `cmd`: build a
    /// fresh `Command` for every start.
    pub fn start(cmd: &mut Command, cpu: usize, timeout: Duration) -> io::Result<Self> {
        Self::spawn(cmd, cpu, timeout, false)
    }

    /// Like [`start`](Self::start), and collects the child's stderr instead of passing it
    /// through; [`terminate`](Self::terminate) returns it.
    pub fn start_capturing(cmd: &mut Command, cpu: usize, timeout: Duration) -> io::Result<Self> {
        Self::spawn(cmd, cpu, timeout, true)
    }

    fn spawn(cmd: &mut Command, cpu: usize, timeout: Duration, capture: bool) -> io::Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if capture {
            cmd.stderr(Stdio::piped());
        }
        // SAFETY: runs in the forked child before `exec`; `prctl` is a single system
        // call with integer arguments, async-signal-safe, and `last_os_error` only reads
        // `errno` without allocating.
        unsafe { cmd.pre_exec(die_with_parent) };
        let mut child = pin::spawn_pinned(cmd, cpu)?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().map(collect);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || drain_stdout(BufReader::new(stdout), tx));
        let mut server = ServerProcess {
            child: Some(child),
            pid,
            addr: ([0; 4], 0).into(),
            stderr,
        };
        server.addr = rx.recv_timeout(timeout).map_err(|e| no_addr(cmd, e))?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGKILL to this child (by its PID, nothing else) and reaps it.
    pub fn kill(mut self) -> io::Result<ExitStatus> {
        let mut child = self.child.take().expect("child is present until killed");
        // Wait even if `kill` failed: the child must be reaped either way.
        let killed = child.kill();
        let status = child.wait();
        killed.and(status)
    }

    /// Sends SIGTERM to this child (by its PID, nothing else) and waits up to `timeout`
    /// for it to exit, timing from the `kill` call to the exit as the kernel reports it
    /// (a pidfd turning readable, so no polling interval adds to the figure). A child
    /// still running at the limit is killed with SIGKILL and reaped.
    pub fn terminate(mut self, timeout: Duration) -> io::Result<Exit> {
        let mut child = self.child.take().expect("child is present until stopped");
        // Opened before the signal: the child is ours and not yet reaped, so the PID
        // cannot have been reused.
        let pidfd = match pidfd_open(self.pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let cpu_before = procstat::cpu_nanos(self.pid).ok();
        let signalled_at = Instant::now();
        // SAFETY: `kill` takes plain integers; the PID is our own unreaped child's.
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            let err = io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
        let exited = wait_readable(&pidfd, signalled_at + timeout)?;
        let after = signalled_at.elapsed();
        let killed = !exited;
        if killed {
            let _ = child.kill();
        }
        // Reaped here rather than by `child.wait()`, for the resource usage; `child` is
        // then only dropped, which neither kills nor waits.
        let (status, cpu_total) = reap(self.pid)?;
        drop(child);
        let cpu = cpu_before.map(|ns| cpu_total.saturating_sub(Duration::from_nanos(ns)));
        let stderr = self
            .stderr
            .take()
            .and_then(|rx| rx.recv_timeout(STDERR_TIMEOUT).ok())
            .unwrap_or_default();
        Ok(Exit {
            status,
            signalled_at,
            after,
            killed,
            cpu,
            stderr,
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The first whitespace-separated token of `line` that is an `IP:PORT` address, with
/// trailing commas ignored: `gracering echo: listening on 127.0.0.1:40123, workers=1`
/// and `listening on 127.0.0.1:40123` both give `127.0.0.1:40123`.
pub fn parse_addr(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|token| token.trim_end_matches(',').parse().ok())
}

/// Sends the first address seen on the child's stdout, then reads on until EOF.
fn drain_stdout(mut out: BufReader<std::process::ChildStdout>, tx: mpsc::Sender<SocketAddr>) {
    let mut line = String::new();
    let mut sent = false;
    while out.read_line(&mut line).is_ok_and(|n| n > 0) {
        if let (false, Some(addr)) = (sent, parse_addr(&line)) {
            sent = tx.send(addr).is_ok();
        }
        line.clear();
    }
}

/// What a child run by [`run_pinned`] left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` pinned to `cpu` (see [`pin::spawn_pinned`]) to its end and returns its
/// output. A child still running after `timeout` is killed (by its PID) and that is an
/// error. Like [`ServerProcess::start`], the child dies with the spawning thread.
pub fn run_pinned(cmd: &mut Command, cpu: usize, timeout: Duration) -> io::Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: as in `ServerProcess::start`: one async-signal-safe system call.
    unsafe { cmd.pre_exec(die_with_parent) };
    let mut child = pin::spawn_pinned(cmd, cpu)?;
    let stdout = child.stdout.take().map(collect);
    let stderr = child.stderr.take().map(collect);
    let pidfd = pidfd_open(child.id());
    let exited = pidfd.and_then(|fd| wait_readable(&fd, Instant::now() + timeout));
    if !matches!(exited, Ok(true)) {
        let _ = child.kill();
    }
    let status = child.wait()?;
    if !exited? {
        let program = cmd.get_program();
        return Err(io::Error::other(format!(
            "{program:?} ran over {timeout:?}"
        )));
    }
    let text = |rx: Option<mpsc::Receiver<String>>| {
        rx.and_then(|rx| rx.recv_timeout(STDERR_TIMEOUT).ok())
            .unwrap_or_default()
    };
    Ok(Finished {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    })
}

/// Waits for our child `pid` to end and reaps it; returns its status and the CPU time
/// (user + system) it used in all.
fn reap(pid: u32) -> io::Result<(ExitStatus, Duration)> {
    let mut status = 0;
    // SAFETY: `rusage` is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable, and live through the call.
        let ret = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if ret >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = time(usage.ru_utime) + time(usage.ru_stime);
    Ok((ExitStatus::from_raw(status), cpu))
}

/// Reads `pipe` to its end on a helper thread; the text arrives on the channel.
fn collect(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// A pidfd for `pid`: it turns readable when the process exits.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: `pidfd_open(pid, flags)` takes plain integers and touches no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Waits until `fd` is readable (true) or `deadline` passes (false).
fn wait_readable(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, writable pollfd, and we pass a count of 1.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 if Instant::now() >= deadline => return Ok(false),
            0 => {}
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

fn die_with_parent() -> io::Result<()> {
    // SAFETY: `prctl(PR_SET_PDEATHSIG, sig)` takes plain integers and touches no memory.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn no_addr(cmd: &Command, err: mpsc::RecvTimeoutError) -> io::Error {
    let why = match err {
        mpsc::RecvTimeoutError::Timeout => "printed no address in time",
        mpsc::RecvTimeoutError::Disconnected => "exited without printing its address",
    };
    io::Error::other(format!("server {:?} {why}", cmd.get_program()))
}
