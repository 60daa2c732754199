//! A pin's PFN evidence: the PFN of every page of a pinned range, recorded right after the pin
//! as runs of consecutive pages on consecutive PFNs, and read so that a PMD-mapped huge page
//! costs one pagemap entry instead of 512.
//!
//! What is read is still the kernel's word for every page: [`read`] asks PAGEMAP_SCAN
//! ([`crate::pagemap_scan`]) where a PMD maps the range, reads the pagemap entry of each such
//! huge page's first page, and takes pages 1..512 to be on the 511 frames after it, which is
//! what a PMD mapping is (one entry for a naturally aligned 2 MiB frame). It checks the head's
//! PFN is 2 MiB aligned and asks PAGEMAP_SCAN again after the reads: a huge page no longer
//! PMD-mapped by then (split, zapped, remapped meanwhile) is read again entry by entry, as
//! every page outside a PMD mapping is. So the list says the same as [`crate::pfn::pfns`]
//! would have said at some instant of the read; it is smaller (16 bytes a run, not a page)
//! and quicker: 1 GiB of THP RAM in about 0.5 ms here against about 1.1 ms for the 262144
//! entries (`pinlab bench --only map`, docs/performance.md).
//!
//! Only reads, like [`crate::pfn`], whose errors it returns.

use std::fs::File;

use crate::addr::{Hva, Pfn, HUGE_PAGE_SIZE, PAGE_SIZE};
use crate::pagemap_scan::{self, PAGE_IS_HUGE, PAGE_IS_PRESENT};
use crate::pfn::{self, Error, Result};

/// Pages of one huge page.
const HUGE_PAGES: u64 = HUGE_PAGE_SIZE / PAGE_SIZE;
/// Pagemap entries read per pread(2) outside PMD mappings: 64 KiB, reused, so the buffer stays
/// in cache and no fresh memory is faulted in per page.
const CHUNK_PAGES: usize = 8192;

/// Pages `page..page + pages` of a range are on frames `pfn..pfn + pages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRun {
    /// The first frame.
    pub pfn: Pfn,
    /// Index of the first page in the range.
    pub page: u32,
    /// Pages in the run (at least 1).
    pub pages: u32,
}

/// The PFN of each page of a range, as runs; pages in no run have none (not present, swapped,
/// or hidden from a process without CAP_SYS_ADMIN). At most `u32::MAX` pages (16 TiB).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PfnRuns {
    pages: u32,
    runs: Vec<PfnRun>,
}

impl PfnRuns {
    /// No pages.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages recorded.
    pub fn pages(&self) -> u64 {
        u64::from(self.pages)
    }

    /// The runs, in page order.
    pub fn runs(&self) -> &[PfnRun] {
        &self.runs
    }

    /// Appends `pages` pages on frames `pfn..` (`None`: pages without a PFN).
    ///
    /// # Panics
    ///
    /// Past `u32::MAX` pages; [`read`] refuses such ranges first.
    fn push_pages(&mut self, pfn: Option<Pfn>, pages: u32) {
        if pages == 0 {
            return;
        }
        let page = self.pages;
        self.pages = page.checked_add(pages).expect("at most u32::MAX pages");
        let Some(pfn) = pfn else { return };
        if let Some(last) = self.runs.last_mut() {
            if last.page + last.pages == page
                && last.pfn.0.checked_add(u64::from(last.pages)) == Some(pfn.0)
            {
                last.pages += pages;
                return;
            }
        }
        self.runs.push(PfnRun { pfn, page, pages });
    }

    /// Appends one page.
    pub fn push(&mut self, pfn: Option<Pfn>) {
        self.push_pages(pfn, 1);
    }

    /// Appends `other`'s pages after these.
    pub fn append(&mut self, other: &PfnRuns) {
        let base = self.pages;
        for r in &other.runs {
            self.push_pages(None, r.page + base - self.pages);
            self.push_pages(Some(r.pfn), r.pages);
        }
        self.push_pages(None, other.pages + base - self.pages);
    }

    /// The PFN of page `page` (`None` past the end too).
    pub fn get(&self, page: u64) -> Option<Pfn> {
        let page = u32::try_from(page).ok()?;
        let k = self.runs.partition_point(|r| r.page + r.pages <= page);
        let r = self.runs.get(k)?;
        (r.page <= page).then(|| Pfn(r.pfn.0 + u64::from(page - r.page)))
    }

    /// Every page's PFN, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<Pfn>> + '_ {
        let mut runs = self.runs.iter().peekable();
        (0..self.pages).map(move |page| {
            while runs.next_if(|r| r.page + r.pages <= page).is_some() {}
            runs.peek()
                .filter(|r| r.page <= page)
                .map(|r| Pfn(r.pfn.0 + u64::from(page - r.page)))
        })
    }

    /// Indices of the pages whose PFN in `now` differs from the one recorded here, as
    /// [`pfn::diff_pfns`] says of two lists.
    pub fn diff(&self, now: &[Option<Pfn>]) -> Vec<usize> {
        pfn::diff_pfns_of(self.iter(), now)
    }
}

impl FromIterator<Option<Pfn>> for PfnRuns {
    fn from_iter<I: IntoIterator<Item = Option<Pfn>>>(iter: I) -> Self {
        let mut runs = PfnRuns::new();
        for pfn in iter {
            runs.push(pfn);
        }
        runs
    }
}

/// The PFN of every 4 KiB page overlapping `hva..hva+len`, right now (see the module header for
/// how PMD-mapped huge pages are read).
pub fn read(hva: Hva, len: u64) -> Result<PfnRuns> {
    let (first, count) = pfn::page_span(hva, len)?;
    if u32::try_from(count).is_err() {
        return Err(Error::RangeOverflow { hva, len });
    }
    let pagemap = File::open("/proc/self/pagemap").map_err(Error::OpenPagemap)?;
    // Without PAGEMAP_SCAN (before Linux 6.7) or when it fails, every page is read.
    let huge = || {
        pagemap_scan::regions_in(
            &pagemap,
            Hva(first * PAGE_SIZE),
            count * PAGE_SIZE,
            PAGE_IS_HUGE | PAGE_IS_PRESENT,
        )
        .unwrap_or_default()
    };
    read_checked(&pagemap, first, count, huge)
}

/// [`read`] with PMD-mapped regions from `huge` (asked before and after the reads).
fn read_checked(
    pagemap: &File,
    first: u64,
    count: u64,
    mut huge: impl FnMut() -> Vec<(u64, u64)>,
) -> Result<PfnRuns> {
    let (start, end) = (first * PAGE_SIZE, (first + count) * PAGE_SIZE);
    let blocks = pmd_blocks(&huge(), start, end);
    let (runs, by_head) = read_blocks(pagemap, first, count, &blocks)?;
    if by_head.is_empty() {
        return Ok(runs);
    }
    // A huge page read by its head must still be PMD-mapped after the reads. If one is not
    // (rare: something split, zapped or remapped it meanwhile), the range is read again entry
    // by entry, so nothing rests on a mapping that changed under the read.
    let still = pmd_blocks(&huge(), start, end);
    if by_head.iter().all(|b| still.binary_search(b).is_ok()) {
        return Ok(runs);
    }
    Ok(read_blocks(pagemap, first, count, &[])?.0)
}

/// The page index of the first page of every 2 MiB-aligned huge page in `start..end` that
/// `regions` (PMD-mapped, present) covers whole, in order.
fn pmd_blocks(regions: &[(u64, u64)], start: u64, end: u64) -> Vec<u64> {
    let mut blocks = Vec::new();
    for &(s, e) in regions {
        let s = s.max(start).next_multiple_of(HUGE_PAGE_SIZE);
        let e = e.min(end) / HUGE_PAGE_SIZE * HUGE_PAGE_SIZE;
        blocks.extend(
            (s..e)
                .step_by(HUGE_PAGE_SIZE as usize)
                .map(|a| a / PAGE_SIZE),
        );
    }
    blocks
}

/// Reads pages `first..first + count`: the huge pages starting at `blocks` (page indices, in
/// order) by their head's entry, the rest entry by entry. Returns the PFNs and the blocks that
/// were read by their head (a head that is not a 2 MiB-aligned present frame is read whole).
fn read_blocks(
    pagemap: &File,
    first: u64,
    count: u64,
    blocks: &[u64],
) -> Result<(PfnRuns, Vec<u64>)> {
    let mut runs = PfnRuns::new();
    let mut by_head = Vec::with_capacity(blocks.len());
    let mut buf = vec![0u64; CHUNK_PAGES.min(count as usize)];
    let mut head = [0u64; 1];
    let mut page = first;
    for &b in blocks {
        read_pages(pagemap, &mut runs, &mut buf, page, b)?;
        pfn::read_entries_into(pagemap, Hva(b * PAGE_SIZE), b, &mut head)?;
        match pfn::entry_pfn(head[0]) {
            Some(pfn) if pfn.0 % HUGE_PAGES == 0 => {
                runs.push_pages(Some(pfn), HUGE_PAGES as u32);
                by_head.push(b);
            }
            _ => read_pages(pagemap, &mut runs, &mut buf, b, b + HUGE_PAGES)?,
        }
        page = b + HUGE_PAGES;
    }
    read_pages(pagemap, &mut runs, &mut buf, page, first + count)?;
    Ok((runs, by_head))
}

/// Appends pages `from..to` read entry by entry, `buf.len()` entries a pread.
fn read_pages(
    pagemap: &File,
    runs: &mut PfnRuns,
    buf: &mut [u64],
    from: u64,
    to: u64,
) -> Result<()> {
    let mut page = from;
    while page < to {
        let n = buf.len().min((to - page) as usize);
        pfn::read_entries_into(pagemap, Hva(page * PAGE_SIZE), page, &mut buf[..n])?;
        for &e in &buf[..n] {
            runs.push(pfn::entry_pfn(e));
        }
        page += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pfn::test_support::AnonRegion;

    fn p(n: u64) -> Option<Pfn> {
        Some(Pfn(n))
    }

    #[test]
    fn runs_join_consecutive_frames_and_answer_per_page() {
        let pages = [
            p(10),
            p(11),
            p(12),
            None,
            p(7),
            p(8),
            p(20),
            None,
            None,
            p(21),
        ];
        let runs: PfnRuns = pages.iter().copied().collect();
        assert_eq!(runs.pages(), 10);
        assert_eq!(
            runs.runs(),
            &[
                PfnRun {
                    pfn: Pfn(10),
                    page: 0,
                    pages: 3
                },
                PfnRun {
                    pfn: Pfn(7),
                    page: 4,
                    pages: 2
                },
                PfnRun {
                    pfn: Pfn(20),
                    page: 6,
                    pages: 1
                },
                PfnRun {
                    pfn: Pfn(21),
                    page: 9,
                    pages: 1
                },
            ]
        );
        assert_eq!(runs.iter().collect::<Vec<_>>(), pages);
        for (i, want) in pages.iter().enumerate() {
            assert_eq!(runs.get(i as u64), *want, "page {i}");
        }
        assert_eq!(runs.get(10), None);
        assert_eq!(runs.get(u64::MAX), None);
    }

    #[test]
    fn append_shifts_the_second_list_and_joins_across_the_seam() {
        let a: PfnRuns = [p(1), p(2), None].into_iter().collect();
        let b: PfnRuns = [None, p(5), p(6)].into_iter().collect();
        let c: PfnRuns = [p(7), None].into_iter().collect();
        let mut all = a.clone();
        all.append(&b);
        all.append(&c);
        let want = [p(1), p(2), None, None, p(5), p(6), p(7), None];
        assert_eq!(all.iter().collect::<Vec<_>>(), want);
        assert_eq!(all, want.into_iter().collect());
        assert_eq!(all.runs().len(), 2, "5, 6 | 7 join across the seam");
    }

    #[test]
    fn diff_is_diff_pfns() {
        let before = [p(1), p(2), None, p(4), p(5)];
        let cases: [&[Option<Pfn>]; 4] = [
            &[p(1), p(2), None, p(4), p(5)],
            &[p(1), p(9), p(3), p(4)],
            &[None, p(2), None, p(4), p(5), p(6), None],
            &[],
        ];
        let runs: PfnRuns = before.into_iter().collect();
        for now in cases {
            assert_eq!(runs.diff(now), pfn::diff_pfns(&before, now), "{now:?}");
        }
    }

    /// On real memory the runs say page for page what `pfn::pfns` says: THP RAM read by heads,
    /// 4 KiB pages and holes entry by entry, and a range that starts and ends inside huge pages.
    #[test]
    fn read_agrees_with_pagemap_on_thp_small_pages_and_holes() {
        let r = AnonRegion::new(16 * HUGE_PAGE_SIZE, libc::MADV_HUGEPAGE);
        r.madvise(0, 8 * HUGE_PAGE_SIZE, libc::MADV_POPULATE_WRITE);
        // A hole of one huge page, then 4 KiB pages (split by MADV_NOHUGEPAGE before the fault).
        r.madvise(
            9 * HUGE_PAGE_SIZE,
            7 * HUGE_PAGE_SIZE,
            libc::MADV_NOHUGEPAGE,
        );
        r.madvise(
            9 * HUGE_PAGE_SIZE,
            7 * HUGE_PAGE_SIZE,
            libc::MADV_POPULATE_WRITE,
        );
        let huge = pagemap_scan::regions(r.hva, r.len, PAGE_IS_HUGE | PAGE_IS_PRESENT)
            .expect("PAGEMAP_SCAN");
        for (start, len) in [
            (0, r.len),
            (PAGE_SIZE * 3, r.len - PAGE_SIZE * 5),
            (HUGE_PAGE_SIZE, HUGE_PAGE_SIZE),
            (8 * HUGE_PAGE_SIZE - PAGE_SIZE, 2 * HUGE_PAGE_SIZE),
        ] {
            let hva = Hva(r.hva.raw() + start);
            let want = pfn::pfns(hva, len).unwrap();
            let got = read(hva, len).unwrap();
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{start:#x}+{len:#x}");
        }
        if !huge.is_empty() {
            let runs = read(r.hva, 8 * HUGE_PAGE_SIZE).unwrap();
            assert!(
                runs.runs().len() <= 8,
                "THP RAM is at most one run a huge page: {:?}",
                runs.runs()
            );
        }
    }

    /// The PMD mappings are asked for again after the reads, and a huge page that is no longer
    /// PMD-mapped by then sends the range to be read entry by entry: here the second answer
    /// says no PMD maps anything (as after a split during the read), and the result is still
    /// page for page what pagemap says.
    #[test]
    fn a_pmd_mapping_gone_by_the_second_scan_is_read_again_page_by_page() {
        let r = AnonRegion::new(4 * HUGE_PAGE_SIZE, libc::MADV_HUGEPAGE);
        r.madvise(0, r.len, libc::MADV_POPULATE_WRITE);
        let huge = pagemap_scan::regions(r.hva, r.len, PAGE_IS_HUGE | PAGE_IS_PRESENT).unwrap();
        let (first, count) = (r.hva.raw() / PAGE_SIZE, r.len / PAGE_SIZE);
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let want = pfn::pfns(r.hva, r.len).unwrap();
        let (_, by_head) = read_blocks(
            &pagemap,
            first,
            count,
            &pmd_blocks(&huge, r.hva.raw(), r.hva.raw() + r.len),
        )
        .unwrap();
        let mut answers = vec![Vec::new(), huge];
        let got = read_checked(&pagemap, first, count, || answers.pop().unwrap()).unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
        if !by_head.is_empty() {
            assert!(
                answers.is_empty(),
                "asked again after reading {} heads",
                by_head.len()
            );
        }
    }

    #[test]
    fn a_range_past_u32_pages_is_refused() {
        assert!(matches!(
            read(Hva(0), (u64::from(u32::MAX) + 1) * PAGE_SIZE),
            Err(Error::RangeOverflow { .. })
        ));
    }
}
