//! The command line's composition layer: what each subcommand does with its parsed arguments.
//!
//! `main.rs` only parses (`args`); this module composes scenarios from files and overrides,
//! picks expectations, calls the library, prints, and maps results to exit codes: 0 met, 1 not
//! met, 2 usage or config error. It is the one place where errors become text.

pub mod args;
mod bench;
mod matrix;
mod run;

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
        Command::Matrix { dir, json, report } => {
            match report.as_deref().map(pinlab::html::ReportFile::create) {
                Some(Err(e)) => usage_error(e),
                file => matrix::cmd_matrix(&dir, json, file.and_then(Result::ok)),
            }
        }
        Command::Replay {
            scenarios,
            eras,
            dir,
            json,
            report,
        } => {
            let file = match report.as_deref().map(pinlab::html::ReportFile::create) {
                Some(Err(e)) => return usage_error(e),
                file => file.and_then(Result::ok),
            };
            let code = match pinlab::model::replay_command(&scenarios, &eras, json, &dir) {
                Ok(code) => code.clamp(0, 255) as u8,
                Err(e) => return usage_error(format!("{e:#}")),
            };
            // A usage error was already reported; the page repeats nothing of it.
            if let (Some(f), true) = (file, code != 2) {
                let path = f.path().display().to_string();
                match pinlab::html::replay::write(f, &scenarios, &eras, &dir) {
                    Ok(n) => eprintln!("pinlab: report {path} ({n} bytes)"),
                    Err(e) => return usage_error(e),
                }
            }
            ExitCode::from(code)
        }
        Command::Host { json } => cmd_host(json),
    }
}
