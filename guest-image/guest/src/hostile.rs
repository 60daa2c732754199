//! Hostile mode: send one malformed request of every class in `abi::HOSTILE_CLASSES`, record
//! what the VMM answered, then show that a valid map and DMA still work.

use pinlab_abi as abi;

use crate::device::{self, Queue, QueueMem, ENTRIES};
use crate::report;

pub fn run(
    info: &abi::BootInfo,
    iommu_mem: *mut QueueMem,
    dma_mem: *mut QueueMem,
    r: &mut abi::Report,
) {
    let ram = info.ram_size;
    let iq = iommu_mem as u64;
    let dq = dma_mem as u64;
    let mut class = 0;
    let mut record = |status: u32| {
        r.hostile_status[class] = status;
        class += 1;
    };

    // Setup: a queue past RAM, a queue over the boot info, the two queues over each other,
    // an entry count that is not a power of two.
    record(device::setup(iq, ENTRIES, ram - 64, ENTRIES));
    record(device::setup(iq, ENTRIES, abi::BOOT_INFO_GPA, ENTRIES));
    record(device::setup(iq, ENTRIES, iq + 64, ENTRIES));
    record(device::setup(iq, ENTRIES, dq, 100));
    if device::setup(iq, ENTRIES, dq, ENTRIES) != abi::STATUS_OK {
        report::abort();
    }
    // SAFETY: the queue memories are the guest's statics, handed to the device just above.
    let (mut iommu, mut dma) = unsafe {
        (
            Queue::new(iommu_mem, abi::PORT_IOMMU_DOORBELL),
            Queue::new(dma_mem, abi::PORT_DMA_DOORBELL),
        )
    };
    let (iova, gpa, len) = (info.region_iova, info.region_gpa, info.region_len);
    let rw = abi::PERM_READ | abi::PERM_WRITE;

    record(iommu.call(device::map_desc(iova, ram, abi::PAGE_SIZE, rw)));
    record(iommu.call(device::map_desc(abi::IOVA_LIMIT, gpa, abi::PAGE_SIZE, rw)));
    record(iommu.call(device::map_desc(iova, gpa, u64::MAX - 4095, rw)));
    record(iommu.call(device::map_desc(iova, gpa, 0, rw)));
    record(iommu.call(device::map_desc(iova, gpa + 1, abi::PAGE_SIZE, rw)));
    // Overlap: map the region, then a page inside it again.
    if iommu.call(device::map_desc(iova, gpa, len, rw)) != abi::STATUS_OK {
        report::abort();
    }
    record(iommu.call(device::map_desc(
        iova + abi::PAGE_SIZE,
        gpa,
        abi::PAGE_SIZE,
        rw,
    )));
    // Too many: fill the table with one-page maps of the region's first page.
    let spare = 0x100_0000_0000 - 0x1000_0000;
    let mut extra = 0;
    let mut last = abi::STATUS_OK;
    while last == abi::STATUS_OK && extra <= abi::IOMMU_MAX_MAPPINGS {
        last = iommu.call(device::map_desc(
            spare + extra as u64 * abi::PAGE_SIZE,
            gpa,
            abi::PAGE_SIZE,
            abi::PERM_READ,
        ));
        extra += 1;
    }
    record(last);
    for i in 0..extra - 1 {
        iommu.call(device::unmap_desc(
            spare + i as u64 * abi::PAGE_SIZE,
            abi::PAGE_SIZE,
        ));
    }
    record(iommu.call(device::unmap_desc(0x7000_0000, abi::PAGE_SIZE)));

    // DMA: an IOVA nobody mapped, a transfer running past its mapping, a bogus opcode.
    // Any guest buffer big enough for the sums of these requests; the VMM must never write it.
    let mut scratch = [0u64; 8];
    let sums = scratch.as_mut_ptr() as u64;
    let from = |iova: u64, len: u64, out: u64| abi::Descriptor {
        op: abi::OP_FROM_GUEST,
        iova,
        arg: out,
        len,
        ..Default::default()
    };
    record(dma.call(from(0x7000_0000, abi::PAGE_SIZE, sums)));
    record(dma.call(from(iova + len - abi::PAGE_SIZE, 2 * abi::PAGE_SIZE, sums)));
    record(dma.call(abi::Descriptor {
        op: 0xdead,
        iova,
        len: abi::PAGE_SIZE,
        ..Default::default()
    }));
    // A forged tail far ahead of head: the device must flag the queue, not walk off its end.
    let forged = dma.head().wrapping_add(dma.entries() + 5);
    dma.ring_with_tail(forged);
    record(dma.wait_fault());
    dma.recover();
    // Output arrays past RAM and over the queue itself.
    record(dma.call(from(iova, abi::PAGE_SIZE, ram - 4)));
    record(dma.call(from(iova, abi::PAGE_SIZE, dq + 64)));

    // Recovery: a valid transfer in both directions still works.
    let seed = abi::pattern_seed(info.seed, 0, 1);
    let st_to = dma.call(abi::Descriptor {
        op: abi::OP_TO_GUEST,
        iova,
        arg: seed,
        len: abi::PAGE_SIZE,
        ..Default::default()
    });
    // SAFETY: the region is guest RAM the VMM validated; one page of it.
    let first = unsafe { (gpa as *const u64).read_volatile() };
    let seen = first == abi::pattern_word(seed, iova / 8);
    let mut out = [0u64; 1];
    let st_from = dma.call(from(iova, abi::PAGE_SIZE, out.as_mut_ptr() as u64));
    // SAFETY: as above, the whole first page.
    let page = unsafe { core::slice::from_raw_parts(gpa as *const u64, 512) };
    let sum_ok = out[0] == abi::page_checksum(page);
    r.hostile_recovered =
        (st_to == abi::STATUS_OK && seen && st_from == abi::STATUS_OK && sum_ok) as u32;
    iommu.call(device::unmap_desc(iova, len));
}
