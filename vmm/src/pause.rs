//! Pausing the vCPU around a host action, as a VMM pauses vCPUs around a memory-map change.
//!
//! A `PauseGate` is shared by the vCPU thread and any thread that must act on guest RAM while
//! the guest is not running (a storm's KSM fill, an mremap that re-points the memslot). The
//! actor asks for a pause and kicks the vCPU out of KVM_RUN; the vCPU parks at the top of its
//! loop, before the next KVM_RUN, and says so; the actor acts and drops its `Paused` guard; the
//! vCPU runs on. A vCPU that has left its loop (the guest is done) counts as parked. Waiting for
//! the park can be cancelled (the run is ending), so no thread waits on a vCPU that is itself
//! waiting for that thread. It knows nothing of KVM: the caller supplies the kick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    /// Outstanding pause requests.
    requested: u32,
    /// The vCPU is parked (or gone).
    parked: bool,
    /// The vCPU has left its loop for good.
    gone: bool,
}

/// Shared between the vCPU thread and the actors that pause it.
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<State>,
    changed: Condvar,
}

/// Why a pause did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cancelled while waiting for the vCPU to park (the run is ending)")]
    Cancelled,
}

/// Held while the vCPU must stay parked; dropping it lets the vCPU run again.
#[derive(Debug)]
pub struct Paused {
    gate: Arc<PauseGate>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.requested = s.requested.saturating_sub(1);
        self.gate.changed.notify_all();
    }
}

/// How often a waiting actor re-sends the kick and looks at its cancel flag.
const RETRY: Duration = Duration::from_millis(5);

impl PauseGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the vCPU to park and waits until it has. `kick` makes it leave KVM_RUN (it is sent
    /// again every few milliseconds, in case the first landed before the vCPU looked); `cancel`
    /// gives up the wait.
    pub fn pause(self: &Arc<Self>, kick: &dyn Fn(), cancel: &AtomicBool) -> Result<Paused, Error> {
        let mut s = self.lock();
        s.requested += 1;
        let paused = Paused { gate: self.clone() };
        loop {
            if s.parked || s.gone {
                return Ok(paused);
            }
            if cancel.load(Ordering::Acquire) {
                drop(s);
                return Err(Error::Cancelled);
            }
            drop(s);
            kick();
            s = self.lock();
            if !(s.parked || s.gone) {
                s = self
                    .changed
                    .wait_timeout(s, RETRY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }

    /// Called by the vCPU thread before each KVM_RUN: parks while a pause is requested.
    /// Returns whether it parked.
    pub fn park_while_requested(&self) -> bool {
        let mut s = self.lock();
        if s.requested == 0 {
            return false;
        }
        s.parked = true;
        self.changed.notify_all();
        while s.requested > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.parked = false;
        true
    }

    /// Called once when the vCPU leaves its loop: no pause waits for it after this.
    pub fn gone(&self) {
        let mut s = self.lock();
        s.gone = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// A vCPU stand-in: loops "running" until stopped, parking when asked. The test checks that
    /// while a pause is held the vCPU never runs, and that it runs again after.
    #[test]
    fn a_paused_vcpu_does_not_run_until_resumed() {
        let gate = PauseGate::new();
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU32::new(0));
        let vcpu = {
            let (gate, stop, runs) = (gate.clone(), stop.clone(), runs.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    gate.park_while_requested();
                    runs.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                }
                gate.gone();
            })
        };
        let never = AtomicBool::new(false);
        for _ in 0..20 {
            let p = gate.pause(&|| {}, &never).unwrap();
            let before = runs.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(runs.load(Ordering::Relaxed), before, "ran while paused");
            drop(p);
            let resumed = runs.load(Ordering::Relaxed);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while runs.load(Ordering::Relaxed) == resumed {
                assert!(std::time::Instant::now() < deadline, "never resumed");
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Release);
        vcpu.join().unwrap();
        // Gone: a pause returns at once.
        drop(gate.pause(&|| {}, &never).unwrap());
    }

    #[test]
    fn a_wait_can_be_cancelled() {
        let gate = PauseGate::new();
        let cancel = AtomicBool::new(true);
        assert_eq!(gate.pause(&|| {}, &cancel).unwrap_err(), Error::Cancelled);
        // The cancelled request was withdrawn: the vCPU does not park.
        assert!(!gate.park_while_requested());
    }

    #[test]
    fn the_kick_is_resent_until_the_vcpu_parks() {
        let gate = PauseGate::new();
        let kicks = Arc::new(AtomicU32::new(0));
        let g = gate.clone();
        let k = kicks.clone();
        let vcpu = std::thread::spawn(move || {
            // Parks only after the third kick.
            while k.load(Ordering::Relaxed) < 3 {
                std::thread::yield_now();
            }
            g.park_while_requested();
        });
        let never = AtomicBool::new(false);
        let p = gate
            .pause(
                &|| {
                    kicks.fetch_add(1, Ordering::Relaxed);
                },
                &never,
            )
            .unwrap();
        assert!(kicks.load(Ordering::Relaxed) >= 3);
        drop(p);
        vcpu.join().unwrap();
    }
}
