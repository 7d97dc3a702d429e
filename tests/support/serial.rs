//! One test at a time, across test binaries: a file lock in the target directory.
//!
//! The tests that assert how long something took (a drain's exit within 100 ms, a cut
//! at a 300 ms deadline, a timeout's window) must not share the two cores with a test
//! that loads them (hundreds of connections, 50 clients in a tight loop). Both kinds
//! take this lock. An in-process mutex would order only the tests of one binary; `flock`
//! on one file orders them whatever runs them (`cargo test` runs binaries one after
//! another, but a runner such as nextest runs each test as its own process, in parallel).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held while a timing-sensitive or machine-loading test runs; dropping it (closing
/// the file) releases the lock, also when the test panics or its process dies.
pub struct Serial(File);

/// Waits until no other such test runs, in any test process, then holds the lock.
pub fn serial() -> Serial {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gracering-serial.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        // Each open is its own open file description, so threads of one process
        // exclude each other too.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Serial(file);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::Interrupted,
            "flock {path:?}: {e}"
        );
    }
}
