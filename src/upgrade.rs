//! In-place upgrade: a new process takes over the very listening sockets of the running
//! one (passed over a Unix socket with SCM_RIGHTS, as Pingora, Envoy and HAProxy do),
//! starts serving on them, and only then tells the old one to drain.
//!
//! ```text
//!  old (serving, offers at PATH)            new (--upgrade-from PATH)
//!    upgrade thread: accept on PATH  ◀────── connect
//!    send "gracering-listeners" + fds ─────▶ the same sockets, same accept queues
//!                                            workers start, accept armed on every one
//!    "serving" ◀──────────────────────────── confirm
//!    mark the sockets held by others,        bind PATH anew (offers to its successor)
//!    begin the drain (trigger "upgrade")
//!    drain: cancel the accept, no SYN filter, no backlog taken (the queue is the new
//!    process's now), close only its descriptors; in-flight requests finish; exit 0
//! ```
//!
//! Closing a SO_REUSEPORT listener resets what waits in its queue; here nothing is
//! closed that the new process does not also hold, so no queued client is reset and no
//! connect is refused. If the new process never says "serving" (it failed to start, its
//! connection closed or timed out), the old one logs it and goes on serving: a rollback
//! needs nothing.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::shared::{Shared, Trigger};
use crate::sys::handoff;

/// The old process's first message (the descriptors ride on it).
const OFFER: &[u8] = b"gracering-listeners\n";
/// The new process's answer once every worker accepts.
const SERVING: &[u8] = b"serving\n";
/// How long the old process waits for "serving".
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The new process's side: takes the listening sockets the process at `path` offers.
/// Keep the stream and [`confirm`] on it once serving.
pub(crate) fn take_over(path: &Path) -> io::Result<(Vec<Socket>, UnixStream)> {
    let what =
        |e: io::Error| io::Error::new(e.kind(), format!("upgrade from {}: {e}", path.display()));
    let stream = UnixStream::connect(path).map_err(what)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(what)?;
    let mut buf = [0u8; 64];
    let (n, fds) = handoff::recv_fds(&stream, &mut buf).map_err(what)?;
    if &buf[..n] != OFFER || fds.is_empty() {
        return Err(what(io::Error::new(
            io::ErrorKind::InvalidData,
            "the process there did not offer listening sockets",
        )));
    }
    Ok((handoff::into_listeners(fds).map_err(what)?, stream))
}

/// The new process serves: the old one may drain now.
pub(crate) fn confirm(mut stream: UnixStream) -> io::Result<()> {
    stream.write_all(SERVING)
}

/// The old process's side: the socket at `path` where a successor asks for the
/// listeners, what it is given, and the flags to set once it took them over.
#[derive(Debug)]
pub(crate) struct Offer {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
    sockets: Vec<Socket>,
    handed: Vec<Arc<AtomicBool>>,
}

impl Offer {
    /// Listens at `path` to offer `sockets` to a successor, replacing the socket file
    /// there: a stale one, or (`taken_over`) the predecessor's, which is draining.
    /// Without `taken_over`, a live server answering there is an error.
    pub fn bind(
        path: &Path,
        sockets: Vec<Socket>,
        handed: Vec<Arc<AtomicBool>>,
        taken_over: bool,
    ) -> io::Result<Offer> {
        if !taken_over && UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "a server already offers upgrades at {} (start with --upgrade-from to take over)",
                    path.display()
                ),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| {
            io::Error::new(e.kind(), format!("upgrade socket {}: {e}", path.display()))
        })?;
        listener.set_nonblocking(true)?;
        // Only this user may ask for the sockets (the hand-over checks the peer too).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let inode = std::fs::metadata(path)?.ino();
        Ok(Offer {
            listener,
            path: path.to_owned(),
            inode,
            sockets,
            handed,
        })
    }

    /// Serves upgrade requests until one takes over (then the drain begins) or the
    /// drain begins otherwise or `done` is set.
    pub fn run(self, shared: &Shared, done: &AtomicBool) {
        while !done.load(Ordering::Acquire) && !shared.draining() {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.hand_over(stream) {
                        // The successor replaces the socket file: leave it alone.
                        drop(self.listener);
                        log::info!(
                            "upgrade: the new process serves on the handed-over sockets; draining"
                        );
                        if shared.begin(Trigger::Upgrade, Instant::now()) {
                            shared.wake_all();
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    log::warn!("upgrade socket: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // Remove the socket file unless a successor bound its own there since.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Offers the sockets on `stream`; true once the successor said it serves.
    fn hand_over(&self, stream: UnixStream) -> bool {
        match handoff::peer_is_same_user(&stream) {
            Ok(true) => {}
            Ok(false) => {
                log::warn!("upgrade: a process of another user asked for the listeners; refused");
                return false;
            }
            Err(e) => {
                log::warn!("upgrade: cannot tell who asks for the listeners ({e}); refused");
                return false;
            }
        }
        let fds: Vec<_> = self.sockets.iter().map(|s| s.as_raw_fd()).collect();
        let sent = stream
            .set_nonblocking(false)
            .and_then(|()| handoff::send_fds(&stream, OFFER, &fds));
        if let Err(e) = sent {
            log::warn!("upgrade: cannot pass the listeners: {e}; rolled back, still serving");
            return false;
        }
        // The sockets are the successor's too from now on, whatever it answers: a
        // rollback keeps serving them here (the successor's copies die with it).
        let mut answer = [0u8; 16];
        let mut got = 0;
        let _ = stream.set_read_timeout(Some(CONFIRM_TIMEOUT));
        let mut stream = stream;
        while got < SERVING.len() {
            match stream.read(&mut answer[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if &answer[..got] == SERVING {
            for flag in &self.handed {
                flag.store(true, Ordering::Release);
            }
            return true;
        }
        log::warn!("upgrade: the new process did not start serving; rolled back, still serving");
        false
    }
}
