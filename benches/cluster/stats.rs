//! Percentiles and the markdown rows the benchmarks print.

use std::time::Duration;

/// Summary of a sample of durations: count, p50, p90, p99, max (nearest-rank percentiles).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of a sorted slice (`q` in 0..=1).
fn rank(sorted: &[f64], q: f64) -> f64 {
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// Summarise durations in milliseconds; `None` for an empty sample.
pub fn summarize(sample: &[Duration]) -> Option<Summary> {
    if sample.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = sample.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    Some(Summary {
        n: ms.len(),
        p50: rank(&ms, 0.5),
        p90: rank(&ms, 0.9),
        p99: rank(&ms, 0.99),
        max: ms[ms.len() - 1],
    })
}

/// `| what | n | p50 | p90 | p99 | max |` in ms, or a row of dashes when nothing was measured.
pub fn row(what: &str, s: Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.n, s.p50, s.p90, s.p99, s.max
        ),
        None => format!("| {what} | 0 | - | - | - | - |"),
    }
}

pub const HEADER: &str =
    "| measure | n | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|";
