//! The circuit breaker on dispatch: a worker that keeps failing is taken out
//! of the pool for a while, jobs go to the other worker or wait, and the
//! worker comes back through trial jobs. Two fake workers (`http://w1`,
//! `http://w2`), the default settings (5 failures in 2 minutes open it for
//! 60 s, 3 successes close it) and a test clock.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use futures::executor::block_on;
use spindle_core::breaker::BreakerState;
use spindle_core::job::ErrorKind;
use spindle_core::keys;
use spindle_core::run::{RunStatus, StepStatus};
use spindle_engine::testing::Op;
use spindle_engine::{BreakerView, Sent, Store};

const W1: &str = "http://w1";
const W2: &str = "http://w2";

/// Workers where `w1` is down while the flag is set and every other
/// answer is "taken"; returns the flag.
fn w1_down(e: &TestEngine) -> Arc<AtomicBool> {
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    e.workers.answer_with(move |url, _| {
        if url.starts_with(W1) && flag.load(Ordering::SeqCst) {
            Sent::NotReached("connection refused".into())
        } else {
            Sent::Answered(202)
        }
    });
    down
}

/// Jobs offered to `worker` so far.
fn offers(e: &TestEngine, worker: &str) -> usize {
    let url = format!("{worker}/jobs");
    e.workers.posted().iter().filter(|p| p.url == url).count()
}

fn view(e: &TestEngine, worker: &str) -> BreakerView {
    block_on(e.breakers())
        .into_iter()
        .find(|b| b.worker == worker)
        .unwrap()
}

fn state(e: &TestEngine, worker: &str) -> BreakerState {
    view(e, worker).state
}

/// Starts runs of `one` until `w1` was offered `n` jobs in all; returns
/// the runs started.
fn start_until_offered(e: &TestEngine, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while offers(e, W1) < n {
        ids.push(start(e, "one").id);
        assert!(ids.len() < 200, "w1 is never offered a job");
    }
    ids
}

fn transitions(e: &TestEngine, to: &str) -> i64 {
    block_on(e.store.counter(&keys::breaker_transitions(to))).unwrap()
}

#[test]
fn with_one_worker_down_every_job_goes_to_the_other_and_its_breaker_opens() {
    let e = engine();
    one_step(&e);
    w1_down(&e);
    let ids = start_until_offered(&e, 5);
    assert_eq!(state(&e, W1), BreakerState::Open);
    assert_eq!(transitions(&e, "open"), 1);
    assert!(
        e.host
            .log_lines()
            .iter()
            .any(|l| l.contains("worker http://w1: circuit breaker closed -> open")),
        "{:?}",
        e.host.log_lines()
    );
    // Open: w1 is not even tried; every job still runs, on w2.
    let more: Vec<String> = (0..20).map(|_| start(&e, "one").id).collect();
    assert_eq!(offers(&e, W1), 5);
    for id in ids.iter().chain(&more) {
        let r = run(&e, id);
        let a = &r.step("scan").unwrap().attempts;
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].worker.as_deref(), Some(W2), "{a:?}");
        assert_eq!(r.status, RunStatus::Running);
    }
    let v = view(&e, W1);
    assert_eq!((v.opened_total, v.since_ms, v.error), (1, T0, None));
    assert_eq!(state(&e, W2), BreakerState::Closed);
}

#[test]
fn five_failures_spread_over_ten_minutes_do_not_open_it() {
    let e = engine();
    one_step(&e);
    w1_down(&e);
    for n in 1..=5 {
        start_until_offered(&e, n);
        e.host.advance(150_000);
    }
    let v = view(&e, W1);
    assert_eq!(v.state, BreakerState::Closed);
    assert_eq!(v.recent_failures, 0, "the last one is 150 s old");
    // Still tried: the sixth failure is offered, and alone in its window.
    start_until_offered(&e, 6);
    assert_eq!(view(&e, W1).recent_failures, 1);
    assert_eq!(transitions(&e, "open"), 0);
}

#[test]
fn after_the_open_period_trial_jobs_go_to_it_and_three_taken_close_it() {
    let e = engine();
    one_step(&e);
    let down = w1_down(&e);
    start_until_offered(&e, 5);
    // 59 s on: still open, still not tried.
    e.host.advance(59_000);
    for _ in 0..20 {
        start(&e, "one");
    }
    assert_eq!(offers(&e, W1), 5);
    // The worker is back; once the 60 s are over it is half-open, in the
    // view before anything is written.
    down.store(false, Ordering::SeqCst);
    e.host.advance(1_000);
    assert_eq!(view(&e, W1).state, BreakerState::HalfOpen);
    assert_eq!(view(&e, W1).since_ms, T0 + 60_000);
    for n in 1..=2 {
        let ids = start_until_offered(&e, 5 + n);
        let last = run(&e, ids.last().unwrap());
        assert_eq!(
            last.step("scan").unwrap().attempts[0].worker.as_deref(),
            Some(W1),
            "the trial job was taken by w1"
        );
        assert_eq!(state(&e, W1), BreakerState::HalfOpen);
    }
    start_until_offered(&e, 8);
    let v = view(&e, W1);
    assert_eq!(v.state, BreakerState::Closed);
    assert_eq!((v.opened_total, v.recent_failures), (1, 0));
    assert_eq!(transitions(&e, "half_open"), 1);
    assert_eq!(transitions(&e, "closed"), 1);
    let log = e.host.log_lines().join("\n");
    assert!(log.contains("circuit breaker open -> half_open"), "{log}");
    assert!(log.contains("circuit breaker half_open -> closed"), "{log}");
}

#[test]
fn a_failed_trial_reopens_it_for_a_fresh_period() {
    let e = engine();
    one_step(&e);
    w1_down(&e);
    start_until_offered(&e, 5);
    e.host.advance(60_000);
    start_until_offered(&e, 6);
    let v = view(&e, W1);
    assert_eq!((v.state, v.opened_total), (BreakerState::Open, 2));
    assert_eq!(v.since_ms, T0 + 60_000);
    // A fresh 60 s from the failed trial.
    e.host.advance(59_999);
    for _ in 0..20 {
        start(&e, "one");
    }
    assert_eq!(offers(&e, W1), 6);
    e.host.advance(1);
    start_until_offered(&e, 7);
}

#[test]
fn with_every_worker_open_jobs_wait_and_runs_finish_once_one_is_back() {
    let e = engine();
    one_step(&e);
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    e.workers.answer_with(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Sent::NotReached("connection refused".into())
        } else {
            Sent::Answered(202)
        }
    });
    // Five runs: each offered to both, both open.
    let first: Vec<String> = (0..5).map(|_| start(&e, "one").id).collect();
    assert_eq!(
        (state(&e, W1), state(&e, W2)),
        (BreakerState::Open, BreakerState::Open)
    );
    let posts = e.workers.posted().len();
    let id = start(&e, "one").id;
    assert_eq!(e.workers.posted().len(), posts, "no worker was tried");
    let r = run(&e, &id);
    let s = r.step("scan").unwrap();
    assert_eq!(s.status, StepStatus::RetryWait);
    let err = s.attempts[0].error.as_ref().unwrap();
    assert_eq!(err.kind, ErrorKind::NoWorker);
    assert!(err.message.contains("circuit breaker open"), "{err:?}");
    // The workers come back; the steps keep waiting without using their
    // budget (2 attempts) until the breakers let trials through.
    down.store(false, Ordering::SeqCst);
    let all: Vec<String> = first.iter().chain([&id]).cloned().collect();
    tick_until(&e, 250, 120_000, |e| {
        // Each job is done as soon as a worker took it.
        for id in &all {
            let r = run(e, id);
            let s = r.step("scan").unwrap();
            if s.status.is_active() {
                let job = s.attempts.last().unwrap().job_id.clone();
                deliver(e, &success(&job, serde_json::json!({}))).unwrap();
            }
        }
        all.iter().all(|id| is_terminal(e, id))
    });
    for id in &all {
        let r = run(&e, id);
        assert_eq!(r.status, RunStatus::Succeeded, "{:#?}", r.step("scan"));
    }
    assert!(
        now(&e) >= T0 + 60_000,
        "not before the open period was over"
    );
}

#[test]
fn a_store_that_fails_breaker_reads_and_writes_does_not_stop_dispatch() {
    let e = engine();
    one_step(&e);
    w1_down(&e);
    e.store.fail(Op::Get, "breaker:", 0, 1_000);
    let ids: Vec<String> = (0..10).map(|_| start(&e, "one").id).collect();
    for id in &ids {
        let r = run(&e, id);
        assert_eq!(
            r.step("scan").unwrap().attempts[0].worker.as_deref(),
            Some(W2)
        );
    }
    // Treated as closed: w1 is tried every time its turn comes.
    assert!(offers(&e, W1) >= 3, "{}", offers(&e, W1));
    let log = e.host.log_lines().join("\n");
    assert!(log.contains("circuit breaker unreadable"), "{log}");
    assert!(log.contains("recording a dispatch outcome"), "{log}");
    let v = view(&e, W1);
    assert_eq!(v.state, BreakerState::Closed);
    assert!(v.error.is_some_and(|e| e.contains("injected")));

    // Writes failing, reads fine: dispatch goes on, the breaker stays closed.
    let e = engine();
    one_step(&e);
    w1_down(&e);
    e.store.fail(Op::Swap, "breaker:", 0, 1_000);
    start_until_offered(&e, 8);
    assert_eq!(state(&e, W1), BreakerState::Closed);
    // And a document that does not decode is replaced, not kept broken.
    let e = engine();
    one_step(&e);
    w1_down(&e);
    e.store.put(&keys::breaker(W1), b"{broken");
    start_until_offered(&e, 5);
    assert_eq!(state(&e, W1), BreakerState::Open);
}

#[test]
fn concurrent_dispatches_lose_no_failure() {
    for seed in 0..20 {
        let e = engine();
        one_step(&e);
        e.store.interleave(seed);
        e.workers
            .answer_with(|_, _| Sent::NotReached("connection refused".into()));
        // Five runs at once, each job offered to both workers: five
        // failures each, recorded by compare-and-swap under interleaving.
        let creations: Vec<_> = (0..5)
            .map(|_| e.create_run("one", manual(serde_json::json!({})), None))
            .collect();
        for r in block_on(futures::future::join_all(creations)) {
            r.unwrap();
        }
        for w in [W1, W2] {
            assert_eq!(offers(&e, w), 5, "seed {seed}");
            let v = view(&e, w);
            assert_eq!(
                (v.state, v.opened_total),
                (BreakerState::Open, 1),
                "seed {seed}: {w}"
            );
        }
    }
    // Lost races are retried.
    let e = engine();
    one_step(&e);
    w1_down(&e);
    e.store.lose_swaps("breaker:", 3);
    start_until_offered(&e, 5);
    assert_eq!(state(&e, W1), BreakerState::Open);
}

/// A healthy pool pays one store read per dispatch for its breakers, and
/// no write at all.
#[test]
fn a_closed_worker_taking_jobs_costs_one_read_and_no_write() {
    let reads = |breaker_on: bool| {
        let mut e = engine();
        if !breaker_on {
            e.config.breaker.failures = 0;
        }
        one_step(&e);
        let before = (e.store.reads(), e.store.writes().count);
        for _ in 0..10 {
            start(&e, "one");
        }
        assert!(e.store.keys().iter().all(|k| !k.starts_with("breaker:")));
        (
            e.store.reads() - before.0,
            e.store.writes().count - before.1,
        )
    };
    let (on, off) = (reads(true), reads(false));
    assert_eq!(on.0, off.0 + 10, "one read per dispatch");
    assert_eq!(on.1, off.1, "no write");
}

/// A half-open worker is sent no more trial jobs in a period than would
/// close its breaker, however many dispatches read it half-open before any
/// outcome is recorded (here it answers "busy", which records nothing):
/// the rest go to the other worker rather than each waiting on it.
#[test]
fn a_half_open_worker_gets_at_most_the_trials_that_close_it_per_period() {
    let e = engine();
    one_step(&e);
    let busy = Arc::new(AtomicBool::new(false));
    let flag = busy.clone();
    e.workers.answer_with(move |url, _| {
        if url.starts_with(W1) {
            if flag.load(Ordering::SeqCst) {
                Sent::Answered(429)
            } else {
                Sent::NotReached("connection refused".into())
            }
        } else {
            Sent::Answered(202)
        }
    });
    start_until_offered(&e, 5);
    assert_eq!(state(&e, W1), BreakerState::Open);
    busy.store(true, Ordering::SeqCst);
    e.host.advance(60_000);
    assert_eq!(state(&e, W1), BreakerState::HalfOpen);
    for _ in 0..30 {
        start(&e, "one");
    }
    assert_eq!(offers(&e, W1) - 5, 3, "three trials in the first period");
    assert_eq!(state(&e, W1), BreakerState::HalfOpen);
    // The next period lets three more through.
    e.host.advance(60_000);
    for _ in 0..30 {
        start(&e, "one");
    }
    assert_eq!(offers(&e, W1) - 5, 6, "three more in the next period");
}
