//! What `/proc` tells about another process: its CPU time, its open descriptors, its
//! descendants.
//!
//! A load generator on one core saturates before a fast server does, so messages per
//! second alone cannot rank two servers. What can is the server's CPU time per
//! operation: sample [`cpu_seconds`] before and after a measured window, and divide the
//! difference by the operations completed in between.
//!
//! The time is user + system (fields 14 and 15 of `/proc/PID/task/TID/stat`, in clock
//! ticks), summed over the process's live threads. Threads that exit during the window
//! are not counted; the servers we measure keep theirs until they are killed.
//! [`thread_cpu_seconds`] gives the load generator's own CPU time, to show whether the
//! client was the bottleneck (near 100% of its core) or something else was.
//! [`cpu_nanos`] is the precise count, for steps too short for clock ticks.
//! [`system_cpu`] is the machine-wide total, to see what else ran during a window.
//! [`open_fds`] counts a process's descriptors (the tests' leak checks), and
//! [`process_tree`] finds its descendants (nginx's worker under its master).
//! [`tcp_aborts`] counts the resets the kernel sent for sockets closed with unread data
//! (machine-wide), which a client that already closed its end never sees.

use std::fs;
use std::io;

/// User + system CPU time of all live threads of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    Ok(cpu_ticks(pid)? as f64 / ticks_per_second() as f64)
}

/// User + system CPU time of all live threads of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    let tasks = format!("/proc/{pid}/task");
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{tasks}: {e}"));
    for entry in fs::read_dir(&tasks).map_err(with_path)? {
        let path = entry?.path().join("stat");
        match fs::read_to_string(&path) {
            Ok(stat) => total += stat_ticks(&stat).ok_or_else(|| bad_stat(&stat))?,
            // The thread exited between listing and reading: nothing left to count.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// CPU time of all live threads of `pid` in nanoseconds, from the scheduler's own
/// count (the first field of `/proc/PID/task/TID/schedstat`): precise, unlike the
/// tick-granular [`cpu_ticks`], so it can time a step of a few milliseconds. It matches
/// what `wait4` reports for the process once it has exited (utime + stime there are
/// this same total, split in proportion).
pub fn cpu_nanos(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    let tasks = format!("/proc/{pid}/task");
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{tasks}: {e}"));
    for entry in fs::read_dir(&tasks).map_err(with_path)? {
        let path = entry?.path().join("schedstat");
        match fs::read_to_string(&path) {
            Ok(line) => {
                let ns = line
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.parse::<u64>().ok());
                total += ns.ok_or_else(|| bad_stat(&line))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// CPU time used so far by the calling thread, in seconds (precise, not in ticks).
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; this clock id exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Clock ticks per second, the unit of the times in `/proc/*/stat`.
pub fn ticks_per_second() -> u64 {
    // SAFETY: `sysconf` only reads a configuration value; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has reported 100 on every architecture for decades; keep it as a fallback.
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// utime + stime from one `stat` line. The command name (field 2) is in parentheses and
/// may itself contain spaces or ')', so fields are counted from after the last ')'.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field 14 is the 12th token, field 15 the 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn bad_stat(stat: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected stat line: {stat}"),
    )
}

/// Machine-wide CPU time from the first line of `/proc/stat`, summed over all CPUs, in
/// seconds. Sampled around a measured window, it shows what else ran meanwhile: `busy`
/// minus the CPU time of the processes under test is everyone else's (a compiler, another
/// benchmark), and `steal` is time the hypervisor gave to other guests.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemCpu {
    /// user + nice + system + irq + softirq.
    pub busy: f64,
    /// Time this virtual machine was ready to run but not given a CPU.
    pub steal: f64,
}

/// Reads [`SystemCpu`] now.
pub fn system_cpu() -> io::Result<SystemCpu> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let ticks: Vec<u64> = line
        .strip_prefix("cpu ")
        .ok_or_else(|| bad_stat(line))?
        .split_whitespace()
        .map(|field| field.parse().map_err(|_| bad_stat(line)))
        .collect::<io::Result<_>>()?;
    // Fields: user nice system idle iowait irq softirq steal guest guest_nice.
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let per_second = ticks_per_second() as f64;
    Ok(SystemCpu {
        busy: (field(0) + field(1) + field(2) + field(5) + field(6)) as f64 / per_second,
        steal: field(7) as f64 / per_second,
    })
}

/// The kernel's machine-wide count of connections it reset because a socket was closed
/// with unread data in its receive queue (`TCPAbortOnClose`) or received data after it
/// was closed (`TCPAbortOnData`), from the `TcpExt` lines of `/proc/net/netstat`. Sample
/// it before and after a window: the difference counts every process's resets, so it
/// means something only while nothing else on the machine closes sockets that way.
pub fn tcp_aborts() -> io::Result<u64> {
    let netstat = fs::read_to_string("/proc/net/netstat")?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/net/netstat: no TcpExt lines",
        ));
    };
    let mut total = 0;
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        if name == "TCPAbortOnClose" || name == "TCPAbortOnData" {
            total += value.parse::<u64>().map_err(|_| bad_stat(value))?;
        }
    }
    Ok(total)
}

/// How many descriptors `pid` has open.
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// `pid` and all its descendants, found through the parent PIDs in `/proc/*/stat`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parent_pid(&s))
            {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    // Each pass adds the children of one member; the tree cannot outgrow the table.
    while i < tree.len() && tree.len() <= parents.len() + 1 {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    tree
}

/// Field 4 (ppid) of a `/proc/PID/stat` line, counted from after the last ')'.
fn parent_pid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
