//! The engine's side of the mailbox: messages posted from other threads, handed to the
//! handler once per turn, to the worker or to the one connection they name (checked by
//! its serial, so a closed or reused slot never gets another connection's answer).

use super::conn::Closing;
use super::conn::NO_LINK;
use super::{Callback, Engine, after_handler, contain, feed_handler, guarded};
use crate::contract::Intents;
use crate::handler::CloseRequest;
use crate::handler::Handler;
use crate::mailbox::Envelope;

/// Messages handed to the handler in one turn at most, so that a flood of posts cannot
/// starve the worker's sockets; what is left waits for the next turn (which then does
/// not sleep).
const BATCH: usize = 1024;

impl<H: Handler> Engine<H> {
    /// Hands the messages waiting in the mailbox to the handler (up to a batch).
    /// Returns how many it handed.
    #[inline]
    pub fn deliver_messages(&mut self, q: &mut impl Intents) -> usize {
        self.inbox.set_awake();
        for n in 0..BATCH {
            let Some(envelope) = self.inbox.try_take() else {
                return n;
            };
            self.on_envelope(envelope, q);
        }
        BATCH
    }

    /// Before the worker sleeps: false when messages still wait (then it must not).
    pub fn may_sleep(&self) -> bool {
        self.inbox.may_sleep()
    }

    pub(super) fn on_envelope(
        &mut self,
        Envelope { to, msg }: Envelope<H::Message>,
        q: &mut impl Intents,
    ) {
        self.stats.messages += 1;
        let Some(to) = to else {
            if let Err(note) = guarded(Callback::Message, || self.handler.on_message(msg)) {
                self.stats.handler_panics += 1;
                self.notes.push(*note);
            }
            return;
        };
        let reason = self.close_reason();
        let worker = self.worker.index;
        let (draining, now) = (self.drain.draining(), self.linger.now);
        let c = self
            .conns
            .get_mut(to.key as usize)
            .filter(|c| c.serial == to.serial && c.closing == Closing::Open && c.link == NO_LINK);
        let Some(c) = c else {
            self.undelivered(msg);
            return;
        };
        let (mut conn, state) = c.view(worker, draining, now, &mut self.pool);
        let Some(state) = state.as_mut() else {
            self.undelivered(msg);
            return;
        };
        let handled = guarded(Callback::Message, || {
            self.handler.on_conn_message(state, &mut conn, to, msg)
        });
        let handled = match handled {
            Ok(()) if !c.pending.is_empty() && c.close_requested != CloseRequest::AfterFlush => {
                // Input that waited for this answer (pipelined requests) is offered again.
                feed_handler(
                    &mut self.handler,
                    c,
                    &mut self.pool,
                    (worker, draining, now),
                    &[],
                )
            }
            other => other,
        };
        if let Err(note) = handled {
            contain(
                c,
                *note,
                &mut self.stats,
                &mut self.notes,
                q,
                &mut self.linger,
            );
        }
        c.file_timer(&mut self.timers);
        after_handler(c, reason, &mut self.flush, q, &mut self.linger);
    }

    /// Hands a message that found no connection back to the handler (counted).
    fn undelivered(&mut self, msg: H::Message) {
        self.stats.messages_undelivered += 1;
        if let Err(note) = guarded(Callback::Undelivered, || self.handler.on_undelivered(msg)) {
            self.stats.handler_panics += 1;
            self.notes.push(*note);
        }
    }

    /// The worker is done: later posts fail with `Closed`, and every message still
    /// queued goes back to the handler.
    pub fn close_mailbox(&mut self) {
        self.inbox.close();
        while let Some(Envelope { msg, .. }) = self.inbox.try_take() {
            self.stats.messages += 1;
            self.undelivered(msg);
        }
    }
}
