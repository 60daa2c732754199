//! Restore on the paths where `Drop` does not run: a panic hook and SIGINT/SIGTERM.
//!
//! It owns the process's SIGINT/SIGTERM dispositions and the one thread that acts on them. What to
//! restore lives in `registry.rs`; this file only decides when.
//!
//! Signals: the handler is the self-pipe trick. It saves errno, `write(2)`s the signal number as
//! one byte to a non-blocking pipe and returns: async-signal-safe, no allocation, no lock. A
//! dedicated thread blocks reading that pipe and, on a byte, runs [`restore_and_exit`] as ordinary
//! code: wait for any host change in progress, kill and reap registered children, restore every
//! registered knob, swap off and unlink registered swapfiles, remove the journal, then
//! `_exit(128 + signal)` still holding the registry lock, so no other thread changes host state
//! meanwhile or after (130 for SIGINT, 143 for
//! SIGTERM). Why not signalfd/sigwait: those need the signals blocked in *every* thread, including
//! threads started before us that we do not control (the test harness's main thread, a library's
//! worker); a process-directed signal picks any thread that does not block it, and with the default
//! disposition that kills the process with nothing restored. A handler works whichever thread the
//! kernel picks. The pipe is created, and the thread spawned, before the handlers are installed.
//! If the VMM later blocks these signals in all its threads and reads them from its own signalfd
//! (the device thread's event loop, see docs/architecture.md), the handler never fires and that loop calls
//! [`restore_and_exit`] itself: the two designs compose. Install early, before other threads, so
//! that no thread has already inherited an unwanted mask.
//!
//! Panics: the hook restores every registered knob, then calls the previous hook. It does not kill
//! children or remove swapfiles: unwinding drops their owners, and under `panic = "abort"` the
//! knobs matter most. A panic caught by `catch_unwind` (or a panicking thread that is joined) still
//! restores the knobs; their guards' drops then find nothing left to do.
//!
//! Second signals during the cleanup are absorbed (the thread is busy; the pipe holds the byte).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::registry;

/// Errors of this module; each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pipe2 for the signal thread: {0}")]
    Pipe(io::Error),
    #[error("spawning the signal thread: {0}")]
    SpawnThread(io::Error),
    #[error("sigaction({signal}): {source}")]
    Sigaction { signal: i32, source: io::Error },
    #[error("pthread_sigmask(SIG_UNBLOCK, SIGINT|SIGTERM): {0}")]
    Unblock(io::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Write end of the self-pipe; -1 until installed.
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);
/// The signal being handled, 0 when none: set in the handler, so `main` can tell before it
/// returns that the signal thread owns the exit.
static PENDING: AtomicI32 = AtomicI32::new(0);
/// Whether [`install_restore_handlers`] already ran (successfully).
static INSTALLED: Mutex<bool> = Mutex::new(false);

/// How long the panic hook waits for the registry lock before leaving the restore to `Drop`.
const PANIC_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

extern "C" fn on_signal(signal: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot; reading and writing it back is
    // what a handler must do to leave the interrupted code's errno intact.
    let saved = unsafe { *libc::__errno_location() };
    PENDING.store(signal, Ordering::SeqCst);
    let fd = PIPE_WR.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the pointer is to a local byte, length 1; the fd
        // is non-blocking, so a full pipe cannot hang the handler.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Call before the process exits normally: if a SIGINT/SIGTERM arrived, the signal thread is
/// restoring the host and will `_exit(128 + signal)`; wait for it rather than race it with
/// another exit status. Returns at once when no signal is pending.
pub fn defer_to_pending_signal() {
    if PENDING.load(Ordering::SeqCst) != 0 {
        loop {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The exit status for `signal`, shell style.
pub fn exit_status_for(signal: i32) -> i32 {
    128 + signal
}

/// Kills and reaps registered children, restores every registered knob, removes registered
/// swapfiles and the journal, then `_exit`s with `128 + signal`. A host change another thread has
/// in progress finishes first and is undone with the rest; none starts after (see `registry.rs`).
/// Ordinary code: call it from a thread, never from a signal handler.
pub fn restore_and_exit(signal: i32) -> ! {
    // Waits for another thread's host change in progress, undoes everything, and keeps the
    // registry lock until `_exit`, so no thread changes host state after this.
    let restored = registry::restore_all_and_hold();
    for e in &restored.knob_errors {
        eprintln!("pinlab: restoring a knob after signal {signal}: {e}");
    }
    for e in &restored.swap_errors {
        eprintln!("pinlab: removing a swapfile after signal {signal}: {e}");
    }
    for e in &restored.tracefs_errors {
        eprintln!("pinlab: removing a tracefs instance after signal {signal}: {e}");
    }
    eprintln!(
        "pinlab: signal {signal}: reaped {} children, restored host state, exiting",
        restored.reaped.len()
    );
    // SAFETY: _exit ends the process without running atexit handlers or destructors, which is
    // what we want with other threads possibly mid-operation.
    unsafe { libc::_exit(exit_status_for(signal)) }
}

fn signal_thread(read_fd: i32) {
    loop {
        let mut byte = 0u8;
        // SAFETY: read into a local byte from the pipe's read end, which this thread owns.
        let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            restore_and_exit(i32::from(byte));
        }
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // EOF or an unexpected error: nothing more will come through this pipe.
        return;
    }
}

/// Installs the panic hook and the SIGINT/SIGTERM handling described in the module header.
/// Idempotent. Call it early in `main`, before spawning threads.
pub fn install_restore_handlers() -> Result<()> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if *installed {
        return Ok(());
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::Pipe(io::Error::last_os_error()));
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: fcntl on the write end we just created; only the handler writes to it.
    unsafe {
        let flags = libc::fcntl(write_fd, libc::F_GETFL);
        libc::fcntl(write_fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    if let Err(e) = std::thread::Builder::new()
        .name("pinlab-signals".into())
        .spawn(move || signal_thread(read_fd))
    {
        // SAFETY: closing the two descriptors we created and nobody else uses.
        unsafe {
            libc::close(read_fd);
            libc::close(write_fd);
        }
        return Err(Error::SpawnThread(e));
    }
    PIPE_WR.store(write_fd, Ordering::SeqCst);

    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(errors) = registry::restore_all_knobs_within(PANIC_LOCK_TIMEOUT) {
            for e in errors {
                eprintln!("pinlab: restoring a knob after panic: {e}");
            }
        }
        prev(info);
    }));

    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid starting value; we fill handler, mask and flags.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: sigemptyset on the mask field of a local struct.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: installing a handler that is async-signal-safe (see on_signal); the old action
        // is not needed.
        if unsafe { libc::sigaction(signal, &act, std::ptr::null_mut()) } != 0 {
            return Err(Error::Sigaction {
                signal,
                source: io::Error::last_os_error(),
            });
        }
    }
    // A parent may have started us with SIGINT/SIGTERM blocked (a mask survives exec: `pinlab
    // matrix` blocks them in its threads to forward them): unblocked here, in the thread that
    // starts the run's other threads, so the handler runs and the restore happens.
    // SAFETY: an empty sigset is valid storage for sigemptyset/sigaddset; pthread_sigmask only
    // changes this thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::Unblock(io::Error::from_raw_os_error(rc)));
    }
    *installed = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::journal::{self, RUN_DIR};
    use super::super::knob_guard::KnobGuard;
    use super::super::knobs::read_knob;
    use super::super::lock::SystemLock;
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    /// Selects the child mode of [`signal_child_entry`]: "signal" waits to be signalled, "panic"
    /// waits for a line on stdin (the parent has read the knobs), then panics with its guards
    /// forgotten.
    const CHILD_ENV: &str = "PINLAB_SIGNAL_TEST_CHILD";
    const KSM: &str = "/sys/kernel/mm/ksm";
    /// (knob, value the child sets)
    const CHILD_KNOBS: [(&str, &str); 3] = [
        ("sleep_millisecs", "7"),
        ("pages_to_scan", "1234"),
        ("run", "1"),
    ];

    fn ksm_knob(name: &str) -> std::path::PathBuf {
        Path::new(KSM).join(name)
    }

    /// Not a test by itself: a no-op unless re-executed by a parent test with `CHILD_ENV` set.
    /// Then it installs the handlers, sets the KSM knobs, starts a grandchild it registers,
    /// reports "ready <grandchild pid>" and waits to be signalled.
    #[test]
    fn signal_child_entry() {
        let Ok(mode) = std::env::var(CHILD_ENV) else {
            return;
        };
        install_restore_handlers().unwrap();
        let guards: Vec<KnobGuard> = CHILD_KNOBS
            .iter()
            .map(|(k, v)| KnobGuard::set(ksm_knob(k), v).unwrap())
            .collect();
        let grandchild = Command::new("sleep").arg("60").spawn().unwrap();
        registry::register_child(grandchild.id() as i32);
        println!("ready {}", grandchild.id());
        if mode == "panic" {
            // Wait until the parent has read the knobs as set: panicking at once would race the
            // parent's reads with the panic hook's restore (seen: run already back to 0).
            let mut go = String::new();
            let _ = std::io::stdin().read_line(&mut go);
            // Only the panic hook can restore now: the guards will never drop.
            std::mem::forget(guards);
            let mut grandchild = grandchild;
            let _ = grandchild.kill();
            let _ = grandchild.wait();
            registry::unregister_child(grandchild.id() as i32);
            panic!("deliberate panic with forgotten guards");
        }
        std::thread::sleep(Duration::from_secs(60));
        let mut grandchild = grandchild;
        let _ = grandchild.kill();
        let _ = grandchild.wait();
        drop(guards);
        panic!("child was not signalled within 60 s");
    }

    struct ChildRun {
        status: std::process::ExitStatus,
        child_pid: u32,
        grandchild_pid: u32,
        set_values_seen: Vec<String>,
    }

    /// Starts the child in `mode`, waits for "ready", records the knobs as the child set them,
    /// sends `signal` (none when 0), and waits (deadline 30 s) for the child to exit.
    fn setup_run_child(mode: &str, signal: i32) -> ChildRun {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "host::signals::tests::signal_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let child_pid = child.id();
        let mut go = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let grandchild_pid = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    // libtest prints "test <name> ... " without a newline before the test runs.
                    if let Some((_, pid)) = line.split_once("ready ") {
                        break pid.trim().parse().unwrap();
                    }
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("child ended before ready: {other:?}");
                }
            }
        };
        let set_values_seen = CHILD_KNOBS
            .iter()
            .map(|(k, _)| read_knob(&ksm_knob(k)).unwrap())
            .collect();
        // Lets a "panic" child go on; a "signal" child does not read it.
        let _ = go.write_all(b"go\n");
        drop(go);
        if signal != 0 {
            // SAFETY: kill(2) on the child we spawned and have not reaped.
            assert_eq!(unsafe { libc::kill(child_pid as i32, signal) }, 0);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child did not exit within 30 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        ChildRun {
            status,
            child_pid,
            grandchild_pid,
            set_values_seen,
        }
    }

    fn pid_alive(pid: u32) -> bool {
        // A zombie counts as dead.
        journal::process_start_time(pid).is_some()
    }

    #[test]
    fn sigint_and_sigterm_restore_knobs_and_reap_children() {
        if !ksm_knob("run").exists() {
            eprintln!("skipped: no KSM");
            return;
        }
        let _lock = SystemLock::acquire().unwrap();
        // (signal, exit status the child must end with)
        let cases = [(libc::SIGTERM, 143), (libc::SIGINT, 130)];
        for (signal, want_status) in cases {
            let originals: Vec<String> = CHILD_KNOBS
                .iter()
                .map(|(k, _)| read_knob(&ksm_knob(k)).unwrap())
                .collect();
            // Safety net: if the child fails to restore, these guards put the originals back
            // when the test ends (after the assertions have seen the failure).
            let _net: Vec<KnobGuard> = CHILD_KNOBS
                .iter()
                .zip(&originals)
                .map(|((k, _), o)| KnobGuard::set(ksm_knob(k), o).unwrap())
                .collect();
            let run = setup_run_child("signal", signal);
            let wanted: Vec<String> = CHILD_KNOBS.iter().map(|(_, v)| v.to_string()).collect();
            assert_eq!(run.set_values_seen, wanted, "child did not set the knobs");
            assert_eq!(run.status.code(), Some(want_status), "signal {signal}");
            let now: Vec<String> = CHILD_KNOBS
                .iter()
                .map(|(k, _)| read_knob(&ksm_knob(k)).unwrap())
                .collect();
            assert_eq!(now, originals, "knobs not restored after signal {signal}");
            assert!(!pid_alive(run.child_pid), "child alive");
            assert!(!pid_alive(run.grandchild_pid), "grandchild alive");
            let j = journal::journal_path(Path::new(RUN_DIR), run.child_pid);
            assert!(!j.exists(), "journal {} left behind", j.display());
        }
    }

    #[test]
    fn sigkill_leaves_a_journal_that_recovery_restores() {
        if !ksm_knob("run").exists() {
            eprintln!("skipped: no KSM");
            return;
        }
        let _lock = SystemLock::acquire().unwrap();
        let originals: Vec<String> = CHILD_KNOBS
            .iter()
            .map(|(k, _)| read_knob(&ksm_knob(k)).unwrap())
            .collect();
        let _net: Vec<KnobGuard> = CHILD_KNOBS
            .iter()
            .zip(&originals)
            .map(|((k, _), o)| KnobGuard::set(ksm_knob(k), o).unwrap())
            .collect();
        let run = setup_run_child("signal", libc::SIGKILL);
        assert_eq!(run.status.code(), None, "SIGKILL gives no exit code");
        // The grandchild was not ours to reap; it is the child's orphan now.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", run.grandchild_pid));
        if comm.is_ok_and(|c| c.trim() == "sleep") {
            // SAFETY: kill(2) on the `sleep` the child started and registered, orphaned by the
            // SIGKILL (checked by name just above against PID reuse).
            unsafe { libc::kill(run.grandchild_pid as i32, libc::SIGKILL) };
        }
        let j = journal::journal_path(Path::new(RUN_DIR), run.child_pid);
        assert!(j.exists(), "SIGKILLed child left no journal");
        let stale = journal::recover_stale_journals().unwrap();
        let mine = stale
            .iter()
            .find(|r| r.pid == run.child_pid)
            .expect("the dead child's journal was recovered");
        assert!(mine.errors.is_empty(), "{:?}", mine.errors);
        let now: Vec<String> = CHILD_KNOBS
            .iter()
            .map(|(k, _)| read_knob(&ksm_knob(k)).unwrap())
            .collect();
        assert_eq!(now, originals);
        assert!(!j.exists());
    }

    #[test]
    fn panic_hook_restores_knobs_whose_guards_never_drop() {
        if !ksm_knob("run").exists() {
            eprintln!("skipped: no KSM");
            return;
        }
        let _lock = SystemLock::acquire().unwrap();
        let originals: Vec<String> = CHILD_KNOBS
            .iter()
            .map(|(k, _)| read_knob(&ksm_knob(k)).unwrap())
            .collect();
        let _net: Vec<KnobGuard> = CHILD_KNOBS
            .iter()
            .zip(&originals)
            .map(|((k, _), o)| KnobGuard::set(ksm_knob(k), o).unwrap())
            .collect();
        let run = setup_run_child("panic", 0);
        let wanted: Vec<String> = CHILD_KNOBS.iter().map(|(_, v)| v.to_string()).collect();
        assert_eq!(run.set_values_seen, wanted, "child did not set the knobs");
        // libtest reports a failed test run with 101.
        assert_eq!(run.status.code(), Some(101));
        let now: Vec<String> = CHILD_KNOBS
            .iter()
            .map(|(k, _)| read_knob(&ksm_knob(k)).unwrap())
            .collect();
        assert_eq!(now, originals, "panic hook did not restore");
        let j = journal::journal_path(Path::new(RUN_DIR), run.child_pid);
        assert!(!j.exists(), "journal {} left behind", j.display());
    }
}
