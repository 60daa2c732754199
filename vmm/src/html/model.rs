//! The model's rows a run page shows (a SIMULATION, and the page says so): a live scenario's
//! verdict on every era with the counterexample trace of each era that does not say
//! `coherent`. (The replay page draws `pinlab replay`'s own `model::report::ReplaySet`.)
//! Reads `model`'s public API only.

use crate::model::{self, Era, ModelVerdict, Replay};
use crate::scenario::Scenario;

/// Why the model's rows could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] model::report::Error),
}

/// The model's verdict for a live scenario on every era; for each era that does not say
/// `coherent`, the shortest trace the explorer finds (explored a second time, with the trace).
pub fn live_on_every_era(s: &Scenario) -> Result<Vec<Replay>, Error> {
    let mut out = Vec::new();
    for era in Era::ALL {
        let mut r = model::model_verdict_for_live(s, era)?;
        if r.verdict != ModelVerdict::Coherent && r.verdict != ModelVerdict::NotApplicable {
            let mut plain = s.clone();
            plain.model = None;
            let prog = model::spec::live_program(&plain);
            r.trace = model::explore(&prog, era, true)
                .map_err(|source| model::report::Error::Explore {
                    scenario: s.name.clone(),
                    era: era.name().to_string(),
                    source,
                })?
                .trace;
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Action;

    #[test]
    fn every_era_once_and_a_trace_where_it_diverges() {
        let mut s = crate::config::load(None).unwrap();
        s.perturb.actions = vec![Action::Dontneed];
        s.perturb.after_round = 2;
        let rows = live_on_every_era(&s).unwrap();
        assert_eq!(rows.len(), Era::ALL.len());
        for r in &rows {
            match r.verdict {
                ModelVerdict::Diverged => {
                    assert!(r.trace.as_ref().is_some_and(|t| !t.is_empty()), "{}", r.era)
                }
                ModelVerdict::Coherent => assert!(r.trace.is_none(), "{}", r.era),
                _ => {}
            }
        }
        // Discarding pinned pages diverges on the modern kernel too.
        let modern = rows.iter().find(|r| r.era == Era::MODERN.name()).unwrap();
        assert_eq!(modern.verdict, ModelVerdict::Diverged);
    }
}
