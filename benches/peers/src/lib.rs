//! What gracering's peer servers share: their address, a tokio current-thread runtime
//! with a last-resort lifetime, the signalfd the draining peers learn of SIGTERM from
//! and their accept loop until it fires, and the plain-text response of the hyper peers.
//!
//! The peers are the binaries of this crate (`src/bin/`): `tokio-echo`,
//! `tokio-drain-echo`, `hyper-hello`, `hyper-drain`, `kv-hyper` (SQLite behind hyper),
//! `kv-redis-hyper` (Redis behind hyper, through the `redis` crate's multiplexed
//! connection) and `tokio-mailbox` (not a server: the mailbox bench's tokio `mpsc`
//! round trips). The benchmarks of the root crate build them with `cargo build
//! --release -p gracering-peers` and run them as pinned child processes; each serves on
//! `GRACERING_BENCH_ADDR` (default `127.0.0.1:0`, loopback only) and prints a line
//! holding its address on stdout. They live in a workspace member of their own so that
//! the root's `cargo test` builds neither them nor tokio.

use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::runtime::Builder;

/// Any error a peer's `main` reports.
pub type Error = Box<dyn std::error::Error>;

/// The address to serve on: `GRACERING_BENCH_ADDR`, else `127.0.0.1:0`.
pub fn listen_addr() -> String {
    std::env::var("GRACERING_BENCH_ADDR").unwrap_or("127.0.0.1:0".into())
}

/// The environment variable `name` as milliseconds, `default_ms` when it is not set; an
/// error naming it when it does not parse.
pub fn env_ms(name: &str, default_ms: u64) -> Result<Duration, Error> {
    match std::env::var(name) {
        Ok(v) => Ok(Duration::from_millis(
            v.trim().parse().map_err(|_| format!("bad {name}: {v:?}"))?,
        )),
        Err(_) => Ok(Duration::from_millis(default_ms)),
    }
}

/// Runs `future` on a tokio current-thread runtime with all drivers (IO and time);
/// see [`run_peer_on`].
pub fn run_peer<F: Future>(lifetime: Duration, exit_code: i32, future: F) -> io::Result<F::Output> {
    run_peer_on(
        Builder::new_current_thread().enable_all(),
        lifetime,
        exit_code,
        future,
    )
}

/// Starts a thread that exits the process with `exit_code` after `lifetime`, whatever
/// happens to the benchmark (a peer is normally stopped or killed by it, or killed with
/// it by `PR_SET_PDEATHSIG`: this is a last resort), then builds the runtime `runtime`
/// describes and runs `future` on it. The runtime is dropped, with whatever tasks are
/// left, before this returns.
pub fn run_peer_on<F: Future>(
    runtime: &mut Builder,
    lifetime: Duration,
    exit_code: i32,
    future: F,
) -> io::Result<F::Output> {
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        std::process::exit(exit_code);
    });
    let runtime = runtime.build()?;
    Ok(runtime.block_on(future))
}

/// Blocks SIGTERM for this thread (and the threads it starts) and returns a
/// non-blocking signalfd that turns readable when SIGTERM arrives. Call it before any
/// thread starts, so that no thread can take SIGTERM's default action.
pub fn sigterm_fd() -> io::Result<OwnedFd> {
    // SAFETY: `sigset_t` is plain data; `sigemptyset`/`sigaddset` initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; SIGTERM is a valid signal.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let err = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let flags = libc::SFD_NONBLOCK | libc::SFD_CLOEXEC;
    // SAFETY: -1 asks for a new signalfd; `set` is a valid, initialised sigset_t.
    let fd = unsafe { libc::signalfd(-1, &set, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Accepts connections on `listener`, running `serve` on each as a task (connections
/// whose `TCP_NODELAY` cannot be set are dropped), until SIGTERM arrives on `signals`
/// (from [`sigterm_fd`]); returns the tasks still running. Tasks that end are reaped
/// on the way. An accept error is printed as `{name}: accept: {error}`.
pub async fn accept_until_sigterm<F, Fut>(
    listener: &TcpListener,
    signals: OwnedFd,
    name: &str,
    mut serve: F,
) -> io::Result<JoinSet<()>>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // SAFETY: an `OwnedFd` keeps its descriptor open, and `as_raw_fd` returns that
    // same descriptor, for as long as the `AsyncFd` owns it.
    let signals = unsafe { AsyncFd::register_with_interest(signals, Interest::READABLE) }?;
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            ready = signals.readable() => {
                // The signal is left unread: the process is on its way out.
                ready?.retain_ready();
                return Ok(tasks);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if stream.set_nodelay(true).is_ok() {
                        tasks.spawn(serve(stream));
                    }
                }
                Err(e) => eprintln!("{name}: accept: {e}"),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// A `text/plain` response with `status` and `body`, as gracering's `http` example
/// answers.
pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

/// Pins the calling thread to `cpu` (as `taskset -c CPU` does for a process).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other(format!("cpu {cpu} is out of range")));
    }
    // SAFETY: `cpu_set_t` is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked against `CPU_SETSIZE` above, so the bit is in bounds.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The nearest-rank `q` quantile of sorted `values` (0 when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
