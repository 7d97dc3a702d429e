//! Command-line helpers shared by the examples: flags, durations, the exit protocol, and
//! the logger ([`logger`]) each installs first.

#![allow(dead_code)]

pub mod logger;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use gracering::http::{Response, Status};
use gracering::{Builder, Metrics, Report};

/// Exit code when the drain had to cut connections (grace deadline or second signal).
pub const EXIT_ABORTED: u8 = 3;
/// Exit code when a worker failed or a handler panicked (the report says which).
pub const EXIT_FAILED: u8 = 4;

/// The flags every example server takes.
#[derive(Debug, Default)]
pub struct ServerArgs {
    pub addr: Option<SocketAddr>,
    pub workers: Option<usize>,
    pub backlog: Option<u32>,
    pub drain_delay: Option<Duration>,
    pub grace_period: Option<Duration>,
    pub linger: Option<Duration>,
    pub send_timeout: Option<Duration>,
    pub upgrade_socket: Option<std::path::PathBuf>,
    pub upgrade_from: Option<std::path::PathBuf>,
}

pub const SERVER_USAGE: &str = "[--addr IP:PORT] [--workers N] [--backlog N] \
[--drain-delay DUR] [--grace-period DUR] [--linger DUR] [--send-timeout DUR] [--upgrade-socket PATH] \
[--upgrade-from PATH]   (DUR: 500ms, 25s, 1m)";

impl ServerArgs {
    /// Takes the flag (and its value) if it is one of the server flags.
    pub fn take(
        &mut self,
        flag: &str,
        value: &mut dyn FnMut() -> Result<String, String>,
    ) -> Result<bool, String> {
        let bad = |e: String| format!("{flag}: {e}");
        match flag {
            "--addr" => self.addr = Some(value()?.parse().map_err(|e| bad(format!("{e}")))?),
            "--workers" => self.workers = Some(value()?.parse().map_err(|e| bad(format!("{e}")))?),
            "--backlog" => self.backlog = Some(value()?.parse().map_err(|e| bad(format!("{e}")))?),
            "--drain-delay" => self.drain_delay = Some(parse_duration(&value()?).map_err(bad)?),
            "--grace-period" => self.grace_period = Some(parse_duration(&value()?).map_err(bad)?),
            "--linger" => self.linger = Some(parse_duration(&value()?).map_err(bad)?),
            "--send-timeout" => self.send_timeout = Some(parse_duration(&value()?).map_err(bad)?),
            "--upgrade-socket" => self.upgrade_socket = Some(value()?.into()),
            "--upgrade-from" => self.upgrade_from = Some(value()?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A builder with these settings over the defaults, listening on `default_addr`
    /// unless `--addr` was given.
    pub fn builder(&self, default_addr: SocketAddr) -> Builder {
        let mut b = gracering::Server::builder().addr(self.addr.unwrap_or(default_addr));
        if let Some(n) = self.workers {
            b = b.workers(n);
        }
        if let Some(n) = self.backlog {
            b = b.backlog(n);
        }
        if let Some(d) = self.drain_delay {
            b = b.drain_delay(d);
        }
        if let Some(d) = self.grace_period {
            b = b.grace_period(d);
        }
        if let Some(d) = self.send_timeout {
            b = b.send_timeout(d);
        }
        if let Some(d) = self.linger {
            b = b.linger(d);
        }
        if let Some(p) = &self.upgrade_socket {
            b = b.upgrade_socket(p);
        }
        if let Some(p) = &self.upgrade_from {
            b = b.upgrade_from(p);
        }
        b
    }
}

/// Parses `500ms`, `25s`, `1.5s`, `2m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" => value * 60.0,
        "us" => value / 1e6,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    if secs > YEAR {
        return Err(format!("duration {s:?} is longer than a year"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// Prints the drain report as one JSON line on stderr and maps it to the exit code:
/// 0 after a clean drain, [`EXIT_FAILED`] when a worker failed or a handler panicked,
/// else [`EXIT_ABORTED`] when connections had to be cut.
pub fn finish(report: &Report) -> ExitCode {
    eprintln!("{}", report.to_json());
    if report.failed_workers() > 0 || report.panics() > 0 {
        ExitCode::from(EXIT_FAILED)
    } else if report.aborted() > 0 {
        ExitCode::from(EXIT_ABORTED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Answers `GET /metrics`: every worker's figures in the Prometheus text exposition
/// format (also during the drain, with `Connection: close` then).
pub fn serve_metrics(metrics: &Metrics, res: &mut Response<'_>) {
    let text = metrics.render();
    res.send(
        Status::OK,
        &[("content-type", gracering::CONTENT_TYPE.as_bytes())],
        text.as_bytes(),
    );
}
