//! Passing listening sockets to another process over a Unix stream socket
//! (SCM_RIGHTS), for the in-place upgrade (`crate::upgrade`): the kernel gives the
//! receiver new descriptors of the very same sockets, accept queues included.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::syscall::syscall;

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 64;

/// The control buffer for `n` descriptors, aligned for `cmsghdr`.
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) as usize }
}

/// Sends `data` with the descriptors `fds` attached.
pub(crate) fn send_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS || data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "1 to 64 descriptors",
        ));
    }
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty message; the fields set below point at
    // live buffers (`iov`, `control`) that outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(fds.len());
    // SAFETY: `control` holds CMSG_SPACE(len) bytes, 8-byte aligned, so the first
    // header and its data fit; CMSG_FIRSTHDR/CMSG_DATA point inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of_val(fds) as u32) as usize;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            size_of_val(fds),
        );
    }
    let sent = loop {
        // SAFETY: `msg` describes live buffers; the kernel copies them during the call.
        match unsafe { syscall!(sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)) } {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if sent as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Receives one message into `buf` and the descriptors attached to it (close-on-exec):
/// the byte count and the descriptors, each owned by the caller.
pub(crate) fn recv_fds(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in `send_fds`: a zeroed msghdr pointed at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS);
    let flags = libc::MSG_CMSG_CLOEXEC;
    let n = loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes and `msg_controllen` bytes
        // of control data into the buffers `msg` points at, both live for the call.
        match unsafe { syscall!(recvmsg(stream.as_raw_fd(), &mut msg, flags)) } {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control buffer with well-formed headers up to
    // `msg_controllen`; CMSG_FIRSTHDR/CMSG_NXTHDR walk them within it, and each
    // SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4` descriptors that this
    // process now owns (each taken once, here).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were truncated"));
    }
    Ok((n as usize, fds))
}

/// The received descriptors as listening TCP sockets (non-blocking, filter removed).
pub(crate) fn into_listeners(fds: Vec<OwnedFd>) -> io::Result<Vec<socket2::Socket>> {
    fds.into_iter()
        .map(|fd| {
            let socket = socket2::Socket::from(fd);
            if !socket.is_listener().unwrap_or(false) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a passed descriptor is not a listening socket",
                ));
            }
            socket.set_nonblocking(true)?;
            if let Err(e) = socket.detach_filter()
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                return Err(e);
            }
            Ok(socket)
        })
        .collect()
}

/// Whether the process at the other end of `stream` runs as this process's user
/// (SO_PEERCRED): only such a process is handed the listening sockets.
pub(crate) fn peer_is_same_user(stream: &UnixStream) -> io::Result<bool> {
    // SAFETY: a zeroed ucred is a valid value for getsockopt to overwrite.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (one ucred) into `cred`, a live local.
    unsafe {
        syscall!(getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len
        ))
    }?;
    // SAFETY: geteuid takes nothing and cannot fail.
    let me = unsafe { libc::geteuid() };
    Ok(cred.uid == me)
}
