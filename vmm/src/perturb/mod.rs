//! Host actions on guest RAM, run at exact guest phases (or as a storm on a timer), each
//! leaving evidence that it really happened.
//!
//! `Schedule` is the live executor's phase hook: at the phase marker after round
//! `perturb.after_round` it runs the scenario's actions in order, on the vCPU thread, with the
//! guest stopped; an action may leave a `Finish` to run at a later phase (a fork child released
//! after the guest's next round, a userfaultfd handler stopped at the end). Each action records
//! /proc/vmstat deltas, the region's PFNs and THP flags before and after, and its own details.
//! An action that provably did nothing (its syscall failed, no counter moved, no PFN changed)
//! fails the run as `error`, never as a pass. Each effect check judges the action's own effect
//! against the state the earlier actions left (`observe` reads it): one that finds its work
//! already done, a PMD an earlier fork split, says so (`effect: already-done`) instead of failing.
//!
//! This module must not touch the device state except through `Devices` (the IOMMU's rebase
//! after a move), and it must leave the host as it found it: knob guards restore on drop, fork
//! children are registered with `host` so a signal reaps them.

mod fork;
mod ksm_shadow;
mod observe;
mod reclaim;
mod remap;
mod thp;
mod uffd;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::addr::{Gpa, Hva, Pfn, HUGE_PAGE_SIZE, PAGE_SIZE};
use crate::devices::Devices;
use crate::evidence::{
    ActionEvidence as Evidence, Details, Effect, HugePage, Interval, LaterHalf, PageList, StormRun,
    Vma,
};
use crate::host::{self, VmstatSnapshot};
use crate::layout::Layout;
use crate::phase::{PhaseHook, RunEnv};
use crate::scenario::{Action, Scenario};
use crate::timeline::{GuestPhase, Mono, Timeline, What};
use crate::vm::Vm;

/// Why an action could not be judged to have happened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {call} failed: {source}")]
    Syscall {
        action: Action,
        call: &'static str,
        source: std::io::Error,
    },
    #[error("{action} provably did nothing: {why}")]
    NoEffect { action: Action, why: String },
    #[error("{action}: {why}")]
    Failed { action: Action, why: String },
    #[error("the storm thread panicked")]
    StormPanicked,
    #[error(
        "the storm ran 0 of {planned} iterations before the rounds ended: raise workload.rounds or shorten perturb.interval"
    )]
    StormDidNothing { planned: u32 },
    #[error("spawning the storm thread: {0}")]
    StormSpawn(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn last_os(action: Action, call: &'static str) -> Error {
    Error::Syscall {
        action,
        call,
        source: std::io::Error::last_os_error(),
    }
}

/// The part of an action that runs at a later phase.
type Finish = Box<dyn FnOnce() -> Result<LaterHalf> + Send>;

/// What an action needs: guest RAM (through the devices), the VM (to re-point RAM), the
/// scenario and its layout (computed once by the runner).
#[derive(Clone)]
pub struct Ctx {
    pub devices: Arc<Devices>,
    pub vm: Arc<Vm>,
    pub scenario: Arc<Scenario>,
    pub layout: Layout,
}

/// The region's pages as the host maps them now.
#[derive(Clone, Debug)]
pub struct Probe {
    pub hva: Hva,
    pub pfns: Vec<Option<Pfn>>,
    pub thp: usize,
}

impl Ctx {
    /// The DMA region's host address and length now (guest RAM may have moved).
    pub fn region(&self) -> (Hva, u64) {
        let r = self.layout.region;
        let hva = self
            .hva_of(r.start, r.len)
            .expect("the layout was validated against guest RAM");
        (hva, r.len)
    }

    /// The host address of a GPA range now, or `None` outside guest RAM.
    pub fn hva_of(&self, gpa: Gpa, len: u64) -> Option<Hva> {
        let ram = self.devices.ram.read().unwrap_or_else(|p| p.into_inner());
        ram.translate(gpa, len).ok()
    }

    /// The 2 MiB huge pages the region touches, as host addresses: `[first, end)`.
    pub fn region_huge_range(&self) -> (Hva, u64) {
        let h = self.layout.huge_pages;
        (
            self.hva_of(h.start, h.len)
                .expect("huge pages of the region are in RAM"),
            h.len,
        )
    }

    /// A 4 KiB page inside the region's huge pages but outside the region, if there is one.
    pub fn page_beside_region(&self) -> Option<Hva> {
        self.hva_of(self.layout.beside?, PAGE_SIZE)
    }

    /// A huge page of guest RAM away from the region, if RAM has one: the control for actions
    /// that must act on unpinned memory (KSM merges it, reclaim swaps it).
    pub fn decoy_huge_page(&self) -> Option<Hva> {
        self.hva_of(self.layout.decoy?, HUGE_PAGE_SIZE)
    }

    pub fn probe(&self) -> Probe {
        let (hva, len) = self.region();
        match crate::pfn::snapshot(hva, len) {
            Ok(s) => Probe {
                hva,
                pfns: s.pfns(),
                thp: s.summary.thp as usize,
            },
            Err(e) => {
                tracing::warn!("region snapshot failed: {e}");
                Probe {
                    hva,
                    pfns: Vec::new(),
                    thp: 0,
                }
            }
        }
    }
}

/// What one action returns: its details, maybe a later half, and the judgement of its effect.
pub struct Done {
    pub details: Details,
    pub finish: Option<Finish>,
    /// "Provably did nothing", judged from the state before and the observed change: `Some(why)`
    /// fails the run.
    pub no_effect: Option<String>,
}

impl Done {
    fn new(details: Details) -> Self {
        Done {
            details,
            finish: None,
            no_effect: None,
        }
    }

    /// Details and the judgement of their effect check (`Broken` fails the action now).
    fn judged(action: Action, details: Details, judged: Judged) -> Result<Self> {
        if let Judged::Broken(why) = judged {
            return Err(Error::Failed {
                action,
                why: why.to_string(),
            });
        }
        Ok(Done {
            details,
            finish: None,
            no_effect: judged.no_effect().map(str::to_string),
        })
    }
}

/// An effect check's answer, given the state before the action and what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    /// The action did what it names.
    Done,
    /// The state before already had what the action makes: nothing left to change.
    AlreadyDone,
    /// The state before called for a change and none came: the run fails as `error`.
    NoEffect(&'static str),
    /// The action left a state it must not (a protection not restored): the run fails.
    Broken(&'static str),
}

impl Judged {
    /// The effect recorded in the evidence (`Done` for a `NoEffect`, which fails the run and
    /// leaves no evidence).
    fn effect(self) -> Effect {
        match self {
            Judged::AlreadyDone => Effect::AlreadyDone,
            Judged::Done | Judged::NoEffect(_) | Judged::Broken(_) => Effect::Done,
        }
    }

    fn no_effect(self) -> Option<&'static str> {
        match self {
            Judged::NoEffect(why) => Some(why),
            _ => None,
        }
    }
}

/// Runs one action with before/after measurement.
pub fn run_action(
    ctx: &Ctx,
    action: Action,
    after_round: u32,
    storm_iteration: Option<u32>,
) -> Result<(Evidence, Option<Finish>)> {
    let start = Mono::now();
    let before = ctx.probe();
    let vm_before = VmstatSnapshot::take().ok();
    let done = match action {
        Action::ForkParentWrite | Action::ForkChildWrite | Action::ForkChildExit => {
            fork::fork_action(ctx, action)?
        }
        Action::Kirill => fork::kirill(ctx)?,
        Action::Bias1024 => fork::bias_1024(ctx)?,
        Action::MprotectRoundtrip => thp::mprotect_roundtrip(ctx)?,
        Action::SplitPmd => thp::split_pmd(ctx)?,
        Action::SplitFolio => thp::split_folio(ctx)?,
        Action::Collapse => thp::collapse(ctx)?,
        Action::Ksm => reclaim::ksm(ctx)?,
        Action::KsmShadow => ksm_shadow::ksm_shadow(ctx)?,
        Action::Compact => reclaim::compact(ctx)?,
        Action::Pageout => reclaim::pageout(ctx)?,
        Action::Mremap | Action::MremapDontunmap => {
            remap::mremap(ctx, action == Action::MremapDontunmap)?
        }
        Action::Dontneed => remap::dontneed(ctx)?,
        Action::UffdWp => uffd::write_protect(ctx)?,
    };
    let after = ctx.probe();
    let vmstat = match (vm_before, VmstatSnapshot::take().ok()) {
        (Some(b), Some(a)) => host::delta(&b, &a)
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .collect(),
        _ => BTreeMap::new(),
    };
    let interval = Interval::since(start);
    let changed = crate::pfn::diff_pfns(&before.pfns, &after.pfns);
    if let Some(why) = done.no_effect {
        return Err(Error::NoEffect { action, why });
    }
    Ok((
        Evidence {
            action,
            after_round,
            storm_iteration,
            summary: done.details.to_string(),
            interval,
            vmstat,
            region_pfns_changed: changed.len(),
            region_pages_changed: PageList::new(&changed),
            region_thp_pages_before: before.thp,
            region_thp_pages_after: after.thp,
            details: done.details,
            finish: None,
        },
        done.finish,
    ))
}

/// Whether one PMD maps all of the 2 MiB huge page at `huge` (2 MiB aligned), from
/// PAGEMAP_SCAN: for the runner's `pte-mapped-thp` check, which acts before any action does.
pub fn pmd_mapped(huge: Hva) -> std::io::Result<bool> {
    observe::pmd_mapped(huge)
}

/// Why this host cannot run the scenario's actions, in one line, or `None`. Checked before
/// the VM is built.
pub fn preflight(s: &Scenario) -> Option<String> {
    let need = |a: Action| match a {
        Action::Ksm | Action::KsmShadow => Some("ksm"),
        Action::UffdWp => Some("userfaultfd"),
        _ => None,
    };
    // The probe touches tracefs, /dev/kvm and a dozen files (milliseconds of a short run's
    // launch): only when an action needs one of its answers.
    let caps = s
        .perturb
        .actions
        .iter()
        .any(|&a| need(a).is_some())
        .then(host::Caps::probe);
    for &a in &s.perturb.actions {
        if let (Some(cap), Some(caps)) = (need(a), &caps) {
            if !caps.available(cap) {
                let detail = caps.get(cap).map(|c| c.detail.clone()).unwrap_or_default();
                return Some(format!("{a} needs {cap}: {detail}"));
            }
        }
        if a == Action::Pageout && s.host.swap.is_none() {
            let active = host::active_swaps().map(|v| !v.is_empty()).unwrap_or(false);
            if !active {
                return Some(
                    "pageout needs swap: none is active and the scenario sets no [host] swap"
                        .to_string(),
                );
            }
        }
    }
    None
}

/// One storm iteration of `a`. At a phase the guest is between rounds, and its next round writes
/// every region page afresh; a storm lands mid-round, so an action that destroys the region's
/// data (KSM's content fill, a discard) would make the guest's own check fail whatever the
/// kernel did with the pins. For those, the device is quiesced (its state lock held: no DMA
/// batch runs) and the region's data as the guest sees it is saved before the action and
/// written back after it, through the VMM's mapping, so the guest and a device that follows the
/// mapping see their data again, while a device that holds the old pages no longer matches.
/// The vCPU is already paused for these (`Action::races_guest` or the storm's pause).
fn storm_action(ctx: &Ctx, a: Action, iteration: u32) -> Result<(Evidence, Option<Finish>)> {
    if !a.destroys_guest_data() {
        return run_action(ctx, a, 0, Some(iteration));
    }
    let _quiet = ctx.devices.state();
    let (hva, len) = ctx.region();
    let mut saved = vec![0u8; len as usize];
    // SAFETY: [hva, hva+len) is the region in guest RAM, mapped for the run; the vCPU is paused
    // and the device quiesced (lock held above), so nothing writes it while it is copied.
    unsafe { std::ptr::copy_nonoverlapping(hva.as_ptr(), saved.as_mut_ptr(), saved.len()) };
    let result = run_action(ctx, a, 0, Some(iteration));
    // The action may have moved nothing, but the region's address is the same: re-translate
    // anyway (an mremap in the same storm re-points RAM, under the RAM write lock).
    let (hva, _) = ctx.region();
    // SAFETY: as above; the write goes through the VMM's mapping into whatever pages guest RAM
    // maps now (faulting discarded ones back in), exactly what a guest write would do.
    unsafe { std::ptr::copy_nonoverlapping(saved.as_ptr(), hva.as_ptr(), saved.len()) };
    result
}

/// The live executor's phase hook for a scenario's perturbations.
pub struct Schedule {
    actions: Vec<Action>,
    after_round: u32,
    rounds: u32,
    storm: u32,
    interval: Duration,
    /// Later halves, each with the round after which it runs (`u32::MAX`: at the end).
    pending: Vec<(u32, usize, Finish)>,
    evidence: Vec<Evidence>,
    storm_thread: Option<Storm>,
    storm_run: Option<StormRun>,
    storm_error: Option<Error>,
    /// Built at the first phase from the run's environment, then shared by every action.
    ctx: Option<Ctx>,
    timeline: Option<Arc<Timeline>>,
}

/// A storm running on its own thread: its evidence, how it went, and the error that ended it.
struct Storm {
    stop: Arc<StormStop>,
    handle: std::thread::JoinHandle<(Vec<Evidence>, StormRun, Option<Error>)>,
}

/// Tells a storm to stop, waking it from its interval sleep (so the end of the rounds is never
/// delayed by a long interval, nor blamed on the guest).
#[derive(Debug, Default)]
struct StormStop {
    flag: AtomicBool,
    lock: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
}

impl StormStop {
    fn stop(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.flag.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Sleeps `d` unless told to stop first; true when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.flag.load(Ordering::Acquire) {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .wake
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Schedule {
    pub fn new(s: &Scenario) -> Self {
        Schedule {
            actions: s.perturb.actions.clone(),
            after_round: s.perturb.after_round,
            rounds: s.workload.rounds,
            storm: s.perturb.storm,
            interval: s.perturb.interval.0,
            pending: Vec::new(),
            evidence: Vec::new(),
            storm_thread: None,
            storm_run: None,
            storm_error: None,
            ctx: None,
            timeline: None,
        }
    }

    fn ctx(&mut self, env: &RunEnv<'_>) -> Ctx {
        self.timeline.get_or_insert_with(|| env.timeline.clone());
        self.ctx
            .get_or_insert_with(|| Ctx {
                devices: env.devices.clone(),
                vm: env.vm.clone(),
                scenario: env.scenario.clone(),
                layout: *env.layout,
            })
            .clone()
    }

    fn run_pending(&mut self, upto_round: u32) -> Result<()> {
        let mut keep = Vec::new();
        let mut first_err = None;
        for (round, idx, finish) in std::mem::take(&mut self.pending) {
            if round > upto_round {
                keep.push((round, idx, finish));
                continue;
            }
            match finish() {
                Ok(v) => {
                    self.evidence[idx].finish = Some(v);
                    if let Some(t) = &self.timeline {
                        t.instant(
                            "vcpu",
                            What::ActionFinish {
                                action: self.evidence[idx].action,
                                evidence: idx,
                            },
                        );
                    }
                }
                // Every later half still runs (each reaps a child or stops a handler).
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.pending = keep;
        first_err.map_or(Ok(()), Err)
    }

    fn start_storm(&mut self, env: &RunEnv<'_>) {
        let ctx = self.ctx(env);
        let timeline = env.timeline.clone();
        let vcpu = env.vcpu.clone();
        let stop = Arc::new(StormStop::default());
        let stop_t = stop.clone();
        let (actions, n, interval) = (self.actions.clone(), self.storm, self.interval);
        let handle = std::thread::Builder::new()
            .name("pinlab-storm".into())
            .spawn(move || {
                let mut out = Vec::new();
                let mut run = StormRun {
                    planned: n,
                    ran: 0,
                    paused_vcpu: 0,
                    ended: "all-ran",
                };
                for i in 1..=n {
                    // The interval sleep ends early when the rounds end.
                    if stop_t.sleep(interval) {
                        run.ended = "rounds-ended";
                        break;
                    }
                    let pause_it = actions
                        .iter()
                        .any(|a| a.races_guest() || a.destroys_guest_data());
                    // Held for the whole iteration: the guest does not run while these act.
                    let _paused = if pause_it {
                        match vcpu.pause(&stop_t.flag) {
                            Ok(p) => Some(p),
                            Err(_) => {
                                run.ended = "rounds-ended";
                                break;
                            }
                        }
                    } else {
                        None
                    };
                    for &a in &actions {
                        let start = Mono::now();
                        let result = storm_action(&ctx, a, i).and_then(|(mut ev, finish)| {
                            if let Some(f) = finish {
                                ev.finish = Some(f()?);
                            }
                            Ok(ev)
                        });
                        timeline.span(
                            start,
                            "storm",
                            What::Action {
                                action: a,
                                iteration: Some(i),
                                evidence: result.as_ref().ok().map(|_| out.len()),
                                error: result.as_ref().err().map(|e| e.to_string()),
                            },
                        );
                        match result {
                            Ok(ev) => out.push(ev),
                            Err(e) => {
                                run.ended = "failed";
                                return (out, run, Some(e));
                            }
                        }
                    }
                    run.ran = i;
                    run.paused_vcpu += u32::from(pause_it);
                }
                (out, run, None)
            });
        match handle {
            Ok(handle) => self.storm_thread = Some(Storm { stop, handle }),
            Err(e) => {
                self.storm_error = Some(Error::StormSpawn(e));
            }
        }
    }

    fn stop_storm(&mut self) -> Result<()> {
        if let Some(err) = self.storm_error.take() {
            return Err(err);
        }
        if let Some(storm) = self.storm_thread.take() {
            storm.stop.stop();
            let (evs, run, err) = storm.handle.join().map_err(|_| Error::StormPanicked)?;
            // A storm runs no phase actions, so its indices on the timeline are the list's.
            self.evidence.extend(evs);
            let ran = run.ran;
            let planned = run.planned;
            self.storm_run = Some(run);
            if let Some(e) = err {
                return Err(e);
            }
            if ran == 0 && planned > 0 {
                return Err(Error::StormDidNothing { planned });
            }
        }
        Ok(())
    }

    fn run_at_phase(&mut self, round: u32, env: &RunEnv<'_>) -> Result<()> {
        let ctx = self.ctx(env);
        for a in self.actions.clone() {
            let start = Mono::now();
            let result = run_action(&ctx, a, round, None);
            env.timeline.span(
                start,
                "vcpu",
                What::Action {
                    action: a,
                    iteration: None,
                    evidence: result.as_ref().ok().map(|_| self.evidence.len()),
                    error: result.as_ref().err().map(|e| e.to_string()),
                },
            );
            let (ev, finish) = result?;
            let idx = self.evidence.len();
            self.evidence.push(ev);
            if let Some(f) = finish {
                // Released after the guest's next round (or at the end).
                let at = if round < self.rounds {
                    round + 1
                } else {
                    u32::MAX
                };
                self.pending.push((at, idx, f));
            }
        }
        Ok(())
    }
}

impl PhaseHook for Schedule {
    type Error = Error;

    fn at_phase(&mut self, phase: GuestPhase, env: &RunEnv<'_>) -> Result<()> {
        match phase {
            GuestPhase::RoundsStart if self.storm > 0 && !self.actions.is_empty() => {
                self.start_storm(env);
            }
            GuestPhase::RoundDone { round } => {
                self.run_pending(round)?;
                if self.storm == 0 && round == self.after_round {
                    self.run_at_phase(round, env)?;
                }
            }
            GuestPhase::Unmapped => {
                self.stop_storm()?;
                self.run_pending(u32::MAX)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn storm(&self) -> Option<StormRun> {
        self.storm_run.clone()
    }

    /// A schedule with no action never acts (no storm, nothing pending).
    fn acts(&self) -> bool {
        !self.actions.is_empty()
    }

    fn finish(&mut self) -> (Vec<Evidence>, Option<Error>) {
        // Whatever did not get its phase (the guest died early) is finished now, so no child
        // or handler outlives the run.
        let storm = self.stop_storm().err();
        let pending = self.run_pending(u32::MAX).err();
        (std::mem::take(&mut self.evidence), storm.or(pending))
    }
}

/// Splits the PMD over `page` while keeping every page: PROT_READ then PROT_READ|PROT_WRITE on
/// that one 4 KiB page (the kernel must map it by PTE to give it its own protection).
fn split_pmd_by_mprotect(action: Action, page: Hva) -> Result<()> {
    mprotect_round_trip(action, page, false).map(|_| ())
}

/// PROT_READ then PROT_READ|PROT_WRITE on one 4 KiB page. With `observe`, the page's VMA as
/// /proc/self/maps shows it between the two calls (read with the page read-only; the
/// protection is restored whatever that read gives).
fn mprotect_round_trip(action: Action, page: Hva, observe: bool) -> Result<Option<Vma>> {
    let set = |prot| {
        // SAFETY: one page of guest RAM, which GuestRam keeps mapped; its protection is
        // restored by the second call before the guest runs again.
        let rc =
            unsafe { libc::mprotect(page.as_ptr() as *mut libc::c_void, PAGE_SIZE as usize, prot) };
        if rc != 0 {
            return Err(last_os(action, "mprotect"));
        }
        Ok(())
    };
    set(libc::PROT_READ)?;
    let between = observe.then(|| observe::vma_at(page));
    set(libc::PROT_READ | libc::PROT_WRITE)?;
    match between {
        None => Ok(None),
        Some(r) => observed(action, "read /proc/self/maps", r),
    }
}

/// An observation an effect check needs: failing to make it fails the action.
fn observed<T>(action: Action, call: &'static str, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| Error::Syscall {
        action,
        call,
        source,
    })
}

/// The 2 MiB huge page holding `hva`, as mapped now.
fn huge_page_of(action: Action, hva: Hva) -> Result<HugePage> {
    let huge = Hva(hva.raw() & !(HUGE_PAGE_SIZE - 1));
    observed(action, "PAGEMAP_SCAN", observe::huge_page(huge))
}

/// madvise on a host range, as an action's step.
fn madvise(action: Action, hva: Hva, len: u64, advice: i32, call: &'static str) -> Result<()> {
    // SAFETY: the range is guest RAM (or part of it), owned by GuestRam for the whole run;
    // madvise changes only how the kernel backs it.
    let rc = unsafe { libc::madvise(hva.as_ptr() as *mut libc::c_void, len as usize, advice) };
    if rc != 0 {
        return Err(last_os(action, call));
    }
    Ok(())
}

fn vmstat_now() -> Option<VmstatSnapshot> {
    VmstatSnapshot::take().ok()
}

/// How much one counter moved since `before` (0 when /proc/vmstat or the counter is missing).
fn moved_one(before: &Option<VmstatSnapshot>, name: &str) -> i64 {
    moved(before, &[name]).get(name).copied().unwrap_or(0)
}

/// How much the named counters moved since `before` (empty when /proc/vmstat is unreadable).
fn moved(before: &Option<VmstatSnapshot>, names: &[&str]) -> BTreeMap<String, i64> {
    match (before, vmstat_now()) {
        (Some(b), Some(a)) => host::delta_of(b, &a, names),
        _ => BTreeMap::new(),
    }
}
