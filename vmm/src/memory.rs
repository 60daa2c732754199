//! Guest RAM: one anonymous private mapping, 2 MiB aligned, THP-advised or not, owned here.
//!
//! `GuestRam` owns the mapping (a `mmap::Mapping`, unmapped on Drop) and exposes it to the rest
//! of the VMM through vm-memory (`GuestMemoryMmap`, built over the raw mapping, which vm-memory
//! does not own) and through checked GPA -> HVA translation. Every guest-supplied range goes
//! through `translate`, which refuses anything not wholly inside RAM. Moving the mapping
//! (`mremap`) is done here too, so the owner always knows where its memory is; re-pointing the
//! KVM memslot is the VM's business, and the VM keeps this RAM alive for as long as KVM may
//! reach it (`vm::Vm` holds it and drops it after its fds).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::addr::{Gpa, Hva, HUGE_PAGE_SIZE};
use crate::mmap::{self, Mapping};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mapping {size:#x} bytes of guest RAM failed: {source}")]
    Mmap { size: u64, source: mmap::Error },
    #[error("madvise({advice}) on guest RAM failed: {source}")]
    Madvise {
        advice: &'static str,
        source: std::io::Error,
    },
    #[error("mremap of guest RAM failed: {0}")]
    Mremap(std::io::Error),
    #[error("building the vm-memory region failed: {0}")]
    Region(String),
    #[error("guest range {gpa}+{len:#x} is not inside guest RAM")]
    OutOfRange { gpa: Gpa, len: u64 },
    #[error("guest memory access at {gpa} failed: {reason}")]
    Access { gpa: Gpa, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The guest's RAM, from GPA 0, and the host mapping behind it.
///
/// Field order is drop order: vm-memory's view (`mem`) points into `map` and goes first.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    map: Mapping,
    thp: bool,
}

/// The flags guest RAM is mapped with beyond `MAP_PRIVATE | MAP_ANONYMOUS` (vm-memory is told
/// the whole set).
const EXTRA_FLAGS: i32 = libc::MAP_NORESERVE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | EXTRA_FLAGS;

fn madvise(hva: Hva, len: u64, advice: i32, name: &'static str) -> Result<()> {
    // SAFETY: madvise only changes the kernel's handling of our own mapping; the range lies
    // inside the mapping the caller owns.
    let rc = unsafe { libc::madvise(hva.as_ptr() as *mut libc::c_void, len as usize, advice) };
    if rc != 0 {
        return Err(Error::Madvise {
            advice: name,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A 2 MiB aligned private anonymous mapping of `size` bytes (guest RAM or its mremap target).
fn map_ram(size: u64) -> Result<Mapping> {
    Mapping::anonymous_aligned(size, HUGE_PAGE_SIZE, EXTRA_FLAGS)
        .map_err(|source| Error::Mmap { size, source })
}

/// vm-memory's view of `map` at GPA 0.
///
/// The caller keeps `map` (or, for an mremap target, the range it describes once the move is
/// done) mapped for as long as the view is reachable: `GuestRam` drops or replaces the view
/// before it unmaps its mapping.
fn vm_memory_over(map: &Mapping) -> Result<GuestMemoryMmap> {
    // SAFETY: `map` is a live private anonymous read-write mapping of `map.len()` bytes made
    // with exactly `mmap::PROT` and `FLAGS`; vm-memory does not unmap a raw region, and the view
    // is dropped (field order of `GuestRam`) or replaced (`remap`) before the mapping goes.
    let region = unsafe { MmapRegion::build_raw(map.as_ptr(), map.len(), mmap::PROT, FLAGS) }
        .map_err(|e| Error::Region(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| Error::Region("region does not fit at GPA 0".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| Error::Region(e.to_string()))
}

impl GuestRam {
    /// Maps `size` bytes (a multiple of 2 MiB), 2 MiB aligned so every huge page of the guest is
    /// a possible THP, with `MADV_HUGEPAGE` when `thp` (else `MADV_NOHUGEPAGE`, so `--thp off`
    /// holds even where THP is `always`) and `MADV_DONTFORK` when `dontfork`.
    pub fn new(size: u64, thp: bool, dontfork: bool) -> Result<Self> {
        let map = map_ram(size)?;
        let mem = vm_memory_over(&map)?;
        let ram = GuestRam { mem, map, thp };
        let hva = ram.hva();
        if thp {
            madvise(hva, size, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
        } else {
            madvise(hva, size, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")?;
        }
        if dontfork {
            madvise(hva, size, libc::MADV_DONTFORK, "MADV_DONTFORK")?;
        }
        Ok(ram)
    }

    /// Faults every page in for writing (MADV_POPULATE_WRITE, Linux 5.14+).
    ///
    /// One call: splitting 64 MiB of THP across two threads was tried and gained nothing here
    /// (`pinlab bench --only launch`, medians of 7: one thread 5.35 / 5.62 ms, two 5.39 / 5.82
    /// ms; the cost is the kernel zeroing pages, bound by memory). The runner overlaps this with
    /// VM creation instead.
    pub fn populate(&self) -> Result<()> {
        madvise(
            self.hva(),
            self.size(),
            libc::MADV_POPULATE_WRITE,
            "MADV_POPULATE_WRITE",
        )
    }

    pub fn hva(&self) -> Hva {
        self.map.hva()
    }

    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn thp(&self) -> bool {
        self.thp
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The host address of `[gpa, gpa+len)`, or `OutOfRange` unless it lies wholly inside RAM
    /// (overflow included). The one gate for guest-supplied ranges.
    pub fn translate(&self, gpa: Gpa, len: u64) -> Result<Hva> {
        match gpa.raw().checked_add(len) {
            Some(end) if end <= self.size() => Ok(Hva(self.hva().raw() + gpa.raw())),
            _ => Err(Error::OutOfRange { gpa, len }),
        }
    }

    /// Reads a plain-data record from guest RAM (bounds-checked by vm-memory).
    pub fn read_obj<T: vm_memory::ByteValued>(&self, gpa: Gpa) -> Result<T> {
        self.mem
            .read_obj(GuestAddress(gpa.raw()))
            .map_err(|e| Error::Access {
                gpa,
                reason: e.to_string(),
            })
    }

    /// Writes a plain-data record to guest RAM (bounds-checked by vm-memory).
    pub fn write_obj<T: vm_memory::ByteValued>(&self, gpa: Gpa, value: T) -> Result<()> {
        self.mem
            .write_obj(value, GuestAddress(gpa.raw()))
            .map_err(|e| Error::Access {
                gpa,
                reason: e.to_string(),
            })
    }

    /// Writes bytes to guest RAM (bounds-checked).
    pub fn write_slice(&self, gpa: Gpa, bytes: &[u8]) -> Result<()> {
        self.mem
            .write_slice(bytes, GuestAddress(gpa.raw()))
            .map_err(|e| Error::Access {
                gpa,
                reason: e.to_string(),
            })
    }

    /// A u32 in guest RAM that the guest polls or publishes, as an atomic (bounds- and
    /// alignment-checked).
    pub fn atomic_u32(&self, gpa: Gpa) -> Result<&std::sync::atomic::AtomicU32> {
        if !gpa.is_aligned(4) {
            return Err(Error::Access {
                gpa,
                reason: "u32 not 4-byte aligned".into(),
            });
        }
        let hva = self.translate(gpa, 4)?;
        // SAFETY: the u32 lies inside guest RAM (checked above) and is 4-byte aligned; the
        // mapping stays where it is for as long as `self` is borrowed (only `remap`, which takes
        // `&mut self`, moves it); AtomicU32 has u32's layout, and every other access to guest
        // RAM (the guest's, the device's) is atomic or volatile.
        Ok(unsafe { &*(hva.as_ptr() as *const std::sync::atomic::AtomicU32) })
    }

    /// Moves the mapping with mremap(2). With `dontunmap`, the old range stays mapped (empty:
    /// MREMAP_DONTUNMAP leaves it with no pages) and is unmapped here, since this owner only
    /// holds one range. Returns the old address.
    pub fn remap(&mut self, dontunmap: bool) -> Result<Hva> {
        let size = self.size();
        // Reserve a 2 MiB aligned destination so THPs can stay PMD-mapped after the move, and
        // build the view of it first: after the move nothing may fail.
        let dest = map_ram(size)?;
        let mem = vm_memory_over(&dest)?;
        let mut flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        if dontunmap {
            flags |= libc::MREMAP_DONTUNMAP;
        }
        // SAFETY: moves our own mapping onto the reservation `dest` (MREMAP_FIXED replaces it);
        // `&mut self` means no reference into guest RAM is alive, and the vm-memory view of the
        // old range is replaced below before anything can use it.
        let p = unsafe {
            libc::mremap(
                self.map.as_ptr().cast::<libc::c_void>(),
                size as usize,
                size as usize,
                flags,
                dest.as_ptr().cast::<libc::c_void>(),
            )
        };
        if p == libc::MAP_FAILED {
            // `dest` drops: the reservation is unmapped, guest RAM stays where it was.
            return Err(Error::Mremap(std::io::Error::last_os_error()));
        }
        debug_assert_eq!(p as u64, dest.hva().raw());
        self.mem = mem;
        let old = std::mem::replace(&mut self.map, dest);
        let old_hva = old.hva();
        if dontunmap {
            // The old range is still mapped, with no pages we need: unmapped as `old` drops.
            drop(old);
        } else {
            // The kernel unmapped the old range with the move; unmapping it again could hit a
            // mapping another thread has made there since.
            old.into_raw();
        }
        Ok(old_hva)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translate_checks_bounds_and_overflow() {
        let ram = GuestRam::new(8 << 20, false, false).unwrap();
        let rows: &[(u64, u64, bool)] = &[
            (0, 8 << 20, true),
            (0, (8 << 20) + 1, false),
            ((8 << 20) - 4096, 4096, true),
            (8 << 20, 0, true), // empty range at the end
            (8 << 20, 1, false),
            (u64::MAX - 10, 20, false),
            (4096, u64::MAX, false),
        ];
        for &(gpa, len, ok) in rows {
            assert_eq!(
                ram.translate(Gpa(gpa), len).is_ok(),
                ok,
                "{gpa:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn mapping_is_huge_page_aligned() {
        let ram = GuestRam::new(8 << 20, true, false).unwrap();
        assert!(ram.hva().is_aligned(HUGE_PAGE_SIZE));
    }

    /// Both kinds of move: the contents follow, the view (read_obj) reads the new range, and
    /// the destination is 2 MiB aligned. A bug: a stale vm-memory view (reads of the old,
    /// empty or unmapped range) or an unaligned destination (THPs split by the move).
    #[test]
    fn remap_keeps_contents() {
        for dontunmap in [false, true] {
            let mut ram = GuestRam::new(8 << 20, false, false).unwrap();
            ram.write_obj(Gpa(0x3000), 0xfeed_u64).unwrap();
            let old = ram.remap(dontunmap).unwrap();
            assert_ne!(old, ram.hva(), "dontunmap {dontunmap}");
            assert!(
                ram.hva().is_aligned(HUGE_PAGE_SIZE),
                "dontunmap {dontunmap}"
            );
            assert_eq!(ram.read_obj::<u64>(Gpa(0x3000)).unwrap(), 0xfeed);
            let hva = ram.translate(Gpa(0x3000), 8).unwrap();
            // SAFETY: inside guest RAM, aligned, and no other reference to it exists.
            let direct = unsafe { (hva.as_ptr() as *const u64).read_volatile() };
            assert_eq!(direct, 0xfeed, "through the new mapping");
        }
    }
}
