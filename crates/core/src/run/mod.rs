//! Runs: the state machine at Spindle's heart.
//!
//! A [`Run`] is one document holding everything about one execution of a
//! workflow: a snapshot of the workflow and agent versions it started with
//! (its plan), every step's state and attempts, and an audit trail. Every
//! change is [`Run::apply`]: a pure function of (run, event, now) that returns
//! the next run, if the event changed it, and every [`Effect`] for the caller
//! to carry out. Callers apply it inside a compare-and-swap loop on the run
//! document, so concurrent events serialize; and because a repeated event is
//! a no-op, a retried or duplicated event is harmless.
//!
//! Effects that reach outside (dispatching a job) are guarded again by the
//! caller with an atomic-increment claim on the job id, so a job is sent at
//! most once even on stores whose compare-and-swap misreports.
//!
//! - `state.rs`: the data (run, steps, attempts, plan, settings);
//! - `event.rs`: what can happen ([`Event`]) and why it may not apply ([`Reject`]);
//! - `effect.rs`: what a transition asks for ([`Effect`], [`Timer`], [`Transition`]);
//! - `transition.rs`: [`Run::apply`] and every transition.

mod effect;
mod event;
mod state;
mod transition;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::agent::Agent;
use crate::expr;
use crate::ids::{job_id, parse_unit};
use crate::job::{ErrorKind, JobError};
use crate::workflow::{DEFAULT_MAX_ITEMS, DEFAULT_MAX_PARALLEL, Workflow, readable};

pub use effect::{Effect, ScheduleRef, Timer, TimerKind, Transition};
pub use event::{Event, Reject};
pub use state::{
    Attempt, FanOut, MAX_EVENTS, MAX_NO_WORKER_ATTEMPTS, PlannedAgent, PlannedStep, Run, RunEvent,
    RunFailure, RunSettings, RunStatus, StepState, StepStatus, Trigger, TriggerKind,
};
pub use transition::{MAX_ASSESS_TRIES, MAX_LOGS_TAIL_BYTES, MAX_MESSAGE_BYTES};

pub use crate::ids::valid_run_id;

/// Most bytes of item outputs a dependant of a fan-out step reads at once:
/// the items' outputs are gathered into one list in memory.
pub const MAX_GATHERED_BYTES: usize = 8 << 20;

/// Where the output a template reads lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSource {
    /// One job's output.
    Job(String),
    /// A fan-out step's: its items' jobs in order, `None` for a failed item.
    Items(Vec<Option<String>>),
}

/// What to do with a unit that is ready, once its condition and list are
/// evaluated against what it can read.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// Its condition is false: skip it, for this reason.
    Skip(String),
    /// A fan-out step: this many items.
    Expand(u32),
    /// The job's input, rendered and checked against the agent's schema.
    Input(Value),
    /// The input was rendered, and the agent's input schema refuses it:
    /// another agent (a fallback) might take it.
    Refused(JobError),
}

/// A step of an earlier run whose output a re-run reuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reuse {
    /// The step.
    pub step: String,
    /// `(earlier job, job of the re-run)` for each output to copy: one for
    /// a step, one per item for a fan-out step.
    pub outputs: Vec<(String, String)>,
}

impl Run {
    /// A new, queued run of `workflow`, with `agents` holding the current
    /// version of every agent it uses (fallbacks included). Nothing is
    /// started: see [`Run::create`] for a run that is stored already
    /// started.
    pub fn new(
        id: String,
        workflow: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        settings: RunSettings,
        now: u64,
    ) -> Result<Run, String> {
        let created_by = trigger.actor.clone();
        let anc = readable(&workflow.steps, &workflow.on_failure);
        let roles = workflow.roles();
        let agent = |name: &str, step: &str| {
            agents
                .get(name)
                .cloned()
                .ok_or_else(|| format!("agent {name:?} of step {step:?} is not registered"))
        };
        let mut plan = Vec::with_capacity(workflow.steps.len());
        for s in &workflow.steps {
            let primary = agent(&s.agent, &s.id)?;
            let mut fallbacks = Vec::with_capacity(s.fallback.len());
            for name in &s.fallback {
                let a = agent(name, &s.id)?;
                fallbacks.push(PlannedAgent {
                    retry: s.retry.unwrap_or(a.retry),
                    timeout_secs: s.timeout_secs.unwrap_or(a.timeout_secs),
                    agent: a,
                });
            }
            plan.push(PlannedStep {
                id: s.id.clone(),
                needs: s.needs.clone(),
                ancestors: anc
                    .get(s.id.as_str())
                    .map(|a| a.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
                reads: Some(crate::workflow::reads(s).into_iter().collect()),
                input: s.input.clone(),
                retry: s.retry.unwrap_or(primary.retry),
                timeout_secs: s.timeout_secs.unwrap_or(primary.timeout_secs),
                agent: primary,
                role: roles.get(s.id.as_str()).copied().unwrap_or_default(),
                compensate: s.compensate.clone(),
                when: s.when.clone(),
                if_needs_skipped: s.if_needs_skipped,
                for_each: s.for_each.as_ref().map(|e| FanOut {
                    expr: e.clone(),
                    max_parallel: s.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL),
                    max_items: s.max_items.unwrap_or(DEFAULT_MAX_ITEMS),
                    allow_partial_failure: s.allow_partial_failure,
                }),
                fallbacks,
            });
        }
        let steps = plan.iter().map(|p| StepState::new(p.id.clone())).collect();
        let run = Run {
            workflow: workflow.name.clone(),
            workflow_version: workflow.version,
            status: RunStatus::Queued,
            trigger,
            created_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            deadline_at_ms: workflow
                .deadline_secs
                .map(|d| now.saturating_add(u64::from(d) * 1000)),
            error: None,
            failure: None,
            rerun_of: None,
            settings,
            steps,
            plan,
            events: vec![RunEvent {
                at_ms: now,
                kind: "run_created".into(),
                step: None,
                detail: format!("workflow {} v{}", workflow.name, workflow.version),
                actor: created_by,
            }],
            revision: 1,
            workflow_seq: 0,
            idempotency: None,
            id,
        };
        Ok(run)
    }

    /// A new run, already started: the transition holds the run to store
    /// (first revision) and every effect of creating and starting it (the
    /// audit lines, the first steps' lease timers and dispatches). Storing a
    /// started run in one write means there is no queued run for a dead
    /// creator to leave behind: the lease timers, stored first, recover a
    /// dispatch that never happened.
    pub fn create(
        id: String,
        workflow: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        settings: RunSettings,
        now: u64,
    ) -> Result<Transition, String> {
        let run = Run::new(id, workflow, agents, trigger, settings, now)?;
        run.started(now)
    }

    /// Starts a queued run: creation and start as one transition.
    fn started(self, now: u64) -> Result<Transition, String> {
        let mut effects: Vec<Effect> = self.events.iter().cloned().map(Effect::Audit).collect();
        let started = self
            .apply(&Event::Start, now)
            .map_err(|e| format!("starting the run: {e}"))?;
        effects.extend(started.effects);
        let mut run = started.run.unwrap_or(self);
        // One stored revision: creation and start are one write.
        run.revision = 1;
        Ok(Transition {
            run: Some(run),
            effects,
        })
    }

    /// The steps of this (finished) run a re-run may reuse, and the outputs
    /// to copy for them: steps that succeeded, were not undone by their
    /// compensation, do not come at or after `from`, and whose needs are
    /// all reused too. Refuses a `from` that names no normal step.
    pub fn reusable(&self, new_run: &str, from: Option<&str>) -> Result<Vec<Reuse>, String> {
        let redo: BTreeSet<&str> = match from {
            None => BTreeSet::new(),
            Some(f) => {
                let ok = self
                    .planned(f)
                    .is_some_and(|p| p.role.is_normal() && parse_unit(f) == Some((f, None)));
                if !ok {
                    return Err(format!("the run has no step {f:?} to re-run from"));
                }
                self.plan
                    .iter()
                    .filter(|p| p.id == f || p.ancestors.iter().any(|a| a == f))
                    .map(|p| p.id.as_str())
                    .collect()
            }
        };
        let undone = |p: &PlannedStep| {
            p.compensate.as_deref().is_some_and(|c| {
                self.step(c)
                    .is_some_and(|s| !matches!(s.status, StepStatus::Pending | StepStatus::Skipped))
            })
        };
        let mut reused: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        // Plan order is not dependency order: repeat until nothing changes.
        loop {
            let before = reused.len();
            for (p, s) in self.plan.iter().zip(&self.steps) {
                if reused.contains(p.id.as_str())
                    || !p.role.is_normal()
                    || s.status != StepStatus::Succeeded
                    || redo.contains(p.id.as_str())
                    || undone(p)
                    || !p.needs.iter().all(|n| reused.contains(n.as_str()))
                {
                    continue;
                }
                let fan_out = p.for_each.is_some();
                let units: Vec<&StepState> = if fan_out {
                    s.items.iter().collect()
                } else {
                    vec![s]
                };
                let mut outputs = Vec::new();
                let mut complete = true;
                for u in units {
                    match (u.status, u.current()) {
                        (StepStatus::Succeeded, Some(a)) => {
                            outputs.push((a.job_id.clone(), job_id(new_run, &u.id, 1)));
                        }
                        // A failed item of a step allowing it reads as null
                        // again; anything else is redone.
                        (StepStatus::Failed, _) if fan_out => {}
                        _ => complete = false,
                    }
                }
                if complete {
                    reused.insert(&p.id);
                    out.push(Reuse {
                        step: p.id.clone(),
                        outputs,
                    });
                }
            }
            if reused.len() == before {
                break;
            }
        }
        Ok(out)
    }

    /// A re-run of this run: the same plan (workflow and agent versions)
    /// and trigger, with `reuse` (from [`Run::reusable`], outputs already
    /// copied) marked succeeded, started.
    pub fn rerun(
        &self,
        id: String,
        reuse: &[Reuse],
        actor: Option<String>,
        settings: RunSettings,
        now: u64,
    ) -> Result<Transition, String> {
        let mut run = Run {
            id: id.clone(),
            workflow: self.workflow.clone(),
            workflow_version: self.workflow_version,
            status: RunStatus::Queued,
            trigger: Trigger {
                actor: actor.clone(),
                ..self.trigger.clone()
            },
            created_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            deadline_at_ms: self
                .deadline_at_ms
                .map(|d| now.saturating_add(d.saturating_sub(self.created_at_ms))),
            error: None,
            failure: None,
            rerun_of: Some(self.id.clone()),
            settings,
            steps: self
                .plan
                .iter()
                .map(|p| StepState::new(p.id.clone()))
                .collect(),
            plan: self.plan.clone(),
            events: vec![RunEvent {
                at_ms: now,
                kind: "run_created".into(),
                step: None,
                detail: format!(
                    "re-run of {} (workflow {} v{}), reusing {} step(s)",
                    self.id,
                    self.workflow,
                    self.workflow_version,
                    reuse.len()
                ),
                actor,
            }],
            revision: 1,
            workflow_seq: 0,
            idempotency: None,
        };
        for r in reuse {
            let (Some(old), Some(i)) = (self.step(&r.step), run.index_of(&r.step)) else {
                return Err(format!("the run has no step {:?}", r.step));
            };
            let copy = |u: &StepState| {
                let mut n = StepState::new(u.id.clone());
                n.status = u.status;
                n.output_bytes = u.output_bytes;
                n.error = u.error.clone();
                n.done_at_ms = u.done_at_ms.or(Some(now));
                if let Some(a) = u.current().filter(|_| u.status == StepStatus::Succeeded) {
                    n.reused_from = Some(a.job_id.clone());
                    n.attempts.push(Attempt {
                        number: 1,
                        job_id: job_id(&id, &u.id, 1),
                        worker: None,
                        agent: a.agent.clone(),
                        dispatched_at_ms: now,
                        started_at_ms: None,
                        finished_at_ms: Some(now),
                        exit_code: a.exit_code,
                        error: None,
                        logs_tail: String::new(),
                    });
                }
                n
            };
            let mut state = copy(old);
            state.items = old.items.iter().map(copy).collect();
            run.steps[i] = state;
            let detail = format!("reuses the output of {}", old.id);
            run.events.push(RunEvent {
                at_ms: now,
                kind: "step_reused".into(),
                step: Some(r.step.clone()),
                detail: match &old.reused_from {
                    Some(job) => format!("{detail} (first made by {job})"),
                    None => format!("{detail} in run {}", self.id),
                },
                actor: None,
            });
        }
        run.started(now)
    }

    /// The plan entry for a unit (an item's is its step's).
    pub fn planned(&self, unit: &str) -> Option<&PlannedStep> {
        let (step, _) = parse_unit(unit)?;
        self.plan.iter().find(|p| p.id == step)
    }

    /// The state of a unit: a step, or an item of a fan-out step.
    pub fn step(&self, unit: &str) -> Option<&StepState> {
        let (step, item) = parse_unit(unit)?;
        let s = self.steps.iter().find(|s| s.id == step)?;
        match item {
            None => Some(s),
            Some(k) => s.items.get(k),
        }
    }

    /// Every unit's state: the steps, each followed by its items.
    pub fn units(&self) -> impl Iterator<Item = &StepState> {
        self.steps
            .iter()
            .flat_map(|s| std::iter::once(s).chain(s.items.iter()))
    }

    fn index_of(&self, step: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == step)
    }

    /// The agent a unit runs now (its step's, or the fallback it moved to),
    /// with its effective retry policy and timeout.
    pub fn agent_for(&self, unit: &str) -> Option<(&Agent, crate::retry::RetryPolicy, u32)> {
        self.planned(unit)?.agent_at(self.step(unit)?.fallback)
    }

    /// What `unit`'s templates and expressions can read besides step
    /// outputs, with `outputs` holding the readable steps' outputs (see
    /// [`Run::readable_outputs`]): every readable step with its status and
    /// output (`null` until it succeeded), and the fan-out item and the
    /// run's failure where they apply.
    pub fn template_context(&self, unit: &str, mut outputs: BTreeMap<String, Value>) -> Value {
        let mut steps = serde_json::Map::new();
        for a in self
            .planned(unit)
            .map_or(&[][..], |p| p.ancestors.as_slice())
        {
            let status = self
                .step(a)
                .map_or(Value::Null, |s| serde_json::json!(s.status));
            let output = outputs.remove(a).unwrap_or(Value::Null);
            steps.insert(
                a.clone(),
                serde_json::json!({"status": status, "output": output}),
            );
        }
        let mut ctx = serde_json::json!({
            "trigger": {"kind": self.trigger.kind, "payload": self.trigger.payload},
            "steps": steps,
            "run": {"id": self.id},
            "workflow": {"name": self.workflow},
        });
        if let Some(f) = &self.failure {
            ctx["failure"] = serde_json::json!({
                "step": f.step,
                "kind": f.error.kind,
                "error": f.error.message,
                "message": f.message,
                "at_ms": f.at_ms,
            });
        }
        ctx
    }

    /// The outputs `unit`'s templates may read: the readable steps that
    /// succeeded and that its templates, condition or list name, and where
    /// each one's output lives.
    pub fn readable_outputs(&self, unit: &str) -> Vec<(String, OutputSource)> {
        let Some(p) = self.planned(unit) else {
            return Vec::new();
        };
        Self::read_by(p)
            .filter_map(|a| {
                let s = self.step(a)?;
                if s.status != StepStatus::Succeeded {
                    return None;
                }
                let fan_out = self.planned(a).is_some_and(|p| p.for_each.is_some());
                let source = if !fan_out {
                    OutputSource::Job(s.output_job()?.to_owned())
                } else {
                    OutputSource::Items(
                        s.items
                            .iter()
                            .map(|i| i.output_job().map(str::to_owned))
                            .collect(),
                    )
                };
                Some((a.clone(), source))
            })
            .collect()
    }

    /// The ancestors of `p` whose outputs it reads.
    fn read_by(p: &PlannedStep) -> impl Iterator<Item = &String> {
        p.ancestors
            .iter()
            .filter(|a| p.reads.as_ref().is_none_or(|r| r.contains(a)))
    }

    /// Bytes of output `unit` would read from fan-out steps' items.
    pub fn gathered_bytes(&self, unit: &str) -> usize {
        let Some(p) = self.planned(unit) else {
            return 0;
        };
        // Only what `readable_outputs` reads: succeeded steps' items.
        Self::read_by(p)
            .filter_map(|a| self.step(a))
            .filter(|s| s.status == StepStatus::Succeeded)
            .flat_map(|s| s.items.iter())
            .map(|i| i.output_bytes.unwrap_or(0))
            .sum()
    }

    /// Decides what a ready unit needs, from the outputs it can read: a
    /// step's condition, a fan-out step's list, else its input. Errors are
    /// for good (the same outputs always give the same answer).
    pub fn prepare(
        &self,
        unit: &str,
        outputs: BTreeMap<String, Value>,
    ) -> Result<Prepared, JobError> {
        let p = self
            .planned(unit)
            .ok_or_else(|| invalid(format!("the run has no step {unit}")))?;
        let is_item = parse_unit(unit).is_some_and(|(_, k)| k.is_some());
        let ctx = self.template_context(unit, outputs);
        if !is_item {
            if let Some(src) = &p.when {
                let cond = expr::parse(src)
                    .map_err(|e| invalid(format!("condition {src:?} does not parse: {e}")))?;
                let yes = cond
                    .eval_bool(&ctx)
                    .map_err(|e| invalid(format!("condition {src:?}: {e}")))?;
                if !yes {
                    return Ok(Prepared::Skip(format!("its condition is false: {src}")));
                }
            }
            if let Some(f) = &p.for_each {
                let n = fan_out_list(f, &ctx)?.len();
                return Ok(Prepared::Expand(n as u32));
            }
        }
        let input = self.render_with(unit, ctx)?;
        Ok(match self.check_input(unit, &input) {
            Ok(()) => Prepared::Input(input),
            Err(e) => Prepared::Refused(e),
        })
    }

    /// `unit`'s job input, rendered from what it can read and checked
    /// against its agent's input schema.
    pub fn input_for(
        &self,
        unit: &str,
        outputs: BTreeMap<String, Value>,
    ) -> Result<Value, JobError> {
        let ctx = self.template_context(unit, outputs);
        let input = self.render_with(unit, ctx)?;
        self.check_input(unit, &input)?;
        Ok(input)
    }

    /// Renders `unit`'s input template against `ctx` (with its item, for
    /// a fan-out item).
    fn render_with(&self, unit: &str, mut ctx: Value) -> Result<Value, JobError> {
        let p = self
            .planned(unit)
            .ok_or_else(|| invalid(format!("the run has no step {unit}")))?;
        if let (Some((_, Some(k))), Some(f)) = (parse_unit(unit), &p.for_each) {
            let list = fan_out_list(f, &ctx)?;
            let item = list.get(k).cloned().ok_or_else(|| {
                invalid(format!(
                    "for_each gave {} items this time, so there is no item {k}",
                    list.len()
                ))
            })?;
            ctx["item"] = item;
            ctx["item_index"] = Value::from(k);
        }
        crate::template::render(&p.input, &ctx).map_err(|e| invalid(format!("input template {e}")))
    }

    /// Checks a rendered input against the input schema of the agent
    /// `unit` runs now.
    fn check_input(&self, unit: &str, input: &Value) -> Result<(), JobError> {
        let (agent, _, _) = self
            .agent_for(unit)
            .ok_or_else(|| invalid(format!("the run has no agent for {unit}")))?;
        crate::schema::check(&agent.input_schema, input).map_err(|e| {
            invalid(format!(
                "input does not match agent {}'s input schema: {e}",
                agent.name
            ))
        })
    }
}

fn invalid(message: String) -> JobError {
    JobError {
        kind: ErrorKind::InvalidInput,
        message,
    }
}

/// Evaluates a fan-out step's list.
fn fan_out_list(f: &FanOut, ctx: &Value) -> Result<Vec<Value>, JobError> {
    let e = expr::parse(&f.expr)
        .map_err(|e| invalid(format!("for_each {:?} does not parse: {e}", f.expr)))?;
    match e.eval(ctx) {
        Ok(Value::Array(items)) if items.len() > f.max_items as usize => Err(invalid(format!(
            "for_each gave {} items; the step takes at most {} (max_items)",
            items.len(),
            f.max_items
        ))),
        Ok(Value::Array(items)) => Ok(items),
        Ok(other) => Err(invalid(format!(
            "for_each {:?} gave {}, not a list",
            f.expr,
            excerpt(&other)
        ))),
        Err(e) => Err(invalid(format!("for_each {:?}: {e}", f.expr))),
    }
}

fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod tests;
