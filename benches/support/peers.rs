//! Peer HTTP servers to measure gracering against: nginx and Go's net/http.
//!
//! Each is used only where installed: [`nginx`] and [`go`] print one line and return
//! `Ok(None)` when the tool is missing (Debian packages `nginx` and `golang-go`).
//! Both serve `Hello, World!` on `/` of a 127.0.0.1 address, pinned to one CPU from
//! their first instruction, and both are children of the caller (killed with it through
//! `PR_SET_PDEATHSIG`, and by [`Drop`]).
//!
//! - **nginx**: a config generated from `benches/peers/nginx.conf.in` into a run
//!   directory under `target/peers/` (pid, error log and temp paths there; one worker,
//!   `master_process on`, `daemon off`, keep-alive 75 s). The port is chosen by binding
//!   port 0 and releasing it; the server counts as started once `GET /` answers 200.
//!   The graceful stop is SIGQUIT to the master. Memory and CPU must be summed over
//!   [`PeerProcess::pids`] (master and worker).
//! - **Go**: `benches/peers/go/main.go` (standard library only), built with `go build`
//!   into `target/peers/` with `GOCACHE` and `GOPATH` under `target/peers/` too and no
//!   network use. It prints `listening on ADDR`; the graceful stop is SIGTERM, which
//!   calls `Server.Shutdown` with a grace period (25 s unless [`go_with_grace`]).
//!
//! [`start`] runs any other server the same way (pinned, killed with us, a graceful stop
//! by a chosen signal), given a command that prints its address on stdout.
//!
//! Spawning, address parsing and /proc readings are `testkit`'s, as for every child.

use std::env;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use testkit::build::{target_dir, workspace_dir};
use testkit::process::{self, Launch, signal};
use testkit::procstat::process_tree;

/// Time a peer gets to come up and answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time `go build` gets (a first build compiles the standard library's net/http).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Polling interval while waiting for a process to start or exit.
const POLL: Duration = Duration::from_millis(1);

/// A peer server running as our child process (nginx's worker is its grandchild).
pub struct PeerProcess {
    /// `nginx` or `go`.
    pub name: &'static str,
    child: Option<Child>,
    addr: SocketAddr,
    /// The signal that asks for a graceful stop (SIGQUIT for nginx, SIGTERM for Go).
    stop_signal: libc::c_int,
    /// A run directory, removed after a clean graceful stop or [`PeerProcess::kill`];
    /// kept otherwise (its error log may tell what went wrong).
    run_dir: Option<PathBuf>,
}

/// How a peer ended after [`PeerProcess::stop_graceful`].
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// From just before the signal until the main process was reaped (within 1 ms).
    pub after: Duration,
    /// It did not exit in time and was killed with SIGKILL.
    pub killed: bool,
}

impl PeerProcess {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The main process (nginx's master).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("child is present until stopped")
            .id()
    }

    /// The main process and all its descendants (nginx's worker), for RSS and CPU time.
    pub fn pids(&self) -> Vec<u32> {
        process_tree(self.pid())
    }

    /// Sends the graceful-stop signal to the main process (by its PID only) and waits up
    /// to `timeout` for it to exit; past that it and its descendants are killed.
    pub fn stop_graceful(mut self, timeout: Duration) -> io::Result<Stopped> {
        // On any error below, `Drop` kills and reaps what is left.
        let started = Instant::now();
        signal(self.pid(), self.stop_signal)?;
        let deadline = started + timeout;
        let child = self.child.as_mut().expect("child is present until stopped");
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(POLL);
        };
        let after = started.elapsed();
        let (status, killed) = match status {
            Some(status) => (status, false),
            None => (kill_tree(child)?, true),
        };
        // Reaped: nothing is left for `Drop` to do.
        self.child = None;
        if let (false, Some(dir)) = (killed, self.run_dir.take()) {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(Stopped {
            status,
            after,
            killed,
        })
    }

    /// SIGKILL to the main process and its descendants (by PID), then reaps the main one
    /// and removes the run directory.
    pub fn kill(mut self) -> io::Result<ExitStatus> {
        let mut child = self.child.take().expect("child is present until killed");
        let status = kill_tree(&mut child)?;
        if let Some(dir) = self.run_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(status)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_tree(&mut child);
        }
    }
}

/// nginx with one worker on `cpu` (see the module docs); `None` if nginx is missing.
pub fn nginx(cpu: usize) -> io::Result<Option<PeerProcess>> {
    let Some(binary) = find_program("nginx", &["/usr/sbin/nginx"]) else {
        println!("peers: nginx not installed: skipping it (Debian package `nginx`)");
        return Ok(None);
    };
    let port = free_port()?;
    let dir = target_dir().join(format!("peers/nginx-run/{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let template = std::fs::read_to_string(workspace_dir().join("benches/peers/nginx.conf.in"))?;
    let dir_text = dir
        .to_str()
        .ok_or_else(|| io::Error::other("non-UTF-8 path"))?;
    let config = template
        .replace("@DIR@", dir_text)
        .replace("@PORT@", &port.to_string());
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config)?;

    let mut cmd = Command::new(binary);
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&config_path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let child = process::spawn(&mut cmd, &Launch::pinned(cpu))?;
    let mut peer = PeerProcess {
        name: "nginx",
        child: Some(child),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        stop_signal: libc::SIGQUIT,
        run_dir: Some(dir),
    };
    wait_serving(&mut peer)?;
    Ok(Some(peer))
}

/// Go's net/http on `cpu` with a 25 s grace period; `None` if Go is missing.
pub fn go(cpu: usize) -> io::Result<Option<PeerProcess>> {
    go_with_grace(cpu, Duration::from_secs(25))
}

/// Go's net/http on `cpu`, `Shutdown` given `grace` after SIGTERM; `None` if Go is
/// missing. Builds the peer first (quick once cached).
pub fn go_with_grace(cpu: usize, grace: Duration) -> io::Result<Option<PeerProcess>> {
    let Some(binary) = build_go()? else {
        return Ok(None);
    };
    let mut cmd = Command::new(binary);
    cmd.arg("-addr")
        .arg("127.0.0.1:0")
        .arg("-grace")
        .arg(format!("{}ms", grace.as_millis()));
    let mut peer = start("go", &mut cmd, cpu, libc::SIGTERM)?;
    wait_serving(&mut peer)?;
    Ok(Some(peer))
}

/// Spawns `cmd` pinned to `cpu` and waits up to 30 s for a line on its stdout holding
/// its address (see [`process::spawn_server`]). [`PeerProcess::stop_graceful`] will send
/// `stop_signal`. Use a fresh `Command` for each start (this adds pre-exec hooks to it).
pub fn start(
    name: &'static str,
    cmd: &mut Command,
    cpu: usize,
    stop_signal: libc::c_int,
) -> io::Result<PeerProcess> {
    let launch = Launch {
        timeout: START_TIMEOUT,
        ..Launch::pinned(cpu)
    };
    let spawned = process::spawn_server(cmd, &launch)
        .map_err(|e| io::Error::other(format!("{name}: {e}")))?;
    Ok(PeerProcess {
        name,
        child: Some(spawned.child),
        addr: spawned.addr,
        stop_signal,
        run_dir: None,
    })
}

/// Builds `benches/peers/go` into `target/peers/go-hello`; `None` if Go is missing.
fn build_go() -> io::Result<Option<PathBuf>> {
    let Some(go) = find_program("go", &["/usr/lib/go/bin/go"]) else {
        println!("peers: go not installed: skipping it (Debian package `golang-go`)");
        return Ok(None);
    };
    let peers = target_dir().join("peers");
    let out = peers.join("go-hello");
    let mut cmd = Command::new(go);
    cmd.args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(workspace_dir().join("benches/peers/go"))
        .env("GOCACHE", peers.join("go-cache"))
        .env("GOPATH", peers.join("go-path"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("go build ran over its time limit"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let errors = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(io::Error::other(format!(
            "go build failed ({status}):\n{errors}"
        )));
    }
    Ok(Some(out))
}

/// Waits until `GET /` on the peer answers 200, or fails if the peer exits first or
/// the start timeout passes.
fn wait_serving(peer: &mut PeerProcess) -> io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = peer.child.as_mut().and_then(|c| c.try_wait().transpose()) {
            let name = peer.name;
            return Err(io::Error::other(format!(
                "{name} exited at start ({})",
                status?
            )));
        }
        if get_ok(peer.addr).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{} did not answer in time",
                peer.name
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `GET /` with `Connection: close`: true on a 200.
fn get_ok(addr: SocketAddr) -> io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut reply)?;
    Ok(reply.starts_with(b"HTTP/1.1 200"))
}

/// SIGKILL to `child`'s descendants and then `child` itself, each by its PID; reaps
/// `child` (the descendants are reparented and reaped by init).
fn kill_tree(child: &mut Child) -> io::Result<ExitStatus> {
    for pid in process_tree(child.id()).into_iter().skip(1) {
        let _ = signal(pid, libc::SIGKILL);
    }
    let _ = child.kill();
    child.wait()
}

/// A 127.0.0.1 port free a moment ago (bound to port 0, then released).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `name` on the `PATH`, else the first of `fallbacks` that exists.
fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
}
