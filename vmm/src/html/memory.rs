//! Two memory charts of a run: the per-page strip of the DMA region (one cell per 4 KiB page;
//! three bands: device write lost, device read stale, pinned PFN moved; the cell's ground is
//! the THP state of its 2 MiB block at the end) and the guest RAM map (one cell per 2 MiB
//! block: THP at boot and at the end, and what the block holds: the region, the decoy, the
//! page beside the region). Drawn with plotters; each run of equal cells has one tooltip.
//!
//! A band's position in the cell is its cue beside its colour. Where a result lists only the
//! first pages of a set, the pages past the list are drawn as "not listed" (grey), never as
//! unaffected.

use maud::Markup;
use plotters::prelude::*;

use super::chart::{self, failed, Group, Hit};
use super::palette::{self, Colour};
use super::view::{Listed, RunView};
use super::Result;
use crate::addr::{HUGE_PAGE_SIZE, PAGE_SIZE};

const WIDTH: u32 = 1300;
const LEFT: u32 = 70;
const PAGES_PER_BLOCK: u32 = (HUGE_PAGE_SIZE / PAGE_SIZE) as u32;

/// The three per-page facts, in band order (top to bottom), with their colours and words.
pub const BANDS: [(Colour, &str); 3] = [
    (palette::VERMILLION, "device write lost (top band)"),
    (palette::SKY_BLUE, "device read stale (middle band)"),
    (palette::YELLOW, "pinned PFN ≠ mapped PFN (bottom band)"),
];
/// A band whose page lies past the end of a cut list.
pub const NOT_LISTED: Colour = Colour::new(0xB8, 0xB8, 0xB8);
/// The ground of a cell whose block was all THP at the end, part THP, or not THP.
pub const GROUND_THP: Colour = Colour::new(0xB4, 0xD5, 0xEC);
pub const GROUND_PART: Colour = Colour::new(0xE2, 0xEE, 0xF7);

/// THP state of a 2 MiB block from its count.
fn thp_words(count: Option<u16>) -> String {
    match count {
        None => "not measured".into(),
        Some(c) if u32::from(c) == PAGES_PER_BLOCK => "THP (512/512)".into(),
        Some(0) => "not THP (0/512)".into(),
        Some(c) => format!("part THP ({c}/512)"),
    }
}

fn ground(count: Option<u16>) -> Colour {
    match count {
        Some(c) if u32::from(c) == PAGES_PER_BLOCK => GROUND_THP,
        Some(0) | None => palette::WHITE,
        Some(_) => GROUND_PART,
    }
}

/// One page's drawn state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageState {
    bands: [Option<bool>; 3],
    block_end: Option<u16>,
    block_boot: Option<u16>,
}

fn state_words(s: &PageState) -> String {
    let mut w: Vec<String> = Vec::new();
    let names = ["device write lost", "device read stale", "pinned PFN moved"];
    for (b, name) in s.bands.iter().zip(names) {
        match b {
            Some(true) => w.push(name.to_string()),
            None => w.push(format!("{name}: not listed")),
            Some(false) => {}
        }
    }
    if w.is_empty() {
        w.push("coherent".into());
    }
    format!(
        "{}; block THP at boot {}, at end {}",
        w.join(", "),
        thp_words(s.block_boot),
        thp_words(s.block_end)
    )
}

/// The per-page strip of the DMA region, or `None` when the run has no region pages.
pub fn strip(v: &RunView, id: &str) -> Result<Option<Markup>> {
    let pages = v.region_pages;
    let Some(layout) = v.layout.filter(|_| pages > 0) else {
        return Ok(None);
    };
    let moved = v.moved();
    let sets: [&Listed; 3] = [&v.write_lost, &v.read_stale, &moved];
    let start = layout.region.start.raw();
    let block_of = |p: u32| ((start + u64::from(p) * PAGE_SIZE) / HUGE_PAGE_SIZE) as usize;
    let count_at = |b: &Option<Vec<u16>>, blk: usize| b.as_ref().and_then(|v| v.get(blk).copied());
    let state = |p: u32| PageState {
        bands: [sets[0].state(p), sets[1].state(p), sets[2].state(p)],
        block_end: count_at(&v.blocks.end, block_of(p)),
        block_boot: count_at(&v.blocks.boot, block_of(p)),
    };
    let cols: u32 = if pages <= 2048 { 64 } else { 128 };
    let rows = pages.div_ceil(cols);
    let cell_w = (WIDTH - LEFT - 10) / cols;
    let cell_h: u32 = if rows <= 32 { 24 } else { 12 };
    let width = LEFT + cell_w * cols + 10;
    let height = rows * cell_h + 24;
    let mut svg = String::new();
    let mut hits = Vec::new();
    {
        let fail = failed::<String>("page strip");
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let x_of = |c: u32| (LEFT + c * cell_w) as i32;
        let y_of = |r: u32| (4 + r * cell_h) as i32;
        for r in 0..rows {
            let first = r * cols;
            let last = (first + cols).min(pages);
            root.draw(&Text::new(
                format!("{first}"),
                (6, y_of(r) + cell_h as i32 / 2),
                chart::label(13.5),
            ))
            .map_err(|e| fail(e.to_string()))?;
            // Runs of equal cells in this row: one ground and one band rect per run.
            let mut p = first;
            while p < last {
                let s = state(p);
                let mut q = p + 1;
                while q < last && state(q) == s {
                    q += 1;
                }
                let (x0, x1) = (x_of(p - first), x_of(q - first));
                let (y0, y1) = (y_of(r), y_of(r) + cell_h as i32);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x1, y1)],
                    ground(s.block_end).plotters().filled(),
                ))
                .map_err(|e| fail(e.to_string()))?;
                let band_h = (cell_h as i32 - 3) / 3;
                for (i, b) in s.bands.iter().enumerate() {
                    let fill = match b {
                        Some(true) => BANDS[i].0,
                        None => NOT_LISTED,
                        Some(false) => continue,
                    };
                    let by = y0 + 1 + band_h * i as i32;
                    root.draw(&Rectangle::new(
                        [(x0, by), (x1, by + band_h)],
                        fill.plotters().filled(),
                    ))
                    .map_err(|e| fail(e.to_string()))?;
                }
                let gpa = start + u64::from(p) * PAGE_SIZE;
                hits.push(Hit {
                    x: x0,
                    y: y0,
                    w: x1 - x0,
                    h: y1 - y0,
                    title: format!(
                        "region pages {p}–{} (gpa {gpa:#x}–{:#x}): {}",
                        q - 1,
                        start + u64::from(q) * PAGE_SIZE - 1,
                        state_words(&s)
                    ),
                    cells: Some((p, q - p)),
                });
                p = q;
            }
        }
        // The cell grid: one cell per page.
        let grid = palette::GREY.plotters().stroke_width(1);
        for c in 0..=cols {
            let full = (pages / cols) as i32;
            let bottom = if c <= pages % cols || pages.is_multiple_of(cols) {
                y_of(rows)
            } else {
                y_of(full as u32)
            };
            root.draw(&PathElement::new(
                vec![(x_of(c), y_of(0)), (x_of(c), bottom)],
                grid,
            ))
            .map_err(|e| fail(e.to_string()))?;
        }
        for r in 0..=rows {
            let end = if r == rows && !pages.is_multiple_of(cols) {
                x_of(pages % cols)
            } else {
                x_of(cols)
            };
            root.draw(&PathElement::new(
                vec![(x_of(0), y_of(r)), (end, y_of(r))],
                grid,
            ))
            .map_err(|e| fail(e.to_string()))?;
        }
        root.draw(&Text::new(
            format!(
                "{pages} pages of 4 KiB from gpa {start:#x}, {cols} per row (row label: first page index)"
            ),
            (LEFT as i32, y_of(rows) + 12),
            chart::label(13.5),
        ))
        .map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let groups = [Group {
        class: "pages",
        name: format!("region:{pages}"),
        hits,
    }];
    Ok(Some(chart::overlaid(id, &svg, (width, height), &groups)))
}

/// What a 2 MiB block of guest RAM holds for this scenario, in short and in words.
fn roles(v: &RunView, block: u64) -> (String, Vec<&'static str>) {
    let Some(l) = v.layout else {
        return (String::new(), Vec::new());
    };
    let (lo, hi) = (block * HUGE_PAGE_SIZE, (block + 1) * HUGE_PAGE_SIZE);
    let mut short = String::new();
    let mut words = Vec::new();
    if lo < pinlab_abi::DMA_BASE_GPA {
        short.push('0');
        words.push("page tables, boot info and the guest image");
    }
    if l.region.start.raw() < hi && l.region.end().raw() > lo {
        short.push('R');
        words.push("the DMA region (pinned)");
    }
    if l.beside.is_some_and(|b| (lo..hi).contains(&b.raw())) {
        short.push('B');
        words.push("the 4 KiB page beside the region (what split-pmd discards)");
    }
    if l.decoy.is_some_and(|d| d.raw() == lo) {
        short.push('D');
        words.push("the decoy (unpinned, for KSM and reclaim)");
    }
    (short, words)
}

/// The guest RAM map, one cell per 2 MiB block.
pub fn ram_map(v: &RunView, id: &str) -> Result<Option<Markup>> {
    let blocks = v.memory_bytes.div_ceil(HUGE_PAGE_SIZE) as u32;
    if blocks == 0 {
        return Ok(None);
    }
    let cols: u32 = if blocks <= 256 { 32 } else { 64 };
    let rows = blocks.div_ceil(cols);
    let cell_w = (WIDTH - LEFT - 10) / cols;
    let cell_h: u32 = 62;
    let width = LEFT + cell_w * cols + 10;
    let height = rows * cell_h + 8;
    let at = |b: &Option<Vec<u16>>, i: u32| b.as_ref().and_then(|v| v.get(i as usize).copied());
    let fill = |c: Option<u16>| match c {
        None => palette::LIGHT_GREY,
        Some(c) if u32::from(c) == PAGES_PER_BLOCK => palette::BLUE,
        Some(0) => palette::WHITE,
        Some(_) => palette::SKY_BLUE,
    };
    let mut svg = String::new();
    let mut hits = Vec::new();
    {
        let fail = failed::<String>("guest RAM map");
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        for r in 0..rows {
            let y = (4 + r * cell_h) as i32;
            root.draw(&Text::new(
                format!("{} MiB", u64::from(r * cols) * 2),
                (4, y + 14),
                chart::label(13.5),
            ))
            .map_err(|e| fail(e.to_string()))?;
            // A grey ground behind the row: the gaps between cells outline each block, so a
            // white (no THP) block still shows as a cell.
            let in_row = (blocks - r * cols).min(cols);
            root.draw(&Rectangle::new(
                [
                    (LEFT as i32 - 2, y + 17),
                    ((LEFT + in_row * cell_w) as i32 - 1, y + 59),
                ],
                palette::GREY.plotters().filled(),
            ))
            .map_err(|e| fail(e.to_string()))?;
            root.draw(&Text::new("boot", (4, y + 28), chart::label(13.5)))
                .map_err(|e| fail(e.to_string()))?;
            root.draw(&Text::new("end", (4, y + 48), chart::label(13.5)))
                .map_err(|e| fail(e.to_string()))?;
        }
        for b in 0..blocks {
            let (r, c) = (b / cols, b % cols);
            let x0 = (LEFT + c * cell_w) as i32;
            let y0 = (4 + r * cell_h) as i32;
            let x1 = x0 + cell_w as i32 - 3;
            let (boot, end) = (at(&v.blocks.boot, b), at(&v.blocks.end, b));
            let (short, words) = roles(v, u64::from(b));
            root.draw(&Rectangle::new(
                [(x0, y0 + 19), (x1, y0 + 38)],
                fill(boot).plotters().filled(),
            ))
            .map_err(|e| fail(e.to_string()))?;
            root.draw(&Rectangle::new(
                [(x0, y0 + 38), (x1, y0 + 57)],
                fill(end).plotters().filled(),
            ))
            .map_err(|e| fail(e.to_string()))?;
            // The region's blocks get a thick outline; the others are told apart by the gap
            // between cells (one outline per block would double the map's size).
            if short.contains('R') {
                root.draw(&Rectangle::new(
                    [(x0, y0 + 19), (x1, y0 + 57)],
                    BLACK.stroke_width(2),
                ))
                .map_err(|e| fail(e.to_string()))?;
            }
            if !short.is_empty() {
                root.draw(&Text::new(
                    short.clone(),
                    ((x0 + x1) / 2, y0 + 10),
                    chart::centred(15.0),
                ))
                .map_err(|e| fail(e.to_string()))?;
            }
            let lo = u64::from(b) * HUGE_PAGE_SIZE;
            let unfaulted = v.prefaulted_bytes.is_some_and(|p| lo >= p);
            let state = |c: Option<u16>| match c {
                None if unfaulted => "not measured (past the prefaulted span)".to_string(),
                c => thp_words(c),
            };
            hits.push(Hit {
                x: x0,
                y: y0,
                w: x1 - x0,
                h: 57,
                title: format!(
                    "block {b}: gpa {lo:#x}–{:#x}\nTHP at boot: {}\nTHP at end: {}{}",
                    lo + HUGE_PAGE_SIZE - 1,
                    state(boot),
                    state(end),
                    if words.is_empty() {
                        String::new()
                    } else {
                        format!("\nholds {}", words.join("; "))
                    }
                ),
                cells: Some((b, 1)),
            });
        }
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let groups = [Group {
        class: "blocks",
        name: format!("ram:{blocks}"),
        hits,
    }];
    Ok(Some(chart::overlaid(id, &svg, (width, height), &groups)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RunView {
        let s = crate::config::load(None).unwrap();
        let mut o = crate::report::Outcome::empty(&s);
        o.guest = Some(crate::oracle::GuestSummary {
            region_pages: 512,
            write_lost_page_list: (0..64).collect(),
            read_stale_page_list: vec![7],
            ..Default::default()
        });
        o.device_write_lost_pages = 300;
        o.device_read_stale_pages = 1;
        o.thp_blocks.boot = Some(vec![512; 32]);
        o.thp_blocks.end = Some([vec![512], vec![0], vec![512; 30]].concat());
        RunView::of(&o, s.layout().ok())
    }

    fn counts(html: &str) -> Vec<(u32, u32)> {
        html.match_indices("data-first=\"")
            .map(|(i, _)| {
                let rest = &html[i + 12..];
                let first: u32 = rest[..rest.find('"').unwrap()].parse().unwrap();
                let c = &rest[rest.find("data-count=\"").unwrap() + 12..];
                (first, c[..c.find('"').unwrap()].parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_strip_covers_every_page_once_and_marks_cut_lists() {
        let v = view();
        let html = strip(&v, "s").unwrap().unwrap().into_string();
        let runs = counts(&html);
        assert_eq!(runs.iter().map(|r| r.1).sum::<u32>(), 512);
        let mut next = 0;
        for (first, count) in &runs {
            assert_eq!(*first, next, "runs are contiguous");
            next += count;
        }
        // Page 7: lost and stale; pages past 63: the lost list was cut there.
        assert!(html.contains(
            "region pages 7–7 (gpa 0x207000–0x207fff): device write lost, device read stale"
        ));
        assert!(html.contains("region pages 64–127"));
        assert!(html.contains("device write lost: not listed"));
        // Block 1 (the region's) ended not THP.
        assert!(html.contains("at end not THP (0/512)"));
    }

    #[test]
    fn the_ram_map_has_a_cell_per_block_and_names_the_region() {
        let v = view();
        let html = ram_map(&v, "m").unwrap().unwrap().into_string();
        assert_eq!(counts(&html).len(), 32);
        assert!(html.contains("block 1: gpa 0x200000–0x3fffff"));
        assert!(html.contains("holds the DMA region (pinned)"));
        assert!(html.contains("holds the decoy"));
    }

    /// A run that faulted in only its first 4 MiB: the blocks past it say why they were not
    /// measured, those inside it do not; and the page says it under the map.
    #[test]
    fn blocks_past_the_prefaulted_span_say_why_they_are_not_measured() {
        let mut v = view();
        v.prefaulted_bytes = Some(4 << 20);
        v.blocks.boot = Some(vec![512, 512]);
        v.blocks.end = Some(vec![512, 0]);
        let html = ram_map(&v, "m").unwrap().unwrap().into_string();
        let title = |b: usize| {
            let at = html.find(&format!("block {b}: gpa")).unwrap();
            html[at..at + html[at..].find("</title>").unwrap()].to_string()
        };
        assert!(!title(1).contains("not measured"), "{}", title(1));
        assert!(title(1).contains("at end: not THP (0/512)"), "{}", title(1));
        assert_eq!(
            title(2)
                .matches("not measured (past the prefaulted span)")
                .count(),
            2,
            "{}",
            title(2)
        );
        let note = super::super::run::unfaulted_note(&v).into_string();
        assert!(note.contains("Only the first 4MiB of guest RAM"), "{note}");
        v.prefaulted_bytes = Some(v.memory_bytes);
        assert!(super::super::run::unfaulted_note(&v)
            .into_string()
            .is_empty());
    }
}
