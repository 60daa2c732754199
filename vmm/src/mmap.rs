//! An owned range of this process's address space: `mmap` when made, `munmap` on Drop.
//!
//! Every mapping the VMM makes by hand is a `Mapping`: guest RAM (private anonymous, 2 MiB
//! aligned, see `memory`), the staging file of the pin layer (`of_fd`), the page a fork child
//! reports into (`shared`), and the tests' anonymous regions. All are read-write.
//!
//! A `Mapping` owns the address range, not what is stored in it: it hands out addresses (`Hva`)
//! and raw pointers, never references, so its owner decides who may read or write the memory and
//! says so where it dereferences. It must not be used for ranges it did not create (the kvm_run
//! page belongs to `kvm_ioctls::VcpuFd`, vm-memory's view over guest RAM is built with
//! `MmapRegion::build_raw`, which does not own).

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::addr::Hva;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a mapping of {len:#x} bytes: the length must be nonzero and fit in isize")]
    Length { len: u64 },
    #[error("alignment {align:#x} is not a power of two of at least 4 KiB")]
    Alignment { align: u64 },
    #[error("mmap({kind}) of {len:#x} bytes failed: {source}")]
    Mmap {
        kind: &'static str,
        len: usize,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Read and write: the only protection the VMM maps with.
pub const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;

/// `[hva, hva+len)`, mapped by this value and unmapped when it drops.
///
/// It holds only an address and a length (no pointer), so it is `Send` and `Sync`: moving or
/// sharing it gives no access to the memory; every access is an `unsafe` dereference by the owner.
#[derive(Debug)]
pub struct Mapping {
    hva: Hva,
    len: usize,
}

fn checked_len(len: u64) -> Result<usize> {
    usize::try_from(len)
        .ok()
        .filter(|&l| l > 0 && l <= isize::MAX as usize)
        .ok_or(Error::Length { len })
}

impl Mapping {
    /// `mmap(NULL, len, PROT, flags, fd, 0)`.
    fn map(kind: &'static str, len: u64, flags: i32, fd: i32) -> Result<Self> {
        let len = checked_len(len)?;
        // SAFETY: a new mapping at an address of the kernel's choosing (no MAP_FIXED), so no
        // existing memory of this process is affected; the result is checked below.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::Mmap {
                kind,
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            hva: Hva(p as u64),
            len,
        })
    }

    /// Private anonymous memory (`MAP_PRIVATE | MAP_ANONYMOUS | extra_flags`), zero filled.
    pub fn anonymous(len: u64, extra_flags: i32) -> Result<Self> {
        Self::map(
            "MAP_PRIVATE|MAP_ANONYMOUS",
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
        )
    }

    /// Like `anonymous`, starting at a multiple of `align` (a power of two, at least 4 KiB): maps
    /// `len + align` bytes and unmaps the unaligned head and the tail.
    pub fn anonymous_aligned(len: u64, align: u64, extra_flags: i32) -> Result<Self> {
        if !align.is_power_of_two() || align < crate::addr::PAGE_SIZE {
            return Err(Error::Alignment { align });
        }
        let span = len.checked_add(align).ok_or(Error::Length { len })?;
        let whole = Self::anonymous(span, extra_flags)?;
        let (raw, span) = whole.into_raw();
        let start = raw.raw().next_multiple_of(align);
        let head = start - raw.raw();
        let tail = span as u64 - head - len;
        // SAFETY: the head and the tail lie inside the mapping just made, which nothing else
        // knows of; what stays mapped is exactly `[start, start+len)`, owned by the result.
        unsafe {
            if head > 0 {
                libc::munmap(raw.as_ptr().cast(), head as usize);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail as usize);
            }
        }
        Ok(Mapping {
            hva: Hva(start),
            len: len as usize,
        })
    }

    /// Shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`): a fork child's writes to it are
    /// seen by the parent.
    pub fn shared(len: u64) -> Result<Self> {
        Self::map(
            "MAP_SHARED|MAP_ANONYMOUS",
            len,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
        )
    }

    /// A shared mapping of `fd` from offset 0. The mapping keeps the file open in the kernel,
    /// so `fd` may be closed before or after it.
    pub fn of_fd(fd: BorrowedFd<'_>, len: u64) -> Result<Self> {
        Self::map(
            "MAP_SHARED of a file",
            len,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
        )
    }

    /// Takes ownership of `[hva, hva+len)`.
    ///
    /// # Safety
    /// The range must be one mapping of this process made with `PROT` that nothing else owns
    /// (it is unmapped when the result drops).
    pub unsafe fn from_raw(hva: Hva, len: usize) -> Self {
        Mapping { hva, len }
    }

    /// Gives up ownership without unmapping: for a range the kernel already took away (the
    /// source of an mremap that moved it). Returns the range.
    pub fn into_raw(self) -> (Hva, usize) {
        let range = (self.hva, self.len);
        std::mem::forget(self);
        range
    }

    pub fn hva(&self) -> Hva {
        self.hva
    }

    /// The first byte, for the owner's own (unsafe, documented) accesses.
    pub fn as_ptr(&self) -> *mut u8 {
        self.hva.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping is at least one byte long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `[hva, hva+len)` is the mapping this value made (or was given with
        // `from_raw`) and owns; whoever stored references into it had to end them before
        // dropping their owner (the owners' field orders say how).
        unsafe { libc::munmap(self.hva.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::HUGE_PAGE_SIZE;

    /// Whether the page at `hva` is mapped (mincore fails with ENOMEM on an unmapped range).
    fn is_mapped(hva: Hva) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: mincore only reads the page tables and writes one byte into `vec`.
        unsafe { libc::mincore(hva.as_ptr().cast(), 4096, vec.as_mut_ptr()) == 0 }
    }

    /// Runs `f` in a fork child and returns its exit code. The child is single-threaded, so no
    /// other test thread can map into a range `f` just freed; `f` must not allocate (another
    /// thread may have held the allocator's lock at the fork).
    fn in_child(f: fn() -> i32) -> i32 {
        // SAFETY: the child runs `f` (syscalls and stack memory only) and then `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = f();
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// A bug: the range stays mapped after drop (a leak per run), or only its first page goes.
    #[test]
    fn drop_unmaps() {
        let code = in_child(|| {
            let Ok(m) = Mapping::anonymous(8192, 0) else {
                return 2;
            };
            let hva = m.hva();
            if !is_mapped(hva) {
                return 3;
            }
            drop(m);
            (is_mapped(hva) || is_mapped(Hva(hva.raw() + 4096))) as i32
        });
        assert_eq!(
            code, 0,
            "2: mmap failed, 3: not mapped, 1: still mapped after drop"
        );
    }

    /// A bug: an unaligned start (THPs could not be PMD-mapped) or a head/tail left mapped.
    #[test]
    fn aligned_mapping_is_aligned_and_trimmed() {
        let m = Mapping::anonymous_aligned(4 << 20, HUGE_PAGE_SIZE, libc::MAP_NORESERVE).unwrap();
        assert!(m.hva().is_aligned(HUGE_PAGE_SIZE));
        assert_eq!(m.len(), 4 << 20);
        let code = in_child(|| {
            let Ok(m) = Mapping::anonymous_aligned(4 << 20, HUGE_PAGE_SIZE, 0) else {
                return 2;
            };
            let end = m.hva().raw() + (4 << 20);
            if !is_mapped(m.hva()) || !is_mapped(Hva(end - 4096)) {
                return 3;
            }
            // The head and tail trimmed together are `align` bytes and the head is shorter, so
            // the page right after the end always belonged to the tail.
            is_mapped(Hva(end)) as i32
        });
        assert_eq!(
            code, 0,
            "2: mmap failed, 3: not mapped, 1: the tail was left mapped"
        );
        assert!(matches!(
            Mapping::anonymous_aligned(4096, 3 << 12, 0),
            Err(Error::Alignment { .. })
        ));
    }

    #[test]
    fn lengths_are_checked() {
        assert!(matches!(
            Mapping::anonymous(0, 0),
            Err(Error::Length { len: 0 })
        ));
        assert!(matches!(
            Mapping::shared(u64::MAX),
            Err(Error::Length { .. })
        ));
        assert!(matches!(
            Mapping::anonymous_aligned(u64::MAX, HUGE_PAGE_SIZE, 0),
            Err(Error::Length { .. })
        ));
    }

    #[test]
    fn shared_memory_is_seen_across_fork() {
        let m = Mapping::shared(4096).unwrap();
        let p = m.as_ptr();
        // SAFETY: fork in a test; the child only stores one byte into the shared page (plain
        // memory, no lock, no allocation) and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: the page is mapped in the child too; nothing else uses it.
            unsafe {
                p.write_volatile(0x5a);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        // SAFETY: inside the mapping; the child has exited.
        assert_eq!(unsafe { p.read_volatile() }, 0x5a);
    }
}
