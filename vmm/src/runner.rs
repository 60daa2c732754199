//! One live run of a scenario: build the VM, start the vCPU and device threads, wait, judge.
//!
//! Threads (docs/architecture.md): the vCPU thread runs the guest and its synchronous exits (and
//! the host actions scheduled at phases, so "between rounds" is exact); the caller's thread
//! becomes the device thread (`devices::serve`: the two doorbell ioeventfds, the watchdog's
//! timerfd, and the eventfd the vCPU thread signals when it is done). A prefault thread
//! (`prefault`) populates guest RAM and measures its THP coverage while the caller's thread
//! creates the VM and loads the guest; the guest starts once the part it touches first is
//! done, and the rest is done before any host action and before the verdict. After the guest,
//! a teardown thread closes the VM while the evidence is gathered. Nothing outlives `run`.
//! Every step is recorded on the run's `Timeline`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use pinlab_abi as abi;

use crate::addr::Gpa;
use crate::devices::{self, Devices, Doorbells};
use crate::layout::Layout;
use crate::memory::GuestRam;
use crate::oracle::{self, Facts, GuestSummary};
use crate::phase::{PhaseHook, PhaseOrder, RunEnv};
use crate::report::Outcome;
use crate::scenario::{Directions, GuestMode, MemoryKind, PinKind, Scenario, Verdict};
use crate::timeline::{LaunchStep, Mono, Timeline, What};
use crate::vcpu::{self, Exit};
use crate::vm::Vm;

/// The seed of the run's patterns when the scenario names none (`workload.seed`): runs are
/// reproducible; rounds and directions vary it, and in fuzz mode it seeds the guest's PRNG.
const SEED: u64 = 0x005e_ed0f_d1a6;
/// DMA descriptor size: a 2 MiB region is moved in 4 descriptors per direction per round.
const TRANSFER_LEN: u64 = 512 << 10;

/// Why the lab could not run the scenario to a verdict. Never a statement about the kernel.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the scenario's layout: {0}")]
    Layout(#[source] crate::layout::Error),
    #[error("taking the system lock: {0}")]
    SystemLock(#[source] crate::host::errors::LockError),
    #[error("creating the [host] swapfile: {0}")]
    Swapfile(#[source] Box<crate::host::errors::SwapfileError>),
    #[error("guest RAM: {0}")]
    GuestRam(#[source] crate::memory::Error),
    #[error("prefaulting guest RAM: {0}")]
    Prefault(#[source] crate::prefault::Error),
    #[error("building the VM: {0}")]
    Vm(#[source] crate::vm::Error),
    #[error("registering a doorbell: {0}")]
    Doorbell(#[source] crate::vm::Error),
    #[error("the device thread: {0}")]
    Devices(#[source] devices::ServeError),
    #[error("installing the vCPU kick handler: {0}")]
    KickHandler(#[source] std::io::Error),
    #[error("spawning the {0} thread: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("memory_kind = pte-mapped-thp: mprotect of the page at {hva:#x}: {source}")]
    PteMapMprotect {
        hva: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("memory_kind = pte-mapped-thp: observing the huge page at {hva:#x}: {reason}")]
    PteMapObserve { hva: u64, reason: String },
    #[error("memory_kind = pte-mapped-thp: the huge page at {hva:#x} is still PMD-mapped after the mprotect round trip; refusing to run it as THP")]
    PteMapStillPmd { hva: u64 },
    #[error("memory_kind = pte-mapped-thp: the huge page at {hva:#x} has {thp_pages} of 512 pages in a THP (the prefault did not get a THP, or the split lost it); refusing to run it as small pages")]
    PteMapNotThp { hva: u64, thp_pages: u64 },
    #[error("attaching the VFIO device: {0}")]
    Vfio(#[source] crate::pin::vfio::Error),
}

/// Why the host cannot run this scenario, in one line, or `None`.
pub fn missing_capability(s: &Scenario) -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!(
            "KVM unavailable: /dev/kvm: {e} (load kvm_intel/kvm_amd or run where virtualization is exposed)"
        ));
    }
    if let Some(why) = crate::pin::vfio::missing(s) {
        return Some(why);
    }
    if s.device.pin == PinKind::IoUring && s.workload.mode != GuestMode::Boot {
        if let Err(e) = io_uring::IoUring::new(2) {
            return Some(format!(
                "io_uring unavailable: io_uring_setup: {e} (check /proc/sys/kernel/io_uring_disabled)"
            ));
        }
    }
    None
}

/// The boot info block for `s` laid out as `layout`.
pub fn boot_info(s: &Scenario, layout: &Layout) -> abi::BootInfo {
    abi::BootInfo {
        magic: abi::BOOT_INFO_MAGIC,
        abi_version: abi::ABI_VERSION,
        mode: match s.workload.mode {
            GuestMode::Dma => abi::MODE_DMA,
            GuestMode::Boot => abi::MODE_BOOT,
            GuestMode::Spin => abi::MODE_SPIN,
            GuestMode::Hostile => abi::MODE_HOSTILE,
            GuestMode::ConsoleFlood => abi::MODE_CONSOLE_FLOOD,
            GuestMode::PhaseRepeat => abi::MODE_PHASE_REPEAT,
            GuestMode::Fuzz => abi::MODE_FUZZ,
        },
        ram_size: s.vm.memory.0,
        region_gpa: layout.region.start.raw(),
        region_len: layout.region.len,
        region_iova: layout.region_iova.raw(),
        rounds: s.workload.rounds,
        directions: match s.workload.directions {
            Directions::Both => abi::DIR_FROM_GUEST | abi::DIR_TO_GUEST,
            Directions::FromGuest => abi::DIR_FROM_GUEST,
            Directions::ToGuest => abi::DIR_TO_GUEST,
        },
        seed: s.workload.seed.unwrap_or(SEED),
        transfer_len: TRANSFER_LEN,
        fuzz_ops: s.workload.fuzz_ops(),
    }
}

fn ms_between(a: Mono, b: Mono) -> f64 {
    b.since(a) as f64 / 1e6
}

/// Runs `s` live with `hook` at the guest's phases. `launch` is when the process started
/// (timings count from it).
pub fn run<H: PhaseHook>(s: &Scenario, launch: Mono, hook: &mut H) -> Outcome {
    let timeline = Arc::new(Timeline::new());
    timeline.instant_at(
        launch,
        "main",
        What::Launch {
            step: LaunchStep::Process,
        },
    );
    if let Some(why) = missing_capability(s).or_else(|| crate::perturb::preflight(s)) {
        let mut out = Outcome::skipped(s, why);
        out.timeline = (&*timeline).into();
        return out;
    }
    let mut out = Outcome::empty(s);
    let mut tracer =
        crate::trace::Tracer::new(s.trace.file.clone(), s.trace.buffer.map(|b| b.0), &s.name);
    if let Err(e) = run_inner(s, launch, hook, &timeline, &mut out, &mut tracer) {
        out.verdict = Verdict::Error;
        out.reason = Some(e.to_string());
    }
    timeline.instant(
        "main",
        What::Verdict {
            verdict: out.verdict,
        },
    );
    out.trace = tracer.finish(&timeline);
    out.timeline = (&*timeline).into();
    out
}

/// `memory_kind = "pte-mapped-thp"`: splits the PMD of every huge page the region touches while
/// keeping its compound page (PROT_READ then PROT_READ|PROT_WRITE on its first 4 KiB page: the
/// kernel must map that page by PTE), before anything pins it; then checks each is no longer
/// PMD-mapped (PAGEMAP_SCAN) and still all THP (kpageflags). Either check failing is an error:
/// the run never goes on silently as THP or as small pages.
fn pte_map_huge_pages(ram: &GuestRam, layout: &Layout) -> Result<(), RunError> {
    use crate::addr::{HUGE_PAGE_SIZE, PAGE_SIZE};
    let huge = layout.huge_pages;
    let base = ram
        .translate(huge.start, huge.len)
        .map_err(|e| RunError::PteMapObserve {
            hva: huge.start.raw(),
            reason: e.to_string(),
        })?;
    for i in 0..huge.len / HUGE_PAGE_SIZE {
        let hva = crate::addr::Hva(base.raw() + i * HUGE_PAGE_SIZE);
        for prot in [libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE] {
            // SAFETY: one 4 KiB page of guest RAM, which `ram` keeps mapped; no vCPU runs yet
            // and nothing has pinned it; the second call restores read-write.
            let rc = unsafe {
                libc::mprotect(hva.as_ptr() as *mut libc::c_void, PAGE_SIZE as usize, prot)
            };
            if rc != 0 {
                return Err(RunError::PteMapMprotect {
                    hva: hva.raw(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        let observe = |reason: String| RunError::PteMapObserve {
            hva: hva.raw(),
            reason,
        };
        if crate::perturb::pmd_mapped(hva).map_err(|e| observe(format!("PAGEMAP_SCAN: {e}")))? {
            return Err(RunError::PteMapStillPmd { hva: hva.raw() });
        }
        let snap = crate::pfn::snapshot(hva, HUGE_PAGE_SIZE).map_err(|e| observe(e.to_string()))?;
        if snap.summary.thp != HUGE_PAGE_SIZE / PAGE_SIZE {
            return Err(RunError::PteMapNotThp {
                hva: hva.raw(),
                thp_pages: snap.summary.thp,
            });
        }
    }
    Ok(())
}

fn run_inner<H: PhaseHook>(
    s: &Scenario,
    launch: Mono,
    hook: &mut H,
    timeline: &Arc<Timeline>,
    out: &mut Outcome,
    tracer: &mut crate::trace::Tracer,
) -> Result<(), RunError> {
    let layout = s.layout().map_err(RunError::Layout)?;
    // System-wide state (KSM, swap, drop_caches, compaction) is serialized across processes
    // for the whole run; the swapfile, if any, lives exactly as long.
    let touches_system = s.host.swap.is_some()
        || tracer.enabled()
        || s.perturb.actions.iter().any(|a| a.touches_system_knobs());
    let _system_lock = if touches_system {
        Some(crate::host::SystemLock::acquire_for(&s.name).map_err(RunError::SystemLock)?)
    } else {
        None
    };
    let _swap = match s.host.swap {
        Some(size) => Some(
            crate::host::Swapfile::create(std::path::Path::new("/var/tmp"), size.0)
                .map_err(|e| RunError::Swapfile(Box::new(e)))?,
        ),
        None => None,
    };
    let t0 = Mono::now();
    let ram = GuestRam::new(s.vm.memory.0, s.vm.thp, s.vm.dontfork).map_err(RunError::GuestRam)?;
    timeline.span(
        t0,
        "main",
        What::Launch {
            step: LaunchStep::RamMapped,
        },
    );
    tracer.start(timeline, (ram.hva(), ram.size()), &layout);
    let boot = boot_info(s, &layout);
    let ram = Arc::new(RwLock::new(ram));
    // The prefault runs on its own thread while this one creates the VM and loads the guest
    // (they touch the same RAM: the loader's writes and MADV_POPULATE_WRITE both just fault
    // pages in): the hot part, what the guest touches first (boot structures, image, stack,
    // the DMA region's huge pages), and the rest only when something needs all of RAM: the
    // first phase of a hook that acts, the PTE split, VFIO (`Prefault::wait`). Each part's THP
    // coverage is measured right after its prefault (`prefault`), so the coverage at boot is
    // always measured before any host action. The guest starts once the hot part is done.
    let hot_end = Gpa(layout.huge_pages.start.raw() + layout.huge_pages.len);
    let hot_len = crate::prefault::hot_len(s.vm.memory.0, hot_end);
    let mut prefault = match s.vm.prefault {
        true => Some(
            crate::prefault::Prefault::start(ram.clone(), hot_len, timeline.clone())
                .map_err(RunError::Prefault)?,
        ),
        false => None,
    };
    let start = Mono::now();
    let created = Vm::create(ram.clone(), &boot);
    timeline.span(
        start,
        "main",
        What::Launch {
            step: LaunchStep::VmCreated,
        },
    );
    let vm = Arc::new(created.map_err(RunError::Vm)?);
    let needs_all_ram =
        s.vm.memory_kind() == MemoryKind::PteMappedThp || s.device.pin == PinKind::Vfio;
    let mut all_failed = false;
    if let Some(p) = &mut prefault {
        p.hot().map_err(RunError::Prefault)?;
        all_failed = needs_all_ram && !p.wait();
    }
    if all_failed {
        // `finish` says why the rest was not faulted in.
        if let Some(p) = prefault.take() {
            p.finish().map_err(RunError::Prefault)?;
        }
    }
    let prefault = Mutex::new(prefault);
    if s.vm.memory_kind() == MemoryKind::PteMappedThp {
        pte_map_huge_pages(&vm.ram().read().unwrap_or_else(|p| p.into_inner()), &layout)?;
    }
    // SAFETY: guest RAM outlives the attachment on every path: `vfio` is declared after `vm`
    // (which owns guest RAM) and before `devices` (whose VFIO pins hold the attachment too), so
    // both drop before guest RAM; and the VMM touches guest RAM only through vm-memory's
    // volatile accesses and system calls.
    let vfio = unsafe {
        crate::pin::vfio::attach_for(
            s,
            vm.fd(),
            &vm.ram().read().unwrap_or_else(|p| p.into_inner()),
        )
    }
    .map_err(RunError::Vfio)?;
    let devices = Arc::new(Devices::new(vm.ram().clone(), &s.device, timeline.clone()));
    let scenario = Arc::new(s.clone());
    if let Some(a) = &vfio {
        devices.state().iommu.attach_vfio(a.clone());
    }

    let doorbells = Doorbells::new().map_err(RunError::Devices)?;
    let rings_doorbells = s.workload.mode.rings_doorbells();
    if rings_doorbells {
        vm.register_doorbell(abi::PORT_IOMMU_DOORBELL, doorbells.iommu())
            .map_err(RunError::Doorbell)?;
        vm.register_doorbell(abi::PORT_DMA_DOORBELL, doorbells.dma())
            .map_err(RunError::Doorbell)?;
    }
    vcpu::install_kick_handler().map_err(RunError::KickHandler)?;

    let stop = Arc::new(AtomicBool::new(false));
    let guest_start = Mono::now();
    timeline.instant_at(
        guest_start,
        "vcpu",
        What::Launch {
            step: LaunchStep::GuestStart,
        },
    );
    out.timings_ms.launch_to_guest_start = Some(ms_between(launch, guest_start));
    let first_round_done: Mutex<Option<Mono>> = Mutex::new(None);
    let mut order = PhaseOrder::new(s.workload.rounds);

    // The vCPU's handle: the device loop kicks it, a storm pauses it.
    let env_handle = vcpu::VcpuHandle::new();
    let (exit, console, end, stopped) = std::thread::scope(|scope| -> Result<_, RunError> {
        let vcpu_devices = devices.clone();
        let vcpu_stop = stop.clone();
        let done_signal = doorbells.done_signal().map_err(RunError::Devices)?;
        let vcpu_handle = env_handle.clone();
        let vcpu_kick = vcpu_handle.clone();
        let env = RunEnv {
            devices: &devices,
            vm: &vm,
            scenario: &scenario,
            layout: &layout,
            timeline,
            vcpu: &env_handle,
        };
        let first_round = &first_round_done;
        let order = &mut order;
        let hook = &mut *hook;
        let prefault = &prefault;
        let vcpu_thread = std::thread::Builder::new()
            .name("pinlab-vcpu".into())
            .spawn_scoped(scope, move || {
                let mut on_phase = |p: &abi::Phase| -> Result<vcpu::PhaseAnswer, H::Error> {
                    let phase = match order.accept(p) {
                        Ok(phase) => phase,
                        Err(why) => {
                            // Counted and acknowledged, never acted on.
                            env.timeline.instant(
                                "vcpu",
                                What::PhaseRejected {
                                    code: p.phase,
                                    round: p.round,
                                    why: why.name(),
                                },
                            );
                            return Ok(vcpu::PhaseAnswer::Refused);
                        }
                    };
                    env.timeline.instant("vcpu", What::Phase { phase });
                    if let crate::timeline::GuestPhase::RoundDone { round: 1 } = phase {
                        first_round
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(Mono::now);
                    }
                    if hook.acts() {
                        // The whole prefault and its coverage come before any host action.
                        // If it failed the run ends as an error (below) and nothing acts.
                        let mut p = prefault.lock().unwrap_or_else(|e| e.into_inner());
                        if !p.as_mut().is_none_or(|p| p.wait()) {
                            return Ok(vcpu::PhaseAnswer::Accepted);
                        }
                    }
                    hook.at_phase(phase, &env)?;
                    Ok(vcpu::PhaseAnswer::Accepted)
                };
                let mut ctx = vcpu::Context {
                    devices: vcpu_devices,
                    stop: vcpu_stop,
                    handle: vcpu_handle,
                    on_phase: &mut on_phase,
                    console: crate::console::Console::new(),
                };
                let exit = vcpu::run(&mut env.vm.vcpu(), &mut ctx);
                let end = Mono::now();
                drop(done_signal);
                (exit, ctx.console, end)
            })
            .map_err(|e| RunError::Spawn("vCPU", e))?;

        let kick = move || vcpu_kick.kick();
        let limits = devices::Limits {
            idle: s.vm.watchdog.0,
            // Generous: (rounds + 2) idle periods, where a round of configs/'s workloads takes
            // milliseconds.
            deadline: s
                .vm
                .watchdog
                .0
                .saturating_mul(s.workload.rounds.saturating_add(2)),
        };
        // While the guest boots: what the first request would otherwise wait for.
        let ready = rings_doorbells.then(|| devices.prepare_thread()).flatten();
        let stopped = devices::serve(&devices, &doorbells, limits, &stop, &kick);
        drop(ready);
        let joined = vcpu_thread.join().map_err(|_| RunError::Panicked("vCPU"));
        let stopped = stopped.map_err(RunError::Devices)?;
        joined.map(|(exit, console, end)| (exit, console, end, stopped))
    })?;
    timeline.instant_at(
        end,
        "vcpu",
        What::Launch {
            step: LaunchStep::GuestEnd,
        },
    );

    (out.console, out.console_dropped) = console.into_parts();
    out.timings_ms.launch_to_guest_done = Some(ms_between(launch, end));
    out.timings_ms.launch_to_first_dma = first_round_done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| ms_between(launch, t));
    let (evidence, finish_error) = hook.finish();
    out.evidence = evidence;
    out.storm = hook.storm();
    // The end of the prefault (and its coverage at boot) before anything that reads it. A run
    // that never needed all of RAM (no host action, no PTE split, no VFIO) left the rest
    // untouched: the coverage is of the span that was faulted in, and the report says how
    // much that was (`prefaulted_bytes`).
    let prefault = prefault.into_inner().unwrap_or_else(|e| e.into_inner());
    let faulted = match prefault {
        Some(p) => Some(p.finish().map_err(RunError::Prefault)?),
        None => None,
    };
    out.prefaulted_bytes = faulted.as_ref().map(|f| f.bytes);
    out.thp_blocks.boot = faulted.and_then(|f| f.blocks);
    out.thp_coverage = out
        .prefaulted_bytes
        .and_then(|b| out.thp_blocks.coverage_at_boot(b));
    // Closing the VM and vCPU fds of a VM that ran takes milliseconds (`kvm_destroy_vm`), and
    // nothing below needs the VM: it is closed on its own thread while this one gathers the
    // evidence and measures the coverage at the end (guest RAM stays mapped: the devices hold
    // it). The perturbations' clones of the VM went with `hook.finish()`. With VFIO attached the
    // VM goes here, in order, after everything else.
    let mut vm = Some(vm);
    let teardown = match vm.take_if(|_| vfio.is_none()) {
        Some(vm) => Some(
            std::thread::Builder::new()
                .name("pinlab-teardown".into())
                .spawn(move || drop(vm))
                .map_err(|e| RunError::Spawn("teardown", e))?,
        ),
        None => None,
    };

    // Gather: counters, PFN evidence, guest report.
    let stats = &devices.stats;
    out.dma.descriptors = stats.descriptors.load(Ordering::Relaxed);
    out.dma.bytes_to_guest = stats.bytes_to_guest.load(Ordering::Relaxed);
    out.dma.bytes_from_guest = stats.bytes_from_guest.load(Ordering::Relaxed);
    out.dma.maps = stats.maps.load(Ordering::Relaxed);
    out.dma.unmaps = stats.unmaps.load(Ordering::Relaxed);
    for (i, r) in stats.rejects.iter().enumerate() {
        let n = r.load(Ordering::Relaxed);
        if n > 0 {
            out.dma.rejects.insert(abi::status_name(i as u32), n);
        }
    }
    {
        let ram = devices.ram.read().unwrap_or_else(|p| p.into_inner());
        let mut st = devices.state();
        out.pins = st.iommu.evidence(&ram);
        st.iommu.clear();
        if let Some(a) = &vfio {
            out.vfio = Some(crate::pin::vfio::evidence(a, &ram));
        }
        // At the end, over the same span as at boot, block for block.
        if let Some(len) = out.prefaulted_bytes.filter(|&b| b > 0) {
            out.thp_blocks.end = crate::pfn::thp_blocks(ram.hva(), len).ok();
            out.thp_coverage_end = out.thp_blocks.coverage_at_end(len);
        }
    }
    out.pinned_pfns_changed_pages = out.pins.iter().map(|p| p.pinned_pfns_changed_pages).sum();

    let (report, mut failure) = match exit {
        Exit::Done(r) => (Some(r), None),
        Exit::GuestFailed(why) => (None, Some(format!("guest failed: {why}"))),
        Exit::Kvm(e) => (None, Some(e.to_string())),
        Exit::Hook(e) => (None, Some(e.to_string())),
        Exit::Stopped => (
            None,
            Some(stopped.map_or_else(|| "stopped".to_string(), |r| r.to_string())),
        ),
    };
    if let (None, Some(e)) = (&failure, finish_error) {
        failure = Some(format!("ending the host actions: {e}"));
    }
    if let Some(r) = &report {
        let mut summary = GuestSummary::from_report(r);
        if s.workload.mode == GuestMode::Fuzz {
            summary.fuzz = Some(oracle::FuzzSummary::from_report(r));
        }
        out.guest = Some(summary);
        out.device_write_lost_pages = r.write_lost_pages;
        out.device_read_stale_pages = r.read_stale_pages;
        if s.workload.mode == GuestMode::Hostile {
            out.hostile = Some(oracle::hostile_rows(r));
        }
    }
    let (verdict, reason) = oracle::judge(&Facts {
        mode: s.workload.mode,
        rounds_wanted: s.workload.rounds,
        fuzz_ops: s.workload.fuzz_ops(),
        guest: report.as_deref(),
        failure,
        pins: &out.pins,
        control_group: s.device.pin == PinKind::Mapping,
        pfn_evidence_only: s.device.pin == PinKind::Vfio,
        region_gpa: layout.region.start,
    });
    out.verdict = verdict;
    out.reason = reason;
    // The VM (its vCPU and VM fds, then its share of guest RAM: `Vm`'s field order) is gone
    // before `run` returns.
    drop(vm);
    if let Some(t) = teardown {
        t.join().map_err(|_| RunError::Panicked("teardown"))?;
    }
    Ok(())
}
