//! pinlab as kernel CI runs it: KTAP read line by line, JUnit XML parsed, the kselftest package
//! run under a runner that does what kselftest's runner.sh does, `diff` catching one edited
//! verdict, and an installed binary working outside the checkout.
//!
//! Live cases skip (and say why) when /dev/kvm cannot be opened, unless PINLAB_REQUIRE_KVM=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use pinlab::results::ktap;

mod support;

fn pinlab() -> &'static str {
    env!("CARGO_BIN_EXE_pinlab")
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// A temp dir of three fast configs: default (coherent, 8 rounds), io_uring + DONTNEED
/// (diverged), VFIO + DONTNEED (skipped: no VFIO device on this host).
fn small_set() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let default = std::fs::read_to_string(configs().join("default.toml")).unwrap();
    let edited = default.replace("rounds = 100", "rounds = 8");
    assert_ne!(
        edited, default,
        "configs/default.toml no longer says `rounds = 100`"
    );
    std::fs::write(dir.path().join("default.toml"), edited).unwrap();
    for f in ["live-iouring-dontneed.toml", "live-vfio-dontneed.toml"] {
        std::fs::copy(configs().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    if !out.status.success() {
        eprintln!(
            "{:?}: {}\nstdout:\n{}\nstderr:\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn matrix(dir: &Path, format: &str) -> (String, Option<i32>) {
    let out = run(Command::new(pinlab())
        .args(["matrix", "--format", format])
        .arg(dir));
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        out.status.code(),
    )
}

#[test]
fn matrix_ktap_is_ktap_v1_line_by_line() {
    if support::skip_without_kvm() {
        return;
    }
    let set = small_set();
    let (text, code) = matrix(set.path(), "ktap");
    assert_eq!(code, Some(0), "{text}");
    let summary = ktap::check(&text).unwrap_or_else(|v| panic!("{v}\n{text}"));
    // Independent of `check`: the rules, read off the text.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "KTAP version 1");
    assert_eq!(lines[1], "1..3", "{text}");
    let results: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .collect();
    assert_eq!(results.len(), 3, "{text}");
    for (i, l) in results.iter().enumerate() {
        let num = l.trim_start_matches("not ").trim_start_matches("ok ");
        assert!(num.starts_with(&format!("{} ", i + 1)), "numbering: {l}");
    }
    let vfio = results
        .iter()
        .find(|l| l.contains("live-vfio-dontneed"))
        .expect("vfio row");
    assert!(
        vfio.starts_with("ok ") && vfio.contains(" # SKIP "),
        "{vfio}"
    );
    assert!(lines.iter().all(|l| l.starts_with('#')
        || l.starts_with("ok ")
        || l.starts_with("not ok ")
        || *l == "KTAP version 1"
        || l.starts_with("1..")));
    assert_eq!(summary.planned, 3);
    assert_eq!((summary.passed, summary.skipped, summary.failed), (2, 1, 0));
}

#[test]
fn matrix_junit_has_one_testcase_per_scenario() {
    if support::skip_without_kvm() {
        return;
    }
    let set = small_set();
    let (xml, code) = matrix(set.path(), "junit");
    assert_eq!(code, Some(0), "{xml}");
    let report = quick_junit::Report::deserialize_from_str(&xml)
        .unwrap_or_else(|e| panic!("JUnit XML: {e}\n{xml}"));
    let cases: Vec<String> = report
        .test_suites
        .iter()
        .flat_map(|s| s.test_cases.iter().map(|c| c.name.to_string()))
        .collect();
    let mut sorted = cases.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["default", "live-iouring-dontneed", "live-vfio-dontneed"],
        "{xml}"
    );
}

/// Does what kselftest's runner.sh does for each `collection:test` line: read `timeout=` from
/// the collection's settings, cd there, run `./test` under `timeout`, prefix its output with
/// `# `, and print `ok N selftests: C: T`, `ok ... # SKIP` for exit 4, `not ok ... # exit=RC`.
const RUNNER: &str = r##"#!/bin/sh
BASE_DIR=$(cd "$(dirname "$0")" && pwd)
echo "TAP version 13"
total=$(wc -l < "$BASE_DIR/kselftest-list.txt")
echo "1..$total"
n=0
while IFS=: read -r collection test; do
	n=$((n + 1))
	timeout=45
	while read -r line; do
		case "$line" in \#*) continue;; esac
		field=${line%%=*}
		[ "$field" = timeout ] && timeout=${line#*=}
	done < "$BASE_DIR/$collection/settings"
	hdr="selftests: $collection: $test"
	echo "# $hdr"
	log=$(mktemp)
	(cd "$BASE_DIR/$collection" && timeout "$timeout" "./$test" > "$log" 2>&1)
	rc=$?
	sed -e 's/^/# /' "$log"
	rm -f "$log"
	if [ "$rc" -eq 0 ]; then echo "ok $n $hdr"
	elif [ "$rc" -eq 4 ]; then echo "ok $n $hdr # SKIP"
	else echo "not ok $n $hdr # exit=$rc"; fi
done < "$BASE_DIR/kselftest-list.txt"
"##;

#[test]
fn kselftest_package_runs_under_a_runner_sh_style_runner() {
    if support::skip_without_kvm() {
        return;
    }
    let set = small_set();
    let (direct, code) = matrix(set.path(), "ktap");
    assert_eq!(code, Some(0), "{direct}");
    let direct = ktap::check(&direct).unwrap();

    let pkg = tempfile::tempdir().unwrap();
    let out = run(Command::new(pinlab()).arg("kselftest").arg(pkg.path()));
    assert!(out.status.success());
    let root = pkg.path();
    assert_eq!(
        std::fs::read_to_string(root.join("kselftest-list.txt")).unwrap(),
        "pinlab:pinlab_matrix.sh\n"
    );
    // The package carries the whole embedded set; run it over the small set to stay fast.
    let cfg = root.join("pinlab/configs");
    assert!(std::fs::read_dir(&cfg).unwrap().count() > 3);
    std::fs::remove_dir_all(&cfg).unwrap();
    std::fs::create_dir(&cfg).unwrap();
    for e in std::fs::read_dir(set.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), cfg.join(e.file_name())).unwrap();
    }
    let runner = root.join("run_kselftest.sh");
    std::fs::write(&runner, RUNNER).unwrap();
    let out = run(Command::new("sh").arg(&runner).current_dir("/"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "ok 1 selftests: pinlab: pinlab_matrix.sh"),
        "{text}"
    );
    // The matrix's own KTAP, as the runner prefixed it: the same counts as the direct run.
    let nested: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with("selftests: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let inner = ktap::check(&nested).unwrap_or_else(|v| panic!("{v}\n{nested}"));
    assert_eq!(inner, direct);
    assert_eq!(inner.passed, 2);
}

#[test]
fn diff_reports_exactly_the_edited_regression() {
    if support::skip_without_kvm() {
        return;
    }
    let set = small_set();
    let (json, code) = matrix(set.path(), "json");
    assert_eq!(code, Some(0), "{json}");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    std::fs::write(&a, &json).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = m["rows"].as_array_mut().unwrap();
    let row = rows
        .iter_mut()
        .find(|r| r["scenario"] == "live-iouring-dontneed")
        .unwrap();
    assert_eq!(row["verdict"], "diverged");
    row["verdict"] = "coherent".into();
    row["pass"] = false.into();
    std::fs::write(&b, serde_json::to_string(&m).unwrap()).unwrap();

    let out = Command::new(pinlab())
        .args(["diff", "--format", "json"])
        .args([&a, &b])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["regressions"], 1, "{d}");
    let scen = d["scenarios"].as_array().unwrap();
    assert_eq!(scen[0]["scenario"], "live-iouring-dontneed");
    assert_eq!(scen[0]["change"], "regression");
    assert!(scen[1..].iter().all(|s| s["change"] == "same"), "{d}");
    assert!(d["a"]["identity"]["kernel_release"].is_string(), "{d}");

    // The same comparison as KTAP: one failing case; a file against itself: exit 0.
    let out = Command::new(pinlab())
        .args(["diff", "--format", "ktap"])
        .args([&a, &b])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let s = ktap::check(&text).unwrap_or_else(|v| panic!("{v}\n{text}"));
    assert_eq!(s.failed, 1, "{text}");
    let same = Command::new(pinlab())
        .arg("diff")
        .args([&a, &a])
        .output()
        .unwrap();
    assert_eq!(same.status.code(), Some(0));

    // Not a result, and no scenario in common: exit 2.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, r#"{"hello": 1}"#).unwrap();
    let out = Command::new(pinlab())
        .arg("diff")
        .args([&a, &junk])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pinlab result"));
    m["rows"] = serde_json::json!([]);
    std::fs::write(&b, serde_json::to_string(&m).unwrap()).unwrap();
    let out = Command::new(pinlab())
        .arg("diff")
        .args([&a, &b])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scenario in common"));
}

/// `cargo install` into a temp root, reusing this build's target dir, then the installed binary
/// from another directory. Measured on the lab host: see docs/ci.md.
#[test]
fn an_installed_binary_works_outside_the_checkout() {
    let exe = Path::new(pinlab());
    let target = exe.parent().and_then(Path::parent).expect("target dir");
    let root = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let start = Instant::now();
    let out = run(Command::new(cargo)
        .args(["install", "--path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")))
        .arg("--root")
        .arg(root.path())
        .args(["--locked", "--offline", "--target-dir"])
        .arg(target));
    println!("cargo install took {:.1}s", start.elapsed().as_secs_f64());
    assert!(out.status.success());
    let bin = root.path().join("bin/pinlab");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run(Command::new(&bin)
        .args(["replay", "--format", "ktap"])
        .current_dir(elsewhere.path()));
    assert!(out.status.success());
    ktap::check(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let out = run(Command::new(&bin)
        .args(["replay", "seed000-fork-parent-write"])
        .current_dir(elsewhere.path()));
    assert!(out.status.success());
    if support::skip_without_kvm() {
        return;
    }
    let one = tempfile::tempdir().unwrap();
    let default = std::fs::read_to_string(configs().join("default.toml")).unwrap();
    std::fs::write(
        one.path().join("default.toml"),
        default.replace("rounds = 100", "rounds = 8"),
    )
    .unwrap();
    let out = run(Command::new(&bin)
        .args(["matrix", "--format", "ktap"])
        .arg(one.path())
        .current_dir(elsewhere.path()));
    assert!(out.status.success());
    let s = ktap::check(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!((s.planned, s.passed), (1, 1));
}
