//! docs/OPERATIONS.md stays true: the Kubernetes Deployment's and the systemd unit's
//! arguments are accepted by the kv example (which then serves, drains on SIGTERM and
//! exits 0 within the time the supervisor gives it), and the supervisor's kill timeout
//! exceeds the drain delay plus the grace period.

use std::time::Duration;

mod support;
use support::spawn_example;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md");
    std::fs::read_to_string(path).expect("docs/OPERATIONS.md")
}

fn seconds(v: &str) -> f64 {
    let v = v.trim_matches('"');
    if let Some(ms) = v.strip_suffix("ms") {
        ms.parse::<f64>().unwrap() / 1e3
    } else {
        v.trim_end_matches('s').parse().unwrap()
    }
}

/// The value after `flag` in an argument list.
fn flag(args: &[String], flag: &str) -> f64 {
    let i = args.iter().position(|a| a == flag).expect(flag);
    seconds(&args[i + 1])
}

/// Runs the kv example with `args` (on a free loopback port), then stops it within
/// `budget` seconds: it must exit 0.
fn runs_and_drains(name: &str, mut args: Vec<String>, budget: f64) {
    if let Some(i) = args.iter().position(|a| a == "--addr") {
        args.drain(i..i + 2);
    }
    let dir = std::env::temp_dir().join(format!("gracering-ops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("kv.db");
    args.extend(["--db".into(), db.to_str().unwrap().into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = spawn_example("kv", &refs, |_| {});
    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(Duration::from_secs_f64(budget));
    assert_eq!(code, Some(0), "{refs:?}: {:?}", server.stderr_lines());
    assert!(took.as_secs_f64() < budget, "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_kubernetes_deployment_fits_its_grace_period() {
    let doc = doc();
    let yaml = doc
        .split("```yaml")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let grace: f64 = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let args_line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("args:"))
        .unwrap();
    let args: Vec<String> = args_line
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|a| a.trim().trim_matches('"').to_string())
        .collect();
    let needed = flag(&args, "--drain-delay") + flag(&args, "--grace-period");
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace} <= {needed}"
    );
    runs_and_drains("k8s", args, grace);
}

#[test]
fn the_systemd_service_fits_its_stop_timeout() {
    let doc = doc();
    let unit = doc
        .split("# /etc/systemd/system/kv.service")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<String> = exec.split_whitespace().skip(1).map(String::from).collect();
    let timeout = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(seconds)
        .unwrap();
    let needed = flag(&args, "--drain-delay") + flag(&args, "--grace-period");
    assert!(timeout > needed, "TimeoutStopSec {timeout} <= {needed}");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    runs_and_drains("systemd", args, timeout);
}
