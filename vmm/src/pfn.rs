//! PFN evidence: which host page frames back a range of the VMM's address space, and what the
//! kernel says about those frames.
//!
//! Owns the reading of `/proc/self/pagemap` (per 4 KiB page: present / swapped / not present, the
//! PFN, soft-dirty, exclusively mapped) and `/proc/kpageflags` (per PFN: THP, compound head/tail,
//! KSM, anon, swapcache, zero page, ...), and the small summaries the oracle compares (THP
//! coverage, counts, which pages changed PFN).
//!
//! It only reads. It must not touch the memory it describes (no faulting pages in, no madvise),
//! and it holds no pins: a pin's evidence is the PFN list [`crate::pfn_runs`] reads at pin time,
//! compared later with what [`pfns`] reads then.
//!
//! Privileges: the PFN field of pagemap reads as 0 without CAP_SYS_ADMIN (reported here as
//! [`PageMapping::pfn`] = `None` on a present page), and `/proc/kpageflags` needs root; opening it
//! fails with [`Error::OpenKpageflags`] so callers can degrade with a one-line reason.

use procfs::process::PageInfo;
use procfs::PhysicalPageFlags;
use serde::{Serialize, Serializer};

use crate::addr::{Hva, Pfn, HUGE_PAGE_SIZE, PAGE_SIZE};

/// Errors of the PFN evidence readers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/proc/self/pagemap` could not be opened.
    #[error("open /proc/self/pagemap: {0}")]
    OpenPagemap(#[source] std::io::Error),
    /// Reading the pagemap entries of a range failed.
    #[error("pread /proc/self/pagemap for {hva} (+{pages} pages): {source}")]
    ReadPagemap {
        hva: Hva,
        pages: u64,
        #[source]
        source: std::io::Error,
    },
    /// `/proc/kpageflags` could not be opened: it needs root (CAP_SYS_ADMIN).
    #[error("open /proc/kpageflags (needs root with CAP_SYS_ADMIN): {0}")]
    OpenKpageflags(#[source] std::io::Error),
    /// Reading the kpageflags of a PFN range failed (e.g. a PFN beyond the end of RAM).
    #[error("pread /proc/kpageflags for {start}..{end}: {source}")]
    ReadKpageflags {
        start: Pfn,
        end: Pfn,
        #[source]
        source: std::io::Error,
    },
    /// The range `hva..hva+len` overflows the address space.
    #[error("range {hva} + {len:#x} overflows")]
    RangeOverflow { hva: Hva, len: u64 },
    /// A summary over an empty range was asked for.
    #[error("empty range at {hva}")]
    EmptyRange { hva: Hva },
    /// A page is present but its PFN reads as 0: the process lacks CAP_SYS_ADMIN.
    #[error("PFN of present page {hva} is hidden (pagemap PFNs need CAP_SYS_ADMIN)")]
    PfnHidden { hva: Hva },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The state of one virtual page, from its pagemap entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageState {
    /// Mapped to a page frame.
    Present,
    /// Swapped out (a swap entry in the page table).
    Swapped,
    /// Nothing mapped (never touched, or discarded).
    NotPresent,
}

/// One 4 KiB page of the VMM's address space, as /proc/self/pagemap describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PageMapping {
    /// Virtual address of the page (page aligned).
    pub hva: Hva,
    pub state: PageState,
    /// The page frame, when present and visible (`None` when not present, or when the PFN is
    /// hidden from a process without CAP_SYS_ADMIN).
    pub pfn: Option<Pfn>,
    /// Bit 55: PTE is soft-dirty.
    pub soft_dirty: bool,
    /// Bit 56: the page is mapped exactly once (mapcount 1).
    pub exclusive: bool,
    /// Bit 61: file page or shared anonymous page.
    pub file_or_shared: bool,
}

impl PageMapping {
    fn from_info(hva: Hva, info: PageInfo) -> Self {
        use procfs::process::{MemoryPageFlags as M, SwapPageFlags as S};
        match info {
            PageInfo::MemoryPage(f) => {
                let present = f.contains(M::PRESENT);
                let pfn = f.get_page_frame_number().0;
                PageMapping {
                    hva,
                    state: if present {
                        PageState::Present
                    } else {
                        PageState::NotPresent
                    },
                    pfn: (present && pfn != 0).then_some(Pfn(pfn)),
                    soft_dirty: f.contains(M::SOFT_DIRTY),
                    exclusive: f.contains(M::MMAP_EXCLUSIVE),
                    file_or_shared: f.contains(M::FILE),
                }
            }
            PageInfo::SwapPage(f) => PageMapping {
                hva,
                state: PageState::Swapped,
                pfn: None,
                soft_dirty: f.contains(S::SOFT_DIRTY),
                exclusive: f.contains(S::MMAP_EXCLUSIVE),
                file_or_shared: f.contains(S::FILE),
            },
        }
    }
}

/// First page index and page count covering `hva..hva+len` (partial pages included).
pub(crate) fn page_span(hva: Hva, len: u64) -> Result<(u64, u64)> {
    let end = hva
        .checked_add(len)
        .ok_or(Error::RangeOverflow { hva, len })?;
    let first = hva.raw() / PAGE_SIZE;
    let last = end.raw().div_ceil(PAGE_SIZE);
    Ok((first, last - first))
}

/// The raw 64-bit pagemap entries of pages `first..first + count`, read with one pread(2).
///
/// The kernel's `pagemap_read` walks the whole request in one call (in PMD-sized steps), so one
/// big read replaces the 8-byte `read_exact` per entry (through an 8 KiB buffer) that procfs's
/// `get_range_info` does. Measured here (`pinlab bench --only map`, THP-backed GiB, release,
/// medians of 7): the PFN read 2.8 ms -> 1.2 ms, `Iommu::map` 4.8 ms -> 2.7 ms (raw registration
/// 1.4 ms); `thp_coverage` of 64 MiB 4.6 ms -> 2.5 ms. The entries are read straight into the
/// returned vector (no byte buffer to convert).
///
/// Two preads of half a GiB each on two threads were tried for `Iommu::map`: no gain here
/// (1.0-1.5 ms either way, medians of 7 over four runs).
fn pagemap_entries(hva: Hva, first: u64, count: u64) -> Result<Vec<u64>> {
    let file = std::fs::File::open("/proc/self/pagemap").map_err(Error::OpenPagemap)?;
    let read_error = |source| Error::ReadPagemap {
        hva,
        pages: count,
        source,
    };
    // Page indices are below 2^52 on x86_64, so the byte offset and length cannot overflow.
    pread_u64s(&file, first * 8, count as usize).map_err(read_error)
}

/// `count` native-endian u64s read from `file` at byte `offset` (a short read is retried from
/// where it stopped; end of file is `UnexpectedEof`).
fn pread_u64s(file: &std::fs::File, offset: u64, count: usize) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let mut words = vec![0u64; count];
    file.read_exact_at(u64s_as_bytes(&mut words), offset)?;
    Ok(words)
}

/// A u64 buffer viewed as its bytes, for a read(2) straight into it.
fn u64s_as_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: the same memory, borrowed mutably for as long as `words` is: u8 has no alignment
    // or validity requirement, every byte pattern written is a valid u64, and the length is
    // the buffer's size in bytes (a slice never exceeds isize::MAX bytes).
    unsafe {
        std::slice::from_raw_parts_mut(
            words.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(words),
        )
    }
}

/// The pagemap entry of every 4 KiB page overlapping `hva..hva+len`.
///
/// Reads `/proc/self/pagemap` with one pread(2) of the range ([`pagemap_entries`]). Pages of a
/// PMD-mapped THP are reported one by one, each with its own subpage PFN.
pub fn pagemap(hva: Hva, len: u64) -> Result<Vec<PageMapping>> {
    let (first, count) = page_span(hva, len)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    Ok(pagemap_entries(hva, first, count)?
        .into_iter()
        .zip(first..)
        .map(|(e, idx)| PageMapping::from_info(Hva(idx * PAGE_SIZE), PageInfo::parse_info(e)))
        .collect())
}

/// The PFN of every 4 KiB page overlapping `hva..hva+len`, as [`pagemap`] reports it (`None`:
/// not present, swapped, or hidden), without building the full [`PageMapping`]s: what a pin
/// records as its evidence.
pub fn pfns(hva: Hva, len: u64) -> Result<Vec<Option<Pfn>>> {
    let (first, count) = page_span(hva, len)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    Ok(pagemap_entries(hva, first, count)?
        .into_iter()
        .map(entry_pfn)
        .collect())
}

/// The PFN a raw pagemap entry gives (`None`: not present, swapped, or hidden), as [`pfns`]
/// reports it.
pub(crate) fn entry_pfn(e: u64) -> Option<Pfn> {
    let present = e & PM_PRESENT != 0 && e & PM_SWAP == 0;
    let pfn = e & PM_PFN_MASK;
    (present && pfn != 0).then_some(Pfn(pfn))
}

/// Fills `buf` with the raw pagemap entries of the pages from `first` on, with one pread(2)
/// through the open `pagemap` (`hva` names the range in the error).
pub(crate) fn read_entries_into(
    pagemap: &std::fs::File,
    hva: Hva,
    first: u64,
    buf: &mut [u64],
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let pages = buf.len() as u64;
    // Page indices are below 2^52 on x86_64, so the byte offset cannot overflow.
    pagemap
        .read_exact_at(u64s_as_bytes(buf), first * 8)
        .map_err(|source| Error::ReadPagemap { hva, pages, source })
}

/// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst): present, swapped, PFN.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Names of the stable KPF_* bits (include/uapi/linux/kernel-page-flags.h), by bit number.
const KPF_NAMES: [&str; 27] = [
    "locked",
    "error",
    "referenced",
    "uptodate",
    "dirty",
    "lru",
    "active",
    "slab",
    "writeback",
    "reclaim",
    "buddy",
    "mmap",
    "anon",
    "swapcache",
    "swapbacked",
    "compound-head",
    "compound-tail",
    "huge",
    "unevictable",
    "hwpoison",
    "nopage",
    "ksm",
    "thp",
    "offline",
    "zero-page",
    "idle",
    "pgtable",
];

/// The flags of one page frame, from /proc/kpageflags. Serializes as the list of set flag names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageFlags(pub u64);

impl PageFlags {
    fn has(self, f: PhysicalPageFlags) -> bool {
        self.0 & f.bits() != 0
    }
    /// Part of a transparent huge page (any large anonymous/rmappable folio: set on head and tails).
    pub fn thp(self) -> bool {
        self.has(PhysicalPageFlags::THP)
    }
    /// Head page of a compound page.
    pub fn compound_head(self) -> bool {
        self.has(PhysicalPageFlags::COMPOUND_HEAD)
    }
    /// Tail page of a compound page.
    pub fn compound_tail(self) -> bool {
        self.has(PhysicalPageFlags::COMPOUND_TAIL)
    }
    /// Part of a hugetlbfs page (not THP).
    pub fn huge(self) -> bool {
        self.has(PhysicalPageFlags::HUGE)
    }
    /// A KSM-merged page.
    pub fn ksm(self) -> bool {
        self.has(PhysicalPageFlags::KSM)
    }
    /// Anonymous memory.
    pub fn anon(self) -> bool {
        self.has(PhysicalPageFlags::ANON)
    }
    /// In the swap cache.
    pub fn swapcache(self) -> bool {
        self.has(PhysicalPageFlags::SWAPCACHE)
    }
    /// The shared zero page or the huge zero page.
    pub fn zero_page(self) -> bool {
        self.has(PhysicalPageFlags::ZERO_PAGE)
    }
    /// Mapped into some page table.
    pub fn mmap(self) -> bool {
        self.has(PhysicalPageFlags::MMAP)
    }
    /// Names of the set flags, in bit order.
    pub fn names(self) -> Vec<&'static str> {
        KPF_NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

impl Serialize for PageFlags {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// Two requested PFNs closer than this are read as one range (one pread of up to 8 KiB more
/// costs less than another system call).
const KPAGEFLAGS_MERGE_GAP: u64 = 1024;

/// Sorted, deduplicated PFNs grouped into ranges `[start, end)` whose gaps are small.
fn kpageflags_ranges(pfns: &[Pfn]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<u64> = pfns.iter().map(|p| p.raw()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for p in sorted {
        match ranges.last_mut() {
            Some((_, end)) if p - *end < KPAGEFLAGS_MERGE_GAP => *end = p + 1,
            _ => ranges.push((p, p + 1)),
        }
    }
    ranges
}

/// The kpageflags of each PFN, in the order given.
///
/// PFNs are sorted and merged into ranges (THP-backed memory gives runs of 512 or more), each
/// read with one pread(2) of /proc/kpageflags (`kpageflags_read` fills the whole request), so a
/// 1 GiB THP range costs a few hundred system calls. Measured here (release): the 262144 PFNs
/// of a THP-backed GiB in 33 ms through procfs's `get_range_info` (8 KiB reads); `thp_coverage`
/// of 64 MiB 2.97 / 3.50 ms -> 2.31 / 2.29 ms (two rounds, medians of 7) with one pread per
/// range. What remains is the kernel's per-PFN work (`stable_page_flags`, `snapshot_page`).
pub fn kpageflags(pfns: &[Pfn]) -> Result<Vec<PageFlags>> {
    if pfns.is_empty() {
        return Ok(Vec::new());
    }
    let kpf = std::fs::File::open("/proc/kpageflags").map_err(Error::OpenKpageflags)?;
    let mut read: Vec<(u64, Vec<u64>)> = Vec::new();
    for (start, end) in kpageflags_ranges(pfns) {
        // PFNs are below 2^52, so `start * 8` cannot overflow.
        let flags = pread_u64s(&kpf, start * 8, (end - start) as usize).map_err(|source| {
            Error::ReadKpageflags {
                start: Pfn(start),
                end: Pfn(end),
                source,
            }
        })?;
        read.push((start, flags));
    }
    // Every requested PFN lies inside one of the (sorted, disjoint) ranges just read.
    Ok(pfns
        .iter()
        .map(|p| {
            let (start, flags) = &read[read.partition_point(|(s, _)| *s <= p.raw()) - 1];
            PageFlags(flags[(p.raw() - start) as usize])
        })
        .collect())
}

/// Counts over a range, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pages: u64,
    pub present: u64,
    pub swapped: u64,
    pub not_present: u64,
    pub thp: u64,
    pub ksm: u64,
    pub zero_page: u64,
    pub exclusive: u64,
}

/// PFN evidence for a range at one moment: pagemap and kpageflags per page.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub hva: Hva,
    pub len: u64,
    pub pages: Vec<PageMapping>,
    /// Flags of the frame behind each page (`None` where no PFN is known).
    pub flags: Vec<Option<PageFlags>>,
    pub summary: Summary,
}

impl Snapshot {
    /// The PFN of each page, for [`diff_pfns`].
    pub fn pfns(&self) -> Vec<Option<Pfn>> {
        self.pages.iter().map(|p| p.pfn).collect()
    }
    /// Fraction of the pages that are present and THP-backed.
    pub fn thp_coverage(&self) -> f64 {
        if self.summary.pages == 0 {
            0.0
        } else {
            self.summary.thp as f64 / self.summary.pages as f64
        }
    }
}

/// Pagemap plus kpageflags of `hva..hva+len`, with counts.
///
/// Fails with [`Error::PfnHidden`] if a present page's PFN is hidden, and with
/// [`Error::OpenKpageflags`] without root.
pub fn snapshot(hva: Hva, len: u64) -> Result<Snapshot> {
    let pages = pagemap(hva, len)?;
    if let Some(p) = pages
        .iter()
        .find(|p| p.state == PageState::Present && p.pfn.is_none())
    {
        return Err(Error::PfnHidden { hva: p.hva });
    }
    let pfns: Vec<Pfn> = pages.iter().filter_map(|p| p.pfn).collect();
    let mut present_flags = kpageflags(&pfns)?.into_iter();
    let flags: Vec<Option<PageFlags>> = pages
        .iter()
        .map(|p| p.pfn.and_then(|_| present_flags.next()))
        .collect();
    let mut s = Summary {
        pages: pages.len() as u64,
        ..Summary::default()
    };
    for (p, f) in pages.iter().zip(&flags) {
        match p.state {
            PageState::Present => s.present += 1,
            PageState::Swapped => s.swapped += 1,
            PageState::NotPresent => s.not_present += 1,
        }
        s.exclusive += u64::from(p.exclusive);
        if let Some(f) = f {
            s.thp += u64::from(f.thp());
            s.ksm += u64::from(f.ksm());
            s.zero_page += u64::from(f.zero_page());
        }
    }
    Ok(Snapshot {
        hva,
        len,
        pages,
        flags,
        summary: s,
    })
}

/// Fraction of the pages of `hva..hva+len` whose PFN is present and flagged THP by kpageflags.
/// Measured, never inferred from the THP mode or from madvise.
pub fn thp_coverage(hva: Hva, len: u64) -> Result<f64> {
    let blocks = thp_blocks(hva, len)?;
    let (_, pages) = page_span(hva, len)?;
    Ok(coverage_of_blocks(&blocks, pages))
}

/// The fraction of `pages` that the per-block counts of [`thp_blocks`] say are THP-backed.
pub fn coverage_of_blocks(blocks: &[u16], pages: u64) -> f64 {
    if pages == 0 {
        return 0.0;
    }
    blocks.iter().map(|&b| u64::from(b)).sum::<u64>() as f64 / pages as f64
}

/// Pages whose PFN is present and flagged THP, per 2 MiB block of `hva..hva+len` (0 ..= 512
/// each; the last block counts only the pages inside the range). What [`thp_coverage`] sums;
/// the reports draw guest RAM from it, block by block.
pub fn thp_blocks(hva: Hva, len: u64) -> Result<Vec<u16>> {
    if len == 0 {
        return Err(Error::EmptyRange { hva });
    }
    // The raw pagemap entries (no `PageMapping` per page), then the kpageflags of the present
    // PFNs, each counted in its block.
    let (first, count) = page_span(hva, len)?;
    let entries = pagemap_entries(hva, first, count)?;
    let per_block = HUGE_PAGE_SIZE / PAGE_SIZE;
    let mut present = Vec::with_capacity(entries.len());
    let mut block_of = Vec::with_capacity(entries.len());
    for (i, (e, idx)) in entries.iter().zip(first..).enumerate() {
        if e & PM_PRESENT != 0 && e & PM_SWAP == 0 {
            match e & PM_PFN_MASK {
                0 => {
                    return Err(Error::PfnHidden {
                        hva: Hva(idx * PAGE_SIZE),
                    })
                }
                pfn => {
                    present.push(Pfn(pfn));
                    block_of.push(i as u64 / per_block);
                }
            }
        }
    }
    let mut blocks = vec![0u16; count.div_ceil(per_block) as usize];
    for (f, b) in kpageflags(&present)?.iter().zip(block_of) {
        // At most 512 pages per block: a u16 cannot overflow.
        blocks[b as usize] += u16::from(f.thp());
    }
    Ok(blocks)
}

/// Indices of the pages whose PFN differs between two recordings (a page that became or stopped
/// being present counts as changed). Pages beyond the shorter list count as changed.
pub fn diff_pfns(before: &[Option<Pfn>], after: &[Option<Pfn>]) -> Vec<usize> {
    diff_pfns_of(before.iter().copied(), after)
}

/// As [`diff_pfns`], with the earlier recording given page by page (a pin's
/// [`crate::pfn_runs::PfnRuns::iter`]).
pub(crate) fn diff_pfns_of(
    before: impl ExactSizeIterator<Item = Option<Pfn>>,
    after: &[Option<Pfn>],
) -> Vec<usize> {
    let recorded = before.len();
    let mut changed: Vec<usize> = before
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| b != *a)
        .map(|(i, _)| i)
        .collect();
    changed.extend(recorded.min(after.len())..recorded.max(after.len()));
    changed
}

/// Anonymous test memory, shared by the tests of this crate's pin and pfn modules.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::addr::{Hva, HUGE_PAGE_SIZE};
    use crate::mmap::Mapping;

    /// A private anonymous mapping of `len` bytes aligned to 2 MiB; unmapped on drop.
    pub(crate) struct AnonRegion {
        _map: Mapping,
        pub(crate) hva: Hva,
        pub(crate) len: u64,
    }

    impl AnonRegion {
        /// Maps `len` bytes (a multiple of 2 MiB) and applies `advice` (e.g. MADV_HUGEPAGE).
        pub(crate) fn new(len: u64, advice: libc::c_int) -> Self {
            let map = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE, 0)
                .unwrap_or_else(|e| panic!("test region: {e}"));
            let r = AnonRegion {
                hva: map.hva(),
                _map: map,
                len,
            };
            r.madvise(0, len, advice);
            r
        }

        /// madvise on `off..off+len` of the region.
        pub(crate) fn madvise(&self, off: u64, len: u64, advice: libc::c_int) {
            assert!(off + len <= self.len);
            // SAFETY: the range lies inside our own mapping.
            let rc = unsafe {
                libc::madvise(
                    self.hva.as_ptr().add(off as usize).cast(),
                    len as usize,
                    advice,
                )
            };
            assert_eq!(
                rc,
                0,
                "madvise({advice}): {}",
                std::io::Error::last_os_error()
            );
        }

        /// The whole region as bytes (CPU access through the VMM mapping).
        pub(crate) fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: `hva..hva+len` is inside the mapping we own for our lifetime, and `&mut self`
            // makes this the only reference to it.
            unsafe { std::slice::from_raw_parts_mut(self.hva.as_ptr(), self.len as usize) }
        }

        /// Writes `pattern(i)` to every byte, faulting every page in.
        pub(crate) fn fill(&mut self, pattern: impl Fn(usize) -> u8) {
            for (i, b) in self.bytes().iter_mut().enumerate() {
                *b = pattern(i);
            }
        }
    }

    /// One line about the host's THP setup, for failure messages.
    pub(crate) fn thp_setup() -> String {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|e| format!("unreadable ({e})"))
        };
        format!(
            "enabled: {}; defrag: {}",
            read("/sys/kernel/mm/transparent_hugepage/enabled"),
            read("/sys/kernel/mm/transparent_hugepage/defrag")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{thp_setup, AnonRegion};
    use super::*;

    const MIB: u64 = 1 << 20;

    /// THP coverage as measured, per madvise hint (THP mode is `madvise` on this host).
    /// Each row: description, advice, predicate on the coverage, what a failure would mean.
    #[test]
    fn thp_coverage_follows_madvise() {
        type Row = (&'static str, libc::c_int, fn(f64) -> bool, &'static str);
        let table: [Row; 2] = [
            (
                "MADV_HUGEPAGE, touched",
                libc::MADV_HUGEPAGE,
                |c| c >= 0.9,
                "the kernel gave no THP (or kpageflags does not see it)",
            ),
            (
                "MADV_NOHUGEPAGE, touched",
                libc::MADV_NOHUGEPAGE,
                |c| c < 0.1,
                "THP despite MADV_NOHUGEPAGE: coverage misreports",
            ),
        ];
        for (desc, advice, ok, bug) in table {
            let mut r = AnonRegion::new(4 * MIB, advice);
            r.fill(|i| i as u8);
            let cov = thp_coverage(r.hva, r.len).unwrap();
            assert!(ok(cov), "{desc}: coverage {cov}: {bug} ({})", thp_setup());
            // Per block: one count per 2 MiB, each a coverage of its own, summing to the whole.
            let blocks = thp_blocks(r.hva, r.len).unwrap();
            assert_eq!(blocks.len(), 2, "{desc}: {blocks:?}");
            for &b in &blocks {
                assert!(ok(f64::from(b) / 512.0), "{desc}: block {b}/512: {bug}");
            }
            assert_eq!(
                coverage_of_blocks(&blocks, r.len / PAGE_SIZE),
                cov,
                "{desc}"
            );
        }
    }

    #[test]
    fn thp_pages_have_head_and_tails() {
        let mut r = AnonRegion::new(4 * MIB, libc::MADV_HUGEPAGE);
        r.fill(|_| 1);
        let s = snapshot(r.hva, r.len).unwrap();
        assert_eq!(s.summary.present, 1024);
        assert_eq!(s.summary.thp, 1024, "no THP here: {}", thp_setup());
        for (i, f) in s.flags.iter().enumerate() {
            let f = f.unwrap();
            assert!(
                f.anon() && f.mmap() && !f.ksm() && !f.huge(),
                "page {i}: {f:?}"
            );
            assert_eq!(f.compound_head(), i % 512 == 0, "page {i}");
            assert_eq!(f.compound_tail(), i % 512 != 0, "page {i}");
        }
        // A PMD-mapped THP is physically contiguous.
        let pfns = s.pfns();
        for i in 1..512 {
            assert_eq!(pfns[i].unwrap().raw(), pfns[0].unwrap().raw() + i as u64);
        }
    }

    /// The PFN-only reader against the full one, on present, THP and discarded pages.
    /// A bug: a pin recording PFNs that differ from what the evidence comparison reads later.
    #[test]
    fn pfns_agree_with_pagemap() {
        let mut r = AnonRegion::new(4 * MIB, libc::MADV_HUGEPAGE);
        r.fill(|i| i as u8);
        r.madvise(3 * PAGE_SIZE, PAGE_SIZE, libc::MADV_DONTNEED);
        let full: Vec<Option<Pfn>> = pagemap(r.hva, r.len)
            .unwrap()
            .iter()
            .map(|p| p.pfn)
            .collect();
        assert_eq!(pfns(r.hva, r.len).unwrap(), full);
        assert_eq!(full.len(), 1024);
        assert!(full[3].is_none() && full[4].is_some());
        assert!(pfns(r.hva, 0).unwrap().is_empty());
    }

    #[test]
    fn untouched_memory_is_not_present() {
        let r = AnonRegion::new(2 * MIB, libc::MADV_NOHUGEPAGE);
        let pages = pagemap(r.hva, r.len).unwrap();
        assert_eq!(pages.len(), 512);
        assert!(pages
            .iter()
            .all(|p| p.state == PageState::NotPresent && p.pfn.is_none()));
    }

    #[test]
    fn dontneed_makes_a_page_not_present() {
        for advice in [libc::MADV_HUGEPAGE, libc::MADV_NOHUGEPAGE] {
            let mut r = AnonRegion::new(4 * MIB, advice);
            r.fill(|i| (i >> 12) as u8);
            let before = pagemap(r.hva, r.len).unwrap();
            assert!(before
                .iter()
                .all(|p| p.state == PageState::Present && p.exclusive));
            r.madvise(5 * PAGE_SIZE, PAGE_SIZE, libc::MADV_DONTNEED);
            let after = pagemap(r.hva, r.len).unwrap();
            for (i, p) in after.iter().enumerate() {
                let want = if i == 5 {
                    PageState::NotPresent
                } else {
                    PageState::Present
                };
                assert_eq!(p.state, want, "advice {advice}, page {i}");
            }
            let pfns = |v: &[PageMapping]| v.iter().map(|p| p.pfn).collect::<Vec<_>>();
            // A PMD split keeps the other subpages where they were.
            assert_eq!(diff_pfns(&pfns(&before), &pfns(&after)), vec![5]);
        }
    }

    #[test]
    fn pagemap_covers_partial_pages() {
        let r = AnonRegion::new(2 * MIB, libc::MADV_NOHUGEPAGE);
        let pages = pagemap(Hva(r.hva.raw() + 100), PAGE_SIZE).unwrap();
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].hva, r.hva);
        assert!(pagemap(r.hva, 0).unwrap().is_empty());
        assert!(matches!(
            pagemap(Hva(u64::MAX - 10), 100),
            Err(Error::RangeOverflow { .. })
        ));
        assert!(matches!(
            thp_coverage(r.hva, 0),
            Err(Error::EmptyRange { .. })
        ));
    }

    #[test]
    fn diff_pfns_table() {
        let p = |n| Some(Pfn(n));
        // (description, before, after, changed indices)
        type Row = (&'static str, Vec<Option<Pfn>>, Vec<Option<Pfn>>, Vec<usize>);
        let table: [Row; 5] = [
            ("identical", vec![p(1), p(2)], vec![p(1), p(2)], vec![]),
            ("one moved", vec![p(1), p(2)], vec![p(1), p(9)], vec![1]),
            ("discarded", vec![p(1), p(2)], vec![None, p(2)], vec![0]),
            ("faulted in", vec![None, None], vec![None, p(3)], vec![1]),
            ("length differs", vec![p(1)], vec![p(1), p(2)], vec![1]),
        ];
        for (desc, before, after, want) in table {
            assert_eq!(diff_pfns(&before, &after), want, "{desc}");
        }
    }

    #[test]
    fn kpageflags_ranges_merge_small_gaps() {
        let pfns: Vec<Pfn> = [10, 11, 12, 5000, 11, 1000, 9000]
            .into_iter()
            .map(Pfn)
            .collect();
        assert_eq!(
            kpageflags_ranges(&pfns),
            vec![(10, 1001), (5000, 5001), (9000, 9001)]
        );
        assert!(kpageflags(&[]).unwrap().is_empty());
    }

    #[test]
    fn page_flags_serialize_as_names() {
        let f = PageFlags(PhysicalPageFlags::THP.bits() | PhysicalPageFlags::ANON.bits() | 1);
        assert!(f.thp() && f.anon() && !f.ksm());
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"["locked","anon","thp"]"#
        );
    }

    #[test]
    fn kpageflags_of_a_gib_of_pfns_is_fast() {
        // The first GiB of physical frames (holes read as `nopage`, not as errors), in the
        // contiguous runs a THP-backed GiB of guest RAM gives: 256 ranges of 512 PFNs.
        let pfns: Vec<Pfn> = (0..262_144u64).map(Pfn).collect();
        let t = std::time::Instant::now();
        let flags = kpageflags(&pfns).unwrap();
        assert_eq!(flags.len(), pfns.len());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }
}
