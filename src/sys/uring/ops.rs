//! The engine's requests turned into SQEs, pushed into the submission queue of the turn.
//!
//! Nothing here enters the kernel except when the queue is full: then the queued entries
//! are submitted (without waiting) to make room, and pushing goes on. The turn's single
//! submit-and-wait sends whatever is left.

use std::io;
use std::os::fd::RawFd;

use io_uring::squeue::Entry;
use io_uring::{Submitter, opcode, squeue::SubmissionQueue, types::Fd};

use super::token::{Kind, NO_CONN, encode};
use crate::sys::{ConnRef, Ops, OutBuf};

/// The state the SQE builders need, borrowed from the backend for one turn.
pub(crate) struct SqOps<'a, 'r> {
    pub submitter: &'a Submitter<'r>,
    pub sq: &'a mut SubmissionQueue<'r>,
    /// Send buffers the kernel is reading, by connection key: at most one per connection.
    pub sends: &'a mut Vec<Option<(u32, OutBuf)>>,
    pub listener: RawFd,
    pub bgid: u16,
    pub buf_size: u32,
    pub multishot_accept: bool,
    pub multishot_recv: bool,
}

impl SqOps<'_, '_> {
    fn push(&mut self, entry: Entry) {
        loop {
            // SAFETY: every entry pushed here points only at memory that outlives its
            // operation: a send points into the heap buffer of a Vec parked in
            // `self.sends` until its completion is reaped (growing `sends` moves the Vec
            // header, never its heap buffer); receives pick buffers from the registered
            // buffer ring, which outlives the ring's operations; the other opcodes carry
            // no pointers.
            if unsafe { self.sq.push(&entry) }.is_ok() {
                return;
            }
            self.sq.sync();
            if let Err(e) = self.submitter.submit() {
                // EBUSY: the completion queue is full; the next wait reaps it. Anything
                // else cannot be fixed by retrying the push, so let the wait report it.
                if e.raw_os_error() != Some(libc::EBUSY) {
                    crate::log::warn(format_args!("io_uring submit while queue full: {e}"));
                }
                submit_blocked(self.submitter);
            }
            self.sq.sync();
        }
    }
}

/// The queue stayed full: wait for the kernel to free a slot rather than spin.
fn submit_blocked(submitter: &Submitter<'_>) {
    let _: io::Result<usize> = submitter.squeue_wait();
}

impl Ops for SqOps<'_, '_> {
    fn accept(&mut self) {
        let fd = Fd(self.listener);
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
                .flags(io_uring::squeue::Flags::BUFFER_SELECT)
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

    fn close(&mut self, conn: ConnRef, fd: RawFd) {
        let entry = opcode::Close::new(Fd(fd)).build();
        self.push(entry.user_data(encode(Kind::Close, conn)));
    }
}
