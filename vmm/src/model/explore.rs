//! The explorer: every interleaving of a program's concurrent threads, breadth-first with a
//! visited set, stopping at the first broken invariant. A SIMULATION's search, not a kernel's.
//!
//! Why breadth-first: the first violation found is at the smallest number of interleaved steps,
//! so the trace printed is a shortest one without a second search; the state spaces of the seeds'
//! races are tiny (tens to hundreds of states), so BFS's memory is no concern. Each state is
//! stored once (in discovery order, which is also the BFS queue) and hashed once with the
//! in-crate `FxHasher`; the visited map goes from a hash to the nodes with that hash, and a hit
//! compares whole states (exact: no false "already seen" from a hash collision).
//!
//! A program is `setup` (run once, in order), `threads` (interleaved), `after` (run in order once
//! every thread is done, on every terminal state). A trace is replayed from the start with
//! logging on, so exploring never formats a string.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::era::Era;
use super::invariant::Invariant;
use super::ops::{self, Ctx, Flow, Log, Op, RoundSpec, Stop, Variant};
use super::rules::Feature;
use super::state::{state_hash, FxBuild, State, SLOTS, SUBS, THREADS};

/// What the explorer runs.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub setup: Vec<Op>,
    /// Thread names and their ops.
    pub threads: Vec<(String, Vec<Op>)>,
    pub after: Vec<Op>,
    pub round: RoundSpec,
    pub variant: Variant,
}

impl Program {
    /// Every feature an op of the program needs ([`Op::needs`]), in `Feature` order. Under an
    /// era that lacks one of them the program is `n/a`; under any other it is not.
    pub fn needs(&self) -> Vec<Feature> {
        let mut v: Vec<Feature> = self
            .setup
            .iter()
            .chain(self.threads.iter().flat_map(|(_, ops)| ops))
            .chain(&self.after)
            .filter_map(Op::needs)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// What the model concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conclusion {
    Coherent,
    /// A data invariant broke (the live executor's `diverged`).
    Diverged(Invariant),
    /// A structural invariant broke.
    Broken(Invariant),
    /// The era lacks a feature the scenario needs.
    NotApplicable(Feature),
}

/// The result of exploring one program under one era.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub conclusion: Conclusion,
    /// `FINDING_*` bits seen on any complete run.
    pub findings: u8,
    /// The steps of the violating run (shortest), or of the first complete run.
    pub trace: Option<Vec<String>>,
    /// Distinct states visited.
    pub states: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("explore: {0}")]
    Model(Stop),
    #[error("explore: deadlock: no thread can step ({0})")]
    Deadlock(String),
    #[error("explore: {0} threads, the model has room for {THREADS}")]
    TooManyThreads(usize),
}

fn initial() -> State {
    State {
        guest_base: 0,
        guest_len: (SUBS * 2) as u8,
        ..State::default()
    }
}

fn ctx<'a>(prog: &'a Program, era: Era, tid: usize) -> Ctx<'a> {
    Ctx {
        rules: era.rules(),
        variant: prog.variant,
        round: &prog.round,
        tid,
    }
}

enum Run {
    Ok,
    Stopped(Stop),
}

/// Runs ops in order on thread `tid` until each is done; logs into `trace` when given.
fn run_seq(
    s: &mut State,
    prog: &Program,
    era: Era,
    ops: &[Op],
    tid: usize,
    label: &str,
    mut trace: Option<&mut Vec<String>>,
) -> Result<Run, Error> {
    let c = ctx(prog, era, tid);
    s.threads[tid] = Default::default();
    while (s.threads[tid].pc as usize) < ops.len() {
        let op = &ops[s.threads[tid].pc as usize];
        let mut log = Log {
            on: trace.is_some(),
            notes: Vec::new(),
        };
        let res = ops::step(s, &c, op, &mut log);
        if let Some(t) = trace.as_deref_mut() {
            t.push(format!(
                "[{label}] {}: {}",
                ops::op_name(op),
                log.notes.join("; ")
            ));
        }
        match res {
            Ok(Flow::Blocked) => {
                return Err(Error::Deadlock(format!(
                    "{label}: `{}` blocked",
                    ops::op_name(op)
                )))
            }
            Ok(_) => {}
            Err(stop @ (Stop::Broken(_) | Stop::NotApplicable(_))) => {
                return Ok(Run::Stopped(stop))
            }
            Err(e) => return Err(Error::Model(e)),
        }
    }
    s.threads[tid] = Default::default();
    Ok(Run::Ok)
}

fn conclude(stop: Stop) -> Result<Conclusion, Error> {
    match stop {
        Stop::Broken(i) if i.is_data() => Ok(Conclusion::Diverged(i)),
        Stop::Broken(i) => Ok(Conclusion::Broken(i)),
        Stop::NotApplicable(why) => Ok(Conclusion::NotApplicable(why)),
        e => Err(Error::Model(e)),
    }
}

fn done(s: &State, prog: &Program, t: usize) -> bool {
    s.threads[t].pc as usize >= prog.threads[t].1.len()
}

/// Explores `prog` under `era`. With `want_trace`, the outcome carries a readable trace.
pub fn explore(prog: &Program, era: Era, want_trace: bool) -> Result<Outcome, Error> {
    if prog.threads.len() > THREADS {
        return Err(Error::TooManyThreads(prog.threads.len()));
    }
    const { assert!(SLOTS >= SUBS * 2) };
    let mut root = initial();
    if let Run::Stopped(stop) = run_seq(&mut root, prog, era, &prog.setup, 0, "setup", None)? {
        return finish(prog, era, want_trace, conclude(stop)?, Vec::new(), 1, 0);
    }
    // BFS. Node `i` is `states[i]`, reached from `nodes[i]` = (parent, thread that stepped).
    // Nodes are appended in discovery order, so the queue is `head..states.len()`. `by_hash`
    // maps a state's hash to the newest node with that hash, `same_hash[i]` to the previous one:
    // each state is stored once, hashed once, and a lookup compares whole states (exact).
    let mut nodes: Vec<(u32, u8)> = vec![(u32::MAX, 0)];
    let mut by_hash: HashMap<u64, u32, FxBuild> = HashMap::default();
    by_hash.insert(state_hash(&root), 0);
    let mut same_hash: Vec<u32> = vec![u32::MAX];
    let mut states: Vec<State> = vec![root];
    let mut findings = 0u8;
    let mut first_terminal: Option<u32> = None;
    let mut head = 0usize;
    while head < states.len() {
        let id = head as u32;
        head += 1;
        let mut any = false;
        let mut all_done = true;
        for t in 0..prog.threads.len() {
            if done(&states[id as usize], prog, t) {
                continue;
            }
            all_done = false;
            // The successor is built in place at the end of `states` and popped if not new.
            states.push(states[id as usize].clone());
            let next = states.last_mut().unwrap_or_else(|| unreachable!());
            let op = &prog.threads[t].1[next.threads[t].pc as usize];
            let res = ops::step(next, &ctx(prog, era, t), op, &mut Log::default());
            match res {
                Ok(Flow::Blocked) => {
                    states.pop();
                    continue;
                }
                Ok(_) => {
                    any = true;
                    let nid = states.len() as u32 - 1;
                    let (next, old) = states.split_last().unwrap_or_else(|| unreachable!());
                    let prev = match by_hash.entry(state_hash(next)) {
                        Entry::Vacant(v) => {
                            v.insert(nid);
                            u32::MAX
                        }
                        Entry::Occupied(mut o) => {
                            let mut j = *o.get();
                            while j != u32::MAX && old[j as usize] != *next {
                                j = same_hash[j as usize];
                            }
                            if j != u32::MAX {
                                states.pop();
                                continue;
                            }
                            o.insert(nid)
                        }
                    };
                    nodes.push((id, t as u8));
                    same_hash.push(prev);
                }
                Err(stop @ (Stop::Broken(_) | Stop::NotApplicable(_))) => {
                    let mut path = path_to(&nodes, id);
                    path.push(t as u8);
                    states.pop();
                    let states = states.len();
                    return finish(
                        prog,
                        era,
                        want_trace,
                        conclude(stop)?,
                        path,
                        states,
                        findings,
                    );
                }
                Err(e) => return Err(Error::Model(e)),
            }
        }
        let s = &states[id as usize];
        if all_done {
            let mut end = s.clone();
            match run_seq(&mut end, prog, era, &prog.after, 0, "after", None)? {
                Run::Ok => {
                    findings |= end.findings;
                    first_terminal.get_or_insert(id);
                }
                Run::Stopped(stop) => {
                    let path = path_to(&nodes, id);
                    let states = states.len();
                    return finish(
                        prog,
                        era,
                        want_trace,
                        conclude(stop)?,
                        path,
                        states,
                        findings,
                    );
                }
            }
        } else if !any {
            let who: Vec<_> = (0..prog.threads.len())
                .filter(|&t| !done(s, prog, t))
                .map(|t| prog.threads[t].0.clone())
                .collect();
            return Err(Error::Deadlock(format!("waiting: {}", who.join(", "))));
        }
    }
    let path = first_terminal
        .map(|id| path_to(&nodes, id))
        .unwrap_or_default();
    let states = states.len();
    finish(
        prog,
        era,
        want_trace,
        Conclusion::Coherent,
        path,
        states,
        findings,
    )
}

fn path_to(nodes: &[(u32, u8)], mut id: u32) -> Vec<u8> {
    let mut path = Vec::new();
    while id != 0 {
        let (parent, t) = nodes[id as usize];
        path.push(t);
        id = parent;
    }
    path.reverse();
    path
}

/// Replays `path` with logging to build the trace, and packs the outcome.
fn finish(
    prog: &Program,
    era: Era,
    want_trace: bool,
    conclusion: Conclusion,
    path: Vec<u8>,
    states: usize,
    findings: u8,
) -> Result<Outcome, Error> {
    let mut findings = findings;
    let trace = if want_trace {
        let mut lines = Vec::new();
        let mut s = initial();
        let mut stopped = matches!(
            run_seq(&mut s, prog, era, &prog.setup, 0, "setup", Some(&mut lines))?,
            Run::Stopped(_)
        );
        if !stopped {
            for &t in &path {
                let t = t as usize;
                let op = &prog.threads[t].1[s.threads[t].pc as usize];
                let mut log = Log {
                    on: true,
                    notes: Vec::new(),
                };
                let res = ops::step(&mut s, &ctx(prog, era, t), op, &mut log);
                lines.push(format!(
                    "[{}] {}: {}",
                    prog.threads[t].0,
                    ops::op_name(op),
                    log.notes.join("; ")
                ));
                if res.is_err() {
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped && (0..prog.threads.len()).all(|t| done(&s, prog, t)) {
            run_seq(&mut s, prog, era, &prog.after, 0, "after", Some(&mut lines))?;
            findings |= s.findings;
        }
        Some(lines)
    } else {
        None
    };
    let trace = match conclusion {
        Conclusion::NotApplicable(_) => None,
        _ => trace,
    };
    Ok(Outcome {
        conclusion,
        findings,
        trace,
        states,
    })
}

/// Synthetic programs with thousands of interleavings, built from the seeds' ops, so the
/// benchmark measures the per-state cost (clone, step, invariant, hash, visited set) rather than
/// the per-exploration setup that dominates the seeds' 7-26-state races.
pub fn stress_programs() -> Vec<(&'static str, Program)> {
    fn ops(steps: &[&str]) -> Vec<Op> {
        steps
            .iter()
            .map(|t| ops::parse_op(t).unwrap_or_else(|e| panic!("{t}: {e}")))
            .collect()
    }
    let gup_fast_x3 = Program {
        setup: ops(&["mmap 0..12", "swapout 0", "swapout 4"]),
        threads: vec![
            (
                "reclaim".into(),
                ops(&["try-to-unmap 0", "try-to-unmap 4", "write 8", "write 9"]),
            ),
            (
                "dio".into(),
                ops(&[
                    "gup-fast pin write 0",
                    "gup-fast get write 4",
                    "gup-fast pin read 1",
                ]),
            ),
            (
                "guest".into(),
                ops(&[
                    "write 1", "write 2", "write 3", "write 5", "write 6", "write 7", "read 1",
                    "read 2",
                ]),
            ),
        ],
        after: ops(&["round"]),
        round: RoundSpec {
            offs: vec![0],
            ..RoundSpec::default()
        },
        variant: Variant::default(),
    };
    // Seed 004's KSM race, with a forked child writing and reading (two live processes, COW
    // faults, anon_vma chains) as a third thread.
    let ksm_fork_x3 = Program {
        setup: ops(&["mmap 0..4", "fork"]),
        threads: vec![
            ("ksm".into(), ops(&["ksm 0", "ksm 1", "ksm 2"])),
            (
                "dio".into(),
                ops(&["gup-fast pin write 0", "gup-fast get write 1"]),
            ),
            (
                "child".into(),
                ops(&[
                    "child write 2",
                    "child write 3",
                    "child read 2",
                    "child read 0",
                    "child write 1",
                    "child read 3",
                ]),
            ),
        ],
        after: ops(&["round"]),
        round: RoundSpec {
            offs: vec![0],
            ..RoundSpec::default()
        },
        variant: Variant::default(),
    };
    vec![
        ("stress-seed000-gup-fast-x3", gup_fast_x3),
        ("stress-seed004-ksm-fork-x3", ksm_fork_x3),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stress programs' state counts, as the explorer with the derived hash and a map keyed
    /// by whole states found them: a deduplication that merged distinct states (or kept equal
    /// ones apart) would change them.
    #[test]
    fn stress_state_counts_are_exact() {
        let want = [
            ("stress-seed000-gup-fast-x3", "3.7-4.4", 4436),
            ("stress-seed000-gup-fast-x3", "6.1+", 2463),
            ("stress-seed004-ksm-fork-x3", "3.7-4.4", 4074),
            ("stress-seed004-ksm-fork-x3", "6.1+", 4074),
        ];
        let progs = stress_programs();
        for (name, era, states) in want {
            let prog = &progs.iter().find(|(n, _)| *n == name).unwrap().1;
            let o = explore(prog, era.parse().unwrap(), false).unwrap();
            assert_eq!(o.conclusion, Conclusion::Coherent, "{name} @ {era}");
            assert_eq!(o.states, states, "{name} @ {era}");
        }
    }
}
