//! The model executor's must-reproduce cases, one test per seed claim, plus the cross-check of
//! the modern era against every live scenario's expectation. Every case replays a config from
//! `configs/` (the same files the CLI reads), so a test failure names the scenario to replay:
//! `pinlab replay configs/NAME.toml`.

use std::path::{Path, PathBuf};

use pinlab::config;
use pinlab::model::{model_verdict_for_live, replay, spec, Era, Feature, ModelVerdict, Replay};
use pinlab::scenario::Scenario;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn load(name: &str) -> Scenario {
    let s = config::load(Some(&configs().join(format!("{name}.toml"))))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!s.live, "{name}: model-only scenarios say live = false");
    assert!(
        s.about.contains('"'),
        "{name}: the about paragraph quotes its seed"
    );
    s
}

fn era(name: &str) -> Era {
    name.parse().unwrap()
}

/// Replays `name` under each `(era, verdict key)` row; prints the trace on a mismatch.
fn check(name: &str, rows: &[(&str, &str)]) {
    let s = load(name);
    for (e, want) in rows {
        let r = replay(&s, era(e), true).unwrap_or_else(|err| panic!("{err}"));
        let mut got = r.verdict.key();
        for f in &r.findings {
            got.push('+');
            got.push_str(f);
        }
        assert_eq!(
            &got,
            want,
            "{name} @ {e}: {:?}\n{}",
            r.detail,
            r.trace.unwrap_or_default().join("\n")
        );
        assert_ne!(
            r.met,
            Some(false),
            "{name} @ {e}: the config's own expectation"
        );
    }
}

#[test]
fn seed002_thp_pte_wp() {
    // A pinned subpage of a PTE-mapped THP, write-protected and written: 4.5 copies it.
    check(
        "seed002-thp-pte-wp",
        &[
            ("3.7-4.4", "coherent"),
            ("4.5", "diverged"),
            ("4.6-5.6", "coherent"),
            ("5.19-6.0", "coherent"),
            ("6.1+", "coherent"),
        ],
    );
}

#[test]
fn seed002_kirill_anon_vma() {
    check(
        "seed002-kirill-anon-vma",
        &[
            ("4.5+andrea-v1", "invariant-broken:anon-vma-reach"),
            ("4.6-5.6", "coherent"),
        ],
    );
}

#[test]
fn era59_mprotect_pinned() {
    check(
        "era59-mprotect-pinned",
        &[
            ("5.9-5.17", "diverged"),
            ("5.19-6.0", "coherent"),
            ("6.1+", "coherent"),
        ],
    );
}

#[test]
fn seed000_gup_fast_vs_unmap() {
    check(
        "seed000-gup-fast-vs-unmap",
        &[
            ("2.6.29+kosaki", "diverged"),
            ("5.19-6.0", "coherent"),
            ("6.1+", "coherent"),
        ],
    );
    // The counterexample is the interleaving Nick describes: the count check, then gup_fast,
    // then the unmap.
    let r = replay(
        &load("seed000-gup-fast-vs-unmap"),
        era("2.6.29+kosaki"),
        true,
    )
    .unwrap();
    let t = r.trace.unwrap().join("\n");
    let check_at = t.find("OK to unmap").expect(&t);
    let gup_at = t.find("gup_fast takes").expect(&t);
    let unmap_at = t.find("install swap entries").expect(&t);
    assert!(check_at < gup_at && gup_at < unmap_at, "{t}");
}

#[test]
fn seed000_fork_parent_write() {
    check(
        "seed000-fork-parent-write",
        &[
            ("2.6.29-2.6.31", "diverged"),
            ("5.9-5.17", "coherent"),
            ("5.19-6.0", "coherent"),
            ("6.1+", "coherent"),
        ],
    );
}

/// Each era's row for a seed-004 config: `n/a` where the era lacks `f`, else `verdict`.
fn where_era_has(
    f: Feature,
    verdict: impl Fn(Era) -> &'static str,
) -> Vec<(&'static str, &'static str)> {
    Era::ALL
        .iter()
        .map(|&e| (e.name(), if e.has(f) { verdict(e) } else { "n/a" }))
        .collect()
}

/// Replays `name` under `era` and returns its trace; the steps named in `order` must appear in
/// that order (the interleaving the seed describes).
fn trace_in_order(name: &str, era: Era, order: &[&str]) -> String {
    let r = replay(&load(name), era, true).unwrap();
    let t = r.trace.unwrap_or_default().join("\n");
    let mut at = 0;
    for step in order {
        let i = t[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{name} @ {era}: no `{step}` after offset {at} in\n{t}"));
        at += i + step.len();
    }
    t
}

#[test]
fn seed004_ksm() {
    use Feature::Ksm;
    check(
        "seed004-ksm-clear-flush",
        &where_era_has(Ksm, |_| "coherent"),
    );
    check(
        "seed004-ksm-check-before-clear",
        &where_era_has(Ksm, |_| "diverged"),
    );
    // Without the IPI, KSM stays safe: it clears the PTE itself, gup_fast's recheck sees it.
    check(
        "seed004-ksm-rcu-table-free",
        &where_era_has(Ksm, |_| "coherent"),
    );
}

#[test]
fn seed004_khugepaged() {
    use Feature::Khugepaged;
    check(
        "seed004-khugepaged-clear-flush",
        &where_era_has(Khugepaged, |_| "coherent"),
    );
    check(
        "seed004-khugepaged-check-before-clear",
        &where_era_has(Khugepaged, |_| "diverged"),
    );
    // Page tables RCU-freed, no IPI: lost until gup_fast rechecks the PMD (70cbc3cc78a9, 6.1).
    let fixed = "6.1+".parse::<Era>().unwrap();
    check(
        "seed004-khugepaged-rcu-table-free",
        &where_era_has(
            Khugepaged,
            |e| if e >= fixed { "coherent" } else { "diverged" },
        ),
    );
    // The race is Yang Shi's: gup_fast reads the PTE, the collapse flush does not wait, the
    // count check passes, then gup_fast pins and its PTE recheck passes.
    trace_in_order(
        "seed004-khugepaged-rcu-table-free",
        era("5.19-6.0"),
        &[
            "gup_fast (interrupts off) reads the PTE",
            "pmdp_collapse_flush detaches PMD 0 (no IPI",
            "count check passes",
            "gup_fast takes a pin",
            "rechecks the PTE (unchanged)",
            "the device holds page #0.0 but guest offset 0",
        ],
    );
}

/// The eras before 3.2, when nothing ordered or locked mremap against an rmap walk.
const BEFORE_3_2: [&str; 5] = [
    "2.6.29-2.6.31",
    "2.6.29+kosaki",
    "2.6.32-2.6.33",
    "2.6.34-2.6.37",
    "2.6.38-3.1",
];

#[test]
fn seed003_mremap_order() {
    let broken = "invariant-broken:rmap-sees-migration";
    let dst: Vec<(&str, &str)> = Era::ALL
        .iter()
        .map(|e| {
            (
                e.name(),
                if BEFORE_3_2.contains(&e.name()) {
                    broken
                } else {
                    "coherent"
                },
            )
        })
        .collect();
    check("seed003-mremap-dst-first", &dst);
    let src: Vec<(&str, &str)> = Era::ALL.iter().map(|e| (e.name(), "coherent")).collect();
    check("seed003-mremap-src-first", &src);
    // Before 3.2 the walk visits dst, the entry moves, the walk visits src: missed.
    trace_in_order(
        "seed003-mremap-dst-first",
        era("2.6.38-3.1"),
        &[
            "linked on the anon_vma BEFORE the old one",
            "remove_migration_ptes visits P0's VMA [4, 5)",
            "a MIGRATION ENTRY moves",
            "remove_migration_ptes visits P0's VMA [0, 1)",
            "the walk missed it",
        ],
    );
    // 3.2 fixes it by the order, 3.7 by the lock: each era's mechanism is what its trace shows.
    trace_in_order(
        "seed003-mremap-dst-first",
        era("3.2-3.6"),
        &["anon_vma_moveto_tail"],
    );
    trace_in_order(
        "seed003-mremap-dst-first",
        era("3.7-4.4"),
        &["need_rmap_locks"],
    );
}

#[test]
fn seed001_bias_1024() {
    check(
        "seed001-bias-1024",
        &[
            ("4.6-5.6", "coherent"),
            ("5.8", "coherent"),
            ("5.9-5.17", "coherent+bias-false-positive"),
            ("5.19-6.0", "coherent+bias-false-positive"),
            ("6.1+", "coherent+bias-false-positive"),
        ],
    );
}

/// Every live scenario in configs/: the modern era's verdict equals the live expectation.
#[test]
fn modern_era_agrees_with_every_live_scenario() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for path in config::scenario_files(&configs()).unwrap() {
        let s = config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        if !s.live {
            continue;
        }
        let r = model_verdict_for_live(&s, Era::MODERN).unwrap_or_else(|e| panic!("{e}"));
        checked += 1;
        if r.verdict.live() != Some(s.expected_live()) {
            bad.push(format!(
                "{}: model {} says {}, live expects {}",
                path.display(),
                Era::MODERN,
                r.verdict,
                s.expected_live()
            ));
        }
    }
    assert!(checked >= 1, "no live scenario in configs/");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The planned live matrix (the lead's list), built in memory so it is checked even before the
/// live configs exist: pin kind x action x dontfork -> the 6.18 expectation.
#[test]
fn modern_era_agrees_with_the_planned_live_matrix() {
    use pinlab::scenario::{Action as A, PinKind as P, Verdict as V};
    let rows: &[(P, Option<A>, bool, V)] = &[
        (P::IoUring, None, false, V::Coherent),
        (P::IoUring, Some(A::ForkParentWrite), false, V::Coherent),
        (P::Vmsplice, Some(A::ForkParentWrite), false, V::Diverged),
        (P::IoUring, Some(A::ForkChildWrite), false, V::Coherent),
        (P::Vmsplice, Some(A::ForkChildWrite), false, V::Diverged),
        (P::IoUring, Some(A::ForkChildExit), false, V::Coherent),
        (P::Vmsplice, Some(A::ForkChildExit), false, V::Diverged),
        (P::IoUring, Some(A::MprotectRoundtrip), false, V::Coherent),
        (P::IoUring, Some(A::SplitPmd), false, V::Coherent),
        (P::IoUring, Some(A::SplitFolio), false, V::Coherent),
        (P::IoUring, Some(A::Kirill), false, V::Coherent),
        (P::IoUring, Some(A::Collapse), false, V::Coherent),
        (P::IoUring, Some(A::Ksm), false, V::Coherent),
        (P::Vmsplice, Some(A::Ksm), false, V::Coherent),
        (P::IoUring, Some(A::Compact), false, V::Coherent),
        (P::IoUring, Some(A::Pageout), false, V::Coherent),
        (P::IoUring, Some(A::Mremap), false, V::Coherent),
        (P::IoUring, Some(A::MremapDontunmap), false, V::Coherent),
        (P::IoUring, Some(A::UffdWp), false, V::Coherent),
        (P::IoUring, Some(A::Dontneed), false, V::Diverged),
        (P::Vmsplice, Some(A::Dontneed), false, V::Diverged),
        (P::Vmsplice, Some(A::ForkParentWrite), true, V::Coherent),
        (P::Mapping, Some(A::Dontneed), false, V::Coherent),
        (P::Mapping, Some(A::ForkParentWrite), false, V::Coherent),
        (P::IoUring, Some(A::Bias1024), false, V::Coherent),
    ];
    let mut bad = Vec::new();
    for &(pin, action, dontfork, want) in rows {
        let mut s: Scenario = toml::from_str("").unwrap();
        s.device.pin = pin;
        s.vm.dontfork = dontfork;
        if pin == P::Vmsplice {
            s.workload.directions = pinlab::scenario::Directions::FromGuest;
        }
        s.perturb.actions = action.into_iter().collect();
        s.name = format!("{pin} {action:?} dontfork={dontfork}");
        let r = model_verdict_for_live(&s, Era::MODERN).unwrap();
        if r.verdict.live() != Some(want) {
            bad.push(format!(
                "{}: model says {}, live expects {want}",
                s.name, r.verdict
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The era features each live action needs: the only reasons a live scenario may be `n/a`.
/// Stated here, apart from the model's `Op::needs`, so that a gate the model forgets (or adds)
/// shows up as a difference.
fn live_needs(a: pinlab::scenario::Action) -> Vec<Feature> {
    use pinlab::scenario::Action as A;
    match a {
        A::Ksm => vec![Feature::Ksm],
        A::Collapse => vec![Feature::Khugepaged],
        A::UffdWp => vec![Feature::UffdWp],
        A::MremapDontunmap => vec![Feature::MremapDontunmap],
        _ => vec![],
    }
}

/// `n/a` exactly where `era` lacks a feature the scenario needs, and for such a feature. What a
/// bug would look like: an n/a cell on an era that has everything the scenario uses (a wrong
/// feature table, a stray NotApplicable), or a verdict on an era that lacks what it needs.
/// Returns whether the cell is n/a.
fn assert_na_justified(what: &str, needs: &[Feature], era: Era, r: &Replay) -> bool {
    let lacking: Vec<Feature> = needs.iter().copied().filter(|&f| !era.has(f)).collect();
    if r.verdict == ModelVerdict::NotApplicable {
        let f = r
            .lacks
            .unwrap_or_else(|| panic!("{what} @ {era}: n/a without a lacking feature"));
        assert!(
            lacking.contains(&f),
            "{what} @ {era}: n/a for lack of {f}, but the era lacks only {lacking:?} of the needed {needs:?}"
        );
        true
    } else {
        assert!(
            lacking.is_empty(),
            "{what} @ {era}: the era lacks {lacking:?}, yet the verdict is {}",
            r.verdict
        );
        assert_eq!(r.lacks, None, "{what} @ {era}");
        false
    }
}

/// Every config in configs/ under every era: n/a only where the era lacks a feature the
/// scenario needs, and there always.
#[test]
fn na_only_where_the_era_lacks_a_needed_feature() {
    let (mut na, mut cells) = (0, 0);
    for path in config::scenario_files(&configs()).unwrap() {
        let s = config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        let needs = spec::program(&s).unwrap_or_else(|e| panic!("{e}")).needs();
        for e in Era::ALL {
            let r = replay(&s, e, false).unwrap_or_else(|err| panic!("{err}"));
            na += assert_na_justified(&s.name, &needs, e, &r) as u32;
            cells += 1;
        }
    }
    // Not vacuous: configs/ has scenarios some eras cannot run, and most cells are verdicts.
    assert!(na > 0 && na < cells / 2, "{na} n/a of {cells} cells");
}

/// Every action x pin kind x dontfork has a model verdict under every era (n/a exactly where the
/// era lacks a feature the action needs), and the model never errors.
#[test]
fn every_live_combination_replays_under_every_era() {
    use pinlab::scenario::{Action, PinKind};
    let mut na = 0;
    for a in Action::ALL {
        for pin in PinKind::ALL {
            for dontfork in [false, true] {
                for thp in [false, true] {
                    let mut s: Scenario = toml::from_str("").unwrap();
                    s.device.pin = pin;
                    s.vm.dontfork = dontfork;
                    s.vm.thp = thp;
                    s.perturb.actions = vec![a];
                    let what = format!("{a} {pin} dontfork={dontfork} thp={thp}");
                    let needs = spec::live_program(&s).needs();
                    assert_eq!(needs, live_needs(a), "{what}: features the program needs");
                    for e in Era::ALL {
                        let r = model_verdict_for_live(&s, e)
                            .unwrap_or_else(|err| panic!("{what}: {err}"));
                        if assert_na_justified(&what, &needs, e, &r) {
                            na += 1;
                        }
                        if pin == PinKind::Mapping {
                            assert!(
                                matches!(
                                    r.verdict,
                                    ModelVerdict::Coherent
                                        | ModelVerdict::NotApplicable
                                        | ModelVerdict::InvariantBroken(_)
                                ),
                                "{a} mapping @ {e}: the control group never diverges, got {}",
                                r.verdict
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(na > 0, "no live combination is n/a under any era");
}

/// Benchmark, not a test: `cargo test -p pinlab --release --test replay -- --ignored --nocapture`.
/// Explores every scenario in configs/ that has concurrent threads, under every era,
/// repeatedly, and prints states per second and the time of one full exploration; then the same
/// for `explore::stress_programs`, whose figure is the per-state cost.
#[test]
#[ignore]
fn bench_explorer() {
    use pinlab::model::explore::{explore, stress_programs};
    use std::time::Instant;
    let dir = configs();
    let mut total_states = 0usize;
    let mut total_time = std::time::Duration::ZERO;
    println!("{}", pinlab::model::HEADER);
    for path in config::scenario_files(&dir).unwrap_or_default() {
        let Ok(s) = config::load(Some(&path)) else {
            continue;
        };
        let Ok(prog) = pinlab::model::spec::program(&s) else {
            continue;
        };
        if prog.threads.len() < 2 {
            continue;
        }
        for era in Era::ALL {
            let start = Instant::now();
            let mut runs = 0u32;
            let mut states = 0usize;
            let mut last = None;
            while start.elapsed().as_millis() < 50 || runs < 10 {
                match explore(&prog, era, false) {
                    Ok(o) => {
                        states += o.states;
                        last = Some(o);
                    }
                    Err(_) => break,
                }
                runs += 1;
            }
            let el = start.elapsed();
            total_states += states;
            total_time += el;
            if let Some(o) = last {
                println!(
                    "{:40} {:14} {:>6} states  {:>9.1} us/exploration  {:>6.2} M states/s  {:?}",
                    s.name,
                    era.name(),
                    o.states,
                    el.as_secs_f64() * 1e6 / runs as f64,
                    states as f64 / el.as_secs_f64() / 1e6,
                    o.conclusion
                );
            }
        }
    }
    println!(
        "overall (seed races, per-exploration setup included): {:.2} M states/s",
        total_states as f64 / total_time.as_secs_f64().max(1e-9) / 1e6
    );
    println!("stress programs (per-state cost: setup is negligible next to the search):");
    for (name, prog) in stress_programs() {
        for era in [Era::V3_7, Era::MODERN] {
            let start = Instant::now();
            let mut runs = 0u32;
            let mut states = 0usize;
            let mut last = None;
            while start.elapsed().as_millis() < 300 || runs < 3 {
                match explore(&prog, era, false) {
                    Ok(o) => {
                        states += o.states;
                        last = Some(o);
                    }
                    Err(e) => {
                        println!("{name:40} {:14} error: {e}", era.name());
                        break;
                    }
                }
                runs += 1;
            }
            let el = start.elapsed();
            if let Some(o) = last {
                println!(
                    "{:40} {:14} {:>6} states  {:>9.1} us/exploration  {:>6.2} M states/s  {:?}",
                    name,
                    era.name(),
                    o.states,
                    el.as_secs_f64() * 1e6 / runs as f64,
                    states as f64 / el.as_secs_f64() / 1e6,
                    o.conclusion
                );
            }
        }
    }
}

/// Issue 10 #14: `expect.model` is checked once, by `Scenario::validate`, which `run` and
/// `replay` both go through (`config::load`): an unknown era is refused with its key for both,
/// an old era name or a plain version is accepted by both. A bug would let `run` accept a key
/// that `replay` then refuses (or the reverse).
#[test]
fn expect_model_keys_are_checked_for_run_and_replay() {
    let scenario = |key: &str| -> Scenario {
        toml::from_str(&format!("[expect.model]\n\"{key}\" = \"coherent\"\n")).unwrap()
    };
    let bad = scenario("4.7+foo");
    let err = bad.validate().unwrap_err();
    assert_eq!(err.key, "expect.model.\"4.7+foo\"", "{err}");
    assert!(replay(&bad, Era::MODERN, false).is_err());
    for key in ["4.4", "3.7-4.4", "6.18", "6.1+"] {
        let ok = scenario(key);
        ok.validate().unwrap_or_else(|e| panic!("{key}: {e}"));
        let era: Era = key.parse().unwrap();
        let r = replay(&ok, era, false).unwrap();
        assert_eq!(r.expected.as_deref(), Some("coherent"), "{key} names {era}");
    }
    // Two keys for one era: refused, not one of them silently ignored.
    let twice: Scenario =
        toml::from_str("[expect.model]\n\"4.4\" = \"coherent\"\n\"3.7-4.4\" = \"diverged\"\n")
            .unwrap();
    assert!(twice.validate().is_err());
}
