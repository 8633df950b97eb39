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

use std::collections::BTreeMap;

use serde_json::Value;

use crate::agent::Agent;
use crate::workflow::{Workflow, ancestors};

pub use effect::{Effect, ScheduleRef, Timer, TimerKind, Transition};
pub use event::{Event, Reject};
pub use state::{
    Attempt, MAX_EVENTS, MAX_NO_WORKER_ATTEMPTS, PlannedStep, Run, RunEvent, RunSettings,
    RunStatus, StepState, StepStatus, Trigger, TriggerKind,
};
pub use transition::MAX_ASSESS_TRIES;

pub use crate::ids::valid_run_id;

impl Run {
    /// A new, queued run of `workflow`, with `agents` holding the current
    /// version of every agent it uses. Nothing is started: see
    /// [`Run::create`] for a run that is stored already started.
    pub fn new(
        id: String,
        workflow: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        settings: RunSettings,
        now: u64,
    ) -> Result<Run, String> {
        let created_by = trigger.actor.clone();
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
                gate: None,
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
            deadline_at_ms: workflow
                .deadline_secs
                .map(|d| now.saturating_add(u64::from(d) * 1000)),
            error: None,
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
        let mut effects: Vec<Effect> = run.events.iter().cloned().map(Effect::Audit).collect();
        let started = run
            .apply(&Event::Start, now)
            .map_err(|e| format!("starting the run: {e}"))?;
        effects.extend(started.effects);
        let mut run = started.run.unwrap_or(run);
        // One stored revision: creation and start are one write.
        run.revision = 1;
        Ok(Transition {
            run: Some(run),
            effects,
        })
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
}

#[cfg(test)]
mod tests;
