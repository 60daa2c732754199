//! The sweep page (`pinlab sweep --report FILE.html`): a summary (cells per verdict per memory
//! kind, disagreements with the model and lab errors first), a pin x action grid per memory
//! kind (thp, small, pte-mapped-thp; one column per pin and placement), one row per cell (the
//! model's prediction, the live verdict, time, evidence), and a full section (banner, timeline,
//! page strip, RAM map; `matrix::run_section`) for each cell that disagrees with the model or
//! ended in error, up to [`MAX_SECTIONS`]. The cells that agree get their row only: a full
//! sweep runs 336 cells, and a section for each would make a file of tens of MiB.
//!
//! A section draws the cell's run from the child's JSON (`matrix::view_of`) with the layout of
//! the cell's scenario, rebuilt by `sweep::build` (deterministic, and only for the cells drawn).

use std::collections::{BTreeMap, BTreeSet};

use maud::{html, Markup};

use super::matrix::{run_section, view_of};
use super::page::{self, verdict_badge};
use super::{palette, Result};
use crate::model::Era;
use crate::scenario::{MemoryKind, Verdict};
use crate::sweep::{self, Cell, Placement, Sweep, SweepRow};

/// At most this many full sections (the first failing cells in sweep order); the other
/// failures keep their row. 30 sections stay under 2 MiB, as a 30-scenario matrix does.
pub const MAX_SECTIONS: usize = 30;

fn section_id(i: usize) -> String {
    format!("run-{i}")
}

fn row_id(i: usize) -> String {
    format!("cell-{i}")
}

fn actions_of(c: &Cell) -> String {
    let names: Vec<&str> = c.actions.iter().map(|a| a.name()).collect();
    names.join(" + ")
}

fn expected(r: &SweepRow) -> String {
    r.row.expected.map_or("-".into(), |v| v.to_string())
}

/// The indices (into `s.rows`) of the cells drawn in full.
fn drawn(s: &Sweep) -> BTreeSet<usize> {
    s.rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.failed())
        .map(|(i, _)| i)
        .take(MAX_SECTIONS)
        .collect()
}

/// Where a cell's links go: its section when it has one, else its row.
fn target(i: usize, drawn: &BTreeSet<usize>) -> String {
    if drawn.contains(&i) {
        section_id(i)
    } else {
        row_id(i)
    }
}

fn summary(s: &Sweep, drawn: &BTreeSet<usize>) -> Markup {
    let failed: Vec<(usize, &SweepRow)> = s
        .rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.failed())
        .collect();
    let counts = s.counts();
    // Failures first: the disagreements, then the verdicts from loudest to quietest.
    let cols = [
        ("error", Some(Verdict::Error)),
        ("diverged", Some(Verdict::Diverged)),
        ("coherent", Some(Verdict::Coherent)),
        ("skipped", Some(Verdict::Skipped)),
        ("not built", None),
    ];
    let disagree = |k: MemoryKind| s.failures().filter(|r| r.cell.memory == k).count();
    html! {
        div id="summary" {
            p {
                b { (s.rows.len() + s.not_built.len()) " cells: " }
                (s.rows.len()) " ran against model " code { (s.era) } " in " (format!("{:.1}", s.seconds)) " s, "
                (s.not_built.len()) " not built. "
                @if failed.is_empty() {
                    span.met { "Every live verdict agrees with the model." }
                } @else {
                    span.unmet { (failed.len()) " disagree with the model or ended in error." }
                }
            }
            @if let Some(sig) = s.interrupted {
                p.reason { b { "interrupted" } " by signal " (sig) ": the cells after the last row did not run." }
            }
            table id="counts" {
                tr { th rowspan="2" { "memory kind" } th.num rowspan="2" { "≠ model" }
                     th colspan=(cols.len() - 1) { "live verdict (cells)" } th.num rowspan="2" { "not built" } th.num rowspan="2" { "total" } }
                tr {
                    @for (c, v) in cols { @if v.is_some() { th.num { (c) } } }
                }
                @for (kind, row) in &counts {
                    tr data-kind=(kind.name()) {
                        td.mono { (kind.name()) }
                        @let d = disagree(*kind);
                        td.num { @if d > 0 { span.unmet { (d) } } @else { "0" } }
                        @for (c, v) in cols {
                            @let n = row.get(c).copied().unwrap_or(0);
                            td.num data-count=(n) {
                                @match v.filter(|_| n > 0) {
                                    Some(v) => { (verdict_badge(v)) " × " (n) }
                                    None => { (n) }
                                }
                            }
                        }
                        td.num { (row.values().sum::<usize>()) }
                    }
                }
            }
            p.note { "A live verdict passes when it agrees with the model: a " (verdict_badge(Verdict::Diverged))
                     " cell the model predicts diverged is a pass; ≠ marks the ones that are not." }
            @if !failed.is_empty() {
                h3 { "Disagreements with the model and lab errors" }
                table id="failures" {
                    tr { th { "cell" } th { "model" } th { "live" } }
                    @for (i, r) in &failed {
                        tr {
                            td.mono.name { a href={"#" (target(*i, drawn))} { (r.cell.name()) } }
                            td { @match r.row.expected { Some(v) => { (verdict_badge(v)) } None => { "-" } } }
                            td { (verdict_badge(r.verdict())) " ≠" }
                        }
                    }
                }
                p.note { "Their evidence is in the cells table and in each section." }
                @if failed.len() > drawn.len() {
                    p.note { "Only the first " (drawn.len()) " of them have a full section (timeline, page strip, RAM map); "
                             "the others link to their row. The JSON (" code { "pinlab sweep --json" } ") has every cell's whole result." }
                }
            }
        }
    }
}

/// What a grid cell shows: a cell that ran (index into `s.rows`) or one not built (why).
enum Slot<'a> {
    Ran(usize, &'a SweepRow),
    NotBuilt(&'a str),
}

fn grid(s: &Sweep, drawn: &BTreeSet<usize>) -> Markup {
    let mut slots: BTreeMap<String, Slot<'_>> = BTreeMap::new();
    for (i, r) in s.rows.iter().enumerate() {
        slots.insert(r.cell.name(), Slot::Ran(i, r));
    }
    for n in &s.not_built {
        slots.insert(n.cell.clone(), Slot::NotBuilt(&n.why));
    }
    // The sweep's own order of cells (single actions, then pairs), kept to those in this sweep.
    let all: Vec<Cell> = sweep::cells()
        .into_iter()
        .filter(|c| slots.contains_key(&c.name()))
        .collect();
    let pins: Vec<_> = crate::scenario::PinKind::ALL
        .into_iter()
        .filter(|p| all.iter().any(|c| c.pin == *p))
        .collect();
    let kinds: Vec<(MemoryKind, Vec<&Cell>, Vec<String>)> = MemoryKind::ALL
        .into_iter()
        .map(|kind| {
            let these: Vec<&Cell> = all.iter().filter(|c| c.memory == kind).collect();
            let mut acts: Vec<String> = Vec::new();
            for c in &these {
                let a = actions_of(c);
                if !acts.contains(&a) {
                    acts.push(a);
                }
            }
            (kind, these, acts)
        })
        .filter(|(_, these, _)| !these.is_empty())
        .collect();
    html! {
        p.note { "Each badge is the live verdict and links to the cell's row (or its section); ≠ marks a verdict that "
                 "disagrees with the model or an error. Hover a badge for the model's prediction and the evidence. "
                 "Empty: not a cell of the sweep (pairs run aligned only; actions that take the system lock straddle on THP only)." }
        @for (kind, these, acts) in &kinds {
            {
                h3 { "Memory: " span.mono { (kind.name()) } }
                table.grid.pinxaction data-kind=(kind.name()) {
                    tr {
                        th.name rowspan="2" { "action \\ pin" }
                        @for p in &pins { th.mono colspan=(Placement::ALL.len()) { (p.to_string()) } }
                    }
                    tr { @for _ in &pins { @for pl in Placement::ALL { th.note { (pl.name()) } } } }
                    @for a in acts {
                        tr {
                            th.name.mono { (a) }
                            @for p in &pins {
                                @for pl in Placement::ALL {
                                    @let hit = these.iter().find(|c| c.pin == *p && c.placement == pl && &actions_of(c) == a);
                                    @match hit.and_then(|c| slots.get(&c.name()).map(|s| (c, s))) {
                                        None => { td.empty { "" } }
                                        Some((c, Slot::NotBuilt(why))) => {
                                            td.v-na title={(c.name()) ": not built: " (why)} { "· not built" }
                                        }
                                        Some((c, Slot::Ran(i, r))) => {
                                            @let (class, sym) = palette::verdict_class(r.verdict());
                                            td {
                                                a class={"badge " (class)} href={"#" (target(*i, drawn))}
                                                  title={(c.name()) ": model " (expected(r)) "; " (r.row.evidence)} {
                                                    (sym) " " (r.verdict().to_string())
                                                    @if r.failed() { " ≠" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn table(s: &Sweep, drawn: &BTreeSet<usize>) -> Markup {
    // Failures first, then the sweep's order.
    let mut order: Vec<(usize, &SweepRow)> = s.rows.iter().enumerate().collect();
    order.sort_by_key(|(i, r)| (!r.failed(), *i));
    html! {
        table id="cells" {
            tr { th { "cell" } th { "pin" } th { "actions" } th { "memory" } th { "placement" }
                 th { "model" } th { "live" } th.num { "seconds" } th { "evidence" } }
            @for (i, r) in order {
                tr id=(row_id(i)) data-failed=(r.failed()) {
                    td.mono.name {
                        @if drawn.contains(&i) { a href={"#" (section_id(i))} { (r.cell.name()) } } @else { (r.cell.name()) }
                    }
                    td.mono { (r.cell.pin.to_string()) }
                    td.mono { (actions_of(&r.cell)) }
                    td.mono { (r.cell.memory.name()) }
                    td { (r.cell.placement.name()) }
                    td { (expected(r)) }
                    td.live { (verdict_badge(r.verdict())) @if r.failed() { " " span.unmet { "≠ model" } } }
                    td.num { (format!("{:.2}", r.row.seconds)) }
                    td.evidence { (r.row.evidence) }
                }
            }
        }
        @if !s.not_built.is_empty() {
            h3 id="not-built" { "Not built" }
            p.note { "These cells would prove nothing (the action needs what the cell lacks, or the model predicts nothing to compare), so they did not run." }
            table id="not-built-cells" {
                tr { th { "cell" } th { "why" } }
                @for n in &s.not_built { tr { td.mono.name { (n.cell) } td { (n.why) } } }
            }
        }
    }
}

/// The sweep page of `s`.
pub fn page(s: &Sweep) -> Result<Markup> {
    let drawn = drawn(s);
    let era: Option<Era> = s.era.parse().ok();
    let mut sections = Vec::new();
    for &i in &drawn {
        let r = &s.rows[i];
        let layout = era
            .and_then(|e| sweep::build(&r.cell, e).ok())
            .and_then(|sc| sc.layout().ok());
        let note = format!(
            "The expectation in the banner is the model's prediction for era {}, which the sweep wrote into the cell's scenario.",
            s.era
        );
        sections.push(run_section(
            &section_id(i),
            &r.row,
            &view_of(&r.row, layout),
            Some(&note),
        )?);
    }
    let body = html! {
        nav.toc { a href="#summary" { "summary" } a href="#grid" { "pin × action" } a href="#cells" { "cells" }
                  @if !s.not_built.is_empty() { a href="#not-built" { "not built" } } }
        (summary(s, &drawn))
        h2 id="grid" { "Pin × action, per memory kind" }
        (grid(s, &drawn))
        h2 { "Cells" }
        p.note {
            @if drawn.is_empty() { "No cell disagrees with the model or ended in error, so no cell has a full section: " }
            @else { "The cells that disagree with the model or ended in error (at most " (MAX_SECTIONS) ") have a full section below; " }
            "the others are one row each, to keep the file small. "
            code { "pinlab sweep --json" } " holds every cell's whole result."
        }
        (table(s, &drawn))
        @for sec in sections { (sec) }
    };
    Ok(page::document(
        &format!("pinlab sweep against model {}", s.era),
        &page::produced_by(&s.identity, "live sweep, each cell in its own VMM process"),
        body,
    ))
}

/// Renders `s` into `file`; returns its size.
pub fn write(file: super::ReportFile, s: &Sweep) -> Result<u64> {
    file.write(&page(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Row;

    fn row(
        cell: Cell,
        verdict: Verdict,
        expected: Verdict,
        report: Option<serde_json::Value>,
    ) -> SweepRow {
        SweepRow {
            row: Row {
                scenario: format!("sweep/{}", cell.name()),
                origin: crate::config::Origin::Generated(cell.name()),
                live: true,
                pin: cell.pin.to_string(),
                actions: cell.actions.iter().map(|a| a.name().to_string()).collect(),
                expected: Some(expected),
                verdict: Some(verdict),
                evidence: "why".into(),
                seconds: 0.1,
                pass: verdict == expected,
                report,
            },
            cell,
        }
    }

    fn sweep_of(rows: Vec<SweepRow>) -> Sweep {
        Sweep {
            kind: "sweep",
            identity: crate::identity::Identity::of_this_host(),
            era: Era::MODERN.name().to_string(),
            rows,
            not_built: vec![sweep::Skipped {
                cell: "small/aligned/io-uring/split-pmd".into(),
                memory: MemoryKind::Small,
                why: "split-pmd needs THP-backed RAM".into(),
            }],
            seconds: 1.0,
            interrupted: None,
        }
    }

    /// Failures come first and only they get a section; every cell has its row and one grid
    /// badge; the not-built cell is in the grid and its table.
    #[test]
    fn only_failures_get_a_section_and_every_cell_a_row() {
        let cells = sweep::cells();
        let s = crate::config::load(None).unwrap();
        let j = serde_json::to_value(crate::report::Outcome::skipped(&s, "no kvm".into())).unwrap();
        let mut rows: Vec<SweepRow> = cells
            .iter()
            .filter(|c| c.memory != MemoryKind::Small)
            .step_by(5)
            .take(40)
            .map(|c| {
                row(
                    c.clone(),
                    Verdict::Coherent,
                    Verdict::Coherent,
                    Some(j.clone()),
                )
            })
            .collect();
        rows[7].row.verdict = Some(Verdict::Diverged);
        rows[7].row.pass = false;
        rows[9].row.verdict = Some(Verdict::Error);
        rows[9].row.report = None;
        rows[9].row.pass = false;
        let sw = sweep_of(rows);
        let html = page(&sw).unwrap().into_string();
        assert_eq!(html.matches("<section class=\"run\"").count(), 2);
        assert!(html.contains("id=\"run-7\"") && html.contains("id=\"run-9\""));
        assert!(html.contains("no result: why"), "the error cell says why");
        assert!(html.contains("id=\"failures\""));
        assert_eq!(html.matches("<tr id=\"cell-").count(), 40);
        let first = html.find("<tr id=\"cell-").unwrap();
        assert!(html[first..].starts_with("<tr id=\"cell-7\" data-failed=\"true\""));
        assert_eq!(
            html.matches("class=\"badge v-").count() - html.matches("<span class=\"badge").count(),
            40
        );
        assert!(html.contains("title=\"small/aligned/io-uring/split-pmd: not built"));
        assert!(html.contains("data-kind=\"pte-mapped-thp\""));
    }

    /// A sweep where every cell fails still draws at most MAX_SECTIONS sections, and stays
    /// one attachable file.
    #[test]
    fn a_sweep_that_fails_everywhere_stays_small() {
        let s = crate::config::load(None).unwrap();
        let j = serde_json::to_value(crate::report::Outcome::skipped(&s, "no kvm".into())).unwrap();
        let rows: Vec<SweepRow> = sweep::cells()
            .into_iter()
            .map(|c| row(c, Verdict::Diverged, Verdict::Coherent, Some(j.clone())))
            .collect();
        let n = rows.len();
        let html = page(&sweep_of(rows)).unwrap().into_string();
        assert_eq!(html.matches("<section class=\"run\"").count(), MAX_SECTIONS);
        assert_eq!(html.matches("<tr id=\"cell-").count(), n);
        assert!(html.contains("Only the first 30 of them"));
        assert!(html.len() < 2 << 20, "{} bytes", html.len());
    }
}
