//! The sweep: every cell of pin x action x memory kind x layout (and ordered pairs of actions
//! whose order matters), generated in memory, each compared with the model's prediction for
//! the running kernel's era.
//!
//! This module owns the generation (which cells exist, which cannot be built and why, a
//! deterministic subset for `--cells N`) and the comparison (the sweep's rows, its verdict table
//! and its test cases). It runs nothing itself: the cells run through `matrix::run`, each in its
//! own VMM process. It does not print.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Loaded, Origin};
use crate::identity::Identity;
use crate::matrix::{self, Row, Stop};
use crate::model::{model_verdict_for_live, Era, ModelVerdict};
use crate::results::{Case, Status};
use crate::scenario::{
    self, Action, DeviceSpec, Expect, HostSpec, MemoryKind, PerturbSpec, PinKind, Scenario,
    Verdict, VmSpec, WorkloadSpec,
};
use crate::units::ByteSize;

/// Where the DMA region sits in its huge pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// 1 MiB at the start of its huge page (the rest of the huge page is unpinned).
    Aligned,
    /// 2 MiB at offset 1 MiB: half in each of two huge pages.
    Straddling,
}

impl Placement {
    pub const ALL: [Placement; 2] = [Placement::Aligned, Placement::Straddling];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Aligned => "aligned",
            Placement::Straddling => "straddling",
        }
    }

    /// (region, region offset).
    fn region(self) -> (ByteSize, ByteSize) {
        match self {
            Placement::Aligned => (ByteSize::mib(1), ByteSize(0)),
            Placement::Straddling => (ByteSize::mib(2), ByteSize::mib(1)),
        }
    }
}

/// Ordered pairs whose order matters; each runs in both orders.
pub const PAIRS: [(Action, Action); 6] = [
    // A fork splits the PMD of a pinned THP; the mprotect then acts on PTEs.
    (Action::ForkParentWrite, Action::MprotectRoundtrip),
    (Action::SplitPmd, Action::Collapse),
    (Action::ForkParentWrite, Action::SplitPmd),
    (Action::ForkChildExit, Action::Dontneed),
    (Action::Mremap, Action::ForkParentWrite),
    (Action::UffdWp, Action::ForkParentWrite),
];

/// Rounds per cell: enough for the actions after round 1 and two rounds to see their effect.
pub const ROUNDS: u32 = 8;
/// Guest RAM per cell: the region's huge pages, a decoy huge page after them, and the guest.
pub const MEMORY: ByteSize = ByteSize::mib(16);
/// The swapfile a pageout cell creates (no swap is active by default here).
pub const SWAP: ByteSize = ByteSize::mib(32);

/// One cell of the sweep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub pin: PinKind,
    pub actions: Vec<Action>,
    pub memory: MemoryKind,
    pub placement: Placement,
}

impl Cell {
    /// `memory/placement/pin/action[+action]`: unique per cell.
    pub fn name(&self) -> String {
        let actions: Vec<&str> = self.actions.iter().map(|a| a.name()).collect();
        format!(
            "{}/{}/{}/{}",
            self.memory,
            self.placement.name(),
            self.pin,
            actions.join("+")
        )
    }

    /// Whether the cell takes the system lock (KSM, compaction, swap, split-folio's knobs).
    pub fn touches_system(&self) -> bool {
        self.actions.iter().any(|a| a.touches_system_knobs())
    }
}

/// The actions the sweep varies: all but ksm-shadow, a finding about KSM across processes that
/// runs once per scenario with its own order (configs/live-iouring-ksm-shadow-*.toml), not a
/// coherence cell.
pub fn swept_actions() -> impl Iterator<Item = Action> {
    Action::ALL.into_iter().filter(|&a| a != Action::KsmShadow)
}

/// Every cell: each single action on every pin, memory kind and placement (actions that take
/// the system lock straddle only on THP, to keep the locked cells few), then every pair of
/// `PAIRS` in both orders on every pin and memory kind, aligned. Ordered memory kind, then
/// placement, then pin, then actions, so an evenly spaced subset meets every axis.
pub fn cells() -> Vec<Cell> {
    let mut lists: Vec<Vec<Action>> = swept_actions().map(|a| vec![a]).collect();
    for (a, b) in PAIRS {
        lists.push(vec![a, b]);
        lists.push(vec![b, a]);
    }
    let mut out = Vec::new();
    for memory in MemoryKind::ALL {
        for placement in Placement::ALL {
            for pin in PinKind::ALL {
                for actions in &lists {
                    let cell = Cell {
                        pin,
                        actions: actions.clone(),
                        memory,
                        placement,
                    };
                    let pair = actions.len() > 1;
                    let straddling = placement == Placement::Straddling;
                    if straddling && (pair || (cell.touches_system() && memory != MemoryKind::Thp))
                    {
                        continue;
                    }
                    out.push(cell);
                }
            }
        }
    }
    out
}

/// `n` cells of `all`, evenly spaced (deterministic); all of them when `n >= all.len()`.
pub fn subset(all: Vec<Cell>, n: usize) -> Vec<Cell> {
    let total = all.len();
    if n >= total || n == 0 {
        return all;
    }
    let picks: std::collections::BTreeSet<usize> = (0..n).map(|j| j * total / n).collect();
    all.into_iter()
        .enumerate()
        .filter(|(i, _)| picks.contains(i))
        .map(|(_, c)| c)
        .collect()
}

/// Why a cell is not run.
#[derive(Debug, thiserror::Error)]
pub enum Unbuildable {
    #[error("{action} needs {what}")]
    Needs { action: Action, what: &'static str },
    #[error("not a valid scenario: {0}")]
    Invalid(#[from] scenario::Invalid),
    #[error("the model cannot replay it: {0}")]
    Model(#[source] crate::model::report::Error),
    #[error("the model predicts `{verdict}` on {era}{}: it says nothing about the data to compare", .detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoPrediction {
        era: Era,
        verdict: String,
        detail: Option<String>,
    },
}

/// What `action` needs that `cell` lacks, if anything: the live action would prove it did
/// nothing (an `error`), so the cell is not built.
fn lacks(cell: &Cell, action: Action) -> Option<&'static str> {
    match action {
        Action::SplitPmd | Action::SplitFolio | Action::Collapse
            if cell.memory == MemoryKind::Small =>
        {
            Some("THP-backed RAM: small pages have no PMD to split, no folio to split or collapse")
        }
        Action::Kirill if cell.placement == Placement::Straddling => {
            Some("the region inside the first half of its huge page (region + offset <= 1MiB): seed 002 unmaps the halves")
        }
        _ => None,
    }
}

/// The scenario of `cell`, expecting the model's verdict under `era`.
pub fn build(cell: &Cell, era: Era) -> Result<Scenario, Unbuildable> {
    if let Some((action, what)) = cell
        .actions
        .iter()
        .find_map(|&a| lacks(cell, a).map(|w| (a, w)))
    {
        return Err(Unbuildable::Needs { action, what });
    }
    let (region, region_offset) = cell.placement.region();
    let mut s = Scenario {
        name: format!("sweep/{}", cell.name()),
        about: "generated by pinlab sweep".into(),
        live: true,
        vm: VmSpec {
            memory: MEMORY,
            thp: cell.memory.thp(),
            memory_kind: Some(cell.memory),
            ..VmSpec::default()
        },
        device: DeviceSpec::with_pin(cell.pin),
        workload: WorkloadSpec {
            rounds: ROUNDS,
            region,
            region_offset,
            ..WorkloadSpec::default()
        },
        perturb: PerturbSpec {
            actions: cell.actions.clone(),
            ..PerturbSpec::default()
        },
        host: HostSpec {
            swap: cell.actions.contains(&Action::Pageout).then_some(SWAP),
        },
        trace: Default::default(),
        expect: Expect::default(),
        model: None,
    };
    let predicted = model_verdict_for_live(&s, era).map_err(Unbuildable::Model)?;
    s.expect.live = Some(match predicted.verdict {
        ModelVerdict::Coherent => Verdict::Coherent,
        ModelVerdict::Diverged => Verdict::Diverged,
        other => {
            return Err(Unbuildable::NoPrediction {
                era,
                verdict: other.key(),
                detail: predicted.detail,
            })
        }
    });
    s.validate()?;
    Ok(s)
}

/// A cell not run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub cell: String,
    pub memory: MemoryKind,
    pub why: String,
}

/// A whole sweep, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    /// Always "sweep".
    pub kind: &'static str,
    pub identity: Identity,
    /// The model era the cells were compared with.
    pub era: String,
    /// The cells that ran (a row's `expected` is the model's verdict).
    pub rows: Vec<SweepRow>,
    /// The cells that could not be built.
    pub not_built: Vec<Skipped>,
    pub seconds: f64,
    pub interrupted: Option<i32>,
}

/// One cell that ran.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub cell: Cell,
    #[serde(flatten)]
    pub row: Row,
}

impl SweepRow {
    /// The live verdict, `error` when the child gave none.
    pub fn verdict(&self) -> Verdict {
        self.row.verdict.unwrap_or(Verdict::Error)
    }

    /// The live kernel and the model disagree, or the lab failed.
    pub fn failed(&self) -> bool {
        !self.row.pass || self.verdict() == Verdict::Error
    }
}

/// The cells to run, built for `era`, and those that cannot be.
pub fn plan(cells: &[Cell], era: Era) -> (Vec<(Cell, Loaded)>, Vec<Skipped>) {
    let mut run = Vec::new();
    let mut not_built = Vec::new();
    for c in cells {
        match build(c, era) {
            Ok(scenario) => run.push((
                c.clone(),
                Loaded {
                    origin: Origin::Generated(c.name()),
                    scenario,
                },
            )),
            Err(e) => not_built.push(Skipped {
                cell: c.name(),
                memory: c.memory,
                why: e.to_string(),
            }),
        }
    }
    (run, not_built)
}

/// Runs `cells` under `era` with the `pinlab` binary `exe`, each in its own process, up to
/// `jobs` at once (traced to `trace`/<cell>.json when given).
pub fn run(
    cells: &[Cell],
    era: Era,
    exe: &std::path::Path,
    trace: Option<&std::path::Path>,
    stop: &Stop,
    jobs: usize,
    progress: impl FnMut(usize, usize, &Row),
) -> Result<Sweep, matrix::Error> {
    let start = std::time::Instant::now();
    let (planned, not_built) = plan(cells, era);
    let (cells, set): (Vec<Cell>, Vec<Loaded>) = planned.into_iter().unzip();
    let rows = matrix::run_each(&set, exe, trace, stop, jobs, progress)?
        .into_iter()
        .map(|(i, row)| SweepRow {
            cell: cells[i].clone(),
            row,
        })
        .collect();
    Ok(Sweep {
        kind: "sweep",
        identity: Identity::of_this_host(),
        era: era.name().to_string(),
        rows,
        not_built,
        seconds: start.elapsed().as_secs_f64(),
        interrupted: stop.stopped(),
    })
}

impl Sweep {
    /// The rows that fail the sweep.
    pub fn failures(&self) -> impl Iterator<Item = &SweepRow> {
        self.rows.iter().filter(|r| r.failed())
    }

    /// Cells per live verdict, per memory kind (`not built` counted apart).
    pub fn counts(&self) -> BTreeMap<MemoryKind, BTreeMap<String, usize>> {
        let mut t: BTreeMap<MemoryKind, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &self.rows {
            *t.entry(r.cell.memory)
                .or_default()
                .entry(r.verdict().to_string())
                .or_default() += 1;
        }
        for s in &self.not_built {
            *t.entry(s.memory)
                .or_default()
                .entry("not built".into())
                .or_default() += 1;
        }
        t
    }

    /// One parent case per memory kind, its cells nested (KTAP subtests, JUnit cases).
    pub fn cases(&self) -> Vec<Case> {
        MemoryKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let mut sub: Vec<Case> = Vec::new();
                for r in self.rows.iter().filter(|r| r.cell.memory == kind) {
                    let mut c = r.row.case();
                    c.name = r.cell.name();
                    if r.verdict() == Verdict::Error {
                        c.status = Status::Fail;
                    }
                    sub.push(c);
                }
                for s in self.not_built.iter().filter(|s| s.memory == kind) {
                    sub.push(Case::new(
                        &s.cell,
                        Status::Skip(format!("not built: {}", s.why)),
                    ));
                }
                (!sub.is_empty()).then(|| Case::parent(kind.name(), sub))
            })
            .collect()
    }
}

/// The terminal table: cells per verdict, per memory kind; then every disagreement and error.
pub fn table(s: &Sweep) -> String {
    let cols = ["coherent", "diverged", "skipped", "error", "not built"];
    let mut out = format!("{:<16}", "memory kind");
    for c in cols {
        out.push_str(&format!(" {c:>10}"));
    }
    out.push_str(&format!(" {:>10}\n", "total"));
    let counts = s.counts();
    let mut totals = [0usize; 5];
    for (kind, row) in &counts {
        out.push_str(&format!("{:<16}", kind.name()));
        for (i, c) in cols.iter().enumerate() {
            let n = row.get(*c).copied().unwrap_or(0);
            totals[i] += n;
            out.push_str(&format!(" {n:>10}"));
        }
        out.push_str(&format!(" {:>10}\n", row.values().sum::<usize>()));
    }
    out.push_str(&format!("{:<16}", "all"));
    for n in totals {
        out.push_str(&format!(" {n:>10}"));
    }
    out.push_str(&format!(" {:>10}\n", totals.iter().sum::<usize>()));
    let failures: Vec<&SweepRow> = s.failures().collect();
    if !failures.is_empty() {
        out.push_str("\ndisagreements with the model and lab errors:\n");
        for r in &failures {
            out.push_str(&format!(
                "  {:<60} model {:<9} live {:<9} {}\n",
                r.cell.name(),
                r.row.expected.map_or("-".into(), |v| v.to_string()),
                r.verdict(),
                r.row.evidence
            ));
        }
    }
    out.push_str(&format!(
        "{} cells ran against model {} in {:.1}s: {} disagree or failed; {} not built\n",
        s.rows.len(),
        s.era,
        s.seconds,
        failures.len(),
        s.not_built.len()
    ));
    if let Some(sig) = s.interrupted {
        out.push_str(&format!(
            "interrupted by signal {sig}: the rest did not run\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At least 250 cells, every name unique, and both orders of every pair.
    #[test]
    fn the_full_sweep_has_every_cell_once() {
        let all = cells();
        assert!(all.len() >= 250, "{} cells", all.len());
        let names: std::collections::BTreeSet<String> = all.iter().map(Cell::name).collect();
        assert_eq!(names.len(), all.len());
        for (a, b) in PAIRS {
            for pair in [vec![a, b], vec![b, a]] {
                assert!(all.iter().any(|c| c.actions == pair), "{pair:?}");
            }
        }
    }

    /// The quick subset meets every pin, action, memory kind and placement; a bug in the spacing
    /// would leave an axis out.
    #[test]
    fn a_subset_of_100_spans_every_axis() {
        let sub = subset(cells(), 100);
        assert_eq!(sub.len(), 100);
        for pin in PinKind::ALL {
            assert!(sub.iter().any(|c| c.pin == pin), "{pin}");
        }
        for kind in MemoryKind::ALL {
            assert!(sub.iter().any(|c| c.memory == kind), "{kind}");
        }
        for p in Placement::ALL {
            assert!(sub.iter().any(|c| c.placement == p), "{p:?}");
        }
        for a in swept_actions() {
            assert!(sub.iter().any(|c| c.actions.contains(&a)), "{a}");
        }
        assert!(sub.iter().any(|c| c.actions.len() == 2));
        assert_eq!(subset(cells(), 100), sub, "deterministic");
    }

    /// Every cell the modern era can predict builds into a valid scenario that expects the
    /// model's verdict and has the cell's memory kind and layout.
    #[test]
    fn cells_build_with_the_models_verdict() {
        let era = Era::for_kernel_release("6.18.0").expect("an era for 6.18");
        let (run, not_built) = plan(&cells(), era);
        assert!(
            run.len() >= 250,
            "{} built; not built: {not_built:?}",
            run.len()
        );
        // Small pages cannot split a PMD; the cell says so instead of running to an error.
        let small_split = not_built
            .iter()
            .find(|s| s.cell == "small/aligned/io-uring/split-pmd")
            .expect("small split-pmd is not built");
        assert!(
            small_split.why.contains("THP-backed"),
            "{}",
            small_split.why
        );
        assert!(!run
            .iter()
            .any(|(c, _)| c.memory == MemoryKind::Small && c.actions.contains(&Action::Collapse)));
        for (c, l) in &run {
            let s = &l.scenario;
            assert_eq!(s.vm.memory_kind(), c.memory);
            assert_eq!(
                s.layout().unwrap().straddles(),
                c.placement == Placement::Straddling
            );
            let m = model_verdict_for_live(s, era).unwrap().verdict;
            assert_eq!(s.expect.live.map(|v| v.to_string()), Some(m.key()));
            let text = toml::to_string(s).unwrap();
            let back: Scenario = toml::from_str(&text).unwrap();
            assert_eq!(&back, s, "round trip through the child's file");
        }
    }
}
