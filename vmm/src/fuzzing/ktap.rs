//! Target `ktap`: the KTAP checker on arbitrary text (it answers, never panics, and a document
//! it accepts adds up), and `check(render(cases))` for arbitrary cases (whatever names, reasons,
//! diagnostics and nesting the cases have, pinlab's own output is valid KTAP and its summary
//! counts the top-level cases).

use arbitrary::{Arbitrary, Unstructured};

use super::run;
use crate::results::ktap::{check, render, Summary};
use crate::results::{Case, Status};

const MAX_DEPTH: usize = 3;
const MAX_CASES: usize = 6;

/// Text that is KTAP-like more often than random: lines from pinlab's own vocabulary.
fn ktap_like(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let pieces = [
        "KTAP version 1",
        "1..",
        "ok ",
        "not ok ",
        "# ",
        " # SKIP ",
        "  ",
        "\n",
        "a",
        "1",
        "2",
        "-",
        "\r\n",
    ];
    let mut s = String::new();
    for _ in 0..u.int_in_range(0..=64)? {
        if u.ratio(1, 8)? {
            s.push_str(<&str>::arbitrary(u)?);
        } else {
            s.push_str(u.choose(&pieces)?);
        }
    }
    Ok(s)
}

fn text(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => String::new(),
        1 => u
            .choose(&["", " ", "\n", "#", " # SKIP", "ok 1 a", "\r"])?
            .to_string(),
        _ => <&str>::arbitrary(u)?.to_string(),
    })
}

fn cases(u: &mut Unstructured<'_>, depth: usize) -> arbitrary::Result<Vec<Case>> {
    let n = u.int_in_range(0..=MAX_CASES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = text(u)?;
        let status = match u.int_in_range(0..=2u8)? {
            0 => Status::Pass,
            1 => Status::Fail,
            _ => Status::Skip(text(u)?),
        };
        let mut c = Case::new(name, status);
        for _ in 0..u.int_in_range(0..=2)? {
            c.diagnostics.push(text(u)?);
        }
        if depth < MAX_DEPTH && u.ratio(1, 3)? {
            let sub = cases(u, depth + 1)?;
            c = Case {
                diagnostics: c.diagnostics,
                ..Case::parent(c.name, sub)
            };
        }
        out.push(c);
    }
    Ok(out)
}

/// The checker on arbitrary text; then pinlab's renderer on arbitrary cases.
pub fn ktap(data: &[u8]) {
    run(data, |u| {
        if u.ratio(1, 2)? {
            let t = if u.ratio(1, 2)? {
                ktap_like(u)?
            } else {
                <&str>::arbitrary(u)?.to_string()
            };
            if let Ok(s) = check(&t) {
                assert_eq!(s.passed + s.failed + s.skipped, s.planned, "{t:?}: {s:?}");
            }
            return Ok(());
        }
        let cs = cases(u, 0)?;
        let header: Vec<String> = (0..u.int_in_range(0..=2)?)
            .map(|_| text(u))
            .collect::<arbitrary::Result<_>>()?;
        let doc = render(&cs, &header);
        let want = Summary {
            planned: cs.len(),
            passed: cs.iter().filter(|c| c.status == Status::Pass).count(),
            failed: cs.iter().filter(|c| c.status == Status::Fail).count(),
            skipped: cs
                .iter()
                .filter(|c| matches!(c.status, Status::Skip(_)))
                .count(),
        };
        assert_eq!(check(&doc), Ok(want), "{cs:?}\n{doc}");
        Ok(())
    });
}
