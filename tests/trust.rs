//! Trust on every composition (issue 9's defects, each a case that must now hold): every host
//! action on the embedded default gives a verdict about the kernel (never a lab `error`) with
//! every pin, a storm of each action gives the verdict the same action gives at a phase, and the
//! compositions that used to fool the lab do not.
//!
//! Each run is the real `pinlab` binary in its own process, serialized in this file (KSM and
//! swap runs take the system lock anyway). With PINLAB_REQUIRE_KVM=1 a host without /dev/kvm
//! fails these tests instead of skipping them.

use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

mod support;

const PINLAB: &str = env!("CARGO_BIN_EXE_pinlab");
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `pinlab run ARGS --json`; the result and a printable description.
fn run(args: &[&str]) -> (Value, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(PINLAB)
        .arg("run")
        .args(args)
        .arg("--json")
        .output()
        .expect("spawn pinlab");
    let show = format!(
        "`pinlab run {}` -> {:?}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {show}"));
    (v, show)
}

const ACTIONS: [&str; 16] = [
    "fork-parent-write",
    "fork-child-write",
    "fork-child-exit",
    "mprotect-roundtrip",
    "split-pmd",
    "split-folio",
    "kirill",
    "collapse",
    "ksm",
    "compact",
    "pageout",
    "mremap",
    "mremap-dontunmap",
    "uffd-wp",
    "dontneed",
    "bias-1024",
];

/// Every action x every pin on the embedded default: coherent, diverged or skipped (with a
/// reason), and what the model predicts for the running kernel. A bug would be the lab's own
/// layout making an action fail ("no page beside the region") or a verdict the PFNs do not back.
#[test]
fn every_action_on_the_default_gives_a_verdict_about_the_kernel() {
    if support::skip_without_kvm() {
        return;
    }
    let mut bad = Vec::new();
    for pin in ["io-uring", "vmsplice", "mapping"] {
        for a in ACTIONS {
            let (v, show) = run(&["--pin", pin, "--perturb", a]);
            let verdict = v["verdict"].as_str().unwrap_or("?");
            match verdict {
                "skipped" => assert!(
                    v["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "a skip says why: {show}"
                ),
                "coherent" | "diverged" if v["verdict"] == v["expected"] => {}
                _ => bad.push(format!(
                    "{pin} {a}: {verdict} (expected {}): {}",
                    v["expected"], v["reason"]
                )),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "cells without a kernel verdict:\n{}",
        bad.join("\n")
    );
}

/// A storm of an action gives the verdict the same action gives at a phase, for a real pin and
/// for the control group. Before the vCPU was paused around them, a KSM storm filled guest RAM
/// under the running guest (a false `diverged`), an mremap storm re-pointed the memslot under
/// it (a triple fault), and a split-pmd storm found its neighbour already discarded ("no effect").
#[test]
fn a_storm_gives_the_verdict_of_the_same_action_at_a_phase() {
    if support::skip_without_kvm() {
        return;
    }
    let stormable = [
        "fork-parent-write",
        "mprotect-roundtrip",
        "split-pmd",
        "split-folio",
        "collapse",
        "ksm",
        "compact",
        "mremap",
        "mremap-dontunmap",
        "dontneed",
    ];
    let mut bad = Vec::new();
    for pin in ["io-uring", "mapping"] {
        for a in stormable {
            let (at_phase, _) = run(&["--pin", pin, "--perturb", a]);
            let (storm, show) = run(&["--pin", pin, "--perturb", a, "--storm", "3"]);
            if storm["verdict"] != at_phase["verdict"] {
                bad.push(format!(
                    "{pin} {a}: at a phase {}, as a storm {} ({})",
                    at_phase["verdict"], storm["verdict"], storm["reason"]
                ));
                continue;
            }
            let st = &storm["storm"];
            assert_eq!(st["planned"], 3, "{show}");
            assert!(st["ran"].as_u64().unwrap_or(0) >= 1, "{show}");
            assert_eq!(
                storm["evidence"].as_array().map(Vec::len),
                st["ran"].as_u64().map(|n| n as usize),
                "one evidence record per iteration: {show}"
            );
            if ["ksm", "mremap", "mremap-dontunmap", "mprotect-roundtrip"].contains(&a) {
                assert_eq!(
                    st["paused_vcpu"], st["ran"],
                    "{a} must pause the vCPU: {show}"
                );
            }
        }
    }
    assert!(
        bad.is_empty(),
        "storms that disagree with the phase run:\n{}",
        bad.join("\n")
    );
}

/// A fork of a pinned THP already splits the PMD; mprotect-roundtrip after it must still judge
/// its own effect (the PTEs were write-protected and restored), not "a PMD split happened".
#[test]
fn an_action_after_another_judges_its_own_effect() {
    if support::skip_without_kvm() {
        return;
    }
    for pin in ["io-uring", "vmsplice"] {
        let (v, show) = run(&[
            "--pin",
            pin,
            "--perturb",
            "fork-parent-write",
            "--perturb",
            "mprotect-roundtrip",
        ]);
        assert_ne!(v["verdict"], "error", "{show}");
        assert_eq!(v["verdict"], v["expected"], "{show}");
    }
}

/// A storm whose interval is longer than the run never hangs: it stops when the rounds end, and
/// a storm that ran no iteration is the lab's `error`, never a pass.
#[test]
fn a_storm_longer_than_the_run_ends_with_the_rounds_and_is_not_a_pass() {
    if support::skip_without_kvm() {
        return;
    }
    let start = std::time::Instant::now();
    let (v, show) = run(&[
        "--perturb",
        "split-pmd",
        "--storm",
        "3",
        "--interval",
        "30s",
    ]);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{show}"
    );
    assert_eq!(v["verdict"], "error", "{show}");
    assert_eq!(v["storm"]["ran"], 0, "{show}");
    assert_eq!(v["storm"]["ended"], "rounds-ended", "{show}");
}
