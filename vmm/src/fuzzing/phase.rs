//! Target `phase_order`: `PhaseOrder::accept` over arbitrary marker sequences.
//!
//! The rule, checked after every marker: what was accepted is a prefix of Mapped, RoundsStart,
//! RoundDone 1, 2, ... (at most `rounds`, each once, in order), then at most one Unmapped, last.
//! A refused marker leaves the order where it was; the one marker that continues the prefix is
//! always accepted (the guest's own sequence never stalls). So no repeated or out-of-order marker
//! can run a host action, and a correct guest's markers all do.

use arbitrary::Unstructured;
use pinlab_abi as abi;

use super::{run, u32_near, U32_EDGES};
use crate::phase::PhaseOrder;
use crate::timeline::GuestPhase;

const STEPS: usize = 64;

/// Whether `accepted` is a prefix of the one sequence a guest of `rounds` rounds may send.
fn is_legal_prefix(accepted: &[GuestPhase], rounds: u32) -> bool {
    let mut want_round = 1u32;
    let mut state = 0u8;
    for p in accepted {
        match (state, *p) {
            (0, GuestPhase::Mapped) => state = 1,
            (1, GuestPhase::RoundsStart) => state = 2,
            (2, GuestPhase::RoundDone { round }) if round == want_round && round <= rounds => {
                want_round += 1;
            }
            (2, GuestPhase::Unmapped) => state = 3,
            _ => return false,
        }
    }
    true
}

/// The markers that would extend `accepted` legally.
fn legal_next(accepted: &[GuestPhase], rounds: u32) -> Vec<(u32, Option<u32>)> {
    let done = accepted
        .iter()
        .filter(|p| matches!(p, GuestPhase::RoundDone { .. }))
        .count() as u32;
    match accepted.last() {
        None => vec![(abi::PHASE_MAPPED, None)],
        Some(GuestPhase::Mapped) => vec![(abi::PHASE_ROUNDS_START, None)],
        Some(GuestPhase::Unmapped) => vec![],
        Some(_) => {
            let mut v = vec![(abi::PHASE_UNMAPPED, None)];
            if done < rounds {
                v.push((abi::PHASE_ROUND_DONE, Some(done + 1)));
            }
            v
        }
    }
}

fn marker(u: &mut Unstructured<'_>, next_round: u32, rounds: u32) -> arbitrary::Result<abi::Phase> {
    let codes = [
        abi::PHASE_MAPPED,
        abi::PHASE_ROUND_DONE,
        abi::PHASE_UNMAPPED,
        abi::PHASE_ROUNDS_START,
    ];
    let phase = if u.ratio(7, 8)? {
        *u.choose(&codes)?
    } else {
        u32_near(u, &[0, 5, u32::MAX])?
    };
    let mut edges = vec![
        next_round,
        next_round.wrapping_sub(1),
        rounds,
        rounds.wrapping_add(1),
    ];
    edges.extend_from_slice(U32_EDGES);
    Ok(abi::Phase {
        phase,
        round: u32_near(u, &edges)?,
        ack: u.arbitrary()?,
        _pad: u.arbitrary()?,
    })
}

/// Feeds an arbitrary marker sequence to a `PhaseOrder` of arbitrary rounds.
pub fn phase_order(data: &[u8]) {
    run(data, |u| {
        let rounds = u32_near(u, &[0, 1, 2, 3, 100, u32::MAX])?;
        let mut order = PhaseOrder::new(rounds);
        let mut accepted: Vec<GuestPhase> = Vec::new();
        for _ in 0..STEPS {
            if u.is_empty() {
                break;
            }
            let done = accepted
                .iter()
                .filter(|p| matches!(p, GuestPhase::RoundDone { .. }))
                .count() as u32;
            let raw = marker(u, done.wrapping_add(1), rounds)?;
            let before = order;
            let legal = legal_next(&accepted, rounds)
                .iter()
                .any(|&(code, round)| code == raw.phase && round.is_none_or(|r| r == raw.round));
            match order.accept(&raw) {
                Ok(p) => {
                    assert!(
                        legal,
                        "{raw:?} accepted after {accepted:?} ({rounds} rounds)"
                    );
                    let (code, round) = match p {
                        GuestPhase::Mapped => (abi::PHASE_MAPPED, raw.round),
                        GuestPhase::RoundsStart => (abi::PHASE_ROUNDS_START, raw.round),
                        GuestPhase::RoundDone { round } => (abi::PHASE_ROUND_DONE, round),
                        GuestPhase::Unmapped => (abi::PHASE_UNMAPPED, raw.round),
                    };
                    assert_eq!((code, round), (raw.phase, raw.round), "decoded as sent");
                    accepted.push(p);
                    assert!(is_legal_prefix(&accepted, rounds), "{accepted:?}");
                }
                Err(why) => {
                    let _ = (why.to_string(), why.name());
                    assert!(
                        !legal,
                        "{raw:?} refused after {accepted:?} ({rounds} rounds): {why}"
                    );
                    assert_eq!(order, before, "a refused marker must not advance");
                }
            }
            if let Some(GuestPhase::RoundDone { round }) = accepted.last() {
                assert_eq!(order.rounds_done(), *round);
            }
        }
        Ok(())
    });
}
