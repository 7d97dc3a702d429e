//! Code shared by the benchmark binaries; each one includes it with `mod support;`.
//!
//! - [`pin`]: pin a thread, or a child process from its start, to one CPU.
//! - [`procstat`]: another process's CPU time, read from `/proc`.
//! - [`loadgen`]: the closed-loop TCP load generator (echo now; room for HTTP).
//! - [`ServerProcess`] (here): a server under test run as a pinned child process that
//!   prints the address it listens on; killed (by its PID only) when done with.
//!
//! A typical run: start the server on CPU 0, run the load from CPU 1 with
//! `server_pid` set so the report carries the server's CPU time, then kill the server.

// Every bench binary compiles this whole tree but uses only part of it.
#![allow(dead_code)]

pub mod loadgen;
pub mod pin;
pub mod procstat;

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A server under test, running as our child process.
pub struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Spawns `cmd` pinned to `cpu` and waits up to `timeout` for a line on its stdout
    /// holding its address (see [`parse_addr`]). The rest of its stdout is drained by a
    /// helper thread, so the server never blocks on a full pipe. The child is killed if
    /// the spawning *thread* dies first (`PR_SET_PDEATHSIG`), so start servers from a
    /// thread that outlives them (`main`). This adds pre-exec hooks to `cmd`: build a
    /// fresh `Command` for every start.
    pub fn start(cmd: &mut Command, cpu: usize, timeout: Duration) -> io::Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        // SAFETY: runs in the forked child before `exec`; `prctl` is a single system
        // call with integer arguments, async-signal-safe, and `last_os_error` only reads
        // `errno` without allocating.
        unsafe { cmd.pre_exec(die_with_parent) };
        let mut child = pin::spawn_pinned(cmd, cpu)?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || drain_stdout(BufReader::new(stdout), tx));
        let mut server = ServerProcess {
            child: Some(child),
            pid,
            addr: ([0; 4], 0).into(),
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
