//! The audit trail: every run change lands in it with its actor and
//! request id, queries filter and page newest first with a bounded walk,
//! and retention removes old entries from the oldest end (holes included)
//! in bounded batches.

mod common;

use common::*;
use futures::executor::block_on;
use serde_json::json;
use spindle_core::audit::{AuditEntry, AuditFilter, MAX_EXAMINED};
use spindle_engine::audit;
use spindle_engine::{Store, StoreExt};

const DAY: u64 = 86_400_000;

fn entry(at_ms: u64, kind: &str, actor: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at_ms,
        kind: kind.into(),
        actor: Some(actor.into()),
        request_id: Some("req-1".into()),
        run: None,
        workflow: None,
        step: None,
        summary: format!("{kind} by {actor}"),
    }
}

fn all(e: &TestEngine, f: AuditFilter) -> Vec<AuditEntry> {
    let mut f = f;
    let mut out = Vec::new();
    loop {
        let page = block_on(audit::query(&e.store, &f)).unwrap();
        assert!(page.examined <= MAX_EXAMINED);
        out.extend(page.entries);
        match page.next_cursor {
            Some(c) => f.before = Some(c.parse().unwrap()),
            None => return out,
        }
    }
}

#[test]
fn run_changes_land_in_the_trail_with_their_actor() {
    let e = engine();
    one_step(&e);
    let id = start(&e, "one").id;
    deliver(&e, &success(&format!("{id}.scan.1"), json!({}))).unwrap();
    let other = start(&e, "one").id;
    block_on(e.cancel(&other, "no longer needed", Some("key:ops"))).unwrap();

    let mine = all(
        &e,
        AuditFilter {
            run: Some(id.clone()),
            limit: 10,
            ..Default::default()
        },
    );
    let kinds: Vec<&str> = mine.iter().rev().map(|x| x.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"run_created"), "{kinds:?}");
    assert!(kinds.contains(&"step_dispatched"), "{kinds:?}");
    assert!(kinds.contains(&"step_succeeded"), "{kinds:?}");
    assert!(mine.iter().all(|x| x.run.as_deref() == Some(id.as_str())));
    assert!(mine.iter().all(|x| x.workflow.as_deref() == Some("one")));
    // Newest first, numbered in order.
    assert!(mine.windows(2).all(|w| w[0].seq > w[1].seq));

    let cancels = all(
        &e,
        AuditFilter {
            actor: Some("key:ops".into()),
            limit: 10,
            ..Default::default()
        },
    );
    assert!(!cancels.is_empty());
    assert!(
        cancels
            .iter()
            .all(|x| x.run.as_deref() == Some(other.as_str()))
    );
    let by_type = all(
        &e,
        AuditFilter {
            kind: Some("run_started".into()),
            limit: 1,
            ..Default::default()
        },
    );
    assert_eq!(by_type.len(), 2, "paged one by one");
}

#[test]
fn pages_cover_every_match_once_and_time_bounds_hold() {
    let e = engine();
    let t = now(&e);
    for i in 0..500u64 {
        let actor = if i % 3 == 0 { "key:a" } else { "key:b" };
        block_on(audit::append(
            &e.store,
            entry(t + i * 1_000, "thing_done", actor),
        ))
        .unwrap();
    }
    let every = all(
        &e,
        AuditFilter {
            limit: 37,
            ..Default::default()
        },
    );
    assert_eq!(every.len(), 500);
    let seqs: Vec<u64> = every.iter().map(|x| x.seq).collect();
    assert_eq!(seqs, (1..=500).rev().collect::<Vec<_>>());
    let a = all(
        &e,
        AuditFilter {
            actor: Some("key:a".into()),
            limit: 50,
            ..Default::default()
        },
    );
    assert_eq!(a.len(), 167);
    let window = all(
        &e,
        AuditFilter {
            since_ms: Some(t + 100_000),
            until_ms: Some(t + 200_000),
            limit: 200,
            ..Default::default()
        },
    );
    assert_eq!(window.len(), 100);
    assert!(
        window
            .iter()
            .all(|x| (t + 100_000..t + 200_000).contains(&x.at_ms))
    );
    // A walk stops once entries are well before `since`: a query for the
    // last minute examines about a minute of entries, not all 500.
    let page = block_on(audit::query(
        &e.store,
        &AuditFilter {
            since_ms: Some(t + 499_000),
            limit: 200,
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert!(page.examined <= 62, "examined {}", page.examined);
    assert!(page.next_cursor.is_none());
}

#[test]
fn a_query_that_finds_little_stops_at_its_budget_with_a_cursor() {
    let e = engine();
    let t = now(&e);
    block_on(audit::append(&e.store, entry(t, "rare", "key:a"))).unwrap();
    for i in 0..(MAX_EXAMINED + 10) {
        block_on(audit::append(&e.store, entry(t + i, "common", "key:b"))).unwrap();
    }
    let f = AuditFilter {
        kind: Some("rare".into()),
        limit: 10,
        ..Default::default()
    };
    let first = block_on(audit::query(&e.store, &f)).unwrap();
    assert!(first.entries.is_empty());
    assert_eq!(first.examined, MAX_EXAMINED);
    let cursor: u64 = first.next_cursor.unwrap().parse().unwrap();
    let second = block_on(audit::query(
        &e.store,
        &AuditFilter {
            before: Some(cursor),
            ..f
        },
    ))
    .unwrap();
    assert_eq!(second.entries.len(), 1);
    assert_eq!(second.entries[0].kind, "rare");
    assert!(second.next_cursor.is_none());
}

#[test]
fn retention_removes_old_entries_in_batches_and_passes_settled_holes() {
    let e = engine();
    let t = now(&e);
    for i in 0..450u64 {
        block_on(audit::append(&e.store, entry(t + i, "old", "key:a"))).unwrap();
    }
    // A writer that took a number and died before writing its entry.
    block_on(e.store.increment(spindle_core::audit::HEAD, 1)).unwrap();
    for i in 0..5u64 {
        block_on(audit::append(
            &e.store,
            entry(t + 40 * DAY + i, "new", "key:a"),
        ))
        .unwrap();
    }
    let later = t + 40 * DAY + 120_000;
    let retention = 30 * DAY;
    let mut removed = Vec::new();
    for _ in 0..4 {
        removed.push(block_on(audit::sweep(&e.store, later, retention)).unwrap());
    }
    assert_eq!(removed, vec![200, 200, 50, 0], "batches of at most 200");
    let left = all(
        &e,
        AuditFilter {
            limit: 100,
            ..Default::default()
        },
    );
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|x| x.kind == "new"));
    let low: u64 = block_on(e.store.get(spindle_core::audit::LOW))
        .unwrap()
        .unwrap();
    assert_eq!(low, 452, "past the old entries and the hole");
    assert!(
        block_on(e.store.get_raw(&spindle_core::audit::day_key(t / DAY)))
            .unwrap()
            .is_some(),
        "day markers stay for the activity figures (swept after 100 days)"
    );
}

#[test]
fn the_sweep_waits_at_a_number_whose_entry_may_still_be_written() {
    let e = engine();
    let t = now(&e);
    block_on(audit::append(&e.store, entry(t, "old", "key:a"))).unwrap();
    // Number 2 taken just now; its entry not written yet.
    block_on(e.store.increment(spindle_core::audit::HEAD, 1)).unwrap();
    block_on(audit::append(&e.store, entry(t + 31 * DAY, "now", "key:a"))).unwrap();
    let n = block_on(audit::sweep(&e.store, t + 31 * DAY + 1_000, 30 * DAY)).unwrap();
    assert_eq!(n, 1);
    let low: u64 = block_on(e.store.get(spindle_core::audit::LOW))
        .unwrap()
        .unwrap();
    assert_eq!(low, 2, "not past a write that may be under way");
}
