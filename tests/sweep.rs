//! A shortened `pinlab sweep` (`--cells 100`: an evenly spaced, deterministic subset that meets
//! every pin, action, memory kind and layout), run as users run it. Every cell that ran must
//! agree with the model of the running kernel's era, and none may end in a lab `error`: a bug in
//! the lab, the model or the generation breaks it. Skipped (with the reason) when /dev/kvm cannot
//! be opened, unless PINLAB_REQUIRE_KVM=1.

use std::process::Command;

mod support;

fn pinlab() -> &'static str {
    env!("CARGO_BIN_EXE_pinlab")
}

#[test]
fn a_shortened_sweep_agrees_with_the_model() {
    if support::skip_without_kvm() {
        return;
    }
    let out = Command::new(pinlab())
        .args(["sweep", "--cells", "100", "--json"])
        .output()
        .expect("spawn pinlab sweep");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let s: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("sweep JSON: {e}\nstdout: {stdout}\nstderr: {stderr}"));
    assert_eq!(s["kind"], "sweep", "{s}");
    let rows = s["rows"].as_array().expect("rows");
    let not_built = s["not_built"].as_array().expect("not_built");
    assert_eq!(rows.len() + not_built.len(), 100, "cells asked for");
    assert!(rows.len() >= 80, "only {} cells ran", rows.len());
    for nb in not_built {
        assert!(!nb["why"].as_str().unwrap_or("").is_empty(), "{nb}");
    }
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r["pass"] != true || r["verdict"] == "error")
        .map(|r| {
            format!(
                "{}: model {} live {} ({})",
                r["scenario"], r["expected"], r["verdict"], r["evidence"]
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "disagreements or errors:\n{}\nstderr: {stderr}",
        bad.join("\n")
    );
    // Every memory kind ran, and each of them reached a verdict about the kernel.
    for kind in ["thp", "small", "pte-mapped-thp"] {
        assert!(
            rows.iter()
                .any(|r| r["cell"]["memory"] == kind && r["verdict"] != "skipped"),
            "no {kind} cell ran"
        );
    }
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {stderr}",
        out.status
    );
}
