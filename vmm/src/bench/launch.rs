//! Launch timings: the `pinlab` binary spawned N times, and a run's startup steps in process.
//!
//! `run --json` (the default scenario) and `run --mode boot --json`, alternated, each child
//! always reaped (`Command::output` waits) and its own `timings_ms` read from its JSON; then the
//! default scenario's steps before its first guest instruction, timed here as the runner takes
//! them (guest RAM, prefault, VM creation, THP coverage).
//!
//! Owns the children it spawns and the guest RAM and VMs it creates; changes no host knob.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use pinlab::memory::GuestRam;
use serde::{Deserialize, Serialize};

use super::stat::{ms, Stat};

/// Errors of the launch benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--launches 0`.
    #[error("--launches must be at least 1")]
    Launches,
    /// The child could not be spawned.
    #[error("spawning `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// The child exited with a failure.
    #[error("`{cmd}` exited with {status}: {stderr}")]
    Child {
        cmd: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The child's report is not the JSON of a run.
    #[error("parsing the JSON of `{cmd}`: {source}")]
    ChildJson {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
    /// The embedded default scenario did not load.
    #[error("loading the default scenario: {0}")]
    Config(#[source] pinlab::config::Error),
    /// The default scenario did not lay out.
    #[error("laying out the default scenario: {0}")]
    Layout(#[source] pinlab::layout::Error),
    /// Guest RAM could not be mapped or faulted in.
    #[error("guest RAM of {size:#x} bytes: {source}")]
    GuestRam {
        size: u64,
        #[source]
        source: pinlab::memory::Error,
    },
    /// The VM could not be created.
    #[error("Vm::create: {0}")]
    VmCreate(#[source] pinlab::vm::Error),
    /// The THP coverage could not be read.
    #[error("pfn::thp_coverage: {0}")]
    Coverage(#[source] pinlab::pfn::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Launch timings, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchReport {
    pub pinlab: PathBuf,
    pub launches: usize,
    /// The first spawn (untimed warm-up: page cache, first THP allocation), on its own.
    pub first_spawn_ms: Option<f64>,
    /// `run --json`, the default scenario.
    pub run_spawn_to_exit: Option<Stat>,
    pub run_launch_to_guest_start: Option<Stat>,
    pub run_launch_to_first_dma: Option<Stat>,
    pub run_launch_to_guest_done: Option<Stat>,
    /// `run --mode boot --json`.
    pub boot_spawn_to_exit: Option<Stat>,
    pub boot_launch_to_guest_start: Option<Stat>,
    pub boot_launch_to_guest_done: Option<Stat>,
    /// `--version`: the cost of starting and ending the process alone.
    pub bare_spawn_to_exit: Option<Stat>,
    /// The default scenario's startup steps, in this process.
    pub steps: StartupSteps,
}

/// In-process timings of the steps before a run's first guest instruction, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct StartupSteps {
    pub memory: u64,
    pub guest_ram_new: Option<Stat>,
    pub populate: Option<Stat>,
    pub vm_create: Option<Stat>,
    pub thp_coverage: Option<Stat>,
    /// Teardown: the VM and vCPU fds closed, then guest RAM unmapped.
    pub vm_drop: Option<Stat>,
    pub ram_drop: Option<Stat>,
}

/// The part of a run's JSON report the benchmark reads.
#[derive(Deserialize)]
struct RunJson {
    #[serde(default)]
    timings_ms: RunTimings,
}

/// A run's own timings (`report::Timings`), milliseconds from its launch.
#[derive(Default, Deserialize)]
pub(super) struct RunTimings {
    pub launch_to_guest_start: Option<f64>,
    pub launch_to_first_dma: Option<f64>,
    pub launch_to_guest_done: Option<f64>,
}

/// One run of the binary with `args`: wall-clock spawn -> exit, milliseconds, and its stdout.
/// The child is always reaped (`output` waits); a failure carries its stderr.
pub(super) fn spawn_timed(pinlab: &Path, args: &[&str]) -> Result<(f64, Vec<u8>)> {
    let cmd = || format!("{} {}", pinlab.display(), args.join(" "));
    let t = Instant::now();
    let out = Command::new(pinlab)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { cmd: cmd(), source })?;
    let wall = ms(t);
    if !out.status.success() {
        return Err(Error::Child {
            cmd: cmd(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok((wall, out.stdout))
}

/// One run of the binary: wall-clock spawn -> exit and its timings.
pub(super) fn spawn_once(pinlab: &Path, args: &[&str]) -> Result<(f64, RunTimings)> {
    let (wall, stdout) = spawn_timed(pinlab, args)?;
    let run: RunJson = serde_json::from_slice(&stdout).map_err(|source| Error::ChildJson {
        cmd: format!("{} {}", pinlab.display(), args.join(" ")),
        source,
    })?;
    Ok((wall, run.timings_ms))
}

/// `pinlab --version`, wall-clock spawn -> exit, milliseconds (always reaped).
fn spawn_bare(pinlab: &Path) -> Result<f64> {
    spawn_timed(pinlab, &["--version"]).map(|(wall, _)| wall)
}

/// Runs the launch benchmark: `launches` spawns of each kind, `trials` in-process step trials.
pub fn run(pinlab: &Path, launches: usize, trials: usize) -> Result<LaunchReport> {
    if launches == 0 {
        return Err(Error::Launches);
    }
    let run_args = ["run", "--json"];
    let boot_args = ["run", "--mode", "boot", "--json"];
    let (first, _) = spawn_once(pinlab, &run_args)?;
    let mut run: [Vec<f64>; 4] = Default::default();
    let mut boot: [Vec<f64>; 3] = Default::default();
    let mut bare = Vec::new();
    for _ in 0..launches {
        let (wall, t) = spawn_once(pinlab, &run_args)?;
        run[0].push(wall);
        run[1].extend(t.launch_to_guest_start);
        run[2].extend(t.launch_to_first_dma);
        run[3].extend(t.launch_to_guest_done);
        let (wall, t) = spawn_once(pinlab, &boot_args)?;
        boot[0].push(wall);
        boot[1].extend(t.launch_to_guest_start);
        boot[2].extend(t.launch_to_guest_done);
        bare.push(spawn_bare(pinlab)?);
    }
    Ok(LaunchReport {
        pinlab: pinlab.to_path_buf(),
        launches,
        first_spawn_ms: Some(first),
        run_spawn_to_exit: Stat::of(&run[0]),
        run_launch_to_guest_start: Stat::of(&run[1]),
        run_launch_to_first_dma: Stat::of(&run[2]),
        run_launch_to_guest_done: Stat::of(&run[3]),
        boot_spawn_to_exit: Stat::of(&boot[0]),
        boot_launch_to_guest_start: Stat::of(&boot[1]),
        boot_launch_to_guest_done: Stat::of(&boot[2]),
        bare_spawn_to_exit: Stat::of(&bare),
        steps: startup_steps(trials)?,
    })
}

/// The default scenario's steps before its first guest instruction, as the runner takes them.
fn startup_steps(trials: usize) -> Result<StartupSteps> {
    let s = pinlab::config::load(None).map_err(Error::Config)?;
    let layout = s.layout().map_err(Error::Layout)?;
    let boot = pinlab::runner::boot_info(&s, &layout);
    let size = s.vm.memory.0;
    let ram_error = |source| Error::GuestRam { size, source };
    let mut v: [Vec<f64>; 6] = Default::default();
    for trial in 0..=trials {
        let t = Instant::now();
        let ram = GuestRam::new(size, s.vm.thp, s.vm.dontfork).map_err(ram_error)?;
        let new_ms = ms(t);
        let t = Instant::now();
        ram.populate().map_err(ram_error)?;
        let populate_ms = ms(t);
        let (hva, ram_size) = (ram.hva(), ram.size());
        // A second owner of guest RAM, so dropping the VM is timed apart from unmapping RAM.
        let ram = Arc::new(RwLock::new(ram));
        let t = Instant::now();
        let vm = pinlab::vm::Vm::create(ram.clone(), &boot).map_err(Error::VmCreate)?;
        let create_ms = ms(t);
        let t = Instant::now();
        let cov = pinlab::pfn::thp_coverage(hva, ram_size).map_err(Error::Coverage)?;
        std::hint::black_box(cov);
        let cov_ms = ms(t);
        // The vCPU and the VM (`Vm`'s field order), then guest RAM.
        let t = Instant::now();
        drop(vm);
        let vm_drop_ms = ms(t);
        let t = Instant::now();
        drop(ram);
        let ram_drop_ms = ms(t);
        if trial > 0 {
            let x = [
                new_ms,
                populate_ms,
                create_ms,
                cov_ms,
                vm_drop_ms,
                ram_drop_ms,
            ];
            for (dst, x) in v.iter_mut().zip(x) {
                dst.push(x);
            }
        }
    }
    Ok(StartupSteps {
        memory: size,
        guest_ram_new: Stat::of(&v[0]),
        populate: Stat::of(&v[1]),
        vm_create: Stat::of(&v[2]),
        thp_coverage: Stat::of(&v[3]),
        vm_drop: Stat::of(&v[4]),
        ram_drop: Stat::of(&v[5]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timings are read from what the library's run report really serializes; a skipped
    /// run's (no timings) reads as no samples, not an error. A bug: a key renamed in
    /// `report::Timings` silently read as absent in every launch.
    #[test]
    fn run_json_timings_are_read_from_the_run_report() {
        let s = pinlab::config::load(None).unwrap();
        let mut o = pinlab::report::Outcome::empty(&s);
        o.timings_ms.launch_to_guest_start = Some(1.25);
        o.timings_ms.launch_to_first_dma = Some(2.0);
        o.timings_ms.launch_to_guest_done = Some(3.5);
        let r: RunJson = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        let t = r.timings_ms;
        assert_eq!(
            (
                t.launch_to_guest_start,
                t.launch_to_first_dma,
                t.launch_to_guest_done
            ),
            (Some(1.25), Some(2.0), Some(3.5))
        );
        let skipped = pinlab::report::Outcome::skipped(&s, "no KVM".into());
        let r: RunJson = serde_json::from_str(&serde_json::to_string(&skipped).unwrap()).unwrap();
        assert_eq!(r.timings_ms.launch_to_guest_done, None);
    }

    #[test]
    fn zero_launches_are_refused_before_spawning() {
        let r = run(Path::new("/nonexistent/pinlab"), 0, 1);
        assert!(matches!(r, Err(Error::Launches)), "{r:?}");
    }
}
