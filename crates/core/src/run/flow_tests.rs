//! Conditions, fan-out, fallbacks, compensation, on-failure steps and
//! re-runs, driven through the public transition the way the engine drives
//! it: every effect is carried out, every assessment answered from
//! [`Run::prepare`] with the outputs the run says it can read.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::tests::{LEASE, agent, failed, ok, settings, workflow};
use super::*;
use crate::agent::RiskLevel;
use crate::approval::{ApprovalRef, GateRequest, Verdict, approval_id};
use crate::job::{ErrorKind, JobError};
use crate::risk::{Level, LevelPolicy, OnExpiry};

/// The engine, simulated: carries out effects, keeps outputs and timers,
/// and remembers what was sent.
struct Sim {
    run: Run,
    now: u64,
    /// Output of each job that succeeded.
    outputs: BTreeMap<String, Value>,
    /// Every job dispatched, in order.
    sent: Vec<String>,
    /// Jobs dispatched and not answered yet.
    in_flight: BTreeSet<String>,
    /// Most jobs in flight at once, per step.
    peak: BTreeMap<String, usize>,
    /// Timers asked for.
    timers: Vec<Timer>,
    /// Every effect, in order.
    fx: Vec<Effect>,
    /// Agents that want an approval.
    risky: Vec<String>,
}

fn all_agents() -> BTreeMap<String, Agent> {
    [
        "scanner", "patcher", "verifier", "notifier", "primary", "backup", "second", "undo",
    ]
    .into_iter()
    .map(|n| {
        let risk = if n == "patcher" {
            "approval_required"
        } else {
            "auto"
        };
        (n.to_owned(), agent(n, risk, 2))
    })
    .collect()
}

impl Sim {
    fn start(w: &Workflow, payload: Value) -> Sim {
        let trigger = Trigger {
            kind: TriggerKind::Manual,
            payload,
            actor: Some("key:ci".into()),
        };
        let t = Run::create("r-1".into(), w, &all_agents(), trigger, settings(), 0).unwrap();
        Sim::from(t)
    }

    fn from(t: Transition) -> Sim {
        let mut sim = Sim {
            run: t.run.clone().unwrap(),
            now: 0,
            outputs: BTreeMap::new(),
            sent: Vec::new(),
            in_flight: BTreeSet::new(),
            peak: BTreeMap::new(),
            timers: Vec::new(),
            fx: Vec::new(),
            risky: vec!["patcher".into()],
        };
        sim.carry_out(t.effects);
        sim
    }

    /// What the engine reads for `unit`'s templates.
    fn readable(&self, unit: &str) -> BTreeMap<String, Value> {
        self.run
            .readable_outputs(unit)
            .into_iter()
            .map(|(step, source)| {
                let v = match source {
                    OutputSource::Job(job) => {
                        self.outputs.get(&job).cloned().unwrap_or(Value::Null)
                    }
                    OutputSource::Items(jobs) => Value::Array(
                        jobs.iter()
                            .map(|j| {
                                j.as_ref()
                                    .and_then(|j| self.outputs.get(j).cloned())
                                    .unwrap_or(Value::Null)
                            })
                            .collect(),
                    ),
                };
                (step, v)
            })
            .collect()
    }

    /// The engine's answer to an assessment.
    fn assess(&self, unit: &str) -> Event {
        let fallback = self.run.step(unit).unwrap().fallback;
        match self.run.prepare(unit, self.readable(unit)) {
            Err(error) => Event::AssessFailed {
                step: unit.into(),
                error,
                fallback,
                agent_refused: false,
            },
            Ok(Prepared::Refused(error)) => Event::AssessFailed {
                step: unit.into(),
                error,
                fallback,
                agent_refused: true,
            },
            Ok(Prepared::Skip(reason)) => Event::Skip {
                step: unit.into(),
                reason,
                fallback,
            },
            Ok(Prepared::Expand(items)) => Event::Expand {
                step: unit.into(),
                items,
                fallback,
            },
            Ok(Prepared::Input(input)) => {
                let (agent, _, _) = self.run.agent_for(unit).unwrap();
                let risky = agent.risk_level == RiskLevel::ApprovalRequired
                    || self.risky.iter().any(|r| *r == agent.name.as_str());
                Event::Gated {
                    step: unit.into(),
                    gate: GateRequest {
                        level: if risky { Level::High } else { Level::Low },
                        score: 0,
                        matched: vec![],
                        rules_checked: 1,
                        input_sha256: crate::approval::input_digest(&input),
                        approval: risky.then(|| ApprovalRef {
                            id: approval_id(&self.run.id, unit, fallback),
                            seq: 1,
                        }),
                        policy: LevelPolicy {
                            expires_in_secs: 3600,
                            approvers: 1,
                            on_expiry: OnExpiry::Reject,
                        },
                        allow_self_approval: false,
                    },
                    fallback,
                }
            }
        }
    }

    fn carry_out(&mut self, fx: Vec<Effect>) {
        let mut queue: std::collections::VecDeque<Effect> = fx.into();
        while let Some(e) = queue.pop_front() {
            match &e {
                Effect::Assess { step } => {
                    let event = self.assess(step);
                    let t = self.run.apply(&event, self.now).unwrap();
                    if let Some(run) = t.run {
                        self.run = run;
                    }
                    queue.extend(t.effects);
                }
                Effect::Dispatch { job_id, step } => {
                    // The engine renders the input again at dispatch.
                    self.run
                        .input_for(step, self.readable(step))
                        .unwrap_or_else(|e| panic!("{job_id}: {e:?}"));
                    self.sent.push(job_id.clone());
                    self.in_flight.insert(job_id.clone());
                    let base = parse_unit(step).unwrap().0.to_owned();
                    let n = self
                        .in_flight
                        .iter()
                        .filter(|j| parse_unit(parse_job_id_unit(j)).unwrap().0 == base)
                        .count();
                    let peak = self.peak.entry(base).or_default();
                    *peak = (*peak).max(n);
                }
                Effect::CancelJob { job_id, .. } => {
                    self.in_flight.remove(job_id);
                }
                Effect::Schedule(t) => self.timers.push(t.clone()),
                Effect::Audit(_) => {}
            }
            self.fx.push(e);
        }
    }

    fn apply(&mut self, e: Event) {
        let t = self
            .run
            .apply(&e, self.now)
            .unwrap_or_else(|r| panic!("{e:?}: {r}"));
        if let Some(run) = t.run {
            self.run = run;
        }
        self.carry_out(t.effects);
    }

    fn ok(&mut self, job: &str, output: Value) {
        self.now += 1;
        self.in_flight.remove(job);
        self.outputs.insert(job.to_owned(), output.clone());
        self.apply(Event::Succeeded {
            job_id: job.into(),
            worker: "w1".into(),
            output_bytes: output.to_string().len(),
            exit_code: Some(0),
            started_at_ms: self.now,
        });
    }

    fn fail(&mut self, job: &str, kind: ErrorKind) {
        self.now += 1;
        self.in_flight.remove(job);
        self.apply(Event::Failed {
            job_id: job.into(),
            worker: "w1".into(),
            error: JobError {
                kind,
                message: format!("{job} broke"),
            },
            exit_code: Some(65),
            logs_tail: String::new(),
            started_at_ms: self.now,
        });
    }

    fn decide(&mut self, unit: &str, verdict: Verdict) {
        let approval = self
            .run
            .step(unit)
            .and_then(|s| s.gate.as_ref())
            .and_then(|g| g.approval.as_ref())
            .map(|a| a.id.clone())
            .unwrap();
        self.now += 1;
        self.apply(Event::Decide {
            step: unit.into(),
            approval,
            decision: verdict,
            by: "key:alice".into(),
            comment: String::new(),
            via_link: false,
            input_sha256: None,
        });
    }

    /// The job a unit is on now.
    fn job(&self, unit: &str) -> String {
        self.run
            .step(unit)
            .unwrap()
            .current()
            .unwrap()
            .job_id
            .clone()
    }

    fn status(&self, unit: &str) -> StepStatus {
        self.run.step(unit).unwrap().status
    }

    /// Fires every timer due by `now` (jumping there).
    fn tick(&mut self, now: u64) {
        self.now = now;
        let (due, later): (Vec<Timer>, Vec<Timer>) =
            self.timers.drain(..).partition(|t| t.at_ms <= now);
        self.timers = later;
        for t in due {
            self.apply(Event::Timer(t));
        }
    }
}

fn parse_job_id_unit(job: &str) -> &str {
    crate::ids::parse_job_id(job).unwrap().step
}

fn kinds(run: &Run) -> Vec<&str> {
    run.events.iter().map(|e| e.kind.as_str()).collect()
}

fn scan_then_patch(when: &str) -> Workflow {
    workflow(json!({"name": "fix", "steps": [
        {"id": "scan", "agent": "scanner"},
        {"id": "patch", "agent": "primary", "needs": ["scan"], "when": when,
         "input": {"findings": "{{ steps.scan.output.findings }}"}},
        {"id": "verify", "agent": "verifier", "needs": ["patch"]},
        {"id": "notify", "agent": "notifier", "needs": ["patch"], "if_needs_skipped": "run",
         "input": {"patched": "{{ steps.patch.output }}", "scan": "{{ steps.scan.output.summary }}"}}
    ]}))
}

#[test]
fn a_false_condition_skips_the_step_and_its_dependants_unless_they_say_run() {
    let mut sim = Sim::start(
        &scan_then_patch("steps.scan.output.summary.high > 0"),
        json!({}),
    );
    let scan = sim.job("scan");
    sim.ok(&scan, json!({"findings": [], "summary": {"high": 0}}));
    assert_eq!(sim.status("patch"), StepStatus::Skipped);
    let reason = sim.run.step("patch").unwrap().skip_reason.clone().unwrap();
    assert!(
        reason.contains("steps.scan.output.summary.high > 0"),
        "{reason}"
    );
    // `verify` follows the default rule; `notify` declared it runs.
    assert_eq!(sim.status("verify"), StepStatus::Skipped);
    assert!(
        sim.run.step("verify").unwrap().skip_reason.as_deref()
            == Some("it needs patch, which was skipped")
    );
    let notify = sim.job("notify");
    let input = sim.run.input_for("notify", sim.readable("notify")).unwrap();
    assert_eq!(input, json!({"patched": null, "scan": {"high": 0}}));
    sim.ok(&notify, json!({}));
    assert_eq!(sim.run.status, RunStatus::Succeeded);
    assert!(sim.run.events.last().unwrap().detail.contains("2 skipped"));
    assert!(kinds(&sim.run).contains(&"step_skipped"));
}

#[test]
fn a_true_condition_runs_the_step() {
    let mut sim = Sim::start(
        &scan_then_patch("steps.scan.output.summary.high > 0"),
        json!({}),
    );
    let scan = sim.job("scan");
    sim.ok(
        &scan,
        json!({"findings": [{"rule": "x"}], "summary": {"high": 2}}),
    );
    assert_eq!(sim.status("patch"), StepStatus::Dispatched);
    let patch = sim.job("patch");
    sim.ok(&patch, json!({"applied": true}));
    for unit in ["verify", "notify"] {
        let job = sim.job(unit);
        sim.ok(&job, json!({}));
    }
    assert_eq!(sim.run.status, RunStatus::Succeeded);
    assert_eq!(
        sim.run.events.last().unwrap().detail,
        "every step succeeded"
    );
}

#[test]
fn a_condition_that_cannot_be_evaluated_fails_the_step_with_the_reason() {
    let mut sim = Sim::start(
        &scan_then_patch("steps.scan.output.summary.high > 0"),
        json!({}),
    );
    let scan = sim.job("scan");
    // No summary: `null > 0` is a type error, not a silent false.
    sim.ok(&scan, json!({"findings": []}));
    assert_eq!(sim.status("patch"), StepStatus::Failed);
    let err = sim.run.step("patch").unwrap().error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message.contains("condition"), "{err:?}");
    assert_eq!(sim.run.status, RunStatus::Failed);
}

fn fan_out(n: usize, extra: Value) -> Workflow {
    let mut step = json!({"id": "scan", "agent": "scanner", "for_each": "trigger.payload.files",
        "max_parallel": 3, "input": {"path": "{{ item.path }}", "n": "{{ item_index }}"}});
    if let (Value::Object(m), Value::Object(e)) = (&mut step, extra) {
        m.extend(e);
    }
    let _ = n;
    workflow(json!({"name": "each", "steps": [
        step,
        {"id": "report", "agent": "notifier", "needs": ["scan"],
         "input": {"all": "{{ steps.scan.output }}"}}
    ]}))
}

fn files(n: usize) -> Value {
    json!({"files": (0..n).map(|i| json!({"path": format!("f{i}.rs")})).collect::<Vec<_>>()})
}

#[test]
fn a_fan_out_of_twenty_never_runs_more_than_three_and_gathers_in_order() {
    let mut sim = Sim::start(&fan_out(20, json!({})), files(20));
    assert_eq!(sim.status("scan"), StepStatus::FannedOut);
    assert_eq!(sim.run.step("scan").unwrap().items.len(), 20);
    assert_eq!(sim.in_flight.len(), 3);
    // Answer in a scrambled order, always the newest first.
    while let Some(job) = sim.in_flight.iter().next_back().cloned() {
        let unit = parse_job_id_unit(&job).to_owned();
        let k: usize = unit.rsplit('_').next().unwrap().parse().unwrap();
        let input = sim.run.input_for(&unit, BTreeMap::new()).unwrap();
        assert_eq!(input, json!({"path": format!("f{k}.rs"), "n": k}));
        sim.ok(&job, json!({"file": k}));
        assert!(sim.in_flight.len() <= 3);
        if sim.status("scan") != StepStatus::FannedOut {
            break;
        }
    }
    assert_eq!(sim.peak["scan"], 3, "never more than max_parallel");
    assert_eq!(sim.status("scan"), StepStatus::Succeeded);
    assert_eq!(
        sim.sent
            .iter()
            .filter(|j| j.starts_with("r-1.scan_"))
            .count(),
        20,
        "one job per item, each sent once"
    );
    let report = sim.job("report");
    let input = sim.run.input_for("report", sim.readable("report")).unwrap();
    let expected: Vec<Value> = (0..20).map(|k| json!({"file": k})).collect();
    assert_eq!(
        input["all"],
        Value::Array(expected),
        "gathered in list order"
    );
    sim.ok(&report, json!({}));
    assert_eq!(sim.run.status, RunStatus::Succeeded);
}

#[test]
fn a_failed_item_fails_the_step_unless_partial_failure_is_allowed() {
    let mut sim = Sim::start(&fan_out(5, json!({})), files(5));
    let first = sim.job("scan_0");
    sim.fail(&first, ErrorKind::AgentRejected);
    assert_eq!(sim.status("scan_0"), StepStatus::Failed);
    assert_eq!(sim.status("scan"), StepStatus::Failed);
    assert_eq!(sim.status("scan_1"), StepStatus::Cancelled);
    assert_eq!(sim.status("scan_4"), StepStatus::Skipped);
    assert!(sim.in_flight.is_empty(), "running items are cancelled");
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert!(
        sim.run.error.as_deref().unwrap().contains("scan_0"),
        "{:?}",
        sim.run.error
    );

    let mut sim = Sim::start(
        &fan_out(4, json!({"allow_partial_failure": true})),
        files(4),
    );
    let jobs: Vec<String> = (0..3).map(|k| sim.job(&format!("scan_{k}"))).collect();
    sim.fail(&jobs[1], ErrorKind::AgentRejected);
    sim.ok(&jobs[0], json!("zero"));
    sim.ok(&jobs[2], json!("two"));
    let last = sim.job("scan_3");
    sim.ok(&last, json!("three"));
    assert_eq!(sim.status("scan"), StepStatus::Succeeded);
    let input = sim.run.input_for("report", sim.readable("report")).unwrap();
    assert_eq!(input["all"], json!(["zero", null, "two", "three"]));
    assert!(kinds(&sim.run).contains(&"step_fanned_out"));
}

#[test]
fn fan_out_lists_that_are_empty_not_lists_or_too_long_are_handled() {
    let mut sim = Sim::start(&fan_out(0, json!({})), json!({"files": []}));
    assert_eq!(sim.status("scan"), StepStatus::Succeeded);
    let input = sim.run.input_for("report", sim.readable("report")).unwrap();
    assert_eq!(input["all"], json!([]));
    let report = sim.job("report");
    sim.ok(&report, json!({}));
    assert_eq!(sim.run.status, RunStatus::Succeeded);

    let sim = Sim::start(&fan_out(0, json!({})), json!({"files": "x"}));
    let err = sim.run.step("scan").unwrap().error.clone().unwrap();
    assert!(err.message.contains("not a list"), "{err:?}");
    assert_eq!(sim.run.status, RunStatus::Failed);

    let sim = Sim::start(&fan_out(0, json!({"max_items": 3})), files(4));
    let err = sim.run.step("scan").unwrap().error.clone().unwrap();
    assert!(err.message.contains("at most 3"), "{err:?}");
    assert!(sim.sent.is_empty());
}

fn with_fallback() -> Workflow {
    workflow(json!({"name": "fb", "steps": [
        {"id": "check", "agent": "primary", "fallback": ["backup", "patcher"],
         "retry": {"max_attempts": 1}},
        {"id": "after", "agent": "notifier", "needs": ["check"]}
    ]}))
}

#[test]
fn a_fallback_agent_takes_over_when_the_primary_fails_for_good() {
    let mut sim = Sim::start(&with_fallback(), json!({}));
    let first = sim.job("check");
    assert_eq!(first, "r-1.check.1");
    sim.fail(&first, ErrorKind::ExecutorFailed);
    let s = sim.run.step("check").unwrap();
    assert_eq!(s.fallback, 1);
    assert_eq!(sim.status("check"), StepStatus::Dispatched);
    let second = sim.job("check");
    assert_eq!(
        second, "r-1.check.2",
        "attempt numbers go on, so job ids stay unique"
    );
    let attempts: Vec<Option<&str>> = sim
        .run
        .step("check")
        .unwrap()
        .attempts
        .iter()
        .map(|a| a.agent.as_deref())
        .collect();
    assert_eq!(attempts, [Some("primary"), Some("backup")]);
    assert!(kinds(&sim.run).contains(&"step_fallback"));
    // The fallback's first attempt has a lease timer of its own.
    assert!(sim.timers.iter().any(|t| t.kind == TimerKind::Lease
        && t.step.as_deref() == Some("check")
        && t.attempt == 2));

    // The backup fails too; the next fallback needs an approval, under an
    // approval id of its own.
    sim.fail(&second, ErrorKind::AgentFailed);
    assert_eq!(sim.status("check"), StepStatus::WaitingApproval);
    let gate = sim.run.step("check").unwrap().gate.clone().unwrap();
    assert_eq!(gate.approval.unwrap().id, "r-1.check.2");
    sim.decide("check", Verdict::Approve);
    let third = sim.job("check");
    sim.ok(&third, json!({}));
    let after = sim.job("after");
    sim.ok(&after, json!({}));
    assert_eq!(sim.run.status, RunStatus::Succeeded);
}

#[test]
fn a_rejection_or_the_last_fallback_failing_fails_the_step() {
    let w = workflow(json!({"name": "fb", "steps": [
        {"id": "fix", "agent": "patcher", "fallback": ["backup"]}
    ]}));
    let mut sim = Sim::start(&w, json!({}));
    sim.decide("fix", Verdict::Reject);
    assert_eq!(sim.status("fix"), StepStatus::Failed);
    assert_eq!(
        sim.run.step("fix").unwrap().fallback,
        0,
        "a no is not a reason to ask another"
    );
    assert_eq!(sim.run.status, RunStatus::Failed);

    let w = workflow(json!({"name": "fb", "steps": [
        {"id": "fix", "agent": "primary", "fallback": ["backup"], "retry": {"max_attempts": 2, "initial_backoff_ms": 10}}
    ]}));
    let mut sim = Sim::start(&w, json!({}));
    // Each agent has its own retry budget.
    for expected in ["r-1.fix.1", "r-1.fix.2", "r-1.fix.3", "r-1.fix.4"] {
        let job = sim.job("fix");
        assert_eq!(job, expected);
        sim.fail(&job, ErrorKind::AgentFailed);
        // Past any backoff, well before the next lease ends.
        let at = sim.now + LEASE / 10;
        sim.tick(at);
    }
    assert_eq!(sim.status("fix"), StepStatus::Failed);
    assert_eq!(sim.run.status, RunStatus::Failed);
}

fn saga() -> Workflow {
    workflow(json!({"name": "saga", "on_failure": ["tell"], "steps": [
        {"id": "a", "agent": "scanner", "compensate": "undo-a"},
        {"id": "b", "agent": "primary", "needs": ["a"], "compensate": "undo-b"},
        {"id": "side", "agent": "backup", "needs": ["a"], "compensate": "undo-side"},
        {"id": "c", "agent": "verifier", "needs": ["b", "side"]},
        {"id": "undo-a", "agent": "undo", "input": {"of": "{{ steps.a.output }}", "why": "{{ failure.error }}"}},
        {"id": "undo-b", "agent": "undo", "input": {"of": "{{ steps.b.output }}"}},
        {"id": "undo-side", "agent": "undo"},
        {"id": "tell", "agent": "notifier",
         "input": {"failed": "{{ failure.step }}", "error": "{{ failure.error }}", "b": "{{ steps.b.output }}"}}
    ]}))
}

#[test]
fn compensations_run_in_reverse_completion_order_then_on_failure_steps() {
    let mut sim = Sim::start(&saga(), json!({}));
    let a = sim.job("a");
    sim.ok(&a, json!("A"));
    // `side` completes after `b`: it is undone first.
    let (b, side) = (sim.job("b"), sim.job("side"));
    sim.ok(&b, json!("B"));
    sim.ok(&side, json!("S"));
    let c = sim.job("c");
    sim.fail(&c, ErrorKind::AgentRejected);
    assert_eq!(sim.run.status, RunStatus::Compensating);
    assert_eq!(sim.run.failure.as_ref().unwrap().step, "c");

    let mut order = Vec::new();
    for _ in 0..3 {
        let running: Vec<&str> = ["undo-a", "undo-b", "undo-side", "tell"]
            .into_iter()
            .filter(|u| sim.status(u).is_active())
            .collect();
        assert_eq!(running.len(), 1, "one compensation at a time: {running:?}");
        order.push(running[0]);
        let job = sim.job(running[0]);
        if running[0] == "undo-a" {
            let input = sim.run.input_for("undo-a", sim.readable("undo-a")).unwrap();
            assert_eq!(input, json!({"of": "A", "why": "r-1.c.1 broke"}));
        }
        sim.ok(&job, json!({}));
    }
    assert_eq!(order, ["undo-side", "undo-b", "undo-a"]);
    assert_eq!(sim.status("tell"), StepStatus::Dispatched);
    let input = sim.run.input_for("tell", sim.readable("tell")).unwrap();
    assert_eq!(
        input,
        json!({"failed": "c", "error": "r-1.c.1 broke", "b": "B"})
    );
    let tell = sim.job("tell");
    sim.ok(&tell, json!({}));
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert!(
        sim.run
            .error
            .as_deref()
            .unwrap()
            .starts_with("step c failed")
    );
    assert!(kinds(&sim.run).contains(&"run_compensating"));
    assert!(kinds(&sim.run).contains(&"compensation_started"));
}

#[test]
fn only_completed_steps_are_undone_and_a_failed_compensation_does_not_stop_the_rest() {
    let mut sim = Sim::start(&saga(), json!({}));
    let a = sim.job("a");
    sim.ok(&a, json!("A"));
    // `b` fails while `side` still runs: `side` has a compensation, so it
    // is left to finish (it may have done its work); it then fails, so
    // there is nothing of it to undo.
    let (b, side) = (sim.job("b"), sim.job("side"));
    sim.fail(&b, ErrorKind::AgentRejected);
    assert_eq!(sim.status("side"), StepStatus::Dispatched);
    assert_eq!(sim.status("c"), StepStatus::Skipped);
    assert_eq!(sim.run.status, RunStatus::Compensating);
    assert!(
        ["undo-a", "undo-side", "tell"]
            .iter()
            .all(|u| sim.status(u) == StepStatus::Pending),
        "nothing is undone while a step may still complete"
    );
    sim.fail(&side, ErrorKind::AgentFailed);
    assert_eq!(
        sim.status("side"),
        StepStatus::Failed,
        "not retried while failing"
    );
    for unit in ["undo-b", "undo-side"] {
        assert_eq!(sim.status(unit), StepStatus::Skipped);
        assert!(
            sim.run
                .step(unit)
                .unwrap()
                .skip_reason
                .as_deref()
                .unwrap()
                .contains("nothing to undo")
        );
    }
    let undo_a = sim.job("undo-a");
    sim.fail(&undo_a, ErrorKind::AgentRejected);
    assert_eq!(sim.status("undo-a"), StepStatus::Failed);
    let tell = sim.job("tell");
    sim.ok(&tell, json!({}));
    assert_eq!(sim.run.status, RunStatus::Failed);
    let error = sim.run.error.clone().unwrap();
    assert!(error.contains("step b failed"), "{error}");
    assert!(
        error.contains("handler step(s) failed too: undo-a"),
        "{error}"
    );
}

#[test]
fn a_step_running_when_the_run_fails_is_undone_if_it_then_succeeds() {
    let mut sim = Sim::start(&saga(), json!({}));
    let a = sim.job("a");
    sim.ok(&a, json!("A"));
    let (b, side) = (sim.job("b"), sim.job("side"));
    sim.fail(&b, ErrorKind::AgentRejected);
    sim.ok(&side, json!("S"));
    // It completed last: undone first.
    assert!(sim.status("undo-side").is_active(), "{:?}", sim.run.steps);
    let job = sim.job("undo-side");
    sim.ok(&job, json!({}));
    let job = sim.job("undo-a");
    sim.ok(&job, json!({}));
    let tell = sim.job("tell");
    sim.ok(&tell, json!({}));
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert_eq!(sim.status("undo-b"), StepStatus::Skipped);
}

#[test]
fn only_a_job_refused_for_itself_moves_a_step_to_its_fallback() {
    let mut sim = Sim::start(&with_fallback(), json!({}));
    let job = sim.job("check");
    // The store failed while preparing the job, attempt after attempt:
    // no agent's fault, so the step fails without trying the backup.
    sim.now += 1;
    sim.apply(Event::NotDispatched {
        job_id: job,
        error: JobError {
            kind: ErrorKind::DispatchFailed,
            message: "reading the output of step x failed".into(),
        },
        agent_refused: false,
    });
    assert_eq!(sim.status("check"), StepStatus::Failed);
    assert_eq!(sim.run.step("check").unwrap().fallback, 0);

    // Every worker refused the job itself: the backup is tried.
    let mut sim = Sim::start(&with_fallback(), json!({}));
    let job = sim.job("check");
    sim.now += 1;
    sim.apply(Event::NotDispatched {
        job_id: job,
        error: JobError {
            kind: ErrorKind::DispatchFailed,
            message: "no worker accepted the job: w1 answered 400".into(),
        },
        agent_refused: true,
    });
    assert_eq!(sim.run.step("check").unwrap().fallback, 1);
    assert_eq!(sim.status("check"), StepStatus::Dispatched);
}

#[test]
fn handlers_are_skipped_when_the_run_succeeds_and_not_run_when_it_is_cancelled() {
    let mut sim = Sim::start(&saga(), json!({}));
    for unit in ["a", "b", "side", "c"] {
        let job = sim.job(unit);
        sim.ok(&job, json!({}));
    }
    assert_eq!(sim.run.status, RunStatus::Succeeded);
    for unit in ["undo-a", "undo-b", "undo-side", "tell"] {
        assert_eq!(sim.status(unit), StepStatus::Skipped);
        assert_eq!(
            sim.run.step(unit).unwrap().skip_reason.as_deref(),
            Some("not needed: the run succeeded")
        );
    }

    let mut sim = Sim::start(&saga(), json!({}));
    let a = sim.job("a");
    sim.ok(&a, json!({}));
    let b = sim.job("b");
    sim.fail(&b, ErrorKind::AgentRejected);
    assert_eq!(sim.run.status, RunStatus::Compensating);
    sim.apply(Event::Cancel {
        reason: "enough".into(),
        by: None,
    });
    assert_eq!(sim.run.status, RunStatus::Cancelled);
    assert!(sim.in_flight.is_empty());
}

#[test]
fn a_compensation_behind_an_approval_waits_for_it() {
    let w = workflow(json!({"name": "s", "steps": [
        {"id": "a", "agent": "scanner", "compensate": "revert"},
        {"id": "b", "agent": "verifier", "needs": ["a"]},
        {"id": "revert", "agent": "patcher"}
    ]}));
    let mut sim = Sim::start(&w, json!({}));
    let a = sim.job("a");
    sim.ok(&a, json!({}));
    let b = sim.job("b");
    sim.fail(&b, ErrorKind::AgentRejected);
    assert_eq!(sim.status("revert"), StepStatus::WaitingApproval);
    assert_eq!(sim.run.status, RunStatus::Compensating);
    sim.decide("revert", Verdict::Approve);
    let revert = sim.job("revert");
    sim.ok(&revert, json!({}));
    assert_eq!(sim.run.status, RunStatus::Failed);
}

#[test]
fn a_rerun_reuses_what_succeeded_and_runs_the_rest() {
    let w = workflow(json!({"name": "re", "steps": [
        {"id": "a", "agent": "scanner"},
        {"id": "each", "agent": "backup", "needs": ["a"], "for_each": "trigger.payload.files",
         "input": {"p": "{{ item.path }}"}},
        {"id": "b", "agent": "primary", "needs": ["each"], "input": {"all": "{{ steps.each.output }}"}},
        {"id": "c", "agent": "verifier", "needs": ["b"],
         "input": {"b": "{{ steps.b.output }}", "each": "{{ steps.each.output }}"}}
    ]}));
    let mut sim = Sim::start(&w, files(2));
    let a = sim.job("a");
    sim.ok(&a, json!("A"));
    for k in 0..2 {
        let job = sim.job(&format!("each_{k}"));
        sim.ok(&job, json!(k));
    }
    let b = sim.job("b");
    sim.ok(&b, json!("B"));
    let c = sim.job("c");
    sim.fail(&c, ErrorKind::AgentRejected);
    assert_eq!(sim.run.status, RunStatus::Failed);
    let old = sim.run.clone();

    let reuse = old.reusable("r-2", None).unwrap();
    let steps: Vec<&str> = reuse.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(steps, ["a", "each", "b"]);
    assert_eq!(
        reuse[1].outputs,
        [
            ("r-1.each_0.1".to_owned(), "r-2.each_0.1".to_owned()),
            ("r-1.each_1.1".to_owned(), "r-2.each_1.1".to_owned())
        ]
    );
    let t = old
        .rerun(
            "r-2".into(),
            &reuse,
            Some("key:bob".into()),
            settings(),
            100,
        )
        .unwrap();
    let mut sim2 = Sim::from(t);
    for r in &reuse {
        for (from, to) in &r.outputs {
            let v = sim.outputs[from].clone();
            sim2.outputs.insert(to.clone(), v);
        }
    }
    assert_eq!(sim2.run.rerun_of.as_deref(), Some("r-1"));
    assert_eq!(sim2.run.trigger.actor.as_deref(), Some("key:bob"));
    assert_eq!(sim2.sent, ["r-2.c.1"], "only the failed step runs again");
    assert_eq!(sim2.status("b"), StepStatus::Succeeded);
    assert_eq!(
        sim2.run.step("b").unwrap().reused_from.as_deref(),
        Some("r-1.b.1")
    );
    assert_eq!(
        sim2.run.readable_outputs("c"),
        vec![
            ("b".to_owned(), OutputSource::Job("r-2.b.1".into())),
            (
                "each".to_owned(),
                OutputSource::Items(vec![
                    Some("r-2.each_0.1".into()),
                    Some("r-2.each_1.1".into())
                ])
            ),
        ]
    );
    sim2.ok("r-2.c.1", json!({}));
    assert_eq!(sim2.run.status, RunStatus::Succeeded);

    // From a named step: it and everything after it runs again.
    let reuse = old.reusable("r-3", Some("each")).unwrap();
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0].step, "a");
    assert!(old.reusable("r-3", Some("ghost")).is_err());
    assert!(old.reusable("r-3", Some("each_0")).is_err());
}

#[test]
fn a_compensated_step_is_not_reused() {
    let mut sim = Sim::start(&saga(), json!({}));
    for unit in ["a", "b", "side"] {
        let job = sim.job(unit);
        sim.ok(&job, json!({}));
    }
    let c = sim.job("c");
    sim.fail(&c, ErrorKind::AgentRejected);
    for unit in ["undo-side", "undo-b", "undo-a", "tell"] {
        let job = sim.job(unit);
        sim.ok(&job, json!({}));
    }
    assert_eq!(sim.run.status, RunStatus::Failed);
    let reuse = sim.run.reusable("r-2", None).unwrap();
    assert!(
        reuse.is_empty(),
        "every completed step was undone: {reuse:?}"
    );
}

/// Every run ends, whatever its jobs do: each dispatched job is answered
/// (or left to its lease) by a pseudo-random choice, and timers fire when
/// nothing else happens.
#[test]
fn every_run_of_a_rich_workflow_ends_whatever_its_jobs_do() {
    let w = workflow(json!({"name": "rich", "on_failure": ["tell"], "steps": [
        {"id": "scan", "agent": "scanner", "compensate": "undo"},
        {"id": "each", "agent": "primary", "needs": ["scan"], "for_each": "trigger.payload.files",
         "max_parallel": 2, "fallback": ["backup"], "retry": {"max_attempts": 2, "initial_backoff_ms": 10},
         "input": {"p": "{{ item.path }}"}},
        {"id": "maybe", "agent": "second", "needs": ["each"], "when": "len(steps.each.output) > 2"},
        {"id": "last", "agent": "verifier", "needs": ["maybe"], "if_needs_skipped": "run"},
        {"id": "undo", "agent": "undo"},
        {"id": "tell", "agent": "notifier"}
    ]}));
    let mut ended = BTreeMap::new();
    for seed in 0..300u64 {
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let n = (next() % 5) as usize;
        let mut sim = Sim::start(&w, files(n));
        sim.risky.clear();
        for _ in 0..2_000 {
            if sim.run.status.is_terminal() {
                break;
            }
            let pick = sim.in_flight.iter().nth((next() % 7) as usize).cloned();
            match (pick, next() % 6) {
                (Some(job), 0..=2) => sim.ok(&job, json!({"ok": true})),
                (Some(job), 3) => sim.fail(&job, ErrorKind::AgentFailed),
                (Some(job), 4) => sim.fail(&job, ErrorKind::AgentRejected),
                // The job's worker died: only its lease can tell.
                (Some(job), _) => {
                    sim.in_flight.remove(&job);
                }
                (None, _) => {
                    let at = sim.timers.iter().map(|t| t.at_ms).min();
                    match at {
                        Some(at) => sim.tick(at.max(sim.now)),
                        None => break,
                    }
                }
            }
        }
        assert!(
            sim.run.status.is_terminal(),
            "seed {seed}: run stuck in {:?}: {:#?}",
            sim.run.status,
            sim.run.steps
        );
        assert!(
            sim.run.units().all(|u| u.status.is_terminal()),
            "seed {seed}: a unit did not end"
        );
        *ended.entry(sim.run.status).or_insert(0) += 1;
    }
    // The mix of outcomes shows the walk reached every kind of ending.
    assert!(ended.contains_key(&RunStatus::Succeeded), "{ended:?}");
    assert!(ended.contains_key(&RunStatus::Failed), "{ended:?}");
}

#[test]
fn a_late_assessment_for_the_agent_a_step_left_is_ignored() {
    let mut sim = Sim::start(&with_fallback(), json!({}));
    // The assessment of the primary was asked twice (its timer fired); the
    // first answer dispatched it.
    let stale = sim.assess("check");
    let stale_timer = sim
        .timers
        .iter()
        .find(|t| t.kind == TimerKind::Assess && t.step.as_deref() == Some("check"))
        .cloned()
        .unwrap();
    assert!(matches!(&stale, Event::Gated { fallback: 0, .. }));
    let first = sim.job("check");
    sim.fail(&first, ErrorKind::AgentRejected);
    // Now on the backup, being assessed? It was answered at once; make it
    // wait by failing its first attempt too, onto the approval-needing
    // third agent.
    // The backup fails too; its move to the third agent is stored, and
    // that agent's assessment is not in yet.
    let second = sim.job("check");
    let t = sim
        .run
        .apply(&failed(&second, ErrorKind::AgentRejected), 10)
        .unwrap();
    let run = t.run.unwrap();
    let s = run.step("check").unwrap();
    assert_eq!((s.fallback, s.status), (2, StepStatus::Assessing));
    // The primary's late verdict changes nothing, nor does its old timer,
    // however many tries it counted.
    let t = run.apply(&stale, 11).unwrap();
    assert!(!t.changed(), "a stale verdict was applied");
    let old = Timer {
        at_ms: 0,
        attempt: MAX_ASSESS_TRIES,
        ..stale_timer
    };
    let t = run.apply(&Event::Timer(old), 12).unwrap();
    assert!(!t.changed() && t.effects.is_empty(), "{t:?}");
    // The third agent's own answer is taken.
    let mut sim = Sim::from(Transition {
        run: Some(run),
        effects: vec![Effect::Assess {
            step: "check".into(),
        }],
    });
    assert_eq!(sim.status("check"), StepStatus::WaitingApproval);
    sim.decide("check", Verdict::Approve);
    assert_eq!(sim.job("check"), "r-1.check.3");
}

fn schema_agent(name: &str, required: &str) -> Agent {
    let spec: crate::agent::AgentSpec = serde_json::from_value(json!({
        "name": name, "command": [name], "timeout_secs": 10,
        "retry": {"max_attempts": 1},
        "input_schema": {"type": "object", "required": [required]}
    }))
    .unwrap();
    spec.into_agent(0).unwrap()
}

#[test]
fn only_an_agents_own_refusal_of_the_input_falls_back() {
    let w = workflow(json!({"name": "fb", "steps": [
        {"id": "s", "agent": "strict", "fallback": ["lenient"], "input": {"b": 1}}
    ]}));
    let mut agents = all_agents();
    agents.insert("strict".into(), schema_agent("strict", "a"));
    agents.insert("lenient".into(), schema_agent("lenient", "b"));
    let trigger = Trigger {
        kind: TriggerKind::Manual,
        payload: json!({}),
        actor: None,
    };
    let t = Run::create("r-1".into(), &w, &agents, trigger.clone(), settings(), 0).unwrap();
    let sim = Sim::from(t);
    // strict's schema refuses {"b": 1}: the lenient fallback takes it.
    assert_eq!(sim.run.step("s").unwrap().fallback, 1);
    assert_eq!(sim.sent, ["r-1.s.1"]);

    // A condition that cannot be evaluated is no agent's fault.
    let w = workflow(json!({"name": "fb", "steps": [
        {"id": "s", "agent": "lenient", "fallback": ["strict"], "when": "trigger.payload.n > 1",
         "input": {"b": 1}}
    ]}));
    let t = Run::create("r-1".into(), &w, &agents, trigger, settings(), 0).unwrap();
    let sim = Sim::from(t);
    assert_eq!(sim.status("s"), StepStatus::Failed);
    assert_eq!(sim.run.step("s").unwrap().fallback, 0);
    assert!(!kinds(&sim.run).contains(&"step_fallback"));
}

#[test]
fn a_rerun_undoes_reused_steps_after_their_dependants() {
    let w = workflow(json!({"name": "re", "steps": [
        {"id": "z-first", "agent": "scanner", "compensate": "undo-first"},
        {"id": "a-second", "agent": "primary", "needs": ["z-first"], "compensate": "undo-second"},
        {"id": "last", "agent": "verifier", "needs": ["a-second"]},
        {"id": "undo-first", "agent": "undo"},
        {"id": "undo-second", "agent": "undo"}
    ]}));
    let mut sim = Sim::start(&w, json!({}));
    for unit in ["z-first", "a-second"] {
        let job = sim.job(unit);
        sim.ok(&job, json!({}));
    }
    sim.apply(Event::Cancel {
        reason: "stop".into(),
        by: None,
    });
    let reuse = sim.run.reusable("r-2", None).unwrap();
    assert_eq!(reuse.len(), 2);
    let t = sim
        .run
        .rerun("r-2".into(), &reuse, None, settings(), 50)
        .unwrap();
    let mut again = Sim::from(t);
    let last = again.job("last");
    again.fail(&last, ErrorKind::AgentRejected);
    // Both reused steps completed "at once"; the one that needs the other
    // is undone first.
    assert!(
        again.status("undo-second").is_active(),
        "{:?}",
        again.run.steps
    );
    assert_eq!(again.status("undo-first"), StepStatus::Pending);
    let job = again.job("undo-second");
    again.ok(&job, json!({}));
    let job = again.job("undo-first");
    again.ok(&job, json!({}));
    assert_eq!(again.run.status, RunStatus::Failed);
}

#[test]
fn a_corrupt_run_is_refused_and_worker_reports_are_bounded() {
    let mut sim = Sim::start(&saga(), json!({}));
    let mut broken = sim.run.clone();
    broken.plan.pop();
    for e in [
        Event::Start,
        Event::Cancel {
            reason: "x".into(),
            by: None,
        },
        ok("r-1.a.1"),
    ] {
        assert!(matches!(broken.apply(&e, 1), Err(Reject::Corrupt { .. })));
    }
    let a = sim.job("a");
    sim.now += 1;
    sim.apply(Event::Failed {
        job_id: a.clone(),
        worker: "w1".into(),
        error: JobError {
            kind: ErrorKind::AgentFailed,
            message: "é".repeat(10_000),
        },
        exit_code: Some(1),
        logs_tail: "x".repeat(1 << 20),
        started_at_ms: 1,
    });
    let attempt = &sim.run.step("a").unwrap().attempts[0];
    assert!(attempt.logs_tail.len() <= MAX_LOGS_TAIL_BYTES + 3);
    assert!(attempt.logs_tail.starts_with('…'), "a tail keeps its end");
    let message = &attempt.error.as_ref().unwrap().message;
    assert!(message.len() <= MAX_MESSAGE_BYTES + 3, "{}", message.len());
    assert!(message.ends_with('…'));
}
