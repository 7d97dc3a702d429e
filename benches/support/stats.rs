//! Summaries over repeated runs: median and nearest-rank percentiles.
//!
//! Benchmarks here repeat a measurement a handful of times (the machines are noisy, see
//! the shared README) and report the median beside a high percentile. With few runs a
//! high percentile is simply the largest value; [`quantile_label`] names it honestly.

/// The median of `values` (the mean of the middle two for an even count); NaN if empty.
pub fn median(values: &[f64]) -> f64 {
    let sorted = sorted(values);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

/// The nearest-rank `q` quantile (`0.0 < q <= 1.0`) of `values`; NaN if empty. With
/// fewer than `1 / (1 - q)` values this is the maximum.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let sorted = sorted(values);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// "p99", or "max" when there are too few values for the 99th percentile to differ
/// from the largest one.
pub fn quantile_label(count: usize) -> &'static str {
    if count < 100 { "max" } else { "p99" }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}
