//! Finding F1 (issue 16, docs/findings.md) held on the live kernel: one pinned page, reached
//! first in KSM's scan, stops every other process's pages with its content from merging.
//!
//! cow.c style: each row is a scenario, the order the mms enter KSM, and what the helper
//! process (another VM) must show. A kernel that stops a maybe-pinned page from becoming the
//! unstable tree's node (the fix sketched in the findings) turns the pinned-first row's
//! `poisoned` into `merged`, and this test fails, saying so. A lab bug shows as KSM not scanning
//! the helper (the control pages unmerged: the run fails as `error`), or as the shadow-first row
//! not merging.
//!
//! Each run is the real `pinlab` binary in its own process, waited for with a deadline and
//! killed and reaped past it, its output shown on failure. A run that pinlab reports as
//! `skipped` (no /dev/kvm, io_uring or KSM) prints pinlab's reason and passes through. The runs
//! take the system lock and use KSM: the deadline leaves room for other runs holding the lock.
//!
//! The helper's own protocol (`pinlab __ksm-shadow`) is tested without KVM or KSM.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

const PINLAB: &str = env!("CARGO_BIN_EXE_pinlab");
/// The system lock may be held by another run for up to 600 s; the run itself takes seconds.
const RUN_DEADLINE: Duration = Duration::from_secs(900);

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// Runs `pinlab` with `args`, killed past `deadline`; (exit code, stdout, stderr).
fn pinlab(args: &[&str], deadline: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(PINLAB)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinlab");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            child.kill().unwrap();
            let s = child.wait().unwrap();
            panic!(
                "pinlab {args:?} ran past {deadline:?}; killed ({s}); stderr: {}",
                err_t.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out_t.join().unwrap(), err_t.join().unwrap())
}

/// What a row expects of the helper's copies (X) of the pinned pages.
#[derive(Clone, Copy, Debug)]
enum Copies {
    /// None merged, every one made a KSM page and broken again (its frame changed).
    NoneMerged,
    /// Every one merged, two copies per frame.
    AllMerged,
}

#[test]
fn pinned_page_first_in_the_scan_blocks_the_other_process() {
    if support::skip_without_kvm() {
        return;
    }
    // (scenario, order, finding, copies): what a bug or a kernel change would look like is in
    // the module header.
    let rows = [
        (
            "live-iouring-ksm-shadow-pinned-first.toml",
            "pinned-first",
            "poisoned",
            Copies::NoneMerged,
        ),
        (
            "live-iouring-ksm-shadow-shadow-first.toml",
            "shadow-first",
            "merged",
            Copies::AllMerged,
        ),
    ];
    for (file, order, finding, copies) in rows {
        let path = configs().join(file);
        let (code, stdout, stderr) =
            pinlab(&["run", path.to_str().unwrap(), "--json"], RUN_DEADLINE);
        let show = format!("{file}: exit {code:?}\nstdout: {stdout}\nstderr: {stderr}");
        let v: Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{show}"));
        if v["verdict"] == "skipped" {
            println!("skipped {file}: {}", v["reason"]);
            continue;
        }
        assert_eq!(
            v["verdict"], "coherent",
            "a finding, not a data verdict\n{show}"
        );
        assert_eq!(code, Some(0), "{show}");
        let d = &v["evidence"][0]["details"];
        assert_eq!(d["kind"], "ksm-shadow", "{show}");
        assert_eq!(d["order"], order, "{show}");
        let n = |k: &str| {
            d[k].as_u64()
                .unwrap_or_else(|| panic!("details.{k} is not a number\n{show}"))
        };
        let region = n("region_pages");
        assert!(region > 0, "{show}");
        assert_eq!(n("x_pages"), n("copies") * region, "{show}");
        assert!(
            n("y_merged") > 0,
            "KSM scanned the helper: its control pages merged\n{show}"
        );
        assert_eq!(n("region_ksm_pages"), 0, "a pinned page was merged\n{show}");
        assert_eq!(d["region_pfns_kept"], true, "{show}");
        assert_eq!(d["finding"], finding, "{order}: {}\n{show}", d["finding"]);
        match copies {
            Copies::NoneMerged => {
                assert_eq!(n("x_merged"), 0, "{show}");
                assert_eq!(n("x_pfns_changed"), n("x_pages"), "break_cow churn\n{show}");
            }
            Copies::AllMerged => {
                assert_eq!(n("x_merged"), n("x_pages"), "{show}");
                assert_eq!(n("x_frames"), n("region_distinct_pages"), "{show}");
            }
        }
        println!("{file}: {}", v["evidence"][0]["summary"]);
    }
}

/// `pinlab __ksm-shadow`: the helper copies each page of its stdin `copies` times, adds as
/// many control pages, reports where they are, and exits 0 once its stdout's reader goes away.
/// A bug would show as a wrong layout (copies at other offsets than reported), a helper that
/// never exits when released (a leaked process), or one that accepts a short input.
#[test]
fn helper_copies_pages_reports_and_exits_when_released() {
    const PAGE: usize = 4096;
    let pages: Vec<u8> = (0..3u8)
        .flat_map(|i| (0..PAGE).map(move |b| i.wrapping_mul(31) ^ (b as u8)))
        .collect();
    let mut input = tempfile::tempfile().unwrap();
    input.write_all(&pages).unwrap();
    let mut child = Command::new(PINLAB)
        .args(["__ksm-shadow", "--pages", "3", "--copies", "2"])
        .stdin(input.try_clone().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the helper");
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let ready: Value = serde_json::from_slice(&line)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&line)));
    assert_eq!(ready["x_pages"], 6, "{ready}");
    assert_eq!(ready["y_pages"], 3, "{ready}");
    let x = ready["x"].as_u64().unwrap();
    let y = ready["y"].as_u64().unwrap();
    assert_eq!(y, x + 6 * PAGE as u64, "{ready}");
    // Reading another process's memory needs ptrace rights (root here); without them the
    // layout check is skipped, the release check still runs.
    match std::fs::File::open(format!("/proc/{}/mem", child.id())) {
        Ok(mem) => {
            let mut got = vec![0u8; PAGE];
            for copy in 0..2u64 {
                for page in 0..3u64 {
                    mem.read_exact_at(&mut got, x + (copy * 3 + page) * PAGE as u64)
                        .unwrap();
                    let want = &pages[page as usize * PAGE..][..PAGE];
                    assert!(got == want, "copy {copy} of page {page} differs");
                }
            }
            mem.read_exact_at(&mut got, y).unwrap();
            assert!(
                got.chunks_exact(8)
                    .all(|w| w == 0x5348_4144_4f57_5921u64.to_ne_bytes()),
                "the control page"
            );
        }
        Err(e) => println!("layout check skipped: /proc/<pid>/mem: {e}"),
    }
    drop(out);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("the released helper did not exit: {:?}", child.wait());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(0));

    // Input shorter than the pages asked for: refused, with the reason.
    let (code, _, stderr) = {
        let short = tempfile::tempfile().unwrap();
        short.write_all_at(&pages[..PAGE], 0).unwrap();
        let o = Command::new(PINLAB)
            .args(["__ksm-shadow", "--pages", "3", "--copies", "2"])
            .stdin(short)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not 3 pages"), "{stderr}");
}
