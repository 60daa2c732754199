//! Reading and writing one system-wide knob file (sysfs or procfs): the primitive under every
//! knob change the lab makes.
//!
//! It owns the value convention and the single-`write(2)` rule. It knows nothing of who records
//! or restores a knob: the journal (`journal.rs`) and the guards (`knob_guard.rs`, through
//! `registry.rs`) are built on top of it, and it must not call them.
//!
//! Values: a knob that reads as a choice list (`always [madvise] never`) stands for the bracketed
//! choice (`madvise`), which is what must be written back; any other knob stands for its trimmed
//! contents. Write-only triggers (`/proc/sys/vm/compact_memory`, `drop_caches`) have nothing to
//! restore: use [`trigger`] for them, never a guard.
//!
//! It does not take the `SystemLock`: callers that change shared knobs must hold it (`lock.rs`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
}

impl Error {
    /// Whether the knob itself does not exist (ENOENT on open).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Read { source, .. } | Error::Write { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
            }
            Error::ShortWrite { .. } => false,
        }
    }
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
    fn write_replaces_the_whole_contents_and_missing_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let knob = dir.path().join("knob");
        fs::write(&knob, "always [madvise] never\n").unwrap();
        write_knob(&knob, "7").unwrap();
        assert_eq!(fs::read_to_string(&knob).unwrap(), "7");
        assert_eq!(read_knob(&knob).unwrap(), "7");
        let absent = dir.path().join("absent");
        let read = read_knob(&absent).unwrap_err();
        let write = write_knob(&absent, "1").unwrap_err();
        assert!(matches!(&read, Error::Read { path, .. } if path == &absent));
        assert!(read.is_not_found() && write.is_not_found());
        assert!(!absent.exists(), "a write must not create a knob");
    }
}
