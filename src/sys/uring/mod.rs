//! The io_uring backend: one ring per worker, completions decoded into engine events.
//!
//! A loop turn is: read the clock, reap every completion (handing each to the engine,
//! and each receive buffer straight back to the buffer ring), let the engine flush its
//! coalesced output, publish the recycled buffers, then one `io_uring_enter` that submits
//! the whole batch and waits for the next completion (or the engine's next deadline).

mod bufring;
mod ops;
mod setup;
mod token;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::cqueue;
use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{CompletionQueue, IoUring};
use socket2::Socket;

use crate::config::Config;
use crate::engine::Engine;
use crate::handler::Handler;
use crate::log;
use crate::stats::WorkerStats;
use crate::sys::{Event, OutBuf, RecvEnd};

pub(crate) use bufring::BufRing;
pub(crate) use setup::{Features, build_ring};
pub(crate) use token::{Kind, decode, encode};

/// The buffer group id of every worker's receive buffer ring (one ring per io_uring).
const BGID: u16 = 0;

/// One worker's io_uring backend: its ring, its receive buffers, its listener.
pub(crate) struct UringWorker {
    // Field order matters on drop: the ring goes first, so the kernel is done with the
    // buffer ring and the send buffers before their memory is freed.
    ring: IoUring,
    bufring: BufRing,
    sends: Vec<Option<(u32, OutBuf)>>,
    listener: Socket,
    multishot_accept: bool,
    multishot_recv: bool,
    buf_size: u32,
}

impl UringWorker {
    /// Sets up the ring and registers the buffer ring. Call on the worker's own thread:
    /// a SINGLE_ISSUER ring belongs to the thread that made it.
    pub fn new(listener: Socket, config: &Config) -> io::Result<(UringWorker, Features)> {
        let (ring, features) = build_ring(config.ring_entries)?;
        let bufring = BufRing::new(config.buffer_count, config.buffer_size, BGID)?;
        // SAFETY: the entry array lives in `bufring`, which the worker owns and drops only
        // after the ring (field order above), so it stays valid while registered.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufring.ring_addr(),
                bufring.count(),
                bufring.bgid(),
                0,
            )?;
        }
        let worker = UringWorker {
            ring,
            bufring,
            sends: Vec::new(),
            listener,
            multishot_accept: true,
            multishot_recv: true,
            buf_size: config.buffer_size,
        };
        Ok((worker, features))
    }

    /// Runs the engine until it has nothing left to do, and returns its counters.
    pub fn run<H: Handler>(mut self, mut engine: Engine<H>) -> io::Result<WorkerStats> {
        let listener = self.listener.as_raw_fd();
        let (submitter, mut sq, mut cq) = self.ring.split();
        let mut state = Decoder {
            bufring: &mut self.bufring,
            multishot_accept: &mut self.multishot_accept,
            multishot_recv: &mut self.multishot_recv,
        };
        {
            let mut ops = ops::SqOps {
                submitter: &submitter,
                sq: &mut sq,
                sends: &mut self.sends,
                listener,
                bgid: BGID,
                buf_size: self.buf_size,
                multishot_accept: *state.multishot_accept,
                multishot_recv: *state.multishot_recv,
            };
            engine.start(&mut ops);
        }
        loop {
            let now = Instant::now();
            let mut ops = ops::SqOps {
                submitter: &submitter,
                sq: &mut sq,
                sends: &mut self.sends,
                listener,
                bgid: BGID,
                buf_size: self.buf_size,
                multishot_accept: *state.multishot_accept,
                multishot_recv: *state.multishot_recv,
            };
            engine.begin_turn(now, &mut ops);
            state.reap(&mut cq, &mut engine, &mut ops);
            engine.end_turn(&mut ops);
            state.bufring.publish();
            sq.sync();
            let deadline = engine.next_deadline();
            wait(&submitter, deadline, now)?;
            cq.sync();
        }
    }
}

/// Blocks in the kernel until a completion arrives or `deadline` passes, submitting the
/// turn's batch on the way in.
fn wait(
    submitter: &io_uring::Submitter<'_>,
    deadline: Option<Instant>,
    now: Instant,
) -> io::Result<()> {
    let result = match deadline {
        None => submitter.submit_and_wait(1),
        Some(at) => {
            let ts = Timespec::from(at.saturating_duration_since(now));
            let args = SubmitArgs::new().timespec(&ts);
            submitter.submit_with_args(1, &args)
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
            _ => Err(e),
        },
    }
}

/// Turns completions into engine events.
struct Decoder<'a> {
    bufring: &'a mut BufRing,
    multishot_accept: &'a mut bool,
    multishot_recv: &'a mut bool,
}

impl Decoder<'_> {
    fn reap<H: Handler>(
        &mut self,
        cq: &mut CompletionQueue<'_>,
        engine: &mut Engine<H>,
        ops: &mut ops::SqOps<'_, '_>,
    ) {
        for cqe in cq {
            self.dispatch(cqe.user_data(), cqe.result(), cqe.flags(), engine, ops);
        }
    }

    fn dispatch<H: Handler>(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        engine: &mut Engine<H>,
        ops: &mut ops::SqOps<'_, '_>,
    ) {
        let Some((kind, conn)) = decode(user_data) else {
            log::warn(format_args!(
                "completion with unknown user_data {user_data:#x}"
            ));
            return;
        };
        let more = cqueue::more(flags);
        match kind {
            Kind::Accept => self.on_accept(res, more, engine, ops),
            Kind::Recv => self.on_recv(conn, res, flags, engine, ops),
            Kind::Send => {
                let Some((generation, buf)) =
                    ops.sends.get_mut(conn.key as usize).and_then(Option::take)
                else {
                    log::warn(format_args!(
                        "send completion without a parked buffer (key {})",
                        conn.key
                    ));
                    return;
                };
                debug_assert_eq!(generation, conn.generation);
                let result = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(-res)
                };
                engine.handle(Event::Sent { conn, result, buf }, ops);
            }
            Kind::Close => engine.handle(Event::Closed { conn }, ops),
            Kind::Cancel => {}
        }
    }

    fn on_accept<H: Handler>(
        &mut self,
        res: i32,
        more: bool,
        engine: &mut Engine<H>,
        ops: &mut ops::SqOps<'_, '_>,
    ) {
        if res >= 0 {
            engine.handle(Event::Accepted { fd: res as RawFd }, ops);
            if !more {
                engine.handle(Event::AcceptEnded { errno: 0 }, ops);
            }
            return;
        }
        let errno = -res;
        if errno == libc::EINVAL && *self.multishot_accept {
            log::info(format_args!(
                "multishot accept unsupported (Linux < 5.19): re-arming single accepts"
            ));
            *self.multishot_accept = false;
            ops.multishot_accept = false;
            engine.handle(Event::AcceptEnded { errno: 0 }, ops);
            return;
        }
        engine.handle(Event::AcceptEnded { errno }, ops);
    }

    fn on_recv<H: Handler>(
        &mut self,
        conn: crate::sys::ConnRef,
        res: i32,
        flags: u32,
        engine: &mut Engine<H>,
        ops: &mut ops::SqOps<'_, '_>,
    ) {
        let bid = cqueue::buffer_select(flags);
        if res > 0 {
            if let Some(bid) = bid {
                let data = self.bufring.get(bid, res as usize);
                engine.handle(Event::Received { conn, data }, ops);
                self.bufring.recycle(bid);
            }
            if !cqueue::more(flags) {
                engine.handle(
                    Event::RecvEnded {
                        conn,
                        why: RecvEnd::Rearm,
                    },
                    ops,
                );
            }
            return;
        }
        if let Some(bid) = bid {
            self.bufring.recycle(bid);
        }
        let why = match -res {
            0 => RecvEnd::Eof,
            libc::ENOBUFS => RecvEnd::NoBuffers,
            libc::ECANCELED => RecvEnd::Cancelled,
            libc::EINVAL if *self.multishot_recv => {
                log::info(format_args!(
                    "multishot recv unsupported (Linux < 6.0): re-arming single receives"
                ));
                *self.multishot_recv = false;
                ops.multishot_recv = false;
                RecvEnd::Rearm
            }
            errno => RecvEnd::Error(errno),
        };
        engine.handle(Event::RecvEnded { conn, why }, ops);
    }
}
