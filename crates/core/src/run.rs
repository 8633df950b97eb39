//! Runs: the state machine at Spindle's heart.
//!
//! A [`Run`] is one document holding everything about one execution of a
//! workflow: a snapshot of the workflow and agent versions it started with
//! (its plan), every step's state and attempts, and an audit trail. Every
//! change is [`Run::apply`]: a pure function of (run, event, now) that returns
//! the next run and the [`Effect`]s for the caller to carry out, or nothing
//! when the event changes nothing. Callers apply it inside a compare-and-swap
//! loop on the run document, so concurrent events serialize; and because a
//! repeated event is a no-op, a retried or duplicated event is harmless.
//!
//! Effects that reach outside (dispatching a job) are guarded again by the
//! caller with an atomic-increment claim on the job id, so a job is sent at
//! most once even on stores whose compare-and-swap misreports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Agent, RiskLevel};
use crate::job::{ErrorKind, JobError, job_id};
use crate::retry::RetryPolicy;
use crate::workflow::{Workflow, ancestors};

/// Most audit events kept in a run document; older ones are dropped first.
pub const MAX_EVENTS: usize = 256;

/// Whether `id` is a well-formed run id (a name without dots).
pub fn valid_run_id(id: &str) -> bool {
    crate::agent::check_name(id).is_ok()
}

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
    /// Every step succeeded.
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
    pub const ALL: [RunStatus; 7] = [
        Self::Queued,
        Self::Running,
        Self::WaitingApproval,
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
    /// Ready, but its agent needs a human approval first.
    WaitingApproval,
    /// Sent (or being sent) to a worker; no heartbeat yet.
    Dispatched,
    /// A worker holds it and renews its lease.
    Running,
    /// An attempt failed; the next starts after a backoff.
    RetryWait,
    /// Done, with output.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Never ran, because the run ended first.
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
    /// The input template.
    pub input: Value,
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
}

impl StepState {
    /// The current attempt, if any.
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    fn current_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut()
    }

    /// The job id of the attempt that succeeded (its output's key).
    pub fn output_job(&self) -> Option<&str> {
        (self.status == StepStatus::Succeeded)
            .then(|| self.current().map(|a| a.job_id.as_str()))
            .flatten()
    }
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
    /// Events logged by the transition in progress, turned into
    /// [`Effect::Audit`] when it ends. Never stored.
    #[serde(skip)]
    logged: usize,
}

/// Kinds of timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// Start a queued run whose creator did not get to start it.
    Start,
    /// Start the next attempt of a step after its backoff.
    Retry,
    /// Check a step's lease.
    Lease,
    /// Time out the run.
    Deadline,
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
}

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
    },
    /// A human decided on a step waiting for approval.
    Decide {
        /// The step.
        step: String,
        /// Approved or not.
        approved: bool,
        /// Who decided.
        by: String,
    },
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
    /// Tell the worker holding a job to stop it.
    CancelJob {
        /// The job.
        job_id: String,
        /// The worker, if one accepted it.
        worker: Option<String>,
    },
    /// Keep a timer.
    Schedule(Timer),
    /// Record an entry of the audit trail outside the run (it is already in
    /// the run's own trail).
    Audit(RunEvent),
    /// The run's status changed (index documents follow it).
    StatusChanged {
        /// Before.
        from: RunStatus,
        /// After.
        to: RunStatus,
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
    /// An approval decision for a step that is not waiting for one.
    #[error("step {step} is not waiting for approval")]
    NotWaitingApproval {
        /// The step.
        step: String,
    },
}

/// The result of applying an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The run after the event.
    pub run: Run,
    /// What the caller must do, in order, once the run is stored.
    pub effects: Vec<Effect>,
}

impl Run {
    /// A new, queued run of `workflow`, with `agents` holding the current
    /// version of every agent it uses. Also returns the start timer, to be
    /// stored before the run, so a run whose creator dies before starting it
    /// still starts.
    pub fn new(
        id: String,
        workflow: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        settings: RunSettings,
        now: u64,
    ) -> Result<(Run, Timer), String> {
        let anc = ancestors(&workflow.steps);
        let mut plan = Vec::with_capacity(workflow.steps.len());
        for s in &workflow.steps {
            let agent = agents
                .get(&s.agent)
                .ok_or_else(|| format!("agent {:?} of step {:?} is not registered", s.agent, s.id))?
                .clone();
            plan.push(PlannedStep {
                id: s.id.clone(),
                needs: s.needs.clone(),
                ancestors: anc
                    .get(s.id.as_str())
                    .map(|a| a.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
                input: s.input.clone(),
                retry: s.retry.unwrap_or(agent.retry),
                timeout_secs: s.timeout_secs.unwrap_or(agent.timeout_secs),
                agent,
            });
        }
        let steps = plan
            .iter()
            .map(|p| StepState {
                id: p.id.clone(),
                status: StepStatus::Pending,
                attempts: Vec::new(),
                lease_expires_at_ms: None,
                attempt_deadline_ms: None,
                retry_at_ms: None,
                output_bytes: None,
                error: None,
            })
            .collect();
        let run = Run {
            workflow: workflow.name.clone(),
            workflow_version: workflow.version,
            status: RunStatus::Queued,
            trigger,
            created_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            deadline_at_ms: workflow.deadline_secs.map(|d| now + u64::from(d) * 1000),
            error: None,
            settings,
            steps,
            plan,
            events: vec![RunEvent {
                at_ms: now,
                kind: "run_created".into(),
                step: None,
                detail: format!("workflow {} v{}", workflow.name, workflow.version),
            }],
            revision: 1,
            logged: 0,
            id,
        };
        let start = Timer {
            at_ms: now + settings.lease_ms,
            run_id: run.id.clone(),
            kind: TimerKind::Start,
            step: None,
            attempt: 0,
        };
        Ok((run, start))
    }

    /// The plan entry for a step.
    pub fn planned(&self, step: &str) -> Option<&PlannedStep> {
        self.plan.iter().find(|p| p.id == step)
    }

    /// The state of a step.
    pub fn step(&self, step: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.id == step)
    }

    /// What templates of `step` can read besides step outputs.
    pub fn template_context(&self, outputs: BTreeMap<String, Value>) -> Value {
        let steps: serde_json::Map<String, Value> = outputs
            .into_iter()
            .map(|(id, out)| (id, serde_json::json!({ "output": out })))
            .collect();
        serde_json::json!({
            "trigger": {"kind": self.trigger.kind, "payload": self.trigger.payload},
            "steps": steps,
            "run": {"id": self.id},
            "workflow": {"name": self.workflow},
        })
    }

    /// The outputs `step`'s templates may read: (ancestor step, job id whose
    /// output is stored).
    pub fn readable_outputs(&self, step: &str) -> Vec<(String, String)> {
        let Some(p) = self.planned(step) else {
            return Vec::new();
        };
        p.ancestors
            .iter()
            .filter_map(|a| {
                self.step(a)
                    .and_then(|s| s.output_job())
                    .map(|j| (a.clone(), j.to_owned()))
            })
            .collect()
    }

    /// Applies `event` at `now`. `Ok(None)` when it changes nothing (a
    /// duplicate, or a timer that is no longer relevant).
    pub fn apply(&self, event: &Event, now: u64) -> Result<Option<Transition>, Reject> {
        let mut next = self.clone();
        let mut fx = Vec::new();
        let changed = next.mutate(event, now, &mut fx)?;
        if !changed {
            return Ok(None);
        }
        next.revision += 1;
        let logged = std::mem::take(&mut next.logged);
        let from = next.events.len().saturating_sub(logged);
        fx.extend(next.events[from..].iter().map(|e| Effect::Audit(e.clone())));
        let before = self.status;
        if next.status != before {
            fx.push(Effect::StatusChanged {
                from: before,
                to: next.status,
            });
        }
        Ok(Some(Transition {
            run: next,
            effects: fx,
        }))
    }

    fn mutate(&mut self, event: &Event, now: u64, fx: &mut Vec<Effect>) -> Result<bool, Reject> {
        match event {
            Event::Start => {
                if self.status != RunStatus::Queued {
                    return Ok(false);
                }
                self.status = RunStatus::Running;
                self.started_at_ms = Some(now);
                self.log(now, "run_started", None, String::new());
                if let Some(at) = self.deadline_at_ms {
                    fx.push(Effect::Schedule(Timer {
                        at_ms: at,
                        run_id: self.id.clone(),
                        kind: TimerKind::Deadline,
                        step: None,
                        attempt: 0,
                    }));
                }
                self.advance(now, fx);
                Ok(true)
            }
            Event::Timer(t) => self.on_timer(t, now, fx),
            Event::Cancel { reason } => {
                self.refuse_if_finished()?;
                self.finish(
                    RunStatus::Cancelled,
                    format!("cancelled: {reason}"),
                    now,
                    fx,
                );
                Ok(true)
            }
            Event::Decide { step, approved, by } => {
                self.refuse_if_finished()?;
                let i = self
                    .index(step)
                    .filter(|i| self.steps[*i].status == StepStatus::WaitingApproval)
                    .ok_or_else(|| Reject::NotWaitingApproval { step: step.clone() })?;
                if *approved {
                    self.log(now, "step_approved", Some(step), format!("by {by}"));
                    self.dispatch(i, now, fx);
                    self.refresh_status();
                } else {
                    let error = JobError {
                        kind: ErrorKind::Rejected,
                        message: format!("rejected by {by}"),
                    };
                    self.steps[i].status = StepStatus::Failed;
                    self.steps[i].error = Some(error.clone());
                    self.log(now, "step_rejected", Some(step), format!("by {by}"));
                    self.finish(
                        RunStatus::Failed,
                        format!("step {step} {}", error.message),
                        now,
                        fx,
                    );
                }
                Ok(true)
            }
            Event::Accepted { job_id, worker } => {
                let i = self.active_job(job_id)?;
                let a = self.steps[i]
                    .current_mut()
                    .expect("active step has an attempt");
                if a.worker.as_deref() == Some(worker) {
                    return Ok(false);
                }
                a.worker = Some(worker.clone());
                let step = self.steps[i].id.clone();
                self.log(
                    now,
                    "job_accepted",
                    Some(&step),
                    format!("{job_id} by {worker}"),
                );
                Ok(true)
            }
            Event::NotDispatched { job_id, error } => {
                let i = self.active_job(job_id)?;
                self.fail_attempt(i, error.clone(), None, String::new(), now, fx);
                Ok(true)
            }
            Event::Heartbeat { job_id, worker } => {
                let i = self.active_job(job_id)?;
                let deadline = self.steps[i].attempt_deadline_ms.unwrap_or(u64::MAX);
                if now >= deadline {
                    let timeout = self.plan[i].timeout_secs;
                    self.fail_attempt(
                        i,
                        JobError {
                            kind: ErrorKind::Timeout,
                            message: format!("still running after its {timeout} s timeout"),
                        },
                        None,
                        String::new(),
                        now,
                        fx,
                    );
                    return Ok(true);
                }
                let lease = (now + self.settings.lease_ms).min(deadline);
                let s = &mut self.steps[i];
                let first = s.status == StepStatus::Dispatched;
                s.status = StepStatus::Running;
                s.lease_expires_at_ms = Some(lease);
                let a = s.current_mut().expect("active step has an attempt");
                a.worker.get_or_insert_with(|| worker.clone());
                if first {
                    a.started_at_ms = Some(now);
                    let step = s.id.clone();
                    self.log(now, "step_running", Some(&step), format!("on {worker}"));
                }
                Ok(true)
            }
            Event::Succeeded {
                job_id,
                worker,
                output_bytes,
                exit_code,
                started_at_ms,
            } => {
                let i = self.active_job(job_id)?;
                let s = &mut self.steps[i];
                s.status = StepStatus::Succeeded;
                s.output_bytes = Some(*output_bytes);
                s.lease_expires_at_ms = None;
                s.attempt_deadline_ms = None;
                let a = s.current_mut().expect("active step has an attempt");
                // Keep the address the job was dispatched to: cancellation uses it.
                a.worker.get_or_insert_with(|| worker.clone());
                a.started_at_ms.get_or_insert(*started_at_ms);
                a.finished_at_ms = Some(now);
                a.exit_code = *exit_code;
                let step = s.id.clone();
                self.log(
                    now,
                    "step_succeeded",
                    Some(&step),
                    format!("{output_bytes} bytes of output"),
                );
                self.advance(now, fx);
                Ok(true)
            }
            Event::Failed {
                job_id,
                worker,
                error,
                exit_code,
                logs_tail,
                started_at_ms,
            } => {
                let i = self.active_job(job_id)?;
                let a = self.steps[i]
                    .current_mut()
                    .expect("active step has an attempt");
                a.worker.get_or_insert_with(|| worker.clone());
                a.started_at_ms.get_or_insert(*started_at_ms);
                self.fail_attempt(i, error.clone(), *exit_code, logs_tail.clone(), now, fx);
                Ok(true)
            }
        }
    }

    fn on_timer(&mut self, t: &Timer, now: u64, fx: &mut Vec<Effect>) -> Result<bool, Reject> {
        if self.status.is_terminal() || now < t.at_ms {
            return Ok(false);
        }
        match t.kind {
            TimerKind::Start => self.mutate(&Event::Start, now, fx),
            TimerKind::Deadline => {
                if self.deadline_at_ms.is_none_or(|d| now < d) {
                    return Ok(false);
                }
                self.finish(
                    RunStatus::TimedOut,
                    "the run passed its deadline".into(),
                    now,
                    fx,
                );
                Ok(true)
            }
            TimerKind::Retry => {
                let Some(i) = t.step.as_deref().and_then(|s| self.index(s)) else {
                    return Ok(false);
                };
                let s = &self.steps[i];
                let due = s.retry_at_ms.is_some_and(|at| now >= at);
                if s.status != StepStatus::RetryWait || s.attempts.len() as u32 != t.attempt || !due
                {
                    return Ok(false);
                }
                self.dispatch(i, now, fx);
                self.refresh_status();
                Ok(true)
            }
            TimerKind::Lease => {
                let Some(i) = t.step.as_deref().and_then(|s| self.index(s)) else {
                    return Ok(false);
                };
                let s = &self.steps[i];
                if !s.status.is_active() || s.attempts.len() as u32 != t.attempt {
                    return Ok(false);
                }
                let lease = s.lease_expires_at_ms.unwrap_or(0);
                if now < lease {
                    // Renewed since the timer was set: check again at the new end.
                    fx.push(Effect::Schedule(Timer {
                        at_ms: lease,
                        ..t.clone()
                    }));
                    return Ok(false);
                }
                let deadline_passed = s.attempt_deadline_ms.is_some_and(|d| now >= d);
                let worker = s
                    .current()
                    .and_then(|a| a.worker.clone())
                    .unwrap_or_else(|| "no worker".into());
                let message = if deadline_passed {
                    format!("timed out after {} s", self.plan[i].timeout_secs)
                } else {
                    format!(
                        "lease expired: no heartbeat from {worker} for {} ms",
                        self.settings.lease_ms
                    )
                };
                self.fail_attempt(
                    i,
                    JobError {
                        kind: ErrorKind::Timeout,
                        message,
                    },
                    None,
                    String::new(),
                    now,
                    fx,
                );
                Ok(true)
            }
        }
    }

    fn refuse_if_finished(&self) -> Result<(), Reject> {
        if self.status.is_terminal() {
            Err(Reject::RunFinished {
                run: self.id.clone(),
                status: self.status,
            })
        } else {
            Ok(())
        }
    }

    fn index(&self, step: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == step)
    }

    /// The step index for a job that must be the active current attempt.
    fn active_job(&self, job: &str) -> Result<usize, Reject> {
        let unknown = || Reject::UnknownJob {
            run: self.id.clone(),
            job_id: job.to_owned(),
        };
        let (run, step, attempt) = crate::job::parse_job_id(job).ok_or_else(unknown)?;
        if run != self.id {
            return Err(unknown());
        }
        let i = self.index(step).ok_or_else(unknown)?;
        let s = &self.steps[i];
        let current = s.attempts.len() as u32;
        if attempt > current {
            return Err(unknown());
        }
        if attempt != current || !s.status.is_active() {
            return Err(Reject::JobNotActive {
                job_id: job.to_owned(),
                status: s.status,
                current,
            });
        }
        Ok(i)
    }

    fn log(&mut self, at_ms: u64, kind: &str, step: Option<&str>, detail: String) {
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.logged += 1;
        self.events.push(RunEvent {
            at_ms,
            kind: kind.to_owned(),
            step: step.map(str::to_owned),
            detail,
        });
    }

    /// Starts the next attempt of step `i`.
    fn dispatch(&mut self, i: usize, now: u64, fx: &mut Vec<Effect>) {
        let lease_ms = self.settings.lease_ms;
        let timeout_ms = u64::from(self.plan[i].timeout_secs) * 1000;
        let s = &mut self.steps[i];
        let number = s.attempts.len() as u32 + 1;
        let job = job_id(&self.id, &s.id, number);
        s.status = StepStatus::Dispatched;
        s.retry_at_ms = None;
        s.lease_expires_at_ms = Some(now + lease_ms);
        s.attempt_deadline_ms = Some(now + timeout_ms + lease_ms);
        s.attempts.push(Attempt {
            number,
            job_id: job.clone(),
            worker: None,
            dispatched_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            exit_code: None,
            error: None,
            logs_tail: String::new(),
        });
        let step = s.id.clone();
        fx.push(Effect::Schedule(Timer {
            at_ms: now + lease_ms,
            run_id: self.id.clone(),
            kind: TimerKind::Lease,
            step: Some(step.clone()),
            attempt: number,
        }));
        fx.push(Effect::Dispatch {
            job_id: job.clone(),
            step: step.clone(),
        });
        self.log(
            now,
            "step_dispatched",
            Some(&step),
            format!("attempt {number} as {job}"),
        );
    }

    /// Ends the current attempt of step `i` with `error`: retries after a
    /// backoff when the error and the policy allow, else fails the run.
    fn fail_attempt(
        &mut self,
        i: usize,
        error: JobError,
        exit_code: Option<i32>,
        logs_tail: String,
        now: u64,
        fx: &mut Vec<Effect>,
    ) {
        let policy = self.plan[i].retry;
        let s = &mut self.steps[i];
        let a = s.current_mut().expect("failing step has an attempt");
        a.finished_at_ms = Some(now);
        a.exit_code = exit_code;
        a.error = Some(error.clone());
        a.logs_tail = logs_tail;
        let number = a.number;
        let job = a.job_id.clone();
        let worker = a.worker.clone();
        s.lease_expires_at_ms = None;
        s.attempt_deadline_ms = None;
        let step = s.id.clone();
        if error.kind == ErrorKind::Timeout {
            // The worker may still be running it; make sure it stops.
            fx.push(Effect::CancelJob {
                job_id: job.clone(),
                worker,
            });
        }
        self.log(
            now,
            "attempt_failed",
            Some(&step),
            format!("attempt {number}: {:?}: {}", error.kind, error.message),
        );
        // An attempt no worker took never ran: it does not use up the retry
        // budget, so a saturated pool delays runs instead of failing them
        // (the run's deadline, if any, still bounds the wait).
        let ran = self.steps[i]
            .attempts
            .iter()
            .filter(|a| {
                a.error
                    .as_ref()
                    .is_none_or(|e| e.kind != ErrorKind::NoWorker)
            })
            .count() as u32;
        if error.kind == ErrorKind::NoWorker
            || (error.kind.retryable() && policy.allows_retry_after(ran))
        {
            let at = now + policy.backoff_ms(number, &job);
            let s = &mut self.steps[i];
            s.status = StepStatus::RetryWait;
            s.retry_at_ms = Some(at);
            fx.push(Effect::Schedule(Timer {
                at_ms: at,
                run_id: self.id.clone(),
                kind: TimerKind::Retry,
                step: Some(step.clone()),
                attempt: number,
            }));
            self.log(
                now,
                "retry_scheduled",
                Some(&step),
                format!("attempt {} at {at}", number + 1),
            );
            self.refresh_status();
        } else {
            let s = &mut self.steps[i];
            s.status = StepStatus::Failed;
            s.error = Some(error.clone());
            let why = if error.kind.retryable() {
                format!("after {ran} attempts")
            } else {
                "(not retryable)".into()
            };
            self.finish(
                RunStatus::Failed,
                format!("step {step} failed {why}: {}", error.message),
                now,
                fx,
            );
        }
    }

    /// Ends the run with `status`: stops every active job and skips every
    /// step that did not start.
    fn finish(&mut self, status: RunStatus, why: String, now: u64, fx: &mut Vec<Effect>) {
        for s in &mut self.steps {
            match s.status {
                StepStatus::Dispatched | StepStatus::Running => {
                    s.status = StepStatus::Cancelled;
                    s.lease_expires_at_ms = None;
                    s.attempt_deadline_ms = None;
                    let a = s.current_mut().expect("active step has an attempt");
                    a.finished_at_ms = Some(now);
                    a.error = Some(JobError {
                        kind: ErrorKind::Cancelled,
                        message: why.clone(),
                    });
                    fx.push(Effect::CancelJob {
                        job_id: a.job_id.clone(),
                        worker: a.worker.clone(),
                    });
                }
                StepStatus::Pending | StepStatus::WaitingApproval | StepStatus::RetryWait => {
                    s.status = StepStatus::Skipped;
                    s.retry_at_ms = None;
                }
                StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled => {}
            }
        }
        self.status = status;
        self.finished_at_ms = Some(now);
        if status != RunStatus::Succeeded {
            self.error = Some(why.clone());
        }
        self.log(now, &format!("run_{}", status.as_str()), None, why);
    }

    /// Moves every ready step forward and settles the run's status.
    fn advance(&mut self, now: u64, fx: &mut Vec<Effect>) {
        for i in 0..self.steps.len() {
            if self.steps[i].status != StepStatus::Pending {
                continue;
            }
            let ready = self.plan[i].needs.iter().all(|n| {
                self.step(n)
                    .is_some_and(|s| s.status == StepStatus::Succeeded)
            });
            if !ready {
                continue;
            }
            if self.plan[i].agent.risk_level == RiskLevel::ApprovalRequired {
                self.steps[i].status = StepStatus::WaitingApproval;
                let step = self.steps[i].id.clone();
                let agent = self.plan[i].agent.name.to_string();
                self.log(
                    now,
                    "approval_requested",
                    Some(&step),
                    format!("agent {agent} requires approval"),
                );
            } else {
                self.dispatch(i, now, fx);
            }
        }
        if self.steps.iter().all(|s| s.status == StepStatus::Succeeded) {
            self.finish(RunStatus::Succeeded, "every step succeeded".into(), now, fx);
        } else {
            self.refresh_status();
        }
    }

    fn refresh_status(&mut self) {
        if self.status.is_terminal() || self.status == RunStatus::Queued {
            return;
        }
        let busy = self
            .steps
            .iter()
            .any(|s| s.status.is_active() || s.status == StepStatus::RetryWait);
        let waiting = self
            .steps
            .iter()
            .any(|s| s.status == StepStatus::WaitingApproval);
        self.status = if !busy && waiting {
            RunStatus::WaitingApproval
        } else {
            RunStatus::Running
        };
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
