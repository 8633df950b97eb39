//! One regression test per defect of the engine review (issue 7), each
//! driven through the engine's public operations on the in-memory store.

mod common;

use common::*;
use futures::executor::block_on;
use serde_json::json;
use spindle_core::job::ErrorKind;
use spindle_core::keys;
use spindle_core::run::{RunStatus, StepStatus};
use spindle_engine::testing::Op;
use spindle_engine::{EngineError, Sent, StoreExt};

/// Defect 1: A worker that heartbeats (renewing its lease) and then dies: the
/// lease timer re-arms itself at every renewal it finds, so the lapse is
/// noticed, the attempt times out and the step is retried.
#[test]
fn a_worker_that_dies_after_renewing_its_lease_is_noticed() {
    let e = engine();
    one_step(&e);
    let id = start(&e, "one").id;
    // The worker heartbeats for three lease periods (lease: 1 s), then dies.
    for _ in 0..9 {
        e.host.advance(330);
        assert!(heartbeat(&e, &format!("{id}.scan.1")).keep_running);
        block_on(e.tick()).unwrap();
    }
    assert_eq!(step_status(&e, &id, "scan"), StepStatus::Running);
    tick_until(&e, 200, 10_000, |e| dispatched(e).len() == 2);
    let r = run(&e, &id);
    let a1 = &r.step("scan").unwrap().attempts[0];
    assert_eq!(a1.error.as_ref().unwrap().kind, ErrorKind::Timeout);
    assert!(
        a1.error.as_ref().unwrap().message.contains("lease expired"),
        "{:?}",
        a1.error
    );
    // The second attempt's worker dies at once too: the run fails (2
    // attempts), it does not hang.
    tick_until(&e, 200, 10_000, |e| is_terminal(e, &id));
    assert_eq!(status(&e, &id), RunStatus::Failed);
}

/// Defect 1 (timeout): A worker that keeps heartbeating past the step's timeout
/// is stopped at the attempt's hard end by the lease timer.
#[test]
fn the_step_timeout_is_enforced_while_the_worker_keeps_heartbeating() {
    let e = engine();
    agent(&e, "scanner", 1);
    workflow(
        &e,
        json!({"name": "slow", "steps": [{"id": "scan", "agent": "scanner", "timeout_secs": 2}]}),
    );
    let id = start(&e, "slow").id;
    let job = format!("{id}.scan.1");
    let mut stopped = false;
    for _ in 0..30 {
        e.host.advance(300);
        if !heartbeat(&e, &job).keep_running {
            stopped = true;
            break;
        }
        block_on(e.tick()).unwrap();
    }
    assert!(stopped, "the worker was never told to stop");
    assert_eq!(status(&e, &id), RunStatus::Failed);
    let err = run(&e, &id).step("scan").unwrap().attempts[0]
        .error
        .clone()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(
        e.workers.cancels().iter().any(|u| u.contains(&job)),
        "the worker is told to stop the job"
    );
}

/// Defect 3: A timer write that fails stores nothing and sends nothing: a job is
/// only ever sent after its lease timer is stored.
#[test]
fn a_failed_timer_write_sends_no_job_and_stores_no_run() {
    let e = engine();
    one_step(&e);
    e.store.fail(Op::Set, "timers:", 0, 1);
    let err = block_on(e.create_run("one", manual(json!({})), None)).unwrap_err();
    assert!(matches!(err, EngineError::Store(_)), "{err}");
    assert!(
        dispatched(&e).is_empty(),
        "a job went out without its timer"
    );
    assert!(
        !e.store.keys().iter().any(|k| k.starts_with("run:")),
        "{:?}",
        e.store.keys()
    );
    // The same during a transition: a retry whose timer cannot be stored
    // leaves the run as it was, and the next tick does it.
    let id = start(&e, "one").id;
    deliver(
        &e,
        &failure(&format!("{id}.scan.1"), ErrorKind::AgentFailed),
    )
    .unwrap();
    assert_eq!(step_status(&e, &id, "scan"), StepStatus::RetryWait);
    e.host.advance(1_000);
    e.store.fail(Op::Set, "timers:", 0, 1);
    let report = block_on(e.tick()).unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(step_status(&e, &id, "scan"), StepStatus::RetryWait);
    assert_eq!(dispatched(&e).len(), 1);
    tick_until(&e, 200, 5_000, |e| dispatched(e).len() == 2);
    assert_eq!(step_status(&e, &id, "scan"), StepStatus::Dispatched);
}

/// Defect 4: A result whose processing fails part-way (the output write fails
/// after the claim) is completed by the worker's retry of the same body;
/// another body for the same job is refused; a repeat of an applied
/// result is answered as the first was.
#[test]
fn a_result_that_failed_part_way_is_completed_by_its_retry() {
    let e = engine();
    one_step(&e);
    let id = start(&e, "one").id;
    let job = format!("{id}.scan.1");
    let result = success(&job, json!({"findings": 2}));
    e.store.fail(Op::Set, "output:", 0, 1);
    let err = deliver(&e, &result).unwrap_err();
    assert!(matches!(err, EngineError::Store(_)), "{err}");
    assert_eq!(step_status(&e, &id, "scan"), StepStatus::Dispatched);

    let other = success(&job, json!({"findings": 99}));
    assert!(matches!(deliver(&e, &other), Err(EngineError::Conflict(_))));

    let outcome = deliver(&e, &result).unwrap();
    assert_eq!(outcome.run_status, RunStatus::Succeeded);
    let out: serde_json::Value = block_on(e.store.get(&keys::output(&job))).unwrap().unwrap();
    assert_eq!(out, json!({"findings": 2}));
    // The worker never saw the answer and sends it again: the same answer.
    assert_eq!(deliver(&e, &result).unwrap(), outcome);
    // Another body after the job finished is still refused, not answered
    // as done.
    assert!(matches!(deliver(&e, &other), Err(EngineError::Conflict(_))));
}

/// Defect 4 (run write): The run's compare-and-swap fails after the output is
/// stored: the retry applies it.
#[test]
fn a_result_whose_run_update_failed_is_applied_by_its_retry() {
    let e = engine();
    one_step(&e);
    let id = start(&e, "one").id;
    let result = success(&format!("{id}.scan.1"), json!({}));
    e.store.fail(Op::Swap, "run:", 0, 1);
    assert!(deliver(&e, &result).is_err());
    assert_eq!(
        deliver(&e, &result).unwrap().run_status,
        RunStatus::Succeeded
    );
}

/// Defect 5: An idempotency key whose first request failed between claiming the
/// key and recording its run is not stuck: a retry starts the run.
#[test]
fn an_idempotency_key_claimed_by_a_failed_request_is_taken_over() {
    let e = engine();
    one_step(&e);
    e.store.fail(Op::Set, "idempotency:", 0, 1);
    let first = block_on(e.create_run("one", manual(json!({"n": 1})), Some("k1")));
    assert!(first.is_err());
    let (run, created) =
        block_on(e.create_run("one", manual(json!({"n": 1})), Some("k1"))).unwrap();
    assert!(created);
    let (again, created) =
        block_on(e.create_run("one", manual(json!({"n": 1})), Some("k1"))).unwrap();
    assert!(!created);
    assert_eq!(again.id, run.id);
    assert_eq!(dispatched(&e).len(), 1, "one run, one job");
    // The same key with another body is refused, not answered with the
    // first body's run.
    let err = block_on(e.create_run("one", manual(json!({"n": 2})), Some("k1"))).unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");
}

/// 5 (recorded, not stored). The first request recorded its run id and
/// died before storing the run: a retry starts the run under that id.
#[test]
fn an_idempotency_key_whose_run_was_never_stored_starts_it_on_retry() {
    let e = engine();
    one_step(&e);
    // The run document's write fails after the record is written.
    e.store.fail(Op::Set, "run:", 0, 1);
    assert!(block_on(e.create_run("one", manual(json!({})), Some("k2"))).is_err());
    let (run, created) = block_on(e.create_run("one", manual(json!({})), Some("k2"))).unwrap();
    assert!(created);
    assert_eq!(dispatched(&e), [format!("{}.scan.1", run.id)]);
    let (again, created) = block_on(e.create_run("one", manual(json!({})), Some("k2"))).unwrap();
    assert_eq!((again.id, created), (run.id, false));
}

/// Defect 9: A store failure while preparing a job counts against the retry
/// budget: it fails the run in the end instead of retrying forever. Before
/// the first dispatch the same read happens for the step's risk
/// assessment, whose own timer gives up after a bounded number of tries.
#[test]
fn store_failures_while_dispatching_count_against_the_budget() {
    // skip 0: the assessment's read fails; skip 1: it succeeds, and every
    // dispatch's read fails.
    for skip in [0, 1] {
        let e = engine();
        agent(&e, "scanner", 2);
        agent(&e, "notifier", 2);
        workflow(
            &e,
            json!({"name": "two", "steps": [
                {"id": "scan", "agent": "scanner"},
                {"id": "notify", "agent": "notifier", "needs": ["scan"],
                 "input": {"f": "{{ steps.scan.output.findings }}"}}
            ]}),
        );
        let id = start(&e, "two").id;
        e.store.fail(Op::Get, "output:", skip, 100);
        // The result itself does not read outputs, the next step does.
        deliver(
            &e,
            &success(&format!("{id}.scan.1"), json!({"findings": 1})),
        )
        .unwrap();
        tick_until(&e, 200, 300_000, |e| is_terminal(e, &id));
        let r = run(&e, &id);
        assert_eq!(r.status, RunStatus::Failed);
        let n = r.step("notify").unwrap();
        if skip == 0 {
            assert!(n.attempts.is_empty(), "never dispatched: {:?}", n.attempts);
            assert_eq!(n.error.as_ref().unwrap().kind, ErrorKind::DispatchFailed);
            assert!(n.error.as_ref().unwrap().message.contains("assessed"));
            continue;
        }
        assert_eq!(n.attempts.len(), 2, "{:?}", n.attempts);
        assert!(
            n.attempts
                .iter()
                .all(|a| a.error.as_ref().unwrap().kind == ErrorKind::DispatchFailed)
        );
    }
}

/// A worker pool that never answers: attempts stay in flight, the lease
/// decides, and the run ends within its retry budget.
#[test]
fn a_worker_that_never_answers_cannot_hang_a_run() {
    let e = engine();
    one_step(&e);
    e.workers
        .answer_with(|_, _| Sent::Unknown("timed out".into()));
    let id = start(&e, "one").id;
    tick_until(&e, 250, 20_000, |e| is_terminal(e, &id));
    assert_eq!(status(&e, &id), RunStatus::Failed);
    assert_eq!(dispatched(&e).len(), 2);
}

/// An agent output nested deeper than a stored document may be is refused
/// as invalid output, instead of making its run unreadable for good.
#[test]
fn an_output_nested_too_deep_is_refused_not_stored() {
    let e = engine();
    one_step(&e);
    let id = start(&e, "one").id;
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let outcome = deliver(&e, &success(&format!("{id}.scan.1"), deep)).unwrap();
    assert!(
        outcome
            .rejected_output
            .as_deref()
            .is_some_and(|m| m.contains("nests deeper")),
        "{outcome:?}"
    );
    let err = run(&e, &id).step("scan").unwrap().attempts[0]
        .error
        .clone()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidOutput);
    assert!(block_on(e.run(&id)).is_ok(), "the run stays readable");
}

/// A compare-and-swap of the run document that loses races is retried; the
/// effects of the attempts that lost are not carried out (no audit line or
/// dispatch twice).
#[test]
fn lost_races_on_the_run_document_do_not_double_effects() {
    let e = engine();
    agent(&e, "scanner", 2);
    agent(&e, "notifier", 2);
    workflow(
        &e,
        json!({"name": "two", "steps": [
            {"id": "scan", "agent": "scanner"},
            {"id": "notify", "agent": "notifier", "needs": ["scan"]}
        ]}),
    );
    let id = start(&e, "two").id;
    e.store.lose_swaps("run:", 3);
    deliver(&e, &success(&format!("{id}.scan.1"), json!({}))).unwrap();
    assert_eq!(
        dispatched(&e),
        [format!("{id}.scan.1"), format!("{id}.notify.1")]
    );
    let succeeded = e
        .host
        .audit_lines()
        .iter()
        .filter(|l| l.contains("step_succeeded"))
        .count();
    assert_eq!(succeeded, 1);
    assert_eq!(step_status(&e, &id, "notify"), StepStatus::Dispatched);
}
