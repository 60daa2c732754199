//! `pinlab bench`: benchmarks of the live paths, on the binary side of the crate (the library
//! holds no benchmark code). DMA throughput through io_uring pins ([`dma`]), the cost of an
//! IOMMU map ([`map`]), launch timings of the `pinlab` binary ([`launch`]), what host tracing
//! costs the DMA path ([`trace`]), and how each cost grows ([`scale`]). The goals ([`goals`]),
//! the text ([`render`]) and the HTML page ([`html`], with the scale charts of [`curves`]) are
//! read from the one typed [`BenchReport`] that `--json` prints.
//!
//! Timing lives here, never in pass/fail tests. The machine is shared and noisy, so every figure
//! is a set of trials (median, min, max, [`stat`]) and every goal is a ratio against a raw
//! baseline measured in the same run, interleaved trial by trial. The raw io_uring baseline
//! drives the library's own fixed-buffer loop (`pin::io_uring::FixedRing`) with its own buffers:
//! there is one submission/completion loop in the codebase.
//!
//! It owns only what it allocates for a measurement (guest RAM, rings, staging, children it
//! spawns and always reaps, the tracing section's tracefs instance, removed at its end); it
//! changes no host knob.

pub mod curves;
pub mod dma;
pub mod goals;
pub mod html;
pub mod launch;
pub mod machine;
pub mod map;
pub mod render;
pub mod scale;
pub mod stat;
pub mod trace;

use std::path::PathBuf;

use serde::Serialize;

use stat::MIB;

/// Errors of `pinlab bench`: a refused option or a failed measurement, per section.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--trials 0`.
    #[error("--trials must be at least 1")]
    Trials,
    /// The DMA section failed (or refused its sizes).
    #[error("dma: {0}")]
    Dma(#[from] dma::Error),
    /// The map section failed (or refused its size).
    #[error("map: {0}")]
    Map(#[from] map::Error),
    /// The launch section failed (or refused its count).
    #[error("launch: {0}")]
    Launch(#[from] launch::Error),
    /// The scale curves failed.
    #[error("scale: {0}")]
    Scale(#[from] scale::Error),
    /// The tracing-cost section failed.
    #[error("trace: {0}")]
    Trace(#[from] trace::Error),
}

/// What to measure and how often.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes of guest RAM the DMA benchmark maps and moves (at most 1 GiB).
    pub region: u64,
    /// Bytes per DMA descriptor (a multiple of 4 KiB).
    pub descriptor: u64,
    /// Bytes the map benchmark maps, each size on THP-advised guest RAM.
    pub map_sizes: Vec<u64>,
    /// Sizes also mapped on 4 KiB-page guest RAM.
    pub map_sizes_4k: Vec<u64>,
    /// The engine's queue depth (`[device] queue_depth`).
    pub queue_depth: u32,
    /// Timed trials per measurement (one untimed warm-up comes first).
    pub trials: usize,
    /// Spawns of the `pinlab` binary per launch measurement.
    pub launches: usize,
    /// The `pinlab` binary to spawn.
    pub pinlab: PathBuf,
    /// Which sections run.
    pub dma: bool,
    pub map: bool,
    pub launch: bool,
    /// DMA throughput with and without host tracing.
    pub trace: bool,
    /// The scale curves (`--scale`).
    pub scale: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            region: 256 * MIB,
            descriptor: 8 * MIB,
            map_sizes: vec![stat::GIB, 8 * stat::GIB],
            map_sizes_4k: vec![stat::GIB],
            queue_depth: pinlab::scenario::DEFAULT_QUEUE_DEPTH,
            trials: 7,
            launches: 20,
            pinlab: std::env::current_exe().unwrap_or_else(|_| "pinlab".into()),
            dma: true,
            map: true,
            launch: true,
            trace: true,
            scale: false,
        }
    }
}

impl Options {
    fn dma_options(&self) -> dma::DmaOptions {
        dma::DmaOptions {
            region: self.region,
            descriptor: self.descriptor,
            queue_depth: self.queue_depth,
            trials: self.trials,
        }
    }

    /// Refuses every option no section could use, before anything is measured (so a typo fails
    /// at once, not after minutes of other sections).
    pub fn validate(&self) -> Result<(), Error> {
        if self.trials == 0 {
            return Err(Error::Trials);
        }
        if self.launch && self.launches == 0 {
            return Err(launch::Error::Launches.into());
        }
        if self.dma || self.trace {
            self.dma_options().validate()?;
        }
        if self.map {
            for &size in self.map_sizes.iter().chain(&self.map_sizes_4k) {
                map::validate(size)?;
            }
        }
        Ok(())
    }
}

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: machine::Machine,
    pub trials: usize,
    pub dma: Option<dma::DmaReport>,
    /// One report per size and page kind (empty when the section did not run).
    pub map: Vec<map::MapReport>,
    pub launch: Option<launch::LaunchReport>,
    pub trace: Option<trace::TraceCostReport>,
    pub scale: Option<scale::ScaleReport>,
}

/// Runs the sections `o` asks for.
pub fn run(o: &Options) -> Result<BenchReport, Error> {
    o.validate()?;
    let mut machine = machine::Machine::probe();
    let scale_options = || scale::ScaleOptions {
        trials: o.trials,
        pinlab: o.pinlab.clone(),
        ..Default::default()
    };
    let mut r = BenchReport {
        machine: machine.clone(),
        trials: o.trials,
        dma: o.dma.then(|| dma::run(&o.dma_options())).transpose()?,
        map: if o.map { run_maps(o)? } else { Vec::new() },
        launch: o
            .launch
            .then(|| launch::run(&o.pinlab, o.launches, o.trials))
            .transpose()?,
        trace: o.trace.then(|| trace::run(&o.dma_options())).transpose()?,
        scale: o.scale.then(|| scale::run(&scale_options())).transpose()?,
    };
    machine.finish();
    r.machine = machine;
    Ok(r)
}

/// The map section: every THP size, then every 4 KiB-page size, one guest RAM at a time.
fn run_maps(o: &Options) -> Result<Vec<map::MapReport>, Error> {
    let thp = o.map_sizes.iter().map(|&s| (s, true));
    let base = o.map_sizes_4k.iter().map(|&s| (s, false));
    Ok(thp
        .chain(base)
        .map(|(size, thp)| map::run(size, thp, o.trials))
        .collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: an option change from the defaults and the error it must give before anything
    /// runs. A bug: a zero count or an impossible size accepted (and measured as nonsense).
    #[test]
    fn bad_options_are_refused_up_front() {
        type Row = (&'static str, fn(&mut Options), fn(&Error) -> bool);
        let table: [Row; 6] = [
            ("trials 0", |o| o.trials = 0, |e| matches!(e, Error::Trials)),
            (
                "launches 0",
                |o| o.launches = 0,
                |e| matches!(e, Error::Launch(launch::Error::Launches)),
            ),
            (
                "region 0",
                |o| o.region = 0,
                |e| matches!(e, Error::Dma(dma::Error::Region(0))),
            ),
            (
                "region 1 GiB + 2 MiB",
                |o| o.region = (1 << 30) + 2 * MIB,
                |e| matches!(e, Error::Dma(dma::Error::Region(_))),
            ),
            (
                "descriptor not page sized",
                |o| o.descriptor = 4097,
                |e| matches!(e, Error::Dma(dma::Error::Descriptor(4097))),
            ),
            (
                "map size not 2 MiB sized",
                |o| o.map_sizes_4k = vec![3 * MIB],
                |e| matches!(e, Error::Map(map::Error::Size(_))),
            ),
        ];
        for (desc, change, want) in table {
            let mut o = Options::default();
            change(&mut o);
            let e = o.validate().expect_err(desc);
            assert!(want(&e), "{desc}: {e:?}");
        }
        assert!(Options::default().validate().is_ok());
        // An option of a section that does not run is not checked.
        let o = Options {
            launches: 0,
            launch: false,
            ..Options::default()
        };
        assert!(o.validate().is_ok());
    }
}
