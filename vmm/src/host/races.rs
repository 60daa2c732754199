//! Tests across processes: a run killed while it changes host state, and a run that waits for
//! the lock of a run that dies.
//!
//! Each case re-executes this test binary as a child (`race_child_entry`). In the signal cases the
//! child installs the restore handlers and changes host state in a loop on its main thread, the
//! way a run does while its signal thread waits; the parent signals it at 0, 1, 2, ... ms after it
//! reports ready, and after every kill checks what a bug would leave: a knob not at its original
//! (a write that landed after the restore), a journal or a `.tmp` journal (written after the
//! restore removed them). In the lock case the child holds the lock with a knob changed and is
//! SIGKILLed while the parent waits for the lock. Children journal into a temporary directory
//! (with its own lock file); only the swap cases take the real system lock, because swap areas
//! are system-wide.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::knob_guard::KnobGuard;
use super::lock::{SystemLock, LOCK_FILE};
use super::swapfile::Swapfile;
use super::{journal, knobs, signals, swap};

/// The child's mode: "knobs" (set and restore `KNOBS` in a loop), "swap" (create and remove a
/// swapfile of `SWAP_BYTES` in `SWAP_DIR_ENV` in a loop), "hold" (hold the lock in the run
/// directory with `HELD_KNOB` changed).
const CHILD_ENV: &str = "PINLAB_RACE_CHILD";
/// The child's run directory (journals; the knob files of "knobs").
const DIR_ENV: &str = "PINLAB_RACE_DIR";
/// Where the "swap" child puts its swapfiles (a disk filesystem: not tmpfs).
const SWAP_DIR_ENV: &str = "PINLAB_RACE_SWAP_DIR";
/// Big enough that the zero-fill takes a few ms, so 1 ms steps land in it.
const SWAP_BYTES: u64 = 8 << 20;

/// (knob file, original, value the child sets): KSM's knobs in `Ksm::start`'s order.
const KNOBS: [(&str, &str, &str); 4] = [
    ("advisor_mode", "scan-time", "none"),
    ("sleep_millisecs", "20", "1"),
    ("pages_to_scan", "100", "10000"),
    ("run", "0", "1"),
];

/// The knob the "hold" child changes from "orig" to "changed".
const HELD_KNOB: &str = "held";

/// Kills per case: delays 0..STEPS ms after ready, SIGINT and SIGTERM alternating.
const STEPS: u64 = 40;

/// Not a test by itself: a no-op unless re-executed by a parent test with `CHILD_ENV` set.
#[test]
fn race_child_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    journal::set_run_dir_for_test(&dir);
    signals::install_restore_handlers().unwrap();
    match mode.as_str() {
        "knobs" => {
            println!("ready");
            loop {
                let guards: Vec<KnobGuard> = KNOBS
                    .iter()
                    .map(|(k, _, v)| KnobGuard::set(dir.join(k), v).unwrap())
                    .collect();
                drop(guards);
            }
        }
        "swap" => {
            let swap_dir = PathBuf::from(std::env::var(SWAP_DIR_ENV).unwrap());
            println!("ready");
            loop {
                drop(Swapfile::create(&swap_dir, SWAP_BYTES).unwrap());
            }
        }
        "hold" => {
            let _lock =
                SystemLock::acquire_at(&dir.join(LOCK_FILE), Duration::from_secs(10)).unwrap();
            let _guard = KnobGuard::set(dir.join(HELD_KNOB), "changed").unwrap();
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
            panic!("hold child was not killed within 60 s");
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Starts the child in `mode` and waits until it is ready.
fn setup_child(mode: &str, dir: &Path) -> Child {
    setup_child_with(mode, dir, None)
}

fn setup_child_with(mode: &str, dir: &Path, swap_dir: Option<&Path>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if let Some(d) = swap_dir {
        cmd.env(SWAP_DIR_ENV, d);
    }
    let mut child = cmd
        .args([
            "--exact",
            "host::races::race_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            // libtest prints "test <name> ... " without a newline before the test runs.
            Some(Ok(line)) if line.ends_with("ready") => return child,
            Some(Ok(_)) => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child ended before ready: {other:?}");
            }
        }
    }
}

/// Signals `child` after `delay` and waits for it (30 s, then SIGKILL and panic).
fn kill_after(mut child: Child, delay: Duration, signal: i32) -> ExitStatus {
    std::thread::sleep(delay);
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not exit within 30 s of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The journal and temporary journal of `pid` in `dir` that exist.
fn leftover_journals(dir: &Path, pid: u32) -> Vec<PathBuf> {
    [
        journal::journal_path(dir, pid),
        dir.join(format!(".knobs-{pid}.json.tmp")),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

fn setup_knobs(dir: &Path) {
    for (k, original, _) in KNOBS {
        std::fs::write(dir.join(k), original).unwrap();
    }
}

#[test]
fn signal_while_knobs_change_restores_every_knob() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for step in 0..STEPS {
        setup_knobs(dir.path());
        let signal = if step % 2 == 0 {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        let child = setup_child("knobs", dir.path());
        let pid = child.id();
        let status = kill_after(child, Duration::from_millis(step), signal);
        let changed: Vec<String> = KNOBS
            .iter()
            .filter_map(|(k, original, _)| {
                let now = knobs::read_knob(&dir.path().join(k)).unwrap();
                (now != *original).then(|| format!("{k}={now}"))
            })
            .collect();
        let left = leftover_journals(dir.path(), pid);
        if status.code() != Some(128 + signal) || !changed.is_empty() || !left.is_empty() {
            failures.push(format!(
                "{step} ms, signal {signal}: {status}, knobs changed {changed:?}, left {left:?}"
            ));
        }
        for p in left {
            std::fs::remove_file(p).unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {STEPS} kills left host state behind: {failures:#?}",
        failures.len()
    );
}

/// PIDs above the kernel's `PID_MAX_LIMIT` (4 Mi): never alive.
const NEVER_ALIVE: u32 = (4 << 20) + 100;

#[test]
fn a_run_waiting_for_the_lock_finds_the_dead_holders_knobs_restored() {
    // A bug shows as the waiter reading the dead holder's "changed" as its original (recovery
    // not done under the lock before acquire returns), or as one unparsable journal stopping
    // the recovery of the others.
    let dir = tempfile::tempdir().unwrap();
    let knob = dir.path().join(HELD_KNOB);
    std::fs::write(&knob, "orig").unwrap();
    let mut holder = setup_child("hold", dir.path());
    let holder_pid = holder.id();
    assert_eq!(knobs::read_knob(&knob).unwrap(), "changed");
    // Left by other dead runs while the holder has the lock.
    let garbage = journal::journal_path(dir.path(), NEVER_ALIVE);
    std::fs::write(&garbage, "{ not json").unwrap();
    let partial = journal::tmp_path(dir.path(), NEVER_ALIVE + 1);
    std::fs::write(&partial, "{ \"pid\": ").unwrap();

    let lock_path = dir.path().join(LOCK_FILE);
    let waiter_knob = knob.clone();
    let waiter = std::thread::spawn(move || {
        let lock = SystemLock::acquire_at(&lock_path, Duration::from_secs(30)).unwrap();
        // What a run would record as the knob's original.
        let original = knobs::read_knob(&waiter_knob).unwrap();
        (lock, original)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !waiter.is_finished(),
        "the waiter got the lock while the holder lived"
    );
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(holder_pid as i32, libc::SIGKILL) }, 0);
    holder.wait().unwrap();
    let (lock, original) = waiter.join().unwrap();

    assert_eq!(original, "orig", "the waiter saw the dead holder's value");
    let rec = lock.recovered();
    let of = |pid: u32| rec.iter().find(|r| r.pid == pid);
    let held = of(holder_pid).expect("the holder's journal was recovered");
    assert_eq!(held.restored, vec![(knob.clone(), "orig".to_string())]);
    assert!(held.errors.is_empty(), "{:?}", held.errors);
    assert!(!journal::journal_path(dir.path(), holder_pid).exists());
    let bad = of(NEVER_ALIVE).expect("the unparsable journal was reported");
    assert!(
        matches!(bad.errors.as_slice(), [journal::Error::Parse { .. }]),
        "{:?}",
        bad.errors
    );
    assert!(
        garbage.exists(),
        "an unparsable journal is kept for a human"
    );
    assert!(of(NEVER_ALIVE + 1).is_some_and(|r| r.errors.is_empty()));
    assert!(
        !partial.exists(),
        "a dead run's temporary journal is removed"
    );
    assert_eq!(rec.len(), 3, "{rec:?}");
}

/// What a killed "swap" child left: files in `swap_dir`, swap areas there, journals in `dir`.
fn swap_leftovers(dir: &Path, swap_dir: &Path, pid: u32) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir(swap_dir)
        .unwrap()
        .map(|e| format!("file {}", e.unwrap().path().display()))
        .collect();
    for a in swap::active_swaps().unwrap() {
        if a.path.starts_with(swap_dir) {
            left.push(format!("swap area {}", a.path.display()));
        }
    }
    for j in leftover_journals(dir, pid) {
        left.push(format!("journal {}", j.display()));
    }
    left
}

/// Removes what [`swap_leftovers`] found, so the next step starts clean.
fn cleanup_swap(dir: &Path, swap_dir: &Path, pid: u32) {
    for e in std::fs::read_dir(swap_dir).unwrap() {
        let p = e.unwrap().path();
        if let Err(e) = swap::deactivate_and_remove(&p) {
            eprintln!("cleanup of {}: {e}", p.display());
        }
    }
    for j in leftover_journals(dir, pid) {
        std::fs::remove_file(j).unwrap();
    }
}

/// Runs the "swap" child `STEPS` times, killed with `signal(step)` at `step` ms after ready;
/// `after(run dir)` runs after each kill (recovery, for SIGKILL). Returns the failures.
fn swap_campaign(
    signal: impl Fn(u64) -> i32,
    after: impl Fn(&Path),
    want_status: impl Fn(i32) -> Option<i32>,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    // /var/tmp: a disk filesystem (tmpfs cannot hold a swapfile).
    let swap_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut failures = Vec::new();
    for step in 0..STEPS {
        let sig = signal(step);
        let child = setup_child_with("swap", dir.path(), Some(swap_dir.path()));
        let pid = child.id();
        let status = kill_after(child, Duration::from_millis(step), sig);
        after(dir.path());
        let left = swap_leftovers(dir.path(), swap_dir.path(), pid);
        if status.code() != want_status(sig) || !left.is_empty() {
            failures.push(format!("{step} ms, signal {sig}: {status}, left {left:?}"));
            cleanup_swap(dir.path(), swap_dir.path(), pid);
        }
    }
    failures
}

fn swap_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    if !Path::new("/proc/swaps").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs a kernel with swap, and root");
        return false;
    }
    true
}

#[test]
fn signal_while_swapfiles_are_created_leaves_no_swapfile() {
    // A bug shows as a swapfile left in the directory (created, not yet journaled, when the
    // signal came), a swap area left active (a swapon the restore did not wait for), or a journal.
    if !swap_available() {
        return;
    }
    // Swap areas are system-wide: hold the lock every run and test takes for them.
    let _lock = SystemLock::acquire().unwrap();
    let failures = swap_campaign(
        |step| {
            if step % 2 == 0 {
                libc::SIGINT
            } else {
                libc::SIGTERM
            }
        },
        |_| {},
        |sig| Some(128 + sig),
    );
    assert!(
        failures.is_empty(),
        "{} of {STEPS} kills left swap state behind: {failures:#?}",
        failures.len()
    );
}

#[test]
fn sigkill_while_swapfiles_are_created_then_recovery_leaves_nothing() {
    // After a SIGKILL nothing in the process runs: only the journal can tell the next run what
    // to remove. A bug shows as a swapfile no journal names (killed during the zero-fill).
    if !swap_available() {
        return;
    }
    let _lock = SystemLock::acquire().unwrap();
    let failures = swap_campaign(
        |_| libc::SIGKILL,
        |dir| {
            // The next run: it takes the lock, which recovers the dead child's journal.
            drop(SystemLock::acquire_at(&dir.join(LOCK_FILE), Duration::from_secs(10)).unwrap());
        },
        |_| None,
    );
    assert!(
        failures.is_empty(),
        "{} of {STEPS} SIGKILLs left swap state behind after recovery: {failures:#?}",
        failures.len()
    );
}
