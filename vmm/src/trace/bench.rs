//! What tracing costs: a throughput measured with and without the run's tracing, in the same
//! process, trial by trial. For `pinlab bench` (timing belongs there, never in a test).
//!
//! It owns one instance for the measurement (the same setup as a traced run: every catalogue
//! event, guest RAM's filter, this process and the kernel threads by PID, the reader draining),
//! its events enabled for the traced trials and disabled (not merely paused: a paused buffer
//! still runs every enabled tracepoint) for the untraced ones, interleaved, and removed at the end.

use serde::Serialize;

use super::sampler::Sampler;
use super::session::{buffer_kb_for, kernel_side, kernel_threads};
use crate::addr::Hva;

/// Throughput with and without tracing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TracingCost {
    /// Throughput per trial without tracing (the caller's unit).
    pub untraced: Vec<f64>,
    /// The same with tracing on.
    pub traced: Vec<f64>,
    /// Median traced / median untraced: 1.0 is free; the goal is >= 0.95.
    pub ratio: f64,
    pub events_enabled: usize,
    /// Kernel events recorded during the traced trials.
    pub records: u64,
    pub lost: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs `measure` (which returns a throughput) `trials` times untraced and `trials` times
/// traced, interleaved, over guest RAM at `ram`. `Err` when tracing cannot run here.
pub fn tracing_cost<F: FnMut() -> f64>(
    ram: (Hva, u64),
    trials: usize,
    mut measure: F,
) -> Result<TracingCost, String> {
    let sampler = std::sync::Arc::new(Sampler::new());
    let (mut side, marker) =
        kernel_side(None, buffer_kb_for(ram.1), ram, &sampler, &kernel_threads())?;
    drop(marker);
    let instance = side.instance.as_ref().ok_or("no instance")?;
    let events = side.selection.present.clone();
    let set = |on: &str| -> Result<(), String> {
        for e in &events {
            instance
                .write(&format!("events/{}/{}/enable", e.group, e.name), on)
                .map_err(|e| e.to_string())?;
        }
        instance.write("tracing_on", on).map_err(|e| e.to_string())
    };
    let mut untraced = Vec::with_capacity(trials);
    let mut traced = Vec::with_capacity(trials);
    for _ in 0..trials {
        set("0")?;
        untraced.push(measure());
        set("1")?;
        traced.push(measure());
    }
    set("0")?;
    let stats: u64 = instance.cpu_stats().iter().map(|c| c.lost()).sum();
    let read = side.reader.take().map(|r| r.stop()).unwrap_or_default();
    let events_enabled = side.selection.present.len();
    if let Some(i) = side.instance.take() {
        i.remove().map_err(|e| e.to_string())?;
    }
    Ok(TracingCost {
        ratio: median(&traced) / median(&untraced),
        untraced,
        traced,
        events_enabled,
        records: read.records.len() as u64 + read.over_bound,
        lost: stats.max(read.lost_in_text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
