//! What one run of the HTTP drain benchmark measured ([`Run`]), its one-line account,
//! and the summaries over runs: per-scenario tables (median and high quantile per
//! figure, outcomes summed), the ratios of gracering to each peer and to the floor,
//! and one JSON line.

use std::fmt::Write as _;

use super::floor::Floor;
use super::stats::{median, quantile, quantile_label};
use testkit::{httpgen, idle};

/// One server's drain in one run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Signal to the process's exit.
    pub exit_ms: f64,
    /// Signal to the last client connection closed (idle and load).
    pub closed_ms: Option<f64>,
    /// Signal to the first and the last idle connection's end.
    pub idle_first_ms: Option<f64>,
    pub idle_last_ms: Option<f64>,
    /// 2xx responses completed after the signal.
    pub after_signal: u64,
    /// Signal to the last request lost (cut) after the signal.
    pub cut_ms: Option<f64>,
    /// Signal to the sending of the last request answered without `Connection: close`
    /// although it was sent after the signal.
    pub keepalive_sent_ms: Option<f64>,
    /// Lost requests that count as the expected cut at the grace deadline.
    pub cut: u64,
    /// CPU time from the signal to the exit (gracering and hyper).
    pub cpu_ms: Option<f64>,
    /// The server's own drain duration, from its JSON report.
    pub server_ms: Option<f64>,
    /// 2xx responses per second before the signal.
    pub rate: Option<f64>,
    pub idle: idle::Report,
    pub idle_open_errors: u64,
    /// The load's counts (its instants dropped).
    pub load: httpgen::Report,
    pub exit_code: Option<i32>,
    pub killed: bool,
    /// Extra detail for the run's line.
    pub note: String,
}

impl Run {
    /// Idle connections that ended otherwise than with a FIN, or never opened.
    pub fn idle_errors(&self) -> u64 {
        let i = &self.idle;
        self.idle_open_errors + i.resets + i.other_errors + i.unexpected_data + i.still_open
    }

    /// Everything the clients should not have seen, beside the expected cut.
    pub fn errors(&self) -> u64 {
        self.idle_errors() + self.load.errors() - self.cut + u64::from(self.killed)
    }

    /// The run's line.
    pub fn describe(&self) -> String {
        let (i, l) = (&self.idle, &self.load);
        format!(
            "exit {:.2} ms (code {}{}; CPU {} ms; server says {} ms); clients closed {} ms; \
             idle FIN {}/{} first {} last {} ms, RST {} other {} data {} open-err {} open {}; \
             load {} req/s, {} after the signal, lost {} (RST {} EOF {}) cut {} at {} ms, \
             short {} invalid {} timeout {} non-2xx {} refused {} (after signal {}), \
             connects after signal {}, keep-alive after signal {} (last sent at {} ms), \
             closed by header {}{}",
            self.exit_ms,
            self.exit_code.map_or("none".into(), |c| c.to_string()),
            if self.killed { ", KILLED" } else { "" },
            opt(self.cpu_ms),
            opt(self.server_ms),
            opt(self.closed_ms),
            i.eof,
            i.opened + self.idle_open_errors,
            opt(self.idle_first_ms),
            opt(self.idle_last_ms),
            i.resets,
            i.other_errors,
            i.unexpected_data,
            self.idle_open_errors,
            i.still_open,
            self.rate.map_or("-".into(), |r| format!("{r:.0}")),
            self.after_signal,
            l.lost(),
            l.resets,
            l.unanswered_eof,
            self.cut,
            opt(self.cut_ms),
            l.short,
            l.invalid,
            l.timeouts,
            l.non_2xx,
            l.connect_refused + l.connect_errors,
            l.refused_after_signal,
            l.connects_after_signal,
            l.keepalive_after_signal,
            opt(self.keepalive_sent_ms),
            l.closed_by_header,
            self.note
        )
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Median and high quantile of one figure over the runs that have it.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    pub median: f64,
    pub high: f64,
}

impl Figure {
    fn of(values: impl Iterator<Item = Option<f64>>) -> Option<Figure> {
        let v: Vec<f64> = values.flatten().collect();
        (!v.is_empty()).then(|| Figure {
            median: median(&v),
            high: quantile(&v, 0.99),
        })
    }

    fn cell(f: Option<Figure>) -> String {
        f.map_or("-".into(), |f| format!("{:.2} / {:.2}", f.median, f.high))
    }

    fn json(f: Option<Figure>) -> String {
        f.map_or("null".into(), |f| {
            format!(r#"{{"median":{:.3},"high":{:.3}}}"#, f.median, f.high)
        })
    }
}

/// Figures names, in table and JSON order.
const FIGURES: [&str; 8] = [
    "exit_ms",
    "closed_ms",
    "idle_first_ms",
    "idle_last_ms",
    "after_signal",
    "cut_ms",
    "cpu_ms",
    "rate",
];

/// One server in one scenario, over all its runs.
pub struct Summary {
    pub server: &'static str,
    pub runs: usize,
    /// In the order of [`FIGURES`].
    pub figures: [Option<Figure>; 8],
    /// Counts summed over the runs: (name, value).
    pub counts: Vec<(&'static str, u64)>,
    pub exit_codes: String,
}

impl Summary {
    pub fn of(server: &'static str, runs: &[Run]) -> Summary {
        let fig = |f: fn(&Run) -> Option<f64>| Figure::of(runs.iter().map(f));
        let figures = [
            fig(|r| Some(r.exit_ms)),
            fig(|r| r.closed_ms),
            fig(|r| r.idle_first_ms),
            fig(|r| r.idle_last_ms),
            fig(|r| Some(r.after_signal as f64)),
            fig(|r| r.cut_ms),
            fig(|r| r.cpu_ms),
            fig(|r| r.rate),
        ];
        let sum = |f: fn(&Run) -> u64| runs.iter().map(f).sum::<u64>();
        let counts = vec![
            ("errors", sum(Run::errors)),
            ("idle_fin", sum(|r| r.idle.eof)),
            ("idle_rst", sum(|r| r.idle.resets)),
            ("idle_other", sum(|r| r.idle_errors() - r.idle.resets)),
            ("lost", sum(|r| r.load.lost())),
            ("cut", sum(|r| r.cut)),
            ("short", sum(|r| r.load.short)),
            ("invalid", sum(|r| r.load.invalid)),
            ("timeout", sum(|r| r.load.timeouts)),
            ("non_2xx", sum(|r| r.load.non_2xx)),
            (
                "refused",
                sum(|r| r.load.connect_refused + r.load.connect_errors),
            ),
            ("refused_after", sum(|r| r.load.refused_after_signal)),
            ("connects_after", sum(|r| r.load.connects_after_signal)),
            ("keepalive_after", sum(|r| r.load.keepalive_after_signal)),
            ("still_open", sum(|r| r.load.still_open + r.idle.still_open)),
        ];
        let code = |r: &Run| match (r.killed, r.exit_code) {
            (true, _) => "killed".to_string(),
            (false, c) => c.map_or("none".into(), |c| c.to_string()),
        };
        let mut codes: Vec<String> = runs.iter().map(code).collect();
        codes.sort();
        codes.dedup();
        let exit_codes = codes
            .iter()
            .map(|c| format!("{c}x{}", runs.iter().filter(|r| code(r) == *c).count()))
            .collect::<Vec<_>>()
            .join(",");
        Summary {
            server,
            runs: runs.len(),
            figures,
            counts,
            exit_codes,
        }
    }

    fn exit_median(&self) -> Option<f64> {
        self.figures[0].map(|f| f.median)
    }
}

/// One scenario's results.
pub struct Scenario<'a> {
    pub name: &'a str,
    /// A line describing its conditions.
    pub conditions: String,
    pub servers: Vec<Summary>,
    pub floors: Vec<Floor>,
    /// Whether gracering's exit over the floor's close loop means anything (not when
    /// requests of seconds set the pace).
    pub floor_ratio: bool,
}

impl Scenario<'_> {
    fn floor_figures(&self) -> [Option<Figure>; 3] {
        let f = |g: fn(&Floor) -> Option<f64>| Figure::of(self.floors.iter().map(g));
        [
            f(|x| Some(x.close_ms)),
            f(|x| x.clients_closed_ms),
            f(|x| Some(x.us_per_conn())),
        ]
    }

    /// gracering's median signal-to-exit over each peer's, then over the floor's.
    fn ratios(&self) -> Vec<(String, Option<f64>)> {
        let g = self.servers.iter().find(|s| s.server == "gracering");
        let g = g.and_then(Summary::exit_median);
        let mut out: Vec<(String, Option<f64>)> = self
            .servers
            .iter()
            .filter(|s| s.server != "gracering")
            .map(|s| {
                (
                    s.server.to_string(),
                    g.zip(s.exit_median()).map(|(g, o)| g / o),
                )
            })
            .collect();
        if self.floor_ratio {
            let floor = self.floor_figures()[0].map(|f| f.median);
            out.push(("floor".into(), g.zip(floor).map(|(g, f)| g / f)));
        }
        out
    }
}

/// Prints one scenario's tables.
pub fn print(sc: &Scenario<'_>) {
    let runs = sc.servers.iter().map(|s| s.runs).max().unwrap_or(0);
    let high = quantile_label(runs);
    println!("\n== {}: {}", sc.name, sc.conditions);
    println!("   each cell: median / {high} over the runs; times in ms from the signal");
    println!(
        "{:<10} {:>17} {:>17} {:>17} {:>17} {:>15} {:>15} {:>15} {:>13}",
        "server",
        "exit",
        "clients closed",
        "first idle end",
        "last idle end",
        "done after sig",
        "last lost",
        "CPU ms",
        "req/s before"
    );
    for s in &sc.servers {
        let [exit, closed, first, last, after, cut, cpu, rate] = s.figures;
        let rate = rate.map_or("-".into(), |f| format!("{:.0}", f.median));
        println!(
            "{:<10} {:>17} {:>17} {:>17} {:>17} {:>15} {:>15} {:>15} {:>13}",
            s.server,
            Figure::cell(exit),
            Figure::cell(closed),
            Figure::cell(first),
            Figure::cell(last),
            Figure::cell(after),
            Figure::cell(cut),
            Figure::cell(cpu),
            rate
        );
    }
    if let [Some(close), clients, Some(us)] = sc.floor_figures() {
        let n = sc.floors.first().map_or(0, |f| f.n);
        println!(
            "{:<10} {:>17} {:>17}   (close loop of {n} connections, {:.1} us/conn)",
            "floor",
            Figure::cell(Some(close)),
            Figure::cell(clients),
            us.median
        );
    }
    let names: Vec<&str> = sc
        .servers
        .first()
        .map_or(Vec::new(), |s| s.counts.iter().map(|c| c.0).collect());
    let mut head = format!("{:<10}", "server");
    for n in &names {
        let _ = write!(head, " {n:>w$}", w = n.len().max(5));
    }
    println!("\n{head} {:>10}   (summed over the runs)", "exit codes");
    for s in &sc.servers {
        let mut line = format!("{:<10}", s.server);
        for (n, v) in &s.counts {
            let _ = write!(line, " {v:>w$}", w = n.len().max(5));
        }
        println!("{line} {:>10}", s.exit_codes);
    }
    let ratios: Vec<String> = sc
        .ratios()
        .into_iter()
        .filter_map(|(who, r)| Some(format!("x{:.2} {who}", r?)))
        .collect();
    if !ratios.is_empty() {
        println!("gracering median exit over: {}", ratios.join(", "));
    }
}

/// The machine-readable result, formatted by hand.
pub fn json(head: &str, scenarios: &[Scenario<'_>]) -> String {
    let mut out = format!(r#"{{"bench":"drain_http",{head},"scenarios":{{"#);
    for (i, sc) in scenarios.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, r#"{sep}"{}":{{"servers":{{"#, sc.name);
        for (j, s) in sc.servers.iter().enumerate() {
            let sep = if j == 0 { "" } else { "," };
            let _ = write!(out, r#"{sep}"{}":{{"runs":{}"#, s.server, s.runs);
            for (name, f) in FIGURES.iter().zip(s.figures) {
                let _ = write!(out, r#","{name}":{}"#, Figure::json(f));
            }
            for (name, v) in &s.counts {
                let _ = write!(out, r#","{name}":{v}"#);
            }
            let _ = write!(out, r#","exit_codes":"{}"}}"#, s.exit_codes);
        }
        let [close, clients, us] = sc.floor_figures();
        let _ = write!(
            out,
            r#"}},"floor":{{"n":{},"close_ms":{},"clients_closed_ms":{},"us_per_conn":{}}},"ratio":{{"#,
            sc.floors.first().map_or(0, |f| f.n),
            Figure::json(close),
            Figure::json(clients),
            Figure::json(us)
        );
        let ratios: Vec<String> = sc
            .ratios()
            .into_iter()
            .map(|(who, r)| {
                let v = r.map_or("null".into(), |r| format!("{r:.3}"));
                format!(r#""gracering_{who}":{v}"#)
            })
            .collect();
        let _ = write!(out, "{}}}}}", ratios.join(","));
    }
    out.push_str("}}");
    out
}

/// The issue's targets, checked: in `loaded`, gracering's median exit no slower than
/// the fastest peer's and within 1.2 times the floor's close loop; zero client errors
/// in every gracering scenario. Each entry: (JSON key, line, met).
pub fn targets(scenarios: &[Scenario<'_>]) -> Vec<(&'static str, String, Option<bool>)> {
    let mut out = Vec::new();
    fn gracering<'a>(sc: &'a Scenario<'_>) -> Option<&'a Summary> {
        sc.servers.iter().find(|s| s.server == "gracering")
    }
    if let Some(sc) = scenarios.iter().find(|sc| sc.name == "loaded") {
        let g = gracering(sc).and_then(Summary::exit_median);
        let fastest = (sc.servers.iter())
            .filter(|s| s.server != "gracering")
            .filter_map(|s| Some((s.server, s.exit_median()?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let met = g.zip(fastest).map(|(g, (_, p))| g <= p);
        let line = match (g, fastest) {
            (Some(g), Some((who, p))) => format!(
                "loaded: gracering median exit {g:.2} ms <= fastest peer's ({who}, {p:.2} ms)"
            ),
            _ => "loaded: gracering median exit <= fastest peer's (not measured)".into(),
        };
        out.push(("loaded_vs_fastest_peer", line, met));
        let floor = sc.floor_figures()[0].map(|f| f.median * 1.2);
        let met = g.zip(floor).map(|(g, f)| g <= f);
        let line = match (g, floor) {
            (Some(g), Some(f)) => {
                format!("loaded: gracering median exit {g:.2} ms <= 1.2 x floor ({f:.2} ms)")
            }
            _ => "loaded: gracering median exit <= 1.2 x floor (not measured)".into(),
        };
        out.push(("loaded_vs_floor", line, met));
    }
    let errors: Vec<(&str, u64)> = scenarios
        .iter()
        .filter_map(|sc| Some((sc.name, gracering(sc)?.counts.first()?.1)))
        .collect();
    let each: Vec<String> = errors.iter().map(|(n, e)| format!("{n} {e}")).collect();
    let met = (!errors.is_empty()).then(|| errors.iter().all(|e| e.1 == 0));
    let line = format!("gracering client errors: {} (target 0)", each.join(", "));
    out.push(("gracering_zero_errors", line, met));
    out
}
