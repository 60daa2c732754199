//! The on-disk journal of knob originals and active swapfiles: `/run/pinlab/knobs-<pid>.json`.
//!
//! It owns the run directory, the journal format, its atomic write (temporary file, fsync, rename)
//! and recovery. It sits on the primitives (`knobs.rs`, `swap.rs`) and knows nothing of the
//! in-process registry or the guards: `registry.rs` keeps the journal equal to its own lists while
//! anything is registered and removes it when nothing is. A process killed with SIGKILL (or that
//! lost power to its handlers) leaves its journal behind; [`recover_stale_journals`] restores those
//! knobs (newest record first, so a knob set twice ends at its first original) and swaps off and
//! unlinks those swapfiles, and removes their tracefs instances (through the tracefs primitive in
//! `trace::tracefs`, which knows nothing of journals). It runs under the `SystemLock`: acquiring
//! the lock calls it first.
//!
//! A journal is stale when its PID is dead, or alive with another start time (the PID was
//! reused). The current process's own journal is never recovered. Children are not journaled: a
//! dead run's children are not ours to kill.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{knobs, swap};
use crate::trace::tracefs;

/// Where pinlab keeps its lock and journals.
pub const RUN_DIR: &str = "/run/pinlab";

/// The directory this process journals into and recovers from: [`RUN_DIR`], or in this crate's
/// unit tests the one a test process chose with [`set_run_dir_for_test`].
pub(crate) fn run_dir() -> PathBuf {
    #[cfg(test)]
    if let Some(dir) = TEST_RUN_DIR.get() {
        return dir.clone();
    }
    PathBuf::from(RUN_DIR)
}

#[cfg(test)]
static TEST_RUN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// For child processes of unit tests: journal into `dir` instead of [`RUN_DIR`] (first call wins).
#[cfg(test)]
pub(crate) fn set_run_dir_for_test(dir: &Path) {
    let _ = TEST_RUN_DIR.set(dir.to_path_buf());
}

/// Errors of this module; each names the operation that failed and the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating journal directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("writing journal {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("renaming journal {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("removing journal {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("listing journals in {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("reading journal {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("parsing journal {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("restoring a knob from journal {journal}: {source}")]
    RestoreKnob {
        journal: PathBuf,
        source: knobs::Error,
    },
    #[error("removing a swapfile from journal {journal}: {source}")]
    RemoveSwapfile {
        journal: PathBuf,
        source: swap::Error,
    },
    #[error("reaching tracefs to remove the instances of journal {journal}: {source}")]
    OpenTracefs {
        journal: PathBuf,
        source: Box<tracefs::Error>,
    },
    #[error("removing tracefs instance {name} from journal {journal}: {source}")]
    RemoveTracefsInstance {
        journal: PathBuf,
        name: String,
        source: Box<tracefs::Error>,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One knob's original as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalKnob {
    pub path: PathBuf,
    pub original: String,
}

/// A tracefs instance as journaled: its name under `instances/`, and the host's tracefs mount it
/// was made through (`None`: pinlab's own detached mount, gone with the process; recovery reaches
/// tracefs its own way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalTracefs {
    pub name: String,
    pub host_mount: Option<PathBuf>,
}

/// What one process must undo, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot), to tell a reused PID.
    pub start_time: u64,
    /// In registration order; recovery restores them in reverse.
    pub knobs: Vec<JournalKnob>,
    pub swapfiles: Vec<PathBuf>,
    /// tracefs instances made (journals written before tracing existed have none).
    #[serde(default)]
    pub tracefs_instances: Vec<JournalTracefs>,
}

impl Journal {
    /// A journal for the calling process.
    pub fn for_this_process(knobs: Vec<JournalKnob>, swapfiles: Vec<PathBuf>) -> Journal {
        let pid = std::process::id();
        Journal {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            knobs,
            swapfiles,
            tracefs_instances: Vec::new(),
        }
    }

    /// The same journal with these tracefs instances.
    pub fn with_tracefs(mut self, instances: Vec<JournalTracefs>) -> Journal {
        self.tracefs_instances = instances;
        self
    }
}

/// What [`recover_stale_journals`] did with one dead process's journal (or its temporary file).
#[derive(Debug)]
pub struct Recovered {
    /// The journal, or the temporary file when only that was left.
    pub journal: PathBuf,
    pub pid: u32,
    /// (knob, value written back)
    pub restored: Vec<(PathBuf, String)>,
    /// Knobs that no longer exist (ENOENT): nothing to restore.
    pub missing: Vec<PathBuf>,
    pub swapfiles_removed: Vec<PathBuf>,
    /// tracefs instances removed (or found gone).
    pub tracefs_instances_removed: Vec<String>,
    /// Failures; when not empty the journal is kept for another try (an unparsable one for a
    /// human to look at).
    pub errors: Vec<Error>,
}

impl Recovered {
    fn empty(journal: PathBuf, pid: u32) -> Recovered {
        Recovered {
            journal,
            pid,
            restored: Vec::new(),
            missing: Vec::new(),
            swapfiles_removed: Vec::new(),
            tracefs_instances_removed: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl std::fmt::Display for Recovered {
    /// One line: what was undone for which dead run, and what failed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} of dead run pid {}:",
            if self.errors.is_empty() {
                "recovered"
            } else {
                "could not fully recover"
            },
            self.journal.display(),
            self.pid
        )?;
        let restored: Vec<String> = self
            .restored
            .iter()
            .map(|(p, v)| format!("{}={v}", p.display()))
            .collect();
        let mut parts = Vec::new();
        if !restored.is_empty() {
            parts.push(format!("restored {}", restored.join(", ")));
        }
        for p in &self.missing {
            parts.push(format!("{} no longer exists", p.display()));
        }
        for p in &self.swapfiles_removed {
            parts.push(format!("removed swapfile {}", p.display()));
        }
        for e in &self.errors {
            parts.push(e.to_string());
        }
        if !self.errors.is_empty() {
            parts.push("journal kept".into());
        } else if parts.is_empty() {
            parts.push("nothing left to undo; removed".into());
        }
        write!(f, " {}", parts.join("; "))
    }
}

/// The journal file of `pid` in `dir`.
pub fn journal_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("knobs-{pid}.json"))
}

/// Start time of a living `pid` (field 22 of `/proc/<pid>/stat`); `None` if it does not exist
/// or has exited and is only a zombie (state `Z` or `X`: it can change nothing any more, so its
/// journal is a dead run's).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // Field 3 is the state; field 22 is the 19th after it.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Writes `journal` atomically to `dir/knobs-<pid>.json`.
pub(crate) fn write(dir: &Path, journal: &Journal) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = journal_path(dir, journal.pid);
    let tmp = tmp_path(dir, journal.pid);
    let werr = |source| Error::Write {
        path: tmp.clone(),
        source,
    };
    let body = serde_json::to_vec_pretty(journal).map_err(|e| werr(io::Error::other(e)))?;
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&body)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(werr(e));
    }
    fs::rename(&tmp, &path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::Rename {
            from: tmp.clone(),
            to: path.clone(),
            source,
        }
    })
}

/// The temporary file a journal of `pid` is written to before the rename.
pub fn tmp_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!(".knobs-{pid}.json.tmp"))
}

fn remove_if_present(path: PathBuf) -> Result<()> {
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Remove { path, source: e }),
        _ => Ok(()),
    }
}

/// Removes `dir/knobs-<pid>.json` and its temporary file if present.
pub(crate) fn remove(dir: &Path, pid: u32) -> Result<()> {
    remove_if_present(tmp_path(dir, pid))?;
    remove_if_present(journal_path(dir, pid))
}

/// Reads one journal file.
pub fn read(path: &Path) -> Result<Journal> {
    let body = fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&body).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn is_stale(j: &Journal) -> bool {
    j.pid != std::process::id() && process_start_time(j.pid) != Some(j.start_time)
}

/// Restores what SIGKILLed pinlab runs left in `/run/pinlab`. Call it holding the `SystemLock`
/// (acquiring it does).
pub fn recover_stale_journals() -> Result<Vec<Recovered>> {
    recover_stale_journals_in(&run_dir())
}

/// What a file name in the run directory is: (pid, is the temporary file).
fn parse_name(name: &str) -> Option<(u32, bool)> {
    if let Some(pid) = name
        .strip_prefix("knobs-")
        .and_then(|r| r.strip_suffix(".json"))
    {
        return Some((pid.parse().ok()?, false));
    }
    let pid = name
        .strip_prefix(".knobs-")
        .and_then(|r| r.strip_suffix(".json.tmp"))?;
    Some((pid.parse().ok()?, true))
}

/// Undoes one stale journal: knobs newest first, then swapfiles; removes it when all worked.
fn recover_one(path: &Path, journal: &Journal) -> Recovered {
    let mut rec = Recovered::empty(path.to_path_buf(), journal.pid);
    for k in journal.knobs.iter().rev() {
        match knobs::write_knob(&k.path, &k.original) {
            Ok(()) => rec.restored.push((k.path.clone(), k.original.clone())),
            Err(e) if e.is_not_found() => rec.missing.push(k.path.clone()),
            Err(source) => rec.errors.push(Error::RestoreKnob {
                journal: path.to_path_buf(),
                source,
            }),
        }
    }
    for s in &journal.swapfiles {
        match swap::deactivate_and_remove(s) {
            Ok(()) => rec.swapfiles_removed.push(s.clone()),
            Err(source) => rec.errors.push(Error::RemoveSwapfile {
                journal: path.to_path_buf(),
                source,
            }),
        }
    }
    if !journal.tracefs_instances.is_empty() {
        remove_tracefs_instances(path, &journal.tracefs_instances, &mut rec);
    }
    if rec.errors.is_empty() {
        if let Err(e) = remove_if_present(path.to_path_buf()) {
            rec.errors.push(e);
        }
    }
    rec
}

/// Removes a dead run's tracefs instances (tracefs reached as a traced run reaches it).
fn remove_tracefs_instances(journal: &Path, list: &[JournalTracefs], rec: &mut Recovered) {
    let fs = match tracefs::Tracefs::open() {
        Ok(fs) => fs,
        Err(source) => {
            rec.errors.push(Error::OpenTracefs {
                journal: journal.to_path_buf(),
                source: Box::new(source),
            });
            return;
        }
    };
    for t in list {
        match tracefs::remove_instance(&fs.instance_dir(&t.name)) {
            Ok(_) => rec.tracefs_instances_removed.push(t.name.clone()),
            Err(source) => rec.errors.push(Error::RemoveTracefsInstance {
                journal: journal.to_path_buf(),
                name: t.name.clone(),
                source: Box::new(source),
            }),
        }
    }
}

/// Restores what dead processes' journals in `dir` record, and removes their temporary journal
/// files (a write that never reached its rename: the change it recorded was not made yet). Live
/// processes' files are left alone. A journal that cannot be read or parsed is reported in its
/// entry's `errors` and kept; the others are recovered all the same. Fails only when `dir`
/// cannot be listed.
pub fn recover_stale_journals_in(dir: &Path) -> Result<Vec<Recovered>> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(|source| Error::List {
            path: dir.to_path_buf(),
            source,
        })?,
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::List {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some((pid, tmp)) = parse_name(&entry.file_name().to_string_lossy()) {
            names.push((tmp, entry.path(), pid));
        }
    }
    // Journals before temporary files, each in name order: a stable report.
    names.sort();
    let mut out = Vec::new();
    for (tmp, path, pid) in names {
        let alive = pid == std::process::id() || process_start_time(pid).is_some();
        if tmp {
            if !alive {
                let mut rec = Recovered::empty(path.clone(), pid);
                if let Err(e) = remove_if_present(path) {
                    rec.errors.push(e);
                }
                out.push(rec);
            }
            continue;
        }
        match read(&path) {
            Ok(journal) if is_stale(&journal) => out.push(recover_one(&path, &journal)),
            Ok(_) => {}
            // A live process's file that does not parse is not ours to judge.
            Err(_) if alive => {}
            Err(e) => {
                let mut rec = Recovered::empty(path, pid);
                rec.errors.push(e);
                out.push(rec);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn start_time_of_self_and_of_a_dead_pid() {
        assert!(process_start_time(std::process::id()).is_some());
        assert_eq!(process_start_time(dead_pid()), None);
        // An exited, unreaped child is a zombie: its journal is a dead run's.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        });
        assert!(zombie, "the child never became a zombie");
        assert_eq!(process_start_time(pid), None, "a zombie counts as alive");
        let mut child = child;
        child.wait().unwrap();
    }

    #[test]
    fn write_then_read_round_trips_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::for_this_process(
            vec![JournalKnob {
                path: "/x".into(),
                original: "madvise".into(),
            }],
            vec!["/s".into()],
        )
        .with_tracefs(vec![JournalTracefs {
            name: "pinlab-1".into(),
            host_mount: None,
        }]);
        write(dir.path(), &j).unwrap();
        assert_eq!(read(&journal_path(dir.path(), j.pid)).unwrap(), j);
        remove(dir.path(), j.pid).unwrap();
        remove(dir.path(), j.pid).unwrap();
        assert!(!journal_path(dir.path(), j.pid).exists());
    }

    #[test]
    fn recovery_table() {
        // (journal owner, expected knob value afterwards, journal kept?)
        // A bug shows as a live run's knob being "restored" under it, or a dead run's left set.
        let me = std::process::id();
        let my_start = process_start_time(me).unwrap();
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        let parent_start = process_start_time(parent).unwrap();
        let dead = dead_pid();
        let cases = [
            ("dead pid", dead, 0, "orig", false),
            (
                "live pid, same start time",
                parent,
                parent_start,
                "set",
                true,
            ),
            (
                "reused pid: alive, other start time",
                parent,
                parent_start + 1,
                "orig",
                false,
            ),
            ("this process", me, my_start, "set", true),
        ];
        for (what, pid, start_time, want, kept) in cases {
            let dir = tempfile::tempdir().unwrap();
            let knob = dir.path().join("knob");
            fs::write(&knob, "set").unwrap();
            // The knob was set twice: recovery must end at the first original.
            let j = Journal {
                pid,
                start_time,
                knobs: vec![
                    JournalKnob {
                        path: knob.clone(),
                        original: "orig".into(),
                    },
                    JournalKnob {
                        path: knob.clone(),
                        original: "middle".into(),
                    },
                ],
                swapfiles: vec![],
                tracefs_instances: vec![],
            };
            write(dir.path(), &j).unwrap();
            let rec = recover_stale_journals_in(dir.path()).unwrap();
            assert_eq!(knobs::read_knob(&knob).unwrap(), want, "{what}");
            assert_eq!(journal_path(dir.path(), pid).exists(), kept, "{what}");
            assert_eq!(rec.len(), usize::from(!kept), "{what}");
        }
    }

    #[test]
    fn a_knob_that_no_longer_exists_is_reported_not_retried() {
        // A dead run's temporary knob (a test's file, a sysfs knob of an unloaded module) is gone:
        // a bug shows as the journal kept forever and reported as a failure on every run.
        let dir = tempfile::tempdir().unwrap();
        let knob = dir.path().join("knob");
        fs::write(&knob, "set").unwrap();
        let gone = dir.path().join("gone");
        let j = Journal {
            pid: dead_pid(),
            start_time: 0,
            knobs: vec![
                JournalKnob {
                    path: knob.clone(),
                    original: "orig".into(),
                },
                JournalKnob {
                    path: gone.clone(),
                    original: "1".into(),
                },
            ],
            swapfiles: vec![],
            tracefs_instances: vec![],
        };
        write(dir.path(), &j).unwrap();
        let rec = recover_stale_journals_in(dir.path()).unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].restored, vec![(knob.clone(), "orig".to_string())]);
        assert_eq!(rec[0].missing, vec![gone.clone()]);
        assert!(rec[0].errors.is_empty(), "{:?}", rec[0].errors);
        assert!(!journal_path(dir.path(), j.pid).exists());
        let line = rec[0].to_string();
        assert!(line.starts_with("recovered "), "{line}");
        assert!(
            line.contains("=orig") && line.contains("no longer exists"),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(!gone.exists(), "recovery must not create a knob");
    }
}
