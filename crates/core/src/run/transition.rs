//! Every transition of a run: [`Run::apply`] and the steps it is made of.

use super::{
    Attempt, Effect, Event, MAX_EVENTS, MAX_NO_WORKER_ATTEMPTS, Reject, Run, RunEvent, RunStatus,
    StepStatus, Timer, TimerKind, Transition,
};
use crate::approval::{Decision, Gate, GateRequest, Outcome, Verdict};
use crate::ids::{JobRef, job_id, parse_job_id};
use crate::job::{ErrorKind, JobError};
use crate::risk::OnExpiry;

/// Most times a step's assessment is asked for (one lease apart) before
/// the step fails: an assessment that never arrives is a broken store or
/// policy, not something waiting fixes.
pub const MAX_ASSESS_TRIES: u32 = 5;

impl Run {
    /// Applies `event` at `now`: the next run (`None` when the event
    /// changes nothing: a duplicate, or a timer that is no longer relevant)
    /// and every effect it produced, which the caller carries out even when
    /// the run did not change. A refused event changes nothing and asks for
    /// nothing.
    pub fn apply(&self, event: &Event, now: u64) -> Result<Transition, Reject> {
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
                self.advance(now, fx);
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
            Event::Gated { step, gate } => {
                let Some(i) = self.index(step) else {
                    return Ok(false);
                };
                if self.steps[i].status != StepStatus::Assessing || self.status.is_terminal() {
                    // Assessed twice (a retried assessment): the first won.
                    return Ok(false);
                }
                self.gate(i, gate, now, fx);
                Ok(true)
            }
            Event::AssessFailed { step, error } => {
                let Some(i) = self.index(step) else {
                    return Ok(false);
                };
                if self.steps[i].status != StepStatus::Assessing || self.status.is_terminal() {
                    return Ok(false);
                }
                self.steps[i].status = StepStatus::Failed;
                self.steps[i].error = Some(error.clone());
                self.log(
                    fx,
                    now,
                    "assessment_failed",
                    Some(step),
                    format!("{:?}: {}", error.kind, error.message),
                );
                self.finish(
                    RunStatus::Failed,
                    format!("step {step} failed (not retryable): {}", error.message),
                    now,
                    fx,
                );
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
                let i = self.index(step).ok_or_else(not_waiting)?;
                let s = &self.steps[i];
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
                    i,
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
                    fx,
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
                let lease = now.saturating_add(self.settings.lease_ms).min(deadline);
                let s = &mut self.steps[i];
                let first = s.status == StepStatus::Dispatched;
                s.status = StepStatus::Running;
                s.lease_expires_at_ms = Some(lease);
                let a = s.current_mut().expect("active step has an attempt");
                a.worker.get_or_insert_with(|| worker.clone());
                if first {
                    a.started_at_ms = Some(now);
                    let step = s.id.clone();
                    self.log(fx, now, "step_running", Some(&step), format!("on {worker}"));
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
                    fx,
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
                if s.status != StepStatus::RetryWait || s.attempt_number() != t.attempt || !due {
                    return Ok(false);
                }
                self.dispatch(i, now, fx);
                self.refresh_status();
                Ok(true)
            }
            // Fired by the engine's schedule handler, never delivered to a run.
            TimerKind::Schedule => Ok(false),
            TimerKind::Assess => {
                let Some(i) = t.step.as_deref().and_then(|s| self.index(s)) else {
                    return Ok(false);
                };
                let s = &self.steps[i];
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
                    let step = self.steps[i].id.clone();
                    let error = JobError {
                        kind: ErrorKind::DispatchFailed,
                        message: format!("its input could not be assessed in {tries} tries"),
                    };
                    self.steps[i].status = StepStatus::Failed;
                    self.steps[i].error = Some(error.clone());
                    self.finish(
                        RunStatus::Failed,
                        format!("step {step} failed: {}", error.message),
                        now,
                        fx,
                    );
                    return Ok(true);
                }
                // The assessment asked for never arrived (its request died,
                // or the store failed): ask again, and keep the timer armed.
                self.ask_assessment(i, tries, now, fx);
                Ok(false)
            }
            TimerKind::ApprovalExpiry => {
                let Some(i) = t.step.as_deref().and_then(|s| self.index(s)) else {
                    return Ok(false);
                };
                let due = self.steps[i]
                    .gate
                    .as_ref()
                    .and_then(|g| g.expires_at_ms)
                    .is_some_and(|at| now >= at);
                if self.steps[i].status != StepStatus::WaitingApproval || !due {
                    return Ok(false);
                }
                self.expire(i, now, fx);
                Ok(true)
            }
            TimerKind::Lease => {
                let Some(i) = t.step.as_deref().and_then(|s| self.index(s)) else {
                    return Ok(false);
                };
                let s = &self.steps[i];
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

    fn deadline_timer(&self, at_ms: u64) -> Timer {
        Timer {
            at_ms,
            run_id: self.id.clone(),
            kind: TimerKind::Deadline,
            step: None,
            attempt: 0,
            schedule: None,
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
        let JobRef { run, step, attempt } = parse_job_id(job).ok_or_else(unknown)?;
        if run != self.id {
            return Err(unknown());
        }
        let i = self.index(step).ok_or_else(unknown)?;
        let s = &self.steps[i];
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
        Ok(i)
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

    /// Starts the next attempt of step `i`, with a timer on its lease.
    fn dispatch(&mut self, i: usize, now: u64, fx: &mut Vec<Effect>) {
        self.dispatch_leased(i, now, fx, true);
    }

    /// Starts the next attempt of step `i`; `arm` says whether it needs a
    /// lease timer of its own (not when the step's assessment timer, still
    /// armed, watches its first attempt).
    fn dispatch_leased(&mut self, i: usize, now: u64, fx: &mut Vec<Effect>, arm: bool) {
        let lease_ms = self.settings.lease_ms;
        let timeout_ms = u64::from(self.plan[i].timeout_secs) * 1000;
        let s = &mut self.steps[i];
        let number = s.attempt_number() + 1;
        let job = job_id(&self.id, &s.id, number);
        s.status = StepStatus::Dispatched;
        s.retry_at_ms = None;
        s.lease_expires_at_ms = Some(now.saturating_add(lease_ms));
        s.attempt_deadline_ms = Some(now.saturating_add(timeout_ms).saturating_add(lease_ms));
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
        if arm {
            fx.push(Effect::Schedule(Timer {
                at_ms: now.saturating_add(lease_ms),
                run_id: self.id.clone(),
                kind: TimerKind::Lease,
                step: Some(step.clone()),
                attempt: number,
                schedule: None,
            }));
        }
        fx.push(Effect::Dispatch {
            job_id: job.clone(),
            step: step.clone(),
        });
        self.log(
            fx,
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
            fx,
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
            let at = now.saturating_add(policy.backoff_ms(number, &job));
            let s = &mut self.steps[i];
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
            s.retry_at_ms = Some(at);
            fx.push(Effect::Schedule(Timer {
                at_ms: at,
                run_id: self.id.clone(),
                kind: TimerKind::Retry,
                step: Some(step.clone()),
                attempt: number,
                schedule: None,
            }));
            self.log(
                fx,
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
                StepStatus::Pending
                | StepStatus::Assessing
                | StepStatus::WaitingApproval
                | StepStatus::RetryWait => {
                    s.status = StepStatus::Skipped;
                    s.retry_at_ms = None;
                    if let Some(g) = s.gate.as_mut().filter(|g| g.outcome.is_none()) {
                        g.outcome = Some(Outcome::Cancelled);
                        g.decided_at_ms = Some(now);
                    }
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
        self.log(fx, now, &format!("run_{}", status.as_str()), None, why);
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
            // Every step is assessed before its first dispatch: the risk
            // lies in the rendered input as much as in the agent.
            self.steps[i].status = StepStatus::Assessing;
            self.ask_assessment(i, 0, now, fx);
        }
        if self.steps.iter().all(|s| s.status == StepStatus::Succeeded) {
            self.finish(RunStatus::Succeeded, "every step succeeded".into(), now, fx);
        } else {
            self.refresh_status();
        }
    }

    /// Asks the caller to assess step `i` (try `tries`), with a timer that
    /// asks again if the answer never comes.
    fn ask_assessment(&mut self, i: usize, tries: u32, now: u64, fx: &mut Vec<Effect>) {
        let step = self.steps[i].id.clone();
        fx.push(Effect::Schedule(Timer {
            at_ms: now.saturating_add(self.settings.lease_ms),
            run_id: self.id.clone(),
            kind: TimerKind::Assess,
            step: Some(step.clone()),
            attempt: tries,
            schedule: None,
        }));
        fx.push(Effect::Assess { step });
    }

    /// Records step `i`'s assessment: dispatches it at once, or parks it
    /// until approvers decide or the approval expires.
    fn gate(&mut self, i: usize, req: &GateRequest, now: u64, fx: &mut Vec<Effect>) {
        let step = self.steps[i].id.clone();
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
        };
        let Some(approval) = req.approval.clone() else {
            gate.outcome = Some(Outcome::AutoApproved);
            gate.decided_at_ms = Some(now);
            self.steps[i].gate = Some(gate);
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
            self.dispatch_leased(i, now, fx, false);
            self.refresh_status();
            return;
        };
        let expires = now.saturating_add(u64::from(req.policy.expires_in_secs) * 1000);
        gate.needed = req.policy.approvers.max(1);
        gate.expires_at_ms = Some(expires);
        self.steps[i].gate = Some(gate);
        self.steps[i].status = StepStatus::WaitingApproval;
        fx.push(Effect::Schedule(Timer {
            at_ms: expires,
            run_id: self.id.clone(),
            kind: TimerKind::ApprovalExpiry,
            step: Some(step.clone()),
            attempt: 0,
            schedule: None,
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
    fn decide(&mut self, i: usize, d: Decision, now: u64, fx: &mut Vec<Effect>) {
        let step = self.steps[i].id.clone();
        let by = d.by.clone();
        let verdict = d.decision;
        let via = if d.via_link { " via a signed link" } else { "" };
        let comment = if d.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", d.comment)
        };
        let gate = self.steps[i]
            .gate
            .as_mut()
            .expect("a waiting step has a gate");
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
            self.steps[i].status = StepStatus::Failed;
            self.steps[i].error = Some(error.clone());
            self.log_by(
                fx,
                now,
                "step_rejected",
                Some(&step),
                format!("by {by}{via}{comment}; input sha256 {hash}"),
                actor,
            );
            self.finish(
                RunStatus::Failed,
                format!("step {step} {}", error.message),
                now,
                fx,
            );
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
            self.dispatch(i, now, fx);
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
    fn expire(&mut self, i: usize, now: u64, fx: &mut Vec<Effect>) {
        let step = self.steps[i].id.clone();
        let gate = self.steps[i]
            .gate
            .as_mut()
            .expect("a waiting step has a gate");
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
                self.steps[i].status = StepStatus::Failed;
                self.steps[i].error = Some(JobError {
                    kind,
                    message: why.clone(),
                });
                self.finish(RunStatus::Failed, why, now, fx);
            }
        }
    }

    fn refresh_status(&mut self) {
        if self.status.is_terminal() || self.status == RunStatus::Queued {
            return;
        }
        let busy = self.steps.iter().any(|s| {
            s.status.is_active()
                || matches!(s.status, StepStatus::RetryWait | StepStatus::Assessing)
        });
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
