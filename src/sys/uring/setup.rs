//! Ring set-up and the probe of what the kernel offers.
//!
//! Set-up tries the cheapest configuration first: SINGLE_ISSUER + DEFER_TASKRUN (task
//! work runs only when this thread waits, in one batch), then COOP_TASKRUN, then a plain
//! ring. The probe checks every opcode the driver issues (MSG_RING is optional: without
//! it workers wake each other through eventfds), IORING_FEAT_EXT_ARG and provided buffer
//! rings; a missing one is an error the caller can act on (fall back to another
//! backend).

use std::fmt;
use std::io;

use io_uring::{IoUring, Probe, opcode};

/// How a ring was set up and what its kernel offers.
#[derive(Debug, Clone)]
pub(crate) struct Features {
    /// The set-up flags the kernel accepted.
    pub mode: &'static str,
    /// `IORING_OP_MSG_RING` (5.18): rings can wake each other.
    pub msg_ring: bool,
    /// Multishot receives (6.0). No probe tells: this is read off the release, and the
    /// driver falls back to single receives if the kernel refuses one anyway.
    pub multishot_recv: bool,
    /// The kernel release, as `uname -r` prints it.
    pub release: String,
}

impl fmt::Display for Features {
    /// `Linux 6.8.0: setup=single_issuer+defer_taskrun, ext_arg, buf_ring, ...`: what
    /// the start line says of the kernel. IORING_FEAT_EXT_ARG (5.11) and provided buffer
    /// rings (5.19) are required, so multishot accept (5.19) is always there.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Linux {}: setup={}, ext_arg, buf_ring, multishot_accept",
            self.release, self.mode
        )?;
        f.write_str(if self.multishot_recv {
            ", multishot_recv"
        } else {
            ", single recv (Linux < 6.0)"
        })?;
        f.write_str(if self.msg_ring {
            ", msg_ring"
        } else {
            ", no msg_ring (eventfd wake-ups)"
        })
    }
}

/// Whether `release` (`uname -r`) is at least `major.minor`; false when unreadable.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Opcodes the engine cannot work without.
const REQUIRED: [(u8, &str); 6] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::Read::CODE, "READ"),
];

/// Applies one set of set-up flags to a ring builder.
type Configure = fn(&mut io_uring::Builder);

/// Builds a ring with `entries` submission slots, in the best mode the kernel accepts.
pub(crate) fn build_ring(entries: u32) -> io::Result<(IoUring, Features)> {
    let cq = entries.saturating_mul(4);
    let attempts: [(&'static str, Configure); 3] = [
        ("single_issuer+defer_taskrun", |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_coop_taskrun();
        }),
        ("coop_taskrun", |b| {
            b.setup_coop_taskrun();
        }),
        ("plain", |_| {}),
    ];
    let mut last = None;
    for (mode, configure) in attempts {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq).setup_clamp();
        configure(&mut builder);
        match builder.build(entries) {
            Ok(ring) => {
                let features = probe(&ring, mode)?;
                return Ok((ring, features));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring set-up failed")))
}

fn probe(ring: &IoUring, mode: &'static str) -> io::Result<Features> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let missing: Vec<&str> = REQUIRED
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("io_uring lacks opcodes {}", missing.join(", ")),
        ));
    }
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
        ));
    }
    check_buf_ring(ring)?;
    let release = kernel_release();
    Ok(Features {
        mode,
        msg_ring: probe.is_supported(opcode::MsgRingData::CODE),
        multishot_recv: release_at_least(&release, 6, 0),
        release,
    })
}

/// Provided buffer rings (Linux 5.19) have no opcode to probe: register a tiny one.
fn check_buf_ring(ring: &IoUring) -> io::Result<()> {
    const PROBE_BGID: u16 = 0xfffe;
    let bufs = super::BufRing::new(1, 64, PROBE_BGID)?;
    // SAFETY: `bufs` outlives the registration, which is undone before it is dropped.
    let registered = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), bufs.count(), PROBE_BGID, 0)
    };
    match registered {
        Ok(()) => ring.submitter().unregister_buf_ring(PROBE_BGID),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("io_uring lacks provided buffer rings (Linux 5.19): {e}"),
        )),
    }
}

/// The running kernel's release string (`uname -r`).
pub(crate) fn kernel_release() -> String {
    // SAFETY: utsname is plain data; all-zero is a valid value for uname to fill.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { crate::sys::syscall::syscall!(uname(&mut uts)) }.is_err() {
        return "unknown".into();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.8.0-49-generic", 6, 0));
        assert!(release_at_least("6.0", 6, 0));
        assert!(release_at_least("10.1.2", 6, 0));
        assert!(!release_at_least("5.19.17", 6, 0));
        assert!(!release_at_least("unknown", 6, 0));
    }
}
