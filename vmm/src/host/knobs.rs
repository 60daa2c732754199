//! `KnobGuard`: one system-wide knob (a sysfs or procfs file) set to a value for as long as the
//! guard lives, and restored to what it was when the guard drops.
//!
//! It owns reading and writing knob files and the guard's lifetime. The original value is recorded
//! in the process-global registry (`registry.rs`) and, through it, in the on-disk journal
//! (`journal.rs`) *before* the new value is written, so the original survives a panic, a
//! SIGINT/SIGTERM (`signals.rs`) and, through `recover_stale_journals`, even a SIGKILL.
//!
//! Values: a knob that reads as a choice list (`always [madvise] never`) is recorded as the
//! bracketed choice (`madvise`), which is what must be written back; any other knob is recorded
//! trimmed. Write-only triggers (`/proc/sys/vm/compact_memory`, `drop_caches`) have nothing to
//! restore: use [`trigger`] for them, never a guard.
//!
//! It does not take the `SystemLock`: callers that change shared knobs must hold it (see
//! `lock.rs`). It knows no particular knob; `ksm.rs` knows KSM's.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::registry;

/// Errors of this module; each names the operation that failed and the knob.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading knob {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to knob {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("writing {value:?} to knob {path}: short write of {written} bytes")]
    ShortWrite {
        path: PathBuf,
        value: String,
        written: usize,
    },
    #[error("knob {path} read back {actual:?} after writing {expected:?}")]
    Verify {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("recording the original of knob {path}: {source}")]
    Journal {
        path: PathBuf,
        source: super::journal::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The value a knob's contents stand for: the `[bracketed]` choice of a choice list, else the
/// trimmed contents.
pub fn normalize(raw: &str) -> String {
    if let (Some(open), Some(close)) = (raw.find('['), raw.find(']')) {
        if open < close {
            return raw[open + 1..close].to_string();
        }
    }
    raw.trim().to_string()
}

/// Reads a knob and returns its normalized value (see [`normalize`]).
pub fn read_knob(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|raw| normalize(&raw))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `value` to a knob in one `write(2)`, as sysfs requires.
pub fn write_knob(path: &Path, value: &str) -> Result<()> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    // O_TRUNC: harmless on sysfs/procfs, and needed when the "knob" is a plain file (tests,
    // journal recovery of a moved knob).
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(werr)?;
    let written = file.write(value.as_bytes()).map_err(werr)?;
    if written != value.len() {
        return Err(Error::ShortWrite {
            path: path.to_path_buf(),
            value: value.to_string(),
            written,
        });
    }
    Ok(())
}

/// Writes to a write-only trigger such as `/proc/sys/vm/compact_memory` (value `1`) or
/// `/proc/sys/vm/drop_caches` (`1`, `2`, `3`). There is no state to restore.
pub fn trigger(path: &Path, value: &str) -> Result<()> {
    write_knob(path, value)
}

/// A knob held at a value; dropping it writes the original back.
#[derive(Debug)]
pub struct KnobGuard {
    id: u64,
    path: PathBuf,
    original: String,
    value: String,
}

impl KnobGuard {
    /// Records the knob's current value, then writes `value` and reads it back to check it took.
    pub fn set(path: impl AsRef<Path>, value: &str) -> Result<KnobGuard> {
        let path = path.as_ref();
        let original = read_knob(path)?;
        let id = registry::register_knob(path, &original).map_err(|source| Error::Journal {
            path: path.to_path_buf(),
            source,
        })?;
        let guard = KnobGuard {
            id,
            path: path.to_path_buf(),
            original,
            value: value.to_string(),
        };
        // From here on, dropping `guard` on an error writes the original back, which also
        // covers a write that failed half way.
        write_knob(path, value)?;
        let actual = read_knob(path)?;
        if actual != normalize(value) {
            return Err(Error::Verify {
                path: path.to_path_buf(),
                expected: value.to_string(),
                actual,
            });
        }
        Ok(guard)
    }

    /// The knob.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value the knob had before the guard, to be written back.
    pub fn original(&self) -> &str {
        &self.original
    }

    /// The value the guard wrote.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Restores the original now and reports whether that worked (drop only logs).
    pub fn restore(self) -> Result<()> {
        let res = registry::restore_knob(self.id);
        std::mem::forget(self);
        res.unwrap_or(Ok(()))
    }
}

impl Drop for KnobGuard {
    fn drop(&mut self) {
        // `None`: the signal path or the panic hook restored it already.
        if let Some(Err(e)) = registry::restore_knob(self.id) {
            tracing::warn!("restoring knob on drop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        // (raw contents, value to write back)
        let cases = [
            ("always [madvise] never\n", "madvise"),
            ("always defer defer+madvise [madvise] never\n", "madvise"),
            ("[none] scan-time\n", "none"),
            ("20\n", "20"),
            ("  0 \n", "0"),
            ("", ""),
            // A stray closing bracket before an opening one is not a choice list.
            ("a] [b", "a] [b"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), want, "raw {raw:?}");
        }
    }

    #[test]
    fn guard_restores_on_drop_and_on_explicit_restore() {
        let dir = tempfile::tempdir().unwrap();
        let knob = dir.path().join("knob");
        fs::write(&knob, "always [madvise] never\n").unwrap();
        {
            let g = KnobGuard::set(&knob, "always").unwrap();
            assert_eq!(g.original(), "madvise");
            assert_eq!(read_knob(&knob).unwrap(), "always");
        }
        assert_eq!(fs::read_to_string(&knob).unwrap(), "madvise");

        let g = KnobGuard::set(&knob, "never").unwrap();
        g.restore().unwrap();
        assert_eq!(read_knob(&knob).unwrap(), "madvise");
    }

    #[test]
    fn nested_guards_on_one_knob_restore_the_first_original() {
        let dir = tempfile::tempdir().unwrap();
        let knob = dir.path().join("knob");
        fs::write(&knob, "100\n").unwrap();
        let outer = KnobGuard::set(&knob, "200").unwrap();
        let inner = KnobGuard::set(&knob, "300").unwrap();
        assert_eq!(inner.original(), "200");
        drop(inner);
        assert_eq!(read_knob(&knob).unwrap(), "200");
        drop(outer);
        assert_eq!(read_knob(&knob).unwrap(), "100");
    }

    #[test]
    fn missing_knob_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let knob = dir.path().join("absent");
        match KnobGuard::set(&knob, "1") {
            Err(Error::Read { path, .. }) => assert_eq!(path, knob),
            other => panic!("expected Read error, got {other:?}"),
        }
    }

    #[test]
    fn rejected_value_is_restored() {
        // procfs refuses a non-number: the write fails and the guard writes the original back.
        // Read-only knobs are fine to try: the write fails before anything changes.
        let knob = Path::new("/proc/sys/kernel/io_uring_disabled");
        if !knob.exists() {
            return;
        }
        let _lock = super::super::lock::SystemLock::acquire().unwrap();
        let before = read_knob(knob).unwrap();
        match KnobGuard::set(knob, "not-a-number") {
            Err(Error::Write { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
            }
            other => panic!("expected Write error, got {other:?}"),
        }
        assert_eq!(read_knob(knob).unwrap(), before);
    }
}
