//! The live scenario matrix, run as users run it: `pinlab matrix --json` over configs/, each
//! scenario in its own VMM process. This is where the lab proves it can fail: the matrix holds
//! scenarios that must diverge, and a verdict that differs from its expectation fails the test.

use std::process::Command;
use std::time::{Duration, Instant};

mod support;

fn pinlab() -> &'static str {
    env!("CARGO_BIN_EXE_pinlab")
}

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn matrix_meets_every_expectation() {
    if support::skip_without_kvm() {
        return;
    }
    let start = Instant::now();
    let out = Command::new(pinlab())
        .args(["matrix", "--json"])
        .arg(configs())
        .output()
        .expect("spawn pinlab matrix");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let m: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("matrix JSON: {e}\nstdout: {stdout}\nstderr: {stderr}"));
    assert_eq!(m["kind"], "matrix", "{m}");
    assert!(m["identity"]["kernel_release"].is_string(), "{m}");
    let rows = m["rows"].as_array().expect("rows");
    let live: Vec<_> = rows.iter().filter(|r| r["live"] == true).collect();
    let failed: Vec<String> = live
        .iter()
        .filter(|r| r["pass"] != true)
        .map(|r| {
            format!(
                "{}: expected {} got {} ({})",
                r["scenario"], r["expected"], r["verdict"], r["evidence"]
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "mismatches:\n{}\nstderr: {stderr}",
        failed.join("\n")
    );
    assert!(out.status.success(), "matrix exit {:?}", out.status);
    // The bar: >= 20 live scenarios, >= 3 of them expecting a divergence.
    assert!(live.len() >= 20, "only {} live scenarios", live.len());
    let diverging = live.iter().filter(|r| r["expected"] == "diverged").count();
    assert!(diverging >= 3, "only {diverging} scenarios expect diverged");
    // Every perturbation left evidence that it really happened: one record per action, with a
    // summary, and a skipped run says why.
    for r in &live {
        let report = &r["report"];
        if report["verdict"] == "skipped" {
            assert!(
                report["reason"].as_str().is_some_and(|s| !s.is_empty()),
                "{r}"
            );
            println!("skipped {}: {}", r["scenario"], report["reason"]);
            continue;
        }
        let actions = r["actions"].as_array().unwrap().len();
        let evidence = report["evidence"].as_array().unwrap();
        assert!(
            evidence.len() >= actions,
            "{}: {} actions, {} evidence records",
            r["scenario"],
            actions,
            evidence.len()
        );
        for e in evidence {
            assert!(e["summary"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
        }
    }
    println!(
        "matrix: {} live scenarios in {:.1}s",
        live.len(),
        elapsed.as_secs_f64()
    );
}

/// Seed 001 on the live kernel, cow.c style: (scenario, page kind, does fork copy it).
/// A bug in the lab would show as the wrong page kind or no evidence; a change in the kernel's
/// pin-counting rule would flip `copied_at_fork`.
#[test]
fn bias_1024_findings() {
    if support::skip_without_kvm() {
        return;
    }
    let rows = [
        ("live-bias-1024-small.toml", "small", true),
        ("live-bias-1024-thp.toml", "thp-subpage", false),
    ];
    for (file, kind, copied) in rows {
        let out = Command::new(pinlab())
            .arg("run")
            .arg(configs().join(file))
            .arg("--json")
            .output()
            .expect("spawn pinlab");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{file}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        let d = &v["evidence"][0]["details"];
        assert_eq!(d["page_kind"], kind, "{file}: {v}");
        assert_eq!(d["copied_at_fork"], copied, "{file}: {v}");
        assert_eq!(
            v["verdict"], "coherent",
            "{file}: a finding, not a data verdict"
        );
    }
}

/// The matrix fails when a verdict misses its expectation: a scenario directory holding one
/// scenario that wrongly expects coherence for a discarded pinned range.
#[test]
fn matrix_fails_on_a_wrong_expectation() {
    if support::skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(configs().join("live-iouring-dontneed.toml")).unwrap();
    let wrong = text.replace("live = \"diverged\"", "live = \"coherent\"");
    assert_ne!(text, wrong);
    std::fs::write(dir.path().join("wrong.toml"), wrong).unwrap();
    let deadline = Duration::from_secs(60);
    let start = Instant::now();
    let out = Command::new(pinlab())
        .args(["matrix"])
        .arg(dir.path())
        .output()
        .expect("spawn pinlab matrix");
    assert!(start.elapsed() < deadline);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISMATCH"));
}
