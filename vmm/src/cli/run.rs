//! `pinlab run`: one scenario, composed from a file (or the embedded default) and the command
//! line's overrides, with the expectation that fits what was composed.
//!
//! An ad-hoc composition (another pin, added actions, dontfork, another layout) is not covered by
//! the scenario author's `expect.live`: its expectation is the model's prediction for the era of
//! the running kernel (or `--era`), and the output says which. `--expect` overrides both.

use std::process::ExitCode;

use pinlab::model::{model_verdict_for_live, Era, ModelVerdict};
use pinlab::scenario::{Action, Scenario, Verdict};
use pinlab::timeline::Mono;

use super::args::{OnOff, RunArgs};
use super::{usage_error, CliError};

/// Applies the command line's overrides to `s`.
fn apply(args: &RunArgs, s: &mut Scenario) {
    if let Some(m) = args.memory {
        s.vm.memory = m;
    }
    if let Some(t) = args.thp {
        s.vm.thp = matches!(t, OnOff::On);
    }
    if let Some(p) = args.pin {
        s.device.pin = p;
    }
    if let Some(d) = &args.vfio_device {
        s.device.vfio = Some(d.clone());
    }
    s.perturb.actions.extend(args.perturb.iter().copied());
    if let Some(n) = args.storm {
        s.perturb.storm = n;
    }
    if let Some(i) = args.interval {
        s.perturb.interval = i;
    }
    if let Some(r) = args.rounds {
        s.workload.rounds = r;
    }
    if let Some(a) = args.after_round {
        s.perturb.after_round = a;
    }
    if let Some(r) = args.region {
        s.workload.region = r;
    }
    if let Some(o) = args.region_offset {
        s.workload.region_offset = o;
    }
    if let Some(size) = args.swap {
        s.host.swap = Some(size);
    }
    if let Some(m) = args.mode {
        s.workload.mode = m;
    }
    if let Some(n) = args.ops {
        s.workload.ops = Some(n);
    }
    if let Some(seed) = args.seed {
        s.workload.seed = Some(seed);
    }
    if let Some(w) = args.watchdog {
        s.vm.watchdog = w;
    }
    if args.dontfork {
        s.vm.dontfork = true;
    }
    if let Some(f) = &args.trace {
        s.trace.file = Some(f.clone());
    }
}

/// The era whose rules the running kernel follows, and how that was decided.
fn era_of_this_kernel(requested: Option<&str>) -> Result<(Era, String), CliError> {
    if let Some(name) = requested {
        let era = name
            .parse::<Era>()
            .map_err(|why| CliError::Usage(format!("--era: {why}")))?;
        return Ok((era, format!("model {era} (--era)")));
    }
    let release = pinlab::identity::Identity::of_this_host().kernel_release;
    match release.as_deref().and_then(Era::for_kernel_release) {
        Some(era) => Ok((
            era,
            format!(
                "model {era} (the era of the running kernel {})",
                release.as_deref().unwrap_or("?")
            ),
        )),
        None => Err(CliError::Usage(format!(
            "no model era covers the running kernel {}: pass --era or --expect",
            release.as_deref().unwrap_or("(uname failed)")
        ))),
    }
}

/// Whether `composed` differs from `written` in a way the author's expectation does not cover.
fn is_composition(written: &Scenario, composed: &Scenario) -> bool {
    written.device != composed.device
        || written.perturb != composed.perturb
        || written.vm.dontfork != composed.vm.dontfork
        || written.vm.thp != composed.vm.thp
        || written.workload.region != composed.workload.region
        || written.workload.region_offset != composed.workload.region_offset
}

/// The scenario to run and where its expectation came from.
pub struct Composed {
    pub scenario: Scenario,
    pub expected_from: String,
}

/// Loads, overrides, sets the expectation, validates.
pub fn compose(args: &RunArgs) -> Result<Composed, CliError> {
    let written = match &args.config {
        None => pinlab::config::load(None)?,
        Some(p) => pinlab::config::load_arg(p)?.scenario,
    };
    let mut scenario = written.clone();
    apply(args, &mut scenario);
    let mut expected_from = "scenario".to_string();
    if let Some(v) = args.expect {
        scenario.expect.live = Some(v);
        expected_from = "command line".into();
    } else if is_composition(&written, &scenario) || args.era.is_some() {
        let (era, from) = era_of_this_kernel(args.era.as_deref())?;
        // The model's verdict for a well-formed scenario; layout errors are reported by
        // validation below, with the key that is at fault.
        if scenario.validate().is_ok() {
            let predicted = model_verdict_for_live(&scenario, era)
                .map(|r| r.verdict)
                .map_err(|e| CliError::Usage(format!("the model cannot predict this run: {e}")))?;
            match predicted {
                ModelVerdict::Coherent => scenario.expect.live = Some(Verdict::Coherent),
                ModelVerdict::Diverged => scenario.expect.live = Some(Verdict::Diverged),
                other => {
                    return Err(CliError::Usage(format!(
                        "the model predicts {other:?} for this composition on {era}: it says nothing about the data; pass --expect"
                    )))
                }
            }
            expected_from = from;
        }
    }
    scenario
        .validate()
        .map_err(|e| CliError::Usage(format!("after command-line options: {e}")))?;
    if !scenario.live {
        return Err(CliError::Usage(format!(
            "scenario {} is model-only (live = false): use `pinlab replay`",
            scenario.name
        )));
    }
    if let Some(f) = &scenario.trace.file {
        pinlab::trace::check_output(f).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    Ok(Composed {
        scenario,
        expected_from,
    })
}

/// The `--list-actions` table.
pub fn list_actions() -> String {
    let mut out = String::new();
    for a in Action::ALL {
        out.push_str(&format!(
            "{:<20} needs: {}\n{:<20} leaves: {}\n",
            a.name(),
            a.needs(),
            "",
            a.leaves()
        ));
    }
    out
}

pub fn cmd_run(args: RunArgs, launch: Mono) -> ExitCode {
    if args.list_actions {
        print!("{}", list_actions());
        return ExitCode::SUCCESS;
    }
    let Composed {
        scenario,
        expected_from,
    } = match compose(&args) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    // Opened now: an unwritable report path is a usage error before the VM starts.
    let report = match args.report.as_deref().map(pinlab::html::ReportFile::create) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return usage_error(e),
    };
    if let Err(e) = pinlab::host::install_restore_handlers() {
        return usage_error(format!(
            "installing the signal handlers that restore host knobs: {e}"
        ));
    }
    let mut hook = pinlab::perturb::Schedule::new(&scenario);
    let mut outcome = pinlab::runner::run(&scenario, launch, &mut hook);
    outcome.expected_from = expected_from;
    if args.json {
        match serde_json::to_string(&outcome) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("serializing the report: {e}")),
        }
    } else {
        print!("{}", outcome.human());
    }
    if let Some(f) = report {
        let path = f.path().display().to_string();
        match pinlab::html::run::write(f, &outcome, &scenario) {
            Ok(n) => eprintln!("pinlab: report {path} ({n} bytes)"),
            Err(e) => eprintln!("pinlab: {e}"),
        }
    }
    pinlab::host::defer_to_pending_signal();
    if outcome.as_expected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(line: &[&str]) -> RunArgs {
        let mut v = vec!["pinlab", "run"];
        v.extend_from_slice(line);
        match super::super::args::Cli::parse_from(v).command {
            super::super::args::Command::Run(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn an_unchanged_default_keeps_the_scenarios_expectation() {
        let c = compose(&args(&[])).unwrap();
        assert_eq!(c.expected_from, "scenario");
        assert_eq!(c.scenario.expected_live(), Verdict::Coherent);
    }

    #[test]
    fn a_composition_takes_the_models_prediction_and_says_so() {
        let c = compose(&args(&["--perturb", "dontneed"])).unwrap();
        assert_eq!(c.scenario.expect.live, Some(Verdict::Diverged));
        assert!(c.expected_from.starts_with("model "), "{}", c.expected_from);
        let c = compose(&args(&["--perturb", "dontneed", "--pin", "mapping"])).unwrap();
        assert_eq!(c.scenario.expect.live, Some(Verdict::Coherent));
    }

    #[test]
    fn expect_on_the_command_line_wins() {
        let c = compose(&args(&["--perturb", "dontneed", "--expect", "coherent"])).unwrap();
        assert_eq!(c.scenario.expect.live, Some(Verdict::Coherent));
        assert_eq!(c.expected_from, "command line");
    }

    #[test]
    fn layout_flags_reach_the_scenario() {
        let c = compose(&args(&[
            "--region",
            "1MiB",
            "--region-offset",
            "512KiB",
            "--after-round",
            "3",
            "--interval",
            "2ms",
        ]))
        .unwrap();
        let s = c.scenario;
        assert_eq!(s.workload.region.0, 1 << 20);
        assert_eq!(s.workload.region_offset.0, 512 << 10);
        assert_eq!(s.perturb.after_round, 3);
        assert_eq!(s.perturb.interval.0, std::time::Duration::from_millis(2));
    }

    #[test]
    fn bad_compositions_are_usage_errors_that_name_the_key() {
        for (line, key) in [
            (&["--region", "66MiB"][..], "workload.region"),
            (
                &["--perturb", "dontneed", "--rounds", "1"][..],
                "perturb.after_round",
            ),
            (&["--era", "1.0"][..], "--era"),
        ] {
            match compose(&args(line)) {
                Err(CliError::Usage(m)) => assert!(m.contains(key), "{line:?}: {m}"),
                Err(e) => panic!("{line:?}: {e}"),
                Ok(_) => panic!("{line:?} accepted"),
            }
        }
    }

    #[test]
    fn every_action_is_listed_with_needs_and_evidence() {
        let l = list_actions();
        for a in Action::ALL {
            assert!(l.contains(a.name()), "{a}");
        }
        assert_eq!(l.matches("needs: ").count(), Action::ALL.len());
        assert_eq!(l.matches("leaves: ").count(), Action::ALL.len());
    }
}
