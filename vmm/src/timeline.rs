//! The run's timeline: what happened and when, appended to by every layer.
//!
//! Launch steps, guest phases and rounds, DMA batches, IOMMU map/unmap, host actions (begin, end
//! and their evidence index), and the verdict. Timestamps are CLOCK_MONOTONIC nanoseconds: the
//! clock tracefs calls `mono`, so kernel events recorded with `trace_clock = mono` land on the
//! same axis. The JSON result and every report are rendered from this (and from typed evidence),
//! never from re-parsed text.
//!
//! The timeline is bounded: a hostile guest that rings doorbells or sends phases in a loop cannot
//! grow it past `MAX_EVENTS`; what does not fit is counted in `dropped`.
//!
//! A [`Sink`] may be attached (tracing attaches one that writes each event to its tracefs
//! instance's `trace_marker`): every event the timeline keeps is also handed to it, on the pushing
//! thread, outside the timeline's lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::addr::{Gpa, Iova};
use crate::scenario::{Action, Verdict};

/// Events kept at most; the rest are counted.
pub const MAX_EVENTS: usize = 100_000;

/// A CLOCK_MONOTONIC timestamp in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Mono(pub u64);

impl Mono {
    /// Now, on CLOCK_MONOTONIC.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the local we pass; CLOCK_MONOTONIC
        // always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Mono(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Seconds, as tracefs prints `mono` timestamps.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
}

/// A step of building and starting the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LaunchStep {
    /// The process started (`pinlab` was exec'd).
    Process,
    /// Guest RAM mapped.
    RamMapped,
    /// Guest RAM faulted in (MADV_POPULATE_WRITE) and its THP coverage measured.
    Prefault,
    /// VM and vCPU created, guest loaded, boot structures written.
    VmCreated,
    /// The vCPU's first KVM_RUN.
    GuestStart,
    /// The guest said done (or stopped).
    GuestEnd,
}

/// A guest phase marker, as the VMM accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum GuestPhase {
    /// The region is mapped through the IOMMU.
    Mapped,
    /// Rounds are starting.
    RoundsStart,
    /// Round `round` (1-based) finished its checks.
    RoundDone { round: u32 },
    /// The region is unmapped again.
    Unmapped,
}

/// Which direction a DMA batch moved data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DmaDirection {
    /// Device writes into guest RAM.
    ToGuest,
    /// Device reads guest RAM.
    FromGuest,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum What {
    Launch {
        step: LaunchStep,
    },
    Phase {
        #[serde(flatten)]
        phase: GuestPhase,
    },
    /// A phase the guest sent out of order or twice: counted, never acted on.
    PhaseRejected {
        code: u32,
        round: u32,
        why: &'static str,
    },
    /// One doorbell's worth of DMA descriptors.
    DmaBatch {
        direction: DmaDirection,
        descriptors: u32,
        bytes: u64,
        failed: u32,
    },
    IommuMap {
        iova: Iova,
        gpa: Gpa,
        len: u64,
        /// The ABI status name the guest was answered with.
        status: &'static str,
    },
    IommuUnmap {
        iova: Iova,
        len: u64,
        status: &'static str,
    },
    /// A host action; `evidence` indexes the run's evidence list when it succeeded.
    Action {
        action: Action,
        /// Storm iteration (1-based), or `None` at a phase.
        iteration: Option<u32>,
        evidence: Option<usize>,
        /// Why it failed, when it did.
        error: Option<String>,
    },
    /// The later half of an action (a fork child released, a uffd handler stopped).
    ActionFinish {
        action: Action,
        evidence: usize,
    },
    Verdict {
        verdict: Verdict,
    },
}

/// One entry: an instant (`dur_ns == None`) or a span.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub at: Mono,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dur_ns: Option<u64>,
    /// The thread that recorded it (`vcpu`, `device`, `storm`, `main`, ...).
    pub thread: &'static str,
    #[serde(flatten)]
    pub what: What,
}

impl Event {
    /// When it ended (its start for an instant).
    pub fn end(&self) -> Mono {
        Mono(self.at.0 + self.dur_ns.unwrap_or(0))
    }
}

/// Where the timeline's events also go while attached.
pub trait Sink: Send + Sync {
    /// Called on the pushing thread with each event the timeline keeps; must not block.
    fn record(&self, e: &Event);
}

/// The attached sink, if any.
#[derive(Default)]
struct SinkSlot(RwLock<Option<Arc<dyn Sink>>>);

impl std::fmt::Debug for SinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attached = self.0.read().map(|s| s.is_some()).unwrap_or(false);
        write!(f, "SinkSlot {{ attached: {attached} }}")
    }
}

/// The append-only, bounded event list of one run. Shared by reference between threads.
#[derive(Debug, Default)]
pub struct Timeline {
    events: Mutex<Vec<Event>>,
    dropped: AtomicU64,
    sink: SinkSlot,
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands every later event to `sink` too (replacing any sink attached before).
    pub fn set_sink(&self, sink: Arc<dyn Sink>) {
        *self.sink.0.write().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Detaches the sink.
    pub fn clear_sink(&self) {
        *self.sink.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn push(&self, e: Event) {
        let sink = self
            .sink
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sink) = sink {
            let room = self.events.lock().unwrap_or_else(|p| p.into_inner()).len() < MAX_EVENTS;
            if room {
                sink.record(&e);
            }
        }
        let mut v = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < MAX_EVENTS {
            v.push(e);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records an instant.
    pub fn instant(&self, thread: &'static str, what: What) {
        self.push(Event {
            at: Mono::now(),
            dur_ns: None,
            thread,
            what,
        });
    }

    /// Records an instant at a time taken earlier.
    pub fn instant_at(&self, at: Mono, thread: &'static str, what: What) {
        self.push(Event {
            at,
            dur_ns: None,
            thread,
            what,
        });
    }

    /// Records a span that started at `start` and ends now.
    pub fn span(&self, start: Mono, thread: &'static str, what: What) {
        let end = Mono::now();
        self.span_between(start, end, thread, what);
    }

    /// Records a span between two times taken earlier.
    pub fn span_between(&self, start: Mono, end: Mono, thread: &'static str, what: What) {
        self.push(Event {
            at: start,
            dur_ns: Some(end.since(start)),
            thread,
            what,
        });
    }

    /// Events lost to the bound.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The events so far, in start-time order (threads append concurrently, so the list itself
    /// is only roughly ordered).
    pub fn snapshot(&self) -> Vec<Event> {
        let mut v = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.sort_by_key(|e| e.at);
        v
    }

    /// When the launch step was recorded, if it was.
    pub fn launch_step(&self, step: LaunchStep) -> Option<Mono> {
        let v = self.events.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().find_map(|e| match e.what {
            What::Launch { step: s } if s == step => Some(e.end()),
            _ => None,
        })
    }
}

/// A serializable copy of a timeline, for results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recorded {
    /// The clock the timestamps are on.
    pub clock: &'static str,
    pub events: Vec<Event>,
    pub dropped: u64,
}

impl From<&Timeline> for Recorded {
    fn from(t: &Timeline) -> Self {
        Recorded {
            clock: "CLOCK_MONOTONIC (tracefs: mono)",
            events: t.snapshot(),
            dropped: t.dropped(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_is_monotonic_and_since_saturates() {
        let a = Mono::now();
        let b = Mono::now();
        assert!(b >= a);
        assert_eq!(a.since(b), 0);
        assert_eq!(Mono(5).since(Mono(2)), 3);
    }

    #[test]
    fn spans_and_instants_sort_by_start() {
        let t = Timeline::new();
        let start = Mono::now();
        t.instant(
            "vcpu",
            What::Phase {
                phase: GuestPhase::RoundsStart,
            },
        );
        t.span(
            start,
            "main",
            What::Launch {
                step: LaunchStep::VmCreated,
            },
        );
        let v = t.snapshot();
        assert_eq!(v.len(), 2);
        assert!(v[0].at <= v[1].at);
        assert!(matches!(v[0].what, What::Launch { .. }));
        assert_eq!(t.launch_step(LaunchStep::VmCreated), Some(v[0].end()));
        assert_eq!(t.launch_step(LaunchStep::Prefault), None);
    }

    #[test]
    fn the_bound_holds_and_counts_what_it_drops() {
        let t = Timeline::new();
        for round in 0..(MAX_EVENTS as u32 + 10) {
            t.instant(
                "vcpu",
                What::Phase {
                    phase: GuestPhase::RoundDone { round },
                },
            );
        }
        assert_eq!(t.snapshot().len(), MAX_EVENTS);
        assert_eq!(t.dropped(), 10);
    }

    #[test]
    fn an_attached_sink_sees_each_kept_event_until_cleared() {
        struct Count(Mutex<Vec<What>>);
        impl Sink for Count {
            fn record(&self, e: &Event) {
                self.0.lock().unwrap().push(e.what.clone());
            }
        }
        let t = Timeline::new();
        let phase = |round| What::Phase {
            phase: GuestPhase::RoundDone { round },
        };
        t.instant("vcpu", phase(0));
        let sink = Arc::new(Count(Mutex::new(Vec::new())));
        t.set_sink(sink.clone());
        t.instant("vcpu", phase(1));
        t.span(Mono::now(), "vcpu", phase(2));
        t.clear_sink();
        t.instant("vcpu", phase(3));
        assert_eq!(*sink.0.lock().unwrap(), vec![phase(1), phase(2)]);
        assert_eq!(t.snapshot().len(), 4);
    }

    #[test]
    fn serializes_flat_with_a_kind_tag() {
        let e = Event {
            at: Mono(7),
            dur_ns: None,
            thread: "vcpu",
            what: What::Phase {
                phase: GuestPhase::RoundDone { round: 3 },
            },
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["kind"], "phase");
        assert_eq!(j["phase"], "round-done");
        assert_eq!(j["round"], 3);
        assert_eq!(j["at"], 7);
        assert!(j.get("dur_ns").is_none());
    }
}
