//! The guest's driver for the two queues (IOMMU and DMA): build descriptors, ring, poll.
//!
//! Queues live in the guest's .bss. The guest writes descriptors, publishes `tail` with release
//! ordering, writes the doorbell port (an ioeventfd: no exit), then polls `head`, which the
//! device thread publishes after writing the completions.

use core::sync::atomic::{fence, AtomicU32, Ordering};

use pinlab_abi as abi;

use crate::rt::{outl, pause};

pub const ENTRIES: u32 = 256;
pub const QUEUE_BYTES: usize = abi::queue_bytes(ENTRIES) as usize;

#[repr(C, align(4096))]
pub struct QueueMem(pub [u8; QUEUE_BYTES]);

/// A queue in guest memory and the guest's producer index.
pub struct Queue {
    base: *mut u8,
    entries: u32,
    doorbell: u16,
    tail: u32,
}

impl Queue {
    /// # Safety
    /// `mem` must be valid for the queue's size for the life of the queue and shared with the
    /// device only.
    pub unsafe fn new(mem: *mut QueueMem, doorbell: u16) -> Self {
        Queue {
            base: mem as *mut u8,
            entries: ENTRIES,
            doorbell,
            tail: 0,
        }
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    fn header_field(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: the header is 16 bytes of u32 fields at the queue base, 4-byte aligned, alive
        // as long as `self`; the device accesses them only atomically too.
        unsafe { AtomicU32::from_ptr(self.base.add(offset) as *mut u32) }
    }

    pub fn head(&self) -> u32 {
        self.header_field(4).load(Ordering::Acquire)
    }

    pub fn fault(&self) -> u32 {
        self.header_field(8).load(Ordering::Acquire)
    }

    /// Write a descriptor into the next free slot (the caller keeps at most `entries` in flight).
    pub fn push(&mut self, mut d: abi::Descriptor) -> u32 {
        let n = self.tail;
        let slot = n % self.entries;
        d.tag = n as u64;
        // SAFETY: slot < entries, so both records lie inside the queue memory.
        unsafe {
            let dp = self.base.add(abi::descriptor_offset(slot) as usize) as *mut abi::Descriptor;
            dp.write_volatile(d);
            let cp = self
                .base
                .add(abi::completion_offset(self.entries, slot) as usize)
                as *mut abi::Completion;
            cp.write_volatile(abi::Completion::default());
        }
        self.tail = self.tail.wrapping_add(1);
        n
    }

    /// Publish `tail` and ring the doorbell.
    pub fn ring(&self) {
        fence(Ordering::Release);
        self.header_field(0).store(self.tail, Ordering::Release);
        // SAFETY: this queue's memory is the device's to read and write (`Queue::new`).
        unsafe { outl(self.doorbell, 1) };
    }

    /// Publish an arbitrary `tail` (hostile mode only).
    pub fn ring_with_tail(&self, tail: u32) {
        self.header_field(0).store(tail, Ordering::Release);
        // SAFETY: as in `ring`; a forged tail is the device's to refuse, not to act on.
        unsafe { outl(self.doorbell, 1) };
    }

    /// Forget a fault: clear it, resynchronise `tail` with the device's `head`.
    pub fn recover(&mut self) {
        self.tail = self.head();
        self.header_field(0).store(self.tail, Ordering::Release);
        self.header_field(8).store(0, Ordering::Release);
    }

    /// Poll until everything pushed is complete or the queue faults.
    pub fn wait_all(&self) -> Result<(), u32> {
        loop {
            let f = self.fault();
            if f != 0 {
                return Err(f);
            }
            if self.head() == self.tail {
                fence(Ordering::Acquire);
                return Ok(());
            }
            pause();
        }
    }

    /// Poll until the device has consumed up to `head` (used when the tail was forged).
    pub fn wait_fault(&self) -> u32 {
        loop {
            let f = self.fault();
            if f != 0 {
                return f;
            }
            pause();
        }
    }

    pub fn completion(&self, n: u32) -> abi::Completion {
        let slot = n % self.entries;
        // SAFETY: slot < entries; the device wrote it before publishing head.
        unsafe {
            (self
                .base
                .add(abi::completion_offset(self.entries, slot) as usize)
                as *const abi::Completion)
                .read_volatile()
        }
    }

    /// Submit one descriptor, wait, and return its status.
    pub fn call(&mut self, d: abi::Descriptor) -> u32 {
        let n = self.push(d);
        self.ring();
        match self.wait_all() {
            Ok(()) => self.completion(n).status,
            Err(fault) => {
                self.recover();
                fault
            }
        }
    }
}

pub fn map_desc(iova: u64, gpa: u64, len: u64, perm: u32) -> abi::Descriptor {
    abi::Descriptor {
        op: abi::OP_MAP,
        flags: perm,
        iova,
        arg: gpa,
        len,
        ..Default::default()
    }
}

pub fn unmap_desc(iova: u64, len: u64) -> abi::Descriptor {
    abi::Descriptor {
        op: abi::OP_UNMAP,
        iova,
        len,
        ..Default::default()
    }
}

/// Tell the VMM where the queues are. Returns the VMM's status.
pub fn setup(iommu: u64, iommu_entries: u32, dma: u64, dma_entries: u32) -> u32 {
    let mut s = abi::DeviceSetup {
        iommu_queue_gpa: iommu,
        iommu_entries,
        dma_entries,
        dma_queue_gpa: dma,
        status: 0,
        _pad: 0,
    };
    let p = &mut s as *mut abi::DeviceSetup;
    // SAFETY: `p` is the live local record, which the VMM reads and writes during the exit.
    unsafe { outl(abi::PORT_SETUP, p as u64 as u32) };
    // SAFETY: `p` points at the local, which the VMM wrote during the synchronous exit.
    unsafe { core::ptr::addr_of!((*p).status).read_volatile() }
}

/// Announce a phase; returns once the VMM has run what was scheduled there.
pub fn phase(phase: u32, round: u32) {
    let mut p = abi::Phase {
        phase,
        round,
        ack: 0,
        _pad: 0,
    };
    let ptr = &mut p as *mut abi::Phase;
    // SAFETY: `ptr` is the live local record, which the VMM reads and acknowledges in.
    unsafe { outl(abi::PORT_PHASE, ptr as u64 as u32) };
    // SAFETY: as for setup: a synchronous exit wrote the ack into this local.
    let _ack = unsafe { core::ptr::addr_of!((*ptr).ack).read_volatile() };
}
