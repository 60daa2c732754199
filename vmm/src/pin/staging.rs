//! The host-side bounce area a device's transfers copy from and to ([`Staging`]), and what
//! holds its pages ([`Backing`]).
//!
//! The kernel copies between staging and the pinned guest pages (READ_FIXED and WRITE_FIXED at
//! staging file offsets), a folio at a time: on 2 MiB folios it moves 1.3-1.5x the bytes per
//! second it moves on 4 KiB pages (`pinlab bench --only dma`, docs/performance.md). A memfd's
//! folio size is the host's `shmem_enabled` knob (`never` here, as on most distributions), which
//! the lab does not change for a bounce buffer. So a staging area of at least one huge page is a
//! nameless file (O_TMPFILE) on the process's own `huge=within_size` tmpfs, a detached mount
//! ([`crate::detached_mount`]): no path reaches it, it is in no mount table, and the kernel frees
//! it with the last fd. Where that mount cannot be made (no CAP_SYS_ADMIN, a kernel before 5.2),
//! or for a smaller area, staging is a sealed memfd and [`Backing::Memfd`] says why. Huge folios
//! are asked for, never assumed: the bench measures the coverage it got
//! ([`Staging::thp_coverage`]).
//!
//! Owns the file and its mapping: drop unmaps and closes.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use super::{Error, Result};
use crate::addr::HUGE_PAGE_SIZE;
use crate::detached_mount;
use crate::mmap::{self, Mapping};

/// What holds a staging area's pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A nameless file on the process's private `huge=within_size` tmpfs.
    HugeTmpfs,
    /// A memfd (its folio size is the host's `shmem_enabled`); why the tmpfs was not used.
    Memfd { why: String },
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::HugeTmpfs => f.write_str("private huge=within_size tmpfs"),
            Backing::Memfd { why } => write!(f, "memfd ({why})"),
        }
    }
}

/// The bounce area: `len` bytes of a file, mapped read-write, so the DMA engine can fill patterns
/// and checksum results. Its size never changes under the mapping: a memfd's size is sealed; a
/// tmpfs file is reachable only through this process's fd (see [`Staging::new`]).
pub struct Staging {
    map: Mapping,
    fd: OwnedFd,
    len: u64,
    backing: Backing,
}

/// The process's private tmpfs: a detached `huge=within_size` mount, made once.
fn huge_tmpfs() -> std::result::Result<BorrowedFd<'static>, String> {
    static MOUNT: OnceLock<std::result::Result<OwnedFd, String>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let options = [(c"huge", c"within_size"), (c"mode", c"0700")];
            detached_mount::detached(c"tmpfs", &options, detached_mount::NOSUID_NODEV_NOEXEC)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map(|fd| fd.as_fd())
        .map_err(Clone::clone)
}

/// A nameless file of the private tmpfs, or why there is none.
fn tmpfs_file() -> std::result::Result<OwnedFd, String> {
    let mount = huge_tmpfs()?;
    let flags = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC | libc::O_EXCL;
    // SAFETY: openat on the mount's root with a NUL-terminated path; the result is checked.
    // O_EXCL: the file can never be linked into a name.
    let fd = unsafe { libc::openat(mount.as_raw_fd(), c".".as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(format!(
            "openat(O_TMPFILE) on the private tmpfs: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sealed_memfd(len: u64) -> Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name; the returned fd is checked below.
    let raw = unsafe {
        libc::memfd_create(
            c"pinlab-staging".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(Error::StagingMemfd(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    truncate(&fd, len)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(Error::StagingSeal(io::Error::last_os_error()));
    }
    Ok(fd)
}

fn truncate(fd: &OwnedFd, len: u64) -> Result<()> {
    let ilen = libc::off_t::try_from(len).map_err(|_| Error::StagingLen { len })?;
    // SAFETY: ftruncate on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), ilen) } < 0 {
        return Err(Error::StagingTruncate {
            len,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Staging {
    /// A staging area of `len` bytes, zero filled: on the private huge tmpfs from one huge page
    /// on, else (or if that tmpfs cannot be had) a sealed memfd.
    pub fn new(len: u64) -> Result<Self> {
        if len == 0 || usize::try_from(len).map_or(true, |l| l > isize::MAX as usize) {
            return Err(Error::StagingLen { len });
        }
        let tmpfs = if len < HUGE_PAGE_SIZE {
            Err(format!("{len:#x} bytes: smaller than a huge page"))
        } else {
            tmpfs_file()
        };
        let (fd, backing) = match tmpfs {
            Ok(fd) => {
                truncate(&fd, len)?;
                (fd, Backing::HugeTmpfs)
            }
            Err(why) => (sealed_memfd(len)?, Backing::Memfd { why }),
        };
        // The kernel places a mapping of a huge tmpfs file at a 2 MiB boundary itself
        // (shmem_get_unmapped_area), so its folios can be PMD-mapped.
        let map = Mapping::of_fd(fd.as_fd(), len).map_err(|e| match e {
            mmap::Error::Mmap { source, .. } => Error::StagingMmap { len, source },
            _ => Error::StagingLen { len },
        })?;
        Ok(Staging {
            map,
            fd,
            len,
            backing,
        })
    }

    /// What holds the pages.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The fraction of the area's pages in huge folios now, measured (pagemap + kpageflags;
    /// pages not yet touched count as not huge).
    pub fn thp_coverage(&self) -> crate::pfn::Result<f64> {
        crate::pfn::thp_coverage(self.map.hva(), self.len)
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `map` is `len` bytes mapped for our lifetime, and the file stays `len` bytes:
        // a memfd's size is sealed; the tmpfs file has no name on a mount attached nowhere, so
        // only `self.fd` reaches it and nothing here resizes it. The kernel writes to it only
        // inside `&mut self` methods of a pin, so no write happens while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len as usize) }
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.len as usize) }
    }

    /// Pointer to byte `offset` (for the kernel to copy into). `offset <= len` is the caller's
    /// check.
    pub(crate) fn ptr_at(&mut self, offset: u64) -> *mut u8 {
        debug_assert!(offset <= self.len);
        self.map.as_ptr().wrapping_add(offset as usize)
    }

    /// The file, for io_uring reads and writes at file offsets.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the staging area is empty (never: `new` refuses 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Staging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staging")
            .field("fd", &self.fd.as_raw_fd())
            .field("len", &self.len)
            .field("backing", &self.backing)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PAGE_SIZE;

    /// A small area is a sealed memfd: zero filled, its size fixed. A bug: a resizable memfd
    /// (a truncation under the mapping would SIGBUS the engine), or zero accepted.
    #[test]
    fn small_staging_is_a_sealed_zeroed_memfd_and_refuses_zero() {
        let mut s = Staging::new(3 * PAGE_SIZE + 5).unwrap();
        assert!(matches!(s.backing(), Backing::Memfd { .. }), "{s:?}");
        assert_eq!(s.len(), 3 * PAGE_SIZE + 5);
        assert!(s.as_slice().iter().all(|&b| b == 0));
        s.as_mut_slice()[3 * PAGE_SIZE as usize + 4] = 9;
        assert_eq!(s.as_slice()[3 * PAGE_SIZE as usize + 4], 9);
        assert!(matches!(Staging::new(0), Err(Error::StagingLen { len: 0 })));
        // SAFETY: ftruncate on the staging fd; expected to fail with EPERM.
        let rc = unsafe { libc::ftruncate(s.fd().as_raw_fd(), 0) };
        assert_eq!(rc, -1);
    }

    /// A huge-page-sized area (as root, which the lab runs as) is a file of the private tmpfs
    /// that the kernel backs with huge folios once touched, and that tmpfs is in no mount table.
    /// A bug: the mount attached somewhere (a host change nobody undoes), a mapping not 2 MiB
    /// aligned (no PMD mapping, so 4 KiB folios), or a silent fall back to 4 KiB pages.
    #[test]
    fn large_staging_is_a_huge_private_tmpfs_file_in_no_mount_table() {
        let mut s = Staging::new(4 * HUGE_PAGE_SIZE).unwrap();
        if let Backing::Memfd { why } = s.backing() {
            // Only without the privilege the lab runs with.
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            assert_ne!(euid, 0, "root fell back to a memfd: {why}");
            return;
        }
        assert!(s.as_slice().iter().all(|&b| b == 0));
        s.as_mut_slice().fill(0x5a);
        let coverage = s.thp_coverage().unwrap();
        assert!(coverage > 0.99, "huge folio coverage {coverage}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains("within_size")),
            "the private tmpfs is attached: {mounts}"
        );
        // A second area shares the one private mount.
        let t = Staging::new(HUGE_PAGE_SIZE).unwrap();
        assert_eq!(t.backing(), &Backing::HugeTmpfs);
    }
}
