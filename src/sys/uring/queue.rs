//! The engine's intents turned into SQEs, pushed into the submission queue of the turn.
//!
//! Nothing here enters the kernel except when the queue is full (then the queued entries
//! are submitted, without waiting, to make room) and for the synchronous intents
//! (`*_now`): the shutdowns, accepting the backlog until EAGAIN and closing the
//! listener. The turn's single submit-and-wait sends whatever is queued.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::squeue::{Entry, Flags};
use io_uring::{Submitter, opcode, squeue::SubmissionQueue, types::Fd};
use socket2::SockAddr;

use crate::contract::{BacklogEnd, ConnRef, Intents, OutBuf};
use crate::shared::Shared;
use crate::sys::fds::OpenFds;
use crate::sys::socket;
use crate::sys::token::{Kind, NO_CONN, encode};

use super::BGID;

/// The part of a worker's io_uring state that submissions change; it lives in the
/// driver, and a [`UringQueue`] borrows it for one step of the turn.
pub(crate) struct SubmitState {
    /// Send buffers the kernel is reading, by connection key: at most one per
    /// connection, each parked here from its submission until its completion is reaped.
    pub sends: Vec<Option<(u32, OutBuf)>>,
    /// The addresses of outbound connects in flight, by connection key (same rule: each
    /// parked from its submission until its completion is reaped).
    pub connects: Vec<Option<(u32, Box<SockAddr>)>>,
    pub listener: Option<socket::Listener>,
    /// Connection descriptors handed to the engine and not yet closed.
    pub fds: OpenFds,
    /// Operations submitted whose last completion has not been reaped yet.
    pub inflight: usize,
    pub shared: Arc<Shared>,
    pub index: usize,
    pub buf_size: u32,
    pub msg_ring: bool,
    pub multishot_accept: bool,
    pub multishot_recv: bool,
    /// The queued entries were handed to the kernel before this turn's first shutdown.
    pub submitted_early: bool,
    /// Entries that found the submission queue full: submitted, in order, before the
    /// next wait. Counted in `inflight` already.
    pub overflow: std::collections::VecDeque<Entry>,
}

/// One step's view of the submission side: the ring's submitter and queue, and the
/// state they change.
pub(crate) struct UringQueue<'q> {
    pub submitter: Submitter<'q>,
    pub sq: SubmissionQueue<'q>,
    pub st: &'q mut SubmitState,
}

impl UringQueue<'_> {
    /// Queues an entry whose completion will be reaped (counted as in flight).
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until the entry's last completion is
    /// reaped (see [`push_uncounted`](Self::push_uncounted)).
    pub unsafe fn push(&mut self, entry: Entry) {
        self.st.inflight += 1;
        // SAFETY: the caller's promise, passed on.
        unsafe { self.push_uncounted(entry) };
    }

    /// A drain can shut down a thousand connections in one turn, each a synchronous
    /// syscall: hand the sends already queued to the kernel first, so responses of busy
    /// connections do not wait behind them. Once per turn, and only when closing.
    fn submit_before_syscalls(&mut self) {
        if !self.st.submitted_early && !self.sq.is_empty() {
            self.st.submitted_early = true;
            self.sq.sync();
            if let Err(e) = self.submitter.submit() {
                log::warn!("io_uring submit before shutdowns: {e}");
            }
            self.sq.sync();
        }
    }

    /// Queues an entry that posts no completion on success (SKIP_SUCCESS), or whose
    /// completion the caller counts itself.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` (a send's bytes, a read's buffer) must stay valid, and
    /// not be moved or freed, until the completion that ends the operation is reaped.
    unsafe fn push_uncounted(&mut self, entry: Entry) {
        if self.st.overflow.is_empty() {
            // SAFETY: the caller guarantees the entry's pointers outlive the operation.
            if unsafe { self.sq.push(&entry) }.is_ok() {
                return;
            }
            // Full: hand the queue to the kernel (without waiting) and try once more.
            self.sq.sync();
            if let Err(e) = self.submitter.submit() {
                log::warn!("io_uring submit while the queue is full: {e}");
            }
            self.sq.sync();
            // SAFETY: as above.
            if unsafe { self.sq.push(&entry) }.is_ok() {
                return;
            }
        }
        // Still no room (the kernel is busy): it waits here, in order, for the turn's
        // submit-and-wait (`flush_overflow`); no spinning inside the reap.
        self.st.overflow.push_back(entry);
    }

    /// Moves waiting entries into the submission queue as room allows, submitting (not
    /// waiting) in between. Returns whether all of them went in.
    pub fn flush_overflow(&mut self) -> bool {
        for _ in 0..8 {
            while let Some(entry) = self.st.overflow.front() {
                // SAFETY: each entry was checked by `push_uncounted`'s caller: its
                // pointers stay valid until its completion is reaped, which cannot come
                // before it is submitted.
                if unsafe { self.sq.push(entry) }.is_err() {
                    break;
                }
                self.st.overflow.pop_front();
            }
            if self.st.overflow.is_empty() {
                return true;
            }
            self.sq.sync();
            if let Err(e) = self.submitter.submit() {
                log::warn!("io_uring submit of the overflow: {e}");
                return false;
            }
            self.sq.sync();
        }
        self.st.overflow.is_empty()
    }

    /// Queues an entry that carries no pointer into user memory.
    fn push_plain(&mut self, entry: Entry) {
        // SAFETY: the entry points at no memory of ours (cancel, close, accept without
        // an address, a receive that picks its buffer from the registered ring).
        unsafe { self.push(entry) }
    }

    /// Queues a read of `len` bytes into `buf` on a descriptor the driver owns.
    ///
    /// # Safety
    ///
    /// `buf` must stay valid for `len` bytes, and not be read or written by anyone
    /// else, until the read's completion is reaped.
    pub unsafe fn read(&mut self, fd: RawFd, buf: *mut u8, len: u32, kind: Kind) {
        let entry = opcode::Read::new(Fd(fd), buf, len).build();
        // SAFETY: the caller's promise on `buf`, passed on.
        unsafe { self.push(entry.user_data(encode(kind, NO_CONN))) }
    }

    /// Queues cancelling the operations whose `user_data` is `target`.
    pub fn cancel(&mut self, target: u64) {
        let entry = opcode::AsyncCancel::new(target).build();
        self.push_plain(entry.user_data(encode(Kind::Cancel, NO_CONN)));
    }

    /// Queues cancelling every operation in flight on this ring (Linux 5.19).
    pub fn cancel_everything(&mut self) {
        let entry = opcode::AsyncCancel2::new(io_uring::types::CancelBuilder::any()).build();
        self.push_plain(entry.user_data(encode(Kind::Cancel, NO_CONN)));
    }
}

impl Intents for UringQueue<'_> {
    fn accept(&mut self) {
        let Some(listener) = self.st.listener.as_ref() else {
            return;
        };
        let fd = Fd(listener.as_raw_fd());
        let entry = if self.st.multishot_accept {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        self.push_plain(entry.user_data(encode(Kind::Accept, NO_CONN)));
    }

    fn recv(&mut self, conn: ConnRef, fd: RawFd) {
        let entry = if self.st.multishot_recv {
            opcode::RecvMulti::new(Fd(fd), BGID).build()
        } else {
            opcode::Recv::new(Fd(fd), std::ptr::null_mut(), self.st.buf_size)
                .buf_group(BGID)
                .build()
                .flags(Flags::BUFFER_SELECT)
        };
        self.push_plain(entry.user_data(encode(Kind::Recv, conn)));
    }

    fn send(&mut self, conn: ConnRef, fd: RawFd, buf: OutBuf) {
        let key = conn.key as usize;
        if self.st.sends.len() <= key {
            self.st.sends.resize_with(key + 1, || None);
        }
        let slot = &mut self.st.sends[key];
        debug_assert!(slot.is_none(), "two sends in flight on one connection");
        let parked = &slot.insert((conn.generation, buf)).1;
        let bytes = parked.remaining();
        let len = bytes.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Send::new(Fd(fd), bytes.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: the bytes live in the heap buffer of a Vec parked in `sends[key]`
        // until the send's completion is reaped (`take_parked`); growing `sends` moves
        // the Vec's header, never its heap buffer, and nothing writes to a parked Vec.
        unsafe { self.push(entry.user_data(encode(Kind::Send, conn))) }
    }

    fn cancel_recv(&mut self, conn: ConnRef) {
        self.cancel(encode(Kind::Recv, conn));
    }

    fn cancel_send(&mut self, conn: ConnRef) {
        self.cancel(encode(Kind::Send, conn));
    }

    fn close(&mut self, conn: ConnRef, fd: RawFd) {
        self.st.fds.remove(fd);
        let entry = opcode::Close::new(Fd(fd)).build();
        self.push_plain(entry.user_data(encode(Kind::Close, conn)));
    }

    fn cancel_accept(&mut self) {
        if let Some(listener) = self.st.listener.as_ref() {
            socket::refuse_new_handshakes(listener);
        }
        self.cancel(encode(Kind::Accept, NO_CONN));
    }

    fn wake_workers(&mut self) {
        for j in 0..self.st.shared.wakers.len() {
            if j != self.st.index {
                self.wake_worker(j);
            }
        }
    }

    fn wake_worker(&mut self, j: usize) {
        let Some(waker) = self.st.shared.wakers.get(j) else {
            return;
        };
        let ring_fd = waker.ring_fd();
        if self.st.msg_ring && ring_fd >= 0 {
            let target = ConnRef {
                key: j as u32,
                generation: 0,
            };
            let entry = opcode::MsgRingData::new(Fd(ring_fd), 0, encode(Kind::Wake, NO_CONN), None)
                .build()
                .flags(Flags::SKIP_SUCCESS)
                .user_data(encode(Kind::MsgRing, target));
            // SAFETY: a message to another ring carries no pointer; it posts no
            // completion here on success (SKIP_SUCCESS), so it is not counted.
            unsafe { self.push_uncounted(entry) };
        } else {
            waker.wake();
        }
    }

    fn open_socket_now(&mut self, v6: bool) -> Result<RawFd, i32> {
        let fd = socket::open_stream(v6)?;
        self.st.fds.insert(fd);
        Ok(fd)
    }

    fn connect(&mut self, conn: ConnRef, fd: RawFd, to: SocketAddr) {
        let key = conn.key as usize;
        if self.st.connects.len() <= key {
            self.st.connects.resize_with(key + 1, || None);
        }
        let slot = &mut self.st.connects[key];
        debug_assert!(slot.is_none(), "two connects in flight on one connection");
        let addr = &slot
            .insert((conn.generation, Box::new(SockAddr::from(to))))
            .1;
        let entry = opcode::Connect::new(Fd(fd), addr.as_ptr().cast(), addr.len()).build();
        // SAFETY: the address lives in a Box parked in `connects[key]` until the
        // connect's completion is reaped (`take_connect`); growing `connects` moves the
        // Box pointer, never the address it points to, and nothing writes to it.
        unsafe { self.push(entry.user_data(encode(Kind::Connect, conn))) }
    }

    fn cancel_connect(&mut self, conn: ConnRef) {
        self.cancel(encode(Kind::Connect, conn));
    }

    fn shutdown_write_now(&mut self, _conn: ConnRef, fd: RawFd) {
        self.submit_before_syscalls();
        socket::shutdown(fd, libc::SHUT_WR);
    }

    fn rtt_now(&mut self, fd: RawFd) -> Option<std::time::Duration> {
        socket::rtt(fd)
    }

    fn unread_now(&mut self, fd: RawFd) -> usize {
        socket::unread_bytes(fd)
    }

    fn shutdown_both_now(&mut self, _conn: ConnRef, fd: RawFd) {
        self.submit_before_syscalls();
        socket::shutdown(fd, libc::SHUT_RDWR);
    }

    fn close_listener_now(&mut self, backlog: &mut Vec<RawFd>, give_up: bool) -> BacklogEnd {
        let flags = libc::SOCK_CLOEXEC;
        let end = socket::close_listener(&mut self.st.listener, backlog, give_up, flags);
        for &fd in backlog.iter() {
            self.st.fds.insert(fd);
        }
        end
    }
}

/// Takes the send buffer parked for `conn` once its completion arrived. A completion
/// that finds no buffer (or one of another generation) means the driver lost track of
/// the send: the engine is told it failed (EIO), so the connection is not left marked
/// as sending forever and its close can go on.
pub(crate) fn take_parked(
    sends: &mut [Option<(u32, OutBuf)>],
    conn: ConnRef,
    res: i32,
) -> (Result<usize, i32>, OutBuf, bool) {
    let parked = sends.get_mut(conn.key as usize).and_then(|slot| {
        if slot.as_ref().is_some_and(|(g, _)| *g == conn.generation) {
            slot.take()
        } else {
            None
        }
    });
    match parked {
        Some((_, buf)) => {
            let result = if res >= 0 {
                Ok(res as usize)
            } else {
                Err(-res)
            };
            (result, buf, true)
        }
        None => (Err(libc::EIO), OutBuf::default(), false),
    }
}

/// Frees the address parked for `conn`'s connect once its completion arrived.
pub(crate) fn take_connect(connects: &mut [Option<(u32, Box<SockAddr>)>], conn: ConnRef) {
    if let Some(slot) = connects.get_mut(conn.key as usize)
        && slot.as_ref().is_some_and(|(g, _)| *g == conn.generation)
    {
        *slot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(key: u32, generation: u32) -> ConnRef {
        ConnRef { key, generation }
    }

    #[test]
    fn a_send_completion_without_its_buffer_reports_a_failure() {
        let mut sends: Vec<Option<(u32, OutBuf)>> = Vec::new();
        let (result, buf, found) = take_parked(&mut sends, conn(3, 1), 10);
        assert_eq!(result, Err(libc::EIO));
        assert!(buf.buf.is_empty() && !found);

        sends.resize_with(4, || None);
        sends[3] = Some((
            2,
            OutBuf {
                buf: b"abc".to_vec(),
                pos: 0,
            },
        ));
        let (result, _, found) = take_parked(&mut sends, conn(3, 1), 3);
        assert_eq!(
            result,
            Err(libc::EIO),
            "another generation's buffer is not taken"
        );
        assert!(!found && sends[3].is_some());
        let (result, buf, found) = take_parked(&mut sends, conn(3, 2), 3);
        assert_eq!(
            (result, buf.buf.as_slice(), found),
            (Ok(3), &b"abc"[..], true)
        );
        let (result, ..) = take_parked(&mut sends, conn(3, 2), -libc::EPIPE);
        assert_eq!(result, Err(libc::EIO), "taken once");
    }
}
