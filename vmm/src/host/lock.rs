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
//! exec do not inherit it; a process killed with SIGKILL releases it when the kernel closes its
//! fds.
//!
//! The holder writes who it is into the file (a [`Holder`]: pid and scenario, one JSON line), for
//! waiters only; the lock is the `flock`. A waiter says on stderr whom it waits for ("waiting for
//! the system lock held by pid N (scenario X)"), again when the holder changes, and gives up with
//! [`Error::Timeout`] after its bound ([`DEFAULT_TIMEOUT`] unless told).
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

use serde::{Deserialize, Serialize};

use super::journal::{self, Recovered};

/// File name of the lock inside the run directory (`/run/pinlab`).
pub const LOCK_FILE: &str = "system.lock";
/// How long [`SystemLock::acquire`] waits before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Poll period while another holder has the lock.
const POLL: Duration = Duration::from_millis(20);
/// How long a waiter waits for the holder's record to appear before saying it does not know who
/// holds the lock (the record is written right after the `flock`).
const HOLDER_GRACE: Duration = Duration::from_secs(1);

/// Errors of this module; each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating lock directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("opening lock file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("flock(LOCK_EX) on {path}: {source}")]
    Flock { path: PathBuf, source: io::Error },
    #[error(
        "timed out after {waited:?} waiting for {path} (held by {})",
        describe(holder)
    )]
    Timeout {
        path: PathBuf,
        waited: Duration,
        holder: Option<Holder>,
    },
    #[error("recovering dead runs' journals under {path}: {source}")]
    Recover {
        path: PathBuf,
        source: journal::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Who holds the lock, as its holder recorded in the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// The scenario it runs, or the program's name for other holders (tests).
    pub scenario: String,
}

impl Holder {
    /// Parses the lock file's contents: our JSON line, or a bare pid (older binaries).
    pub fn parse(text: &str) -> Option<Holder> {
        let text = text.trim();
        if let Ok(h) = serde_json::from_str(text) {
            return Some(h);
        }
        Some(Holder {
            pid: text.parse().ok()?,
            scenario: "unknown".into(),
        })
    }
}

fn describe(holder: &Option<Holder>) -> String {
    match holder {
        Some(h) => format!("pid {} (scenario {})", h.pid, h.scenario),
        None => "a holder that did not record itself".into(),
    }
}

/// The waiting notice for `holder`, `timeout` being the waiter's bound.
pub fn waiting_notice(holder: &Option<Holder>, timeout: Duration) -> String {
    format!(
        "waiting for the system lock held by {}, for up to {timeout:?}",
        describe(holder)
    )
}

/// This program's name, the label of holders that run no scenario.
fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".into())
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    Holder::parse(&text)
}

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct SystemLock {
    file: File,
    path: PathBuf,
    recovered: Vec<Recovered>,
}

impl SystemLock {
    /// Takes the lock on `/run/pinlab/system.lock`, waiting up to [`DEFAULT_TIMEOUT`]; the
    /// holder is recorded under this program's name.
    pub fn acquire() -> Result<SystemLock> {
        Self::acquire_within(DEFAULT_TIMEOUT)
    }

    /// Takes the lock on `/run/pinlab/system.lock` for a run of `scenario`, waiting up to
    /// [`DEFAULT_TIMEOUT`] and saying on stderr whom it waits for.
    pub fn acquire_for(scenario: &str) -> Result<SystemLock> {
        Self::acquire_with(
            &journal::run_dir().join(LOCK_FILE),
            scenario,
            DEFAULT_TIMEOUT,
            &mut |m| eprintln!("pinlab: {m}"),
        )
    }

    /// Takes the lock on `/run/pinlab/system.lock`, waiting up to `timeout`.
    pub fn acquire_within(timeout: Duration) -> Result<SystemLock> {
        Self::acquire_at(&journal::run_dir().join(LOCK_FILE), timeout)
    }

    /// Takes the lock on the file at `path` (its directory is created), waiting up to `timeout`,
    /// then recovers the dead runs' journals in that directory.
    pub fn acquire_at(path: &Path, timeout: Duration) -> Result<SystemLock> {
        Self::acquire_with(path, &program_name(), timeout, &mut |m| {
            eprintln!("pinlab: {m}")
        })
    }

    /// As [`acquire_at`](Self::acquire_at), recording `scenario` as the holder's, and handing
    /// each waiting notice (see [`waiting_notice`]) to `notice`.
    pub fn acquire_with(
        path: &Path,
        scenario: &str,
        timeout: Duration,
        notice: &mut dyn FnMut(&str),
    ) -> Result<SystemLock> {
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
        // The holder last announced; `Some(None)` once announced as unknown.
        let mut announced: Option<Option<Holder>> = None;
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
            let holder = read_holder(&mut file);
            // Announce a holder once it has recorded itself (or after the grace period), and
            // again whenever it changes.
            let due = holder.is_some() || start.elapsed() >= HOLDER_GRACE;
            if due && announced.as_ref() != Some(&holder) {
                notice(&waiting_notice(&holder, timeout));
                announced = Some(holder.clone());
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    path: path.to_path_buf(),
                    waited: start.elapsed(),
                    holder,
                });
            }
            thread::sleep(POLL);
        }
        let me = Holder {
            pid: std::process::id(),
            scenario: scenario.to_string(),
        };
        // For waiters only: failure to write does not matter. One write(2), so a waiter reads
        // nothing or all of it.
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        if let Ok(mut line) = serde_json::to_string(&me) {
            line.push('\n');
            let _ = file.write_all(line.as_bytes());
        }
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
            Err(Error::Timeout {
                holder: Some(holder),
                ..
            }) => {
                assert_eq!(holder.pid, std::process::id())
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

    #[test]
    fn a_waiter_says_who_holds_the_lock_and_gives_up_at_its_bound() {
        // A bug shows as a silent wait, a notice naming the wrong pid or scenario, a notice
        // repeated every poll, or a wait past its bound.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.lock");
        let _held =
            SystemLock::acquire_with(&path, "live-x", Duration::from_secs(1), &mut |_| {}).unwrap();
        let me = Holder {
            pid: std::process::id(),
            scenario: "live-x".into(),
        };
        assert_eq!(
            Holder::parse(&fs::read_to_string(&path).unwrap()),
            Some(me.clone())
        );
        let bound = Duration::from_millis(300);
        let mut notices = Vec::new();
        let res =
            SystemLock::acquire_with(&path, "live-y", bound, &mut |m| notices.push(m.to_string()));
        match res {
            Err(Error::Timeout { holder, waited, .. }) => {
                assert_eq!(holder, Some(me.clone()));
                assert!(waited >= bound, "gave up after {waited:?}");
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert_eq!(
            notices,
            vec![format!(
                "waiting for the system lock held by pid {} (scenario live-x), for up to 300ms",
                me.pid
            )]
        );
    }

    #[test]
    fn holder_parse_table() {
        // (lock file contents, holder) — a bare pid is what older binaries write.
        let cases = [
            (
                "{\"pid\":12,\"scenario\":\"ksm\"}\n",
                Some((12, "ksm".to_string())),
            ),
            ("34\n", Some((34, "unknown".to_string()))),
            ("", None),
            ("{\"pid\":", None),
        ];
        for (text, want) in cases {
            let got = Holder::parse(text).map(|h| (h.pid, h.scenario));
            assert_eq!(got, want, "{text:?}");
        }
    }
}
