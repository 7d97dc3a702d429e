//! The io_uring backend: one ring per worker, completions decoded into engine events.
//!
//! The worker loop ([`crate::worker`]) drives it through [`Driver`]: the engine's intents
//! become SQEs in the turn's batch ([`UringQueue`]), [`Driver::reap`] decodes every
//! completion (lending each receive buffer to the engine for one call and recycling it
//! right after), [`Driver::publish`] hands the recycled buffers back, and one
//! `io_uring_enter` submits the batch and waits.
//!
//! Besides the engine's operations, the driver keeps two reads of its own in flight: on
//! the shutdown signalfd (so SIGTERM arrives as a completion) and on the worker's eventfd
//! (so the shutdown handle can wake it). Other workers wake it with IORING_OP_MSG_RING.
//!
//! Memory the kernel may write or read (the buffer ring, parked send buffers, the two
//! read buffers) is freed only once every operation's last completion was reaped. The
//! worker's release phase gets there; if the driver is dropped with operations still
//! in flight (the kernel stopped answering within the release's time limit), that
//! memory is leaked on purpose rather than freed under the kernel.

mod bufring;
mod queue;
mod setup;

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue};

use crate::config::Config;
use crate::contract::{ConnRef, Driver, Event, RecvEnd};
use crate::shared::Shared;
use crate::sys::abort_sockets;
use crate::sys::fds::OpenFds;
use crate::sys::signal::{SIGINFO_SIZE, signo};
use crate::sys::token::{Kind, NO_CONN, decode, encode};

pub(crate) use bufring::BufRing;
#[cfg(feature = "sim")]
pub(crate) use bufring::UnregisteredBufRing;
pub(crate) use queue::UringQueue;
pub(crate) use setup::{build_ring, kernel_release};

use queue::{SubmitState, take_connect, take_parked};

/// The buffer group id of every worker's receive buffer ring (one ring per io_uring).
const BGID: u16 = 0;

/// One worker's io_uring backend: its ring, its receive buffers, its listener.
pub(crate) struct UringDriver {
    /// Dropped by hand, before the memory below, in `Drop`.
    ring: ManuallyDrop<IoUring>,
    /// Registered with the ring: freed only after the ring, and only when no operation
    /// is in flight.
    bufring: ManuallyDrop<BufRing>,
    /// The signalfd read's buffer (same rule).
    signal_buf: ManuallyDrop<Box<[u8; SIGINFO_SIZE]>>,
    /// The eventfd read's buffer (same rule).
    wake_buf: ManuallyDrop<Box<u64>>,
    st: SubmitState,
    signalfd: Option<RawFd>,
    wake_fd: RawFd,
    releasing: bool,
    /// One reap's completions, copied out so the completion queue has room again before
    /// any of them is handled (handlers submit, and a full queue must not stall that).
    cqes: Vec<(u64, i32, u32)>,
}

impl UringDriver {
    /// Sets up the ring, registers the buffer ring and queues the driver's own reads.
    /// Call on the worker's own thread: a SINGLE_ISSUER ring belongs to the thread that
    /// made it.
    pub fn new(
        listener: crate::sys::socket::Listener,
        signalfd: Option<RawFd>,
        shared: Arc<Shared>,
        index: usize,
        config: &Config,
    ) -> io::Result<UringDriver> {
        let (ring, features) = build_ring(config.ring_entries)?;
        let bufring = BufRing::new(config.buffer_count, config.buffer_size, BGID)?;
        // SAFETY: the entry array lives in `bufring`, which the driver frees only after
        // the ring is gone and no operation is in flight (see `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufring.ring_addr(),
                bufring.count(),
                bufring.bgid(),
                0,
            )?;
        }
        let multishot_accept = !listener.shared;
        log::debug!(
            "worker {index}: ring of {} entries ({}), {} receive buffers of {} bytes",
            config.ring_entries,
            features.mode,
            config.buffer_count,
            config.buffer_size
        );
        let wake_fd = shared.wakers[index].eventfd().raw();
        shared.wakers[index].set_ring_fd(ring.as_raw_fd());
        let mut driver = UringDriver {
            ring: ManuallyDrop::new(ring),
            bufring: ManuallyDrop::new(bufring),
            signal_buf: ManuallyDrop::new(Box::new([0; SIGINFO_SIZE])),
            wake_buf: ManuallyDrop::new(Box::new(0)),
            st: SubmitState {
                sends: Vec::new(),
                connects: Vec::new(),
                listener: Some(listener),
                fds: OpenFds::default(),
                inflight: 0,
                shared,
                index,
                buf_size: config.buffer_size,
                msg_ring: features.msg_ring,
                multishot_accept,
                multishot_recv: true,
                submitted_early: false,
                overflow: std::collections::VecDeque::new(),
            },
            cqes: Vec::with_capacity(config.ring_entries as usize * 4),
            signalfd,
            wake_fd,
            releasing: false,
        };
        driver.arm_own_reads(true, true);
        Ok(driver)
    }

    /// Queues the signalfd read and the eventfd read (those asked for), unless the
    /// driver is releasing.
    fn arm_own_reads(&mut self, signal: bool, wake: bool) {
        if self.releasing {
            return;
        }
        let (submitter, sq, _) = self.ring.split();
        let mut q = UringQueue {
            submitter,
            sq,
            st: &mut self.st,
        };
        if let (Some(fd), true) = (self.signalfd, signal) {
            let buf = self.signal_buf.as_mut_ptr();
            // SAFETY: the buffer is a box the driver owns; it is freed only after the
            // ring is gone with no operation in flight (`Drop`), so it outlives the
            // read until its completion is reaped, and nothing else touches it until
            // then (the completion's handler reads it after the kernel is done).
            unsafe { q.read(fd, buf, SIGINFO_SIZE as u32, Kind::Signal) };
        }
        if wake {
            let buf = (&mut **self.wake_buf as *mut u64).cast::<u8>();
            // SAFETY: as for the signal buffer: a box the driver frees only after the
            // last completion was reaped.
            unsafe { q.read(self.wake_fd, buf, 8, Kind::WakeRead) };
        }
    }
}

impl Driver for UringDriver {
    type Queue<'q> = UringQueue<'q>;

    fn with_queue<R>(&mut self, f: impl FnOnce(&mut UringQueue<'_>) -> R) -> R {
        let (submitter, sq, _) = self.ring.split();
        let mut q = UringQueue {
            submitter,
            sq,
            st: &mut self.st,
        };
        f(&mut q)
    }

    fn reap(&mut self, mut handle: impl FnMut(Event<'_>, &mut UringQueue<'_>)) {
        let (mut rearm_signal, mut rearm_wake) = (false, false);
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        ); // the completion queue's head is published here: the kernel has room again
        {
            let (submitter, sq, _) = self.ring.split();
            let mut q = UringQueue {
                submitter,
                sq,
                st: &mut self.st,
            };
            let mut reaper = Reaper {
                bufring: &mut self.bufring,
                signal_buf: &self.signal_buf,
                rearm_signal: &mut rearm_signal,
                rearm_wake: &mut rearm_wake,
            };
            for &(user_data, res, flags) in &cqes {
                let Some((kind, conn)) = decode(user_data) else {
                    log::warn!("completion with unknown user_data {user_data:#x}");
                    continue;
                };
                if !cqueue::more(flags) && !matches!(kind, Kind::Wake | Kind::MsgRing) {
                    q.st.inflight -= 1;
                }
                reaper.dispatch(kind, conn, res, flags, &mut q, &mut handle);
            }
        }
        self.cqes = cqes;
        self.arm_own_reads(rearm_signal, rearm_wake);
    }

    fn has_ready(&self) -> bool {
        false
    }

    fn publish(&mut self) {
        self.bufring.publish();
    }

    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.st.submitted_early = false;
        let mut timeout = timeout;
        if !self.st.overflow.is_empty() && !self.with_queue(|q| q.flush_overflow()) {
            timeout = Some(Duration::ZERO); // more to submit: reap, then come back
        }
        let submitter = self.ring.submitter();
        let result = match timeout {
            None => submitter.submit_and_wait(1),
            Some(after) => {
                let ts = Timespec::from(after);
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

    fn begin_release(&mut self, abort: bool) {
        self.releasing = true;
        self.st.shared.wakers[self.st.index].set_ring_fd(-1);
        self.with_queue(|q| {
            if abort {
                q.cancel_everything();
            } else {
                q.cancel(encode(Kind::Signal, NO_CONN));
                q.cancel(encode(Kind::WakeRead, NO_CONN));
            }
        });
        if abort {
            abort_sockets(&mut self.st.listener, &mut self.st.fds);
        }
    }

    fn in_flight(&self) -> usize {
        self.st.inflight
    }
}

impl UringDriver {
    /// Cancels every operation and reaps until none is in flight, for at most `limit`:
    /// what the worker's release does, for a driver dropped without one (a panic
    /// unwinding through the loop, a factory that panicked). Completions are dropped.
    fn settle(&mut self, limit: Duration) {
        let started = std::time::Instant::now();
        self.begin_release(true);
        while self.st.inflight > 0 && started.elapsed() < limit {
            if self
                .submit_and_wait(Some(Duration::from_millis(50)))
                .is_err()
            {
                std::thread::sleep(Duration::from_millis(10)); // no spinning on errors
            }
            self.reap(|_, _| {});
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        self.st.shared.wakers[self.st.index].set_ring_fd(-1);
        // Entries that never reached the kernel will never complete.
        self.st.inflight -= self.st.overflow.len().min(self.st.inflight);
        self.st.overflow.clear();
        if self.st.inflight > 0 {
            self.settle(Duration::from_secs(2));
        }
        let settled = self.st.inflight == 0;
        if settled && let Err(e) = self.ring.submitter().unregister_buf_ring(BGID) {
            log::warn!("unregistering the buffer ring: {e}");
        }
        // SAFETY: dropped once, here, and never used after: closing the ring fd ends
        // every registration.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        if settled {
            // SAFETY: no operation is in flight and the ring is gone, so the kernel no
            // longer reads the buffer ring or writes the buffers; each is dropped once.
            unsafe {
                ManuallyDrop::drop(&mut self.bufring);
                ManuallyDrop::drop(&mut self.signal_buf);
                ManuallyDrop::drop(&mut self.wake_buf);
            }
        } else {
            // Operations were still in flight when the release gave up: the kernel may
            // still write into these buffers or read the parked sends. Leak them.
            log::warn!(
                "worker {}: {} io_uring operations never completed; leaking their buffers",
                self.st.index,
                self.st.inflight
            );
            std::mem::forget(std::mem::take(&mut self.st.sends));
            std::mem::forget(std::mem::take(&mut self.st.connects));
        }
        // Descriptors the engine never closed (a worker that failed): the peers see the
        // connection end instead of hanging.
        self.st.fds.close_all();
        log::info!(
            target: crate::drain::LOG_TARGET,
            "worker {}: backend released (ring dropped)",
            self.st.index
        );
    }
}

/// Turns completions into engine events (the receive-buffer side of one reap).
struct Reaper<'a> {
    bufring: &'a mut BufRing,
    signal_buf: &'a [u8; SIGINFO_SIZE],
    rearm_signal: &'a mut bool,
    rearm_wake: &'a mut bool,
}

impl Reaper<'_> {
    fn dispatch(
        &mut self,
        kind: Kind,
        conn: ConnRef,
        res: i32,
        flags: u32,
        q: &mut UringQueue<'_>,
        handle: &mut impl FnMut(Event<'_>, &mut UringQueue<'_>),
    ) {
        match kind {
            Kind::Accept => on_accept(res, cqueue::more(flags), q, handle),
            Kind::Recv => self.on_recv(conn, res, flags, q, handle),
            Kind::Send => {
                let (result, buf, found) = take_parked(&mut q.st.sends, conn, res);
                if !found {
                    log::warn!(
                        "send completion without its parked buffer (key {}); closing it",
                        conn.key
                    );
                }
                handle(Event::Sent { conn, result, buf }, q);
            }
            Kind::Close => handle(Event::Closed { conn }, q),
            Kind::Connect => {
                take_connect(&mut q.st.connects, conn);
                let result = if res >= 0 { Ok(()) } else { Err(-res) };
                handle(Event::Connected { conn, result }, q);
            }
            Kind::Cancel => {
                // ENOENT: it had completed already; EALREADY: it is completing. Anything
                // else (EINVAL: a cancel this kernel lacks) leaves the target in flight.
                if res < 0 && !matches!(-res, libc::ENOENT | libc::EALREADY) {
                    log::warn!(
                        "io_uring cancel failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
            }
            Kind::Signal => {
                if res == SIGINFO_SIZE as i32 {
                    let signo = signo(self.signal_buf);
                    handle(Event::Signal { signo }, q);
                } else if res < 0 && !matches!(-res, libc::EAGAIN | libc::EINTR) {
                    if -res != libc::ECANCELED {
                        log::warn!(
                            "signalfd read failed: {}",
                            io::Error::from_raw_os_error(-res)
                        );
                    }
                    return;
                }
                *self.rearm_signal = true;
            }
            Kind::WakeRead => {
                if res >= 0 {
                    handle(Event::Wake, q);
                }
                if res >= 0 || matches!(-res, libc::EAGAIN | libc::EINTR) {
                    *self.rearm_wake = true;
                } else if -res != libc::ECANCELED {
                    // Without it, eventfd wake-ups (the shutdown handle, posts from plain
                    // threads) no longer reach this worker: say so.
                    log::warn!(
                        "eventfd read failed: {}; wake-ups from other threads are lost",
                        io::Error::from_raw_os_error(-res)
                    );
                }
            }
            Kind::Wake => handle(Event::Wake, q),
            Kind::MsgRing => {
                // A wake-up to another ring failed (that ring is gone, or busy): use its
                // eventfd instead.
                if let Some(waker) = q.st.shared.wakers.get(conn.key as usize) {
                    waker.wake();
                }
            }
        }
    }

    fn on_recv(
        &mut self,
        conn: ConnRef,
        res: i32,
        flags: u32,
        q: &mut UringQueue<'_>,
        handle: &mut impl FnMut(Event<'_>, &mut UringQueue<'_>),
    ) {
        let bid = cqueue::buffer_select(flags);
        if res > 0 {
            if let Some(bid) = bid {
                // SAFETY: this completion handed buffer `bid` to us with `res` bytes; it
                // is recycled right after the engine's one call below, and the kernel
                // does not write it again before it is published anew.
                let data = unsafe { self.bufring.get(bid, res as usize) };
                let queued = cqueue::sock_nonempty(flags);
                handle(Event::Received { conn, data, queued }, q);
                // SAFETY: the kernel handed `bid` out with this completion; the slice
                // lent to the engine is gone, and the buffer goes back once.
                unsafe { self.bufring.recycle(bid) };
            }
            if !cqueue::more(flags) {
                let why = RecvEnd::Rearm;
                handle(Event::RecvEnded { conn, why }, q);
            }
            return;
        }
        if let Some(bid) = bid {
            // SAFETY: the kernel handed `bid` out with this (failed or empty) completion;
            // nothing read it, and it goes back once.
            unsafe { self.bufring.recycle(bid) };
        }
        let why = match -res {
            0 => RecvEnd::Eof,
            libc::ENOBUFS => RecvEnd::NoBuffers,
            libc::ECANCELED => RecvEnd::Cancelled,
            libc::EINVAL if q.st.multishot_recv => {
                log::info!("multishot recv unsupported (Linux < 6.0): re-arming single receives");
                q.st.multishot_recv = false;
                RecvEnd::Rearm
            }
            errno => RecvEnd::Error(errno),
        };
        handle(Event::RecvEnded { conn, why }, q);
    }
}

fn on_accept(
    res: i32,
    more: bool,
    q: &mut UringQueue<'_>,
    handle: &mut impl FnMut(Event<'_>, &mut UringQueue<'_>),
) {
    if res >= 0 {
        q.st.fds.insert(res as RawFd);
        handle(Event::Accepted { fd: res as RawFd }, q);
        if !more {
            handle(Event::AcceptEnded { errno: 0 }, q);
        }
        return;
    }
    let errno = -res;
    if errno == libc::EINVAL && q.st.multishot_accept {
        log::info!("multishot accept unsupported (Linux < 5.19): re-arming single accepts");
        q.st.multishot_accept = false;
        handle(Event::AcceptEnded { errno: 0 }, q);
        return;
    }
    handle(Event::AcceptEnded { errno }, q);
}
