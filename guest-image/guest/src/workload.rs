//! The DMA workload: map the region, then per round: CPU writes pattern P -> device reads
//! (from-guest) -> compare the device's per-page checksums with the guest's own; device writes
//! pattern Q (to-guest) -> the CPU verifies every byte. Failing pages go to the report.
//!
//! With `repeat > 0` (MODE_PHASE_REPEAT, a hostile guest) the rounds-start and round-done
//! markers are each sent `1 + repeat` times; the VMM must act on each phase once.

use pinlab_abi as abi;

use crate::device::{self, Queue};
use crate::{println, report};

/// Announces `phase` `1 + repeat` times.
fn phase(code: u32, round: u32, repeat: u32) {
    for _ in 0..=repeat {
        device::phase(code, round);
    }
}

const WORDS_PER_PAGE: usize = (abi::PAGE_SIZE / 8) as usize;

/// The device's per-page checksums land here (from-guest descriptors' output array).
#[repr(C, align(4096))]
struct Checksums([u64; abi::MAX_REGION_PAGES]);
static mut DEVICE_SUMS: Checksums = Checksums([0; abi::MAX_REGION_PAGES]);
static mut GUEST_SUMS: Checksums = Checksums([0; abi::MAX_REGION_PAGES]);

fn set_bit(map: &mut [u64], i: usize) -> bool {
    let (w, b) = (i / 64, i % 64);
    let was = map[w] & (1 << b) != 0;
    map[w] |= 1 << b;
    !was
}

fn region_words(info: &abi::BootInfo) -> &'static mut [u64] {
    // SAFETY: the VMM validated the region against guest RAM, and the guest identity-maps all
    // of it; nothing else in the guest aliases DMA RAM.
    unsafe {
        core::slice::from_raw_parts_mut(info.region_gpa as *mut u64, (info.region_len / 8) as usize)
    }
}

pub fn run(
    info: &abi::BootInfo,
    iommu: &mut Queue,
    dma: &mut Queue,
    r: &mut abi::Report,
    repeat: u32,
) {
    let pages = (info.region_len / abi::PAGE_SIZE) as usize;
    r.region_pages = pages as u32;

    let st = iommu.call(device::map_desc(
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
    phase(abi::PHASE_ROUNDS_START, 0, repeat);

    let words = region_words(info);
    let first_word = info.region_iova / 8;
    // SAFETY: single-threaded guest; these statics are only used here and by the device through
    // the GPA we hand it.
    let (dev_sums, guest_sums) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(DEVICE_SUMS.0),
            &mut *core::ptr::addr_of_mut!(GUEST_SUMS.0),
        )
    };
    let chunk = info.transfer_len.max(abi::PAGE_SIZE);

    for round in 1..=info.rounds {
        let mut rec = abi::RoundRecord {
            round,
            ..Default::default()
        };
        if info.directions & abi::DIR_FROM_GUEST != 0 {
            // CPU writes P, then checksums what it wrote (eight pages at a time).
            let seed = abi::pattern_seed(info.seed, round, 0);
            abi::fill_pattern(words, seed, first_word);
            abi::page_checksums(words, &mut guest_sums[..pages]);
            dev_sums[..pages].fill(0);
            let sums_gpa = dev_sums.as_ptr() as u64;
            let (errors, unsupported) = transfer(info, dma, chunk, abi::OP_FROM_GUEST, r, |off| {
                sums_gpa + off / abi::PAGE_SIZE * 8
            });
            rec.dma_errors += errors;
            r.unsupported += unsupported;
            // A mechanism that cannot read (vfio: no driver for the device) said so: the device
            // wrote no checksums, nothing to compare this round.
            let compare = if unsupported == 0 { pages } else { 0 };
            for p in 0..compare {
                if dev_sums[p] != guest_sums[p] {
                    rec.read_stale_pages += 1;
                    if set_bit(&mut r.read_stale_bitmap, p) {
                        r.read_stale_pages += 1;
                    }
                    if r.first_read_stale[0] == u32::MAX {
                        r.first_read_stale = [round, p as u32];
                    }
                }
            }
        }
        if info.directions & abi::DIR_TO_GUEST != 0 {
            let seed = abi::pattern_seed(info.seed, round, 1);
            let (errors, unsupported) = transfer(info, dma, chunk, abi::OP_TO_GUEST, r, |_| seed);
            rec.dma_errors += errors;
            r.unsupported += unsupported;
            // A mechanism that cannot write (vmsplice) said so: nothing to verify this round.
            let verify = unsupported == 0;
            for (p, page) in words
                .chunks_exact(WORDS_PER_PAGE)
                .enumerate()
                .filter(|_| verify)
            {
                let base = first_word + (p * WORDS_PER_PAGE) as u64;
                if !abi::pattern_matches(page, seed, base) {
                    rec.write_lost_pages += 1;
                    if set_bit(&mut r.write_lost_bitmap, p) {
                        r.write_lost_pages += 1;
                    }
                    if r.first_write_lost[0] == u32::MAX {
                        r.first_write_lost = [round, p as u32];
                    }
                }
            }
        }
        r.dma_errors += rec.dma_errors;
        r.rounds_done = round;
        let failing = rec.write_lost_pages + rec.read_stale_pages + rec.dma_errors != 0;
        let n = r.round_records as usize;
        if n < abi::MAX_ROUND_RECORDS && (failing || n < abi::MAX_ROUND_RECORDS / 2) {
            r.rounds[n] = rec;
            r.round_records += 1;
        }
        phase(abi::PHASE_ROUND_DONE, round, repeat);
    }

    let st = iommu.call(device::unmap_desc(info.region_iova, info.region_len));
    if st != abi::STATUS_OK {
        println!("guest: IOMMU unmap failed: {}", abi::status_name(st));
    }
    device::phase(abi::PHASE_UNMAPPED, info.rounds);
}

/// Cover the region with `op` descriptors of `chunk` bytes, one doorbell for the batch (or per
/// queue-full), and return how many completed with an error and how many were unsupported.
fn transfer(
    info: &abi::BootInfo,
    q: &mut Queue,
    chunk: u64,
    op: u32,
    r: &mut abi::Report,
    arg: impl Fn(u64) -> u64,
) -> (u32, u32) {
    let mut errors = 0;
    let mut unsupported = 0;
    let mut off = 0;
    while off < info.region_len {
        let first = q.head();
        let mut n = 0;
        while off < info.region_len && n < q.entries() {
            let len = chunk.min(info.region_len - off);
            q.push(abi::Descriptor {
                op,
                iova: info.region_iova + off,
                arg: arg(off),
                len,
                ..Default::default()
            });
            off += len;
            n += 1;
        }
        q.ring();
        if let Err(fault) = q.wait_all() {
            println!("guest: DMA queue fault: {}", abi::status_name(fault));
            report::abort();
        }
        for i in 0..n {
            let st = q.completion(first.wrapping_add(i)).status;
            if st == abi::STATUS_UNSUPPORTED {
                unsupported += 1;
            } else if st != abi::STATUS_OK {
                errors += 1;
                if r.first_error_status == 0 {
                    r.first_error_status = st;
                }
            }
        }
    }
    (errors, unsupported)
}
