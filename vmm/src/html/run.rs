//! The page of one live run (`pinlab run --report FILE.html`): the verdict banner, the
//! timeline, the per-page strip of the DMA region, the guest RAM map, the changed pages, each
//! host action's evidence, the model's verdict on every era, and the scenario as given. A run
//! that ended `error` or `skipped` gets the same page, with the reason in the banner and each
//! empty section saying why it is empty. The sections after the banner are shared with the
//! matrix page, one per row.

use maud::{html, Markup};

use super::page::{self, bytes, kv_table, legend_key};
use super::view::RunView;
use super::{memory, palette, timeline, Result};
use crate::model::{Replay, HEADER};
use crate::scenario::{Scenario, Verdict};

fn pct(c: Option<f64>) -> String {
    c.map_or("not measured".into(), |c| format!("{:.1}%", c * 100.0))
}

/// "64 MiB, THP on (100.0% THP at boot, 0.5% at end)".
pub fn memory_kind(v: &RunView) -> String {
    format!(
        "{}, THP {} ({} THP at boot, {} at end)",
        bytes(v.memory_bytes),
        if v.thp { "on" } else { "off" },
        pct(v.thp_coverage),
        pct(v.thp_coverage_end)
    )
}

/// The verdict banner.
pub fn banner(v: &RunView) -> Markup {
    let (class, sym) = palette::verdict_class(v.verdict);
    let met = v.verdict == Verdict::Skipped || v.verdict == v.expected;
    html! {
        div.banner id="banner" data-verdict=(v.verdict.to_string()) {
            div class={"verdict " (class)} {
                (sym) " " (v.verdict.to_string())
                small {
                    "expected " (v.expected.to_string()) " (from the " (v.expected_from) ") — "
                    @if met { span.met { "met" } } @else { span.unmet { "NOT met" } }
                }
            }
            dl {
                dt { "scenario" } dd.mono { (v.scenario) }
                dt { "kernel" } dd.mono { (v.identity.kernel_release.as_deref().unwrap_or("unknown")) }
                dt { "pin" } dd.mono { (v.pin.to_string()) }
                dt { "memory" } dd { (memory_kind(v)) }
                dt { "rounds" } dd {
                    @match v.rounds_done {
                        Some(d) => { (d) " of " (v.rounds) " done" }
                        None => { (v.rounds) " wanted; the guest sent no report" }
                    }
                }
                @if let Some(t) = v.launch_to_guest_done_ms {
                    dt { "launch → guest done" } dd { (format!("{t:.2} ms")) }
                }
            }
        }
        @if let Some(r) = &v.reason {
            p.reason { b { "why: " } (r) }
        }
    }
}

fn timeline_legend(lanes: &[timeline::LaneKind]) -> Markup {
    use timeline::LaneKind as L;
    let has = |k: &L| lanes.contains(k);
    html! {
        div.legend {
            @if has(&L::Launch) { (legend_key(&palette::GREY.css(), "launch step (tick: an instant)")) }
            @if has(&L::Rounds) { (legend_key(&palette::BLUE.css(), "guest round (number inside; odd dark, even light)")) }
            @if has(&L::DmaFromGuest) { (legend_key(&palette::BLUISH_GREEN.css(), "DMA batch, device reads guest RAM")) }
            @if has(&L::DmaToGuest) { (legend_key(&palette::ORANGE.css(), "DMA batch, device writes guest RAM")) }
            @if has(&L::DmaFromGuest) || has(&L::DmaToGuest) { (legend_key("#000", "a batch with a failed descriptor")) }
            @if has(&L::Iommu) { span { "▲ IOMMU map, ✕ unmap" } }
            @if has(&L::Actions) { (legend_key(&palette::REDDISH_PURPLE.css(), "host action (name beside it; hover for its evidence)")) }
            span { "│ verdict: when the oracle decided. Hover any mark for its details." }
        }
    }
}

fn strip_legend(v: &RunView) -> Markup {
    let moved = v.moved();
    let cut: Vec<String> = [
        ("device writes lost", &v.write_lost),
        ("device reads stale", &v.read_stale),
        ("pinned PFNs changed", &moved),
    ]
    .iter()
    .filter(|(_, l)| l.is_truncated())
    .map(|(n, l)| format!("{n}: {} of {} listed", l.listed.len(), l.total))
    .collect();
    html! {
        div.legend {
            @for (c, words) in memory::BANDS {
                (legend_key(&c.css(), words))
            }
            (legend_key(&memory::NOT_LISTED.css(), "not listed: past the end of a cut list (may be affected)"))
            (legend_key(&memory::GROUND_THP.css(), "ground: the page's 2 MiB block was all THP at the end"))
            (legend_key(&memory::GROUND_PART.css(), "part THP"))
            (legend_key("#fff", "not THP (or not measured)"))
        }
        @if !cut.is_empty() {
            p.note {
                "The result lists only the first pages of each set (" (cut.join("; "))
                "); pages past the last listed one are drawn grey."
            }
        }
    }
}

fn ram_legend() -> Markup {
    html! {
        div.legend {
            (legend_key(&palette::BLUE.css(), "all 512 pages THP"))
            (legend_key(&palette::SKY_BLUE.css(), "part THP"))
            (legend_key("#fff", "no THP"))
            (legend_key(&palette::LIGHT_GREY.css(), "not measured"))
            span { "upper half: at boot; lower half: at the end" }
            span { b { "0" } " boot structures and guest image, " b { "R" } " DMA region (thick outline), "
                   b { "B" } " page beside the region, " b { "D" } " decoy" }
        }
    }
}

/// Why the blocks past the prefaulted span are grey, when there are any.
pub(super) fn unfaulted_note(v: &RunView) -> Markup {
    html! {
        @if let Some(p) = v.prefaulted_bytes.filter(|&p| p < v.memory_bytes) {
            p.note {
                "Only the first " (bytes(p)) " of guest RAM were faulted in and measured: a run "
                "with no host action that needs all of RAM faults in the part the guest touches "
                "first, and leaves the rest to the guest. The blocks past it are not measured, "
                "not assumed."
            }
        }
    }
}

fn changed_pages(v: &RunView) -> Markup {
    let start = v.layout.map(|l| l.region.start.raw());
    let pfn = |p: Option<u64>| p.map_or("not present".into(), |p| format!("{p:#x}"));
    html! {
        @if v.pins.is_empty() {
            p.note { "No IOMMU mapping left PFN evidence (the guest mapped nothing, or the run did not get that far)." }
        }
        @for (i, p) in v.pins.iter().enumerate() {
            p {
                "Mapping " (i) ": gpa " (format!("{:#x}", p.gpa)) ", " (bytes(p.len)) ", "
                (p.pages) " pages; " b { (p.pinned_pfns_changed_pages) } " pinned PFNs no longer mapped"
                @if p.changed.len() < p.pinned_pfns_changed_pages { " (the first " (p.changed.len()) " listed)" }
                @if let Some(u) = &p.unreadable { "; PFN evidence unavailable: " (u) }
            }
            @if !p.changed.is_empty() {
                table.changed {
                    tr { th.num { "region page" } th { "gpa" } th { "pinned PFN" } th { "mapped PFN" } th { "flags" } }
                    @for c in &p.changed {
                        @let rp = start.and_then(|s| c.gpa.checked_sub(s)).map(|o| (o / crate::addr::PAGE_SIZE) as u32);
                        tr {
                            td.num { (rp.map_or("-".into(), |p| p.to_string())) }
                            td.mono { (format!("{:#x}", c.gpa)) }
                            td.mono { (pfn(c.pinned)) }
                            td.mono { (pfn(c.mapped)) }
                            td {
                                (if c.mapped.is_none() { "unmapped" } else { "moved" })
                                @if let Some(rp) = rp {
                                    @if v.write_lost.state(rp) == Some(true) { ", device write lost" }
                                    @if v.read_stale.state(rp) == Some(true) { ", device read stale" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn evidence(v: &RunView) -> Markup {
    html! {
        @if v.evidence.is_empty() {
            p.note { "No host action ran." }
        }
        @for e in &v.evidence {
            h3 { (e.action.to_string())
                 @match e.storm_iteration { Some(i) => { " (storm " (i) ")" } None => { " after round " (e.after_round) } } }
            p { (e.summary) }
            p.note { "region PFNs changed: " (e.region_pfns_changed) "; region THP pages "
                     (e.region_thp_pages_before) " → " (e.region_thp_pages_after) }
            @if !e.vmstat.is_empty() {
                (kv_table("vmstat", &e.vmstat.iter().map(|(k, d)| (k.clone(), format!("{d:+}"))).collect::<Vec<_>>()))
            }
            @if !e.details.is_empty() { (kv_table("details", &e.details)) }
            @if !e.finish.is_empty() { p.note { "later half:" } (kv_table("details", &e.finish)) }
        }
    }
}

/// The charts and tables of one run, with `id` prefixing their element ids.
pub fn sections(v: &RunView, id: &str, detail: timeline::Detail) -> Result<Markup> {
    let tl = timeline::chart(v, &format!("{id}timeline"), detail)?;
    let strip = memory::strip(v, &format!("{id}strip"))?;
    let map = memory::ram_map(v, &format!("{id}ram"))?;
    let why = v.reason.as_deref().unwrap_or("no reason given");
    Ok(html! {
        h2 { "Timeline" }
        @match tl {
            Some(t) => { (timeline_legend(&timeline::lanes_of(v)))
                @if let Some(l) = timeline::launch_summary(v) { p.note { (l) } }
                @if detail == timeline::Detail::Compact {
                    p.note { "Lanes longer than " (timeline::COMPACT_ITEMS) " marks are merged here (hover says how many); "
                             code { "pinlab run --report" } " draws every event." }
                }
                (t)
                @if v.dropped > 0 { p.note { (v.dropped) " events did not fit the timeline's bound and are not drawn." } } }
            None => { p.note { "No events were recorded: " (why) } }
        }
        h2 { "DMA region, page by page" }
        @match strip {
            Some(s) => { (strip_legend(v)) (s) }
            None => { p.note { "The run reached no DMA: " (why) } }
        }
        h2 { "Guest RAM, 2 MiB block by block" }
        @match map { Some(m) => { (ram_legend()) (m) (unfaulted_note(v)) } None => { p.note { "No guest RAM." } } }
        h2 { "Changed pages" }
        (changed_pages(v))
        h2 { "Host actions and their evidence" }
        (evidence(v))
    })
}

/// The model's verdict on every era for the same scenario, with each non-coherent era's trace.
pub fn model_table(rows: &[Replay], live: Verdict) -> Markup {
    html! {
        p.note { (HEADER) ". The live kernel's era is 5.19 (modern rules); its row must agree with the live verdict." }
        table.model {
            tr { th { "era" } th { "model verdict" } th { "detail" } th.num { "states" } th { "trace" } }
            @for r in rows {
                @let (class, sym) = palette::model_class(&r.verdict);
                @let agrees = r.verdict.live() == Some(live);
                tr data-era=(r.era) {
                    td.mono { (r.era) }
                    td class=(class) { (sym) " " (r.verdict.to_string())
                        @for f in &r.findings { " +" (f) }
                        @if r.era == crate::model::Era::MODERN.name() {
                            @if !matches!(live, Verdict::Coherent | Verdict::Diverged) {
                                " (live: " (live.to_string()) ", nothing to compare)"
                            } @else if agrees { " (= live)" } @else { " (≠ live " (live.to_string()) ")" }
                        }
                    }
                    td { (r.detail.as_deref().unwrap_or("")) }
                    td.num { (r.states) }
                    td {
                        @match &r.trace {
                            Some(t) => {
                                details.trace {
                                    summary { "counterexample, " (t.len()) " steps" }
                                    ol { @for step in t { li.mono { (step) } } }
                                }
                            }
                            None => { "—" }
                        }
                    }
                }
            }
        }
    }
}

/// The whole run page. `model` is the model's rows for the scenario, or why there are none.
pub fn page(
    v: &RunView,
    scenario: &Scenario,
    model: std::result::Result<&[Replay], &super::model::Error>,
) -> Result<Markup> {
    let toml = toml::to_string(scenario).unwrap_or_else(|e| format!("(not printable: {e})"));
    let body = html! {
        (banner(v))
        nav.toc { a href="#timeline" { "timeline" } a href="#strip" { "region pages" } a href="#ram" { "guest RAM" }
                  a href="#model" { "model" } a href="#scenario" { "scenario" } }
        (sections(v, "", timeline::Detail::Full)?)
        h2 id="model" { "The model on every era (simulated)" }
        @if scenario.workload.mode != crate::scenario::GuestMode::Dma {
            p.note { "The guest ran without DMA (mode " (format!("{:?}", scenario.workload.mode).to_lowercase())
                     "): the model replays DMA scenarios only." }
        } @else {
            @match model {
                Ok(rows) => { (model_table(rows, v.verdict)) }
                Err(why) => { p.note { "The model cannot replay this scenario: " (why.to_string()) } }
            }
        }
        h2 id="scenario" { "The scenario as run" }
        p.note { "After command-line overrides; the expectation came from the " (v.expected_from) "." }
        pre.scenario { (toml) }
    };
    Ok(page::document(
        &format!("pinlab run: {} — {}", v.scenario, v.verdict),
        &page::produced_by(&v.identity, "live run on this host"),
        body,
    ))
}

/// Renders `outcome` of `scenario` (with the model's rows for it) into `file`; returns its size.
pub fn write(
    file: super::ReportFile,
    outcome: &crate::report::Outcome,
    scenario: &Scenario,
) -> Result<u64> {
    let v = RunView::of(outcome, scenario.layout().ok());
    let model = super::model::live_on_every_era(scenario);
    let p = page(&v, scenario, model.as_deref())?;
    file.write(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_run_still_says_why_in_every_section() {
        let s = crate::config::load(None).unwrap();
        let o = crate::report::Outcome::skipped(&s, "no /dev/kvm: install KVM".into());
        let v = RunView::of(&o, s.layout().ok());
        let bad =
            std::collections::BTreeMap::from([("no-such-era".to_string(), "coherent".to_string())]);
        let why = super::super::model::Error::Model(crate::model::report::Error::Expect {
            scenario: s.name.clone(),
            source: crate::model::expect::check(&bad).unwrap_err(),
        });
        let p = page(&v, &s, Err(&why)).unwrap().into_string();
        assert!(p.contains("data-verdict=\"skipped\""));
        assert!(p.contains("no /dev/kvm: install KVM"));
        assert!(p.contains("No events were recorded: no /dev/kvm"));
        assert!(
            p.contains("name = &quot;default&quot;"),
            "the scenario's TOML is on the page"
        );
        assert!(
            p.contains("The model cannot replay this scenario: replay default: key"),
            "the model's error, typed, says why"
        );
    }
}
