//! Skipping a test honestly: a test that cannot check what it is about says so, is
//! counted, and fails instead on CI, whose machine has everything listed in [`Need`].
//!
//! A skip prints `SKIP: <test>: <reason>` with `println!` (the harness captures it: it
//! shows with `--show-output` or `--nocapture`, and under a failure), and adds it to this
//! binary's tally. When the test binary exits, the tally goes to stderr past the
//! harness's capture, right under its `test result:` line:
//!
//! ```text
//! SKIPPED 1 test in echo:
//!   SKIP: ipv6_loopback_serves_too: no IPv6 loopback: cannot bind [::1]:0: ...
//! ```

use std::fmt::Display;
use std::io::Write;
use std::sync::{Mutex, Once};

/// What a test may find missing on a machine. CI (`CI=true`, Linux 6.x, as root) has
/// every one of them, so there a missing one fails the test instead of skipping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A `::1` to bind and connect to.
    Ipv6Loopback,
    /// The `curl` command (`.ci/run` installs it).
    Curl,
    /// io_uring with what the engine needs, on the run that is meant to test it.
    IoUring,
    /// seccomp filters (`PR_SET_SECCOMP`), to deny a syscall to a child.
    Seccomp,
    /// Root, for network namespaces and the like.
    Root,
    /// `python3` with the `prometheus_client` package (`.ci/run` installs it), whose
    /// parser reads the metrics.
    PrometheusClient,
}

impl Need {
    fn what(self) -> &'static str {
        match self {
            Need::Ipv6Loopback => "IPv6 loopback",
            Need::Curl => "curl",
            Need::IoUring => "io_uring",
            Need::Seccomp => "seccomp filters",
            Need::Root => "root",
            Need::PrometheusClient => "python3 with prometheus_client",
        }
    }
}

/// Whether this run is CI's (`CI=true`, as CI services set it).
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records that `test` skips its check because `need` is missing (`why`). Under
/// `CI=true` it panics instead: CI's machine must have it. The caller returns at once.
pub fn skip(test: &str, need: Need, why: impl Display) {
    let line = format!("{test}: no {}: {why}", need.what());
    assert!(
        !on_ci(),
        "{line} (CI=true: CI's machine must have {})",
        need.what()
    );
    println!("SKIP: {line}");
    static AT_EXIT: Once = Once::new();
    // SAFETY: atexit has no memory-safety preconditions; the handler is a plain
    // `extern "C" fn` that only reads a static and writes to stderr.
    AT_EXIT.call_once(|| assert_eq!(unsafe { libc::atexit(report_skips) }, 0));
    SKIPPED.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// Writes the tally to stderr at exit, past the harness's capture of `print!`.
extern "C" fn report_skips() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .map(|stem| {
            stem.rsplit_once('-')
                .map_or(stem.clone(), |(name, _)| name.into())
        })
        .unwrap_or_default();
    let plural = if skipped.len() == 1 { "" } else { "s" };
    let mut report = format!("SKIPPED {} test{plural} in {binary}:\n", skipped.len());
    for line in skipped.iter() {
        report += &format!("  SKIP: {line}\n");
    }
    let _ = std::io::stderr().write_all(report.as_bytes());
}
