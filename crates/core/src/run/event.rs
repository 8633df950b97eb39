//! What can happen to a run, and why an event may not apply.

use serde::{Deserialize, Serialize};

use super::{RunStatus, StepStatus, Timer};
use crate::approval::{GateRequest, Verdict};
use crate::job::JobError;

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Start the run: dispatch the steps with no needs.
    Start,
    /// A worker accepted a job.
    Accepted {
        /// The job.
        job_id: String,
        /// The worker.
        worker: String,
    },
    /// The job never reached a worker, or its input could not be built.
    NotDispatched {
        /// The job.
        job_id: String,
        /// Why.
        error: JobError,
        /// Whether the job itself was refused (every worker answered it
        /// with a client error): another agent might be taken. A store
        /// failure or an input that cannot be built is no agent's fault.
        #[serde(default)]
        agent_refused: bool,
    },
    /// A worker renewed a job's lease.
    Heartbeat {
        /// The job.
        job_id: String,
        /// The worker.
        worker: String,
    },
    /// A job succeeded; its output is already stored under its job id.
    Succeeded {
        /// The job.
        job_id: String,
        /// The worker.
        worker: String,
        /// Output size in bytes of JSON.
        output_bytes: usize,
        /// Exit status.
        exit_code: Option<i32>,
        /// When it started on the worker.
        started_at_ms: u64,
    },
    /// A job failed.
    Failed {
        /// The job.
        job_id: String,
        /// The worker.
        worker: String,
        /// Why.
        error: JobError,
        /// Exit status.
        exit_code: Option<i32>,
        /// The end of stderr.
        logs_tail: String,
        /// When it started on the worker.
        started_at_ms: u64,
    },
    /// A timer came due.
    Timer(Timer),
    /// A user cancelled the run.
    Cancel {
        /// Why, for the audit trail.
        reason: String,
        /// Who, when a caller did.
        by: Option<String>,
    },
    /// A step's input was rendered and its risk assessed.
    Gated {
        /// The step.
        step: String,
        /// The verdict.
        gate: GateRequest,
        /// Which of the unit's agents was assessed (its `fallback` then):
        /// an answer for an agent the unit has left is stale.
        #[serde(default)]
        fallback: u32,
    },
    /// A step's condition (`when`) was false: it is skipped.
    Skip {
        /// The step.
        step: String,
        /// Why, for the run's trail and readers.
        reason: String,
        /// As in [`Event::Gated`].
        #[serde(default)]
        fallback: u32,
    },
    /// A fan-out step's list was evaluated: one item per element.
    Expand {
        /// The step.
        step: String,
        /// How many items the list has (at most the step's `max_items`).
        items: u32,
        /// As in [`Event::Gated`].
        #[serde(default)]
        fallback: u32,
    },
    /// A step's input cannot be built (its template or the agent's input
    /// schema refuses it): the step fails for good, or falls back to its
    /// next agent when the agent's schema was what refused it.
    AssessFailed {
        /// The step.
        step: String,
        /// Why.
        error: JobError,
        /// As in [`Event::Gated`].
        #[serde(default)]
        fallback: u32,
        /// Whether the agent's input schema refused the input (another
        /// agent might take it), rather than the workflow (a template, a
        /// condition, a list) that no agent can fix.
        #[serde(default)]
        agent_refused: bool,
    },
    /// An approver decided on a step waiting for approval.
    Decide {
        /// The step.
        step: String,
        /// The approval decided on.
        approval: String,
        /// Approve or reject.
        decision: Verdict,
        /// Who decided.
        by: String,
        /// Why, in their words.
        #[serde(default)]
        comment: String,
        /// Whether it came through a signed link.
        #[serde(default)]
        via_link: bool,
        /// The input digest the approver saw, when they sent it: a decision
        /// on another input than the one waiting is refused.
        #[serde(default)]
        input_sha256: Option<String>,
    },
}

/// Why an event does not apply. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// No step with that id, or a job id naming another run.
    #[error("run {run} has no job {job_id}")]
    UnknownJob {
        /// The run.
        run: String,
        /// The job.
        job_id: String,
    },
    /// The job is not the step's current attempt, or is no longer active.
    #[error("job {job_id} is not active (step is {status:?}, current attempt {current})")]
    JobNotActive {
        /// The job.
        job_id: String,
        /// The step's status.
        status: StepStatus,
        /// The step's current attempt.
        current: u32,
    },
    /// The run is over.
    #[error("run {run} is already {}", status.as_str())]
    RunFinished {
        /// The run.
        run: String,
        /// Its final status.
        status: RunStatus,
    },
    /// An approval decision for a step that is not waiting for one (or
    /// for an approval the step no longer waits on).
    #[error("step {step} is not waiting for approval")]
    NotWaitingApproval {
        /// The step.
        step: String,
    },
    /// The approval's time is up; the tick carries out its expiry.
    #[error("approval {approval} has expired")]
    ApprovalExpired {
        /// The approval.
        approval: String,
    },
    /// This approver already decided on this approval.
    #[error("{by} already decided on approval {approval}")]
    AlreadyDecided {
        /// The approval.
        approval: String,
        /// The approver.
        by: String,
    },
    /// The policy does not let whoever started a run approve its steps.
    #[error("{by} started this run and may not approve its steps")]
    SelfApproval {
        /// The approver.
        by: String,
    },
    /// The run document does not hold together (its plan and steps do not
    /// line up): nothing is applied to it.
    #[error("run {run} is corrupt: {why}")]
    Corrupt {
        /// The run.
        run: String,
        /// What does not line up.
        why: String,
    },
    /// The decision names another input than the one waiting.
    #[error("approval {approval} is for input {expected}, not {got}")]
    InputChanged {
        /// The approval.
        approval: String,
        /// The waiting input's digest.
        expected: String,
        /// The digest the decision named.
        got: String,
    },
}
