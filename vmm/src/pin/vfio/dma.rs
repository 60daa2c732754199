//! The owner of a plan's DMA mappings: maps every range, and unmaps every range it mapped on
//! every exit path (a failed attach half-way, a normal end, an error, a panic unwinding).
//!
//! The map and unmap calls go through [`DmaMap`], shaped like crosvm's and vfio-ioctls'
//! `(iova, size, user_addr)` calls, so the owner's bookkeeping is tested with a recording mock;
//! the real implementations (type1 container, iommufd IOAS) live in `attach`. It must not decide
//! what to map (that is `plan`) nor read PFNs.

use vfio_ioctls::VfioError;

use super::plan::DmaRange;

/// A map or unmap call that failed, with the range it was for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// VFIO_IOMMU_MAP_DMA (or IOMMU_IOAS_MAP) failed.
    #[error("DMA map of {:#x} bytes at {} (host {}) failed: {source}", range.len, range.iova, range.hva)]
    Map {
        range: DmaRange,
        #[source]
        source: VfioError,
    },
}

/// The two IOMMU calls the owner makes.
pub trait DmaMap {
    /// Maps `r.len` bytes of this process's memory at `r.hva` at IOVA `r.iova`, readable and
    /// writable by the device; the kernel pins the pages (FOLL_PIN | FOLL_LONGTERM).
    ///
    /// # Safety
    ///
    /// `r.hva..+r.len` must be memory of this process that stays mapped until the range is
    /// unmapped, and no Rust reference to it may live meanwhile (the device may write it at any
    /// time): it is accessed only through raw pointers, volatile accesses and system calls.
    unsafe fn map(&self, r: &DmaRange) -> Result<(), VfioError>;
    /// Unmaps exactly a range `map` mapped.
    fn unmap(&self, r: &DmaRange) -> Result<(), VfioError>;
}

/// Every range of a plan, mapped; `Drop` unmaps them all, last mapped first.
pub struct DmaMappings<M: DmaMap> {
    mapped: Vec<DmaRange>,
    ops: M,
}

impl<M: DmaMap> DmaMappings<M> {
    /// Maps every range of `plan` in order. If one fails, those mapped before it are unmapped
    /// (by the partial owner's drop) and the error names the failed range.
    ///
    /// # Safety
    ///
    /// Every range must satisfy [`DmaMap::map`]'s contract for as long as the returned owner
    /// lives.
    pub unsafe fn map_all(ops: M, plan: Vec<DmaRange>) -> Result<Self, Error> {
        let mut owner = DmaMappings {
            mapped: Vec::with_capacity(plan.len()),
            ops,
        };
        for range in plan {
            // SAFETY: forwarded from this function's contract.
            unsafe { owner.ops.map(&range) }.map_err(|source| Error::Map { range, source })?;
            owner.mapped.push(range);
        }
        Ok(owner)
    }

    /// The ranges mapped, in map order.
    pub fn ranges(&self) -> &[DmaRange] {
        &self.mapped
    }

    /// Bytes mapped in all.
    pub fn bytes(&self) -> u64 {
        self.mapped.iter().map(|r| r.len).sum()
    }
}

impl<M: DmaMap> Drop for DmaMappings<M> {
    fn drop(&mut self) {
        for r in self.mapped.drain(..).rev() {
            // An unmap that fails leaves the pin until the container or IOAS is closed (the
            // kernel then unmaps everything); say so and go on with the others.
            if let Err(e) = self.ops.unmap(&r) {
                tracing::error!(
                    "DMA unmap of {:#x} bytes at {} failed: {e}; the pin stays until the VFIO fd closes",
                    r.len,
                    r.iova
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use vmm_sys_util::errno::Error as Errno;

    use super::*;
    use crate::addr::{Gpa, Hva, Iova};

    /// Records every call; fails the map of the range at `fail_map_at` and the unmap at
    /// `fail_unmap_at` (by IOVA).
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<(&'static str, u64, u64)>>,
        fail_map_at: Option<u64>,
        fail_unmap_at: Option<u64>,
    }

    impl DmaMap for &Recorder {
        unsafe fn map(&self, r: &DmaRange) -> Result<(), VfioError> {
            self.calls.borrow_mut().push(("map", r.iova.raw(), r.len));
            if self.fail_map_at == Some(r.iova.raw()) {
                return Err(VfioError::IommuDmaMap(Errno::new(libc::ENOMEM)));
            }
            Ok(())
        }
        fn unmap(&self, r: &DmaRange) -> Result<(), VfioError> {
            self.calls.borrow_mut().push(("unmap", r.iova.raw(), r.len));
            if self.fail_unmap_at == Some(r.iova.raw()) {
                return Err(VfioError::IommuDmaUnmap(Errno::new(libc::EINVAL)));
            }
            Ok(())
        }
    }

    fn ranges(n: u64) -> Vec<DmaRange> {
        (0..n)
            .map(|i| DmaRange {
                iova: Iova(i << 21),
                gpa: Gpa(i << 21),
                len: 1 << 21,
                hva: Hva(0x7f00_0000_0000 + (i << 21)),
            })
            .collect()
    }

    fn unmaps(rec: &Recorder) -> Vec<u64> {
        rec.calls
            .borrow()
            .iter()
            .filter(|c| c.0 == "unmap")
            .map(|c| c.1)
            .collect()
    }

    /// Each row: (description, failing map, failing unmap, maps expected, unmaps expected).
    /// A bug: a range left mapped (a pin that outlives the run), a range unmapped twice, an
    /// unmap of a range never mapped, or an unmap failure that stops the others.
    #[test]
    fn every_mapped_range_is_unmapped_once() {
        type Row = (&'static str, Option<u64>, Option<u64>, u64, Vec<u64>);
        let m = 1 << 21;
        let rows: Vec<Row> = vec![
            (
                "all map, owner dropped",
                None,
                None,
                4,
                vec![3 * m, 2 * m, m, 0],
            ),
            ("third map fails", Some(2 * m), None, 3, vec![m, 0]),
            ("first map fails", Some(0), None, 1, vec![]),
            (
                "an unmap fails, the rest still run",
                None,
                Some(2 * m),
                4,
                vec![3 * m, 2 * m, m, 0],
            ),
        ];
        for (what, fail_map_at, fail_unmap_at, maps, want_unmaps) in rows {
            let rec = Recorder {
                fail_map_at,
                fail_unmap_at,
                ..Recorder::default()
            };
            // SAFETY: the recorder maps nothing; the addresses are never touched.
            let res = unsafe { DmaMappings::map_all(&rec, ranges(4)) };
            match (&res, fail_map_at) {
                (Ok(o), None) => {
                    assert_eq!(o.ranges(), ranges(4).as_slice(), "{what}");
                    assert_eq!(o.bytes(), 4 * m, "{what}");
                    assert!(unmaps(&rec).is_empty(), "{what}: unmapped while alive");
                }
                (Err(Error::Map { range, .. }), Some(at)) => {
                    assert_eq!(range.iova.raw(), at, "{what}")
                }
                _ => panic!("{what}: {:?}", res.as_ref().err()),
            }
            drop(res);
            let n_maps = rec.calls.borrow().iter().filter(|c| c.0 == "map").count();
            assert_eq!(n_maps as u64, maps, "{what}");
            assert_eq!(unmaps(&rec), want_unmaps, "{what}");
            // Every unmap is of exactly a range that was mapped, with its length.
            for c in rec.calls.borrow().iter().filter(|c| c.0 == "unmap") {
                assert_eq!(c.2, m, "{what}: unmap length");
            }
        }
    }
}
