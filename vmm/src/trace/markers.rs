//! The lab's events in the kernel's trace: every timeline event written to the instance's
//! `trace_marker`, and read back from the trace text.
//!
//! It owns the marker format: `pinlab: <kind> <subject> <json>`, where the head is for people
//! reading the raw text (trace-cmd, KernelShark) and the JSON is the timeline event itself (its
//! `at` and `dur_ns` in CLOCK_MONOTONIC ns: a span's marker is written when it ends and carries
//! its start). `TraceSink` is the timeline's sink during a traced run: it writes the marker with
//! one `write(2)` (never blocking) and, at boundaries, has the sampler take a sample.

use std::io::Write;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::sampler::Sampler;
use super::tracefs::InstanceFile;
use crate::timeline::{Event, Mono, Sink, What};

/// The prefix of every pinlab marker.
pub const PREFIX: &str = "pinlab: ";
/// Longest marker written (the kernel's limit is a page; a longer one would be cut mid-JSON).
const MAX_MARKER: usize = 3000;

/// The head's subject: the step, phase, action, verdict or direction the event is about.
fn subject(v: &Value) -> String {
    for key in ["step", "phase", "action", "verdict", "direction"] {
        if let Some(s) = v.get(key).and_then(|s| s.as_str()) {
            return match v.get("round").and_then(|r| r.as_u64()) {
                Some(r) => format!("{s} {r}"),
                None => s.to_string(),
            };
        }
    }
    String::new()
}

/// The marker text for `e`.
pub fn format(e: &Event) -> String {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("event")
        .to_string();
    let head = format!("{PREFIX}{kind} {}", subject(&v));
    let mut json = v.to_string();
    if head.len() + json.len() + 1 > MAX_MARKER {
        if let Some(o) = v.as_object_mut() {
            o.retain(|k, _| matches!(k.as_str(), "at" | "dur_ns" | "thread" | "kind"));
            o.insert("truncated".into(), Value::Bool(true));
        }
        json = v.to_string();
    }
    format!("{head} {json}")
}

/// A pinlab marker read back from the trace.
#[derive(Clone, Debug, PartialEq)]
pub struct LabMarker {
    /// When the marker was written (the trace's timestamp).
    pub written: Mono,
    pub kind: String,
    /// The event's own start and end.
    pub at: Mono,
    pub end: Mono,
    pub event: Value,
}

/// Reads a marker's text (the body of a `tracing_mark_write` record); `None` if it is not ours.
pub fn parse(written: Mono, text: &str) -> Option<LabMarker> {
    let rest = text.strip_prefix(PREFIX)?;
    let json = &rest[rest.find('{')?..];
    let event: Value = serde_json::from_str(json.trim_end()).ok()?;
    let at = Mono(event.get("at")?.as_u64()?);
    let dur = event.get("dur_ns").and_then(|d| d.as_u64()).unwrap_or(0);
    Some(LabMarker {
        written,
        kind: event.get("kind")?.as_str()?.to_string(),
        at,
        end: Mono(at.0.saturating_add(dur)),
        event,
    })
}

/// Whether a sample is taken at `e`, with the region's PFNs or not.
fn boundary(e: &Event) -> Option<(String, bool)> {
    Some(match &e.what {
        What::Launch { step } => (format!("launch {step:?}"), false),
        What::Phase { .. } => (
            format!("phase {}", subject(&serde_json::to_value(e).ok()?)),
            true,
        ),
        What::Action { action, .. } => (format!("action {action} end"), true),
        What::ActionFinish { action, .. } => (format!("action {action} finish"), true),
        What::Verdict { verdict } => (format!("verdict {verdict}"), false),
        _ => return None,
    })
}

/// The timeline's sink during a traced run.
pub struct TraceSink {
    /// Closed (`None`) before the instance is removed: an open file keeps it busy.
    marker: RwLock<Option<InstanceFile>>,
    sampler: Arc<Sampler>,
}

impl TraceSink {
    /// Writes to `marker` (none when tracefs is unavailable: then only samples are taken).
    pub fn new(marker: Option<InstanceFile>, sampler: Arc<Sampler>) -> TraceSink {
        TraceSink {
            marker: RwLock::new(marker),
            sampler,
        }
    }

    /// Closes the marker file; later events are no longer written.
    pub fn close(&self) {
        *self.marker.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Writes `e`'s marker now (also used to replay events from before the sink was attached).
    pub fn write_marker(&self, e: &Event) {
        let marker = self.marker.read().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = marker.as_ref() {
            // One write(2): trace_marker takes each write as one event. A failure (the instance
            // removed under us by a signal) is not the run's business.
            let _ = m.file().write(format(e).as_bytes());
        }
    }
}

impl Sink for TraceSink {
    fn record(&self, e: &Event) {
        self.write_marker(e);
        if let Some((label, pfns)) = boundary(e) {
            self.sampler.sample(e.end(), label, pfns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Action;
    use crate::timeline::GuestPhase;

    fn event(what: What, dur: Option<u64>) -> Event {
        Event {
            at: Mono(1_000_000_123),
            dur_ns: dur,
            thread: "vcpu",
            what,
        }
    }

    #[test]
    fn markers_round_trip_with_their_span() {
        // A bug shows as a span's marker losing its start (the marker is written at its end).
        let cases = [
            (
                event(
                    What::Action {
                        action: Action::SplitPmd,
                        iteration: None,
                        evidence: Some(0),
                        error: None,
                    },
                    Some(5_000),
                ),
                "pinlab: action split-pmd {",
                "action",
            ),
            (
                event(
                    What::Phase {
                        phase: GuestPhase::RoundDone { round: 2 },
                    },
                    None,
                ),
                "pinlab: phase round-done 2 {",
                "phase",
            ),
        ];
        for (e, head, kind) in cases {
            let text = format(&e);
            assert!(text.starts_with(head), "{text}");
            let m = parse(Mono(9), &text).unwrap();
            assert_eq!(m.kind, kind);
            assert_eq!(m.at, e.at);
            assert_eq!(m.end, e.end());
            assert_eq!(m.written, Mono(9));
        }
        assert_eq!(parse(Mono(0), "someone else's marker"), None);
    }

    #[test]
    fn an_oversized_event_keeps_its_times() {
        let e = event(
            What::Action {
                action: Action::Ksm,
                iteration: None,
                evidence: None,
                error: Some("x".repeat(10_000)),
            },
            Some(7),
        );
        let text = format(&e);
        assert!(text.len() <= MAX_MARKER + 64);
        let m = parse(Mono(0), &text).unwrap();
        assert_eq!((m.at, m.end), (e.at, e.end()));
        assert_eq!(m.event["truncated"], true);
    }

    #[test]
    fn boundaries_are_phases_launch_actions_and_the_verdict() {
        let dma = event(
            What::DmaBatch {
                direction: crate::timeline::DmaDirection::ToGuest,
                descriptors: 1,
                bytes: 4096,
                failed: 0,
            },
            None,
        );
        assert_eq!(boundary(&dma), None);
        let p = event(
            What::Phase {
                phase: GuestPhase::RoundDone { round: 1 },
            },
            None,
        );
        assert_eq!(boundary(&p), Some(("phase round-done 1".into(), true)));
    }
}
