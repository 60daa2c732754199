//! The run's timeline chart: x is time on the run's CLOCK_MONOTONIC (ms since the first event),
//! one lane per kind of event present: launch steps, guest rounds (derived from the guest's
//! round-done phases), DMA batches per direction, IOMMU map/unmap, host actions (their evidence
//! in the tooltip), and for a traced run one lane per kernel event group and one step line per
//! counter. Drawn with plotters; tooltips in the hover layer.

use maud::Markup;
use plotters::prelude::*;

use super::chart::{self, failed, Group, Hit};
use super::palette::{self, Colour};
use super::view::{Direction, Mark, Phase, RunView};
use super::Result;

/// What a lane shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaneKind {
    Launch,
    Rounds,
    DmaToGuest,
    DmaFromGuest,
    Iommu,
    Actions,
    /// A tracefs event group of a traced run.
    Kernel(String),
    /// A counter of a traced run, as a step line.
    Counter(String),
}

impl LaneKind {
    /// The lane's `data-name` in the page.
    pub fn key(&self) -> String {
        match self {
            LaneKind::Launch => "launch".into(),
            LaneKind::Rounds => "rounds".into(),
            LaneKind::DmaToGuest => "dma-to-guest".into(),
            LaneKind::DmaFromGuest => "dma-from-guest".into(),
            LaneKind::Iommu => "iommu".into(),
            LaneKind::Actions => "actions".into(),
            LaneKind::Kernel(g) => format!("kernel:{g}"),
            LaneKind::Counter(c) => format!("counter:{c}"),
        }
    }

    fn label(&self) -> String {
        match self {
            LaneKind::Launch => "launch steps".into(),
            LaneKind::Rounds => "guest rounds".into(),
            LaneKind::DmaToGuest => "DMA → guest".into(),
            LaneKind::DmaFromGuest => "DMA ← guest".into(),
            LaneKind::Iommu => "IOMMU map/unmap".into(),
            LaneKind::Actions => "host actions".into(),
            LaneKind::Kernel(g) => format!("trace {g}"),
            LaneKind::Counter(c) => c.clone(),
        }
    }
}

/// How much a chart draws: every event (a run's page), or at most [`COMPACT_ITEMS`] marks per
/// lane (a matrix section, so 30 of them stay one attachable file), neighbours merged into one
/// mark whose tooltip says how many it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    Full,
    Compact,
}

/// Marks per lane at most, in compact charts.
pub const COMPACT_ITEMS: usize = 40;

/// Merges a lane's bars into at most `max` marks, each spanning consecutive bars; instants
/// (markers) are few and kept as they are.
fn merge(items: Vec<Item>, max: usize, rounds: bool) -> Vec<Item> {
    if items.len() <= max || items.iter().any(|i| i.marker.is_some()) {
        return items;
    }
    let chunk = items.len().div_ceil(max);
    items
        .chunks(chunk)
        .enumerate()
        .map(|(g, c)| {
            let (first, last) = (&c[0], &c[c.len() - 1]);
            let failed = c.iter().any(|i| i.colour == palette::BLACK);
            Item {
                t0: c.iter().map(|i| i.t0).fold(f64::INFINITY, f64::min),
                t1: c.iter().map(|i| i.t1).fold(f64::NEG_INFINITY, f64::max),
                colour: if failed {
                    palette::BLACK
                } else if rounds {
                    [palette::BLUE, palette::SKY_BLUE][g % 2]
                } else {
                    first.colour
                },
                marker: None,
                text: match (&first.text, &last.text) {
                    (Some(a), Some(b)) if c.len() > 1 => Some(format!("{a}–{b}")),
                    (a, _) => a.clone(),
                },
                title: if c.len() == 1 {
                    first.title.clone()
                } else {
                    let t0 = c.iter().map(|i| i.t0).fold(f64::INFINITY, f64::min);
                    let t1 = c.iter().map(|i| i.t1).fold(f64::NEG_INFINITY, f64::max);
                    // Short: 30 matrix sections carry these.
                    format!(
                        "{} merged, {t0:.3}–{t1:.3} ms{} (the run's own report draws each)",
                        c.len(),
                        if failed { ", a batch failed" } else { "" },
                    )
                },
            }
        })
        .collect()
}

/// One drawn item: [start, end] in ms from t0, its sub-row, colour, tooltip and text.
struct Item {
    t0: f64,
    t1: f64,
    colour: Colour,
    /// A marker instead of a bar: 'map' triangle or 'unmap' cross.
    marker: Option<char>,
    text: Option<String>,
    title: String,
}

/// A counter's step line: points in (ms, lane units 0..1), and its min and max for the label.
struct Steps {
    points: Vec<(f64, f64)>,
    lo: f64,
    hi: f64,
}

struct Lane {
    kind: LaneKind,
    items: Vec<Item>,
    steps: Option<Steps>,
}

const WIDTH: u32 = 1300;
const LABEL_W: u32 = 140;
const LANE_H: u32 = 30;
const TOP: u32 = 10;
const AXIS_H: u32 = 42;

fn ms(ns: u64, t0: u64) -> f64 {
    (ns as f64 - t0 as f64) / 1e6
}

/// Where the chart's window starts: the guest's start (the launch before it is summarized in
/// words, or its milliseconds would squeeze the rounds into a corner), else the first event.
pub fn window_start(v: &RunView) -> Option<u64> {
    v.events
        .iter()
        .find(|e| matches!(&e.mark, Mark::Launch { step } if step == "guest-start"))
        .or(v.events.first())
        .map(|e| e.at)
}

/// The launch steps before the window, in words: "ram-mapped 0.03 ms, prefault 29.2 ms, ...".
pub fn launch_summary(v: &RunView) -> Option<String> {
    let first = v.events.first()?.at;
    let w0 = window_start(v)?;
    let steps: Vec<String> = v
        .events
        .iter()
        .filter(|e| e.at < w0)
        .filter_map(|e| match &e.mark {
            Mark::Launch { step } => Some(match e.dur_ns {
                Some(d) => format!("{step} {:.2} ms", d as f64 / 1e6),
                None => format!("{step} at {:.2} ms", ms(e.at, first)),
            }),
            _ => None,
        })
        .collect();
    (w0 > first).then(|| {
        format!(
            "The guest started {:.2} ms after the process (launch steps, some in parallel: {}). The chart starts there.",
            ms(w0, first),
            steps.join(", ")
        )
    })
}

/// The lanes of a run, in drawing order; empty lanes are left out.
pub fn lanes_of(v: &RunView) -> Vec<LaneKind> {
    build(v, window_start(v).unwrap_or(0), Detail::Full)
        .into_iter()
        .map(|l| l.kind)
        .collect()
}

fn evidence_title(v: &RunView, idx: Option<usize>) -> String {
    let Some(e) = idx.and_then(|i| v.evidence.get(i)) else {
        return String::new();
    };
    let mut t = format!(
        "\n{}\nregion PFNs changed: {}; region THP pages {} → {}",
        e.summary, e.region_pfns_changed, e.region_thp_pages_before, e.region_thp_pages_after
    );
    for (k, d) in &e.vmstat {
        t.push_str(&format!("\n{k}: {d:+}"));
    }
    t
}

fn build(v: &RunView, t0: u64, detail: Detail) -> Vec<Lane> {
    let mut launch = Vec::new();
    let mut rounds = Vec::new();
    let mut to_guest = Vec::new();
    let mut from_guest = Vec::new();
    let mut iommu = Vec::new();
    let mut actions = Vec::new();
    let mut round_from: Option<f64> = None;
    for e in &v.events {
        let b = ms(e.at + e.dur_ns.unwrap_or(0), t0);
        if b < 0.0 {
            continue;
        }
        let a = ms(e.at, t0).max(0.0);
        match &e.mark {
            Mark::Launch { step } => launch.push(Item {
                t0: a,
                t1: b,
                colour: palette::GREY,
                marker: e.dur_ns.is_none().then_some('|'),
                text: None,
                title: format!("launch: {step} at {a:.3} ms{}", dur(e.dur_ns)),
            }),
            Mark::Phase { phase } => match phase {
                Phase::RoundsStart => round_from = Some(a),
                Phase::RoundDone { round } => {
                    let start = round_from.unwrap_or(a);
                    rounds.push(Item {
                        t0: start,
                        t1: a,
                        colour: if round % 2 == 1 {
                            palette::BLUE
                        } else {
                            palette::SKY_BLUE
                        },
                        marker: None,
                        text: Some(round.to_string()),
                        title: format!("guest round {round}: {start:.3} → {a:.3} ms"),
                    });
                    round_from = Some(a);
                }
                Phase::Mapped | Phase::Unmapped => {}
            },
            Mark::PhaseRejected { code, round, why } => rounds.push(Item {
                t0: a,
                t1: a,
                colour: palette::BLACK,
                marker: Some('x'),
                text: None,
                title: format!("phase {code} (round {round}) rejected: {why}"),
            }),
            Mark::DmaBatch {
                direction,
                descriptors,
                bytes,
                failed,
            } => {
                let (lane, colour, words) = match direction {
                    Direction::ToGuest => {
                        (&mut to_guest, palette::ORANGE, "device writes guest RAM")
                    }
                    Direction::FromGuest => (
                        &mut from_guest,
                        palette::BLUISH_GREEN,
                        "device reads guest RAM",
                    ),
                };
                lane.push(Item {
                    t0: a,
                    t1: b,
                    colour: if *failed > 0 { palette::BLACK } else { colour },
                    marker: None,
                    text: None,
                    title: format!(
                        "DMA batch ({words}): {descriptors} descriptors, {}, {failed} failed; {a:.3} ms{}",
                        super::page::bytes(*bytes),
                        dur(e.dur_ns)
                    ),
                });
            }
            Mark::IommuMap {
                iova,
                gpa,
                len,
                status,
            } => iommu.push(Item {
                t0: a,
                t1: a,
                colour: palette::BLUE,
                marker: Some('^'),
                text: Some("map".into()),
                title: format!(
                    "IOMMU map iova {iova:#x} → gpa {gpa:#x}, {} ({status}) at {a:.3} ms",
                    super::page::bytes(*len)
                ),
            }),
            Mark::IommuUnmap { iova, len, status } => iommu.push(Item {
                t0: a,
                t1: a,
                colour: palette::VERMILLION,
                marker: Some('x'),
                text: Some("unmap".into()),
                title: format!(
                    "IOMMU unmap iova {iova:#x}, {} ({status}) at {a:.3} ms",
                    super::page::bytes(*len)
                ),
            }),
            Mark::Action {
                action,
                iteration,
                evidence,
                error,
            } => actions.push(Item {
                t0: a,
                t1: b,
                colour: if error.is_some() {
                    palette::BLACK
                } else {
                    palette::REDDISH_PURPLE
                },
                marker: None,
                text: Some(action.to_string()),
                title: format!(
                    "host action {action}{} at {a:.3} ms{}{}{}",
                    iteration
                        .map(|i| format!(" (storm {i})"))
                        .unwrap_or_default(),
                    dur(e.dur_ns),
                    error
                        .as_ref()
                        .map(|e| format!("\nfailed: {e}"))
                        .unwrap_or_default(),
                    evidence_title(v, *evidence)
                ),
            }),
            Mark::ActionFinish { action, evidence } => actions.push(Item {
                t0: a,
                t1: a,
                colour: palette::REDDISH_PURPLE,
                marker: Some('|'),
                text: None,
                title: format!(
                    "{action}: later half at {a:.3} ms{}",
                    v.evidence
                        .get(*evidence)
                        .map(|e| e
                            .finish
                            .iter()
                            .map(|(k, v)| format!("\n{k}: {v}"))
                            .collect::<String>())
                        .unwrap_or_default()
                ),
            }),
            Mark::Verdict { .. } | Mark::Other => {}
        }
    }
    let mut lanes: Vec<Lane> = [
        (LaneKind::Launch, launch),
        (LaneKind::Rounds, rounds),
        (LaneKind::DmaFromGuest, from_guest),
        (LaneKind::DmaToGuest, to_guest),
        (LaneKind::Iommu, iommu),
        (LaneKind::Actions, actions),
    ]
    .into_iter()
    .filter(|(_, items)| !items.is_empty())
    .map(|(kind, items)| Lane {
        items: match detail {
            Detail::Full => items,
            Detail::Compact => merge(items, COMPACT_ITEMS, kind == LaneKind::Rounds),
        },
        kind,
        steps: None,
    })
    .collect();
    for g in &v.trace.kernel {
        lanes.push(Lane {
            kind: LaneKind::Kernel(g.name.clone()),
            items: g
                .events
                .iter()
                .filter(|(at, _)| ms(*at, t0) >= 0.0)
                .map(|(at, name)| {
                    let a = ms(*at, t0);
                    Item {
                        t0: a,
                        t1: a,
                        colour: palette::BLACK,
                        marker: Some('|'),
                        text: None,
                        title: format!("{}:{name} at {a:.3} ms", g.name),
                    }
                })
                .collect(),
            steps: None,
        });
    }
    for c in &v.trace.counters {
        let lo = c.points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = c
            .points
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        let mut pts = Vec::new();
        for (i, (at, val)) in c.points.iter().enumerate() {
            let x = ms(*at, t0).max(0.0);
            let y = (val - lo) / span;
            if i > 0 {
                // A step: hold the previous value until this point.
                let prev = pts.last().map_or(y, |p: &(f64, f64)| p.1);
                pts.push((x, prev));
            }
            pts.push((x, y));
        }
        lanes.push(Lane {
            kind: LaneKind::Counter(c.name.clone()),
            items: c
                .points
                .iter()
                .filter(|(at, _)| ms(*at, t0) >= 0.0)
                .map(|(at, val)| {
                    let a = ms(*at, t0);
                    Item {
                        t0: a,
                        t1: a,
                        colour: palette::BLACK,
                        marker: Some('.'),
                        text: None,
                        title: format!("{} = {val} at {a:.3} ms", c.name),
                    }
                })
                .collect(),
            steps: (!c.points.is_empty()).then_some(Steps {
                points: pts,
                lo,
                hi,
            }),
        });
    }
    lanes
}

fn dur(d: Option<u64>) -> String {
    d.map(|d| format!(", {:.3} ms long", d as f64 / 1e6))
        .unwrap_or_default()
}

/// The timeline chart of a run, or `None` when it recorded no events.
pub fn chart(v: &RunView, id: &str, detail: Detail) -> Result<Option<Markup>> {
    let Some(t0) = window_start(v) else {
        return Ok(None);
    };
    let lanes = build(v, t0, detail);
    if lanes.is_empty() {
        return Ok(None);
    }
    let t_max = v
        .events
        .iter()
        .map(|e| ms(e.at + e.dur_ns.unwrap_or(0), t0))
        .chain(
            v.trace
                .counters
                .iter()
                .flat_map(|c| c.points.iter().map(|p| ms(p.0, t0))),
        )
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.01;
    let n = lanes.len();
    let height = TOP + LANE_H * n as u32 + AXIS_H;
    let verdict_at = v.events.iter().rev().find_map(|e| match e.mark {
        Mark::Verdict { verdict } => Some((ms(e.at, t0), verdict)),
        _ => None,
    });
    let mut svg = String::new();
    let mut groups: Vec<Group> = Vec::new();
    {
        let fail = failed::<String>("timeline");
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let mut c = ChartBuilder::on(&root)
            .margin_top(TOP)
            .margin_right(16)
            .x_label_area_size(AXIS_H)
            .y_label_area_size(LABEL_W)
            .build_cartesian_2d(0f64..t_max, 0f64..n as f64)
            .map_err(|e| fail(e.to_string()))?;
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(12)
            .x_desc(format!(
                "ms on CLOCK_MONOTONIC since the guest started (t0 = {:.6} s)",
                t0 as f64 / 1e9
            ))
            .x_label_formatter(&|x| format!("{x:.1}"))
            .max_light_lines(0)
            .bold_line_style(palette::LIGHT_GREY.plotters())
            .label_style(chart::font(15.0))
            .axis_desc_style(chart::font(15.0))
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        let px_per_ms = f64::from(WIDTH - LABEL_W - 16) / t_max;
        let min_w = 1.5 / px_per_ms;
        for (i, lane) in lanes.iter().enumerate() {
            // Lane 0 at the top.
            let y_hi = (n - i) as f64;
            let y_lo = y_hi - 1.0;
            let (lx, ly) = c.backend_coord(&(0.0, y_lo + 0.5));
            root.draw(&Text::new(
                lane.kind.label(),
                (lx - LABEL_W as i32 + 6, ly),
                chart::label(15.0),
            ))
            .map_err(|e| fail(e.to_string()))?;
            // A faint band so lanes read as rows.
            if i % 2 == 0 {
                c.draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y_lo), (t_max, y_hi)],
                    RGBColor(247, 247, 247).filled(),
                )))
                .map_err(|e| fail(e.to_string()))?;
            }
            let mut hits = Vec::new();
            for it in &lane.items {
                let (a, b) = (it.t0, it.t1.max(it.t0 + min_w));
                match it.marker {
                    None => {
                        c.draw_series(std::iter::once(Rectangle::new(
                            [(a, y_lo + 0.18), (b, y_hi - 0.18)],
                            it.colour.plotters().filled(),
                        )))
                        .map_err(|e| fail(e.to_string()))?;
                    }
                    Some('^') => {
                        c.draw_series(std::iter::once(TriangleMarker::new(
                            (a, y_lo + 0.5),
                            7,
                            it.colour.plotters().filled(),
                        )))
                        .map_err(|e| fail(e.to_string()))?;
                    }
                    Some('x') => {
                        c.draw_series(std::iter::once(Cross::new(
                            (a, y_lo + 0.5),
                            6,
                            it.colour.plotters().stroke_width(3),
                        )))
                        .map_err(|e| fail(e.to_string()))?;
                    }
                    Some('.') => {}
                    Some(_) => {
                        c.draw_series(std::iter::once(PathElement::new(
                            vec![(a, y_lo + 0.12), (a, y_hi - 0.12)],
                            it.colour.plotters().stroke_width(2),
                        )))
                        .map_err(|e| fail(e.to_string()))?;
                    }
                }
                let (x0, y0) = c.backend_coord(&(a, y_hi - 0.1));
                let (x1, y1) = c.backend_coord(&(b, y_lo + 0.1));
                if let Some(text) = &it.text {
                    let fits = (x1 - x0) as usize >= 8 * text.len() || it.marker.is_some();
                    let at = if it.marker.is_some() {
                        (x0 + 9, (y0 + y1) / 2)
                    } else if fits {
                        (x0 + 3, (y0 + y1) / 2)
                    } else {
                        (x1 + 3, (y0 + y1) / 2)
                    };
                    let long = matches!(lane.kind, LaneKind::Actions | LaneKind::Iommu);
                    if fits || long {
                        let colour = if fits && it.marker.is_none() && !long {
                            WHITE
                        } else {
                            BLACK
                        };
                        root.draw(&Text::new(
                            text.clone(),
                            at,
                            chart::label(13.5).color(&colour),
                        ))
                        .map_err(|e| fail(e.to_string()))?;
                    }
                }
                let pad = if it.marker.is_some() { 5 } else { 0 };
                hits.push(Hit {
                    x: x0 - pad,
                    y: y0,
                    w: (x1 - x0) + 2 * pad,
                    h: y1 - y0,
                    title: it.title.clone(),
                    cells: None,
                });
            }
            if let Some(Steps { points, lo, hi }) = &lane.steps {
                let line: Vec<(f64, f64)> = points
                    .iter()
                    .map(|&(x, y)| (x, y_lo + 0.15 + 0.7 * y))
                    .collect();
                c.draw_series(std::iter::once(PathElement::new(
                    line,
                    palette::BLUE.plotters().stroke_width(2),
                )))
                .map_err(|e| fail(e.to_string()))?;
                let (x, y) = c.backend_coord(&(t_max, y_lo + 0.5));
                root.draw(&Text::new(
                    format!("{lo} → {hi}"),
                    (x - 90, y),
                    chart::label(13.5),
                ))
                .map_err(|e| fail(e.to_string()))?;
            }
            groups.push(Group {
                class: "lane",
                name: lane.kind.key(),
                hits,
            });
        }
        if let Some((at, verdict)) = verdict_at {
            c.draw_series(std::iter::once(PathElement::new(
                vec![(at, 0.0), (at, n as f64)],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| fail(e.to_string()))?;
            let (x, y) = c.backend_coord(&(at, n as f64));
            root.draw(&Text::new(
                format!("verdict: {verdict}"),
                (x - 4, y - 2),
                chart::font(13.5).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Right,
                    plotters::style::text_anchor::VPos::Top,
                )),
            ))
            .map_err(|e| fail(e.to_string()))?;
        }
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    Ok(Some(chart::overlaid(id, &svg, (WIDTH, height), &groups)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::html::view::{Counter, EventView, KernelGroup};
    use crate::scenario::Action;

    pub(crate) fn view_with(events: Vec<EventView>) -> RunView {
        let s = crate::config::load(None).unwrap();
        let mut v = RunView::of(&crate::report::Outcome::empty(&s), s.layout().ok());
        v.events = events;
        v
    }

    fn ev(at: u64, dur: Option<u64>, mark: Mark) -> EventView {
        EventView {
            at,
            dur_ns: dur,
            mark,
        }
    }

    #[test]
    fn one_lane_per_kind_present_with_rounds_from_round_done() {
        let v = view_with(vec![
            ev(
                1_000_000,
                None,
                Mark::Phase {
                    phase: Phase::RoundsStart,
                },
            ),
            ev(
                1_100_000,
                Some(50_000),
                Mark::DmaBatch {
                    direction: Direction::ToGuest,
                    descriptors: 1,
                    bytes: 4096,
                    failed: 0,
                },
            ),
            ev(
                2_000_000,
                None,
                Mark::Phase {
                    phase: Phase::RoundDone { round: 1 },
                },
            ),
            ev(
                3_000_000,
                None,
                Mark::Phase {
                    phase: Phase::RoundDone { round: 2 },
                },
            ),
            ev(
                3_100_000,
                Some(10),
                Mark::Action {
                    action: Action::Dontneed,
                    iteration: None,
                    evidence: None,
                    error: None,
                },
            ),
        ]);
        assert_eq!(
            lanes_of(&v),
            vec![LaneKind::Rounds, LaneKind::DmaToGuest, LaneKind::Actions]
        );
        let lanes = build(&v, 1_000_000, Detail::Full);
        let r = &lanes[0].items;
        assert_eq!(r.len(), 2, "two rounds");
        assert_eq!(
            (r[0].t0, r[0].t1),
            (0.0, 1.0),
            "round 1 spans start → done 1"
        );
        assert_eq!((r[1].t0, r[1].t1), (1.0, 2.0));
        let html = chart(&v, "t", Detail::Full).unwrap().unwrap().into_string();
        assert_eq!(html.matches("class=\"lane\"").count(), 3);
        assert!(html.contains("data-name=\"dma-to-guest\""));
        assert!(html.contains("<title>host action dontneed"));
    }

    #[test]
    fn traced_runs_get_kernel_and_counter_lanes() {
        let mut v = view_with(vec![ev(
            0,
            None,
            Mark::Phase {
                phase: Phase::RoundsStart,
            },
        )]);
        v.trace.kernel.push(KernelGroup {
            name: "huge_memory".into(),
            events: vec![(500, "split".into())],
        });
        v.trace.counters.push(Counter {
            name: "thp_split_pmd".into(),
            points: vec![(0, 0.0), (1_000_000, 1.0)],
        });
        let lanes = lanes_of(&v);
        assert_eq!(
            lanes,
            vec![
                LaneKind::Kernel("huge_memory".into()),
                LaneKind::Counter("thp_split_pmd".into())
            ]
        );
        let html = chart(&v, "t", Detail::Full).unwrap().unwrap().into_string();
        assert!(html.contains("data-name=\"kernel:huge_memory\""));
        assert!(html.contains("thp_split_pmd = 1 at 1.000 ms"));
    }

    #[test]
    fn compact_charts_merge_long_lanes_and_say_so() {
        let mut events = vec![ev(
            0,
            None,
            Mark::Phase {
                phase: Phase::RoundsStart,
            },
        )];
        for round in 1..=100u32 {
            let at = u64::from(round) * 1_000_000;
            events.push(ev(
                at - 500_000,
                Some(100_000),
                Mark::DmaBatch {
                    direction: Direction::FromGuest,
                    descriptors: 1,
                    bytes: 4096,
                    failed: u32::from(round == 50),
                },
            ));
            events.push(ev(
                at,
                None,
                Mark::Phase {
                    phase: Phase::RoundDone { round },
                },
            ));
        }
        let v = view_with(events);
        let full = build(&v, 0, Detail::Full);
        let compact = build(&v, 0, Detail::Compact);
        assert_eq!(full[0].items.len(), 100);
        let rounds = &compact[0].items;
        assert!(rounds.len() <= COMPACT_ITEMS, "{}", rounds.len());
        assert_eq!(rounds[0].text.as_deref(), Some("1–3"));
        assert_eq!(
            (rounds[0].t0, rounds.last().unwrap().t1),
            (0.0, 100.0),
            "same span"
        );
        assert!(rounds[0].title.starts_with("3 merged, 0.000–3.000 ms"));
        // The failed batch keeps its colour in the mark that absorbed it.
        assert!(compact[1].items.iter().any(|i| i.colour == palette::BLACK));
    }

    #[test]
    fn no_events_no_chart() {
        assert!(chart(&view_with(vec![]), "t", Detail::Full)
            .unwrap()
            .is_none());
    }
}
