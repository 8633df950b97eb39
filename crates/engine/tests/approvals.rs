//! Risk assessment and approvals through the engine, on a test clock:
//! a risky step parks its run until approvers decide; approval,
//! rejection, expiry, two approvers, self-approval, signed links; races of
//! many decisions and an expiring tick; the approved input is the one
//! dispatched; assessments that fail or die are asked again.

mod common;

use common::*;
use futures::executor::block_on;
use serde_json::json;
use spindle_core::approval::{ApprovalStatus, Verdict};
use spindle_core::keys;
use spindle_core::risk::{ApprovalPolicy, Level, OnExpiry};
use spindle_core::run::{Run, RunStatus, StepStatus, Trigger, TriggerKind};
use spindle_engine::testing::Op;
use spindle_engine::{
    ApprovalFilter, DecisionRequest, DecisionResult, EngineError, Store, StoreExt,
};

const HOUR: u64 = 3_600_000;

/// Agents `scanner` (auto) and `patcher` (approval required), and
/// workflow `fix`: scan, then patch with the scan's diff.
fn fix(e: &TestEngine) {
    agent(e, "scanner", 2);
    agent_from(
        e,
        json!({"name": "patcher", "command": ["patcher"], "risk_level": "approval_required",
               "timeout_secs": 10, "retry": {"max_attempts": 2, "initial_backoff_ms": 100}}),
    );
    workflow(
        e,
        json!({"name": "fix", "steps": [
            {"id": "scan", "agent": "scanner", "input": {"repo": "{{ trigger.payload.repo }}"}},
            {"id": "patch", "agent": "patcher", "needs": ["scan"],
             "input": {"diff": "{{ steps.scan.output.diff }}"}}
        ]}),
    );
}

const ENV_DIFF: &str =
    "diff --git a/.env b/.env\n--- a/.env\n+++ b/.env\n@@ -1 +1 @@\n-API_KEY=old\n+API_KEY=new\n";

/// Starts `fix` as `actor` and lets the scan succeed with `diff`: the
/// patch step then waits. Returns the run id and the approval id.
fn parked(e: &TestEngine, actor: &str, diff: &str) -> (String, String) {
    let trigger = Trigger {
        kind: TriggerKind::Manual,
        payload: json!({"repo": "acme/app"}),
        actor: Some(actor.into()),
    };
    let run = block_on(e.create_run("fix", trigger, None)).unwrap().0;
    let scan = format!("{}.scan.1", run.id);
    assert!(
        dispatched(e).contains(&scan),
        "the scan is low risk: it runs"
    );
    deliver(e, &success(&scan, json!({"diff": diff}))).unwrap();
    let r = self::run(e, &run.id);
    assert_eq!(r.status, RunStatus::WaitingApproval);
    assert_eq!(r.step("patch").unwrap().status, StepStatus::WaitingApproval);
    let id = format!("{}.patch", run.id);
    (run.id, id)
}

fn decide(
    e: &TestEngine,
    id: &str,
    verdict: Verdict,
    by: &str,
) -> Result<spindle_engine::Decided, EngineError> {
    block_on(e.decide(
        id,
        DecisionRequest {
            decision: verdict,
            by: by.into(),
            role: Some("approver".into()),
            comment: format!("{by} says {}", verdict.as_str()),
            input_sha256: None,
            via_link: false,
        },
    ))
}

fn patch_jobs(e: &TestEngine) -> Vec<String> {
    dispatched(e)
        .into_iter()
        .filter(|j| j.contains(".patch."))
        .collect()
}

#[test]
fn an_approved_patch_runs_and_the_run_completes() {
    let e = engine();
    fix(&e);
    let (run_id, id) = parked(&e, "key:ci", ENV_DIFF);
    let view = block_on(e.approval(&id)).unwrap();
    assert_eq!(view.status, ApprovalStatus::Pending);
    assert_eq!(view.approval.level, Level::High, "a diff touching .env");
    assert!(view.approval.preview.contains("+API_KEY=new"));
    assert!(!view.approval.matched.is_empty());
    assert_eq!(view.approval.requested_by.as_deref(), Some("key:ci"));
    assert_eq!(view.expires_at_ms, Some(T0 + 4 * HOUR), "high: 4 h");
    assert!(patch_jobs(&e).is_empty(), "nothing risky runs unseen");

    let d = decide(&e, &id, Verdict::Approve, "key:alice").unwrap();
    assert_eq!(d.result, DecisionResult::ApprovedAndDispatched);
    assert_eq!(d.approval.status, ApprovalStatus::Approved);
    let job = format!("{run_id}.patch.1");
    assert_eq!(patch_jobs(&e), std::slice::from_ref(&job));
    // The job carries exactly the approved input.
    let sent = e
        .workers
        .jobs()
        .into_iter()
        .find(|j| j.job_id == job)
        .unwrap();
    assert_eq!(
        spindle_core::approval::input_digest(&sent.input),
        view.approval.input_sha256
    );
    deliver(&e, &success(&job, json!({"applied": true}))).unwrap();
    assert_eq!(status(&e, &run_id), RunStatus::Succeeded);
    // The decision is in the run's trail and the audit log.
    let r = run(&e, &run_id);
    let ev = r.events.iter().find(|e| e.kind == "step_approved").unwrap();
    assert_eq!(ev.actor.as_deref(), Some("key:alice"));
    assert!(ev.detail.contains(&view.approval.input_sha256));
    assert!(
        e.host
            .audit_lines()
            .iter()
            .any(|l| l.contains("step_approved"))
    );
    // Late decisions change nothing.
    assert!(matches!(
        decide(&e, &id, Verdict::Reject, "key:bob"),
        Err(EngineError::Rejected(_))
    ));
}

#[test]
fn a_rejection_fails_the_run_without_dispatching() {
    let e = engine();
    fix(&e);
    let (run_id, id) = parked(&e, "key:ci", ENV_DIFF);
    let d = decide(&e, &id, Verdict::Reject, "key:alice").unwrap();
    assert_eq!(d.result, DecisionResult::Rejected);
    assert_eq!(status(&e, &run_id), RunStatus::Failed);
    assert!(patch_jobs(&e).is_empty());
    let listed = block_on(e.list_approvals(&ApprovalFilter {
        status: Some(ApprovalStatus::Rejected),
        limit: 10,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(listed.approvals.len(), 1);
    assert_eq!(listed.approvals[0].decisions[0].by, "key:alice");
}

#[test]
fn an_unanswered_approval_expires_by_the_tick_per_policy() {
    for (action, want) in [
        (OnExpiry::Reject, RunStatus::Failed),
        (OnExpiry::Fail, RunStatus::Failed),
        (OnExpiry::Cancel, RunStatus::Cancelled),
    ] {
        let e = engine();
        fix(&e);
        let mut policy = ApprovalPolicy::default();
        policy.levels.high.expires_in_secs = 120;
        policy.levels.high.on_expiry = action;
        block_on(e.put_approval_policy(&policy)).unwrap();
        let (run_id, id) = parked(&e, "key:ci", ENV_DIFF);
        e.host.advance(119_000);
        block_on(e.tick()).unwrap();
        assert_eq!(status(&e, &run_id), RunStatus::WaitingApproval);
        tick_until(&e, 1_000, 30_000, |e| is_terminal(e, &run_id));
        assert_eq!(status(&e, &run_id), want, "{action:?}");
        let view = block_on(e.approval(&id)).unwrap();
        assert_eq!(view.status, ApprovalStatus::Expired);
        assert!(matches!(
            decide(&e, &id, Verdict::Approve, "key:alice"),
            Err(EngineError::Rejected(_))
        ));
        assert!(patch_jobs(&e).is_empty());
    }
}

#[test]
fn two_approvers_for_critical_and_each_counts_once() {
    let e = engine();
    fix(&e);
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    let (run_id, id) = parked(&e, "key:ci", &format!("+++ b/deploy/id_rsa\n{key}"));
    let view = block_on(e.approval(&id)).unwrap();
    assert_eq!(view.approval.level, Level::Critical);
    assert_eq!(view.approvers_needed, 2);
    let d = decide(&e, &id, Verdict::Approve, "key:alice").unwrap();
    assert_eq!(d.result, DecisionResult::WaitingForApprovers);
    assert_eq!(d.remaining, 1);
    assert!(matches!(
        decide(&e, &id, Verdict::Approve, "key:alice"),
        Err(EngineError::Rejected(
            spindle_core::run::Reject::AlreadyDecided { .. }
        ))
    ));
    assert!(patch_jobs(&e).is_empty());
    let d = decide(&e, &id, Verdict::Approve, "token:bob").unwrap();
    assert_eq!(d.result, DecisionResult::ApprovedAndDispatched);
    assert_eq!(patch_jobs(&e), [format!("{run_id}.patch.1")]);
}

#[test]
fn the_requester_cannot_approve_their_own_run_unless_the_policy_says_so() {
    let e = engine();
    fix(&e);
    let (_, id) = parked(&e, "key:alice", ENV_DIFF);
    assert!(matches!(
        decide(&e, &id, Verdict::Approve, "key:alice"),
        Err(EngineError::Rejected(
            spindle_core::run::Reject::SelfApproval { .. }
        ))
    ));
    assert!(patch_jobs(&e).is_empty());

    let policy = ApprovalPolicy {
        allow_self_approval: true,
        ..Default::default()
    };
    block_on(e.put_approval_policy(&policy)).unwrap();
    let (_, id) = parked(&e, "key:alice", ENV_DIFF);
    decide(&e, &id, Verdict::Approve, "key:alice").unwrap();
    assert_eq!(patch_jobs(&e).len(), 1);
}

#[test]
fn roles_outside_the_policy_cannot_decide() {
    let e = engine();
    fix(&e);
    let (_, id) = parked(&e, "key:ci", ENV_DIFF);
    for role in ["viewer", "operator"] {
        let r = block_on(e.decide(
            &id,
            DecisionRequest {
                decision: Verdict::Approve,
                by: "key:x".into(),
                role: Some(role.into()),
                comment: String::new(),
                input_sha256: None,
                via_link: false,
            },
        ));
        assert!(matches!(r, Err(EngineError::Forbidden(_))), "{role}");
    }
    assert!(patch_jobs(&e).is_empty());
}

#[test]
fn signed_links_decide_once_as_the_approver_they_name() {
    let e = engine();
    fix(&e);
    let (run_id, id) = parked(&e, "key:ci", ENV_DIFF);
    let far = T0 + 100 * HOUR;
    let (token, exp) =
        block_on(e.approval_link(&id, Verdict::Approve, "token:carol", None, far, "n1")).unwrap();
    assert_eq!(exp, T0 + 4 * HOUR, "a link never outlives its approval");
    // Forged: another decision under the same signature.
    let (payload, sig) = token.split_once('.').unwrap();
    let forged = format!("{}x.{sig}", payload);
    assert!(matches!(
        block_on(e.use_link(&forged, String::new())),
        Err(EngineError::Link(_))
    ));
    let d = block_on(e.use_link(&token, "ok from chat".into())).unwrap();
    assert_eq!(d.result, DecisionResult::ApprovedAndDispatched);
    assert_eq!(d.approval.decisions[0].by, "token:carol");
    assert!(d.approval.decisions[0].via_link);
    assert!(matches!(
        block_on(e.use_link(&token, String::new())),
        Err(EngineError::LinkUsed)
    ));
    assert_eq!(patch_jobs(&e), [format!("{run_id}.patch.1")]);

    // An expired link is refused.
    let (_, id2) = parked(&e, "key:ci", ENV_DIFF);
    let (token, _) = block_on(e.approval_link(
        &id2,
        Verdict::Reject,
        "token:carol",
        None,
        T0 + 60_000,
        "n2",
    ))
    .unwrap();
    e.host.advance(60_000);
    assert!(matches!(
        block_on(e.use_link(&token, String::new())),
        Err(EngineError::Link(
            spindle_core::approval::LinkError::Expired
        ))
    ));
}

#[test]
fn many_racing_decisions_and_an_expiring_tick_end_in_exactly_one_outcome() {
    for seed in 1..=6 {
        let e = engine();
        fix(&e);
        let mut policy = ApprovalPolicy::default();
        policy.levels.high.expires_in_secs = 60;
        block_on(e.put_approval_policy(&policy)).unwrap();
        let (run_id, id) = parked(&e, "key:ci", ENV_DIFF);
        // Right at the expiry for odd seeds: the tick races the decisions.
        if seed % 2 == 1 {
            e.host.advance(60_000);
        }
        e.store.interleave(seed);
        let attempts = (0..50).map(|i| {
            let e = &e;
            let id = id.clone();
            async move {
                let verdict = if i % 3 == 0 {
                    Verdict::Reject
                } else {
                    Verdict::Approve
                };
                e.decide(
                    &id,
                    DecisionRequest {
                        decision: verdict,
                        by: format!("key:approver{}", i % 25),
                        role: Some("approver".into()),
                        comment: String::new(),
                        input_sha256: None,
                        via_link: false,
                    },
                )
                .await
                .map(|d| d.result)
            }
        });
        let tick = async { e.tick().await.map(|_| DecisionResult::WaitingForApprovers) };
        let (answers, ticked) = block_on(futures::future::join(
            futures::future::join_all(attempts),
            tick,
        ));
        ticked.unwrap();
        let wins = answers
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Ok(DecisionResult::ApprovedAndDispatched | DecisionResult::Rejected)
                )
            })
            .count();
        let view = block_on(e.approval(&id)).unwrap();
        let jobs = patch_jobs(&e);
        assert!(jobs.len() <= 1, "seed {seed}: dispatched {jobs:?}");
        match view.status {
            ApprovalStatus::Expired => assert_eq!(wins, 0, "seed {seed}"),
            ApprovalStatus::Approved => {
                assert_eq!(wins, 1, "seed {seed}");
                assert_eq!(jobs.len(), 1, "seed {seed}");
            }
            ApprovalStatus::Rejected => {
                assert_eq!(wins, 1, "seed {seed}");
                assert!(jobs.is_empty());
            }
            s => panic!("seed {seed}: still {s:?}"),
        }
        for a in &answers {
            if let Err(err) = a {
                assert!(
                    matches!(err, EngineError::Rejected(_)),
                    "seed {seed}: {err}"
                );
            }
        }
        assert!(is_terminal(&e, &run_id) || view.status == ApprovalStatus::Approved);
    }
}

#[test]
fn the_step_dispatches_only_the_input_that_was_approved() {
    let e = engine();
    fix(&e);
    let (run_id, id) = parked(&e, "key:ci", ENV_DIFF);
    // The scan's output changes under the run after the approval was
    // asked for (a store edited by hand, a bug): the rendered input no
    // longer matches, and nothing is sent.
    let scan_out = keys::output(&format!("{run_id}.scan.1"));
    block_on(e.store.set(&scan_out, &json!({"diff": "rm -rf /"}))).unwrap();
    decide(&e, &id, Verdict::Approve, "key:alice").unwrap();
    assert!(patch_jobs(&e).is_empty());
    let r = run(&e, &run_id);
    assert_eq!(r.status, RunStatus::Failed);
    let err = r.step("patch").unwrap().attempts[0].error.clone().unwrap();
    assert!(err.message.contains("not the one assessed"), "{err:?}");
}

#[test]
fn a_decision_naming_another_input_is_refused() {
    let e = engine();
    fix(&e);
    let (_, id) = parked(&e, "key:ci", ENV_DIFF);
    let r = block_on(e.decide(
        &id,
        DecisionRequest {
            decision: Verdict::Approve,
            by: "key:alice".into(),
            role: Some("approver".into()),
            comment: String::new(),
            input_sha256: Some("0".repeat(64)),
            via_link: false,
        },
    ));
    assert!(matches!(
        r,
        Err(EngineError::Rejected(
            spindle_core::run::Reject::InputChanged { .. }
        ))
    ));
    assert!(patch_jobs(&e).is_empty());
}

#[test]
fn low_risk_on_an_auto_agent_runs_at_once_and_risky_input_on_it_waits() {
    let e = engine();
    agent(&e, "runner", 1);
    workflow(
        &e,
        json!({"name": "sh", "steps": [{"id": "go", "agent": "runner",
               "input": {"command": "{{ trigger.payload.cmd }}"}}]}),
    );
    let benign = block_on(e.create_run("sh", manual(json!({"cmd": "ls -la"})), None))
        .unwrap()
        .0;
    assert_eq!(dispatched(&e), [format!("{}.go.1", benign.id)]);
    let gate = run(&e, &benign.id)
        .step("go")
        .unwrap()
        .gate
        .clone()
        .unwrap();
    assert_eq!(
        gate.outcome,
        Some(spindle_core::approval::Outcome::AutoApproved)
    );
    assert!(gate.rules_checked > 10);

    let risky = block_on(e.create_run("sh", manual(json!({"cmd": "sudo rm -rf /"})), None))
        .unwrap()
        .0;
    assert_eq!(dispatched(&e).len(), 1, "the risky command waits");
    assert_eq!(status(&e, &risky.id), RunStatus::WaitingApproval);
    let view = block_on(e.approval(&format!("{}.go", risky.id))).unwrap();
    assert_eq!(view.approval.level, Level::Critical);
}

#[test]
fn a_failed_assessment_is_asked_again_by_its_timer() {
    let e = engine();
    fix(&e);
    // Reading the policy fails twice: the patch step stays assessing, then
    // its assess timer asks again and the approval is filed.
    let trigger = manual(json!({"repo": "acme/app"}));
    let run_id = block_on(e.create_run("fix", trigger, None)).unwrap().0.id;
    let scan = format!("{run_id}.scan.1");
    e.store.fail(Op::Get, keys::APPROVAL_POLICY, 0, 1);
    deliver(&e, &success(&scan, json!({"diff": ENV_DIFF}))).unwrap();
    assert_eq!(step_status(&e, &run_id, "patch"), StepStatus::Assessing);
    tick_until(&e, 1_000, 120_000, |e| {
        step_status(e, &run_id, "patch") == StepStatus::WaitingApproval
    });
    let listed = block_on(e.list_approvals(&ApprovalFilter {
        status: Some(ApprovalStatus::Pending),
        limit: 10,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(listed.approvals.len(), 1);
}

#[test]
fn listings_filter_and_page_without_duplicates() {
    let e = engine();
    fix(&e);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(parked(&e, "key:ci", ENV_DIFF).1);
    }
    decide(&e, &ids[0], Verdict::Reject, "key:alice").unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = block_on(e.list_approvals(&ApprovalFilter {
            status: Some(ApprovalStatus::Pending),
            limit: 2,
            cursor: cursor.clone(),
            ..Default::default()
        }))
        .unwrap();
        seen.extend(page.approvals.iter().map(|a| a.approval.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut want: Vec<String> = ids[1..].to_vec();
    want.reverse();
    assert_eq!(seen, want, "newest first, pending only, each once");
    let by_run = block_on(e.list_approvals(&ApprovalFilter {
        run: Some(ids[2].split('.').next().unwrap().into()),
        limit: 10,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(by_run.approvals.len(), 1);
    let critical = block_on(e.list_approvals(&ApprovalFilter {
        level: Some(Level::Critical),
        limit: 10,
        ..Default::default()
    }))
    .unwrap();
    assert!(critical.approvals.is_empty());
}

#[test]
fn an_approval_past_its_expiry_shows_expired_and_takes_no_link() {
    let e = engine();
    fix(&e);
    let (_, id) = parked(&e, "key:ci", ENV_DIFF);
    e.host.advance(4 * HOUR);
    let view = block_on(e.approval(&id)).unwrap();
    assert_eq!(view.status, ApprovalStatus::Expired, "before any tick");
    assert!(
        block_on(e.approval_link(&id, Verdict::Approve, "key:x", None, T0 + 5 * HOUR, "n"))
            .is_err()
    );
}

#[test]
fn racing_assessments_of_a_step_leave_one_filing() {
    let mut raced = 0;
    for seed in 1..=8 {
        let e = engine();
        fix(&e);
        let run_id = block_on(e.create_run("fix", manual(json!({"repo": "acme/app"})), None))
            .unwrap()
            .0
            .id;
        // The first assessment cannot read the policy: the patch step
        // stays assessing until its timer asks again.
        e.store.fail(Op::Get, keys::APPROVAL_POLICY, 0, 1);
        deliver(
            &e,
            &success(&format!("{run_id}.scan.1"), json!({"diff": ENV_DIFF})),
        )
        .unwrap();
        assert_eq!(step_status(&e, &run_id, "patch"), StepStatus::Assessing);
        e.host.advance(31_000);
        // Two ticks at once may both fire the timer: two assessments.
        e.store.interleave(seed);
        let (a, b) = block_on(futures::future::join(e.tick(), e.tick()));
        a.unwrap();
        b.unwrap();
        let r = run(&e, &run_id);
        assert_eq!(
            r.step("patch").unwrap().status,
            StepStatus::WaitingApproval,
            "seed {seed}"
        );
        let recorded = r
            .step("patch")
            .unwrap()
            .gate
            .as_ref()
            .unwrap()
            .approval
            .clone()
            .unwrap();
        let filed: Vec<String> = e
            .store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("approval"))
            .collect();
        assert_eq!(
            filed,
            [
                keys::approval_input(&recorded.id, recorded.seq),
                keys::approval(&recorded.id, recorded.seq),
                keys::approval_at(recorded.seq),
            ],
            "seed {seed}: only what the run recorded stays"
        );
        let listed = block_on(e.list_approvals(&ApprovalFilter {
            limit: 10,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(listed.approvals.len(), 1, "seed {seed}");
        assert!(
            listed.approvals[0].approval.input.is_null(),
            "not with a listing"
        );
        let view = block_on(e.approval(&recorded.id)).unwrap();
        assert!(
            view.approval.input.is_object(),
            "the input comes with one approval"
        );
        raced += usize::from(block_on(e.store.counter(&keys::approval_counter())).unwrap() > 1);
    }
    assert!(raced > 0, "no seed made two assessments race");
}

#[test]
fn retention_removes_approvals_with_their_runs() {
    let e = engine();
    fix(&e);
    let (run_id, id) = parked(&e, "key:ci", ENV_DIFF);
    decide(&e, &id, Verdict::Reject, "key:alice").unwrap();
    let r: Run = run(&e, &run_id);
    let seq = r
        .step("patch")
        .unwrap()
        .gate
        .as_ref()
        .unwrap()
        .approval
        .as_ref()
        .unwrap()
        .seq;
    e.host.advance(40 * 24 * HOUR);
    block_on(e.tick()).unwrap();
    assert!(
        e.store.raw(&keys::run(&run_id)).is_none(),
        "the run is purged"
    );
    assert!(e.store.raw(&keys::approval(&id, seq)).is_none());
    assert!(e.store.raw(&keys::approval_input(&id, seq)).is_none());
    assert!(e.store.raw(&keys::approval_at(seq)).is_none());
}
