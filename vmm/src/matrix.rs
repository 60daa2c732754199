//! The scenario matrix: every live scenario of a directory (or every embedded one), each in a
//! fresh VMM process.
//!
//! Each scenario runs as `pinlab run SCENARIO --json` (its own process: a crash, a leaked pin or
//! a stuck guest cannot spill into the next), up to `jobs` at once: rows that change system-wide
//! state take the system lock in their own process (`host::SystemLock`), as concurrent runs on
//! one machine always do, so they still run one at a time while the others run beside them. A
//! child's output is drained while it runs (a large report cannot fill the pipe and stall it),
//! it has a deadline after which it is sent SIGTERM (so it restores the host state it changed),
//! then SIGKILL, and it is always reaped. A `Stop` handle lets the caller forward SIGINT/SIGTERM
//! to every running child and end the matrix early.
//! Model-only scenarios (`live = false`) are listed and left to `pinlab replay`. Verdicts are
//! compared with each scenario's `expect.live`. With a trace directory, each child gets
//! `--trace DIR/<scenario>.json`: one trace per scenario.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;
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

/// Shared with a signal-forwarding thread: the running children's PIDs and whether to stop.
#[derive(Debug, Default)]
pub struct Stop {
    /// PIDs of the children spawned and not yet reaped; a PID leaves before its child is
    /// reaped, under this lock, so a signal never reaches a reused PID.
    children: Mutex<Vec<i32>>,
    signal: AtomicI32,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    fn children(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the matrix: forwards `signal` to every running child (ours, by PID) and runs no
    /// more scenarios.
    pub fn signal(&self, signal: i32) {
        self.signal.store(signal, Ordering::Release);
        for &pid in self.children().iter() {
            // SAFETY: kill(2) of a child this matrix spawned and has not reaped yet (its PID
            // leaves the list, under the lock held here, before it is reaped).
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

    /// Records a child just spawned; a signal that came before it is forwarded to it now.
    fn track(&self, pid: i32) {
        let mut children = self.children();
        children.push(pid);
        if let Some(sig) = self.stopped() {
            // SAFETY: kill(2) of our unreaped child.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Forgets a child about to be reaped.
    fn untrack(&self, pid: i32) {
        self.children().retain(|&p| p != pid);
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

/// Whether `child` has exited, leaving it unreaped (waitid with WNOWAIT), so its PID stays
/// ours until [`Stop::untrack`] and the reap after it.
fn exited(child: &Child) -> std::io::Result<bool> {
    // SAFETY: an all-zero siginfo_t is valid storage for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child's PID, writing only `info`.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            child.id(),
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info`; si_pid is 0 when no child has exited yet.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Waits for `child` until it exits or `deadline` passes (then SIGTERM, a grace period, SIGKILL);
/// `None` if it had to be stopped. Always reaps it.
fn wait_with_deadline(child: &mut Child, deadline: Duration, stop: &Stop) -> Option<String> {
    let start = Instant::now();
    let mut termed: Option<Instant> = None;
    let mut why = None;
    loop {
        match exited(child) {
            Ok(true) => break,
            Ok(false) => {}
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
    stop.untrack(child.id() as i32);
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
    stop.track(child.id() as i32);
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

/// How many scenarios a matrix runs at once by default: one per CPU.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs the matrix over `set` with the `pinlab` binary `exe`, up to `jobs` scenarios at once;
/// `progress` is called as each scenario finishes with (done, total, row). With `trace_dir`,
/// each live scenario is traced to `trace_dir/<scenario>.json` (`trace::matrix_trace_path`; the
/// caller checked the directory with `trace::check_dir`). A signal through `stop` ends it
/// early: the rows are those that finished, in `set`'s order.
pub fn run(
    set: Vec<Loaded>,
    exe: &std::path::Path,
    trace_dir: Option<&std::path::Path>,
    stop: &Stop,
    jobs: usize,
    progress: impl FnMut(usize, usize, &Row),
) -> Result<Matrix, Error> {
    let rows = run_each(&set, exe, trace_dir, stop, jobs, progress)?;
    Ok(Matrix {
        kind: "matrix",
        identity: Identity::of_this_host(),
        rows: rows.into_iter().map(|(_, row)| row).collect(),
        interrupted: stop.stopped(),
    })
}

/// As [`run`]: the rows that finished, each with its index in `set`, in that order.
pub fn run_each(
    set: &[Loaded],
    exe: &std::path::Path,
    trace_dir: Option<&std::path::Path>,
    stop: &Stop,
    jobs: usize,
    mut progress: impl FnMut(usize, usize, &Row),
) -> Result<Vec<(usize, Row)>, Error> {
    let total = set.len();
    let next = AtomicUsize::new(0);
    let mut rows: Vec<Option<Row>> = vec![None; total];
    let mut failed = None;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<Row, Error>)>();
        for _ in 0..jobs.clamp(1, total.max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                if stop.stopped().is_some() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(l) = set.get(i) else { break };
                let row = run_row(l, exe, trace_dir, stop);
                let fatal = row.is_err();
                // The receiver lives until every worker is done.
                let _ = tx.send((i, row));
                if fatal {
                    // No more scenarios: the others stop at their next pick.
                    next.store(total, Ordering::Relaxed);
                    break;
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, row) in rx {
            match row {
                Ok(row) => {
                    done += 1;
                    progress(done, total, &row);
                    rows[i] = Some(row);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(rows
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect())
}

/// One scenario's row: run live in a child, or listed (model only).
fn run_row(
    l: &Loaded,
    exe: &std::path::Path,
    trace_dir: Option<&std::path::Path>,
    stop: &Stop,
) -> Result<Row, Error> {
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
    if !s.live {
        row.evidence = "model only: see `pinlab replay`".into();
        return Ok(row);
    }
    let start = Instant::now();
    let trace = trace_dir.map(|d| crate::trace::matrix_trace_path(d, &s.name));
    let (report, failure) = run_one(exe, l, trace.as_deref(), stop)?;
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
    Ok(row)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A stand-in for the `pinlab` binary: `exe run NAME --json` logs `start NAME`, marks itself
    /// running in `dir` and waits (up to 10 s) until `peers` children are marked, logs `end NAME`
    /// and prints a coherent result; on SIGTERM it logs `term NAME` and exits without one.
    fn fake_pinlab(dir: &Path, peers: usize) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let exe = dir.join("pinlab");
        let script = format!(
            r#"#!/bin/sh
d='{dir}'
trap 'echo "term $2" >> "$d/log"; exit 143' TERM
echo "start $2" >> "$d/log"
touch "$d/running.$$"
i=0
while [ "$(ls "$d" | grep -c '^running\.')" -lt {peers} ] && [ $i -lt 1000 ]; do
  sleep 0.01
  i=$((i + 1))
done
echo "end $2" >> "$d/log"
echo '{{"verdict":"coherent"}}'
"#,
            dir = dir.display()
        );
        std::fs::write(&exe, script).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    fn live_set(n: usize) -> Vec<Loaded> {
        let set: Vec<Loaded> = crate::config::load_set(None)
            .unwrap()
            .into_iter()
            .filter(|l| l.scenario.live)
            .take(n)
            .collect();
        assert_eq!(set.len(), n);
        set
    }

    fn log(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Most children alive at once, from the log.
    fn most_at_once(log: &[String]) -> usize {
        let (mut now, mut most) = (0usize, 0);
        for l in log {
            if l.starts_with("start ") {
                now += 1;
                most = most.max(now);
            } else {
                now = now.saturating_sub(1);
            }
        }
        most
    }

    /// With `jobs` = 2, two children run at once (each waits until two are running, so one at
    /// a time would leave each waiting out its 10 s and the log would show one at a time),
    /// never three, every scenario runs once, and the rows keep the set's order whatever order
    /// they finished in.
    #[test]
    fn jobs_run_at_once_and_rows_keep_the_set_order() {
        let dir = tempfile::tempdir().unwrap();
        let exe = fake_pinlab(dir.path(), 2);
        let set = live_set(4);
        let stop = Stop::new();
        let mut seen = Vec::new();
        let rows = run_each(&set, &exe, None, &stop, 2, |done, total, row| {
            assert_eq!(total, 4);
            seen.push((done, row.scenario.clone()));
        })
        .unwrap();
        let names: Vec<&str> = set.iter().map(|l| l.scenario.name.as_str()).collect();
        let got: Vec<&str> = rows.iter().map(|(_, r)| r.scenario.as_str()).collect();
        assert_eq!(got, names);
        assert_eq!(
            rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(rows
            .iter()
            .all(|(_, r)| r.verdict == Some(Verdict::Coherent)));
        assert_eq!(
            seen.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let log = log(dir.path());
        assert_eq!(log.len(), 8, "{log:?}");
        assert_eq!(most_at_once(&log), 2, "{log:?}");
    }

    /// A signal reaches every running child, and no scenario starts after it: of four
    /// scenarios at two jobs, the two running get SIGTERM (and, with no result, are errors);
    /// the other two never start.
    #[test]
    fn a_signal_reaches_every_running_child_and_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        // Waits for three peers, which never come: only a signal ends them early.
        let exe = fake_pinlab(dir.path(), 3);
        let set = live_set(4);
        let stop = Stop::new();
        let rows = std::thread::scope(|scope| {
            let worker = scope.spawn(|| run_each(&set, &exe, None, &stop, 2, |_, _, _| ()));
            let started = Instant::now();
            while log(dir.path()).len() < 2 && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Both children are marked running once both logged their start.
            while stop.children().len() < 2 && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.signal(libc::SIGTERM);
            worker.join().unwrap()
        })
        .unwrap();
        assert_eq!(stop.stopped(), Some(libc::SIGTERM));
        let log = log(dir.path());
        let terms = log.iter().filter(|l| l.starts_with("term ")).count();
        assert_eq!(terms, 2, "{log:?}");
        assert_eq!(
            log.iter().filter(|l| l.starts_with("start ")).count(),
            2,
            "{log:?}"
        );
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|(_, r)| r.verdict == Some(Verdict::Error)));
        assert!(stop.children().is_empty());
    }
}
