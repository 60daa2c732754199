//! Guest RAM: one anonymous private mapping, 2 MiB aligned, THP-advised or not, owned here.
//!
//! `GuestRam` owns the mapping (unmapped on Drop) and exposes it to the rest of the VMM through
//! vm-memory (`GuestMemoryMmap`, built over the raw mapping, which vm-memory does not own) and
//! through checked GPA -> HVA translation. Every guest-supplied range goes through
//! `translate`, which refuses anything not wholly inside RAM. Moving the mapping (`mremap`) is
//! done here too, so the owner always knows where its memory is; re-pointing the KVM memslot is
//! the VM's business.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::addr::{Gpa, Hva, HUGE_PAGE_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mmap of {size} bytes of guest RAM failed: {source}")]
    Mmap { size: u64, source: std::io::Error },
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
pub struct GuestRam {
    hva: Hva,
    size: u64,
    thp: bool,
    mem: GuestMemoryMmap,
}

const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

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

fn vm_memory_over(hva: Hva, size: u64) -> Result<GuestMemoryMmap> {
    // SAFETY: [hva, hva+size) is a live mapping with PROT and FLAGS that `GuestRam` owns and
    // keeps mapped for as long as this GuestMemoryMmap is reachable through it (it is rebuilt
    // whenever the mapping moves, and dropped before the mapping is unmapped).
    let region = unsafe { MmapRegion::build_raw(hva.as_ptr(), size as usize, PROT, FLAGS) }
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
        let span = size + HUGE_PAGE_SIZE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), span as usize, PROT, FLAGS, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::Mmap {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        let raw = p as u64;
        let start = raw.next_multiple_of(HUGE_PAGE_SIZE);
        let head = start - raw;
        let tail = span - head - size;
        // SAFETY: trimming the unaligned head and the tail of the mapping just made; nothing
        // refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw as *mut libc::c_void, head as usize);
            }
            if tail > 0 {
                libc::munmap((start + size) as *mut libc::c_void, tail as usize);
            }
        }
        let hva = Hva(start);
        let mem = match vm_memory_over(hva, size) {
            Ok(mem) => mem,
            Err(e) => {
                // SAFETY: the mapping is ours and nothing refers to it yet.
                unsafe { libc::munmap(hva.as_ptr() as *mut libc::c_void, size as usize) };
                return Err(e);
            }
        };
        let ram = GuestRam {
            hva,
            size,
            thp,
            mem,
        };
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
            self.hva,
            self.size,
            libc::MADV_POPULATE_WRITE,
            "MADV_POPULATE_WRITE",
        )
    }

    pub fn hva(&self) -> Hva {
        self.hva
    }

    pub fn size(&self) -> u64 {
        self.size
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
            Some(end) if end <= self.size => Ok(Hva(self.hva.raw() + gpa.raw())),
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
        // SAFETY: the u32 lies inside guest RAM (checked above), is 4-byte aligned, and guest
        // RAM stays mapped for as long as `self` is borrowed; AtomicU32 has u32's layout.
        Ok(unsafe { &*(hva.as_ptr() as *const std::sync::atomic::AtomicU32) })
    }

    /// Moves the mapping with mremap(2). With `dontunmap`, the old range stays mapped (empty:
    /// MREMAP_DONTUNMAP leaves it with no pages) and is unmapped here, since this owner only
    /// holds one range. Returns the old address.
    pub fn remap(&mut self, dontunmap: bool) -> Result<Hva> {
        // Reserve a 2 MiB aligned destination so THPs can stay PMD-mapped after the move.
        let dest = GuestRam::new(self.size, self.thp, false)?;
        let new = dest.hva;
        std::mem::forget(dest); // its mapping is replaced by the move below
        let mut flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        if dontunmap {
            flags |= libc::MREMAP_DONTUNMAP;
        }
        // SAFETY: moves our own mapping onto the reserved range `new` (MREMAP_FIXED replaces it).
        let p = unsafe {
            libc::mremap(
                self.hva.as_ptr() as *mut libc::c_void,
                self.size as usize,
                self.size as usize,
                flags,
                new.as_ptr() as *mut libc::c_void,
            )
        };
        if p == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: the reservation is ours and unused.
            unsafe { libc::munmap(new.as_ptr() as *mut libc::c_void, self.size as usize) };
            return Err(Error::Mremap(err));
        }
        let old = self.hva;
        self.hva = Hva(p as u64);
        self.mem = vm_memory_over(self.hva, self.size)?;
        if dontunmap {
            // SAFETY: the old range is ours; after MREMAP_DONTUNMAP it holds no pages we need.
            unsafe { libc::munmap(old.as_ptr() as *mut libc::c_void, self.size as usize) };
        }
        Ok(old)
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; the vm-memory view over it is dropped with `self`, and
        // KVM's memslot is removed by the VM before the RAM is dropped (the VM owns both and
        // drops the VM fd first).
        unsafe { libc::munmap(self.hva.as_ptr() as *mut libc::c_void, self.size as usize) };
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

    #[test]
    fn remap_keeps_contents() {
        let mut ram = GuestRam::new(8 << 20, false, false).unwrap();
        ram.write_obj(Gpa(0x3000), 0xfeed_u64).unwrap();
        let old = ram.remap(false).unwrap();
        assert_ne!(old, ram.hva());
        assert_eq!(ram.read_obj::<u64>(Gpa(0x3000)).unwrap(), 0xfeed);
    }
}
