//! The emulated IOMMU: IOVA -> GPA mappings that pin at map time, as VFIO type1's MAP_DMA does.
//!
//! It takes typed requests ([`Map`], [`Unmap`], an [`IovaRange`] to look up): the guest-supplied
//! arithmetic was checked when the descriptor was parsed (`request.rs`). What needs the table is
//! checked here, before anything is pinned: overlap with a live mapping, the table's size. A
//! mapping holds its pin (released when the mapping is dropped: unmap unpins) and the PFNs its
//! pages had at map time, from /proc/self/pagemap: the evidence of which pages the device holds.
//! Failures are typed ([`Error`]); the ABI status is produced at the edge ([`Error::status`]).

use std::collections::BTreeMap;

use pinlab_abi as abi;

use crate::addr::{Gpa, Hva, Iova, Pfn, PAGE_SIZE};
use crate::devices::request::{IovaRange, Map, Perm, Unmap};
use crate::memory::GuestRam;
use crate::pfn_runs::PfnRuns;
use crate::pin::{self, Pin};
use crate::scenario::PinKind;

/// Why the IOMMU refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{range} overlaps the mapping at {existing}")]
    Overlap { range: IovaRange, existing: Iova },
    #[error("the table already holds {max} mappings")]
    TooManyMappings { max: usize },
    #[error("no mapping is exactly {range}")]
    NotMapped { range: IovaRange },
    #[error("no mapping covers {range}")]
    NotCovered { range: IovaRange },
    #[error("the mapping at {mapping} allows {have}, the request needs {need}")]
    Permission {
        mapping: Iova,
        have: Perm,
        need: Perm,
    },
    #[error("translating {gpa} + {len:#x} to a host address: {source}")]
    Translate {
        gpa: Gpa,
        len: u64,
        #[source]
        source: crate::memory::Error,
    },
    #[error("pinning {len:#x} bytes at {hva}: {source}")]
    Pin {
        hva: Hva,
        len: u64,
        #[source]
        source: pin::Error,
    },
}

impl Error {
    /// The ABI status the guest is answered with.
    pub fn status(&self) -> u32 {
        match self {
            Error::Overlap { .. } => abi::STATUS_OVERLAP,
            Error::TooManyMappings { .. } => abi::STATUS_TOO_MANY_MAPPINGS,
            Error::NotMapped { .. } | Error::NotCovered { .. } => abi::STATUS_NOT_MAPPED,
            Error::Permission { .. } => abi::STATUS_PERMISSION,
            Error::Translate { .. } => abi::STATUS_OUT_OF_RANGE,
            Error::Pin { .. } => abi::STATUS_PIN_FAILED,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One IOVA range mapped to guest RAM and pinned.
pub struct Mapping {
    pub iova: Iova,
    pub gpa: Gpa,
    pub len: u64,
    pub perm: Perm,
    pub pin: Box<dyn Pin>,
    /// Host address the pin was taken at (guest RAM may move later, the pin does not).
    pub hva_at_map: Hva,
    /// PFN of each 4 KiB page at map time (none: not present, or pagemap unreadable).
    pub pinned_pfns: PfnRuns,
    /// Why `pinned_pfns` is empty, if it is.
    pub pfn_error: Option<String>,
}

/// A page whose PFN now differs from the one pinned.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct PfnChange {
    pub page: usize,
    pub gpa: Gpa,
    pub pinned: Option<Pfn>,
    pub mapped: Option<Pfn>,
}

/// Pinned PFNs (at map time) against the PFNs guest RAM maps at the same GPAs now.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct PinEvidence {
    pub iova: Iova,
    pub gpa: Gpa,
    pub len: u64,
    pub pages: usize,
    pub pinned_pfns_changed_pages: usize,
    /// The first few changed pages, in detail, for the report.
    pub changed: Vec<PfnChange>,
    /// Changed pages not detailed in `changed` (they are all in `changed_runs`).
    pub changed_left_out: usize,
    /// Every changed page, as runs `[first page, count]` of pages of this mapping.
    pub changed_runs: Vec<[usize; 2]>,
    /// Why the comparison could not be made (e.g. pagemap unreadable), if it could not.
    pub unreadable: Option<String>,
}

impl Mapping {
    /// The first IOVA past the mapping (a mapping's range was checked not to overflow).
    fn end(&self) -> Iova {
        Iova(self.iova.raw() + self.len)
    }

    /// Compares the pinned PFNs with what guest RAM maps at the same GPAs now.
    pub fn evidence(&self, ram: &GuestRam) -> PinEvidence {
        let mut ev = PinEvidence {
            iova: self.iova,
            gpa: self.gpa,
            len: self.len,
            pages: (self.len / PAGE_SIZE) as usize,
            pinned_pfns_changed_pages: 0,
            changed: Vec::new(),
            changed_left_out: 0,
            changed_runs: Vec::new(),
            unreadable: self.pfn_error.clone(),
        };
        if ev.unreadable.is_some() {
            return ev;
        }
        let hva = match ram.translate(self.gpa, self.len) {
            Ok(hva) => hva,
            Err(e) => {
                ev.unreadable = Some(e.to_string());
                return ev;
            }
        };
        let mapped = match crate::pfn::pfns(hva, self.len) {
            Ok(mapped) => mapped,
            Err(e) => {
                ev.unreadable = Some(e.to_string());
                return ev;
            }
        };
        let diff = self.pinned_pfns.diff(&mapped);
        ev.pinned_pfns_changed_pages = diff.len();
        ev.changed_left_out = diff.len().saturating_sub(DETAILED_CHANGES);
        for &i in &diff {
            match ev.changed_runs.last_mut() {
                Some([first, n]) if *first + *n == i => *n += 1,
                _ => ev.changed_runs.push([i, 1]),
            }
        }
        ev.changed = diff
            .iter()
            .take(DETAILED_CHANGES)
            .map(|&i| PfnChange {
                page: i,
                gpa: Gpa(self.gpa.raw() + i as u64 * PAGE_SIZE),
                pinned: self.pinned_pfns.get(i as u64),
                mapped: mapped.get(i).copied().flatten(),
            })
            .collect();
        ev
    }
}

/// How many changed pages `PinEvidence::changed` details.
const DETAILED_CHANGES: usize = 8;

impl PinEvidence {
    /// Whether the page at `gpa` is inside this mapping and its pinned PFN is no longer the
    /// mapped one (or it is no longer mapped).
    pub fn changed_at(&self, gpa: Gpa) -> bool {
        let Some(off) = gpa.checked_offset_from(self.gpa).filter(|&o| o < self.len) else {
            return false;
        };
        let page = (off / PAGE_SIZE) as usize;
        self.changed_runs
            .iter()
            .any(|&[first, n]| page >= first && page - first < n)
    }
}

/// The IOMMU's translation table.
pub struct Iommu {
    kind: PinKind,
    /// With `PinKind::Vfio`: the device whose DMA maps hold guest RAM; maps take their pins
    /// from it.
    vfio: Option<std::sync::Arc<pin::vfio::Attachment>>,
    options: pin::PinOptions,
    max_mappings: usize,
    /// Keyed by the first IOVA of each mapping; mappings never overlap.
    mappings: BTreeMap<Iova, Mapping>,
    /// Evidence taken from each mapping as it was unmapped.
    pub retired: Vec<PinEvidence>,
}

impl Iommu {
    pub fn new(kind: PinKind) -> Self {
        Self::with_options(kind, pin::PinOptions::default())
    }

    /// An IOMMU whose maps pin with `kind`, driven with `options`.
    pub fn with_options(kind: PinKind, options: pin::PinOptions) -> Self {
        Iommu {
            kind,
            vfio: None,
            options,
            max_mappings: abi::IOMMU_MAX_MAPPINGS as usize,
            mappings: BTreeMap::new(),
            retired: Vec::new(),
        }
    }

    pub fn kind(&self) -> PinKind {
        self.kind
    }

    /// Pins of later maps are views of `a`'s DMA maps (for `PinKind::Vfio`).
    pub fn attach_vfio(&mut self, a: std::sync::Arc<pin::vfio::Attachment>) {
        self.vfio = Some(a);
    }

    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.values()
    }

    /// Checks a MAP against the table without side effects: overlap, then the table's size.
    pub fn check_map(&self, req: &Map) -> Result<()> {
        let (iova, end) = (req.iova(), req.range().end());
        // The mapping starting at or before `iova`, and the one after it.
        let before = self.mappings.range(..=iova).next_back();
        let after = self.mappings.range(iova..).next();
        let overlapping = before
            .filter(|(_, m)| m.end() > iova)
            .or(after.filter(|(&s, _)| s < end));
        if let Some((&existing, _)) = overlapping {
            return Err(Error::Overlap {
                range: req.range(),
                existing,
            });
        }
        if self.mappings.len() >= self.max_mappings {
            return Err(Error::TooManyMappings {
                max: self.max_mappings,
            });
        }
        Ok(())
    }

    /// Checks, pins, records PFNs.
    pub fn map(&mut self, ram: &GuestRam, req: &Map) -> Result<()> {
        self.check_map(req)?;
        let (gpa, len) = (req.gpa(), req.len());
        let hva =
            ram.translate(gpa, len)
                .map_err(|source| Error::Translate { gpa, len, source })?;
        let pinned: pin::Result<Box<dyn Pin>> = match (&self.vfio, self.kind) {
            // A view of the attachment's DMA map that holds the range (its PFNs from MAP_DMA).
            (Some(a), PinKind::Vfio) => pin::vfio::VfioPin::new(a.clone(), hva, len)
                .map(|p| Box::new(p) as Box<dyn Pin>)
                .map_err(Into::into),
            // SAFETY: [hva, hva+len) is guest RAM, which stays mapped while the mapping lives
            // (`rebase` re-takes VMM-mapping pins when guest RAM moves; real pins hold pages,
            // not addresses), and the VMM keeps no Rust reference into guest RAM across a
            // transfer.
            _ => unsafe { pin::pin_with(self.kind, hva, len, self.options) },
        };
        let mut pin = pinned.map_err(|source| Error::Pin { hva, len, source })?;
        let (pinned_pfns, pfn_error) = match pin
            .take_pinned_pfns()
            .unwrap_or_else(|| crate::pfn_runs::read(hva, len))
        {
            Ok(pfns) => (pfns, None),
            Err(e) => (PfnRuns::new(), Some(e.to_string())),
        };
        self.mappings.insert(
            req.iova(),
            Mapping {
                iova: req.iova(),
                gpa,
                len,
                perm: req.perm(),
                pin,
                hva_at_map: hva,
                pinned_pfns,
                pfn_error,
            },
        );
        Ok(())
    }

    /// Unmaps exactly a range mapped before; dropping the mapping releases the pin.
    pub fn unmap(&mut self, ram: &GuestRam, req: &Unmap) -> Result<()> {
        let iova = req.range.start();
        match self.mappings.get(&iova) {
            Some(m) if m.len == req.range.len() => {
                self.retired.push(m.evidence(ram));
                self.mappings.remove(&iova);
                Ok(())
            }
            _ => Err(Error::NotMapped { range: req.range }),
        }
    }

    /// The mapping that wholly covers `range` with permission `need`, and the offset of the
    /// range's start inside it.
    pub fn lookup(&mut self, range: &IovaRange, need: Perm) -> Result<(&mut Mapping, u64)> {
        let iova = range.start();
        let (_, m) = self
            .mappings
            .range_mut(..=iova)
            .next_back()
            .ok_or(Error::NotCovered { range: *range })?;
        if range.end() > m.end() {
            return Err(Error::NotCovered { range: *range });
        }
        if !m.perm.allows(need) {
            return Err(Error::Permission {
                mapping: m.iova,
                have: m.perm,
                need,
            });
        }
        let off = iova.raw() - m.iova.raw();
        Ok((m, off))
    }

    /// Evidence for every mapping, live and unmapped, in IOVA order of mapping.
    pub fn evidence(&self, ram: &GuestRam) -> Vec<PinEvidence> {
        let mut all = self.retired.clone();
        all.extend(self.mappings.values().map(|m| m.evidence(ram)));
        all
    }

    /// Unmaps everything (the guest is gone): every pin is released.
    pub fn clear(&mut self) {
        self.mappings.clear();
    }

    /// After guest RAM moved: a pin that is only the VMM's mapping (the control group) follows
    /// it; real pins hold pages, not addresses, and stay as they are.
    pub fn rebase(&mut self, ram: &GuestRam) -> Result<()> {
        for m in self.mappings.values_mut() {
            if m.pin.kind() != PinKind::Mapping {
                continue;
            }
            let (gpa, len) = (m.gpa, m.len);
            let hva =
                ram.translate(gpa, len)
                    .map_err(|source| Error::Translate { gpa, len, source })?;
            // SAFETY: as in `map`: the new range is guest RAM's current mapping.
            m.pin = unsafe { pin::pin(PinKind::Mapping, hva, len) }
                .map_err(|source| Error::Pin { hva, len, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 << 20;

    fn req(iova: u64, gpa: u64, len: u64, perm: Perm) -> Map {
        Map::new(Iova(iova), Gpa(gpa), len, perm.bits(), RAM).unwrap()
    }

    fn range(iova: u64, len: u64) -> IovaRange {
        IovaRange::new(Iova(iova), len).unwrap()
    }

    fn setup_iommu_with_one_map() -> (GuestRam, Iommu) {
        let ram = GuestRam::new(RAM, false, false).unwrap();
        let mut iommu = Iommu::new(PinKind::Mapping);
        iommu
            .map(&ram, &req(0x10_0000, 0x20_0000, 0x10_000, Perm::RW))
            .unwrap();
        (ram, iommu)
    }

    /// Each row: what a well-formed request tries against a table holding one mapping at
    /// [0x10_0000, 0x11_0000), and the status a correct IOMMU answers (`None`: accepted). The
    /// malformed requests are `request.rs`'s table. A bug would show as an overlap accepted (two
    /// mappings for one IOVA) or a neighbour refused.
    #[test]
    fn map_checks_overlap() {
        let (_ram, iommu) = setup_iommu_with_one_map();
        let p = PAGE_SIZE;
        let rows: &[(&str, (u64, u64), Option<u32>)] = &[
            ("a fresh page", (0x1000, p), None),
            ("same iova", (0x10_0000, p), Some(abi::STATUS_OVERLAP)),
            (
                "inside the mapping",
                (0x10_8000, p),
                Some(abi::STATUS_OVERLAP),
            ),
            ("its last page", (0x10_f000, p), Some(abi::STATUS_OVERLAP)),
            ("runs into it", (0xf_f000, 2 * p), Some(abi::STATUS_OVERLAP)),
            ("covers it", (0xf_0000, 0x30_000), Some(abi::STATUS_OVERLAP)),
            ("right after it", (0x11_0000, p), None),
            ("right before it", (0xf_f000, p), None),
            ("the last IOVA page", (abi::IOVA_LIMIT - p, p), None),
        ];
        for &(what, (iova, len), want) in rows {
            let got = iommu.check_map(&req(iova, 0x30_0000, len, Perm::RW));
            assert_eq!(got.err().map(|e| e.status()), want, "{what}");
        }
    }

    #[test]
    fn table_is_bounded() {
        let ram = GuestRam::new(RAM, false, false).unwrap();
        let mut iommu = Iommu::new(PinKind::Mapping);
        for i in 0..abi::IOMMU_MAX_MAPPINGS as u64 {
            iommu
                .map(&ram, &req(i * PAGE_SIZE, 0x20_0000, PAGE_SIZE, Perm::RW))
                .unwrap();
        }
        let r = iommu.map(&ram, &req(1 << 30, 0x20_0000, PAGE_SIZE, Perm::RW));
        assert!(
            matches!(r, Err(Error::TooManyMappings { max }) if max == abi::IOMMU_MAX_MAPPINGS as usize),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn lookup_and_unmap() {
        let (ram, mut iommu) = setup_iommu_with_one_map();
        type Row = (&'static str, u64, u64, Perm, std::result::Result<u64, u32>);
        let rows: &[Row] = &[
            ("start", 0x10_0000, 0x1000, Perm::READ, Ok(0)),
            ("inside", 0x10_4000, 0x1000, Perm::WRITE, Ok(0x4000)),
            ("whole", 0x10_0000, 0x10_000, Perm::RW, Ok(0)),
            (
                "runs past the end",
                0x10_f000,
                0x2000,
                Perm::RW,
                Err(abi::STATUS_NOT_MAPPED),
            ),
            (
                "before it",
                0xf_f000,
                0x1000,
                Perm::RW,
                Err(abi::STATUS_NOT_MAPPED),
            ),
            (
                "after it",
                0x11_0000,
                0x1000,
                Perm::RW,
                Err(abi::STATUS_NOT_MAPPED),
            ),
            (
                "the top of the IOVA space",
                u64::MAX - 0x1fff,
                0x1000,
                Perm::RW,
                Err(abi::STATUS_NOT_MAPPED),
            ),
        ];
        for &(what, iova, len, need, want) in rows {
            let got = iommu
                .lookup(&range(iova, len), need)
                .map(|(_, off)| off)
                .map_err(|e| e.status());
            assert_eq!(got, want, "{what}");
        }
        let unmap = |iova, len| Unmap {
            range: range(iova, len),
        };
        assert!(
            matches!(
                iommu.unmap(&ram, &unmap(0x10_0000, 0x1000)),
                Err(Error::NotMapped { .. })
            ),
            "partial"
        );
        iommu.unmap(&ram, &unmap(0x10_0000, 0x10_000)).unwrap();
        assert!(
            matches!(
                iommu.unmap(&ram, &unmap(0x10_0000, 0x10_000)),
                Err(Error::NotMapped { .. })
            ),
            "twice"
        );
        assert_eq!(iommu.retired.len(), 1, "unmap keeps the evidence");
    }

    #[test]
    fn read_only_mapping_refuses_device_writes() {
        let ram = GuestRam::new(RAM, false, false).unwrap();
        let mut iommu = Iommu::new(PinKind::Mapping);
        iommu
            .map(&ram, &req(0, 0x20_0000, PAGE_SIZE, Perm::READ))
            .unwrap();
        let r = iommu.lookup(&range(0, PAGE_SIZE), Perm::WRITE);
        assert!(
            matches!(
                r,
                Err(Error::Permission {
                    have: Perm::READ,
                    need: Perm::WRITE,
                    ..
                })
            ),
            "{:?}",
            r.err()
        );
    }

    /// After guest RAM moves, a mapping-kind pin follows it: its address is the new one. A bug
    /// leaves the control group reading the old (unmapped) address.
    #[test]
    fn rebase_follows_moved_ram() {
        let (mut ram, mut iommu) = setup_iommu_with_one_map();
        let before = ram.translate(Gpa(0x20_0000), 0x10_000).unwrap();
        ram.remap(false).unwrap();
        iommu.rebase(&ram).unwrap();
        let after = ram.translate(Gpa(0x20_0000), 0x10_000).unwrap();
        assert_ne!(before, after, "mremap moved guest RAM");
        ram.write_slice(Gpa(0x20_0000), &[0xab; 8]).unwrap();
        let (m, off) = iommu.lookup(&range(0x10_0000, 0x1000), Perm::READ).unwrap();
        assert_eq!(
            m.hva_at_map, before,
            "the map-time address is kept as evidence"
        );
        let mut staging = pin::Staging::new(PAGE_SIZE).unwrap();
        let op = pin::Transfer {
            pin_offset: off,
            staging_offset: 0,
            len: PAGE_SIZE,
        };
        m.pin.read_from_guest(&mut staging, &[op]).unwrap();
        assert_eq!(
            &staging.as_slice()[..8],
            &[0xab; 8],
            "the pin reads moved RAM"
        );
        iommu.clear();
    }
}
