//! Every transition of a run: [`Run::apply`] and the steps it is made of.
//!
//! Transitions work on *units*: a step, or one item of a fan-out step
//! (`<step>_<index>`). Each unit has its own attempts, lease, retries and
//! approval; a fan-out step only counts its items.
//!
//! The normal flow runs each step once its needs ended (succeeded, or
//! skipped by a condition). When a step fails for good, the run stops its
//! normal work and runs its handlers: the compensations of the steps that
//! succeeded, one at a time, the latest-completed step's first; then every
//! on-failure step at once; then it ends `failed`. A cancelled or timed-out
//! run runs no handlers: the user or the deadline asked it to stop.

use super::{
    Attempt, Effect, Event, MAX_EVENTS, MAX_NO_WORKER_ATTEMPTS, Reject, Run, RunEvent, RunFailure,
    RunStatus, StepState, StepStatus, Timer, TimerKind, Transition,
};
use crate::approval::{Decision, Gate, GateRequest, Outcome, Verdict};
use crate::ids::{JobRef, MAX_ITEMS, item_unit, job_id, parse_job_id, parse_unit};
use crate::job::{ErrorKind, JobError};
use crate::retry::RetryPolicy;
use crate::risk::OnExpiry;
use crate::workflow::{IfNeedsSkipped, StepRole};

/// Most times a step's assessment is asked for (one lease apart) before
/// the step fails: an assessment that never arrives is a broken store or
/// policy, not something waiting fixes.
pub const MAX_ASSESS_TRIES: u32 = 5;

/// Most bytes of an attempt's stderr tail the run keeps.
pub const MAX_LOGS_TAIL_BYTES: usize = 4096;
/// Most bytes of an error message the run keeps.
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// How an attempt ended badly, as the transition that ends it learns it.
struct Report {
    error: JobError,
    exit_code: Option<i32>,
    logs_tail: String,
    /// Whether the agent (rather than the store, or the workflow's own
    /// templates) is at fault: only then may a fallback agent be tried.
    agent_at_fault: bool,
}

impl Report {
    fn from_agent(error: JobError) -> Report {
        Report {
            error,
            exit_code: None,
            logs_tail: String::new(),
            agent_at_fault: true,
        }
    }
}

/// The last `max` bytes of `s` at most, on a character boundary: a tail
/// keeps its end, where agents print their verdict.
fn clip_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Where a unit is in the run: a step, or item `k` of step `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Step(usize),
    Item(usize, usize),
}

impl At {
    fn step(self) -> usize {
        match self {
            At::Step(i) | At::Item(i, _) => i,
        }
    }
}

impl Run {
    /// Applies `event` at `now`: the next run (`None` when the event
    /// changes nothing: a duplicate, or a timer that is no longer relevant)
    /// and every effect it produced, which the caller carries out even when
    /// the run did not change. A refused event changes nothing and asks for
    /// nothing.
    pub fn apply(&self, event: &Event, now: u64) -> Result<Transition, Reject> {
        // Transitions index the plan by step position: a stored document
        // whose plan and steps disagree is refused, not indexed out of
        // bounds.
        let lined_up = self.plan.len() == self.steps.len()
            && self.plan.iter().zip(&self.steps).all(|(p, s)| p.id == s.id);
        if !lined_up {
            return Err(Reject::Corrupt {
                run: self.id.clone(),
                why: "its plan and its steps do not line up".into(),
            });
        }
        let mut next = self.clone();
        let mut effects = Vec::new();
        let changed = next.mutate(event, now, &mut effects)?;
        let run = changed.then(|| {
            next.revision += 1;
            next
        });
        Ok(Transition { run, effects })
    }

    fn mutate(&mut self, event: &Event, now: u64, fx: &mut Vec<Effect>) -> Result<bool, Reject> {
        match event {
            Event::Start => {
                if self.status != RunStatus::Queued {
                    return Ok(false);
                }
                self.status = RunStatus::Running;
                self.started_at_ms = Some(now);
                self.log(fx, now, "run_started", None, String::new());
                if let Some(at) = self.deadline_at_ms {
                    fx.push(Effect::Schedule(self.deadline_timer(at)));
                }
                self.settle(now, fx);
                Ok(true)
            }
            Event::Timer(t) => self.on_timer(t, now, fx),
            Event::Cancel { reason, by } => {
                self.refuse_if_finished()?;
                self.log_by(
                    fx,
                    now,
                    "cancel_requested",
                    None,
                    reason.clone(),
                    by.clone(),
                );
                self.finish(
                    RunStatus::Cancelled,
                    format!("cancelled: {reason}"),
                    now,
                    fx,
                );
                Ok(true)
            }
            Event::Gated {
                step,
                gate,
                fallback,
            } => {
                let Some(at) = self.assessing(step, *fallback) else {
                    // Assessed twice (a retried assessment): the first won.
                    return Ok(false);
                };
                self.gate(at, gate, now, fx);
                Ok(true)
            }
            Event::AssessFailed {
                step,
                error,
                fallback,
                agent_refused,
            } => {
                let Some(at) = self.assessing(step, *fallback) else {
                    return Ok(false);
                };
                self.log(
                    fx,
                    now,
                    "assessment_failed",
                    Some(step),
                    format!("{:?}: {}", error.kind, error.message),
                );
                let why = format!("step {step} failed (not retryable): {}", error.message);
                // A template, condition or list no agent can fix is no
                // reason to try another.
                self.give_up(at, error.clone(), why, *agent_refused, now, fx);
                Ok(true)
            }
            Event::Skip {
                step,
                reason,
                fallback,
            } => {
                let Some(At::Step(i)) = self.assessing(step, *fallback) else {
                    return Ok(false);
                };
                self.skip(i, reason.clone(), now, fx);
                self.settle(now, fx);
                Ok(true)
            }
            Event::Expand {
                step,
                items,
                fallback,
            } => {
                let Some(At::Step(i)) = self.assessing(step, *fallback) else {
                    return Ok(false);
                };
                let Some(f) = self.plan[i].for_each.clone() else {
                    return Ok(false);
                };
                let n = (*items as usize).min(f.max_items as usize).min(MAX_ITEMS);
                let rev = self.revision + 1;
                let s = &mut self.steps[i];
                if n == 0 {
                    s.status = StepStatus::Succeeded;
                    s.succeeded_rev = Some(rev);
                    s.output_bytes = Some(2);
                    s.done_at_ms = Some(now);
                    self.log(
                        fx,
                        now,
                        "step_succeeded",
                        Some(step),
                        "for_each gave no items".into(),
                    );
                    self.settle(now, fx);
                    return Ok(true);
                }
                s.status = StepStatus::FannedOut;
                s.items = (0..n).map(|k| StepState::new(item_unit(step, k))).collect();
                self.log(
                    fx,
                    now,
                    "step_fanned_out",
                    Some(step),
                    format!("{n} items, at most {} at once", f.max_parallel),
                );
                self.promote(i, now, fx);
                self.refresh_status();
                Ok(true)
            }
            Event::Decide {
                step,
                approval,
                decision,
                by,
                comment,
                via_link,
                input_sha256,
            } => {
                self.refuse_if_finished()?;
                let not_waiting = || Reject::NotWaitingApproval { step: step.clone() };
                let at = self.locate(step).ok_or_else(not_waiting)?;
                let s = self.unit(at);
                let gate = s
                    .gate
                    .as_ref()
                    .filter(|g| g.approval.as_ref().is_some_and(|a| &a.id == approval))
                    .filter(|_| s.status == StepStatus::WaitingApproval)
                    .ok_or_else(not_waiting)?;
                if gate.expires_at_ms.is_some_and(|at| now >= at) {
                    return Err(Reject::ApprovalExpired {
                        approval: approval.clone(),
                    });
                }
                if gate.decisions.iter().any(|d| &d.by == by) {
                    return Err(Reject::AlreadyDecided {
                        approval: approval.clone(),
                        by: by.clone(),
                    });
                }
                if *decision == Verdict::Approve
                    && !gate.allow_self_approval
                    && gate.requested_by.as_ref() == Some(by)
                {
                    return Err(Reject::SelfApproval { by: by.clone() });
                }
                if let Some(got) = input_sha256
                    && got != &gate.input_sha256
                {
                    return Err(Reject::InputChanged {
                        approval: approval.clone(),
                        expected: gate.input_sha256.clone(),
                        got: got.clone(),
                    });
                }
                self.decide(
                    at,
                    Decision {
                        by: by.clone(),
                        decision: *decision,
                        at_ms: now,
                        comment: comment.clone(),
                        via_link: *via_link,
                    },
                    now,
                    fx,
                );
                Ok(true)
            }
            Event::Accepted { job_id, worker } => {
                let at = self.active_job(job_id)?;
                let Some(a) = self.unit_mut(at).current_mut() else {
                    return Ok(false);
                };
                if a.worker.as_deref() == Some(worker) {
                    return Ok(false);
                }
                a.worker = Some(worker.clone());
                let unit = self.unit(at).id.clone();
                self.log(
                    fx,
                    now,
                    "job_accepted",
                    Some(&unit),
                    format!("{job_id} by {worker}"),
                );
                Ok(true)
            }
            Event::NotDispatched {
                job_id,
                error,
                agent_refused,
            } => {
                let at = self.active_job(job_id)?;
                let report = Report {
                    error: error.clone(),
                    exit_code: None,
                    logs_tail: String::new(),
                    agent_at_fault: *agent_refused,
                };
                self.fail_attempt(at, report, now, fx);
                Ok(true)
            }
            Event::Heartbeat { job_id, worker } => {
                let at = self.active_job(job_id)?;
                let deadline = self.unit(at).attempt_deadline_ms.unwrap_or(u64::MAX);
                if now >= deadline {
                    let (_, timeout, _) = self.agent_plan(at);
                    let report = Report::from_agent(JobError {
                        kind: ErrorKind::Timeout,
                        message: format!("still running after its {timeout} s timeout"),
                    });
                    self.fail_attempt(at, report, now, fx);
                    return Ok(true);
                }
                let lease = now.saturating_add(self.settings.lease_ms).min(deadline);
                let s = self.unit_mut(at);
                let first = s.status == StepStatus::Dispatched;
                s.status = StepStatus::Running;
                s.lease_expires_at_ms = Some(lease);
                if let Some(a) = s.current_mut() {
                    a.worker.get_or_insert_with(|| worker.clone());
                    if first {
                        a.started_at_ms = Some(now);
                    }
                }
                if first {
                    let unit = s.id.clone();
                    self.log(fx, now, "step_running", Some(&unit), format!("on {worker}"));
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
                let at = self.active_job(job_id)?;
                let rev = self.revision + 1;
                let s = self.unit_mut(at);
                s.status = StepStatus::Succeeded;
                s.succeeded_rev = Some(rev);
                s.output_bytes = Some(*output_bytes);
                s.lease_expires_at_ms = None;
                s.attempt_deadline_ms = None;
                s.done_at_ms = Some(now);
                if let Some(a) = s.current_mut() {
                    // Keep the address the job was dispatched to: cancellation uses it.
                    a.worker.get_or_insert_with(|| worker.clone());
                    a.started_at_ms.get_or_insert(*started_at_ms);
                    a.finished_at_ms = Some(now);
                    a.exit_code = *exit_code;
                }
                let unit = s.id.clone();
                self.log(
                    fx,
                    now,
                    "step_succeeded",
                    Some(&unit),
                    format!("{output_bytes} bytes of output"),
                );
                if let At::Item(i, _) = at {
                    self.item_settled(i, now, fx);
                }
                self.settle(now, fx);
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
                let at = self.active_job(job_id)?;
                if let Some(a) = self.unit_mut(at).current_mut() {
                    a.worker.get_or_insert_with(|| worker.clone());
                    a.started_at_ms.get_or_insert(*started_at_ms);
                }
                let report = Report {
                    error: error.clone(),
                    exit_code: *exit_code,
                    logs_tail: logs_tail.clone(),
                    agent_at_fault: true,
                };
                self.fail_attempt(at, report, now, fx);
                Ok(true)
            }
        }
    }

    fn on_timer(&mut self, t: &Timer, now: u64, fx: &mut Vec<Effect>) -> Result<bool, Reject> {
        if self.status.is_terminal() || now < t.at_ms {
            return Ok(false);
        }
        if t.kind == TimerKind::Deadline {
            if self.deadline_at_ms.is_none_or(|d| now < d) {
                return Ok(false);
            }
            self.finish(
                RunStatus::TimedOut,
                "the run passed its deadline".into(),
                now,
                fx,
            );
            return Ok(true);
        }
        // Fired by the engine's schedule handler, never delivered to a run.
        if t.kind == TimerKind::Schedule {
            return Ok(false);
        }
        let Some(at) = t.step.as_deref().and_then(|s| self.locate(s)) else {
            return Ok(false);
        };
        match t.kind {
            TimerKind::Deadline | TimerKind::Schedule => Ok(false),
            TimerKind::Retry => {
                let s = self.unit(at);
                let due = s.retry_at_ms.is_some_and(|r| now >= r);
                if s.status != StepStatus::RetryWait || s.attempt_number() != t.attempt || !due {
                    return Ok(false);
                }
                self.dispatch(at, now, fx);
                self.refresh_status();
                Ok(true)
            }
            TimerKind::Assess => {
                let s = self.unit(at);
                if t.fallback != s.fallback {
                    // Armed for an agent the unit has left.
                    return Ok(false);
                }
                let auto = s
                    .gate
                    .as_ref()
                    .is_some_and(|g| g.outcome == Some(Outcome::AutoApproved));
                if auto && s.status.is_active() && s.attempt_number() == 1 {
                    // Dispatched at once when assessed: this timer is the
                    // first attempt's lease timer.
                    let lease = Timer {
                        kind: TimerKind::Lease,
                        attempt: 1,
                        ..t.clone()
                    };
                    return self.on_timer(&lease, now, fx);
                }
                if s.status != StepStatus::Assessing {
                    return Ok(false);
                }
                let tries = t.attempt.saturating_add(1);
                if tries >= MAX_ASSESS_TRIES {
                    let unit = s.id.clone();
                    let error = JobError {
                        kind: ErrorKind::DispatchFailed,
                        message: format!("its input could not be assessed in {tries} tries"),
                    };
                    let why = format!("step {unit} failed: {}", error.message);
                    // A store that cannot assess one agent's job cannot
                    // assess another's: no fallback.
                    self.give_up(at, error, why, false, now, fx);
                    return Ok(true);
                }
                // The assessment asked for never arrived (its request died,
                // or the store failed): ask again, and keep the timer armed.
                self.ask_assessment(at, tries, now, fx);
                Ok(false)
            }
            TimerKind::ApprovalExpiry => {
                let s = self.unit(at);
                let due = s
                    .gate
                    .as_ref()
                    .and_then(|g| g.expires_at_ms)
                    .is_some_and(|e| now >= e);
                if s.status != StepStatus::WaitingApproval || !due {
                    return Ok(false);
                }
                self.expire(at, now, fx);
                Ok(true)
            }
            TimerKind::Lease => {
                let s = self.unit(at);
                if !s.status.is_active() || s.attempt_number() != t.attempt {
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
                    format!("timed out after {} s", self.agent_plan(at).1)
                } else {
                    format!(
                        "lease expired: no heartbeat from {worker} for {} ms",
                        self.settings.lease_ms
                    )
                };
                let report = Report::from_agent(JobError {
                    kind: ErrorKind::Timeout,
                    message,
                });
                self.fail_attempt(at, report, now, fx);
                Ok(true)
            }
        }
    }

    fn deadline_timer(&self, at_ms: u64) -> Timer {
        Timer {
            at_ms,
            run_id: self.id.clone(),
            kind: TimerKind::Deadline,
            step: None,
            attempt: 0,
            schedule: None,
            fallback: 0,
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

    /// Where unit `unit` (a step or an item) is, if the run has it.
    fn locate(&self, unit: &str) -> Option<At> {
        let (step, item) = parse_unit(unit)?;
        let i = self.steps.iter().position(|s| s.id == step)?;
        match item {
            None => Some(At::Step(i)),
            Some(k) => (k < self.steps[i].items.len()).then_some(At::Item(i, k)),
        }
    }

    /// The unit `unit` if it is being assessed for agent `fallback` in a
    /// running run.
    fn assessing(&self, unit: &str, fallback: u32) -> Option<At> {
        let at = self.locate(unit)?;
        let s = self.unit(at);
        (s.status == StepStatus::Assessing && s.fallback == fallback && !self.status.is_terminal())
            .then_some(at)
    }

    fn unit(&self, at: At) -> &StepState {
        match at {
            At::Step(i) => &self.steps[i],
            At::Item(i, k) => &self.steps[i].items[k],
        }
    }

    fn unit_mut(&mut self, at: At) -> &mut StepState {
        match at {
            At::Step(i) => &mut self.steps[i],
            At::Item(i, k) => &mut self.steps[i].items[k],
        }
    }

    /// The retry policy, timeout and name of the agent unit `at` runs now.
    fn agent_plan(&self, at: At) -> (RetryPolicy, u32, String) {
        let p = &self.plan[at.step()];
        // Past the last fallback (a corrupt document) counts as its own.
        let (agent, retry, timeout) =
            p.agent_at(self.unit(at).fallback)
                .unwrap_or((&p.agent, p.retry, p.timeout_secs));
        (retry, timeout, agent.name.to_string())
    }

    /// The unit for a job that must be the active current attempt.
    fn active_job(&self, job: &str) -> Result<At, Reject> {
        let unknown = || Reject::UnknownJob {
            run: self.id.clone(),
            job_id: job.to_owned(),
        };
        let JobRef { run, step, attempt } = parse_job_id(job).ok_or_else(unknown)?;
        if run != self.id {
            return Err(unknown());
        }
        let at = self.locate(step).ok_or_else(unknown)?;
        let s = self.unit(at);
        let current = s.attempt_number();
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
        Ok(at)
    }

    /// Adds an entry to the run's trail and asks for the same entry in the
    /// audit log.
    fn log(
        &mut self,
        fx: &mut Vec<Effect>,
        at_ms: u64,
        kind: &str,
        step: Option<&str>,
        detail: String,
    ) {
        self.log_by(fx, at_ms, kind, step, detail, None);
    }

    /// [`Self::log`] for an entry a caller caused.
    fn log_by(
        &mut self,
        fx: &mut Vec<Effect>,
        at_ms: u64,
        kind: &str,
        step: Option<&str>,
        detail: String,
        actor: Option<String>,
    ) {
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        let event = RunEvent {
            at_ms,
            kind: kind.to_owned(),
            step: step.map(str::to_owned),
            detail,
            actor,
        };
        fx.push(Effect::Audit(event.clone()));
        self.events.push(event);
    }

    /// Starts the next attempt of unit `at`, with a timer on its lease.
    fn dispatch(&mut self, at: At, now: u64, fx: &mut Vec<Effect>) {
        self.dispatch_leased(at, now, fx, true);
    }

    /// Starts the next attempt of unit `at`; `arm` says whether it needs a
    /// lease timer of its own (not when the unit's assessment timer, still
    /// armed, watches its first attempt).
    fn dispatch_leased(&mut self, at: At, now: u64, fx: &mut Vec<Effect>, arm: bool) {
        let lease_ms = self.settings.lease_ms;
        let (_, timeout_secs, agent) = self.agent_plan(at);
        let timeout_ms = u64::from(timeout_secs) * 1000;
        let run_id = self.id.clone();
        let s = self.unit_mut(at);
        let number = s.attempt_number() + 1;
        let job = job_id(&run_id, &s.id, number);
        if let At::Item(..) = at {
            // A run may hold hundreds of items: each keeps only its newest
            // attempt's logs. (Its attempts stay: they count its retries.)
            for a in &mut s.attempts {
                a.logs_tail.clear();
            }
        }
        s.status = StepStatus::Dispatched;
        s.retry_at_ms = None;
        s.lease_expires_at_ms = Some(now.saturating_add(lease_ms));
        s.attempt_deadline_ms = Some(now.saturating_add(timeout_ms).saturating_add(lease_ms));
        s.attempts.push(Attempt {
            number,
            job_id: job.clone(),
            worker: None,
            agent: Some(agent),
            dispatched_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            exit_code: None,
            error: None,
            logs_tail: String::new(),
        });
        let unit = s.id.clone();
        if arm {
            fx.push(Effect::Schedule(Timer {
                at_ms: now.saturating_add(lease_ms),
                run_id: run_id.clone(),
                kind: TimerKind::Lease,
                step: Some(unit.clone()),
                attempt: number,
                schedule: None,
                fallback: 0,
            }));
        }
        fx.push(Effect::Dispatch {
            job_id: job.clone(),
            step: unit.clone(),
        });
        self.log(
            fx,
            now,
            "step_dispatched",
            Some(&unit),
            format!("attempt {number} as {job}"),
        );
    }

    /// Ends the current attempt of unit `at` with `error`: retries after a
    /// backoff when the error and the policy allow, else gives the unit up.
    fn fail_attempt(&mut self, at: At, report: Report, now: u64, fx: &mut Vec<Effect>) {
        let (policy, _, agent) = self.agent_plan(at);
        let Report {
            error,
            exit_code,
            logs_tail,
            agent_at_fault,
        } = report;
        // Whatever a worker reported, the run document keeps a bounded
        // amount of it: every later change rewrites the whole document.
        let error = JobError {
            kind: error.kind,
            message: clip(&error.message, MAX_MESSAGE_BYTES),
        };
        let s = self.unit_mut(at);
        let fallback = s.fallback;
        let Some(a) = s.current_mut() else {
            return;
        };
        a.finished_at_ms = Some(now);
        a.exit_code = exit_code;
        a.error = Some(error.clone());
        a.logs_tail = clip_tail(&logs_tail, MAX_LOGS_TAIL_BYTES);
        let number = a.number;
        let job = a.job_id.clone();
        let worker = a.worker.clone();
        s.lease_expires_at_ms = None;
        s.attempt_deadline_ms = None;
        let unit = s.id.clone();
        if error.kind == ErrorKind::Timeout {
            // The worker may still be running it; make sure it stops.
            fx.push(Effect::CancelJob {
                job_id: job.clone(),
                worker,
            });
        }
        self.log(
            fx,
            now,
            "attempt_failed",
            Some(&unit),
            format!("attempt {number}: {:?}: {}", error.kind, error.message),
        );
        // An attempt no worker took never ran: it does not use up the retry
        // budget, so a saturated pool delays runs instead of failing them
        // (the run's deadline, if any, still bounds the wait). Only the
        // current agent's attempts count: a fallback starts afresh.
        let own: Vec<&Attempt> = self
            .unit(at)
            .attempts
            .iter()
            .filter(|a| match a.agent.as_deref() {
                Some(name) => name == agent,
                None => fallback == 0,
            })
            .collect();
        let ran = own
            .iter()
            .filter(|a| {
                a.error
                    .as_ref()
                    .is_none_or(|e| e.kind != ErrorKind::NoWorker)
            })
            .count() as u32;
        // A fallback's backoff starts over with its own attempts.
        let own = own.len().max(1) as u32;
        // While the run fails, a normal step still running only finishes
        // (so its compensation knows whether to run): it is not retried.
        let draining = self.failure.is_some() && self.plan[at.step()].role.is_normal();
        if !draining
            && (error.kind == ErrorKind::NoWorker
                || (error.kind.retryable() && policy.allows_retry_after(ran)))
        {
            let retry_at = now.saturating_add(policy.backoff_ms(own, &job));
            let run_id = self.id.clone();
            let s = self.unit_mut(at);
            let no_worker = |a: &Attempt| {
                a.error
                    .as_ref()
                    .is_some_and(|e| e.kind == ErrorKind::NoWorker)
            };
            while s.attempts.iter().filter(|a| no_worker(a)).count() > MAX_NO_WORKER_ATTEMPTS {
                if let Some(oldest) = s.attempts.iter().position(no_worker) {
                    s.attempts.remove(oldest);
                }
            }
            s.status = StepStatus::RetryWait;
            s.retry_at_ms = Some(retry_at);
            fx.push(Effect::Schedule(Timer {
                at_ms: retry_at,
                run_id,
                kind: TimerKind::Retry,
                step: Some(unit.clone()),
                attempt: number,
                schedule: None,
                fallback: 0,
            }));
            self.log(
                fx,
                now,
                "retry_scheduled",
                Some(&unit),
                format!("attempt {} at {retry_at}", number + 1),
            );
            self.refresh_status();
        } else {
            let why = if error.kind.retryable() {
                format!("after {ran} attempts")
            } else {
                "(not retryable)".into()
            };
            let why = format!("step {unit} failed {why}: {}", error.message);
            self.give_up(at, error, why, agent_at_fault, now, fx);
        }
    }

    /// Unit `at` failed for good with `error` (`why` is the run's error if
    /// it ends the run): moves to its next fallback agent when it has one
    /// and `may_fall_back`, else fails it, and with it its fan-out step
    /// (unless the step allows failed items) and then the run.
    fn give_up(
        &mut self,
        at: At,
        error: JobError,
        why: String,
        may_fall_back: bool,
        now: u64,
        fx: &mut Vec<Effect>,
    ) {
        let i = at.step();
        // A human's no, or a stop, is not a reason to try someone else.
        let draining = self.failure.is_some() && self.plan[i].role.is_normal();
        let eligible = may_fall_back
            && !draining
            && !matches!(error.kind, ErrorKind::Rejected | ErrorKind::Cancelled)
            && (self.unit(at).fallback as usize) < self.plan[i].fallbacks.len();
        if eligible {
            let (_, _, from) = self.agent_plan(at);
            let s = self.unit_mut(at);
            s.fallback += 1;
            if let Some(a) = s.gate.take().and_then(|g| g.approval) {
                s.superseded_approvals.push(a);
            }
            s.status = StepStatus::Assessing;
            s.retry_at_ms = None;
            s.lease_expires_at_ms = None;
            s.attempt_deadline_ms = None;
            let unit = s.id.clone();
            let (_, _, to) = self.agent_plan(at);
            self.log(
                fx,
                now,
                "step_fallback",
                Some(&unit),
                format!(
                    "agent {from} failed for good ({:?}: {}); trying fallback agent {to}",
                    error.kind, error.message
                ),
            );
            // Another agent is another risk: assessed afresh.
            self.ask_assessment(at, 0, now, fx);
            self.refresh_status();
            return;
        }
        let s = self.unit_mut(at);
        s.status = StepStatus::Failed;
        s.error = Some(error.clone());
        s.retry_at_ms = None;
        s.lease_expires_at_ms = None;
        s.attempt_deadline_ms = None;
        s.done_at_ms = Some(now);
        match at {
            At::Item(i, k) => {
                let partial = self.plan[i]
                    .for_each
                    .as_ref()
                    .is_some_and(|f| f.allow_partial_failure);
                if partial {
                    self.item_settled(i, now, fx);
                    self.settle(now, fx);
                    return;
                }
                let step = self.steps[i].id.clone();
                self.stop_step(i, &format!("item {k} of step {step} failed"), now, fx);
                let s = &mut self.steps[i];
                s.status = StepStatus::Failed;
                s.error = Some(JobError {
                    kind: error.kind,
                    message: format!("item {k} failed: {}", error.message),
                });
                s.done_at_ms = Some(now);
                self.step_failed(i, why, now, fx);
            }
            At::Step(i) => self.step_failed(i, why, now, fx),
        }
    }

    /// Step `i` failed for good: a handler's failure is recorded and the
    /// handlers go on; a normal step's fails the run.
    fn step_failed(&mut self, i: usize, why: String, now: u64, fx: &mut Vec<Effect>) {
        if !self.plan[i].role.is_normal() {
            let step = self.steps[i].id.clone();
            self.log(fx, now, "handler_failed", Some(&step), why);
            self.settle(now, fx);
            return;
        }
        if self.failure.is_some() {
            // A step left to finish while the run fails: its work did not
            // complete, so there is nothing of it to undo.
            self.settle(now, fx);
            return;
        }
        self.fail_run(i, why, now, fx);
    }

    /// Step `i` failed the run: its normal work stops, and its handlers
    /// run before it ends `failed`.
    fn fail_run(&mut self, i: usize, why: String, now: u64, fx: &mut Vec<Effect>) {
        let step = self.steps[i].id.clone();
        let error = self.steps[i].error.clone().unwrap_or(JobError {
            kind: ErrorKind::AgentFailed,
            message: why.clone(),
        });
        let stop = format!("the run failed at step {step}");
        for j in 0..self.steps.len() {
            // A job already running that has a compensation is left to
            // finish: it may have done its work, and only a step known to
            // have succeeded is undone. Everything else stops now.
            let drain = self.plan[j].compensate.is_some() && self.steps[j].status.is_active();
            if self.plan[j].role.is_normal() && !drain {
                self.stop_step(j, &stop, now, fx);
            }
        }
        self.failure = Some(RunFailure {
            step,
            error,
            message: why.clone(),
            at_ms: now,
        });
        self.skip_needless_compensations(now, fx);
        let handlers = (0..self.steps.len())
            .filter(|&j| {
                !self.plan[j].role.is_normal() && self.steps[j].status == StepStatus::Pending
            })
            .count();
        if handlers == 0 {
            self.finish(RunStatus::Failed, why, now, fx);
            return;
        }
        self.status = RunStatus::Compensating;
        self.log(
            fx,
            now,
            "run_compensating",
            None,
            format!("{why}; {handlers} compensation and on-failure step(s) to run"),
        );
        self.settle(now, fx);
    }

    /// Skips the compensations of steps that ended without succeeding:
    /// they have nothing to undo.
    fn skip_needless_compensations(&mut self, now: u64, fx: &mut Vec<Effect>) {
        for j in 0..self.steps.len() {
            let Some(c) = self.plan[j].compensate.clone() else {
                continue;
            };
            let Some(ci) = self.steps.iter().position(|s| s.id == c) else {
                continue;
            };
            let target = &self.steps[j];
            if target.status.is_terminal()
                && target.status != StepStatus::Succeeded
                && self.steps[ci].status == StepStatus::Pending
            {
                let target = target.id.clone();
                self.skip(
                    ci,
                    format!("step {target} did not complete, so there is nothing to undo"),
                    now,
                    fx,
                );
            }
        }
    }

    /// Stops unit `at` if it has not ended: an active job is cancelled,
    /// anything else skipped (`why` is the reason).
    fn stop_unit(&mut self, at: At, why: &str, now: u64, fx: &mut Vec<Effect>) {
        let s = self.unit_mut(at);
        match s.status {
            StepStatus::Dispatched | StepStatus::Running => {
                s.status = StepStatus::Cancelled;
                s.lease_expires_at_ms = None;
                s.attempt_deadline_ms = None;
                s.done_at_ms = Some(now);
                if let Some(a) = s.current_mut() {
                    a.finished_at_ms = Some(now);
                    a.error = Some(JobError {
                        kind: ErrorKind::Cancelled,
                        message: why.to_owned(),
                    });
                    fx.push(Effect::CancelJob {
                        job_id: a.job_id.clone(),
                        worker: a.worker.clone(),
                    });
                }
            }
            StepStatus::Pending
            | StepStatus::Assessing
            | StepStatus::WaitingApproval
            | StepStatus::RetryWait => {
                s.status = StepStatus::Skipped;
                s.retry_at_ms = None;
                s.done_at_ms = Some(now);
                s.skip_reason.get_or_insert_with(|| why.to_owned());
                if let Some(g) = s.gate.as_mut().filter(|g| g.outcome.is_none()) {
                    g.outcome = Some(Outcome::Cancelled);
                    g.decided_at_ms = Some(now);
                }
            }
            // A fan-out step is stopped through its items (`stop_step`).
            StepStatus::FannedOut
            | StepStatus::Succeeded
            | StepStatus::Failed
            | StepStatus::Skipped
            | StepStatus::Cancelled => {}
        }
    }

    /// Stops step `i` and its items.
    fn stop_step(&mut self, i: usize, why: &str, now: u64, fx: &mut Vec<Effect>) {
        for k in 0..self.steps[i].items.len() {
            self.stop_unit(At::Item(i, k), why, now, fx);
        }
        if self.steps[i].status == StepStatus::FannedOut {
            self.steps[i].status = StepStatus::Cancelled;
            self.steps[i].done_at_ms = Some(now);
        } else {
            self.stop_unit(At::Step(i), why, now, fx);
        }
    }

    /// Ends the run with `status`: stops every active job and skips every
    /// unit that did not start (handlers of a run that did not fail among
    /// them).
    fn finish(&mut self, status: RunStatus, why: String, now: u64, fx: &mut Vec<Effect>) {
        let stop = match status {
            RunStatus::Succeeded => "not needed: the run succeeded".to_owned(),
            _ => format!("the run ended {} first", status.as_str()),
        };
        for i in 0..self.steps.len() {
            self.stop_step(i, &stop, now, fx);
        }
        self.status = status;
        self.finished_at_ms = Some(now);
        let mut why = why;
        if status == RunStatus::Failed {
            let failed: Vec<&str> = self
                .plan
                .iter()
                .zip(&self.steps)
                .filter(|(p, s)| !p.role.is_normal() && s.status == StepStatus::Failed)
                .map(|(p, _)| p.id.as_str())
                .collect();
            if !failed.is_empty() {
                why = format!("{why}; handler step(s) failed too: {}", failed.join(", "));
            }
        }
        if status != RunStatus::Succeeded {
            self.error = Some(why.clone());
        }
        self.log(fx, now, &format!("run_{}", status.as_str()), None, why);
    }

    /// Skips step `i` for `reason`.
    fn skip(&mut self, i: usize, reason: String, now: u64, fx: &mut Vec<Effect>) {
        let s = &mut self.steps[i];
        s.status = StepStatus::Skipped;
        s.done_at_ms = Some(now);
        s.skip_reason = Some(reason.clone());
        let step = s.id.clone();
        self.log(fx, now, "step_skipped", Some(&step), reason);
    }

    /// Moves every ready step forward and settles the run's status: in the
    /// normal flow, steps whose needs ended; while failing, the next
    /// handlers.
    fn settle(&mut self, now: u64, fx: &mut Vec<Effect>) {
        if self.status.is_terminal() || self.status == RunStatus::Queued {
            return;
        }
        if self.failure.is_some() {
            self.settle_handlers(now, fx);
            return;
        }
        // Skips cascade: repeat until no step changes.
        loop {
            let mut skipped = false;
            for i in 0..self.steps.len() {
                if self.steps[i].status != StepStatus::Pending || !self.plan[i].role.is_normal() {
                    continue;
                }
                let status = |n: &String| self.step(n).map(|s| s.status);
                let ended = self.plan[i].needs.iter().all(|n| {
                    matches!(status(n), Some(StepStatus::Succeeded | StepStatus::Skipped))
                });
                if !ended {
                    continue;
                }
                let skipped_need = self.plan[i]
                    .needs
                    .iter()
                    .find(|n| status(n) == Some(StepStatus::Skipped))
                    .cloned();
                if let Some(n) = skipped_need
                    && self.plan[i].if_needs_skipped == IfNeedsSkipped::Skip
                {
                    self.skip(i, format!("it needs {n}, which was skipped"), now, fx);
                    skipped = true;
                    continue;
                }
                // Every step is assessed before its first dispatch: the risk
                // lies in the rendered input as much as in the agent.
                self.steps[i].status = StepStatus::Assessing;
                self.ask_assessment(At::Step(i), 0, now, fx);
            }
            if !skipped {
                break;
            }
        }
        let normal = || {
            self.plan
                .iter()
                .zip(&self.steps)
                .filter(|(p, _)| p.role.is_normal())
        };
        if normal().all(|(_, s)| matches!(s.status, StepStatus::Succeeded | StepStatus::Skipped)) {
            let skipped = normal()
                .filter(|(_, s)| s.status == StepStatus::Skipped)
                .count();
            let why = if skipped == 0 {
                "every step succeeded".to_owned()
            } else {
                format!("every step succeeded or was skipped ({skipped} skipped)")
            };
            self.finish(RunStatus::Succeeded, why, now, fx);
        } else {
            self.refresh_status();
        }
    }

    /// The failing run's next handlers: compensations one at a time, the
    /// latest-completed step's first; then every on-failure step; then the
    /// end.
    fn settle_handlers(&mut self, now: u64, fx: &mut Vec<Effect>) {
        self.skip_needless_compensations(now, fx);
        let draining = (0..self.steps.len()).any(|j| {
            self.plan[j].role.is_normal()
                && self.plan[j].compensate.is_some()
                && !self.steps[j].status.is_terminal()
        });
        if draining {
            // A step left to finish decides whether it is undone.
            self.refresh_status();
            return;
        }
        let in_flight = |s: &StepState| s.status != StepStatus::Pending && !s.status.is_terminal();
        let of_role = |role: StepRole| -> Vec<usize> {
            (0..self.steps.len())
                .filter(|&j| self.plan[j].role == role)
                .collect()
        };
        let compensations = of_role(StepRole::Compensation);
        if compensations.iter().any(|&c| in_flight(&self.steps[c])) {
            self.refresh_status();
            return;
        }
        let target_of = |c: usize| {
            let id = &self.steps[c].id;
            self.plan
                .iter()
                .position(|p| p.compensate.as_ref() == Some(id))
        };
        let next = compensations
            .iter()
            .copied()
            .filter(|&c| self.steps[c].status == StepStatus::Pending)
            .filter_map(|c| target_of(c).map(|t| (c, t)))
            // Latest completion first; among steps a re-run reused (no
            // revision), a dependant before what it needs: it has more
            // ancestors than any of them.
            .max_by_key(|&(_, t)| (self.steps[t].succeeded_rev, self.plan[t].ancestors.len(), t));
        if let Some((c, t)) = next {
            let (comp, target) = (self.steps[c].id.clone(), self.steps[t].id.clone());
            self.steps[c].status = StepStatus::Assessing;
            self.log(
                fx,
                now,
                "compensation_started",
                Some(&comp),
                format!("undoing step {target}"),
            );
            self.ask_assessment(At::Step(c), 0, now, fx);
            self.refresh_status();
            return;
        }
        let on_failure = of_role(StepRole::OnFailure);
        if on_failure.iter().any(|&f| in_flight(&self.steps[f])) {
            self.refresh_status();
            return;
        }
        let pending: Vec<usize> = on_failure
            .into_iter()
            .filter(|&f| self.steps[f].status == StepStatus::Pending)
            .collect();
        if !pending.is_empty() {
            for f in pending {
                self.steps[f].status = StepStatus::Assessing;
                self.ask_assessment(At::Step(f), 0, now, fx);
            }
            self.refresh_status();
            return;
        }
        let why = self
            .failure
            .as_ref()
            .map_or_else(|| "a step failed".to_owned(), |f| f.message.clone());
        self.finish(RunStatus::Failed, why, now, fx);
    }

    /// Starts pending items of fan-out step `i`, up to its `max_parallel`.
    fn promote(&mut self, i: usize, now: u64, fx: &mut Vec<Effect>) {
        let Some(max) = self.plan[i]
            .for_each
            .as_ref()
            .map(|f| f.max_parallel.max(1))
        else {
            return;
        };
        let items = &self.steps[i].items;
        let mut busy = items
            .iter()
            .filter(|u| u.status != StepStatus::Pending && !u.status.is_terminal())
            .count();
        for k in 0..items.len() {
            if busy >= max as usize {
                break;
            }
            if self.steps[i].items[k].status == StepStatus::Pending {
                self.steps[i].items[k].status = StepStatus::Assessing;
                self.ask_assessment(At::Item(i, k), 0, now, fx);
                busy += 1;
            }
        }
    }

    /// An item of fan-out step `i` ended: starts the next ones, and ends
    /// the step once every item has.
    fn item_settled(&mut self, i: usize, now: u64, fx: &mut Vec<Effect>) {
        if self.steps[i].status != StepStatus::FannedOut {
            return;
        }
        self.promote(i, now, fx);
        let rev = self.revision + 1;
        let s = &mut self.steps[i];
        if !s.items.iter().all(|u| u.status.is_terminal()) {
            return;
        }
        let n = s.items.len();
        let failed = s
            .items
            .iter()
            .filter(|u| u.status != StepStatus::Succeeded)
            .count();
        // The gathered list: each output, or `null`, comma-separated.
        let bytes = s
            .items
            .iter()
            .map(|u| u.output_bytes.unwrap_or(4) + 1)
            .sum::<usize>()
            + 1;
        s.status = StepStatus::Succeeded;
        s.succeeded_rev = Some(rev);
        s.output_bytes = Some(bytes);
        s.done_at_ms = Some(now);
        let step = s.id.clone();
        let detail = if failed == 0 {
            format!("all {n} items succeeded")
        } else {
            format!(
                "{} of {n} items succeeded, {failed} failed (allowed)",
                n - failed
            )
        };
        self.log(fx, now, "step_succeeded", Some(&step), detail);
    }

    /// Asks the caller to assess unit `at` (try `tries`), with a timer that
    /// asks again if the answer never comes.
    fn ask_assessment(&mut self, at: At, tries: u32, now: u64, fx: &mut Vec<Effect>) {
        let unit = self.unit(at).id.clone();
        fx.push(Effect::Schedule(Timer {
            at_ms: now.saturating_add(self.settings.lease_ms),
            run_id: self.id.clone(),
            kind: TimerKind::Assess,
            step: Some(unit.clone()),
            attempt: tries,
            schedule: None,
            fallback: self.unit(at).fallback,
        }));
        fx.push(Effect::Assess { step: unit });
    }

    /// Records step `i`'s assessment: dispatches it at once, or parks it
    /// until approvers decide or the approval expires.
    fn gate(&mut self, at: At, req: &GateRequest, now: u64, fx: &mut Vec<Effect>) {
        let step = self.unit(at).id.clone();
        let rules = if req.matched.is_empty() {
            "no rule matched".to_owned()
        } else {
            format!("matched {}", req.matched.join(", "))
        };
        let mut gate = Gate {
            level: req.level,
            score: req.score,
            matched: req.matched.clone(),
            rules_checked: req.rules_checked,
            input_sha256: req.input_sha256.clone(),
            approval: req.approval.clone(),
            needed: 0,
            requested_by: self.trigger.actor.clone(),
            allow_self_approval: req.allow_self_approval,
            expires_at_ms: None,
            on_expiry: req.policy.on_expiry,
            decisions: Vec::new(),
            outcome: None,
            decided_at_ms: None,
            requested_at_ms: Some(now),
        };
        let Some(approval) = req.approval.clone() else {
            gate.outcome = Some(Outcome::AutoApproved);
            gate.decided_at_ms = Some(now);
            // Only a unit's first attempt can lean on its assessment timer.
            let first = self.unit(at).attempts.is_empty();
            self.unit_mut(at).gate = Some(gate);
            self.log(
                fx,
                now,
                "step_auto_approved",
                Some(&step),
                format!(
                    "risk {} (score {}), {} rules checked, {rules}; input sha256 {}",
                    req.level.as_str(),
                    req.score,
                    req.rules_checked,
                    req.input_sha256
                ),
            );
            // The assessment's timer, armed and not yet due, watches the
            // first attempt's lease: one timer per step, not two.
            self.dispatch_leased(at, now, fx, !first);
            self.refresh_status();
            return;
        };
        let expires = now.saturating_add(u64::from(req.policy.expires_in_secs) * 1000);
        gate.needed = req.policy.approvers.max(1);
        gate.expires_at_ms = Some(expires);
        let s = self.unit_mut(at);
        s.gate = Some(gate);
        s.status = StepStatus::WaitingApproval;
        fx.push(Effect::Schedule(Timer {
            at_ms: expires,
            run_id: self.id.clone(),
            kind: TimerKind::ApprovalExpiry,
            step: Some(step.clone()),
            attempt: 0,
            schedule: None,
            fallback: 0,
        }));
        self.log(
            fx,
            now,
            "approval_requested",
            Some(&step),
            format!(
                "approval {}: risk {} (score {}), {rules}; {} approver(s) needed; expires at {expires}; input sha256 {}",
                approval.id,
                req.level.as_str(),
                req.score,
                req.policy.approvers.max(1),
                req.input_sha256
            ),
        );
        self.refresh_status();
    }

    /// Records a decision on step `i`'s approval (already checked): the
    /// last approval needed dispatches it, a rejection fails it.
    fn decide(&mut self, at: At, d: Decision, now: u64, fx: &mut Vec<Effect>) {
        let step = self.unit(at).id.clone();
        let by = d.by.clone();
        let verdict = d.decision;
        let via = if d.via_link { " via a signed link" } else { "" };
        let comment = if d.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", d.comment)
        };
        let Some(gate) = self.unit_mut(at).gate.as_mut() else {
            return;
        };
        gate.decisions.push(d);
        let (approvals, needed) = (gate.approvals(), usize::from(gate.needed));
        let hash = gate.input_sha256.clone();
        let actor = Some(by.clone());
        if verdict == Verdict::Reject {
            gate.outcome = Some(Outcome::Rejected);
            gate.decided_at_ms = Some(now);
            let error = JobError {
                kind: ErrorKind::Rejected,
                message: format!("rejected by {by}{comment}"),
            };
            self.log_by(
                fx,
                now,
                "step_rejected",
                Some(&step),
                format!("by {by}{via}{comment}; input sha256 {hash}"),
                actor,
            );
            let why = format!("step {step} {}", error.message);
            self.give_up(at, error, why, false, now, fx);
        } else if approvals >= needed {
            gate.outcome = Some(Outcome::Approved);
            gate.decided_at_ms = Some(now);
            self.log_by(
                fx,
                now,
                "step_approved",
                Some(&step),
                format!("by {by}{via} ({approvals} of {needed}){comment}; input sha256 {hash}"),
                actor,
            );
            self.dispatch(at, now, fx);
            self.refresh_status();
        } else {
            self.log_by(
                fx,
                now,
                "approval_recorded",
                Some(&step),
                format!("by {by}{via} ({approvals} of {needed}){comment}; input sha256 {hash}"),
                actor,
            );
        }
    }

    /// Step `i`'s approval ran out of time: carries out its on-expiry
    /// action.
    fn expire(&mut self, at: At, now: u64, fx: &mut Vec<Effect>) {
        let step = self.unit(at).id.clone();
        let Some(gate) = self.unit_mut(at).gate.as_mut() else {
            return;
        };
        gate.outcome = Some(Outcome::Expired);
        gate.decided_at_ms = Some(now);
        let action = gate.on_expiry;
        let detail = format!(
            "{} of {} approval(s) when it expired; on expiry: {}",
            gate.approvals(),
            gate.needed,
            action.as_str()
        );
        self.log(fx, now, "approval_expired", Some(&step), detail);
        let why = format!("the approval for step {step} expired");
        match action {
            OnExpiry::Cancel => self.finish(RunStatus::Cancelled, why, now, fx),
            OnExpiry::Reject | OnExpiry::Fail => {
                let kind = if action == OnExpiry::Reject {
                    ErrorKind::Rejected
                } else {
                    ErrorKind::Timeout
                };
                let error = JobError {
                    kind,
                    message: why.clone(),
                };
                self.give_up(at, error, why, false, now, fx);
            }
        }
    }

    fn refresh_status(&mut self) {
        if self.status.is_terminal() || self.status == RunStatus::Queued {
            return;
        }
        if self.failure.is_some() {
            self.status = RunStatus::Compensating;
            return;
        }
        let busy = self.units().any(|s| {
            s.status.is_active()
                || matches!(s.status, StepStatus::RetryWait | StepStatus::Assessing)
        });
        let waiting = self
            .units()
            .any(|s| s.status == StepStatus::WaitingApproval);
        self.status = if !busy && waiting {
            RunStatus::WaitingApproval
        } else {
            RunStatus::Running
        };
    }
}
