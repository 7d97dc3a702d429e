//! The one way this crate makes a raw libc call: [`syscall!`] turns the C convention
//! (`-1` and `errno`) into an `io::Result`, so no return value is ignored by accident.

/// Calls a libc function and turns a `-1` result into `io::Error::last_os_error()`.
///
/// Expands to an `unsafe` call: the caller writes the `// SAFETY:` comment that says why
/// the arguments are valid.
///
/// ```text
/// // SAFETY: shutdown takes a descriptor and a constant; it touches no memory.
/// let rc = unsafe { syscall!(shutdown(fd, libc::SHUT_WR)) }?;
/// ```
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        let rc = libc::$fn($($arg),*);
        if rc == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }};
}

pub(crate) use syscall;
