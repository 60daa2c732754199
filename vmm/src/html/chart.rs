//! The frame every chart shares: the SVG that `plotters` drew, and over it, at the same size,
//! a hover layer of transparent rectangles, one per drawn thing, each with a `<title>` (the
//! browser's tooltip, no script). The layer's groups name what they hold (`data-lane`,
//! `data-kind`), which is also what the browser test counts. Owns no data.

use maud::{html, Markup, PreEscaped};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

use super::Error;

/// A hover rectangle in pixels, with its tooltip and optional data attributes.
#[derive(Clone, Debug)]
pub struct Hit {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
    pub title: String,
    /// First cell and cell count, for strips (`data-first`, `data-count`).
    pub cells: Option<(u32, u32)>,
}

/// A named group of hover rectangles (a lane of the timeline, a state of the strip).
#[derive(Clone, Debug)]
pub struct Group {
    pub class: &'static str,
    pub name: String,
    pub hits: Vec<Hit>,
}

/// The plotters SVG and its hover layer, in one positioned box.
pub fn overlaid(id: &str, svg: &str, size: (u32, u32), groups: &[Group]) -> Markup {
    let (w, h) = size;
    html! {
        div.chart id=(id) style={"width: " (w) "px; height: " (h) "px"} {
            (PreEscaped(svg))
            svg.hover width=(w) height=(h) viewBox={"0 0 " (w) " " (h)} role="img" {
                @for g in groups {
                    g class=(g.class) data-name=(g.name) {
                        @for r in &g.hits {
                            @if let Some((first, count)) = r.cells {
                                rect x=(r.x) y=(r.y) width=(r.w.max(1)) height=(r.h.max(1))
                                    data-first=(first) data-count=(count) {
                                    title { (r.title) }
                                }
                            } @else {
                                rect x=(r.x) y=(r.y) width=(r.w.max(1)) height=(r.h.max(1)) {
                                    title { (r.title) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A plotters failure, named by chart.
pub fn failed<E: std::fmt::Display>(chart: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Chart {
        chart,
        reason: e.to_string(),
    }
}

/// The font of every chart label: the naive metrics of plotters without a font feature are
/// enough for SVG, where the browser draws the text.
pub fn font(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

/// A left-aligned, vertically centred label style.
pub fn label(size: f64) -> TextStyle<'static> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    font(size).pos(Pos::new(HPos::Left, VPos::Center))
}

/// A centred label style.
pub fn centred(size: f64) -> TextStyle<'static> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    font(size).pos(Pos::new(HPos::Center, VPos::Center))
}

/// How an axis maps its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10; every value must be positive (a point that is not is left out).
    Log,
    /// Log when the values are positive and span at least a decade, else linear from zero.
    Auto,
}

/// One axis of a [`LineChart`].
#[derive(Clone, Debug)]
pub struct Axis {
    /// The axis title, with its unit ("guest RAM", "ms, median").
    pub desc: String,
    pub scale: Scale,
    /// Where the ticks go, in data units; empty: 1-2-5 per decade on a log axis, about six
    /// round steps on a linear one.
    pub ticks: Vec<f64>,
    /// A tick's label.
    pub format: fn(f64) -> String,
}

/// A point's marker: with the series' colour and line style, the second cue of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
    Ring,
}

impl Shape {
    /// The shapes in the order series take them.
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Cross,
        Shape::Ring,
    ];

    fn glyph(self) -> &'static str {
        match self {
            Shape::Circle => "●",
            Shape::Square => "■",
            Shape::Triangle => "▲",
            Shape::Cross => "✕",
            Shape::Ring => "○",
        }
    }
}

/// One measured point: where it is and what its tooltip says (the value, with its spread).
#[derive(Clone, Debug)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub title: String,
}

/// A named line of points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub colour: super::palette::Colour,
    pub shape: Shape,
    pub dashed: bool,
    pub points: Vec<Point>,
}

/// A line chart: series of points over two axes, the points joined in the order given.
#[derive(Clone, Debug)]
pub struct LineChart {
    /// The chart's element id.
    pub id: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

const LINE_W: u32 = 660;
const LINE_H: u32 = 380;

/// An axis resolved against its values: log or not, the range and the ticks, all in the
/// chart's own (log10 or linear) space; plotters' coordinate of it, linear in that space, with
/// exactly these ticks.
#[derive(Clone, Debug)]
struct Resolved {
    log: bool,
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Resolved {
    fn of(axis: &Axis, values: &[f64]) -> Resolved {
        let positive: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
        let (lo, hi) = min_max(values).unwrap_or((0.0, 1.0));
        let log = match axis.scale {
            Scale::Linear => false,
            Scale::Log => !positive.is_empty(),
            Scale::Auto => positive.len() == values.len() && lo > 0.0 && hi / lo >= 10.0,
        };
        if log {
            let (lo, hi) = min_max(&positive).unwrap_or((1.0, 10.0));
            let (a, b) = (lo.log10(), hi.log10());
            let pad = ((b - a) * 0.06).max(0.05);
            let range = (a - pad)..(b + pad);
            let ticks = if axis.ticks.is_empty() {
                log_ticks(lo, hi)
            } else {
                axis.ticks.clone()
            };
            let ticks = ticks
                .iter()
                .filter(|t| **t > 0.0)
                .map(|t| t.log10())
                .filter(|t| range.contains(t))
                .collect();
            Resolved { log, range, ticks }
        } else {
            let (lo, hi) = (lo.min(0.0), hi.max(lo + 1e-9));
            let range = lo..hi + (hi - lo) * 0.06;
            let ticks = if axis.ticks.is_empty() {
                linear_ticks(lo, range.end)
            } else {
                axis.ticks.clone()
            };
            let ticks = ticks.into_iter().filter(|t| range.contains(t)).collect();
            Resolved { log, range, ticks }
        }
    }

    /// A data value in the chart's space (`None`: not drawable on a log axis).
    fn to(&self, v: f64) -> Option<f64> {
        match (self.log, v > 0.0) {
            (true, true) => Some(v.log10()),
            (true, false) => None,
            (false, _) => Some(v),
        }
    }

    fn from(&self, t: f64) -> f64 {
        if self.log {
            10f64.powf(t)
        } else {
            t
        }
    }
}

impl Ranged for Resolved {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let f = if span > 0.0 {
            (v - self.range.start) / span
        } else {
            0.5
        };
        limit.0 + (f64::from(limit.1 - limit.0) * f).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .reduce(f64::min)?;
    let hi = v
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .reduce(f64::max)?;
    Some((lo, hi))
}

/// 1, 2 and 5 times each power of ten within `[lo, hi]` (only the powers when that is many).
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return Vec::new();
    }
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let steps: &[f64] = if b - a > 4 { &[1.0] } else { &[1.0, 2.0, 5.0] };
    let mut out = Vec::new();
    for e in a..=b {
        for s in steps {
            let t = s * 10f64.powi(e);
            if t >= lo / 1.0001 && t <= hi * 1.0001 {
                out.push(t);
            }
        }
    }
    // A range inside one decade gets its ends, so the axis is never bare.
    if out.len() < 2 {
        out = vec![lo, hi];
    }
    out
}

/// Round steps (1, 2 or 5 times a power of ten) from `lo` to `hi`, about six of them.
pub fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return vec![lo];
    }
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Draws `c`: the plotters SVG with its axes and series, a hover layer with one tooltip per
/// point (a group `class="series"` per series, named by it), a legend naming each series by its
/// colour, marker and line, and the points as a table under a `<details>`.
pub fn line_chart(c: &LineChart) -> Result<Markup, Error> {
    let xs: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.x))
        .collect();
    let ys: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.y))
        .collect();
    let (rx, ry) = (Resolved::of(&c.x, &xs), Resolved::of(&c.y, &ys));
    let (fx, fy) = (c.x.format, c.y.format);
    let mut svg = String::new();
    let mut groups = Vec::new();
    {
        let fail = failed::<String>("line chart");
        let root = SVGBackend::with_string(&mut svg, (LINE_W, LINE_H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let mut ch = ChartBuilder::on(&root)
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(rx.clone(), ry.clone())
            .map_err(|e| fail(e.to_string()))?;
        let x_desc = format!("{}{}", c.x.desc, if rx.log { " (log scale)" } else { "" });
        let y_desc = format!("{}{}", c.y.desc, if ry.log { " (log scale)" } else { "" });
        ch.configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|t| fx(rx.from(*t)))
            .y_label_formatter(&|t| fy(ry.from(*t)))
            .bold_line_style(super::palette::LIGHT_GREY.plotters())
            .label_style(font(13.0))
            .axis_desc_style(font(14.0))
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        for s in &c.series {
            let pts: Vec<(f64, f64, &Point)> = s
                .points
                .iter()
                .filter_map(|p| Some((rx.to(p.x)?, ry.to(p.y)?, p)))
                .collect();
            let colour = s.colour.plotters();
            let line: Vec<(f64, f64)> = pts.iter().map(|&(x, y, _)| (x, y)).collect();
            let drawn = if s.dashed {
                let dashes =
                    plotters::element::DashedPathElement::new(line, 7, 5, colour.stroke_width(2));
                ch.draw_series(std::iter::once(dashes)).map(|_| ())
            } else {
                let path = PathElement::new(line, colour.stroke_width(2));
                ch.draw_series(std::iter::once(path)).map(|_| ())
            };
            drawn.map_err(|e| fail(e.to_string()))?;
            let mut hits = Vec::new();
            for &(x, y, p) in &pts {
                let at = (x, y);
                let drawn = match s.shape {
                    Shape::Circle => {
                        ch.draw_series(std::iter::once(Circle::new(at, 5, colour.filled())))
                    }
                    Shape::Ring => {
                        ch.draw_series(std::iter::once(Circle::new(at, 5, colour.stroke_width(2))))
                    }
                    Shape::Triangle => {
                        ch.draw_series(std::iter::once(TriangleMarker::new(at, 6, colour.filled())))
                    }
                    Shape::Cross => {
                        ch.draw_series(std::iter::once(Cross::new(at, 5, colour.stroke_width(3))))
                    }
                    Shape::Square => ch.draw_series(std::iter::once(
                        EmptyElement::at(at) + Rectangle::new([(-4, -4), (4, 4)], colour.filled()),
                    )),
                };
                drawn.map_err(|e| fail(e.to_string()))?;
                push_hit(&mut hits, ch.backend_coord(&at), p);
            }
            groups.push(Group {
                class: "series",
                name: s.name.clone(),
                hits,
            });
        }
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let rows = point_rows(c);
    Ok(html! {
        (overlaid(&c.id, &svg, (LINE_W, LINE_H), &groups))
        div.legend {
            @for s in &c.series {
                span data-series=(s.name) {
                    span style={"color: " (s.colour.css()) "; font-weight: 700"} {
                        @if s.dashed { "╌" (s.shape.glyph()) "╌" } @else { "━" (s.shape.glyph()) "━" }
                    }
                    " " (s.name)
                }
            }
        }
        details {
            summary { "the points (" (c.y.desc) " against " (c.x.desc) ")" }
            table {
                tr { th { (c.x.desc) } @for s in &c.series { th { (s.name) } } }
                @for (x, cells) in &rows {
                    tr {
                        td.num { (fx(*x)) }
                        @for cell in cells {
                            @match cell { Some(p) => td.num title=(p.title) { (fy(p.y)) }, None => td { "–" } }
                        }
                    }
                }
            }
        }
    })
}

/// A hover square of 14 px centred on a drawn point.
fn push_hit(hits: &mut Vec<Hit>, (x, y): (i32, i32), p: &Point) {
    hits.push(Hit {
        x: x - 7,
        y: y - 7,
        w: 14,
        h: 14,
        title: p.title.clone(),
        cells: None,
    });
}

/// The points by x (every series' x values, in order), one cell per series.
fn point_rows(c: &LineChart) -> Vec<(f64, Vec<Option<&Point>>)> {
    let mut xs: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs.into_iter()
        .map(|x| {
            let cells = c
                .series
                .iter()
                .map(|s| s.points.iter().find(|p| p.x == x))
                .collect();
            (x, cells)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bug: a tick outside the range, a decade missing, or a step that is not round.
    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(log_ticks(0.7, 30.0), [1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!(log_ticks(1.0, 1e6), [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6]);
        assert_eq!(
            log_ticks(3.0, 4.0),
            [3.0, 4.0],
            "inside one decade: the ends"
        );
        assert_eq!(linear_ticks(0.0, 7.3), [0.0, 2.0, 4.0, 6.0]);
        assert_eq!(
            linear_ticks(0.0, 60.0),
            [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        );
    }

    /// Auto picks log only for positive values spanning a decade; a log chart leaves out a
    /// point it cannot place (y = 0) and keeps one tooltip per drawn point, in its series'
    /// group. A bug: a zero drawn at -infinity, a tooltip for a point not drawn.
    #[test]
    fn a_line_chart_has_one_tooltip_per_drawn_point() {
        let axis = |scale| Axis {
            desc: "d".into(),
            scale,
            ticks: Vec::new(),
            format: |v| format!("{v}"),
        };
        assert!(Resolved::of(&axis(Scale::Auto), &[1.0, 10.0]).log);
        assert!(!Resolved::of(&axis(Scale::Auto), &[1.0, 9.0]).log);
        assert!(!Resolved::of(&axis(Scale::Auto), &[0.0, 100.0]).log);
        let p = |x: f64, y: f64| Point {
            x,
            y,
            title: format!("at {x}: {y}"),
        };
        let c = LineChart {
            id: "t".into(),
            x: Axis {
                desc: "size, bytes".into(),
                ..axis(Scale::Log)
            },
            y: Axis {
                desc: "time, ms".into(),
                ..axis(Scale::Log)
            },
            series: vec![Series {
                name: "one".into(),
                colour: super::super::palette::BLUE,
                shape: Shape::Square,
                dashed: true,
                points: vec![p(1.0, 2.0), p(10.0, 0.0), p(100.0, 50.0)],
            }],
        };
        let html = line_chart(&c).unwrap().into_string();
        let group = &html[html.find("data-name=\"one\"").unwrap()..];
        let group = &group[..group.find("</g>").unwrap()];
        assert_eq!(group.matches("<title>").count(), 2, "{group}");
        assert!(group.contains("at 100: 50") && !group.contains("at 10: 0"));
        assert!(html.contains("size, bytes (log scale)") && html.contains("time, ms (log scale)"));
        assert!(html.contains("data-series=\"one\""), "the legend");
    }
}
