//! The replay page (`pinlab replay --report FILE.html`): the era x scenario grid of the model
//! executor (a SIMULATION, said in the header) as a colour table, each cell a `<details>` that
//! opens its trace (no script), expectations not met marked and listed first.

use std::collections::BTreeMap;

use maud::{html, Markup};

use super::page;
use super::palette;
use crate::model::{Era, Replay, HEADER};

/// A cell's words: the verdict, or for a broken structural invariant just its name (the ⚠ and
/// the stripes say "broken").
fn short(v: &crate::model::ModelVerdict) -> String {
    match v {
        crate::model::ModelVerdict::InvariantBroken(i) => i.to_string(),
        other => other.key(),
    }
}

fn cell(r: &Replay) -> Markup {
    let (class, sym) = palette::model_class(&r.verdict);
    let unmet = r.met == Some(false);
    html! {
        td class=(class) data-era=(r.era) data-verdict=(r.verdict.key()) {
            details {
                summary {
                    (sym) " " (short(&r.verdict))
                    @for f in &r.findings { " +" (f) }
                    @if unmet { " " span.unmet { "≠ expected" } }
                }
                div {
                    p.note {
                        (r.scenario) " @ " (r.era) ": " (r.verdict.to_string())
                        @if let Some(d) = &r.detail { " (" (d) ")" }
                        "; " (r.states) " states explored"
                        @if let Some(e) = &r.expected { "; expected " (e) }
                    }
                    @match &r.trace {
                        Some(t) => { ol.trace { @for s in t { li.mono { (s) } } } }
                        None => { p.note { "(no trace)" } }
                    }
                }
            }
        }
    }
}

/// The page for replay rows over `eras`.
pub fn page(rows: &[Replay], eras: &[Era], id: &crate::identity::Identity) -> Markup {
    let mut by: BTreeMap<&str, Vec<&Replay>> = BTreeMap::new();
    for r in rows {
        by.entry(&r.scenario).or_default().push(r);
    }
    let unmet: Vec<&Replay> = rows.iter().filter(|r| r.met == Some(false)).collect();
    let mut counts: BTreeMap<String, (&'static str, usize)> = BTreeMap::new();
    for r in rows {
        let class = palette::model_class(&r.verdict).0;
        counts.entry(r.verdict.key()).or_insert((class, 0)).1 += 1;
    }
    let body = html! {
        p.note { b { (HEADER) } ". Rows: scenarios; columns: kernel eras. Click a cell for its trace." }
        p {
            (by.len()) " scenarios × " (eras.len()) " eras; "
            @for (k, (class, n)) in &counts { span class={"badge " (class)} { (k) ": " (n) } " " }
        }
        @if unmet.is_empty() {
            p.met id="expectations" { "Every stated expectation is met." }
        } @else {
            div id="expectations" {
                p.unmet { (unmet.len()) " expectations not met:" }
                ul { @for r in &unmet {
                    li { (r.scenario) " @ " (r.era) ": model says " (r.verdict.key()) ", expected " (r.expected.as_deref().unwrap_or("?")) }
                } }
            }
        }
        div.legend {
            (page::legend_key("#d5efe5", "✓ coherent"))
            (page::legend_key("repeating-linear-gradient(135deg, #d55e00 0 6px, #a84a00 6px 12px)", "✗ diverged (a data invariant broke)"))
            (page::legend_key("repeating-linear-gradient(135deg, #e69f00 0 6px, #b07a00 6px 12px)", "⚠ a structural invariant broke"))
            (page::legend_key("#f7f7f7", "· n/a (the era lacks what the scenario needs)"))
        }
        table.grid id="replay" {
            tr { th.name { "scenario" } @for e in eras { th.mono { (e.name()) } } }
            @for (name, rs) in &by {
                tr data-scenario=(name) {
                    td.name.mono { (name) }
                    @for r in rs { (cell(r)) }
                }
            }
        }
    };
    page::document(
        "pinlab replay: era × scenario (model, simulated)",
        &page::produced_by(id, "model executor (simulated), no live run"),
        body,
    )
}

/// Writes the page of `pinlab replay`'s own results (computed with traces).
pub fn write(file: super::ReportFile, set: &crate::model::report::ReplaySet) -> super::Result<u64> {
    file.write(&page(
        &set.results,
        &set.eras,
        &crate::identity::Identity::of_this_host(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cell_per_scenario_and_era_each_with_its_trace() {
        let scenarios: Vec<_> = ["seed000-fork-parent-write", "default"]
            .iter()
            .map(|n| {
                crate::config::load_arg(std::path::Path::new(n))
                    .unwrap()
                    .scenario
            })
            .collect();
        let eras = Era::ALL.to_vec();
        let set = crate::model::report::replay_set(&scenarios, &eras, true).unwrap();
        let html = page(
            &set.results,
            &eras,
            &crate::identity::Identity::of_this_host(),
        )
        .into_string();
        assert_eq!(html.matches("<td class=\"v-").count(), 2 * eras.len());
        assert_eq!(html.matches("<details>").count(), 2 * eras.len());
        assert!(html.contains("data-scenario=\"seed000-fork-parent-write\""));
        assert!(html.contains("(simulated)"));
    }
}
