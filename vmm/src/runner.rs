//! One live run of a scenario: build the VM, start the vCPU and device threads, wait, judge.
//!
//! Threads (docs/architecture.md): the vCPU thread runs the guest and its synchronous exits (and
//! the host actions scheduled at phases, so "between rounds" is exact); the caller's thread
//! becomes the device thread, an event-manager loop over the two doorbell ioeventfds, a timerfd
//! for the watchdog, and an eventfd the vCPU thread signals when it is done. Before the guest
//! starts, a scoped prefault thread populates guest RAM and measures its THP coverage while the
//! caller's thread creates the VM and loads the guest. Nothing outlives `run`. Every step is
//! recorded on the run's `Timeline`.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSubscriber, Events, SubscriberOps};
use pinlab_abi as abi;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::devices::Devices;
use crate::layout::Layout;
use crate::memory::GuestRam;
use crate::oracle::{self, Facts, GuestSummary};
use crate::phase::{PhaseHook, PhaseOrder, RunEnv};
use crate::report::Outcome;
use crate::scenario::{Directions, GuestMode, PinKind, Scenario, Verdict};
use crate::timeline::{LaunchStep, Mono, Timeline, What};
use crate::vcpu::{self, Exit};
use crate::vm::Vm;

/// The seed of the run's patterns (fixed: runs are reproducible; rounds and directions vary it).
const SEED: u64 = 0x005e_ed0f_d1a6;
/// DMA descriptor size: a 2 MiB region is moved in 4 descriptors per direction per round.
const TRANSFER_LEN: u64 = 512 << 10;
/// How often the watchdog looks.
const WATCHDOG_TICK: Duration = Duration::from_millis(50);

/// Why the lab could not run the scenario to a verdict. Never a statement about the kernel.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the scenario's layout: {0}")]
    Layout(#[source] crate::layout::Error),
    #[error("taking the system lock: {0}")]
    SystemLock(#[source] crate::host::errors::LockError),
    #[error("creating the [host] swapfile: {0}")]
    Swapfile(#[source] crate::host::errors::SwapError),
    #[error("guest RAM: {0}")]
    GuestRam(#[source] crate::memory::Error),
    #[error("prefaulting guest RAM: {0}")]
    Prefault(#[source] crate::memory::Error),
    #[error("building the VM: {0}")]
    Vm(#[source] crate::vm::Error),
    #[error("registering a doorbell: {0}")]
    Doorbell(#[source] crate::vm::Error),
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("timerfd: {0}")]
    TimerFd(#[source] vmm_sys_util::errno::Error),
    #[error("installing the vCPU kick handler: {0}")]
    KickHandler(#[source] std::io::Error),
    #[error("spawning the {0} thread: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("the device event loop: {0:?}")]
    EventManager(event_manager::Error),
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
        seed: SEED,
        transfer_len: TRANSFER_LEN,
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
        return Outcome::skipped(s, why);
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
        Some(crate::host::SystemLock::acquire().map_err(RunError::SystemLock)?)
    } else {
        None
    };
    let _swap = match s.host.swap {
        Some(size) => Some(
            crate::host::Swapfile::create(std::path::Path::new("/var/tmp"), size.0)
                .map_err(RunError::Swapfile)?,
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
    // The prefault, then the THP coverage measurement, run on their own thread while this one
    // creates the VM and loads the guest (they touch the same RAM: the loader's writes and
    // MADV_POPULATE_WRITE both just fault pages in). Coverage is measured after the whole
    // prefault, and both finish before the guest starts.
    let (created, prefault) = std::thread::scope(|scope| {
        let prefault = s.vm.prefault.then(|| {
            std::thread::Builder::new()
                .name("pinlab-prefault".into())
                .spawn_scoped(scope, || {
                    let start = Mono::now();
                    ram.populate().map_err(RunError::Prefault)?;
                    let coverage = crate::pfn::thp_coverage(ram.hva(), ram.size()).ok();
                    timeline.span(
                        start,
                        "prefault",
                        What::Launch {
                            step: LaunchStep::Prefault,
                        },
                    );
                    Ok::<_, RunError>(coverage)
                })
        });
        let start = Mono::now();
        let created = Vm::create(&ram, &boot);
        timeline.span(
            start,
            "main",
            What::Launch {
                step: LaunchStep::VmCreated,
            },
        );
        let prefault = match prefault {
            None => Ok(None),
            Some(Err(e)) => Err(RunError::Spawn("prefault", e)),
            Some(Ok(t)) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        };
        (created, prefault)
    });
    let (vm, mut vcpu_fd) = created.map_err(RunError::Vm)?;
    out.thp_coverage = prefault?;
    let vm = Arc::new(vm);
    let ram = Arc::new(RwLock::new(ram));
    let devices = Arc::new(Devices::new(ram.clone(), s.device.pin));
    let scenario = Arc::new(s.clone());

    let iommu_evt = EventFd::new(EFD_NONBLOCK).map_err(RunError::EventFd)?;
    let dma_evt = EventFd::new(EFD_NONBLOCK).map_err(RunError::EventFd)?;
    let done_evt = EventFd::new(EFD_NONBLOCK).map_err(RunError::EventFd)?;
    vm.register_doorbell(abi::PORT_IOMMU_DOORBELL, &iommu_evt)
        .map_err(RunError::Doorbell)?;
    vm.register_doorbell(abi::PORT_DMA_DOORBELL, &dma_evt)
        .map_err(RunError::Doorbell)?;
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

    let (exit, console, end) = std::thread::scope(|scope| -> Result<_, RunError> {
        let vcpu_devices = devices.clone();
        let vcpu_stop = stop.clone();
        let done_signal = done_evt.try_clone().map_err(RunError::EventFd)?;
        let env = RunEnv {
            devices: &devices,
            vm: &vm,
            scenario: &scenario,
            layout: &layout,
            timeline,
        };
        let first_round = &first_round_done;
        let order = &mut order;
        let hook = &mut *hook;
        let vcpu_pthread = Arc::new(AtomicU64::new(0));
        let vcpu_pthread_w = vcpu_pthread.clone();
        let vcpu_thread = std::thread::Builder::new()
            .name("pinlab-vcpu".into())
            .spawn_scoped(scope, move || {
                // SAFETY: pthread_self has no preconditions.
                vcpu_pthread_w.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
                let mut on_phase = |p: &abi::Phase| -> Result<(), String> {
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
                            return Ok(());
                        }
                    };
                    env.timeline.instant("vcpu", What::Phase { phase });
                    if let crate::timeline::GuestPhase::RoundDone { round: 1 } = phase {
                        first_round
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(Mono::now);
                    }
                    hook.at_phase(phase, &env).map_err(|e| e.to_string())
                };
                let mut ctx = vcpu::Context {
                    devices: vcpu_devices,
                    stop: vcpu_stop,
                    on_phase: &mut on_phase,
                    console: Vec::new(),
                    first_phase_at: None,
                };
                let exit = vcpu::run(&mut vcpu_fd, &mut ctx);
                let end = Mono::now();
                let _ = done_signal.write(1);
                (exit, ctx.console, end)
            })
            .map_err(|e| RunError::Spawn("vCPU", e))?;

        let device_loop = Arc::new(DeviceLoop::new(
            devices.clone(),
            &iommu_evt,
            &dma_evt,
            &done_evt,
            s.vm.watchdog.0,
            stop.clone(),
            vcpu_pthread,
        )?);
        let mut em: EventManager<Arc<DeviceLoop>> =
            EventManager::new().map_err(RunError::EventManager)?;
        em.add_subscriber(device_loop.clone());
        while !device_loop.finished.load(Ordering::Acquire) {
            if let Err(e) = em.run_with_timeout(100) {
                tracing::warn!("event loop: {e:?}");
            }
        }
        vcpu_thread.join().map_err(|_| RunError::Panicked("vCPU"))
    })?;
    timeline.instant_at(
        end,
        "vcpu",
        What::Launch {
            step: LaunchStep::GuestEnd,
        },
    );

    out.console = console;
    out.timings_ms.launch_to_guest_done = Some(ms_between(launch, end));
    out.timings_ms.launch_to_first_dma = first_round_done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| ms_between(launch, t));
    let (evidence, finish_error) = hook.finish();
    out.evidence = evidence;

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
        if s.vm.prefault {
            out.thp_coverage_end = crate::pfn::thp_coverage(ram.hva(), ram.size()).ok();
        }
    }
    out.pinned_pfns_changed_pages = out.pins.iter().map(|p| p.pinned_pfns_changed_pages).sum();

    let (report, mut failure) = match exit {
        Exit::Done(r) => (Some(r), None),
        Exit::GuestFailed(why) => (None, Some(format!("guest failed: {why}"))),
        Exit::Kvm(why) => (None, Some(why)),
        Exit::Stopped => (
            None,
            Some(format!(
                "watchdog: the guest made no progress for {}; stopped",
                s.vm.watchdog
            )),
        ),
    };
    if let (None, Some(e)) = (&failure, finish_error) {
        failure = Some(format!("ending the host actions: {e}"));
    }
    if let Some(r) = &report {
        out.guest = Some(GuestSummary::from_report(r));
        out.device_write_lost_pages = r.write_lost_pages;
        out.device_read_stale_pages = r.read_stale_pages;
        if s.workload.mode == GuestMode::Hostile {
            out.hostile = Some(oracle::hostile_rows(r));
        }
    }
    let (verdict, reason) = oracle::judge(&Facts {
        mode: s.workload.mode,
        rounds_wanted: s.workload.rounds,
        guest: report.as_deref(),
        failure,
        pins: &out.pins,
        control_group: s.device.pin == PinKind::Mapping,
    });
    out.verdict = verdict;
    out.reason = reason;
    // The VM goes before guest RAM: drop order here is explicit (every clone of the Arc was
    // dropped with the perturbations' threads, joined in `hook.finish()` above).
    drop(vm);
    Ok(())
}

/// The device thread's subscriber: doorbells, watchdog, done.
struct DeviceLoop {
    devices: Arc<Devices>,
    iommu_fd: i32,
    dma_fd: i32,
    done_fd: i32,
    timer: Mutex<TimerFd>,
    timer_fd: i32,
    watchdog: Duration,
    stop: Arc<AtomicBool>,
    /// The vCPU thread's pthread, once it has started (0 before).
    vcpu: Arc<AtomicU64>,
    last: Mutex<(u64, Instant)>,
    finished: AtomicBool,
}

impl DeviceLoop {
    fn new(
        devices: Arc<Devices>,
        iommu: &EventFd,
        dma: &EventFd,
        done: &EventFd,
        watchdog: Duration,
        stop: Arc<AtomicBool>,
        vcpu: Arc<AtomicU64>,
    ) -> Result<Self, RunError> {
        let mut timer = TimerFd::new().map_err(RunError::TimerFd)?;
        timer
            .reset(WATCHDOG_TICK, Some(WATCHDOG_TICK))
            .map_err(RunError::TimerFd)?;
        let timer_fd = timer.as_raw_fd();
        Ok(DeviceLoop {
            devices,
            iommu_fd: iommu.as_raw_fd(),
            dma_fd: dma.as_raw_fd(),
            done_fd: done.as_raw_fd(),
            timer: Mutex::new(timer),
            timer_fd,
            watchdog,
            stop,
            vcpu,
            last: Mutex::new((0, Instant::now())),
            finished: AtomicBool::new(false),
        })
    }

    fn drain(fd: i32) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from an eventfd/timerfd we own into a local buffer.
        unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, 8) };
    }

    fn watchdog_tick(&self) {
        if let Ok(mut t) = self.timer.lock() {
            let _ = t.wait();
        }
        let now_progress = self.devices.progress.load(Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if now_progress != last.0 {
            *last = (now_progress, Instant::now());
            return;
        }
        if last.1.elapsed() >= self.watchdog || self.stop.load(Ordering::Acquire) {
            self.stop.store(true, Ordering::Release);
            // Kick until the vCPU thread says it is done (a kick that lands just before
            // KVM_RUN is lost; the next tick sends another).
            let thread = self.vcpu.load(Ordering::Acquire);
            if thread != 0 {
                // SAFETY: `thread` is the pthread of the vCPU thread, which is joined only
                // after this loop has finished, so it is alive.
                unsafe { libc::pthread_kill(thread as libc::pthread_t, vcpu::kick_signal()) };
            }
        }
    }
}

impl EventSubscriber for DeviceLoop {
    fn process(&self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.iommu_fd {
            Self::drain(fd);
            self.devices.service_iommu();
        } else if fd == self.dma_fd {
            Self::drain(fd);
            self.devices.service_dma();
        } else if fd == self.timer_fd {
            self.watchdog_tick();
        } else if fd == self.done_fd {
            Self::drain(fd);
            self.finished.store(true, Ordering::Release);
        }
    }

    fn init(&self, ops: &mut EventOps) {
        for fd in [self.iommu_fd, self.dma_fd, self.done_fd, self.timer_fd] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, 0, EventSet::IN)) {
                tracing::error!("registering fd {fd} with the event loop: {e:?}");
            }
        }
    }
}
