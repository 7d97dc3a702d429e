//! Events a test waits for instead of sleeping: what the kernel shows of a socket or a
//! process (SIOCOUTQ, `/proc/net/tcp`, `/proc/PID/status`), read until it holds.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::wait_until;

/// Bytes written to `s` that the peer has not acknowledged yet (SIOCOUTQ).
pub fn unsent_bytes(s: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ on a TCP socket writes one int through the pointer.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "SIOCOUTQ");
    n
}

/// A socket address as `/proc/net/tcp{,6}` prints it: the address as 32-bit words in
/// host byte order, in hex, then `:` and the port in hex.
fn proc_net_addr(addr: SocketAddr) -> String {
    let words: Vec<[u8; 4]> = match addr {
        SocketAddr::V4(a) => vec![a.ip().octets()],
        SocketAddr::V6(a) => a
            .ip()
            .octets()
            .chunks(4)
            .map(|w| w.try_into().unwrap())
            .collect(),
    };
    let hex: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
    format!("{hex}:{:04X}", addr.port())
}

/// Bytes the server has not read yet from its end of our connection `client` (the
/// `rx_queue` of the socket whose local address is our peer and remote is us), or None
/// when that socket is not (or no longer) in this network namespace's table.
pub fn server_unread_bytes(client: &TcpStream) -> Option<u64> {
    let (ours, theirs) = (client.local_addr().ok()?, client.peer_addr().ok()?);
    let table = if ours.is_ipv4() { "tcp" } else { "tcp6" };
    let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).ok()?;
    let (local, remote) = (proc_net_addr(theirs), proc_net_addr(ours));
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (_tx, rx) = f.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// Waits until everything written on `client` has reached the server's socket and the
/// server has read it from there: it is in the server's hands, not the kernel's.
pub fn wait_server_read(client: &TcpStream, timeout: Duration) -> bool {
    wait_until(timeout, || {
        unsent_bytes(client) == 0 && server_unread_bytes(client) == Some(0)
    })
}

/// [`wait_server_read`] for many connections at once, reading the kernel's table once
/// per look rather than once per connection (it takes milliseconds to generate: with
/// hundreds of connections, one look each would take seconds).
pub fn wait_server_read_all(clients: &[&TcpStream], timeout: Duration) -> bool {
    let mut keys = Vec::with_capacity(clients.len());
    for c in clients {
        let (Ok(ours), Ok(theirs)) = (c.local_addr(), c.peer_addr()) else {
            return false;
        };
        keys.push((ours.is_ipv4(), proc_net_addr(theirs), proc_net_addr(ours)));
    }
    wait_until(timeout, || {
        if clients.iter().any(|c| unsent_bytes(c) != 0) {
            return false;
        }
        let mut unread: std::collections::HashMap<(String, String), u64> = Default::default();
        for table in ["tcp", "tcp6"] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/self/net/{table}")) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(remote), Some(queues)) = (f.get(1), f.get(2), f.get(4))
                else {
                    continue;
                };
                let Some((_tx, rx)) = queues.split_once(':') else {
                    continue;
                };
                if let Ok(rx) = u64::from_str_radix(rx, 16) {
                    unread.insert((local.to_string(), remote.to_string()), rx);
                }
            }
        }
        keys.iter()
            .all(|(_, local, remote)| unread.get(&(local.clone(), remote.clone())) == Some(&0))
    })
}

/// The value of a `Name:` line in `/proc/PID/status` (or `/proc/PID/task/TID/status`).
fn status_field(path: &str, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    Some(line[name.len()..].trim().to_string())
}

/// Whether every thread of process `pid` is stopped (state `T`, after SIGSTOP).
pub fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.map_while(Result::ok).all(|task| {
        let status = task.path().join("status");
        status_field(&status.to_string_lossy(), "State:").is_some_and(|s| s.starts_with('T'))
    })
}

/// Whether `sig` waits in the process-wide pending set of `pid` (`ShdPnd`): sent, and
/// not yet taken (a blocked signal stays there until its signalfd is read).
pub fn signal_pending(pid: i32, sig: i32) -> bool {
    status_field(&format!("/proc/{pid}/status"), "ShdPnd:")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// Whether every worker thread (`gracering-wN`) of process `pid` is asleep in its
/// event wait (`epoll_wait`, or the io_uring completion wait), between two turns.
/// Where the kernel hides `wchan`, a sleeping state is taken for it.
pub fn workers_waiting(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.map_while(Result::ok).all(|task| {
        let p = task.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.starts_with("gracering-w") {
            return true;
        }
        let asleep = status_field(&p.join("status").to_string_lossy(), "State:")
            .is_some_and(|s| s.starts_with('S'));
        match std::fs::read_to_string(p.join("wchan")).as_deref() {
            Ok("0") | Err(_) => asleep,
            Ok(wchan) => asleep && (wchan.contains("epoll") || wchan.contains("cqring")),
        }
    })
}
