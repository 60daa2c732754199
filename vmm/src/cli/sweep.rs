//! `pinlab sweep`: the generated cells (`pinlab::sweep`), each run live in its own VMM process
//! and compared with the model's prediction for the running kernel's era; printed as a table of
//! cells per verdict per memory kind, JSON, JSONL, KTAP (cells nested under their memory kind)
//! or JUnit; `--report FILE.html` also writes the HTML page (`pinlab::html::sweep`). Exit 1 on any disagreement or lab error; SIGINT/SIGTERM stop it as they stop
//! `pinlab matrix`.

use std::process::ExitCode;
use std::sync::Arc;

use pinlab::matrix::Stop;
use pinlab::model::Era;
use pinlab::results::{exit_code, junit, ktap};
use pinlab::sweep::{self, Sweep};

use super::args::{Format, SweepArgs};
use super::matrix::forward_signals;
use super::usage_error;

fn era(requested: Option<&str>) -> Result<Era, String> {
    if let Some(name) = requested {
        return name.parse::<Era>().map_err(|e| format!("--era: {e}"));
    }
    let release = pinlab::identity::Identity::of_this_host().kernel_release;
    release
        .as_deref()
        .and_then(Era::for_kernel_release)
        .ok_or_else(|| {
            format!(
                "no model era covers the running kernel {}: pass --era",
                release.as_deref().unwrap_or("(uname failed)")
            )
        })
}

fn props(s: &Sweep) -> Vec<(String, String)> {
    let id = &s.identity;
    vec![
        (
            "kernel_release".into(),
            id.kernel_release.clone().unwrap_or_default(),
        ),
        ("model_era".into(), s.era.clone()),
        ("pinlab_version".into(), id.pinlab_version.clone()),
        ("pinlab_commit".into(), id.pinlab_commit.clone()),
    ]
}

fn print(s: &Sweep, format: Format) -> Result<(), String> {
    match format {
        Format::Human => print!("{}", sweep::table(s)),
        Format::Json => println!(
            "{}",
            serde_json::to_string(s).map_err(|e| format!("serializing the sweep: {e}"))?
        ),
        Format::Jsonl => {}
        Format::Ktap => {
            let lines: Vec<String> = props(s)
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            print!("{}", ktap::render(&s.cases(), &lines));
        }
        Format::Junit => println!(
            "{}",
            junit::render("pinlab-sweep", &s.cases(), &props(s))
                .map_err(|e| format!("writing JUnit XML: {e}"))?
        ),
    }
    Ok(())
}

pub fn cmd_sweep(args: SweepArgs) -> ExitCode {
    let format = args.out.format();
    if let Some(Err(e)) = args.trace.as_deref().map(pinlab::trace::check_dir) {
        return usage_error(e);
    }
    let era = match era(args.era.as_deref()) {
        Ok(e) => e,
        Err(e) => return usage_error(e),
    };
    let cells = sweep::subset(sweep::cells(), args.cells.unwrap_or(0));
    if args.list {
        let (run, not_built) = sweep::plan(&cells, era);
        for (c, l) in &run {
            println!("{:<64} expects {}", c.name(), l.scenario.expected_live());
        }
        for s in &not_built {
            println!("{:<64} not built: {}", s.cell, s.why);
        }
        println!(
            "{} cells ({} to run, {} not built) against model {era}",
            run.len() + not_built.len(),
            run.len(),
            not_built.len()
        );
        return ExitCode::SUCCESS;
    }
    // An unwritable report path is a usage error before any cell runs.
    let report = match args.report.as_deref().map(pinlab::html::ReportFile::create) {
        Some(Err(e)) => return usage_error(e),
        file => file.and_then(Result::ok),
    };
    let stop = Arc::new(Stop::new());
    if let Err(e) = forward_signals(stop.clone()) {
        return usage_error(format!("blocking SIGINT/SIGTERM for forwarding: {e}"));
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "pinlab".into());
    let bar = if format == Format::Human {
        let bar = indicatif::ProgressBar::new(cells.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let result = sweep::run(
        &cells,
        era,
        &exe,
        args.trace.as_deref(),
        &stop,
        args.jobs
            .map_or_else(pinlab::matrix::default_jobs, usize::from),
        |done, total, row| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!(
                "{} {}",
                row.scenario,
                row.verdict.map_or("-".into(), |v| v.to_string())
            ));
            if format == Format::Jsonl {
                if let Ok(j) = serde_json::to_string(row) {
                    println!("{j}");
                }
            }
        },
    );
    bar.finish_and_clear();
    let s = match result {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = print(&s, format) {
        return usage_error(e);
    }
    if let Some(f) = report {
        let path = f.path().display().to_string();
        match pinlab::html::sweep::write(f, &s) {
            Ok(n) => eprintln!("pinlab: report {path} ({n} bytes)"),
            Err(e) => eprintln!("pinlab: {e}"),
        }
    }
    if let Some(sig) = s.interrupted {
        return ExitCode::from((128 + sig).clamp(0, 255) as u8);
    }
    if s.failures().next().is_some() {
        return ExitCode::from(1);
    }
    ExitCode::from(exit_code(&s.cases()))
}
