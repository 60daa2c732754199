//! The model executor ("replay"): a SIMULATION of Linux anonymous memory under each kernel era's
//! rules, with an explorer over the interleavings of racing steps. It never touches the host; its
//! verdicts are about the rules it encodes, checked against the live kernel for the modern era.
//!
//! One concept per file:
//! - `state`: pages, page tables, VMAs, anon_vmas, holders (the machine);
//! - `era`: each era's rule functions, with the kernel source each one stands for;
//! - `ops`: operations and their atomic steps, one file per kernel source file (`ops/mod.rs`
//!   lists them);
//! - `invariant`: what must hold, and which breaches are divergences;
//! - `explore`: BFS over interleavings, shortest violating trace;
//! - `spec`: the `[model]` section and the translation of live scenarios;
//! - `report`: verdicts, the expectation grammar, the `replay` command.

pub mod era;
pub mod explore;
pub mod invariant;
pub mod ops;
pub mod report;
pub mod spec;
pub mod state;

pub use era::{Era, Feature};
pub use explore::{explore, Conclusion, Outcome, Program};
pub use invariant::Invariant;
pub use report::{
    model_verdict_for_live, replay, replay_command, Expectation, ModelVerdict, Replay, HEADER,
};
