//! Where things are in guest-physical memory for one scenario, computed once.
//!
//! The fixed addresses (page tables, boot info, the guest image, the first DMA huge page) are the
//! ABI crate's. This module derives the scenario-dependent ones from the workload's sizes: the DMA
//! region, the 2 MiB huge pages it touches, a 4 KiB page beside it inside those huge pages (what a
//! PMD split discards), and a decoy huge page away from it (unpinned RAM that KSM may merge and
//! reclaim may swap). The runner builds one `Layout` and hands it to the devices' boot info, the
//! host actions and the oracle, so they all agree. It knows nothing of scenarios, RAM or KVM.

use pinlab_abi as abi;
use serde::Serialize;

use crate::addr::{Gpa, Iova, HUGE_PAGE_SIZE, PAGE_SIZE};

/// The IOVA at which the guest maps its DMA region (distinct from the GPA on purpose, so a device
/// that confused the two would fail).
pub const REGION_IOVA: Iova = Iova(0x40_0000_0000);

/// Why a region cannot be laid out in guest RAM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the region must be a non-zero multiple of 4KiB (got {0:#x})")]
    RegionSize(u64),
    #[error("the region offset must be a multiple of 4KiB below 2MiB (got {0:#x})")]
    RegionOffset(u64),
    #[error("the DMA region ends at {end:#x}, past guest RAM ({ram:#x}); raise vm.memory")]
    PastRam { end: u64, ram: u64 },
    #[error(
        "the region covers {pages} pages; the guest's bitmaps hold at most {max} ({max_bytes} bytes)"
    )]
    TooManyPages {
        pages: u64,
        max: u64,
        max_bytes: u64,
    },
}

/// A range of guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GpaRange {
    pub start: Gpa,
    pub len: u64,
}

impl GpaRange {
    /// One past the last byte (cannot overflow: layouts are validated against RAM).
    pub fn end(&self) -> Gpa {
        Gpa(self.start.raw() + self.len)
    }

    pub fn contains(&self, gpa: Gpa) -> bool {
        gpa >= self.start && gpa < self.end()
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.len / PAGE_SIZE
    }
}

/// The scenario-dependent places in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Guest RAM size in bytes.
    pub ram_size: u64,
    /// The DMA region the guest maps through the IOMMU and the device pins.
    pub region: GpaRange,
    /// Where the guest maps the region in IOVA space.
    pub region_iova: Iova,
    /// The 2 MiB huge pages the region touches, `[start, end)`, 2 MiB aligned.
    pub huge_pages: GpaRange,
    /// A 4 KiB page inside `huge_pages` but outside the region (after it if there is room, else
    /// before it), or `None` when the region fills its huge pages.
    pub beside: Option<Gpa>,
    /// A huge page of guest RAM away from the region (one huge page after its huge pages), or
    /// `None` when RAM ends too soon.
    pub decoy: Option<Gpa>,
}

impl Layout {
    /// Lays out a region of `region_len` bytes at `region_offset` into the first DMA huge page of
    /// `ram_size` bytes of guest RAM.
    pub fn new(ram_size: u64, region_len: u64, region_offset: u64) -> Result<Self, Error> {
        if region_len == 0 || !region_len.is_multiple_of(PAGE_SIZE) {
            return Err(Error::RegionSize(region_len));
        }
        if !region_offset.is_multiple_of(PAGE_SIZE) || region_offset >= HUGE_PAGE_SIZE {
            return Err(Error::RegionOffset(region_offset));
        }
        let pages = region_len / PAGE_SIZE;
        let max = abi::MAX_REGION_PAGES as u64;
        if pages > max {
            return Err(Error::TooManyPages {
                pages,
                max,
                max_bytes: max * PAGE_SIZE,
            });
        }
        let start = abi::DMA_BASE_GPA + region_offset;
        let end = start
            .checked_add(region_len)
            .filter(|&e| e <= ram_size)
            .ok_or(Error::PastRam {
                end: start.saturating_add(region_len),
                ram: ram_size,
            })?;
        let huge_start = start & !(HUGE_PAGE_SIZE - 1);
        let huge_end = end.div_ceil(HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
        let beside = if end < huge_end {
            Some(Gpa(huge_end - PAGE_SIZE))
        } else if start > huge_start {
            Some(Gpa(huge_start))
        } else {
            None
        };
        let decoy_start = huge_end + HUGE_PAGE_SIZE;
        let decoy = (decoy_start + HUGE_PAGE_SIZE <= ram_size).then_some(Gpa(decoy_start));
        Ok(Layout {
            ram_size,
            region: GpaRange {
                start: Gpa(start),
                len: region_len,
            },
            region_iova: REGION_IOVA,
            huge_pages: GpaRange {
                start: Gpa(huge_start),
                len: huge_end - huge_start,
            },
            beside,
            decoy,
        })
    }

    /// Whether the region starts inside one huge page and ends inside the next (it straddles a
    /// 2 MiB boundary).
    pub fn straddles(&self) -> bool {
        self.huge_pages.len > HUGE_PAGE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Each row: (ram, region, offset) and what a bug would get wrong.
    #[test]
    fn beside_and_decoy_table() {
        let dma = abi::DMA_BASE_GPA;
        type Row = (u64, u64, u64, Option<u64>, Option<u64>, &'static str);
        let rows: &[Row] = &[
            // A full huge page: nothing beside it, decoy one huge page after.
            (
                64 * MIB,
                2 * MIB,
                0,
                None,
                Some(dma + 4 * MIB),
                "full huge page",
            ),
            // 1 MiB at offset 0: the last page of the huge page is beside it.
            (
                64 * MIB,
                MIB,
                0,
                Some(dma + 2 * MIB - 4096),
                Some(dma + 4 * MIB),
                "room after",
            ),
            // Offset 1 MiB, 1 MiB long: fills the back half, the first page is beside it.
            (
                64 * MIB,
                MIB,
                MIB,
                Some(dma),
                Some(dma + 4 * MIB),
                "room before only",
            ),
            // Straddling two huge pages: the last page of the second is beside it.
            (
                64 * MIB,
                2 * MIB,
                MIB,
                Some(dma + 4 * MIB - 4096),
                Some(dma + 6 * MIB),
                "straddles",
            ),
            // RAM ends right after the region's huge page: no decoy.
            (dma + 2 * MIB, 2 * MIB, 0, None, None, "no room for a decoy"),
        ];
        for &(ram, len, off, beside, decoy, what) in rows {
            let l = Layout::new(ram, len, off).expect(what);
            assert_eq!(l.beside.map(Gpa::raw), beside, "{what}: beside");
            assert_eq!(l.decoy.map(Gpa::raw), decoy, "{what}: decoy");
            assert!(l.huge_pages.start.is_aligned(HUGE_PAGE_SIZE), "{what}");
            assert!(l.huge_pages.start <= l.region.start, "{what}");
            assert!(l.region.end() <= l.huge_pages.end(), "{what}");
            if let Some(b) = l.beside {
                assert!(!l.region.contains(b) && l.huge_pages.contains(b), "{what}");
            }
        }
    }

    #[test]
    fn invalid_layouts_name_the_problem() {
        assert_eq!(Layout::new(64 * MIB, 0, 0), Err(Error::RegionSize(0)));
        assert_eq!(Layout::new(64 * MIB, 4097, 0), Err(Error::RegionSize(4097)));
        assert_eq!(
            Layout::new(64 * MIB, 4096, 2 * MIB),
            Err(Error::RegionOffset(2 * MIB))
        );
        assert!(matches!(
            Layout::new(64 * MIB, 66 * MIB, 0),
            Err(Error::TooManyPages { .. })
        ));
        assert!(matches!(
            Layout::new(8 * MIB, 8 * MIB, 0),
            Err(Error::PastRam { .. })
        ));
        // Overflow of offset + length cannot wrap into RAM.
        assert!(Layout::new(u64::MAX, !4095, 0).is_err());
    }
}
