//! The `pinlab` command line: parses the arguments and hands them to `cli`.
//!
//! Exit status: 0 when every verdict meets its expectation (a skipped run says why and exits
//! 0), 1 when one does not, 2 for usage or config errors.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;
use pinlab::timeline::Mono;

fn main() -> ExitCode {
    let launch = Mono::now();
    // `pinlab replay | head` must end quietly, not panic on EPIPE. Every command prints its
    // results only after host state is restored and children are reaped, so dying on SIGPIPE
    // at that point leaves nothing behind.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PINLAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match cli::args::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    cli::dispatch(cli.command, launch)
}
