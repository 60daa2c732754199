//! Guest phase markers and the hook the live executor calls at each one.
//!
//! The guest announces where it is (`PORT_PHASE`: mapped, rounds start, round k done, unmapped)
//! and waits for the VMM's acknowledgement, so host actions run at exact points with the guest
//! stopped. This module owns the typed phase, the order phases must come in (`PhaseOrder`: a
//! repeated or out-of-order marker is a counted guest error, never a second host action), and the
//! `PhaseHook` trait with the `RunEnv` a hook may touch. It sits below both the runner (which
//! calls hooks) and `perturb` (which implements one), so neither imports the other for it.

use std::sync::Arc;

use pinlab_abi as abi;

use crate::devices::Devices;
use crate::evidence::ActionEvidence;
use crate::layout::Layout;
use crate::scenario::Scenario;
use crate::timeline::{GuestPhase, Timeline};
use crate::vm::Vm;

/// Why a phase marker was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("unknown phase code {0}")]
    UnknownCode(u32),
    #[error("phase {0:?} out of order (expected {1})")]
    OutOfOrder(GuestPhase, &'static str),
    #[error("round {got} reported done, expected round {want}")]
    WrongRound { got: u32, want: u32 },
}

impl Rejected {
    /// A short name for counters and the timeline.
    pub fn name(&self) -> &'static str {
        match self {
            Rejected::UnknownCode(_) => "unknown-code",
            Rejected::OutOfOrder(..) => "out-of-order",
            Rejected::WrongRound { .. } => "wrong-round",
        }
    }
}

/// Decodes a raw phase record.
pub fn parse(p: &abi::Phase) -> Result<GuestPhase, Rejected> {
    match p.phase {
        abi::PHASE_MAPPED => Ok(GuestPhase::Mapped),
        abi::PHASE_ROUNDS_START => Ok(GuestPhase::RoundsStart),
        abi::PHASE_ROUND_DONE => Ok(GuestPhase::RoundDone { round: p.round }),
        abi::PHASE_UNMAPPED => Ok(GuestPhase::Unmapped),
        other => Err(Rejected::UnknownCode(other)),
    }
}

/// Where the guest is in its program: the next phases it may send.
///
/// Mapped -> RoundsStart -> RoundDone{1} -> ... -> RoundDone{rounds} -> Unmapped, each once. A
/// guest may stop early (its report says how many rounds it did), so Unmapped is accepted after
/// any RoundDone or after RoundsStart; nothing is accepted after Unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseOrder {
    rounds: u32,
    state: OrderState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrderState {
    Start,
    Mapped,
    /// Rounds started; this many are done.
    Rounds(u32),
    Unmapped,
}

impl PhaseOrder {
    pub fn new(rounds: u32) -> Self {
        PhaseOrder {
            rounds,
            state: OrderState::Start,
        }
    }

    /// Accepts `raw` if it is the next phase the guest may send, advancing; otherwise says why
    /// and stays where it was.
    pub fn accept(&mut self, raw: &abi::Phase) -> Result<GuestPhase, Rejected> {
        let phase = parse(raw)?;
        let next = match (self.state, phase) {
            (OrderState::Start, GuestPhase::Mapped) => OrderState::Mapped,
            (OrderState::Mapped, GuestPhase::RoundsStart) => OrderState::Rounds(0),
            (OrderState::Rounds(done), GuestPhase::RoundDone { round }) => {
                let want = done.saturating_add(1);
                if round != want || round > self.rounds {
                    return Err(Rejected::WrongRound { got: round, want });
                }
                OrderState::Rounds(round)
            }
            (OrderState::Rounds(_), GuestPhase::Unmapped) => OrderState::Unmapped,
            (state, phase) => return Err(Rejected::OutOfOrder(phase, expected(state))),
        };
        self.state = next;
        Ok(phase)
    }

    /// Rounds the guest has reported done, in order.
    pub fn rounds_done(&self) -> u32 {
        match self.state {
            OrderState::Rounds(n) => n,
            _ => 0,
        }
    }
}

fn expected(state: OrderState) -> &'static str {
    match state {
        OrderState::Start => "mapped",
        OrderState::Mapped => "rounds-start",
        OrderState::Rounds(_) => "the next round-done or unmapped",
        OrderState::Unmapped => "nothing after unmapped",
    }
}

/// What a phase hook may touch, for the whole run.
pub struct RunEnv<'a> {
    pub devices: &'a Arc<Devices>,
    pub vm: &'a Arc<Vm>,
    pub scenario: &'a Arc<Scenario>,
    pub layout: &'a Layout,
    pub timeline: &'a Arc<Timeline>,
    /// The vCPU, for actions off the vCPU thread that must pause it (see `VcpuHandle::pause`).
    pub vcpu: &'a crate::vcpu::VcpuHandle,
}

/// Called at every accepted guest phase on the vCPU thread, with the guest stopped.
pub trait PhaseHook: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    fn at_phase(&mut self, phase: GuestPhase, env: &RunEnv<'_>) -> Result<(), Self::Error>;

    /// Ends whatever is still running (storms, fork children, handlers) and hands over the
    /// evidence, with the first error met while ending.
    fn finish(&mut self) -> (Vec<ActionEvidence>, Option<Self::Error>);

    /// How a storm went, if the hook ran one.
    fn storm(&self) -> Option<crate::evidence::StormRun> {
        None
    }

    /// Whether `at_phase` may act on the host or on guest RAM at all (false: it never does
    /// anything). The runner lets the guest start before all of RAM is faulted in and waits
    /// for the whole prefault, and its THP coverage, before the first phase of a hook that acts.
    fn acts(&self) -> bool {
        true
    }
}

/// The phase hook of an unperturbed run.
pub struct NoActions;

impl PhaseHook for NoActions {
    type Error = std::convert::Infallible;

    fn at_phase(&mut self, _: GuestPhase, _: &RunEnv<'_>) -> Result<(), Self::Error> {
        Ok(())
    }

    fn finish(&mut self) -> (Vec<ActionEvidence>, Option<Self::Error>) {
        (Vec::new(), None)
    }

    fn acts(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(phase: u32, round: u32) -> abi::Phase {
        abi::Phase {
            phase,
            round,
            ..Default::default()
        }
    }

    #[test]
    fn the_guests_own_sequence_is_accepted() {
        let mut o = PhaseOrder::new(3);
        assert_eq!(o.accept(&raw(abi::PHASE_MAPPED, 0)), Ok(GuestPhase::Mapped));
        assert_eq!(
            o.accept(&raw(abi::PHASE_ROUNDS_START, 0)),
            Ok(GuestPhase::RoundsStart)
        );
        for r in 1..=3 {
            assert_eq!(
                o.accept(&raw(abi::PHASE_ROUND_DONE, r)),
                Ok(GuestPhase::RoundDone { round: r })
            );
        }
        assert_eq!(o.rounds_done(), 3);
        assert_eq!(
            o.accept(&raw(abi::PHASE_UNMAPPED, 3)),
            Ok(GuestPhase::Unmapped)
        );
    }

    /// Each row: a hostile sequence, and the index of the marker that must be refused. A bug
    /// would accept it and run host actions twice (or out of place).
    #[test]
    fn repeated_and_out_of_order_phases_are_refused() {
        type Row = (&'static str, &'static [(u32, u32)], usize);
        let rows: &[Row] = &[
            (
                "round repeated",
                &[(1, 0), (4, 0), (2, 1), (2, 2), (2, 2)],
                4,
            ),
            ("round skipped", &[(1, 0), (4, 0), (2, 2)], 2),
            ("rounds start twice", &[(1, 0), (4, 0), (4, 0)], 2),
            ("round before start", &[(1, 0), (2, 1)], 1),
            (
                "round past the last",
                &[(1, 0), (4, 0), (2, 1), (2, 2), (2, 3)],
                4,
            ),
            ("mapped twice", &[(1, 0), (1, 0)], 1),
            ("after unmapped", &[(1, 0), (4, 0), (3, 0), (2, 1)], 3),
            ("unknown code", &[(1, 0), (99, 0)], 1),
            ("round zero", &[(1, 0), (4, 0), (2, 0)], 2),
            ("round u32::MAX", &[(1, 0), (4, 0), (2, u32::MAX)], 2),
        ];
        for (what, seq, bad) in rows {
            let mut o = PhaseOrder::new(2);
            for (i, &(code, round)) in seq.iter().enumerate() {
                let r = o.accept(&raw(code, round));
                if i == *bad {
                    assert!(r.is_err(), "{what}: marker {i} must be refused");
                    let before = o;
                    let _ = o.accept(&raw(code, round));
                    assert_eq!(o, before, "{what}: a refused marker must not advance");
                    break;
                }
                assert!(r.is_ok(), "{what}: marker {i} refused: {r:?}");
            }
        }
    }
}
