//! Per-connection timers: a hashed timing wheel with lazy re-arming.
//!
//! A connection has at most one timer, identified by its slot reference. Setting it
//! again only moves the deadline stored in the connection; the wheel keeps at most one
//! entry per connection and, when that entry comes due, checks the connection's current
//! deadline: fire, re-file at the later deadline, or drop (cleared or closed). So a
//! keep-alive timer reset on every request costs a store, not a wheel operation.
//!
//! Resolution is one tick (`TICK`); a timer never fires early, and at most one tick late.

use std::time::{Duration, Instant};

use crate::contract::ConnRef;

/// The wheel's resolution.
pub(crate) const TICK: Duration = Duration::from_millis(4);
const SLOTS: usize = 1024;

/// The wheel: `SLOTS` buckets of one tick each; an entry further out than one turn of
/// the wheel waits in its bucket until its round comes.
#[derive(Debug)]
pub(crate) struct Wheel {
    origin: Instant,
    /// Every tick up to this one has been expired.
    done: u64,
    slots: Vec<Vec<(u64, ConnRef)>>,
    len: usize,
    /// The earliest tick of any entry (exact while `len > 0`).
    min_tick: u64,
}

impl Wheel {
    pub fn new(origin: Instant) -> Wheel {
        Wheel {
            origin,
            done: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            len: 0,
            min_tick: u64::MAX,
        }
    }

    /// The first tick at or after `at`.
    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        since.as_nanos().div_ceil(TICK.as_nanos()) as u64
    }

    /// Files an entry for `conn` due at `at` (rounded up to a tick).
    pub fn insert(&mut self, at: Instant, conn: ConnRef) {
        let tick = self.tick_of(at).max(self.done + 1);
        self.slots[(tick % SLOTS as u64) as usize].push((tick, conn));
        self.len += 1;
        self.min_tick = self.min_tick.min(tick);
    }

    /// The instant tick `tick` begins (ticks are counted in 64 bits: no wrap in any
    /// uptime).
    fn instant_of(&self, tick: u64) -> Instant {
        let nanos = u128::from(tick) * TICK.as_nanos();
        let since = Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        );
        self.origin + since
    }

    /// The earliest instant at which an entry is due, if any entry waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        (self.len > 0).then(|| self.instant_of(self.min_tick))
    }

    /// Moves the entries due by `now` into `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<ConnRef>) {
        let until =
            (now.saturating_duration_since(self.origin).as_nanos() / TICK.as_nanos()) as u64;
        if until <= self.done {
            return;
        }
        if self.len == 0 || self.min_tick > until {
            self.done = until;
            return;
        }
        let span = (until - self.done).min(SLOTS as u64);
        for tick in self.done + 1..=self.done + span {
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            let before = slot.len();
            slot.retain(|&(t, conn)| {
                let fire = t <= until;
                if fire {
                    due.push(conn);
                }
                !fire
            });
            self.len -= before - slot.len();
        }
        self.done = until;
        self.min_tick = self.earliest();
    }

    /// The earliest tick among the entries (`u64::MAX` when empty).
    fn earliest(&self) -> u64 {
        if self.len == 0 {
            return u64::MAX;
        }
        // Within one turn of the wheel, the first bucket holding an entry of its own
        // round is the answer; otherwise every entry is a round or more away.
        for tick in self.done + 1..=self.done + SLOTS as u64 {
            if self.slots[(tick % SLOTS as u64) as usize]
                .iter()
                .any(|&(t, _)| t == tick)
            {
                return tick;
            }
        }
        self.slots
            .iter()
            .flatten()
            .map(|&(t, _)| t)
            .min()
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: u32) -> ConnRef {
        ConnRef { key, generation: 1 }
    }

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.insert(t0 + Duration::from_millis(10), c(1));
        w.insert(t0 + Duration::from_millis(30), c(2));
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(9), &mut due);
        assert!(due.is_empty());
        let next = w.next_deadline().unwrap();
        assert!(
            next >= t0 + Duration::from_millis(10) && next < t0 + Duration::from_millis(10) + TICK
        );
        w.expire(next, &mut due);
        assert_eq!(due, [c(1)]);
        w.expire(t0 + Duration::from_millis(100), &mut due);
        assert_eq!(due, [c(1), c(2)]);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn entries_beyond_one_turn_wait_their_round() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let far = TICK * (SLOTS as u32 + 10);
        w.insert(t0 + far, c(7));
        let mut due = Vec::new();
        w.expire(t0 + TICK * 20, &mut due);
        assert!(due.is_empty(), "same bucket, later round");
        w.expire(t0 + far, &mut due);
        assert_eq!(due, [c(7)]);
    }

    #[test]
    fn deadlines_after_2_pow_32_ticks_are_exact() {
        // 2^32 ticks of 4 ms is about 199 days of uptime: a 32-bit tick count would wrap
        // there and report a deadline 199 days early (a spinning loop).
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let mut due = Vec::new();
        let later = t0 + TICK * u32::MAX + Duration::from_secs(3600);
        w.expire(later, &mut due);
        let at = later + Duration::from_millis(10);
        w.insert(at, c(9));
        let next = w.next_deadline().unwrap();
        assert!(next >= at && next < at + TICK, "{:?}", next - t0);
        w.expire(at - Duration::from_millis(1), &mut due);
        assert!(due.is_empty(), "not before its deadline");
        w.expire(next, &mut due);
        assert_eq!(due, [c(9)]);
    }

    #[test]
    fn a_deadline_in_the_past_fires_at_the_next_expiry() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(50), &mut due);
        w.insert(t0, c(3));
        w.expire(t0 + Duration::from_millis(55), &mut due);
        assert_eq!(due, [c(3)]);
    }
}
