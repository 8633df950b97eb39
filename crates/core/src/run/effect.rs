//! What a transition asks of its caller: timers to keep, jobs to send or
//! stop, audit lines to write. Effects are data; the caller carries out
//! every one of them.

use serde::{Deserialize, Serialize};

use super::{Run, RunEvent};

/// Kinds of timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// Start the next attempt of a step after its backoff.
    Retry,
    /// Check a step's lease.
    Lease,
    /// Time out the run.
    Deadline,
    /// Fire a cron schedule (not a run's: [`Timer::schedule`] names it).
    Schedule,
    /// Assess a step again if the assessment asked for never arrived
    /// (`attempt` counts the tries); once a low-risk step was dispatched at
    /// once, the lease timer of its first attempt.
    Assess,
    /// End a step's wait for approval.
    ApprovalExpiry,
}

/// A timer: "deliver this to the run at `at_ms`". Kept in the store and
/// fired by the tick endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timer {
    /// When it is due.
    pub at_ms: u64,
    /// The run.
    pub run_id: String,
    /// What it does.
    pub kind: TimerKind,
    /// The step, for retry and lease timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The attempt it concerns, for retry and lease timers.
    #[serde(default)]
    pub attempt: u32,
    /// The schedule a [`TimerKind::Schedule`] timer fires (`run_id` is
    /// empty then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleRef>,
    /// For an assessment timer: which agent of the unit it was armed for
    /// (0 its own, `n` its `n`th fallback); one armed for an agent the unit
    /// has left is stale.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fallback: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The schedule a timer fires, and the epoch of the schedule it was armed
/// in: a schedule rewritten since (updated, paused, re-armed) has a newer
/// epoch, and the timer is stale.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScheduleRef {
    /// The schedule's name.
    pub name: String,
    /// Its epoch when the timer was armed.
    pub epoch: u64,
}

/// Work for the caller after a transition is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Render the step's input and send the job to a worker.
    Dispatch {
        /// The job.
        job_id: String,
        /// The step.
        step: String,
    },
    /// Render the step's input, assess its risk and answer with
    /// [`super::Event::Gated`] (or [`super::Event::AssessFailed`]).
    Assess {
        /// The step.
        step: String,
    },
    /// Tell the worker holding a job to stop it.
    CancelJob {
        /// The job.
        job_id: String,
        /// The worker, if one accepted it.
        worker: Option<String>,
    },
    /// Keep a timer. Stored before the run change that asked for it, so a
    /// stored run always has its timers.
    Schedule(Timer),
    /// Record an entry of the audit trail outside the run (it is already in
    /// the run's own trail).
    Audit(RunEvent),
}

/// The result of applying an event: the next run, if the event changed it,
/// and every effect the event produced. A transition that changes nothing
/// may still carry effects (a lease timer that finds the lease renewed
/// re-arms itself), so callers carry out the effects either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The run after the event; `None` when the event changed nothing.
    pub run: Option<Run>,
    /// What the caller must do, in order, once the run is stored.
    pub effects: Vec<Effect>,
}

impl Transition {
    /// Whether the event changed the run.
    pub fn changed(&self) -> bool {
        self.run.is_some()
    }
}
