//! Swap areas: `/proc/swaps`, the swap header, writing a swap area into a file, and the
//! `swapon(2)`/`swapoff(2)` calls. The primitives under the `Swapfile` owner (`swapfile.rs`) and
//! journal recovery (`journal.rs`).
//!
//! It knows nothing of who records or removes a swapfile, and must not call the journal or the
//! registry. It does not decide what gets swapped out (`MADV_PAGEOUT` belongs to `perturb`).
//!
//! The area is written full of zeros rather than `fallocate`d: swapon refuses files with holes,
//! and some filesystems refuse preallocated (unwritten) extents for swap; written blocks work on
//! every filesystem that supports swapfiles at all (not tmpfs, not overlayfs upper dirs on some
//! kernels).
//!
//! The header is written here instead of running `mkswap`: it is one page with a fixed layout (the
//! kernel's `union swap_header`, `include/linux/swap.h`): the `info` struct at byte 1024
//! (`version` = 1, `last_page`, `nr_badpages` = 0, a UUID and a label we leave zero), and the magic
//! `SWAPSPACE2` in the last 10 bytes of the page. Doing it ourselves keeps util-linux out of the
//! lab's requirements and keeps the header's meaning next to the code; the test compares it with
//! `mkswap`'s when that program is present.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Byte offset of `swap_header.info` in the header page.
const INFO_OFFSET: usize = 1024;
/// The swap header magic for version-1 swap space.
const MAGIC: &[u8; 10] = b"SWAPSPACE2";
/// Fewer pages than this and `swapon` refuses the file (the kernel wants at least a few usable
/// pages besides the header); we ask for more than the minimum anyway.
pub const MIN_PAGES: u64 = 16;

/// Errors of this module; each names the call that failed and the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating swapfile {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("writing swapfile {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("statvfs({path}): {source}")]
    Statvfs { path: PathBuf, source: io::Error },
    #[error("swapon({path}): {source}")]
    Swapon { path: PathBuf, source: io::Error },
    #[error("swapoff({path}): {source}")]
    Swapoff { path: PathBuf, source: io::Error },
    #[error("unlinking swapfile {path}: {source}")]
    Unlink { path: PathBuf, source: io::Error },
    #[error("reading /proc/swaps: {0}")]
    ProcSwaps(io::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One line of `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapEntry {
    pub path: PathBuf,
    pub kind: String,
    pub size_kib: u64,
    pub used_kib: u64,
    pub priority: i64,
}

/// Parses the contents of `/proc/swaps`.
pub fn parse_proc_swaps(text: &str) -> Vec<SwapEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                return None;
            }
            Some(SwapEntry {
                // The kernel escapes spaces etc. as octal (\040); our own paths have none.
                path: PathBuf::from(f[0]),
                kind: f[1].to_string(),
                size_kib: f[2].parse().ok()?,
                used_kib: f[3].parse().ok()?,
                priority: f[4].parse().ok()?,
            })
        })
        .collect()
}

/// Active swap areas, from `/proc/swaps`.
pub fn active_swaps() -> Result<Vec<SwapEntry>> {
    let f = File::open("/proc/swaps").map_err(Error::ProcSwaps)?;
    let mut text = String::new();
    for line in io::BufReader::new(f).lines() {
        text.push_str(&line.map_err(Error::ProcSwaps)?);
        text.push('\n');
    }
    Ok(parse_proc_swaps(&text))
}

/// The base page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps > 0 {
        ps as u64
    } else {
        4096
    }
}

/// The header page for a swap area of `pages` pages (the header page included).
pub fn swap_header(page_size: usize, pages: u64) -> Vec<u8> {
    let mut page = vec![0u8; page_size];
    let last_page = (pages - 1) as u32;
    page[INFO_OFFSET..INFO_OFFSET + 4].copy_from_slice(&1u32.to_ne_bytes()); // version
    page[INFO_OFFSET + 4..INFO_OFFSET + 8].copy_from_slice(&last_page.to_ne_bytes());
    // nr_badpages (+8), uuid (+12..28), volume_name (+28..44): zero.
    page[page_size - MAGIC.len()..].copy_from_slice(MAGIC);
    page
}

/// Bytes an unprivileged writer could still allocate on the filesystem holding `dir`
/// (`f_bavail * f_frsize`).
pub fn available_bytes(dir: &Path) -> Result<u64> {
    let serr = |source| Error::Statvfs {
        path: dir.to_path_buf(),
        source,
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| serr(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: a zeroed statvfs is a valid out-buffer; the kernel fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs with a NUL-terminated path that lives across the call and a pointer to the
    // local struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(serr(io::Error::last_os_error()));
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Creates the empty file `path` (it must not exist), mode 0600, close-on-exec.
pub fn create_file(path: &Path) -> Result<File> {
    let cerr = |source| Error::Create {
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(cerr)?;
    // The umask may have cleared bits but never adds any; make 0600 explicit anyway.
    if let Err(e) = f.set_permissions(fs::Permissions::from_mode(0o600)) {
        let _ = fs::remove_file(path);
        return Err(cerr(e));
    }
    Ok(f)
}

/// Writes a swap area of `pages` pages (header first, then zeros) into `file` at `path`, and
/// fsyncs it.
pub fn write_area(file: &mut File, path: &Path, pages: u64) -> Result<()> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let ps = page_size();
    file.write_all(&swap_header(ps as usize, pages))
        .map_err(werr)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = (pages - 1) * ps;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).map_err(werr)?;
        left -= n as u64;
    }
    file.sync_all().map_err(werr)
}

fn cstring(path: &Path) -> std::ffi::CString {
    // Paths we build never contain NUL; a journal path with one cannot match a swap area.
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// `swapon(path, 0)`: kernel-chosen priority, no discard.
pub fn swapon(path: &Path) -> Result<()> {
    let c = cstring(path);
    // SAFETY: swapon with a NUL-terminated path that lives across the call; flags 0.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        return Err(Error::Swapon {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `swapoff(path)`.
pub fn swapoff(path: &Path) -> Result<()> {
    let c = cstring(path);
    // SAFETY: swapoff with a NUL-terminated path that lives across the call.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        return Err(Error::Swapoff {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Swaps off `path`, then unlinks it if it exists. `swapoff` is attempted whether or not
/// `/proc/swaps` lists the file: a restore may run right after a `swapon` returned, and
/// `/proc/swaps` is not the kernel's own record. EINVAL (not a swap area) and ENOENT (no such
/// file) mean there is nothing to swap off. The file is unlinked only once it is not a swap area:
/// a swap area whose file is unlinked can no longer be named to `swapoff`.
pub fn deactivate_and_remove(path: &Path) -> Result<()> {
    match swapoff(path) {
        Ok(()) => {}
        Err(Error::Swapoff { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
        Err(e) => return Err(e),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Unlink {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_table() {
        // (page size, pages) -> last_page at 1028, version 1 at 1024, magic at the page's end.
        let cases = [(4096usize, 16u64), (4096, 4096), (16384, 100)];
        for (ps, pages) in cases {
            let h = swap_header(ps, pages);
            assert_eq!(h.len(), ps);
            assert_eq!(&h[ps - 10..], b"SWAPSPACE2");
            assert_eq!(u32::from_ne_bytes(h[1024..1028].try_into().unwrap()), 1);
            assert_eq!(
                u32::from_ne_bytes(h[1028..1032].try_into().unwrap()) as u64,
                pages - 1
            );
            assert!(h[..1024].iter().all(|&b| b == 0), "boot block not zero");
        }
    }

    #[test]
    fn header_matches_mkswap() {
        let Ok(mkswap) = which("mkswap") else {
            eprintln!("skipped: no mkswap");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        let pages = 64u64;
        let ps = page_size();
        fs::write(&f, vec![0u8; (pages * ps) as usize]).unwrap();
        let out = std::process::Command::new(mkswap)
            .args(["-U", "clear", "-L", ""])
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let theirs = fs::read(&f).unwrap();
        let ours = swap_header(ps as usize, pages);
        // Compare version, last_page, nr_badpages and the magic; uuid/label are both cleared.
        assert_eq!(&theirs[1024..1036], &ours[1024..1036]);
        assert_eq!(&theirs[ps as usize - 10..ps as usize], MAGIC);
    }

    fn which(name: &str) -> std::result::Result<PathBuf, ()> {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .ok_or(())
    }

    #[test]
    fn proc_swaps_parse_table() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /swapfile                               file\t\t1048572\t\t0\t\t-2\n\
                    /dev/vda2                               partition\t2097148\t\t12\t\t-3\n\
                    garbage line\n";
        let got = parse_proc_swaps(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].path, Path::new("/swapfile"));
        assert_eq!((got[0].size_kib, got[0].priority), (1048572, -2));
        assert_eq!((got[1].kind.as_str(), got[1].used_kib), ("partition", 12));
        assert!(parse_proc_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn write_area_writes_header_and_zeros_and_create_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut f = create_file(&path).unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        write_area(&mut f, &path, MIN_PAGES).unwrap();
        let body = fs::read(&path).unwrap();
        let ps = page_size() as usize;
        assert_eq!(body.len(), MIN_PAGES as usize * ps);
        assert_eq!(&body[..ps], &swap_header(ps, MIN_PAGES)[..]);
        assert!(body[ps..].iter().all(|&b| b == 0));
        assert!(matches!(create_file(&path), Err(Error::Create { .. })));
    }

    #[test]
    fn deactivate_and_remove_of_a_plain_and_a_missing_file() {
        // Neither is a swap area: swapoff says EINVAL / ENOENT, which is not an error here; a
        // bug shows as an error, or as the plain file left in place.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        fs::write(&plain, b"not swap").unwrap();
        deactivate_and_remove(&plain).unwrap();
        assert!(!plain.exists());
        deactivate_and_remove(&dir.path().join("absent")).unwrap();
    }

    #[test]
    fn available_bytes_of_a_real_and_a_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        let missing = dir.path().join("absent");
        match available_bytes(&missing) {
            Err(Error::Statvfs { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("expected Statvfs, got {other:?}"),
        }
    }
}
