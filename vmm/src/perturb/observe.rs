//! What the actions observe to judge their own effect: how a huge page is mapped (one PMD or
//! PTEs, from the PAGEMAP_SCAN ioctl), which pages are userfaultfd write-protected, and a VMA's
//! protection (from /proc/self/maps).
//!
//! It only reads this process's own page tables and VMA list: it must not touch the memory it
//! describes. PMD mapping is not in /proc/self/pagemap's per-page entries, and kpageflags' THP
//! flag is set on a large folio however it is mapped; PAGEMAP_SCAN (Linux 6.7, 52526ca7fdb9)
//! reports `PAGE_IS_HUGE` exactly where a PMD maps the range (`pagemap_thp_category`), so it
//! is what tells "PMD-mapped THP" from "PTE-mapped THP".

use std::io;

use crate::addr::{Hva, HUGE_PAGE_SIZE, PAGE_SIZE};
use crate::evidence::{HugePage, Vma, VmaPerms};
use crate::pagemap_scan::{
    covered, regions as scan, PAGE_IS_HUGE, PAGE_IS_PRESENT, PAGE_IS_WRITTEN,
};

/// Whether one PMD maps all of the 2 MiB huge page at `huge` (which must be 2 MiB aligned).
pub fn pmd_mapped(huge: Hva) -> io::Result<bool> {
    debug_assert!(huge.is_aligned(HUGE_PAGE_SIZE));
    let r = scan(huge, HUGE_PAGE_SIZE, PAGE_IS_HUGE | PAGE_IS_PRESENT)?;
    Ok(covered(&r, huge.raw(), huge.raw() + HUGE_PAGE_SIZE) == HUGE_PAGE_SIZE)
}

/// Present pages of `[hva, hva+len)` that are userfaultfd write-protected (the PTE's uffd-wp
/// bit is set: PAGEMAP_SCAN reports them without `PAGE_IS_WRITTEN`).
pub fn uffd_wp_pages(hva: Hva, len: u64) -> io::Result<u64> {
    let present = scan(hva, len, PAGE_IS_PRESENT)?;
    let written = scan(hva, len, PAGE_IS_PRESENT | PAGE_IS_WRITTEN)?;
    let (s, e) = (hva.raw(), hva.raw() + len);
    Ok(
        (covered(&present, s, e) - covered(&written, s, e).min(covered(&present, s, e)))
            / PAGE_SIZE,
    )
}

/// The huge page at `huge` now: PMD or PTEs, and how many of its pages are present and THP.
pub fn huge_page(huge: Hva) -> io::Result<HugePage> {
    let pmd_mapped = pmd_mapped(huge)?;
    let (present_pages, thp_pages) = match crate::pfn::snapshot(huge, HUGE_PAGE_SIZE) {
        Ok(s) => (s.summary.present, s.summary.thp),
        Err(e) => return Err(io::Error::other(e)),
    };
    Ok(HugePage {
        hva: huge,
        pmd_mapped,
        present_pages,
        thp_pages,
    })
}

/// The VMA of this process that contains `addr`, from /proc/self/maps.
pub fn vma_at(addr: Hva) -> io::Result<Option<Vma>> {
    let text = std::fs::read_to_string("/proc/self/maps")?;
    Ok(parse_vma_at(&text, addr))
}

/// The line of a /proc/pid/maps text whose range holds `addr`, parsed.
pub fn parse_vma_at(maps: &str, addr: Hva) -> Option<Vma> {
    maps.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        let (range, perms) = (it.next()?, it.next()?);
        let (s, e) = range.split_once('-')?;
        let start = u64::from_str_radix(s, 16).ok()?;
        let end = u64::from_str_radix(e, 16).ok()?;
        if !(start..end).contains(&addr.raw()) {
            return None;
        }
        let p = perms.as_bytes();
        if p.len() != 4 {
            return None;
        }
        Some(Vma {
            start: Hva(start),
            end: Hva(end),
            perms: VmaPerms {
                read: p[0] == b'r',
                write: p[1] == b'w',
                exec: p[2] == b'x',
                shared: p[3] == b's',
            },
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pfn::test_support::AnonRegion;

    const MAPS: &str = "\
55d0c0000000-55d0c0021000 r--p 00000000 fd:01 1234   /usr/bin/pinlab
7f0000000000-7f0000200000 rw-p 00000000 00:00 0
7f0000200000-7f0000201000 r--p 00000000 00:00 0
7f0000201000-7f0004000000 rw-p 00000000 00:00 0
7ffc00000000-7ffc00021000 rw-s 00000000 00:01 7      /memfd:x (deleted)
";

    /// Each row: (address, expected VMA start, end, perms) and what a bug would get wrong.
    #[test]
    fn vma_lookup_table() {
        type Row = (u64, Option<(u64, u64, &'static str)>, &'static str);
        let rows: &[Row] = &[
            (
                0x7f00_0020_0000,
                Some((0x7f00_0020_0000, 0x7f00_0020_1000, "r--p")),
                "the read-only page is its own VMA: a bug would report the one before it",
            ),
            (
                0x7f00_0020_0fff,
                Some((0x7f00_0020_0000, 0x7f00_0020_1000, "r--p")),
                "last byte of a VMA belongs to it",
            ),
            (
                0x7f00_0020_1000,
                Some((0x7f00_0020_1000, 0x7f00_0400_0000, "rw-p")),
                "end is exclusive: the next VMA starts there",
            ),
            (
                0x7ffc_0000_0000,
                Some((0x7ffc_0000_0000, 0x7ffc_0002_1000, "rw-s")),
                "shared mapping with a path containing spaces",
            ),
            (0x1000, None, "an address in no VMA"),
        ];
        for &(addr, want, what) in rows {
            let got = parse_vma_at(MAPS, Hva(addr));
            let got = got.map(|v| (v.start.raw(), v.end.raw(), v.perms.to_string()));
            let want = want.map(|(s, e, p)| (s, e, p.to_string()));
            assert_eq!(got, want, "{what}");
        }
    }

    /// Ranges clipped to the window: a bug in the clipping over- or under-counts.
    #[test]
    fn covered_clips_to_the_window() {
        let r = [(0x1000, 0x3000), (0x5000, 0x9000)];
        assert_eq!(covered(&r, 0x2000, 0x6000), 0x1000 + 0x1000);
        assert_eq!(covered(&r, 0x0, 0x10000), 0x2000 + 0x4000);
        assert_eq!(covered(&r, 0x3000, 0x5000), 0);
    }

    /// A faulted-in THP is PMD-mapped; an mprotect of one of its pages splits the PMD, and the
    /// scan sees it. Skips when the kernel gives no THP (a THP-less host cannot show a PMD).
    #[test]
    fn pmd_mapped_sees_an_mprotect_split() {
        let r = AnonRegion::new(HUGE_PAGE_SIZE, libc::MADV_HUGEPAGE);
        // SAFETY: our own fresh mapping of `r.len` bytes.
        unsafe { std::ptr::write_bytes(r.hva.as_ptr(), 1, r.len as usize) };
        let Ok(before) = huge_page(r.hva) else {
            println!("skip: kpageflags unreadable (not root)");
            return;
        };
        if before.thp_pages == 0 {
            println!("skip: no THP here");
            return;
        }
        assert!(before.pmd_mapped, "a fresh THP must be PMD-mapped");
        let page = Hva(r.hva.raw() + 5 * PAGE_SIZE);
        // SAFETY: one page of our own mapping; protection restored below.
        let rc = unsafe {
            libc::mprotect(
                page.as_ptr() as *mut libc::c_void,
                PAGE_SIZE as usize,
                libc::PROT_READ,
            )
        };
        assert_eq!(rc, 0);
        let vma = vma_at(page).unwrap().expect("the page is mapped");
        assert_eq!(
            (vma.start, vma.end, vma.perms.write),
            (page, Hva(page.raw() + PAGE_SIZE), false)
        );
        // SAFETY: as above, back to read-write.
        let rc = unsafe {
            libc::mprotect(
                page.as_ptr() as *mut libc::c_void,
                PAGE_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(rc, 0);
        assert!(vma_at(page).unwrap().unwrap().perms.write);
        let after = huge_page(r.hva).unwrap();
        assert!(!after.pmd_mapped, "the mprotect split the PMD");
        assert_eq!(after.thp_pages, 512, "the folio itself is still large");
        assert_eq!(uffd_wp_pages(r.hva, r.len).unwrap(), 0, "nothing uffd-wp");
    }
}
