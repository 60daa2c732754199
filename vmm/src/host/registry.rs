//! The process-global registry of what this process must undo before it dies: knob originals,
//! children it started, swapfiles it created; and the one lock under which this process changes
//! host state.
//!
//! It sits on the journal (`journal.rs`) and the primitives (`knobs.rs`, `swap.rs`), and below the
//! owners: `KnobGuard` (`knob_guard.rs`), `Swapfile` (`swapfile.rs`) and the code that spawns a
//! child change host state through it; their `Drop` undoes through it. Every change to the knob or
//! swapfile lists is mirrored to the journal `/run/pinlab/knobs-<pid>.json` (`journal.rs`), written
//! while anything is registered and removed when nothing is, for the path on which nothing in the
//! process runs (SIGKILL).
//!
//! Changing host state and restoring it are mutually exclusive: a knob is read, journaled and
//! written ([`set_knob`]), a swapfile journaled and created ([`begin_swapfile`]), activated
//! ([`activate_swapfile`]) or removed, all while the registry lock is held, and every change is
//! journaled before it is made. The SIGINT/SIGTERM thread restores through
//! [`restore_all_and_hold`], which takes the same lock (so it waits for a change in progress to
//! finish and then undoes it), and never releases it: the process `_exit`s holding it, so no
//! other thread starts a change after the restore. A restore of a swapfile attempts `swapoff`
//! whether or not `/proc/swaps` lists it yet. The zero-fill between a swapfile's creation and its
//! activation runs without the lock: a restore meanwhile unlinks the file under the writer, whose
//! `swapon` then never comes.
//!
//! A child is registered after its fork returns: one forked just before a restore takes the lock
//! stays unregistered (its parent thread blocks in [`register_child`]) and is not killed here;
//! the fork children of `perturb` exit by themselves when the `_exit` closes their release pipe.
//!
//! Each knob record is restored exactly once: it is written back and removed under the registry
//! lock, whoever (guard drop, panic hook, signal thread) gets there first. Records on one path are
//! restored as a stack whatever order their guards drop in: dropping an outer guard while an inner
//! one lives only hands the outer original down to the inner record.
//!
//! Nothing here may panic while the lock is held (the panic hook takes the same lock). It never
//! touches a PID that was not registered, i.e. one we did not start.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use super::{journal, knobs, swap};

/// Errors of this module; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the original: {0}")]
    ReadKnob(#[source] knobs::Error),
    #[error("journaling the original of knob {path}: {source}")]
    JournalKnob {
        path: PathBuf,
        source: journal::Error,
    },
    #[error("setting the knob: {0}")]
    WriteKnob(#[source] knobs::Error),
    #[error("journaling swapfile {path}: {source}")]
    JournalSwapfile {
        path: PathBuf,
        source: journal::Error,
    },
    #[error("creating the swapfile: {0}")]
    CreateSwapfile(#[source] swap::Error),
    #[error("activating the swapfile: {0}")]
    Swapon(#[source] swap::Error),
    #[error("removing the swapfile: {0}")]
    RemoveSwapfile(#[source] swap::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One knob's original value, held while a guard on it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnobRecord {
    pub id: u64,
    pub path: PathBuf,
    pub original: String,
}

struct State {
    next_id: u64,
    knobs: Vec<KnobRecord>,
    children: Vec<i32>,
    swapfiles: Vec<PathBuf>,
}

static STATE: Mutex<State> = Mutex::new(State {
    next_id: 1,
    knobs: Vec::new(),
    children: Vec::new(),
    swapfiles: Vec::new(),
});

fn state() -> MutexGuard<'static, State> {
    // A panic elsewhere must not stop the restore paths: the state stays consistent because
    // nothing panics while holding the lock.
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Like [`state`], but gives up after `timeout`: for the panic hook, which may run on a thread
/// that already holds the lock.
fn state_within(timeout: Duration) -> Option<MutexGuard<'static, State>> {
    let start = Instant::now();
    loop {
        match STATE.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

fn sync_journal(s: &State) -> std::result::Result<(), journal::Error> {
    let dir = &journal::run_dir();
    if s.knobs.is_empty() && s.swapfiles.is_empty() {
        return journal::remove(dir, std::process::id());
    }
    let j = journal::Journal::for_this_process(
        s.knobs
            .iter()
            .map(|k| journal::JournalKnob {
                path: k.path.clone(),
                original: k.original.clone(),
            })
            .collect(),
        s.swapfiles.clone(),
    );
    journal::write(dir, &j)
}

/// Under the registry lock: reads the knob at `path`, journals its original, writes `value`.
/// Returns the record's id and the original. On a failed write the original is written back
/// (a write may fail half way) and the record dropped.
pub(crate) fn set_knob(path: &Path, value: &str) -> Result<(u64, String)> {
    let mut s = state();
    let original = knobs::read_knob(path).map_err(Error::ReadKnob)?;
    let id = s.next_id;
    s.next_id += 1;
    s.knobs.push(KnobRecord {
        id,
        path: path.to_path_buf(),
        original: original.clone(),
    });
    if let Err(source) = sync_journal(&s) {
        s.knobs.pop();
        return Err(Error::JournalKnob {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Err(e) = knobs::write_knob(path, value) {
        if let Some(idx) = s.knobs.iter().position(|k| k.id == id) {
            if let Err(e) = restore_locked(&mut s, idx) {
                tracing::warn!("restoring knob after a failed write: {e}");
            }
        }
        return Err(Error::WriteKnob(e));
    }
    Ok((id, original))
}

fn restore_locked(s: &mut State, idx: usize) -> knobs::Result<()> {
    let rec = s.knobs[idx].clone();
    let later = s.knobs[idx + 1..]
        .iter()
        .position(|k| k.path == rec.path)
        .map(|p| p + idx + 1);
    let res = match later {
        // An inner guard on the same knob is live: it now owns the outermost original.
        Some(j) => {
            s.knobs[j].original = rec.original.clone();
            Ok(())
        }
        None => knobs::write_knob(&rec.path, &rec.original),
    };
    s.knobs.remove(idx);
    if let Err(e) = sync_journal(s) {
        tracing::warn!("updating knob journal: {e}");
    }
    res
}

/// Writes the original of record `id` back and forgets it; `None` when it was already restored.
pub(crate) fn restore_knob(id: u64) -> Option<knobs::Result<()>> {
    let mut s = state();
    let idx = s.knobs.iter().position(|k| k.id == id)?;
    Some(restore_locked(&mut s, idx))
}

fn restore_all_locked(s: &mut State) -> Vec<knobs::Error> {
    let mut errors = Vec::new();
    while let Some(idx) = s.knobs.len().checked_sub(1) {
        if let Err(e) = restore_locked(s, idx) {
            errors.push(e);
        }
    }
    errors
}

/// For the panic hook: restores every registered knob, newest first, and returns the failures;
/// `None` when the lock cannot be had within `timeout` (the panicking thread holds it, or the
/// signal thread is restoring), leaving it to `Drop` or to that thread.
pub(crate) fn restore_all_knobs_within(timeout: Duration) -> Option<Vec<knobs::Error>> {
    state_within(timeout).map(|mut s| restore_all_locked(&mut s))
}

/// Registers a child process we started, to be killed and reaped on SIGINT/SIGTERM.
pub fn register_child(pid: i32) {
    let mut s = state();
    if !s.children.contains(&pid) {
        s.children.push(pid);
    }
}

/// Forgets a child (after the owner reaped it itself).
pub fn unregister_child(pid: i32) {
    state().children.retain(|&p| p != pid);
}

/// Kills (SIGKILL) and reaps every registered child; returns the PIDs it reaped.
fn kill_children_locked(s: &mut State) -> Vec<i32> {
    let children = std::mem::take(&mut s.children);
    for &pid in &children {
        // SAFETY: kill(2) with a PID we registered as our own child; no memory is passed.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &children {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer to a local.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
    children
}

/// Under the registry lock: journals the swapfile `path`, then creates it (empty, mode 0600), so
/// that no moment exists when a file of ours is on disk and unrecorded.
pub(crate) fn begin_swapfile(path: &Path) -> Result<std::fs::File> {
    let mut s = state();
    s.swapfiles.push(path.to_path_buf());
    if let Err(source) = sync_journal(&s) {
        s.swapfiles.pop();
        return Err(Error::JournalSwapfile {
            path: path.to_path_buf(),
            source,
        });
    }
    swap::create_file(path).map_err(|e| {
        s.swapfiles.pop();
        if let Err(e) = sync_journal(&s) {
            tracing::warn!("updating knob journal: {e}");
        }
        Error::CreateSwapfile(e)
    })
}

/// Under the registry lock: `swapon` of a registered swapfile.
pub(crate) fn activate_swapfile(path: &Path) -> Result<()> {
    let _s = state();
    swap::swapon(path).map_err(Error::Swapon)
}

/// Under the registry lock: swaps off and unlinks a registered swapfile, then forgets it. On
/// failure it stays registered, for the signal path and journal recovery to try again.
pub(crate) fn remove_swapfile(path: &Path) -> Result<()> {
    let mut s = state();
    swap::deactivate_and_remove(path).map_err(Error::RemoveSwapfile)?;
    s.swapfiles.retain(|p| p != path);
    if let Err(e) = sync_journal(&s) {
        tracing::warn!("updating knob journal: {e}");
    }
    Ok(())
}

fn remove_swapfiles_locked(s: &mut State) -> Vec<swap::Error> {
    let mut errors = Vec::new();
    let mut kept = Vec::new();
    for path in std::mem::take(&mut s.swapfiles) {
        if let Err(e) = swap::deactivate_and_remove(&path) {
            errors.push(e);
            kept.push(path);
        }
    }
    s.swapfiles = kept;
    errors
}

/// What [`restore_all_and_hold`] did.
#[derive(Debug)]
pub(crate) struct Restored {
    pub reaped: Vec<i32>,
    pub knob_errors: Vec<knobs::Error>,
    pub swap_errors: Vec<swap::Error>,
}

/// For the SIGINT/SIGTERM path: takes the registry lock (waiting for a change in progress to
/// finish), kills and reaps registered children, restores every knob, removes every swapfile,
/// and removes the journal and any temporary journal when all of that worked (else the journal
/// keeps what is left, for recovery). The lock is never released: the caller is about to
/// `_exit`, and no other thread may change host state after this.
pub(crate) fn restore_all_and_hold() -> Restored {
    let mut s = state();
    let reaped = kill_children_locked(&mut s);
    let knob_errors = restore_all_locked(&mut s);
    let swap_errors = remove_swapfiles_locked(&mut s);
    if let Err(e) = sync_journal(&s) {
        tracing::warn!("updating knob journal: {e}");
    }
    std::mem::forget(s);
    Restored {
        reaped,
        knob_errors,
        swap_errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup_knob(dir: &Path, name: &str, value: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, value).unwrap();
        p
    }

    #[test]
    fn out_of_order_restore_keeps_stack_semantics() {
        // (drop order of three guards on one knob) -> the knob ends at its first value,
        // whatever the order; a bug shows as a middle value left behind.
        let orders: [[usize; 3]; 6] = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        let dir = tempfile::tempdir().unwrap();
        for order in orders {
            let knob = setup_knob(dir.path(), "k", "orig");
            let ids: Vec<u64> = ["a", "b", "c"]
                .iter()
                .map(|v| set_knob(&knob, v).unwrap().0)
                .collect();
            for i in order {
                restore_knob(ids[i]).unwrap().unwrap();
            }
            assert_eq!(knobs::read_knob(&knob).unwrap(), "orig", "order {order:?}");
            for id in ids {
                assert!(restore_knob(id).is_none(), "restored twice");
            }
        }
    }

    #[test]
    fn register_child_is_idempotent_and_unregister_forgets() {
        register_child(i32::MAX - 7);
        register_child(i32::MAX - 7);
        assert_eq!(
            state()
                .children
                .iter()
                .filter(|&&p| p == i32::MAX - 7)
                .count(),
            1
        );
        unregister_child(i32::MAX - 7);
        assert!(!state().children.contains(&(i32::MAX - 7)));
    }
}
