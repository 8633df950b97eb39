//! Every transition of a run: [`Run::apply`] and the steps it is made of.

use super::{
    Attempt, Effect, Event, MAX_EVENTS, MAX_NO_WORKER_ATTEMPTS, Reject, Run, RunEvent, RunStatus,
    StepStatus, Timer, TimerKind, Transition,
};
use crate::agent::RiskLevel;
use crate::ids::{JobRef, job_id, parse_job_id};
use crate::job::{ErrorKind, JobError};

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
            Event::Decide { step, approved, by } => {
                self.refuse_if_finished()?;
                let i = self
                    .index(step)
                    .filter(|i| self.steps[*i].status == StepStatus::WaitingApproval)
                    .ok_or_else(|| Reject::NotWaitingApproval { step: step.clone() })?;
                if *approved {
                    let actor = Some(by.clone());
                    self.log_by(
                        fx,
                        now,
                        "step_approved",
                        Some(step),
                        format!("by {by}"),
                        actor,
                    );
                    self.dispatch(i, now, fx);
                    self.refresh_status();
                } else {
                    let error = JobError {
                        kind: ErrorKind::Rejected,
                        message: format!("rejected by {by}"),
                    };
                    self.steps[i].status = StepStatus::Failed;
                    self.steps[i].error = Some(error.clone());
                    let actor = Some(by.clone());
                    self.log_by(
                        fx,
                        now,
                        "step_rejected",
                        Some(step),
                        format!("by {by}"),
                        actor,
                    );
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

    /// Starts the next attempt of step `i`.
    fn dispatch(&mut self, i: usize, now: u64, fx: &mut Vec<Effect>) {
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
        fx.push(Effect::Schedule(Timer {
            at_ms: now.saturating_add(lease_ms),
            run_id: self.id.clone(),
            kind: TimerKind::Lease,
            step: Some(step.clone()),
            attempt: number,
            schedule: None,
        }));
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
            if self.plan[i].agent.risk_level == RiskLevel::ApprovalRequired {
                self.steps[i].status = StepStatus::WaitingApproval;
                let step = self.steps[i].id.clone();
                let agent = self.plan[i].agent.name.to_string();
                self.log(
                    fx,
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
