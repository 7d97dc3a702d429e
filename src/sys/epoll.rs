//! The epoll backend: the same engine events, produced from readiness.
//!
//! For hosts where io_uring is unavailable (seccomp profiles, `io_uring_disabled`,
//! gVisor). Sockets are non-blocking and registered edge-triggered once, for reading
//! and writing; the driver reads until a short read (or EAGAIN), accepts until EAGAIN,
//! and writes a send at once, parking what does not fit until the socket is writable.
//! The shutdown signalfd and the worker's eventfd sit in the same epoll set.
//!
//! Intents that complete at once (a write, a close, a cancel) cannot call back into the
//! engine while it is asking for them, so their events are queued and delivered by the
//! next [`Driver::reap`]; [`Driver::has_ready`] tells the worker loop so, and it reaps
//! again before it waits (or waits with a zero timeout).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockAddr;

use super::fds::OpenFds;
use super::signal::{SIGINFO_SIZE, signo};
use super::socket;
use super::syscall::syscall;
use super::token::{Kind, NO_CONN, decode, encode};
use crate::contract::{BacklogEnd, ConnRef, Driver, Event, Intents, OutBuf, RecvEnd};
use crate::shared::Shared;

/// How much one read takes at most (one buffer, reused for every connection).
const READ_CHUNK: usize = 64 * 1024;
/// Events taken from one `epoll_wait`.
const MAX_EVENTS: usize = 256;
/// Reads one connection gets per reap (at most `READ_BUDGET * READ_CHUNK` bytes): a
/// peer that sends faster than it is served is read on in the next reap, after the
/// other connections, the signals and the end of the turn (its flush and
/// back-pressure) had theirs.
const READ_BUDGET: usize = 4;

/// What the backend knows of one connection slot.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    fd: RawFd,
    registered: bool,
    reading: bool,
    /// A send that did not fit, waiting for the socket to become writable.
    parked: Option<OutBuf>,
    /// An outbound connect in progress: the socket turns writable when it ends.
    connecting: bool,
    /// In `EpollQueue::carry`.
    carried: bool,
}

/// An event produced inside an intent, delivered by the next reap.
#[derive(Debug)]
enum Deferred {
    Sent(ConnRef, Result<usize, i32>, OutBuf),
    RecvEnded(ConnRef, RecvEnd),
    Closed(ConnRef),
    Connected(ConnRef, Result<(), i32>),
    AcceptEnded(i32),
    /// Read the connection now: it was armed, and bytes may already wait (no new edge
    /// would announce them).
    TryRead(ConnRef),
    /// Accept now, for the same reason.
    TryAccept,
}

/// The epoll set and what the engine's intents change: the driver's queue.
pub(crate) struct EpollQueue {
    epfd: OwnedFd,
    listener: Option<socket::Listener>,
    slots: Vec<Slot>,
    deferred: VecDeque<Deferred>,
    /// Connections that used their read budget with bytes still waiting: read on at
    /// the start of the next reap.
    carry: Vec<ConnRef>,
    accept_armed: bool,
    /// Whether a shared listener is in the set (see [`EpollQueue::enlist_shared`]).
    shared_in_set: bool,
    /// Connection descriptors handed to the engine and not yet closed.
    fds: OpenFds,
    shared: Arc<Shared>,
    index: usize,
}

/// One worker's epoll backend.
pub(crate) struct EpollDriver {
    q: EpollQueue,
    events: Vec<libc::epoll_event>,
    /// Events the last wait returned, still to dispatch.
    ready: usize,
    signalfd: Option<RawFd>,
    read_buf: Vec<u8>,
}

impl EpollDriver {
    /// Creates the epoll set with the listener, the signalfd and the worker's eventfd.
    pub fn new(
        listener: socket::Listener,
        signalfd: Option<RawFd>,
        shared: Arc<Shared>,
        index: usize,
    ) -> io::Result<EpollDriver> {
        // SAFETY: epoll_create1 takes only flags.
        let epfd = unsafe { syscall!(epoll_create1(libc::EPOLL_CLOEXEC)) }?;
        // SAFETY: epoll_create1 returned a new descriptor that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let q = EpollQueue {
            epfd,
            listener: None,
            slots: Vec::new(),
            deferred: VecDeque::new(),
            carry: Vec::new(),
            accept_armed: false,
            shared_in_set: false,
            fds: OpenFds::default(),
            shared,
            index,
        };
        // A listener of this worker alone is edge-triggered and accepted until EAGAIN,
        // and stays in the set. A shared one joins the set only while accepting is armed
        // (`enlist_shared`).
        if !listener.shared {
            let events = (libc::EPOLLIN | libc::EPOLLET) as u32;
            let token = encode(Kind::Accept, NO_CONN);
            q.ctl(libc::EPOLL_CTL_ADD, listener.as_raw_fd(), events, token)?;
        }
        if let Some(fd) = signalfd {
            let token = encode(Kind::Signal, NO_CONN);
            q.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, token)?;
        }
        let wake = q.shared.wakers[index].eventfd().raw();
        let token = encode(Kind::WakeRead, NO_CONN);
        q.ctl(libc::EPOLL_CTL_ADD, wake, libc::EPOLLIN as u32, token)?;
        let mut driver = EpollDriver {
            q,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
            ready: 0,
            signalfd,
            read_buf: vec![0; READ_CHUNK],
        };
        driver.q.listener = Some(listener);
        Ok(driver)
    }
}

impl Driver for EpollDriver {
    type Queue<'q> = EpollQueue;

    fn with_queue<R>(&mut self, f: impl FnOnce(&mut EpollQueue) -> R) -> R {
        f(&mut self.q)
    }

    fn reap(&mut self, mut handle: impl FnMut(Event<'_>, &mut EpollQueue)) {
        let mut r = Reader {
            q: &mut self.q,
            read_buf: &mut self.read_buf,
            signalfd: self.signalfd,
        };
        for conn in std::mem::take(&mut r.q.carry) {
            if let Some(slot) = r.q.slot_mut(conn) {
                slot.carried = false;
                r.q.deferred.push_back(Deferred::TryRead(conn));
            }
        }
        r.deliver_deferred(&mut handle);
        for ev in &self.events[..std::mem::take(&mut self.ready)] {
            let (bits, token) = (ev.events, ev.u64);
            r.dispatch(bits, token, &mut handle);
        }
        r.deliver_deferred(&mut handle);
    }

    fn has_ready(&self) -> bool {
        !self.q.deferred.is_empty() || !self.q.carry.is_empty()
    }

    fn publish(&mut self) {}

    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout_ms = match timeout {
            _ if self.has_ready() => 0,
            None => -1,
            // Rounded up to whole milliseconds, in u64 (no 128-bit division per wait).
            Some(t) => {
                let ms = t.as_secs().saturating_mul(1000)
                    + u64::from(t.subsec_nanos()).div_ceil(1_000_000);
                ms.min(i32::MAX as u64) as i32
            }
        };
        self.ready = self.q.wait(&mut self.events, timeout_ms)?;
        Ok(())
    }

    fn begin_release(&mut self, abort: bool) {
        // Nothing is in flight: a parked send is plain memory the kernel never saw.
        for slot in &mut self.q.slots {
            slot.parked = None;
        }
        self.q.deferred.clear();
        self.q.carry.clear();
        if abort {
            super::abort_sockets(&mut self.q.listener, &mut self.q.fds);
        }
    }

    fn in_flight(&self) -> usize {
        0
    }
}

impl Drop for EpollDriver {
    fn drop(&mut self) {
        drop(self.q.listener.take());
        // Descriptors the engine never closed (a worker that failed): the peers see the
        // connection end instead of hanging.
        self.q.fds.close_all();
        log::info!(
            target: crate::drain::LOG_TARGET,
            "worker {}: backend released (epoll set closed)",
            self.q.index
        );
    }
}

/// The reading side of one reap: readiness turned into events.
struct Reader<'a> {
    q: &'a mut EpollQueue,
    read_buf: &'a mut [u8],
    signalfd: Option<RawFd>,
}

impl Reader<'_> {
    /// Hands the events queued by intents to the engine (which may queue more).
    fn deliver_deferred(&mut self, handle: &mut impl FnMut(Event<'_>, &mut EpollQueue)) {
        while let Some(d) = self.q.deferred.pop_front() {
            let q = &mut *self.q;
            match d {
                Deferred::Sent(conn, result, buf) => handle(Event::Sent { conn, result, buf }, q),
                Deferred::RecvEnded(conn, why) => handle(Event::RecvEnded { conn, why }, q),
                Deferred::Closed(conn) => handle(Event::Closed { conn }, q),
                Deferred::Connected(conn, result) => handle(Event::Connected { conn, result }, q),
                Deferred::AcceptEnded(errno) => handle(Event::AcceptEnded { errno }, q),
                Deferred::TryRead(conn) => self.read_conn(conn, true, handle),
                Deferred::TryAccept => self.accept_ready(handle),
            }
        }
    }

    fn dispatch(
        &mut self,
        bits: u32,
        token: u64,
        handle: &mut impl FnMut(Event<'_>, &mut EpollQueue),
    ) {
        let Some((kind, conn)) = decode(token) else {
            return;
        };
        match kind {
            Kind::Accept => self.accept_ready(handle),
            Kind::Recv => {
                let done = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;
                if bits & done != 0 {
                    self.connect_done(conn, handle);
                    self.write_parked(conn, handle);
                }
                let hup = bits & (libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
                if hup || bits & libc::EPOLLIN as u32 != 0 {
                    self.read_conn(conn, hup, handle);
                }
            }
            Kind::Signal => self.read_signals(handle),
            Kind::WakeRead => match self.q.shared.wakers[self.q.index].eventfd().take() {
                Ok(true) => handle(Event::Wake, self.q),
                Ok(false) => {}
                Err(e) => log::warn!("eventfd read failed: {e}"),
            },
            Kind::Send
            | Kind::Close
            | Kind::Cancel
            | Kind::Wake
            | Kind::MsgRing
            | Kind::Connect => {}
        }
    }

    /// Accepts until EAGAIN while the engine wants connections.
    fn accept_ready(&mut self, handle: &mut impl FnMut(Event<'_>, &mut EpollQueue)) {
        while self.q.accept_armed {
            let Some((fd, shared)) = self.q.listener.as_ref().map(|l| (l.as_raw_fd(), l.shared))
            else {
                return;
            };
            match socket::accept(fd, libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) {
                Ok(conn) => {
                    self.q.fds.insert(conn);
                    handle(Event::Accepted { fd: conn }, self.q);
                    if shared {
                        // One per wake, then to the back of the socket's waiters: the
                        // next connection wakes another worker.
                        self.q.enlist_shared(false);
                        if self.q.accept_armed {
                            self.q.enlist_shared(true);
                        }
                        return;
                    }
                }
                Err(libc::EAGAIN) => return,
                Err(libc::EINTR | libc::ECONNABORTED) => continue,
                Err(errno) => {
                    self.q.accept_armed = false;
                    self.q.enlist_shared(false);
                    handle(Event::AcceptEnded { errno }, self.q);
                    return;
                }
            }
        }
    }

    /// Reads what the socket holds while the engine wants its bytes. After a short read
    /// the socket is empty and the next edge announces more, unless `to_end`: the peer's
    /// FIN (or an error) may already be there with no edge to come, or no edge was seen
    /// at all; then read on until EOF or EAGAIN. At most [`READ_BUDGET`] reads: what
    /// is left waits for the next reap (the engine may pause the connection meanwhile).
    fn read_conn(
        &mut self,
        conn: ConnRef,
        to_end: bool,
        handle: &mut impl FnMut(Event<'_>, &mut EpollQueue),
    ) {
        for _ in 0..READ_BUDGET {
            let Some(slot) = self.q.slot(conn).filter(|s| s.reading) else {
                return;
            };
            let fd = slot.fd;
            let buf = &mut *self.read_buf;
            // SAFETY: reads into the driver's own buffer, at most its length.
            let n = unsafe { syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len())) };
            let why = match n {
                Ok(0) => RecvEnd::Eof,
                Ok(n) => {
                    let n = n as usize;
                    // A read that filled the buffer may have emptied the socket too:
                    // ask, so that an idle connection is not taken for one with input
                    // queued (its drain would wait for input that never comes).
                    let queued = n == buf.len() && socket::unread_bytes(fd) > 0;
                    let data = &buf[..n];
                    handle(Event::Received { conn, data, queued }, self.q);
                    if !queued && !to_end {
                        return; // a short read emptied the socket; the next edge says more
                    }
                    continue;
                }
                Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                    libc::EAGAIN => return,
                    libc::EINTR => continue,
                    errno => RecvEnd::Error(errno),
                },
            };
            if let Some(slot) = self.q.slot_mut(conn) {
                slot.reading = false;
            }
            handle(Event::RecvEnded { conn, why }, self.q);
            return;
        }
        // Budget spent with bytes (or the peer's FIN) perhaps still waiting, and no edge
        // to announce them: read on next time, if the engine still wants to.
        if let Some(slot) = self.q.slot_mut(conn)
            && slot.reading
            && !slot.carried
        {
            slot.carried = true;
            self.q.carry.push(conn);
        }
    }

    /// An outbound connect in progress ended (the socket turned writable, or failed).
    fn connect_done(&mut self, conn: ConnRef, handle: &mut impl FnMut(Event<'_>, &mut EpollQueue)) {
        let Some(slot) = self.q.slot_mut(conn).filter(|s| s.connecting) else {
            return;
        };
        slot.connecting = false;
        let result = socket::connect_result(slot.fd);
        handle(Event::Connected { conn, result }, self.q);
    }

    /// Writes a parked send now that the socket may have room.
    fn write_parked(&mut self, conn: ConnRef, handle: &mut impl FnMut(Event<'_>, &mut EpollQueue)) {
        let Some(slot) = self.q.slot_mut(conn) else {
            return;
        };
        let fd = slot.fd;
        let Some(buf) = slot.parked.take() else {
            return;
        };
        match write_some(fd, &buf) {
            Err(libc::EAGAIN) => {
                if let Some(slot) = self.q.slot_mut(conn) {
                    slot.parked = Some(buf);
                }
            }
            result => handle(Event::Sent { conn, result, buf }, self.q),
        }
    }

    fn read_signals(&mut self, handle: &mut impl FnMut(Event<'_>, &mut EpollQueue)) {
        let Some(fd) = self.signalfd else {
            return;
        };
        let mut record = [0u8; SIGINFO_SIZE];
        loop {
            // SAFETY: reads one siginfo record into a buffer of exactly that size.
            let n = unsafe { syscall!(read(fd, record.as_mut_ptr().cast(), SIGINFO_SIZE)) };
            match n {
                Ok(n) if n as usize == SIGINFO_SIZE => {
                    handle(
                        Event::Signal {
                            signo: signo(&record),
                        },
                        self.q,
                    );
                }
                // EAGAIN: another worker took it, or none is left.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Ok(n) => {
                    log::warn!("short signalfd read ({n} bytes)");
                    return;
                }
                Err(e) => {
                    log::warn!("signalfd read failed: {e}");
                    return;
                }
            }
        }
    }
}

/// One `send` of what is left in `buf`: the byte count, or the errno.
fn write_some(fd: RawFd, buf: &OutBuf) -> Result<usize, i32> {
    let bytes = buf.remaining();
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    loop {
        // SAFETY: sends from a live buffer of the given length; MSG_NOSIGNAL turns a
        // closed peer into EPIPE instead of a signal.
        match unsafe { syscall!(send(fd, bytes.as_ptr().cast(), bytes.len(), flags)) } {
            Ok(n) => return Ok(n as usize),
            Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                libc::EINTR => continue,
                errno => return Err(errno),
            },
        }
    }
}

impl EpollQueue {
    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: a valid epoll descriptor, a descriptor this worker owns, and a live
        // event struct the kernel copies.
        unsafe { syscall!(epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev)) }.map(drop)
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let (epfd, len) = (self.epfd.as_raw_fd(), events.len() as i32);
        // SAFETY: the kernel writes at most `len` entries into the slice.
        let n = unsafe { syscall!(epoll_wait(epfd, events.as_mut_ptr(), len, timeout_ms)) };
        match n {
            Ok(n) => Ok(n as usize),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn slot(&self, conn: ConnRef) -> Option<&Slot> {
        self.slots
            .get(conn.key as usize)
            .filter(|s| s.generation == conn.generation && s.fd >= 0)
    }

    /// Puts a listener shared with other workers into the set, or takes it out. It is
    /// in the set only while accepting is armed: level-triggered, a listener left in the
    /// set while the engine backs off (out of descriptors) or drains would wake every
    /// wait at once while connections are queued, a spin. In the set it is exclusive
    /// (EPOLLEXCLUSIVE): a new connection wakes one waiting worker, not all. The socket
    /// wakes its exclusive waiters in the order they joined, so the worker that took a
    /// connection leaves and joins again, behind the others (`accept_ready`), the way
    /// io_uring queues a ring's new single accept behind the other rings' ones. A
    /// failed join ends accepting with its errno (the engine backs off and re-arms).
    fn enlist_shared(&mut self, on: bool) {
        let Some(fd) = self
            .listener
            .as_ref()
            .filter(|l| l.shared)
            .map(|l| l.as_raw_fd())
        else {
            return;
        };
        if on && !self.shared_in_set {
            let events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
            match self.ctl(
                libc::EPOLL_CTL_ADD,
                fd,
                events,
                encode(Kind::Accept, NO_CONN),
            ) {
                Ok(()) => self.shared_in_set = true,
                Err(e) => {
                    log::warn!("epoll_ctl(ADD) of the shared listener: {e}");
                    self.accept_armed = false;
                    let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                    self.deferred.push_back(Deferred::AcceptEnded(errno));
                }
            }
        } else if !on && self.shared_in_set {
            self.shared_in_set = false;
            if let Err(e) = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0) {
                log::warn!("epoll_ctl(DEL) of the shared listener: {e}");
            }
        }
    }

    fn slot_mut(&mut self, conn: ConnRef) -> Option<&mut Slot> {
        self.slots
            .get_mut(conn.key as usize)
            .filter(|s| s.generation == conn.generation && s.fd >= 0)
    }
}

impl Intents for EpollQueue {
    fn accept(&mut self) {
        self.accept_armed = true;
        self.enlist_shared(true);
        self.deferred.push_back(Deferred::TryAccept);
    }

    fn recv(&mut self, conn: ConnRef, fd: RawFd) {
        let key = conn.key as usize;
        if self.slots.len() <= key {
            self.slots.resize_with(key + 1, || Slot {
                fd: -1,
                ..Slot::default()
            });
        }
        let slot = &mut self.slots[key];
        if slot.generation != conn.generation || slot.fd != fd {
            *slot = Slot {
                generation: conn.generation,
                fd,
                ..Slot::default()
            };
        }
        slot.reading = true;
        if !slot.registered {
            slot.registered = true;
            let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
            if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, events, encode(Kind::Recv, conn)) {
                self.slots[key].reading = false;
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                self.deferred
                    .push_back(Deferred::RecvEnded(conn, RecvEnd::Error(errno)));
                return;
            }
        }
        self.deferred.push_back(Deferred::TryRead(conn));
    }

    fn send(&mut self, conn: ConnRef, fd: RawFd, buf: OutBuf) {
        match write_some(fd, &buf) {
            Err(libc::EAGAIN) => match self.slot_mut(conn) {
                Some(slot) => slot.parked = Some(buf),
                None => self
                    .deferred
                    .push_back(Deferred::Sent(conn, Err(libc::EBADF), buf)),
            },
            result => self.deferred.push_back(Deferred::Sent(conn, result, buf)),
        }
    }

    fn cancel_recv(&mut self, conn: ConnRef) {
        if let Some(slot) = self.slot_mut(conn)
            && slot.reading
        {
            slot.reading = false;
            self.deferred
                .push_back(Deferred::RecvEnded(conn, RecvEnd::Cancelled));
        }
    }

    fn cancel_send(&mut self, conn: ConnRef) {
        if let Some(buf) = self.slot_mut(conn).and_then(|s| s.parked.take()) {
            self.deferred
                .push_back(Deferred::Sent(conn, Err(libc::ECANCELED), buf));
        }
    }

    fn open_socket_now(&mut self, v6: bool) -> Result<RawFd, i32> {
        let fd = socket::open_stream(v6)?;
        self.fds.insert(fd);
        Ok(fd)
    }

    fn connect(&mut self, conn: ConnRef, fd: RawFd, to: SocketAddr) {
        let key = conn.key as usize;
        if self.slots.len() <= key {
            self.slots.resize_with(key + 1, || Slot {
                fd: -1,
                ..Slot::default()
            });
        }
        self.slots[key] = Slot {
            generation: conn.generation,
            fd,
            registered: true,
            ..Slot::default()
        };
        // Registered before the connect, edge-triggered for both directions: the
        // writable edge tells the connect's end, the readable ones the data after it.
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        let result = self
            .ctl(libc::EPOLL_CTL_ADD, fd, events, encode(Kind::Recv, conn))
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
            .and_then(|()| socket::connect_start(fd, &SockAddr::from(to)));
        match result {
            Ok(false) => self.slots[key].connecting = true,
            Ok(true) => self.deferred.push_back(Deferred::Connected(conn, Ok(()))),
            Err(errno) => self
                .deferred
                .push_back(Deferred::Connected(conn, Err(errno))),
        }
    }

    fn cancel_connect(&mut self, conn: ConnRef) {
        if let Some(slot) = self.slot_mut(conn)
            && slot.connecting
        {
            slot.connecting = false;
            self.deferred
                .push_back(Deferred::Connected(conn, Err(libc::ECANCELED)));
        }
    }

    fn shutdown_write_now(&mut self, _conn: ConnRef, fd: RawFd) {
        socket::shutdown(fd, libc::SHUT_WR);
    }

    fn rtt_now(&mut self, fd: RawFd) -> Option<Duration> {
        socket::rtt(fd)
    }

    fn unread_now(&mut self, fd: RawFd) -> usize {
        socket::unread_bytes(fd)
    }

    fn shutdown_both_now(&mut self, conn: ConnRef, fd: RawFd) {
        socket::shutdown(fd, libc::SHUT_RDWR);
        // The socket now reads EOF; no new edge may announce it.
        self.deferred.push_back(Deferred::TryRead(conn));
    }

    fn close(&mut self, conn: ConnRef, fd: RawFd) {
        if let Some(slot) = self.slot_mut(conn) {
            slot.fd = -1;
            slot.reading = false;
        }
        self.fds.remove(fd);
        // SAFETY: the engine closes a descriptor once, after every operation on it ended;
        // closing removes it from the epoll set.
        if let Err(e) = unsafe { syscall!(close(fd)) } {
            log::warn!("close({fd}): {e}");
        }
        self.deferred.push_back(Deferred::Closed(conn));
    }

    fn cancel_accept(&mut self) {
        if let Some(listener) = self.listener.as_ref() {
            socket::refuse_new_handshakes(listener);
        }
        self.enlist_shared(false);
        if self.accept_armed {
            self.accept_armed = false;
            self.deferred
                .push_back(Deferred::AcceptEnded(libc::ECANCELED));
        }
    }

    fn close_listener_now(&mut self, backlog: &mut Vec<RawFd>, give_up: bool) -> BacklogEnd {
        let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        let end = socket::close_listener(&mut self.listener, backlog, give_up, flags);
        for &fd in backlog.iter() {
            self.fds.insert(fd);
        }
        if let (BacklogEnd::Waiting(_), Some(l)) = (end, &self.listener)
            && !l.shared
        {
            // Out of the set: the engine retries on its own (a close, a timer). A shared
            // listener left the set when accepting was cancelled.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, l.as_raw_fd(), 0, 0);
        }
        end
    }

    fn wake_workers(&mut self) {
        for (j, waker) in self.shared.wakers.iter().enumerate() {
            if j != self.index {
                waker.wake();
            }
        }
    }

    fn wake_worker(&mut self, index: usize) {
        if let Some(waker) = self.shared.wakers.get(index) {
            waker.wake();
        }
    }
}
