//! Host perf tracing: the kernel's own account of a run, on one clock with the lab's timeline.
//!
//! A traced run (`pinlab run --trace FILE`, or `[trace] file` in the scenario) gets a private
//! tracefs instance (`instances/pinlab-<pid>`, `trace_clock = mono`), the catalogue's events where
//! the kernel has them, filtered to this run (guest RAM's address range, the VMM and its fork
//! children, ksmd/khugepaged/kcompactd/kswapd by PID), the lab's timeline written into the
//! instance's `trace_marker`, a reader thread draining the ring buffer, /proc/vmstat and perf
//! counters sampled at every boundary, and, at the end, FILE as Chrome trace-event JSON
//! (ui.perfetto.dev opens it), FILE.ftrace.txt as the raw text, and the kernel's account of each
//! action in the run's result. See docs/tracing.md.
//!
//! Modules, bottom up: `tracefs` (reaching tracefs, removing an instance: primitives the host's
//! registry and journal call too), `instance` (the instance's owner), `events` (the catalogue and
//! filters), `parse` (text to records and typed events), `markers` (the timeline's sink),
//! `sampler` and `perf` (counters at boundaries), `reader` (the drain thread), `chrome` (the JSON
//! file and its checker), `account` (per-action analysis), `report` (the result's shape),
//! `session` (`Tracer`: the order of it all), `probe` (`pinlab host`), `toggle` (the kernel side
//! switched on and off, for `pinlab bench` to measure tracing's cost).
//!
//! Host state: the only state tracing leaves on the host is the instance directory. It is
//! journaled before it is made and removed on drop, on SIGINT/SIGTERM (the host registry's
//! restore path) and by the next run's recovery after a SIGKILL. When tracefs is not mounted the
//! lab does not mount it anywhere the host can see: it uses a detached mount (`fsmount`) that
//! exists only as an fd of this process (see `tracefs`).

pub mod account;
pub mod chrome;
pub mod events;
pub mod instance;
pub mod markers;
pub mod parse;
pub mod perf;
pub mod probe;
pub mod reader;
pub mod report;
pub mod sampler;
pub mod session;
pub mod toggle;
pub mod tracefs;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

pub use report::{TraceReport, TraceStatus};
pub use session::{raw_path, Tracer};

/// Why FILE cannot be the trace's output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--trace {path}: cannot write it: {source}")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--trace {path}: not a directory (matrix and sweep write one file per scenario)")]
    NotDirectory { path: PathBuf },
    #[error("--trace {path}: stat: {source}")]
    StatDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--trace {path}: cannot create files in it: {source}")]
    UnwritableDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks, before the VM starts, that FILE and FILE.ftrace.txt can be written. Changes nothing:
/// an existing file is opened without truncation, a new one is removed again.
pub fn check_output(file: &Path) -> Result<(), Error> {
    for p in [file.to_path_buf(), raw_path(file)] {
        let existed = p.exists();
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|source| Error::Unwritable {
                path: p.clone(),
                source,
            })?;
        if !existed {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

/// Checks, before any scenario runs, that `dir` is a directory this process can create files
/// in (`matrix`/`sweep --trace DIR`). Creates one probe file (new, never an existing one) and
/// removes it again.
pub fn check_dir(dir: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(dir).map_err(|source| Error::StatDir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::NotDirectory {
            path: dir.to_path_buf(),
        });
    }
    let probe = dir.join(format!(".pinlab-trace-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|source| Error::UnwritableDir {
            path: dir.to_path_buf(),
            source,
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Where `matrix --trace DIR` writes a scenario's trace: `DIR/<scenario>.json`.
pub fn matrix_trace_path(dir: &Path, scenario: &str) -> PathBuf {
    let safe: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_check_refuses_a_missing_directory_and_accepts_a_writable_one() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("t.json");
        check_output(&ok).unwrap();
        assert!(!ok.exists() && !raw_path(&ok).exists(), "left files behind");
        std::fs::write(&ok, "old").unwrap();
        check_output(&ok).unwrap();
        assert_eq!(std::fs::read_to_string(&ok).unwrap(), "old");
        let bad = dir.path().join("no/such/dir/t.json");
        match check_output(&bad) {
            Err(Error::Unwritable { path, .. }) => assert_eq!(path, bad),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn directory_check_refuses_a_file_a_missing_and_a_read_only_directory() {
        let dir = tempfile::tempdir().unwrap();
        check_dir(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "left the probe"
        );
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(check_dir(&file), Err(Error::NotDirectory { .. })));
        assert!(matches!(
            check_dir(&dir.path().join("missing")),
            Err(Error::StatDir { .. })
        ));
        // /proc is a directory nobody can create files in, root included.
        assert!(matches!(
            check_dir(Path::new("/proc")),
            Err(Error::UnwritableDir { .. })
        ));
    }

    #[test]
    fn matrix_paths_are_one_file_per_scenario() {
        assert_eq!(
            matrix_trace_path(Path::new("/t"), "live-ksm"),
            PathBuf::from("/t/live-ksm.json")
        );
        assert_eq!(
            matrix_trace_path(Path::new("/t"), "a/b c"),
            PathBuf::from("/t/a_b_c.json")
        );
    }
}
