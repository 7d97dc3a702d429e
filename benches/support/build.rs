//! Building gracering's examples for the benchmarks, and where cargo puts them.
//!
//! [`build_examples`] runs `cargo build --release --example NAME...` (cargo as `CARGO`
//! names it, else `cargo` on the `PATH`) in the crate's directory and returns the
//! binaries' paths under [`target_dir`].

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crate's directory (`CARGO_MANIFEST_DIR` at build time).
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the crate).
pub fn target_dir() -> PathBuf {
    let root = manifest_dir();
    env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |d| root.join(d))
}

/// Builds the examples `names` in release mode, in one cargo call; returns their
/// binaries' paths, in the same order. On failure the error names the command and its
/// status, followed by `; {hint}` when a hint is given.
pub fn build_examples(
    names: &[&str],
    hint: Option<&str>,
) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let cargo = env::var_os("CARGO").unwrap_or("cargo".into());
    let mut args = vec!["build", "--release"];
    for name in names {
        args.extend(["--example", name]);
    }
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(manifest_dir())
        .status()?;
    if !status.success() {
        let hint = hint.map_or(String::new(), |h| format!("; {h}"));
        return Err(format!("`cargo {}` failed ({status}){hint}", args.join(" ")).into());
    }
    let dir = target_dir().join("release/examples");
    Ok(names.iter().map(|name| dir.join(name)).collect())
}

/// Builds the example `name` in release mode; returns its binary's path (see
/// [`build_examples`]).
pub fn build_example(
    name: &str,
    hint: Option<&str>,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let mut paths = build_examples(&[name], hint)?;
    Ok(paths.remove(0))
}
