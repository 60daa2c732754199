//! The matrix page (`pinlab matrix --report FILE.html`): a summary (counts per verdict,
//! mismatches first), a pin x action grid per memory kind (THP on / off), one row per scenario
//! (expected, verdict, time) linking to its own section with the run's banner, timeline, page
//! strip and RAM map.
//!
//! The matrix keeps each child's result as JSON (`matrix::Row::report`); a section's data is
//! read from it through the `Deserialize` structs of `view` (only the fields drawn), and the
//! scenario's layout from the scenario the row ran (the caller's loaded set).

use std::collections::{BTreeMap, BTreeSet};

use maud::{html, Markup};

use super::page::{self, verdict_badge};
use super::view::{ChildResult, RunView};
use super::{palette, run, Result};
use crate::layout::Layout;
use crate::matrix::Row;
use crate::scenario::{Scenario, Verdict};

/// Why a row's section cannot draw its run.
#[derive(Debug, thiserror::Error)]
pub enum NoView {
    /// The child printed no result (it crashed, overran its deadline or was stopped).
    #[error("no result: {evidence}")]
    NoResult { evidence: String },
    /// The child's JSON is not a run result this page can read.
    #[error("the result could not be read: {0}")]
    Unreadable(#[source] serde_json::Error),
}

/// What a row's section draws: its run, read from the child's JSON, with `layout` (its
/// scenario's) for the strip and the RAM map.
pub fn view_of(row: &Row, layout: Option<Layout>) -> std::result::Result<RunView, NoView> {
    match &row.report {
        None => Err(NoView::NoResult {
            evidence: row.evidence.clone(),
        }),
        Some(j) => serde_json::from_value::<ChildResult>(j.clone())
            .map(|c| c.into_view(layout))
            .map_err(NoView::Unreadable),
    }
}

/// A row with what its section needs.
struct Entry<'a> {
    idx: usize,
    row: &'a Row,
    scenario: Option<Scenario>,
    view: std::result::Result<RunView, NoView>,
}

fn anchor(i: usize) -> String {
    format!("run-{i}")
}

fn entries<'a>(rows: &'a [Row], scenarios: &[Scenario]) -> Vec<Entry<'a>> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.live)
        .map(|(idx, row)| {
            let scenario = scenarios.iter().find(|s| s.name == row.scenario).cloned();
            let layout = scenario.as_ref().and_then(|s| s.layout().ok());
            let view = view_of(row, layout);
            Entry {
                idx,
                row,
                scenario,
                view,
            }
        })
        .collect()
}

fn verdict_of(r: &Row) -> Verdict {
    r.verdict.unwrap_or(Verdict::Error)
}

fn actions_of(r: &Row) -> String {
    if r.actions.is_empty() {
        "none".into()
    } else {
        r.actions.join(" + ")
    }
}

fn summary(es: &[Entry<'_>], model_only: usize) -> Markup {
    let mut counts: BTreeMap<Verdict, usize> = BTreeMap::new();
    for e in es {
        *counts.entry(verdict_of(e.row)).or_default() += 1;
    }
    let failed: Vec<&Entry<'_>> = es.iter().filter(|e| !e.row.pass).collect();
    html! {
        div id="summary" {
            p {
                b { (es.len()) " live scenarios: " }
                @if failed.is_empty() {
                    span.met { "every verdict meets its expectation" }
                } @else {
                    span.unmet { (failed.len()) " do not meet their expectation" }
                }
                "; " (model_only) " model-only scenarios (see " code { "pinlab replay" } ")."
            }
            p {
                @for (v, n) in &counts {
                    span data-count=(n) { (verdict_badge(*v)) " × " (n) } "  "
                }
            }
            @if !failed.is_empty() {
                h3 { "Mismatches" }
                ul id="mismatches" {
                    @for e in &failed {
                        li { a href={"#" (anchor(e.idx))} { (e.row.scenario) } ": expected "
                             (e.row.expected.map_or("-".into(), |v| v.to_string())) ", got "
                             (verdict_badge(verdict_of(e.row))) " — " (e.row.evidence) }
                    }
                }
            }
        }
    }
}

fn grid(es: &[Entry<'_>]) -> Markup {
    let thp_of = |e: &Entry<'_>| e.scenario.as_ref().map(|s| s.vm.thp);
    let kinds: BTreeSet<Option<bool>> = es.iter().map(thp_of).collect();
    html! {
        @for kind in kinds.iter().rev() {
            @let these: Vec<&Entry<'_>> = es.iter().filter(|e| thp_of(e) == *kind).collect();
            @let pins: BTreeSet<&str> = these.iter().map(|e| e.row.pin.as_str()).collect();
            @let acts: BTreeSet<String> = these.iter().map(|e| actions_of(e.row)).collect();
            h3 { "Memory: " (match kind { Some(true) => "THP on", Some(false) => "THP off", None => "unknown (scenario file unreadable)" }) }
            table.grid.pinxaction {
                tr { th.name { "action \\ pin" } @for p in &pins { th.mono { (p) } } }
                @for a in &acts {
                    tr {
                        th.name.mono { (a) }
                        @for p in &pins {
                            @let cell: Vec<&&Entry<'_>> = these.iter().filter(|e| e.row.pin == *p && &actions_of(e.row) == a).collect();
                            @if cell.is_empty() {
                                td.empty { "" }
                            } @else {
                                td {
                                    @let several = cell.len() > 1;
                                    @for e in &cell {
                                        @let (class, sym) = palette::verdict_class(verdict_of(e.row));
                                        div {
                                            a class={"badge " (class)} href={"#" (anchor(e.idx))} title=(e.row.scenario) {
                                                (sym) " " (verdict_of(e.row).to_string())
                                                @if !e.row.pass { " ≠" }
                                            }
                                            // Two scenarios in one cell: say which is which.
                                            @if several { " " span.note.mono { (e.row.scenario) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.note { "Each badge links to its scenario's section; ≠ marks a verdict that does not meet its expectation." }
    }
}

fn table(es: &[Entry<'_>]) -> Markup {
    // Mismatches first, then by name.
    let mut order: Vec<&Entry<'_>> = es.iter().collect();
    order.sort_by_key(|e| (e.row.pass, e.row.scenario.clone()));
    html! {
        table id="scenarios" {
            tr { th { "scenario" } th { "pin" } th { "actions" } th { "expected" } th { "verdict" } th.num { "seconds" } th { "evidence" } }
            @for e in order {
                tr data-pass=(e.row.pass) {
                    td.mono.name { a href={"#" (anchor(e.idx))} { (e.row.scenario) } }
                    td.mono { (e.row.pin) }
                    td.mono { (actions_of(e.row)) }
                    td { (e.row.expected.map_or("-".into(), |v| v.to_string())) }
                    td { (verdict_badge(verdict_of(e.row))) @if !e.row.pass { " " span.unmet { "≠ expected" } } }
                    td.num { (format!("{:.2}", e.row.seconds)) }
                    td { (e.row.evidence) }
                }
            }
        }
    }
}

fn section(e: &Entry<'_>) -> Result<Markup> {
    run_section(&anchor(e.idx), e.row, &e.view, None)
}

/// The section of one row, with element id `id`: its banner and the run's charts (compact
/// timeline), or why there is no run to draw, with `note` under its heading. Shared with the
/// sweep page.
pub fn run_section(
    id: &str,
    row: &Row,
    view: &std::result::Result<RunView, NoView>,
    note: Option<&str>,
) -> Result<Markup> {
    Ok(html! {
        section.run id=(id) {
            h2 { (row.scenario) " " span.note.mono { (row.origin.to_string()) } }
            @if let Some(n) = note { p.note { (n) } }
            @match view {
                Ok(v) => { (run::banner(v)) (run::sections(v, &format!("{id}-"), super::timeline::Detail::Compact)?) }
                Err(why) => {
                    p { (verdict_badge(verdict_of(row))) " " (why.to_string()) }
                }
            }
            p { a href="#summary" { "↑ summary" } }
        }
    })
}

/// The matrix page of `rows`; `scenarios` are the ones the rows ran (by name), for their layouts.
pub fn page(rows: &[Row], scenarios: &[Scenario]) -> Result<Markup> {
    let es = entries(rows, scenarios);
    let model_only = rows.iter().filter(|r| !r.live).count();
    let mut sections = Vec::new();
    for e in &es {
        sections.push(section(e)?);
    }
    let id = es
        .iter()
        .find_map(|e| e.view.as_ref().ok().map(|v| v.identity.clone()))
        .unwrap_or_else(crate::identity::Identity::of_this_host);
    let body = html! {
        nav.toc { a href="#summary" { "summary" } a href="#grid" { "pin × action" } a href="#scenarios" { "scenarios" } }
        (summary(&es, model_only))
        h2 id="grid" { "Pin × action" }
        (grid(&es))
        h2 { "Scenarios" }
        (table(&es))
        @for s in sections { (s) }
    };
    Ok(page::document(
        "pinlab matrix",
        &page::produced_by(&id, "live matrix, each scenario in its own VMM process"),
        body,
    ))
}

/// Renders the matrix `rows` (of `scenarios`) into `file`; returns its size.
pub fn write(file: super::ReportFile, rows: &[Row], scenarios: &[Scenario]) -> Result<u64> {
    file.write(&page(rows, scenarios)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, verdict: Verdict, pass: bool, report: Option<serde_json::Value>) -> Row {
        Row {
            scenario: name.into(),
            origin: crate::config::Origin::Embedded("default.toml"),
            live: true,
            pin: "io-uring".into(),
            actions: vec![],
            expected: Some(Verdict::Coherent),
            verdict: Some(verdict),
            evidence: "why".into(),
            seconds: 0.5,
            pass,
            report,
        }
    }

    #[test]
    fn mismatches_come_first_and_every_row_has_its_section() {
        let s = crate::config::load(None).unwrap();
        let o = crate::report::Outcome::skipped(&s, "no kvm".into());
        let j = serde_json::to_value(&o).unwrap();
        let rows = vec![
            row("a-ok", Verdict::Skipped, true, Some(j)),
            row("b-bad", Verdict::Error, false, None),
        ];
        let html = page(&rows, &[]).unwrap().into_string();
        assert!(html.contains("id=\"run-0\"") && html.contains("id=\"run-1\""));
        let bad = html.find("<tr data-pass=\"false\"").unwrap();
        let ok = html.find("<tr data-pass=\"true\"").unwrap();
        assert!(bad < ok, "mismatches first");
        assert!(html.contains("id=\"mismatches\""));
        assert!(html.contains("no result: why"));
        assert!(
            html.contains("data-verdict=\"skipped\""),
            "a's banner from its JSON"
        );
    }

    /// 30 scenarios of 100 rounds each (the longest in configs/), pages lost and stale: the
    /// page must stay one attachable file under 2 MiB.
    #[test]
    fn thirty_long_scenarios_stay_under_two_mib() {
        use crate::timeline::{DmaDirection, GuestPhase, Timeline, What};
        let s = crate::config::load(None).unwrap();
        let mut o = crate::report::Outcome::empty(&s);
        let t = Timeline::new();
        t.instant(
            "vcpu",
            What::Phase {
                phase: GuestPhase::RoundsStart,
            },
        );
        for round in 1..=100 {
            for direction in [DmaDirection::FromGuest, DmaDirection::ToGuest] {
                t.span(
                    crate::timeline::Mono::now(),
                    "device",
                    What::DmaBatch {
                        direction,
                        descriptors: 4,
                        bytes: 2 << 20,
                        failed: 0,
                    },
                );
            }
            t.instant(
                "vcpu",
                What::Phase {
                    phase: GuestPhase::RoundDone { round },
                },
            );
        }
        o.timeline = (&t).into();
        o.verdict = Verdict::Diverged;
        o.device_write_lost_pages = 300;
        o.device_read_stale_pages = 512;
        o.guest = Some(crate::oracle::GuestSummary {
            region_pages: 512,
            write_lost_page_list: (0..64).collect(),
            read_stale_page_list: (0..64).collect(),
            ..Default::default()
        });
        o.thp_blocks.boot = Some(vec![512; 32]);
        o.thp_blocks.end = Some((0..32).map(|b| (b * 16) as u16).collect());
        let j = serde_json::to_value(&o).unwrap();
        let rows: Vec<Row> = (0..30)
            .map(|i| {
                let mut r = row(
                    &format!("s{i}"),
                    Verdict::Diverged,
                    i % 2 == 0,
                    Some(j.clone()),
                );
                r.pin = ["io-uring", "vmsplice", "mapping"][i % 3].into();
                r
            })
            .collect();
        let html = page(&rows, &[]).unwrap().into_string();
        assert_eq!(html.matches("<section class=\"run\"").count(), 30);
        assert!(html.len() < 2 << 20, "{} bytes", html.len());
        println!("30 synthetic 100-round scenarios: {} bytes", html.len());
    }
}
