//! Comparing two pinlab results (a run, a matrix or a sweep; from two kernels or two machines):
//! per scenario the verdict change, regressions first, the numeric evidence that changed, and
//! both identities.
//!
//! A result is read as JSON and reduced to what a comparison needs with our own types (the
//! producing side's evidence types are serialize-only); the evidence of each action is compared
//! leaf by leaf over its numeric fields, leaving out addresses and PIDs, which differ on every
//! run. This module reads and compares; it prints nothing and runs nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::identity::Identity;
use crate::results::{Case, Status};
use crate::scenario::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is not JSON: {source}")]
    NotJson {
        file: PathBuf,
        source: serde_json::Error,
    },
    #[error("{file} is not a pinlab result (a run, a matrix or a sweep): {why}")]
    NotAResult { file: PathBuf, why: String },
    #[error("{a} and {b} have no scenario in common")]
    NothingInCommon { a: PathBuf, b: PathBuf },
}

/// One scenario's outcome in one result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub expected: Option<Verdict>,
    pub verdict: Option<Verdict>,
    /// Met its expectation (a skip counts as met: it says why).
    pub met: bool,
    /// The run's whole JSON (the evidence), when the result holds it.
    #[serde(skip)]
    pub report: Option<Value>,
}

/// One result file, reduced.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub file: PathBuf,
    /// "run", "matrix" or "sweep".
    pub kind: String,
    pub identity: Option<Identity>,
    #[serde(skip)]
    pub scenarios: BTreeMap<String, Outcome>,
}

/// The run fields `diff` reads (everything else of a run is ignored).
#[derive(Deserialize)]
struct RunFields {
    scenario: String,
    verdict: Verdict,
    expected: Verdict,
}

/// The matrix/sweep row fields `diff` reads.
#[derive(Deserialize)]
struct RowFields {
    scenario: String,
    #[serde(default = "yes")]
    live: bool,
    expected: Option<Verdict>,
    verdict: Option<Verdict>,
    pass: bool,
    report: Option<Value>,
}

fn yes() -> bool {
    true
}

fn met(expected: Option<Verdict>, verdict: Option<Verdict>) -> bool {
    verdict == Some(Verdict::Skipped) || (verdict.is_some() && verdict == expected)
}

/// Reduces a parsed JSON document from `file` to a result.
pub fn parse(file: &Path, v: Value) -> Result<Side, Error> {
    let not = |why: String| Error::NotAResult {
        file: file.to_path_buf(),
        why,
    };
    let identity = v
        .get("identity")
        .and_then(|i| serde_json::from_value::<Identity>(i.clone()).ok());
    let mut scenarios = BTreeMap::new();
    let kind = match v.get("kind").and_then(Value::as_str) {
        Some(k @ ("matrix" | "sweep")) => {
            let rows = v
                .get("rows")
                .and_then(Value::as_array)
                .ok_or_else(|| not(format!("a {k} without `rows`")))?;
            for (i, row) in rows.iter().enumerate() {
                let r: RowFields = serde_json::from_value(row.clone())
                    .map_err(|e| not(format!("rows[{i}]: {e}")))?;
                if !r.live {
                    continue;
                }
                scenarios.insert(
                    r.scenario,
                    Outcome {
                        expected: r.expected,
                        verdict: r.verdict,
                        met: r.pass,
                        report: r.report,
                    },
                );
            }
            k.to_string()
        }
        Some(k) => return Err(not(format!("unknown kind `{k}`"))),
        None if v.get("model") == Some(&Value::Bool(false)) => {
            let r: RunFields =
                serde_json::from_value(v.clone()).map_err(|e| not(format!("as a run: {e}")))?;
            scenarios.insert(
                r.scenario,
                Outcome {
                    expected: Some(r.expected),
                    verdict: Some(r.verdict),
                    met: met(Some(r.expected), Some(r.verdict)),
                    report: Some(v),
                },
            );
            "run".into()
        }
        None => {
            return Err(not(
                "no `kind` (matrix, sweep) and not a live run (`model: false`)".into(),
            ))
        }
    };
    Ok(Side {
        file: file.to_path_buf(),
        kind,
        identity,
        scenarios,
    })
}

/// Reads and reduces `file`.
pub fn load(file: &Path) -> Result<Side, Error> {
    let text = std::fs::read_to_string(file).map_err(|source| Error::Read {
        file: file.to_path_buf(),
        source,
    })?;
    let v = serde_json::from_str(&text).map_err(|source| Error::NotJson {
        file: file.to_path_buf(),
        source,
    })?;
    parse(file, v)
}

/// How one scenario's verdict moved from A to B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Met its expectation in A, does not in B.
    Regression,
    /// Did not meet it in A, does in B.
    Fixed,
    /// Same met-ness, another verdict (e.g. skipped in one of them).
    Changed,
    Same,
}

/// A numeric evidence field that differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    /// e.g. `device_write_lost_pages`, `evidence[0] fork-parent-write: details.copied_at_fork`.
    pub field: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
}

/// One scenario in both results.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioDiff {
    pub scenario: String,
    pub change: Change,
    pub a: Outcome,
    pub b: Outcome,
    pub evidence: Vec<FieldChange>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    /// Always "diff".
    pub kind: &'static str,
    pub a: Side,
    pub b: Side,
    /// Regressions first, then fixed, changed, same; by name within each.
    pub scenarios: Vec<ScenarioDiff>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub regressions: usize,
}

/// Keys whose numbers differ on every run (addresses, PIDs, clock readings): not evidence.
const NOISE: &[&str] = &[
    "region",
    "hva",
    "old_hva",
    "new_hva",
    "child",
    "pid",
    "start",
    "end",
    "interval",
    "unix_time",
];

/// Numeric leaves of the objects under `v` (arrays are not descended: page lists keep their
/// `total`), keyed by their dotted path.
fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                if NOISE.contains(&k.as_str()) {
                    continue;
                }
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&p, v, out);
            }
        }
        _ => {}
    }
}

/// The numbers a kernel engineer compares: the run's page counts and each action's evidence.
fn evidence_numbers(report: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for key in [
        "device_write_lost_pages",
        "device_read_stale_pages",
        "pinned_pfns_changed_pages",
        "thp_coverage",
        "thp_coverage_end",
    ] {
        if let Some(x) = report.get(key).and_then(Value::as_f64) {
            out.insert(key.to_string(), x);
        }
    }
    if let Some(ev) = report.get("evidence").and_then(Value::as_array) {
        for (i, e) in ev.iter().enumerate() {
            let action = e.get("action").and_then(Value::as_str).unwrap_or("?");
            let mut one = BTreeMap::new();
            leaves("", e, &mut one);
            for (k, x) in one {
                out.insert(format!("evidence[{i}] {action}: {k}"), x);
            }
        }
    }
    out
}

fn evidence_changes(a: Option<&Value>, b: Option<&Value>) -> Vec<FieldChange> {
    let (Some(a), Some(b)) = (a, b) else {
        return Vec::new();
    };
    let (na, nb) = (evidence_numbers(a), evidence_numbers(b));
    let mut keys: Vec<&String> = na.keys().chain(nb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (na.get(k).copied(), nb.get(k).copied());
            // vmstat lists only the counters that moved: absent means 0.
            let zero = k.contains(": vmstat.").then_some(0.0);
            let (x, y) = (x.or(zero), y.or(zero));
            (x != y).then(|| FieldChange {
                field: k.clone(),
                a: x,
                b: y,
            })
        })
        .collect()
}

/// Compares `a` with `b`.
pub fn compare(a: Side, b: Side) -> Result<Diff, Error> {
    let mut scenarios = Vec::new();
    for (name, oa) in &a.scenarios {
        let Some(ob) = b.scenarios.get(name) else {
            continue;
        };
        let change = match (oa.met, ob.met) {
            (true, false) => Change::Regression,
            (false, true) => Change::Fixed,
            _ if oa.verdict != ob.verdict => Change::Changed,
            _ => Change::Same,
        };
        scenarios.push(ScenarioDiff {
            scenario: name.clone(),
            change,
            a: oa.clone(),
            b: ob.clone(),
            evidence: evidence_changes(oa.report.as_ref(), ob.report.as_ref()),
        });
    }
    if scenarios.is_empty() {
        return Err(Error::NothingInCommon {
            a: a.file.clone(),
            b: b.file.clone(),
        });
    }
    scenarios.sort_by(|x, y| (x.change, &x.scenario).cmp(&(y.change, &y.scenario)));
    let only = |x: &Side, y: &Side| -> Vec<String> {
        x.scenarios
            .keys()
            .filter(|k| !y.scenarios.contains_key(*k))
            .cloned()
            .collect()
    };
    let (only_in_a, only_in_b) = (only(&a, &b), only(&b, &a));
    let regressions = scenarios
        .iter()
        .filter(|s| s.change == Change::Regression)
        .count();
    Ok(Diff {
        kind: "diff",
        a,
        b,
        scenarios,
        only_in_a,
        only_in_b,
        regressions,
    })
}

fn verdict(v: Option<Verdict>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| x.to_string())
}

/// One line naming a result: its file, kind, kernel and pinlab.
pub fn describe(r: &Side) -> String {
    match &r.identity {
        Some(id) => format!(
            "{} ({}): kernel {} on {}, THP {}, KSM run {}, pinlab {} ({})",
            r.file.display(),
            r.kind,
            id.kernel_release.as_deref().unwrap_or("?"),
            id.machine.as_deref().unwrap_or("?"),
            id.thp_enabled.as_deref().unwrap_or("?"),
            id.ksm_run.as_deref().unwrap_or("?"),
            id.pinlab_version,
            id.pinlab_commit
        ),
        None => format!("{} ({}): no identity recorded", r.file.display(), r.kind),
    }
}

impl ScenarioDiff {
    /// `expected X: A got Y (met), B got Z (not met)`.
    pub fn verdict_line(&self) -> String {
        let met = |m: bool| if m { "met" } else { "not met" };
        format!(
            "{}: {}; A expected {}, got {} ({}); B expected {}, got {} ({})",
            self.scenario,
            serde_json::to_value(self.change)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            verdict(self.a.expected),
            verdict(self.a.verdict),
            met(self.a.met),
            verdict(self.b.expected),
            verdict(self.b.verdict),
            met(self.b.met)
        )
    }

    pub fn evidence_lines(&self) -> Vec<String> {
        self.evidence
            .iter()
            .map(|f| format!("{}: {} -> {}", f.field, num(f.a), num(f.b)))
            .collect()
    }
}

impl Diff {
    /// The terminal text.
    pub fn human(&self) -> String {
        let mut out = format!("A: {}\nB: {}\n\n", describe(&self.a), describe(&self.b));
        for s in &self.scenarios {
            if s.change == Change::Same && s.evidence.is_empty() {
                continue;
            }
            out.push_str(&s.verdict_line());
            out.push('\n');
            for l in s.evidence_lines() {
                out.push_str(&format!("    {l}\n"));
            }
        }
        let same = self
            .scenarios
            .iter()
            .filter(|s| s.change == Change::Same && s.evidence.is_empty())
            .count();
        out.push_str(&format!(
            "\n{} scenarios compared: {} regressions, {same} unchanged\n",
            self.scenarios.len(),
            self.regressions
        ));
        if !self.only_in_a.is_empty() {
            out.push_str(&format!("only in A: {}\n", self.only_in_a.join(", ")));
        }
        if !self.only_in_b.is_empty() {
            out.push_str(&format!("only in B: {}\n", self.only_in_b.join(", ")));
        }
        out
    }

    /// One case per common scenario: a regression fails, anything else passes.
    pub fn cases(&self) -> Vec<Case> {
        self.scenarios
            .iter()
            .map(|s| {
                let status = if s.change == Change::Regression {
                    Status::Fail
                } else {
                    Status::Pass
                };
                let mut c = Case::new(&s.scenario, status);
                c.diagnostics.push(s.verdict_line());
                c.diagnostics.extend(s.evidence_lines());
                c
            })
            .collect()
    }

    /// The two identities, as KTAP header lines.
    pub fn header(&self) -> Vec<String> {
        vec![
            format!("A: {}", describe(&self.a)),
            format!("B: {}", describe(&self.b)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(verdict: &str, expected: &str, copied: u64) -> Value {
        json!({
            "scenario": "s", "model": false, "verdict": verdict, "expected": expected,
            "device_write_lost_pages": 0,
            "evidence": [{"action": "fork-parent-write", "vmstat": {"thp_split_pmd": 1},
                "interval": {"start": 5, "end": 9},
                "details": {"kind": "fork", "child": 1234, "copied_at_fork": copied}}]
        })
    }

    #[test]
    fn a_run_that_stops_meeting_its_expectation_is_a_regression() {
        let a = parse(Path::new("a"), run("coherent", "coherent", 0)).unwrap();
        let mut bv = run("diverged", "coherent", 512);
        bv["evidence"][0]["details"]["child"] = json!(999);
        bv["evidence"][0]["vmstat"] = json!({});
        let b = parse(Path::new("b"), bv).unwrap();
        let d = compare(a, b).unwrap();
        assert_eq!(d.regressions, 1);
        assert_eq!(d.scenarios[0].change, Change::Regression);
        let fields: Vec<_> = d.scenarios[0]
            .evidence
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        // The PID is noise; the copy count and the vmstat counter that no longer moved are not.
        assert_eq!(
            fields,
            [
                "evidence[0] fork-parent-write: details.copied_at_fork",
                "evidence[0] fork-parent-write: vmstat.thp_split_pmd"
            ]
        );
    }

    #[test]
    fn regressions_sort_first_and_skips_count_as_met() {
        let matrix = |rows: Value| json!({"kind": "matrix", "rows": rows});
        let row = |name: &str, v: &str, pass: bool| json!({"scenario": name, "live": true, "expected": "coherent", "verdict": v, "pass": pass});
        let a = matrix(json!([
            row("a", "diverged", false),
            row("z", "coherent", true)
        ]));
        let b = matrix(json!([
            row("a", "skipped", true),
            row("z", "diverged", false)
        ]));
        let d = compare(
            parse(Path::new("a"), a).unwrap(),
            parse(Path::new("b"), b).unwrap(),
        )
        .unwrap();
        let order: Vec<_> = d
            .scenarios
            .iter()
            .map(|s| (s.scenario.as_str(), s.change))
            .collect();
        assert_eq!(order, [("z", Change::Regression), ("a", Change::Fixed)]);
    }

    #[test]
    fn refuses_what_is_not_a_result_or_shares_nothing() {
        assert!(matches!(
            parse(Path::new("x"), json!({"hello": 1})),
            Err(Error::NotAResult { .. })
        ));
        assert!(matches!(
            parse(Path::new("x"), json!({"kind": "bench"})),
            Err(Error::NotAResult { .. })
        ));
        let mut other = run("coherent", "coherent", 0);
        other["scenario"] = json!("t");
        let d = compare(
            parse(Path::new("a"), run("coherent", "coherent", 0)).unwrap(),
            parse(Path::new("b"), other).unwrap(),
        );
        assert!(matches!(d, Err(Error::NothingInCommon { .. })));
    }
}
