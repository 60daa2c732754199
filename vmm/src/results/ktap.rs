//! KTAP version 1, as Documentation/dev-tools/ktap.rst specifies it.
//!
//! `render` writes: the version line, the plan `1..N`, per case its diagnostics as `# ` lines
//! then its result line (`ok N name`, `not ok N name`, `ok N name # SKIP reason`); nested cases
//! are a whole KTAP block indented by two spaces before their parent's result line. Names are
//! made of `[A-Za-z0-9_-]` and unique at their level. `check` validates text against the same
//! rules (for tests, the kselftest package and fuzzing).

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{Case, Status};

/// A KTAP test name: `[A-Za-z0-9_-]` only (anything else becomes `_`), never empty.
pub fn name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if n.is_empty() {
        "unnamed".into()
    } else {
        n
    }
}

/// One diagnostic line's text: no newline, and no `#` confusion is possible after `# `.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// A SKIP's reason on one line, never empty (a SKIP says why).
fn skip_reason(why: &str) -> String {
    let why = one_line(why);
    match why.trim() {
        "" => "no reason given".to_string(),
        t => t.to_string(),
    }
}

/// Names unique at one level: a repeated name gets `-2`, `-3`, ...
fn unique_names(cases: &[Case]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    cases
        .iter()
        .map(|c| {
            let base = name(&c.name);
            let mut n = base.clone();
            let mut k = 2;
            while !seen.insert(n.clone()) {
                n = format!("{base}-{k}");
                k += 1;
            }
            n
        })
        .collect()
}

fn block(out: &mut String, cases: &[Case], depth: usize) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(out, "{pad}KTAP version 1");
    let _ = writeln!(out, "{pad}1..{}", cases.len());
    for (i, (c, n)) in cases.iter().zip(unique_names(cases)).enumerate() {
        if !c.subtests.is_empty() {
            block(out, &c.subtests, depth + 1);
        }
        for d in &c.diagnostics {
            let _ = writeln!(out, "{pad}# {}", one_line(d));
        }
        let line = match &c.status {
            Status::Pass => format!("ok {} {n}", i + 1),
            Status::Fail => format!("not ok {} {n}", i + 1),
            Status::Skip(why) => format!("ok {} {n} # SKIP {}", i + 1, skip_reason(why)),
        };
        let _ = writeln!(out, "{pad}{line}");
    }
}

/// The KTAP text of `cases`, with `header` lines (e.g. the kernel's identity) as diagnostics
/// after the plan.
pub fn render(cases: &[Case], header: &[String]) -> String {
    let mut out = String::new();
    block(&mut out, cases, 0);
    if !header.is_empty() {
        // Diagnostics may be anywhere; put the header right after the top-level plan.
        let mut lines: Vec<&str> = out.lines().collect();
        let extra: Vec<String> = header
            .iter()
            .map(|h| format!("# {}", one_line(h)))
            .collect();
        let at = 2.min(lines.len());
        let tail = lines.split_off(at);
        let mut s: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        s.extend(extra);
        s.extend(tail.iter().map(|l| l.to_string()));
        return s.join("\n") + "\n";
    }
    out
}

/// Counts from a valid KTAP document (top level only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub planned: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Why text is not KTAP v1 as pinlab writes it: the line (1-based) and the rule broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {rule}")]
pub struct Violation {
    pub line: usize,
    pub rule: String,
}

struct Level {
    indent: usize,
    plan: Option<usize>,
    next: usize,
    names: BTreeSet<String>,
    summary: Summary,
}

/// Validates `text` against KTAP v1: a version line first; a plan after every version line;
/// result lines numbered from 1 by one per level; plan counts match; subtests indented by two
/// spaces and closed by their parent's result line; names of `[A-Za-z0-9_-]`, unique per level;
/// directives only SKIP (on `ok`) with a reason.
pub fn check(text: &str) -> Result<Summary, Violation> {
    let err = |line: usize, rule: &str| Violation {
        line,
        rule: rule.to_string(),
    };
    let mut stack: Vec<Level> = Vec::new();
    let mut done: Option<Summary> = None;
    let mut expect_plan = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let indent = raw.len() - raw.trim_start_matches(' ').len();
        let line = &raw[indent..];
        if line.starts_with('#') {
            continue;
        }
        if done.is_some() {
            return Err(err(n, "text after the top-level results"));
        }
        if line == "KTAP version 1" {
            let want = stack.last().map_or(0, |l| l.indent + 2);
            if indent != want {
                return Err(err(
                    n,
                    "a version line opens a level indented two spaces more",
                ));
            }
            stack.push(Level {
                indent,
                plan: None,
                next: 1,
                names: BTreeSet::new(),
                summary: Summary::default(),
            });
            expect_plan = true;
            continue;
        }
        let Some(top) = stack.last_mut() else {
            return Err(err(n, "the document must start with `KTAP version 1`"));
        };
        if expect_plan {
            let count = line
                .strip_prefix("1..")
                .and_then(|c| c.parse::<usize>().ok())
                .filter(|_| indent == top.indent)
                .ok_or_else(|| err(n, "a plan `1..N` must follow the version line"))?;
            top.plan = Some(count);
            top.summary.planned = count;
            expect_plan = false;
            if stack.len() == 1 && count == 0 {
                // `1..0`: a complete document with no results.
                done = Some(stack[0].summary.clone());
            }
            continue;
        }
        // A result line at some level: it may close deeper levels first.
        let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
            (false, r)
        } else if let Some(r) = line.strip_prefix("ok ") {
            (true, r)
        } else {
            return Err(err(
                n,
                "expected a result line (`ok N name` / `not ok N name`)",
            ));
        };
        // The level this result belongs to: the one at this indent; a deeper one closes here.
        while stack.last().is_some_and(|l| l.indent > indent) {
            let closed = stack.pop().expect("non-empty");
            if closed.plan != Some(closed.next - 1) {
                return Err(err(n, "a subtest level ended before its plan's count"));
            }
        }
        let top = stack
            .last_mut()
            .filter(|l| l.indent == indent)
            .ok_or_else(|| err(n, "a result line must sit at its level's indentation"))?;
        let (num, after) = rest.split_once(' ').unwrap_or((rest, ""));
        let num: usize = num
            .parse()
            .map_err(|_| err(n, "a result line needs a number"))?;
        if num != top.next {
            return Err(err(n, "results must be numbered 1, 2, 3 ... at each level"));
        }
        if top.plan.is_some_and(|p| num > p) {
            return Err(err(n, "more results than the plan says"));
        }
        top.next += 1;
        let (desc, directive) = match after.split_once(" # ") {
            Some((d, dir)) => (d, Some(dir)),
            None => (after, None),
        };
        if desc.is_empty()
            || !desc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(err(n, "names are made of [A-Za-z0-9_-]"));
        }
        if !top.names.insert(desc.to_string()) {
            return Err(err(n, "names must be unique at their level"));
        }
        match directive {
            None if ok => top.summary.passed += 1,
            None => top.summary.failed += 1,
            Some(d) => match d.strip_prefix("SKIP") {
                Some(reason) if ok && !reason.trim().is_empty() => top.summary.skipped += 1,
                Some(_) if ok => return Err(err(n, "a SKIP says why")),
                _ => return Err(err(n, "the only directive pinlab writes is SKIP, on `ok`")),
            },
        }
        if stack.len() == 1 && stack[0].plan == Some(stack[0].next - 1) {
            done = Some(stack[0].summary.clone());
        }
    }
    match (done, stack.first()) {
        (Some(s), _) => Ok(s),
        (None, None) => Err(err(1, "empty document")),
        (None, Some(_)) => Err(err(
            text.lines().count(),
            "the document ended before the plan's count of results",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Case> {
        let mut a = Case::new("live-iouring-ksm", Status::Pass);
        a.diagnostics.push("expected coherent, got coherent".into());
        let b = Case::new("live vfio (pci)", Status::Skip("no VFIO\nin kernel".into()));
        let c = Case::parent(
            "default",
            vec![
                Case::new("io-uring/split-pmd", Status::Pass),
                Case::new("io-uring/split-pmd", Status::Fail),
            ],
        );
        vec![a, b, c]
    }

    #[test]
    fn renders_the_documented_shape() {
        let text = render(&sample(), &["kernel 6.18".into()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "KTAP version 1");
        assert_eq!(lines[1], "1..3");
        assert_eq!(lines[2], "# kernel 6.18");
        assert!(
            text.contains("\nok 2 live_vfio__pci_ # SKIP no VFIO in kernel\n"),
            "{text}"
        );
        assert!(text.contains("  KTAP version 1\n  1..2\n  ok 1 io-uring_split-pmd\n  not ok 2 io-uring_split-pmd-2\nnot ok 3 default\n"), "{text}");
        assert_eq!(
            check(&text),
            Ok(Summary {
                planned: 3,
                passed: 1,
                failed: 1,
                skipped: 1
            })
        );
    }

    /// Each row: a broken document and the rule `check` must name.
    #[test]
    fn check_names_the_rule_broken() {
        let rows = [
            ("1..1\nok 1 a\n", "must start"),
            ("KTAP version 1\nok 1 a\n", "plan"),
            ("KTAP version 1\n1..2\nok 1 a\n", "ended before"),
            ("KTAP version 1\n1..1\nok 2 a\n", "numbered"),
            ("KTAP version 1\n1..2\nok 1 a\nok 2 a\n", "unique"),
            ("KTAP version 1\n1..1\nok 1 a b\n", "[A-Za-z0-9_-]"),
            ("KTAP version 1\n1..1\nok 1 a # SKIP\n", "says why"),
            ("KTAP version 1\n1..1\nnot ok 1 a # TODO x\n", "directive"),
            ("KTAP version 1\n1..1\n KTAP version 1\n", "indented"),
            (
                "KTAP version 1\n1..1\n  KTAP version 1\n  1..2\n  ok 1 a\nok 1 p\n",
                "before its plan",
            ),
            (
                "KTAP version 1\n1..1\nok 1 a\nok 2 b\n",
                "after the top-level",
            ),
        ];
        for (text, rule) in rows {
            let e = check(text).expect_err(text);
            assert!(e.rule.contains(rule), "{text:?}: {e}");
        }
    }

    /// Found by fuzzing (`check(render(cases))` must hold for any cases): a skip with an empty
    /// or blank reason rendered `# SKIP ` (refused: a SKIP says why), and no cases at all
    /// rendered `1..0`, which the checker took for a document ending early.
    #[test]
    fn blank_skips_and_empty_plans_render_valid_ktap() {
        let cases = vec![
            Case::new("a", Status::Skip(String::new())),
            Case::new("b", Status::Skip(" \n\r ".into())),
        ];
        let text = render(&cases, &[]);
        assert!(text.contains("ok 1 a # SKIP no reason given\n"), "{text}");
        assert_eq!(check(&text).map(|s| s.skipped), Ok(2), "{text}");
        for header in [vec![], vec!["kernel 6.18".to_string()]] {
            let empty = render(&[], &header);
            assert_eq!(check(&empty), Ok(Summary::default()), "{empty:?}");
        }
        assert!(
            check("KTAP version 1\n1..0\nok 1 a\n").is_err(),
            "results past 1..0"
        );
    }

    #[test]
    fn names_are_sanitized_and_never_empty() {
        assert_eq!(name("a b/c.d"), "a_b_c_d");
        assert_eq!(name(""), "unnamed");
        assert_eq!(name("ok-1_x"), "ok-1_x");
    }
}
