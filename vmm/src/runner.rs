//! One live run of a scenario: build the VM, start the vCPU and device threads, wait, judge.
//!
//! Threads, as in DESIGN.md: the vCPU thread runs the guest and its synchronous exits (and the
//! host actions scheduled at phases, so "between rounds" is exact); the caller's thread becomes
//! the device thread, an event-manager loop over the two doorbell ioeventfds, a timerfd for the
//! watchdog, and an eventfd the vCPU thread signals when it is done. Before the guest starts, a
//! scoped prefault thread populates guest RAM and measures its THP coverage while the caller's
//! thread creates the VM and loads the guest. Nothing outlives `run`.

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
use crate::memory::GuestRam;
use crate::oracle::{self, Facts, GuestSummary};
use crate::report::Outcome;
use crate::scenario::{Directions, GuestMode, PinKind, Scenario};
use crate::vcpu::{self, Exit};
use crate::vm::Vm;

/// The seed of the run's patterns (fixed: runs are reproducible; rounds and directions vary it).
const SEED: u64 = 0x005e_ed0f_d1a6;
/// DMA descriptor size: a 2 MiB region is moved in 4 descriptors per direction per round.
const TRANSFER_LEN: u64 = 512 << 10;
/// How often the watchdog looks.
const WATCHDOG_TICK: Duration = Duration::from_millis(50);

/// Hooks the live executor gives the perturbation layer: called at every guest phase on the
/// vCPU thread, with the guest stopped.
pub trait PhaseHook: Send {
    fn at_phase(&mut self, phase: &abi::Phase, env: &RunEnv<'_>) -> Result<(), String>;
    /// Evidence collected, for the report.
    fn evidence(&mut self) -> Vec<serde_json::Value> {
        Vec::new()
    }
}

/// What a phase hook may touch.
pub struct RunEnv<'a> {
    pub devices: &'a Arc<Devices>,
    pub vm: &'a Arc<Vm>,
    pub scenario: &'a Scenario,
}

/// The phase hook of an unperturbed run.
pub struct NoActions;
impl PhaseHook for NoActions {
    fn at_phase(&mut self, _: &abi::Phase, _: &RunEnv<'_>) -> Result<(), String> {
        Ok(())
    }
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

pub fn boot_info(s: &Scenario) -> abi::BootInfo {
    let (gpa, len) = crate::layout::dma_region(s);
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
        region_gpa: gpa.raw(),
        region_len: len,
        region_iova: crate::layout::REGION_IOVA,
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

fn ms_since(launch: Instant, t: Instant) -> f64 {
    t.duration_since(launch).as_secs_f64() * 1e3
}

/// Runs `s` live. `launch` is when the process started (timings count from it).
pub fn run(s: &Scenario, launch: Instant, hook: &mut dyn PhaseHook) -> Outcome {
    if let Some(why) = missing_capability(s).or_else(|| crate::perturb::preflight(s)) {
        return Outcome::skipped(s, why);
    }
    let mut out = Outcome::empty(s);
    match run_inner(s, launch, hook, &mut out) {
        Ok(()) => {}
        Err(e) => {
            out.verdict = crate::scenario::Verdict::Error;
            out.reason = Some(e);
        }
    }
    out
}

fn run_inner(
    s: &Scenario,
    launch: Instant,
    hook: &mut dyn PhaseHook,
    out: &mut Outcome,
) -> Result<(), String> {
    // System-wide state (KSM, swap, drop_caches, compaction) is serialized across processes
    // for the whole run; the swapfile, if any, lives exactly as long.
    let touches_system =
        s.host.swap.is_some() || s.perturb.actions.iter().any(|a| a.touches_system_knobs());
    let _system_lock = if touches_system {
        Some(crate::host::SystemLock::acquire().map_err(|e| format!("system lock: {e}"))?)
    } else {
        None
    };
    let _swap = match s.host.swap {
        Some(size) => Some(
            crate::host::Swapfile::create(std::path::Path::new("/var/tmp"), size.0)
                .map_err(|e| format!("creating the [host] swapfile: {e}"))?,
        ),
        None => None,
    };
    let ram = GuestRam::new(s.vm.memory.0, s.vm.thp, s.vm.dontfork).map_err(|e| e.to_string())?;
    let boot = boot_info(s);
    // The prefault, then the THP coverage measurement, run on their own thread while this one
    // creates the VM and loads the guest (they touch the same RAM: the loader's writes and
    // MADV_POPULATE_WRITE both just fault pages in). Coverage is measured after the whole
    // prefault, and both finish before the guest starts.
    let (created, prefault) = std::thread::scope(|scope| {
        let prefault = s.vm.prefault.then(|| {
            std::thread::Builder::new()
                .name("pinlab-prefault".into())
                .spawn_scoped(scope, || {
                    ram.populate().map_err(|e| e.to_string())?;
                    Ok::<_, String>(crate::pfn::thp_coverage(ram.hva(), ram.size()).ok())
                })
        });
        let created = Vm::create(&ram, &boot);
        let prefault = match prefault {
            None => Ok(None),
            Some(Err(e)) => Err(format!("spawning the prefault thread: {e}")),
            Some(Ok(t)) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        };
        (created, prefault)
    });
    let (vm, mut vcpu_fd) = created.map_err(|e| e.to_string())?;
    out.thp_coverage = prefault?;
    let vm = Arc::new(vm);
    let ram = Arc::new(RwLock::new(ram));
    let devices = Arc::new(Devices::new(ram.clone(), &s.device));

    let iommu_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    let dma_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    let done_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    vm.register_doorbell(abi::PORT_IOMMU_DOORBELL, &iommu_evt)
        .map_err(|e| e.to_string())?;
    vm.register_doorbell(abi::PORT_DMA_DOORBELL, &dma_evt)
        .map_err(|e| e.to_string())?;
    vcpu::install_kick_handler().map_err(|e| format!("installing the vCPU kick handler: {e}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let guest_start = Instant::now();
    out.timings_ms.launch_to_guest_start = Some(ms_since(launch, guest_start));
    let first_round_done: Mutex<Option<Instant>> = Mutex::new(None);

    let vcpu_hook: &mut dyn PhaseHook = &mut *hook;
    let (exit, console, end) = std::thread::scope(|scope| -> Result<_, String> {
        let vcpu_devices = devices.clone();
        let vcpu_stop = stop.clone();
        let done_signal = done_evt.try_clone().map_err(|e| format!("eventfd: {e}"))?;
        let env = RunEnv {
            devices: &devices,
            vm: &vm,
            scenario: s,
        };
        let first_round = &first_round_done;
        let vcpu_pthread = Arc::new(AtomicU64::new(0));
        let vcpu_pthread_w = vcpu_pthread.clone();
        let vcpu_thread = std::thread::Builder::new()
            .name("pinlab-vcpu".into())
            .spawn_scoped(scope, move || {
                // SAFETY: pthread_self has no preconditions.
                vcpu_pthread_w.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
                let mut on_phase = |p: &abi::Phase| {
                    if p.phase == abi::PHASE_ROUND_DONE && p.round == 1 {
                        first_round
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(Instant::now);
                    }
                    vcpu_hook.at_phase(p, &env)
                };
                let mut ctx = vcpu::Context {
                    devices: vcpu_devices,
                    stop: vcpu_stop,
                    on_phase: &mut on_phase,
                    console: Vec::new(),
                    first_phase_at: None,
                };
                let exit = vcpu::run(&mut vcpu_fd, &mut ctx);
                let end = Instant::now();
                let _ = done_signal.write(1);
                (exit, ctx.console, end)
            })
            .map_err(|e| format!("spawning the vCPU thread: {e}"))?;

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
            EventManager::new().map_err(|e| format!("event manager: {e:?}"))?;
        em.add_subscriber(device_loop.clone());
        while !device_loop.finished.load(Ordering::Acquire) {
            if let Err(e) = em.run_with_timeout(100) {
                tracing::warn!("event loop: {e:?}");
            }
        }
        let joined = vcpu_thread
            .join()
            .map_err(|_| "the vCPU thread panicked".to_string())?;
        Ok(joined)
    })?;

    out.console = console;
    out.timings_ms.launch_to_guest_done = Some(ms_since(launch, end));
    out.timings_ms.launch_to_first_dma = first_round_done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| ms_since(launch, t));
    out.evidence = hook.evidence();

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

    let (report, failure) = match exit {
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
    // dropped with the perturbations' threads, joined in `hook.evidence()` above).
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
    ) -> Result<Self, String> {
        let mut timer = TimerFd::new().map_err(|e| format!("timerfd: {e}"))?;
        timer
            .reset(WATCHDOG_TICK, Some(WATCHDOG_TICK))
            .map_err(|e| format!("timerfd: {e}"))?;
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
