//! The servers the HTTP drain benchmark stops, behind one interface: start one pinned
//! to a CPU, learn its address, signal it and time it until it exits.
//!
//! - **gracering**: `examples/http` (built by the caller), stopped with SIGTERM.
//! - **hyper**: the `hyper-drain` peer of `benches/peers` (built by the caller),
//!   stopped with SIGTERM.
//! - **nginx** (SIGQUIT) and **go** (SIGTERM): from [`peers`], only where installed.
//!
//! Every stop is timed the same way: from just before the signal to the moment the
//! main process's pidfd turns readable (its exit, before it is reaped), so no polling
//! interval adds to the figure. A server still running at the time limit is killed
//! (by its PID, through [`ServerProcess`] or [`peers::PeerProcess`]).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::peers::{self, PeerProcess};
use testkit::httpwire;
use testkit::process::{ServerProcess, pidfd_open, wait_readable};

/// Time a server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A kind of server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gracering,
    Hyper,
    Nginx,
    Go,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Gracering, Kind::Hyper, Kind::Nginx, Kind::Go];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Gracering => "gracering",
            Kind::Hyper => "hyper",
            Kind::Nginx => "nginx",
            Kind::Go => "go",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The signal that starts its graceful stop.
    pub fn signal_name(self) -> &'static str {
        match self {
            Kind::Nginx => "SIGQUIT",
            _ => "SIGTERM",
        }
    }
}

/// How to start a server.
pub struct Spec<'a> {
    pub kind: Kind,
    /// gracering's `http` example binary.
    pub http_example: &'a Path,
    /// The `hyper-drain` peer binary.
    pub hyper_peer: &'a Path,
    /// gracering's workers.
    pub workers: usize,
    /// The grace period (gracering, hyper and go; nginx has none configured).
    pub grace: Duration,
    pub cpu: usize,
}

/// A running server.
pub enum Running {
    Own(ServerProcess),
    Peer(PeerProcess),
}

/// How a server stopped.
#[derive(Debug)]
pub struct Stopped {
    /// Just before the signal.
    pub signalled_at: Instant,
    /// Signal to exit (or to the time limit if it was killed).
    pub exit: Duration,
    pub code: Option<i32>,
    pub killed: bool,
    /// CPU time from the signal to the exit (gracering and hyper only).
    pub cpu: Option<Duration>,
    /// Its stderr (gracering and hyper only).
    pub stderr: String,
}

/// Starts the server; `None` (after a printed line, from [`peers`]) when it is a peer
/// that is not installed.
pub fn start(spec: &Spec<'_>) -> io::Result<Option<Running>> {
    let own = |mut cmd: Command| {
        ServerProcess::start_capturing(&mut cmd, spec.cpu, START_TIMEOUT)
            .map(|s| Some(Running::Own(s)))
    };
    match spec.kind {
        Kind::Gracering => {
            let mut cmd = Command::new(spec.http_example);
            let grace = format!("{}ms", spec.grace.as_millis());
            cmd.args(["--addr", "127.0.0.1:0", "--drain-delay", "0"])
                .args(["--workers", &spec.workers.to_string()])
                .args(["--grace-period", &grace]);
            own(cmd)
        }
        Kind::Hyper => {
            let mut cmd = Command::new(spec.hyper_peer);
            cmd.env("GRACERING_BENCH_ADDR", "127.0.0.1:0").env(
                "GRACERING_BENCH_GRACE_MS",
                spec.grace.as_millis().to_string(),
            );
            own(cmd)
        }
        Kind::Nginx => Ok(peers::nginx(spec.cpu)?.map(Running::Peer)),
        Kind::Go => Ok(peers::go_with_grace(spec.cpu, spec.grace)?.map(Running::Peer)),
    }
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Running::Own(s) => s.addr(),
            Running::Peer(p) => p.addr(),
        }
    }

    /// Whether `GET path` answers 2xx on a fresh connection (within 5 s).
    pub fn serves(&self, path: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1))
            .and_then(|mut s| httpwire::get(&mut s, path, deadline))
            .is_ok_and(|r| r.is_success())
    }

    /// Sets `flag` and signals the server at once (by its PID only); waits up to
    /// `timeout` for its exit, then kills it.
    pub fn stop(self, timeout: Duration, flag: &OnceLock<Instant>) -> io::Result<Stopped> {
        match self {
            Running::Own(server) => {
                let _ = flag.set(Instant::now());
                let exit = server.terminate(timeout)?;
                Ok(Stopped {
                    signalled_at: exit.signalled_at,
                    exit: exit.after,
                    code: exit.status.code(),
                    killed: exit.killed,
                    cpu: exit.cpu,
                    stderr: exit.stderr,
                })
            }
            Running::Peer(peer) => {
                // Opened before the signal: the process is our unreaped child.
                let pidfd = pidfd_open(peer.pid())?;
                let limit = Instant::now() + timeout + Duration::from_secs(1);
                let watcher = std::thread::spawn(move || {
                    wait_readable(&pidfd, limit).map(|exited| exited.then(Instant::now))
                });
                let _ = flag.set(Instant::now());
                let signalled_at = Instant::now();
                let stopped = peer.stop_graceful(timeout)?;
                let exited = watcher
                    .join()
                    .map_err(|_| io::Error::other("exit watcher panicked"))??;
                let exit = match (exited, stopped.killed) {
                    (Some(at), false) => at.saturating_duration_since(signalled_at),
                    _ => stopped.after,
                };
                Ok(Stopped {
                    signalled_at,
                    exit,
                    code: stopped.status.code(),
                    killed: stopped.killed,
                    cpu: None,
                    stderr: String::new(),
                })
            }
        }
    }
}
