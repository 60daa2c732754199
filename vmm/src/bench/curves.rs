//! The scale curves of `pinlab bench --scale` as line charts for the bench report: map time
//! against guest RAM (THP and 4 KiB pages), DMA throughput against region size and against queue
//! depth, launch time against guest RAM, sweep wall time against cells, explorer states per
//! second against program size. Each
//! point is a median of the typed [`ScaleReport`], its tooltip the median with min, max and n.
//! Drawn by the library's one chart layer (`pinlab::html::chart::line_chart`); owns no markup
//! of its own beyond which series go on which chart.

use pinlab::html::chart::{Axis, LineChart, Point, Scale, Series, Shape};
use pinlab::html::palette::{self, Colour};

use super::render::{percent, size};
use super::scale::ScaleReport;
use super::stat::Stat;

/// One chart of the page: its heading, what it shows, and the chart itself.
pub struct Curve {
    pub title: &'static str,
    pub note: String,
    pub chart: LineChart,
}

/// A figure for an axis label or table cell: three significant digits or so, thousands as k
/// and millions as M, no trailing zeros.
pub fn num(v: f64) -> String {
    let fixed = |v: f64, d: usize| {
        let s = format!("{v:.d$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", fixed(v / 1e6, 2))
    } else if a >= 1e4 {
        format!("{}k", fixed(v / 1e3, 1))
    } else if a >= 100.0 {
        fixed(v, 0)
    } else if a >= 10.0 {
        fixed(v, 1)
    } else if a >= 1.0 {
        fixed(v, 2)
    } else {
        fixed(v, 3)
    }
}

fn bytes_label(v: f64) -> String {
    size(v.round() as u64)
}

fn int_label(v: f64) -> String {
    format!("{}", v.round() as i64)
}

/// "what: 1.69 ms median (min 1.6, max 1.8, n 3)".
fn stat_title(what: &str, s: Stat, unit: &str) -> String {
    format!(
        "{what}: {} {unit} median (min {}, max {}, n {})",
        num(s.median),
        num(s.min),
        num(s.max),
        s.n
    )
}

fn series(name: &str, colour: Colour, shape: Shape, dashed: bool) -> Series {
    Series {
        name: name.to_string(),
        colour,
        shape,
        dashed,
        points: Vec::new(),
    }
}

/// Pushes `(x, s)` onto `series` when the figure was measured.
fn push(series: &mut Series, x: f64, s: Option<Stat>, title: impl FnOnce(Stat) -> String) {
    if let Some(s) = s {
        series.points.push(Point {
            x,
            y: s.median,
            title: title(s),
        });
    }
}

/// The distinct values of `v`, sorted: a curve's x ticks are the sizes it measured.
fn distinct(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// An axis of measured figures: log when they span a decade.
fn axis(desc: String, ticks: Vec<f64>, format: fn(f64) -> String) -> Axis {
    Axis {
        desc,
        scale: Scale::Auto,
        ticks,
        format,
    }
}

/// An axis of sizes the bench chose in geometric steps (RAM, region, depth): always log, so
/// the steps are evenly spaced.
fn steps_axis(desc: &str, ticks: Vec<f64>, format: fn(f64) -> String) -> Axis {
    Axis {
        desc: desc.to_string(),
        scale: Scale::Log,
        ticks,
        format,
    }
}

/// The map curve: `Iommu::map` and the raw registration, THP and 4 KiB pages, against size.
fn map_curve(sc: &ScaleReport) -> Curve {
    let mut s = [
        series("Iommu::map, THP", palette::BLUE, Shape::Circle, false),
        series("raw registration, THP", palette::BLUE, Shape::Ring, true),
        series(
            "Iommu::map, 4 KiB",
            palette::VERMILLION,
            Shape::Square,
            false,
        ),
        series(
            "raw registration, 4 KiB",
            palette::VERMILLION,
            Shape::Triangle,
            true,
        ),
    ];
    let trials = sc.map.first().and_then(|m| m.iommu_map).map_or(0, |s| s.n);
    for m in &sc.map {
        let x = m.size as f64;
        let pages = if m.thp { "THP" } else { "4 KiB-page" };
        let at = format!(
            "{} {pages} RAM (THP {})",
            size(m.size),
            percent(m.thp_coverage)
        );
        let k = if m.thp { 0 } else { 2 };
        let ratio = m.map_vs_raw.map_or("-".into(), |r| format!("{r:.2}"));
        push(&mut s[k], x, m.iommu_map, |st| {
            format!(
                "{}; map/raw {ratio}",
                stat_title(&format!("Iommu::map of {at}"), st, "ms")
            )
        });
        push(&mut s[k + 1], x, m.raw_register, |st| {
            stat_title(&format!("raw registration of {at}"), st, "ms")
        });
    }
    let ticks = distinct(sc.map.iter().map(|m| m.size as f64));
    Curve {
        title: "IOMMU map (pin + PFN evidence) vs guest RAM",
        note: "Iommu::map pins the range (from 512 MiB, or from 128 MiB of mostly 4 KiB pages, in \
               parts, each through a staging ring, while a thread reads each pinned part's PFNs; \
               else at once, then reads) and reads every page's PFN after its pin (a PMD-mapped \
               huge page by its head's entry); the raw registration is one ring and one \
               IORING_REGISTER_BUFFERS of the same memory."
            .into(),
        chart: LineChart {
            id: "curve-map".into(),
            x: steps_axis("guest RAM", ticks, bytes_label),
            y: axis(format!("ms, median of {trials} trials"), Vec::new(), num),
            series: s.into(),
        },
    }
}

/// The four DMA series of one slice of the surface.
fn dma_series() -> [Series; 4] {
    [
        series("engine to-guest", palette::ORANGE, Shape::Circle, false),
        series("raw READ_FIXED", palette::ORANGE, Shape::Ring, true),
        series(
            "engine from-guest",
            palette::BLUISH_GREEN,
            Shape::Square,
            false,
        ),
        series(
            "raw WRITE_FIXED",
            palette::BLUISH_GREEN,
            Shape::Triangle,
            true,
        ),
    ]
}

fn push_dma(s: &mut [Series; 4], x: f64, d: &super::dma::DmaPoint) {
    let at = format!("{} region, depth {}", size(d.region), d.queue_depth);
    let figures = [
        d.engine_to_guest,
        d.raw_read_fixed,
        d.engine_from_guest,
        d.raw_write_fixed,
    ];
    for (series, f) in s.iter_mut().zip(figures) {
        let what = format!("{}, {at}", series.name);
        push(series, x, f, |st| stat_title(&what, st, "GiB/s"));
    }
}

/// DMA throughput against region size at one depth, and against depth at one region size.
fn dma_curves(sc: &ScaleReport) -> Vec<Curve> {
    let depths = distinct(sc.dma.iter().map(|d| f64::from(d.queue_depth)));
    let regions = distinct(sc.dma.iter().map(|d| d.region as f64));
    let default = f64::from(pinlab::scenario::DEFAULT_QUEUE_DEPTH);
    let depth = if depths.contains(&default) {
        Some(default)
    } else {
        depths.last().copied()
    };
    let region = regions.last().copied();
    let trials = sc
        .dma
        .first()
        .and_then(|d| d.engine_to_guest)
        .map_or(0, |s| s.n);
    let y = || axis(format!("GiB/s, median of {trials} trials"), Vec::new(), num);
    let mut by_region = dma_series();
    let mut by_depth = dma_series();
    for d in &sc.dma {
        if Some(f64::from(d.queue_depth)) == depth {
            push_dma(&mut by_region, d.region as f64, d);
        }
        if Some(d.region as f64) == region {
            push_dma(&mut by_depth, f64::from(d.queue_depth), d);
        }
    }
    let depth = depth.map_or("-".into(), int_label);
    let region = region.map_or("-".into(), bytes_label);
    vec![
        Curve {
            title: "DMA throughput vs region size",
            note: format!(
                "At queue depth {depth}, 8 MiB descriptors. Engine: the device's own path (pattern \
                 fill + READ_FIXED, WRITE_FIXED + page checksums); raw: the same io_uring ops \
                 alone at the same depth."
            ),
            chart: LineChart {
                id: "curve-dma-region".into(),
                x: steps_axis("DMA region", regions, bytes_label),
                y: y(),
                series: by_region.into(),
            },
        },
        Curve {
            title: "DMA throughput vs queue depth",
            note: format!("Over a {region} region, 8 MiB descriptors."),
            chart: LineChart {
                id: "curve-dma-depth".into(),
                x: steps_axis("queue depth, SQEs in flight", depths, int_label),
                y: y(),
                series: by_depth.into(),
            },
        },
    ]
}

/// Launch of the default scenario against guest RAM, THP and 4 KiB pages.
fn launch_curve(sc: &ScaleReport) -> Curve {
    let mut s = [
        series(
            "launch → first DMA, THP",
            palette::BLUE,
            Shape::Circle,
            false,
        ),
        series(
            "launch → first DMA, 4 KiB",
            palette::VERMILLION,
            Shape::Square,
            false,
        ),
        series("spawn → exit, THP", palette::BLUE, Shape::Ring, true),
        series(
            "spawn → exit, 4 KiB",
            palette::VERMILLION,
            Shape::Triangle,
            true,
        ),
    ];
    for l in &sc.launch {
        let x = l.memory as f64;
        let k = if l.thp { 0 } else { 1 };
        let pages = if l.thp { "THP" } else { "4 KiB pages" };
        let at = format!("{} {pages}", size(l.memory));
        let start = l
            .launch_to_guest_start
            .map_or("-".into(), |s| format!("{} ms", num(s.median)));
        push(&mut s[k], x, l.launch_to_first_dma, |st| {
            format!(
                "{}; guest start at {start}",
                stat_title(&format!("launch → first DMA, {at}"), st, "ms")
            )
        });
        push(&mut s[k + 2], x, l.spawn_to_exit, |st| {
            stat_title(&format!("spawn → exit, {at}"), st, "ms")
        });
    }
    let ticks = distinct(sc.launch.iter().map(|l| l.memory as f64));
    Curve {
        title: "Launch time vs guest RAM",
        note: "pinlab run --memory M --thp on|off --json (the default scenario), spawned and \
               reaped, the same number of launches at every size."
            .into(),
        chart: LineChart {
            id: "curve-launch".into(),
            x: steps_axis("guest RAM", ticks, bytes_label),
            y: axis("ms, median of the launches".into(), Vec::new(), num),
            series: s.into(),
        },
    }
}

/// Sweep wall time against the cells it ran: the sweep's own time and the process's.
fn sweep_curve(sc: &ScaleReport) -> Curve {
    let mut s = [
        series("sweep wall", palette::BLUE, Shape::Circle, false),
        series("spawn → exit", palette::VERMILLION, Shape::Square, true),
    ];
    for p in &sc.sweep {
        let per_cell = p
            .seconds_per_cell
            .map_or("-".to_string(), |c| format!("{} s a cell", num(c)));
        let what = format!(
            "{} cells run of {} picked ({} not built here)",
            p.run, p.cells, p.not_built
        );
        s[0].points.push(Point {
            x: p.run as f64,
            y: p.seconds,
            title: format!("{what}: sweep wall {} s, {per_cell}", num(p.seconds)),
        });
        s[1].points.push(Point {
            x: p.run as f64,
            y: p.spawn_to_exit_s,
            title: format!("{what}: spawn → exit {} s", num(p.spawn_to_exit_s)),
        });
    }
    let ticks = distinct(sc.sweep.iter().map(|p| p.run as f64));
    Curve {
        title: "Sweep wall time vs cells",
        note: "pinlab sweep --cells N --json, spawned and reaped: N cells evenly spaced over the \
               whole sweep (the last point is all of it), one process a cell, one per CPU at a \
               time (the default --jobs)."
            .into(),
        chart: LineChart {
            id: "curve-sweep".into(),
            // Linear on both axes: the question is whether the wall grows in proportion.
            x: Axis {
                desc: "cells run".into(),
                scale: Scale::Linear,
                ticks,
                format: int_label,
            },
            y: Axis {
                desc: "seconds, one sweep".into(),
                scale: Scale::Linear,
                ticks: Vec::new(),
                format: num,
            },
            series: s.into(),
        },
    }
}

/// Explorer speed against program size, one series per stress program.
fn explorer_curve(sc: &ScaleReport) -> Curve {
    let colours = [
        palette::BLUE,
        palette::VERMILLION,
        palette::BLUISH_GREEN,
        palette::REDDISH_PURPLE,
        palette::ORANGE,
        palette::SKY_BLUE,
    ];
    let mut s: Vec<Series> = Vec::new();
    for e in &sc.explorer {
        let i = match s.iter().position(|x| x.name == e.family) {
            Some(i) => i,
            None => {
                let n = s.len();
                let shape = Shape::ALL[n % Shape::ALL.len()];
                s.push(series(&e.family, colours[n % colours.len()], shape, false));
                n
            }
        };
        s[i].points.push(Point {
            x: e.ops as f64,
            y: e.states_per_s,
            title: format!(
                "{}, era {}: {} states/s ({} states, {} ops on {} threads, {} explorations, \
                 {:.3} ms each)",
                e.program,
                e.era,
                num(e.states_per_s),
                e.states,
                e.ops,
                e.threads,
                e.explorations,
                e.ms_per_exploration
            ),
        });
    }
    let ticks = distinct(sc.explorer.iter().map(|e| e.ops as f64));
    let era = sc.explorer.first().map_or("-", |e| e.era.as_str());
    Curve {
        title: "Explorer states/s vs program size",
        note: format!(
            "The model explorer on each stress program cut to 1/4 .. 4/4 of every thread's ops, \
             era {era}; states/s over all explorations of the point (at least 3, at least 100 ms)."
        ),
        chart: LineChart {
            id: "curve-explorer".into(),
            x: axis(
                "program size, ops over all threads".into(),
                ticks,
                int_label,
            ),
            y: axis("states explored per second".into(), Vec::new(), num),
            series: s,
        },
    }
}

/// Every curve `sc` holds, in the order of the list.
pub fn curves(sc: &ScaleReport) -> Vec<Curve> {
    let mut v = vec![map_curve(sc)];
    v.extend(dma_curves(sc));
    v.push(launch_curve(sc));
    v.push(sweep_curve(sc));
    v.push(explorer_curve(sc));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bug: a label that reads as a different number (rounded to 0, a k for a thousandth).
    #[test]
    fn num_keeps_three_figures_and_drops_trailing_zeros() {
        let table = [
            (0.125, "0.125"),
            (0.1, "0.1"),
            (1.0, "1"),
            (1.694, "1.69"),
            (12.34, "12.3"),
            (250.0, "250"),
            (12_500.0, "12.5k"),
            (2_400_000.0, "2.4M"),
        ];
        for (v, want) in table {
            assert_eq!(num(v), want, "{v}");
        }
    }
}
