//! Building the workspace's binaries for the tests and benchmarks, and where cargo puts
//! them.
//!
//! The benchmarks build in release mode, every time (cargo returns at once when nothing
//! changed): gracering's examples with [`build_examples`], the peer servers of the
//! `gracering-peers` member with [`build_peers`]. The end-to-end tests use the examples
//! of their own `cargo test` run ([`example_path`]). Cargo is the one `CARGO` names,
//! else `cargo` on the `PATH`; it runs in the workspace's root ([`workspace_dir`]).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

/// Any error of a build.
pub type Error = Box<dyn std::error::Error>;

/// The workspace's root: the directory above this crate's (`testkit/`).
pub fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in a directory of the workspace")
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    let root = workspace_dir();
    env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |d| root.join(d))
}

/// Builds the examples `names` in release mode, in one cargo call; returns their
/// binaries' paths, in the same order. On failure the error names the command and its
/// status, followed by `; {hint}` when a hint is given.
pub fn build_examples(names: &[&str], hint: Option<&str>) -> Result<Vec<PathBuf>, Error> {
    cargo_build("--example", &["-p", "gracering"], names, hint)?;
    let dir = target_dir().join("release/examples");
    Ok(names.iter().map(|name| dir.join(name)).collect())
}

/// Builds the example `name` in release mode; returns its binary's path (see
/// [`build_examples`]).
pub fn build_example(name: &str, hint: Option<&str>) -> Result<PathBuf, Error> {
    Ok(build_examples(&[name], hint)?.remove(0))
}

/// Builds the peer servers `names` (binaries of `gracering-peers`, `benches/peers`) in
/// release mode, in one cargo call; returns their paths, in the same order.
pub fn build_peers(names: &[&str], hint: Option<&str>) -> Result<Vec<PathBuf>, Error> {
    cargo_build("--bin", &["-p", "gracering-peers"], names, hint)?;
    let dir = target_dir().join("release");
    Ok(names.iter().map(|name| dir.join(name)).collect())
}

/// Builds the peer server `name`; returns its path (see [`build_peers`]).
pub fn build_peer(name: &str, hint: Option<&str>) -> Result<PathBuf, Error> {
    Ok(build_peers(&[name], hint)?.remove(0))
}

/// The path of an example binary built by this `cargo test` run, beside the running
/// test binary: built (in the same profile) if a filtered run skipped it, or rebuilt if
/// it is older than the sources, so that a filtered run never tests a stale binary.
/// Checked once per example per test process.
pub fn example_path(name: &str) -> PathBuf {
    static CHECKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join(name);
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if checked.iter().any(|n| n == name) {
        return path;
    }
    let built = fs::metadata(&path).and_then(|m| m.modified()).ok();
    let root = workspace_dir();
    let sources = ["src", "examples", "Cargo.toml"].map(|p| newest_mtime(&root.join(p)));
    let stale = built.is_none_or(|b| sources.into_iter().flatten().any(|s| s > b));
    if stale {
        let mut cmd = Command::new(cargo());
        cmd.args(["build", "-p", "gracering", "--example", name]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(root).status().expect("run cargo build");
        assert!(status.success(), "building example {name} failed");
    }
    checked.push(name.to_string());
    path
}

/// The latest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

/// `cargo build --release {package} {kind} NAME...` in the workspace's root.
fn cargo_build(
    kind: &str,
    package: &[&str],
    names: &[&str],
    hint: Option<&str>,
) -> Result<(), Error> {
    let mut args = vec!["build", "--release"];
    args.extend(package);
    for name in names {
        args.extend([kind, name]);
    }
    let status = Command::new(cargo())
        .args(&args)
        .current_dir(workspace_dir())
        .status()?;
    if !status.success() {
        let hint = hint.map_or(String::new(), |h| format!("; {h}"));
        return Err(format!("`cargo {}` failed ({status}){hint}", args.join(" ")).into());
    }
    Ok(())
}

/// Cargo as `CARGO` names it, else `cargo` on the `PATH`.
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or("cargo".into())
}
