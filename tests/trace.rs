//! Traced live runs: the real `pinlab` binary with `--trace`, on this host's KVM and tracefs.
//!
//! Every case runs `pinlab` as a child (STYLE.md point 9), waits with a deadline, kills and reaps
//! it on timeout, and shows its output when an assertion fails. A traced run takes the system
//! lock itself (tracefs, ksmd and khugepaged are shared by the machine), so these cases never hold
//! it while a child runs; inside this binary they are serialized by `RUNS`.
//!
//! The raw text (FILE.ftrace.txt) is read with plain string handling here, not with pinlab's own
//! parser, so a parser bug cannot hide a missing event. A case that needs KVM or a usable tracefs
//! prints why and returns when the host lacks it; a traced run whose trace pinlab reports as
//! `skipped` is failed (this host has tracefs) unless tracefs is unusable here.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

const PINLAB: &str = env!("CARGO_BIN_EXE_pinlab");
/// A run waits for the system lock behind other system-touching runs: generous.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

static RUNS: Mutex<()> = Mutex::new(());

fn runs() -> MutexGuard<'static, ()> {
    RUNS.lock().unwrap_or_else(|e| e.into_inner())
}

struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "`pinlab {}` -> {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            truncate(&self.stdout),
            self.stderr
        )
    }
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n{}", self.show()))
    }
}

fn truncate(s: &str) -> &str {
    &s[..s.len().min(20_000)]
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn run_pinlab(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    let mut child = Command::new(PINLAB)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {PINLAB}: {e}"));
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let status = loop {
        match child.try_wait().expect("waiting for pinlab") {
            Some(st) => break st,
            None if start.elapsed() >= RUN_DEADLINE => {
                let _ = child.kill();
                let st = child.wait().expect("reaping");
                panic!(
                    "pinlab {args:?} did not exit within {RUN_DEADLINE:?} ({st:?}); stderr:\n{}",
                    err.join().unwrap_or_default()
                );
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    Run {
        args,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The pinlab instances under tracefs now; `None` when tracefs cannot be reached here.
fn pinlab_instances() -> Option<Vec<String>> {
    let fs = pinlab::trace::tracefs::Tracefs::open().ok()?;
    let mut v: Vec<String> = fs
        .instances()
        .ok()?
        .into_iter()
        .filter(|n| n.starts_with("pinlab-"))
        .collect();
    v.sort();
    Some(v)
}

fn instance_of(pid: u32) -> String {
    format!("pinlab-{pid}")
}

fn has_instance(pid: u32) -> bool {
    pinlab_instances().is_some_and(|v| v.contains(&instance_of(pid)))
}

fn skip_without_tracefs() -> bool {
    if pinlab_instances().is_none() {
        println!("skipped: tracefs cannot be reached here");
        return true;
    }
    false
}

/// A traced run's result, its Chrome file and raw text.
struct Traced {
    run: Run,
    result: Value,
    chrome: Value,
    chrome_bytes: Vec<u8>,
    raw: String,
    _dir: tempfile::TempDir,
}

fn traced(args: &[&str]) -> Option<Traced> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trace.json");
    let mut full = vec!["run", "--json", "--trace", file.to_str().unwrap()];
    full.extend_from_slice(args);
    let run = {
        let _r = runs();
        run_pinlab(&full)
    };
    let result = run.json();
    if result["verdict"] == "skipped" {
        println!("skipped: pinlab: {}", result["reason"]);
        return None;
    }
    let show = run.show();
    assert_eq!(result["trace"]["status"], "recorded", "{show}");
    assert!(
        !has_instance(run_pid(&result)),
        "the run's instance outlived it\n{show}"
    );
    let chrome_bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}\n{show}"));
    let chrome: Value = serde_json::from_slice(&chrome_bytes)
        .unwrap_or_else(|e| panic!("the trace is not JSON: {e}\n{show}"));
    let raw = std::fs::read_to_string(pinlab::trace::raw_path(&file))
        .unwrap_or_else(|e| panic!("{e}\n{show}"));
    Some(Traced {
        run,
        result,
        chrome,
        chrome_bytes,
        raw,
        _dir: dir,
    })
}

/// The pid of the run, from its instance's name.
fn run_pid(result: &Value) -> u32 {
    result["trace"]["instance"]
        .as_str()
        .and_then(|n| n.strip_prefix("pinlab-"))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// One raw line: (timestamp in ns, event, body).
fn raw_events(raw: &str) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for line in raw.lines().filter(|l| !l.starts_with('#')) {
        // "... [001] d....  4152.273080: event: body"
        let Some(close) = line.find("] ") else {
            continue;
        };
        let rest = &line[close + 2..];
        let mut it = rest.split_whitespace();
        let (_flags, ts) = (it.next(), it.next());
        let Some(ts) = ts.and_then(|t| t.strip_suffix(':')) else {
            continue;
        };
        let Some((s, us)) = ts.split_once('.') else {
            continue;
        };
        let (Ok(s), Ok(us)) = (s.parse::<u64>(), us.parse::<u64>()) else {
            continue;
        };
        let after = &rest[rest.find(ts).unwrap() + ts.len() + 2..];
        let (event, body) = after.split_once(": ").unwrap_or((after, ""));
        out.push((
            s * 1_000_000_000 + us * 1000,
            event.to_string(),
            body.to_string(),
        ));
    }
    out
}

/// The lab's marker for `kind subject` (a span): its start and end in ns.
fn marker_span(raw: &[(u64, String, String)], head: &str) -> Option<(u64, u64)> {
    raw.iter().find_map(|(_, ev, body)| {
        if ev != "tracing_mark_write" || !body.starts_with(&format!("pinlab: {head} ")) {
            return None;
        }
        let j: Value = serde_json::from_str(&body[body.find('{')?..]).ok()?;
        let at = j["at"].as_u64()?;
        Some((at, at + j["dur_ns"].as_u64().unwrap_or(0)))
    })
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap()
}

/// `done when` 1: a traced split-pmd run holds the lab's marker for the action and, inside it,
/// KVM's unmap over the region's huge page and the thp_split_pmd step. A bug shows as a marker
/// missing from the raw text, an unmap outside the action's window (clock mismatch), or a
/// counter that did not step.
#[test]
fn traced_split_pmd_shows_kvm_unmapping_the_huge_page_inside_the_action() {
    if support::skip_without_kvm() || skip_without_tracefs() {
        return;
    }
    let Some(t) = traced(&["--perturb", "split-pmd", "--region", "1MiB"]) else {
        return;
    };
    let show = t.run.show();
    let raw = raw_events(&t.raw);
    let (start, end) =
        marker_span(&raw, "action split-pmd").unwrap_or_else(|| panic!("no action marker\n{show}"));
    let huge = &t.result["trace"]["ranges"]["huge"];
    let (hs, hl) = (
        huge["start"].as_u64().unwrap(),
        huge["len"].as_u64().unwrap(),
    );
    let inside: Vec<(u64, u64)> = raw
        .iter()
        .filter(|(ts, ev, _)| {
            ev == "kvm_unmap_hva_range" && *ts >= start / 1000 * 1000 && *ts <= end
        })
        .map(|(_, _, body)| {
            let r = body.rsplit_once(": ").unwrap().1;
            let (a, b) = r.split_once(" -- ").unwrap();
            (hex(a), hex(b))
        })
        .filter(|&(a, b)| a < hs + hl && b > hs)
        .collect();
    assert!(
        !inside.is_empty(),
        "no kvm_unmap_hva_range over [{hs:#x}, {:#x}) inside the action [{start}, {end}]\n{show}",
        hs + hl
    );
    // The counter track steps across the action.
    let step = |name: &str| -> Option<i64> {
        let evs = t.chrome["traceEvents"].as_array()?;
        let vals: Vec<(f64, i64)> = evs
            .iter()
            .filter(|e| e["ph"] == "C" && e["name"] == name)
            .map(|e| {
                (
                    e["ts"].as_f64().unwrap(),
                    e["args"]["value"].as_i64().unwrap(),
                )
            })
            .collect();
        let before = vals
            .iter()
            .rev()
            .find(|(ts, _)| *ts * 1000.0 <= start as f64)?
            .1;
        let after = vals.iter().find(|(ts, _)| *ts * 1000.0 >= end as f64)?.1;
        Some(after - before)
    };
    assert!(
        step("vmstat thp_split_pmd").unwrap_or(0) >= 1,
        "thp_split_pmd did not step across the action\n{show}"
    );
    let acc = &t.result["trace"]["accounts"][0]["account"];
    assert_eq!(acc["account"], "split", "{show}");
    assert!(
        acc["vmstat"]["thp_split_pmd"].as_i64().unwrap_or(0) >= 1,
        "{show}"
    );
    assert!(
        !acc["unmaps_over_huge_page"].as_array().unwrap().is_empty(),
        "{show}"
    );
}

/// `done when` 1: a traced ksm run merges decoy PFNs and no region PFN. A bug shows as a pinned
/// region page merged (the pin would no longer be the guest's page) or no KSM event on guest
/// RAM at all (the PID filter lost ksmd).
#[test]
fn traced_ksm_merges_decoy_pfns_and_no_region_pfn() {
    if support::skip_without_kvm() || skip_without_tracefs() {
        return;
    }
    let Some(t) = traced(&["--perturb", "ksm", "--rounds", "8"]) else {
        return;
    };
    let show = t.run.show();
    let acc = &t.result["trace"]["accounts"][0]["account"];
    assert_eq!(acc["account"], "ksm", "{show}");
    assert!(acc["decoy"]["merged"].as_u64().unwrap_or(0) > 0, "{show}");
    assert_eq!(acc["region"]["merged"], 0, "{show}");
    // The raw text holds at least as many ksm merges as the account classified, all by ksmd.
    let raw = raw_events(&t.raw);
    let merges: Vec<_> = raw
        .iter()
        .filter(|(_, ev, _)| ev == "ksm_merge_with_ksm_page" || ev == "ksm_merge_one_page")
        .collect();
    let counted: u64 = ["region", "decoy", "elsewhere"]
        .iter()
        .map(|c| acc[*c]["merged"].as_u64().unwrap_or(0) + acc[*c]["failed"].as_u64().unwrap_or(0))
        .sum();
    assert!(merges.len() as u64 >= counted && counted > 0, "{show}");
    let ksmd_lines = t
        .raw
        .lines()
        .filter(|l| l.trim_start().starts_with("ksmd-") && l.contains("ksm_merge"))
        .count();
    assert_eq!(
        ksmd_lines,
        merges.len(),
        "KSM merges from something other than ksmd\n{show}"
    );
}

/// `done when` 1: a traced fork-parent-write with vmsplice shows the parent's writes on region
/// pages and the PFN changes that make it diverge. A bug shows as writes attributed to the child,
/// or a diverged verdict with no copy in the trace.
#[test]
fn traced_fork_parent_write_shows_the_parents_writes_and_the_copies() {
    if support::skip_without_kvm() || skip_without_tracefs() {
        return;
    }
    let Some(t) = traced(&[
        "--perturb",
        "fork-parent-write",
        "--pin",
        "vmsplice",
        "--rounds",
        "8",
    ]) else {
        return;
    };
    let show = t.run.show();
    assert_eq!(t.result["verdict"], "diverged", "{show}");
    let acc = &t.result["trace"]["accounts"][0]["account"];
    assert_eq!(acc["account"], "fork", "{show}");
    assert!(!acc["children"].as_array().unwrap().is_empty(), "{show}");
    let parent = acc["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "parent")
        .unwrap_or_else(|| panic!("no write by the parent\n{show}"));
    assert_eq!(
        parent["pid"].as_u64().unwrap() as u32,
        run_pid(&t.result),
        "{show}"
    );
    assert!(parent["guest_write_faults"].as_u64().unwrap() > 0, "{show}");
    assert!(parent["pages_copied"].as_u64().unwrap() > 0, "{show}");
    assert!(acc["guest_pfn_changes"].as_u64().unwrap() > 0, "{show}");
    // The pins' own evidence agrees that the pinned pages are no longer the mapped ones.
    assert!(
        t.result["pinned_pfns_changed_pages"].as_u64().unwrap() > 0,
        "{show}"
    );
    assert!(
        t.result["trace"]["accounts"][0]["disagreement"].is_null(),
        "{show}"
    );
}

/// `done when` 2: the JSON parses, every track's timestamps are monotonic, slices nest. Checked
/// here independently of pinlab's own checker (and with it). A bug shows as a slice that ends
/// after its parent, or events out of order on a track.
#[test]
fn the_chrome_trace_is_ordered_per_track_and_its_slices_nest() {
    if support::skip_without_kvm() || skip_without_tracefs() {
        return;
    }
    let Some(t) = traced(&[
        "--perturb",
        "split-pmd",
        "--region",
        "1MiB",
        "--rounds",
        "6",
    ]) else {
        return;
    };
    let show = t.run.show();
    let evs = t.chrome["traceEvents"].as_array().expect("traceEvents");
    let mut last: HashMap<String, f64> = HashMap::new();
    let mut open: HashMap<String, Vec<f64>> = HashMap::new();
    let mut slices = 0;
    let mut depth = 0;
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for e in evs {
        let ph = e["ph"].as_str().unwrap();
        *phases.entry(ph.to_string()).or_default() += 1;
        if ph == "M" {
            continue;
        }
        let ts = e["ts"].as_f64().unwrap();
        let track = if ph == "C" {
            format!("{} {}", e["pid"], e["name"])
        } else {
            format!("{}/{}", e["pid"], e["tid"])
        };
        let prev = last.insert(track.clone(), ts).unwrap_or(f64::MIN);
        assert!(
            ts + 1e-3 >= prev,
            "track {track}: {ts} after {prev}\n{show}"
        );
        if ph == "X" {
            slices += 1;
            let end = ts + e["dur"].as_f64().unwrap();
            let stack = open.entry(track.clone()).or_default();
            while stack.last().is_some_and(|&pe| pe <= ts + 1e-3) {
                stack.pop();
            }
            if let Some(&pe) = stack.last() {
                assert!(
                    end <= pe + 1e-3,
                    "track {track}: {} ends after its parent\n{show}",
                    e["name"]
                );
            }
            stack.push(end);
            depth = depth.max(stack.len());
        }
    }
    for ph in ["X", "i", "C", "M"] {
        assert!(
            phases.get(ph).copied().unwrap_or(0) > 0,
            "no {ph} events: {phases:?}\n{show}"
        );
    }
    // run > launch > step; guest > rounds > round > action.
    assert!(
        depth >= 4 && slices >= 10,
        "depth {depth}, {slices} slices\n{show}"
    );
    let names: Vec<&str> = evs.iter().filter_map(|e| e["name"].as_str()).collect();
    for want in ["action split-pmd", "round 2", "rounds", "guest", "launch"] {
        assert!(names.contains(&want), "no slice {want:?}\n{show}");
    }
    let rep =
        pinlab::trace::chrome::check(&t.chrome_bytes).unwrap_or_else(|e| panic!("{e}\n{show}"));
    assert_eq!(rep.slices, slices);
    // The VMM's threads are named.
    let pid = run_pid(&t.result) as u64;
    let thread_names: Vec<&str> = evs
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == pid)
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert!(
        thread_names.contains(&"pinlab-vcpu"),
        "{thread_names:?}\n{show}"
    );
}

/// An unwritable FILE is a usage error before the VM starts (exit 2, nothing traced).
#[test]
fn an_unwritable_trace_file_is_a_usage_error() {
    let run = run_pinlab(&["run", "--trace", "/nonexistent-dir/x/trace.json", "--json"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.show());
    assert!(
        run.stderr.contains("/nonexistent-dir/x/trace.json"),
        "{}",
        run.show()
    );
    assert!(run.stdout.trim().is_empty(), "it ran\n{}", run.show());
}

/// tracefs refused (no CAP_SYS_ADMIN to reach it): the run goes on, its trace `skipped` with
/// the reason, FILE still holds the lab's timeline. A bug shows as a failed run, or a trace
/// that claims to be recorded.
#[test]
fn a_refused_tracefs_skips_the_trace_and_the_run_goes_on() {
    if support::skip_without_kvm() {
        return;
    }
    let mounted = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounted
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
    {
        println!("skipped: the host mounts tracefs, so dropping CAP_SYS_ADMIN does not refuse it");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: no setpriv to drop CAP_SYS_ADMIN");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    let _r = runs();
    let out = Command::new("setpriv")
        .args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", PINLAB])
        .args([
            "run",
            "--rounds",
            "4",
            "--json",
            "--trace",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let show = format!("{out:?}");
    let j: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{show}"));
    assert_eq!(out.status.code(), Some(0), "{show}");
    assert_eq!(j["verdict"], "coherent", "{show}");
    assert_eq!(j["trace"]["status"], "skipped", "{show}");
    assert!(
        j["trace"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("fsopen"),
        "{show}"
    );
    let chrome: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(chrome["otherData"]["pinlab"]["status"], "skipped", "{show}");
    assert!(
        chrome["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "guest"),
        "{show}"
    );
}

fn spawn_traced(file: &Path, rounds: &str) -> Child {
    Command::new(PINLAB)
        .args([
            "run",
            "--rounds",
            rounds,
            "--json",
            "--trace",
            file.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinlab")
}

/// Waits (deadline: the run may wait for the system lock) until the run's instance exists and
/// its raw text shows the rounds started: the signal then lands mid-trace.
fn wait_mid_trace(child: &mut Child, file: &Path) -> bool {
    let raw = pinlab::trace::raw_path(file);
    let deadline = Instant::now() + RUN_DEADLINE;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        let started =
            std::fs::read_to_string(&raw).is_ok_and(|t| t.contains("pinlab: phase rounds-start"));
        if started && has_instance(child.id()) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pinlab did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// `done when` 3: no pinlab instance is left after SIGINT and SIGTERM mid-trace (exit 128 +
/// signal). A bug shows as an instance directory left under tracefs, or a journal left behind.
#[test]
fn signals_mid_trace_remove_the_instance() {
    if support::skip_without_kvm() || skip_without_tracefs() {
        return;
    }
    // (signal, exit status)
    for (sig, want) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.json");
        let _r = runs();
        let mut child = spawn_traced(&file, "100000");
        let pid = child.id();
        if !wait_mid_trace(&mut child, &file) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the traced run never got mid-trace: {}",
                stderr_of(&mut child)
            );
        }
        // SAFETY: signalling our own child by its PID (not yet reaped).
        unsafe { libc::kill(pid as i32, sig) };
        let st = wait_exit(&mut child, Duration::from_secs(30));
        let err = stderr_of(&mut child);
        assert_eq!(st.code(), Some(want), "signal {sig}: {err}");
        assert!(
            !has_instance(pid),
            "signal {sig}: instance {} left\n{err}",
            instance_of(pid)
        );
        let journal = PathBuf::from(format!("/run/pinlab/knobs-{pid}.json"));
        assert!(!journal.exists(), "signal {sig}: journal left\n{err}");
    }
}

/// `done when` 3: after SIGKILL the instance stays (nothing in the process runs), journaled; the
/// next run's recovery (under the system lock, which traced runs take) removes it. A bug shows as no journal (the instance would stay forever)
/// or an instance the next run did not remove.
#[test]
fn sigkill_leaves_a_journaled_instance_that_the_next_run_removes() {
    if support::skip_without_kvm() || skip_without_tracefs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    let _r = runs();
    let mut child = spawn_traced(&file, "100000");
    let pid = child.id();
    if !wait_mid_trace(&mut child, &file) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the traced run never got mid-trace: {}",
            stderr_of(&mut child)
        );
    }
    child.kill().expect("SIGKILL");
    let st = child.wait().expect("reap");
    assert_eq!(st.code(), None, "SIGKILL gives no exit code");
    let journal = PathBuf::from(format!("/run/pinlab/knobs-{pid}.json"));
    // Another run's recovery may have removed it already; otherwise both are there.
    if has_instance(pid) {
        let j: Value =
            serde_json::from_slice(&std::fs::read(&journal).expect("journal of a live instance"))
                .unwrap();
        assert!(
            j["tracefs_instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == instance_of(pid)),
            "{j}"
        );
        // The next run that takes the system lock (a traced one does) recovers it first.
        let next_file = dir.path().join("next.json");
        let next = run_pinlab(&[
            "run",
            "--mode",
            "boot",
            "--json",
            "--trace",
            next_file.to_str().unwrap(),
        ]);
        assert!(next.status.success(), "{}", next.show());
        println!("the instance survived SIGKILL, journaled; the next run removed it");
    } else {
        println!("another run's recovery removed the instance first");
    }
    assert!(
        !has_instance(pid),
        "instance {} left after the next run",
        instance_of(pid)
    );
    assert!(!journal.exists(), "journal left after the next run");
}

const MATRIX_A: &str = r#"name = "trace-matrix-a"
about = "Two rounds, nothing perturbs: coherent."
[vm]
memory = "64MiB"
thp = true
[device]
pin = "io-uring"
[workload]
rounds = 3
region = "1MiB"
[expect]
live = "coherent"
"#;

const MATRIX_B: &str = r#"name = "trace-matrix-b"
about = "MADV_DONTNEED on the pinned region: diverged."
[vm]
memory = "64MiB"
thp = true
[device]
pin = "io-uring"
[workload]
rounds = 4
region = "2MiB"
[perturb]
actions = ["dontneed"]
after_round = 1
[expect]
live = "diverged"
"#;

/// `matrix --trace DIR`: one Chrome trace per scenario, named after it, each a valid trace of
/// its own run, and no instance left. A bug shows as one file for the whole matrix (or none), a
/// file that does not parse, or a child that left its instance behind.
#[test]
fn a_traced_matrix_writes_one_trace_per_scenario() {
    if support::skip_without_kvm() || skip_without_tracefs() {
        return;
    }
    let scenarios = tempfile::tempdir().unwrap();
    std::fs::write(scenarios.path().join("a.toml"), MATRIX_A).unwrap();
    std::fs::write(scenarios.path().join("b.toml"), MATRIX_B).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = {
        let _r = runs();
        run_pinlab(&[
            "matrix",
            scenarios.path().to_str().unwrap(),
            "--format",
            "json",
            "--trace",
            out.path().to_str().unwrap(),
        ])
    };
    let show = run.show();
    let m = run.json();
    let rows = m["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{show}");
    let mut pids = Vec::new();
    for name in ["trace-matrix-a", "trace-matrix-b"] {
        let row = rows
            .iter()
            .find(|r| r["scenario"] == name)
            .unwrap_or_else(|| panic!("no row {name}\n{show}"));
        let report = &row["report"];
        if report["verdict"] == "skipped" {
            println!("skipped: {name}: {}", report["reason"]);
            continue;
        }
        let file = pinlab::trace::matrix_trace_path(out.path(), name);
        assert_eq!(report["trace"]["status"], "recorded", "{name}\n{show}");
        assert_eq!(
            report["trace"]["file"].as_str().map(PathBuf::from),
            Some(file.clone()),
            "{name}: traced elsewhere\n{show}"
        );
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{file:?}: {e}\n{show}"));
        let chrome: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{file:?} is not JSON: {e}\n{show}"));
        assert_eq!(
            chrome.pointer("/otherData/pinlab/scenario"),
            Some(&Value::from(name)),
            "{file:?} is another scenario's trace\n{show}"
        );
        pinlab::trace::chrome::check(&bytes).unwrap_or_else(|e| panic!("{file:?}: {e}\n{show}"));
        assert!(
            pinlab::trace::raw_path(&file).exists(),
            "no raw text beside {file:?}\n{show}"
        );
        pids.push(run_pid(report));
    }
    let jsons = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(jsons, pids.len(), "JSON files in DIR\n{show}");
    if pids.len() == 2 {
        assert_ne!(pids[0], pids[1], "both traces from one process\n{show}");
    }
    let left: Vec<String> = pinlab_instances()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| pids.iter().any(|&p| *n == instance_of(p)))
        .collect();
    assert!(left.is_empty(), "instances left: {left:?}\n{show}");
}

/// `matrix`/`sweep --trace` of a file or a missing directory: a usage error (exit 2) before any
/// child runs.
#[test]
fn a_trace_dir_that_is_not_a_writable_directory_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "").unwrap();
    let missing = dir.path().join("missing");
    for (cmd, bad) in [("matrix", &file), ("matrix", &missing), ("sweep", &file)] {
        let mut args = vec![cmd, "--format", "json", "--trace", bad.to_str().unwrap()];
        if cmd == "sweep" {
            args.extend(["--cells", "1"]);
        }
        let run = run_pinlab(&args);
        assert_eq!(run.status.code(), Some(2), "{}", run.show());
        assert!(run.stdout.trim().is_empty(), "it ran\n{}", run.show());
        assert!(run.stderr.contains(bad.to_str().unwrap()), "{}", run.show());
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "wrote into DIR"
    );
}
