//! The HTML reports in a real browser: `pinlab run|matrix|replay --report FILE.html`, opened in
//! headless Chromium, which takes a screenshot (decoded: it must not be blank) and dumps the DOM
//! (it must hold the parts the page promises: the verdict banner, one timeline lane per kind of
//! event the run had, one strip cell per region page, one grid cell per scenario and era), and
//! whose log must show no console, CSP or parse error. Where Chromium is missing (and `.ci/run`
//! could not install it) or /dev/kvm is, a test says so and returns.
//!
//! Each browser and each pinlab is its own process with a deadline; it is killed (by its PID)
//! and reaped if it overruns, and its output is shown on failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

/// The model's eras: one row or cell each.
const ERAS: usize = pinlab::model::Era::ALL.len();

fn pinlab() -> &'static str {
    env!("CARGO_BIN_EXE_pinlab")
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// The Chromium binary on PATH, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err("skipped: no chromium on PATH (.ci/run installs Debian's `chromium`; apt-get failed or was not run)".into())
}

/// What a report test needs: /dev/kvm when it runs the VMM (`kvm`; see `support`), and
/// Chromium. `None` (the reason printed) when the test is skipped.
fn prerequisites(kvm: bool) -> Option<PathBuf> {
    if kvm && support::skip_without_kvm() {
        return None;
    }
    chromium().map_err(|why| println!("{why}")).ok()
}

/// Runs `cmd` to completion or kills it at `deadline`.
fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain the pipes on their own threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).ok();
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).ok();
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > deadline {
            child.kill().ok();
            let s = child.wait().expect("reap");
            let stderr = t_err.join().unwrap();
            panic!(
                "{cmd:?} overran {deadline:?} ({s}); stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn pinlab_cmd(args: &[&str]) -> Output {
    let mut c = Command::new(pinlab());
    c.args(args);
    run_with_deadline(c, Duration::from_secs(300))
}

/// What the browser made of a page.
struct Rendered {
    dom: String,
    png: PathBuf,
    log: String,
}

fn browser(exe: &Path, profile: &Path, extra: &[String], page: &Path) -> Output {
    let mut c = Command::new(exe);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()));
    run_with_deadline(c, Duration::from_secs(120))
}

/// Screenshot and DOM of `page`, each from a fresh profile.
fn render(exe: &Path, page: &Path, dir: &Path) -> Rendered {
    let png = page.with_extension("png");
    let shot = browser(
        exe,
        &dir.join("profile-shot"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1400,2000".into(),
        ],
        page,
    );
    assert!(
        shot.status.success(),
        "screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let dom = browser(exe, &dir.join("profile-dom"), &["--dump-dom".into()], page);
    assert!(
        dom.status.success(),
        "dump-dom: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    Rendered {
        dom: String::from_utf8_lossy(&dom.stdout).into_owned(),
        png,
        log: format!(
            "{}\n{}",
            String::from_utf8_lossy(&shot.stderr),
            String::from_utf8_lossy(&dom.stderr)
        ),
    }
}

/// The console messages, script errors, CSP refusals and load failures in a browser log.
fn log_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            [
                "CONSOLE",
                "Uncaught",
                "Content Security Policy",
                "Refused to",
                "net::ERR_",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect()
}

/// The page logged none of them.
fn assert_clean_log(log: &str) {
    let bad = log_errors(log);
    assert!(
        bad.is_empty(),
        "the page logged errors:\n{}",
        bad.join("\n")
    );
}

/// The screenshot is a real page: many colours, a fair share of ink.
fn assert_not_blank(png: &Path, min_colours: usize) {
    let file = std::fs::File::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!(
        (info.width, info.height),
        (1400, 2000),
        "the window size asked for"
    );
    let channels = info.color_type.samples();
    let pixels = buf[..info.buffer_size()].chunks(channels);
    let mut colours = BTreeSet::new();
    let mut ink = 0usize;
    let total = (info.width * info.height) as usize;
    for p in pixels {
        let rgb = (p[0], p[1], p[2]);
        if rgb != (255, 255, 255) {
            ink += 1;
        }
        if colours.len() < 100_000 {
            colours.insert(rgb);
        }
    }
    assert!(
        colours.len() >= min_colours,
        "only {} distinct colours in {}",
        colours.len(),
        png.display()
    );
    assert!(
        ink * 100 >= total * 3,
        "only {ink} of {total} pixels are not white in {}",
        png.display()
    );
}

/// The values of `attr="..."` on elements whose tag text contains `marker`.
fn attr_values(dom: &str, marker: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in dom.match_indices(marker) {
        let tag_start = dom[..i].rfind('<').unwrap_or(0);
        let tag_end = i + dom[i..].find('>').unwrap_or(0);
        let tag = &dom[tag_start..tag_end];
        let key = format!("{attr}=\"");
        if let Some(k) = tag.find(&key) {
            let v = &tag[k + key.len()..];
            out.push(v[..v.find('"').unwrap_or(0)].to_string());
        }
    }
    out
}

/// Sum of `data-count` over the hover cells inside the group named `group`.
fn cells_in_group(dom: &str, group: &str) -> (usize, u32) {
    let start = dom
        .find(&format!("data-name=\"{group}\""))
        .unwrap_or_else(|| panic!("no group {group}"));
    let end = start + dom[start..].find("</g>").unwrap();
    let g = &dom[start..end];
    let counts: Vec<u32> = attr_values(g, "data-count=", "data-count")
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    (counts.len(), counts.iter().sum())
}

#[test]
fn run_report_renders_with_its_parts() {
    let Some(exe) = prerequisites(true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("run.html");
    let cfg = configs().join("live-iouring-dontneed.toml");
    let out = pinlab_cmd(&[
        "run",
        cfg.to_str().unwrap(),
        "--rounds",
        "8",
        "--report",
        page.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pinlab run: {stderr}");
    let r = render(&exe, &page, dir.path());
    assert_clean_log(&r.log);
    assert_not_blank(&r.png, 200);
    // The banner, with the verdict the scenario expects.
    assert!(
        r.dom.contains("id=\"banner\" data-verdict=\"diverged\""),
        "banner"
    );
    // One lane per kind of event the run had, each once.
    let lanes = attr_values(&r.dom, "class=\"lane\"", "data-name");
    for want in [
        "rounds",
        "dma-from-guest",
        "dma-to-guest",
        "iommu",
        "actions",
    ] {
        assert_eq!(
            lanes.iter().filter(|l| *l == want).count(),
            1,
            "lane {want} in {lanes:?}"
        );
    }
    // One strip cell per region page (runs of equal cells carry their count), 2 MiB = 512.
    let (_, pages) = cells_in_group(&r.dom, "region:512");
    assert_eq!(pages, 512, "strip cells");
    // One RAM map cell per 2 MiB block of the 64 MiB guest.
    let (blocks, _) = cells_in_group(&r.dom, "ram:32");
    assert_eq!(blocks, 32, "RAM map cells");
    // The model on every era, and the scenario as run.
    assert_eq!(attr_values(&r.dom, "<tr data-era=", "data-era").len(), ERAS);
    assert!(
        r.dom.contains("name = \"live-iouring-dontneed\""),
        "scenario TOML"
    );
}

#[test]
fn a_run_that_ends_in_error_still_writes_a_report_that_says_why() {
    if support::skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("spin.html");
    // A guest that spins without a doorbell: the watchdog stops it, the run is `error`.
    let out = pinlab_cmd(&[
        "run",
        "--mode",
        "spin",
        "--watchdog",
        "200ms",
        "--expect",
        "error",
        "--report",
        page.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&page).expect("the report was written");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(html.contains("data-verdict=\"error\""));
    let why = html.find("<b>why: </b>").expect("a reason in the banner");
    assert!(
        html[why..].contains("watchdog"),
        "{}",
        &html[why..why + 300]
    );
}

#[test]
fn an_unwritable_report_path_is_a_usage_error_before_the_vm_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("no/such/dir/r.html");
    for args in [
        vec!["run", "--report", bad.to_str().unwrap()],
        vec!["replay", "--report", bad.to_str().unwrap()],
        vec!["matrix", "--report", dir.path().to_str().unwrap()],
        vec!["sweep", "--report", bad.to_str().unwrap()],
        vec!["bench", "--report", bad.to_str().unwrap()],
    ] {
        let start = Instant::now();
        let out = pinlab_cmd(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("report "), "{args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{args:?}: nothing ran, nothing printed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{args:?}: it failed first"
        );
    }
}

#[test]
fn matrix_report_renders_a_section_per_scenario_and_stays_small() {
    let Some(exe) = prerequisites(true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("configs");
    std::fs::create_dir(&set).unwrap();
    let names = [
        "live-iouring-dontneed.toml",
        "live-mapping-dontneed.toml",
        "live-iouring-split-pmd.toml",
    ];
    for n in names {
        std::fs::copy(configs().join(n), set.join(n)).unwrap();
    }
    let page = dir.path().join("matrix.html");
    let out = pinlab_cmd(&[
        "matrix",
        set.to_str().unwrap(),
        "--report",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&page).unwrap().len();
    // Three scenarios; 30 must stay under 2 MiB, so three well under a tenth of it.
    assert!(size < 200 << 10, "{size} bytes for 3 scenarios");
    let r = render(&exe, &page, dir.path());
    assert_clean_log(&r.log);
    assert_not_blank(&r.png, 100);
    assert!(r.dom.contains("id=\"summary\""));
    for i in 0..names.len() {
        let id = format!("id=\"run-{i}\"");
        assert!(r.dom.contains(&id), "section {i}");
        assert!(r.dom.contains(&format!("href=\"#run-{i}\"")), "link to {i}");
    }
    assert_eq!(r.dom.matches("id=\"banner\"").count(), names.len());
    // Each section's strip: 512 pages for the 2 MiB regions, 256 for split-pmd's 1 MiB.
    for (group, n) in [("region:512", 2), ("region:256", 1)] {
        let found = r.dom.matches(&format!("data-name=\"{group}\"")).count();
        assert_eq!(found, n, "{group}");
    }
    let (_, pages) = cells_in_group(&r.dom, "region:256");
    assert_eq!(pages, 256);
    assert!(r.dom.contains("pinxaction"), "the pin x action grid");
}

/// Four cells of the sweep against the 3.7-4.4 model: on this kernel one of the two that can be
/// built disagrees with it (a fork no longer breaks a THP's pin), so the page has a compact row
/// for the one that agrees, a full section for the one that does not, and the two not built.
#[test]
fn sweep_report_draws_disagreements_in_full_and_the_rest_as_rows() {
    let Some(exe) = prerequisites(true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("sweep.html");
    let json = pinlab_cmd(&[
        "sweep",
        "--cells",
        "4",
        "--era",
        "4.4",
        "--json",
        "--report",
        page.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&json.stderr);
    let s: serde_json::Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let rows = s["rows"].as_array().unwrap();
    let failed: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| !r["pass"].as_bool().unwrap() || r["verdict"] == "error")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        json.status.code(),
        Some(if failed.is_empty() { 0 } else { 1 }),
        "{stderr}"
    );
    assert!(
        !failed.is_empty(),
        "the old era disagrees somewhere: {rows:?}"
    );
    let size = std::fs::metadata(&page).unwrap().len();
    assert!(size < 200 << 10, "{size} bytes for 4 cells");
    let r = render(&exe, &page, dir.path());
    assert_clean_log(&r.log);
    assert_not_blank(&r.png, 100);
    assert!(r.dom.contains("id=\"summary\""));
    // One row per cell that ran, failures first; one section per failure, none for the rest.
    let ids = attr_values(&r.dom, "data-failed=", "id");
    assert_eq!(ids.len(), rows.len(), "{ids:?}");
    assert_eq!(ids[0], format!("cell-{}", failed[0]));
    assert_eq!(
        r.dom.matches("<section class=\"run\"").count(),
        failed.len()
    );
    assert_eq!(r.dom.matches("id=\"banner\"").count(), failed.len());
    for i in &failed {
        assert!(r.dom.contains(&format!("id=\"run-{i}\"")), "section {i}");
        assert!(r.dom.contains(&format!("href=\"#run-{i}\"")), "link to {i}");
        // The thp/aligned cell's region is 1 MiB: a strip of 256 pages in its section.
        let (_, pages) = cells_in_group(&r.dom, "region:256");
        assert_eq!(pages, 256);
    }
    // The grid: one per memory kind met, every cell in it (ran or not built).
    let kinds = attr_values(&r.dom, "pinxaction", "data-kind");
    assert_eq!(kinds, ["thp", "small", "pte-mapped-thp"]);
    let not_built = s["not_built"].as_array().unwrap().len();
    assert_eq!(r.dom.matches("· not built</td>").count(), not_built);
    assert_eq!(r.dom.matches("<a class=\"badge v-").count(), rows.len());
}

#[test]
fn replay_report_renders_one_cell_per_scenario_and_era() {
    let Some(exe) = prerequisites(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("replay.html");
    let a = configs().join("seed000-fork-parent-write.toml");
    let b = configs().join("live-iouring-kirill.toml");
    let out = pinlab_cmd(&[
        "replay",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--report",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = render(&exe, &page, dir.path());
    assert_clean_log(&r.log);
    assert_not_blank(&r.png, 30);
    let scenarios = attr_values(&r.dom, "<tr data-scenario=", "data-scenario");
    assert_eq!(
        scenarios,
        ["live-iouring-kirill", "seed000-fork-parent-write"]
    );
    let cells = attr_values(&r.dom, "<td class=\"v-", "data-era");
    assert_eq!(cells.len(), 2 * ERAS, "one cell per scenario and era");
    assert_eq!(
        r.dom.matches("<details>").count(),
        2 * ERAS,
        "each opens its trace"
    );
    assert!(r.dom.contains("(simulated)"));
}

/// A short bench (DMA over 16 MiB, maps of 64 MiB, two launches, one trial each: seconds, not
/// the minutes of `--scale`) with `--json` and `--report`: the JSON on stdout, the page in the
/// file, rendered clean, one goals row per goal the JSON's sections state, and the note that
/// the curves need `--scale`.
#[test]
fn bench_report_renders_its_goals_and_says_the_curves_need_scale() {
    let Some(exe) = prerequisites(true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bench.html");
    #[rustfmt::skip]
    let out = pinlab_cmd(&[
        "bench", "--only", "dma", "--only", "map", "--only", "launch",
        "--region", "16MiB", "--map-size", "64MiB", "--map-size-4k", "64MiB",
        "--launches", "2", "--trials", "1", "--json", "--report", page.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pinlab bench: {stderr}");
    let j: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert!(j["scale"].is_null() && j["dma"].is_object(), "{j}");
    let r = render(&exe, &page, dir.path());
    assert_clean_log(&r.log);
    assert_not_blank(&r.png, 30);
    // DMA: best raw and memcpy, both directions; map: the one THP size; launch: two.
    let goals = attr_values(&r.dom, "<tr data-goal=", "data-goal");
    assert_eq!(
        goals,
        ["dma", "dma", "dma", "dma", "map", "launch", "launch"],
        "goal rows"
    );
    // Each row's verdict follows the JSON's figure: the map ratio against 1.25.
    let map_ratio = j["map"][0]["map_vs_raw"].as_f64().expect("a map ratio");
    let mets = attr_values(&r.dom, "<tr data-goal=", "data-met");
    let want = if map_ratio <= 1.25 { "met" } else { "missed" };
    assert_eq!(mets[4], want, "map/raw {map_ratio}");
    assert!(
        r.dom.contains(&format!("{map_ratio:.2}x")),
        "the ratio shown"
    );
    for id in [
        "machine",
        "figures-dma",
        "figures-map",
        "figures-launch",
        "no-curves",
    ] {
        assert!(r.dom.contains(&format!("id=\"{id}\"")), "{id}");
    }
    assert!(
        !r.dom.contains("class=\"chart\""),
        "no curve without --scale"
    );
}

/// The log check can fail: a page under the reports' CSP that loads an image from the network
/// and runs a script is caught (the browser refuses both and logs it).
#[test]
fn the_log_check_sees_a_page_that_breaks_the_policy() {
    let Some(exe) = prerequisites(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    let html = format!(
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"{}\"></head>\
         <body><img src=\"http://example.invalid/x.png\"><script>console.error('x')</script></body></html>",
        pinlab::html::page::CSP
    );
    std::fs::write(&page, html).unwrap();
    let out = browser(
        &exe,
        &dir.path().join("profile"),
        &["--dump-dom".into()],
        &page,
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let bad = log_errors(&log);
    assert!(
        bad.iter().any(|l| l.contains("Content Security Policy")),
        "the refusal was not seen: {log}"
    );
}
