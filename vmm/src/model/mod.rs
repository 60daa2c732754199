//! The model executor ("replay"): a SIMULATION of Linux anonymous memory under each kernel era's
//! rules, with an explorer over the interleavings of racing steps. It never touches the host; its
//! verdicts are about the rules it encodes, checked against the live kernel for the modern era.
//!
//! One concept per file:
//! - `state`: pages, page tables, VMAs, anon_vmas, holders (the machine);
//! - `version`: kernel versions, parsed from a release string;
//! - `rules`: each era's rule functions and table, with the kernel source each one stands for;
//! - `era`: which eras exist, the range each covers, the lookup from a running kernel's release;
//! - `ops`: operations and their atomic steps, one file per kernel source file (`ops/mod.rs`
//!   lists them);
//! - `invariant`: what must hold, and which breaches are divergences;
//! - `explore`: BFS over interleavings, shortest violating trace;
//! - `spec`: the `[model]` section and the translation of live scenarios;
//! - `expect`: model verdicts and the `[expect] model` grammar, checked when a scenario loads;
//! - `report`: replaying scenarios, the `replay` command and its table.

pub mod era;
pub mod expect;
pub mod explore;
pub mod invariant;
pub mod ops;
pub mod report;
pub mod rules;
pub mod spec;
pub mod state;
pub mod version;

pub use era::{Era, UnknownEra};
pub use expect::{Expectation, ModelVerdict};
pub use explore::{explore, Conclusion, Outcome, Program};
pub use invariant::Invariant;
pub use report::{model_verdict_for_live, replay, replay_command, Replay, HEADER};
pub use rules::Feature;
pub use version::KernelVersion;
