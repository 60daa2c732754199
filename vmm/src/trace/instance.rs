//! `Instance`: this run's private tracefs instance (`instances/pinlab-<pid>`), held by an owner.
//!
//! It owns the instance directory's lifetime: the instance is recorded with the host registry (and
//! through it in the on-disk journal) *before* `mkdir`, and removed on drop; the registry's signal
//! path removes it on SIGINT/SIGTERM, and the next run's journal recovery after a SIGKILL. It also
//! reads the per-CPU ring-buffer statistics. It knows nothing of which events are traced (that is
//! `session`), and touches nothing outside its own directory.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::tracefs::{self, InstanceFile, Tracefs};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating tracefs instance {name}: {source}")]
    Create {
        name: String,
        source: Box<crate::host::errors::RegistryError>,
    },
    #[error("removing tracefs instance {name}: {source}")]
    Remove {
        name: String,
        source: Box<crate::host::errors::RegistryError>,
    },
    #[error("instance {name} already exists (another run with this PID did not clean up?)")]
    Exists { name: String },
    #[error(transparent)]
    Tracefs(#[from] tracefs::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One CPU's ring-buffer statistics (`per_cpu/cpuN/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    pub cpu: u32,
    pub entries: u64,
    /// Events overwritten before they were read (overwrite mode).
    pub overrun: u64,
    pub commit_overrun: u64,
    /// Events dropped because the buffer was full (non-overwrite mode).
    pub dropped_events: u64,
    pub read_events: u64,
    pub bytes: u64,
}

impl CpuStats {
    /// Events this CPU lost, however it lost them.
    pub fn lost(&self) -> u64 {
        self.overrun + self.commit_overrun + self.dropped_events
    }
}

/// Parses a `per_cpu/cpuN/stats` file.
pub fn parse_stats(cpu: u32, text: &str) -> CpuStats {
    let mut s = CpuStats {
        cpu,
        ..Default::default()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k.trim() {
            "entries" => s.entries = v,
            "overrun" => s.overrun = v,
            "commit overrun" => s.commit_overrun = v,
            "dropped events" => s.dropped_events = v,
            "read events" => s.read_events = v,
            "bytes" => s.bytes = v,
            _ => {}
        }
    }
    s
}

/// The instance, removed when dropped.
#[derive(Debug)]
pub struct Instance {
    dir: PathBuf,
    name: String,
    /// The registry's record; `None` once removed.
    record: Option<u64>,
}

impl Instance {
    /// Journals, then creates `instances/<name>` on `fs`.
    pub fn create(fs: &Tracefs, name: &str) -> Result<Instance> {
        let dir = fs.instance_dir(name);
        if dir.exists() {
            return Err(Error::Exists {
                name: name.to_string(),
            });
        }
        // Journaled, then made, under the host registry's lock (a signal's restore waits).
        let record =
            crate::host::make_tracefs_instance(name, fs.host_mount(), &dir).map_err(|source| {
                Error::Create {
                    name: name.to_string(),
                    source: Box::new(source),
                }
            })?;
        Ok(Instance {
            dir,
            name: name.to_string(),
            record: Some(record),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a control file of the instance (`trace_clock`, `events/kvm/enable`, ...).
    pub fn write(&self, rel: &str, value: &str) -> Result<()> {
        Ok(tracefs::write(&self.dir.join(rel), value)?)
    }

    /// Appends to a control file (`set_event_pid` adds PIDs this way).
    pub fn append(&self, rel: &str, value: &str) -> Result<()> {
        Ok(tracefs::append(&self.dir.join(rel), value)?)
    }

    /// Reads a file of the instance.
    pub fn read(&self, rel: &str) -> Result<String> {
        Ok(tracefs::read(&self.dir.join(rel))?)
    }

    /// Opens a file of the instance for the run (listed, see `tracefs`).
    pub fn open(&self, rel: &str, opts: &OpenOptions) -> Result<InstanceFile> {
        Ok(InstanceFile::open(&self.dir, rel, opts)?)
    }

    /// Every CPU's ring-buffer statistics.
    pub fn cpu_stats(&self) -> Vec<CpuStats> {
        let mut out = Vec::new();
        for cpu in 0.. {
            let path = self.dir.join(format!("per_cpu/cpu{cpu}/stats"));
            match tracefs::read(&path) {
                Ok(text) => out.push(parse_stats(cpu, &text)),
                Err(_) => break,
            }
        }
        out
    }

    /// Removes the instance now and says whether that worked (drop only logs).
    pub fn remove(mut self) -> Result<()> {
        self.remove_now()
    }

    fn remove_now(&mut self) -> Result<()> {
        let Some(record) = self.record.take() else {
            return Ok(());
        };
        // `None`: the signal path removed it already. A failed rmdir stays journaled for the
        // next run's recovery to retry.
        match crate::host::remove_tracefs_instance(record) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(source)) => Err(Error::Remove {
                name: self.name.clone(),
                source: Box::new(source),
            }),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.remove_now() {
            tracing::warn!("removing tracefs instance {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parse_every_loss_counter() {
        let text = "entries: 5\noverrun: 7\ncommit overrun: 1\nbytes: 180\noldest event ts:  1419.090256\nnow ts:  1419.456328\ndropped events: 2\nread events: 9\n";
        let s = parse_stats(1, text);
        assert_eq!(
            s,
            CpuStats {
                cpu: 1,
                entries: 5,
                overrun: 7,
                commit_overrun: 1,
                dropped_events: 2,
                read_events: 9,
                bytes: 180,
            }
        );
        assert_eq!(s.lost(), 10);
    }
}
