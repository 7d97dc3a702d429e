//! Signals: SIGTERM, SIGINT and SIGQUIT (the drain; a second one forces it) and SIGHUP,
//! SIGUSR1 and SIGUSR2 (logged and ignored: their default action would kill the process
//! and drop what is in flight) are blocked in every thread and read through a signalfd,
//! so a signal reaches a worker as one more completion on its ring.
//!
//! A signal that is blocked in every thread stays pending until a signalfd read takes
//! it; a thread that did not block it would get the default action instead (the process
//! dies at once). [`Server::run`](crate::Server::run) blocks both signals in the calling
//! thread before it starts any worker, and workers inherit the mask. Threads the program
//! started earlier do not: call [`block_shutdown_signals`] first thing in `main`.

use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd};

use super::syscall::syscall;

/// The signals read through the signalfd: the first three start (and, a second time,
/// force) the drain; the others are logged and ignored.
pub(crate) const SHUTDOWN_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn shutdown_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { syscall!(sigemptyset(&mut set)) }?;
    for sig in SHUTDOWN_SIGNALS {
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid signal number.
        unsafe { syscall!(sigaddset(&mut set, sig)) }?;
    }
    Ok(set)
}

/// Blocks SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 and SIGUSR2 in the calling thread,
/// and so in every thread it starts afterwards. Call it first thing in `main` when the program starts threads of its own
/// before [`Server::run`](crate::Server::run); otherwise `run` does it.
///
/// ```
/// gracering::block_shutdown_signals().expect("block the signals the server reads");
/// ```
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_set()?;
    // SAFETY: `set` is an initialised sigset_t; the old mask is not asked for (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        // pthread functions return the error number instead of setting errno.
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A non-blocking signalfd for the signals of [`SHUTDOWN_SIGNALS`].
pub(crate) fn shutdown_signalfd() -> io::Result<OwnedFd> {
    let set = shutdown_set()?;
    // SAFETY: -1 asks for a new descriptor; `set` is initialised.
    let fd = unsafe { syscall!(signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)) }?;
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The size of one `signalfd_siginfo` record.
pub(crate) const SIGINFO_SIZE: usize = mem::size_of::<libc::signalfd_siginfo>();

/// The signal number in a `signalfd_siginfo` record (its first field).
pub(crate) fn signo(record: &[u8; SIGINFO_SIZE]) -> i32 {
    u32::from_ne_bytes([record[0], record[1], record[2], record[3]]) as i32
}
