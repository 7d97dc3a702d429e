//! CPU pinning for benchmark processes and threads.
//!
//! The machines we measure on have two cores: the server under test runs on CPU 0 and
//! the load generator on CPU 1, so neither steals the other's cycles. This module pins
//! the calling thread, or a child process from its very first instruction (the affinity
//! is set between `fork` and `exec`, so a server never runs a single thread elsewhere).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Pins the calling thread to `cpu`. Threads it starts later inherit the affinity.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    set_affinity(&cpu_set(cpu)?)
}

/// Spawns `cmd` with every thread of the new process pinned to `cpu`. This adds a
/// pre-exec hook to `cmd`, so use a fresh `Command` for each spawn.
pub fn spawn_pinned(cmd: &mut Command, cpu: usize) -> io::Result<Child> {
    // Built here, in the parent: the child side must not allocate.
    let set = cpu_set(cpu)?;
    // SAFETY: the closure runs in the forked child before `exec`, where only
    // async-signal-safe work is allowed. It copies a plain `cpu_set_t` already built by
    // the parent, makes one raw system call (`sched_setaffinity`), and on failure reads
    // `errno` into an `io::Error::Os`, which does not allocate. No locks, no allocation.
    unsafe { cmd.pre_exec(move || set_affinity(&set)) };
    cmd.spawn()
}

/// A CPU set holding only `cpu`.
fn cpu_set(cpu: usize) -> io::Result<libc::cpu_set_t> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} is out of range"),
        ));
    }
    // SAFETY: `cpu_set_t` is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked against `CPU_SETSIZE` above, so the bit is in bounds.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    Ok(set)
}

/// Applies `set` to the calling thread (pid 0 means "this thread" for this call).
fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` points to a valid `cpu_set_t` of exactly `size` bytes.
    let ret = unsafe { libc::sched_setaffinity(0, size, set) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
