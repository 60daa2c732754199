//! What host tracing costs the DMA path: the engine's throughput with and without a traced run's
//! tracing, in the same process, over the same guest RAM, trial by trial. Goal: traced /
//! untraced >= 0.95.
//!
//! Each trial measures both states back to back, in an order that alternates between trials (so
//! a slow drift of the shared machine's load does not favour one), each state being one engine
//! pass to the guest and one from it. "Traced" is the library's [`Toggle`]: the instance a
//! traced run sets up (every catalogue event the kernel has, guest RAM's filter, this process
//! and the kernel threads by PID, the reader thread draining the pipe), and the lab's marker for
//! every DMA batch. "Untraced" has every event disabled and no marker sink; the timeline records
//! the batches in both. The ratio is the median over trials of each trial's own ratio.
//!
//! Owns what the DMA rig allocates and the toggle's instance (removed at the end, or by its
//! owner on an error); a host without usable tracefs gets a report saying why, not an error.

use pinlab::devices::dma::STAGING_MAX;
use pinlab::timeline::Timeline;
use pinlab::trace::toggle::{self, Toggle, Totals};
use serde::Serialize;

use super::dma::{self, DmaOptions, Rig};
use super::stat::{gib_per_s, Stat};

/// Errors of the tracing-cost benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up or measuring the DMA rig failed.
    #[error(transparent)]
    Dma(#[from] dma::Error),
    /// Switching tracing on or off, or removing the instance, failed mid-measurement.
    #[error("tracing toggle: {0}")]
    Toggle(#[from] toggle::Error),
}

/// One direction's throughput, GiB/s, without and with tracing.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    pub untraced: Option<Stat>,
    pub traced: Option<Stat>,
    /// Median over trials of traced / untraced: 1.0 is free; goal >= 0.95.
    pub ratio: Option<f64>,
}

/// The tracing-cost section.
#[derive(Clone, Debug, Serialize)]
pub struct TraceCostReport {
    pub region: u64,
    pub descriptor: u64,
    pub thp_coverage: Option<f64>,
    /// Why tracing could not be measured here (tracefs absent or refused), when it could not.
    pub skipped: Option<String>,
    pub to_guest: Option<Cost>,
    pub from_guest: Option<Cost>,
    /// What the traced trials recorded: events enabled, records drained, events lost.
    pub totals: Totals,
}

/// The median of per-trial ratios `a[i] / b[i]`.
fn paired_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    Stat::of(&r).map(|s| s.median)
}

fn cost(untraced: &[f64], traced: &[f64]) -> Cost {
    Cost {
        untraced: Stat::of(untraced),
        traced: Stat::of(traced),
        ratio: paired_ratio(traced, untraced),
    }
}

/// Whether trial `trial` measures the traced state first (alternating).
fn traced_first(trial: usize) -> bool {
    trial % 2 == 1
}

/// Runs the measurement: one untimed warm-up trial, then `o.trials` timed ones.
pub fn run(o: &DmaOptions) -> Result<TraceCostReport, Error> {
    o.validate()?;
    let piece = o.descriptor.min(STAGING_MAX);
    let mut rig = Rig::new(o.region, piece, o.queue_depth)?;
    let mut report = TraceCostReport {
        region: o.region,
        descriptor: o.descriptor,
        thp_coverage: rig.thp_coverage(),
        skipped: None,
        to_guest: None,
        from_guest: None,
        totals: Totals::default(),
    };
    let (hva, _) = rig.ram();
    let mut toggle = match Toggle::start((hva, o.region)) {
        Ok(t) => t,
        Err(e) => {
            report.skipped = Some(e.to_string());
            return Ok(report);
        }
    };
    let timeline = Timeline::new();
    // [untraced to, untraced from, traced to, traced from], GiB/s.
    let mut s: [Vec<f64>; 4] = Default::default();
    for trial in 0..=o.trials {
        let seed = 0x7ace ^ trial as u64;
        let order = if traced_first(trial) {
            [true, false]
        } else {
            [false, true]
        };
        for traced in order {
            toggle.set(traced, &timeline)?;
            let to = rig.engine_on(true, seed, o, Some(&timeline))?;
            let from = rig.engine_on(false, seed, o, Some(&timeline))?;
            if trial > 0 {
                let base = if traced { 2 } else { 0 };
                s[base].push(gib_per_s(o.region, to));
                s[base + 1].push(gib_per_s(o.region, from));
            }
        }
    }
    report.totals = toggle.finish(&timeline)?;
    report.to_guest = Some(cost(&s[0], &s[2]));
    report.from_guest = Some(cost(&s[1], &s[3]));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each trial's traced figure is divided by its own untraced one, and the order alternates.
    /// A bug: a ratio of medians (here 0.5 / 1.0 ... mixed trials), or one state always first.
    #[test]
    fn ratios_pair_trials_and_the_order_alternates() {
        let untraced = [1.0, 4.0, 10.0];
        let traced = [0.9, 4.0, 5.0];
        let c = cost(&untraced, &traced);
        assert_eq!(c.ratio, Some(0.9));
        assert_eq!(c.untraced.map(|s| s.median), Some(4.0));
        assert_eq!(c.traced.map(|s| s.median), Some(4.0));
        assert_eq!(cost(&[], &[]).ratio, None);
        let firsts: Vec<bool> = (0..4).map(traced_first).collect();
        assert_eq!(firsts, [false, true, false, true]);
    }
}
