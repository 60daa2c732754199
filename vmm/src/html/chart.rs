//! The frame every chart shares: the SVG that `plotters` drew, and over it, at the same size,
//! a hover layer of transparent rectangles, one per drawn thing, each with a `<title>` (the
//! browser's tooltip, no script). The layer's groups name what they hold (`data-lane`,
//! `data-kind`), which is also what the browser test counts. Owns no data.

use maud::{html, Markup, PreEscaped};
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
