//! The devices the guest programs: the IOMMU (maps pin), the DMA engine, their queues, and the
//! device thread that serves them.
//!
//! The path of a guest request: the guest writes a descriptor and rings a doorbell; the device
//! thread ([`serve`], `event_loop.rs`) wakes and calls [`Devices::service_iommu`] or
//! [`Devices::service_dma`]; the queue (`queue.rs`) yields the pending descriptors; each is
//! parsed into a typed request (`request.rs`) and executed by the IOMMU (`iommu.rs`) or the DMA
//! engine (`dma.rs`); the result, or the typed [`Rejection`] turned into its ABI status here and
//! nowhere else, becomes the descriptor's completion. Each map and unmap, and each doorbell's
//! DMA batch, is recorded on the run's `Timeline`.
//!
//! `Devices` is what the vCPU thread (setup exits), the device thread (doorbells) and the host
//! actions (evidence, rebase) share: guest RAM, the device state, counters and the timeline.
//! Lock order: guest RAM (`RwLock`: device work holds it for reading for a whole batch, an
//! action that moves guest RAM holds it for writing, so no device touches a mapping that is
//! going away), then the device state (`Mutex`). The timeline's lock is a leaf: taken last,
//! never held while taking another. This module must not touch the VM, the vCPU or host knobs.

pub mod dma;
pub mod event_loop;
pub mod iommu;
pub mod queue;
pub mod request;
pub mod watchdog;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use pinlab_abi as abi;

use crate::addr::{Gpa, Iova};
use crate::memory::GuestRam;
use crate::scenario::DeviceSpec;
use crate::timeline::{DmaDirection, Mono, Timeline, What};

pub use dma::Stats;
pub use event_loop::{serve, DoneSignal, Doorbells, Error as ServeError, Kick};
pub use request::{DmaRequest, IommuRequest, RequestError};
pub use watchdog::{Limits, StopReason};

/// The thread name device events are recorded under.
const THREAD: &str = "device";

/// Why a guest request was refused or failed: each converts to the ABI status the guest is
/// answered with, here only ([`Rejection::status`]).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Iommu(#[from] iommu::Error),
    #[error(transparent)]
    Dma(#[from] dma::Error),
    #[error(transparent)]
    Queue(#[from] queue::Error),
    #[error("the setup record at {0} is not inside guest RAM")]
    SetupRecord(Gpa),
    #[error("the IOMMU queue [{}, {}) and the DMA queue [{}, {}) overlap",
        iommu.start, iommu.end, dma.start, dma.end)]
    QueuesOverlap { iommu: Range<Gpa>, dma: Range<Gpa> },
}

impl Rejection {
    /// The ABI status the guest is answered with.
    pub fn status(&self) -> u32 {
        match self {
            Rejection::Request(e) => e.status(),
            Rejection::Iommu(e) => e.status(),
            Rejection::Dma(e) => e.status(),
            Rejection::Queue(e) => e.status(),
            Rejection::SetupRecord(_) => abi::STATUS_OUT_OF_RANGE,
            Rejection::QueuesOverlap { .. } => abi::STATUS_ALIASED,
        }
    }

    /// Whether the host, not the guest, failed (worth a log line).
    fn is_host_failure(&self) -> bool {
        matches!(self.status(), abi::STATUS_IO_ERROR | abi::STATUS_PIN_FAILED)
    }
}

/// Workload progress, the watchdog's heartbeat: bumped for each DMA descriptor that moved data,
/// each IOMMU request that succeeded, and (by the runner) each guest phase accepted in order.
/// Nothing else bumps it: a guest that spins, rings empty doorbells, floods the console or sends
/// only rejected requests makes no progress.
#[derive(Debug, Default)]
pub struct Progress(AtomicU64);

impl Progress {
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The device state behind one lock.
pub struct State {
    iommu_queue: Option<queue::Queue>,
    dma_queue: Option<queue::Queue>,
    pub iommu: iommu::Iommu,
    dma: dma::DmaEngine,
}

pub struct Devices {
    pub ram: Arc<RwLock<GuestRam>>,
    state: Mutex<State>,
    pub stats: Stats,
    pub progress: Progress,
    timeline: Arc<Timeline>,
}

impl Devices {
    pub fn new(ram: Arc<RwLock<GuestRam>>, device: &DeviceSpec, timeline: Arc<Timeline>) -> Self {
        Devices {
            ram,
            state: Mutex::new(State {
                iommu_queue: None,
                dma_queue: None,
                iommu: iommu::Iommu::with_options(device.pin, device.into()),
                dma: dma::DmaEngine::default(),
            }),
            stats: Stats::default(),
            progress: Progress::default(),
            timeline,
        }
    }

    /// Readies the calling thread, the one that serves the doorbells, for the pins this device
    /// takes ([`crate::pin::prepare_thread`]); keep the result while it serves. A failure is
    /// only logged (`None`): the first request does the same work then.
    pub fn prepare_thread(&self) -> Option<crate::pin::io_uring::WorkerStart> {
        let kind = self.state().iommu.kind();
        crate::pin::prepare_thread(kind)
            .inspect_err(|e| tracing::debug!("readying the device thread for {kind:?} pins: {e}"))
            .ok()
            .flatten()
    }

    /// The device state (a poisoned lock is taken over: the state is plain data and each
    /// request leaves it consistent). Take guest RAM's lock first if you need both.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ram(&self) -> RwLockReadGuard<'_, GuestRam> {
        self.ram.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest said where its queues are (`PORT_SETUP`, whose value is the record's GPA):
    /// validate, answer in the record's `status`.
    pub fn setup(&self, record_gpa: u64) {
        let ram = self.ram();
        let gpa = Gpa(record_gpa);
        let record = std::mem::size_of::<abi::DeviceSetup>() as u64;
        let Ok(mut s) = ram
            .translate(gpa, record)
            .and_then(|_| ram.read_obj::<abi::DeviceSetup>(gpa))
        else {
            self.stats.reject(Rejection::SetupRecord(gpa).status());
            return;
        };
        let size = ram.size();
        let queues = queue::Queue::validate(Gpa(s.iommu_queue_gpa), s.iommu_entries, size)
            .and_then(|i| {
                queue::Queue::validate(Gpa(s.dma_queue_gpa), s.dma_entries, size).map(|d| (i, d))
            })
            .map_err(Rejection::from)
            .and_then(|(i, d)| {
                if queue::overlaps(&i.range(), &d.range()) {
                    Err(Rejection::QueuesOverlap {
                        iommu: i.range(),
                        dma: d.range(),
                    })
                } else {
                    Ok((i, d))
                }
            });
        s.status = match queues {
            Ok((i, d)) => {
                let mut st = self.state();
                st.iommu_queue = Some(i);
                st.dma_queue = Some(d);
                abi::STATUS_OK
            }
            Err(e) => {
                let status = e.status();
                self.stats.reject(status);
                status
            }
        };
        // The record was checked to lie inside RAM above.
        let _ = ram.write_obj(gpa, s);
    }

    /// The IOMMU doorbell rang: execute every pending MAP/UNMAP, each recorded on the timeline
    /// with the status the guest was answered with.
    pub fn service_iommu(&self) {
        self.service(Which::Iommu, |ram, st, pending, _, answer| {
            for (i, (_, d)) in pending.iter().enumerate() {
                answer(i, self.iommu_one(ram, st, d));
            }
        });
    }

    /// One IOMMU descriptor: mapped or unmapped, counted, and put on the timeline.
    fn iommu_one(
        &self,
        ram: &GuestRam,
        st: &mut State,
        d: &abi::Descriptor,
    ) -> Result<u64, Rejection> {
        let r: Result<&AtomicU64, Rejection> = match IommuRequest::parse(d, ram.size()) {
            Ok(IommuRequest::Map(m)) => st
                .iommu
                .map(ram, &m)
                .map(|()| &self.stats.maps)
                .map_err(Rejection::from),
            Ok(IommuRequest::Unmap(u)) => st
                .iommu
                .unmap(ram, &u)
                .map(|()| &self.stats.unmaps)
                .map_err(Rejection::from),
            Err(e) => Err(e.into()),
        };
        if let Ok(counter) = r {
            counter.fetch_add(1, Ordering::Relaxed);
            self.progress.bump();
        }
        let status = abi::status_name(
            r.as_ref()
                .map_or_else(Rejection::status, |_| abi::STATUS_OK),
        );
        // The guest's own values, as sent: a refused request is recorded as it was asked.
        let (iova, len) = (Iova(d.iova), d.len);
        let what = match d.op {
            abi::OP_MAP => What::IommuMap {
                iova,
                gpa: Gpa(d.arg),
                len,
                status,
            },
            abi::OP_UNMAP => What::IommuUnmap { iova, len, status },
            _ => return r.map(|_| 0),
        };
        self.timeline.instant(THREAD, what);
        r.map(|_| 0)
    }

    /// The DMA doorbell rang: execute every pending descriptor through the pins, the runs of
    /// well-formed ones as batches ([`dma::DmaEngine::execute_batch`]). Each run of descriptors
    /// in one direction is a `DmaBatch` span on the timeline.
    pub fn service_dma(&self) {
        let mut span = Batch::default();
        self.service(Which::Dma, |ram, st, pending, forbidden, answer| {
            // Each answer's span starts where the previous one ended.
            let mut started = Mono::now();
            let mut account = |d: &abi::Descriptor, r: &Result<u64, Rejection>| {
                self.stats.descriptors.fetch_add(1, Ordering::Relaxed);
                if let Ok(bytes) = r {
                    let counter = match d.op {
                        abi::OP_TO_GUEST => Some(&self.stats.bytes_to_guest),
                        abi::OP_FROM_GUEST => Some(&self.stats.bytes_from_guest),
                        _ => None,
                    };
                    if let Some(c) = counter {
                        c.fetch_add(*bytes, Ordering::Relaxed);
                        self.progress.bump();
                    }
                }
                if let Some(direction) = DmaRequest::direction_of(d.op) {
                    let bytes = *r.as_ref().unwrap_or(&0);
                    span.add(&self.timeline, direction, started, bytes, r.is_err());
                }
                started = Mono::now();
            };
            let parsed: Vec<_> = pending
                .iter()
                .map(|(_, d)| DmaRequest::parse(d, ram.size()))
                .collect();
            let mut i = 0;
            while i < pending.len() {
                // The well-formed run from `i` goes to the engine as one batch.
                let reqs: Vec<DmaRequest> = parsed[i..]
                    .iter()
                    .map_while(|p| p.as_ref().ok().copied())
                    .collect();
                if let Err(e) = &parsed[i] {
                    let r = Err(Rejection::from(*e));
                    account(&pending[i].1, &r);
                    answer(i, r);
                    i += 1;
                    continue;
                }
                st.dma
                    .execute_batch(ram, &mut st.iommu, &reqs, forbidden, &mut |k, r| {
                        let r = r.map_err(Rejection::from);
                        account(&pending[i + k].1, &r);
                        answer(i + k, r);
                    });
                i += reqs.len();
            }
        });
        span.flush(&self.timeline);
    }

    /// Consumes one queue: the pending descriptors go to `exec`, which answers each (by its
    /// index, in order) with `Ok(result)` or `Err(rejection)`; each answer becomes its
    /// completion at once. A queue not set up, or malformed, is a reject. `exec` also gets the
    /// ranges an output buffer may not overlap (the reserved low area and both queues).
    fn service(
        &self,
        which: Which,
        mut exec: impl FnMut(
            &GuestRam,
            &mut State,
            &[(u32, abi::Descriptor)],
            &[Range<Gpa>],
            &mut dyn FnMut(usize, Result<u64, Rejection>),
        ),
    ) {
        let ram = self.ram();
        let mut guard = self.state();
        let st = &mut *guard;
        let slot = match which {
            Which::Iommu => &mut st.iommu_queue,
            Which::Dma => &mut st.dma_queue,
        };
        // Taken out while it is serviced, so `exec` can have the rest of the state.
        let Some(mut q) = slot.take() else {
            self.stats.reject(abi::STATUS_BAD_RING);
            return;
        };
        let mut forbidden = vec![queue::reserved(), q.range()];
        forbidden.extend(
            st.iommu_queue
                .iter()
                .chain(&st.dma_queue)
                .map(|o| o.range()),
        );
        match q.pending(&ram) {
            Err(fault) => self.stats.reject(fault.status()),
            Ok(pending) => {
                let mut answer = |i: usize, r: Result<u64, Rejection>| {
                    let (n, d) = &pending[i];
                    let (status, result) = match r {
                        Ok(result) => (abi::STATUS_OK, result),
                        Err(e) => {
                            if e.is_host_failure() {
                                tracing::warn!("{e}");
                            }
                            let status = e.status();
                            self.stats.reject(status);
                            (status, 0)
                        }
                    };
                    q.complete(&ram, *n, d.tag, status, result);
                    q.publish(&ram, *n);
                };
                exec(&ram, st, &pending, &forbidden, &mut answer);
            }
        }
        match which {
            Which::Iommu => st.iommu_queue = Some(q),
            Which::Dma => st.dma_queue = Some(q),
        }
    }
}

/// Which of the two queues a doorbell is for.
#[derive(Clone, Copy)]
enum Which {
    Iommu,
    Dma,
}

/// One direction's run of descriptors within a doorbell's batch, becoming a `DmaBatch` span.
#[derive(Default)]
struct Batch {
    open: Option<Run>,
}

struct Run {
    direction: DmaDirection,
    start: Mono,
    end: Mono,
    descriptors: u32,
    bytes: u64,
    failed: u32,
}

impl Batch {
    /// Adds one descriptor that started at `start` and has just ended; a change of direction
    /// closes the run so far.
    fn add(
        &mut self,
        t: &Timeline,
        direction: DmaDirection,
        start: Mono,
        bytes: u64,
        failed: bool,
    ) {
        if self.open.as_ref().is_some_and(|r| r.direction != direction) {
            self.flush(t);
        }
        let run = self.open.get_or_insert(Run {
            direction,
            start,
            end: start,
            descriptors: 0,
            bytes: 0,
            failed: 0,
        });
        run.end = Mono::now();
        run.descriptors = run.descriptors.saturating_add(1);
        run.bytes = run.bytes.saturating_add(bytes);
        run.failed = run.failed.saturating_add(failed as u32);
    }

    fn flush(&mut self, t: &Timeline) {
        if let Some(r) = self.open.take() {
            t.span_between(
                r.start,
                r.end,
                THREAD,
                What::DmaBatch {
                    direction: r.direction,
                    descriptors: r.descriptors,
                    bytes: r.bytes,
                    failed: r.failed,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests;
