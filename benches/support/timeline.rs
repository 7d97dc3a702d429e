//! Per-millisecond timelines around a drain's signal, written as CSV.
//!
//! From the client side: how many 2xx responses completed in each millisecond, and how
//! many connections (load and idle together) were open at the end of it. The CSV has
//! the columns `ms_since_signal,completed,live`, one row per millisecond, negative
//! before the signal. [`write_charts`] draws the timelines of several servers as SVG.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::Instant;

use super::svg;

/// One millisecond of a timeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    /// Start of the millisecond, relative to the signal.
    pub ms: i64,
    /// 2xx responses completed in it.
    pub completed: u64,
    /// Connections open at its end.
    pub live: i64,
}

/// Signed milliseconds from `origin` to `t`.
pub fn ms_since(origin: Instant, t: Instant) -> f64 {
    match t.checked_duration_since(origin) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(origin - t).as_secs_f64() * 1e3,
    }
}

/// What happened on the client side of one run.
pub struct Events<'a> {
    pub signal: Instant,
    /// When each 2xx response completed.
    pub completions: &'a [Instant],
    /// +1 per connect, -1 per close, of the load's connections.
    pub live_changes: &'a [(Instant, i32)],
    /// Idle connections held (open from before the window).
    pub idle_opened: u64,
    /// When each idle connection ended.
    pub idle_ends: &'a [Instant],
}

/// The rows for the milliseconds `from_ms .. to_ms` around the signal.
pub fn build(ev: &Events<'_>, from_ms: i64, to_ms: i64) -> Vec<Row> {
    let len = (to_ms - from_ms).max(0) as usize;
    let bucket = |t: Instant| {
        let ms = ms_since(ev.signal, t).floor() as i64;
        (ms - from_ms).clamp(-1, len as i64)
    };
    let mut completed = vec![0u64; len];
    for &t in ev.completions {
        if let Ok(i) = usize::try_from(bucket(t))
            && i < len
        {
            completed[i] += 1;
        }
    }
    // Changes per bucket; index 0 gathers everything before the window.
    let mut delta = vec![0i64; len + 1];
    let mut add = |t: Instant, d: i64| {
        let i = (bucket(t) + 1) as usize;
        if i <= len {
            delta[i] += d;
        }
    };
    for &(t, d) in ev.live_changes {
        add(t, d.into());
    }
    for &t in ev.idle_ends {
        add(t, -1);
    }
    let mut live = ev.idle_opened as i64 + delta[0];
    (0..len)
        .map(|i| {
            live += delta[i + 1];
            Row {
                ms: from_ms + i as i64,
                completed: completed[i],
                live,
            }
        })
        .collect()
}

/// The rows as CSV text, header included.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from("ms_since_signal,completed,live\n");
    for r in rows {
        let _ = writeln!(out, "{},{},{}", r.ms, r.completed, r.live);
    }
    out
}

/// Writes `drain-SCENARIO-live.svg` (open connections) and `drain-SCENARIO-completed.svg`
/// (2xx responses per millisecond) into `dir`: one line per server, `lines[i]` being
/// the timeline of `names[i]`.
pub fn write_charts(
    dir: &Path,
    scenario: &str,
    names: &[&str],
    lines: &[Vec<Row>],
) -> io::Result<()> {
    let series = |f: fn(&Row) -> f64| -> Vec<svg::Series> {
        names
            .iter()
            .zip(lines)
            .map(|(name, rows)| svg::Series {
                name: name.to_string(),
                points: rows.iter().map(|r| (r.ms as f64, f(r))).collect(),
            })
            .collect()
    };
    let live = svg::line_chart(
        &format!("{scenario}: open client connections around the signal"),
        "ms since the signal",
        "open connections",
        &series(|r| r.live as f64),
    );
    svg::write(&dir.join(format!("drain-{scenario}-live.svg")), &live)?;
    let done = svg::line_chart(
        &format!("{scenario}: 2xx responses per ms around the signal"),
        "ms since the signal",
        "responses per ms",
        &series(|r| r.completed as f64),
    );
    svg::write(&dir.join(format!("drain-{scenario}-completed.svg")), &done)
}
