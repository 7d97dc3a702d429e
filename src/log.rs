//! Minimal logging to standard error, one line per message, prefixed `gracering:`.
//!
//! The level comes from `GRACERING_LOG` (`off`, `warn`, `info`, `debug`; default `info`),
//! read once. Logging happens at start-up and on rare events (back-off, recovery), never
//! per request.

use std::fmt;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Off,
    Warn,
    Info,
    Debug,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("GRACERING_LOG").as_deref() {
        Ok("off") => Level::Off,
        Ok("warn") => Level::Warn,
        Ok("debug") => Level::Debug,
        _ => Level::Info,
    })
}

fn emit(at: Level, tag: &str, args: fmt::Arguments<'_>) {
    if level() >= at {
        eprintln!("gracering: {tag}{args}");
    }
}

/// A warning: something failed and the engine works around it.
pub(crate) fn warn(args: fmt::Arguments<'_>) {
    emit(Level::Warn, "warning: ", args);
}

/// A notable event: start-up facts, recovery.
pub(crate) fn info(args: fmt::Arguments<'_>) {
    emit(Level::Info, "", args);
}

/// Detail for debugging.
#[allow(dead_code)]
pub(crate) fn debug(args: fmt::Arguments<'_>) {
    emit(Level::Debug, "debug: ", args);
}
