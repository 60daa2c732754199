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
use crate::scenario::PinKind;

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
    pub fn new(ram: Arc<RwLock<GuestRam>>, kind: PinKind) -> Self {
        Devices {
            ram,
            state: Mutex::new(State {
                iommu_queue: None,
                dma_queue: None,
                iommu: iommu::Iommu::new(kind),
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
        self.progress.fetch_add(1, Ordering::Relaxed);
        let ram = self.ram();
        let mut guard = self.state();
        let st = &mut *guard;
        let Some(q) = st.iommu_queue.as_mut() else {
            self.stats.reject(abi::STATUS_BAD_RING);
            return;
        };
        let pending = match q.pending(&ram) {
            Ok(p) => p,
            Err(fault) => {
                self.stats.reject(fault);
                return;
            }
        };
        for (n, d) in pending {
            let r = match d.op {
                abi::OP_MAP => st.iommu.map(&ram, d.iova, d.arg, d.len, d.flags),
                abi::OP_UNMAP => st.iommu.unmap(&ram, d.iova, d.len),
                _ => Err(abi::STATUS_BAD_OP),
            };
            let status = match r {
                Ok(()) => {
                    let c = if d.op == abi::OP_MAP {
                        &self.stats.maps
                    } else {
                        &self.stats.unmaps
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    abi::STATUS_OK
                }
                Err(e) => {
                    self.stats.reject(e);
                    e
                }
            };
            q.complete(&ram, n, d.tag, status, 0);
            q.publish(&ram, n);
        }
    }

    /// The DMA doorbell rang: execute every pending descriptor through the pins.
    pub fn service_dma(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let ram = self.ram();
        let mut guard = self.state();
        let st = &mut *guard;
        let Some(q) = st.dma_queue.as_mut() else {
            self.stats.reject(abi::STATUS_BAD_RING);
            return;
        };
        let pending = match q.pending(&ram) {
            Ok(p) => p,
            Err(fault) => {
                self.stats.reject(fault);
                return;
            }
        };
        let mut forbidden = vec![(0, abi::RESERVED_END_GPA), q.range()];
        if let Some(iq) = &st.iommu_queue {
            forbidden.push(iq.range());
        }
        for (n, d) in pending {
            self.stats.descriptors.fetch_add(1, Ordering::Relaxed);
            let (status, result) =
                match st
                    .dma
                    .execute(&ram, &mut st.iommu, &d, &forbidden, &self.stats)
                {
                    Ok(bytes) => (abi::STATUS_OK, bytes),
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
