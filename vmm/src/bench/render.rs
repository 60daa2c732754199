//! The benchmark report for humans: medians first, then min/max, and the ratios against their
//! goals. The JSON form is the report structs themselves (`serde`).

use super::dma::DmaReport;
use super::launch::{LaunchReport, StartupSteps};
use super::map::MapReport;
use super::scale::ScaleReport;
use super::stat::{Stat, MIB};
use super::BenchReport;

fn stat_line(name: &str, st: Option<Stat>, unit: &str) -> String {
    match st {
        Some(s) => format!(
            "  {name:<34} {:>9.2} {unit}  (min {:.2}, max {:.2}, n {})\n",
            s.median, s.min, s.max, s.n
        ),
        None => format!("  {name:<34} {:>9} {unit}\n", "-"),
    }
}

fn ratio_line(name: &str, r: Option<f64>, goal: &str) -> String {
    match r {
        Some(r) => format!("  {name:<34} {r:>9.2}   {goal}\n"),
        None => format!("  {name:<34} {:>9}   {goal}\n", "-"),
    }
}

/// A THP coverage fraction as a percentage ("?" when not measured).
pub fn percent(c: Option<f64>) -> String {
    c.map_or("?".into(), |c| format!("{:.0}%", c * 100.0))
}

/// The DMA section's throughputs, GiB/s, by name (the raw sweep by depth last).
pub fn dma_stats(d: &DmaReport) -> Vec<(String, Option<Stat>)> {
    let mut v: Vec<(String, Option<Stat>)> = [
        ("engine to-guest (fill + READ)", d.engine_to_guest),
        ("engine from-guest (WRITE + sums)", d.engine_from_guest),
        ("pin to-guest (READ_FIXED)", d.pin_to_guest),
        ("pin from-guest (WRITE_FIXED)", d.pin_from_guest),
        ("raw READ_FIXED", d.raw_read_fixed),
        ("raw WRITE_FIXED", d.raw_write_fixed),
        ("raw READ_FIXED, ring full", d.raw_read_fixed_deep),
        ("raw WRITE_FIXED, ring full", d.raw_write_fixed_deep),
        ("memcpy", d.memcpy),
        ("pattern fill alone", d.fill_pattern),
        ("page checksums alone", d.checksum),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    for r in &d.raw_by_depth {
        v.push((format!("raw READ_FIXED, depth {}", r.depth), r.read_fixed));
        v.push((format!("raw WRITE_FIXED, depth {}", r.depth), r.write_fixed));
    }
    v
}

/// The DMA section's other ratios (not goals), with what each says.
pub fn dma_ratios(d: &DmaReport) -> [(&'static str, Option<f64>, &'static str); 6] {
    let x = &d.ratios;
    [
        (
            "engine/raw to-guest",
            x.engine_to_guest_vs_raw,
            "same depth",
        ),
        (
            "engine/raw from-guest",
            x.engine_from_guest_vs_raw,
            "same depth",
        ),
        ("pin/raw to-guest", x.pin_to_guest_vs_raw, "transfer alone"),
        (
            "pin/raw from-guest",
            x.pin_from_guest_vs_raw,
            "transfer alone",
        ),
        (
            "raw/raw-ring-full read",
            x.raw_vs_raw_deep_read,
            "depth cost",
        ),
        (
            "raw/raw-ring-full write",
            x.raw_vs_raw_deep_write,
            "depth cost",
        ),
    ]
}

/// One map size's timings, ms, by name.
pub fn map_stats(m: &MapReport) -> [(&'static str, Option<Stat>); 5] {
    [
        ("Iommu::map (pin + PFN evidence)", m.iommu_map),
        ("PFN evidence read alone", m.pagemap),
        ("raw ring + register_buffers", m.raw_register),
        ("the map's pin alone", m.pin_alone),
        ("unmap (unpin)", m.unmap),
    ]
}

/// The launch section's spawn timings, ms, by name.
pub fn launch_stats(l: &LaunchReport) -> [(&'static str, Option<Stat>); 8] {
    [
        ("run: spawn -> exit", l.run_spawn_to_exit),
        ("run: launch -> guest start", l.run_launch_to_guest_start),
        ("run: launch -> first DMA", l.run_launch_to_first_dma),
        ("run: launch -> guest done", l.run_launch_to_guest_done),
        ("boot: spawn -> exit", l.boot_spawn_to_exit),
        ("boot: launch -> guest start", l.boot_launch_to_guest_start),
        ("boot: launch -> guest done", l.boot_launch_to_guest_done),
        ("--version: spawn -> exit", l.bare_spawn_to_exit),
    ]
}

/// The in-process startup steps, ms, by name.
pub fn step_stats(st: &StartupSteps) -> [(&'static str, Option<Stat>); 6] {
    [
        ("GuestRam::new", st.guest_ram_new),
        ("populate (MADV_POPULATE_WRITE)", st.populate),
        ("Vm::create", st.vm_create),
        ("pfn::thp_coverage", st.thp_coverage),
        ("drop vCPU + VM", st.vm_drop),
        ("drop guest RAM (munmap)", st.ram_drop),
    ]
}

/// The whole report as text.
pub fn render(r: &BenchReport) -> String {
    let mut o = format!("machine: {}\n", r.machine.line());
    if let Some(d) = &r.dma {
        o += &format!(
            "DMA through io-uring pins: {} MiB region, {} MiB descriptors, {} MiB SQEs x {} \
             in flight (engine queue depth {}), {} MiB staging, THP {}\n  staging: {}, huge \
             folios {} (the raw loops' file {})\n",
            d.region / MIB,
            d.descriptor / MIB,
            d.chunk / MIB,
            d.queue_depth,
            d.engine_queue_depth,
            d.staging / MIB,
            percent(d.thp_coverage),
            d.staging_backing,
            percent(d.staging_thp_coverage),
            percent(d.raw_file_thp_coverage),
        );
        for (name, st) in dma_stats(d) {
            o += &stat_line(&name, st, "GiB/s");
        }
        for (dir, f) in [("to-guest", &d.to_guest), ("from-guest", &d.from_guest)] {
            o += &format!("  {dir}: best raw loop: {}\n", f.best_raw_loop);
            let best = format!("engine/best raw {dir}");
            o += &ratio_line(&best, f.engine_vs_best_raw, "goal >= 0.9");
            let mc = format!("engine/memcpy {dir}");
            o += &ratio_line(&mc, f.engine_vs_memcpy, "goal >= 0.7");
        }
        for (name, v, goal) in dma_ratios(d) {
            o += &ratio_line(name, v, goal);
        }
    }
    for m in &r.map {
        let pages = if m.thp { "THP" } else { "4 KiB-page" };
        o += &format!(
            "IOMMU map of {} MiB {pages} guest RAM (THP {})\n",
            m.size / MIB,
            percent(m.thp_coverage)
        );
        for (name, st) in map_stats(m) {
            o += &stat_line(name, st, "ms");
        }
        o += &ratio_line("map/raw", m.map_vs_raw, "goal <= 1.25");
        o += &ratio_line("PFN read/raw", m.pagemap_vs_raw, "");
        o += &ratio_line("map/its pin alone", m.map_vs_pin, "what the evidence adds");
        if m.recorded_pfns_moved > 0 {
            o += &format!(
                "  {} recorded PFNs moved before the check (the host moved the RAM)\n",
                m.recorded_pfns_moved
            );
        }
    }
    if let Some(l) = &r.launch {
        o += &format!(
            "Launch: {} x {} (first spawn, not counted: {})\n",
            l.launches,
            l.pinlab.display(),
            l.first_spawn_ms
                .map_or("-".into(), |t| format!("{t:.1} ms"))
        );
        for (name, st) in launch_stats(l) {
            o += &stat_line(name, st, "ms");
        }
        o += &format!(
            "  startup steps, in process ({} MiB):\n",
            l.steps.memory / MIB
        );
        for (name, st) in step_stats(&l.steps) {
            o += &stat_line(name, st, "ms");
        }
    }
    if let Some(t) = &r.trace {
        o += &trace_cost(t);
    }
    if let Some(sc) = &r.scale {
        o += &scale_tables(sc);
    }
    o
}

/// The tracing-cost section: the engine with and without tracing, and the ratio.
fn trace_cost(t: &super::trace::TraceCostReport) -> String {
    let mut o = format!(
        "Tracing cost: engine DMA, {} MiB region, {} MiB descriptors, THP {}, traced and \
         untraced trials interleaved\n",
        t.region / MIB,
        t.descriptor / MIB,
        percent(t.thp_coverage)
    );
    if let Some(why) = &t.skipped {
        o += &format!("  skipped: {why}\n");
        return o;
    }
    for (dir, c) in [("to-guest", &t.to_guest), ("from-guest", &t.from_guest)] {
        let Some(c) = c else { continue };
        o += &stat_line(&format!("engine {dir}, untraced"), c.untraced, "GiB/s");
        o += &stat_line(&format!("engine {dir}, traced"), c.traced, "GiB/s");
        o += &ratio_line(&format!("traced/untraced {dir}"), c.ratio, "goal >= 0.95");
    }
    let x = &t.totals;
    o += &format!(
        "  {} events enabled, {} records drained, {} lost\n",
        x.events_enabled, x.records, x.lost
    );
    o
}

fn md_stat(s: Option<Stat>) -> String {
    s.map_or("-".into(), |s| format!("{:.2}", s.median))
}

fn md_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

/// A size as "64 MiB" or, for whole GiB, "8 GiB".
pub fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// The scale curves as markdown tables (medians; the JSON has min, max and n).
pub fn scale_tables(sc: &ScaleReport) -> String {
    let mut o = String::from(
        "\n### IOMMU map (pin + PFN evidence) vs guest RAM, ms\n\n\
         | guest RAM | pages | Iommu::map | raw registration | map/raw | the map's pin alone | map/its pin | PFN read alone |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for m in &sc.map {
        o += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            size(m.size),
            if m.thp { "THP" } else { "4 KiB" },
            md_stat(m.iommu_map),
            md_stat(m.raw_register),
            md_ratio(m.map_vs_raw),
            md_stat(m.pin_alone),
            md_ratio(m.map_vs_pin),
            md_stat(m.pagemap)
        );
    }
    o += "\n### DMA throughput vs region and queue depth, GiB/s (8 MiB descriptors)\n\n\
          | region | depth | engine to-guest | raw READ_FIXED | engine from-guest | raw WRITE_FIXED |\n\
          |---|---|---|---|---|---|\n";
    for d in &sc.dma {
        o += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            size(d.region),
            d.queue_depth,
            md_stat(d.engine_to_guest),
            md_stat(d.raw_read_fixed),
            md_stat(d.engine_from_guest),
            md_stat(d.raw_write_fixed)
        );
    }
    o += "\n### Launch of the default scenario vs guest RAM, ms\n\n\
          | guest RAM | pages | launches | launch -> guest start | launch -> first DMA | spawn -> exit |\n\
          |---|---|---|---|---|---|\n";
    for l in &sc.launch {
        o += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            size(l.memory),
            if l.thp { "THP" } else { "4 KiB" },
            l.launches,
            md_stat(l.launch_to_guest_start),
            md_stat(l.launch_to_first_dma),
            md_stat(l.spawn_to_exit)
        );
    }
    o += "\n### Sweep wall time vs cells, s\n\n\
          | cells picked | run | not built | sweep wall | s / cell | spawn -> exit |\n\
          |---|---|---|---|---|---|\n";
    for p in &sc.sweep {
        o += &format!(
            "| {} | {} | {} | {:.2} | {} | {:.2} |\n",
            p.cells,
            p.run,
            p.not_built,
            p.seconds,
            p.seconds_per_cell.map_or("-".into(), |c| format!("{c:.3}")),
            p.spawn_to_exit_s
        );
    }
    o += "\n### Explorer vs program size (modern era)\n\n\
          | program | threads | ops | states | ms / exploration | states/s |\n\
          |---|---|---|---|---|---|\n";
    for e in &sc.explorer {
        o += &format!(
            "| {} | {} | {} | {} | {:.3} | {:.0} |\n",
            e.program, e.threads, e.ops, e.states, e.ms_per_exploration, e.states_per_s
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_without_sections_is_the_machine_line() {
        let r = super::super::goals::fixtures::empty_report();
        assert_eq!(render(&r).lines().count(), 1, "only the machine line");
    }

    /// A missing figure prints as "-", a present one with its spread. A bug: a `None` rendered
    /// as 0 (a figure nobody measured read as a measurement).
    #[test]
    fn stat_and_ratio_lines_show_absence() {
        assert!(stat_line("x", None, "ms").contains(" - ms"));
        let l = stat_line("x", Stat::of(&[1.0, 2.0, 4.0]), "ms");
        assert!(
            l.contains("2.00 ms") && l.contains("min 1.00, max 4.00, n 3"),
            "{l}"
        );
        assert!(ratio_line("r", None, "goal").contains(" -   goal"));
    }
}
