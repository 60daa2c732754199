//! `pinlab bench`: benchmarks as ratios to raw baselines measured in the same run.

use std::process::ExitCode;

use super::args::BenchArgs;
use super::usage_error;

pub fn cmd_bench(args: BenchArgs) -> ExitCode {
    let mut o = pinlab::bench::BenchOptions {
        pinlab: std::env::current_exe().unwrap_or_else(|_| "pinlab".into()),
        json: args.json,
        ..Default::default()
    };
    o.region = args.region.map_or(o.region, |b| b.0);
    o.descriptor = args.descriptor.map_or(o.descriptor, |b| b.0);
    o.map_size = args.map_size.map_or(o.map_size, |b| b.0);
    o.trials = args.trials.unwrap_or(o.trials);
    o.launches = args.launches.unwrap_or(o.launches);
    if !args.only.is_empty() {
        let on = |s: &str| args.only.iter().any(|x| x == s);
        (o.dma, o.map, o.launch) = (on("dma"), on("map"), on("launch"));
    }
    let report = match pinlab::bench::run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinlab bench: {e:#}");
            return ExitCode::from(1);
        }
    };
    if o.json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing the report: {e}")),
        }
    } else {
        print!("{}", report.render());
    }
    ExitCode::SUCCESS
}
