//! The devices the guest programs: the IOMMU (maps pin), the DMA engine, and their queues.
//!
//! `Devices` is the state the vCPU thread (setup exits), the device thread (doorbells) and the
//! perturbations (evidence) share. Guest RAM sits behind a `RwLock`: device work holds it for
//! reading for a whole batch, an action that moves guest RAM (mremap) holds it for writing, so
//! no device ever touches a mapping that is going away. Lock order: RAM, then device state.

pub mod dma;
pub mod iommu;
pub mod queue;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use pinlab_abi as abi;

use crate::addr::Gpa;
use crate::memory::GuestRam;
use crate::scenario::DeviceSpec;

pub use dma::Stats;

/// The device state behind one lock.
pub struct State {
    pub iommu_queue: Option<queue::Queue>,
    pub dma_queue: Option<queue::Queue>,
    pub iommu: iommu::Iommu,
    pub dma: dma::DmaEngine,
}

pub struct Devices {
    pub ram: Arc<RwLock<GuestRam>>,
    state: Mutex<State>,
    pub stats: Stats,
    /// Bumped on every doorbell serviced and every exit handled: the watchdog's heartbeat.
    pub progress: AtomicU64,
}

impl Devices {
    pub fn new(ram: Arc<RwLock<GuestRam>>, device: &DeviceSpec) -> Self {
        Devices {
            ram,
            state: Mutex::new(State {
                iommu_queue: None,
                dma_queue: None,
                iommu: iommu::Iommu::with_options(device.pin, device.into()),
                dma: dma::DmaEngine::default(),
            }),
            stats: Stats::default(),
            progress: AtomicU64::new(0),
        }
    }

    /// The device state (a poisoned lock is taken over: the state is plain data and each
    /// request leaves it consistent).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ram(&self) -> std::sync::RwLockReadGuard<'_, GuestRam> {
        self.ram.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest said where its queues are (`PORT_SETUP`): validate, answer in the record.
    pub fn setup(&self, record_gpa: u64) {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let ram = self.ram();
        let size = ram.size();
        let gpa = Gpa(record_gpa);
        if ram
            .translate(gpa, std::mem::size_of::<abi::DeviceSetup>() as u64)
            .is_err()
        {
            self.stats.reject(abi::STATUS_OUT_OF_RANGE);
            return;
        }
        let Ok(mut s) = ram.read_obj::<abi::DeviceSetup>(gpa) else {
            return;
        };
        let status = match (
            queue::Queue::validate(s.iommu_queue_gpa, s.iommu_entries, size),
            queue::Queue::validate(s.dma_queue_gpa, s.dma_entries, size),
        ) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(i), Ok(d)) if queue::overlaps(i.range(), d.range()) => Err(abi::STATUS_ALIASED),
            (Ok(i), Ok(d)) => Ok((i, d)),
        };
        s.status = match status {
            Ok((i, d)) => {
                let mut st = self.state();
                st.iommu_queue = Some(i);
                st.dma_queue = Some(d);
                abi::STATUS_OK
            }
            Err(e) => {
                self.stats.reject(e);
                e
            }
        };
        // The record was checked to lie inside RAM above.
        let _ = ram.write_obj(gpa, s);
    }

    /// The IOMMU doorbell rang: execute every pending MAP/UNMAP.
    pub fn service_iommu(&self) {
        self.service(Which::Iommu, |ram, st, d, _| {
            let (r, counter) = match d.op {
                abi::OP_MAP => (
                    st.iommu.map(ram, d.iova, d.arg, d.len, d.flags),
                    &self.stats.maps,
                ),
                abi::OP_UNMAP => (st.iommu.unmap(ram, d.iova, d.len), &self.stats.unmaps),
                _ => return Err(abi::STATUS_BAD_OP),
            };
            r.map(|()| {
                counter.fetch_add(1, Ordering::Relaxed);
                0
            })
        });
    }

    /// The DMA doorbell rang: execute every pending descriptor through the pins.
    pub fn service_dma(&self) {
        self.service(Which::Dma, |ram, st, d, forbidden| {
            self.stats.descriptors.fetch_add(1, Ordering::Relaxed);
            st.dma
                .execute(ram, &mut st.iommu, d, forbidden, &self.stats)
        });
    }

    /// Consumes one queue: each pending descriptor goes to `exec`, whose `Ok(result)` or
    /// `Err(status)` becomes its completion. A queue not set up, or malformed, is a reject.
    /// `exec` also gets the ranges an output buffer may not overlap (the reserved low area and
    /// both queues).
    fn service(
        &self,
        which: Which,
        mut exec: impl FnMut(&GuestRam, &mut State, &abi::Descriptor, &[(u64, u64)]) -> Result<u64, u32>,
    ) {
        self.progress.fetch_add(1, Ordering::Relaxed);
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
        let mut forbidden = vec![(0, abi::RESERVED_END_GPA), q.range()];
        forbidden.extend(
            st.iommu_queue
                .iter()
                .chain(&st.dma_queue)
                .map(|o| o.range()),
        );
        match q.pending(&ram) {
            Err(fault) => self.stats.reject(fault),
            Ok(pending) => {
                for (n, d) in pending {
                    let (status, result) = match exec(&ram, st, &d, &forbidden) {
                        Ok(result) => (abi::STATUS_OK, result),
                        Err(e) => {
                            self.stats.reject(e);
                            (e, 0)
                        }
                    };
                    q.complete(&ram, n, d.tag, status, result);
                    q.publish(&ram, n);
                }
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
