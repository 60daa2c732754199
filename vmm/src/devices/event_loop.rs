//! The device thread: an event-manager loop that serves the doorbells and watches the run.
//!
//! [`serve`] runs on the caller's thread until the vCPU thread says it is done. One subscriber
//! per event source on one `EventManager`: each doorbell (an eventfd that KVM signals when the
//! guest writes the port, an ioeventfd: no exit) services its queue; a timerfd ticks every
//! [`TICK`] and asks the [`Watchdog`] whether to stop the vCPU; the vCPU thread's
//! [`DoneSignal`] ends the loop. The vCPU is stopped through the shared `stop` flag and a
//! [`Kick`] the caller provides: this module knows nothing of threads or signals.
//!
//! Every way out of [`serve`] (done, or an event-loop failure) happens after the vCPU thread has
//! said it is done, so the caller can join it without hanging: on a failure the loop stops the
//! vCPU and waits for its signal before returning the error.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::devices::watchdog::{Limits, StopReason, Watchdog};
use crate::devices::{Devices, Progress};

/// How often the watchdog looks.
pub const TICK: Duration = Duration::from_millis(50);

/// Why the device loop could not run. The vCPU thread has been stopped and is done when one of
/// these is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating a doorbell eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("creating the watchdog timerfd: {0}")]
    TimerFd(#[source] vmm_sys_util::errno::Error),
    #[error("arming the watchdog timerfd: {0}")]
    TimerArm(#[source] vmm_sys_util::errno::Error),
    #[error("creating the event manager: {0}")]
    EventManager(#[source] event_manager::Error),
    #[error("adding fd {fd} to the event manager: {source}")]
    Register {
        fd: RawFd,
        #[source]
        source: event_manager::Error,
    },
    #[error("waiting for events: {0}")]
    Wait(#[source] event_manager::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Makes the vCPU thread leave KVM_RUN soon, so it sees `stop`. Called from the device thread,
/// possibly many times (today's kick can be lost if it lands just before KVM_RUN: the watchdog
/// kicks on every tick until the vCPU is done).
pub trait Kick {
    fn kick(&self);
}

impl<F: Fn()> Kick for F {
    fn kick(&self) {
        self()
    }
}

/// The eventfds the device thread waits on: the two doorbells (register them with the VM as
/// ioeventfds) and the vCPU thread's "done".
pub struct Doorbells {
    iommu: EventFd,
    dma: EventFd,
    vcpu_done: EventFd,
}

impl Doorbells {
    pub fn new() -> Result<Self> {
        let fd = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        Ok(Doorbells {
            iommu: fd()?,
            dma: fd()?,
            vcpu_done: fd()?,
        })
    }

    /// The IOMMU queue's doorbell (`abi::PORT_IOMMU_DOORBELL`).
    pub fn iommu(&self) -> &EventFd {
        &self.iommu
    }

    /// The DMA queue's doorbell (`abi::PORT_DMA_DOORBELL`).
    pub fn dma(&self) -> &EventFd {
        &self.dma
    }

    /// The signal the vCPU thread holds: it rings when dropped.
    pub fn done_signal(&self) -> Result<DoneSignal> {
        self.vcpu_done
            .try_clone()
            .map(DoneSignal)
            .map_err(Error::EventFd)
    }
}

/// Held by the vCPU thread; tells the device loop the vCPU is done when dropped, which happens
/// however the thread ends (returning or unwinding), so the loop never waits for a dead thread.
pub struct DoneSignal(EventFd);

impl Drop for DoneSignal {
    fn drop(&mut self) {
        if let Err(e) = self.0.write(1) {
            tracing::error!("signalling the device loop that the vCPU is done: {e}");
        }
    }
}

/// Serves the doorbells until the vCPU thread is done, stopping it (`stop`, then `kick`) when
/// the watchdog says so. Returns why the watchdog stopped the run, if it did.
pub fn serve(
    devices: &Devices,
    doorbells: &Doorbells,
    limits: Limits,
    stop: &AtomicBool,
    kick: &dyn Kick,
) -> Result<Option<StopReason>> {
    let finished = Cell::new(false);
    let r = run_loop(devices, doorbells, limits, stop, kick, &finished);
    if r.is_err() && !finished.get() {
        stop_and_wait(doorbells, stop, kick);
    }
    r
}

fn run_loop(
    devices: &Devices,
    doorbells: &Doorbells,
    limits: Limits,
    stop: &AtomicBool,
    kick: &dyn Kick,
    finished: &Cell<bool>,
) -> Result<Option<StopReason>> {
    let mut timer = TimerFd::new().map_err(Error::TimerFd)?;
    timer.reset(TICK, Some(TICK)).map_err(Error::TimerArm)?;
    let stopped = Cell::new(None);
    let failed = Cell::new(None);
    let mut em: EventManager<Box<dyn MutEventSubscriber + '_>> =
        EventManager::new().map_err(Error::EventManager)?;
    em.add_subscriber(Box::new(Doorbell {
        fd: &doorbells.iommu,
        devices,
        service: Devices::service_iommu,
        failed: &failed,
    }));
    em.add_subscriber(Box::new(Doorbell {
        fd: &doorbells.dma,
        devices,
        service: Devices::service_dma,
        failed: &failed,
    }));
    em.add_subscriber(Box::new(Ticker {
        timer,
        watchdog: Watchdog::new(limits, devices.progress.count()),
        started: Instant::now(),
        progress: &devices.progress,
        stop,
        kick,
        stopped: &stopped,
        failed: &failed,
    }));
    em.add_subscriber(Box::new(VcpuDone {
        fd: &doorbells.vcpu_done,
        finished,
        failed: &failed,
    }));
    if let Some(e) = failed.take() {
        return Err(e);
    }
    while !finished.get() {
        // A signal (the kick is for another thread, but SIGINT lands anywhere) returns Ok(0).
        em.run_with_timeout(-1).map_err(Error::Wait)?;
    }
    Ok(stopped.get())
}

/// The loop could not run: stop the vCPU and wait (polling its "done", kicking every tick) until
/// it is gone.
fn stop_and_wait(doorbells: &Doorbells, stop: &AtomicBool, kick: &dyn Kick) {
    stop.store(true, Ordering::Release);
    loop {
        kick.kick();
        let mut pfd = libc::pollfd {
            fd: doorbells.vcpu_done.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd we pass, which lives on this stack.
        let n = unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as i32) };
        if n > 0 {
            return;
        }
    }
}

/// Adds `fd` for input; a failure is kept for `run_loop` to return (`init` cannot).
fn register(ops: &mut EventOps, fd: RawFd, failed: &Cell<Option<Error>>) {
    if let Err(source) = ops.add(Events::new_raw(fd, EventSet::IN)) {
        failed.set(Some(Error::Register { fd, source }));
    }
}

/// A doorbell: drain its eventfd, service its queue.
struct Doorbell<'a> {
    fd: &'a EventFd,
    devices: &'a Devices,
    service: fn(&Devices),
    failed: &'a Cell<Option<Error>>,
}

impl MutEventSubscriber for Doorbell<'_> {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // Nonblocking; the count does not matter (each ring means "look at the queue").
        let _ = self.fd.read();
        (self.service)(self.devices);
    }

    fn init(&mut self, ops: &mut EventOps) {
        register(ops, self.fd.as_raw_fd(), self.failed);
    }
}

/// The watchdog's clock: on each tick, decide and carry out the decision.
struct Ticker<'a> {
    timer: TimerFd,
    watchdog: Watchdog,
    started: Instant,
    progress: &'a Progress,
    stop: &'a AtomicBool,
    kick: &'a dyn Kick,
    stopped: &'a Cell<Option<StopReason>>,
    failed: &'a Cell<Option<Error>>,
}

impl MutEventSubscriber for Ticker<'_> {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // Consumes the expirations (the fd is readable, so this does not block).
        let _ = self.timer.wait();
        let requested = self.stop.load(Ordering::Acquire);
        let decision = self
            .watchdog
            .tick(self.started.elapsed(), self.progress.count(), requested);
        if let Some(reason) = decision {
            self.stop.store(true, Ordering::Release);
            self.stopped.set(Some(reason));
            self.kick.kick();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        register(ops, self.timer.as_raw_fd(), self.failed);
    }
}

/// The vCPU thread is done: end the loop.
struct VcpuDone<'a> {
    fd: &'a EventFd,
    finished: &'a Cell<bool>,
    failed: &'a Cell<Option<Error>>,
}

impl MutEventSubscriber for VcpuDone<'_> {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.fd.read();
        self.finished.set(true);
    }

    fn init(&mut self, ops: &mut EventOps) {
        register(ops, self.fd.as_raw_fd(), self.failed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::memory::GuestRam;
    use crate::scenario::PinKind;
    use crate::timeline::Timeline;

    fn setup_devices() -> Devices {
        let ram = GuestRam::new(4 << 20, false, false).unwrap();
        Devices::new(
            Arc::new(RwLock::new(ram)),
            PinKind::Mapping,
            Arc::new(Timeline::new()),
        )
    }

    /// What the fake vCPU thread does until it returns (dropping its `DoneSignal`).
    enum Guest {
        /// Returns at once.
        Done,
        /// Spins until stopped.
        Spin,
        /// Makes progress until stopped.
        Busy,
        /// Rings the DMA doorbell once, waits until the device thread has serviced it, returns.
        RingDma,
        /// Panics.
        Panic,
    }

    struct Served {
        result: Result<Option<StopReason>>,
        kicks: u32,
        devices: Devices,
        vcpu_panicked: bool,
    }

    /// Runs `serve` against a fake vCPU thread.
    fn serve_with(guest: Guest, limits: Limits) -> Served {
        let devices = setup_devices();
        let doorbells = Doorbells::new().unwrap();
        let stop = AtomicBool::new(false);
        let kicks = AtomicU32::new(0);
        let kick = || {
            kicks.fetch_add(1, Ordering::Relaxed);
        };
        let (result, vcpu_panicked) = std::thread::scope(|s| {
            let done = doorbells.done_signal().unwrap();
            let (stop, devices, doorbells) = (&stop, &devices, &doorbells);
            let vcpu = s.spawn(move || {
                let _done = done;
                match guest {
                    Guest::Done => {}
                    Guest::Spin => {
                        while !stop.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Guest::Busy => {
                        while !stop.load(Ordering::Acquire) {
                            devices.progress.bump();
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Guest::RingDma => {
                        doorbells.dma().write(1).unwrap();
                        while devices.stats.rejects_total() == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Guest::Panic => panic!("the fake vCPU thread panics (expected)"),
                }
            });
            let r = serve(devices, doorbells, limits, stop, &kick);
            (r, vcpu.join().is_err())
        });
        Served {
            result,
            kicks: kicks.load(Ordering::Relaxed),
            devices,
            vcpu_panicked,
        }
    }

    const LONG: Duration = Duration::from_secs(600);

    const NO_LIMITS: Limits = Limits {
        idle: LONG,
        deadline: LONG,
    };

    #[test]
    fn a_guest_that_finishes_is_not_stopped() {
        let r = serve_with(Guest::Done, NO_LIMITS);
        assert_eq!(r.result.unwrap(), None);
        assert_eq!(r.kicks, 0);
        assert!(!r.vcpu_panicked);
    }

    /// The vCPU thread's signal rings however the thread ends. A bug: the loop waits forever
    /// for a thread that died (this test would hang).
    #[test]
    fn a_vcpu_thread_that_panics_still_ends_the_loop() {
        let r = serve_with(Guest::Panic, NO_LIMITS);
        assert_eq!(r.result.unwrap(), None);
        assert!(r.vcpu_panicked);
    }

    /// A bug: the loop never stops a silent guest (this test would hang), or stops it without
    /// kicking (a vCPU in KVM_RUN would never see `stop`).
    #[test]
    fn a_silent_guest_is_stopped_and_kicked() {
        let idle = Duration::from_millis(100);
        let r = serve_with(
            Guest::Spin,
            Limits {
                idle,
                deadline: LONG,
            },
        );
        assert_eq!(r.result.unwrap(), Some(StopReason::NoProgress { idle }));
        assert!(r.kicks >= 1);
    }

    /// Progress forever still ends at the deadline. A bug: progress resets the deadline too.
    #[test]
    fn a_busy_guest_meets_the_deadline() {
        let deadline = Duration::from_millis(200);
        let r = serve_with(
            Guest::Busy,
            Limits {
                idle: LONG,
                deadline,
            },
        );
        assert_eq!(r.result.unwrap(), Some(StopReason::Deadline { deadline }));
        assert!(r.kicks >= 1);
        assert!(r.devices.progress.count() > 0);
    }

    /// A doorbell wakes the loop and services its queue (here: not set up, so a reject).
    #[test]
    fn a_doorbell_is_serviced() {
        let r = serve_with(Guest::RingDma, NO_LIMITS);
        assert_eq!(r.result.unwrap(), None);
        let bad_ring = pinlab_abi::STATUS_BAD_RING as usize;
        assert_eq!(r.devices.stats.rejects[bad_ring].load(Ordering::Relaxed), 1);
    }
}
