//! Live tests: the real `pinlab` binary, on this host's KVM.
//!
//! Every case that creates a VM runs `pinlab` as a child process (the project style: a VM always in its own process): the test
//! waits for it with a deadline, kills and reaps it when the deadline passes, and shows its
//! stdout and stderr whenever an assertion fails. Nothing here builds a VM in the test process.
//!
//! A case that needs `/dev/kvm` prints one line saying why and returns when the device cannot be
//! opened; a run that `pinlab` itself reports as `skipped` (the host lacks a capability) is passed
//! through the same way, with pinlab's reason. No case turns a missing capability into a pass
//! silently.
//!
//! VM runs are serialized inside this process (`VM_LOCK`): the harness runs tests on parallel
//! threads, and a spinning guest or a 100-round DMA run competing with another for the host's
//! CPUs would blur the wall-clock bounds the watchdog case checks.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

const PINLAB: &str = env!("CARGO_BIN_EXE_pinlab");

/// Generous for a run that takes ~0.5 s: a deadline catches a hang, it does not measure speed.
const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// One VM at a time (see the module header).
static VM_LOCK: Mutex<()> = Mutex::new(());

fn vm_lock() -> MutexGuard<'static, ()> {
    // A failed case poisons the lock; the next case must still run.
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one `pinlab` run left behind.
struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// From spawn to the moment the child was seen to have exited.
    wall: Duration,
}

impl Run {
    /// Everything a failure message needs to be diagnosed without rerunning.
    fn show(&self) -> String {
        format!(
            "`pinlab {}` -> {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.wall,
            self.stdout,
            self.stderr
        )
    }

    /// The single JSON document on stdout; panics with the output if there is none.
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n{}", self.show()))
    }

    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Drains a child's pipe on its own thread, so a large report cannot fill the pipe and block
/// the child while we wait for it.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `pinlab ARGS`, polling for its exit until `deadline`. On timeout the child is killed
/// and reaped, and the test fails with whatever it printed.
fn run_pinlab(args: &[&str], deadline: Duration) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    let mut child = Command::new(PINLAB)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {PINLAB}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("reaping the killed pinlab");
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("waiting for pinlab: {e}");
            }
        }
    };
    let wall = start.elapsed();
    let run = Run {
        args,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        wall,
    };
    assert!(
        !timed_out,
        "pinlab did not exit within {deadline:?}; killed\n{}",
        run.show()
    );
    run
}

/// Runs a VM scenario; `None` (after printing pinlab's reason) when pinlab reports `skipped`.
fn run_vm(args: &[&str]) -> Option<(Run, Value)> {
    let _vm = vm_lock();
    let run = run_pinlab(args, RUN_DEADLINE);
    let json = run.json();
    if json["verdict"] == "skipped" {
        let reason = json["reason"].as_str().unwrap_or("");
        assert!(
            !reason.is_empty(),
            "a skipped run must say why\n{}",
            run.show()
        );
        println!("skipped: pinlab {}: {reason}", args.join(" "));
        return None;
    }
    Some((run, json))
}

fn num(v: &Value, ctx: &Run) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}\n{}", ctx.show()))
}

/// Case 1's checks, shared by its rows: a coherent DMA run whose three sources of evidence
/// (guest data checks, device statuses, PFNs) all agree, with timings measured.
fn assert_coherent_dma(run: &Run, j: &Value) {
    let show = run.show();
    assert_eq!(run.code(), Some(0), "{show}");
    assert_eq!(j["verdict"], "coherent", "{show}");
    assert!(j["rounds"].as_u64().unwrap_or(0) >= 100, "{show}");
    assert_eq!(j["guest"]["rounds_done"], j["rounds"], "{show}");
    assert_eq!(j["device_write_lost_pages"], 0, "{show}");
    assert_eq!(j["device_read_stale_pages"], 0, "{show}");
    assert_eq!(j["pinned_pfns_changed_pages"], 0, "{show}");
    assert!(j["dma"]["descriptors"].as_u64().unwrap_or(0) > 0, "{show}");
    let done = num(&j["timings_ms"]["launch_to_guest_done"], run);
    let first = num(&j["timings_ms"]["launch_to_first_dma"], run);
    assert!(
        0.0 < first && first <= done,
        "first DMA {first} ms, done {done} ms\n{show}"
    );
}

/// Case 1: the unperturbed default, THP on and off.
#[test]
fn default_run_is_coherent() {
    if support::skip_without_kvm() {
        return;
    }
    // (args, what it proves / what a bug looks like, THP coverage check)
    type Coverage = fn(f64) -> bool;
    let rows: [(&[&str], &str, Coverage); 2] = [
        // A pinned, THP-backed region with nothing perturbing it must stay coherent. A bug:
        // lost device writes or stale reads with no host action (the pin or the device path is
        // wrong), or coverage < 0.9 (MADV_HUGEPAGE/prefault not applied, so the THP cases that
        // the other scenarios build on would be testing small pages).
        (&["run", "--json"], "THP on", |c| c >= 0.9),
        // The same over small pages. A bug: coverage >= 0.1 (--thp off ignored) or a divergence
        // that only appears without huge pages.
        (&["run", "--thp", "off", "--json"], "THP off", |c| c < 0.1),
    ];
    for (args, what, coverage_ok) in rows {
        let Some((run, j)) = run_vm(args) else {
            continue;
        };
        assert_coherent_dma(&run, &j);
        let c = num(&j["thp_coverage"], &run);
        assert!(coverage_ok(c), "{what}: thp_coverage {c}\n{}", run.show());
    }
}

/// Case 2: the other pin mechanisms.
#[test]
fn pin_mechanisms() {
    if support::skip_without_kvm() {
        return;
    }
    // No pin at all (the control group): the device goes through the VMM's own mapping, so it
    // must be coherent. A bug here is in the device or the guest, not in any pin.
    if let Some((run, j)) = run_vm(&["run", "--pin", "mapping", "--json"]) {
        assert_coherent_dma(&run, &j);
        assert_eq!(j["pin"], "mapping", "{}", run.show());
    }
    // vmsplice holds pipe references: the device can read but never write. The run must be
    // coherent for reads and *say* that writes were impossible. A bug: device writes reported
    // as verified (bytes_to_guest > 0 or no unsupported descriptors), or the limit hidden from
    // the reason.
    if let Some((run, j)) = run_vm(&["run", "--pin", "vmsplice", "--json"]) {
        let show = run.show();
        assert_eq!(run.code(), Some(0), "{show}");
        assert_eq!(j["verdict"], "coherent", "{show}");
        assert_eq!(j["pin"], "vmsplice", "{show}");
        let reason = j["reason"].as_str().unwrap_or("");
        assert!(reason.contains("unsupported"), "reason: {reason:?}\n{show}");
        let unsupported = j["guest"]["unsupported_descriptors"].as_u64().unwrap_or(0);
        assert!(unsupported > 0, "{show}");
        assert_eq!(j["dma"]["rejects"]["unsupported"], unsupported, "{show}");
        assert_eq!(j["dma"]["bytes_to_guest"], 0, "{show}");
        assert!(
            j["dma"]["bytes_from_guest"].as_u64().unwrap_or(0) > 0,
            "{show}"
        );
        assert_eq!(j["device_read_stale_pages"], 0, "{show}");
    }
}

/// Case 3: config errors exit 2 with one line on stderr that names the key or the file.
/// No VM is created (pinlab stops before the runner), so no KVM is needed.
#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-scenario.toml");
    // (description, TOML text or None for "no file", what the stderr line must contain)
    // A bug in any row: exit 0/1 (a typo silently ignored or a run started), several lines (a
    // toml snippet or a backtrace leaking), or a line that does not say where the error is.
    let rows: [(&str, Option<&str>, &str); 4] = [
        // deny_unknown_fields: a misspelt key must not fall back to the default.
        (
            "unknown key",
            Some("[vm]\nmemroy = \"64MiB\"\n"),
            "vm.memroy",
        ),
        // Typed units: "MB" is ambiguous (10^6 or 2^20) and must be refused, not guessed.
        (
            "bad size unit",
            Some("[vm]\nmemory = \"64MB\"\n"),
            "vm.memory",
        ),
        // Validation after parsing: 4 MiB parses but is below the guest's minimum.
        (
            "invalid value",
            Some("[vm]\nmemory = \"4MiB\"\n"),
            "vm.memory",
        ),
        // The path itself is named when the file cannot be read.
        ("missing file", None, "no-such-scenario.toml"),
    ];
    for (what, text, needle) in rows {
        let path = match text {
            Some(t) => {
                let p = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
                std::fs::write(&p, t).expect("writing the scenario");
                p
            }
            None => missing.clone(),
        };
        let path_arg = path.to_str().expect("utf-8 temp path");
        let run = run_pinlab(&["run", path_arg, "--json"], RUN_DEADLINE);
        let show = run.show();
        assert_eq!(run.code(), Some(2), "{what}\n{show}");
        assert!(run.stdout.is_empty(), "{what}: no report on stdout\n{show}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line on stderr\n{show}");
        assert!(
            lines[0].contains(needle),
            "{what}: names `{needle}`\n{show}"
        );
        assert!(
            lines[0].contains(path_arg),
            "{what}: names the file\n{show}"
        );
    }
}

/// Case 4: a guest that spins without a doorbell is stopped by the watchdog, and the process
/// is gone within watchdog + 1 s of its spawn (the acceptance criterion).
#[test]
fn watchdog_stops_a_spinning_guest() {
    if support::skip_without_kvm() {
        return;
    }
    let watchdog = Duration::from_secs(1);
    let Some((run, j)) = run_vm(&["run", "--mode", "spin", "--watchdog", "1s", "--json"]) else {
        return;
    };
    let show = run.show();
    // A bug: the verdict is a statement about the kernel (coherent/diverged) for a run the lab
    // itself had to stop, or the exit status claims success.
    assert_eq!(j["verdict"], "error", "{show}");
    let reason = j["reason"].as_str().unwrap_or("");
    assert!(reason.contains("watchdog"), "reason: {reason:?}\n{show}");
    assert_eq!(run.code(), Some(1), "{show}");
    // run_pinlab returns only after reaping the child: it exited on its own (not killed by our
    // deadline, not by a signal), and it starts no children of its own that could outlive it.
    assert_eq!(run.status.signal(), None, "{show}");
    // A bug: the watchdog never fires (our 30 s deadline kills it instead), fires late, or the
    // teardown after it hangs (a vCPU thread that is never kicked out of KVM_RUN).
    println!("watchdog 1s: pinlab exited after {:?}", run.wall);
    assert!(
        run.wall <= watchdog + Duration::from_secs(1),
        "exited after {:?}, more than watchdog + 1 s\n{show}",
        run.wall
    );
}

/// Case 5: `host --json` lists each capability exactly once, with a fix exactly when missing.
/// It only probes, so no KVM is needed.
#[test]
fn host_capabilities() {
    const NAMES: [&str; 14] = [
        "kvm",
        "vfio",
        "iommu",
        "vfio_groups",
        "iommufd",
        "io_uring",
        "root",
        "thp",
        "ksm",
        "swap",
        "tracefs",
        "tracing",
        "debugfs",
        "userfaultfd",
    ];
    let run = run_pinlab(&["host", "--json"], RUN_DEADLINE);
    let show = run.show();
    assert_eq!(run.code(), Some(0), "{show}");
    let j = run.json();
    let list = j.as_array().unwrap_or_else(|| panic!("not a list\n{show}"));
    for name in NAMES {
        // A bug: a capability missing (the table would hide what a skip depends on) or listed
        // twice (two probes that can disagree).
        let rows: Vec<&Value> = list.iter().filter(|c| c["name"] == name).collect();
        assert_eq!(rows.len(), 1, "capability {name}\n{show}");
        let c = rows[0];
        let available = c["available"]
            .as_bool()
            .unwrap_or_else(|| panic!("{name}: `available` is not a bool\n{show}"));
        assert!(c["detail"].is_string(), "{name}: detail\n{show}");
        // A bug: a missing capability with no way to get it, or advice for one already there.
        assert_eq!(
            c["fix"].is_null(),
            available,
            "{name}: fix must be set exactly when unavailable\n{show}"
        );
        if !available {
            assert!(c["fix"].is_string(), "{name}: fix is a string\n{show}");
        }
    }
    assert_eq!(list.len(), NAMES.len(), "no unexpected entries\n{show}");
}

/// Case 6: a hostile guest sends malformed requests of every class; the VMM rejects each with
/// the status the ABI demands, counts it, keeps working, and does not crash.
#[test]
fn hostile_guest_is_rejected_and_counted() {
    if support::skip_without_kvm() {
        return;
    }
    let Some((run, j)) = run_vm(&["run", "--mode", "hostile", "--json"]) else {
        return;
    };
    let show = run.show();
    // A bug: the VMM dies on guest input (a panic or a signal instead of an exit status).
    assert_eq!(run.status.signal(), None, "{show}");
    assert_eq!(run.code(), Some(0), "{show}");
    assert_eq!(j["verdict"], "coherent", "{show}");
    let rows = j["hostile"]
        .as_array()
        .unwrap_or_else(|| panic!("no hostile rows\n{show}"));
    // One row per class, in the ABI's order. A bug: a class the guest sent but the report lost.
    assert_eq!(rows.len(), pinlab_abi::HOSTILE_CLASSES.len(), "{show}");
    let mut want_rejects = std::collections::BTreeMap::<&str, u64>::new();
    for (row, &(class, status)) in rows.iter().zip(pinlab_abi::HOSTILE_CLASSES.iter()) {
        let expected = pinlab_abi::status_name(status);
        assert_eq!(row["class"], class, "{show}");
        assert_eq!(row["expected"], expected, "{class}\n{show}");
        // A bug: a malformed request accepted (e.g. a map outside RAM), or refused with the
        // wrong status (the check that fired is not the one meant for this class).
        assert_eq!(row["rejected"], true, "{class}\n{show}");
        assert_eq!(row["answered"], expected, "{class}\n{show}");
        *want_rejects.entry(expected).or_default() += 1;
    }
    // Each rejection was counted under its status. A bug: a reject path that answers the guest
    // but skips the counter.
    for (status, classes) in want_rejects {
        let counted = j["dma"]["rejects"][status].as_u64().unwrap_or(0);
        assert!(
            counted >= classes,
            "rejects[{status}] = {counted}, {classes} classes expect it\n{show}"
        );
    }
}

/// Case 7: the smallest guest boots to CPL3 and says so.
#[test]
fn boot_mode_reaches_cpl3() {
    if support::skip_without_kvm() {
        return;
    }
    let Some((run, j)) = run_vm(&["run", "--mode", "boot", "--json"]) else {
        return;
    };
    let show = run.show();
    assert_eq!(run.code(), Some(0), "{show}");
    assert_eq!(j["verdict"], "coherent", "{show}");
    // A bug: the console path loses guest output, or the guest never reached user mode.
    let console = j["console"]
        .as_array()
        .unwrap_or_else(|| panic!("no console\n{show}"));
    assert!(
        console
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("up at CPL3"))),
        "{show}"
    );
}

/// Case 8: the exit status follows the expectation, so the machinery can fail: an unperturbed
/// run expected to diverge must exit 1. A bug: exit 0 (every run "passes", whatever it finds).
#[test]
fn unmet_expectation_exits_1() {
    if support::skip_without_kvm() {
        return;
    }
    let Some((run, j)) = run_vm(&["run", "--expect", "diverged", "--json"]) else {
        return;
    };
    let show = run.show();
    assert_eq!(j["verdict"], "coherent", "{show}");
    assert_eq!(j["expected"], "diverged", "{show}");
    assert_eq!(run.code(), Some(1), "{show}");
}

/// The oracle can fail: MADV_DONTNEED on the pinned region between two rounds. The pin keeps
/// the old pages, the guest faults in new ones, so both directions diverge, every page is
/// counted, and the PFN evidence says why (pinned PFN != mapped PFN). A lab that read through
/// its own mapping, or that did not compare PFNs, would report coherent or say nothing of PFNs.
#[test]
fn discarding_the_pinned_range_diverges_with_pfn_evidence() {
    let Some((run, j)) = run_vm(&["run", "--perturb", "dontneed", "--rounds", "4", "--json"])
    else {
        return;
    };
    assert_eq!(j["verdict"], "diverged", "{}", run.show());
    assert_eq!(
        j["expected"],
        "diverged",
        "the model predicts it: {}",
        run.show()
    );
    assert_eq!(run.status.code(), Some(0), "{}", run.show());
    // The default region: 1 MiB, 256 pages.
    let pages = 256;
    assert_eq!(j["device_write_lost_pages"], pages, "{}", run.show());
    assert_eq!(j["device_read_stale_pages"], pages, "{}", run.show());
    assert_eq!(j["pinned_pfns_changed_pages"], pages, "{}", run.show());
    let change = &j["pins"][0]["changed"][0];
    assert!(
        change["pinned"].is_u64()
            && change["mapped"].is_u64()
            && change["pinned"] != change["mapped"],
        "pinned vs mapped PFN of the first changed page: {}",
        run.show()
    );
    let reason = j["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("pinned pfn:") && reason.contains("mapped pfn:"),
        "{reason}"
    );
    // The same discard through the control group's mapping is coherent: the divergence comes
    // from the pin, not from the lab.
    let Some((run, j)) = run_vm(&[
        "run",
        "--pin",
        "mapping",
        "--perturb",
        "dontneed",
        "--rounds",
        "4",
        "--json",
    ]) else {
        return;
    };
    assert_eq!(j["verdict"], "coherent", "{}", run.show());
}

/// Case 9 (a hostile guest, issue 10 #5): a guest that prints console lines forever. The VMM
/// keeps the first lines up to its bounds and counts the rest, and a console line is not
/// progress, so the watchdog stops the run. A bug: the console grows with the flood (the report
/// holds every line), the drop count is missing, or the watchdog never fires because every exit
/// counted as progress (our deadline kills the run instead).
#[test]
fn a_console_flood_is_bounded_and_stopped_by_the_watchdog() {
    if support::skip_without_kvm() {
        return;
    }
    let watchdog = Duration::from_secs(1);
    let Some((run, j)) = run_vm(&[
        "run",
        "--mode",
        "console-flood",
        "--watchdog",
        "1s",
        "--json",
    ]) else {
        return;
    };
    let show = run.show();
    assert_eq!(run.status.signal(), None, "{show}");
    assert_eq!(run.code(), Some(1), "{show}");
    assert_eq!(j["verdict"], "error", "{show}");
    let reason = j["reason"].as_str().unwrap_or("");
    assert!(reason.contains("watchdog"), "reason: {reason:?}\n{show}");
    let console = j["console"]
        .as_array()
        .unwrap_or_else(|| panic!("no console\n{show}"));
    let kept_bytes: usize = console.iter().map(|l| l.as_str().map_or(0, str::len)).sum();
    assert!(!console.is_empty(), "the first lines are kept\n{show}");
    assert!(
        console.len() <= pinlab::console::MAX_LINES && kept_bytes <= pinlab::console::MAX_BYTES,
        "{} lines, {kept_bytes} bytes kept",
        console.len()
    );
    assert!(
        console[0].as_str().is_some_and(|l| l.starts_with("flood")),
        "{show}"
    );
    let dropped = &j["console_dropped"];
    let lines = dropped["lines"].as_u64().unwrap_or(0);
    assert!(
        lines > 0 && dropped["bytes"].as_u64().unwrap_or(0) >= lines,
        "the rest is counted: {dropped}\n{show}"
    );
    // The report itself stays small whatever the guest printed.
    assert!(
        run.stdout.len() < 1 << 20,
        "{} bytes of JSON",
        run.stdout.len()
    );
    println!(
        "console flood: {} lines kept, {lines} dropped, exited after {:?}",
        console.len(),
        run.wall
    );
    // A hang check, not a speed check: the run ends on its own, well inside our deadline.
    assert!(
        run.wall <= watchdog + Duration::from_secs(5),
        "exited after {:?}\n{show}",
        run.wall
    );
}

/// Case 10 (a hostile guest, issue 10 #6): the DMA workload with ROUNDS_START and every
/// ROUND_DONE sent `1 + PHASE_REPEAT_EXTRA` times, and a fork scheduled after round 1. Each
/// phase is acted on once and every repeat is refused, counted on the timeline and still
/// acknowledged (the guest goes on). A bug: a second fork per repeated ROUND_DONE(1) (two or
/// more evidence entries and actions on the timeline), a second storm thread, or a repeat that
/// stalls or kills the guest.
#[test]
fn repeated_phases_never_rerun_a_host_action() {
    if support::skip_without_kvm() {
        return;
    }
    let rounds = 4u64;
    let Some((run, j)) = run_vm(&[
        "run",
        "--mode",
        "phase-repeat",
        "--perturb",
        "fork-parent-write",
        "--rounds",
        "4",
        "--json",
    ]) else {
        return;
    };
    let show = run.show();
    assert_eq!(run.status.signal(), None, "{show}");
    assert_eq!(j["guest"]["rounds_done"], rounds, "{show}");
    assert_ne!(j["verdict"], "error", "{show}");
    let evidence = j["evidence"]
        .as_array()
        .unwrap_or_else(|| panic!("no evidence\n{show}"));
    assert_eq!(evidence.len(), 1, "one fork, not one per repeat\n{show}");
    let events = j["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline\n{show}"));
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count() as u64;
    assert_eq!(count("action"), 1, "{show}");
    // mapped, rounds-start, each round done, unmapped: once each.
    assert_eq!(count("phase"), 3 + rounds, "{show}");
    let extra = pinlab_abi::PHASE_REPEAT_EXTRA as u64;
    assert_eq!(
        count("phase-rejected"),
        (1 + rounds) * extra,
        "every repeat refused\n{show}"
    );
    // The refused rounds-start is out of order, the refused round-done a wrong round.
    let why = |code: u32| {
        events
            .iter()
            .filter(|e| e["kind"] == "phase-rejected" && e["code"] == code)
            .map(|e| e["why"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        why(pinlab_abi::PHASE_ROUNDS_START),
        vec!["out-of-order"; extra as usize],
        "{show}"
    );
    assert!(
        why(pinlab_abi::PHASE_ROUND_DONE)
            .iter()
            .all(|w| w == "wrong-round"),
        "{show}"
    );
}
