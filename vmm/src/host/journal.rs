//! The on-disk journal of knob originals and active swapfiles: `/run/pinlab/knobs-<pid>.json`.
//!
//! It owns the journal format, its atomic write (temporary file, fsync, rename) and recovery.
//! `registry.rs` keeps the journal equal to its own lists while anything is registered and removes
//! it when nothing is. A process killed with SIGKILL (or that lost power to its handlers) leaves
//! its journal behind; [`recover_stale_journals`] restores those knobs (newest record first, so a
//! knob set twice ends at its first original) and swaps off and unlinks those swapfiles. Call it at
//! startup of every command that touches knobs, holding the `SystemLock`.
//!
//! A journal is stale when its PID is dead, or alive with another start time (the PID was
//! reused). The current process's own journal is never recovered. Children are not journaled: a
//! dead run's children are not ours to kill.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{knobs, swap, RUN_DIR};

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
        source: Box<knobs::Error>,
    },
    #[error("removing a swapfile from journal {journal}: {source}")]
    RemoveSwapfile {
        journal: PathBuf,
        source: Box<swap::Error>,
    },
    #[error("reaching tracefs to remove the instances of journal {journal}: {source}")]
    OpenTracefs {
        journal: PathBuf,
        source: Box<crate::trace::tracefs::Error>,
    },
    #[error("removing tracefs instance {name} from journal {journal}: {source}")]
    RemoveTracefsInstance {
        journal: PathBuf,
        name: String,
        source: Box<crate::trace::tracefs::Error>,
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

/// A tracefs instance as journaled: its name under `instances/`, and the host's tracefs mount
/// it was made through (`None`: pinlab's own detached mount, gone with the process; recovery
/// reaches tracefs its own way).
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
    pub fn for_this_process(
        knobs: Vec<JournalKnob>,
        swapfiles: Vec<PathBuf>,
        tracefs_instances: Vec<JournalTracefs>,
    ) -> Journal {
        let pid = std::process::id();
        Journal {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            knobs,
            swapfiles,
            tracefs_instances,
        }
    }
}

/// What [`recover_stale_journals`] did for one dead process.
#[derive(Debug)]
pub struct Recovered {
    pub journal: PathBuf,
    pub pid: u32,
    /// (knob, value written back)
    pub restored: Vec<(PathBuf, String)>,
    pub swapfiles_removed: Vec<PathBuf>,
    pub tracefs_instances_removed: Vec<String>,
    /// Failures; when not empty the journal is kept for another try.
    pub errors: Vec<Error>,
}

/// The journal file of `pid` in `dir`.
pub fn journal_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("knobs-{pid}.json"))
}

/// Start time of `pid` (field 22 of `/proc/<pid>/stat`), `None` if it does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with field 3 (state); field 22 is the 20th from there.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Writes `journal` atomically to `dir/knobs-<pid>.json`.
pub(crate) fn write(dir: &Path, journal: &Journal) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = journal_path(dir, journal.pid);
    let tmp = dir.join(format!(".knobs-{}.json.tmp", journal.pid));
    let werr = |source| Error::Write {
        path: tmp.clone(),
        source,
    };
    let body = serde_json::to_vec_pretty(journal).map_err(|e| werr(io::Error::other(e)))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(&body).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    fs::rename(&tmp, &path).map_err(|source| Error::Rename {
        from: tmp.clone(),
        to: path.clone(),
        source,
    })
}

/// Removes `dir/knobs-<pid>.json` if present.
pub(crate) fn remove(dir: &Path, pid: u32) -> Result<()> {
    let path = journal_path(dir, pid);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Remove { path, source: e }),
        _ => Ok(()),
    }
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

/// Restores what SIGKILLed pinlab runs left in `/run/pinlab`.
pub fn recover_stale_journals() -> Result<Vec<Recovered>> {
    recover_stale_journals_in(Path::new(RUN_DIR))
}

/// Restores what dead processes' journals in `dir` record; live processes' journals are left alone.
pub fn recover_stale_journals_in(dir: &Path) -> Result<Vec<Recovered>> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(|source| Error::List {
            path: dir.to_path_buf(),
            source,
        })?,
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::List {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("knobs-") && name.ends_with(".json")) {
            continue;
        }
        let path = entry.path();
        let journal = read(&path)?;
        if !is_stale(&journal) {
            continue;
        }
        let mut rec = Recovered {
            journal: path.clone(),
            pid: journal.pid,
            restored: Vec::new(),
            swapfiles_removed: Vec::new(),
            tracefs_instances_removed: Vec::new(),
            errors: Vec::new(),
        };
        for k in journal.knobs.iter().rev() {
            match knobs::write_knob(&k.path, &k.original) {
                Ok(()) => rec.restored.push((k.path.clone(), k.original.clone())),
                Err(source) => rec.errors.push(Error::RestoreKnob {
                    journal: path.clone(),
                    source: Box::new(source),
                }),
            }
        }
        for s in &journal.swapfiles {
            match swap::deactivate_and_remove(s) {
                Ok(()) => rec.swapfiles_removed.push(s.clone()),
                Err(source) => rec.errors.push(Error::RemoveSwapfile {
                    journal: path.clone(),
                    source: Box::new(source),
                }),
            }
        }
        if !journal.tracefs_instances.is_empty() {
            remove_tracefs_instances(&path, &journal.tracefs_instances, &mut rec);
        }
        if rec.errors.is_empty() {
            fs::remove_file(&path).map_err(|source| Error::Remove {
                path: path.clone(),
                source,
            })?;
        }
        out.push(rec);
    }
    Ok(out)
}

/// Removes a dead run's tracefs instances (tracefs reached as a traced run reaches it).
fn remove_tracefs_instances(journal: &Path, list: &[JournalTracefs], rec: &mut Recovered) {
    use crate::trace::tracefs;
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
            vec![JournalTracefs {
                name: "pinlab-1".into(),
                host_mount: None,
            }],
        );
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
}
