//! The DMA map plan: which VFIO_IOMMU_MAP_DMA calls cover guest RAM, as a pure function.
//!
//! Guest RAM is given as memslots, `(gpa, len, hva)` regions; the plan maps each at IOVA = GPA
//! (as cloud-hypervisor maps every guest memory region at attach), one map per memslot and never
//! one across two (even when their host mappings happen to be adjacent: each map is unmapped by
//! exactly the call that made it, and a memslot can move alone). A memslot longer than
//! `max_map_len` is split into pieces of at most that length. Every map must be aligned to the
//! IOMMU's smallest page, lie inside a valid IOVA range the IOMMU reports (x86 reserves the MSI
//! window at 0xfee00000, which IOVA = GPA cannot step around), and fit the number of mappings the
//! container still allows.
//!
//! It touches nothing: no device, no memory. The attach hands the plan to `dma::DmaMappings`.

use crate::addr::{Gpa, Hva, Iova, PAGE_SIZE};

/// Why guest RAM cannot be mapped as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The IOMMU reported no page size, or a smallest one below 4 KiB.
    #[error("IOMMU page sizes {pgsizes:#x} have no usable smallest page")]
    PageSizes { pgsizes: u64 },
    /// A memslot of zero bytes.
    #[error("memslot at {gpa} is empty")]
    Empty { gpa: Gpa },
    /// A memslot not aligned to the IOMMU's smallest page.
    #[error("memslot {gpa} + {len:#x} at {hva} is not aligned to the IOMMU page ({align:#x})")]
    Unaligned {
        gpa: Gpa,
        len: u64,
        hva: Hva,
        align: u64,
    },
    /// `gpa + len` or `hva + len` overflows.
    #[error("memslot {gpa} + {len:#x} overflows")]
    Overflow { gpa: Gpa, len: u64 },
    /// Two memslots share guest physical addresses (so they would share IOVAs).
    #[error("memslots at {first} and {second} overlap")]
    Overlap { first: Gpa, second: Gpa },
    /// A memslot that no valid IOVA range wholly contains.
    #[error(
        "guest RAM {gpa} + {len:#x} is not inside a valid IOVA range of the IOMMU ({ranges}); \
         with IOVA = GPA, shrink vm.memory below the reserved range"
    )]
    OutsideIova { gpa: Gpa, len: u64, ranges: String },
    /// More maps than the container allows (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL).
    #[error("the plan needs {maps} DMA mappings, the container allows {avail} more")]
    TooManyMaps { maps: usize, avail: u32 },
    /// `max_map_len` is zero or not a multiple of the IOMMU page.
    #[error("maximum map length {max:#x} is not a non-zero multiple of the IOMMU page {align:#x}")]
    MaxMapLen { max: u64, align: u64 },
}

/// One memslot of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub gpa: Gpa,
    pub len: u64,
    pub hva: Hva,
}

/// One VFIO_IOMMU_MAP_DMA call: `len` bytes of the VMM's memory at `hva` mapped at `iova`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DmaRange {
    pub iova: Iova,
    /// The guest address (equal to `iova`: IOVA = GPA).
    pub gpa: Gpa,
    pub len: u64,
    pub hva: Hva,
}

impl DmaRange {
    /// Whether `hva..hva+len` lies wholly inside this range's host memory.
    pub fn contains_hva(&self, hva: Hva, len: u64) -> bool {
        let (Some(start), Some(end)) = (hva.checked_offset_from(self.hva), hva.checked_add(len))
        else {
            return false;
        };
        start < self.len && end.raw() <= self.hva.raw() + self.len
    }
}

/// A longest map no memslot reaches (guest RAM is at most 4 GiB).
pub const NO_SPLIT: u64 = 1 << 62;

/// What the IOMMU allows, from VFIO_IOMMU_GET_INFO (see `info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bitmap of supported IOMMU page sizes; the smallest set bit is the map alignment.
    pub pgsizes: u64,
    /// Valid IOVA ranges, inclusive `(start, end)`; empty means the IOMMU reported none (all
    /// of the 64-bit space is assumed valid, as the kernel does for an IOMMU without holes).
    pub iova_ranges: Vec<(u64, u64)>,
    /// How many more mappings the container accepts, if it said.
    pub dma_avail: Option<u32>,
    /// Longest single map; longer memslots are split.
    pub max_map_len: u64,
}

impl Default for Limits {
    /// 4 KiB pages, no holes, no count limit, no split (one map per memslot, as
    /// cloud-hypervisor maps each guest memory region whole).
    fn default() -> Self {
        Limits {
            pgsizes: PAGE_SIZE,
            iova_ranges: Vec::new(),
            dma_avail: None,
            max_map_len: NO_SPLIT,
        }
    }
}

impl Limits {
    /// The map alignment: the smallest IOMMU page.
    pub fn align(&self) -> Result<u64, Error> {
        let smallest = self.pgsizes & self.pgsizes.wrapping_neg();
        if smallest < PAGE_SIZE {
            return Err(Error::PageSizes {
                pgsizes: self.pgsizes,
            });
        }
        Ok(smallest)
    }

    fn iova_ok(&self, start: u64, len: u64) -> bool {
        let last = start + (len - 1);
        self.iova_ranges.is_empty()
            || self
                .iova_ranges
                .iter()
                .any(|&(lo, hi)| lo <= start && last <= hi)
    }

    fn ranges_text(&self) -> String {
        let v: Vec<String> = self
            .iova_ranges
            .iter()
            .map(|(lo, hi)| format!("{lo:#x}..={hi:#x}"))
            .collect();
        v.join(", ")
    }
}

/// The maps that cover `regions` at IOVA = GPA, sorted by IOVA; see the module header.
pub fn plan(regions: &[Region], limits: &Limits) -> Result<Vec<DmaRange>, Error> {
    let align = limits.align()?;
    let max = limits.max_map_len;
    if max == 0 || !max.is_multiple_of(align) {
        return Err(Error::MaxMapLen { max, align });
    }
    let mut sorted = regions.to_vec();
    sorted.sort_by_key(|r| r.gpa);
    for r in &sorted {
        let Region { gpa, len, hva } = *r;
        if len == 0 {
            return Err(Error::Empty { gpa });
        }
        if gpa.checked_add(len).is_none() || hva.checked_add(len).is_none() {
            return Err(Error::Overflow { gpa, len });
        }
        if !gpa.is_aligned(align) || !hva.is_aligned(align) || !len.is_multiple_of(align) {
            return Err(Error::Unaligned {
                gpa,
                len,
                hva,
                align,
            });
        }
        if !limits.iova_ok(gpa.raw(), len) {
            return Err(Error::OutsideIova {
                gpa,
                len,
                ranges: limits.ranges_text(),
            });
        }
    }
    if let Some(w) = sorted
        .windows(2)
        .find(|w| w[0].gpa.raw() + w[0].len > w[1].gpa.raw())
    {
        return Err(Error::Overlap {
            first: w[0].gpa,
            second: w[1].gpa,
        });
    }
    let mut out = Vec::new();
    for r in &sorted {
        let mut off = 0;
        while off < r.len {
            let len = (r.len - off).min(max);
            out.push(DmaRange {
                iova: Iova(r.gpa.raw() + off),
                gpa: Gpa(r.gpa.raw() + off),
                len,
                hva: Hva(r.hva.raw() + off),
            });
            off += len;
        }
    }
    if let Some(avail) = limits.dma_avail {
        if out.len() > avail as usize {
            return Err(Error::TooManyMaps {
                maps: out.len(),
                avail,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn r(gpa: u64, len: u64, hva: u64) -> Region {
        Region {
            gpa: Gpa(gpa),
            len,
            hva: Hva(hva),
        }
    }

    fn d(gpa: u64, len: u64, hva: u64) -> DmaRange {
        DmaRange {
            iova: Iova(gpa),
            gpa: Gpa(gpa),
            len,
            hva: Hva(hva),
        }
    }

    /// x86 with VT-d: 4K/2M/1G pages, the MSI window reserved.
    fn x86() -> Limits {
        Limits {
            pgsizes: 0x4000_1000 | 0x20_0000,
            iova_ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)],
            dma_avail: Some(65535),
            max_map_len: GIB,
        }
    }

    /// Each row: memslots, limits, the maps a correct plan makes. A bug would map a range at an
    /// IOVA other than its GPA, merge two memslots into one map (their host addresses below are
    /// adjacent on purpose), drop a tail, or split off the wrong boundary.
    #[test]
    fn plan_table() {
        let h = 0x7f00_0000_0000;
        type Row = (&'static str, Vec<Region>, Limits, Vec<DmaRange>);
        let rows: Vec<Row> = vec![
            (
                "one memslot from GPA 0: one map, IOVA = GPA",
                vec![r(0, 64 * MIB, h)],
                x86(),
                vec![d(0, 64 * MIB, h)],
            ),
            (
                "two memslots with adjacent host memory: two maps, never merged",
                vec![r(0, 2 * MIB, h), r(2 * MIB, 4 * MIB, h + 2 * MIB)],
                x86(),
                vec![d(0, 2 * MIB, h), d(2 * MIB, 4 * MIB, h + 2 * MIB)],
            ),
            (
                "memslots out of order, with a hole: sorted by IOVA, the hole unmapped",
                vec![r(4 * GIB, 2 * MIB, h), r(0, 2 * MIB, h + 16 * MIB)],
                x86(),
                vec![d(0, 2 * MIB, h + 16 * MIB), d(4 * GIB, 2 * MIB, h)],
            ),
            (
                "a memslot longer than the longest map: split, the tail kept",
                vec![r(0, 5 * MIB, h)],
                Limits {
                    max_map_len: 2 * MIB,
                    ..x86()
                },
                vec![
                    d(0, 2 * MIB, h),
                    d(2 * MIB, 2 * MIB, h + 2 * MIB),
                    d(4 * MIB, MIB, h + 4 * MIB),
                ],
            ),
            (
                "right up to the MSI window, unsplit",
                vec![r(0, 0xfee0_0000, h)],
                Limits {
                    max_map_len: NO_SPLIT,
                    ..x86()
                },
                vec![d(0, 0xfee0_0000, h)],
            ),
            (
                "no IOVA ranges reported: all valid",
                vec![r(0xfee0_0000, MIB, h)],
                Limits::default(),
                vec![d(0xfee0_0000, MIB, h)],
            ),
        ];
        for (what, regions, limits, want) in rows {
            let got = plan(&regions, &limits).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got, want, "{what}");
            assert!(got.iter().all(|m| m.iova.raw() == m.gpa.raw()), "{what}");
        }
    }

    /// Each row: memslots, limits, the error a correct plan gives. A bug would hand the kernel a
    /// map it refuses (EINVAL mid-attach) or, worse, one over the MSI window.
    #[test]
    fn plan_refusals() {
        let h = 0x7f00_0000_0000;
        type Check = fn(&Error) -> bool;
        let rows: Vec<(&str, Vec<Region>, Limits, Check)> = vec![
            ("empty memslot", vec![r(0, 0, h)], x86(), |e| {
                matches!(e, Error::Empty { .. })
            }),
            (
                "GPA not page aligned",
                vec![r(0x800, 2 * MIB, h)],
                x86(),
                |e| matches!(e, Error::Unaligned { align: 0x1000, .. }),
            ),
            (
                "host address not aligned",
                vec![r(0, 2 * MIB, h + 8)],
                x86(),
                |e| matches!(e, Error::Unaligned { .. }),
            ),
            (
                "length not aligned to a 64 KiB IOMMU page",
                vec![r(0, 68 * 1024, h)],
                Limits {
                    pgsizes: 0x1_0000,
                    ..x86()
                },
                |e| {
                    matches!(
                        e,
                        Error::Unaligned {
                            align: 0x1_0000,
                            ..
                        }
                    )
                },
            ),
            (
                "crosses the MSI window (4 GiB of RAM from 0)",
                vec![r(0, 4 * GIB, h)],
                x86(),
                |e| matches!(e, Error::OutsideIova { .. }),
            ),
            (
                "overlapping memslots",
                vec![r(0, 4 * MIB, h), r(2 * MIB, 4 * MIB, h + 64 * MIB)],
                x86(),
                |e| matches!(e, Error::Overlap { .. }),
            ),
            (
                "GPA overflows",
                vec![r(u64::MAX - 0xfff, 0x2000, h)],
                Limits::default(),
                |e| matches!(e, Error::Overflow { .. }),
            ),
            (
                "no page size",
                vec![r(0, 2 * MIB, h)],
                Limits {
                    pgsizes: 0,
                    ..x86()
                },
                |e| matches!(e, Error::PageSizes { .. }),
            ),
            (
                "more maps than the container allows",
                vec![r(0, 4 * MIB, h)],
                Limits {
                    max_map_len: MIB,
                    dma_avail: Some(3),
                    ..x86()
                },
                |e| matches!(e, Error::TooManyMaps { maps: 4, avail: 3 }),
            ),
            (
                "zero longest map",
                vec![r(0, 4 * MIB, h)],
                Limits {
                    max_map_len: 0,
                    ..x86()
                },
                |e| matches!(e, Error::MaxMapLen { .. }),
            ),
        ];
        for (what, regions, limits, check) in rows {
            match plan(&regions, &limits) {
                Err(e) => assert!(check(&e), "{what}: {e:?}"),
                Ok(p) => panic!("{what}: planned {p:?}"),
            }
        }
    }

    #[test]
    fn contains_hva_bounds() {
        let m = d(0, 2 * MIB, 0x10_0000);
        let rows = [
            (0x10_0000, 2 * MIB, true),
            (0x10_1000, 0x1000, true),
            (0x10_0000 + 2 * MIB - 0x1000, 0x1000, true),
            (0x10_0000 + 2 * MIB - 0x1000, 0x2000, false),
            (0xf_f000, 0x2000, false),
            (0x10_0000 + 2 * MIB, 0x1000, false),
            (u64::MAX - 0xfff, 0x2000, false),
        ];
        for (hva, len, want) in rows {
            assert_eq!(m.contains_hva(Hva(hva), len), want, "{hva:#x}+{len:#x}");
        }
    }
}
