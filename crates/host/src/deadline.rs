//! The request timeout, enforced inside guest code.
//!
//! A component stuck in a CPU loop never hands control back to the host, so
//! a timer alone cannot stop it. Compiled components check the engine's
//! epoch at function entries and loop heads (`Config::epoch_interruption`);
//! a host thread advances it every [`EPOCH_TICK`]. At each tick, guest code
//! that is running calls [`InstanceClock::check`]: while every request of
//! the instance is within the timeout it yields its thread (so the instance
//! worker can check its timers and other instances run on that thread), and
//! once one has run past the timeout it traps. The trap drops the whole
//! instance, with any other request it was serving at that moment: Wasmtime
//! cannot stop one task of an instance and keep the rest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// How often the epoch advances: the precision of the timeout in guest code,
/// and how often a busy guest gives up its thread. Spin ticks every 10 ms too.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until the engine is dropped.
pub fn spawn_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("spindle-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                // Not held while sleeping, so the engine can go away.
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}

/// A request ran past the request timeout; its instance was stopped.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request timed out after {0:?}")]
pub struct RequestTimedOut(pub Duration);

/// One request's outcome as the instance serving it saw it, so the caller
/// can tell a timeout from a trap when all it gets back is a dead instance.
#[derive(Debug, Default)]
pub struct Ticket {
    timed_out: AtomicBool,
}

impl Ticket {
    /// Whether the request ran past the timeout.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    fn mark_timed_out(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
    }
}

/// The timeout bookkeeping of one instance: which requests it is running and
/// since when. Shared by the epoch callback, the requests and the worker.
#[derive(Debug)]
pub struct InstanceClock {
    timeout: Duration,
    state: Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    next_id: u64,
    /// Requests without a response yet: when each started, and its ticket.
    running: BTreeMap<u64, (Instant, Arc<Ticket>)>,
    /// Set while the component's own initialisation runs.
    instantiating_since: Option<Instant>,
    /// A request ran past the timeout: no more guest code in this instance.
    expired: bool,
}

impl InstanceClock {
    /// A clock for an instance being instantiated at `now`; instantiation
    /// counts against the timeout like a request.
    pub fn new(timeout: Duration, now: Instant) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            state: Mutex::new(ClockState {
                next_id: 0,
                running: BTreeMap::new(),
                instantiating_since: Some(now),
                expired: false,
            }),
        })
    }

    /// The timeout this clock enforces.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    // A panic elsewhere while holding the lock leaves the state consistent
    // (every update is a single insert, remove or flag), so carry on.
    fn state(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The component's initialisation finished.
    pub fn instantiated(&self) {
        self.state().instantiating_since = None;
    }

    /// A request starts at `now`; it counts until the returned guard is
    /// dropped (it answered) or expired.
    pub fn start(self: &Arc<Self>, ticket: Arc<Ticket>, now: Instant) -> RunningRequest {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.running.insert(id, (now, ticket));
        RunningRequest {
            clock: self.clone(),
            id,
        }
    }

    /// Called by guest code at an epoch tick: `Err` (a trap) once a request
    /// has run past the timeout, marking every such request's ticket.
    pub fn check(&self, now: Instant) -> Result<(), RequestTimedOut> {
        let mut state = self.state();
        let overdue = |start: Instant| now.saturating_duration_since(start) >= self.timeout;
        let mut expired = state.expired || state.instantiating_since.is_some_and(overdue);
        for (start, ticket) in state.running.values() {
            if overdue(*start) {
                ticket.mark_timed_out();
                expired = true;
            }
        }
        if expired {
            state.expired = true;
            Err(RequestTimedOut(self.timeout))
        } else {
            Ok(())
        }
    }

    /// The worker's own timer gave up on the instance at `now` (a request
    /// or its post-return work outlived the timeout outside guest code).
    pub fn expire(&self, now: Instant) {
        let _ = self.check(now);
        self.state().expired = true;
    }

    /// Whether the instance was stopped by the timeout.
    pub fn timed_out(&self) -> bool {
        self.state().expired
    }
}

/// A request an instance is running.
#[derive(Debug)]
pub struct RunningRequest {
    clock: Arc<InstanceClock>,
    id: u64,
}

impl RunningRequest {
    /// The request's timer ran out before it answered: the instance may run
    /// no more guest code (the request's task would carry on otherwise).
    pub fn expire(self) {
        let mut state = self.clock.state();
        if let Some((_, ticket)) = state.running.get(&self.id) {
            ticket.mark_timed_out();
        }
        state.expired = true;
    }
}

impl Drop for RunningRequest {
    fn drop(&mut self) {
        self.clock.state().running.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn instantiation_counts_against_the_timeout() {
        let t0 = Instant::now();
        let clock = InstanceClock::new(T, t0);
        assert!(clock.check(at(t0, 999)).is_ok());
        assert!(clock.check(at(t0, 1000)).is_err());
        assert!(clock.timed_out());

        let clock = InstanceClock::new(T, t0);
        clock.instantiated();
        assert!(clock.check(at(t0, 5000)).is_ok(), "idle code is not timed");
    }

    #[test]
    fn only_a_request_past_the_timeout_stops_the_instance_and_is_marked() {
        let t0 = Instant::now();
        let clock = InstanceClock::new(T, t0);
        clock.instantiated();
        let (old, new) = (Arc::new(Ticket::default()), Arc::new(Ticket::default()));
        let _a = clock.start(old.clone(), t0);
        let _b = clock.start(new.clone(), at(t0, 600));
        assert!(clock.check(at(t0, 900)).is_ok());
        assert!(!old.timed_out() && !new.timed_out());
        assert!(matches!(clock.check(at(t0, 1000)), Err(RequestTimedOut(T))));
        assert!(old.timed_out(), "the overdue request is told why it failed");
        assert!(!new.timed_out(), "the other one merely lost its instance");
        // Once stopped, any guest code traps at once.
        assert!(clock.check(at(t0, 1001)).is_err());
    }

    #[test]
    fn answered_requests_no_longer_count() {
        let t0 = Instant::now();
        let clock = InstanceClock::new(T, t0);
        clock.instantiated();
        let ticket = Arc::new(Ticket::default());
        drop(clock.start(ticket.clone(), t0));
        assert!(clock.check(at(t0, 10_000)).is_ok());
        assert!(!ticket.timed_out() && !clock.timed_out());
    }

    #[test]
    fn a_request_whose_timer_ran_out_stops_the_instance() {
        let t0 = Instant::now();
        let clock = InstanceClock::new(T, t0);
        clock.instantiated();
        let ticket = Arc::new(Ticket::default());
        clock.start(ticket.clone(), t0).expire();
        assert!(ticket.timed_out());
        assert!(
            clock.check(at(t0, 1)).is_err(),
            "its task may still be running: the next guest code traps"
        );
    }

    #[test]
    fn the_worker_timer_marks_overdue_requests() {
        let t0 = Instant::now();
        let clock = InstanceClock::new(T, t0);
        clock.instantiated();
        let ticket = Arc::new(Ticket::default());
        let _r = clock.start(ticket.clone(), t0);
        clock.expire(at(t0, 1000));
        assert!(ticket.timed_out() && clock.timed_out());
    }
}
