//! Model verdicts and the grammar of `[expect] model = { "ERA" = "..." }`, and the one check of
//! that table: `Scenario::validate` runs it for every command (`run` and `replay` alike), and
//! `replay` looks expectations up through it. Low level on purpose: it knows eras, invariants and
//! findings, nothing of scenarios or of the explorer.
//!
//! ```text
//! key         := an era's name (`3.7-4.4`) or a kernel version it covers (`4.4`, `6.18`)
//! expectation := verdict ( "+" finding )*
//! verdict     := "coherent" | "diverged" | "n/a" | "invariant-broken:" INVARIANT
//! INVARIANT   := "anon-vma-reach" | "rmap-sees-migration"
//! finding     := "bias-false-positive"
//! ```
//! A verdict matches when it is equal and the set of findings is exactly the listed one
//! (`"coherent"` therefore also says "no finding"). Data invariants (`pin-is-mapped`,
//! `no-lost-write`) are reported as `diverged`; the trace's last step names which one broke. Two
//! keys that name the same era (`"4.4"` and `"3.7-4.4"`) are an error.

use std::collections::BTreeMap;
use std::fmt;

use super::era::{Era, UnknownEra};
use super::invariant::Invariant;
use super::state::FINDING_BIAS_FALSE_POSITIVE;

/// A model verdict, as configs and JSON spell it. (`ModelVerdict::live`, the live verdict it
/// stands for, is in `report`, which knows the scenario's verdicts.)
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
}

impl fmt::Display for ModelVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelVerdict::InvariantBroken(i) => write!(f, "invariant broken: {i}"),
            other => f.write_str(&other.key()),
        }
    }
}

/// Findings: `FINDING_*` bits of the state and their names.
const FINDINGS: [(u8, &str); 1] = [(FINDING_BIAS_FALSE_POSITIVE, "bias-false-positive")];

/// The names of the findings in `bits`.
pub fn finding_names(bits: u8) -> Vec<String> {
    FINDINGS
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// A value of `[expect] model` that does not parse, or a key that names no era or an era
/// another key already names. The offending text is shown escaped, so the message stays one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("`{}`: expected coherent, diverged, n/a or invariant-broken:NAME[+finding]", .0.escape_debug())]
    Verdict(String),
    #[error("`{}` is not a structural invariant (anon-vma-reach, rmap-sees-migration; data invariants are `diverged`)", .0.escape_debug())]
    NotStructural(String),
    #[error("unknown finding `{}` (bias-false-positive)", .0.escape_debug())]
    Finding(String),
    #[error(transparent)]
    Era(#[from] UnknownEra),
    #[error("names era {era}, as key `{}` does", other.escape_debug())]
    SameEra { era: Era, other: String },
}

/// A parsed expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub verdict: ModelVerdict,
    pub findings: Vec<String>,
}

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, Error> {
        let mut parts = text.split('+').map(str::trim);
        let v = parts.next().unwrap_or("");
        let verdict = match v {
            "coherent" => ModelVerdict::Coherent,
            "diverged" => ModelVerdict::Diverged,
            "n/a" => ModelVerdict::NotApplicable,
            _ => {
                let name = v
                    .strip_prefix("invariant-broken:")
                    .ok_or_else(|| Error::Verdict(text.to_string()))?;
                let inv = Invariant::ALL
                    .into_iter()
                    .find(|i| i.name() == name && !i.is_data())
                    .ok_or_else(|| Error::NotStructural(name.to_string()))?;
                ModelVerdict::InvariantBroken(inv)
            }
        };
        let mut findings = Vec::new();
        for f in parts {
            if !FINDINGS.iter().any(|(_, n)| *n == f) {
                return Err(Error::Finding(f.to_string()));
            }
            findings.push(f.to_string());
        }
        findings.sort();
        Ok(Expectation { verdict, findings })
    }

    /// Whether a replay's verdict and findings are the expected ones.
    pub fn met(&self, verdict: &ModelVerdict, findings: &[String]) -> bool {
        let mut got = findings.to_vec();
        got.sort();
        *verdict == self.verdict && got == self.findings
    }
}

/// One `[expect] model` entry, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stated {
    /// The key as written (`"4.4"`), which may be an old name or a version.
    pub key: String,
    /// The value as written.
    pub text: String,
    pub expectation: Expectation,
}

/// `[expect] model`, checked and keyed by era.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelExpectations {
    by_era: BTreeMap<Era, Stated>,
}

impl ModelExpectations {
    /// The expectation stated for `era`, if any.
    pub fn get(&self, era: Era) -> Option<&Stated> {
        self.by_era.get(&era)
    }
}

/// The entry of `[expect] model` at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `expect.model.\"{key}\"`: {source}")]
pub struct KeyError {
    pub key: String,
    pub source: Error,
}

/// Checks `[expect] model`: every key names an era, no two keys the same one, every value
/// parses. The one check both `run` (through `Scenario::validate`) and `replay` use.
pub fn check(table: &BTreeMap<String, String>) -> Result<ModelExpectations, KeyError> {
    let mut out = ModelExpectations::default();
    for (key, text) in table {
        let fail = |source: Error| KeyError {
            key: key.clone(),
            source,
        };
        let era: Era = key.parse().map_err(|e: UnknownEra| fail(e.into()))?;
        let expectation = Expectation::parse(text).map_err(fail)?;
        if let Some(other) = out.by_era.get(&era) {
            return Err(fail(Error::SameEra {
                era,
                other: other.key.clone(),
            }));
        }
        out.by_era.insert(
            era,
            Stated {
                key: key.clone(),
                text: text.clone(),
                expectation,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `config` fuzz target: a value with line breaks made a multi-line error
    /// (the config loader promises one line naming the file). A bug shows as a raw '\n'.
    #[test]
    fn offending_text_is_escaped_onto_one_line() {
        for bad in ["\n\n", "invariant-broken:a\nb", "coherent+x\ny"] {
            let e = Expectation::parse(bad).expect_err(bad).to_string();
            assert!(!e.contains('\n') && e.contains("\\n"), "{e:?}");
        }
        let e = UnknownEra {
            name: "4\n5".into(),
        }
        .to_string();
        assert!(!e.contains('\n'), "{e:?}");
    }

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

    fn table(rows: &[(&str, &str)]) -> BTreeMap<String, String> {
        rows.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Each row: an `[expect] model` table, and the key and error variant it must be refused
    /// with, or `None`. A bug would let `run` accept what `replay` refuses (issue 10 #14), or
    /// let two keys give one era two expectations.
    #[test]
    fn tables_are_checked_key_by_key() {
        type Refusal = Option<(&'static str, fn(&Error) -> bool)>;
        let rows: &[(&[(&str, &str)], Refusal)] = &[
            (&[("4.4", "coherent"), ("6.1+", "diverged")], None),
            (&[("5.15", "coherent")], None),
            (
                &[("4.7+kosaki", "coherent")],
                Some(("4.7+kosaki", |e| matches!(e, Error::Era(_)))),
            ),
            (
                &[("4.4", "coherent"), ("3.7-4.4", "diverged")],
                Some(("4.4", |e| {
                    matches!(e, Error::SameEra { era: Era::V3_7, .. })
                })),
            ),
            (
                &[("5.9", "fine")],
                Some(("5.9", |e| matches!(e, Error::Verdict(_)))),
            ),
        ];
        for (entries, want) in rows {
            let got = check(&table(entries));
            match want {
                None => assert!(got.is_ok(), "{entries:?}: {got:?}"),
                Some((key, is)) => {
                    let err = got.expect_err(&format!("{entries:?}"));
                    assert_eq!(err.key, *key, "{entries:?}");
                    assert!(is(&err.source), "{entries:?}: {err}");
                }
            }
        }
        let t = check(&table(&[("4.4", "coherent")])).unwrap();
        assert_eq!(t.get(Era::V3_7).map(|s| s.key.as_str()), Some("4.4"));
        assert_eq!(t.get(Era::V4_5), None);
    }
}
