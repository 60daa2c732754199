//! The model's rows a page shows (a SIMULATION, and the pages say so): a live scenario's
//! verdict on every era with the counterexample trace of each era that does not say
//! `coherent`, and the typed replay table of `pinlab replay` (the same calls the command
//! makes, returned instead of printed). Reads `model`'s public API only.

use std::path::{Path, PathBuf};

use crate::model::{self, Era, ModelVerdict, Replay};
use crate::scenario::Scenario;

/// Why the model's rows could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] model::report::Error),
    #[error("replay {scenario}: {source}")]
    Spec {
        scenario: String,
        source: model::spec::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("--era: {0}")]
    Era(String),
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

/// The eras named on the command line (all when none).
pub fn eras(names: &[String]) -> Result<Vec<Era>, Error> {
    if names.is_empty() {
        return Ok(Era::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| n.parse::<Era>().map_err(Error::Era))
        .collect()
}

/// The replay table of `pinlab replay`, typed: every scenario (the files given, else every
/// scenario of `dir`) under every era, each with its trace.
pub fn replay_table(paths: &[PathBuf], eras: &[Era], dir: &Path) -> Result<Vec<Replay>, Error> {
    let paths = if paths.is_empty() {
        crate::config::scenario_files(dir)?
    } else {
        paths.to_vec()
    };
    let mut rows = Vec::new();
    for p in &paths {
        let s = crate::config::load(Some(p))?;
        model::report::check_expectations(&s)?;
        model::spec::program(&s).map_err(|source| Error::Spec {
            scenario: s.name.clone(),
            source,
        })?;
        for &era in eras {
            rows.push(model::replay(&s, era, true)?);
        }
    }
    Ok(rows)
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

    #[test]
    fn the_replay_table_is_scenarios_times_eras() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let files = vec![
            dir.join("seed000-fork-parent-write.toml"),
            dir.join("default.toml"),
        ];
        let eras = eras(&["4.4".into(), "5.19".into()]).unwrap();
        let rows = replay_table(&files, &eras, &dir).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.trace.is_some()));
        assert!(matches!(super::eras(&["1.0".into()]), Err(Error::Era(_))));
    }
}
