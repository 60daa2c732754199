//! Guest RAM: one anonymous private mapping, 2 MiB aligned, THP-advised or not, owned here, with
//! an inaccessible guard mapping right below and right above it.
//!
//! `GuestRam` owns the mapping (a `mmap::Mapping`, unmapped on Drop) and exposes it to the rest
//! of the VMM through vm-memory (`GuestMemoryMmap`, built over the raw mapping, which vm-memory
//! does not own) and through checked GPA -> HVA translation. Every guest-supplied range goes
//! through `translate`, which refuses anything not wholly inside RAM. Moving the mapping
//! (`mremap`) is done here too, so the owner always knows where its memory is; re-pointing the
//! KVM memslot is the VM's business, and the VM keeps this RAM alive for as long as KVM may
//! reach it (`vm::Vm` holds it and drops it after its fds).
//!
//! The guards (`GUARD_SIZE` of `PROT_NONE` on each side, reserved for as long as the RAM is
//! where it is, and made afresh around an mremap's destination) turn any VMM access that
//! misses a bounds check into a SIGSEGV at once, instead of a silent read or write of whatever
//! this process mapped next to guest RAM: the fuzzing guest relies on that to show that no
//! hostile request reached outside guest RAM. They cost address space only (no memory, no
//! commit charge: they are neither readable nor writable).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::addr::{Gpa, Hva, HUGE_PAGE_SIZE};
use crate::mmap::{self, Mapping};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest RAM of {size:#x} bytes with its guards does not fit the address space")]
    Size { size: u64 },
    #[error("reserving {span:#x} bytes for guest RAM and its guards failed: {source}")]
    Reserve { span: u64, source: std::io::Error },
    #[error("mapping {size:#x} bytes of guest RAM failed: {source}")]
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
///
/// Field order is drop order: vm-memory's view (`mem`) points into `map` and goes first; the
/// guards go after the RAM they surround.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    map: Mapping,
    guards: Guards,
    thp: bool,
}

/// Bytes of `PROT_NONE` mapped right below and right above guest RAM. An access at RAM's start
/// minus up to this much, or at its end plus up to this much, faults: above, that covers every
/// GPA a guest can name in a 32-bit port record and every GPA below `abi::IDENTITY_MAP_SIZE`.
pub const GUARD_SIZE: u64 = pinlab_abi::IDENTITY_MAP_SIZE;

/// An inaccessible (`PROT_NONE`) range of this process: any access to it faults. Unmapped on
/// Drop. It holds only an address and a length, never a pointer into memory anyone may use.
#[derive(Debug)]
struct Guard {
    hva: Hva,
    len: usize,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: `[hva, hva+len)` is a PROT_NONE range this value owns (made by `map_ram`,
        // which hands each guard exactly its part of the reservation); nothing can be stored
        // in it, so no reference into it exists.
        unsafe { libc::munmap(self.hva.as_ptr().cast(), self.len) };
    }
}

/// The guards below and above one placement of guest RAM.
#[derive(Debug)]
struct Guards {
    below: Guard,
    above: Guard,
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

/// A 2 MiB aligned private anonymous mapping of `size` bytes (guest RAM or its mremap target)
/// with a `GUARD_SIZE` guard on each side.
///
/// One `PROT_NONE` reservation of the whole span comes first; RAM is then mapped over its middle
/// with `MAP_FIXED` (which replaces that part of the reservation in one step, so no other
/// mapping of this process can slip in between RAM and a guard), and what lies beyond the
/// guards is unmapped.
fn map_ram(size: u64) -> Result<(Mapping, Guards)> {
    let span = GUARD_SIZE
        .checked_mul(2)
        .and_then(|g| g.checked_add(HUGE_PAGE_SIZE))
        .and_then(|g| g.checked_add(size))
        .filter(|&s| size > 0 && s <= isize::MAX as u64)
        .ok_or(Error::Size { size })?;
    // SAFETY: a new mapping at an address of the kernel's choosing (no MAP_FIXED): no existing
    // memory of this process is affected. PROT_NONE and MAP_NORESERVE: it is address space only.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(Error::Reserve {
            span,
            source: std::io::Error::last_os_error(),
        });
    }
    let base = base as u64;
    let start = (base + GUARD_SIZE).next_multiple_of(HUGE_PAGE_SIZE);
    let end = start + size;
    // SAFETY: `[start, end)` lies inside the reservation just made, which only this function
    // knows of: MAP_FIXED replaces that part of it, nothing else.
    let ram = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            size as usize,
            mmap::PROT,
            FLAGS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if ram == libc::MAP_FAILED {
        let source = std::io::Error::last_os_error();
        // SAFETY: the whole reservation, still only ours; nothing refers into it.
        unsafe { libc::munmap(base as *mut libc::c_void, span as usize) };
        return Err(Error::Mmap { size, source });
    }
    let (head, tail) = (start - GUARD_SIZE - base, base + span - (end + GUARD_SIZE));
    // SAFETY: the head and the tail are the parts of the reservation outside both guards; only
    // this function knows of them.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head as usize);
        }
        if tail > 0 {
            libc::munmap((end + GUARD_SIZE) as *mut libc::c_void, tail as usize);
        }
    }
    let guards = Guards {
        below: Guard {
            hva: Hva(start - GUARD_SIZE),
            len: GUARD_SIZE as usize,
        },
        above: Guard {
            hva: Hva(end),
            len: GUARD_SIZE as usize,
        },
    };
    // SAFETY: `[start, end)` was mapped just above with `mmap::PROT` as one mapping, and nothing
    // else owns it.
    let map = unsafe { Mapping::from_raw(Hva(start), size as usize) };
    Ok((map, guards))
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
        let (map, guards) = map_ram(size)?;
        let mem = vm_memory_over(&map)?;
        let ram = GuestRam {
            mem,
            map,
            guards,
            thp,
        };
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

    /// Faults `[gpa, gpa+len)` in for writing (MADV_POPULATE_WRITE), or `OutOfRange` unless
    /// it lies wholly inside RAM. The runner's prefault takes RAM in parts (`prefault`).
    pub fn populate_range(&self, gpa: Gpa, len: u64) -> Result<()> {
        let hva = self.translate(gpa, len)?;
        madvise(hva, len, libc::MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE")
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

    /// The guard ranges right below and right above RAM (`GUARD_SIZE` each), where any access
    /// faults.
    pub fn guards(&self) -> [(Hva, u64); 2] {
        let g = &self.guards;
        [
            (g.below.hva, g.below.len as u64),
            (g.above.hva, g.above.len as u64),
        ]
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
        // Reserve a 2 MiB aligned destination (with its own guards) so THPs can stay PMD-mapped
        // after the move, and build the view of it first: after the move nothing may fail.
        let (dest, dest_guards) = map_ram(size)?;
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
        // The old guards go last (when this function returns), after the old range is gone.
        let _old_guards = std::mem::replace(&mut self.guards, dest_guards);
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

    /// The permissions of the VMA holding `addr` and its bounds, from /proc/self/maps.
    fn vma_of(addr: u64) -> Option<(String, u64, u64)> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (a <= addr && addr < b).then(|| (perms.to_string(), a, b))
        })
    }

    /// Both guards are PROT_NONE, adjacent to RAM, at least `GUARD_SIZE` long; RAM itself is
    /// read-write. A bug: no guard (an unchecked access past RAM reads or writes whatever is
    /// mapped there), a gap between RAM and a guard, or a guard that is accessible.
    fn assert_guarded(ram: &GuestRam, what: &str) {
        let (start, end) = (ram.hva().raw(), ram.hva().raw() + ram.size());
        let [(below, blen), (above, alen)] = ram.guards();
        assert_eq!((below.raw() + blen, above.raw()), (start, end), "{what}");
        assert_eq!((blen, alen), (GUARD_SIZE, GUARD_SIZE), "{what}");
        for (addr, lo, hi) in [
            (start - 1, start - GUARD_SIZE, start),
            (start - GUARD_SIZE, start - GUARD_SIZE, start),
            (end, end, end + GUARD_SIZE),
            (end + GUARD_SIZE - 1, end, end + GUARD_SIZE),
        ] {
            let (perms, a, b) =
                vma_of(addr).unwrap_or_else(|| panic!("{what}: {addr:#x} unmapped"));
            assert!(perms.starts_with("---"), "{what}: {addr:#x} is {perms}");
            assert!(a <= lo && hi <= b, "{what}: guard VMA {a:#x}-{b:#x}");
        }
        let (perms, _, _) = vma_of(start).unwrap();
        assert!(perms.starts_with("rw"), "{what}: RAM is {perms}");
    }

    /// Reads one byte at `addr` in a fork child; returns the signal that ended it (0: none).
    fn read_in_child(addr: u64) -> i32 {
        // SAFETY: the child only reads one byte (faulting or not) and calls `_exit`: no lock,
        // no allocation.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: a read of any address: it either returns a byte or faults, and the fault
            // ends only this child.
            unsafe {
                (addr as *const u8).read_volatile();
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            0
        }
    }

    #[test]
    fn guards_surround_ram() {
        let ram = GuestRam::new(8 << 20, false, false).unwrap();
        assert_guarded(&ram, "new");
        let (start, end) = (ram.hva().raw(), ram.hva().raw() + ram.size());
        for addr in [start - 1, end, end + (1 << 20), end + GUARD_SIZE - 1] {
            assert_eq!(read_in_child(addr), libc::SIGSEGV, "a read at {addr:#x}");
        }
        assert_eq!(read_in_child(end - 1), 0, "the last byte of RAM reads");
    }

    /// After either kind of move the RAM is guarded at its new place. A bug: the destination
    /// made without guards, or the old guards freed while the old range is still in use.
    #[test]
    fn remap_keeps_guards() {
        for dontunmap in [false, true] {
            let mut ram = GuestRam::new(4 << 20, true, false).unwrap();
            ram.remap(dontunmap).unwrap();
            assert_guarded(&ram, &format!("after remap (dontunmap {dontunmap})"));
        }
    }

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
