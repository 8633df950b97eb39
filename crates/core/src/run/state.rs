//! What a run is made of: its status, its steps and their attempts, its
//! plan and settings. Plain data; transitions live in `transition.rs`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::Agent;
use crate::approval::Gate;
use crate::job::JobError;
use crate::retry::RetryPolicy;
use crate::workflow::{IfNeedsSkipped, StepRole};

/// Most audit events kept in a run document; older ones are dropped first.
pub const MAX_EVENTS: usize = 256;

/// Most attempts no worker took that a step keeps on record: while the pool
/// is down a step retries without end (such attempts never ran), so older
/// ones are dropped from the run document to keep it from growing.
pub const MAX_NO_WORKER_ATTEMPTS: usize = 5;

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created; no step started yet.
    Queued,
    /// At least one step is dispatched, running or waiting to retry.
    Running,
    /// Nothing runs; a step waits for a human decision.
    WaitingApproval,
    /// A step failed for good: compensation and on-failure steps run, and
    /// the run then ends `failed`.
    Compensating,
    /// Every step succeeded (or was skipped by a condition).
    Succeeded,
    /// A step failed for good.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Passed its deadline.
    TimedOut,
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }

    /// Every status, for index maintenance and filters.
    pub const ALL: [RunStatus; 8] = [
        Self::Queued,
        Self::Running,
        Self::WaitingApproval,
        Self::Compensating,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::WaitingApproval => "waiting_approval",
            Self::Compensating => "compensating",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for the steps it needs.
    Pending,
    /// Ready: its input is being rendered and its risk assessed.
    Assessing,
    /// Assessed as needing a human approval; waits for it.
    WaitingApproval,
    /// Sent (or being sent) to a worker; no heartbeat yet.
    Dispatched,
    /// A worker holds it and renews its lease.
    Running,
    /// An attempt failed; the next starts after a backoff.
    RetryWait,
    /// A fan-out step whose items are under way.
    FannedOut,
    /// Done, with output.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Never ran: its condition was false, a step it needs was skipped, or
    /// the run ended first (`skip_reason` says which).
    Skipped,
    /// Was running when the run was cancelled or timed out.
    Cancelled,
}

impl StepStatus {
    /// Whether a worker may hold a job for this step.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }

    /// Whether the step is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// `manual`, `webhook`, `schedule`.
    pub kind: TriggerKind,
    /// The event's payload, readable by templates as `trigger.payload`.
    pub payload: Value,
    /// Who started the run (`key:ci`, `token:alice`), when a caller did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// Kinds of trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// The trigger API.
    Manual,
    /// A signed webhook.
    Webhook,
    /// A cron schedule.
    Schedule,
}

/// One step of the plan: the workflow step with its agent version resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Step id.
    pub id: String,
    /// The agent version this run uses.
    pub agent: Agent,
    /// Steps it needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Transitive needs: the steps whose outputs templates may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    /// The steps whose outputs its templates, condition and list name:
    /// the only outputs read for it. `None` (a run stored before this was
    /// recorded) reads every ancestor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<Vec<String>>,
    /// The input template.
    pub input: Value,
    /// Effective retry policy.
    pub retry: RetryPolicy,
    /// Effective timeout.
    pub timeout_secs: u32,
    /// The part it plays (normal, compensation, on-failure).
    #[serde(default, skip_serializing_if = "StepRole::is_normal")]
    pub role: StepRole,
    /// The step that undoes this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
    /// Its condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// What it does when a step it needs was skipped.
    #[serde(default)]
    pub if_needs_skipped: IfNeedsSkipped,
    /// Its fan-out: the list expression and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<FanOut>,
    /// Fallback agents, in order, with their effective policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<PlannedAgent>,
}

impl PlannedStep {
    /// The agent run by a unit of this step at `fallback` (0 its own, `n`
    /// its `n`th fallback), with its effective retry policy and timeout;
    /// `None` past the last fallback.
    pub fn agent_at(&self, fallback: u32) -> Option<(&Agent, RetryPolicy, u32)> {
        match fallback.checked_sub(1) {
            None => Some((&self.agent, self.retry, self.timeout_secs)),
            Some(k) => self
                .fallbacks
                .get(k as usize)
                .map(|f| (&f.agent, f.retry, f.timeout_secs)),
        }
    }
}

/// A fan-out step's list and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOut {
    /// The expression giving the list.
    pub expr: String,
    /// Most items running at once.
    pub max_parallel: u32,
    /// Most items taken.
    pub max_items: u32,
    /// Whether a failed item leaves `null` instead of failing the step.
    #[serde(default)]
    pub allow_partial_failure: bool,
}

/// A fallback agent, with the retry policy and timeout it runs under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedAgent {
    /// The agent version this run uses.
    pub agent: Agent,
    /// Effective retry policy.
    pub retry: RetryPolicy,
    /// Effective timeout.
    pub timeout_secs: u32,
}

/// One attempt at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    /// `<run>.<step>.<attempt>`.
    pub job_id: String,
    /// The worker that accepted it, once one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The agent it ran, when a step has fallbacks to tell apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// When it was dispatched.
    pub dispatched_at_ms: u64,
    /// When the worker first reported it running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The agent's exit status, if reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The end of the agent's stderr, as the worker reported it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logs_tail: String,
}

/// A step's state within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Step id.
    pub id: String,
    /// Where it is.
    pub status: StepStatus,
    /// Every attempt so far, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// While active: when the lease lapses unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at_ms: Option<u64>,
    /// While active: the attempt's hard end (timeout plus one lease of grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_deadline_ms: Option<u64>,
    /// While waiting to retry: when the next attempt starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// Size of the stored output, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<usize>,
    /// The final error, once it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Its risk assessment and approval, once assessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Approvals filed for the agents it fell back from, so retention
    /// can remove them with the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded_approvals: Vec<crate::approval::ApprovalRef>,
    /// Why it was skipped, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Which agent runs it: 0 the step's own, `n` its `n`th fallback.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fallback: u32,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at_ms: Option<u64>,
    /// The run revision at which it succeeded: the order of completion
    /// compensations undo in, whatever the clocks of the instances said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_rev: Option<u64>,
    /// For a re-run: the job of the earlier run whose output it reuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// A fan-out step's items (`<step>_<index>`), in list order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<StepState>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl StepState {
    /// The current attempt, if any.
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// The current attempt's number (0 before the first). Not the length
    /// of `attempts`: a long run of attempts no worker took is compacted.
    pub fn attempt_number(&self) -> u32 {
        self.current().map_or(0, |a| a.number)
    }

    /// The attempt with this number, if it is still recorded.
    pub fn attempt(&self, number: u32) -> Option<&Attempt> {
        self.attempts.iter().find(|a| a.number == number)
    }

    pub(super) fn current_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut()
    }

    /// The job id of the attempt that succeeded (its output's key). A
    /// fan-out step has none: its output is its items'.
    pub fn output_job(&self) -> Option<&str> {
        if self.status != StepStatus::Succeeded || !self.items.is_empty() {
            return None;
        }
        self.current().map(|a| a.job_id.as_str())
    }

    /// A fresh state for unit `id`.
    pub fn new(id: String) -> StepState {
        StepState {
            id,
            status: StepStatus::Pending,
            attempts: Vec::new(),
            lease_expires_at_ms: None,
            attempt_deadline_ms: None,
            retry_at_ms: None,
            output_bytes: None,
            error: None,
            gate: None,
            superseded_approvals: Vec::new(),
            skip_reason: None,
            fallback: 0,
            done_at_ms: None,
            succeeded_rev: None,
            reused_from: None,
            items: Vec::new(),
        }
    }
}

/// Why a run is failing: the step that failed for good, kept while its
/// compensation and on-failure steps run (templates read it as `failure`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailure {
    /// The step that failed.
    pub step: String,
    /// What went wrong.
    pub error: JobError,
    /// The run's error message.
    pub message: String,
    /// When.
    pub at_ms: u64,
}

/// One entry of a run's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    /// When.
    pub at_ms: u64,
    /// What, e.g. `step_dispatched`.
    pub kind: String,
    /// The step, if it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Details for humans.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Who caused it, when a caller did (`key:ci`, `token:alice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// Settings fixed at run creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSettings {
    /// How long a worker's lease lasts between heartbeats.
    pub lease_ms: u64,
    /// Largest accepted output, in bytes of JSON.
    pub max_output_bytes: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            max_output_bytes: 1 << 20,
        }
    }
}

/// One execution of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// The workflow version it runs.
    pub workflow_version: u32,
    /// Where it is.
    pub status: RunStatus,
    /// What started it.
    pub trigger: Trigger,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When its first step was dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// When it times out, if the workflow sets a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<u64>,
    /// Why it ended badly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure its compensation and on-failure steps handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RunFailure>,
    /// The run this one re-runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// Settings fixed at creation.
    pub settings: RunSettings,
    /// Step states, in plan order.
    pub steps: Vec<StepState>,
    /// The workflow and agent versions it started with.
    pub plan: Vec<PlannedStep>,
    /// Audit trail, oldest first, at most [`MAX_EVENTS`].
    pub events: Vec<RunEvent>,
    /// Bumped by every change; lets readers tell versions apart.
    pub revision: u64,
    /// Its place among its workflow's runs (1-based), which names its
    /// listing page; set by whoever stores the run.
    #[serde(default)]
    pub workflow_seq: u64,
    /// The idempotency record that created it, if any, so it is removed
    /// with the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<String>,
}
