//! The engine driven by arbitrary event sequences through the in-memory backend.
//!
//! Input: four configuration bytes (buffer size, discard limit and readiness delay;
//! unsent and pending-input limits; grace period; linger and send timeout), then a program of (op, argument) byte
//! pairs, some ops reading more bytes. The low 7 bits of an op pick the event: a peer
//! connects, sends, shuts down its write side, resets, stops reading, reads part of what
//! waits for it (a short send), resumes reading, holds its socket open after EOF; the
//! clock moves; a signal arrives (SIGTERM, SIGINT, SIGQUIT, or one that is ignored); a
//! stale completion arrives; a message is posted to the worker; from 14 on, a few loop
//! turns. Bit 7 runs the loop until it is at rest after the event. What the peers send
//! is the handler's program in turn (echo, close, close when idle, timers, big outputs,
//! partial consumption, mailbox answers).
//!
//! Checks: nothing panics (the in-memory kernel itself asserts that no slot is reused
//! while an operation of its earlier connection is in flight, and that no descriptor is
//! closed with an operation in flight); the loop always comes to rest (no spinning);
//! every connection opened is closed exactly once, and the engine's counters agree with
//! the handler's; after a final SIGTERM the drain ends within its readiness delay, grace
//! period and linger, with every peer's connection closed and the drain's figures
//! counting no more connections than there were peers.
#![no_main]

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use gracering::sim::{Peer, Sim};
use gracering::{Builder, CloseReason, Conn, ConnAddr, Handler};
use libfuzzer_sys::fuzz_target;

/// A handler whose behaviour the peers' bytes choose; its books are shared with the
/// target, which reads them at the end.
#[derive(Default, Clone)]
struct Chaos(Rc<RefCell<Books>>);

/// What the handler saw.
#[derive(Default)]
struct Books {
    next_id: u64,
    open: HashSet<u64>,
    opened: u64,
    closed: u64,
    /// Messages to the worker itself, seen.
    messages: u64,
    /// Where to post answers to (a connection's address with its tag), for `m`.
    addrs: Vec<ConnAddr>,
}

/// Per-connection state: an identity, and what to do when the drain or a timer comes.
struct State {
    id: u64,
    drain_mode: u8,
    ticks: u8,
}

impl Handler for Chaos {
    type State = State;
    type Message = u8;

    fn on_open(&mut self, conn: &mut Conn<'_>) -> State {
        let mut books = self.0.borrow_mut();
        books.next_id += 1;
        books.opened += 1;
        let id = books.next_id;
        books.open.insert(id);
        if id.is_multiple_of(3) {
            conn.write(b"hello\n");
        }
        State {
            id,
            drain_mode: (id % 4) as u8,
            ticks: 0,
        }
    }

    fn on_data(&mut self, state: &mut State, conn: &mut Conn<'_>, data: &[u8]) -> usize {
        let arg = data.get(1).copied().unwrap_or(0);
        match data[0] {
            b'c' => {
                conn.write(b"bye\n");
                conn.close();
                1
            }
            b'w' => {
                conn.close_when_idle();
                1
            }
            b't' => {
                conn.set_timer(Duration::from_millis(u64::from(arg) * 10 + 1));
                2.min(data.len())
            }
            b'T' => {
                conn.clear_timer();
                1
            }
            b'b' => {
                // A big output: over the unsent limit, so reading pauses.
                let len = (usize::from(arg) + 1) * 1024;
                let out = conn.output();
                out.resize(out.len() + len, b'x');
                2.min(data.len())
            }
            b'p' => 0, // nothing consumed: the input waits with the next bytes
            b'h' => data.len().div_ceil(2),
            b'm' => {
                // A message to this connection, answered at the next turn.
                let addr = conn.addr().with_tag(u64::from(arg));
                self.0.borrow_mut().addrs.push(addr);
                2.min(data.len())
            }
            b'd' => {
                state.drain_mode = arg % 4;
                2.min(data.len())
            }
            _ => {
                conn.write(data);
                data.len()
            }
        }
    }

    fn on_drain(&mut self, state: &mut State, conn: &mut Conn<'_>) {
        match state.drain_mode {
            0 => conn.close_when_idle(),
            1 => {
                conn.write(b"draining\n");
                conn.close();
            }
            2 => {} // keeps the connection: cut at the grace deadline
            _ => conn.set_timer(Duration::from_millis(50)),
        }
    }

    fn on_timer(&mut self, state: &mut State, conn: &mut Conn<'_>) {
        state.ticks = state.ticks.wrapping_add(1);
        conn.write(b"tick\n");
        match state.ticks % 4 {
            0 => conn.close(),
            1 => conn.set_timer(Duration::from_millis(30)),
            2 => conn.close_when_idle(),
            _ => {}
        }
    }

    fn on_message(&mut self, msg: u8) {
        self.0.borrow_mut().messages += u64::from(msg > 0);
    }

    fn on_conn_message(&mut self, _: &mut State, conn: &mut Conn<'_>, _: ConnAddr, msg: u8) {
        conn.write(&[msg]);
    }

    fn on_close(&mut self, state: State, _reason: CloseReason) {
        let mut books = self.0.borrow_mut();
        books.closed += 1;
        assert!(
            books.open.remove(&state.id),
            "connection {} closed twice",
            state.id
        );
    }
}

/// Reads the program's bytes.
struct Program<'a>(&'a [u8]);

impl Program<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// Runs until the loop is at rest; the sim gives up after 10,000 turns, which here
/// means the engine spins.
fn settle(sim: &mut Sim<Chaos>, books: &RefCell<Books>) {
    post_answers(sim, books);
    assert!(
        sim.run_until_idle() < 10_000,
        "the loop never comes to rest"
    );
}

/// Posts the answers the handler asked for (`m`) into the worker's mailbox.
fn post_answers(sim: &mut Sim<Chaos>, books: &RefCell<Books>) {
    let mailbox = sim.mailbox();
    let addrs = std::mem::take(&mut books.borrow_mut().addrs);
    for addr in addrs {
        let _ = mailbox.post_to(addr, b'!');
    }
}

fn pick(peers: &[Peer], b: u8) -> Option<Peer> {
    (!peers.is_empty()).then(|| peers[usize::from(b) % peers.len()])
}

fuzz_target!(|data: &[u8]| {
    let Some((&[size, limits, grace, linger], program)) = data.split_first_chunk::<4>() else {
        return;
    };
    let grace = Duration::from_millis(u64::from(grace) * 20);
    let send_timeout = [100, 500, 2000, 5000][usize::from(linger >> 6)];
    let linger = Duration::from_millis(u64::from(linger & 0x3f) * 20);
    let delay = Duration::from_millis(u64::from(size >> 5) * 50);
    let builder = Builder::new()
        .buffer_size(64 << (size & 7))
        .max_unsent(512 << (limits & 0xf))
        .max_pending_input(256 << (limits >> 4))
        .grace_period(grace)
        .linger(linger)
        .drain_delay(delay)
        .send_timeout(Duration::from_millis(send_timeout))
        .max_discard([64, 1024, 65536, 16 << 20][usize::from(size >> 3 & 3)]);
    let chaos = Chaos::default();
    let books = chaos.0.clone();
    let mut sim = Sim::with_config(chaos, &builder);
    let mut peers = Vec::new();
    let mut program = Program(program);
    while !program.0.is_empty() {
        let op = program.byte();
        let arg = program.byte();
        match op & 0x7f {
            0 | 1 if peers.len() < 32 => peers.push(sim.connect()),
            2 | 3 => {
                if let Some(p) = pick(&peers, arg) {
                    let len = usize::from(program.byte() % 64) + 1;
                    let bytes = program.bytes(len).to_vec();
                    sim.send(p, &bytes);
                }
            }
            4 => pick(&peers, arg)
                .into_iter()
                .for_each(|p| sim.shutdown_write(p)),
            5 => pick(&peers, arg).into_iter().for_each(|p| sim.reset(p)),
            6 => pick(&peers, arg)
                .into_iter()
                .for_each(|p| sim.stop_reading(p)),
            7 => pick(&peers, arg)
                .into_iter()
                .for_each(|p| sim.resume_reading(p)),
            8 => pick(&peers, arg).into_iter().for_each(|p| sim.hold_open(p)),
            9 => sim.advance(Duration::from_millis(u64::from(arg) * 10)),
            10 => sim.signal(match arg % 8 {
                0..=3 => libc::SIGTERM,
                4 => libc::SIGINT,
                5 => libc::SIGQUIT,
                6 => libc::SIGHUP,
                _ => libc::SIGUSR1,
            }),
            11 => {
                // A completion from the kernel for a connection closed since: ignored.
                if let Some(p) = pick(&peers, arg).filter(|&p| sim.is_closed(p)) {
                    sim.deliver_stale(p, b"late");
                }
            }
            12 => {
                let n = usize::from(program.byte()) * 64;
                pick(&peers, arg)
                    .into_iter()
                    .for_each(|p| sim.read_some(p, n))
            }
            13 => {
                let _ = sim.mailbox().post(arg);
            }
            _ => {
                post_answers(&mut sim, &books);
                for _ in 0..=(arg % 4) {
                    sim.turn();
                }
                continue;
            }
        }
        if op & 0x80 != 0 {
            settle(&mut sim, &books);
        }
    }
    settle(&mut sim, &books);

    // The end: peers that stopped reading stay stopped; the drain must end anyway, by
    // the grace deadline at the latest (then the linger, for connections closing).
    sim.signal(libc::SIGTERM);
    let bound = delay + grace + linger + Duration::from_secs(2);
    let step = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    while !sim.is_done() {
        assert!(
            waited <= bound,
            "the drain did not end within {bound:?} (live: {})",
            sim.live()
        );
        settle(&mut sim, &books);
        sim.advance(step);
        waited += step;
    }
    settle(&mut sim, &books);
    assert_eq!(sim.live(), 0, "connections left after the drain");
    let books = books.borrow();
    assert!(
        books.open.is_empty(),
        "connections never closed: {:?}",
        books.open
    );
    assert_eq!(books.opened, books.closed);
    let stats = sim.stats();
    assert_eq!(stats.accepted, books.opened, "accepted vs on_open");
    assert_eq!(stats.closed, books.closed, "closed vs on_close");
    assert_eq!(stats.handler_panics, 0);
    assert!(
        books.messages <= stats.messages,
        "messages seen vs delivered"
    );
    for &p in &peers {
        assert!(sim.is_closed(p), "a peer's connection was never closed");
    }
    let drain = sim.drain_report();
    let counted = drain.drained + drain.closed_idle + drain.aborted;
    // A forced drain also counts the connections it gave up on in the backlog as aborted.
    assert!(
        counted <= peers.len() as u64,
        "the drain counted {counted} connections of {} peers",
        peers.len()
    );
});
