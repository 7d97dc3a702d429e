//! Listening sockets: one per worker, all bound to the same address with SO_REUSEPORT,
//! so the kernel spreads incoming connections across the workers without a shared
//! accept queue; or the sockets a service manager passed (socket activation): one per
//! worker, or one that every worker accepts from.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sys::socket::Listener;

/// The workers' listeners made of `sockets` passed by a service manager: one per worker
/// when several were passed (then `workers`, if set, must match), or the one socket
/// shared by `workers` (default `default_workers`), each worker with its own
/// descriptor of it.
///
/// `held_by_others`: the sender keeps them (systemd), so the drain must leave their
/// queues alone; not so for an upgrade's predecessor, which is leaving.
pub(crate) fn inherit(
    sockets: Vec<Socket>,
    workers: Option<usize>,
    default_workers: usize,
    held_by_others: bool,
) -> io::Result<Vec<Listener>> {
    let shared = sockets.len() == 1 && workers.unwrap_or(default_workers) > 1;
    let wrap = |socket| Listener::new(socket, true, held_by_others, shared);
    if sockets.len() == 1 {
        let workers = workers.unwrap_or(default_workers).max(1);
        let first = &sockets[0];
        let mut listeners = Vec::with_capacity(workers);
        for _ in 1..workers {
            listeners.push(wrap(first.try_clone()?));
        }
        listeners.extend(sockets.into_iter().map(wrap));
        return Ok(listeners);
    }
    match workers {
        Some(w) if w != sockets.len() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket activation passed {} sockets for {w} workers: pass one socket,                  or one per worker",
                sockets.len()
            ),
        )),
        _ => Ok(sockets.into_iter().map(wrap).collect()),
    }
}

/// Binds one listener per worker (see [`bind_all`]).
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<Vec<Listener>> {
    Ok(bind_all(addr, count, backlog)?
        .into_iter()
        .map(|socket| Listener::new(socket, false, false, false))
        .collect())
}

/// Binds `count` listeners on `addr`. When the port is 0, the first bind picks it and
/// the others bind that same port. The backlog is capped by `net.core.somaxconn`.
pub(crate) fn bind_all(addr: SocketAddr, count: usize, backlog: u32) -> io::Result<Vec<Socket>> {
    let backlog = effective_backlog(backlog);
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = bind_one(addr, backlog)?;
        if addr.port() == 0 {
            addr = local_addr(&socket)?;
        }
        listeners.push(socket);
    }
    Ok(listeners)
}

/// The address a socket is bound to.
pub(crate) fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no IP address"))
}

fn bind_one(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// The backlog the kernel will really use: the request capped by `net.core.somaxconn`.
fn effective_backlog(requested: u32) -> i32 {
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(4096);
    requested.min(cap).min(i32::MAX as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_resolves_once_for_all_listeners() {
        let listeners = bind_all("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| local_addr(l).unwrap().port())
            .collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|&p| p == ports[0]), "{ports:?}");
    }

    #[test]
    fn binds_ipv6_loopback() {
        match bind_all("[::1]:0".parse().unwrap(), 2, 16) {
            Ok(l) => assert!(local_addr(&l[0]).unwrap().is_ipv6()),
            Err(e) => {
                // CI's machines have ::1: there a missing one is a failure, not a skip.
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "no IPv6 loopback under CI=true: {e}"
                );
                println!("SKIP: binds_ipv6_loopback: no IPv6 loopback: {e}");
            }
        }
    }
}
