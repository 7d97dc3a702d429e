//! The floor of a drain: the kernel's own cost of closing N loopback connections from
//! one core, measured in a child process (the same close loop as `drain_echo`'s floor).
//!
//! [`run`] is the child's role: it opens N connections to a listener of its own (one
//! 16-byte round trip each), hands the client ends to a thread on the client CPU that
//! waits in epoll and closes each at EOF (like the drains' idle clients), lets them
//! settle, then times closing its own ends one after the other. It prints one JSON
//! line `{"floor":{...}}`; [`measure`] re-executes the current binary in that role,
//! pinned to the server CPU, and parses the line. `drain_echo`'s own floor role (which
//! also has a FIN mode and reports more) opens its connections with [`open_pairs`].

use std::env;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::json::json_number;
use testkit::process::run_pinned;
use testkit::{idle, procstat};

/// The environment variable naming a re-executed bench binary's role.
pub const ROLE_VAR: &str = "GRACERING_BENCH_ROLE";
/// The role that runs [`run`].
pub const ROLE: &str = "floor";
const N_VAR: &str = "GRACERING_BENCH_FLOOR_N";
const CLIENT_CPU_VAR: &str = "GRACERING_BENCH_FLOOR_CLIENT_CPU";
/// Bytes of each connection's round trip.
const PING: usize = 16;
/// Time allowed for opening all connections.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The connections settle this long before they are closed.
const SETTLE: Duration = Duration::from_millis(200);
/// Time the child may take in all.
const TIMEOUT: Duration = Duration::from_secs(120);

/// One floor measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Floor {
    pub n: usize,
    /// The close loop.
    pub close_ms: f64,
    /// CPU time of the close loop.
    pub close_cpu_ms: f64,
    /// From the first close until the clients had closed every connection.
    pub clients_closed_ms: Option<f64>,
    /// Connections the clients saw end with EOF (all of them, normally).
    pub eof: u64,
}

impl Floor {
    pub fn us_per_conn(&self) -> f64 {
        self.close_ms * 1e3 / self.n.max(1) as f64
    }
}

/// Runs the floor for `n` connections in a child pinned to `server_cpu`, its clients on
/// `client_cpu`.
pub fn measure(n: usize, server_cpu: usize, client_cpu: usize) -> io::Result<Floor> {
    let mut cmd = Command::new(env::current_exe()?);
    cmd.env(ROLE_VAR, ROLE)
        .env(N_VAR, n.to_string())
        .env(CLIENT_CPU_VAR, client_cpu.to_string());
    let out = run_pinned(&mut cmd, server_cpu, TIMEOUT)?;
    let line = out.stdout.lines().find(|l| l.contains("\"floor\""));
    let (Some(line), true) = (line, out.status.success()) else {
        let why = format!("floor failed ({}): {}", out.status, out.stderr.trim());
        return Err(io::Error::other(why));
    };
    let num = |key| json_number(line, key);
    Ok(Floor {
        n: num("n").unwrap_or(0.0) as usize,
        close_ms: num("close_ms").ok_or_else(|| io::Error::other("floor: no close_ms"))?,
        close_cpu_ms: num("close_cpu_ms").unwrap_or(f64::NAN),
        clients_closed_ms: num("clients_closed_ms"),
        eof: num("eof").unwrap_or(0.0) as u64,
    })
}

/// The child's role (see the module docs).
pub fn run() -> io::Result<()> {
    let var = |name: &str| env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
    let n = var(N_VAR).unwrap_or(1000);
    let client_cpu = var(CLIENT_CPU_VAR);
    let (clients, servers) = open_pairs(n)?;
    let holders = idle::hold(clients, client_cpu, TIMEOUT / 2)?;
    std::thread::sleep(SETTLE);
    let cpu_start = procstat::thread_cpu_seconds();
    let start = Instant::now();
    for server in servers {
        drop(server);
    }
    let close = start.elapsed();
    let close_cpu = procstat::thread_cpu_seconds() - cpu_start;
    let r = holders.wait()?;
    let clients_closed = r.last_end.map_or("null".into(), |t| {
        format!("{:.3}", (t - start).as_secs_f64() * 1e3)
    });
    println!(
        r#"{{"floor":{{"n":{n},"close_ms":{:.3},"close_cpu_ms":{:.3},"clients_closed_ms":{clients_closed},"eof":{},"resets":{},"still_open":{}}}}}"#,
        close.as_secs_f64() * 1e3,
        close_cpu * 1e3,
        r.eof,
        r.resets,
        r.still_open
    );
    Ok(())
}

/// Opens `n` loopback connections to a listener of its own, one 16-byte round trip
/// each, all within 30 s; returns the client ends and the server ends, in the same
/// order. The listener is closed before this returns.
pub fn open_pairs(n: usize) -> io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let (mut clients, mut servers) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::other(
                "floor: opening the connections took too long",
            ));
        }
        let (client, server) = open_pair(&listener, &addr, left)?;
        clients.push(client);
        servers.push(server);
    }
    Ok((clients, servers))
}

/// Connects one client to `listener`, accepts it, and does one round trip.
fn open_pair(
    listener: &TcpListener,
    addr: &SocketAddr,
    timeout: Duration,
) -> io::Result<(TcpStream, TcpStream)> {
    let mut client = TcpStream::connect_timeout(addr, timeout)?;
    // The connection is complete, so it waits in the accept queue: no blocking here.
    let (mut server, _) = listener.accept()?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
    }
    let mut buf = [0u8; PING];
    client.write_all(&[7; PING])?;
    server.read_exact(&mut buf)?;
    server.write_all(&buf)?;
    client.read_exact(&mut buf)?;
    Ok((client, server))
}
