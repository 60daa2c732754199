//! The command line's composition layer: what each subcommand does with its parsed arguments.
//!
//! `main.rs` only parses (`args`); this module composes scenarios from files and overrides,
//! picks expectations, calls the library, prints, and maps results to exit codes: 0 met, 1 not
//! met, 2 usage or config error, 4 nothing could run (kselftest's KSFT_SKIP). It is the one place where errors become text.

pub mod args;
mod bench;
mod diff;
mod kselftest;
mod matrix;
mod replay;
mod run;
mod sweep;

use std::process::ExitCode;

use pinlab::timeline::Mono;

use args::Command;

/// Why a command could not start.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] pinlab::config::Error),
    #[error("{0}")]
    Usage(String),
}

/// Prints `msg` as a usage or config error and returns exit status 2.
pub fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pinlab: {msg}");
    ExitCode::from(2)
}

fn cmd_host(json: bool) -> ExitCode {
    let caps = pinlab::host::Caps::probe();
    if json {
        match caps.to_json() {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing capabilities: {e}")),
        }
    } else {
        print!("{}", caps.render_text());
    }
    ExitCode::SUCCESS
}

/// Runs one parsed command.
pub fn dispatch(command: Command, launch: Mono) -> ExitCode {
    match command {
        Command::Run(args) => run::cmd_run(args, launch),
        Command::Bench(args) => bench::cmd_bench(args),
        Command::Matrix {
            dir,
            out,
            report,
            trace,
            jobs,
        } => {
            if let Some(Err(e)) = trace.as_deref().map(pinlab::trace::check_dir) {
                return usage_error(e);
            }
            match report.as_deref().map(pinlab::html::ReportFile::create) {
                Some(Err(e)) => usage_error(e),
                file => matrix::cmd_matrix(
                    dir.as_deref(),
                    out,
                    file.and_then(Result::ok),
                    trace.as_deref(),
                    jobs.map_or_else(pinlab::matrix::default_jobs, usize::from),
                ),
            }
        }
        Command::Replay {
            scenarios,
            eras,
            dir,
            out,
            report,
        } => match report.as_deref().map(pinlab::html::ReportFile::create) {
            Some(Err(e)) => usage_error(e),
            file => replay::cmd_replay(
                &scenarios,
                &eras,
                dir.as_deref(),
                out,
                file.and_then(Result::ok),
            ),
        },
        Command::Kselftest { dir } => kselftest::cmd_kselftest(&dir),
        Command::Diff { a, b, out } => diff::cmd_diff(&a, &b, out),
        Command::Host { json } => cmd_host(json),
        Command::Sweep(args) => sweep::cmd_sweep(args),
        Command::KsmShadowHelper { pages, copies } => {
            match pinlab::shadow::helper_main(pages, copies) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pinlab {}: {e}", pinlab::shadow::SUBCOMMAND);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
