//! The watchdog's decision: whether a run must be stopped, as a pure function of time and the
//! workload's progress counter.
//!
//! Two limits ([`Limits`]): `idle`, the longest the workload may go without progress (the
//! counter only moves for workload progress: DMA descriptors that moved data, IOMMU requests
//! that succeeded, guest phases accepted in order; see `Devices::progress`), and `deadline`,
//! the longest the run may last at all, progress or not, so a guest that loops on valid
//! transfers forever still ends. (A guest that only spins on port writes, floods the console or
//! sends rejected requests makes no progress at all: `idle` ends it.)
//! Once the watchdog has decided to stop, it stays decided and asks for a kick on every tick
//! until the vCPU thread is gone. It reads no clock and touches no thread: the event loop
//! (`event_loop.rs`) feeds it the time and carries out the decision.

use std::time::Duration;

use crate::units;

/// What a run is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest time without workload progress.
    pub idle: Duration,
    /// The longest the run may last (wall clock from when the device loop starts, about when
    /// the guest starts), whatever its progress.
    pub deadline: Duration,
}

/// Why the watchdog stopped the run. The text is the run's failure reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    #[error("watchdog: the guest made no progress for {}; stopped", units::Duration(*.idle))]
    NoProgress { idle: Duration },
    #[error("watchdog: the run's deadline of {} passed; stopped", units::Duration(*.deadline))]
    Deadline { deadline: Duration },
    #[error("watchdog: a stop was requested")]
    Requested,
}

/// The watchdog's memory between ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watchdog {
    limits: Limits,
    /// The progress counter at the last change, and when that change was seen.
    seen: u64,
    seen_at: Duration,
    stopping: Option<StopReason>,
}

impl Watchdog {
    /// A watchdog that starts counting at time zero with the counter at `progress`.
    pub fn new(limits: Limits, progress: u64) -> Self {
        Watchdog {
            limits,
            seen: progress,
            seen_at: Duration::ZERO,
            stopping: None,
        }
    }

    /// One look at `now` (since the start), with the counter at `progress` and `requested` when
    /// someone else asked the run to stop. `Some(reason)`: stop the vCPU (and kick it) now; once
    /// returned, every later tick returns the same reason.
    pub fn tick(&mut self, now: Duration, progress: u64, requested: bool) -> Option<StopReason> {
        if self.stopping.is_none() {
            if progress != self.seen {
                self.seen = progress;
                self.seen_at = now;
            }
            self.stopping = if now >= self.limits.deadline {
                Some(StopReason::Deadline {
                    deadline: self.limits.deadline,
                })
            } else if now.saturating_sub(self.seen_at) >= self.limits.idle {
                Some(StopReason::NoProgress {
                    idle: self.limits.idle,
                })
            } else if requested {
                Some(StopReason::Requested)
            } else {
                None
            };
        }
        self.stopping
    }

    /// Why the run was stopped, if it was.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stopping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        idle: Duration::from_secs(1),
        deadline: Duration::from_secs(10),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Each row: a sequence of ticks (time in ms, progress counter, stop requested) and the
    /// index of the first tick that must stop the run with which reason (`None`: none may). A
    /// bug would stop a progressing run, let a run that makes no progress (or makes progress
    /// forever) live, or forget a decision it made.
    #[test]
    fn stop_decisions() {
        use StopReason::*;
        let idle = NoProgress { idle: LIMITS.idle };
        let deadline = Deadline {
            deadline: LIMITS.deadline,
        };
        type Row = (
            &'static str,
            &'static [(u64, u64, bool)],
            Option<(usize, StopReason)>,
        );
        let rows: &[Row] = &[
            (
                "progress every half second, under the deadline",
                &[
                    (500, 1, false),
                    (1000, 2, false),
                    (1500, 3, false),
                    (9950, 19, false),
                ],
                None,
            ),
            (
                "no progress from the start: idle at 1 s, not before",
                &[(950, 0, false), (1000, 0, false)],
                Some((1, idle)),
            ),
            (
                "progress, then none for a second",
                &[(800, 5, false), (1700, 5, false), (1800, 5, false)],
                Some((2, idle)),
            ),
            (
                "a guest that progresses forever hits the deadline",
                &[(9000, 90, false), (9500, 95, false), (10_000, 100, false)],
                Some((2, deadline)),
            ),
            (
                "the deadline wins over idleness",
                &[(10_000, 0, false)],
                Some((0, deadline)),
            ),
            (
                "a requested stop, while progressing",
                &[(100, 1, false), (200, 2, true)],
                Some((1, Requested)),
            ),
            (
                "idleness wins over a request on the same tick",
                &[(1000, 0, true)],
                Some((0, idle)),
            ),
            (
                "a counter that moves backwards is still a change",
                &[(900, 7, false), (1800, 3, false), (2800, 3, false)],
                Some((2, idle)),
            ),
        ];
        for (what, ticks, want) in rows {
            let mut w = Watchdog::new(LIMITS, 0);
            let mut got = None;
            for (i, &(t, progress, requested)) in ticks.iter().enumerate() {
                if let Some(reason) = w.tick(ms(t), progress, requested) {
                    got = Some((i, reason));
                    break;
                }
            }
            assert_eq!(&got, want, "{what}");
            assert_eq!(w.stopped(), want.map(|(_, r)| r), "{what}: stopped()");
        }
    }

    /// Once decided, the decision holds (the kick is repeated until the vCPU is gone) even if
    /// progress resumes: in-flight DMA finishing must not un-stop a run.
    #[test]
    fn a_decision_is_sticky() {
        let mut w = Watchdog::new(LIMITS, 0);
        let first = w.tick(ms(1000), 0, false);
        assert!(matches!(first, Some(StopReason::NoProgress { .. })));
        for (t, p) in [(1050, 1), (1100, 2), (20_000, 3)] {
            assert_eq!(w.tick(ms(t), p, false), first, "tick at {t} ms");
        }
    }

    #[test]
    fn reasons_name_the_watchdog_and_the_limit() {
        let idle = StopReason::NoProgress {
            idle: Duration::from_secs(1),
        };
        assert_eq!(
            idle.to_string(),
            "watchdog: the guest made no progress for 1s; stopped"
        );
        let deadline = StopReason::Deadline {
            deadline: Duration::from_secs(90),
        };
        assert!(deadline.to_string().contains("deadline of 90s"));
    }
}
