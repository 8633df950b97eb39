//! Keys with a time to live (`Engine::expire_at`), deleted by the tick: when,
//! how much per tick (entries and buckets visited alike), what a broken
//! entry does, and the webhook deliveries that use them.
//!
//! Entries go into hour buckets (`keys::EXPIRY_BUCKET_MS`); the tick takes a
//! bucket on once it ended five minutes ago (the grace), so a key goes
//! between its time plus the grace and the end of its hour plus the grace.

mod common;

use common::*;
use futures::executor::block_on;
use serde_json::json;
use spindle_core::keys::{self, EXPIRY_BUCKET_MS};
use spindle_core::sign;
use spindle_core::subscription::{InboundEvent, SubscriptionSpec};
use spindle_engine::testing::Op;
use spindle_engine::webhooks::{DeliveryRecord, Ingested};
use spindle_engine::{RunFilter, StoreExt, TickReport};

/// The sweep's grace after a bucket ends (`expiry::GRACE_MS`).
const GRACE_MS: u64 = 5 * 60_000;
/// Most entries one tick deletes, every bucket it visits counting as one
/// (`expiry::MAX_EXPIRED_PER_TICK`).
const MAX_PER_TICK: usize = 1_000;
const HOUR: u64 = EXPIRY_BUCKET_MS;

fn tick(e: &TestEngine) -> TickReport {
    let report = block_on(e.tick()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report
}

fn tick_at(e: &TestEngine, at: u64) -> TickReport {
    e.host.set(at);
    tick(e)
}

fn present(e: &TestEngine, key: &str) -> bool {
    e.store.raw(key).is_some()
}

/// Stores `n` keys `<prefix>:<i>` and has each expire at `at`, one entry
/// per key.
fn expiring(e: &TestEngine, prefix: &str, n: usize, at: u64) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}:{i}")).collect();
    for k in &names {
        e.store.put(k, b"x");
        block_on(e.expire_at(std::slice::from_ref(k), at)).unwrap();
    }
    names
}

/// Keys of the expiry machinery itself (entries and their counters; the
/// cursor excepted).
fn expiry_docs(e: &TestEngine) -> Vec<String> {
    e.store
        .keys()
        .into_iter()
        .filter(|k| {
            (k.starts_with("expire:") && k != keys::EXPIRY_CURSOR)
                || k.starts_with("counter:expire:")
        })
        .collect()
}

#[test]
fn keys_go_once_their_hour_and_the_grace_are_over_and_not_before() {
    assert_eq!(T0 % HOUR, 0, "T0 starts an hour");
    let e = engine();
    e.store.put("keep", b"x");
    let early = expiring(&e, "early", 2, T0 + 10 * 60_000);
    let late = expiring(&e, "late", 1, T0 + HOUR - 1);
    let next = expiring(&e, "next", 1, T0 + HOUR);
    let all_there = |e: &TestEngine, names: &[String]| names.iter().all(|k| present(e, k));
    for at in [
        T0 + 10 * 60_000 - 1,
        T0 + 10 * 60_000 + GRACE_MS,
        T0 + HOUR,
        T0 + HOUR + GRACE_MS - 1,
    ] {
        assert_eq!(tick_at(&e, at).expired, 0, "at {at}");
        assert!(all_there(&e, &early) && all_there(&e, &late) && all_there(&e, &next));
    }
    // The first hour is over, with the grace: its three entries go.
    assert_eq!(tick_at(&e, T0 + HOUR + GRACE_MS).expired, 3);
    assert!(early.iter().chain(&late).all(|k| !present(&e, k)));
    assert!(all_there(&e, &next), "the next hour's entry stays");
    assert!(present(&e, "keep"));
    assert_eq!(tick_at(&e, T0 + 2 * HOUR + GRACE_MS - 1).expired, 0);
    assert!(all_there(&e, &next));
    assert_eq!(tick_at(&e, T0 + 2 * HOUR + GRACE_MS).expired, 1);
    assert!(!present(&e, &next[0]));
    assert!(present(&e, "keep"));
    // Nothing of the entries is left behind.
    assert!(expiry_docs(&e).is_empty(), "{:?}", expiry_docs(&e));
    assert_eq!(tick_at(&e, T0 + 5 * HOUR).expired, 0);
}

#[test]
fn a_time_already_past_expires_with_the_current_hour() {
    let e = spindle_engine::testing::engine(T0 + 30 * 60_000);
    let k = expiring(&e, "past", 1, T0 - 5 * HOUR);
    assert_eq!(tick_at(&e, T0 + 31 * 60_000).expired, 0);
    assert!(present(&e, &k[0]));
    assert_eq!(tick_at(&e, T0 + HOUR + GRACE_MS).expired, 1);
    assert!(!present(&e, &k[0]));
}

#[test]
fn many_entries_take_several_ticks_each_of_bounded_work() {
    let e = engine();
    // 2,500 entries over three hours (1,000, 1,000, 500), two keys each.
    let mut names = Vec::new();
    for (h, n) in [(0, 1_000), (1, 1_000), (2, 500)] {
        for i in 0..n {
            let pair = [format!("k:{h}:{i}:a"), format!("k:{h}:{i}:b")];
            for k in &pair {
                e.store.put(k, b"x");
            }
            block_on(e.expire_at(&pair, T0 + h * HOUR + 60_000)).unwrap();
            names.extend(pair);
        }
    }
    e.host.set(T0 + 3 * HOUR + GRACE_MS);
    let mut per_tick = Vec::new();
    loop {
        let (writes, reads) = (e.store.writes().count, e.store.reads());
        let report = tick(&e);
        let (writes, reads) = (e.store.writes().count - writes, e.store.reads() - reads);
        if report.expired == 0 {
            break;
        }
        assert!(report.expired <= MAX_PER_TICK, "{report:?}");
        // Per entry: two keys and the entry deleted, the entry read; per
        // bucket a counter read and deleted; the cursor.
        assert!(writes <= 3 * MAX_PER_TICK as u64 + 10, "{writes} writes");
        assert!(reads <= 2 * MAX_PER_TICK as u64 + 20, "{reads} reads");
        per_tick.push(report.expired);
        e.host.advance(1_000);
    }
    // Each bucket visited costs one of the 1,000: the first tick is in
    // hour 0 (1 + 999), the second finishes it and goes into hour 1
    // (1 + 1 + 1 + 997), the third finishes hours 1 and 2.
    assert_eq!(per_tick, [999, 998, 503]);
    assert!(names.iter().all(|k| !present(&e, k)));
    assert!(expiry_docs(&e).is_empty(), "{:?}", expiry_docs(&e));
}

#[test]
fn an_entry_due_before_an_earlier_written_one_still_expires() {
    let e = engine();
    // A week's TTL first (the cursor starts at now's bucket, not the
    // entry's), then an hour's.
    let week = expiring(&e, "week", 1, T0 + 7 * 24 * HOUR);
    let hour = expiring(&e, "hour", 1, T0 + 60_000);
    for h in 1..=3 {
        tick_at(&e, T0 + h * HOUR + GRACE_MS);
    }
    assert!(present(&e, &week[0]));
    assert!(!present(&e, &hour[0]), "the hour's key is still there");
    // And the week's goes with its own hour.
    tick_at(&e, T0 + 7 * 24 * HOUR + GRACE_MS - 1);
    assert!(present(&e, &week[0]));
    let mut ticks = 0;
    while present(&e, &week[0]) {
        ticks += 1;
        assert!(ticks <= 2, "the sweep does not catch up with a week");
        tick_at(&e, T0 + 7 * 24 * HOUR + HOUR + GRACE_MS);
    }
}

#[test]
fn a_bucket_of_45_entries_is_swept() {
    // 45 is `-` in the low byte of an 8-byte counter: it once read as text.
    let e = engine();
    let names = expiring(&e, "k", 45, T0 + 60_000);
    e.host.set(T0 + HOUR + GRACE_MS);
    let report = block_on(e.tick()).expect("the tick after a bucket of 45 entries");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.expired, 45);
    assert!(names.iter().all(|k| !present(&e, k)));
    assert!(expiry_docs(&e).is_empty(), "{:?}", expiry_docs(&e));
}

#[test]
fn the_first_tick_after_a_quiet_year_does_bounded_work_and_the_sweep_catches_up() {
    let e = engine();
    expiring(&e, "k", 1, T0 + 60_000);
    assert_eq!(tick_at(&e, T0 + HOUR + GRACE_MS).expired, 1);
    let year = T0 + 365 * 24 * HOUR;
    e.host.set(year);
    // Written in the quiet year's last hour, due an hour later.
    let late = expiring(&e, "late", 1, year + 60_000);
    let mut ticks = 0;
    loop {
        let (writes, reads) = (e.store.writes().count, e.store.reads());
        let report = tick(&e);
        let (writes, reads) = (e.store.writes().count - writes, e.store.reads() - reads);
        ticks += 1;
        // At most 1,000 (empty) buckets per tick: a counter read and a
        // delete each.
        assert!(
            writes <= MAX_PER_TICK as u64 + 10 && reads <= MAX_PER_TICK as u64 + 20,
            "tick {ticks}: {writes} writes, {reads} reads"
        );
        assert_eq!(report.expired, 0);
        if ticks == 1 {
            // Not all of the year in one go: 1,000 buckets on from the
            // hour after the swept one.
            let cursor: serde_json::Value =
                block_on(e.store.get(keys::EXPIRY_CURSOR)).unwrap().unwrap();
            assert_eq!(cursor["bucket"], json!(T0 / HOUR + 1 + 1_000));
        }
        if ticks == 10 {
            break;
        }
        e.host.advance(1_000);
    }
    // 8,760 hours at 1,000 a tick: caught up after nine ticks, and the
    // entry written meanwhile goes with its hour.
    assert!(present(&e, &late[0]));
    assert_eq!(tick_at(&e, year + 2 * HOUR + GRACE_MS).expired, 1);
    assert!(!present(&e, &late[0]));
    assert!(expiry_docs(&e).is_empty(), "{:?}", expiry_docs(&e));
}

#[test]
fn an_entry_that_does_not_decode_is_dropped_and_the_sweep_goes_on() {
    let e = engine();
    let names = expiring(&e, "k", 3, T0 + 60_000);
    let bucket = (T0 + 60_000) / HOUR;
    e.store.put(&keys::expiry(bucket, 2), b"not json");
    let report = tick_at(&e, T0 + HOUR + GRACE_MS);
    assert_eq!(report.expired, 3);
    assert!(!present(&e, &names[0]) && !present(&e, &names[2]));
    assert!(
        present(&e, &names[1]),
        "what it named is not known any more"
    );
    assert!(expiry_docs(&e).is_empty(), "{:?}", expiry_docs(&e));
}

#[test]
fn a_store_failure_fails_the_sweep_and_the_next_tick_finishes_it() {
    let e = engine();
    let names = expiring(&e, "k", 3, T0 + 60_000);
    // The second entry's read fails once.
    let bucket = (T0 + 60_000) / HOUR;
    e.store.fail(Op::Get, &keys::expiry(bucket, 2), 0, 1);
    e.host.set(T0 + HOUR + GRACE_MS);
    let report = block_on(e.tick()).unwrap();
    assert_eq!(report.expired, 0);
    assert!(
        report.errors.iter().any(|m| m.starts_with("expiry:")),
        "{:?}",
        report.errors
    );
    // Not skipped: what the failed entry names is still there (the
    // first entry's keys went; its entry is read again next tick).
    assert!(present(&e, &names[1]) && present(&e, &names[2]));
    let report = tick(&e);
    assert!(report.expired >= 2, "{report:?}");
    assert!(names.iter().all(|k| !present(&e, k)));
    assert!(expiry_docs(&e).is_empty(), "{:?}", expiry_docs(&e));
}

/// An engine with workflow `wf` (a step waiting for approval) and a
/// subscription to GitHub pushes.
fn hooks() -> TestEngine {
    let e = engine();
    agent_from(
        &e,
        json!({"name": "gate", "command": ["gate"], "risk_level": "approval_required"}),
    );
    gated_workflow(&e);
    let spec: SubscriptionSpec = serde_json::from_value(
        json!({"name": "pushes", "source": "github", "events": ["push"], "workflow": "wf"}),
    )
    .unwrap();
    block_on(registry(&e).put_subscription(spec, true)).unwrap();
    e
}

fn gated_workflow(e: &TestEngine) {
    workflow(
        e,
        json!({"name": "wf", "steps": [{"id": "wait", "agent": "gate"}]}),
    );
}

fn push() -> InboundEvent {
    InboundEvent {
        source: "github".into(),
        event: "push".into(),
        action: None,
        delivery: "d-1".into(),
        payload: json!({"ref": "refs/heads/main"}),
    }
}

fn digest_of(ev: &InboundEvent) -> String {
    sign::digest(&serde_json::to_vec(&ev.payload).unwrap())
}

/// A minute's dedupe window, as `webhook_dedupe_hours` would give in hours.
const WINDOW: u64 = 60_000;

/// Ingests the push under `window`: its run ids and whether it was new.
fn ingest_for(e: &TestEngine, window: u64) -> (Vec<String>, bool) {
    let ev = push();
    let digest = digest_of(&ev);
    let (rec, new) = match block_on(e.ingest(ev, &digest, window)).unwrap() {
        Ingested::New(rec) => (rec, true),
        Ingested::Duplicate(rec) => (rec, false),
        other => panic!("{other:?}"),
    };
    (
        rec.starts.iter().filter_map(|s| s.run_id.clone()).collect(),
        new,
    )
}

fn ingest(e: &TestEngine) -> (Vec<String>, bool) {
    ingest_for(e, WINDOW)
}

/// The stored record of the push.
fn record(e: &TestEngine) -> Option<DeliveryRecord> {
    let ev = push();
    let hash = sign::digest(format!("{}\n{}", ev.source, digest_of(&ev)).as_bytes());
    block_on(e.store.get(&keys::delivery(&hash))).unwrap()
}

fn run_count(e: &TestEngine) -> usize {
    block_on(e.list_runs(&RunFilter {
        limit: 100,
        ..RunFilter::default()
    }))
    .unwrap()
    .runs
    .len()
}

/// What a delivery keeps: its record, claim and delivery-id documents, and
/// its keyed starts' idempotency records and counters.
fn delivery_keys(e: &TestEngine) -> Vec<String> {
    e.store
        .keys()
        .into_iter()
        .filter(|k| {
            k.starts_with("delivery:")
                || k.starts_with("delivery-id:")
                || k.starts_with("counter:delivery:")
                || k.starts_with("idempotency:")
                || k.starts_with("counter:idempotency:")
                || k.starts_with("counter:idempotency-takeover:")
        })
        .collect()
}

#[test]
fn a_delivery_is_remembered_through_its_window_and_its_keys_go_after_it() {
    let e = hooks();
    let (first, new) = ingest(&e);
    assert!(new);
    assert_eq!(first.len(), 1);
    let kept = delivery_keys(&e);
    for prefix in [
        "delivery:",
        "delivery-id:",
        "counter:delivery:",
        "idempotency:",
        "counter:idempotency:",
    ] {
        assert!(
            kept.iter().any(|k| k.starts_with(prefix)),
            "no {prefix} key: {kept:?}"
        );
    }
    // Past the window but not past its bucket's end and the grace: still
    // remembered (the window is a minimum).
    tick_at(&e, T0 + WINDOW + 1);
    tick_at(&e, T0 + HOUR + GRACE_MS - 1);
    assert!(record(&e).is_some());
    let (again, new) = ingest(&e);
    assert!(!new);
    assert_eq!(again, first);
    // Then all of it goes, the keyed start's records too.
    let report = tick_at(&e, T0 + HOUR + GRACE_MS);
    assert!(report.expired >= 1, "{report:?}");
    assert_eq!(record(&e), None);
    assert!(delivery_keys(&e).is_empty(), "{:?}", delivery_keys(&e));
    assert!(expiry_docs(&e).is_empty(), "{:?}", expiry_docs(&e));
    assert_eq!(run_count(&e), 1, "the run itself stays (retention's)");
}

/// The window's meaning: a delivery is a duplicate only within it. The
/// same delivery arriving after it (a sender retrying days later, a
/// manual redelivery) is a new delivery and starts a new run.
#[test]
fn after_its_window_the_same_delivery_starts_a_new_run() {
    let e = hooks();
    let (first, _) = ingest(&e);
    tick_at(&e, T0 + HOUR + GRACE_MS);
    assert_eq!(record(&e), None);
    let (second, new) = ingest(&e);
    assert!(new, "forgotten: not a duplicate");
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "a new run, not the old one again");
    assert_eq!(run_count(&e), 2);
    // And that one is remembered through a window of its own.
    let (third, new) = ingest(&e);
    assert!(!new);
    assert_eq!(third, second);
    assert_eq!(run_count(&e), 2);
}

/// A failed delivery retried by a redelivery files its keys again, for a
/// later time; the first filing still deletes them at the first window's
/// end. The later filing must not then delete the keys of the same
/// delivery arriving anew after that.
#[test]
fn a_retry_filed_for_later_does_not_cut_a_later_deliverys_window_short() {
    let window = 2 * HOUR;
    let e = hooks();
    block_on(registry(&e).delete_workflow("wf")).unwrap();
    // T0: the workflow is gone; filed for T0 + 2 h.
    let (runs, new) = ingest_for(&e, window);
    assert!(new && runs.is_empty());
    // T0 + 1 h: back, and a redelivery starts the run; filed for T0 + 3 h.
    gated_workflow(&e);
    e.host.set(T0 + HOUR);
    let (first, new) = ingest_for(&e, window);
    assert!(new && first.len() == 1);
    // The first filing's hour (T0 + 2 h to 3 h) is swept: the delivery
    // is forgotten, and received anew starts a new run; filed for `anew`
    // + 2 h.
    let anew = T0 + 3 * HOUR + GRACE_MS;
    tick_at(&e, anew);
    let (second, new) = ingest_for(&e, window);
    assert!(new, "forgotten after the first window");
    assert_ne!(second, first);
    // The retry's hour (T0 + 3 h to 4 h) is swept; the delivery received
    // anew is within its window until `anew` + 2 h.
    tick_at(&e, T0 + 4 * HOUR + GRACE_MS);
    e.host.set(T0 + 4 * HOUR + GRACE_MS + 60_000);
    assert!(now(&e) < anew + window);
    let (third, new) = ingest_for(&e, window);
    assert!(!new, "a redelivery within the window is a duplicate");
    assert_eq!(third, second);
    assert_eq!(run_count(&e), 2);
}

/// A request that claimed a delivery and died before filing its keys for
/// expiry, with no copy coming after it.
#[test]
#[ignore = "KNOWN GAP (issue 9 note): webhooks.rs ingest increments the delivery's claim counter (counter:delivery:<hash>) before it files the delivery's keys for expiry: a request that fails in between (expire_at's store write) leaves the counter for good unless a copy of the delivery comes"]
fn a_claim_whose_request_died_before_filing_it_still_goes() {
    let e = hooks();
    e.store.fail(Op::Increment, "counter:expire:", 0, 1);
    let ev = push();
    let digest = digest_of(&ev);
    block_on(e.ingest(ev, &digest, WINDOW)).unwrap_err();
    for h in 1..=3 {
        tick_at(&e, T0 + h * 24 * HOUR);
    }
    assert!(delivery_keys(&e).is_empty(), "{:?}", delivery_keys(&e));
}
