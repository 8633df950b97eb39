use super::*;
use crate::agent::{AgentSpec, RiskLevel};
use crate::approval::{ApprovalRef, GateRequest, Outcome, Verdict};
use crate::job::{ErrorKind, JobError};
use crate::risk::{Level, LevelPolicy, OnExpiry};
use crate::workflow::WorkflowSpec;
use serde_json::json;

pub(super) const LEASE: u64 = 1_000;

pub(super) fn agent(name: &str, risk: &str, max_attempts: u32) -> Agent {
    let spec: AgentSpec = serde_json::from_value(json!({
        "name": name, "command": [name], "risk_level": risk, "timeout_secs": 10,
        "retry": {"max_attempts": max_attempts, "initial_backoff_ms": 100, "max_backoff_ms": 1000}
    }))
    .unwrap();
    spec.into_agent(0).unwrap()
}

pub(super) fn agents(risky: &[&str]) -> BTreeMap<String, Agent> {
    ["scanner", "compliance", "reviewer", "notifier", "patcher"]
        .into_iter()
        .map(|n| {
            let risk = if risky.contains(&n) {
                "approval_required"
            } else {
                "auto"
            };
            (n.to_owned(), agent(n, risk, 2))
        })
        .collect()
}

pub(super) fn workflow(v: Value) -> Workflow {
    let spec: WorkflowSpec = serde_json::from_value(v).unwrap();
    spec.validate(|_| true).unwrap();
    spec.into_workflow(0)
}

fn diamond() -> Workflow {
    workflow(json!({"name": "pr", "deadline_secs": 60, "steps": [
        {"id": "scan", "agent": "scanner"},
        {"id": "compliance", "agent": "compliance", "needs": ["scan"]},
        {"id": "review", "agent": "reviewer", "needs": ["scan"]},
        {"id": "notify", "agent": "notifier", "needs": ["compliance", "review"],
         "input": {"f": "{{ steps.scan.output.findings }}"}}
    ]}))
}

pub(super) fn settings() -> RunSettings {
    RunSettings {
        lease_ms: LEASE,
        max_output_bytes: 1 << 20,
    }
}

fn start(w: &Workflow, risky: &[&str]) -> (Run, Vec<Effect>) {
    let trigger = Trigger {
        kind: TriggerKind::Manual,
        payload: json!({"repo": "acme/app"}),
        actor: Some("key:ci".into()),
    };
    let queued = Run::new(
        "r-1".into(),
        w,
        &agents(risky),
        trigger.clone(),
        settings(),
        0,
    )
    .unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
    let t = Run::create("r-1".into(), w, &agents(risky), trigger, settings(), 0).unwrap();
    let run = t.run.expect("a created run is stored");
    assert_eq!(run.revision, 1, "creating and starting is one write");
    assert_eq!(
        t.effects.first(),
        Some(&Effect::Audit(queued.events[0].clone())),
        "the creation is audited first"
    );
    settle(run, t.effects, 0)
}

/// The verdict of an assessment that lets a step run at once.
pub(super) fn auto_gate(step: &str) -> Event {
    Event::Gated {
        step: step.into(),
        gate: GateRequest {
            level: Level::Low,
            score: 0,
            matched: vec![],
            rules_checked: 40,
            input_sha256: "0".repeat(64),
            approval: None,
            policy: LevelPolicy {
                expires_in_secs: 3600,
                approvers: 1,
                on_expiry: OnExpiry::Reject,
            },
            allow_self_approval: false,
        },
        fallback: 0,
    }
}

/// The verdict of an assessment that asks `approvers` approvers, for
/// `secs` seconds, with `on_expiry`.
pub(super) fn approval_gate(step: &str, approvers: u8, secs: u32, on_expiry: OnExpiry) -> Event {
    Event::Gated {
        step: step.into(),
        gate: GateRequest {
            level: Level::High,
            score: 40,
            matched: vec!["env-file".into()],
            rules_checked: 40,
            input_sha256: "a".repeat(64),
            approval: Some(ApprovalRef {
                id: format!("r-1.{step}"),
                seq: 1,
            }),
            policy: LevelPolicy {
                expires_in_secs: secs,
                approvers,
                on_expiry,
            },
            allow_self_approval: false,
        },
        fallback: 0,
    }
}

/// Answers every assessment `fx` asks for the way the engine would with
/// a policy that matches nothing: auto agents run, risky ones wait for one
/// approver. Returns the run and every effect, the answers' included.
fn settle(mut run: Run, mut fx: Vec<Effect>, now: u64) -> (Run, Vec<Effect>) {
    let mut i = 0;
    while i < fx.len() {
        if let Effect::Assess { step } = &fx[i] {
            let risky = run.agent_for(step).unwrap().0.risk_level == RiskLevel::ApprovalRequired;
            let e = if risky {
                approval_gate(step, 1, 3600, OnExpiry::Reject)
            } else {
                auto_gate(step)
            };
            let t = run.apply(&e, now).unwrap();
            if let Some(next) = t.run {
                run = next;
            }
            fx.extend(t.effects);
        }
        i += 1;
    }
    (run, fx)
}

/// Applies an event that must change nothing; returns its effects.
fn unchanged(run: &Run, e: Event, now: u64) -> Vec<Effect> {
    let t = run.apply(&e, now).unwrap();
    assert!(!t.changed(), "{e:?} changed the run");
    t.effects
}

/// Applies an event that must change the run, and answers the
/// assessments it asks for.
fn step(run: &Run, e: Event, now: u64) -> (Run, Vec<Effect>) {
    let t = run.apply(&e, now).unwrap();
    let next = t.run.unwrap_or_else(|| panic!("{e:?} changed nothing"));
    assert_eq!(next.revision, run.revision + 1);
    settle(next, t.effects, now)
}

pub(super) fn dispatched(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Dispatch { job_id, .. } => Some(job_id.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn ok(job: &str) -> Event {
    Event::Succeeded {
        job_id: job.into(),
        worker: "w1".into(),
        output_bytes: 10,
        exit_code: Some(0),
        started_at_ms: 1,
    }
}

pub(super) fn failed(job: &str, kind: ErrorKind) -> Event {
    Event::Failed {
        job_id: job.into(),
        worker: "w1".into(),
        error: JobError {
            kind,
            message: "boom".into(),
        },
        exit_code: Some(1),
        logs_tail: "stderr tail".into(),
        started_at_ms: 1,
    }
}

fn status_of(run: &Run, s: &str) -> StepStatus {
    run.step(s).unwrap().status
}

#[test]
fn a_single_step_run_goes_queued_running_succeeded() {
    let w = workflow(json!({"name": "one", "steps": [{"id": "scan", "agent": "scanner"}]}));
    let (run, fx) = start(&w, &[]);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(dispatched(&fx), ["r-1.scan.1"]);
    // One timer: the assessment's, which watches the first attempt's lease.
    assert_eq!(
        scheduled(&fx),
        [Timer {
            at_ms: LEASE,
            run_id: "r-1".into(),
            kind: TimerKind::Assess,
            step: Some("scan".into()),
            attempt: 0,
            schedule: None,
            fallback: 0,
        }]
    );

    let (run, _) = step(
        &run,
        Event::Accepted {
            job_id: "r-1.scan.1".into(),
            worker: "w1".into(),
        },
        5,
    );
    assert_eq!(
        run.step("scan")
            .unwrap()
            .current()
            .unwrap()
            .worker
            .as_deref(),
        Some("w1")
    );
    let (run, _) = step(
        &run,
        Event::Heartbeat {
            job_id: "r-1.scan.1".into(),
            worker: "w1".into(),
        },
        10,
    );
    assert_eq!(status_of(&run, "scan"), StepStatus::Running);
    assert_eq!(
        run.step("scan").unwrap().lease_expires_at_ms,
        Some(10 + LEASE)
    );

    let (run, fx) = step(&run, ok("r-1.scan.1"), 20);
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.finished_at_ms, Some(20));
    assert_eq!(run.step("scan").unwrap().output_job(), Some("r-1.scan.1"));
    // Every event of the trail is also an audit effect, in order.
    let audited: Vec<&str> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Audit(ev) => Some(ev.kind.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(audited, ["step_succeeded", "run_succeeded"]);
    let trail: Vec<&str> = run.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(&trail[trail.len() - 2..], audited.as_slice());
    // Repeats change nothing, and say why.
    assert!(matches!(
        run.apply(&ok("r-1.scan.1"), 30),
        Err(Reject::JobNotActive { .. })
    ));
    assert!(unchanged(&run, Event::Start, 30).is_empty());
}

#[test]
fn the_diamond_join_starts_once_after_both_branches_in_either_order() {
    let w = diamond();
    for order in [
        ["r-1.compliance.1", "r-1.review.1"],
        ["r-1.review.1", "r-1.compliance.1"],
    ] {
        let (run, fx) = start(&w, &[]);
        assert_eq!(dispatched(&fx), ["r-1.scan.1"]);
        let (run, fx) = step(&run, ok("r-1.scan.1"), 10);
        assert_eq!(dispatched(&fx), ["r-1.compliance.1", "r-1.review.1"]);
        let (run, fx) = step(&run, ok(order[0]), 20);
        assert!(
            dispatched(&fx).is_empty(),
            "notify must wait for both branches"
        );
        assert_eq!(status_of(&run, "notify"), StepStatus::Pending);
        let (run, fx) = step(&run, ok(order[1]), 30);
        assert_eq!(dispatched(&fx), ["r-1.notify.1"]);
        // The duplicate of either branch's result cannot start it again.
        for dup in order {
            assert!(matches!(
                run.apply(&ok(dup), 40),
                Err(Reject::JobNotActive { .. })
            ));
        }
        // Only the outputs its templates name are read: notify's input
        // reads scan's, not those of the branches it waits for.
        assert_eq!(
            run.readable_outputs("notify"),
            [(
                "scan".to_owned(),
                OutputSource::Job("r-1.scan.1".to_owned())
            )]
        );
        let (run, _) = step(&run, ok("r-1.notify.1"), 50);
        assert_eq!(run.status, RunStatus::Succeeded);
    }
}

/// Many interleavings of duplicated results, each applied as a CAS loop
/// would (every event against the latest run): every job is dispatched
/// exactly once and the run always succeeds.
#[test]
fn duplicated_results_in_any_order_never_double_dispatch() {
    let w = diamond();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        let (mut run, fx) = start(&w, &[]);
        let mut sent: Vec<String> = dispatched(&fx);
        let mut pending: Vec<String> = sent.clone();
        let mut now = 1;
        while run.status == RunStatus::Running {
            // Deliver a random outstanding job's result, 1-3 times.
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let job = pending[(seed >> 33) as usize % pending.len()].clone();
            for _ in 0..=((seed >> 20) % 3) {
                now += 1;
                if let Ok(t) = run.apply(&ok(&job), now) {
                    let (next, fx) = settle(t.run.unwrap_or_else(|| run.clone()), t.effects, now);
                    let new = dispatched(&fx);
                    sent.extend(new.iter().cloned());
                    pending.extend(new);
                    run = next;
                }
            }
            pending.retain(|j| j != &job);
        }
        assert_eq!(run.status, RunStatus::Succeeded);
        let mut unique = sent.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), sent.len(), "double dispatch: {sent:?}");
        assert_eq!(sent.len(), 4);
    }
}

#[test]
fn failures_retry_with_backoff_then_fail_the_run_and_skip_the_rest() {
    let (run, _) = start(&diamond(), &[]);
    let (run, fx) = step(&run, failed("r-1.scan.1", ErrorKind::AgentFailed), 10);
    let s = run.step("scan").unwrap();
    assert_eq!(s.status, StepStatus::RetryWait);
    let at = s.retry_at_ms.unwrap();
    assert!(
        (10 + 50..=10 + 100).contains(&at),
        "backoff within [50, 100] ms: {at}"
    );
    let timer = Timer {
        at_ms: at,
        run_id: "r-1".into(),
        kind: TimerKind::Retry,
        step: Some("scan".into()),
        attempt: 1,
        schedule: None,
        fallback: 0,
    };
    assert!(fx.contains(&Effect::Schedule(timer.clone())));
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(s.attempts[0].logs_tail, "stderr tail");

    // Too early: nothing. Due: attempt 2. Again: nothing.
    assert!(unchanged(&run, Event::Timer(timer.clone()), at - 1).is_empty());
    let (run, fx) = step(&run, Event::Timer(timer.clone()), at);
    assert_eq!(dispatched(&fx), ["r-1.scan.2"]);
    assert!(unchanged(&run, Event::Timer(timer), at + 5).is_empty());
    // A late result of attempt 1 is refused.
    assert!(matches!(
        run.apply(&ok("r-1.scan.1"), at + 6),
        Err(Reject::JobNotActive { current: 2, .. })
    ));

    let (run, fx) = step(&run, failed("r-1.scan.2", ErrorKind::AgentFailed), at + 10);
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.as_deref().unwrap().contains("after 2 attempts"),
        "{:?}",
        run.error
    );
    assert_eq!(status_of(&run, "scan"), StepStatus::Failed);
    for s in ["compliance", "review", "notify"] {
        assert_eq!(status_of(&run, s), StepStatus::Skipped);
    }
    assert!(
        dispatched(&fx).is_empty(),
        "a failed run sends nothing more"
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Audit(ev) if ev.kind == "run_failed")),
        "{fx:?}"
    );
}

#[test]
fn a_non_retryable_failure_fails_at_once() {
    let (run, _) = start(&diamond(), &[]);
    let (run, fx) = step(&run, failed("r-1.scan.1", ErrorKind::InvalidOutput), 10);
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.as_deref().unwrap().contains("not retryable"));
    assert!(dispatched(&fx).is_empty());
}

#[test]
fn a_lapsed_lease_times_the_attempt_out_and_stops_the_job() {
    let (run, _) = start(&diamond(), &[]);
    let (run, _) = step(
        &run,
        Event::Accepted {
            job_id: "r-1.scan.1".into(),
            worker: "w1".into(),
        },
        1,
    );
    let lease = Timer {
        at_ms: LEASE,
        run_id: "r-1".into(),
        kind: TimerKind::Lease,
        step: Some("scan".into()),
        attempt: 1,
        schedule: None,
        fallback: 0,
    };

    // Renewed in time: the run does not change, but the timer re-arms at
    // the new lease end; that effect must reach the caller.
    let (renewed, _) = step(
        &run,
        Event::Heartbeat {
            job_id: "r-1.scan.1".into(),
            worker: "w1".into(),
        },
        900,
    );
    assert_eq!(
        unchanged(&renewed, Event::Timer(lease.clone()), LEASE),
        [Effect::Schedule(Timer {
            at_ms: 900 + LEASE,
            ..lease.clone()
        })]
    );

    // Not renewed: timeout, cancel on the worker, retry.
    let (run, fx) = step(&run, Event::Timer(lease), LEASE);
    assert!(fx.contains(&Effect::CancelJob {
        job_id: "r-1.scan.1".into(),
        worker: Some("w1".into())
    }));
    let s = run.step("scan").unwrap();
    assert_eq!(s.status, StepStatus::RetryWait);
    let err = s.attempts[0].error.as_ref().unwrap();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.contains("lease expired"), "{}", err.message);
}

/// A worker that heartbeats once and then dies: the lease timer re-arms
/// through `apply` (never dropped) and, at the renewed lease's end, times
/// the attempt out. Driven only through the public transition, with every
/// Schedule effect fed back as the engine's tick would.
#[test]
fn a_worker_that_dies_after_renewing_is_timed_out_by_its_rearmed_lease() {
    let w = workflow(json!({"name": "one", "steps": [{"id": "scan", "agent": "scanner"}]}));
    let (mut run, fx) = start(&w, &[]);
    let mut timers: Vec<Timer> = scheduled(&fx);
    // The worker heartbeats at once, then a few more times, then dies.
    for now in [1, 400, 800, 1_200] {
        let (next, fx) = step(&run, hb("r-1.scan.1"), now);
        timers.extend(scheduled(&fx));
        run = next;
    }
    let mut now = 0;
    while status_of(&run, "scan") == StepStatus::Running {
        timers.sort();
        let t = timers.remove(0);
        now = now.max(t.at_ms);
        let out = run.apply(&Event::Timer(t), now).unwrap();
        timers.extend(scheduled(&out.effects));
        if let Some(next) = out.run {
            run = next;
        }
        assert!(now < 10 * LEASE, "the lease never lapsed");
    }
    assert_eq!(
        now,
        1_200 + LEASE,
        "lapses exactly at the last renewal's end"
    );
    let s = run.step("scan").unwrap();
    assert_eq!(s.status, StepStatus::RetryWait);
    assert_eq!(
        s.attempts[0].error.as_ref().unwrap().kind,
        ErrorKind::Timeout
    );
}

/// A worker that keeps heartbeating past the step's timeout is stopped by
/// its lease timer at the attempt's hard end, without any heartbeat
/// arriving after it.
#[test]
fn the_step_timeout_is_enforced_by_the_lease_timer() {
    let w = workflow(
        json!({"name": "one", "steps": [{"id": "scan", "agent": "scanner", "timeout_secs": 2}]}),
    );
    let (mut run, fx) = start(&w, &[]);
    let hard_end = run.step("scan").unwrap().attempt_deadline_ms.unwrap();
    let mut timers = scheduled(&fx);
    let mut now = 0;
    loop {
        timers.sort();
        let next_timer = timers.first().map_or(u64::MAX, |t| t.at_ms);
        // Heartbeats every 300 ms, as long as the step is running.
        let next_beat = now + 300;
        if next_beat < next_timer && next_beat < hard_end {
            now = next_beat;
            let (next, fx) = step(&run, hb("r-1.scan.1"), now);
            timers.extend(scheduled(&fx));
            run = next;
            continue;
        }
        let t = timers.remove(0);
        now = now.max(t.at_ms);
        let out = run.apply(&Event::Timer(t), now).unwrap();
        timers.extend(scheduled(&out.effects));
        if let Some(next) = out.run {
            run = next;
        }
        if status_of(&run, "scan") != StepStatus::Running {
            break;
        }
    }
    assert_eq!(now, hard_end);
    let err = run.step("scan").unwrap().attempts[0].error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(
        err.message.contains("timed out after 2 s"),
        "{}",
        err.message
    );
}

fn hb(job: &str) -> Event {
    Event::Heartbeat {
        job_id: job.into(),
        worker: "w1".into(),
    }
}

fn scheduled(fx: &[Effect]) -> Vec<Timer> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Schedule(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn heartbeats_cannot_extend_a_job_past_its_timeout() {
    let (mut run, _) = start(&diamond(), &[]);
    let deadline = run.step("scan").unwrap().attempt_deadline_ms.unwrap();
    assert_eq!(deadline, 10_000 + LEASE);
    let hb = Event::Heartbeat {
        job_id: "r-1.scan.1".into(),
        worker: "w1".into(),
    };
    let mut now = 0;
    while now + 500 < deadline {
        now += 500;
        run = step(&run, hb.clone(), now).0;
        assert!(run.step("scan").unwrap().lease_expires_at_ms.unwrap() <= deadline);
    }
    let (run, fx) = step(&run, hb, deadline);
    let s = run.step("scan").unwrap();
    assert_eq!(s.status, StepStatus::RetryWait);
    assert!(
        s.attempts[0]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("timeout")
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::CancelJob { .. })));
}

#[test]
fn cancellation_stops_running_jobs_and_is_final() {
    let (run, _) = start(&diamond(), &[]);
    let (run, _) = step(&run, ok("r-1.scan.1"), 10);
    let (run, _) = step(
        &run,
        Event::Accepted {
            job_id: "r-1.review.1".into(),
            worker: "w2".into(),
        },
        11,
    );
    let (run, fx) = step(
        &run,
        Event::Cancel {
            reason: "no longer needed".into(),
            by: Some("token:alice".into()),
        },
        20,
    );
    assert_eq!(run.status, RunStatus::Cancelled);
    // The caller who cancelled is in the run's trail and in the audit
    // effect, as is the one who started it.
    let cancel = run
        .events
        .iter()
        .find(|e| e.kind == "cancel_requested")
        .unwrap();
    assert_eq!(cancel.actor.as_deref(), Some("token:alice"));
    assert_eq!(cancel.detail, "no longer needed");
    assert!(fx.iter().any(|e| matches!(e, Effect::Audit(ev) if ev.kind == "cancel_requested" && ev.actor.as_deref() == Some("token:alice"))));
    assert_eq!(run.events[0].kind, "run_created");
    assert_eq!(run.events[0].actor.as_deref(), Some("key:ci"));
    assert_eq!(
        fx.iter()
            .filter(|e| matches!(e, Effect::CancelJob { .. }))
            .cloned()
            .collect::<Vec<_>>(),
        [
            Effect::CancelJob {
                job_id: "r-1.compliance.1".into(),
                worker: None
            },
            Effect::CancelJob {
                job_id: "r-1.review.1".into(),
                worker: Some("w2".into())
            },
        ]
    );
    assert_eq!(status_of(&run, "notify"), StepStatus::Skipped);
    assert_eq!(status_of(&run, "review"), StepStatus::Cancelled);
    assert!(matches!(
        run.apply(
            &Event::Cancel {
                reason: "again".into(),
                by: None,
            },
            30
        ),
        Err(Reject::RunFinished {
            status: RunStatus::Cancelled,
            ..
        })
    ));
    assert!(matches!(
        run.apply(&ok("r-1.review.1"), 30),
        Err(Reject::JobNotActive { .. })
    ));
}

#[test]
fn the_deadline_times_the_run_out() {
    let (run, fx) = start(&diamond(), &[]);
    let deadline = Timer {
        at_ms: 60_000,
        run_id: "r-1".into(),
        kind: TimerKind::Deadline,
        step: None,
        attempt: 0,
        schedule: None,
        fallback: 0,
    };
    assert!(fx.contains(&Effect::Schedule(deadline.clone())));
    assert!(unchanged(&run, Event::Timer(deadline.clone()), 59_999).is_empty());
    let (run, fx) = step(&run, Event::Timer(deadline), 60_000);
    assert_eq!(run.status, RunStatus::TimedOut);
    assert!(fx.iter().any(|e| matches!(e, Effect::CancelJob { .. })));
}

#[test]
fn unknown_and_future_jobs_are_told_apart_from_stale_ones() {
    let (run, _) = start(&diamond(), &[]);
    for job in ["r-2.scan.1", "r-1.ghost.1", "r-1.scan.2", "garbage"] {
        assert!(
            matches!(run.apply(&ok(job), 5), Err(Reject::UnknownJob { .. })),
            "{job}"
        );
    }
    assert!(matches!(
        run.apply(&ok("r-1.review.1"), 5),
        Err(Reject::UnknownJob { .. })
    ));
}

fn decide(step: &str, verdict: Verdict, by: &str) -> Event {
    Event::Decide {
        step: step.into(),
        approval: format!("r-1.{step}"),
        decision: verdict,
        by: by.into(),
        comment: "looks fine".into(),
        via_link: false,
        input_sha256: None,
    }
}

fn fix_workflow() -> Workflow {
    workflow(json!({"name": "fix", "steps": [
        {"id": "scan", "agent": "scanner"},
        {"id": "patch", "agent": "patcher", "needs": ["scan"]}
    ]}))
}

/// A run of `fix` whose patch step waits for `approvers` approvers.
fn waiting(approvers: u8, secs: u32, on_expiry: OnExpiry) -> Run {
    let (run, _) = start(&fix_workflow(), &[]);
    let t = run.apply(&ok("r-1.scan.1"), 10).unwrap();
    let run = t.run.unwrap();
    assert!(t.effects.contains(&Effect::Assess {
        step: "patch".into()
    }));
    assert_eq!(status_of(&run, "patch"), StepStatus::Assessing);
    assert_eq!(
        run.status,
        RunStatus::Running,
        "assessing is work in progress"
    );
    let (run, fx) = step(&run, approval_gate("patch", approvers, secs, on_expiry), 10);
    assert!(dispatched(&fx).is_empty());
    assert!(
        scheduled(&fx)
            .iter()
            .any(|t| t.kind == TimerKind::ApprovalExpiry && t.at_ms == 10 + u64::from(secs) * 1000)
    );
    assert_eq!(run.status, RunStatus::WaitingApproval);
    assert_eq!(status_of(&run, "patch"), StepStatus::WaitingApproval);
    run
}

fn gate_of<'a>(run: &'a Run, s: &str) -> &'a crate::approval::Gate {
    run.step(s).unwrap().gate.as_ref().unwrap()
}

#[test]
fn every_step_is_assessed_before_its_first_dispatch() {
    let w = fix_workflow();
    let t = Run::create("r-1".into(), &w, &agents(&[]), trigger(), settings(), 0).unwrap();
    assert!(dispatched(&t.effects).is_empty(), "nothing runs unassessed");
    assert!(t.effects.contains(&Effect::Assess {
        step: "scan".into()
    }));
    assert!(
        scheduled(&t.effects)
            .iter()
            .any(|x| x.kind == TimerKind::Assess)
    );
    let run = t.run.unwrap();
    let (run, fx) = step(&run, auto_gate("scan"), 1);
    assert_eq!(dispatched(&fx), ["r-1.scan.1"]);
    let gate = gate_of(&run, "scan");
    assert_eq!(gate.outcome, Some(Outcome::AutoApproved));
    assert!(
        run.events
            .iter()
            .any(|e| e.kind == "step_auto_approved" && e.detail.contains("40 rules checked"))
    );
    // A second verdict (a retried assessment) changes nothing.
    assert!(unchanged(&run, auto_gate("scan"), 2).is_empty());
}

fn trigger() -> Trigger {
    Trigger {
        kind: TriggerKind::Manual,
        payload: json!({"repo": "acme/app"}),
        actor: Some("key:ci".into()),
    }
}

#[test]
fn an_assessment_that_never_comes_is_asked_again_then_fails_the_step() {
    let w = fix_workflow();
    let t = Run::create("r-1".into(), &w, &agents(&[]), trigger(), settings(), 0).unwrap();
    let mut run = t.run.unwrap();
    let mut timer = scheduled(&t.effects)
        .into_iter()
        .find(|x| x.kind == TimerKind::Assess)
        .unwrap();
    for tries in 1..MAX_ASSESS_TRIES {
        let fx = unchanged(&run, Event::Timer(timer.clone()), timer.at_ms);
        assert!(fx.contains(&Effect::Assess {
            step: "scan".into()
        }));
        timer = scheduled(&fx).into_iter().next().unwrap();
        assert_eq!(timer.attempt, tries);
    }
    let t = run
        .apply(&Event::Timer(timer.clone()), timer.at_ms)
        .unwrap();
    run = t.run.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(status_of(&run, "scan"), StepStatus::Failed);
}

#[test]
fn the_assessment_timer_of_a_step_dispatched_at_once_watches_its_lease() {
    let (run, fx) = start(&fix_workflow(), &[]);
    let assess = scheduled(&fx).pop().unwrap();
    assert_eq!(assess.kind, TimerKind::Assess);
    // No heartbeat by then: the attempt times out like on a lease timer.
    let (lapsed, fx) = step(&run, Event::Timer(assess.clone()), LEASE);
    assert_eq!(status_of(&lapsed, "scan"), StepStatus::RetryWait);
    assert!(fx.iter().any(|e| matches!(e, Effect::CancelJob { .. })));
    // Renewed: it re-arms as the lease timer at the new end.
    let (renewed, _) = step(
        &run,
        Event::Heartbeat {
            job_id: "r-1.scan.1".into(),
            worker: "w1".into(),
        },
        900,
    );
    let fx = unchanged(&renewed, Event::Timer(assess), LEASE);
    assert_eq!(scheduled(&fx)[0].kind, TimerKind::Lease);
    assert_eq!(scheduled(&fx)[0].at_ms, 900 + LEASE);
}

#[test]
fn an_input_that_cannot_be_built_fails_the_run() {
    let w = fix_workflow();
    let t = Run::create("r-1".into(), &w, &agents(&[]), trigger(), settings(), 0).unwrap();
    let run = t.run.unwrap();
    let (run, _) = step(
        &run,
        Event::AssessFailed {
            step: "scan".into(),
            error: JobError {
                kind: ErrorKind::InvalidInput,
                message: "input template refers to a missing field".into(),
            },
            fallback: 0,
            agent_refused: false,
        },
        1,
    );
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(status_of(&run, "patch"), StepStatus::Skipped);
}

#[test]
fn an_approval_dispatches_the_step_once_and_a_rejection_fails_it() {
    let run = waiting(1, 3600, OnExpiry::Reject);
    assert!(matches!(
        run.apply(&decide("scan", Verdict::Approve, "bob"), 11),
        Err(Reject::NotWaitingApproval { .. })
    ));
    let mut wrong = decide("patch", Verdict::Approve, "bob");
    if let Event::Decide { approval, .. } = &mut wrong {
        *approval = "r-1.other".into();
    }
    assert!(matches!(
        run.apply(&wrong, 11),
        Err(Reject::NotWaitingApproval { .. })
    ));

    let (approved, fx) = step(&run, decide("patch", Verdict::Approve, "bob"), 20);
    assert_eq!(dispatched(&fx), ["r-1.patch.1"]);
    assert_eq!(approved.status, RunStatus::Running);
    assert_eq!(gate_of(&approved, "patch").outcome, Some(Outcome::Approved));
    let audit = approved
        .events
        .iter()
        .find(|e| e.kind == "step_approved")
        .unwrap();
    assert_eq!(audit.actor.as_deref(), Some("bob"));
    assert!(audit.detail.contains("looks fine") && audit.detail.contains(&"a".repeat(64)));
    // Late decisions change nothing.
    assert!(matches!(
        approved.apply(&decide("patch", Verdict::Reject, "carol"), 21),
        Err(Reject::NotWaitingApproval { .. })
    ));

    let (rejected, fx) = step(&run, decide("patch", Verdict::Reject, "bob"), 20);
    assert!(dispatched(&fx).is_empty());
    assert_eq!(rejected.status, RunStatus::Failed);
    assert_eq!(gate_of(&rejected, "patch").outcome, Some(Outcome::Rejected));
    assert_eq!(
        rejected.step("patch").unwrap().error.as_ref().unwrap().kind,
        ErrorKind::Rejected
    );
}

#[test]
fn two_approvers_are_needed_and_one_counts_once() {
    let run = waiting(2, 3600, OnExpiry::Reject);
    let (run, fx) = step(&run, decide("patch", Verdict::Approve, "bob"), 20);
    assert!(dispatched(&fx).is_empty());
    assert_eq!(run.status, RunStatus::WaitingApproval);
    assert_eq!(gate_of(&run, "patch").approvals(), 1);
    assert!(matches!(
        run.apply(&decide("patch", Verdict::Approve, "bob"), 21),
        Err(Reject::AlreadyDecided { .. })
    ));
    let (run, fx) = step(&run, decide("patch", Verdict::Approve, "carol"), 22);
    assert_eq!(dispatched(&fx), ["r-1.patch.1"]);
    assert_eq!(gate_of(&run, "patch").decisions.len(), 2);
}

#[test]
fn the_requester_may_reject_but_not_approve_their_own_run() {
    let run = waiting(1, 3600, OnExpiry::Reject);
    assert!(matches!(
        run.apply(&decide("patch", Verdict::Approve, "key:ci"), 20),
        Err(Reject::SelfApproval { .. })
    ));
    let (run, _) = step(&run, decide("patch", Verdict::Reject, "key:ci"), 20);
    assert_eq!(run.status, RunStatus::Failed);
}

#[test]
fn a_decision_on_another_input_is_refused() {
    let run = waiting(1, 3600, OnExpiry::Reject);
    let mut e = decide("patch", Verdict::Approve, "bob");
    if let Event::Decide { input_sha256, .. } = &mut e {
        *input_sha256 = Some("b".repeat(64));
    }
    assert!(matches!(
        run.apply(&e, 20),
        Err(Reject::InputChanged { .. })
    ));
    if let Event::Decide { input_sha256, .. } = &mut e {
        *input_sha256 = Some("a".repeat(64));
    }
    let (_, fx) = step(&run, e, 20);
    assert_eq!(dispatched(&fx), ["r-1.patch.1"]);
}

#[test]
fn expiry_carries_out_the_policy_and_beats_late_decisions() {
    for (action, status, kind) in [
        (
            OnExpiry::Reject,
            RunStatus::Failed,
            Some(ErrorKind::Rejected),
        ),
        (OnExpiry::Fail, RunStatus::Failed, Some(ErrorKind::Timeout)),
        (OnExpiry::Cancel, RunStatus::Cancelled, None),
    ] {
        let run = waiting(2, 60, action);
        let (run, _) = step(&run, decide("patch", Verdict::Approve, "bob"), 20);
        let expires = gate_of(&run, "patch").expires_at_ms.unwrap();
        assert_eq!(expires, 10 + 60_000);
        let timer = Timer {
            at_ms: expires,
            run_id: "r-1".into(),
            kind: TimerKind::ApprovalExpiry,
            step: Some("patch".into()),
            attempt: 0,
            schedule: None,
            fallback: 0,
        };
        // Early: nothing. A decision at the deadline is refused.
        assert!(unchanged(&run, Event::Timer(timer.clone()), expires - 1).is_empty());
        assert!(matches!(
            run.apply(&decide("patch", Verdict::Approve, "carol"), expires),
            Err(Reject::ApprovalExpired { .. })
        ));
        let (done, fx) = step(&run, Event::Timer(timer.clone()), expires);
        assert!(dispatched(&fx).is_empty());
        assert_eq!(done.status, status, "{action:?}");
        assert_eq!(gate_of(&done, "patch").outcome, Some(Outcome::Expired));
        assert_eq!(
            done.step("patch").unwrap().error.as_ref().map(|e| e.kind),
            kind
        );
        assert!(done.events.iter().any(|e| e.kind == "approval_expired"));
        // Expired once: the timer again, or a decision, changes nothing.
        assert!(unchanged(&done, Event::Timer(timer), expires + 5).is_empty());
        assert!(
            done.apply(&decide("patch", Verdict::Approve, "carol"), expires + 5)
                .is_err()
        );
    }
}

#[test]
fn an_approval_cannot_be_used_after_the_run_ended() {
    let run = waiting(1, 3600, OnExpiry::Reject);
    let (run, _) = step(
        &run,
        Event::Cancel {
            reason: "no longer needed".into(),
            by: Some("key:ops".into()),
        },
        30,
    );
    assert_eq!(status_of(&run, "patch"), StepStatus::Skipped);
    assert_eq!(gate_of(&run, "patch").outcome, Some(Outcome::Cancelled));
    assert!(matches!(
        run.apply(&decide("patch", Verdict::Approve, "bob"), 31),
        Err(Reject::RunFinished { .. })
    ));
}

#[test]
fn retries_of_an_approved_step_are_not_asked_again() {
    let run = waiting(1, 3600, OnExpiry::Reject);
    let (run, _) = step(&run, decide("patch", Verdict::Approve, "bob"), 20);
    let (run, fx) = step(&run, failed("r-1.patch.1", ErrorKind::AgentFailed), 30);
    let retry = scheduled(&fx)
        .into_iter()
        .find(|t| t.kind == TimerKind::Retry)
        .unwrap();
    let (run, fx) = step(&run, Event::Timer(retry.clone()), retry.at_ms);
    assert_eq!(dispatched(&fx), ["r-1.patch.2"]);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Assess { .. })));
    assert_eq!(gate_of(&run, "patch").outcome, Some(Outcome::Approved));
}

#[test]
fn the_plan_snapshots_agent_versions_and_step_overrides() {
    let w = workflow(json!({"name": "o", "steps": [
        {"id": "scan", "agent": "scanner", "timeout_secs": 3, "retry": {"max_attempts": 5}}
    ]}));
    let (run, _) = start(&w, &[]);
    let p = run.planned("scan").unwrap();
    assert_eq!(
        (p.timeout_secs, p.retry.max_attempts, p.agent.version),
        (3, 5, 1)
    );
    assert_eq!(
        run.step("scan").unwrap().attempt_deadline_ms,
        Some(3_000 + LEASE)
    );
}

#[test]
fn runs_round_trip_through_json_with_snake_case_names() {
    let (run, _) = start(&diamond(), &["notifier"]);
    let v = serde_json::to_value(&run).unwrap();
    assert_eq!(v["status"], "running");
    assert_eq!(v["steps"][0]["status"], "dispatched");
    assert_eq!(v["trigger"]["kind"], "manual");
    let back: Run = serde_json::from_value(v).unwrap();
    assert_eq!(back, run);
    for s in RunStatus::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        assert_eq!(RunStatus::parse(s.as_str()), Some(s));
    }
}

#[test]
fn the_template_context_exposes_trigger_run_and_outputs() {
    let (run, _) = start(&diamond(), &[]);
    let ctx = run.template_context(
        "notify",
        BTreeMap::from([("scan".to_owned(), json!({"findings": [1]}))]),
    );
    let out = crate::template::render(&run.planned("notify").unwrap().input, &ctx).unwrap();
    assert_eq!(out, json!({"f": [1]}));
    assert_eq!(ctx["trigger"]["payload"]["repo"], "acme/app");
    assert_eq!(ctx["run"]["id"], "r-1");
}

#[test]
fn attempts_no_worker_took_do_not_use_up_the_retry_budget() {
    let w = workflow(json!({"name": "one", "steps": [{"id": "scan", "agent": "scanner"}]}));
    let (mut run, _) = start(&w, &[]);
    let mut now = 0;
    // Many refusals in a row: the step keeps waiting for a worker.
    for attempt in 1..=5 {
        let job = format!("r-1.scan.{attempt}");
        let refused = Event::NotDispatched {
            job_id: job.clone(),
            error: JobError {
                kind: ErrorKind::NoWorker,
                message: "pool full".into(),
            },
            agent_refused: false,
        };
        now += 10;
        run = step(&run, refused, now).0;
        assert_eq!(
            status_of(&run, "scan"),
            StepStatus::RetryWait,
            "after refusal {attempt}"
        );
        let at = run.step("scan").unwrap().retry_at_ms.unwrap();
        let timer = Timer {
            at_ms: at,
            run_id: "r-1".into(),
            kind: TimerKind::Retry,
            step: Some("scan".into()),
            attempt,
            schedule: None,
            fallback: 0,
        };
        now = at;
        run = step(&run, Event::Timer(timer), now).0;
    }
    // Real failures still count: the policy allows 2 attempts that ran.
    run = step(&run, failed("r-1.scan.6", ErrorKind::AgentFailed), now + 1).0;
    assert_eq!(status_of(&run, "scan"), StepStatus::RetryWait);
    let at = run.step("scan").unwrap().retry_at_ms.unwrap();
    let timer = Timer {
        at_ms: at,
        run_id: "r-1".into(),
        kind: TimerKind::Retry,
        step: Some("scan".into()),
        attempt: 6,
        schedule: None,
        fallback: 0,
    };
    run = step(&run, Event::Timer(timer), at).0;
    run = step(&run, failed("r-1.scan.7", ErrorKind::AgentFailed), at + 1).0;
    assert_eq!(run.status, RunStatus::Failed);
}

/// While no worker takes a step, it retries without end (those attempts
/// never ran), but the run document keeps only the last few of them, and
/// attempt numbers keep counting.
#[test]
fn attempts_no_worker_took_are_compacted() {
    let w = workflow(json!({"name": "one", "steps": [{"id": "scan", "agent": "scanner"}]}));
    let (mut run, _) = start(&w, &[]);
    let mut now = 0;
    for attempt in 1..=40u32 {
        let refused = Event::NotDispatched {
            job_id: format!("r-1.scan.{attempt}"),
            error: JobError {
                kind: ErrorKind::NoWorker,
                message: "pool down".into(),
            },
            agent_refused: false,
        };
        now += 10;
        run = step(&run, refused, now).0;
        let s = run.step("scan").unwrap();
        assert!(
            s.attempts.len() <= MAX_NO_WORKER_ATTEMPTS,
            "{}",
            s.attempts.len()
        );
        assert_eq!(s.attempt_number(), attempt);
        let timer = Timer {
            at_ms: s.retry_at_ms.unwrap(),
            run_id: "r-1".into(),
            kind: TimerKind::Retry,
            step: Some("scan".into()),
            attempt,
            schedule: None,
            fallback: 0,
        };
        now = timer.at_ms;
        let (next, fx) = step(&run, Event::Timer(timer), now);
        assert_eq!(dispatched(&fx), [format!("r-1.scan.{}", attempt + 1)]);
        run = next;
    }
    // The attempt that finally reaches a worker succeeds as usual.
    let (run, _) = step(&run, ok("r-1.scan.41"), now + 1);
    assert_eq!(run.status, RunStatus::Succeeded);
    let numbers: Vec<u32> = run
        .step("scan")
        .unwrap()
        .attempts
        .iter()
        .map(|a| a.number)
        .collect();
    assert_eq!(numbers, [36, 37, 38, 39, 40, 41]);
}
