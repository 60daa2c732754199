//! `Swapfile`: a swapfile this process creates, activates, and on drop swaps off and unlinks.
//!
//! It owns the file's lifetime and its name (`<dir>/pinlab-swap-<pid>-<n>`). The swap area itself
//! (header, zero-fill, `swapon`/`swapoff`) is `swap.rs`'s; recording the file, so that
//! SIGINT/SIGTERM (`signals.rs`) and journal recovery remove it too, is `registry.rs`'s. The file is
//! registered *before* `swapon`, so there is no moment when an active swapfile of ours is
//! unrecorded. It does not decide what gets swapped out (`MADV_PAGEOUT` belongs to `perturb`).
//!
//! It does not take the `SystemLock`: callers must hold it (swap is system-wide).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{registry, swap};

/// Errors of this module; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("swapfile of {size} bytes is smaller than {min} pages")]
    TooSmall { size: u64, min: u64 },
    #[error(transparent)]
    Create(swap::Error),
    #[error(transparent)]
    WriteArea(swap::Error),
    #[error(transparent)]
    Record(registry::Error),
    #[error(transparent)]
    Activate(registry::Error),
    #[error(transparent)]
    Remove(registry::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// An active swapfile; dropping it swaps it off and unlinks it.
#[derive(Debug)]
pub struct Swapfile {
    path: PathBuf,
    size: u64,
}

impl Swapfile {
    /// Creates `dir/pinlab-swap-<pid>-<n>` of `size` bytes (rounded down to pages), mode 0600,
    /// writes the swap area and activates it. Needs CAP_SYS_ADMIN and a filesystem that supports
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
        let path = dir.join(format!(
            "pinlab-swap-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = swap::create_file(&path).map_err(Error::Create)?;
        // From here on the file exists: remove it on every error.
        let fail = |e: Error| {
            let _ = fs::remove_file(&path);
            e
        };
        swap::write_area(&mut f, &path, pages).map_err(|e| fail(Error::WriteArea(e)))?;
        drop(f);
        registry::register_swapfile(&path).map_err(|e| fail(Error::Record(e)))?;
        // Registered: from here on dropping `sw` swaps off (if it got that far) and unlinks.
        let sw = Swapfile {
            path,
            size: pages * ps,
        };
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
