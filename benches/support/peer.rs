//! What every bench binary's `main` and its re-executed peer roles share: reporting a
//! role's result as the exit code, and running a peer server on a tokio
//! current-thread runtime with a last-resort lifetime, and the signalfd the draining
//! peers learn of SIGTERM from.

use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use tokio::runtime::Builder;

/// The result of `main`'s role (the bench itself or a peer) as the process's exit code;
/// an error is printed on stderr as `{bench}: {error}` first.
pub fn exit_code(bench: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bench}: {e}");
            ExitCode::FAILURE
        }
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
/// non-blocking signalfd that turns readable when SIGTERM arrives.
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
