//! `pinlab diff A.json B.json`: what changed between two results (the library's `diff`
//! compares), printed as text, JSON or KTAP. Exit 1 on a regression, 0 otherwise, 2 when the
//! files are not pinlab results or share no scenario.

use std::path::Path;
use std::process::ExitCode;

use pinlab::results::ktap;

use super::args::{Format, OutputArgs};
use super::usage_error;

pub fn cmd_diff(a: &Path, b: &Path, out: OutputArgs) -> ExitCode {
    let d = match pinlab::diff::load(a)
        .and_then(|ra| pinlab::diff::load(b).and_then(|rb| pinlab::diff::compare(ra, rb)))
    {
        Ok(d) => d,
        Err(e) => return usage_error(format!("diff: {e}")),
    };
    match out.format() {
        Format::Human => print!("{}", d.human()),
        Format::Json | Format::Jsonl => match serde_json::to_string(&d) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage_error(format!("diff: serializing: {e}")),
        },
        Format::Ktap => print!("{}", ktap::render(&d.cases(), &d.header())),
        Format::Junit => {
            return usage_error("diff: --format junit is not offered (human, json, ktap)")
        }
    }
    ExitCode::from(if d.regressions > 0 { 1 } else { 0 })
}
