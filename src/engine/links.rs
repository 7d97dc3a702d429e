//! The engine's side of outbound links ([`crate::outbound`]): connecting and
//! reconnecting, the link callbacks, the requests made through [`Local`] handles, and
//! closing links in the teardown.
//!
//! A link's socket is a [`Connection`] in the same slab as the accepted ones (one key
//! space for the backends, the same receive, send, back-pressure, timer and close
//! machinery), marked with the link's key; the link itself (its client, address,
//! back-off) lives in `Engine::links`, indexed like the handles' table.
//!
//! ```text
//!   connect ──▶ socket now, connect queued, connect deadline on the socket's timer
//!   Connected(Ok) ──▶ Up: receive armed, on_connect         (back-off reset)
//!   Connected(Err) / timer ──▶ close now, reason Refused / Unreachable / TimedOut
//!   Closed ──▶ on_down(reason, retry): reconnect at now + back-off (doubling, capped),
//!              or gone (closed for good, in the teardown, or a once-only link)
//! ```

use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conn::{Closing, Connection};
use super::{Callback, Engine, after_handler, contain, feed, guarded, queue_flush};
use crate::contract::{ConnRef, GEN_MASK, Intents};
use crate::handler::{CloseReason, Conn, Handler};
use crate::mailbox::Envelope;
use crate::outbound::{Connect, ConnectOptions, Link, LinkId, LinkStatus, Local, Outbound};

/// How many times one end of turn takes the handles' requests (posts answered there may
/// make more requests); what is left waits for the next turn, which then does not sleep.
const LOCAL_ROUNDS: usize = 4;

/// After a link callback (`$outcome`, its result): a panic closes the link's socket
/// (the link then reconnects as after any failure), the timer it set is filed, its
/// output queued and a close it asked for honoured. A macro, so that the engine's
/// fields are borrowed apart from the socket and the link the callback had.
macro_rules! settle {
    ($engine:ident, $c:ident, $outcome:expr, $q:ident, $reason:expr) => {{
        if let Err(note) = $outcome {
            contain(
                $c,
                *note,
                &mut $engine.stats,
                &mut $engine.notes,
                $q,
                &mut $engine.linger,
            );
        }
        $c.file_timer(&mut $engine.timers);
        after_handler($c, $reason, &mut $engine.flush, $q, &mut $engine.linger);
    }};
}

/// One outbound link as the engine keeps it.
pub(super) struct LinkSlot<M> {
    pub id: LinkId,
    pub client: Box<dyn Outbound<M>>,
    to: SocketAddr,
    options: ConnectOptions,
    /// The current socket, if one is open (or connecting).
    pub sock: Option<ConnRef>,
    /// When to connect again (the link is down).
    pub retry_at: Option<Instant>,
    backoff: Option<Duration>,
    /// When the current socket connected.
    connected_at: Option<Instant>,
    /// Its place in the order of registration.
    pub seq: u64,
    /// Closing for good: no reconnect.
    pub for_good: bool,
}

/// The link's callbacks' view of its socket: a [`Link`] around the socket's [`Conn`].
fn link_view<'a, M>(conn: Conn<'a>, id: LinkId, local: &'a Local<M>) -> Link<'a, M> {
    Link { conn, id, local }
}

/// The close reason of a failed connect.
pub(super) fn connect_reason(errno: i32) -> CloseReason {
    match errno {
        libc::ECONNREFUSED => CloseReason::Refused,
        libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN | libc::EHOSTDOWN => {
            CloseReason::Unreachable
        }
        libc::ETIMEDOUT => CloseReason::TimedOut,
        libc::ECONNRESET | libc::EPIPE => CloseReason::Reset,
        _ => CloseReason::Error(errno),
    }
}

impl<H: Handler> Engine<H> {
    /// Takes what the [`Local`] handles asked since the last look: connects, writes
    /// (moved into the links' output, flushed by this end of turn), closes, posts.
    pub(super) fn take_local(&mut self, q: &mut impl Intents) {
        for _ in 0..LOCAL_ROUNDS {
            if !self.local.asked() {
                return;
            }
            let Engine {
                local,
                links,
                conns,
                pool,
                flush,
                ..
            } = self;
            let (connects, closes, posts) = local.take(|r| {
                for key in r.written.drain(..) {
                    let Some(meta) = r.links.get_mut(key as usize) else {
                        continue;
                    };
                    let sock = links
                        .get(key as usize)
                        .and_then(Option::as_ref)
                        .filter(|l| l.id.serial == meta.serial)
                        .and_then(|l| l.sock);
                    let c = sock.and_then(|s| {
                        conns
                            .get_mut(s.key as usize)
                            .filter(|c| c.generation == s.generation)
                    });
                    match c {
                        Some(c) if c.closing == Closing::Open && !c.connecting => {
                            if c.out.is_empty() {
                                // The staged buffer becomes the output (no copy); the
                                // handle gets a pooled one for the next writes.
                                mem::swap(&mut c.out, &mut meta.staged);
                                if meta.staged.capacity() == 0 {
                                    meta.staged = pool.take();
                                }
                            } else {
                                c.out.extend_from_slice(&meta.staged);
                                meta.staged.clear();
                            }
                            queue_flush(c, flush);
                        }
                        _ => meta.staged.clear(),
                    }
                }
                (
                    mem::take(&mut r.connects),
                    mem::take(&mut r.closes),
                    mem::take(&mut r.posts),
                )
            });
            for connect in connects {
                self.register_link(connect, q);
            }
            for id in closes {
                self.close_link(id, false, q);
            }
            for (to, msg) in posts {
                self.on_envelope(Envelope { to: Some(to), msg }, q);
            }
        }
    }

    /// Whether the handles asked for something not taken yet (the worker must not
    /// sleep then).
    pub(super) fn local_pending(&self) -> bool {
        self.local.asked()
    }

    fn register_link(&mut self, c: Connect<H::Message>, q: &mut impl Intents) {
        let key = c.id.key as usize;
        if self.links.len() <= key {
            self.links.resize_with(key + 1, || None);
        }
        self.links[key] = Some(LinkSlot {
            id: c.id,
            client: c.client,
            to: c.to,
            options: c.options,
            sock: None,
            retry_at: None,
            backoff: None,
            connected_at: None,
            seq: c.seq,
            for_good: false,
        });
        if self.drain.tearing_down() {
            // Too late: the worker is closing its links.
            self.close_link(c.id, true, q);
            return;
        }
        self.start_connect(key, q);
    }

    /// Opens the link's socket and queues its connect.
    fn start_connect(&mut self, key: usize, q: &mut impl Intents) {
        let now = self.linger.now;
        let Some(slot) = self.links.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        slot.retry_at = None;
        self.stats.outbound_connects += 1;
        let fd = match q.open_socket_now(slot.to.is_ipv6()) {
            Ok(fd) => fd,
            Err(errno) => {
                self.stats.outbound_failed += 1;
                self.link_down(key, connect_reason(errno), q);
                return;
            }
        };
        self.next_generation = (self.next_generation + 1) & GEN_MASK;
        let entry = self.conns.vacant_entry();
        let conn_key = entry.key() as u32;
        let c = entry.insert(Connection::new(
            fd,
            (conn_key, self.next_generation, 0),
            self.turn,
            now,
        ));
        c.link = key as u32;
        c.connecting = true;
        c.timer_at = Some(crate::clock::after(now, slot.options.timeout));
        c.file_timer(&mut self.timers);
        slot.sock = Some(c.conn_ref());
        self.local.set_status(slot.id, LinkStatus::Connecting);
        q.connect(c.conn_ref(), fd, slot.to);
    }

    /// A link's connect finished.
    pub(super) fn on_connected(
        &mut self,
        conn: ConnRef,
        result: Result<(), i32>,
        q: &mut impl Intents,
    ) {
        let Some(c) = super::lookup(&mut self.conns, &mut self.stats, conn) else {
            return;
        };
        c.connecting = false;
        if c.closing != Closing::Open {
            c.advance_close(q, &mut self.linger); // timed out or closed meanwhile
            return;
        }
        if let Err(errno) = result {
            self.stats.outbound_failed += 1;
            c.begin_close(connect_reason(errno), false, q, &mut self.linger);
            return;
        }
        self.stats.outbound_connected += 1;
        c.up = true;
        c.timer_at = None;
        c.arm_recv(q);
        let Some(slot) = self.links.get_mut(c.link as usize).and_then(Option::as_mut) else {
            return;
        };
        slot.connected_at = Some(self.linger.now);
        self.local.set_status(slot.id, LinkStatus::Up);
        let draining = self.drain.draining();
        let (conn, _) = c.view(self.worker.index, draining, self.linger.now, &mut self.pool);
        let (id, local) = (slot.id, &self.local);
        let client = &mut slot.client;
        let opened = guarded(Callback::Open, || {
            client.on_connect(&mut link_view(conn, id, local))
        });
        settle!(self, c, opened, q, CloseReason::Handler);
    }

    /// Bytes arrived on a link's socket.
    pub(super) fn link_received(&mut self, key: u32, data: &[u8], q: &mut impl Intents) {
        self.stats.outbound_bytes_in += data.len() as u64;
        let (worker, draining, now) = (self.worker.index, self.drain.draining(), self.linger.now);
        let c = &mut self.conns[key as usize];
        if c.closing != Closing::Open
            || c.close_requested == crate::handler::CloseRequest::AfterFlush
        {
            return; // closing: read off so that the close does not reset
        }
        let Some(slot) = self.links.get_mut(c.link as usize).and_then(Option::as_mut) else {
            return;
        };
        let (id, local, client) = (slot.id, &self.local, &mut slot.client);
        let fed = feed(
            c,
            &mut self.pool,
            (worker, draining, now),
            data,
            &mut |conn, _, rest| {
                guarded(Callback::Data, || {
                    client.on_data(&mut link_view(conn, id, local), rest)
                })
            },
        );
        if fed.is_ok() && c.pending.len() > self.limits.max_pending_input {
            self.stats.input_limit_closes += 1;
            c.begin_close(CloseReason::InputLimit, false, q, &mut self.linger);
        }
        settle!(self, c, fed, q, CloseReason::Handler);
    }

    /// A link socket's timer came due: its connect timed out, or its client's timer.
    pub(super) fn link_timer(&mut self, key: u32, q: &mut impl Intents) {
        let (worker, draining, now) = (self.worker.index, self.drain.draining(), self.linger.now);
        let c = &mut self.conns[key as usize];
        if c.connecting {
            self.stats.outbound_failed += 1;
            c.begin_close(CloseReason::TimedOut, false, q, &mut self.linger);
            return;
        }
        let Some(slot) = self.links.get_mut(c.link as usize).and_then(Option::as_mut) else {
            return;
        };
        let (conn, _) = c.view(worker, draining, now, &mut self.pool);
        let (id, local, client) = (slot.id, &self.local, &mut slot.client);
        let fired = guarded(Callback::Timer, || {
            client.on_timer(&mut link_view(conn, id, local))
        });
        settle!(self, c, fired, q, CloseReason::Handler);
    }

    /// A link's socket is closed (its slot is already out of the slab).
    pub(super) fn link_closed(
        &mut self,
        c: Connection<H::State>,
        reason: CloseReason,
        q: &mut impl Intents,
    ) {
        if c.up {
            self.stats.outbound_closed += 1;
        }
        self.pool.put(c.out);
        self.pool.put(c.pending);
        let key = c.link as usize;
        if let Some(slot) = self.links.get_mut(key).and_then(Option::as_mut) {
            slot.sock = None;
        }
        self.link_down(key, reason, q);
    }

    /// The link has no socket any more: reconnect later, or it is gone.
    fn link_down(&mut self, key: usize, reason: CloseReason, q: &mut impl Intents) {
        let now = self.linger.now;
        let tearing_down = self.drain.tearing_down();
        let Some(slot) = self.links.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        let for_good =
            slot.for_good || tearing_down || self.local.status(slot.id) == LinkStatus::Closed;
        let retry = match slot.options.reconnect {
            Some((min, max)) if !for_good => {
                // The back-off starts over only after a connection that lasted: a peer
                // that accepts and drops at once keeps doubling it.
                let up_for = slot
                    .connected_at
                    .take()
                    .map(|t| now.saturating_duration_since(t));
                if up_for.is_some_and(|d| d >= max) {
                    slot.backoff = None;
                }
                let delay = match slot.backoff {
                    None => min,
                    Some(d) => (d * 2).min(max),
                };
                slot.backoff = Some(delay);
                slot.retry_at = Some(crate::clock::after(now, delay));
                self.local.set_status(slot.id, LinkStatus::Down);
                Some(delay)
            }
            _ => None,
        };
        let id = slot.id;
        if retry.is_none() {
            self.local.set_status(id, LinkStatus::Closed);
        }
        let local = &self.local;
        let client = &mut slot.client;
        if let Err(note) = guarded(Callback::Close, || client.on_down(local, reason, retry)) {
            self.stats.handler_panics += 1;
            self.notes.push(*note);
        }
        if retry.is_none() {
            self.links[key] = None;
            self.local.forget(id);
            self.advance_teardown(q);
        }
    }

    /// Connects the links whose back-off is over.
    pub(super) fn retry_links(&mut self, now: Instant, q: &mut impl Intents) {
        for key in 0..self.links.len() {
            let due = self.links[key]
                .as_ref()
                .is_some_and(|l| l.retry_at.is_some_and(|at| at <= now));
            if due {
                self.start_connect(key, q);
            }
        }
    }

    /// The earliest reconnect due.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.links.iter().flatten().filter_map(|l| l.retry_at).min()
    }

    /// Closes a link for good: `goodbye` lets its client write one first
    /// ([`Outbound::on_drain`]); otherwise it closes after its output is flushed (or at
    /// once while connecting). A link with no socket is gone at once.
    pub(super) fn close_link(&mut self, id: LinkId, goodbye: bool, q: &mut impl Intents) {
        let key = id.key as usize;
        let Some(slot) = self
            .links
            .get_mut(key)
            .and_then(Option::as_mut)
            .filter(|l| l.id == id)
        else {
            return;
        };
        slot.for_good = true;
        slot.retry_at = None;
        self.local.set_status(id, LinkStatus::Closed);
        let reason = if self.drain.draining() {
            CloseReason::Shutdown
        } else {
            CloseReason::Handler
        };
        let c = slot.sock.and_then(|s| {
            self.conns
                .get_mut(s.key as usize)
                .filter(|c| c.generation == s.generation)
        });
        let Some(c) = c else {
            self.link_down(key, reason, q);
            return;
        };
        if c.connecting {
            c.begin_close(reason, false, q, &mut self.linger);
            return;
        }
        if goodbye && c.closing == Closing::Open {
            let (conn, _) = c.view(self.worker.index, true, self.linger.now, &mut self.pool);
            let (local, client) = (&self.local, &mut slot.client);
            let said = guarded(Callback::Drain, || {
                client.on_drain(&mut link_view(conn, id, local))
            });
            settle!(self, c, said, q, reason);
        } else {
            c.close_requested = crate::handler::CloseRequest::AfterFlush;
            after_handler(c, reason, &mut self.flush, q, &mut self.linger);
        }
    }

    /// Closes every link socket at once (the drain was forced in the teardown).
    pub(super) fn cut_links(&mut self, q: &mut impl Intents) {
        let ids: Vec<LinkId> = self.links.iter().flatten().map(|l| l.id).collect();
        for id in ids {
            let key = id.key as usize;
            let Some(slot) = self.links[key].as_mut() else {
                continue;
            };
            slot.for_good = true;
            slot.retry_at = None;
            self.local.set_status(id, LinkStatus::Closed);
            let sock = slot.sock;
            match sock.and_then(|s| {
                self.conns
                    .get_mut(s.key as usize)
                    .filter(|c| c.generation == s.generation)
            }) {
                Some(c) => {
                    if !matches!(c.closing, Closing::Submitted(_)) {
                        self.stats.outbound_cut += 1;
                        c.aborted = true;
                        c.begin_close(CloseReason::Shutdown, false, q, &mut self.linger);
                    }
                }
                None => self.link_down(key, CloseReason::Shutdown, q),
            }
        }
    }

    /// The worker failed: every link is told it is gone (its socket was closed by the
    /// backend).
    pub(super) fn abandon_links(&mut self) {
        for key in 0..self.links.len() {
            let Some(mut slot) = self.links[key].take() else {
                continue;
            };
            self.local.set_status(slot.id, LinkStatus::Closed);
            self.local.forget(slot.id);
            let (local, reason) = (&self.local, CloseReason::Error(libc::EIO));
            let client = &mut slot.client;
            if let Err(note) = guarded(Callback::Close, || client.on_down(local, reason, None)) {
                self.stats.handler_panics += 1;
                self.notes.push(*note);
            }
        }
    }

    /// How many links are registered (for the notes).
    pub(super) fn link_count(&self) -> usize {
        self.links.iter().flatten().count()
    }
}
