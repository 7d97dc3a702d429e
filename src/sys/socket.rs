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

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// Makes a listener drop new connection attempts (TCP segments with SYN and without
/// ACK) while letting handshakes already under way complete.
///
/// Closing a listener resets every connection in its accept queue, so the drain first
/// stops new handshakes with this filter, lets those in flight finish during the
/// accept's cancellation, accepts the backlog until EAGAIN, and only then closes. A
/// client whose SYN was dropped retries and finds the port closed: refused, never a
/// reset after its handshake completed. Best effort: errors are ignored.
pub(crate) fn refuse_new_handshakes(listener: RawFd) {
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    // A socket filter sees the TCP header at offset 0; byte 13 holds the flags.
    let program = [
        SockFilter {
            code: LD_B_ABS,
            jt: 0,
            jf: 0,
            k: 13,
        },
        SockFilter {
            code: JSET_K,
            jt: 0,
            jf: 2,
            k: SYN,
        }, // no SYN: keep
        SockFilter {
            code: JSET_K,
            jt: 1,
            jf: 0,
            k: ACK,
        }, // SYN+ACK: keep
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: 0,
        }, // SYN alone: drop
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    let prog = SockFprog {
        len: program.len() as u16,
        filter: program.as_ptr(),
    };
    // SAFETY: the kernel copies the program during the call; `prog` and `program` live
    // until it returns. The descriptor is a listener the worker owns.
    unsafe {
        libc::setsockopt(
            listener,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const SockFprog).cast(),
            size_of::<SockFprog>() as libc::socklen_t,
        );
    }
}
