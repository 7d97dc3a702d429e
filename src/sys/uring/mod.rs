//! The io_uring backend: one ring per worker, completions decoded into engine events.
//!
//! A loop turn is: read the clock, reap every completion (handing each to the engine,
//! and each receive buffer straight back to the buffer ring), let the engine flush its
//! coalesced output, publish the recycled buffers, then one `io_uring_enter` that submits
//! the whole batch and waits for the next completion (or the engine's next deadline).
//!
//! Besides the engine's operations, the backend keeps two reads of its own in flight: on
//! the shutdown signalfd (so SIGTERM arrives as a completion) and on the worker's eventfd
//! (so the shutdown handle can wake it). Other workers wake it with IORING_OP_MSG_RING.
//! When the engine is done, the backend cancels those reads, reaps every completion
//! still owed, unregisters the buffer ring, and only then drops the ring.

mod bufring;
mod ops;
mod setup;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{CompletionQueue, IoUring, Submitter, cqueue, opcode};
use socket2::Socket;

use crate::config::Config;
use crate::engine::Engine;
use crate::handler::Handler;
use crate::log;
use crate::shared::Shared;
use crate::signal::{SIGINFO_SIZE, signo};
use crate::stats::WorkerReport;
use crate::sys::{ConnRef, Event, OutBuf, RecvEnd};

pub(crate) use crate::sys::token::{Kind, NO_CONN, decode, encode};
pub(crate) use bufring::BufRing;
pub(crate) use setup::{Features, build_ring};

use ops::SqOps;

/// The buffer group id of every worker's receive buffer ring (one ring per io_uring).
const BGID: u16 = 0;

/// One worker's io_uring backend: its ring, its receive buffers, its listener.
pub(crate) struct UringWorker {
    // Field order matters on drop: the ring goes first, so the kernel is done with the
    // buffer ring, the read buffers and the send buffers before their memory is freed.
    ring: IoUring,
    bufring: BufRing,
    sends: Vec<Option<(u32, OutBuf)>>,
    signal_buf: Box<[u8; SIGINFO_SIZE]>,
    wake_buf: Box<u64>,
    listener: Option<Socket>,
    signalfd: Option<RawFd>,
    shared: Arc<Shared>,
    index: usize,
    features: Features,
    inflight: usize,
    multishot_accept: bool,
    multishot_recv: bool,
    buf_size: u32,
}

impl UringWorker {
    /// Sets up the ring and registers the buffer ring. Call on the worker's own thread:
    /// a SINGLE_ISSUER ring belongs to the thread that made it.
    pub fn new(
        listener: Socket,
        signalfd: Option<RawFd>,
        shared: Arc<Shared>,
        index: usize,
        config: &Config,
    ) -> io::Result<UringWorker> {
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
        shared.wakers[index].set_ring_fd(ring.as_raw_fd());
        Ok(UringWorker {
            ring,
            bufring,
            sends: Vec::new(),
            signal_buf: Box::new([0; SIGINFO_SIZE]),
            wake_buf: Box::new(0),
            listener: Some(listener),
            signalfd,
            shared,
            index,
            features,
            inflight: 0,
            multishot_accept: true,
            multishot_recv: true,
            buf_size: config.buffer_size,
        })
    }

    /// Runs the engine until it is done, releases everything, and returns the worker's
    /// report.
    pub fn run<H: Handler>(mut self, mut engine: Engine<H>) -> io::Result<WorkerReport> {
        let served = self.drive(&mut engine, Mode::Serve);
        self.shared.wakers[self.index].set_ring_fd(-1);
        let released = self.drive(&mut engine, Mode::Release);
        served.and(released)?;
        self.ring.submitter().unregister_buf_ring(BGID)?;
        drop(self.listener.take());
        log::info(format_args!(
            "worker {}: backend released (ring dropped)",
            self.index
        ));
        Ok(WorkerReport {
            stats: engine.stats().clone(),
            drain: engine.drain_report(),
        })
    }

    /// The loop. `Serve`: arm the backend's reads, start the engine, turn until the
    /// engine is done. `Release`: cancel the backend's reads and reap every completion
    /// still owed, so the ring is never dropped with an operation in flight.
    fn drive<H: Handler>(&mut self, engine: &mut Engine<H>, mode: Mode) -> io::Result<()> {
        let (mut submitter, mut sq, mut cq) = self.ring.split();
        // The ring's own fd, registered: each io_uring_enter skips the fd lookup. Best
        // effort (Linux 5.18); the release loop runs without it.
        let registered = mode == Mode::Serve && submitter.register_ring_fd().is_ok();
        let mut own = OwnReads {
            signal_fd: self.signalfd,
            signal_buf: &mut self.signal_buf,
            wake_fd: self.shared.wakers[self.index].eventfd(),
            wake_buf: &mut self.wake_buf,
            releasing: mode == Mode::Release,
        };
        let mut io = Io {
            bufring: &mut self.bufring,
            multishot_accept: self.multishot_accept,
            multishot_recv: self.multishot_recv,
        };
        let started = Instant::now();
        let mut warned = false;
        let mut first = true;
        loop {
            let now = Instant::now();
            let mut ops = SqOps {
                submitter: &submitter,
                sq: &mut sq,
                sends: &mut self.sends,
                listener: &mut self.listener,
                inflight: &mut self.inflight,
                shared: &self.shared,
                index: self.index,
                bgid: BGID,
                buf_size: self.buf_size,
                msg_ring: self.features.msg_ring,
                multishot_accept: io.multishot_accept,
                multishot_recv: io.multishot_recv,
                submitted_early: false,
            };
            match (mode, first) {
                (Mode::Serve, true) => {
                    own.arm_signal(&mut ops);
                    own.arm_wake(&mut ops);
                    engine.start(&mut ops);
                }
                (Mode::Release, true) => {
                    for kind in [Kind::Signal, Kind::WakeRead] {
                        let entry = opcode::AsyncCancel::new(encode(kind, NO_CONN)).build();
                        ops.push(entry.user_data(encode(Kind::Cancel, NO_CONN)));
                    }
                }
                (Mode::Serve, false) => {
                    engine.begin_turn(now, &mut ops);
                    io.reap(&mut cq, engine, &mut own, &mut ops);
                    engine.end_turn(&mut ops);
                }
                (Mode::Release, false) => {
                    io.reap(&mut cq, engine, &mut own, &mut ops);
                    if !warned && started.elapsed() > Duration::from_secs(1) {
                        warned = true;
                        log::warn(format_args!(
                            "worker {}: {} operations still in flight at release",
                            self.index, self.inflight
                        ));
                    }
                }
            }
            first = false;
            io.bufring.publish();
            let finished = match mode {
                Mode::Serve => engine.is_done(),
                Mode::Release => self.inflight == 0,
            };
            if finished {
                break;
            }
            sq.sync();
            let deadline = match mode {
                Mode::Serve => engine.next_deadline(),
                Mode::Release => Some(now + Duration::from_millis(100)),
            };
            wait(&submitter, deadline, now)?;
            cq.sync();
        }
        self.multishot_accept = io.multishot_accept;
        self.multishot_recv = io.multishot_recv;
        if registered {
            let _ = submitter.unregister_ring_fd();
        }
        Ok(())
    }
}

/// What a run of the loop is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Release,
}

/// Blocks in the kernel until a completion arrives or `deadline` passes, submitting the
/// turn's batch on the way in.
fn wait(submitter: &Submitter<'_>, deadline: Option<Instant>, now: Instant) -> io::Result<()> {
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

/// The backend's own reads: the shutdown signalfd and the worker's eventfd.
struct OwnReads<'a> {
    signal_fd: Option<RawFd>,
    signal_buf: &'a mut [u8; SIGINFO_SIZE],
    wake_fd: RawFd,
    wake_buf: &'a mut u64,
    releasing: bool,
}

impl OwnReads<'_> {
    fn arm_signal(&mut self, ops: &mut SqOps<'_, '_>) {
        if let (Some(fd), false) = (self.signal_fd, self.releasing) {
            let entry =
                opcode::Read::new(Fd(fd), self.signal_buf.as_mut_ptr(), SIGINFO_SIZE as u32)
                    .build();
            ops.push(entry.user_data(encode(Kind::Signal, NO_CONN)));
        }
    }

    fn arm_wake(&mut self, ops: &mut SqOps<'_, '_>) {
        if !self.releasing {
            let ptr = (self.wake_buf as *mut u64).cast::<u8>();
            let entry = opcode::Read::new(Fd(self.wake_fd), ptr, 8).build();
            ops.push(entry.user_data(encode(Kind::WakeRead, NO_CONN)));
        }
    }
}

/// Turns completions into engine events.
struct Io<'a> {
    bufring: &'a mut BufRing,
    multishot_accept: bool,
    multishot_recv: bool,
}

impl Io<'_> {
    fn reap<H: Handler>(
        &mut self,
        cq: &mut CompletionQueue<'_>,
        engine: &mut Engine<H>,
        own: &mut OwnReads<'_>,
        ops: &mut SqOps<'_, '_>,
    ) {
        for cqe in cq {
            let (user_data, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            let Some((kind, conn)) = decode(user_data) else {
                log::warn(format_args!(
                    "completion with unknown user_data {user_data:#x}"
                ));
                continue;
            };
            if !cqueue::more(flags) && !matches!(kind, Kind::Wake | Kind::MsgRing) {
                *ops.inflight -= 1;
            }
            self.dispatch(kind, conn, res, flags, engine, own, ops);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch<H: Handler>(
        &mut self,
        kind: Kind,
        conn: ConnRef,
        res: i32,
        flags: u32,
        engine: &mut Engine<H>,
        own: &mut OwnReads<'_>,
        ops: &mut SqOps<'_, '_>,
    ) {
        match kind {
            Kind::Accept => self.on_accept(res, cqueue::more(flags), engine, ops),
            Kind::Recv => self.on_recv(conn, res, flags, engine, ops),
            Kind::Send => {
                let parked = ops.sends.get_mut(conn.key as usize).and_then(Option::take);
                let Some((generation, buf)) = parked else {
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
            Kind::Signal => {
                if res == SIGINFO_SIZE as i32 {
                    engine.handle(
                        Event::Signal {
                            signo: signo(own.signal_buf),
                        },
                        ops,
                    );
                } else if res < 0 && !matches!(-res, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
                    log::warn(format_args!(
                        "signalfd read failed: {}",
                        io::Error::from_raw_os_error(-res)
                    ));
                    return;
                }
                own.arm_signal(ops);
            }
            Kind::WakeRead => {
                if res >= 0 {
                    engine.handle(Event::Wake, ops);
                }
                if res >= 0 || matches!(-res, libc::EAGAIN | libc::EINTR) {
                    own.arm_wake(ops);
                }
            }
            Kind::Wake => engine.handle(Event::Wake, ops),
            Kind::MsgRing => {
                // A wake-up to another ring failed (that ring is gone, or busy): use its
                // eventfd instead.
                if let Some(waker) = ops.shared.wakers.get(conn.key as usize) {
                    waker.wake();
                }
            }
        }
    }

    fn on_accept<H: Handler>(
        &mut self,
        res: i32,
        more: bool,
        engine: &mut Engine<H>,
        ops: &mut SqOps<'_, '_>,
    ) {
        if res >= 0 {
            engine.handle(Event::Accepted { fd: res as RawFd }, ops);
            if !more {
                engine.handle(Event::AcceptEnded { errno: 0 }, ops);
            }
            return;
        }
        let errno = -res;
        if errno == libc::EINVAL && self.multishot_accept {
            log::info(format_args!(
                "multishot accept unsupported (Linux < 5.19): re-arming single accepts"
            ));
            self.multishot_accept = false;
            ops.multishot_accept = false;
            engine.handle(Event::AcceptEnded { errno: 0 }, ops);
            return;
        }
        engine.handle(Event::AcceptEnded { errno }, ops);
    }

    fn on_recv<H: Handler>(
        &mut self,
        conn: ConnRef,
        res: i32,
        flags: u32,
        engine: &mut Engine<H>,
        ops: &mut SqOps<'_, '_>,
    ) {
        let bid = cqueue::buffer_select(flags);
        if res > 0 {
            if let Some(bid) = bid {
                let data = self.bufring.get(bid, res as usize);
                let queued = cqueue::sock_nonempty(flags);
                engine.handle(Event::Received { conn, data, queued }, ops);
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
            libc::EINVAL if self.multishot_recv => {
                log::info(format_args!(
                    "multishot recv unsupported (Linux < 6.0): re-arming single receives"
                ));
                self.multishot_recv = false;
                ops.multishot_recv = false;
                RecvEnd::Rearm
            }
            errno => RecvEnd::Error(errno),
        };
        engine.handle(Event::RecvEnded { conn, why }, ops);
    }
}
