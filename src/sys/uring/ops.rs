//! The engine's requests turned into SQEs, pushed into the submission queue of the turn.
//!
//! Nothing here enters the kernel except when the queue is full (then the queued entries
//! are submitted, without waiting, to make room) and for the two listener steps of the
//! drain, which are plain syscalls by design: accepting the backlog until EAGAIN, and
//! closing the listener. The turn's single submit-and-wait sends whatever is queued.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::squeue::{Entry, Flags};
use io_uring::{Submitter, opcode, squeue::SubmissionQueue, types::Fd};
use socket2::Socket;

use crate::log;
use crate::shared::Shared;
use crate::sys::token::{Kind, NO_CONN, encode};
use crate::sys::{ConnRef, Ops, OutBuf, socket};

/// What the SQE builders need, borrowed from the worker for one turn.
pub(crate) struct SqOps<'a, 'r> {
    pub submitter: &'a Submitter<'r>,
    pub sq: &'a mut SubmissionQueue<'r>,
    /// Send buffers the kernel is reading, by connection key: at most one per connection.
    pub sends: &'a mut Vec<Option<(u32, OutBuf)>>,
    pub listener: &'a mut Option<Socket>,
    /// Operations submitted whose last completion has not been reaped yet.
    pub inflight: &'a mut usize,
    pub shared: &'a Arc<Shared>,
    pub index: usize,
    pub bgid: u16,
    pub buf_size: u32,
    pub msg_ring: bool,
    pub multishot_accept: bool,
    pub multishot_recv: bool,
    /// The queued entries were handed to the kernel before this turn's first shutdown.
    pub submitted_early: bool,
}

impl SqOps<'_, '_> {
    /// Queues an entry whose completion will be reaped (counted as in flight).
    pub fn push(&mut self, entry: Entry) {
        *self.inflight += 1;
        self.push_uncounted(entry);
    }

    /// A drain can shut down a thousand connections in one turn, each a synchronous
    /// syscall: hand the sends already queued to the kernel first, so responses of busy
    /// connections do not wait behind them. Once per turn, and only when closing.
    fn submit_before_syscalls(&mut self) {
        if !self.submitted_early && !self.sq.is_empty() {
            self.submitted_early = true;
            self.sq.sync();
            let _ = self.submitter.submit();
            self.sq.sync();
        }
    }

    /// Queues an entry that posts no completion on success (SKIP_SUCCESS).
    fn push_uncounted(&mut self, entry: Entry) {
        loop {
            // SAFETY: every entry pushed here points only at memory that outlives its
            // operation: a send points into the heap buffer of a Vec parked in
            // `self.sends` until its completion is reaped (growing `sends` moves the Vec
            // header, never its heap buffer); the signalfd and eventfd reads point into
            // boxes the worker owns until its ring is gone; receives pick buffers from
            // the registered buffer ring, which outlives the ring's operations; the other
            // opcodes carry no pointers.
            if unsafe { self.sq.push(&entry) }.is_ok() {
                return;
            }
            self.sq.sync();
            if let Err(e) = self.submitter.submit() {
                // EBUSY: the completion queue is full; wait for the kernel to make room.
                if e.raw_os_error() != Some(libc::EBUSY) {
                    log::warn(format_args!("io_uring submit while queue full: {e}"));
                }
                let _ = self.submitter.squeue_wait();
            }
            self.sq.sync();
        }
    }
}

impl Ops for SqOps<'_, '_> {
    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        let fd = Fd(listener.as_raw_fd());
        let entry = if self.multishot_accept {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        self.push(entry.user_data(encode(Kind::Accept, NO_CONN)));
    }

    fn recv(&mut self, conn: ConnRef, fd: RawFd) {
        let entry = if self.multishot_recv {
            opcode::RecvMulti::new(Fd(fd), self.bgid).build()
        } else {
            opcode::Recv::new(Fd(fd), std::ptr::null_mut(), self.buf_size)
                .buf_group(self.bgid)
                .build()
                .flags(Flags::BUFFER_SELECT)
        };
        self.push(entry.user_data(encode(Kind::Recv, conn)));
    }

    fn send(&mut self, conn: ConnRef, fd: RawFd, buf: OutBuf) {
        let key = conn.key as usize;
        if self.sends.len() <= key {
            self.sends.resize_with(key + 1, || None);
        }
        let slot = &mut self.sends[key];
        debug_assert!(slot.is_none(), "two sends in flight on one connection");
        let parked = &slot.insert((conn.generation, buf)).1;
        let bytes = parked.remaining();
        let len = bytes.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Send::new(Fd(fd), bytes.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.push(entry.user_data(encode(Kind::Send, conn)));
    }

    fn cancel_recv(&mut self, conn: ConnRef) {
        let entry = opcode::AsyncCancel::new(encode(Kind::Recv, conn)).build();
        self.push(entry.user_data(encode(Kind::Cancel, conn)));
    }

    fn cancel_send(&mut self, conn: ConnRef) {
        let entry = opcode::AsyncCancel::new(encode(Kind::Send, conn)).build();
        self.push(entry.user_data(encode(Kind::Cancel, conn)));
    }

    fn shutdown_write(&mut self, _conn: ConnRef, fd: RawFd) {
        self.submit_before_syscalls();
        socket::shutdown(fd, libc::SHUT_WR);
    }

    fn shutdown_both(&mut self, _conn: ConnRef, fd: RawFd) {
        self.submit_before_syscalls();
        socket::shutdown(fd, libc::SHUT_RDWR);
    }

    fn close(&mut self, conn: ConnRef, fd: RawFd) {
        let entry = opcode::Close::new(Fd(fd)).build();
        self.push(entry.user_data(encode(Kind::Close, conn)));
    }

    fn cancel_accept(&mut self) {
        if let Some(listener) = self.listener.as_ref() {
            socket::refuse_new_handshakes(listener.as_raw_fd());
        }
        let entry = opcode::AsyncCancel::new(encode(Kind::Accept, NO_CONN)).build();
        self.push(entry.user_data(encode(Kind::Cancel, NO_CONN)));
    }

    fn close_listener(&mut self, backlog: &mut Vec<RawFd>) -> Option<i32> {
        let listener = self.listener.take()?;
        socket::refuse_new_handshakes(listener.as_raw_fd());
        let stopped = socket::accept_all(listener.as_raw_fd(), libc::SOCK_CLOEXEC, backlog);
        drop(listener);
        stopped
    }

    fn wake_workers(&mut self) {
        for (j, waker) in self.shared.wakers.iter().enumerate() {
            if j == self.index {
                continue;
            }
            let ring_fd = waker.ring_fd();
            if self.msg_ring && ring_fd >= 0 {
                let target = ConnRef {
                    key: j as u32,
                    generation: 0,
                };
                let entry =
                    opcode::MsgRingData::new(Fd(ring_fd), 0, encode(Kind::Wake, NO_CONN), None)
                        .build()
                        .flags(Flags::SKIP_SUCCESS)
                        .user_data(encode(Kind::MsgRing, target));
                self.push_uncounted(entry);
            } else {
                waker.wake();
            }
        }
    }
}
