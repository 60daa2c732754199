//! `pinlab matrix`: every live scenario of a directory (default: the embedded set), each in a
//! fresh VMM process, up to `--jobs` at once, printed in the format CI reads. SIGINT/SIGTERM
//! are forwarded to every running child, which restores what it changed; the matrix then
//! prints what ran and exits 128 + the signal.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use pinlab::matrix::{Matrix, Stop};
use pinlab::results::{exit_code, junit, ktap};

use super::args::{Format, OutputArgs};
use super::usage_error;

/// Blocks SIGINT and SIGTERM in this thread (and every thread it starts later) and starts a
/// thread that receives them and stops the matrix. Must run before any other thread exists.
pub(super) fn forward_signals(stop: Arc<Stop>) -> std::io::Result<()> {
    // SAFETY: an empty sigset is valid storage for sigemptyset/sigaddset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; the calls only write it, and pthread_sigmask changes this
    // thread's mask. The mask survives exec: `pinlab run` unblocks both when it installs its
    // restore handlers.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    std::thread::Builder::new()
        .name("pinlab-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait on a valid set with a valid out-pointer to a local.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                stop.signal(sig);
            }
        })?;
    Ok(())
}

/// Prints `m` in `format` (jsonl rows were already printed as they finished).
pub fn print(m: &Matrix, format: Format) -> Result<(), String> {
    match format {
        Format::Human => print!("{}", pinlab::matrix::table(m)),
        Format::Json => println!(
            "{}",
            serde_json::to_string(m).map_err(|e| format!("serializing the matrix: {e}"))?
        ),
        Format::Jsonl => {}
        Format::Ktap => print!("{}", ktap::render(&m.cases(), &identity_lines(m))),
        Format::Junit => println!(
            "{}",
            junit::render("pinlab-matrix", &m.cases(), &identity_props(m))
                .map_err(|e| format!("writing JUnit XML: {e}"))?
        ),
    }
    Ok(())
}

fn identity_props(m: &Matrix) -> Vec<(String, String)> {
    let id = &m.identity;
    vec![
        (
            "kernel_release".into(),
            id.kernel_release.clone().unwrap_or_default(),
        ),
        ("pinlab_version".into(), id.pinlab_version.clone()),
        ("pinlab_commit".into(), id.pinlab_commit.clone()),
    ]
}

fn identity_lines(m: &Matrix) -> Vec<String> {
    identity_props(m)
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

pub fn cmd_matrix(
    dir: Option<&Path>,
    out: OutputArgs,
    report: Option<pinlab::html::ReportFile>,
    trace: Option<&Path>,
    jobs: usize,
) -> ExitCode {
    let format = out.format();
    let set = match pinlab::config::load_set(dir) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    // The report draws each row with its scenario's layout.
    let scenarios: Vec<pinlab::scenario::Scenario> = match report {
        Some(_) => set.iter().map(|l| l.scenario.clone()).collect(),
        None => Vec::new(),
    };
    let stop = Arc::new(Stop::new());
    if let Err(e) = forward_signals(stop.clone()) {
        return usage_error(format!("blocking SIGINT/SIGTERM for forwarding: {e}"));
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "pinlab".into());
    let bar = if format == Format::Human {
        let bar = indicatif::ProgressBar::new(set.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let m = pinlab::matrix::run(set, &exe, trace, &stop, jobs, |done, _total, row| {
        bar.set_position(done as u64);
        bar.set_message(format!(
            "{} {}",
            row.scenario,
            row.verdict.map_or("model".into(), |v| v.to_string())
        ));
        if format == Format::Jsonl && row.live {
            if let Ok(j) = serde_json::to_string(row) {
                println!("{j}");
            }
        }
    });
    bar.finish_and_clear();
    let m = match m {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = print(&m, format) {
        return usage_error(e);
    }
    if let Some(f) = report {
        let path = f.path().display().to_string();
        match pinlab::html::matrix::write(f, &m.rows, &scenarios) {
            Ok(n) => eprintln!("pinlab: report {path} ({n} bytes)"),
            Err(e) => eprintln!("pinlab: {e}"),
        }
    }
    if let Some(sig) = m.interrupted {
        return ExitCode::from((128 + sig).clamp(0, 255) as u8);
    }
    ExitCode::from(exit_code(&m.cases()))
}
