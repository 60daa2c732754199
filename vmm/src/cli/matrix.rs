//! `pinlab matrix`: every live scenario of a directory, each in a fresh VMM process.

use std::process::ExitCode;

use super::usage_error;

pub fn cmd_matrix(
    dir: &std::path::Path,
    json: bool,
    report: Option<pinlab::html::ReportFile>,
) -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_else(|_| "pinlab".into());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let rows = pinlab::matrix::run(dir, &exe, |done, total, row| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!(
            "{} {}",
            row.scenario,
            row.verdict.map_or("model".into(), |v| v.to_string())
        ));
    });
    bar.finish_and_clear();
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return usage_error(e),
    };
    if json {
        match serde_json::to_string(&rows) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing the matrix: {e}")),
        }
    } else {
        print!("{}", pinlab::matrix::table(&rows));
    }
    if let Some(f) = report {
        let path = f.path().display().to_string();
        match pinlab::html::matrix::write(f, &rows) {
            Ok(n) => eprintln!("pinlab: report {path} ({n} bytes)"),
            Err(e) => eprintln!("pinlab: {e}"),
        }
    }
    if rows.iter().all(|r| r.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
