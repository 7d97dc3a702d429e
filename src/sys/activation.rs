//! systemd socket activation: the listening sockets a service manager passed to this
//! process (`LISTEN_PID` naming it, `LISTEN_FDS` sockets from descriptor 3 on; see
//! sd_listen_fds(3)), read with the `sd-notify` crate and checked here.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Socket, Type};

/// The descriptors were taken (they have one owner in the process).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The listening TCP sockets passed to this process, if any (non-blocking and
/// close-on-exec from now on). Taken once per process: a second call finds none.
pub(crate) fn take_listeners() -> io::Result<Option<Vec<Socket>>> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()?.collect();
    if fds.is_empty() || TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    let mut sockets = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: LISTEN_PID names this process, so the manager passed descriptors 3 to
        // 3 + LISTEN_FDS - 1 for it to own; `TAKEN` makes this the only place in the
        // process that wraps them, once, so each has exactly one owner.
        let socket = unsafe { Socket::from_raw_fd(fd) };
        let listening = socket.is_listener().unwrap_or(false);
        let stream = socket.r#type().is_ok_and(|t| t == Type::STREAM);
        let ip = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some();
        if !(listening && stream && ip) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket activation: descriptor {fd} is not a listening TCP socket"),
            ));
        }
        socket.set_nonblocking(true)?;
        // A filter left by an earlier instance would drop every handshake.
        if let Err(e) = socket.detach_filter()
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            return Err(e);
        }
        sockets.push(socket);
    }
    Ok(Some(sockets))
}
