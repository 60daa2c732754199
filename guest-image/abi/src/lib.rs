//! The guest <-> VMM interface of pinlab. Change it here or nowhere.
//!
//! The guest runs in long mode at CPL3 with IOPL=3 and no interrupts. It talks to the VMM by
//! port I/O: a synchronous port write carries the guest-physical address of a record in guest
//! RAM (console message, device setup, phase marker, final report), and two doorbell ports are
//! KVM ioeventfds that do not exit to the VMM: they tell the device thread that a queue has new
//! entries. The guest polls completion records, as a driver polls a real device.
//!
//! Guest-physical layout (identity-mapped by the guest's page tables, user bit at every level):
//!
//! | range                    | what                                              |
//! |--------------------------|---------------------------------------------------|
//! | `GDT_GPA`                | GDT: null, ring-0 code/data, ring-3 code (0x1b), data (0x23), TSS |
//! | `PML4_GPA`..`PD_GPA+4 pages` | page tables: 4 GiB identity map with 2 MiB pages   |
//! | `BOOT_INFO_GPA`          | `BootInfo`, written by the VMM before the vCPU runs |
//! | `TSS_GPA`                | TSS with an all-ports I/O bitmap (see `TSS_GPA`)  |
//! | `GUEST_LOAD_GPA`..       | the guest ELF, then its stack up to `STACK_TOP_GPA` |
//! | `DMA_BASE_GPA`..         | DMA RAM: THP-backed, what the device maps and pins  |
//!
//! Everything the guest hands the VMM is untrusted: the VMM validates every address, length,
//! index and opcode it finds here against guest RAM and against the rules below.

#![no_std]

/// ABI version; the VMM refuses a guest image built against another one.
pub const ABI_VERSION: u32 = 4;

// ---------------------------------------------------------------------------------------------
// Memory layout.

pub const GDT_GPA: u64 = 0x1000;
pub const PML4_GPA: u64 = 0x2000;
pub const PDPT_GPA: u64 = 0x3000;
/// Four page directories (one per GiB) follow.
pub const PD_GPA: u64 = 0x4000;
/// Identity-mapped span: the guest can address this much.
pub const IDENTITY_MAP_SIZE: u64 = 4 << 30;
pub const BOOT_INFO_GPA: u64 = 0x9000;
pub const BOOT_INFO_SIZE: u64 = 0x1000;
/// The TSS, with an I/O permission bitmap that allows every port. KVM-PVM traps guest port I/O
/// and emulates it; the emulator does not see the guest's IOPL (hardware runs it at 0) and
/// falls back to this bitmap, so without it every `out` faults.
pub const TSS_GPA: u64 = 0xa000;
/// TSS header, 8 KiB bitmap (one bit per port), and the terminating all-ones byte.
pub const TSS_SIZE: u64 = 0x68 + 0x2000 + 1;
/// End of the VMM-owned low area (GDT, page tables, boot info, TSS): the guest may not point
/// any queue or output buffer below this.
pub const RESERVED_END_GPA: u64 = 0xd000;
/// Where the linker script places the guest image.
pub const GUEST_LOAD_GPA: u64 = 0x10_0000;
/// Initial stack pointer (grows down toward the image).
pub const STACK_TOP_GPA: u64 = 0x1f_f000;
/// First byte of DMA RAM: the first 2 MiB huge page after the guest image.
pub const DMA_BASE_GPA: u64 = 0x20_0000;

pub const PAGE_SIZE: u64 = 4096;
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Ring-3 selectors (GDT index 3 and 4, RPL 3).
pub const USER_CS: u16 = 0x1b;
pub const USER_DS: u16 = 0x23;
/// TSS selector (GDT index 5, 16 bytes).
pub const TSS_SEL: u16 = 0x28;

// ---------------------------------------------------------------------------------------------
// Ports.

/// Synchronous: value = GPA of a `ConsoleMsg`. One exit per message, never per byte.
pub const PORT_CONSOLE: u16 = 0x510;
/// Synchronous: value = GPA of a `DeviceSetup`. The VMM writes `DeviceSetup::status`.
pub const PORT_SETUP: u16 = 0x511;
/// Synchronous: value = GPA of a `Phase`. The VMM runs what is scheduled at that phase, then
/// resumes the guest: "between rounds" is exact.
pub const PORT_PHASE: u16 = 0x512;
/// Synchronous: value = GPA of the final `Report`. The run is over.
pub const PORT_DONE: u16 = 0x513;
/// Doorbell (ioeventfd, no exit): the IOMMU queue has new entries.
pub const PORT_IOMMU_DOORBELL: u16 = 0x514;
/// Doorbell (ioeventfd, no exit): the DMA queue has new entries.
pub const PORT_DMA_DOORBELL: u16 = 0x515;

// ---------------------------------------------------------------------------------------------
// Boot info.

pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"pinlab\0\x01");

/// Guest modes (`BootInfo::mode`).
pub const MODE_DMA: u32 = 1;
pub const MODE_BOOT: u32 = 2;
pub const MODE_SPIN: u32 = 3;
pub const MODE_HOSTILE: u32 = 4;
/// Hostile: print console lines in a loop, never anything else. The VMM must keep its console
/// bounded and stop the guest (no progress) at its watchdog.
pub const MODE_CONSOLE_FLOOD: u32 = 5;
/// Hostile: the DMA workload, with `ROUNDS_START` and every `ROUND_DONE` sent
/// `1 + PHASE_REPEAT_EXTRA` times. The VMM must act on each phase once and refuse the repeats.
pub const MODE_PHASE_REPEAT: u32 = 6;

/// Hostile: a seeded PRNG sends `BootInfo::fuzz_ops` random doorbells, descriptors, maps,
/// unmaps, DMA requests, queue-header scribbles, setups, phase markers, console records and port
/// I/O, interleaved with valid traffic whose results the guest checks (`Report::fuzz`). The
/// VMM must survive, answer every hostile request without acting outside guest RAM, run each
/// host action once, and keep the valid traffic correct.
pub const MODE_FUZZ: u32 = 7;

/// In `MODE_PHASE_REPEAT`, how many times each repeated marker is sent again.
pub const PHASE_REPEAT_EXTRA: u32 = 2;

/// `BootInfo::directions` bits.
pub const DIR_FROM_GUEST: u32 = 1;
pub const DIR_TO_GUEST: u32 = 2;

/// Workload parameters, written by the VMM at `BOOT_INFO_GPA` before the first instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    pub magic: u64,
    pub abi_version: u32,
    pub mode: u32,
    /// Bytes of guest RAM from GPA 0.
    pub ram_size: u64,
    /// The DMA region: GPA and length (4 KiB multiples).
    pub region_gpa: u64,
    pub region_len: u64,
    /// The IOVA at which the guest maps the region.
    pub region_iova: u64,
    pub rounds: u32,
    pub directions: u32,
    /// Seed of the patterns; round r uses `pattern_seed(seed, r, direction)`.
    pub seed: u64,
    /// Descriptor size for DMA transfers (bytes, a 4 KiB multiple): the batch granularity.
    pub transfer_len: u64,
    /// `MODE_FUZZ`: how many hostile operations to send (the PRNG's seed is `seed`).
    pub fuzz_ops: u64,
}

// ---------------------------------------------------------------------------------------------
// Console.

pub const CONSOLE_MAX: usize = 240;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConsoleMsg {
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; CONSOLE_MAX],
}

// ---------------------------------------------------------------------------------------------
// Queues: a header, `entries` descriptors, then `entries` completions, contiguous in guest RAM.
//
// The guest writes descriptors, then `tail` (count of produced entries, wrapping u32), then rings
// the doorbell. The device consumes from its own `head`, writes each completion, then publishes
// `head` (release); the guest polls `head` (acquire). Slot of entry n is `n % entries`.

pub const QUEUE_MAX_ENTRIES: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueHeader {
    /// Produced by the guest.
    pub tail: u32,
    /// Consumed by the device.
    pub head: u32,
    /// Set by the device to a `STATUS_*` when the queue itself is malformed (e.g. `tail` more
    /// than `entries` ahead of `head`); the device then ignores the queue until the guest
    /// clears it and rings again.
    pub fault: u32,
    pub _pad: u32,
}

/// A queue entry. IOMMU and DMA share the shape; `op` says which fields mean what.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub op: u32,
    pub flags: u32,
    /// IOVA of the transfer or mapping.
    pub iova: u64,
    /// MAP: GPA to map. FROM_GUEST: GPA of the output array (one u64 checksum per 4 KiB page).
    /// TO_GUEST: pattern seed.
    pub arg: u64,
    pub len: u64,
    /// The guest's cookie, echoed in the completion.
    pub tag: u64,
    pub _reserved: [u64; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub tag: u64,
    /// `STATUS_*`; 0 until the device completes the entry.
    pub status: u32,
    pub _pad: u32,
    /// Op-specific: bytes transferred.
    pub result: u64,
    pub _reserved: u64,
}

pub const QUEUE_HEADER_SIZE: u64 = core::mem::size_of::<QueueHeader>() as u64;
pub const DESCRIPTOR_SIZE: u64 = core::mem::size_of::<Descriptor>() as u64;
pub const COMPLETION_SIZE: u64 = core::mem::size_of::<Completion>() as u64;

/// Bytes of guest RAM a queue of `entries` occupies.
pub const fn queue_bytes(entries: u32) -> u64 {
    QUEUE_HEADER_SIZE + entries as u64 * (DESCRIPTOR_SIZE + COMPLETION_SIZE)
}

/// Offset of descriptor slot `i` from the queue base.
pub const fn descriptor_offset(i: u32) -> u64 {
    QUEUE_HEADER_SIZE + i as u64 * DESCRIPTOR_SIZE
}

/// Offset of completion slot `i` from the queue base.
pub const fn completion_offset(entries: u32, i: u32) -> u64 {
    QUEUE_HEADER_SIZE + entries as u64 * DESCRIPTOR_SIZE + i as u64 * COMPLETION_SIZE
}

// IOMMU ops.
/// Map `[iova, iova+len)` to `[arg, arg+len)` with `flags` permissions. Pins.
pub const OP_MAP: u32 = 0x10;
/// Unmap exactly a range mapped before (`iova`, `len`). Unpins.
pub const OP_UNMAP: u32 = 0x11;
pub const PERM_READ: u32 = 1;
pub const PERM_WRITE: u32 = 2;

// DMA ops.
pub const OP_NOP: u32 = 0x20;
/// Device write: fill `[iova, iova+len)` with `pattern(arg, byte offset from iova)`.
pub const OP_TO_GUEST: u32 = 0x21;
/// Device read: checksum each 4 KiB page of `[iova, iova+len)` into the u64 array at GPA `arg`.
pub const OP_FROM_GUEST: u32 = 0x22;

/// Most IOMMU mappings at once.
pub const IOMMU_MAX_MAPPINGS: u32 = 64;
/// IOVA space: mappings must lie below this.
pub const IOVA_LIMIT: u64 = 1 << 40;

// Status codes (completions, `DeviceSetup::status`, `QueueHeader::fault`).
pub const STATUS_PENDING: u32 = 0;
pub const STATUS_OK: u32 = 1;
/// An address or range outside guest RAM / IOVA space.
pub const STATUS_OUT_OF_RANGE: u32 = 2;
pub const STATUS_MISALIGNED: u32 = 3;
/// `addr + len` overflows, or a zero length.
pub const STATUS_BAD_LENGTH: u32 = 4;
/// The IOVA range overlaps an existing mapping.
pub const STATUS_OVERLAP: u32 = 5;
pub const STATUS_TOO_MANY_MAPPINGS: u32 = 6;
/// No mapping covers the IOVA range.
pub const STATUS_NOT_MAPPED: u32 = 7;
/// The mapping lacks the permission the op needs.
pub const STATUS_PERMISSION: u32 = 8;
pub const STATUS_BAD_OP: u32 = 9;
/// The pin mechanism cannot do this (vmsplice has no device writes).
pub const STATUS_UNSUPPORTED: u32 = 10;
/// Pinning failed on the host.
pub const STATUS_PIN_FAILED: u32 = 11;
/// The transfer failed on the host.
pub const STATUS_IO_ERROR: u32 = 12;
/// A queue index or size is out of range.
pub const STATUS_BAD_RING: u32 = 13;
/// A guest-supplied buffer overlaps a queue, the reserved low area, or another buffer.
pub const STATUS_ALIASED: u32 = 14;

pub const STATUS_NAMES: [&str; 15] = [
    "pending",
    "ok",
    "out-of-range",
    "misaligned",
    "bad-length",
    "overlap",
    "too-many-mappings",
    "not-mapped",
    "permission",
    "bad-op",
    "unsupported",
    "pin-failed",
    "io-error",
    "bad-ring",
    "aliased",
];

/// The name of a status code, for reports.
pub fn status_name(status: u32) -> &'static str {
    STATUS_NAMES
        .get(status as usize)
        .copied()
        .unwrap_or("unknown")
}

// ---------------------------------------------------------------------------------------------
// Device setup: where the guest put its queues.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceSetup {
    pub iommu_queue_gpa: u64,
    pub iommu_entries: u32,
    pub dma_entries: u32,
    pub dma_queue_gpa: u64,
    /// Written by the VMM.
    pub status: u32,
    pub _pad: u32,
}

// ---------------------------------------------------------------------------------------------
// Phases: the guest announces where it is; the VMM runs scheduled host actions there.

pub const PHASE_MAPPED: u32 = 1;
/// Round `round` (1-based) has completed its checks.
pub const PHASE_ROUND_DONE: u32 = 2;
pub const PHASE_UNMAPPED: u32 = 3;
/// Rounds are starting; the VMM may start a storm.
pub const PHASE_ROUNDS_START: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phase {
    pub phase: u32,
    pub round: u32,
    /// Written by the VMM: nonzero once the phase's actions are done.
    pub ack: u32,
    pub _pad: u32,
}

// ---------------------------------------------------------------------------------------------
// The final report.

pub const REPORT_MAGIC: u64 = u64::from_le_bytes(*b"pinlabRP");
/// Bitmaps and checksum arrays cover at most this many DMA pages (a 64 MiB DMA region).
pub const MAX_REGION_PAGES: usize = 16 * 1024;
/// Most per-round records the guest keeps (the first ones and the failing ones are kept).
pub const MAX_ROUND_RECORDS: usize = 256;

/// Guest outcome codes (`Report::status`).
pub const GUEST_OK: u32 = 1;
/// The guest found its boot info or a device answer unusable and stopped.
pub const GUEST_ABORTED: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundRecord {
    pub round: u32,
    /// Pages whose device write the guest did not see (to-guest direction).
    pub write_lost_pages: u32,
    /// Pages whose device checksum differs from the guest's (from-guest direction).
    pub read_stale_pages: u32,
    /// Descriptors that completed with a status other than OK.
    pub dma_errors: u32,
}

/// Hostile-mode classes, in the order the guest sends them, with the status the VMM must answer.
/// The guest records the answer to each in `Report::hostile_status`.
pub const HOSTILE_CLASSES: [(&str, u32); 18] = [
    ("setup-queue-outside-ram", STATUS_OUT_OF_RANGE),
    ("setup-ring-into-boot-info", STATUS_ALIASED),
    ("setup-ring-into-itself", STATUS_ALIASED),
    ("setup-bad-entries", STATUS_BAD_RING),
    ("map-gpa-outside-ram", STATUS_OUT_OF_RANGE),
    ("map-iova-outside-space", STATUS_OUT_OF_RANGE),
    ("map-length-overflow", STATUS_BAD_LENGTH),
    ("map-zero-length", STATUS_BAD_LENGTH),
    ("map-misaligned", STATUS_MISALIGNED),
    ("map-overlap", STATUS_OVERLAP),
    ("map-too-many", STATUS_TOO_MANY_MAPPINGS),
    ("unmap-not-mapped", STATUS_NOT_MAPPED),
    ("dma-unmapped-iova", STATUS_NOT_MAPPED),
    ("dma-beyond-mapping", STATUS_NOT_MAPPED),
    ("bad-opcode", STATUS_BAD_OP),
    ("ring-index-out-of-range", STATUS_BAD_RING),
    ("output-outside-ram", STATUS_OUT_OF_RANGE),
    ("output-into-ring", STATUS_ALIASED),
];

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Report {
    pub magic: u64,
    pub status: u32,
    pub rounds_done: u32,
    pub region_pages: u32,
    /// Pages that failed in any round, per direction.
    pub write_lost_pages: u32,
    pub read_stale_pages: u32,
    pub dma_errors: u32,
    /// The first failing (round, page) per direction; `u32::MAX` when none.
    pub first_write_lost: [u32; 2],
    pub first_read_stale: [u32; 2],
    /// The status of the first failed descriptor (0 when none).
    pub first_error_status: u32,
    pub round_records: u32,
    pub rounds: [RoundRecord; MAX_ROUND_RECORDS],
    /// Bitmaps, one bit per region page: did it ever fail in that direction.
    pub write_lost_bitmap: [u64; MAX_REGION_PAGES / 64],
    pub read_stale_bitmap: [u64; MAX_REGION_PAGES / 64],
    /// Hostile mode: per class, the status the VMM answered (0 when the class was not sent).
    pub hostile_status: [u32; HOSTILE_CLASSES.len()],
    /// Hostile mode: the valid map/DMA after all the malformed ones still worked.
    pub hostile_recovered: u32,
    /// Descriptors the pin mechanism could not execute (`STATUS_UNSUPPORTED`: vmsplice device
    /// writes); their rounds are not verified in that direction.
    pub unsupported: u32,
    /// `MODE_FUZZ`: what the guest sent and what its valid traffic saw.
    pub fuzz: FuzzTally,
}

/// Kinds of hostile operation in `MODE_FUZZ`, in `FuzzTally::per_kind` order.
pub const FUZZ_KINDS: [&str; 9] = [
    "iommu-descriptor",
    "dma-descriptor",
    "doorbell",
    "queue-header",
    "forged-tail",
    "setup",
    "phase",
    "console",
    "port-io",
];

/// Kinds of valid check in `MODE_FUZZ` (`FuzzTally::first_failed_check`, 1-based; 0: none).
pub const FUZZ_CHECKS: [&str; 7] = [
    "device-write-seen",
    "device-read-checksum",
    "map-unmap",
    "unmapped-refused",
    "completion-tag",
    "setup-restored",
    "forged-tail-flagged",
];

/// `MODE_FUZZ` results: the hostile operations sent and the valid checks made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuzzTally {
    /// Hostile operations sent (the guest stops at `BootInfo::fuzz_ops`).
    pub ops: u64,
    /// Hostile operations per kind (`FUZZ_KINDS`).
    pub per_kind: [u64; FUZZ_KINDS.len()],
    pub valid_passed: u32,
    pub valid_failed: u32,
    /// The hostile operation count when the first valid check failed (`u64::MAX`: none).
    pub first_failed_op: u64,
    /// Which check failed first (1-based index into `FUZZ_CHECKS`; 0: none).
    pub first_failed_check: u32,
    /// The status the device answered the failed check's request with (0: none or OK).
    pub first_failed_status: u32,
    /// Hostile phase markers sent (each must be refused by the VMM).
    pub phases_sent: u32,
    /// Hostile requests the device answered OK (maps of scratch memory, DMA through them).
    pub hostile_accepted: u32,
    /// A hash of every status the VMM answered, in order: the same seed gives the same digest.
    pub digest: u64,
}

impl FuzzTally {
    /// Nothing sent, nothing checked.
    pub const NONE: FuzzTally = FuzzTally {
        ops: 0,
        per_kind: [0; FUZZ_KINDS.len()],
        valid_passed: 0,
        valid_failed: 0,
        first_failed_op: u64::MAX,
        first_failed_check: 0,
        first_failed_status: 0,
        phases_sent: 0,
        hostile_accepted: 0,
        digest: 0,
    };
}

// ---------------------------------------------------------------------------------------------
// Patterns and checksums: the same functions on both sides.

/// splitmix64: a fast, well-mixed 64-bit function.
#[inline(always)]
pub const fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of round `round`'s pattern in one direction (0: guest writes, 1: device writes).
pub const fn pattern_seed(seed: u64, round: u32, direction: u32) -> u64 {
    mix64(seed ^ ((round as u64) << 8) ^ direction as u64)
}

/// Word `word_index` (8-byte units from the start of the transfer) of pattern `seed`.
/// Cheap per word (one multiply-xor), and distinct per page and per seed.
#[inline(always)]
pub const fn pattern_word(seed: u64, word_index: u64) -> u64 {
    let page_key = mix64(seed ^ (word_index >> 9));
    page_key ^ (word_index.wrapping_mul(PATTERN_MUL))
}

/// The per-word multiplier of [`pattern_word`].
const PATTERN_MUL: u64 = 0x2545_f491_4f6c_dd1d;

/// Fills `out` (a whole number of words) with pattern `seed` starting at word `first_word`:
/// `out[k] == pattern_word(seed, first_word + k)`. The page key is computed once per 512 words
/// and the multiply is strength-reduced to an add, so the loop is one add and one xor per word
/// (about 6x faster than calling `pattern_word` per word; same output).
pub fn fill_pattern(out: &mut [u64], seed: u64, first_word: u64) {
    let mut i = first_word;
    let mut rest = out;
    while !rest.is_empty() {
        let in_page = (WORDS_PER_PAGE as u64 - (i & (WORDS_PER_PAGE as u64 - 1))) as usize;
        let (page, tail) = rest.split_at_mut(in_page.min(rest.len()));
        let key = mix64(seed ^ (i >> 9));
        let mut m = i.wrapping_mul(PATTERN_MUL);
        for w in page.iter_mut() {
            *w = key ^ m;
            m = m.wrapping_add(PATTERN_MUL);
        }
        i += page.len() as u64;
        rest = tail;
    }
}

/// Words per 4 KiB page.
const WORDS_PER_PAGE: usize = 512;

/// Whether `words` equal pattern `seed` from word `first_word` on:
/// `words[k] == pattern_word(seed, first_word + k)` for every k, computed as `fill_pattern`
/// does (one page key per page, an add per word), so the guest's verify pass is cheap.
pub fn pattern_matches(words: &[u64], seed: u64, first_word: u64) -> bool {
    let mut i = first_word;
    let mut rest = words;
    while !rest.is_empty() {
        let in_page = (WORDS_PER_PAGE as u64 - (i & (WORDS_PER_PAGE as u64 - 1))) as usize;
        let (page, tail) = rest.split_at(in_page.min(rest.len()));
        let key = mix64(seed ^ (i >> 9));
        let mut m = i.wrapping_mul(PATTERN_MUL);
        let mut diff = 0;
        for &w in page {
            diff |= w ^ key ^ m;
            m = m.wrapping_add(PATTERN_MUL);
        }
        if diff != 0 {
            return false;
        }
        i += page.len() as u64;
        rest = tail;
    }
    true
}
/// The checksum's initial value.
const CHECKSUM_INIT: u64 = 0x6a09_e667_f3bc_c908;

#[inline(always)]
fn checksum_step(h: u64, w: u64, i: u64) -> u64 {
    (h ^ w ^ i)
        .wrapping_mul(0x0000_0100_0000_01b3)
        .rotate_left(17)
}

/// Checksum of one 4 KiB page (512 words). Order-sensitive, so swapped words are caught.
#[inline]
pub fn page_checksum(words: &[u64]) -> u64 {
    let mut h: u64 = CHECKSUM_INIT;
    for (i, &w) in words.iter().enumerate() {
        h = checksum_step(h, w, i as u64);
    }
    h
}

/// Pages whose checksums [`page_checksums`] computes side by side.
const CHECKSUM_LANES: usize = 8;

/// The checksum of every whole 4 KiB page of `words`, in order, into `out` (as many as both
/// hold): `out[p] == page_checksum(&words[p * 512..][..512])`. Each page's checksum is one
/// serial multiply chain; running eight pages' chains interleaved lets them overlap in the CPU
/// (about 3x the throughput of one page at a time; same output).
pub fn page_checksums(words: &[u64], out: &mut [u64]) {
    let pages = (words.len() / WORDS_PER_PAGE).min(out.len());
    let lane_words = CHECKSUM_LANES * WORDS_PER_PAGE;
    let grouped = pages / CHECKSUM_LANES * CHECKSUM_LANES;
    for (group, sums) in words[..grouped * WORDS_PER_PAGE]
        .chunks_exact(lane_words)
        .zip(out.chunks_exact_mut(CHECKSUM_LANES))
    {
        let mut h = [CHECKSUM_INIT; CHECKSUM_LANES];
        for i in 0..WORDS_PER_PAGE {
            for (lane, hl) in h.iter_mut().enumerate() {
                *hl = checksum_step(*hl, group[lane * WORDS_PER_PAGE + i], i as u64);
            }
        }
        sums.copy_from_slice(&h);
    }
    for p in grouped..pages {
        out[p] = page_checksum(&words[p * WORDS_PER_PAGE..(p + 1) * WORDS_PER_PAGE]);
    }
}

// ---------------------------------------------------------------------------------------------
// Compile-time layout checks: both sides read these records as raw bytes.

const _: () = {
    assert!(core::mem::size_of::<Descriptor>() == 64);
    assert!(core::mem::size_of::<Completion>() == 32);
    assert!(core::mem::size_of::<QueueHeader>() == 16);
    assert!(core::mem::size_of::<BootInfo>() as u64 <= BOOT_INFO_SIZE);
    assert!(core::mem::size_of::<DeviceSetup>() == 32);
    assert!(core::mem::size_of::<Phase>() == 16);
    // No implicit padding in the records read as bytes (every byte pattern is a valid value).
    assert!(core::mem::size_of::<FuzzTally>() == 8 + 8 * FUZZ_KINDS.len() + 8 + 8 + 16 + 8);
    assert!(core::mem::size_of::<BootInfo>() == 80);
    assert!(
        core::mem::size_of::<Report>()
            == 8 + 4 * 6
                + 4 * 4
                + 4 * 2
                + core::mem::size_of::<RoundRecord>() * MAX_ROUND_RECORDS
                + 8 * (MAX_REGION_PAGES / 64) * 2
                + 4 * HOSTILE_CLASSES.len()
                + 4 * 2
                + core::mem::size_of::<FuzzTally>()
    );
    assert!(PD_GPA + 4 * PAGE_SIZE <= BOOT_INFO_GPA);
    assert!(BOOT_INFO_GPA + BOOT_INFO_SIZE == TSS_GPA);
    assert!(TSS_GPA + TSS_SIZE <= RESERVED_END_GPA);
    assert!(DMA_BASE_GPA.is_multiple_of(HUGE_PAGE_SIZE));
    assert!(STACK_TOP_GPA < DMA_BASE_GPA);
};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// The fast fill against the definition, from page-aligned and unaligned starts, across page
    /// boundaries. A bug: a word differing from `pattern_word` (the guest would see a lost write).
    #[test]
    fn fill_pattern_matches_pattern_word() {
        let mut out = [0u64; 1500];
        for (seed, first) in [(1u64, 0u64), (7, 511), (0xdead, 1 << 20), (3, 12_345)] {
            for len in [0, 1, 511, 512, 513, 1500] {
                fill_pattern(&mut out[..len], seed, first);
                for (k, &w) in out[..len].iter().enumerate() {
                    assert_eq!(
                        w,
                        pattern_word(seed, first + k as u64),
                        "seed {seed} first {first} k {k}"
                    );
                }
            }
        }
    }

    /// Interleaved checksums against one page at a time, for page counts around the lane
    /// width, and an `out` shorter than the pages. A bug: a lane mixing another page's words.
    #[test]
    fn page_checksums_match_page_checksum() {
        let mut words = [0u64; 20 * 512];
        fill_pattern(&mut words, 42, 3);
        for pages in [0usize, 1, 7, 8, 9, 16, 19] {
            let mut out = [0u64; 19];
            page_checksums(&words[..pages * 512 + 100], &mut out[..pages]);
            for p in 0..pages {
                assert_eq!(
                    out[p],
                    page_checksum(&words[p * 512..(p + 1) * 512]),
                    "{pages} pages, page {p}"
                );
            }
        }
        let mut short = [0u64; 3];
        page_checksums(&words, &mut short);
        assert_eq!(short[2], page_checksum(&words[1024..1536]));
    }

    #[test]
    fn queue_offsets() {
        assert_eq!(descriptor_offset(0), 16);
        assert_eq!(completion_offset(4, 0), 16 + 4 * 64);
        assert_eq!(queue_bytes(4), 16 + 4 * 96);
        assert_eq!(
            queue_bytes(QUEUE_MAX_ENTRIES),
            completion_offset(QUEUE_MAX_ENTRIES, QUEUE_MAX_ENTRIES)
        );
    }

    #[test]
    fn patterns_differ_per_page_and_seed() {
        let a = pattern_word(1, 0);
        assert_ne!(a, pattern_word(2, 0), "seed");
        assert_ne!(a, pattern_word(1, 512), "page");
        assert_ne!(a, pattern_word(1, 1), "word");
        assert_ne!(pattern_seed(7, 1, 0), pattern_seed(7, 1, 1), "direction");
        assert_ne!(pattern_seed(7, 1, 0), pattern_seed(7, 2, 0), "round");
    }

    #[test]
    fn pattern_matches_agrees_with_pattern_word() {
        let mut buf = [0u64; 1500];
        let first = 300; // not page aligned: the first page is partial
        fill_pattern(&mut buf, 9, first);
        assert!(pattern_matches(&buf, 9, first));
        assert!(!pattern_matches(&buf, 10, first), "another seed");
        assert!(!pattern_matches(&buf, 9, first + 1), "shifted by a word");
        for k in [0, 211, 212, 723, 1499] {
            let mut b = buf;
            b[k] ^= 1 << 40;
            assert!(!pattern_matches(&b, 9, first), "flip at {k}");
        }
    }

    #[test]
    fn checksum_sees_single_bit_and_swaps() {
        let mut page = [0u64; 512];
        fill_pattern(&mut page, 42, 0);
        let base = page_checksum(&page);
        let mut flipped = page;
        flipped[300] ^= 1 << 13;
        assert_ne!(page_checksum(&flipped), base);
        let mut swapped = page;
        swapped.swap(3, 4);
        assert_ne!(page_checksum(&swapped), base);
    }

    #[test]
    fn status_names_cover_every_code() {
        assert_eq!(status_name(STATUS_ALIASED), "aliased");
        assert_eq!(status_name(STATUS_OK), "ok");
        assert_eq!(status_name(999), "unknown");
    }
}

// ---------------------------------------------------------------------------------------------
// The VMM reads and writes these records through vm-memory.

#[cfg(feature = "vm-memory")]
mod byte_valued {
    use super::*;
    // SAFETY: each type is repr(C), made only of integers and arrays of integers, with explicit
    // padding fields, so every byte pattern is a valid value and there is no implicit padding.
    unsafe impl vm_memory::ByteValued for BootInfo {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for ConsoleMsg {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for QueueHeader {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for Descriptor {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for Completion {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for DeviceSetup {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for Phase {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for RoundRecord {}
    // SAFETY: as above; `FuzzTally` is one of them, and the layout checks above assert the
    // sizes that rule out implicit padding.
    unsafe impl vm_memory::ByteValued for FuzzTally {}
    // SAFETY: as above (its fields' sizes add up to a multiple of 8, so no trailing padding).
    unsafe impl vm_memory::ByteValued for Report {}
}
