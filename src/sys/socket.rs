//! The few plain socket syscalls both backends make the same way: shutting a connection
//! down, and accepting a listener's backlog until EAGAIN during the drain.

use std::os::fd::RawFd;

/// `shutdown(2)` on a connection socket the worker owns (its slot keeps the descriptor
/// open until the close completes). Errors, such as ENOTCONN after a reset, only mean
/// there is nothing left to shut down, so they are ignored.
pub(crate) fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown takes a descriptor and a constant; it touches no memory of ours.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Accepts from a non-blocking listener until EAGAIN, pushing each new descriptor
/// (opened with `flags`, e.g. SOCK_CLOEXEC). Returns the errno that stopped it early
/// (EMFILE, say), if one did.
pub(crate) fn accept_all(
    listener: RawFd,
    flags: libc::c_int,
    accepted: &mut Vec<RawFd>,
) -> Option<i32> {
    loop {
        // SAFETY: accept4 on a listening socket the worker owns; null address pointers are
        // allowed and mean "don't report the peer".
        let fd =
            unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
        if fd >= 0 {
            accepted.push(fd);
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return None,
            Some(libc::EINTR | libc::ECONNABORTED) => continue,
            errno => return errno.or(Some(libc::EIO)),
        }
    }
}
