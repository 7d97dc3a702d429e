//! The epoll backend: the same engine events, produced from readiness.
//!
//! For hosts where io_uring is unavailable (seccomp profiles, `io_uring_disabled`,
//! gVisor). Sockets are non-blocking and registered edge-triggered once, for reading
//! and writing; the backend reads until a short read (or EAGAIN), accepts until EAGAIN,
//! and writes a send at once, parking what does not fit until the socket is writable.
//! The shutdown signalfd and the worker's eventfd sit in the same epoll set.
//!
//! The engine's requests that complete at once (a write, a close, a cancel) cannot call
//! back into the engine while it is calling the backend, so their events are queued and
//! delivered at the start of the next dispatch, before the backend waits again; such a
//! turn waits with a zero timeout.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use socket2::Socket;

use crate::engine::Engine;
use crate::handler::Handler;
use crate::log;
use crate::shared::Shared;
use crate::signal::{SIGINFO_SIZE, signo};
use crate::stats::WorkerReport;
use crate::sys::token::{Kind, NO_CONN, decode, encode};
use crate::sys::{ConnRef, Event, Ops, OutBuf, RecvEnd, socket};

/// How much one read takes at most (one buffer, reused for every connection).
const READ_CHUNK: usize = 64 * 1024;
/// Events taken from one `epoll_wait`.
const MAX_EVENTS: usize = 256;

/// Turns `-1` into the OS error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// What the backend knows of one connection slot.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    fd: RawFd,
    registered: bool,
    reading: bool,
    /// A send that did not fit, waiting for the socket to become writable.
    parked: Option<OutBuf>,
}

/// An event produced inside an `Ops` call, delivered at the next dispatch.
#[derive(Debug)]
enum Deferred {
    Sent(ConnRef, Result<usize, i32>, OutBuf),
    RecvEnded(ConnRef, RecvEnd),
    Closed(ConnRef),
    AcceptEnded(i32),
    /// Read the connection now: it was armed, and bytes may already wait (no new edge
    /// would announce them).
    TryRead(ConnRef),
    /// Accept now, for the same reason.
    TryAccept,
}

/// The backend's state that `Ops` calls change.
struct Io {
    epfd: OwnedFd,
    listener: Option<Socket>,
    slots: Vec<Slot>,
    deferred: VecDeque<Deferred>,
    accept_armed: bool,
    shared: Arc<Shared>,
    index: usize,
}

/// One worker's epoll backend.
pub(crate) struct EpollWorker {
    io: Io,
    signalfd: Option<RawFd>,
    read_buf: Vec<u8>,
}

impl EpollWorker {
    /// Creates the epoll set with the listener, the signalfd and the worker's eventfd.
    pub fn new(
        listener: Socket,
        signalfd: Option<RawFd>,
        shared: Arc<Shared>,
        index: usize,
    ) -> io::Result<EpollWorker> {
        // SAFETY: epoll_create1 takes only flags; the result is checked.
        let epfd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: epoll_create1 returned a new descriptor that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let io = Io {
            epfd,
            listener: None,
            slots: Vec::new(),
            deferred: VecDeque::new(),
            accept_armed: false,
            shared,
            index,
        };
        let edge = (libc::EPOLLIN | libc::EPOLLET) as u32;
        io.ctl(
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            edge,
            encode(Kind::Accept, NO_CONN),
        )?;
        if let Some(fd) = signalfd {
            io.ctl(
                libc::EPOLL_CTL_ADD,
                fd,
                libc::EPOLLIN as u32,
                encode(Kind::Signal, NO_CONN),
            )?;
        }
        let wake = io.shared.wakers[index].eventfd();
        io.ctl(
            libc::EPOLL_CTL_ADD,
            wake,
            libc::EPOLLIN as u32,
            encode(Kind::WakeRead, NO_CONN),
        )?;
        let mut worker = EpollWorker {
            io,
            signalfd,
            read_buf: vec![0; READ_CHUNK],
        };
        worker.io.listener = Some(listener);
        Ok(worker)
    }

    /// Runs the engine until it is done, closes what is left, returns the report.
    pub fn run<H: Handler>(mut self, mut engine: Engine<H>) -> io::Result<WorkerReport> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        engine.start(&mut self.io);
        let mut ready = 0;
        while !engine.is_done() {
            let now = Instant::now();
            engine.begin_turn(now, &mut self.io);
            self.deliver_deferred(&mut engine);
            for ev in &events[..ready] {
                let (bits, token) = (ev.events, ev.u64);
                self.dispatch(bits, token, &mut engine);
            }
            self.deliver_deferred(&mut engine);
            engine.end_turn(&mut self.io);
            // Writes that completed at once report back now, rather than after another
            // epoll_wait; what they free to send goes out in the same turn.
            for _ in 0..4 {
                if self.io.deferred.is_empty() {
                    break;
                }
                self.deliver_deferred(&mut engine);
                engine.end_turn(&mut self.io);
            }
            if engine.is_done() {
                break;
            }
            let timeout = if self.io.deferred.is_empty() {
                engine.next_deadline().map_or(-1, |at| {
                    let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
                    ms.min(i32::MAX as u128) as i32
                })
            } else {
                0
            };
            ready = self.io.wait(&mut events, timeout)?;
        }
        for slot in &mut self.io.slots {
            slot.parked = None;
        }
        drop(self.io.listener.take());
        log::info(format_args!(
            "worker {}: backend released (epoll set closed)",
            self.io.index
        ));
        Ok(WorkerReport {
            stats: engine.stats().clone(),
            drain: engine.drain_report(),
        })
    }

    /// Hands the events queued by `Ops` calls to the engine (which may queue more).
    fn deliver_deferred<H: Handler>(&mut self, engine: &mut Engine<H>) {
        while let Some(d) = self.io.deferred.pop_front() {
            match d {
                Deferred::Sent(conn, result, buf) => {
                    engine.handle(Event::Sent { conn, result, buf }, &mut self.io)
                }
                Deferred::RecvEnded(conn, why) => {
                    engine.handle(Event::RecvEnded { conn, why }, &mut self.io)
                }
                Deferred::Closed(conn) => engine.handle(Event::Closed { conn }, &mut self.io),
                Deferred::AcceptEnded(errno) => {
                    engine.handle(Event::AcceptEnded { errno }, &mut self.io)
                }
                Deferred::TryRead(conn) => self.read_conn(conn, true, engine),
                Deferred::TryAccept => self.accept_ready(engine),
            }
        }
    }

    fn dispatch<H: Handler>(&mut self, bits: u32, token: u64, engine: &mut Engine<H>) {
        let Some((kind, conn)) = decode(token) else {
            return;
        };
        match kind {
            Kind::Accept => self.accept_ready(engine),
            Kind::Recv => {
                if bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                    self.write_parked(conn, engine);
                }
                let hup = bits & (libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
                if hup || bits & libc::EPOLLIN as u32 != 0 {
                    self.read_conn(conn, hup, engine);
                }
            }
            Kind::Signal => self.read_signals(engine),
            Kind::WakeRead => {
                let mut counter = 0u64;
                let fd = self.io.shared.wakers[self.io.index].eventfd();
                // SAFETY: reads 8 bytes into a live u64 from the worker's own eventfd.
                let n = unsafe { libc::read(fd, (&mut counter as *mut u64).cast(), 8) };
                if n == 8 {
                    engine.handle(Event::Wake, &mut self.io);
                }
            }
            Kind::Send | Kind::Close | Kind::Cancel | Kind::Wake | Kind::MsgRing => {}
        }
    }

    /// Accepts until EAGAIN while the engine wants connections.
    fn accept_ready<H: Handler>(&mut self, engine: &mut Engine<H>) {
        while self.io.accept_armed {
            let Some(fd) = self.io.listener.as_ref().map(AsRawFd::as_raw_fd) else {
                return;
            };
            // SAFETY: accept4 on the worker's listening socket; null address pointers
            // are allowed.
            let conn = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if conn >= 0 {
                engine.handle(Event::Accepted { fd: conn }, &mut self.io);
                continue;
            }
            match errno() {
                libc::EAGAIN => return,
                libc::EINTR | libc::ECONNABORTED => continue,
                e => {
                    self.io.accept_armed = false;
                    engine.handle(Event::AcceptEnded { errno: e }, &mut self.io);
                    return;
                }
            }
        }
    }

    /// Reads what the socket holds while the engine wants its bytes. After a short read
    /// the socket is empty and the next edge announces more, unless `to_end`: the peer's
    /// FIN (or an error) may already be there with no edge to come, or no edge was seen
    /// at all; then read on until EOF or EAGAIN.
    fn read_conn<H: Handler>(&mut self, conn: ConnRef, to_end: bool, engine: &mut Engine<H>) {
        loop {
            let Some(slot) = self.io.slot(conn).filter(|s| s.reading) else {
                return;
            };
            let fd = slot.fd;
            // SAFETY: reads into the worker's own buffer, at most its length.
            let n =
                unsafe { libc::read(fd, self.read_buf.as_mut_ptr().cast(), self.read_buf.len()) };
            if n > 0 {
                let n = n as usize;
                let queued = n == self.read_buf.len();
                let data = &self.read_buf[..n];
                engine.handle(Event::Received { conn, data, queued }, &mut self.io);
                if !queued && !to_end {
                    return; // a short read emptied the socket; the next edge says more
                }
                continue;
            }
            let why = match (n, errno()) {
                (0, _) => RecvEnd::Eof,
                (_, libc::EAGAIN) => return,
                (_, libc::EINTR) => continue,
                (_, e) => RecvEnd::Error(e),
            };
            if let Some(slot) = self.io.slot_mut(conn) {
                slot.reading = false;
            }
            engine.handle(Event::RecvEnded { conn, why }, &mut self.io);
            return;
        }
    }

    /// Writes a parked send now that the socket may have room.
    fn write_parked<H: Handler>(&mut self, conn: ConnRef, engine: &mut Engine<H>) {
        let Some(slot) = self.io.slot_mut(conn) else {
            return;
        };
        let fd = slot.fd;
        let Some(buf) = slot.parked.take() else {
            return;
        };
        match write_some(fd, &buf) {
            Err(libc::EAGAIN) => {
                if let Some(slot) = self.io.slot_mut(conn) {
                    slot.parked = Some(buf);
                }
            }
            result => engine.handle(Event::Sent { conn, result, buf }, &mut self.io),
        }
    }

    fn read_signals<H: Handler>(&mut self, engine: &mut Engine<H>) {
        let Some(fd) = self.signalfd else {
            return;
        };
        let mut record = [0u8; SIGINFO_SIZE];
        loop {
            // SAFETY: reads one siginfo record into a buffer of exactly that size.
            let n = unsafe { libc::read(fd, record.as_mut_ptr().cast(), SIGINFO_SIZE) };
            if n != SIGINFO_SIZE as isize {
                return; // EAGAIN: another worker took it, or none left
            }
            engine.handle(
                Event::Signal {
                    signo: signo(&record),
                },
                &mut self.io,
            );
        }
    }
}

/// One `write` of what is left in `buf`: the byte count, or the errno.
fn write_some(fd: RawFd, buf: &OutBuf) -> Result<usize, i32> {
    let bytes = buf.remaining();
    loop {
        // SAFETY: sends from a live buffer of the given length; MSG_NOSIGNAL turns a
        // closed peer into EPIPE instead of a signal.
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

impl Io {
    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: a valid epoll descriptor, a descriptor this worker owns, and a live
        // event struct the kernel copies.
        check(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `events.len()` entries into the slice.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        match n {
            n if n >= 0 => Ok(n as usize),
            _ if errno() == libc::EINTR => Ok(0),
            _ => Err(io::Error::last_os_error()),
        }
    }

    fn slot(&self, conn: ConnRef) -> Option<&Slot> {
        self.slots
            .get(conn.key as usize)
            .filter(|s| s.generation == conn.generation && s.fd >= 0)
    }

    fn slot_mut(&mut self, conn: ConnRef) -> Option<&mut Slot> {
        self.slots
            .get_mut(conn.key as usize)
            .filter(|s| s.generation == conn.generation && s.fd >= 0)
    }
}

impl Ops for Io {
    fn accept(&mut self) {
        self.accept_armed = true;
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

    fn shutdown_write(&mut self, _conn: ConnRef, fd: RawFd) {
        socket::shutdown(fd, libc::SHUT_WR);
    }

    fn shutdown_both(&mut self, conn: ConnRef, fd: RawFd) {
        socket::shutdown(fd, libc::SHUT_RDWR);
        // The socket now reads EOF; no new edge may announce it.
        self.deferred.push_back(Deferred::TryRead(conn));
    }

    fn close(&mut self, conn: ConnRef, fd: RawFd) {
        if let Some(slot) = self.slot_mut(conn) {
            slot.fd = -1;
            slot.reading = false;
        }
        // SAFETY: the engine closes a descriptor once, after every operation on it ended;
        // closing removes it from the epoll set.
        unsafe {
            libc::close(fd);
        }
        self.deferred.push_back(Deferred::Closed(conn));
    }

    fn cancel_accept(&mut self) {
        if let Some(listener) = self.listener.as_ref() {
            socket::refuse_new_handshakes(listener.as_raw_fd());
        }
        if self.accept_armed {
            self.accept_armed = false;
            self.deferred
                .push_back(Deferred::AcceptEnded(libc::ECANCELED));
        }
    }

    fn close_listener(&mut self, backlog: &mut Vec<RawFd>) -> Option<i32> {
        let listener = self.listener.take()?;
        socket::refuse_new_handshakes(listener.as_raw_fd());
        let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        let stopped = socket::accept_all(listener.as_raw_fd(), flags, backlog);
        drop(listener);
        stopped
    }

    fn wake_workers(&mut self) {
        for (j, waker) in self.shared.wakers.iter().enumerate() {
            if j != self.index {
                waker.wake();
            }
        }
    }
}
