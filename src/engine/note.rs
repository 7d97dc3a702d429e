//! What the engine has to say: rare events (a drain step, an accept back-off, a handler
//! panic) it records instead of logging, so that it stays free of I/O. The worker loop
//! takes them after each turn and logs them ([`Note`]'s `Display` is the log line).

use std::fmt;
use std::io;
use std::time::Duration;

use crate::shared::Trigger;

/// A handler callback, as a note names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Callback {
    Open,
    Data,
    Timer,
    Drain,
    Close,
    Message,
    Undelivered,
}

impl Callback {
    fn as_str(self) -> &'static str {
        match self {
            Callback::Open => "on_open",
            Callback::Data => "on_data",
            Callback::Timer => "on_timer",
            Callback::Drain => "on_drain",
            Callback::Close => "on_close",
            Callback::Message => "on_message",
            Callback::Undelivered => "on_undelivered",
        }
    }
}

/// One event worth a log line. `Display` writes it without the `worker N: ` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// The first accept failure of a series (later ones only count).
    AcceptBackingOff { errno: i32 },
    /// Accepting works again after `backoffs` back-offs.
    AcceptRecovered { backoffs: u64 },
    /// This worker's drain began (the first signal, the shutdown handle, a failed
    /// worker): `open` connections, not ready for `delay` before the accept stops.
    DrainBegan {
        trigger: Trigger,
        open: usize,
        delay: Duration,
    },
    /// A second signal forced the drain.
    DrainForced { trigger: Trigger, live: u64 },
    /// Accepting the backlog stopped early on an error.
    BacklogStopped { errno: i32, lost: usize },
    /// Accepting the backlog ran out of descriptors: the listener stays open with its
    /// queue, taken as connections close.
    BacklogWaiting { errno: i32, open: usize },
    /// The listener is closed; `from_backlog` connections came from its queue.
    AcceptStopped { from_backlog: usize, open: usize },
    /// The grace period is over (or the drain was forced): connections cut.
    Cutting { count: usize },
    /// The worker's last connection closed during the drain.
    LastClosed {
        drained: u64,
        idle: u64,
        aborted: u64,
    },
    /// A handler callback panicked; the connection (if any) was closed.
    HandlerPanic { callback: Callback, message: String },
    /// A signal the server does not act on (SIGHUP, SIGUSR1, SIGUSR2) arrived.
    SignalIgnored { name: &'static str },
    /// The teardown began with this many outbound links to close.
    ClosingLinks { links: usize },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::AcceptBackingOff { errno } => write!(
                f,
                "accept failed ({}), backing off",
                io::Error::from_raw_os_error(*errno)
            ),
            Note::AcceptRecovered { backoffs } => {
                write!(f, "accepting again after {backoffs} back-offs")
            }
            Note::DrainBegan {
                trigger,
                open,
                delay,
            } => {
                match trigger {
                    Trigger::Sigterm | Trigger::Sigint | Trigger::Sigquit => {
                        write!(f, "{} received", trigger.as_str())?
                    }
                    Trigger::Handle => f.write_str("shutdown handle called")?,
                    Trigger::WorkerFailed => f.write_str("a worker failed")?,
                    Trigger::Upgrade => f.write_str("a new process took over the sockets")?,
                }
                write!(f, ", draining {open} connections")?;
                if !delay.is_zero() {
                    write!(f, " (not ready for {delay:?} before accept stops)")?;
                }
                Ok(())
            }
            Note::DrainForced { trigger, live } => write!(
                f,
                "second {}, closing {live} connections now",
                trigger.as_str()
            ),
            Note::BacklogStopped { errno: 0, lost } => write!(
                f,
                "backlog given up (drain forced): {lost} queued connections reset"
            ),
            Note::BacklogStopped { errno, lost } => write!(
                f,
                "backlog accept stopped early: {}; {lost} queued connections reset",
                io::Error::from_raw_os_error(*errno)
            ),
            Note::BacklogWaiting { errno, open } => write!(
                f,
                "backlog waits for descriptors ({}): telling the {open} open connections \
                 first, accepting as they close",
                io::Error::from_raw_os_error(*errno)
            ),
            Note::AcceptStopped { from_backlog, open } => write!(
                f,
                "accept stopped ({from_backlog} from the backlog), {open} connections open"
            ),
            Note::SignalIgnored { name } => write!(
                f,
                "{name} received and ignored (SIGTERM, SIGINT or SIGQUIT stop the server \
                 gracefully; for a new binary use the in-place upgrade)"
            ),
            Note::ClosingLinks { links } => write!(
                f,
                "teardown: closing {links} outbound links, last registered first"
            ),
            Note::Cutting { count } => write!(
                f,
                "cutting {count} connections (grace period over or forced)"
            ),
            Note::LastClosed {
                drained,
                idle,
                aborted,
            } => write!(
                f,
                "last connection closed ({drained} drained, {idle} idle, {aborted} aborted)"
            ),
            Note::HandlerPanic { callback, message } => write!(
                f,
                "handler panicked in {}: {message}; its connection is closed",
                callback.as_str()
            ),
        }
    }
}

impl Note {
    /// Whether the note is a step of the drain (logged under `gracering::drain`) rather
    /// than something of the worker's (`gracering::worker`).
    pub fn is_drain(&self) -> bool {
        match self {
            Note::DrainBegan { .. }
            | Note::DrainForced { .. }
            | Note::BacklogStopped { .. }
            | Note::BacklogWaiting { .. }
            | Note::AcceptStopped { .. }
            | Note::Cutting { .. }
            | Note::LastClosed { .. }
            | Note::ClosingLinks { .. } => true,
            Note::SignalIgnored { .. }
            | Note::AcceptBackingOff { .. }
            | Note::AcceptRecovered { .. }
            | Note::HandlerPanic { .. } => false,
        }
    }

    /// Whether the note is a warning (something failed) rather than information.
    pub fn is_warning(&self) -> bool {
        match self {
            Note::AcceptBackingOff { .. }
            | Note::BacklogStopped { .. }
            | Note::BacklogWaiting { .. }
            | Note::Cutting { .. }
            | Note::SignalIgnored { .. }
            | Note::HandlerPanic { .. } => true,
            Note::AcceptRecovered { .. }
            | Note::DrainBegan { .. }
            | Note::DrainForced { .. }
            | Note::AcceptStopped { .. }
            | Note::ClosingLinks { .. }
            | Note::LastClosed { .. } => false,
        }
    }
}

/// The text of a panic's payload (a `&str` or a `String`; anything else is unnamed).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}
