//! The few plain socket syscalls both backends make the same way: shutting a connection
//! down, accepting a listener's backlog until EAGAIN during the drain, and the socket
//! filter that refuses new handshakes before the listener closes.

use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{SockFilter, Socket};

/// A worker's listening socket, and whether it was handed to the process (systemd
/// socket activation) rather than bound by it.
///
/// An inherited socket belongs to the service manager too: it keeps its own descriptor
/// and its accept queue lives on after this process. The drain then neither attaches
/// the SYN filter (it would stay on the manager's socket and drop every later
/// handshake) nor takes the backlog: it stops accepting and closes only this process's
/// descriptor, so what waits in the queue waits for the next instance, never reset.
#[derive(Debug)]
pub(crate) struct Listener {
    pub socket: Socket,
    /// Passed to this process (socket activation, or an upgrade's predecessor).
    pub inherited: bool,
    /// Another process holds this socket too and will accept from it after this one
    /// (systemd; or, once handed over, the successor of an in-place upgrade): the
    /// drain leaves its queue and its filter alone. Set at once for an inherited
    /// socket, and at the hand-over for an upgrade.
    pub others: Arc<AtomicBool>,
    /// Other workers accept from the same socket (one passed socket for all): io_uring
    /// then arms single accepts, so that a ring that took a connection queues behind
    /// the others for the next one (a multishot accept keeps its place in the socket's
    /// wait queue, and the first ring would take every connection).
    pub shared: bool,
}

impl Listener {
    /// A listener of this process's own, or one passed to it.
    pub fn new(socket: Socket, inherited: bool, others: bool, shared: bool) -> Listener {
        Listener {
            socket,
            inherited,
            others: Arc::new(AtomicBool::new(others)),
            shared,
        }
    }

    /// Whether another process holds this socket too.
    pub fn held_by_others(&self) -> bool {
        self.others.load(Ordering::Acquire)
    }
}

impl Deref for Listener {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.socket
    }
}

use super::syscall::syscall;

/// `shutdown(2)` on a connection socket the worker owns (its slot keeps the descriptor
/// open until the close completes). ENOTCONN (the peer reset the connection first)
/// means there is nothing left to shut down; any other error is logged: the close that
/// follows still releases the connection.
pub(crate) fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown takes a descriptor and a constant; it touches no memory of ours.
    match unsafe { syscall!(shutdown(fd, how)) } {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        Err(e) => log::warn!("shutdown({fd}, {how}): {e}"),
    }
}

/// Accepts from a non-blocking listener until EAGAIN, pushing each new descriptor
/// (opened with `flags`, e.g. SOCK_CLOEXEC). Returns the errno that stopped it early
/// (EMFILE, say), if one did.
pub(crate) fn accept_all(
    listener: &Listener,
    flags: libc::c_int,
    accepted: &mut Vec<RawFd>,
) -> Option<i32> {
    if listener.held_by_others() {
        return None; // the queue is another process's too: left for it
    }
    loop {
        match accept(listener.as_raw_fd(), flags) {
            Ok(fd) => accepted.push(fd),
            Err(libc::EAGAIN) => return None,
            Err(libc::EINTR | libc::ECONNABORTED) => continue,
            Err(errno) => return Some(errno),
        }
    }
}

/// Accepts the backlog for [`Intents::close_listener_now`](crate::contract::Intents::close_listener_now)
/// (both kernel backends): what the listener's queue holds goes into `accepted`, the
/// listener is dropped once the queue is empty or when `give_up`, and kept while
/// descriptors or memory run out.
pub(crate) fn close_listener(
    listener: &mut Option<Listener>,
    accepted: &mut Vec<RawFd>,
    give_up: bool,
    flags: libc::c_int,
) -> crate::contract::BacklogEnd {
    use crate::contract::BacklogEnd;
    let Some(l) = listener.as_ref() else {
        return BacklogEnd::Closed;
    };
    refuse_new_handshakes(l);
    let errno = if give_up {
        0
    } else {
        match accept_all(l, flags, accepted) {
            None => {
                drop(listener.take());
                return BacklogEnd::Closed;
            }
            Some(e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                return BacklogEnd::Waiting(e);
            }
            Some(e) => e,
        }
    };
    let lost = if l.held_by_others() {
        0
    } else {
        queued(l.as_raw_fd())
    };
    drop(listener.take());
    BacklogEnd::GaveUp { errno, lost }
}

/// How many connections wait in a listening socket's accept queue (`tcpi_unacked` of a
/// listener, as `ss` shows it), 0 if the kernel does not say.
pub(crate) fn queued(listener: RawFd) -> usize {
    tcp_info(listener).map_or(0, |info| info.tcpi_unacked as usize)
}

/// A connection's smoothed round-trip time (`tcpi_rtt`), if the kernel has one.
pub(crate) fn rtt(fd: RawFd) -> Option<std::time::Duration> {
    let info = tcp_info(fd)?;
    (info.tcpi_rtt > 0).then(|| std::time::Duration::from_micros(info.tcpi_rtt.into()))
}

/// `getsockopt(TCP_INFO)`.
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let ptr = (&raw mut info).cast();
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
    let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, ptr, &mut len) };
    (r == 0).then_some(info)
}

/// One non-blocking `accept4` on a listener: the new descriptor, or the errno.
pub(crate) fn accept(listener: RawFd, flags: libc::c_int) -> Result<RawFd, i32> {
    let (addr, len) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: accept4 on a listening socket the worker owns; null address pointers are
    // allowed and mean "don't report the peer".
    unsafe { syscall!(accept4(listener, addr, len, flags)) }
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// The classic BPF program that drops TCP segments with SYN and without ACK.
fn syn_filter() -> [SockFilter; 5] {
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    // A socket filter sees the TCP header at offset 0; byte 13 holds the flags.
    [
        SockFilter::new(LD_B_ABS, 0, 0, 13),
        SockFilter::new(JSET_K, 0, 2, SYN), // no SYN: keep
        SockFilter::new(JSET_K, 1, 0, ACK), // SYN+ACK: keep
        SockFilter::new(RET_K, 0, 0, 0),    // SYN alone: drop
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ]
}

/// Makes a listener drop new connection attempts (TCP segments with SYN and without
/// ACK) while letting handshakes already under way complete.
///
/// Closing a listener resets every connection in its accept queue, so the drain first
/// stops new handshakes with this filter, lets those in flight finish during the
/// accept's cancellation, accepts the backlog until EAGAIN, and only then closes. A
/// client whose SYN was dropped retries and finds the port closed: refused, never a
/// reset after its handshake completed. A failure is logged: the drain goes on without
/// the filter (a handshake that completes in the last instant may then be reset).
pub(crate) fn refuse_new_handshakes(listener: &Listener) {
    if listener.held_by_others() {
        return; // the filter would outlive us on the other process's socket
    }
    if let Err(e) = listener.attach_filter(&syn_filter()) {
        log::warn!("cannot attach the SYN filter to the listener: {e}");
    }
}

/// A new non-blocking TCP socket for an outbound connection (IPv6 when `v6`), with
/// TCP_NODELAY (a client pipelines small requests: Nagle would hold them back): the
/// descriptor, owned by the caller from now on, or the errno.
pub(crate) fn open_stream(v6: bool) -> Result<RawFd, i32> {
    use socket2::{Domain, Protocol, Type};
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let ty = Type::STREAM.nonblocking().cloexec();
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let socket = Socket::new(domain, ty, Some(Protocol::TCP)).map_err(errno)?;
    socket.set_tcp_nodelay(true).map_err(errno)?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(socket))
}

/// Starts a non-blocking `connect(2)`: `Ok(true)` when it completed at once, `Ok(false)`
/// while it is in progress (the socket turns writable when it ends), or the errno.
pub(crate) fn connect_start(fd: RawFd, to: &socket2::SockAddr) -> Result<bool, i32> {
    loop {
        // SAFETY: connect on a socket the worker owns, with a live address of the
        // length it says; the kernel copies the address during the call.
        match unsafe { syscall!(connect(fd, to.as_ptr().cast(), to.len())) } {
            Ok(_) => return Ok(true),
            Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                libc::EINPROGRESS => return Ok(false),
                libc::EINTR => continue,
                errno => return Err(errno),
            },
        }
    }
}

/// How a non-blocking connect ended (SO_ERROR): `Ok` once connected, or the errno.
pub(crate) fn connect_result(fd: RawFd) -> Result<(), i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let (ptr, lenp) = ((&raw mut err).cast(), &raw mut len);
    // SAFETY: getsockopt writes at most `len` bytes (one c_int) into `err`, a live
    // local, and its length into `len`.
    match unsafe { syscall!(getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, ptr, lenp)) } {
        Ok(_) if err == 0 => Ok(()),
        Ok(_) => Err(err),
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// How many bytes wait unread in a connection's socket (FIONREAD); 0 if it cannot tell.
pub(crate) fn unread_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `n`, a live local.
    match unsafe { syscall!(ioctl(fd, libc::FIONREAD, &raw mut n)) } {
        Ok(_) => n.max(0) as usize,
        Err(_) => 0,
    }
}
