//! `pinlab bench --scale`: how each cost grows with the work. Map time against guest RAM (THP
//! and 4 KiB pages), DMA throughput against region size and queue depth, launch time against
//! guest RAM, sweep wall time against cells, and explorer states per second against program
//! size. Every point is a typed row of [`ScaleReport`], serialized as JSON, so a chart can be
//! drawn from it.
//!
//! Owns what its sections own (one guest RAM at a time, children always reaped); changes no
//! host knob itself (the sweep points spawn `pinlab sweep`, which journals and restores its
//! own under the system lock). The largest points map 8 GiB: the map section checks
//! MemAvailable first.

use std::path::PathBuf;
use std::time::Instant;

use pinlab::model::{explore, Era, Program};
use serde::Serialize;

use super::dma::{self, DmaOptions, DmaPoint};
use super::launch;
use super::map::{self, MapReport};
use super::stat::{Stat, GIB, MIB};

/// Errors of the scale benchmark: its sections' own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("map: {0}")]
    Map(#[from] map::Error),
    #[error("dma: {0}")]
    Dma(#[from] dma::Error),
    #[error("launch: {0}")]
    Launch(#[from] launch::Error),
    /// `pinlab sweep --json` printed something that is not a sweep.
    #[error("{cmd}: its JSON: {source}")]
    SweepJson {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
    /// The explorer failed on one of the stress programs.
    #[error("explore {program}: {source}")]
    Explore {
        program: String,
        #[source]
        source: pinlab::model::explore::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Which points to measure.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub trials: usize,
    /// Spawns per launch point.
    pub launches: usize,
    pub pinlab: PathBuf,
    /// Guest RAM sizes of the map curve (each on THP and on 4 KiB pages).
    pub map_sizes: Vec<u64>,
    /// Region sizes and queue depths of the DMA surface.
    pub dma_regions: Vec<u64>,
    pub dma_depths: Vec<u32>,
    /// Guest RAM sizes of the launch curve (THP and 4 KiB pages).
    pub launch_memory: Vec<u64>,
    /// Cells of each sweep point (`pinlab sweep --cells N`; at least the whole sweep is all).
    pub sweep_cells: Vec<usize>,
}

impl Default for ScaleOptions {
    fn default() -> Self {
        ScaleOptions {
            trials: 3,
            launches: 3,
            pinlab: std::env::current_exe().unwrap_or_else(|_| "pinlab".into()),
            map_sizes: vec![64 * MIB, 256 * MIB, GIB, 4 * GIB, 8 * GIB],
            dma_regions: vec![8 * MIB, 64 * MIB, 256 * MIB, GIB],
            dma_depths: vec![1, 2, 4, 16, 64],
            launch_memory: vec![64 * MIB, 256 * MIB, GIB, 4 * GIB],
            sweep_cells: SWEEP_CELLS.to_vec(),
        }
    }
}

/// Launch times of the default scenario at one guest RAM size, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchPoint {
    pub memory: u64,
    pub thp: bool,
    pub launches: usize,
    pub spawn_to_exit: Option<Stat>,
    pub launch_to_guest_start: Option<Stat>,
    pub launch_to_first_dma: Option<Stat>,
    pub launch_to_guest_done: Option<Stat>,
}

/// Cells of the default sweep points: doubling, the last one the whole sweep (`sweep::cells`
/// has 372; `subset` takes all of them for any N at least that).
pub const SWEEP_CELLS: [usize; 5] = [24, 48, 96, 192, usize::MAX];

/// One `pinlab sweep --cells N --json`, spawned and reaped.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    /// Cells picked (`sweep::subset`), run or not.
    pub cells: usize,
    /// Cells run (one process each).
    pub run: usize,
    /// Cells that could not be built here (each with its reason in the sweep's own JSON).
    pub not_built: usize,
    /// The sweep's own wall time, seconds.
    pub seconds: f64,
    /// Spawn -> exit of `pinlab sweep`, seconds.
    pub spawn_to_exit_s: f64,
    /// `seconds / run`.
    pub seconds_per_cell: Option<f64>,
}

/// The explorer on one program.
#[derive(Clone, Debug, Serialize)]
pub struct ExplorerPoint {
    pub program: String,
    /// The stress program `program` is a cut of (one curve per family).
    pub family: String,
    pub era: String,
    pub threads: usize,
    /// Ops over all threads (setup and the final round excluded).
    pub ops: usize,
    pub states: usize,
    /// Explorations run (at least 3, at least 100 ms in all).
    pub explorations: u32,
    pub states_per_s: f64,
    pub ms_per_exploration: f64,
}

/// Every curve.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub map: Vec<MapReport>,
    pub dma: Vec<DmaPoint>,
    pub launch: Vec<LaunchPoint>,
    pub sweep: Vec<SweepPoint>,
    pub explorer: Vec<ExplorerPoint>,
}

/// Measures every curve.
pub fn run(o: &ScaleOptions) -> Result<ScaleReport> {
    let mut map = Vec::new();
    for &size in &o.map_sizes {
        for thp in [true, false] {
            map.push(map::run(size, thp, o.trials)?);
        }
    }
    let mut dma = Vec::new();
    for &region in &o.dma_regions {
        for &queue_depth in &o.dma_depths {
            let d = DmaOptions {
                region,
                descriptor: 8 * MIB,
                queue_depth,
                trials: o.trials,
            };
            dma.push(dma::point(&d)?);
        }
    }
    let mut launch = Vec::new();
    for &memory in &o.launch_memory {
        for thp in [true, false] {
            launch.push(launch_point(o, memory, thp)?);
        }
    }
    let mut sweep = Vec::new();
    for &n in &o.sweep_cells {
        sweep.push(sweep_point(o, n)?);
    }
    let explorer = explorer_points()?;
    Ok(ScaleReport {
        map,
        dma,
        launch,
        sweep,
        explorer,
    })
}

/// `pinlab sweep --cells n --json`: its cells, its wall time and the process's.
fn sweep_point(o: &ScaleOptions, n: usize) -> Result<SweepPoint> {
    /// The part of the sweep's JSON the point reads.
    #[derive(serde::Deserialize)]
    struct SweepJson {
        rows: Vec<serde::de::IgnoredAny>,
        not_built: Vec<serde::de::IgnoredAny>,
        seconds: f64,
    }
    let cells = n.to_string();
    let args = ["sweep", "--cells", &cells, "--json"];
    let (wall_ms, stdout) = launch::spawn_timed(&o.pinlab, &args)?;
    let s: SweepJson = serde_json::from_slice(&stdout).map_err(|source| Error::SweepJson {
        cmd: format!("{} {}", o.pinlab.display(), args.join(" ")),
        source,
    })?;
    let run = s.rows.len();
    Ok(SweepPoint {
        cells: run + s.not_built.len(),
        run,
        not_built: s.not_built.len(),
        seconds: s.seconds,
        spawn_to_exit_s: wall_ms / 1e3,
        seconds_per_cell: (run > 0).then(|| s.seconds / run as f64),
    })
}

fn launch_point(o: &ScaleOptions, memory: u64, thp: bool) -> Result<LaunchPoint> {
    // Every size gets all its launches: the guest starts once the part it touches first is
    // faulted in (`prefault`), so a 4 GiB launch takes about what a 64 MiB one does (0.09-0.12
    // s spawn to exit here; it took seconds when all of RAM was faulted in first).
    let launches = o.launches.max(1);
    let mem = format!("{}MiB", memory / MIB);
    let args = [
        "run",
        "--memory",
        &mem,
        "--thp",
        if thp { "on" } else { "off" },
        "--json",
    ];
    let mut v: [Vec<f64>; 4] = Default::default();
    for _ in 0..launches {
        let (wall, t) = launch::spawn_once(&o.pinlab, &args)?;
        v[0].push(wall);
        v[1].extend(t.launch_to_guest_start);
        v[2].extend(t.launch_to_first_dma);
        v[3].extend(t.launch_to_guest_done);
    }
    Ok(LaunchPoint {
        memory,
        thp,
        launches,
        spawn_to_exit: Stat::of(&v[0]),
        launch_to_guest_start: Stat::of(&v[1]),
        launch_to_first_dma: Stat::of(&v[2]),
        launch_to_guest_done: Stat::of(&v[3]),
    })
}

/// `prog` with each thread cut to its first `num/den` ops (at least one).
fn prefix(prog: &Program, num: usize, den: usize) -> Program {
    let mut p = prog.clone();
    for (_, ops) in &mut p.threads {
        let keep = (ops.len() * num).div_ceil(den).max(1);
        ops.truncate(keep);
    }
    p
}

/// The explorer's stress programs, each at a quarter, half, three quarters and all of its
/// threads' ops, under the modern era.
fn explorer_points() -> Result<Vec<ExplorerPoint>> {
    let era = Era::MODERN;
    let mut out = Vec::new();
    for (name, full) in pinlab::model::explore::stress_programs() {
        for num in 1..=4 {
            let prog = prefix(&full, num, 4);
            let ops = prog.threads.iter().map(|(_, o)| o.len()).sum();
            let start = Instant::now();
            let (mut runs, mut states, mut last) = (0u32, 0usize, 0usize);
            while runs < 3 || start.elapsed().as_millis() < 100 {
                let outcome = explore(&prog, era, false).map_err(|source| Error::Explore {
                    program: name.to_string(),
                    source,
                })?;
                states += outcome.states;
                last = outcome.states;
                runs += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            out.push(ExplorerPoint {
                program: format!("{name} ({num}/4 of each thread)"),
                family: name.to_string(),
                era: era.name().to_string(),
                threads: prog.threads.len(),
                ops,
                states: last,
                explorations: runs,
                states_per_s: states as f64 / secs,
                ms_per_exploration: secs * 1e3 / f64::from(runs),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cutting a program keeps at least one op per thread and grows with the fraction; the
    /// explorer visits more states on the larger cut. A bug: an empty thread (a different
    /// program, not a smaller one) or the sizes not growing.
    #[test]
    fn prefixes_grow_and_explore() {
        let (_, full) = pinlab::model::explore::stress_programs().remove(0);
        let sizes: Vec<usize> = (1..=4)
            .map(|n| {
                prefix(&full, n, 4)
                    .threads
                    .iter()
                    .map(|(_, o)| o.len())
                    .sum()
            })
            .collect();
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
        let total: usize = full.threads.iter().map(|(_, o)| o.len()).sum();
        assert_eq!(sizes[3], total);
        let small = prefix(&full, 1, 4);
        assert!(small.threads.iter().all(|(_, o)| !o.is_empty()));
        let s = explore(&small, Era::MODERN, false).unwrap().states;
        let m = explore(&prefix(&full, 2, 4), Era::MODERN, false)
            .unwrap()
            .states;
        assert!(s < m, "{s} states at 1/4, {m} at 2/4");
    }
}
