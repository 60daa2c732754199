//! The scenario matrix: every live scenario of a directory (or every embedded one), each in a
//! fresh VMM process.
//!
//! Each scenario runs as `pinlab run SCENARIO --json` (its own process: a crash, a leaked pin or
//! a stuck guest cannot spill into the next). Its output is drained while it runs (a large report
//! cannot fill the pipe and stall it), it has a deadline after which it is sent SIGTERM (so it
//! restores the host state it changed), then SIGKILL, and it is always reaped. A `Stop` handle
//! lets the caller forward SIGINT/SIGTERM to the running child and end the matrix early.
//! Model-only scenarios (`live = false`) are listed and left to `pinlab replay`. Verdicts are
//! compared with each scenario's `expect.live`. With a trace directory, each child gets
//! `--trace DIR/<scenario>.json`: one trace per scenario.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Loaded, Origin};
use crate::identity::Identity;
use crate::results::{Case, Status};
use crate::scenario::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("writing the generated scenario {path}: {source}")]
    WriteScenario {
        path: String,
        source: std::io::Error,
    },
    #[error("serializing the generated scenario {name}: {source}")]
    SerializeScenario {
        name: String,
        source: toml::ser::Error,
    },
    #[error("spawning {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
}

/// One row of the matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub origin: Origin,
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
    /// The whole JSON result of the run, as the child printed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// A whole matrix, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Matrix {
    /// Always "matrix": what kind of pinlab result this is.
    pub kind: &'static str,
    pub identity: Identity,
    pub rows: Vec<Row>,
    /// Set when a signal ended the matrix before every scenario ran.
    pub interrupted: Option<i32>,
}

/// How long one scenario may take before it is stopped.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// How long a child has to restore host state after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Shared with a signal-forwarding thread: the running child's PID and whether to stop.
#[derive(Debug, Default)]
pub struct Stop {
    child: AtomicI32,
    signal: AtomicI32,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the matrix: forwards `signal` to the running child (ours, by PID) and runs no
    /// more scenarios.
    pub fn signal(&self, signal: i32) {
        self.signal.store(signal, Ordering::Release);
        let pid = self.child.load(Ordering::Acquire);
        if pid > 0 {
            // SAFETY: kill(2) of the child this matrix spawned and has not reaped yet (the PID
            // is cleared before the child is reaped, so it cannot have been reused).
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// The signal that stopped the matrix, if any.
    pub fn stopped(&self) -> Option<i32> {
        match self.signal.load(Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }
}

/// Reads a pipe to the end on its own thread.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` until it exits or `deadline` passes (then SIGTERM, a grace period, SIGKILL);
/// `None` if it had to be stopped. Always reaps it.
fn wait_with_deadline(child: &mut Child, deadline: Duration, stop: &Stop) -> Option<String> {
    let start = Instant::now();
    let mut termed: Option<Instant> = None;
    let mut why = None;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => {
                why = Some(format!("waiting: {e}"));
                let _ = child.kill();
                break;
            }
        }
        match termed {
            None if start.elapsed() > deadline => {
                why = Some(format!("stopped after {}s (deadline)", deadline.as_secs()));
                // SAFETY: kill(2) of our unreaped child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                termed = Some(Instant::now());
            }
            Some(t) if t.elapsed() > GRACE => {
                let _ = child.kill();
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.child.store(0, Ordering::Release);
    let _ = child.wait();
    why
}

/// A generated scenario written for its child: a file of this process's own, created new
/// (never an existing one) and removed when dropped.
struct TempScenario(std::path::PathBuf);

impl TempScenario {
    fn write(l: &Loaded) -> Result<Self, Error> {
        use std::io::Write;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let text = toml::to_string(&l.scenario).map_err(|source| Error::SerializeScenario {
            name: l.scenario.name.clone(),
            source,
        })?;
        let path = std::env::temp_dir().join(format!(
            "pinlab-generated-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let err = |source| Error::WriteScenario {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(err)?;
        let file = TempScenario(path.clone());
        f.write_all(text.as_bytes()).map_err(err)?;
        Ok(file)
    }
}

impl Drop for TempScenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs one scenario in a child, traced to `trace` when given; (its JSON result, why there is
/// none).
fn run_one(
    exe: &std::path::Path,
    l: &Loaded,
    trace: Option<&std::path::Path>,
    stop: &Stop,
) -> Result<(Option<serde_json::Value>, String), Error> {
    let mut _generated = None;
    let arg = match &l.origin {
        Origin::File(p) => p.clone().into_os_string(),
        Origin::Embedded(name) => (*name).into(),
        Origin::Generated(_) => {
            let t = TempScenario::write(l)?;
            let p = t.0.clone().into_os_string();
            _generated = Some(t);
            p
        }
    };
    let mut command = Command::new(exe);
    command.arg("run").arg(arg).arg("--json");
    if let Some(file) = trace {
        command.arg("--trace").arg(file);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
    stop.child.store(child.id() as i32, Ordering::Release);
    if let Some(sig) = stop.stopped() {
        // The signal came between the check and the spawn: this child gets it too.
        // SAFETY: kill(2) of our unreaped child.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let stopped = wait_with_deadline(&mut child, DEADLINE, stop);
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let text = String::from_utf8_lossy(&stdout);
    match serde_json::from_str::<serde_json::Value>(text.trim()) {
        Ok(v) => Ok((Some(v), stopped.unwrap_or_default())),
        Err(_) => Ok((
            None,
            stopped.unwrap_or_else(|| {
                format!(
                    "no result: {}",
                    String::from_utf8_lossy(&stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                )
            }),
        )),
    }
}

/// Runs the matrix over `set` with the `pinlab` binary `exe`; `progress` is called after each
/// scenario with (done, total, row). With `trace_dir`, each live scenario is traced to
/// `trace_dir/<scenario>.json` (`trace::matrix_trace_path`; the caller checked the directory
/// with `trace::check_dir`). A signal through `stop` ends it early.
pub fn run(
    set: Vec<Loaded>,
    exe: &std::path::Path,
    trace_dir: Option<&std::path::Path>,
    stop: &Stop,
    mut progress: impl FnMut(usize, usize, &Row),
) -> Result<Matrix, Error> {
    let total = set.len();
    let mut rows = Vec::new();
    for (i, l) in set.into_iter().enumerate() {
        if stop.stopped().is_some() {
            break;
        }
        let s = &l.scenario;
        let mut row = Row {
            scenario: s.name.clone(),
            origin: l.origin.clone(),
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
            let trace = trace_dir.map(|d| crate::trace::matrix_trace_path(d, &s.name));
            let (report, failure) = run_one(exe, &l, trace.as_deref(), stop)?;
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
    Ok(Matrix {
        kind: "matrix",
        identity: Identity::of_this_host(),
        rows,
        interrupted: stop.stopped(),
    })
}

impl Row {
    /// The row as a test case (live rows only).
    pub fn case(&self) -> Case {
        let status = match self.verdict {
            Some(Verdict::Skipped) => Status::Skip(self.evidence.clone()),
            _ if self.pass => Status::Pass,
            _ => Status::Fail,
        };
        let mut c = Case::new(&self.scenario, status);
        c.seconds = Some(self.seconds);
        c.diagnostics.push(format!(
            "{}: expected {}, got {}",
            self.scenario,
            self.expected.map_or("-".into(), |v| v.to_string()),
            self.verdict.map_or("-".into(), |v| v.to_string())
        ));
        if !self.evidence.is_empty() && self.verdict != Some(Verdict::Skipped) {
            c.diagnostics.push(self.evidence.clone());
        }
        c
    }
}

impl Matrix {
    /// One test case per live scenario.
    pub fn cases(&self) -> Vec<Case> {
        self.rows.iter().filter(|r| r.live).map(Row::case).collect()
    }
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
pub fn table(m: &Matrix) -> String {
    let rows = &m.rows;
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
    if let Some(sig) = m.interrupted {
        out.push_str(&format!(
            "interrupted by signal {sig}: the rest did not run\n"
        ));
    }
    out
}
