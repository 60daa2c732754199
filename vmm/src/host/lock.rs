//! `SystemLock`: the cross-process lock that every run or test touching system-wide state holds.
//!
//! It owns one `flock(LOCK_EX)` on `/run/pinlab/system.lock` (the directory is created when
//! missing) and releases it on drop. Knobs (KSM, THP, sysctls), swapfiles and tracefs are shared by
//! every process on the machine, and the machine can be shared by concurrent test runs: two runs
//! that both "restore the original" of a knob the other one changed would leave it wrong. So anyone
//! who changes such state takes this lock first and keeps it until everything is restored.
//!
//! `flock` locks belong to the open file description: two `acquire` calls in the same process
//! exclude each other exactly as two processes do (so the lock serializes tests inside one test
//! binary too), and the lock is not reentrant. The descriptor is `O_CLOEXEC`, so children that we
//! exec do not inherit it; a process killed with SIGKILL releases it when the kernel closes its fds.
//! The holder's PID is written into the file for diagnostics only; the lock is the `flock`.
//!
//! Its first act once it holds the lock is journal recovery (`journal.rs`): whatever dead runs
//! left in the lock's directory is restored before the new holder can read any knob's
//! "original", and each recovered journal is reported in one line on stderr (and by
//! [`SystemLock::recovered`]). Recovery without the lock could replay a dead run's journal
//! underneath a live run, and a run that read its originals before recovery would record the
//! dead run's leftovers as originals and write them back later.
//!
//! It changes no knob itself and knows nothing about what the holder changes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::journal::{self, Recovered};

/// File name of the lock inside the run directory (`/run/pinlab`).
pub const LOCK_FILE: &str = "system.lock";
/// How long [`SystemLock::acquire`] waits before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Poll period while another holder has the lock.
const POLL: Duration = Duration::from_millis(20);

/// Errors of this module; each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating lock directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("opening lock file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("flock(LOCK_EX) on {path}: {source}")]
    Flock { path: PathBuf, source: io::Error },
    #[error("recovering dead runs' journals under {path}: {source}")]
    Recover {
        path: PathBuf,
        source: journal::Error,
    },
    #[error("timed out after {waited:?} waiting for {path} (held by pid {holder})")]
    Timeout {
        path: PathBuf,
        waited: Duration,
        holder: String,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct SystemLock {
    file: File,
    path: PathBuf,
    recovered: Vec<Recovered>,
}

impl SystemLock {
    /// Takes the lock on `/run/pinlab/system.lock`, waiting up to [`DEFAULT_TIMEOUT`].
    pub fn acquire() -> Result<SystemLock> {
        Self::acquire_within(DEFAULT_TIMEOUT)
    }

    /// Takes the lock on `/run/pinlab/system.lock`, waiting up to `timeout`.
    pub fn acquire_within(timeout: Duration) -> Result<SystemLock> {
        Self::acquire_at(&journal::run_dir().join(LOCK_FILE), timeout)
    }

    /// Takes the lock on the file at `path` (its directory is created), waiting up to `timeout`,
    /// then recovers the dead runs' journals in that directory.
    pub fn acquire_at(path: &Path, timeout: Duration) -> Result<SystemLock> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let start = Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {}
                Some(libc::EINTR) => continue,
                _ => {
                    return Err(Error::Flock {
                        path: path.to_path_buf(),
                        source: err,
                    })
                }
            }
            if start.elapsed() >= timeout {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Timeout {
                    path: path.to_path_buf(),
                    waited: start.elapsed(),
                    holder: holder.trim().to_string(),
                });
            }
            thread::sleep(POLL);
        }
        // Diagnostics only: who holds it. Failure to write does not matter.
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = writeln!(file, "{}", std::process::id());
        // Owned from here: an error below releases the lock through Drop.
        let mut lock = SystemLock {
            file,
            path: path.to_path_buf(),
            recovered: Vec::new(),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        lock.recovered =
            journal::recover_stale_journals_in(dir).map_err(|source| Error::Recover {
                path: dir.to_path_buf(),
                source,
            })?;
        for r in &lock.recovered {
            eprintln!("pinlab: {r}");
        }
        Ok(lock)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What acquiring the lock recovered from dead runs' journals (already reported on stderr).
    pub fn recovered(&self) -> &[Recovered] {
        &self.recovered
    }
}

impl Drop for SystemLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        // SAFETY: flock on a descriptor we own; closing the file would release it as well.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_times_out_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("test.lock");
        let first = SystemLock::acquire_at(&path, Duration::from_secs(1)).unwrap();
        // A second open file description conflicts even inside the same process.
        match SystemLock::acquire_at(&path, Duration::from_millis(100)) {
            Err(Error::Timeout { holder, .. }) => {
                assert_eq!(holder, std::process::id().to_string())
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        drop(first);
        let again = SystemLock::acquire_at(&path, Duration::from_millis(100)).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn waiter_gets_the_lock_when_holder_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.lock");
        let first = SystemLock::acquire_at(&path, Duration::from_secs(1)).unwrap();
        let p = path.clone();
        let waiter = thread::spawn(move || SystemLock::acquire_at(&p, Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(100));
        drop(first);
        assert!(waiter.join().unwrap().is_ok());
    }
}
