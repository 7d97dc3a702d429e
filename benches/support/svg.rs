//! A small, dependency-free SVG line-chart writer for benchmark reports.
//!
//! [`line_chart`] draws one or more [`Series`] on shared axes: ticks at "nice" steps
//! (1, 2 or 5 times a power of ten), gridlines, axis labels, a legend on the right with
//! one distinct colour per series, and a dashed vertical marker at `x = 0`, the instant
//! of the signal in drain benchmarks (the x range always includes 0 so the marker shows;
//! it is labelled `signal` when it falls inside the plot rather than on its left edge).
//! Points that are not finite are skipped; a series with no points still gets its legend
//! entry. [`write`] saves the text, creating the parent directory if needed.
//!
//! ```ignore
//! let s = svg::Series { name: "gracering".into(), points: vec![(-1.0, 90.0), (0.5, 0.0)] };
//! svg::write(Path::new("target/drain.svg"), &svg::line_chart("Drain", "s", "req/s", &[s]))?;
//! ```

use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// One line of the chart: a name for the legend and its points, in drawing order.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Whole picture size, in SVG user units (pixels).
const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 480.0;
/// The plot area's margins: room for tick labels (left, bottom), title (top), legend
/// (right).
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
/// Aim for about this many ticks per axis.
const TICKS: f64 = 6.0;
/// Distinct colours (Tableau 10), reused in order when there are more series.
const COLOURS: [&str; 10] = [
    "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// An SVG document holding the chart. See the module docs for what is drawn.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    // The x range always holds the signal (0); the y range starts at 0 unless the data
    // goes below it.
    let (x0, x1) = finite().fold((0.0f64, 0.0f64), |(lo, hi), (x, _)| (lo.min(x), hi.max(x)));
    let (y0, y1) = finite().fold((0.0f64, 0.0f64), |(lo, hi), (_, y)| (lo.min(y), hi.max(y)));
    let (xs, ys) = (Axis::new(x0, x1), Axis::new(y0, y1));
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - xs.lo) / (xs.hi - xs.lo) * pw;
    let py = |y: f64| TOP + ph - (y - ys.lo) / (ys.hi - ys.lo) * ph;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        LEFT + pw / 2.0,
        escape(title)
    );

    // Gridlines and tick labels.
    for x in xs.ticks() {
        let sx = px(x);
        let _ = writeln!(
            out,
            r##"<line x1="{sx:.1}" y1="{TOP}" x2="{sx:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{sx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 18.0,
            label(x, &xs)
        );
    }
    for y in ys.ticks() {
        let sy = py(y);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{sy:.1}" x2="{:.1}" y2="{sy:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            sy + 4.0,
            label(y, &ys)
        );
    }
    // The frame, then the axis labels.
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 14.0,
        escape(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        escape(y_label)
    );

    // The signal marker at x = 0, labelled when inside the plot rather than on its edge.
    let sx = px(0.0);
    let _ = writeln!(
        out,
        r##"<line x1="{sx:.1}" y1="{TOP}" x2="{sx:.1}" y2="{:.1}" stroke="#333" stroke-width="1.5" stroke-dasharray="6 4"/>"##,
        TOP + ph
    );
    if xs.lo < 0.0 && xs.hi > 0.0 {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#333">signal</text>"##,
            sx + 4.0,
            TOP + 14.0
        );
    }

    // The lines, then the legend.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        if let [(cx, cy)] = path[..] {
            let _ = writeln!(
                out,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{colour}"/>"#
            );
        } else if !path.is_empty() {
            let points: Vec<String> = path.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
        let (lx, ly) = (WIDTH - RIGHT + 16.0, TOP + 10.0 + 20.0 * i as f64);
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Writes `svg` to `path`, creating the parent directory first.
pub fn write(path: &Path, svg: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg)
}

/// One axis: its range widened to whole ticks, and the tick step.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64) -> Axis {
        // A flat range (one value, or no data) still needs some width.
        let (lo, hi) = if hi - lo > f64::EPSILON * hi.abs().max(1.0) {
            (lo, hi)
        } else {
            (lo - 1.0, hi + 1.0)
        };
        let step = nice_step((hi - lo) / TICKS);
        Axis {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    /// The tick positions from `lo` to `hi` (bounded: at most a few dozen).
    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n.min(64)).map(move |i| self.lo + i as f64 * self.step)
    }
}

/// The smallest of 1, 2, 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw * (1.0 - 1e-9));
    step.unwrap_or(10.0 * power)
}

/// A tick label with as many decimals as the step needs; on an axis reaching 10 000 or
/// more every label is in thousands (`k`), from 10 000 000 in millions (`M`).
fn label(v: f64, axis: &Axis) -> String {
    if v.abs() < axis.step * 1e-6 {
        return "0".into();
    }
    let top = axis.lo.abs().max(axis.hi.abs());
    let (scale, suffix) = match top {
        t if t >= 1e7 => (1e6, "M"),
        t if t >= 1e4 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let digits = decimals(axis.step / scale);
    format!("{:.digits$}{suffix}", v / scale)
}

/// Decimals needed to show multiples of `step` exactly (0 for steps of 1 or more).
fn decimals(step: f64) -> usize {
    (-step.log10().floor()).clamp(0.0, 9.0) as usize
}

/// `text` with the characters XML reserves escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
