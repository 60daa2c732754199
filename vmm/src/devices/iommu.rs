//! The emulated IOMMU: IOVA -> GPA mappings that pin at map time, as VFIO type1's MAP_DMA does.
//!
//! Every request is validated before anything is pinned (length and overflow, alignment, range
//! inside guest RAM and IOVA space, overlap, table size). A mapping holds its pin (released when
//! the mapping is dropped: unmap unpins) and the PFNs its pages had at map time, from
//! /proc/self/pagemap: the evidence of which pages the device holds.

use std::collections::BTreeMap;

use pinlab_abi as abi;

use crate::addr::{Gpa, Hva, Iova, Pfn, PAGE_SIZE};
use crate::memory::GuestRam;
use crate::pin::{self, Pin};
use crate::scenario::PinKind;

/// One IOVA range mapped to guest RAM and pinned.
pub struct Mapping {
    pub iova: Iova,
    pub gpa: Gpa,
    pub len: u64,
    pub perm: u32,
    pub pin: Box<dyn Pin>,
    /// Host address the pin was taken at (guest RAM may move later, the pin does not).
    pub hva_at_map: Hva,
    /// PFN of each 4 KiB page at map time (`None`: not present, or pagemap unreadable).
    pub pinned_pfns: Vec<Option<Pfn>>,
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
    /// The first few changed pages, for the report.
    pub changed: Vec<PfnChange>,
    /// Why the comparison could not be made (e.g. pagemap unreadable), if it could not.
    pub unreadable: Option<String>,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.iova.raw() + self.len
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
            unreadable: self.pfn_error.clone(),
        };
        if ev.unreadable.is_some() {
            return ev;
        }
        let now = ram
            .translate(self.gpa, self.len)
            .map_err(|e| e.to_string())
            .and_then(|hva| crate::pfn::pfns(hva, self.len).map_err(|e| e.to_string()));
        match now {
            Err(e) => ev.unreadable = Some(e),
            Ok(mapped) => {
                let diff = crate::pfn::diff_pfns(&self.pinned_pfns, &mapped);
                ev.pinned_pfns_changed_pages = diff.len();
                ev.changed = diff
                    .iter()
                    .take(8)
                    .map(|&i| PfnChange {
                        page: i,
                        gpa: Gpa(self.gpa.raw() + i as u64 * PAGE_SIZE),
                        pinned: self.pinned_pfns.get(i).copied().flatten(),
                        mapped: mapped.get(i).copied().flatten(),
                    })
                    .collect();
            }
        }
        ev
    }
}

/// The IOMMU's translation table.
pub struct Iommu {
    kind: PinKind,
    options: pin::PinOptions,
    max_mappings: usize,
    mappings: BTreeMap<u64, Mapping>,
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
            options,
            max_mappings: abi::IOMMU_MAX_MAPPINGS as usize,
            mappings: BTreeMap::new(),
            retired: Vec::new(),
        }
    }

    pub fn kind(&self) -> PinKind {
        self.kind
    }

    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.values()
    }

    /// Checks a MAP request without side effects; the ABI status on failure.
    pub fn check_map(
        &self,
        iova: u64,
        gpa: u64,
        len: u64,
        perm: u32,
        ram_size: u64,
    ) -> Result<(), u32> {
        if len == 0 {
            return Err(abi::STATUS_BAD_LENGTH);
        }
        let gpa_end = gpa.checked_add(len).ok_or(abi::STATUS_BAD_LENGTH)?;
        let iova_end = iova.checked_add(len).ok_or(abi::STATUS_BAD_LENGTH)?;
        if !iova.is_multiple_of(PAGE_SIZE)
            || !gpa.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
        {
            return Err(abi::STATUS_MISALIGNED);
        }
        if gpa_end > ram_size || iova_end > abi::IOVA_LIMIT {
            return Err(abi::STATUS_OUT_OF_RANGE);
        }
        if perm == 0 || perm & !(abi::PERM_READ | abi::PERM_WRITE) != 0 {
            return Err(abi::STATUS_PERMISSION);
        }
        // The mapping starting at or before `iova`, and the one after it.
        let before = self.mappings.range(..=iova).next_back();
        let after = self.mappings.range(iova..).next();
        if before.is_some_and(|(_, m)| m.end() > iova) || after.is_some_and(|(&s, _)| s < iova_end)
        {
            return Err(abi::STATUS_OVERLAP);
        }
        if self.mappings.len() >= self.max_mappings {
            return Err(abi::STATUS_TOO_MANY_MAPPINGS);
        }
        Ok(())
    }

    /// Validates, pins, records PFNs. The ABI status on failure.
    pub fn map(
        &mut self,
        ram: &GuestRam,
        iova: u64,
        gpa: u64,
        len: u64,
        perm: u32,
    ) -> Result<(), u32> {
        self.check_map(iova, gpa, len, perm, ram.size())?;
        let hva = ram
            .translate(Gpa(gpa), len)
            .map_err(|_| abi::STATUS_OUT_OF_RANGE)?;
        // SAFETY: [hva, hva+len) is guest RAM, which stays mapped while the mapping lives
        // (`rebase` re-takes VMM-mapping pins when guest RAM moves; real pins hold pages, not
        // addresses), and the VMM keeps no Rust reference into guest RAM across a transfer.
        let pin = unsafe { pin::pin_with(self.kind, hva, len, self.options) }.map_err(|e| {
            tracing::warn!("pinning {len:#x} bytes at {hva} failed: {e}");
            abi::STATUS_PIN_FAILED
        })?;
        let (pinned_pfns, pfn_error) = match crate::pfn::pfns(hva, len) {
            Ok(pfns) => (pfns, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        self.mappings.insert(
            iova,
            Mapping {
                iova: Iova(iova),
                gpa: Gpa(gpa),
                len,
                perm,
                pin,
                hva_at_map: hva,
                pinned_pfns,
                pfn_error,
            },
        );
        Ok(())
    }

    /// Unmaps exactly a range mapped before; dropping the mapping releases the pin.
    pub fn unmap(&mut self, ram: &GuestRam, iova: u64, len: u64) -> Result<(), u32> {
        match self.mappings.get(&iova) {
            Some(m) if m.len == len => {
                self.retired.push(m.evidence(ram));
                self.mappings.remove(&iova);
                Ok(())
            }
            _ => Err(abi::STATUS_NOT_MAPPED),
        }
    }

    /// The mapping that wholly covers `[iova, iova+len)` with permission `need`, and the offset
    /// of `iova` inside it.
    pub fn lookup(&mut self, iova: u64, len: u64, need: u32) -> Result<(&mut Mapping, u64), u32> {
        let end = iova.checked_add(len).ok_or(abi::STATUS_BAD_LENGTH)?;
        let (_, m) = self
            .mappings
            .range_mut(..=iova)
            .next_back()
            .ok_or(abi::STATUS_NOT_MAPPED)?;
        if end > m.end() {
            return Err(abi::STATUS_NOT_MAPPED);
        }
        if m.perm & need != need {
            return Err(abi::STATUS_PERMISSION);
        }
        let off = iova - m.iova.raw();
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
    pub fn rebase(&mut self, ram: &GuestRam) -> Result<(), String> {
        for m in self.mappings.values_mut() {
            if m.pin.kind() != PinKind::Mapping {
                continue;
            }
            let hva = ram.translate(m.gpa, m.len).map_err(|e| e.to_string())?;
            // SAFETY: as in `map`: the new range is guest RAM's current mapping.
            m.pin = unsafe { pin::pin(PinKind::Mapping, hva, m.len) }.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 << 20;
    const RW: u32 = abi::PERM_READ | abi::PERM_WRITE;

    fn setup_iommu_with_one_map() -> (GuestRam, Iommu) {
        let ram = GuestRam::new(RAM, false, false).unwrap();
        let mut iommu = Iommu::new(PinKind::Mapping);
        iommu.map(&ram, 0x10_0000, 0x20_0000, 0x10_000, RW).unwrap();
        (ram, iommu)
    }

    /// Each row: what the request tries, (iova, gpa, len, perm), the status a correct IOMMU
    /// answers. A bug would show as a different status or, worse, `None` (accepted).
    #[test]
    fn map_validation_boundaries() {
        let (_ram, iommu) = setup_iommu_with_one_map();
        let p = PAGE_SIZE;
        type Row = (&'static str, (u64, u64, u64, u32), Option<u32>);
        let rows: &[Row] = &[
            ("a fresh page", (0x1000, 0x30_0000, p, RW), None),
            (
                "zero length",
                (0x1000, 0x30_0000, 0, RW),
                Some(abi::STATUS_BAD_LENGTH),
            ),
            (
                "gpa + len overflows",
                (0x1000, 0x30_0000, u64::MAX - 0xfff, RW),
                Some(abi::STATUS_BAD_LENGTH),
            ),
            (
                "iova + len overflows",
                (u64::MAX - 0xfff, 0x30_0000, 0x2000, RW),
                Some(abi::STATUS_BAD_LENGTH),
            ),
            (
                "misaligned gpa",
                (0x1000, 0x30_0001, p, RW),
                Some(abi::STATUS_MISALIGNED),
            ),
            (
                "misaligned iova",
                (0x1001, 0x30_0000, p, RW),
                Some(abi::STATUS_MISALIGNED),
            ),
            (
                "misaligned len",
                (0x1000, 0x30_0000, p + 1, RW),
                Some(abi::STATUS_MISALIGNED),
            ),
            ("last page of RAM", (0x1000, RAM - p, p, RW), None),
            (
                "one page past RAM",
                (0x1000, RAM, p, RW),
                Some(abi::STATUS_OUT_OF_RANGE),
            ),
            (
                "straddles the end of RAM",
                (0x1000, RAM - p, 2 * p, RW),
                Some(abi::STATUS_OUT_OF_RANGE),
            ),
            (
                "last IOVA page",
                (abi::IOVA_LIMIT - p, 0x30_0000, p, RW),
                None,
            ),
            (
                "past the IOVA space",
                (abi::IOVA_LIMIT, 0x30_0000, p, RW),
                Some(abi::STATUS_OUT_OF_RANGE),
            ),
            (
                "no permission",
                (0x1000, 0x30_0000, p, 0),
                Some(abi::STATUS_PERMISSION),
            ),
            (
                "unknown permission bit",
                (0x1000, 0x30_0000, p, 4),
                Some(abi::STATUS_PERMISSION),
            ),
            (
                "same iova",
                (0x10_0000, 0x30_0000, p, RW),
                Some(abi::STATUS_OVERLAP),
            ),
            (
                "inside the mapping",
                (0x10_8000, 0x30_0000, p, RW),
                Some(abi::STATUS_OVERLAP),
            ),
            (
                "its last page",
                (0x10_f000, 0x30_0000, p, RW),
                Some(abi::STATUS_OVERLAP),
            ),
            (
                "runs into it",
                (0xf_f000, 0x30_0000, 2 * p, RW),
                Some(abi::STATUS_OVERLAP),
            ),
            ("right after it", (0x11_0000, 0x30_0000, p, RW), None),
            ("right before it", (0xf_f000, 0x30_0000, p, RW), None),
        ];
        for &(what, (iova, gpa, len, perm), want) in rows {
            assert_eq!(
                iommu.check_map(iova, gpa, len, perm, RAM).err(),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn table_is_bounded() {
        let ram = GuestRam::new(RAM, false, false).unwrap();
        let mut iommu = Iommu::new(PinKind::Mapping);
        for i in 0..abi::IOMMU_MAX_MAPPINGS as u64 {
            iommu
                .map(&ram, i * PAGE_SIZE, 0x20_0000, PAGE_SIZE, RW)
                .unwrap();
        }
        assert_eq!(
            iommu.map(&ram, 1 << 30, 0x20_0000, PAGE_SIZE, RW),
            Err(abi::STATUS_TOO_MANY_MAPPINGS)
        );
    }

    #[test]
    fn lookup_and_unmap() {
        let (ram, mut iommu) = setup_iommu_with_one_map();
        type Row = (&'static str, u64, u64, u32, Result<u64, u32>);
        let rows: &[Row] = &[
            ("start", 0x10_0000, 0x1000, abi::PERM_READ, Ok(0)),
            ("inside", 0x10_4000, 0x1000, abi::PERM_WRITE, Ok(0x4000)),
            ("whole", 0x10_0000, 0x10_000, RW, Ok(0)),
            (
                "runs past the end",
                0x10_f000,
                0x2000,
                RW,
                Err(abi::STATUS_NOT_MAPPED),
            ),
            (
                "before it",
                0xf_f000,
                0x1000,
                RW,
                Err(abi::STATUS_NOT_MAPPED),
            ),
            (
                "after it",
                0x11_0000,
                0x1000,
                RW,
                Err(abi::STATUS_NOT_MAPPED),
            ),
            (
                "overflows",
                0x10_0000,
                u64::MAX,
                RW,
                Err(abi::STATUS_BAD_LENGTH),
            ),
        ];
        for &(what, iova, len, need, want) in rows {
            let got = iommu.lookup(iova, len, need).map(|(_, off)| off);
            assert_eq!(got, want, "{what}");
        }
        assert_eq!(
            iommu.unmap(&ram, 0x10_0000, 0x1000),
            Err(abi::STATUS_NOT_MAPPED),
            "partial"
        );
        assert_eq!(iommu.unmap(&ram, 0x10_0000, 0x10_000), Ok(()));
        assert_eq!(
            iommu.unmap(&ram, 0x10_0000, 0x10_000),
            Err(abi::STATUS_NOT_MAPPED),
            "twice"
        );
        assert_eq!(iommu.retired.len(), 1, "unmap keeps the evidence");
    }

    #[test]
    fn read_only_mapping_refuses_device_writes() {
        let ram = GuestRam::new(RAM, false, false).unwrap();
        let mut iommu = Iommu::new(PinKind::Mapping);
        iommu
            .map(&ram, 0, 0x20_0000, PAGE_SIZE, abi::PERM_READ)
            .unwrap();
        assert_eq!(
            iommu.lookup(0, PAGE_SIZE, abi::PERM_WRITE).err(),
            Some(abi::STATUS_PERMISSION)
        );
    }
}
