//! `KnobGuard`: one system-wide knob set to a value for as long as the guard lives, and restored to
//! what it was when the guard drops.
//!
//! It owns the guard's lifetime and the read-back check. The original is recorded in the
//! process-global registry (`registry.rs`) and, through it, in the on-disk journal
//! (`journal.rs`) *before* the new value is written, so the original survives a panic, a
//! SIGINT/SIGTERM (`signals.rs`) and, through journal recovery, even a SIGKILL. Reading and writing
//! the file is `knobs.rs`'s.
//!
//! It does not take the `SystemLock`: callers that change shared knobs must hold it (see
//! `lock.rs`). It knows no particular knob; `ksm.rs` knows KSM's.

use std::path::{Path, PathBuf};

use super::{knobs, registry};

/// Errors of this module; each names the step that failed and the knob.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Set(registry::Error),
    #[error("reading the knob back: {0}")]
    ReadBack(#[source] knobs::Error),
    #[error("restoring the original: {0}")]
    Restore(#[source] knobs::Error),
    #[error("knob {path} read back {actual:?} after writing {expected:?}")]
    Verify {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A knob held at a value; dropping it writes the original back.
#[derive(Debug)]
pub struct KnobGuard {
    id: u64,
    path: PathBuf,
    original: String,
    value: String,
}

impl KnobGuard {
    /// Records the knob's current value, then writes `value` (both under the registry lock, see
    /// `registry.rs`) and reads it back to check it took.
    pub fn set(path: impl AsRef<Path>, value: &str) -> Result<KnobGuard> {
        let path = path.as_ref();
        let (id, original) = registry::set_knob(path, value).map_err(Error::Set)?;
        // From here on, dropping `guard` on an error writes the original back.
        let guard = KnobGuard {
            id,
            path: path.to_path_buf(),
            original,
            value: value.to_string(),
        };
        let actual = knobs::read_knob(path).map_err(Error::ReadBack)?;
        if actual != knobs::normalize(value) {
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
        res.unwrap_or(Ok(())).map_err(Error::Restore)
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
    use std::fs;

    #[test]
    fn guard_restores_on_drop_and_on_explicit_restore() {
        let dir = tempfile::tempdir().unwrap();
        let knob = dir.path().join("knob");
        fs::write(&knob, "always [madvise] never\n").unwrap();
        {
            let g = KnobGuard::set(&knob, "always").unwrap();
            assert_eq!(g.original(), "madvise");
            assert_eq!(knobs::read_knob(&knob).unwrap(), "always");
        }
        assert_eq!(fs::read_to_string(&knob).unwrap(), "madvise");

        let g = KnobGuard::set(&knob, "never").unwrap();
        g.restore().unwrap();
        assert_eq!(knobs::read_knob(&knob).unwrap(), "madvise");
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
        assert_eq!(knobs::read_knob(&knob).unwrap(), "200");
        drop(outer);
        assert_eq!(knobs::read_knob(&knob).unwrap(), "100");
    }

    #[test]
    fn missing_knob_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let knob = dir.path().join("absent");
        match KnobGuard::set(&knob, "1") {
            Err(Error::Set(registry::Error::ReadKnob(knobs::Error::Read { path, .. }))) => {
                assert_eq!(path, knob)
            }
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
        let before = knobs::read_knob(knob).unwrap();
        match KnobGuard::set(knob, "not-a-number") {
            Err(Error::Set(registry::Error::WriteKnob(knobs::Error::Write { source, .. }))) => {
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
            }
            other => panic!("expected Write error, got {other:?}"),
        }
        assert_eq!(knobs::read_knob(knob).unwrap(), before);
    }
}
