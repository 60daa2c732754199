//! Results as test cases, for the engines kernel CI already runs: KTAP (kselftest, LKFT,
//! KernelCI) and JUnit XML (GitLab, Jenkins).
//!
//! A `Case` is one scenario, cell or era verdict reduced to pass / fail / skip with its
//! diagnostics and nested cases; `ktap` and `junit` render a list of them. The matrix, the sweep
//! and replay build cases from their typed rows; nothing here runs anything.

pub mod junit;
pub mod ktap;

use serde::Serialize;

/// The outcome of one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "reason")]
pub enum Status {
    Pass,
    Fail,
    /// The host lacks a capability; the reason says which.
    Skip(String),
}

/// One test case.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Case {
    pub name: String,
    pub status: Status,
    /// Lines a person reads to see why (expected vs got, the run's reason).
    pub diagnostics: Vec<String>,
    pub seconds: Option<f64>,
    /// Nested cases (per-action cells of a scenario, eras of a replay row).
    pub subtests: Vec<Case>,
}

impl Case {
    pub fn new(name: impl Into<String>, status: Status) -> Self {
        Case {
            name: name.into(),
            status,
            diagnostics: Vec::new(),
            seconds: None,
            subtests: Vec::new(),
        }
    }

    /// A parent that passes unless a subtest fails; skipped only if every subtest was.
    pub fn parent(name: impl Into<String>, subtests: Vec<Case>) -> Self {
        let status = if subtests.iter().any(|c| c.status == Status::Fail) {
            Status::Fail
        } else if !subtests.is_empty()
            && subtests.iter().all(|c| matches!(c.status, Status::Skip(_)))
        {
            Status::Skip("every subtest was skipped".into())
        } else {
            Status::Pass
        };
        Case {
            subtests,
            ..Case::new(name, status)
        }
    }
}

/// What a list of cases adds up to, for exit codes: 0 all met, 1 any unmet, 4 (kselftest's
/// KSFT_SKIP) when nothing could run because the host lacks a capability.
pub fn exit_code(cases: &[Case]) -> u8 {
    if cases.iter().any(|c| c.status == Status::Fail) {
        1
    } else if !cases.is_empty() && cases.iter().all(|c| matches!(c.status, Status::Skip(_))) {
        4
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_kselftest() {
        let pass = Case::new("a", Status::Pass);
        let fail = Case::new("b", Status::Fail);
        let skip = Case::new("c", Status::Skip("no kvm".into()));
        assert_eq!(exit_code(&[pass.clone(), skip.clone()]), 0);
        assert_eq!(exit_code(&[pass, fail, skip.clone()]), 1);
        assert_eq!(exit_code(&[skip.clone(), skip]), 4);
    }

    #[test]
    fn a_parent_bubbles_failures_up_and_skips_only_when_all_skip() {
        let p = Case::parent(
            "p",
            vec![Case::new("a", Status::Pass), Case::new("b", Status::Fail)],
        );
        assert_eq!(p.status, Status::Fail);
        let p = Case::parent(
            "p",
            vec![
                Case::new("a", Status::Pass),
                Case::new("b", Status::Skip("x".into())),
            ],
        );
        assert_eq!(p.status, Status::Pass);
        let p = Case::parent("p", vec![Case::new("b", Status::Skip("x".into()))]);
        assert!(matches!(p.status, Status::Skip(_)));
    }
}
