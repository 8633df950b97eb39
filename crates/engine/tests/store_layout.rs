//! The store layout scales: timers in time buckets, listings through
//! pointer documents, retention removing old runs; the cost of a run does
//! not grow with the number of runs before it.

mod common;

use common::*;
use futures::executor::block_on;
use serde_json::json;
use spindle_core::keys;
use spindle_core::run::RunStatus;
use spindle_engine::{RunFilter, Store, StoreExt};

/// Creates a one-step run and delivers its success; returns its id.
fn run_to_success(e: &TestEngine, wf: &str) -> String {
    let id = start(e, wf).id;
    deliver(e, &success(&format!("{id}.scan.1"), json!({"n": 1}))).unwrap();
    id
}

/// What one run costs in bytes written, averaged over a whole page cycle of
/// runs, stays the same after thousands of runs; no document grows past a
/// page.
#[test]
fn the_cost_of_a_run_is_flat_in_the_number_of_runs() {
    let e = engine();
    one_step(&e);
    let page = 256;
    let cycle = |e: &TestEngine| {
        let before = e.store.writes();
        for i in 0..page {
            run_to_success(e, "one");
            e.host.advance(3);
            if i % 64 == 63 {
                block_on(e.tick()).unwrap();
            }
        }
        let after = e.store.writes();
        (
            (after.count - before.count) as f64 / page as f64,
            (after.bytes - before.bytes) as f64 / page as f64,
        )
    };
    // The first cycles also set the store up (the timer cursor) and fill
    // the lease window (timers fire, and are deleted, a lease after they
    // are written); measure once that is steady.
    for _ in 0..3 {
        cycle(&e);
    }
    let (first_count, first_bytes) = cycle(&e);
    for _ in 0..6 {
        cycle(&e);
    }
    let (late_count, late_bytes) = cycle(&e);
    // Ticks write per bucket, not per run: a little noise, no growth.
    assert!(
        (late_count / first_count - 1.0).abs() < 0.02,
        "writes per run changed: {first_count} then {late_count}"
    );
    let ratio = late_bytes / first_bytes;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "bytes per run grew: {first_bytes:.0} then {late_bytes:.0} ({ratio:.2}x)"
    );
    let (key, size) = e.store.largest();
    assert!(size < 12_000, "{key} holds {size} bytes");
}

#[test]
fn listings_page_through_every_run_once_newest_first() {
    let e = engine();
    one_step(&e);
    agent(&e, "notifier", 1);
    workflow(
        &e,
        json!({"name": "other", "steps": [{"id": "scan", "agent": "notifier"}]}),
    );
    let mut ids = Vec::new();
    for i in 0..600 {
        let wf = if i % 3 == 0 { "other" } else { "one" };
        ids.push((wf, start(&e, wf).id));
        e.host.advance(1);
    }
    // Fail every tenth run of "one".
    for (i, (wf, id)) in ids.iter().enumerate() {
        if *wf == "one" && i % 10 == 1 {
            block_on(e.cancel(id, "test", None)).unwrap();
        }
    }
    let list = |filter: RunFilter| {
        let mut seen = Vec::new();
        let mut f = filter;
        loop {
            let page = block_on(e.list_runs(&f)).unwrap();
            seen.extend(page.runs.into_iter().map(|r| r.id));
            match page.next_cursor {
                Some(c) => f.cursor = Some(c),
                None => return seen,
            }
        }
    };
    let all = list(RunFilter {
        limit: 50,
        ..RunFilter::default()
    });
    let mut expected: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    expected.reverse();
    assert_eq!(all, expected);

    let other = list(RunFilter {
        workflow: Some("other".into()),
        limit: 7,
        ..RunFilter::default()
    });
    let expected: Vec<String> = ids
        .iter()
        .rev()
        .filter(|(wf, _)| *wf == "other")
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(other, expected);

    let cancelled = list(RunFilter {
        status: Some(RunStatus::Cancelled),
        limit: 100,
        ..RunFilter::default()
    });
    assert_eq!(cancelled.len(), 40);
    // A filter that matches little answers within its scan budget, with a
    // cursor to go on.
    let page = block_on(e.list_runs(&RunFilter {
        status: Some(RunStatus::Cancelled),
        workflow: Some("other".into()),
        limit: 10,
        ..RunFilter::default()
    }))
    .unwrap();
    assert!(page.runs.is_empty());
}

#[test]
fn retention_removes_old_finished_runs_and_everything_kept_about_them() {
    let e = engine();
    one_step(&e);
    let baseline: Vec<String> = e.store.keys();
    let mut done = Vec::new();
    for _ in 0..300 {
        done.push(run_to_success(&e, "one"));
    }
    let (keyed, _) = block_on(e.create_run("one", manual(json!({})), Some("key-1"))).unwrap();
    deliver(&e, &success(&format!("{}.scan.1", keyed.id), json!({}))).unwrap();
    let live = start(&e, "one").id;
    // More runs, so the old pages are no longer the page being added to.
    e.host.advance(31 * 86_400_000);
    let fresh: Vec<String> = (0..260).map(|_| run_to_success(&e, "one")).collect();

    let mut purged = 0;
    for _ in 0..40 {
        let report = block_on(e.tick()).unwrap();
        purged += report.purged;
        e.host.advance(1_000);
    }
    assert_eq!(purged, 301, "every old finished run, no more");
    let keys = e.store.keys();
    for id in done.iter().chain([&keyed.id]) {
        assert!(
            !keys.iter().any(|k| k.contains(id.as_str())),
            "something of {id} is left: {:?}",
            keys.iter()
                .filter(|k| k.contains(id.as_str()))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        !keys.iter().any(|k| k.starts_with("idempotency:")),
        "{keys:?}"
    );
    // A run still going is kept (it timed out meanwhile, so it is finished
    // now, but recently) and the new runs are untouched.
    assert!(block_on(e.run(&live)).is_ok());
    for id in &fresh {
        assert!(block_on(e.run(id)).is_ok());
    }
    // The audit trail keeps its own entries for the same period: the old
    // runs' are gone (the fresh runs' alone are left), and they are not
    // counted against the documents a run keeps.
    let audit = keys.iter().filter(|k| k.starts_with("audit:e:")).count();
    let fresh_entries = block_on(spindle_engine::audit::query(
        &e.store,
        &spindle_core::audit::AuditFilter {
            since_ms: Some(now(&e) - 86_400_000),
            limit: 200,
            ..Default::default()
        },
    ))
    .unwrap();
    assert!(audit > 0 && audit <= 260 * 8, "{audit} audit entries");
    assert!(
        fresh_entries
            .entries
            .iter()
            .all(|x| x.at_ms + 86_400_000 > now(&e))
    );
    assert!(
        keys.len() - audit < baseline.len() + 260 * 12,
        "{} keys",
        keys.len() - audit
    );
}

#[test]
fn a_run_held_back_by_retention_is_removed_once_it_finishes_and_ages() {
    let e = engine();
    agent(&e, "approver", 1);
    agent_from(
        &e,
        json!({"name": "patcher", "command": ["p"], "risk_level": "approval_required"}),
    );
    workflow(
        &e,
        json!({"name": "gated", "steps": [{"id": "patch", "agent": "patcher"}]}),
    );
    one_step(&e);
    let waiting = start(&e, "gated").id;
    assert_eq!(status(&e, &waiting), RunStatus::WaitingApproval);
    e.host.advance(31 * 86_400_000);
    for _ in 0..30 {
        run_to_success(&e, "one");
    }
    for _ in 0..5 {
        block_on(e.tick()).unwrap();
    }
    assert!(block_on(e.run(&waiting)).is_ok(), "a waiting run is kept");
    let held: Option<String> = block_on(e.store.get(&keys::retention_held(1))).unwrap();
    assert_eq!(held.as_ref(), Some(&waiting));
    // Still listed.
    let page = block_on(e.list_runs(&RunFilter {
        status: Some(RunStatus::WaitingApproval),
        limit: 10,
        ..RunFilter::default()
    }))
    .unwrap();
    assert_eq!(page.runs.len(), 1);
    block_on(e.cancel(&waiting, "too old", None)).unwrap();
    e.host.advance(31 * 86_400_000);
    let report = block_on(e.tick()).unwrap();
    assert!(report.purged >= 1);
    assert!(block_on(e.run(&waiting)).is_err());
    let held: Option<String> = block_on(e.store.get(&keys::retention_held(1))).unwrap();
    assert_eq!(held, None);
}

#[test]
fn the_tick_reads_only_the_buckets_between_its_cursor_and_now() {
    let e = engine();
    one_step(&e);
    for _ in 0..50 {
        start(&e, "one");
    }
    // Timers are one small document each, in quarter-second buckets.
    let timers: Vec<String> = e
        .store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("timers:") && k != keys::TIMER_CURSOR)
        .collect();
    assert_eq!(timers.len(), 50, "one lease timer per run: {timers:?}");
    e.host.advance(100);
    block_on(e.tick()).unwrap();
    let reads = e.store.reads();
    block_on(e.tick()).unwrap();
    let per_tick = e.store.reads() - reads;
    assert!(per_tick <= 14, "an idle tick read {per_tick} documents");
    // Hours later, empty buckets have been deleted as the cursor passed.
    tick_until(&e, 5_000, 3_600_000, |e| {
        e.store
            .keys()
            .iter()
            .filter(|k| k.starts_with("timers:"))
            .count()
            <= 2
            && block_on(e.tick()).unwrap().lag_ms < 10_000
    });
}

#[test]
fn a_timer_written_behind_the_tick_still_fires() {
    let e = engine();
    one_step(&e);
    // A tick far ahead of this request (another instance's clock, say).
    let ahead = keys::timer_bucket_of(now(&e)) + 30;
    block_on(e.store.set(keys::TIMER_CURSOR, &ahead)).unwrap();
    let id = start(&e, "one").id;
    // The lease timer went to the cursor's bucket, not behind it: the
    // lapsed lease is still noticed.
    tick_until(&e, 500, 60_000, |e| dispatched(e).len() == 2);
    assert_eq!(run(&e, &id).step("scan").unwrap().attempts.len(), 2);
}

/// Defect 11 (engine side): a request that dies after storing a run and
/// before sending its job (here: the dispatch claim fails) leaves a run the
/// lease timer recovers.
#[test]
fn a_run_stored_without_its_dispatch_is_recovered_by_the_tick() {
    let e = engine();
    one_step(&e);
    e.store.fail(
        spindle_engine::testing::Op::Increment,
        "counter:dispatch:",
        0,
        1,
    );
    let id = start(&e, "one").id;
    assert!(dispatched(&e).is_empty());
    tick_until(&e, 250, 10_000, |e| dispatched(e).len() == 1);
    deliver(&e, &success(&format!("{id}.scan.2"), json!({}))).unwrap();
    assert_eq!(status(&e, &id), RunStatus::Succeeded);
}

/// Every worker refusing the job itself (not "busy") counts against the
/// budget instead of retrying forever.
#[test]
fn a_job_every_worker_refuses_counts_against_the_budget() {
    let e = engine();
    one_step(&e);
    e.workers
        .answer_with(|_, _| spindle_engine::Sent::Answered(413));
    let id = start(&e, "one").id;
    tick_until(&e, 250, 20_000, |e| is_terminal(e, &id));
    assert_eq!(status(&e, &id), RunStatus::Failed);
    // Busy workers (503) only delay it.
    let e = engine();
    one_step(&e);
    e.workers
        .answer_with(|_, _| spindle_engine::Sent::Answered(503));
    let id = start(&e, "one").id;
    for _ in 0..40 {
        e.host.advance(500);
        block_on(e.tick()).unwrap();
    }
    assert!(!is_terminal(&e, &id));
    assert!(dispatched(&e).len() > 4);
}

/// Many runs created at once, interleaved at every store call, on a store
/// that gets compare-and-swap of absent keys wrong (as Spin's do): every
/// run is stored, listed and has its lease timer, and every one is
/// recovered when its worker never reports.
#[test]
fn concurrent_creations_lose_nothing_on_a_store_with_blind_inserts() {
    for seed in 0..20 {
        let mut e = engine();
        // Twelve jobs lost at once would open both workers' breakers and
        // turn lease timers into retry timers: this is about the store.
        e.config.breaker.failures = 0;
        one_step(&e);
        e.store.blind_inserts();
        e.store.interleave(seed);
        e.workers
            .answer_with(|_, _| spindle_engine::Sent::Unknown("never answers".into()));
        let creations: Vec<_> = (0..12)
            .map(|_| e.create_run("one", manual(json!({})), None))
            .collect();
        let ids: Vec<String> = block_on(futures::future::join_all(creations))
            .into_iter()
            .map(|r| r.unwrap().0.id)
            .collect();
        let listed = block_on(e.list_runs(&RunFilter {
            limit: 100,
            ..RunFilter::default()
        }))
        .unwrap();
        assert_eq!(listed.runs.len(), 12, "seed {seed}");
        let timers = e
            .store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("timers:") && k != keys::TIMER_CURSOR)
            .count();
        assert_eq!(timers, 12, "seed {seed}: a lease timer was lost");
        // Every first attempt times out and is sent again: none hangs.
        tick_until(&e, 250, 20_000, |e| {
            ids.iter()
                .all(|id| run(e, id).step("scan").unwrap().attempts.len() >= 2)
        });
    }
}

/// Runs that were never stored (their creation failed) leave holes in the
/// sequence; retention passes them instead of stalling on them.
#[test]
fn retention_passes_runs_that_were_never_stored() {
    let e = engine();
    one_step(&e);
    e.store
        .fail(spindle_engine::testing::Op::Set, "runs:seq:", 0, 30);
    for _ in 0..30 {
        assert!(block_on(e.create_run("one", manual(json!({})), None)).is_err());
    }
    let old: Vec<String> = (0..10).map(|_| run_to_success(&e, "one")).collect();
    e.host.advance(31 * 86_400_000);
    for _ in 0..1_000 {
        run_to_success(&e, "one");
    }
    let mut purged = 0;
    for _ in 0..10 {
        purged += block_on(e.tick()).unwrap().purged;
    }
    assert_eq!(purged, 10);
    for id in &old {
        assert!(block_on(e.run(id)).is_err(), "{id} was kept");
    }
}

/// A timer document that no longer decodes is dropped (and reported)
/// instead of holding the cursor, and with it every later timer, back.
#[test]
fn a_corrupt_timer_does_not_stop_the_others() {
    let e = engine();
    one_step(&e);
    let bucket = keys::timer_bucket_of(now(&e));
    block_on(e.store.increment(&keys::timer_slots(bucket), 1)).unwrap();
    e.store.put(&keys::timer(bucket, 1), b"{not a timer");
    block_on(e.store.set(keys::TIMER_CURSOR, &bucket)).unwrap();
    let id = start(&e, "one").id;
    let mut dropped = false;
    // The first attempt's worker never reports: its lease timer, behind
    // the corrupt one, still fires.
    tick_until_any_error(&e, &mut dropped, |e| dispatched(e).len() == 2);
    assert!(dropped, "the corrupt timer was reported");
    assert_eq!(run(&e, &id).step("scan").unwrap().attempts.len(), 2);
}

fn tick_until_any_error(e: &TestEngine, seen: &mut bool, until: impl Fn(&TestEngine) -> bool) {
    for _ in 0..200 {
        if until(e) {
            return;
        }
        e.host.advance(250);
        let report = block_on(e.tick()).unwrap();
        *seen |= report.errors.iter().any(|m| m.contains("dropped"));
    }
    panic!("never reached");
}
