//! `Toggle`: a traced run's kernel side, switched on and off as a whole, for `pinlab bench` to
//! measure what tracing costs (the measurement itself lives binary-side, in `bench::trace`).
//!
//! It owns one instance set up exactly as a traced run's (every catalogue event the kernel has,
//! guest RAM's filter, this process and the kernel threads by PID, the reader draining the pipe)
//! and a timeline sink writing the lab's markers into it. `set(false)` disables every event (not
//! merely `tracing_on = 0`: a paused buffer still runs every enabled tracepoint) and detaches the
//! sink; `set(true)` undoes both. `finish` stops the reader and removes the instance; dropping
//! it without `finish` removes the instance too (the instance owner). It changes nothing else.

use std::sync::Arc;

use super::events::EventSpec;
use super::instance;
use super::markers::TraceSink;
use super::sampler::Sampler;
use super::session::{self, buffer_kb_for, kernel_side, kernel_threads, KernelSide};
use crate::addr::Hva;
use crate::timeline::Timeline;

/// Why the measurement's instance could not be set up, switched or removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The traced run's setup failed (tracefs absent, read-only, refused...).
    #[error("setting up the instance: {0}")]
    Start(#[source] session::Error),
    /// Writing `value` to event `event`'s enable file.
    #[error("events/{event}/enable <- {value}: {source}")]
    Enable {
        event: String,
        value: &'static str,
        #[source]
        source: instance::Error,
    },
    /// Writing `value` to `tracing_on`.
    #[error("tracing_on <- {value}: {source}")]
    TracingOn {
        value: &'static str,
        #[source]
        source: instance::Error,
    },
    /// Removing the instance at the end.
    #[error("removing the instance: {0}")]
    Remove(#[source] instance::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What the traced part of a measurement recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Events enabled while tracing was on.
    pub events_enabled: usize,
    /// Records the reader drained (kernel events and the lab's markers).
    pub records: u64,
    /// Events lost to overruns (per-CPU stats or the text's LOST lines, the larger).
    pub lost: u64,
}

/// The instance of one measurement. Field order is drop order: the sink's marker file before
/// the instance it lives in.
pub struct Toggle {
    sink: Arc<TraceSink>,
    side: KernelSide,
    events: Vec<EventSpec>,
    on: bool,
}

impl Toggle {
    /// Sets up the instance as a traced run over guest RAM at `ram` would, tracing on.
    pub fn start(ram: (Hva, u64)) -> Result<Toggle> {
        let sampler = Arc::new(Sampler::new());
        let (side, marker) =
            kernel_side(None, buffer_kb_for(ram.1), ram, &sampler, &kernel_threads())
                .map_err(Error::Start)?;
        let events = side.selection.present.clone();
        Ok(Toggle {
            sink: Arc::new(TraceSink::new(Some(marker), sampler)),
            side,
            events,
            on: true,
        })
    }

    /// Switches every enabled event, `tracing_on` and `timeline`'s marker sink on or off.
    pub fn set(&mut self, on: bool, timeline: &Timeline) -> Result<()> {
        let value = if on { "1" } else { "0" };
        let instance = self.instance();
        for e in &self.events {
            let event = format!("{}/{}", e.group, e.name);
            instance
                .write(&format!("events/{event}/enable"), value)
                .map_err(|source| Error::Enable {
                    event,
                    value,
                    source,
                })?;
        }
        instance
            .write("tracing_on", value)
            .map_err(|source| Error::TracingOn { value, source })?;
        if on {
            timeline.set_sink(self.sink.clone());
        } else {
            timeline.clear_sink();
        }
        self.on = on;
        Ok(())
    }

    /// Whether tracing is on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    fn instance(&self) -> &instance::Instance {
        self.side
            .instance
            .as_ref()
            .expect("present until finish consumes the toggle")
    }

    /// Stops tracing, drains the reader, removes the instance; what was recorded.
    pub fn finish(mut self, timeline: &Timeline) -> Result<Totals> {
        timeline.clear_sink();
        self.sink.close();
        let instance = self.instance();
        instance
            .write("tracing_on", "0")
            .map_err(|source| Error::TracingOn { value: "0", source })?;
        let per_cpu: u64 = instance.cpu_stats().iter().map(|c| c.lost()).sum();
        let read = self
            .side
            .reader
            .take()
            .map(|r| r.stop())
            .unwrap_or_default();
        if let Some(i) = self.side.instance.take() {
            i.remove().map_err(Error::Remove)?;
        }
        Ok(Totals {
            events_enabled: self.events.len(),
            records: read.records.len() as u64 + read.over_bound,
            lost: per_cpu.max(read.lost_in_text),
        })
    }
}

impl Drop for Toggle {
    fn drop(&mut self) {
        // Without `finish` (an error mid-measurement): a timeline may still hold the sink, whose
        // open marker file would keep the instance busy when its owner removes it.
        self.sink.close();
    }
}
