//! In-process servers for tests that need the handler in the test's own address space
//! (counters, fault injection): the backends this machine runs, and a builder for a
//! loopback server that only the test's `ShutdownHandle` stops.

use gracering::{Backend, Builder, Server};

use super::skip::{Need, skip};

/// The backends this machine runs: epoll always, io_uring where it starts. io_uring
/// missing is a counted skip of that half of `test` (a failure under CI=true).
pub fn backends(test: &str) -> Vec<Backend> {
    let mut list = vec![Backend::Epoll];
    match Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .backend(Backend::Uring)
        .bind()
    {
        Ok(_) => list.push(Backend::Uring),
        Err(e) => skip(test, Need::IoUring, format!("{e}; tested on epoll only")),
    }
    list
}

/// A loopback server on a free port with `workers` unpinned workers on `backend`,
/// signals left to the test process (stop it with its `ShutdownHandle`).
pub fn builder(backend: Backend, workers: usize) -> Builder {
    Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(workers)
        .pin_workers(false)
        .handle_signals(false)
        .backend(backend)
}
