//! The scenario matrix: every live scenario of a directory, each in a fresh VMM process.
//!
//! Each scenario runs as `pinlab run FILE --json` (its own process: a crash, a leaked pin or a
//! stuck guest cannot spill into the next), with a deadline after which the process is killed
//! and reaped. Model-only scenarios (`live = false`) are listed and left to `pinlab replay`.
//! The verdicts are compared with each scenario's `expect.live`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::scenario::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("spawning {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
}

/// One row of the matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub file: PathBuf,
    pub live: bool,
    pub pin: String,
    pub actions: Vec<String>,
    pub expected: Option<Verdict>,
    pub verdict: Option<Verdict>,
    /// The run's reason, or its first action's evidence summary.
    pub evidence: String,
    pub seconds: f64,
    /// Verdict meets the expectation (skipped counts as met: it says why).
    pub pass: bool,
    /// The whole JSON report of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// How long one scenario may take before it is killed.
const DEADLINE: Duration = Duration::from_secs(120);

fn run_one(exe: &Path, file: &Path) -> Result<(Option<serde_json::Value>, String), Error> {
    let mut child = Command::new(exe)
        .arg("run")
        .arg(file)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok((None, format!("killed after {}s", DEADLINE.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Ok((None, format!("waiting: {e}"))),
        }
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        exe: exe.display().to_string(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str::<serde_json::Value>(stdout.trim()) {
        Ok(v) => Ok((Some(v), String::new())),
        Err(_) => Ok((
            None,
            format!(
                "no report ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
        )),
    }
}

/// Runs the matrix over `dir` with the `pinlab` binary `exe`; `progress` is called after each
/// scenario with (done, total, row).
pub fn run(
    dir: &Path,
    exe: &Path,
    mut progress: impl FnMut(usize, usize, &Row),
) -> Result<Vec<Row>, Error> {
    let files = crate::config::scenario_files(dir)?;
    let scenarios = files
        .iter()
        .map(|f| crate::config::load(Some(f)).map(|s| (f.clone(), s)))
        .collect::<Result<Vec<_>, _>>()?;
    let total = scenarios.len();
    let mut rows = Vec::new();
    for (i, (file, s)) in scenarios.into_iter().enumerate() {
        let mut row = Row {
            scenario: s.name.clone(),
            file: file.clone(),
            live: s.live,
            pin: s.device.pin.to_string(),
            actions: s.perturb.actions.iter().map(|a| a.to_string()).collect(),
            expected: s.live.then(|| s.expected_live()),
            verdict: None,
            evidence: String::new(),
            seconds: 0.0,
            pass: true,
            report: None,
        };
        if s.live {
            let start = Instant::now();
            let (report, failure) = run_one(exe, &file)?;
            row.seconds = start.elapsed().as_secs_f64();
            match report {
                Some(r) => {
                    row.verdict = r
                        .get("verdict")
                        .and_then(|v| serde_json::from_value(v.clone()).ok());
                    row.evidence = r
                        .get("reason")
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                        .or_else(|| {
                            r.pointer("/evidence/0/summary")
                                .and_then(|v| v.as_str())
                                .map(str::to_string)
                        })
                        .unwrap_or_default();
                    row.report = Some(r);
                }
                None => {
                    row.verdict = Some(Verdict::Error);
                    row.evidence = failure;
                }
            }
            row.pass = matches!(row.verdict, Some(Verdict::Skipped)) || row.verdict == row.expected;
        } else {
            row.evidence = "model only: see `pinlab replay`".into();
        }
        progress(i + 1, total, &row);
        rows.push(row);
    }
    Ok(rows)
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The terminal table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<42} {:<9} {:<22} {:<9} {:<9} {:>6}  {}\n",
        "scenario", "pin", "actions", "expected", "verdict", "secs", "evidence"
    );
    for r in rows.iter().filter(|r| r.live) {
        let mark = if r.pass { "" } else { "  <-- MISMATCH" };
        out.push_str(&format!(
            "{:<42} {:<9} {:<22} {:<9} {:<9} {:>6.2}  {}{mark}\n",
            cut(&r.scenario, 42),
            r.pin,
            cut(&r.actions.join(","), 22),
            r.expected.map_or("-".into(), |v| v.to_string()),
            r.verdict.map_or("-".into(), |v| v.to_string()),
            r.seconds,
            cut(&r.evidence, 90)
        ));
    }
    let live = rows.iter().filter(|r| r.live).count();
    let failed = rows.iter().filter(|r| !r.pass).count();
    let model = rows.len() - live;
    out.push_str(&format!(
        "{live} live scenarios: {} passed, {failed} failed ({model} model-only scenarios: `pinlab replay`)\n",
        live - failed
    ));
    out
}
