//! The `pinlab` command line: a thin front over the library.
//!
//! Exit status: 0 when every verdict meets its expectation (a skipped run says why and exits
//! 0), 1 when one does not, 2 for usage or config errors.

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use pinlab::scenario::{Action, GuestMode, PinKind, Scenario, Verdict};
use pinlab::units::{ByteSize, Duration};

#[derive(Parser)]
#[command(
    name = "pinlab",
    version,
    about = "A hypervisor-backed lab for DMA pinning on Linux: does the page a device pinned stay the page the VM sees?"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario file (default: the embedded configs/default.toml).
    config: Option<PathBuf>,
    /// Guest RAM size, e.g. 64MiB.
    #[arg(long)]
    memory: Option<ByteSize>,
    /// THP on guest RAM.
    #[arg(long, value_enum)]
    thp: Option<OnOff>,
    /// Pin mechanism: io-uring, vmsplice or mapping.
    #[arg(long)]
    pin: Option<PinKind>,
    /// Add a host action (repeatable), e.g. --perturb fork-parent-write.
    #[arg(long = "perturb")]
    perturb: Vec<Action>,
    /// Run the actions N times on a timer while DMA rounds run.
    #[arg(long)]
    storm: Option<u32>,
    /// DMA rounds.
    #[arg(long)]
    rounds: Option<u32>,
    /// Guest mode: dma, boot, spin (watchdog tests), hostile.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<GuestMode>,
    /// Watchdog timeout, e.g. 10s.
    #[arg(long)]
    watchdog: Option<Duration>,
    /// MADV_DONTFORK on guest RAM.
    #[arg(long)]
    dontfork: bool,
    /// The verdict this run must reach (overrides the scenario's).
    #[arg(long, value_parser = parse_verdict)]
    expect: Option<Verdict>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

fn parse_mode(s: &str) -> Result<GuestMode, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("unknown mode `{s}` (dma, boot, spin, hostile)"))
}

fn parse_verdict(s: &str) -> Result<Verdict, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("unknown verdict `{s}` (coherent, diverged, skipped, error)"))
}

#[derive(Subcommand)]
enum Command {
    /// Boot the guest and run a scenario on the live kernel.
    Run(RunArgs),
    /// Measure DMA throughput, IOMMU map cost and launch timings (ratios against raw baselines).
    Bench(BenchArgs),
    /// Report what this host can do, one line per capability.
    Host {
        #[arg(long)]
        json: bool,
    },
    /// Run every live scenario of a directory, each in a fresh VMM process.
    Matrix {
        /// Scenario directory.
        #[arg(default_value = "configs")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Replay scenarios under each kernel era's rules (the model executor: simulated).
    Replay {
        /// Scenario files (default: every scenario in configs/).
        scenarios: Vec<PathBuf>,
        /// Kernel era (repeatable): 2.6.29, 2.6.29+kosaki, 4.4, 4.5, 4.5+andrea-v1, 4.6, 5.8,
        /// 5.9, 5.19. Default: all.
        #[arg(long = "era")]
        eras: Vec<String>,
        /// Scenario directory when no file is given.
        #[arg(long, default_value = "configs")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// DMA region size, e.g. 256MiB (at most 1GiB).
    #[arg(long)]
    region: Option<ByteSize>,
    /// DMA descriptor size, e.g. 8MiB.
    #[arg(long)]
    descriptor: Option<ByteSize>,
    /// IOMMU map size on THP RAM (repeatable), e.g. 1GiB. Default: 1GiB and 8GiB.
    #[arg(long = "map-size")]
    map_sizes: Vec<ByteSize>,
    /// IOMMU map size on 4 KiB-page RAM (repeatable). Default: 1GiB.
    #[arg(long = "map-size-4k")]
    map_sizes_4k: Vec<ByteSize>,
    /// The engine's queue depth (SQEs in flight), as `[device] queue_depth`.
    #[arg(long)]
    queue_depth: Option<u32>,
    /// Timed trials per measurement.
    #[arg(long)]
    trials: Option<usize>,
    /// Spawns per launch measurement.
    #[arg(long)]
    launches: Option<usize>,
    /// Sections to run (repeatable): dma, map, launch. Default: all (none with --scale).
    #[arg(long, value_parser = ["dma", "map", "launch"])]
    only: Vec<String>,
    /// How each cost grows: map time, DMA throughput, launch time and explorer speed against
    /// the size of the work (markdown tables, or JSON with --json). Takes minutes; maps 8GiB.
    #[arg(long)]
    scale: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// `pinlab bench`: every error, a refused option or a failed measurement, is one line and
/// exit 2 (there is no verdict to meet or miss).
fn cmd_bench(args: BenchArgs) -> ExitCode {
    let mut o = bench::Options::default();
    o.region = args.region.map_or(o.region, |b| b.0);
    o.descriptor = args.descriptor.map_or(o.descriptor, |b| b.0);
    if !args.map_sizes.is_empty() {
        o.map_sizes = args.map_sizes.iter().map(|b| b.0).collect();
    }
    if !args.map_sizes_4k.is_empty() {
        o.map_sizes_4k = args.map_sizes_4k.iter().map(|b| b.0).collect();
    }
    o.queue_depth = args.queue_depth.unwrap_or(o.queue_depth);
    o.trials = args.trials.unwrap_or(o.trials);
    o.launches = args.launches.unwrap_or(o.launches);
    if !args.only.is_empty() || args.scale {
        let on = |s: &str| args.only.iter().any(|x| x == s);
        (o.dma, o.map, o.launch) = (on("dma"), on("map"), on("launch"));
    }
    o.scale = args.scale;
    let report = match bench::run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinlab bench: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing the report: {e}")),
        }
    } else {
        print!("{}", bench::render::render(&report));
    }
    ExitCode::SUCCESS
}

fn cmd_matrix(dir: &std::path::Path, json: bool) -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_else(|_| "pinlab".into());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let rows = pinlab::matrix::run(dir, &exe, |done, total, row| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!(
            "{} {}",
            row.scenario,
            row.verdict.map_or("model".into(), |v| v.to_string())
        ));
    });
    bar.finish_and_clear();
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return usage_error(e),
    };
    if json {
        match serde_json::to_string(&rows) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing the matrix: {e}")),
        }
    } else {
        print!("{}", pinlab::matrix::table(&rows));
    }
    if rows.iter().all(|r| r.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pinlab: {msg}");
    ExitCode::from(2)
}

fn apply(args: &RunArgs, s: &mut Scenario) {
    if let Some(m) = args.memory {
        s.vm.memory = m;
    }
    if let Some(t) = args.thp {
        s.vm.thp = matches!(t, OnOff::On);
    }
    if let Some(p) = args.pin {
        s.device.pin = p;
    }
    if !args.perturb.is_empty() {
        s.perturb.actions.extend(args.perturb.iter().copied());
    }
    if let Some(n) = args.storm {
        s.perturb.storm = n;
    }
    if let Some(r) = args.rounds {
        s.workload.rounds = r;
        s.perturb.after_round = s.perturb.after_round.min(r.max(1));
    }
    if let Some(m) = args.mode {
        s.workload.mode = m;
    }
    if let Some(w) = args.watchdog {
        s.vm.watchdog = w;
    }
    if args.dontfork {
        s.vm.dontfork = true;
    }
    if let Some(v) = args.expect {
        s.expect.live = Some(v);
    }
}

/// The expectation of an ad-hoc composition: what the model's modern era (the rules 6.18
/// follows) predicts for it, when it predicts a data verdict.
fn model_expectation(s: &Scenario) -> Option<Verdict> {
    use pinlab::model::{model_verdict_for_live, Era, ModelVerdict};
    match model_verdict_for_live(s, Era::MODERN).ok()?.verdict {
        ModelVerdict::Coherent => Some(Verdict::Coherent),
        ModelVerdict::Diverged => Some(Verdict::Diverged),
        _ => None,
    }
}

fn cmd_run(args: RunArgs, launch: Instant) -> ExitCode {
    let mut scenario = match pinlab::config::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let as_written = scenario.clone();
    apply(&args, &mut scenario);
    // A composition the scenario's author did not write (other pin, added actions, dontfork)
    // is not covered by its `expect.live`: ask the model, unless the user said.
    let composed = scenario.device.pin != as_written.device.pin
        || scenario.perturb.actions != as_written.perturb.actions
        || scenario.vm.dontfork != as_written.vm.dontfork;
    let mut expected_from = "scenario";
    if args.expect.is_some() {
        expected_from = "command line";
    } else if composed {
        if let Some(v) = model_expectation(&scenario) {
            scenario.expect.live = Some(v);
            expected_from = "model 5.19";
        }
    }
    if let Err(e) = scenario.validate() {
        return usage_error(format!("after command-line options: {e}"));
    }
    if !scenario.live {
        return usage_error(format!(
            "scenario {} is model-only (live = false): use `pinlab replay`",
            scenario.name
        ));
    }
    if let Err(e) = pinlab::host::install_restore_handlers() {
        return usage_error(format!(
            "installing the signal handlers that restore host knobs: {e}"
        ));
    }
    let _ = pinlab::host::recover_stale_journals();
    let mut hook = pinlab::perturb::Schedule::new(&scenario);
    let mut outcome = pinlab::runner::run(&scenario, launch, &mut hook);
    outcome.expected_from = expected_from.to_string();
    if args.json {
        match serde_json::to_string(&outcome) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing the report: {e}")),
        }
    } else {
        print!("{}", outcome.human());
    }
    pinlab::host::defer_to_pending_signal();
    if outcome.as_expected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let launch = Instant::now();
    // `pinlab replay | head` must end quietly, not panic on EPIPE. Every command prints its
    // results only after host state is restored and children are reaped, so dying on SIGPIPE
    // at that point leaves nothing behind.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PINLAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Run(args) => cmd_run(args, launch),
        Command::Bench(args) => cmd_bench(args),
        Command::Matrix { dir, json } => cmd_matrix(&dir, json),
        Command::Replay {
            scenarios,
            eras,
            dir,
            json,
        } => match pinlab::model::replay_command(&scenarios, &eras, json, &dir) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => usage_error(format!("{e:#}")),
        },
        Command::Host { json } => {
            let caps = pinlab::host::Caps::probe();
            if json {
                match caps.to_json() {
                    Ok(j) => println!("{j}"),
                    Err(e) => return usage_error(format!("serializing capabilities: {e}")),
                }
            } else {
                print!("{}", caps.render_text());
            }
            ExitCode::SUCCESS
        }
    }
}
