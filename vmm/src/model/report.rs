//! Replaying scenarios under the eras, and the `replay` command: an era x scenario table (or
//! JSON), traces, and an exit code. Every output says it is a SIMULATION ("model executor:
//! replaying kernel-era rules (simulated)", `"model": true`). The expectation grammar is
//! `expect`'s.
//!
//! A live scenario (`live = true`) whose `expect.model` does not name the modern era is checked
//! against `expect.live` for it: the model's modern era must agree with the live kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::era::Era;
use super::expect::{self, finding_names, Expectation, ModelVerdict};
use super::explore::{explore, Conclusion, Outcome};
use super::rules::Feature;
use super::spec;
use crate::scenario::{Scenario, Verdict};

/// The header every human-readable output starts with.
pub const HEADER: &str = "model executor: replaying kernel-era rules (simulated)";

impl ModelVerdict {
    /// The live verdict this stands for, if any.
    pub fn live(&self) -> Option<Verdict> {
        match self {
            ModelVerdict::Coherent => Some(Verdict::Coherent),
            ModelVerdict::Diverged => Some(Verdict::Diverged),
            _ => None,
        }
    }
}

/// One scenario under one era.
#[derive(Clone, Debug, Serialize)]
pub struct Replay {
    /// Always true: this is the model, not the live kernel.
    pub model: bool,
    pub scenario: String,
    pub era: String,
    #[serde(serialize_with = "ser_verdict")]
    pub verdict: ModelVerdict,
    /// Why `n/a`, or which data invariant broke for `diverged`.
    pub detail: Option<String>,
    /// For `n/a`: the feature the era lacks (the detail says it in words).
    #[serde(skip)]
    pub lacks: Option<Feature>,
    pub findings: Vec<String>,
    pub trace: Option<Vec<String>>,
    pub states: usize,
    /// The stated expectation (or the live one for the modern era), if any.
    pub expected: Option<String>,
    pub met: Option<bool>,
}

fn ser_verdict<S: serde::Serializer>(v: &ModelVerdict, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.key())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("replay {scenario}: {source}")]
    Spec {
        scenario: String,
        source: spec::Error,
    },
    #[error("replay {scenario} @ {era}: {source}")]
    Explore {
        scenario: String,
        era: String,
        source: super::explore::Error,
    },
    #[error("replay {scenario}: {source}")]
    Expect {
        scenario: String,
        source: expect::KeyError,
    },
}

fn outcome_to_replay(s: &Scenario, era: Era, o: Outcome) -> Replay {
    let lacks = match o.conclusion {
        Conclusion::NotApplicable(f) => Some(f),
        _ => None,
    };
    let (verdict, detail) = match o.conclusion {
        Conclusion::Coherent => (ModelVerdict::Coherent, None),
        Conclusion::Diverged(i) => (ModelVerdict::Diverged, Some(format!("{i} broken"))),
        Conclusion::Broken(i) => (ModelVerdict::InvariantBroken(i), None),
        Conclusion::NotApplicable(f) => (
            ModelVerdict::NotApplicable,
            Some(format!("{} has no {f}", era.name())),
        ),
    };
    Replay {
        model: true,
        scenario: s.name.clone(),
        era: era.name().to_string(),
        verdict,
        detail,
        lacks,
        findings: finding_names(o.findings),
        trace: o.trace,
        states: o.states,
        expected: None,
        met: None,
    }
}

/// Replays one scenario under one era and checks its expectation.
pub fn replay(s: &Scenario, era: Era, want_trace: bool) -> Result<Replay, Error> {
    let prog = spec::program(s).map_err(|source| Error::Spec {
        scenario: s.name.clone(),
        source,
    })?;
    let o = explore(&prog, era, want_trace).map_err(|source| Error::Explore {
        scenario: s.name.clone(),
        era: era.name().to_string(),
        source,
    })?;
    let mut r = outcome_to_replay(s, era, o);
    let table = check_expectations(s)?;
    if let Some(stated) = table.get(era) {
        r.met = Some(stated.expectation.met(&r.verdict, &r.findings));
        r.expected = Some(stated.text.clone());
    } else if s.live && era == Era::MODERN {
        // The live side has no findings: compare the verdict only for an implied expectation.
        let text = s.expected_live().to_string();
        let exp = Expectation::parse(&text).map_err(|source| Error::Expect {
            scenario: s.name.clone(),
            source: expect::KeyError {
                key: era.name().to_string(),
                source,
            },
        })?;
        r.met = Some(exp.verdict == r.verdict);
        r.expected = Some(text);
    }
    Ok(r)
}

/// The model's verdict for a live scenario under `era`: derived from pin kind, directions,
/// actions and dontfork (a `[model]` section, if any, is ignored here). `NotApplicable` when the
/// era lacks what an action needs.
pub fn model_verdict_for_live(s: &Scenario, era: Era) -> Result<Replay, Error> {
    let mut s = s.clone();
    s.model = None;
    let prog = spec::live_program(&s);
    let o = explore(&prog, era, false).map_err(|source| Error::Explore {
        scenario: s.name.clone(),
        era: era.name().to_string(),
        source,
    })?;
    Ok(outcome_to_replay(&s, era, o))
}

/// `expect.model`, checked by the same [`expect::check`] that `Scenario::validate` runs.
pub fn check_expectations(s: &Scenario) -> Result<expect::ModelExpectations, Error> {
    expect::check(&s.expect.model).map_err(|source| Error::Expect {
        scenario: s.name.clone(),
        source,
    })
}

/// The eras `--era` names (each once, in order), or every era when none is named.
pub fn parse_eras(eras: &[String]) -> Result<Vec<Era>, super::era::UnknownEra> {
    let mut era_list = Vec::new();
    for e in eras {
        let era = e.parse::<Era>()?;
        if !era_list.contains(&era) {
            era_list.push(era);
        }
    }
    if era_list.is_empty() {
        era_list = Era::ALL.to_vec();
    }
    Ok(era_list)
}

/// Checks what `replay` would refuse, before anything runs: the `expect.model` keys and the
/// scenario's model program.
pub fn validate(s: &Scenario) -> Result<(), Error> {
    check_expectations(s)?;
    spec::program(s).map(|_| ()).map_err(|source| Error::Spec {
        scenario: s.name.clone(),
        source,
    })
}

/// A whole replay: every scenario under every era, scenario-major, as `replay` computes it.
#[derive(Clone, Debug)]
pub struct ReplaySet {
    pub eras: Vec<Era>,
    /// One per scenario x era, grouped by scenario in the order given.
    pub results: Vec<Replay>,
    /// One scenario only: the human output prints its traces.
    pub single: bool,
}

impl ReplaySet {
    /// True when every stated expectation is met.
    pub fn ok(&self) -> bool {
        self.results.iter().all(|r| r.met != Some(false))
    }

    /// The human output: the era x scenario table, then (one scenario only) its traces.
    pub fn human(&self) -> String {
        let mut out = table(&self.results, &self.eras);
        if self.single {
            for r in &self.results {
                out.push_str(&trace_text(r));
            }
        }
        out
    }

    /// The JSON document `--json` prints.
    pub fn json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Out<'a> {
            model: bool,
            header: &'a str,
            results: &'a [Replay],
        }
        serde_json::to_string_pretty(&Out {
            model: true,
            header: HEADER,
            results: &self.results,
        })
    }
}

/// Replays `scenarios` (already validated) under `eras`; traces are kept when `want_trace`.
pub fn replay_set(
    scenarios: &[Scenario],
    eras: &[Era],
    want_trace: bool,
) -> Result<ReplaySet, Error> {
    let mut results = Vec::new();
    for s in scenarios {
        for &era in eras {
            results.push(replay(s, era, want_trace)?);
        }
    }
    Ok(ReplaySet {
        eras: eras.to_vec(),
        results,
        single: scenarios.len() == 1,
    })
}

/// `pinlab replay [SCENARIO...] [--era E]... [--json]`. Returns the exit code: 0 when every
/// stated expectation is met, 1 otherwise, 2 for a usage error (unknown era, bad config).
pub fn replay_command(
    scenario_paths: &[PathBuf],
    eras: &[String],
    json: bool,
    default_dir: &Path,
) -> anyhow::Result<i32> {
    let era_list = match parse_eras(eras) {
        Ok(e) => e,
        Err(msg) => {
            eprintln!("pinlab replay: --era: {msg}");
            return Ok(2);
        }
    };
    let paths = if scenario_paths.is_empty() {
        match crate::config::scenario_files(default_dir) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pinlab replay: {e}");
                return Ok(2);
            }
        }
    } else {
        scenario_paths.to_vec()
    };
    let mut scenarios = Vec::new();
    for p in &paths {
        match crate::config::load(Some(p)) {
            Ok(s) => {
                if let Err(e) = validate(&s) {
                    eprintln!("pinlab replay: {}: {e}", p.display());
                    return Ok(2);
                }
                scenarios.push(s);
            }
            Err(e) => {
                eprintln!("pinlab replay: {e}");
                return Ok(2);
            }
        }
    }
    let want_trace = scenarios.len() == 1 || json;
    let set = replay_set(&scenarios, &era_list, want_trace)?;
    if json {
        println!("{}", set.json()?);
    } else {
        print!("{}", set.human());
    }
    Ok(if set.ok() { 0 } else { 1 })
}

/// The era x scenario table; cells whose expectation is not met are marked `!`, then listed.
pub fn table(results: &[Replay], eras: &[Era]) -> String {
    let mut rows: BTreeMap<&str, Vec<&Replay>> = BTreeMap::new();
    for r in results {
        rows.entry(&r.scenario).or_default().push(r);
    }
    let cell = |r: &Replay| {
        let mut c = r.verdict.to_string();
        for f in &r.findings {
            c.push_str(&format!(" +{f}"));
        }
        if r.met == Some(false) {
            c.push_str(" !");
        }
        c
    };
    let name_w = rows.keys().map(|k| k.len()).max().unwrap_or(8).max(8);
    let mut widths: Vec<usize> = eras.iter().map(|e| e.name().len()).collect();
    for rs in rows.values() {
        for (i, r) in rs.iter().enumerate() {
            widths[i] = widths[i].max(cell(r).len());
        }
    }
    let mut out = format!("{HEADER}\n\n{:name_w$}", "scenario");
    for (e, w) in eras.iter().zip(&widths) {
        out.push_str(&format!("  {:w$}", e.name()));
    }
    out.push('\n');
    for (name, rs) in &rows {
        out.push_str(&format!("{name:name_w$}"));
        for (r, w) in rs.iter().zip(&widths) {
            out.push_str(&format!("  {:w$}", cell(r)));
        }
        out.push('\n');
    }
    let misses: Vec<_> = results.iter().filter(|r| r.met == Some(false)).collect();
    if misses.is_empty() {
        out.push_str("\nevery stated expectation is met\n");
    } else {
        out.push_str("\nexpectations not met (!):\n");
        for r in misses {
            out.push_str(&format!(
                "  {} @ {}: model says {}, expected {}\n",
                r.scenario,
                r.era,
                r.verdict.key(),
                r.expected.as_deref().unwrap_or("?")
            ));
        }
    }
    out
}

/// A replay's trace as numbered steps.
pub fn trace_text(r: &Replay) -> String {
    let mut out = format!(
        "\n--- {} @ {} (model): {}{}{} ({} states explored)\n",
        r.scenario,
        r.era,
        r.verdict,
        r.detail
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        r.findings
            .iter()
            .map(|f| format!(" +{f}"))
            .collect::<String>(),
        r.states
    );
    match &r.trace {
        Some(t) => {
            for (i, line) in t.iter().enumerate() {
                out.push_str(&format!("{:3}. {line}\n", i + 1));
            }
        }
        None => out.push_str("    (no trace)\n"),
    }
    out
}
