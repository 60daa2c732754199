//! Fuzzing on stable, in CI: every target of `pinlab::fuzzing` (the same code the cargo-fuzz
//! targets in `fuzz/` run under libFuzzer) on a bounded number of inputs from a seeded PRNG, so a
//! regression a long libFuzzer run would find fails here too; the inputs that once crashed a
//! target, kept as regressions; and a short run of the guest's fuzz mode on the real binary.
//!
//! The PRNG is seeded per target, so a failure names the input number and reproduces: the
//! failing input is also written to a file (named in the message) to hand to
//! `cargo +nightly fuzz run TARGET FILE`.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pinlab::fuzzing;

/// splitmix64: the inputs' only source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Input lengths: mostly short (decoders bail early on them), some long (sequences, reports).
fn input(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.next() % 8 {
        0 => rng.next() % 16,
        1..=4 => rng.next() % 256,
        5 | 6 => rng.next() % 2048,
        _ => rng.next() % 12_000,
    } as usize;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Runs `name` on `count` inputs from its own seed; a panic names the input and its bytes.
fn fuzz(name: &str, count: u32) {
    let target = fuzzing::TARGETS
        .iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .1;
    let seed = name
        .bytes()
        .fold(0xf00d_u64, |h, b| h.rotate_left(8) ^ b as u64);
    let mut rng = Rng(seed);
    let start = Instant::now();
    for i in 0..count {
        let data = input(&mut rng);
        let r = std::panic::catch_unwind(|| target(&data));
        if r.is_err() {
            let file = std::env::temp_dir().join(format!("pinlab-fuzz-{name}-{i}.bin"));
            let saved = std::fs::write(&file, &data).map_or_else(
                |e| format!("not saved: {e}"),
                |()| format!("saved as {}", file.display()),
            );
            panic!(
                "target {name}: input {i} of seed {seed:#x} failed ({} bytes, {saved})",
                data.len()
            );
        }
    }
    println!("{name}: {count} inputs in {:?}", start.elapsed());
}

// 20,000 inputs per target: about 8 s for all of them on an idle 2-core machine (iommu and
// devices, which map guest RAM per input and drive dozens of requests, take most of it), under
// 30 s with the machine shared.

#[test]
fn config() {
    fuzz("config", 20_000);
}

#[test]
fn queue() {
    fuzz("queue", 20_000);
}

#[test]
fn request() {
    fuzz("request", 20_000);
}

#[test]
fn iommu() {
    fuzz("iommu", 20_000);
}

#[test]
fn devices() {
    fuzz("devices", 20_000);
}

#[test]
fn report() {
    fuzz("report", 20_000);
}

#[test]
fn phase_order() {
    fuzz("phase_order", 20_000);
}

#[test]
fn ktap() {
    fuzz("ktap", 20_000);
}

#[test]
fn trace() {
    fuzz("trace", 20_000);
}

/// Every input that once failed a target, kept in `tests/fuzz-regressions/TARGET/` (one file
/// each, the bytes libFuzzer or the run above saved), runs through its target again. A bug: a
/// fixed defect back, or a regression file for a target that no longer exists.
#[test]
fn regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-regressions");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fuzz-regressions") {
        let entry = entry.expect("reading tests/fuzz-regressions");
        let name = entry
            .file_name()
            .into_string()
            .expect("a UTF-8 target name");
        let target = fuzzing::TARGETS
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("tests/fuzz-regressions/{name}: no such target"))
            .1;
        for file in std::fs::read_dir(entry.path()).expect("a target's regressions") {
            let path = file.expect("a regression file").path();
            let data = std::fs::read(&path).expect("reading a regression");
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{} fails again", path.display());
            ran += 1;
        }
    }
    assert!(ran > 0, "no regression ran from {}", dir.display());
}

// ---------------------------------------------------------------------------------------------
// The guest's fuzz mode, on the real binary (as tests/live.rs runs it).

const PINLAB: &str = env!("CARGO_BIN_EXE_pinlab");
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `pinlab ARGS` to completion (killed and reaped at the deadline); (status, stdout,
/// stderr).
fn pinlab(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(PINLAB)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pinlab");
    let drain = |mut p: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = p.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for pinlab") {
            break s;
        }
        if start.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let s = child.wait().expect("reaping pinlab");
            panic!(
                "pinlab {} ran past {RUN_DEADLINE:?}; killed ({s:?})\n{}",
                args.join(" "),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// True (after printing why) when this host cannot run a VM.
fn skip_without_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => false,
        Err(e) => {
            println!("skipped: /dev/kvm cannot be opened: {e}");
            true
        }
    }
}

/// One fuzz-mode run as JSON, or `None` (after saying why) when pinlab skipped it.
fn fuzz_run(extra: &[&str]) -> Option<(serde_json::Value, String)> {
    let mut args = vec!["run", "--mode", "fuzz", "--json"];
    args.extend_from_slice(extra);
    let (status, out, err) = pinlab(&args);
    let show = format!(
        "pinlab {} -> {status:?}\n{out}\n--- stderr ---\n{err}",
        args.join(" ")
    );
    assert_eq!(status.signal(), None, "the VMM died: {show}");
    let j: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("no JSON ({e}): {show}"));
    if j["verdict"] == "skipped" {
        println!("skipped: {}", j["reason"]);
        return None;
    }
    Some((j, show))
}

/// A short fuzz run (20,000 hostile operations, a fork scheduled after round 1): the VMM
/// survives, every valid check passes, the fork runs exactly once, at the guest's own marker,
/// and every random phase marker is refused. The same seed answers the same way twice; another
/// seed does not. A bug: a crash (SIGSEGV on a guard page, a panic), a valid check broken by
/// hostile traffic, a random phase marker running the fork again, or answers that depend on
/// timing.
#[test]
fn guest_fuzz_mode_survives_and_reproduces() {
    if skip_without_kvm() {
        return;
    }
    let common = [
        "--ops",
        "20000",
        "--rounds",
        "4",
        "--perturb",
        "fork-parent-write",
        "--after-round",
        "1",
    ];
    let run = |seed: &str| {
        let mut args = common.to_vec();
        args.extend_from_slice(&["--seed", seed]);
        fuzz_run(&args)
    };
    let Some((j, show)) = run("1") else {
        return;
    };
    assert_eq!(j["verdict"], "coherent", "{show}");
    let f = &j["guest"]["fuzz"];
    assert_eq!(f["ops"], 20_000, "{show}");
    assert_eq!(f["valid_failed"], 0, "{show}");
    assert!(f["valid_passed"].as_u64().unwrap_or(0) > 1000, "{show}");
    let evidence = j["evidence"].as_array().expect("evidence");
    assert_eq!(evidence.len(), 1, "one fork\n{show}");
    let events = j["timeline"]["events"].as_array().expect("timeline");
    assert_eq!(j["timeline"]["dropped"], 0, "{show}");
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count() as u64;
    assert_eq!(count("action"), 1, "{show}");
    assert_eq!(
        count("phase"),
        3 + 4,
        "only the guest's own markers\n{show}"
    );
    assert_eq!(
        count("phase-rejected"),
        f["phases_sent"].as_u64().unwrap_or(0),
        "every random marker refused\n{show}"
    );
    // The fork ran at the guest's marker after round 1, between that marker and round 2's.
    let at =
        |pred: &dyn Fn(&serde_json::Value) -> bool| events.iter().position(pred).expect("event");
    let done1 = at(&|e| e["kind"] == "phase" && e["phase"] == "round-done" && e["round"] == 1);
    let done2 = at(&|e| e["kind"] == "phase" && e["phase"] == "round-done" && e["round"] == 2);
    let action = at(&|e| e["kind"] == "action");
    assert!(done1 < action && action < done2, "{show}");

    let (again, _) = run("1").expect("ran once, runs again");
    assert_eq!(
        again["guest"]["fuzz"], j["guest"]["fuzz"],
        "same seed, same answers"
    );
    let (other, _) = run("2").expect("ran once, runs again");
    assert_ne!(
        other["guest"]["fuzz"]["digest"], j["guest"]["fuzz"]["digest"],
        "another seed, other operations"
    );
    assert_eq!(other["verdict"], "coherent");
}
