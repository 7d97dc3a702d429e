//! The in-memory backend: handler logic and engine bookkeeping without a kernel.

use gracering::sim::Sim;
use gracering::{CloseReason, Conn, Handler};

struct Echo {
    closes: Vec<CloseReason>,
    seen: Vec<Vec<u8>>,
}

impl Handler for Echo {
    type State = ();
    type Message = ();
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        self.seen.push(data.to_vec());
        conn.write(data);
        data.len()
    }
    fn on_close(&mut self, _: (), reason: CloseReason) {
        self.closes.push(reason);
    }
}

fn echo() -> Echo {
    Echo {
        closes: Vec::new(),
        seen: Vec::new(),
    }
}

#[test]
fn a_reused_slot_ignores_a_stale_completion() {
    let mut sim = Sim::new(echo());
    let old = sim.connect();
    sim.send(old, b"first");
    sim.shutdown_write(old);
    sim.run_until_idle();
    assert_eq!(sim.take_received(old), b"first");
    assert!(sim.is_closed(old));

    let new = sim.connect();
    sim.run_until_idle();
    assert_eq!(sim.live(), 1);
    sim.deliver_stale(old, b"late completion for the closed connection");
    sim.send(new, b"second");
    sim.run_until_idle();
    assert_eq!(sim.take_received(new), b"second");
    assert_eq!(sim.stats().stale_completions, 1);
    assert_eq!(sim.stats().accepted, 2);
}

#[test]
fn large_input_arrives_in_buffer_sized_chunks_and_echoes_whole() {
    let mut sim = Sim::new(echo());
    let peer = sim.connect();
    let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    sim.send(peer, &payload);
    sim.run_until_idle();
    assert_eq!(sim.take_received(peer), payload);
}

#[test]
fn reset_closes_with_reason_reset() {
    let mut sim = Sim::new(echo());
    let peer = sim.connect();
    sim.run_until_idle();
    sim.reset(peer);
    sim.run_until_idle();
    assert!(sim.is_closed(peer));
    assert_eq!(sim.live(), 0);
    assert_eq!(sim.stats().closed, 1);
}

/// Closes a connection that stays silent for 100 ms.
struct Idle;

impl Handler for Idle {
    type State = ();
    type Message = ();
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.set_timer(std::time::Duration::from_millis(100));
    }
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.set_timer(std::time::Duration::from_millis(100)); // reset on activity
        data.len()
    }
    fn on_timer(&mut self, _: &mut (), conn: &mut Conn<'_>) {
        conn.write(b"timeout\n");
        conn.close();
    }
}

#[test]
fn timers_fire_after_their_deadline_and_reset_on_activity() {
    use std::time::Duration;
    let mut sim = Sim::new(Idle);
    let peer = sim.connect();
    sim.run_until_idle();
    sim.advance(Duration::from_millis(90));
    sim.send(peer, b"still here");
    sim.run_until_idle();
    sim.advance(Duration::from_millis(90));
    sim.run_until_idle();
    assert!(
        sim.take_received(peer).is_empty(),
        "reset by the data at 90 ms: not due yet"
    );
    sim.advance(Duration::from_millis(20));
    sim.run_until_idle();
    assert_eq!(sim.take_received(peer), b"timeout\n");
    assert!(sim.is_closed(peer));
}

/// Durations never panic: a handler's timer of `Duration::MAX`, and grace and readiness
/// delays of `Duration::MAX`, saturate (before: `Instant + Duration` overflowed, a
/// panic in the handler or in the drain itself).
#[test]
fn huge_durations_saturate_instead_of_panicking() {
    struct Forever;
    impl gracering::Handler for Forever {
        type State = ();
        type Message = ();
        fn on_open(&mut self, conn: &mut gracering::Conn<'_>) {
            conn.set_timer(std::time::Duration::MAX);
        }
        fn on_data(&mut self, _: &mut (), conn: &mut gracering::Conn<'_>, data: &[u8]) -> usize {
            conn.set_timer(std::time::Duration::MAX);
            conn.write(data);
            data.len()
        }
    }
    let builder = gracering::Builder::new()
        .grace_period(std::time::Duration::MAX)
        .drain_delay(std::time::Duration::from_secs(3600 * 24 * 365 * 1000));
    let mut sim = gracering::sim::Sim::with_config(Forever, &builder);
    let peer = sim.connect();
    sim.send(peer, b"ping");
    sim.run_until_idle();
    assert_eq!(sim.take_received(peer), b"ping");
    assert_eq!(sim.stats().handler_panics, 0);
    sim.signal(libc::SIGTERM);
    sim.run_until_idle();
    assert!(
        !sim.is_done(),
        "the (saturated) readiness delay is still running"
    );
    assert_eq!(sim.stats().handler_panics, 0);
}
