//! A non-blocking eventfd: the wake-up any thread can give a worker.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::syscall::syscall;

/// An eventfd owned by its worker's [`Waker`](crate::shared::Waker).
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd with its counter at zero.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes an initial value and flags; it touches no memory.
        let fd = unsafe { syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)) }?;
        // SAFETY: eventfd returned a new descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The descriptor, for a read armed in a ring or an epoll set.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Adds one to the counter: the worker's pending read completes. EAGAIN (the
    /// counter is saturated) still leaves the worker woken, so it counts as success.
    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd this struct owns.
        let written = unsafe { syscall!(write(self.raw(), (&one as *const u64).cast(), 8)) };
        match written {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads and resets the counter; `Ok(false)` when it was zero (EAGAIN).
    pub fn take(&self) -> io::Result<bool> {
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from the eventfd this struct owns.
        let read = unsafe { syscall!(read(self.raw(), (&mut counter as *mut u64).cast(), 8)) };
        match read {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
