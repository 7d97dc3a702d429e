//! Servers and tools run as child processes: spawned (pinned to a CPU if asked, and
//! killed with the spawning thread if asked), their address read from their stdout,
//! their stderr kept, signalled and stopped by their PID only.
//!
//! - [`spawn`]: a child with the [`Launch`] options applied; [`spawn_server`]: one that
//!   prints the address it listens on (see [`parse_addr`]), with its stdout drained so
//!   it never blocks on a full pipe and its stderr collected line by line
//!   ([`StderrLog`]) when asked.
//! - [`ServerProcess`]: a spawned server killed when done with, or stopped with SIGTERM
//!   and timed until it exits ([`ServerProcess::terminate`]).
//! - [`run_pinned`]: runs a pinned child to its end, with a time limit.
//! - [`signal`], [`pidfd_open`], [`wait_readable`]: the system calls these are made of.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{pin, procstat};

/// How long the helper thread reading a child's stderr may take to finish once the
/// child has exited.
const STDERR_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a child.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    /// Pin every thread of the child to this CPU from its first instruction.
    pub cpu: Option<usize>,
    /// Kill the child with SIGKILL when the spawning *thread* dies
    /// (`PR_SET_PDEATHSIG`): start such children from a thread that outlives them.
    pub die_with_parent: bool,
    /// Collect the child's stderr ([`StderrLog`]) instead of passing it through.
    pub capture_stderr: bool,
    /// Time a server gets to print its address.
    pub timeout: Duration,
}

impl Launch {
    /// A benchmark's server: pinned to `cpu`, dying with us, stderr passed through,
    /// 30 s to print its address.
    pub fn pinned(cpu: usize) -> Launch {
        Launch {
            cpu: Some(cpu),
            die_with_parent: true,
            capture_stderr: false,
            timeout: Duration::from_secs(30),
        }
    }

    /// A test's server: on any CPU, stderr captured, 30 s to print its address.
    pub fn capturing() -> Launch {
        Launch {
            cpu: None,
            die_with_parent: false,
            capture_stderr: true,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Spawns `cmd` with the `launch` options (not the stdio ones: the caller sets those).
/// This adds pre-exec hooks to `cmd`: build a fresh `Command` for every start.
pub fn spawn(cmd: &mut Command, launch: &Launch) -> io::Result<Child> {
    if launch.die_with_parent {
        // SAFETY: runs in the forked child before `exec`; `prctl` is a single system
        // call with integer arguments, async-signal-safe, and `last_os_error` only reads
        // `errno` without allocating.
        unsafe { cmd.pre_exec(die_with_parent) };
    }
    match launch.cpu {
        Some(cpu) => pin::spawn_pinned(cmd, cpu),
        None => cmd.spawn(),
    }
}

/// A server just spawned by [`spawn_server`].
pub struct Spawned {
    pub child: Child,
    /// The address it printed.
    pub addr: SocketAddr,
    /// Its stderr, when captured.
    pub stderr: Option<StderrLog>,
}

/// Spawns `cmd` (see [`spawn`]) and waits up to `launch.timeout` for a line on its
/// stdout holding its address (see [`parse_addr`]). The rest of its stdout is drained
/// by a helper thread. On failure the child is killed and reaped, and the error says
/// what it wrote on stderr, if captured.
pub fn spawn_server(cmd: &mut Command, launch: &Launch) -> io::Result<Spawned> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    if launch.capture_stderr {
        cmd.stderr(Stdio::piped());
    }
    let mut child = spawn(cmd, launch)?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().map(StderrLog::collect);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || drain_stdout(BufReader::new(stdout), tx));
    match rx.recv_timeout(launch.timeout) {
        Ok(addr) => Ok(Spawned {
            child,
            addr,
            stderr,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let why = match e {
                mpsc::RecvTimeoutError::Timeout => "printed no address in time",
                mpsc::RecvTimeoutError::Disconnected => "exited without printing its address",
            };
            let lines = stderr
                .map(|log| log.text(STDERR_TIMEOUT))
                .unwrap_or_default();
            let program = cmd.get_program();
            Err(io::Error::other(format!(
                "server {program:?} {why}; stderr: {lines:?}"
            )))
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

/// A child's stderr, read line by line by a helper thread as it comes.
pub struct StderrLog {
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

impl StderrLog {
    /// Starts reading `pipe` to its end.
    pub fn collect(pipe: impl Read + Send + 'static) -> StderrLog {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        StderrLog { lines, reader }
    }

    /// The lines read so far, shared with the reading thread.
    pub fn shared(&self) -> Arc<Mutex<Vec<String>>> {
        self.lines.clone()
    }

    /// All of it, one `\n` after each line, once the pipe has closed (the child has
    /// exited) or `timeout` has passed.
    pub fn text(self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while !self.reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// A server under test, running as our child process; killed (by its PID) when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    stderr: Option<StderrLog>,
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
    /// Spawns `cmd` pinned to `cpu`, to die with the spawning thread, and waits up to
    /// `timeout` for its address (see [`spawn_server`]); start servers from a thread
    /// that outlives them (`main`).
    pub fn start(cmd: &mut Command, cpu: usize, timeout: Duration) -> io::Result<Self> {
        Self::launch(
            cmd,
            &Launch {
                timeout,
                ..Launch::pinned(cpu)
            },
        )
    }

    /// Like [`start`](Self::start), and collects the child's stderr instead of passing it
    /// through; [`terminate`](Self::terminate) returns it.
    pub fn start_capturing(cmd: &mut Command, cpu: usize, timeout: Duration) -> io::Result<Self> {
        let launch = Launch {
            capture_stderr: true,
            timeout,
            ..Launch::pinned(cpu)
        };
        Self::launch(cmd, &launch)
    }

    /// Spawns `cmd` as `launch` says (see [`spawn_server`]).
    pub fn launch(cmd: &mut Command, launch: &Launch) -> io::Result<Self> {
        let spawned = spawn_server(cmd, launch)?;
        Ok(ServerProcess {
            pid: spawned.child.id(),
            child: Some(spawned.child),
            addr: spawned.addr,
            stderr: spawned.stderr,
        })
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
        if let Err(err) = signal(self.pid, libc::SIGTERM) {
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
            .map(|log| log.text(STDERR_TIMEOUT))
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

/// What a child run by [`run_pinned`] left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Its stdout if it exited with success; else an error naming `what` with its status
    /// and all it printed.
    pub fn stdout_if_success(self, what: &str) -> io::Result<String> {
        if !self.status.success() {
            return Err(io::Error::other(format!(
                "{what} failed ({}):\n{}{}",
                self.status, self.stdout, self.stderr
            )));
        }
        Ok(self.stdout)
    }
}

/// Runs `cmd` pinned to `cpu` (see [`pin::spawn_pinned`]) to its end and returns its
/// output. A child still running after `timeout` is killed (by its PID) and that is an
/// error. Like [`ServerProcess::start`], the child dies with the spawning thread.
pub fn run_pinned(cmd: &mut Command, cpu: usize, timeout: Duration) -> io::Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd, &Launch::pinned(cpu))?;
    let stdout = child.stdout.take().map(read_to_end);
    let stderr = child.stderr.take().map(read_to_end);
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

/// Sends `sig` to the process `pid` (by its PID, nothing else).
pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: `kill` takes plain integers; the caller names its own child or descendant.
    match unsafe { libc::kill(pid as libc::pid_t, sig) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
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
fn read_to_end(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// A pidfd for `pid`: it turns readable when the process exits.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: `pidfd_open(pid, flags)` takes plain integers and touches no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Waits until `fd` is readable (true) or `deadline` passes (false).
pub fn wait_readable(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
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
