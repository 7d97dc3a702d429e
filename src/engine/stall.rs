//! Send timeouts: a connection whose output makes no progress for the send timeout
//! (its peer stopped reading) is closed and counted, instead of holding its slot and up
//! to `max_unsent` bytes forever.
//!
//! One fixed duration, so a queue in the order of the deadlines serves every
//! connection: an entry is pushed when a send starts from nothing unsent, and when it
//! comes due the connection is checked: still stuck since its last progress for the
//! whole timeout (closed), moving (pushed again for its last progress plus the timeout),
//! or done (dropped). O(1) per send, no timer per write.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::contract::ConnRef;

/// The worker's connections with output in flight, in the order their check comes due.
#[derive(Debug)]
pub(crate) struct Stalls {
    pub time: Duration,
    queue: VecDeque<(Instant, ConnRef)>,
}

impl Stalls {
    pub fn new(time: Duration) -> Stalls {
        Stalls {
            time,
            queue: VecDeque::new(),
        }
    }

    /// Checks `conn` at `since + time` (or after the last entry, to keep the order: a
    /// check that comes late only delays a close, never hastens one).
    pub fn watch(&mut self, conn: ConnRef, since: Instant) {
        let mut at = crate::clock::after(since, self.time);
        if let Some(&(last, _)) = self.queue.back() {
            at = at.max(last);
        }
        self.queue.push_back((at, conn));
    }

    /// The connection whose check is due by `now`, if any.
    pub fn expired(&mut self, now: Instant) -> Option<ConnRef> {
        match self.queue.front() {
            Some(&(at, conn)) if at <= now => {
                self.queue.pop_front();
                Some(conn)
            }
            _ => None,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|&(at, _)| at)
    }
}
