//! Everything that touches the kernel: the two backends that implement the worker
//! loop's [`Driver`](crate::contract::Driver) contract (io_uring in `uring/`, epoll in
//! `epoll.rs`), and the few syscalls the rest of the crate needs (signals, CPU pinning,
//! eventfds, socket shutdowns). Every `unsafe` block of the crate lives under this
//! module, and every libc call goes through [`syscall!`](syscall::syscall).
//!
//! A backend only translates: kernel completions or readiness into
//! [`Event`](crate::contract::Event)s, [`Intents`](crate::contract::Intents) into
//! submissions or syscalls. It runs no loop of its own and calls no handler code.

use std::{fmt, io};

pub(crate) mod activation;
pub(crate) mod cpu;
pub(crate) mod epoll;
pub(crate) mod eventfd;
pub(crate) mod fds;
pub(crate) mod handoff;
pub(crate) mod signal;
pub(crate) mod socket;
pub(crate) mod syscall;
pub(crate) mod token;
pub(crate) mod uring;

/// A worker that failed lets go of its sockets at once: new handshakes are refused and
/// the listener closed (the other workers' listeners take new connections), and every
/// connection descriptor is closed so its peer sees the end now, not after the release.
/// Operations still in flight hold their own reference to the socket: they end (or are
/// cancelled) without touching a reused descriptor number.
pub(crate) fn abort_sockets(listener: &mut Option<socket::Listener>, fds: &mut fds::OpenFds) {
    if let Some(listener) = listener.take() {
        socket::refuse_new_handshakes(&listener);
    }
    fds.close_all();
}

/// Which kernel interface the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring when the kernel offers what the engine needs, epoll otherwise (the
    /// reason is logged: a warning at bind, and the start line). The `GRACERING_BACKEND` environment variable
    /// (`uring`, `epoll`, `auto`) overrides this default.
    #[default]
    Auto,
    /// io_uring; starting fails with a clear error where it is unavailable.
    Uring,
    /// Edge-triggered epoll readiness, on any Linux.
    Epoll,
}

impl Backend {
    /// The backend's name as the examples print it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }

    /// The backend `GRACERING_BACKEND` asks for, if it is set.
    pub(crate) fn from_env() -> io::Result<Option<Backend>> {
        match std::env::var("GRACERING_BACKEND").as_deref() {
            Err(_) | Ok("") => Ok(None),
            Ok("auto") => Ok(Some(Backend::Auto)),
            Ok("uring" | "io_uring") => Ok(Some(Backend::Uring)),
            Ok("epoll") => Ok(Some(Backend::Epoll)),
            Ok(other) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("GRACERING_BACKEND={other}: expected uring, epoll or auto"),
            )),
        }
    }

    /// Resolves `Auto` (and the environment) to the backend that will run, with what
    /// the start line says of the kernel: io_uring's features, or why epoll runs.
    pub(crate) fn resolve(self) -> io::Result<(Backend, String)> {
        let release = uring::kernel_release;
        let (wanted, asked_by) = match self {
            Backend::Auto => match Backend::from_env()? {
                Some(b) => (b, "GRACERING_BACKEND"),
                None => (Backend::Auto, ""),
            },
            explicit => (explicit, "the builder"),
        };
        match wanted {
            Backend::Epoll => Ok((
                Backend::Epoll,
                format!(
                    "Linux {}: io_uring not used ({asked_by} asked for epoll)",
                    release()
                ),
            )),
            Backend::Uring => match uring::build_ring(8) {
                Ok((_, features)) => Ok((Backend::Uring, features.to_string())),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("io_uring backend unavailable: {e}"),
                )),
            },
            Backend::Auto => match uring::build_ring(8) {
                Ok((_, features)) => Ok((Backend::Uring, features.to_string())),
                Err(e) => {
                    log::warn!("io_uring unavailable ({e}); using the epoll backend");
                    let why = format!("Linux {}: io_uring unavailable ({e})", release());
                    Ok((Backend::Epoll, why))
                }
            },
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
