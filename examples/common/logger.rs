//! The examples' logger: one line per record on stderr, `LEVEL target: message`, the
//! levels chosen by `RUST_LOG` the way `env_logger` reads it (the subset the examples
//! need): a default level and `target=level` pairs, separated by commas, for example
//! `RUST_LOG=warn,gracering::drain=info`. Levels: `off`, `error`, `warn`, `info`, `debug`,
//! `trace` (any case); a bare target means every level of it. The longest target that is
//! a prefix of a record's target (whole `::` segments) decides; without one, the default
//! level, `info` unless given.
//!
//! It is the examples' own (some fifty lines) rather than `env_logger`, which brings a
//! regex engine and terminal styling the examples have no use for.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

/// Levels by target, as `RUST_LOG` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The level of records no directive names.
    pub default: LevelFilter,
    /// `(target, level)`, longest target first.
    pub targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Parses a `RUST_LOG` value. Directives it cannot read are returned as errors, one
    /// string each; the rest still apply.
    pub fn parse(spec: &str) -> (Filter, Vec<String>) {
        let mut filter = Filter {
            default: LevelFilter::Info,
            targets: Vec::new(),
        };
        let mut errors = Vec::new();
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some((target, level)) => match level.trim().parse() {
                    Ok(level) if !target.trim().is_empty() => {
                        filter.targets.push((target.trim().to_string(), level))
                    }
                    _ => errors.push(directive.to_string()),
                },
                None => match directive.parse() {
                    Ok(level) => filter.default = level,
                    Err(_) if is_target(directive) => filter
                        .targets
                        .push((directive.to_string(), LevelFilter::Trace)),
                    Err(_) => errors.push(directive.to_string()),
                },
            }
        }
        // Longest first; among equal targets the last directive wins (stable sort).
        filter.targets.reverse();
        filter
            .targets
            .sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        (filter, errors)
    }

    /// The most verbose level any record may pass at.
    pub fn max(&self) -> LevelFilter {
        let targets = self.targets.iter().map(|(_, l)| *l);
        targets.fold(self.default, Ord::max)
    }

    /// The level records of `target` pass at.
    pub fn level(&self, target: &str) -> LevelFilter {
        let within =
            |t: &str| target == t || (target.starts_with(t) && target[t.len()..].starts_with("::"));
        let named = self.targets.iter().find(|(t, _)| within(t));
        named.map_or(self.default, |(_, l)| *l)
    }
}

/// A Rust path, as a bare directive naming a target (`gracering::drain`, `kv`).
fn is_target(s: &str) -> bool {
    s.split("::")
        .all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_alphanumeric() || c == '_'))
}

struct Stderr(Filter);

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.0.level(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line, so lines from different threads do not interleave.
            let line = format!(
                "{} {}: {}\n",
                record.level(),
                record.target(),
                record.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger with the levels `RUST_LOG` asks for (default `info`). Directives
/// it cannot read are reported on stderr and ignored.
pub fn init() {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (filter, errors) = Filter::parse(&spec);
    for bad in errors {
        eprintln!("RUST_LOG: ignoring {bad:?} (expected LEVEL or TARGET=LEVEL)");
    }
    log::set_max_level(filter.max());
    // Fails only if a logger is installed already: that one stays.
    let _ = log::set_logger(Box::leak(Box::new(Stderr(filter))));
}
