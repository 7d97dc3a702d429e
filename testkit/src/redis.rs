//! A real `redis-server` for the tests and benchmarks, and a small blocking client to
//! look into it.
//!
//! - [`RedisServer`]: a `redis-server` child on a free loopback port, with nothing
//!   saved (`--save ""`, `--appendonly no`) in a fresh temporary directory, killed by
//!   its PID when dropped; [`kill`](RedisServer::kill) and
//!   [`restart`](RedisServer::restart) (same port) for "Redis died under load, then
//!   came back", [`cpu_time`](RedisServer::cpu_time) for Redis's own CPU per request.
//! - [`RedisClient`]: blocking RESP2 commands over a `TcpStream` with timeouts, and the
//!   few helpers the tests ask Redis with (`CLIENT LIST`, `INFO clients`,
//!   `CLIENT PAUSE`).
//! - [`Monitor`]: a `MONITOR` connection read on a helper thread: every command Redis
//!   ran, with Redis's wall-clock time, the client's address and the arguments.
//!
//! The RESP2 reader and writer are written here by hand (a hundred lines) rather than
//! taken from a Redis crate: testkit stays on `libc` and `httparse`, and a test client
//! that sends one command and reads one reply needs no more.
//!
//! `redis-server` must be on the `PATH` (Debian's `redis-server` package; `.ci/run`
//! installs it). When it is not, [`RedisServer::start`] fails with an error saying so:
//! a test that needs Redis fails rather than passing without it.
//!
//! Seen on Redis 7.0: while `CLIENT PAUSE ms ALL` is in effect *every* command of every
//! client waits, `CLIENT UNPAUSE` included, so a pause can only be waited out.
//! `MONITOR` does not show the `CLIENT` subcommands flagged admin (`PAUSE`, `UNPAUSE`,
//! `LIST`, `KILL`) but does show `QUIT`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::process::{self, Launch};
use crate::procstat;

/// The program started, looked up on the `PATH`.
const PROGRAM: &str = "redis-server";
/// How many fresh ports [`RedisServer::launch`] tries when another process takes the
/// one it picked before Redis could bind it.
const PORT_TRIES: usize = 5;
/// How long [`RedisServer::restart`] keeps trying to bind its port again.
const REBIND_FOR: Duration = Duration::from_secs(5);
/// What Redis logs when its port is taken.
const ADDR_IN_USE: &str = "Address already in use";
/// The largest bulk string or array a reply may announce (Redis's own limit).
const MAX_LEN: usize = 512 << 20;

/// A `redis-server` running as our child on `127.0.0.1`, killed (by its PID) and its
/// directory removed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pid: u32,
    port: u16,
    /// The fresh temporary directory Redis runs in (`--dir`), holding its log.
    dir: PathBuf,
    launch: Launch,
}

impl RedisServer {
    /// Starts a server on a free port, on any CPU, killed only by [`Drop`] (or
    /// [`kill`](Self::kill)); waits up to 10 s for it to answer `PING`.
    pub fn start() -> io::Result<RedisServer> {
        Self::launch(&Launch {
            cpu: None,
            die_with_parent: false,
            capture_stderr: false,
            timeout: Duration::from_secs(10),
        })
    }

    /// Like [`start`](Self::start), with every thread of Redis pinned to `cpu` and
    /// Redis killed when the spawning thread dies (a benchmark's server: start it from a
    /// thread that outlives it, as [`Launch::pinned`] says).
    pub fn start_pinned(cpu: usize) -> io::Result<RedisServer> {
        Self::launch(&Launch {
            timeout: Duration::from_secs(10),
            ..Launch::pinned(cpu)
        })
    }

    /// Starts a server as `launch` says: its `cpu` and `die_with_parent` apply, its
    /// `timeout` is how long Redis gets to answer `PING`; `capture_stderr` is ignored
    /// (Redis's stdout and stderr go to [`log_path`](Self::log_path)). The port is one
    /// the kernel just handed out for `127.0.0.1:0`; if another process takes it before
    /// Redis binds it, another port is tried, a few times.
    pub fn launch(launch: &Launch) -> io::Result<RedisServer> {
        let dir = fresh_dir()?;
        let mut server = RedisServer {
            child: None,
            pid: 0,
            port: 0,
            dir,
            launch: *launch,
        };
        for _ in 0..PORT_TRIES {
            server.port = free_port()?;
            if let Some(child) = server.spawn()? {
                server.pid = child.id();
                server.child = Some(child);
                return Ok(server);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{PROGRAM}: {PORT_TRIES} free ports in a row were taken before it bound them"),
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The PID of the running server, or of the last one after [`kill`](Self::kill).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server is running (started and not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The file Redis logs to (`--loglevel warning`), kept across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// A new client connection to this server (see [`RedisClient::connect`]).
    pub fn client(&self) -> io::Result<RedisClient> {
        RedisClient::connect(self.addr())
    }

    /// A new `MONITOR` connection to this server (see [`Monitor::start`]).
    pub fn monitor(&self) -> io::Result<Monitor> {
        Monitor::start(self.addr())
    }

    /// CPU time the server has used so far (all its threads, precise: see
    /// [`procstat::cpu_nanos`]). Sample it around a window and divide by the requests.
    pub fn cpu_time(&self) -> io::Result<Duration> {
        if self.child.is_none() {
            return Err(io::Error::other(format!("{PROGRAM} is not running")));
        }
        Ok(Duration::from_nanos(procstat::cpu_nanos(self.pid)?))
    }

    /// Kills the server with SIGKILL (by its PID, nothing else) and waits until it has
    /// exited. Its clients see their connections reset or closed. Nothing happens if
    /// it is not running.
    pub fn kill(&mut self) -> io::Result<()> {
        match self.child.take() {
            Some(mut child) => {
                // Wait even if `kill` failed: the child must be reaped either way.
                let killed = child.kill();
                let waited = child.wait();
                killed.and(waited).map(drop)
            }
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port (killing it first if it runs), empty:
    /// nothing was saved. If the port is taken, binding it is tried again for up to
    /// 5 s. Waits for `PING` as [`launch`](Self::launch) does; the PID changes.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        let deadline = Instant::now() + REBIND_FOR;
        loop {
            if let Some(child) = self.spawn()? {
                self.pid = child.id();
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{PROGRAM}: port {} stayed taken for {REBIND_FOR:?}",
                        self.port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spawns Redis on `self.port` and waits until it answers `PING` with its own PID in
    /// `INFO server` (not another server that took the port); `None` when it exited
    /// because the port was taken.
    fn spawn(&self) -> io::Result<Option<Child>> {
        let log = self.log_path();
        let log_from = fs::metadata(&log).map_or(0, |m| m.len());
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let port = self.port.to_string();
        let mut cmd = Command::new(PROGRAM);
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = match process::spawn(&mut cmd, &self.launch) {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{PROGRAM} is not on the PATH ({e}): install Debian's redis-server \
                         package (.ci/run does)"
                    ),
                ));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("spawn {PROGRAM}: {e}"))),
        };
        let pid = child.id();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + self.launch.timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                let said = read_from(&log, log_from);
                if said.contains(ADDR_IN_USE) {
                    return Ok(None);
                }
                return Err(io::Error::other(format!(
                    "{PROGRAM} on port {port} exited ({status}) before answering PING; \
                     its log {}:\n{said}",
                    log.display()
                )));
            }
            if answers_as(addr, pid) {
                return Ok(Some(child));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{PROGRAM} on port {port} did not answer PING within {:?}; its log {}:\n{}",
                        self.launch.timeout,
                        log.display(),
                        read_from(&log, log_from)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether the server at `addr` answers `PING` and is the process `pid`.
fn answers_as(addr: SocketAddr, pid: u32) -> bool {
    let probe = || -> io::Result<bool> {
        let mut client = RedisClient::connect_timeout(addr, Duration::from_millis(200))?;
        client.set_timeout(Some(Duration::from_millis(500)))?;
        if client.cmd(&[b"PING"])? != Reply::Simple("PONG".into()) {
            return Ok(false);
        }
        let info = client.cmd(&[b"INFO", b"server"])?.into_bytes()?;
        let text = String::from_utf8_lossy(&info);
        Ok(info_field(&text, "process_id") == Some(&pid.to_string()))
    };
    probe().unwrap_or(false)
}

/// A port the kernel just handed out on `127.0.0.1`, free again once this returns.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A new empty directory under the system's temporary directory.
fn fresh_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "gracering-redis-{}-{n}-{nanos}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
}

/// What `path` holds from byte `from` on (lossy), or why it could not be read.
fn read_from(path: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|f| {
        let mut f = f;
        io::Seek::seek(&mut f, io::SeekFrom::Start(from))?;
        f.read_to_end(&mut bytes)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// The value of `name:value` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim_end().split_once(':')?;
        (key == name).then_some(value)
    })
}

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the whole line, its code (`ERR`, `WRONGTYPE`, ...) first.
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3 abc`, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`, or `*-1` (nil).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// `self`, unless it is an error reply: that becomes an `io::Error` with its text.
    pub fn ok(self) -> io::Result<Reply> {
        match self {
            Reply::Error(e) => Err(io::Error::other(format!("redis: {e}"))),
            reply => Ok(reply),
        }
    }

    /// The bytes of a bulk or simple string (an error for anything else).
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self.ok()? {
            Reply::Bulk(Some(bytes)) => Ok(bytes),
            Reply::Simple(s) => Ok(s.into_bytes()),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected reply from redis: {reply:?}"),
    )
}

fn bad_reply(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad RESP reply: {what}"),
    )
}

/// A blocking client connection: one command, then its reply, with read and write
/// timeouts (5 s unless [`set_timeout`](Self::set_timeout) says otherwise), so that
/// a test never hangs on a Redis that does not answer.
pub struct RedisClient {
    conn: BufReader<TcpStream>,
}

impl RedisClient {
    /// The read and write timeout of a new connection.
    pub const TIMEOUT: Duration = Duration::from_secs(5);

    /// Connects to `addr` (within [`TIMEOUT`](Self::TIMEOUT)).
    pub fn connect(addr: SocketAddr) -> io::Result<RedisClient> {
        Self::connect_timeout(addr, Self::TIMEOUT)
    }

    /// Connects to `addr` within `timeout`.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<RedisClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        let client = RedisClient {
            conn: BufReader::new(stream),
        };
        client.set_timeout(Some(Self::TIMEOUT))?;
        Ok(client)
    }

    /// Sets the read and write timeouts (`None`: wait for ever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.conn.get_ref().set_read_timeout(timeout)?;
        self.conn.get_ref().set_write_timeout(timeout)
    }

    /// This connection's own address, as `CLIENT LIST` and [`Monitor`] show it.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.conn.get_ref().local_addr()
    }

    /// Sends `args` as one command and reads its reply. An error reply is
    /// `Ok(Reply::Error(..))`; see [`Reply::ok`].
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        self.read_reply()
    }

    /// Sends `args` as one command without reading its reply (to pipeline, or to send a
    /// command that will wait, such as one during `CLIENT PAUSE`).
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.conn.get_mut().write_all(&out)
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.conn)
    }

    /// `PING`, expecting `PONG`.
    pub fn ping(&mut self) -> io::Result<()> {
        match self.cmd(&[b"PING"])?.ok()? {
            Reply::Simple(s) if s == "PONG" => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// `GET key`.
    pub fn get(&mut self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.cmd(&[b"GET", key])?.ok()? {
            Reply::Bulk(value) => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// `SET key value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.expect_ok(&[b"SET", key, value])
    }

    /// `CLIENT LIST`: every client connection, this one included (a `MONITOR`
    /// connection shows with `cmd=monitor`).
    pub fn client_list(&mut self) -> io::Result<Vec<ClientInfo>> {
        let list = self.cmd(&[b"CLIENT", b"LIST"])?.into_bytes()?;
        String::from_utf8_lossy(&list)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(ClientInfo::parse)
            .collect()
    }

    /// `connected_clients` from `INFO clients` (this connection included).
    pub fn info_clients(&mut self) -> io::Result<u64> {
        let info = self.cmd(&[b"INFO", b"clients"])?.into_bytes()?;
        let text = String::from_utf8_lossy(&info);
        info_field(&text, "connected_clients")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad_reply(format!("no connected_clients in {text:?}")))
    }

    /// `CLIENT PAUSE ms ALL`: for `ms` milliseconds Redis runs no command of any client
    /// (they wait, unanswered), `CLIENT UNPAUSE` included (seen on 7.0).
    pub fn client_pause(&mut self, ms: u64) -> io::Result<()> {
        self.expect_ok(&[b"CLIENT", b"PAUSE", ms.to_string().as_bytes(), b"ALL"])
    }

    /// `CLIENT UNPAUSE` (it waits out a `CLIENT PAUSE ... ALL` itself, see
    /// [`client_pause`](Self::client_pause)).
    pub fn client_unpause(&mut self) -> io::Result<()> {
        self.expect_ok(&[b"CLIENT", b"UNPAUSE"])
    }

    fn expect_ok(&mut self, args: &[&[u8]]) -> io::Result<()> {
        match self.cmd(args)?.ok()? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// Reads one RESP2 reply from `conn`.
fn read_reply(conn: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(conn)?;
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| bad_reply("empty line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let number = || -> io::Result<i64> {
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_reply(format!("not a number: {:?}", text())))
    };
    let length = |n: i64| -> io::Result<Option<usize>> {
        match n {
            -1 => Ok(None),
            n if (0..=MAX_LEN as i64).contains(&n) => Ok(Some(n as usize)),
            n => Err(bad_reply(format!("length {n}"))),
        }
    };
    match kind[0] {
        b'+' => Ok(Reply::Simple(text())),
        b'-' => Ok(Reply::Error(text())),
        b':' => Ok(Reply::Integer(number()?)),
        b'$' => match length(number()?)? {
            None => Ok(Reply::Bulk(None)),
            Some(n) => {
                let mut bytes = vec![0; n + 2];
                conn.read_exact(&mut bytes)?;
                if !bytes.ends_with(b"\r\n") {
                    return Err(bad_reply("bulk string not ended by CRLF"));
                }
                bytes.truncate(n);
                Ok(Reply::Bulk(Some(bytes)))
            }
        },
        b'*' => match length(number()?)? {
            None => Ok(Reply::Array(None)),
            Some(n) => {
                // Not `with_capacity(n)`: `n` comes from the wire.
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(read_reply(conn)?);
                }
                Ok(Reply::Array(Some(items)))
            }
        },
        other => Err(bad_reply(format!(
            "type byte {:?} (RESP3 is not spoken here)",
            other as char
        ))),
    }
}

/// One line, without its `\r\n`; EOF is `UnexpectedEof`.
fn read_line(conn: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    conn.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "redis closed the connection",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad_reply(format!(
            "line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

/// One line of `CLIENT LIST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: u64,
    /// The client's address (its side of the connection).
    pub addr: SocketAddr,
    /// The name it set with `CLIENT SETNAME` (empty if none).
    pub name: String,
    /// How long it has been connected (whole seconds).
    pub age: Duration,
    /// How long since its last command (whole seconds).
    pub idle: Duration,
    /// Its last command, lowercase, subcommands after `|` (`get`, `client|list`,
    /// `NULL` before the first).
    pub cmd: String,
    /// Every `name=value` field of the line, these above included (`flags`, `db`,
    /// `qbuf`, `tot-mem`, ...).
    pub fields: Vec<(String, String)>,
}

impl ClientInfo {
    /// The field `name` of the line.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn parse(line: &str) -> io::Result<ClientInfo> {
        let fields: Vec<(String, String)> = line
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
                .ok_or_else(|| bad_reply(format!("no {name}= in CLIENT LIST line {line:?}")))
        };
        let parse = |name: &str| -> io::Result<u64> {
            field(name)?
                .parse()
                .map_err(|_| bad_reply(format!("bad {name}= in CLIENT LIST line {line:?}")))
        };
        Ok(ClientInfo {
            id: parse("id")?,
            addr: field("addr")?
                .parse()
                .map_err(|_| bad_reply(format!("bad addr= in CLIENT LIST line {line:?}")))?,
            name: field("name")?.to_owned(),
            age: Duration::from_secs(parse("age")?),
            idle: Duration::from_secs(parse("idle")?),
            cmd: field("cmd")?.to_owned(),
            fields: fields.clone(),
        })
    }
}

/// One command Redis ran, as `MONITOR` reported it:
/// `1796182637.831992 [0 127.0.0.1:53964] "GET" "k"`.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorLine {
    /// When Redis ran it: seconds since the Unix epoch, microsecond precision, Redis's
    /// wall clock (the same clock as `SystemTime::now()` on this machine).
    pub time: f64,
    pub db: u32,
    /// Who sent it, as Redis wrote it: `IP:PORT` for a TCP client, `lua` for a
    /// script, `unix:PATH` for a Unix socket.
    pub client: String,
    /// The command and its arguments, unquoted (the name as the client sent it).
    pub args: Vec<Vec<u8>>,
}

impl MonitorLine {
    /// The command's name, lowercase (`get`, `quit`).
    pub fn command(&self) -> String {
        self.args
            .first()
            .map(|name| String::from_utf8_lossy(name).to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The client's address when it is a TCP client.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.client.parse().ok()
    }

    /// When Redis ran it, as a `SystemTime`.
    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(self.time.max(0.0))
    }

    /// Parses one line of `MONITOR` output (without its `\r\n`).
    pub fn parse(line: &str) -> Option<MonitorLine> {
        let line = line.strip_prefix('+').unwrap_or(line);
        let (time, rest) = line.split_once(' ')?;
        let rest = rest.strip_prefix('[')?;
        let (db, rest) = rest.split_once(' ')?;
        let (client, rest) = rest.split_once("] ")?;
        Some(MonitorLine {
            time: time.parse().ok()?,
            db: db.parse().ok()?,
            client: client.to_owned(),
            args: unquote_args(rest)?,
        })
    }
}

/// The arguments of a `MONITOR` line: each in double quotes, escaped as Redis's
/// `sdscatrepr` escapes (`\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b`, `\xHH`).
fn unquote_args(text: &str) -> Option<Vec<Vec<u8>>> {
    let bytes = text.as_bytes();
    let mut args = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' => i += 1,
            b'"' => {
                i += 1;
                let mut arg = Vec::new();
                loop {
                    match *bytes.get(i)? {
                        b'"' => break,
                        b'\\' => {
                            let escaped = *bytes.get(i + 1)?;
                            i += 2;
                            arg.push(match escaped {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'a' => 7,
                                b'b' => 8,
                                b'x' => {
                                    let hex = std::str::from_utf8(bytes.get(i..i + 2)?).ok()?;
                                    i += 2;
                                    u8::from_str_radix(hex, 16).ok()?
                                }
                                other => other,
                            });
                        }
                        byte => {
                            arg.push(byte);
                            i += 1;
                        }
                    }
                }
                i += 1;
                args.push(arg);
            }
            _ => return None,
        }
    }
    Some(args)
}

/// What the monitor's reading thread has gathered.
#[derive(Default)]
struct Seen {
    lines: Vec<MonitorLine>,
    /// Lines that did not parse as [`MonitorLine`]s.
    unparsed: Vec<String>,
    /// Why reading ended (EOF, the server killed, [`Monitor::stop`]), once it has.
    ended: Option<String>,
}

/// A connection in `MONITOR` mode, read by a helper thread until the server closes it
/// or [`stop`](Monitor::stop) (or drop) shuts it down. Every command Redis runs from
/// the moment [`start`](Monitor::start) returns is collected, in order.
pub struct Monitor {
    stream: TcpStream,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Connects to `addr`, sends `MONITOR` and waits for its `OK` (within
    /// [`RedisClient::TIMEOUT`]), then reads on in the background.
    pub fn start(addr: SocketAddr) -> io::Result<Monitor> {
        let mut client = RedisClient::connect(addr)?;
        match client.cmd(&[b"MONITOR"])?.ok()? {
            Reply::Simple(s) if s == "OK" => {}
            other => return Err(unexpected(&other)),
        }
        client.set_timeout(None)?;
        let stream = client.conn.get_ref().try_clone()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        let mut conn = client.conn;
        let reader = std::thread::spawn(move || {
            let why = loop {
                match read_line(&mut conn) {
                    Ok(line) => {
                        let line = String::from_utf8_lossy(&line).into_owned();
                        let mut seen = sink.lock().unwrap();
                        match MonitorLine::parse(&line) {
                            Some(parsed) => seen.lines.push(parsed),
                            None => seen.unparsed.push(line),
                        }
                    }
                    Err(e) => break e.to_string(),
                }
            };
            sink.lock().unwrap().ended = Some(why);
        });
        Ok(Monitor {
            stream,
            seen,
            reader: Some(reader),
        })
    }

    /// The lines collected so far.
    pub fn lines(&self) -> Vec<MonitorLine> {
        self.seen.lock().unwrap().lines.clone()
    }

    /// The lines collected so far from the client at `addr`.
    pub fn lines_from(&self, addr: SocketAddr) -> Vec<MonitorLine> {
        let seen = self.seen.lock().unwrap();
        let from = |line: &&MonitorLine| line.addr() == Some(addr);
        seen.lines.iter().filter(from).cloned().collect()
    }

    /// Lines that did not parse (none expected; kept rather than dropped unseen).
    pub fn unparsed(&self) -> Vec<String> {
        self.seen.lock().unwrap().unparsed.clone()
    }

    /// Why reading ended (the server closed the connection, was killed, or
    /// [`stop`](Self::stop) was called), or `None` while it goes on.
    pub fn ended(&self) -> Option<String> {
        self.seen.lock().unwrap().ended.clone()
    }

    /// Waits up to `timeout` for a line for which `matches` is true (looking at the
    /// lines already collected first); returns the first such line.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut matches: impl FnMut(&MonitorLine) -> bool,
    ) -> Option<MonitorLine> {
        let deadline = Instant::now() + timeout;
        let mut looked = 0;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if let Some(line) = seen.lines[looked..].iter().find(|l| matches(l)) {
                    return Some(line.clone());
                }
                looked = seen.lines.len();
                if seen.ended.is_some() {
                    return None;
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Shuts the connection down, waits for the reading thread, and returns every line
    /// collected.
    pub fn stop(mut self) -> Vec<MonitorLine> {
        self.shut();
        std::mem::take(&mut self.seen.lock().unwrap().lines)
    }

    fn shut(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> RedisServer {
        RedisServer::start().unwrap_or_else(|e| {
            panic!("these tests need a real redis-server (Debian's redis-server package): {e}")
        })
    }

    #[test]
    fn set_get_round_trip() {
        let redis = server();
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
        assert_eq!(redis.addr().port(), redis.port());
        let mut client = redis.client().unwrap();
        client.ping().unwrap();
        assert_eq!(client.get(b"k").unwrap(), None);
        let value = b"a\r\nb\0\xff".to_vec();
        client.set(b"k", &value).unwrap();
        assert_eq!(client.get(b"k").unwrap(), Some(value));
        assert_eq!(
            client.cmd(&[b"DEL", b"k", b"nope"]).unwrap(),
            Reply::Integer(1)
        );
        match client.cmd(&[b"NOSUCHCOMMAND"]).unwrap() {
            Reply::Error(e) => assert!(e.starts_with("ERR"), "{e}"),
            other => panic!("{other:?}"),
        }
        client
            .cmd(&[b"RPUSH", b"l", b"x", b"y"])
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(
            client.cmd(&[b"LRANGE", b"l", b"0", b"-1"]).unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"x".to_vec())),
                Reply::Bulk(Some(b"y".to_vec()))
            ]))
        );
        match client.cmd(&[b"GET", b"l"]).unwrap() {
            Reply::Error(e) => assert!(e.starts_with("WRONGTYPE"), "{e}"),
            other => panic!("{other:?}"),
        }
        let cpu = redis.cpu_time().unwrap();
        assert!(cpu > Duration::ZERO, "{cpu:?}");
    }

    #[test]
    fn client_list_shows_our_connection() {
        let redis = server();
        let mut client = redis.client().unwrap();
        client.cmd(&[b"CLIENT", b"SETNAME", b"probe"]).unwrap();
        let ours = client.local_addr().unwrap();
        let list = client.client_list().unwrap();
        let me = list
            .iter()
            .find(|c| c.addr == ours)
            .unwrap_or_else(|| panic!("{ours} not in {list:?}"));
        assert_eq!(me.name, "probe");
        assert_eq!(me.cmd, "client|list");
        assert!(me.id > 0);
        assert_eq!(me.field("db"), Some("0"));
        let mut other = redis.client().unwrap();
        other.ping().unwrap();
        assert_eq!(client.info_clients().unwrap(), 2);
    }

    #[test]
    fn kill_then_restart_on_the_same_port() {
        let mut redis = server();
        let (port, pid) = (redis.port(), redis.pid());
        let mut client = redis.client().unwrap();
        client.set(b"k", b"v").unwrap();
        redis.kill().unwrap();
        assert!(!redis.is_running());
        assert!(redis.cpu_time().is_err());
        assert!(client.ping().is_err(), "a killed server answered");
        assert!(RedisClient::connect(redis.addr()).is_err());
        redis.restart().unwrap();
        assert_eq!(redis.port(), port);
        assert_ne!(redis.pid(), pid);
        let mut client = redis.client().unwrap();
        // Nothing was saved: the new server starts empty.
        assert_eq!(client.get(b"k").unwrap(), None);
    }

    #[test]
    fn monitor_sees_commands_with_their_client_and_time() {
        let redis = server();
        let monitor = redis.monitor().unwrap();
        let mut client = redis.client().unwrap();
        let ours = client.local_addr().unwrap();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        client.set(b"k \"q\"\n", b"\x00\xff").unwrap();
        client.get(b"k").unwrap();
        client.send(&[b"QUIT"]).unwrap();
        assert_eq!(client.read_reply().unwrap(), Reply::Simple("OK".into()));
        let quit = monitor
            .wait_for(Duration::from_secs(5), |l| l.command() == "quit")
            .expect("MONITOR shows QUIT");
        assert_eq!(quit.addr(), Some(ours));
        let lines = monitor.lines_from(ours);
        let commands: Vec<String> = lines.iter().map(MonitorLine::command).collect();
        assert_eq!(commands, ["set", "get", "quit"]);
        assert_eq!(lines[0].args[1], b"k \"q\"\n");
        assert_eq!(lines[0].args[2], b"\x00\xff");
        // Redis's wall clock, microseconds: within a few seconds of ours.
        assert!(
            (lines[0].time - before.as_secs_f64()).abs() < 5.0,
            "{lines:?}"
        );
        assert!(lines.windows(2).all(|w| w[0].time <= w[1].time));
        assert!(monitor.unparsed().is_empty(), "{:?}", monitor.unparsed());
        assert_eq!(monitor.stop().len(), 3);
    }

    #[test]
    fn client_pause_all_holds_every_command() {
        let redis = server();
        let mut pauser = redis.client().unwrap();
        let mut client = redis.client().unwrap();
        let paused = Instant::now();
        pauser.client_pause(300).unwrap();
        client.ping().unwrap();
        assert!(paused.elapsed() >= Duration::from_millis(250));
        // CLIENT UNPAUSE is held too: a pause ALL can only be waited out.
        pauser.client_pause(300).unwrap();
        let paused = Instant::now();
        client.client_unpause().unwrap();
        assert!(paused.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn monitor_line_parsing() {
        let line = MonitorLine::parse(r#"1796182637.831992 [3 lua] "GET" "a\\b\x41\r""#).unwrap();
        assert_eq!(line.db, 3);
        assert_eq!(line.client, "lua");
        assert_eq!(line.addr(), None);
        assert_eq!(line.args, [b"GET".to_vec(), b"a\\bA\r".to_vec()]);
        assert!((line.time - 1796182637.831992).abs() < 1e-6);
        assert!(MonitorLine::parse("OK").is_none());
    }
}
