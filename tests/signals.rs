//! SIGINT and SIGTERM in the middle of a run that changed system-wide state leave the host as
//! it was found: KSM and THP knobs restored, the swapfile swapped off and deleted, every child
//! process reaped. Each case runs the real binary with a storm of the action, waits until the
//! host shows the change, signals, and compares the host with the state taken before.
//!
//! Baselines and comparisons are taken under the cross-process system lock, so another run on a
//! shared machine cannot be mistaken for ours: whoever changes these knobs holds that lock and
//! restores them before releasing it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinlab::host::SystemLock;

mod support;

const KNOBS: &[&str] = &[
    "/sys/kernel/mm/ksm/run",
    "/sys/kernel/mm/ksm/sleep_millisecs",
    "/sys/kernel/mm/ksm/pages_to_scan",
    "/sys/kernel/mm/ksm/use_zero_pages",
    "/sys/kernel/mm/ksm/max_page_sharing",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/kernel/mm/transparent_hugepage/defrag",
];

fn host_state() -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = KNOBS
        .iter()
        .filter_map(|k| Some((k.to_string(), std::fs::read_to_string(k).ok()?)))
        .collect();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    // Used/priority columns move with memory pressure; the set of swap areas must not.
    let areas: Vec<&str> = swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    m.insert("swap areas".into(), areas.join(","));
    m
}

fn baseline() -> BTreeMap<String, String> {
    let _lock = SystemLock::acquire().expect("system lock");
    host_state()
}

fn skip() -> bool {
    if support::skip_without_kvm() {
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to change KSM and swap");
        return true;
    }
    false
}

fn spawn(config: &str, extra: &[&str]) -> Child {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(config);
    Command::new(env!("CARGO_BIN_EXE_pinlab"))
        .arg("run")
        .arg(path)
        .args(extra)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinlab")
}

/// Polls `cond` every 5 ms until it holds or the deadline passes; records children of `pid`
/// seen meanwhile.
fn wait_until(pid: u32, seen: &mut Vec<u32>, limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        seen.extend(children_of(pid));
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The fields after the command's closing parenthesis: state, ppid, ...
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(p);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Signals the run, waits for it (10 s), returns its exit code and stderr.
fn signal_and_wait(mut child: Child, sig: i32) -> (Option<i32>, String) {
    // SAFETY: signalling our own child process by its PID.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pinlab did not exit within 10 s of signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Each row: (what it proves, scenario, extra args, the host change to wait for, signal).
/// A bug would show as a knob left changed, a swap area left active, a child left running, or
/// an exit status other than 128 + signal.
type Row = (
    &'static str,
    &'static str,
    &'static [&'static str],
    fn() -> bool,
    i32,
);

fn ksm_running() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/ksm/run").is_ok_and(|s| s.trim() == "1")
}

fn pinlab_swap_active() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.contains("pinlab"))
}

fn always() -> bool {
    true
}

#[test]
fn signals_restore_the_host() {
    if skip() {
        return;
    }
    // Every row runs 400 rounds so the signal lands mid-run. With the scenarios' 8, a fast run
    // (launch -> guest done ~10 ms since the prefault overlaps VM creation) could end between two
    // 5 ms polls for its children (seen on main's binary too, 1 run of 2), or finish and exit 1
    // while the signal thread was still swapping off (1 run of ~25).
    let rows: &[Row] = &[
        (
            "SIGTERM during a KSM storm restores every KSM knob",
            "live-iouring-ksm.toml",
            &["--storm", "200", "--rounds", "400"],
            ksm_running,
            libc::SIGTERM,
        ),
        (
            "SIGINT with a swapfile active swaps it off and deletes it",
            "live-iouring-pageout.toml",
            &["--storm", "400", "--rounds", "400"],
            pinlab_swap_active,
            libc::SIGINT,
        ),
        (
            "SIGTERM during a fork storm leaves no child running",
            "live-iouring-fork-parent-write.toml",
            &["--storm", "5000", "--rounds", "400"],
            always,
            libc::SIGTERM,
        ),
    ];
    for &(what, config, extra, changed, sig) in rows {
        let before = baseline();
        let child = spawn(config, extra);
        let pid = child.id();
        let mut seen = Vec::new();
        let hit = wait_until(pid, &mut seen, Duration::from_secs(30), || {
            changed()
                && (config != "live-iouring-fork-parent-write.toml" || !children_of(pid).is_empty())
        });
        assert!(hit, "{what}: the run never showed its change on the host");
        let (code, stderr) = signal_and_wait(child, sig);
        assert_eq!(
            code,
            Some(128 + sig),
            "{what}: exit status; stderr: {stderr}"
        );
        let after = {
            let _lock = SystemLock::acquire().expect("system lock");
            host_state()
        };
        assert_eq!(
            before, after,
            "{what}: host state changed; stderr: {stderr}"
        );
        for c in &seen {
            // A PID could be reused by an unrelated process; one running pinlab is ours.
            let ours = std::fs::read_to_string(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("pinlab"));
            assert!(!(alive(*c) && ours), "{what}: child {c} survived");
        }
        println!("ok: {what} ({} children seen)", seen.len());
    }
}

/// SIGTERM to `pinlab matrix` while its child runs a KSM storm: the matrix forwards the signal,
/// reaps the child (which restores KSM), and exits 128 + SIGTERM. A bug would show as the child
/// (or its children) still running after the matrix exited, KSM left running, or another status.
#[test]
fn sigterm_to_the_matrix_reaches_its_running_child() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/live-iouring-ksm.toml"),
    )
    .expect("read the KSM scenario");
    // A long storm, so the signal lands while KSM is running under the matrix's child.
    let text = text
        .replace("rounds = 6", "rounds = 400")
        .replace("after_round = 2", "storm = 200");
    std::fs::write(dir.path().join("long-ksm-storm.toml"), text).expect("write the scenario");
    let before = baseline();
    let matrix = Command::new(env!("CARGO_BIN_EXE_pinlab"))
        .arg("matrix")
        .arg(dir.path())
        .args(["--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinlab matrix");
    let pid = matrix.id();
    let mut seen = Vec::new();
    let hit = wait_until(pid, &mut seen, Duration::from_secs(30), || {
        ksm_running() && !children_of(pid).is_empty()
    });
    assert!(hit, "the matrix's child never started KSM");
    // The run's own children (fork helpers), as far as they are visible now.
    for c in seen.clone() {
        seen.extend(children_of(c));
    }
    let (code, stderr) = signal_and_wait(matrix, libc::SIGTERM);
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "exit status; stderr: {stderr}"
    );
    let after = {
        let _lock = SystemLock::acquire().expect("system lock");
        host_state()
    };
    assert_eq!(before, after, "host state changed; stderr: {stderr}");
    assert!(!seen.is_empty());
    for c in &seen {
        let ours = std::fs::read_to_string(format!("/proc/{c}/cmdline"))
            .is_ok_and(|cmd| cmd.contains("pinlab"));
        assert!(!(alive(*c) && ours), "child {c} of the matrix survived it");
    }
}
