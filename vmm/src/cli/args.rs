//! The command line's shape: every subcommand and flag, parsed by clap. Nothing here runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use pinlab::scenario::{Action, GuestMode, PinKind, Verdict};
use pinlab::units::{ByteSize, Duration};

#[derive(Parser)]
#[command(
    name = "pinlab",
    version,
    about = "A hypervisor-backed lab for DMA pinning on Linux: does the page a device pinned stay the page the VM sees?"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Scenario file (default: the embedded configs/default.toml).
    pub config: Option<PathBuf>,
    /// Guest RAM size, e.g. 64MiB.
    #[arg(long)]
    pub memory: Option<ByteSize>,
    /// THP on guest RAM.
    #[arg(long, value_enum)]
    pub thp: Option<OnOff>,
    /// Pin mechanism: io-uring, vmsplice, mapping, or vfio (needs --vfio-device).
    #[arg(long)]
    pub pin: Option<PinKind>,
    /// The VFIO device for --pin vfio: a PCI address (0000:01:00.0), a VFIO group
    /// (/dev/vfio/N) or an iommufd device cdev (/dev/vfio/devices/vfioN).
    #[arg(long = "vfio-device", value_name = "ADDR")]
    pub vfio_device: Option<String>,
    /// Add a host action (repeatable), e.g. --perturb fork-parent-write.
    #[arg(long = "perturb")]
    pub perturb: Vec<Action>,
    /// Run the actions N times on a timer while DMA rounds run.
    #[arg(long)]
    pub storm: Option<u32>,
    /// Interval between storm repetitions, e.g. 5ms.
    #[arg(long)]
    pub interval: Option<Duration>,
    /// Run the actions at the phase marker after this round.
    #[arg(long)]
    pub after_round: Option<u32>,
    /// DMA rounds.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// DMA region size, e.g. 1MiB.
    #[arg(long)]
    pub region: Option<ByteSize>,
    /// Offset of the DMA region inside its 2 MiB huge page, e.g. 1MiB.
    #[arg(long)]
    pub region_offset: Option<ByteSize>,
    /// Create, enable and finally remove a swapfile of this size for the run.
    #[arg(long)]
    pub swap: Option<ByteSize>,
    /// Guest mode: dma, boot, spin (watchdog tests), hostile, console-flood, phase-repeat, fuzz
    /// (seeded random hostile traffic with valid traffic checked; see --ops, --seed).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<GuestMode>,
    /// Fuzz mode: hostile operations to send (default 100000).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Seed of the guest's patterns and of the fuzz mode's PRNG (the same seed sends the same
    /// operations).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Watchdog timeout, e.g. 10s.
    #[arg(long)]
    pub watchdog: Option<Duration>,
    /// MADV_DONTFORK on guest RAM.
    #[arg(long)]
    pub dontfork: bool,
    /// The verdict this run must reach (overrides the scenario's and the model's).
    #[arg(long, value_parser = parse_verdict)]
    pub expect: Option<Verdict>,
    /// The kernel era whose model prediction is the expectation of an ad-hoc composition
    /// (default: the era of the running kernel).
    #[arg(long)]
    pub era: Option<String>,
    /// List the host actions: what each needs and what evidence it leaves; then exit.
    #[arg(long)]
    pub list_actions: bool,
    /// Trace the run: Chrome trace-event JSON to FILE (open it in ui.perfetto.dev), the raw
    /// tracefs text to FILE.ftrace.txt (docs/tracing.md).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report of the run to this file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<GuestMode, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
        format!("unknown mode `{s}` (dma, boot, spin, hostile, console-flood, phase-repeat, fuzz)")
    })
}

fn parse_verdict(s: &str) -> Result<Verdict, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("unknown verdict `{s}` (coherent, diverged, skipped, error)"))
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for a terminal.
    Human,
    /// One JSON document.
    Json,
    /// One JSON object per scenario as it finishes.
    Jsonl,
    /// KTAP version 1 (kselftest, LKFT, KernelCI).
    Ktap,
    /// JUnit XML (GitLab, Jenkins).
    Junit,
}

#[derive(clap::Args, Clone, Copy)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, conflicts_with = "json")]
    pub format: Option<Format>,
    /// Shorthand for --format json.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    pub fn format(&self) -> Format {
        match (self.format, self.json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) => Format::Human,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Boot the guest and run a scenario on the live kernel.
    Run(RunArgs),
    /// Measure DMA throughput, IOMMU map cost and launch timings (ratios against raw baselines).
    Bench(BenchArgs),
    /// Report what this host can do, one line per capability.
    Host {
        #[arg(long)]
        json: bool,
    },
    /// Run every live scenario (of DIR, or the embedded set), each in a fresh VMM process.
    Matrix {
        /// Scenario directory (default: the scenarios embedded in the binary).
        dir: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArgs,
        /// Also write a self-contained HTML report of the matrix to this file.
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
        /// Trace every scenario: DIR/<scenario>.json (and .json.ftrace.txt), as `run --trace`.
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
        /// Run up to N scenarios at once (default: one per CPU). Those that change system-wide
        /// state still run one at a time (the system lock).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
    },
    /// Generate every cell of pin x action x memory kind x layout, run each live in its own VMM
    /// process, and compare each with the model's prediction for the running kernel's era.
    Sweep(SweepArgs),
    /// Replay scenarios under each kernel era's rules (the model executor: simulated).
    Replay {
        /// Scenario files or embedded scenario names (default: every scenario of --dir, or the
        /// embedded set).
        scenarios: Vec<PathBuf>,
        /// Kernel era (repeatable): its name (e.g. `6.1+`) or any kernel version it covers
        /// (`4.4`, `6.18`). Default: all.
        #[arg(long = "era")]
        eras: Vec<String>,
        /// Scenario directory when no scenario is given (default: the embedded set).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArgs,
        /// Also write a self-contained HTML report (the era x scenario grid) to this file.
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
    },
    /// Write a kselftest package to DIR: run_kselftest.sh runs pinlab's matrix from it as is.
    Kselftest {
        /// The directory to write (created if missing).
        dir: PathBuf,
    },
    /// Compare two results (runs, matrices or sweeps): verdict changes, regressions first,
    /// and the evidence that changed. Exit 1 on a regression.
    Diff {
        /// The baseline result (JSON of `run --json`, `matrix --format json`, `sweep`).
        a: PathBuf,
        /// The result compared against it.
        b: PathBuf,
        /// Output format: human, json or ktap.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// ksm-shadow's helper process (re-executed by the VMM, not for users): stdin is a memfd of
    /// PAGES pages; it holds COPIES copies of each and as many control pages, mergeable.
    #[command(name = "__ksm-shadow", hide = true)]
    KsmShadowHelper {
        #[arg(long)]
        pages: u64,
        #[arg(long)]
        copies: u64,
    },
}

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Run N cells, evenly spaced over the full sweep (deterministic; every axis is met).
    #[arg(long, value_name = "N")]
    pub cells: Option<usize>,
    /// Compare with this model era (its name or a kernel version) instead of the running
    /// kernel's.
    #[arg(long)]
    pub era: Option<String>,
    /// List the cells (and why any cannot be built) without running them.
    #[arg(long)]
    pub list: bool,
    /// Trace every cell: DIR/<cell>.json (and .json.ftrace.txt), as `run --trace`.
    #[arg(long, value_name = "DIR")]
    pub trace: Option<PathBuf>,
    /// Run up to N cells at once (default: one per CPU). Those that change system-wide state
    /// still run one at a time (the system lock).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Also write a self-contained HTML report of the sweep to this file.
    #[arg(long, value_name = "FILE.html", conflicts_with = "list")]
    pub report: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// DMA region size, e.g. 256MiB (at most 1GiB).
    #[arg(long)]
    pub region: Option<ByteSize>,
    /// DMA descriptor size, e.g. 8MiB.
    #[arg(long)]
    pub descriptor: Option<ByteSize>,
    /// IOMMU map size on THP RAM (repeatable), e.g. 1GiB. Default: 1GiB and 8GiB.
    #[arg(long = "map-size")]
    pub map_sizes: Vec<ByteSize>,
    /// IOMMU map size on 4 KiB-page RAM (repeatable). Default: 1GiB.
    #[arg(long = "map-size-4k")]
    pub map_sizes_4k: Vec<ByteSize>,
    /// The engine's queue depth (SQEs in flight), as `[device] queue_depth`.
    #[arg(long)]
    pub queue_depth: Option<u32>,
    /// Timed trials per measurement.
    #[arg(long)]
    pub trials: Option<usize>,
    /// Spawns per launch measurement.
    #[arg(long)]
    pub launches: Option<usize>,
    /// Sections to run (repeatable): dma, map, launch, trace (DMA throughput with and without
    /// host tracing). Default: all (none with --scale).
    #[arg(long, value_parser = ["dma", "map", "launch", "trace"])]
    pub only: Vec<String>,
    /// How each cost grows: map time, DMA throughput, launch time, sweep wall time and explorer
    /// speed against the size of the work (markdown tables, or JSON with --json). Takes
    /// minutes (it runs the whole sweep once, and subsets of it); maps 8GiB.
    #[arg(long)]
    pub scale: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report (goals, figures, and with --scale the curves as
    /// SVG charts) to this file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}
