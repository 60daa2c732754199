//! Verdicts of the model executor, the expectation grammar of `[expect] model`, and the `replay`
//! command: an era x scenario table (or JSON), traces, and an exit code. Every output says it is
//! a SIMULATION ("model executor: replaying kernel-era rules (simulated)", `"model": true`).
//!
//! Expectation grammar (values of `[expect] model = { "ERA" = "..." }`):
//! ```text
//! expectation := verdict ( "+" finding )*
//! verdict     := "coherent" | "diverged" | "n/a" | "invariant-broken:" INVARIANT
//! INVARIANT   := "anon-vma-reach" | "rmap-sees-migration"
//! finding     := "bias-false-positive"
//! ```
//! A verdict matches when it is equal and the set of findings is exactly the listed one
//! (`"coherent"` therefore also says "no finding"). Data invariants (`pin-is-mapped`,
//! `no-lost-write`) are reported as `diverged`; the trace's last step names which one broke.
//! A live scenario (`live = true`) whose `expect.model` does not name the modern era is checked
//! against `expect.live` for it: the model's `5.19` must agree with the live kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::era::{Era, Feature};
use super::explore::{explore, Conclusion, Outcome};
use super::invariant::Invariant;
use super::spec;
use super::state::FINDING_BIAS_FALSE_POSITIVE;
use crate::scenario::{Scenario, Verdict};

/// The header every human-readable output starts with.
pub const HEADER: &str = "model executor: replaying kernel-era rules (simulated)";

/// A model verdict, as configs and JSON spell it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModelVerdict {
    Coherent,
    Diverged,
    InvariantBroken(Invariant),
    NotApplicable,
}

impl ModelVerdict {
    /// The grammar's spelling.
    pub fn key(&self) -> String {
        match self {
            ModelVerdict::Coherent => "coherent".into(),
            ModelVerdict::Diverged => "diverged".into(),
            ModelVerdict::InvariantBroken(i) => format!("invariant-broken:{i}"),
            ModelVerdict::NotApplicable => "n/a".into(),
        }
    }

    /// The live verdict this stands for, if any.
    pub fn live(&self) -> Option<Verdict> {
        match self {
            ModelVerdict::Coherent => Some(Verdict::Coherent),
            ModelVerdict::Diverged => Some(Verdict::Diverged),
            _ => None,
        }
    }
}

impl fmt::Display for ModelVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelVerdict::InvariantBroken(i) => write!(f, "invariant broken: {i}"),
            other => f.write_str(&other.key()),
        }
    }
}

const FINDINGS: [(u8, &str); 1] = [(FINDING_BIAS_FALSE_POSITIVE, "bias-false-positive")];

fn finding_names(bits: u8) -> Vec<String> {
    FINDINGS
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// A parsed expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub verdict: ModelVerdict,
    pub findings: Vec<String>,
}

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, String> {
        let mut parts = text.split('+').map(str::trim);
        let v = parts.next().unwrap_or("");
        let verdict = match v {
            "coherent" => ModelVerdict::Coherent,
            "diverged" => ModelVerdict::Diverged,
            "n/a" => ModelVerdict::NotApplicable,
            _ => {
                let name = v
                    .strip_prefix("invariant-broken:")
                    .ok_or_else(|| format!("`{text}`: expected coherent, diverged, n/a or invariant-broken:NAME[+finding]"))?;
                let inv = Invariant::ALL
                    .into_iter()
                    .find(|i| i.name() == name && !i.is_data())
                    .ok_or_else(|| format!("`{name}` is not a structural invariant (anon-vma-reach, rmap-sees-migration; data invariants are `diverged`)"))?;
                ModelVerdict::InvariantBroken(inv)
            }
        };
        let mut findings = Vec::new();
        for f in parts {
            if !FINDINGS.iter().any(|(_, n)| *n == f) {
                return Err(format!("unknown finding `{f}` (bias-false-positive)"));
            }
            findings.push(f.to_string());
        }
        findings.sort();
        Ok(Expectation { verdict, findings })
    }

    pub fn met_by(&self, r: &Replay) -> bool {
        let mut got = r.findings.clone();
        got.sort();
        r.verdict == self.verdict && got == self.findings
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
    #[error("replay {scenario}: key `expect.model.\"{era}\"`: {reason}")]
    Expect {
        scenario: String,
        era: String,
        reason: String,
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
    let stated = s.expect.model.get(era.name()).cloned();
    let expected =
        stated.or_else(|| (s.live && era == Era::MODERN).then(|| s.expected_live().to_string()));
    if let Some(text) = expected {
        let exp = Expectation::parse(&text).map_err(|reason| Error::Expect {
            scenario: s.name.clone(),
            era: era.name().to_string(),
            reason,
        })?;
        // The live side has no findings: compare the verdict only for an implied expectation.
        let met = if s.expect.model.contains_key(era.name()) {
            exp.met_by(&r)
        } else {
            exp.verdict == r.verdict
        };
        r.expected = Some(text);
        r.met = Some(met);
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

/// Checks every era key of `expect.model` and every expectation string, before running.
pub fn check_expectations(s: &Scenario) -> Result<(), Error> {
    for (era, text) in &s.expect.model {
        let e = |reason: String| Error::Expect {
            scenario: s.name.clone(),
            era: era.clone(),
            reason,
        };
        era.parse::<Era>().map_err(e)?;
        Expectation::parse(text).map_err(e)?;
    }
    Ok(())
}

/// `pinlab replay [SCENARIO...] [--era E]... [--json]`. Returns the exit code: 0 when every
/// stated expectation is met, 1 otherwise, 2 for a usage error (unknown era, bad config).
pub fn replay_command(
    scenario_paths: &[PathBuf],
    eras: &[String],
    json: bool,
    default_dir: &Path,
) -> anyhow::Result<i32> {
    let mut era_list = Vec::new();
    for e in eras {
        match e.parse::<Era>() {
            Ok(era) => era_list.push(era),
            Err(msg) => {
                eprintln!("pinlab replay: --era: {msg}");
                return Ok(2);
            }
        }
    }
    if era_list.is_empty() {
        era_list = Era::ALL.to_vec();
    }
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
                if let Err(e) = check_expectations(&s).and_then(|_| {
                    spec::program(&s).map(|_| ()).map_err(|source| Error::Spec {
                        scenario: s.name.clone(),
                        source,
                    })
                }) {
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
    let mut results = Vec::new();
    for s in &scenarios {
        for &era in &era_list {
            results.push(replay(s, era, want_trace)?);
        }
    }
    let ok = results.iter().all(|r| r.met != Some(false));
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            model: bool,
            header: &'a str,
            results: &'a [Replay],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                model: true,
                header: HEADER,
                results: &results,
            })?
        );
    } else {
        print!("{}", table(&results, &era_list));
        if scenarios.len() == 1 {
            for r in &results {
                print!("{}", trace_text(r));
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: an expectation string and whether it parses. A bug would accept a typo that then
    /// never matches, or reject the documented grammar.
    #[test]
    fn expectation_grammar() {
        let rows = [
            ("coherent", true),
            ("diverged", true),
            ("n/a", true),
            ("invariant-broken:anon-vma-reach", true),
            ("invariant-broken:rmap-sees-migration", true),
            ("coherent+bias-false-positive", true),
            ("invariant-broken:pin-is-mapped", false),
            ("invariant broken: anon-vma-reach", false),
            ("coherent+copied", false),
            ("ok", false),
        ];
        for (text, ok) in rows {
            assert_eq!(Expectation::parse(text).is_ok(), ok, "{text}");
        }
    }
}
