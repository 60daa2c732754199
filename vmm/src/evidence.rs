//! Typed evidence of what each host action did, measured.
//!
//! Every action records /proc/vmstat deltas, the region's PFNs and THP flags before and after,
//! and details of its own (pages copied at fork, pages merged by KSM, faults handled ...). The
//! types here are what the JSON result, the human summary and the reports are rendered from;
//! nothing is erased to untyped JSON and read back by key. `perturb` produces them; this module
//! depends on nothing but the scenario vocabulary, so the phase hook can name them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scenario::Action;

/// What one action changed.
#[derive(Clone, Debug, Serialize)]
pub struct ActionEvidence {
    pub action: Action,
    /// The guest round after which it ran (0 in a storm).
    pub after_round: u32,
    /// Storm iteration (1-based), when run as a storm.
    pub storm_iteration: Option<u32>,
    pub summary: String,
    /// /proc/vmstat (and KSM) counters that moved across the action.
    pub vmstat: BTreeMap<String, i64>,
    /// Region pages whose PFN differs after the action from before it.
    pub region_pfns_changed: usize,
    pub region_thp_pages_before: usize,
    pub region_thp_pages_after: usize,
    pub details: Details,
    /// What the action's later half found (fork child reaped, uffd faults handled).
    pub finish: Option<Details>,
}

/// The action's own details.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct Details(pub serde_json::Value);
