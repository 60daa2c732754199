//! Fuzz mode (`abi::MODE_FUZZ`): a seeded PRNG sends `BootInfo::fuzz_ops` hostile operations
//! (random descriptors on both queues, doorbells, queue-header scribbles, forged tails, device
//! setups, phase markers, console records, port I/O), interleaved with valid traffic whose results
//! it checks (device writes seen, device-read checksums, a map/DMA/unmap cycle, completions
//! echoing their tags). The same seed sends the same operations, and the VMM's answers to them
//! hash into `FuzzTally::digest`.
//!
//! Hostile requests the VMM would accept must not let the device write memory this program uses
//! (its code, stack, statics, the valid region while its data is being checked): before sending,
//! each request is checked against the ABI's rules, and one that would pass and could write
//! outside the scratch area is moved into it (a writable map's GPA, a device read's output array,
//! a queue of a setup) or away from the valid IOVA windows. What the VMM must refuse is sent as
//! drawn. Phase markers are drawn so that none is the next one in order: the VMM must refuse every
//! one, and host actions run only at this program's own markers.

use core::sync::atomic::{AtomicU32, Ordering};

use pinlab_abi as abi;

use crate::device::{self, Queue, QueueMem, ENTRIES};
use crate::println;
use crate::report;
use crate::rt::{outl, pause};

const PAGE: u64 = abi::PAGE_SIZE;
/// Scratch memory the hostile requests may have the device write (and the valid map cycle maps).
const SCRATCH_PAGES: u64 = 16;
const SCRATCH_BYTES: u64 = SCRATCH_PAGES * PAGE;
/// Most pages one valid transfer moves.
const VALID_MAX_PAGES: u64 = 16;
/// Offset from the region's IOVA of the short-lived valid mapping (map, DMA, unmap, all in one
/// check); no hostile map may take it.
const WINDOW2_OFFSET: u64 = 1 << 34;
/// How far a hostile request is moved to leave a valid IOVA window.
const IOVA_SHIFT: u64 = 1 << 35;
/// Hostile mappings kept at most before the guest unmaps them: with the largest batch and the two
/// valid mappings the table stays below `abi::IOMMU_MAX_MAPPINGS`.
const HOSTILE_MAPS_KEPT: usize = 32;
const MAX_BATCH: u64 = 24;
/// Polls of a queue's `fault` before a forged tail counts as not flagged.
const FAULT_POLLS: u64 = 1 << 28;
/// Every this many hostile items, on average, one valid check.
const VALID_EVERY: u64 = 6;
/// Ports the VMM acts on with a record address: never sent random values (a setup or phase
/// record the guest did not place could have the VMM write its memory, a bad done record ends
/// the run).
const RECORD_PORTS: [u16; 3] = [abi::PORT_SETUP, abi::PORT_PHASE, abi::PORT_DONE];

// Valid check numbers (1-based indices into `abi::FUZZ_CHECKS`).
const CHECK_WRITE_SEEN: u32 = 1;
const CHECK_READ_CHECKSUM: u32 = 2;
const CHECK_MAP_UNMAP: u32 = 3;
const CHECK_UNMAPPED_REFUSED: u32 = 4;
const CHECK_COMPLETION_TAG: u32 = 5;
const CHECK_SETUP_RESTORED: u32 = 6;
const CHECK_FORGED_TAIL: u32 = 7;

// Hostile kinds (indices into `abi::FUZZ_KINDS`).
const KIND_IOMMU: usize = 0;
const KIND_DMA: usize = 1;
const KIND_DOORBELL: usize = 2;
const KIND_HEADER: usize = 3;
const KIND_FORGED_TAIL: usize = 4;
const KIND_SETUP: usize = 5;
const KIND_PHASE: usize = 6;
const KIND_CONSOLE: usize = 7;
const KIND_PORT_IO: usize = 8;

#[repr(C, align(4096))]
struct Scratch([u8; SCRATCH_BYTES as usize]);
static mut SCRATCH: Scratch = Scratch([0; SCRATCH_BYTES as usize]);

/// splitmix64 over a counter: the guest's only source of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        abi::mix64(self.0)
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

fn aligned(v: u64, a: u64) -> bool {
    v.is_multiple_of(a)
}

/// Whether `[a, a+alen)` and `[b, b+blen)` overlap (ranges that wrap count as overlapping
/// everything, so they are treated with care).
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    match (a.checked_add(alen), b.checked_add(blen)) {
        (Some(ae), Some(be)) => a < be && b < ae,
        _ => true,
    }
}

/// Whether `[a, a+alen)` lies inside `[b, b+blen)`.
fn inside(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a >= b && a.checked_add(alen).is_some_and(|e| e <= b + blen)
}

/// A queue header's u32 field at `offset`.
///
/// # Safety
/// `mem` is one of the guest's queue memories; the device touches the header only atomically.
unsafe fn header(mem: *mut QueueMem, offset: usize) -> &'static AtomicU32 {
    // SAFETY: per the contract, the header is 16 bytes of 4-aligned u32s at the start of `mem`,
    // a static.
    unsafe { AtomicU32::from_ptr((mem as *mut u8).add(offset) as *mut u32) }
}

/// One-byte, two-byte and four-byte port I/O (`size` 0, 1, 2) in both directions. The access
/// must end at or below port 0xffff (see `Fuzz::port`).
fn port_io(port: u16, size: u64, write: bool, value: u32) -> u32 {
    // SAFETY: the port is none of the record ports (the caller draws from the others); a write
    // to any other port is ignored by the VMM or rings a doorbell over the guest's own queues,
    // and a read is answered with all ones. No guest memory is touched.
    unsafe {
        match (size, write) {
            (0, true) => {
                core::arch::asm!("out dx, al", in("dx") port, in("al") value as u8, options(nostack, preserves_flags))
            }
            (1, true) => {
                core::arch::asm!("out dx, ax", in("dx") port, in("ax") value as u16, options(nostack, preserves_flags))
            }
            (_, true) => outl(port, value),
            (0, false) => {
                let v: u8;
                core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nostack, preserves_flags));
                return v as u32;
            }
            (1, false) => {
                let v: u16;
                core::arch::asm!("in ax, dx", in("dx") port, out("ax") v, options(nostack, preserves_flags));
                return v as u32;
            }
            (_, false) => {
                let v: u32;
                core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nostack, preserves_flags));
                return v;
            }
        }
    }
    0
}

struct Fuzz<'a> {
    rng: Rng,
    info: &'a abi::BootInfo,
    iommu: Queue,
    dma: Queue,
    iq: *mut QueueMem,
    dq: *mut QueueMem,
    scratch: u64,
    /// The long-lived valid mapping: the region at its IOVA.
    win_iova: u64,
    win_len: u64,
    win2_iova: u64,
    /// Hostile mappings the device accepted (iova, len), to unmap before the table fills.
    maps: [(u64, u64); abi::IOMMU_MAX_MAPPINGS as usize],
    nmaps: usize,
    t: abi::FuzzTally,
    unsupported: u32,
    /// Rounds this program has reported done (its phase order).
    rounds_done: u32,
}

impl Fuzz<'_> {
    fn answered(&mut self, v: u64) {
        self.t.digest = abi::mix64(self.t.digest ^ v);
    }

    fn check(&mut self, ok: bool, which: u32, status: u32) {
        if ok {
            self.t.valid_passed = self.t.valid_passed.saturating_add(1);
            return;
        }
        self.t.valid_failed = self.t.valid_failed.saturating_add(1);
        if self.t.first_failed_check == 0 {
            self.t.first_failed_check = which;
            self.t.first_failed_op = self.t.ops;
            self.t.first_failed_status = status;
            println!(
                "fuzz: check {} failed after {} hostile ops (status {})",
                abi::FUZZ_CHECKS[which as usize - 1],
                self.t.ops,
                abi::status_name(status)
            );
        }
    }

    fn sent(&mut self, kind: usize, n: u64) {
        self.t.ops += n;
        self.t.per_kind[kind] += n;
    }

    fn words(&self) -> &'static mut [u64] {
        // SAFETY: the VMM validated the region against guest RAM and the guest identity-maps it;
        // the device writes it only while a request this program sent is in flight, and no
        // hostile request may write it (see the module header).
        unsafe {
            core::slice::from_raw_parts_mut(
                self.info.region_gpa as *mut u64,
                (self.info.region_len / 8) as usize,
            )
        }
    }

    fn scratch_words(&self) -> &'static [u64] {
        // SAFETY: the scratch static, which the device writes only while a request is in flight
        // (every request here is waited for before this is read).
        unsafe {
            core::slice::from_raw_parts(self.scratch as *const u64, (SCRATCH_BYTES / 8) as usize)
        }
    }

    // -----------------------------------------------------------------------------------------
    // Values: what a hostile guest would try, weighted toward the edges.

    fn addr(&mut self) -> u64 {
        let ram = self.info.ram_size;
        match self.rng.below(17) {
            0 => 0,
            1 => self.rng.next(),
            2 => u64::MAX - self.rng.below(2) * 0xfff,
            3 => ram,
            4 => ram - PAGE,
            5 => ram.wrapping_sub(self.rng.below(64)),
            6 => abi::IOVA_LIMIT - PAGE * self.rng.below(2),
            7 => self.scratch + self.rng.below(SCRATCH_PAGES) * PAGE,
            8 => self.scratch + self.rng.below(SCRATCH_BYTES),
            9 => self.win_iova + self.rng.below(self.win_len / PAGE + 1) * PAGE,
            10 => self.win2_iova,
            11 => self.iq as u64 + self.rng.below(64) * 8,
            12 => self.dq as u64 + self.rng.below(64) * 8,
            13 => self.rng.below(abi::RESERVED_END_GPA),
            14 => (self.rng.next() % ram) & !(PAGE - 1),
            15 => (self.rng.next() % abi::IOVA_LIMIT) & !(PAGE - 1),
            _ => 1 << self.rng.below(64),
        }
    }

    fn len(&mut self) -> u64 {
        match self.rng.below(11) {
            0 => 0,
            1 => PAGE,
            2 => PAGE * (1 + self.rng.below(16)),
            3 => self.rng.next(),
            4 => u64::MAX - self.rng.below(2) * 0xfff,
            5 => self.rng.below(2 * PAGE),
            6 => self.win_len,
            7 => self.info.ram_size,
            8 => 1 << self.rng.below(64),
            9 => SCRATCH_BYTES,
            _ => PAGE * (1 + self.rng.below(4)),
        }
    }

    fn small_u32(&mut self) -> u32 {
        match self.rng.below(6) {
            0 => 0,
            1 => u32::MAX,
            2 => self.rng.next() as u32,
            _ => self.rng.below(8) as u32,
        }
    }

    fn opcode(&mut self, iommu: bool) -> u32 {
        match self.rng.below(10) {
            0 => self.rng.next() as u32,
            1 => abi::OP_NOP,
            2 if iommu => abi::OP_TO_GUEST,
            2 => abi::OP_MAP,
            3..=5 if iommu => abi::OP_MAP,
            3..=5 => abi::OP_FROM_GUEST,
            _ if iommu => abi::OP_UNMAP,
            _ => abi::OP_TO_GUEST,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Guards: a hostile request the VMM would accept may only write scratch memory.

    /// Moves an IOVA range off the short-lived valid window.
    fn off_window2(&self, iova: u64, len: u64) -> u64 {
        if overlaps(iova, len.max(1), self.win2_iova, VALID_MAX_PAGES * PAGE) {
            iova.wrapping_add(IOVA_SHIFT)
        } else {
            iova
        }
    }

    fn guard_map(&mut self, d: &mut abi::Descriptor) {
        let (iova, gpa, len) = (d.iova, d.arg, d.len);
        let parses = len != 0
            && gpa
                .checked_add(len)
                .is_some_and(|e| e <= self.info.ram_size)
            && iova.checked_add(len).is_some_and(|e| e <= abi::IOVA_LIMIT)
            && aligned(iova, PAGE)
            && aligned(gpa, PAGE)
            && aligned(len, PAGE)
            && d.flags != 0
            && d.flags & !(abi::PERM_READ | abi::PERM_WRITE) == 0;
        if !parses {
            return;
        }
        // A read-only mapping lets the device read only: any GPA is harmless.
        if d.flags & abi::PERM_WRITE != 0 && !inside(gpa, len, self.scratch, SCRATCH_BYTES) {
            let pages = (len / PAGE).clamp(1, SCRATCH_PAGES);
            d.len = pages * PAGE;
            d.arg = self.scratch + self.rng.below(SCRATCH_PAGES - pages + 1) * PAGE;
        }
        d.iova = self.off_window2(iova, d.len);
    }

    fn guard_unmap(&mut self, d: &mut abi::Descriptor) {
        if d.iova == self.win_iova && d.len == self.win_len {
            d.len += PAGE;
        }
    }

    fn guard_to_guest(&mut self, d: &mut abi::Descriptor) {
        if overlaps(d.iova, d.len.max(1), self.win_iova, self.win_len) {
            d.iova = d.iova.wrapping_add(IOVA_SHIFT);
        }
    }

    /// Whether `[gpa, gpa+len)` is a range the VMM forbids output arrays to overlap (reserved
    /// low area, the queues): a request there must be refused.
    fn forbidden(&self, gpa: u64, len: u64) -> bool {
        let q = abi::queue_bytes(ENTRIES);
        overlaps(gpa, len, 0, abi::RESERVED_END_GPA)
            || overlaps(gpa, len, self.iq as u64, q)
            || overlaps(gpa, len, self.dq as u64, q)
    }

    fn guard_from_guest(&mut self, d: &mut abi::Descriptor) {
        let (iova, len, out) = (d.iova, d.len, d.arg);
        let range_ok = len != 0
            && iova.checked_add(len).is_some()
            && aligned(iova, PAGE)
            && aligned(len, PAGE);
        if !range_ok {
            return;
        }
        let bytes = len / PAGE * 8;
        let out_ok = out
            .checked_add(bytes)
            .is_some_and(|e| e <= self.info.ram_size)
            && aligned(out, 8);
        if !out_ok || self.forbidden(out, bytes) || inside(out, bytes, self.scratch, SCRATCH_BYTES)
        {
            return;
        }
        d.arg = if bytes <= SCRATCH_BYTES {
            self.scratch + self.rng.below((SCRATCH_BYTES - bytes) / 8 + 1) * 8
        } else {
            out | 4
        };
    }

    // -----------------------------------------------------------------------------------------
    // Hostile operations.

    fn descriptor(&mut self, iommu: bool) -> abi::Descriptor {
        let mut d = abi::Descriptor {
            op: self.opcode(iommu),
            flags: self.small_u32(),
            iova: self.addr(),
            arg: self.addr(),
            len: self.len(),
            tag: 0,
            _reserved: [self.rng.next(), 0, 0],
        };
        if self.rng.one_in(4) {
            // A seed, not an address, for device writes.
            d.arg = self.rng.next();
        }
        if iommu {
            match d.op {
                abi::OP_MAP => self.guard_map(&mut d),
                abi::OP_UNMAP => self.guard_unmap(&mut d),
                _ => {}
            }
        } else {
            match d.op {
                abi::OP_TO_GUEST => self.guard_to_guest(&mut d),
                abi::OP_FROM_GUEST => self.guard_from_guest(&mut d),
                _ => {}
            }
        }
        d
    }

    fn batch(&mut self, iommu: bool, budget: u64) {
        let k = (1 + self.rng.below(MAX_BATCH)).min(budget);
        let mut sent = [abi::Descriptor::default(); MAX_BATCH as usize];
        for d in sent.iter_mut().take(k as usize) {
            *d = self.descriptor(iommu);
        }
        let q = if iommu {
            &mut self.iommu
        } else {
            &mut self.dma
        };
        let first = q.head();
        for d in &sent[..k as usize] {
            q.push(*d);
        }
        q.ring();
        let done = q.wait_all();
        self.sent(if iommu { KIND_IOMMU } else { KIND_DMA }, k);
        if let Err(fault) = done {
            // A batch smaller than the queue is never malformed.
            self.check(false, CHECK_COMPLETION_TAG, fault);
            let q = if iommu {
                &mut self.iommu
            } else {
                &mut self.dma
            };
            q.recover();
            return;
        }
        for (i, d) in sent[..k as usize].iter().enumerate() {
            let n = first.wrapping_add(i as u32);
            let q = if iommu { &self.iommu } else { &self.dma };
            let c = q.completion(n);
            self.check(
                c.tag == n as u64 && c.status != abi::STATUS_PENDING,
                CHECK_COMPLETION_TAG,
                c.status,
            );
            self.answered(c.status as u64);
            if c.status != abi::STATUS_OK || d.op == abi::OP_NOP {
                continue;
            }
            self.t.hostile_accepted = self.t.hostile_accepted.saturating_add(1);
            match (iommu, d.op) {
                (true, abi::OP_MAP) => {
                    self.maps[self.nmaps] = (d.iova, d.len);
                    self.nmaps += 1;
                }
                (true, abi::OP_UNMAP) => {
                    if let Some(j) = self.maps[..self.nmaps]
                        .iter()
                        .position(|&m| m == (d.iova, d.len))
                    {
                        self.nmaps -= 1;
                        self.maps[j] = self.maps[self.nmaps];
                    }
                }
                _ => {}
            }
        }
    }

    /// Unmaps every hostile mapping the device accepted (each must unmap).
    fn unmap_hostile(&mut self) {
        while self.nmaps > 0 {
            self.nmaps -= 1;
            let (iova, len) = self.maps[self.nmaps];
            let st = self.iommu.call(device::unmap_desc(iova, len));
            self.check(st == abi::STATUS_OK, CHECK_MAP_UNMAP, st);
        }
    }

    fn doorbell(&mut self) {
        let port = if self.rng.one_in(2) {
            abi::PORT_IOMMU_DOORBELL
        } else {
            abi::PORT_DMA_DOORBELL
        };
        let (size, value) = (self.rng.below(3), self.rng.next() as u32);
        port_io(port, size, true, value);
        self.sent(KIND_DOORBELL, 1);
    }

    fn which_queue(&mut self) -> (bool, *mut QueueMem) {
        if self.rng.one_in(2) {
            (true, self.iq)
        } else {
            (false, self.dq)
        }
    }

    /// Scribbles on the header fields the device owns (`head`) or flags (`fault`, the padding),
    /// rings, and puts them back: the device must ignore the scribble, or stay quiet until the
    /// fault is cleared.
    fn header_scribble(&mut self) {
        let (iommu, mem) = self.which_queue();
        let offset = 4 * (1 + self.rng.below(3)) as usize;
        let value = self.small_u32();
        // SAFETY: `mem` is one of the guest's queue memories.
        let field = unsafe { header(mem, offset) };
        let before = field.load(Ordering::Acquire);
        field.store(value, Ordering::Release);
        let port = if iommu {
            abi::PORT_IOMMU_DOORBELL
        } else {
            abi::PORT_DMA_DOORBELL
        };
        port_io(port, 2, true, 1);
        field.store(before, Ordering::Release);
        self.sent(KIND_HEADER, 1);
    }

    /// A tail more than a queue's worth ahead of the device (or behind it): the device must flag
    /// the queue, not walk it.
    fn forged_tail(&mut self) {
        let iommu = self.rng.one_in(2);
        let step = self.rng.below(1 << 31) as u32;
        let ahead = self.rng.one_in(2);
        let q = if iommu {
            &mut self.iommu
        } else {
            &mut self.dma
        };
        let head = q.head();
        let tail = if ahead {
            head.wrapping_add(q.entries() + 1).wrapping_add(step)
        } else {
            head.wrapping_sub(1).wrapping_sub(step)
        };
        q.ring_with_tail(tail);
        let mut polls = 0;
        let fault = loop {
            let f = q.fault();
            if f != 0 || polls == FAULT_POLLS {
                break f;
            }
            polls += 1;
            pause();
        };
        q.recover();
        self.sent(KIND_FORGED_TAIL, 1);
        self.answered(fault as u64);
        self.check(fault == abi::STATUS_BAD_RING, CHECK_FORGED_TAIL, fault);
        if fault == 0 {
            println!("fuzz: a forged tail was never flagged; the queue cannot be trusted");
            report::abort();
        }
    }

    /// Whether a queue at `gpa` of `entries` would pass the device's validation.
    fn queue_valid(&self, gpa: u64, entries: u32) -> bool {
        entries != 0
            && entries.is_power_of_two()
            && entries <= abi::QUEUE_MAX_ENTRIES
            && aligned(gpa, 16)
            && gpa
                .checked_add(abi::queue_bytes(entries))
                .is_some_and(|e| e <= self.info.ram_size && gpa >= abi::RESERVED_END_GPA)
    }

    /// Keeps a queue the device would accept inside scratch.
    fn guard_queue(&mut self, gpa: &mut u64, entries: &mut u32) {
        let bytes = abi::queue_bytes(*entries);
        if !self.queue_valid(*gpa, *entries) || inside(*gpa, bytes, self.scratch, SCRATCH_BYTES) {
            return;
        }
        if bytes <= SCRATCH_BYTES {
            *gpa = self.scratch + self.rng.below((SCRATCH_BYTES - bytes) / 16 + 1) * 16;
        } else {
            *entries = 3;
        }
    }

    fn entries(&mut self) -> u32 {
        match self.rng.below(8) {
            0 => 0,
            1 => 1 << self.rng.below(12),
            2 => u32::MAX,
            3 => 100,
            4 => self.rng.next() as u32,
            _ => 1 << self.rng.below(6),
        }
    }

    /// A setup record with random queues (in scratch), or a record address outside guest RAM.
    /// When the device takes it, the real queues are set up again and must be accepted.
    fn setup(&mut self) {
        let record = core::mem::size_of::<abi::DeviceSetup>() as u64;
        let status = if self.rng.one_in(4) {
            // Past (or straddling) the end of RAM: refused without a read or a write.
            let gpa = self.info.ram_size.wrapping_sub(self.rng.below(record));
            // SAFETY: the record does not lie wholly inside guest RAM, so the VMM refuses it
            // without reading or writing anything.
            unsafe { outl(abi::PORT_SETUP, gpa as u32) };
            u32::MAX
        } else {
            let (mut ig, mut ie) = (self.addr(), self.entries());
            let (mut dg, mut de) = (self.addr(), self.entries());
            self.guard_queue(&mut ig, &mut ie);
            self.guard_queue(&mut dg, &mut de);
            let at = self.scratch + self.rng.below(SCRATCH_BYTES - record + 1);
            let p = at as *mut abi::DeviceSetup;
            // SAFETY: `p` lies inside the scratch static (checked bound above); unaligned writes
            // are allowed through `write_unaligned`.
            unsafe {
                p.write_unaligned(abi::DeviceSetup {
                    iommu_queue_gpa: ig,
                    iommu_entries: ie,
                    dma_entries: de,
                    dma_queue_gpa: dg,
                    status: 0,
                    _pad: 0,
                })
            };
            // SAFETY: the record is in scratch, the only memory the VMM may write for it (its
            // status), and any queue it names that the VMM would accept lies in scratch too.
            unsafe { outl(abi::PORT_SETUP, at as u32) };
            // SAFETY: as above; the VMM wrote the status during the synchronous exit.
            unsafe { core::ptr::addr_of!((*p).status).read_unaligned() }
        };
        self.sent(KIND_SETUP, 1);
        self.answered(status as u64);
        if status == abi::STATUS_OK {
            self.restore_queues();
        }
    }

    /// Points the device at the real queues again, from empty. The headers are cleared first: a
    /// doorbell rung earlier and serviced after the setup then finds nothing to consume (with
    /// the old `tail` it would replay stale slots from the device's fresh index 0).
    fn restore_queues(&mut self) {
        for mem in [self.iq, self.dq] {
            for offset in [0, 4, 8] {
                // SAFETY: `mem` is one of the guest's queue memories; the device is on the
                // hostile setup's queues until the setup below.
                unsafe { header(mem, offset) }.store(0, Ordering::Release);
            }
        }
        let st = device::setup(self.iq as u64, ENTRIES, self.dq as u64, ENTRIES);
        self.check(st == abi::STATUS_OK, CHECK_SETUP_RESTORED, st);
        if st != abi::STATUS_OK {
            println!("fuzz: the real queues were refused after a hostile setup");
            report::abort();
        }
        // The device's consumer index is 0 again: resynchronise the producers with it.
        self.iommu.recover();
        self.dma.recover();
    }

    /// A phase marker that is never the next in order (so the VMM must refuse it), from a record
    /// in scratch.
    fn phase(&mut self) {
        let next = self.rounds_done.wrapping_add(1);
        let mut code = match self.rng.below(7) {
            0 => 0,
            1 => self.rng.next() as u32,
            2 => abi::PHASE_MAPPED,
            3 => abi::PHASE_ROUNDS_START,
            _ => abi::PHASE_ROUND_DONE,
        };
        let mut round = match self.rng.below(7) {
            0 => 0,
            1 => self.rounds_done,
            2 => next,
            3 => next.wrapping_add(1),
            4 => self.info.rounds.wrapping_add(1),
            5 => u32::MAX,
            _ => self.rng.next() as u32,
        };
        if code == abi::PHASE_UNMAPPED {
            code = abi::PHASE_MAPPED;
        }
        if code == abi::PHASE_ROUND_DONE && round == next {
            round = next.wrapping_add(1);
        }
        let record = core::mem::size_of::<abi::Phase>() as u64;
        let at = self.scratch + self.rng.below(SCRATCH_BYTES - record + 1);
        let p = at as *mut abi::Phase;
        // SAFETY: `p` lies inside the scratch static; unaligned accesses go through
        // `write_unaligned` / `read_unaligned`.
        unsafe {
            p.write_unaligned(abi::Phase {
                phase: code,
                round,
                ack: 0,
                _pad: 0,
            });
            outl(abi::PORT_PHASE, at as u32);
        }
        // SAFETY: as above; the VMM acknowledged during the synchronous exit.
        let ack = unsafe { core::ptr::addr_of!((*p).ack).read_unaligned() };
        self.t.phases_sent = self.t.phases_sent.saturating_add(1);
        self.sent(KIND_PHASE, 1);
        self.answered(ack as u64);
    }

    /// A console record in scratch with a random length and bytes, or at a random address.
    fn console(&mut self) {
        let gpa = if self.rng.one_in(3) {
            self.rng.next() as u32
        } else {
            let size = core::mem::size_of::<abi::ConsoleMsg>() as u64;
            let at = self.scratch + self.rng.below(SCRATCH_BYTES - size + 1);
            let len = match self.rng.below(5) {
                0 => 0,
                1 => abi::CONSOLE_MAX as u32,
                2 => abi::CONSOLE_MAX as u32 + 1,
                3 => u32::MAX,
                _ => self.rng.below(abi::CONSOLE_MAX as u64) as u32,
            };
            let mut msg = abi::ConsoleMsg {
                len,
                _pad: 0,
                bytes: [0; abi::CONSOLE_MAX],
            };
            for chunk in msg.bytes.chunks_mut(8) {
                let w = self.rng.next().to_le_bytes();
                chunk.copy_from_slice(&w[..chunk.len()]);
            }
            // SAFETY: the record lies inside the scratch static (bound above), written unaligned.
            unsafe { (at as *mut abi::ConsoleMsg).write_unaligned(msg) };
            at as u32
        };
        // SAFETY: the VMM only reads a console record, wherever it is.
        unsafe { outl(abi::PORT_CONSOLE, gpa) };
        self.sent(KIND_CONSOLE, 1);
    }

    fn port(&mut self) {
        let port = loop {
            let p = match self.rng.below(4) {
                0 => abi::PORT_CONSOLE + self.rng.below(16) as u16,
                _ => self.rng.next() as u16,
            };
            if !RECORD_PORTS.contains(&p) && p != abi::PORT_CONSOLE {
                break p;
            }
        };
        // A 2- or 4-byte access must end at port 0xffff: past it the CPU checks the TSS
        // bitmap's terminating all-ones byte and raises #GP (the guest has no IDT: a triple
        // fault). Found by seed 3: `in ax, dx` at port 0xffff.
        let size = self.rng.below(3).min(match 0x1_0000 - port as u32 {
            1 => 0,
            2 | 3 => 1,
            _ => 2,
        } as u64);
        let write = self.rng.one_in(2);
        let v = port_io(port, size, write, self.rng.next() as u32);
        if !write {
            self.answered(v as u64);
        }
        self.sent(KIND_PORT_IO, 1);
    }

    // -----------------------------------------------------------------------------------------
    // Valid traffic.

    /// A random run of region pages: (first page, pages).
    fn region_pages(&mut self) -> (u64, u64) {
        let total = self.win_len / PAGE;
        let n = 1 + self.rng.below(VALID_MAX_PAGES.min(total));
        (self.rng.below(total - n + 1), n)
    }

    /// A device write over region pages: the guest must see every word of it.
    fn valid_to_guest(&mut self) {
        let (p, n) = self.region_pages();
        let seed = self.rng.next();
        let iova = self.win_iova + p * PAGE;
        let st = self.dma.call(abi::Descriptor {
            op: abi::OP_TO_GUEST,
            iova,
            arg: seed,
            len: n * PAGE,
            ..Default::default()
        });
        if st == abi::STATUS_UNSUPPORTED {
            self.unsupported += 1;
            return;
        }
        let words = &self.words()[(p * 512) as usize..((p + n) * 512) as usize];
        let seen = st == abi::STATUS_OK && abi::pattern_matches(words, seed, iova / 8);
        self.check(seen, CHECK_WRITE_SEEN, st);
    }

    /// The guest writes region pages; the device's checksums must be the guest's.
    fn valid_from_guest(&mut self) {
        let (p, n) = self.region_pages();
        let seed = self.rng.next();
        let words = &mut self.words()[(p * 512) as usize..((p + n) * 512) as usize];
        abi::fill_pattern(words, seed, 0);
        let mut want = [0u64; VALID_MAX_PAGES as usize];
        abi::page_checksums(words, &mut want[..n as usize]);
        let mut got = [0u64; VALID_MAX_PAGES as usize];
        let st = self.dma.call(abi::Descriptor {
            op: abi::OP_FROM_GUEST,
            iova: self.win_iova + p * PAGE,
            arg: got.as_mut_ptr() as u64,
            len: n * PAGE,
            ..Default::default()
        });
        // SAFETY: `got` is a live local the device wrote during the completed request; read it
        // volatile so the compiler does not assume it still holds zeros.
        let got = unsafe { core::ptr::read_volatile(&got) };
        let ok = st == abi::STATUS_OK && got[..n as usize] == want[..n as usize];
        self.check(ok, CHECK_READ_CHECKSUM, st);
    }

    /// Map scratch pages at the second window, read them through it, unmap, and find the window
    /// refused afterwards.
    fn valid_map_cycle(&mut self) {
        let n = 1 + self.rng.below(4);
        let first = self.rng.below(SCRATCH_PAGES - n + 1);
        let gpa = self.scratch + first * PAGE;
        let len = n * PAGE;
        let st = self
            .iommu
            .call(device::map_desc(self.win2_iova, gpa, len, abi::PERM_READ));
        self.check(st == abi::STATUS_OK, CHECK_MAP_UNMAP, st);
        if st != abi::STATUS_OK {
            return;
        }
        let read = |f: &mut Self, out: &mut [u64; 4]| {
            f.dma.call(abi::Descriptor {
                op: abi::OP_FROM_GUEST,
                iova: f.win2_iova,
                arg: out.as_mut_ptr() as u64,
                len,
                ..Default::default()
            })
        };
        let mut got = [0u64; 4];
        let st = read(self, &mut got);
        // SAFETY: as in `valid_from_guest`.
        let got = unsafe { core::ptr::read_volatile(&got) };
        let mut want = [0u64; 4];
        let pages = &self.scratch_words()[(first * 512) as usize..((first + n) * 512) as usize];
        abi::page_checksums(pages, &mut want[..n as usize]);
        let ok = st == abi::STATUS_OK && got[..n as usize] == want[..n as usize];
        if st != abi::STATUS_UNSUPPORTED {
            self.check(ok, CHECK_READ_CHECKSUM, st);
        }
        let st = self.iommu.call(device::unmap_desc(self.win2_iova, len));
        self.check(st == abi::STATUS_OK, CHECK_MAP_UNMAP, st);
        let mut after = [0u64; 4];
        let st = read(self, &mut after);
        self.check(st == abi::STATUS_NOT_MAPPED, CHECK_UNMAPPED_REFUSED, st);
    }

    fn valid(&mut self) {
        match self.rng.below(3) {
            0 => self.valid_to_guest(),
            1 => self.valid_from_guest(),
            _ => self.valid_map_cycle(),
        }
    }

    /// Sends hostile operations until `target` have been sent in all, with valid checks between.
    fn hostile_until(&mut self, target: u64) {
        while self.t.ops < target {
            if self.nmaps >= HOSTILE_MAPS_KEPT {
                self.unmap_hostile();
            }
            let budget = target - self.t.ops;
            match self.rng.below(32) {
                0..=5 => self.batch(true, budget),
                6..=13 => self.batch(false, budget),
                14..=16 => self.doorbell(),
                17..=18 => self.header_scribble(),
                19 => self.forged_tail(),
                20..=21 => self.setup(),
                22..=24 => self.phase(),
                25..=26 => self.console(),
                _ => self.port(),
            }
            if self.rng.one_in(VALID_EVERY) {
                self.valid();
            }
        }
    }
}

pub fn run(
    info: &abi::BootInfo,
    iommu_mem: *mut QueueMem,
    dma_mem: *mut QueueMem,
    r: &mut abi::Report,
) {
    let (iq, dq) = (iommu_mem as u64, dma_mem as u64);
    let st = device::setup(iq, ENTRIES, dq, ENTRIES);
    if st != abi::STATUS_OK {
        println!("guest: device setup refused: {}", abi::status_name(st));
        report::abort();
    }
    // SAFETY: the queue memories are the guest's statics, handed to the device just above.
    let (iommu, dma) = unsafe {
        (
            Queue::new(iommu_mem, abi::PORT_IOMMU_DOORBELL),
            Queue::new(dma_mem, abi::PORT_DMA_DOORBELL),
        )
    };
    let mut f = Fuzz {
        rng: Rng(info.seed),
        info,
        iommu,
        dma,
        iq: iommu_mem,
        dq: dma_mem,
        scratch: core::ptr::addr_of_mut!(SCRATCH) as u64,
        win_iova: info.region_iova,
        win_len: info.region_len,
        win2_iova: info.region_iova + WINDOW2_OFFSET,
        maps: [(0, 0); abi::IOMMU_MAX_MAPPINGS as usize],
        nmaps: 0,
        t: abi::FuzzTally::NONE,
        unsupported: 0,
        rounds_done: 0,
    };
    r.region_pages = (info.region_len / PAGE) as u32;

    let st = f.iommu.call(device::map_desc(
        info.region_iova,
        info.region_gpa,
        info.region_len,
        abi::PERM_READ | abi::PERM_WRITE,
    ));
    if st != abi::STATUS_OK {
        println!("guest: IOMMU map failed: {}", abi::status_name(st));
        report::abort();
    }
    device::phase(abi::PHASE_MAPPED, 0);
    device::phase(abi::PHASE_ROUNDS_START, 0);
    let rounds = info.rounds.max(1) as u64;
    for round in 1..=rounds {
        let target = (info.fuzz_ops as u128 * round as u128 / rounds as u128) as u64;
        f.hostile_until(target);
        // Every round checks each kind of valid traffic at least once.
        f.valid_to_guest();
        f.valid_from_guest();
        f.valid_map_cycle();
        f.rounds_done = round as u32;
        r.rounds_done = round as u32;
        device::phase(abi::PHASE_ROUND_DONE, round as u32);
    }
    f.unmap_hostile();
    let st = f
        .iommu
        .call(device::unmap_desc(info.region_iova, info.region_len));
    f.check(st == abi::STATUS_OK, CHECK_MAP_UNMAP, st);
    device::phase(abi::PHASE_UNMAPPED, info.rounds);
    r.unsupported = f.unsupported;
    r.fuzz = f.t;
    println!(
        "fuzz: {} hostile ops, {} valid checks passed, {} failed, digest {:#018x}",
        f.t.ops, f.t.valid_passed, f.t.valid_failed, f.t.digest
    );
}
