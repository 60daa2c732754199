//! `pinlab replay`: scenarios (files, embedded names, a directory, or the embedded set) under
//! each kernel era's rules, printed in the format CI reads. Exit 0 every stated expectation met,
//! 1 otherwise, 2 usage or config error. The model decides; this module only loads and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pinlab::model::report::{self, ReplaySet};
use pinlab::model::HEADER;
use pinlab::results::{junit, ktap, Case, Status};

use super::args::{Format, OutputArgs};
use super::usage_error;

/// One era's cell as a test case: fail when its stated expectation is not met, skip when the
/// era lacks what the scenario needs and nothing was expected of it.
fn era_case(r: &pinlab::model::Replay) -> Case {
    let status = match r.met {
        Some(false) => Status::Fail,
        None if r.lacks.is_some() => Status::Skip(r.detail.clone().unwrap_or_default()),
        _ => Status::Pass,
    };
    let mut c = Case::new(&r.era, status);
    let mut d = format!("{} @ {}: model says {}", r.scenario, r.era, r.verdict.key());
    match &r.expected {
        Some(e) => d.push_str(&format!(", expected {e}")),
        None => d.push_str(" (no stated expectation)"),
    }
    c.diagnostics.push(d);
    if let Some(detail) = &r.detail {
        if r.lacks.is_none() {
            c.diagnostics.push(detail.clone());
        }
    }
    c
}

/// One case per scenario, its eras nested under it.
pub fn cases(set: &ReplaySet) -> Vec<Case> {
    let mut out: Vec<(String, Vec<Case>)> = Vec::new();
    for r in &set.results {
        match out.last_mut() {
            Some((name, cells)) if *name == r.scenario => cells.push(era_case(r)),
            _ => out.push((r.scenario.clone(), vec![era_case(r)])),
        }
    }
    out.into_iter()
        .map(|(name, cells)| Case::parent(name, cells))
        .collect()
}

fn header() -> Vec<String> {
    vec![
        HEADER.to_string(),
        format!("pinlab_version: {}", env!("CARGO_PKG_VERSION")),
        format!("pinlab_commit: {}", pinlab::identity::GIT_COMMIT),
    ]
}

fn print(set: &ReplaySet, format: Format) -> Result<(), String> {
    match format {
        Format::Human => print!("{}", set.human()),
        Format::Json => println!(
            "{}",
            set.json()
                .map_err(|e| format!("serializing the replay: {e}"))?
        ),
        Format::Jsonl => {
            #[derive(serde::Serialize)]
            struct Line<'a> {
                model: bool,
                scenario: &'a str,
                results: Vec<&'a pinlab::model::Replay>,
            }
            let mut i = 0;
            while i < set.results.len() {
                let name = &set.results[i].scenario;
                let group: Vec<_> = set.results[i..]
                    .iter()
                    .take_while(|r| &r.scenario == name)
                    .collect();
                i += group.len();
                let line = Line {
                    model: true,
                    scenario: name,
                    results: group,
                };
                println!(
                    "{}",
                    serde_json::to_string(&line)
                        .map_err(|e| format!("serializing a replay row: {e}"))?
                );
            }
        }
        Format::Ktap => print!("{}", ktap::render(&cases(set), &header())),
        Format::Junit => {
            let props = vec![
                ("pinlab_version".into(), env!("CARGO_PKG_VERSION").into()),
                ("pinlab_commit".into(), pinlab::identity::GIT_COMMIT.into()),
                ("executor".into(), "model (simulated)".into()),
            ];
            println!(
                "{}",
                junit::render("pinlab-replay", &cases(set), &props)
                    .map_err(|e| format!("writing JUnit XML: {e}"))?
            )
        }
    }
    Ok(())
}

pub fn cmd_replay(
    scenarios: &[PathBuf],
    eras: &[String],
    dir: Option<&Path>,
    out: OutputArgs,
) -> ExitCode {
    let format = out.format();
    let era_list = match report::parse_eras(eras) {
        Ok(e) => e,
        Err(e) => return usage_error(format!("replay: --era: {e}")),
    };
    let loaded = if scenarios.is_empty() {
        match pinlab::config::load_set(dir) {
            Ok(set) => set,
            Err(e) => return usage_error(format!("replay: {e}")),
        }
    } else {
        let mut set = Vec::new();
        for arg in scenarios {
            match pinlab::config::load_arg(arg) {
                Ok(l) => set.push(l),
                Err(e) => return usage_error(format!("replay: {e}")),
            }
        }
        set
    };
    let mut list = Vec::new();
    for l in loaded {
        if let Err(e) = report::validate(&l.scenario) {
            return usage_error(format!("replay: {}: {e}", l.origin));
        }
        list.push(l.scenario);
    }
    let want_trace = list.len() == 1 || matches!(format, Format::Json | Format::Jsonl);
    let set = match report::replay_set(&list, &era_list, want_trace) {
        Ok(s) => s,
        Err(e) => return usage_error(format!("replay: {e}")),
    };
    if let Err(e) = print(&set, format) {
        return usage_error(e);
    }
    ExitCode::from(if set.ok() { 0 } else { 1 })
}
