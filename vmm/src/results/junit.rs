//! JUnit XML through quick-junit: one `<testsuite>` per command, one `<testcase>` per case;
//! nested cases become test cases named `parent/child` in the same suite.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::{Case, Status};

fn flatten(prefix: &str, cases: &[Case], out: &mut Vec<TestCase>) {
    for c in cases {
        let name = if prefix.is_empty() {
            c.name.clone()
        } else {
            format!("{prefix}/{}", c.name)
        };
        if !c.subtests.is_empty() {
            flatten(&name, &c.subtests, out);
            continue;
        }
        let status = match &c.status {
            Status::Pass => TestCaseStatus::success(),
            Status::Fail => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(c.diagnostics.first().cloned().unwrap_or_default());
                s.set_description(c.diagnostics.join("\n"));
                s
            }
            Status::Skip(why) => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(why.clone());
                s
            }
        };
        let mut tc = TestCase::new(name, status);
        tc.set_classname("pinlab");
        if let Some(secs) = c.seconds {
            tc.set_time(std::time::Duration::from_secs_f64(secs.max(0.0)));
        }
        if !c.diagnostics.is_empty() && c.status != Status::Fail {
            tc.set_system_out(c.diagnostics.join("\n"));
        }
        out.push(tc);
    }
}

/// The JUnit XML of `cases` as one suite named `suite`, with `properties` (the kernel's
/// identity) on it.
pub fn render(
    suite: &str,
    cases: &[Case],
    properties: &[(String, String)],
) -> Result<String, quick_junit::SerializeError> {
    let mut tcs = Vec::new();
    flatten("", cases, &mut tcs);
    let mut ts = TestSuite::new(suite);
    for (k, v) in properties {
        ts.add_property((k.as_str(), v.as_str()));
    }
    ts.add_test_cases(tcs);
    let mut report = Report::new("pinlab");
    report.add_test_suite(ts);
    report.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_testcase_per_leaf_with_failure_and_skip_elements() {
        let mut fail = Case::new("b", Status::Fail);
        fail.diagnostics
            .push("expected diverged, got coherent".into());
        let cases = vec![
            Case::new("a", Status::Pass),
            fail,
            Case::new("c", Status::Skip("no kvm".into())),
            Case::parent("p", vec![Case::new("x", Status::Pass)]),
        ];
        let xml = render("matrix", &cases, &[("kernel".into(), "6.18".into())]).unwrap();
        assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
        assert!(xml.contains("name=\"p/x\""), "{xml}");
        assert!(xml.contains("<failure"), "{xml}");
        assert!(xml.contains("<skipped"), "{xml}");
        assert!(xml.contains("tests=\"4\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
        assert_eq!(parsed.test_suites[0].test_cases.len(), 4);
    }
}
