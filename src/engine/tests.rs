//! Engine unit tests against a recording backend: no sockets, no kernel.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::contract::BacklogEnd;
use crate::handler::{CloseReason, Conn, Handler};

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Accept,
    Recv(ConnRef),
    Send(ConnRef, Vec<u8>),
    CancelRecv(ConnRef),
    CancelSend(ConnRef),
    Shutdown(ConnRef),
    ShutdownBoth(ConnRef),
    Close(ConnRef),
    CancelAccept,
    CloseListener,
    WakeWorkers,
    Connect(ConnRef, std::net::SocketAddr),
    CancelConnect(ConnRef),
}

#[derive(Default)]
struct Rec {
    ops: Vec<Op>,
    bufs: Vec<OutBuf>,
    /// Descriptors waiting in the simulated listen backlog.
    backlog: Vec<i32>,
}

impl Intents for Rec {
    fn accept(&mut self) {
        self.ops.push(Op::Accept);
    }
    fn recv(&mut self, conn: ConnRef, _fd: i32) {
        self.ops.push(Op::Recv(conn));
    }
    fn send(&mut self, conn: ConnRef, _fd: i32, buf: OutBuf) {
        self.ops.push(Op::Send(conn, buf.remaining().to_vec()));
        self.bufs.push(buf);
    }
    fn cancel_recv(&mut self, conn: ConnRef) {
        self.ops.push(Op::CancelRecv(conn));
    }
    fn cancel_send(&mut self, conn: ConnRef) {
        self.ops.push(Op::CancelSend(conn));
    }
    fn shutdown_write_now(&mut self, conn: ConnRef, _fd: i32) {
        self.ops.push(Op::Shutdown(conn));
    }
    fn shutdown_both_now(&mut self, conn: ConnRef, _fd: i32) {
        self.ops.push(Op::ShutdownBoth(conn));
    }
    fn close(&mut self, conn: ConnRef, _fd: i32) {
        self.ops.push(Op::Close(conn));
    }
    fn cancel_accept(&mut self) {
        self.ops.push(Op::CancelAccept);
    }
    fn close_listener_now(&mut self, backlog: &mut Vec<i32>, _give_up: bool) -> BacklogEnd {
        self.ops.push(Op::CloseListener);
        backlog.append(&mut self.backlog);
        BacklogEnd::Closed
    }
    fn wake_workers(&mut self) {
        self.ops.push(Op::WakeWorkers);
    }
    fn wake_worker(&mut self, _index: usize) {
        self.ops.push(Op::WakeWorkers);
    }
    fn open_socket_now(&mut self, _v6: bool) -> Result<i32, i32> {
        Ok(900)
    }
    fn connect(&mut self, conn: ConnRef, _fd: i32, to: std::net::SocketAddr) {
        self.ops.push(Op::Connect(conn, to));
    }
    fn cancel_connect(&mut self, conn: ConnRef) {
        self.ops.push(Op::CancelConnect(conn));
    }
}

impl Rec {
    fn take(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }
}

/// Echoes complete lines (up to the last '\n'), or everything when `lines` is false;
/// `amplify` repeats each reply to create back-pressure.
struct Lines {
    lines: bool,
    amplify: usize,
    calls: Rc<RefCell<Vec<String>>>,
    /// After a line `hold`: takes nothing more, holding its input, until its timer.
    held: bool,
}

impl Handler for Lines {
    type State = ();
    type Message = ();
    fn on_open(&mut self, _conn: &mut Conn<'_>) {
        self.calls.borrow_mut().push("open".into());
    }
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        self.calls
            .borrow_mut()
            .push(format!("data {}", String::from_utf8_lossy(data)));
        if self.held {
            return 0;
        }
        if data.starts_with(b"hold\n") {
            self.held = true;
            conn.hold_input();
            conn.set_timer(Duration::from_millis(10));
            return 5;
        }
        let n = if self.lines {
            data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        } else {
            data.len()
        };
        for _ in 0..self.amplify.max(1) {
            conn.write(&data[..n]);
        }
        if data[..n].ends_with(b"quit\n") {
            conn.close();
        }
        n
    }
    fn on_timer(&mut self, _: &mut (), conn: &mut Conn<'_>) {
        self.held = false;
        conn.release_input();
    }
    fn on_close(&mut self, _: (), reason: CloseReason) {
        self.calls.borrow_mut().push(format!("close {reason:?}"));
    }
}

struct T {
    engine: Engine<Lines>,
    rec: Rec,
    calls: Rc<RefCell<Vec<String>>>,
}

fn setup(lines: bool, amplify: usize, config: Config) -> T {
    let calls = Rc::new(RefCell::new(Vec::new()));
    let handler = Lines {
        lines,
        amplify,
        calls: calls.clone(),
        held: false,
    };
    let shared = crate::shared::Shared::new(1, None).unwrap();
    let (mailbox, inbox) = crate::mailbox::channel(shared.clone(), 0, 16);
    let worker = crate::handler::Worker::new(0, mailbox);
    let mut t = T {
        engine: Engine::new(handler, (worker, inbox), &config, shared, Instant::now()),
        rec: Rec::default(),
        calls,
    };
    t.engine.start(&mut t.rec);
    assert_eq!(t.rec.take(), vec![Op::Accept]);
    t
}

impl T {
    /// What the worker loop does after a turn: run the teardowns once they are due.
    /// What the worker does after a turn: runs the teardowns due, then finishes.
    fn run_teardowns(&mut self) {
        if let Some(list) = self.engine.take_teardowns() {
            for (_, close) in list {
                close();
            }
            self.engine.teardowns_ran(0, &mut self.rec);
        }
        if self.engine.teardown_complete() {
            self.engine.torn_down(Instant::now(), 0);
        }
    }
    fn accept(&mut self, fd: i32) -> ConnRef {
        self.engine.handle(Event::Accepted { fd }, &mut self.rec);
        self.engine.end_turn(&mut self.rec);
        match self.rec.take().as_slice() {
            [Op::Recv(c)] => *c,
            other => panic!("expected one recv, got {other:?}"),
        }
    }
    fn recv(&mut self, conn: ConnRef, data: &[u8]) {
        self.engine.handle(
            Event::Received {
                conn,
                data,
                queued: false,
            },
            &mut self.rec,
        );
    }
    fn turn(&mut self) -> Vec<Op> {
        self.engine.end_turn(&mut self.rec);
        self.rec.take()
    }
    /// Completes the oldest parked send with `n` bytes (or all of it).
    fn sent(&mut self, conn: ConnRef, n: Option<usize>) {
        let buf = self.rec.bufs.remove(0);
        let n = n.unwrap_or(buf.remaining().len());
        self.engine.handle(
            Event::Sent {
                conn,
                result: Ok(n),
                buf,
            },
            &mut self.rec,
        );
    }
    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

#[test]
fn output_of_one_turn_leaves_in_one_send() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"ab");
    t.recv(c, b"cd");
    assert_eq!(t.turn(), vec![Op::Send(c, b"abcd".to_vec())]);
}

#[test]
fn at_most_one_send_in_flight_and_the_rest_follows() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"one");
    assert_eq!(t.turn(), vec![Op::Send(c, b"one".to_vec())]);
    t.recv(c, b"two");
    t.recv(c, b"three");
    assert_eq!(t.turn(), vec![], "no second send while one is in flight");
    t.sent(c, None);
    assert_eq!(t.turn(), vec![Op::Send(c, b"twothree".to_vec())]);
}

#[test]
fn partial_send_resumes_where_it_stopped() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"0123456789");
    t.turn();
    t.sent(c, Some(4));
    assert_eq!(t.rec.take(), vec![Op::Send(c, b"456789".to_vec())]);
    t.sent(c, None);
    assert_eq!(t.turn(), vec![]);
    assert_eq!(t.engine.stats().bytes_out, 10);
}

#[test]
fn unconsumed_input_waits_in_pending_and_is_offered_again() {
    let mut t = setup(true, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"hel");
    assert_eq!(t.turn(), vec![]);
    t.recv(c, b"lo\nwor");
    assert_eq!(t.turn(), vec![Op::Send(c, b"hello\n".to_vec())]);
    assert_eq!(
        t.calls()[1..],
        ["data hel", "data hello\nwor", "data wor"],
        "after a partial consume the rest is offered again at once"
    );
    let conn = t.engine.conns.get(c.key as usize).unwrap();
    assert_eq!(conn.pending, b"wor");
}

#[test]
fn an_idle_connection_holds_no_buffers() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"ping");
    t.turn();
    t.sent(c, None);
    t.turn();
    let conn = t.engine.conns.get(c.key as usize).unwrap();
    assert_eq!((conn.out.capacity(), conn.pending.capacity()), (0, 0));
}

#[test]
fn back_pressure_stops_reading_until_output_drains() {
    let config = Config {
        max_unsent: 1000,
        ..Config::default()
    };
    let mut t = setup(false, 400, config);
    let c = t.accept(10);
    t.recv(c, b"xyz"); // 1200 bytes of output
    let ops = t.turn();
    assert_eq!(ops.len(), 2, "{ops:?}");
    // Paused as soon as the input made too much output, before the turn's send.
    assert_eq!(ops[0], Op::CancelRecv(c));
    assert!(matches!(ops[1], Op::Send(..)));
    assert_eq!(t.engine.stats().reads_paused, 1);
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::Cancelled,
        },
        &mut t.rec,
    );
    assert_eq!(t.rec.take(), vec![], "a paused connection is not re-armed");
    t.sent(c, Some(600)); // 600 unsent: still above half the limit
    assert_eq!(
        t.rec.take(),
        vec![Op::Send(c, b"xyz".repeat(400)[600..].to_vec())]
    );
    t.sent(c, None);
    assert_eq!(
        t.rec.take(),
        vec![Op::Recv(c)],
        "reading resumes once drained"
    );
}

#[test]
fn enobufs_rearms_and_is_counted() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::NoBuffers,
        },
        &mut t.rec,
    );
    assert_eq!(t.rec.take(), vec![Op::Recv(c)]);
    assert_eq!(t.engine.stats().recv_no_buffers, 1);
}

#[test]
fn a_reused_slot_ignores_a_stale_completion() {
    let mut t = setup(false, 1, Config::default());
    let old = t.accept(10);
    t.engine.handle(
        Event::RecvEnded {
            conn: old,
            why: RecvEnd::Eof,
        },
        &mut t.rec,
    );
    assert_eq!(t.turn(), vec![Op::Close(old)]);
    t.engine.handle(Event::Closed { conn: old }, &mut t.rec);
    let new = t.accept(11);
    assert_eq!(new.key, old.key, "the slot is reused");
    assert_ne!(new.generation, old.generation);
    t.recv(old, b"late bytes for the old connection");
    t.engine.handle(Event::Closed { conn: old }, &mut t.rec);
    assert_eq!(t.turn(), vec![]);
    assert_eq!(t.engine.stats().stale_completions, 2);
    assert_eq!(t.engine.live(), 1);
    assert!(
        !t.calls().iter().any(|c| c.contains("late")),
        "{:?}",
        t.calls()
    );
}

#[test]
fn reset_cancels_in_flight_send_and_frees_the_slot_only_after_it_completes() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"data");
    t.turn();
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::Error(libc::ECONNRESET),
        },
        &mut t.rec,
    );
    assert_eq!(
        t.rec.take(),
        vec![Op::CancelSend(c)],
        "no close while the send is in flight"
    );
    let buf = t.rec.bufs.remove(0);
    t.engine.handle(
        Event::Sent {
            conn: c,
            result: Err(libc::ECANCELED),
            buf,
        },
        &mut t.rec,
    );
    assert_eq!(t.rec.take(), vec![Op::Close(c)]);
    assert_eq!(
        t.engine.live(),
        1,
        "the slot lives until the close completes"
    );
    t.engine.handle(Event::Closed { conn: c }, &mut t.rec);
    assert_eq!(t.engine.live(), 0);
    assert_eq!(t.calls().last().unwrap(), "close Reset");
}

#[test]
fn peer_half_close_flushes_output_then_closes() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"last words");
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::Eof,
        },
        &mut t.rec,
    );
    assert_eq!(t.turn(), vec![Op::Send(c, b"last words".to_vec())]);
    t.sent(c, None);
    assert_eq!(t.turn(), vec![Op::Close(c)]);
    t.engine.handle(Event::Closed { conn: c }, &mut t.rec);
    assert_eq!(t.calls().last().unwrap(), "close PeerClosed");
}

#[test]
fn handler_close_flushes_then_sends_fin_then_lingers_until_eof() {
    let mut t = setup(true, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"bye\nquit\n");
    assert_eq!(t.turn(), vec![Op::Send(c, b"bye\nquit\n".to_vec())]);
    t.recv(c, b"more input is discarded\n");
    t.sent(c, None);
    assert_eq!(
        t.turn(),
        vec![Op::Shutdown(c)],
        "FIN once flushed; the receive stays armed"
    );
    t.recv(c, b"still discarded while lingering\n");
    assert_eq!(t.rec.take(), vec![]);
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::Eof,
        },
        &mut t.rec,
    );
    assert_eq!(
        t.rec.take(),
        vec![Op::Close(c)],
        "the peer's FIN ends the linger"
    );
    t.engine.handle(Event::Closed { conn: c }, &mut t.rec);
    assert_eq!(t.calls().last().unwrap(), "close Handler");
    assert!(!t.calls().iter().any(|c| c.contains("discarded")));
}

#[test]
fn linger_ends_at_its_deadline_when_the_peer_stays_silent() {
    let config = Config {
        linger: Duration::from_millis(50),
        ..Config::default()
    };
    let mut t = setup(true, 1, config);
    let start = Instant::now();
    t.engine.begin_turn(start, &mut t.rec);
    let c = t.accept(10);
    t.recv(c, b"quit\n");
    t.turn();
    t.sent(c, None);
    assert_eq!(t.turn(), vec![Op::Shutdown(c)]);
    assert_eq!(
        t.engine.next_deadline(),
        Some(start + Duration::from_millis(50))
    );
    t.engine
        .begin_turn(start + Duration::from_millis(50), &mut t.rec);
    assert_eq!(t.rec.take(), vec![Op::CancelRecv(c)]);
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::Cancelled,
        },
        &mut t.rec,
    );
    assert_eq!(t.rec.take(), vec![Op::Close(c)]);
}

#[test]
fn input_past_the_limit_closes_the_connection() {
    let config = Config {
        max_pending_input: 8,
        ..Config::default()
    };
    let mut t = setup(true, 1, config);
    let c = t.accept(10);
    t.recv(c, b"no newline in sight");
    assert_eq!(t.rec.take(), vec![Op::CancelRecv(c)]);
    assert_eq!(t.engine.stats().input_limit_closes, 1);
}

#[test]
fn held_input_past_the_limit_pauses_reading_instead_of_closing() {
    let config = Config {
        max_pending_input: 8,
        ..Config::default()
    };
    let start = Instant::now();
    let mut t = setup(true, 1, config);
    t.engine.begin_turn(start, &mut t.rec);
    let c = t.accept(10);
    t.recv(c, b"hold\n");
    t.recv(c, b"aaaa\nbbbb\ncccc\n"); // 15 bytes the handler cannot take yet
    assert_eq!(t.rec.take(), vec![Op::CancelRecv(c)], "reading stops");
    assert_eq!(
        t.engine.stats().input_limit_closes,
        0,
        "the connection stays"
    );
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::Cancelled,
        },
        &mut t.rec,
    );
    assert_eq!(
        t.turn(),
        vec![],
        "a connection holding full input is not re-armed"
    );
    // The timer releases the hold: the held input is served, and reading resumes.
    t.engine
        .begin_turn(start + Duration::from_millis(50), &mut t.rec);
    assert_eq!(
        t.turn(),
        vec![Op::Send(c, b"aaaa\nbbbb\ncccc\n".to_vec()), Op::Recv(c)]
    );
    // Without a hold, the limit closes as before.
    t.recv(c, b"no newline in sight");
    assert_eq!(t.engine.stats().input_limit_closes, 1);
}

#[test]
fn accept_failures_back_off_doubling_and_resume() {
    let config = Config {
        accept_backoff_min: Duration::from_millis(10),
        accept_backoff_max: Duration::from_millis(25),
        ..Config::default()
    };
    let mut t = setup(false, 1, config);
    let start = Instant::now();
    t.engine.begin_turn(start, &mut t.rec);
    let mut delays = Vec::new();
    let mut now = start;
    for _ in 0..4 {
        t.engine.handle(
            Event::AcceptEnded {
                errno: libc::EMFILE,
            },
            &mut t.rec,
        );
        assert_eq!(t.rec.take(), vec![], "no re-arm while out of descriptors");
        let at = t.engine.next_deadline().expect("a retry is scheduled");
        delays.push(at - now);
        t.engine
            .begin_turn(at - Duration::from_millis(1), &mut t.rec);
        assert_eq!(t.rec.take(), vec![], "not before the deadline");
        t.engine.begin_turn(at, &mut t.rec);
        assert_eq!(t.rec.take(), vec![Op::Accept]);
        now = at;
    }
    let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, [10, 20, 25, 25]);
    assert_eq!(t.engine.stats().accept_backoffs, 4);
    t.accept(10);
    t.engine.handle(
        Event::AcceptEnded {
            errno: libc::EMFILE,
        },
        &mut t.rec,
    );
    assert_eq!(
        t.engine.next_deadline().unwrap() - now,
        Duration::from_millis(10),
        "success resets the back-off"
    );
}

#[test]
fn transient_accept_errors_rearm_at_once() {
    let mut t = setup(false, 1, Config::default());
    t.engine.handle(
        Event::AcceptEnded {
            errno: libc::ECONNABORTED,
        },
        &mut t.rec,
    );
    assert_eq!(t.rec.take(), vec![Op::Accept]);
    assert_eq!(t.engine.stats().accept_errors, 1);
}

#[test]
fn sigterm_drains_in_order_and_serves_the_backlog() {
    let mut t = setup(false, 1, Config::default());
    let order = Rc::new(RefCell::new(Vec::new()));
    for name in ["first", "second"] {
        let order = order.clone();
        t.engine
            .worker
            .on_teardown(name, move || order.borrow_mut().push(name));
    }
    let busy = t.accept(10);
    let idle = t.accept(11);
    t.recv(busy, b"in flight");
    assert_eq!(t.turn(), vec![Op::Send(busy, b"in flight".to_vec())]);
    t.engine.begin_turn(Instant::now(), &mut t.rec); // a later turn

    t.engine.handle(
        Event::Signal {
            signo: libc::SIGTERM,
        },
        &mut t.rec,
    );
    assert_eq!(t.rec.take(), vec![Op::WakeWorkers, Op::CancelAccept]);
    assert!(t.engine.shared.draining());

    t.rec.backlog.push(12); // a client whose handshake completed before the signal
    t.engine.handle(
        Event::AcceptEnded {
            errno: libc::ECANCELED,
        },
        &mut t.rec,
    );
    let mut ops = t.rec.take();
    t.engine.end_turn(&mut t.rec); // idle now: looked at again after one kernel entry
    t.engine.begin_turn(Instant::now(), &mut t.rec);
    t.engine.end_turn(&mut t.rec); // still idle: closes
    ops.extend(t.rec.take());
    let backlog = match ops.as_slice() {
        [Op::CloseListener, Op::Recv(b), rest @ ..] => {
            assert!(
                rest.contains(&Op::Shutdown(idle)),
                "idle connections get FIN at once: {rest:?}"
            );
            assert!(
                !rest.contains(&Op::Shutdown(busy)),
                "a busy one finishes first: {rest:?}"
            );
            assert!(
                !rest.contains(&Op::Shutdown(*b)),
                "the backlog's first receive runs first: {rest:?}"
            );
            *b
        }
        other => panic!("{other:?}"),
    };
    t.engine.begin_turn(Instant::now(), &mut t.rec); // the next turn
    t.recv(backlog, b"request from the backlog");
    t.sent(busy, None);
    let ops = t.turn();
    assert_eq!(
        ops,
        vec![Op::Send(backlog, b"request from the backlog".to_vec())]
    );
    t.engine.begin_turn(Instant::now(), &mut t.rec);
    t.sent(backlog, None);
    assert_eq!(
        t.turn(),
        vec![Op::Shutdown(busy)],
        "idle for two turns: FIN"
    );
    t.engine.begin_turn(Instant::now(), &mut t.rec);
    assert_eq!(t.turn(), vec![Op::Shutdown(backlog)], "served, then FIN");
    for c in [busy, idle, backlog] {
        t.engine.handle(
            Event::RecvEnded {
                conn: c,
                why: RecvEnd::Eof,
            },
            &mut t.rec,
        );
    }
    assert!(
        order.borrow().is_empty(),
        "no teardown before the last close"
    );
    for c in [busy, idle, backlog] {
        t.engine.handle(Event::Closed { conn: c }, &mut t.rec);
    }
    t.run_teardowns();
    assert_eq!(
        *order.borrow(),
        ["second", "first"],
        "reverse order of registration"
    );
    assert!(t.engine.is_done());
    let report = t.engine.drain_report();
    // The backlog connection was still idle when the drain reached it, but its request
    // came a turn later and was served: drained, like the busy one; only `idle` closed
    // idle.
    assert_eq!(
        (report.drained, report.closed_idle, report.aborted),
        (2, 1, 0)
    );
}

#[test]
fn a_second_signal_aborts_what_is_left() {
    let mut t = setup(false, 1, Config::default());
    let c = t.accept(10);
    t.recv(c, b"x");
    t.turn();
    t.engine.handle(
        Event::Signal {
            signo: libc::SIGTERM,
        },
        &mut t.rec,
    );
    t.engine.handle(
        Event::AcceptEnded {
            errno: libc::ECANCELED,
        },
        &mut t.rec,
    );
    t.rec.take();
    t.engine.handle(
        Event::Signal {
            signo: libc::SIGINT,
        },
        &mut t.rec,
    );
    let ops = t.rec.take();
    assert!(
        ops.contains(&Op::CancelSend(c)) && ops.contains(&Op::CancelRecv(c)),
        "{ops:?}"
    );
    assert!(t.engine.shared.forced());
    let buf = t.rec.bufs.remove(0);
    t.engine.handle(
        Event::Sent {
            conn: c,
            result: Err(libc::ECANCELED),
            buf,
        },
        &mut t.rec,
    );
    t.engine.handle(
        Event::RecvEnded {
            conn: c,
            why: RecvEnd::Cancelled,
        },
        &mut t.rec,
    );
    assert_eq!(t.rec.take(), vec![Op::Close(c)]);
    t.engine.handle(Event::Closed { conn: c }, &mut t.rec);
    t.run_teardowns();
    assert!(t.engine.is_done());
    assert_eq!(t.engine.drain_report().aborted, 1);
}
