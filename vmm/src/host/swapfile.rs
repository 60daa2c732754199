//! `Swapfile`: a swapfile this process creates, activates, and on drop swaps off and unlinks.
//!
//! It owns the file's lifetime, its name (`<dir>/pinlab-swap-<pid>-<n>`) and the size policy. The
//! swap area itself (header, zero-fill, `swapon`/`swapoff`) is `swap.rs`'s; recording the file, so
//! that SIGINT/SIGTERM (`signals.rs`) and journal recovery remove it too, is `registry.rs`'s. The
//! file is journaled *before* it is created, so there is no moment when a file of ours (being
//! zero-filled, or active) is unrecorded, even for a SIGKILL. A size that would leave less than
//! [`RESERVE_BYTES`] free on the filesystem is refused before anything is written. It does not
//! decide what gets swapped out (`MADV_PAGEOUT` belongs to `perturb`).
//!
//! It does not take the `SystemLock`: callers must hold it (swap is system-wide).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{registry, swap};

/// Errors of this module; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("swapfile of {size} bytes is smaller than {min} pages")]
    TooSmall { size: u64, min: u64 },
    #[error("checking free space for the swapfile: {0}")]
    FreeSpace(swap::Error),
    #[error(
        "a swapfile of {size} bytes does not fit in {dir}: {available} bytes free, and {reserve} \
         must stay free"
    )]
    NoSpace {
        dir: PathBuf,
        size: u64,
        available: u64,
        reserve: u64,
    },
    #[error(transparent)]
    Create(registry::Error),
    #[error(transparent)]
    WriteArea(swap::Error),
    #[error(transparent)]
    Activate(registry::Error),
    #[error(transparent)]
    Remove(registry::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What must stay free on the swapfile's filesystem besides it (other users, our journal).
pub const RESERVE_BYTES: u64 = 256 << 20;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// An active swapfile; dropping it swaps it off and unlinks it.
#[derive(Debug)]
pub struct Swapfile {
    path: PathBuf,
    size: u64,
}

impl Swapfile {
    /// Creates `dir/pinlab-swap-<pid>-<n>` of `size` bytes (rounded down to pages), mode 0600,
    /// writes the swap area and activates it; refuses a size that leaves less than
    /// [`RESERVE_BYTES`] free. Needs CAP_SYS_ADMIN and a filesystem that supports
    /// swapfiles.
    pub fn create(dir: &Path, size: u64) -> Result<Swapfile> {
        let ps = swap::page_size();
        let pages = size / ps;
        if pages < swap::MIN_PAGES {
            return Err(Error::TooSmall {
                size,
                min: swap::MIN_PAGES,
            });
        }
        let bytes = pages * ps;
        let available = swap::available_bytes(dir).map_err(Error::FreeSpace)?;
        if bytes.saturating_add(RESERVE_BYTES) > available {
            return Err(Error::NoSpace {
                dir: dir.to_path_buf(),
                size: bytes,
                available,
                reserve: RESERVE_BYTES,
            });
        }
        let path = dir.join(format!(
            "pinlab-swap-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = registry::begin_swapfile(&path).map_err(Error::Create)?;
        // Journaled and created: from here on dropping `sw` swaps off (if it got that far) and
        // unlinks.
        let sw = Swapfile { path, size: bytes };
        swap::write_area(&mut f, &sw.path, pages).map_err(Error::WriteArea)?;
        drop(f);
        registry::activate_swapfile(&sw.path).map_err(Error::Activate)?;
        Ok(sw)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes, header page included.
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Swaps off and unlinks now, reporting failures (drop only logs them).
    pub fn remove(self) -> Result<()> {
        let res = registry::remove_swapfile(&self.path);
        std::mem::forget(self);
        res.map_err(Error::Remove)
    }
}

impl Drop for Swapfile {
    fn drop(&mut self) {
        // On failure it stays registered: the signal path and journal recovery try again.
        if let Err(e) = registry::remove_swapfile(&self.path) {
            tracing::warn!("removing swapfile on drop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lock::SystemLock;
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn too_small_is_refused_before_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        match Swapfile::create(dir.path(), 4096) {
            Err(Error::TooSmall { size: 4096, .. }) => {}
            other => panic!("expected TooSmall, got {other:?}"),
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_size_that_does_not_fit_is_refused_before_creating_anything() {
        // A bug shows as a file written until ENOSPC (and the filesystem full meanwhile).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let available = swap::available_bytes(dir.path()).unwrap();
        let size = available - available % swap::page_size();
        match Swapfile::create(dir.path(), size) {
            Err(Error::NoSpace {
                dir: d,
                size: s,
                reserve,
                ..
            }) => {
                assert_eq!((d.as_path(), s), (dir.path(), size));
                assert_eq!(reserve, RESERVE_BYTES);
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn create_activates_and_drop_removes() {
        if !Path::new("/proc/swaps").exists() {
            eprintln!("skipped: kernel without swap");
            return;
        }
        let _lock = SystemLock::acquire().unwrap();
        // /var/tmp: a disk filesystem (tmpfs cannot hold a swapfile).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let sw = Swapfile::create(dir.path(), 16 << 20).unwrap();
        let path = sw.path().to_path_buf();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let entry = swap::active_swaps()
            .unwrap()
            .into_iter()
            .find(|s| s.path == path)
            .expect("swapfile in /proc/swaps");
        // The kernel reports the usable size: all pages but the header, in KiB.
        assert_eq!(entry.size_kib, (sw.size_bytes() - swap::page_size()) / 1024);
        assert_eq!(entry.kind, "file");
        drop(sw);
        assert!(!swap::active_swaps().unwrap().iter().any(|s| s.path == path));
        assert!(!path.exists());
    }
}
