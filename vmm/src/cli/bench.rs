//! `pinlab bench`: benchmarks as ratios to raw baselines measured in the same run; the table,
//! or `--json`, on stdout, and with `--report FILE.html` also the HTML page (`bench::html`).

use std::process::ExitCode;

use super::args::BenchArgs;
use super::usage_error;
use crate::bench;

/// Every error, a refused option or a failed measurement, is one line and exit 2 (there is
/// no verdict to meet or miss).
pub fn cmd_bench(args: BenchArgs) -> ExitCode {
    let mut o = bench::Options::default();
    o.region = args.region.map_or(o.region, |b| b.0);
    o.descriptor = args.descriptor.map_or(o.descriptor, |b| b.0);
    if !args.map_sizes.is_empty() {
        o.map_sizes = args.map_sizes.iter().map(|b| b.0).collect();
    }
    if !args.map_sizes_4k.is_empty() {
        o.map_sizes_4k = args.map_sizes_4k.iter().map(|b| b.0).collect();
    }
    o.queue_depth = args.queue_depth.unwrap_or(o.queue_depth);
    o.trials = args.trials.unwrap_or(o.trials);
    o.launches = args.launches.unwrap_or(o.launches);
    if !args.only.is_empty() || args.scale {
        let on = |s: &str| args.only.iter().any(|x| x == s);
        (o.dma, o.map, o.launch, o.trace) = (on("dma"), on("map"), on("launch"), on("trace"));
    }
    o.scale = args.scale;
    if let Err(e) = o.validate() {
        eprintln!("pinlab bench: {e}");
        return ExitCode::from(2);
    }
    // An unwritable report path is a usage error before anything is measured.
    let page = match args.report.as_deref().map(pinlab::html::ReportFile::create) {
        Some(Err(e)) => return usage_error(e),
        file => file.and_then(Result::ok),
    };
    let report = match bench::run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinlab bench: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing the report: {e}")),
        }
    } else {
        print!("{}", bench::render::render(&report));
    }
    if let Some(f) = page {
        let path = f.path().display().to_string();
        match bench::html::write(f, &report) {
            Ok(n) => eprintln!("pinlab: report {path} ({n} bytes)"),
            Err(e) => {
                eprintln!("pinlab: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
