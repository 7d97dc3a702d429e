//! The HTTP example: gracering's main job.
//!
//! ```text
//! cargo run --release --example http            # 127.0.0.1:8080, one worker per CPU
//! cargo run --release --example http -- --addr 127.0.0.1:9000 --workers 2 \
//!     --drain-delay 500ms --grace-period 25s
//! ```
//!
//! Routes: `GET /` answers `Hello, World!`; `GET /healthz` (liveness) is 200 until the
//! process ends; `GET /readyz` (readiness) is 200 while serving and 503 from the instant
//! the drain begins (readiness delay included); `GET /slow?ms=N` answers `slow` after N
//! milliseconds without holding up the worker; `GET /metrics` answers every worker's
//! figures in the Prometheus text format (during the drain too); anything else is 404.
//! With `--debug-stall`, `GET /debug/stall?ms=N` blocks the worker that takes it for N
//! milliseconds (a stuck loop, for testing systemd's watchdog: its pings stop).
//!
//! SIGTERM or SIGINT drains (a second one, or the grace period, cuts what is left); the
//! drain report goes to stderr as one JSON line. Exit codes: 0 after a clean drain, 3
//! when connections had to be cut, 1 when the server could not start, 2 for bad
//! arguments.
//!
//! gracering's log lines (start, drain phases, summary, warnings) go to stderr as
//! `LEVEL target: message`, levels from `RUST_LOG` (`warn`, `warn,gracering::drain=info`,
//! `off`; default `info`: see `common/logger.rs`). The JSON report is printed at any level.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{SERVER_USAGE, ServerArgs};
use gracering::Metrics;
use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};

/// The example's routes.
struct Hello {
    metrics: Metrics,
}

/// `--debug-stall`: the route that blocks a worker is on.
static DEBUG_STALL: AtomicBool = AtomicBool::new(false);

impl Service for Hello {
    type Message = ();
    fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
        let get = matches!(req.method(), "GET" | "HEAD");
        match req.path() {
            "/" if get => res.text(Status::OK, "Hello, World!"),
            "/healthz" if get => res.text(Status::OK, "ok"),
            "/metrics" if get => common::serve_metrics(&self.metrics, res),
            "/readyz" if get && res.is_draining() => {
                res.text(Status::SERVICE_UNAVAILABLE, "draining")
            }
            "/readyz" if get => res.text(Status::OK, "ready"),
            "/slow" if get => match slow_ms(req.query()) {
                Some(ms) => res.defer(Duration::from_millis(ms), ms),
                None => res.text(Status::BAD_REQUEST, "use /slow?ms=N (N up to 600000)"),
            },
            "/debug/stall" if get && DEBUG_STALL.load(Ordering::Relaxed) => {
                match slow_ms(req.query()) {
                    Some(ms) => {
                        // Deliberately blocks the loop (what a handler must never do).
                        std::thread::sleep(Duration::from_millis(ms));
                        res.text(Status::OK, "stalled");
                    }
                    None => res.text(Status::BAD_REQUEST, "use /debug/stall?ms=N"),
                }
            }
            _ => res.text(Status::NOT_FOUND, "not found"),
        }
    }

    fn resume_timer(&mut self, _ms: u64, res: &mut Response<'_>) {
        res.text(Status::OK, "slow");
    }
}

/// The `ms` of `/slow?ms=N`: a request that takes N milliseconds without holding up the
/// worker (for drain benchmarks: requests in flight at the signal).
fn slow_ms(query: Option<&str>) -> Option<u64> {
    let ms = query?.split('&').find_map(|kv| kv.strip_prefix("ms="))?;
    ms.parse().ok().filter(|&ms| ms <= 600_000)
}

struct Args {
    server: ServerArgs,
    http: HttpConfig,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: ServerArgs::default(),
        http: HttpConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        if args.server.take(&flag, &mut value)? {
            continue;
        }
        let duration = |v: String| common::parse_duration(&v).map_err(|e| format!("{flag}: {e}"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        args.http = match flag.as_str() {
            "--header-timeout" => args.http.header_timeout(duration(value()?)?),
            "--idle-timeout" => args.http.idle_timeout(duration(value()?)?),
            "--body-timeout" => args.http.body_timeout(duration(value()?)?),
            "--min-body-rate" => args.http.min_body_rate(number(value()?)?),
            "--max-head" => args.http.max_head(number(value()?)? as usize),
            "--max-body" => args.http.max_body(number(value()?)?),
            "--debug-stall" => {
                DEBUG_STALL.store(true, Ordering::Relaxed);
                args.http
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        };
    }
    Ok(args)
}

fn main() -> ExitCode {
    common::logger::init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!(
                "{msg}\nusage: http {SERVER_USAGE}\n  [--header-timeout DUR] [--idle-timeout DUR] [--body-timeout DUR] [--min-body-rate BYTES_PER_S]\n  [--max-head BYTES] [--max-body BYTES] [--debug-stall]\n  (--body-timeout: how long a request body may go silent, default 10s; --min-body-rate:\n  the slowest average a body may arrive at after that grace, default 500, 0 for none)"
            );
            return ExitCode::from(2);
        }
    };
    let builder = args
        .server
        .builder(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let server = match builder.bind() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("http: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "gracering http: listening on {}, workers={}, backend={}",
        server.local_addr(),
        server.workers(),
        server.backend()
    );
    let _ = std::io::stdout().flush();
    let config = args.http;
    match server.run(|worker| {
        let hello = Hello {
            metrics: worker.metrics(),
        };
        Http::new(config.clone(), hello).with_metrics(worker)
    }) {
        Ok(report) => common::finish(&report),
        Err(e) => {
            eprintln!("http: {e}");
            ExitCode::FAILURE
        }
    }
}
