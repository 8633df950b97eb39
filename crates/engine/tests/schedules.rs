//! Cron schedules fired by the tick on a test clock: exact fire times
//! across daylight saving changes, catch-up after downtime, racing ticks,
//! overlap policies, pause, resume, update and delete (and either racing a
//! fire), lost timers and claimers that fail or die, schedules whose
//! workflow is gone or refuses the payload, and a tick whose stages fail.
//!
//! Which fire time a run was started for is read from the run itself: its
//! idempotency hash is that of `schedule_run_key(name, fire_ms)`.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use common::*;
use futures::executor::block_on;
use serde_json::{Value, json};
use spindle_core::keys;
use spindle_core::run::{Event, Run, RunStatus, Timer, TimerKind, TriggerKind};
use spindle_core::schedule::{Schedule, ScheduleSpec, schedule_run_key};
use spindle_core::sign;
use spindle_engine::schedules::REARM_AFTER_MS;
use spindle_engine::testing::{FakeWorkers, MemStore, Op, TestHost};
use spindle_engine::{Engine, Host, RunFilter, Store, StoreExt, TickReport};

const MINUTE: u64 = 60_000;

/// Milliseconds since the Unix epoch of a UTC time `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(s: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    ((days * 86_400 + n(11..13) * 3_600 + n(14..16) * 60 + n(17..19)) * 1000) as u64
}

/// An engine whose clock reads `at`, with workflow `held`: one step on an
/// agent that needs approval, so its runs stay going (waiting, no timers,
/// nothing dispatched) until cancelled.
fn engine_at(at: &str) -> TestEngine {
    assert_eq!(
        utc("2026-11-22T00:00:00Z"),
        T0,
        "the test calendar is right"
    );
    let e = spindle_engine::testing::engine(utc(at));
    agent_from(
        &e,
        json!({"name": "gate", "command": ["gate"], "risk_level": "approval_required"}),
    );
    workflow(
        &e,
        json!({"name": "held", "steps": [{"id": "wait", "agent": "gate"}]}),
    );
    e
}

fn spec(doc: Value) -> ScheduleSpec {
    serde_json::from_value(doc).unwrap()
}

/// Creates a schedule.
fn put<S: Store>(e: &Engine<S, FakeWorkers, TestHost>, doc: Value) -> Schedule {
    block_on(e.put_schedule(spec(doc), true)).unwrap()
}

/// The stored schedule document.
fn doc<S: Store>(e: &Engine<S, FakeWorkers, TestHost>, name: &str) -> Schedule {
    block_on(e.store.get(&keys::schedule(name)))
        .unwrap()
        .unwrap_or_else(|| panic!("no schedule {name}"))
}

/// Every run of `wf`, oldest first.
fn runs_of<S: Store>(e: &Engine<S, FakeWorkers, TestHost>, wf: &str) -> Vec<Run> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = block_on(e.list_runs(&RunFilter {
            workflow: Some(wf.into()),
            limit: 500,
            cursor,
            ..RunFilter::default()
        }))
        .unwrap();
        out.extend(page.runs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    out.reverse();
    out
}

/// The fire time each run of schedule `name` was started for, in the order
/// the runs were created: every run must be one of the schedule's (trigger
/// kind, actor) and have been keyed by a whole minute in `[from, until]`.
fn fires_of(runs: &[Run], name: &str, from: u64, until: u64) -> Vec<u64> {
    let mut by_hash = BTreeMap::new();
    for wf in runs.iter().map(|r| r.workflow.as_str()) {
        if by_hash.contains_key(wf) {
            continue;
        }
        let mut hashes = BTreeMap::new();
        let mut at = from - from % MINUTE;
        while at <= until {
            let key = schedule_run_key(name, at);
            hashes.insert(sign::digest(format!("{wf}\n{key}").as_bytes()), at);
            at += MINUTE;
        }
        by_hash.insert(wf, hashes);
    }
    runs.iter()
        .map(|r| {
            assert_eq!(r.trigger.kind, TriggerKind::Schedule, "{}", r.id);
            assert_eq!(
                r.trigger.actor.as_deref(),
                Some(format!("schedule:{name}").as_str()),
                "{}",
                r.id
            );
            let hash = r.idempotency.as_deref().expect("a scheduled run is keyed");
            *by_hash[r.workflow.as_str()]
                .get(hash)
                .unwrap_or_else(|| panic!("run {} was keyed by no fire time of {name}", r.id))
        })
        .collect()
}

/// Moves the clock `step_ms` at a time up to `until`, ticking after each
/// move (no tick may report an error); `seen` looks after each tick.
fn drive(e: &TestEngine, until: u64, step_ms: u64, mut seen: impl FnMut(&TestEngine, &TickReport)) {
    while now(e) < until {
        e.host.advance(step_ms.min(until - now(e)));
        let report = block_on(e.tick()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        seen(e, &report);
    }
}

fn drive_to(e: &TestEngine, until: &str) {
    drive(e, utc(until), 30_000, |_, _| {});
}

/// Schedule timers waiting in the store (stale ones included).
fn schedule_timers(store: &MemStore) -> Vec<Timer> {
    store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("timers:") && k != keys::TIMER_CURSOR)
        .filter_map(|k| serde_json::from_slice::<Timer>(&store.raw(&k)?).ok())
        .filter(|t| t.kind == TimerKind::Schedule)
        .collect()
}

/// A counter: `schedule_fires:<outcome>` as the metrics keep it, anything
/// else under `counter:<name>`.
fn counter<S: Store>(store: &S, name: &str) -> i64 {
    let family = &spindle_core::metrics::SCHEDULE_FIRES;
    let key = match name.strip_prefix("schedule_fires:") {
        Some(outcome) => family.count_key(&family.series(&[outcome])),
        None => keys::counter(name),
    };
    block_on(store.counter(&key)).unwrap()
}

/// Whole minutes in `[from, until]`, as UTC strings' instants.
fn minutes(from: &str, until: &str) -> Vec<u64> {
    (utc(from)..=utc(until)).step_by(MINUTE as usize).collect()
}

/// Drives a schedule through `[from, until]` in 30 s steps and checks that
/// it fires exactly at `expected` (UTC), once each, on time, and that after
/// each fire its next fire time is the next expected one (`after`: the
/// first fire past the window).
fn check_fire_times(
    name: &str,
    cron: &str,
    tz: &str,
    from: &str,
    until: &str,
    expected: &[&str],
    after: &str,
) {
    let e = engine_at(from);
    let expected: Vec<u64> = expected.iter().map(|s| utc(s)).collect();
    let nexts: Vec<u64> = expected
        .iter()
        .skip(1)
        .copied()
        .chain([utc(after)])
        .collect();
    let s = put(
        &e,
        json!({"name": name, "workflow": "held", "cron": cron, "timezone": tz, "overlap": "allow"}),
    );
    assert_eq!(
        s.next_fire_at_ms,
        Some(expected[0]),
        "first fire of {cron} {tz}"
    );
    let mut seen_fires = Vec::new();
    drive(&e, utc(until), 30_000, |e, report| {
        let d = doc(e, name);
        if d.fired as usize > seen_fires.len() {
            let fire = d.last_fire_at_ms.unwrap();
            assert_eq!(d.fired as usize, seen_fires.len() + 1, "one fire per tick");
            assert_eq!(report.schedules.started, 1, "{report:?}");
            assert!(now(e) - fire < 30_000, "fired late: {fire} at {}", now(e));
            assert_eq!(
                d.next_fire_at_ms,
                nexts.get(seen_fires.len()).copied(),
                "next fire after the fire at {fire}"
            );
            seen_fires.push(fire);
        }
    });
    assert_eq!(seen_fires, expected, "{cron} in {tz}");
    let d = doc(&e, name);
    assert_eq!(
        (d.fired, d.missed, d.skipped),
        (expected.len() as u64, 0, 0)
    );
    // One run per fire time, started for that fire time.
    let runs = runs_of(&e, "held");
    assert_eq!(fires_of(&runs, name, utc(from), utc(until)), expected);
}

#[test]
fn a_daily_schedule_fires_once_a_day_at_its_wall_clock_time_across_spring_forward() {
    // Berlin skips 02:00-03:00 CET on 2026-03-29: 02:30 fires at the end of
    // the gap, 03:00 CEST (01:00Z); before it 02:30 CET is 01:30Z, after it
    // 02:30 CEST is 00:30Z.
    check_fire_times(
        "nightly",
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-26T12:00:00Z",
        "2026-03-31T12:00:00Z",
        &[
            "2026-03-27T01:30:00Z",
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z",
            "2026-03-31T00:30:00Z",
        ],
        "2026-04-01T00:30:00Z",
    );
}

#[test]
fn a_daily_schedule_fires_once_a_day_at_its_wall_clock_time_across_fall_back() {
    // Berlin passes 02:00-03:00 twice on 2026-10-25: 02:30 fires once, at
    // the first (summer time) pass, 00:30Z; not again at 01:30Z.
    check_fire_times(
        "nightly",
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-23T12:00:00Z",
        "2026-10-27T12:00:00Z",
        &[
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
            "2026-10-27T01:30:00Z",
        ],
        "2026-10-28T01:30:00Z",
    );
}

#[test]
fn an_hourly_schedule_fires_once_every_real_hour_across_fall_back() {
    // 00:00Z is 02:00 CEST and 01:00Z is 02:00 CET: both passes fire, each
    // once; 25 fires on that day.
    check_fire_times(
        "hourly",
        "0 * * * *",
        "Europe/Berlin",
        "2026-10-24T21:30:00Z",
        "2026-10-25T04:30:00Z",
        &[
            "2026-10-24T22:00:00Z",
            "2026-10-24T23:00:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T03:00:00Z",
            "2026-10-25T04:00:00Z",
        ],
        "2026-10-25T05:00:00Z",
    );
}

#[test]
fn an_hourly_schedule_fires_once_every_real_hour_across_spring_forward() {
    // 01:00 CET (00:00Z) is followed by 03:00 CEST (01:00Z): nothing is
    // fired for the missing 02:00 and nothing twice; 23 fires that day.
    check_fire_times(
        "hourly",
        "0 * * * *",
        "Europe/Berlin",
        "2026-03-28T21:30:00Z",
        "2026-03-29T03:30:00Z",
        &[
            "2026-03-28T22:00:00Z",
            "2026-03-28T23:00:00Z",
            "2026-03-29T00:00:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T02:00:00Z",
            "2026-03-29T03:00:00Z",
        ],
        "2026-03-29T04:00:00Z",
    );
}

/// A per-minute schedule (catch-up 300 s, overlap allow) that fired at
/// 10:00, 10:01 and 10:02; then the ticks stop.
fn fired_until_1002() -> TestEngine {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *",
            "catch_up_secs": 300, "overlap": "allow"}),
    );
    drive_to(&e, "2026-05-04T10:02:00Z");
    assert_eq!(doc(&e, "every").fired, 3);
    e
}

#[test]
fn after_a_ten_minute_outage_one_tick_catches_up_the_last_five_minutes_and_counts_the_rest_missed()
{
    let e = fired_until_1002();
    // Ten minutes without a tick: 10:03 to 10:12 fall due.
    e.host.set(utc("2026-05-04T10:12:10Z"));
    let report = block_on(e.tick()).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    // The window is [now - 300 s, now]: 10:07:10 to 10:12:10 holds 10:08 to
    // 10:12; 10:03 to 10:07 are missed.
    assert_eq!(
        (
            report.schedules.started,
            report.schedules.missed,
            report.schedules.skipped
        ),
        (5, 5, 0),
        "{report:?}"
    );
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.missed, d.skipped), (8, 5, 0));
    assert_eq!(d.last_fire_at_ms, Some(utc("2026-05-04T10:12:00Z")));
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:13:00Z")));
    assert_eq!(counter(&e.store, "schedule_fires:started"), 8);
    assert_eq!(counter(&e.store, "schedule_fires:missed"), 5);
    let fires = fires_of(
        &runs_of(&e, "held"),
        "every",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    let mut want = minutes("2026-05-04T10:00:00Z", "2026-05-04T10:02:00Z");
    want.extend(minutes("2026-05-04T10:08:00Z", "2026-05-04T10:12:00Z"));
    assert_eq!(fires, want);
    // Ticking on: each later minute fires once, nothing is fired again.
    drive_to(&e, "2026-05-04T10:20:00Z");
    want.extend(minutes("2026-05-04T10:13:00Z", "2026-05-04T10:20:00Z"));
    let fires = fires_of(
        &runs_of(&e, "held"),
        "every",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    assert_eq!(fires, want);
    assert_eq!(doc(&e, "every").missed, 5);
}

#[test]
fn a_fire_exactly_catch_up_secs_late_still_fires() {
    let e = fired_until_1002();
    e.host.set(utc("2026-05-04T10:12:00Z"));
    let report = block_on(e.tick()).unwrap();
    // [10:07:00, 10:12:00], both ends inclusive: six fires, four missed.
    assert_eq!((report.schedules.started, report.schedules.missed), (6, 4));
    let fires = fires_of(
        &runs_of(&e, "held"),
        "every",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    let mut want = minutes("2026-05-04T10:00:00Z", "2026-05-04T10:02:00Z");
    want.extend(minutes("2026-05-04T10:07:00Z", "2026-05-04T10:12:00Z"));
    assert_eq!(fires, want);
    assert_eq!(
        doc(&e, "every").next_fire_at_ms,
        Some(utc("2026-05-04T10:13:00Z"))
    );
}

/// A store two engines share, as two instances share Spin's store.
struct Shared(Rc<MemStore>);

impl Store for Shared {
    type Cas = <MemStore as Store>::Cas;
    async fn get_raw(&self, key: &str) -> spindle_engine::store::Result<Option<Vec<u8>>> {
        self.0.get_raw(key).await
    }
    async fn set_raw(&self, key: &str, value: &[u8]) -> spindle_engine::store::Result<()> {
        self.0.set_raw(key, value).await
    }
    async fn delete(&self, key: &str) -> spindle_engine::store::Result<()> {
        self.0.delete(key).await
    }
    async fn increment(&self, key: &str, delta: i64) -> spindle_engine::store::Result<i64> {
        self.0.increment(key, delta).await
    }
    async fn counter(&self, key: &str) -> spindle_engine::store::Result<i64> {
        self.0.counter(key).await
    }
    async fn watch(
        &self,
        key: &str,
    ) -> spindle_engine::store::Result<(Self::Cas, Option<Vec<u8>>)> {
        self.0.watch(key).await
    }
    async fn swap(&self, cas: Self::Cas, value: &[u8]) -> spindle_engine::store::Result<bool> {
        self.0.swap(cas, value).await
    }
}

type SharedEngine = Engine<Shared, FakeWorkers, TestHost>;

/// Two engines on one store (the schedule `every` created), whose store
/// calls interleave as `seed` decides.
fn two_instances(seed: u64) -> (Rc<MemStore>, SharedEngine, SharedEngine) {
    let mut base = engine_at("2026-05-04T09:59:30Z");
    put(
        &base,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    let store = Rc::new(std::mem::take(&mut base.store));
    // Run counters start at 100, so the 61 runs never bring one to 45
    // (see `the_45th_run_does_not_break_the_tick`).
    for key in [keys::run_counter(), keys::workflow_run_counter("held")] {
        store.put(&key, &100i64.to_le_bytes());
    }
    store.interleave(seed);
    let instance = || Engine {
        store: Shared(store.clone()),
        workers: FakeWorkers::accepting(),
        host: TestHost::at(now(&base)),
        config: spindle_engine::testing::config(),
    };
    let (a, b) = (instance(), instance());
    (store, a, b)
}

/// What racing ticks reported, summed.
#[derive(Default)]
struct Raced {
    started: u64,
    rearmed: u64,
    errors: Vec<String>,
    /// Schedule timers in the store after each round.
    timers: Vec<usize>,
}

/// Ticks both instances at the same instant, every 30 s up to `until`.
fn race_ticks(store: &MemStore, a: &SharedEngine, b: &SharedEngine, until: u64) -> Raced {
    let mut raced = Raced::default();
    let mut at = a.host.now_ms();
    while at < until {
        // The same instant on both (a request's waits move its clock).
        at += 30_000;
        a.host.set(at);
        b.host.set(at);
        let (ra, rb) = block_on(async { futures::join!(a.tick(), b.tick()) });
        for r in [ra.unwrap(), rb.unwrap()] {
            raced.errors.extend(r.errors);
            raced.started += r.schedules.started;
            raced.rearmed += r.schedules.rearmed;
        }
        raced.timers.push(schedule_timers(store).len());
    }
    raced
}

#[test]
fn racing_ticks_start_exactly_one_run_per_fire_time() {
    for seed in 1..=6 {
        let (store, a, b) = two_instances(seed);
        let raced = race_ticks(&store, &a, &b, utc("2026-05-04T11:00:00Z"));
        assert!(raced.errors.is_empty(), "seed {seed}: {:?}", raced.errors);
        let fires = fires_of(
            &runs_of(&a, "held"),
            "every",
            utc("2026-05-04T09:00:00Z"),
            a.host.now_ms(),
        );
        assert_eq!(
            fires,
            minutes("2026-05-04T10:00:00Z", "2026-05-04T11:00:00Z"),
            "seed {seed}"
        );
        let d = doc(&a, "every");
        assert_eq!((d.fired, d.missed, d.skipped), (61, 0, 0), "seed {seed}");
        assert_eq!(
            d.next_fire_at_ms,
            Some(utc("2026-05-04T11:01:00Z")),
            "seed {seed}"
        );
        // Timers do not pile up: a few stale ones at most, whatever the race.
        assert!(
            raced.timers.iter().all(|n| *n <= 2),
            "seed {seed}: {:?}",
            raced.timers
        );
    }
}

/// Only the claimer of a fire handles it: the other tick neither arms a
/// second timer nor counts the fires again.
#[test]
fn racing_ticks_arm_one_timer_and_count_each_fire_once() {
    for seed in 1..=6 {
        let (store, a, b) = two_instances(seed);
        let raced = race_ticks(&store, &a, &b, utc("2026-05-04T11:00:00Z"));
        assert!(raced.errors.is_empty(), "seed {seed}: {:?}", raced.errors);
        assert_eq!(raced.started, 61, "seed {seed}: tick reports");
        assert_eq!(
            counter(&*store, "schedule_fires:started"),
            61,
            "seed {seed}: the metric"
        );
        assert!(
            raced.timers.iter().all(|n| *n == 1),
            "seed {seed}: {:?}",
            raced.timers
        );
        // Each fire was claimed once; the losers gave their counts back.
        for fire in minutes("2026-05-04T10:01:00Z", "2026-05-04T11:00:00Z") {
            assert_eq!(
                counter(&*store, &format!("schedule-fire:every:1:{fire}")),
                1,
                "seed {seed}: {fire}"
            );
        }
    }
}

/// The claimer of 10:01 fails to arm 10:02 and gives its claim back,
/// whichever instance claimed it and however the other raced it: the
/// retried timer is claimed again and nothing needs re-arming.
#[test]
fn racing_ticks_retry_a_fire_whose_claimer_failed() {
    for seed in 1..=6 {
        let (store, a, b) = two_instances(seed);
        let raced = race_ticks(&store, &a, &b, utc("2026-05-04T10:00:30Z"));
        assert!(raced.errors.is_empty(), "seed {seed}: {:?}", raced.errors);
        store.fail(Op::Set, "timers:", 0, 1);
        let raced = race_ticks(&store, &a, &b, utc("2026-05-04T10:10:00Z"));
        assert_eq!(raced.errors.len(), 1, "seed {seed}: {:?}", raced.errors);
        assert_eq!(raced.rearmed, 0, "seed {seed}");
        assert_eq!(raced.started, 10, "seed {seed}");
        let fires = fires_of(
            &runs_of(&a, "held"),
            "every",
            utc("2026-05-04T09:00:00Z"),
            a.host.now_ms(),
        );
        assert_eq!(
            fires,
            minutes("2026-05-04T10:00:00Z", "2026-05-04T10:10:00Z"),
            "seed {seed}"
        );
        let d = doc(&a, "every");
        assert_eq!((d.fired, d.missed, d.skipped), (11, 0, 0), "seed {seed}");
        assert_eq!(schedule_timers(&store).len(), 1, "seed {seed}");
    }
}

fn cancel(e: &TestEngine, id: &str) {
    block_on(e.apply(
        id,
        Event::Cancel {
            reason: "test".into(),
            by: None,
        },
    ))
    .unwrap();
}

fn overlapping(overlap: &str) -> TestEngine {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": overlap}),
    );
    drive_to(&e, "2026-05-04T10:00:00Z");
    assert_eq!(runs_of(&e, "held").len(), 1);
    e
}

#[test]
fn overlap_skip_starts_nothing_while_the_previous_run_is_going() {
    let e = overlapping("skip");
    let first = runs_of(&e, "held")[0].id.clone();
    drive_to(&e, "2026-05-04T10:02:00Z");
    assert_eq!(runs_of(&e, "held").len(), 1, "10:01 and 10:02 skipped");
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.skipped, d.missed), (1, 2, 0));
    assert_eq!(d.last_run_id.as_deref(), Some(first.as_str()));
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:03:00Z")));
    assert_eq!(counter(&e.store, "schedule_fires:skipped"), 2);
    assert!(
        e.host.log_lines().iter().any(|l| l.contains("skipped")),
        "{:?}",
        e.host.log_lines()
    );
    // Once it is over, the next fire starts a run again.
    cancel(&e, &first);
    drive_to(&e, "2026-05-04T10:03:00Z");
    let runs = runs_of(&e, "held");
    assert_eq!(runs.len(), 2);
    assert_eq!(
        fires_of(&runs, "every", utc("2026-05-04T09:00:00Z"), now(&e)),
        [utc("2026-05-04T10:00:00Z"), utc("2026-05-04T10:03:00Z")]
    );
    assert_eq!(doc(&e, "every").last_run_id, Some(runs[1].id.clone()));
}

#[test]
fn overlap_allow_starts_a_run_beside_the_one_still_going() {
    let e = overlapping("allow");
    drive_to(&e, "2026-05-04T10:01:00Z");
    let runs = runs_of(&e, "held");
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.status == RunStatus::WaitingApproval));
    assert_eq!((doc(&e, "every").fired, doc(&e, "every").skipped), (2, 0));
}

#[test]
fn overlap_cancel_previous_cancels_the_run_still_going_and_starts_a_new_one() {
    let e = overlapping("cancel_previous");
    drive_to(&e, "2026-05-04T10:01:00Z");
    let runs = runs_of(&e, "held");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status, RunStatus::Cancelled);
    assert!(
        runs[0]
            .error
            .as_deref()
            .is_some_and(|m| m.contains("schedule every fired again (overlap: cancel_previous)")),
        "{:?}",
        runs[0].error
    );
    let cancelled = runs[0]
        .events
        .iter()
        .find(|ev| ev.kind == "cancel_requested")
        .expect("the cancel is in the run's trail");
    assert_eq!(cancelled.actor.as_deref(), Some("schedule:every"));
    assert_eq!(runs[1].status, RunStatus::WaitingApproval);
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.skipped), (2, 0));
    assert_eq!(d.last_run_id, Some(runs[1].id.clone()));
}

#[test]
fn a_paused_schedule_fires_nothing_and_resumes_without_catching_up() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    drive_to(&e, "2026-05-04T10:01:10Z");
    let paused = block_on(e.pause_schedule("every", true)).unwrap();
    assert!(paused.paused);
    assert_eq!(paused.next_fire_at_ms, None);
    // The 10:02 timer armed before the pause is still there; it must do
    // nothing.
    drive_to(&e, "2026-05-04T10:30:10Z");
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.missed, d.skipped), (2, 0, 0));
    assert_eq!(runs_of(&e, "held").len(), 2);
    let resumed = block_on(e.pause_schedule("every", false)).unwrap();
    assert_eq!(resumed.next_fire_at_ms, Some(utc("2026-05-04T10:31:00Z")));
    assert_eq!(resumed.epoch, paused.epoch + 1);
    drive_to(&e, "2026-05-04T10:35:00Z");
    let mut want = minutes("2026-05-04T10:00:00Z", "2026-05-04T10:01:00Z");
    want.extend(minutes("2026-05-04T10:31:00Z", "2026-05-04T10:35:00Z"));
    let fires = fires_of(
        &runs_of(&e, "held"),
        "every",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    assert_eq!(fires, want, "no catch-up of the paused half hour");
    assert_eq!(doc(&e, "every").missed, 0);
}

#[test]
fn an_update_rearms_under_a_new_epoch_and_the_old_timer_fires_nothing() {
    let e = engine_at("2026-05-04T09:59:30Z");
    let first = put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow",
            "payload": {"v": 1}}),
    );
    drive_to(&e, "2026-05-04T10:00:10Z");
    // Same pattern, new payload: the new timer is at the same instant as
    // the old one (10:01).
    let updated = block_on(e.put_schedule(
        spec(
            json!({"name": "every", "workflow": "held", "cron": "* * * * *",
            "overlap": "allow", "payload": {"v": 2}}),
        ),
        false,
    ))
    .unwrap();
    assert_eq!(updated.epoch, first.epoch + 1);
    assert_eq!(updated.next_fire_at_ms, Some(utc("2026-05-04T10:01:00Z")));
    let armed = schedule_timers(&e.store);
    assert_eq!(armed.len(), 2, "the old timer and the new: {armed:?}");
    drive_to(&e, "2026-05-04T10:01:00Z");
    let runs = runs_of(&e, "held");
    assert_eq!(runs.len(), 2, "10:01 fired once");
    assert_eq!(runs[1].trigger.payload, json!({"v": 2}));
    assert_eq!(schedule_timers(&e.store).len(), 1);
    // A new pattern: the timer armed for 10:02 under the old epoch is
    // ignored; the next fire is 10:05.
    let every5 = block_on(e.put_schedule(
        spec(
            json!({"name": "every", "workflow": "held", "cron": "*/5 * * * *",
            "overlap": "allow"}),
        ),
        false,
    ))
    .unwrap();
    assert_eq!(every5.next_fire_at_ms, Some(utc("2026-05-04T10:05:00Z")));
    drive_to(&e, "2026-05-04T10:10:00Z");
    let fires = fires_of(
        &runs_of(&e, "held"),
        "every",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    assert_eq!(
        fires,
        ["10:00", "10:01", "10:05", "10:10"].map(|t| utc(&format!("2026-05-04T{t}:00Z")))
    );
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.missed, d.skipped), (4, 0, 0));
}

#[test]
fn a_deleted_schedule_fires_no_more() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    drive_to(&e, "2026-05-04T10:00:10Z");
    block_on(e.delete_schedule("every")).unwrap();
    assert!(
        block_on(e.store.get::<Schedule>(&keys::schedule("every")))
            .unwrap()
            .is_none()
    );
    let listed: Vec<String> = block_on(e.store.get(keys::SCHEDULE_INDEX))
        .unwrap()
        .unwrap_or_default();
    assert!(!listed.contains(&"every".to_owned()), "{listed:?}");
    drive_to(&e, "2026-05-04T10:20:00Z");
    assert_eq!(runs_of(&e, "held").len(), 1);
    assert!(
        schedule_timers(&e.store).is_empty(),
        "the last timer fired and is gone"
    );
    assert!(matches!(
        block_on(e.delete_schedule("every")),
        Err(spindle_engine::registry::RegistryError::NotFound(_))
    ));
}

/// A per-minute schedule (`catch_up_secs`, overlap allow) on `held` that
/// fired at 10:00, then is left without a timer that can fire it by
/// `lose`: the document waits for the fire at `stuck`. Ticks on to 10:10. Returns the engine, the fire times of
/// its runs, and when a fire after 10:01 was first recorded.
fn lose_a_timer(
    catch_up_secs: u64,
    stuck: &str,
    lose: impl FnOnce(&TestEngine),
) -> (TestEngine, Vec<u64>, u64) {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *",
            "overlap": "allow", "catch_up_secs": catch_up_secs}),
    );
    drive_to(&e, "2026-05-04T10:00:30Z");
    lose(&e);
    assert_eq!(doc(&e, "every").next_fire_at_ms, Some(utc(stuck)));
    let (mut rearmed, mut recovered_at) = (0, 0);
    drive(&e, utc("2026-05-04T10:10:00Z"), 30_000, |e, r| {
        rearmed += r.schedules.rearmed;
        if recovered_at == 0 && doc(e, "every").last_fire_at_ms > Some(utc("2026-05-04T10:01:00Z"))
        {
            recovered_at = now(e);
        }
    });
    assert_eq!(rearmed, 1, "re-armed once");
    let fires = fires_of(
        &runs_of(&e, "held"),
        "every",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    (e, fires, recovered_at)
}

/// The tick at 10:01 dies after claiming the fire: it started the run of
/// 10:01 and armed the timer of 10:02, but neither moved the document on
/// nor gave the claim back (its swap and its release fail).
fn die_after_the_claim(e: &TestEngine) {
    e.host.set(utc("2026-05-04T10:01:00Z"));
    e.store.fail(Op::Swap, &keys::schedule("every"), 0, 1);
    e.store.fail(Op::Increment, "counter:schedule-fire:", 1, 1);
    let report = block_on(e.tick()).unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(runs_of(e, "held").len(), 2, "10:01 started its run");
    assert_eq!(claim(&e.store, "every", 1, "2026-05-04T10:01:00Z"), 1);
}

/// The claim counter of the fire at `at` (UTC) of epoch `epoch`.
fn claim<S: Store>(store: &S, name: &str, epoch: u64, at: &str) -> i64 {
    counter(store, &format!("schedule-fire:{name}:{epoch}:{}", utc(at)))
}

#[test]
fn a_claimer_that_died_before_its_swap_is_rearmed_and_its_fires_caught_up_once() {
    let (e, fires, recovered_at) = lose_a_timer(300, "2026-05-04T10:01:00Z", die_after_the_claim);
    // The timer of 10:01, put back by the failed tick, found the claim
    // taken and did nothing; the timer of 10:02 found the document still
    // at 10:01. The check re-armed
    // it at 10:03:30 (10:01 + REARM_AFTER_MS passed, its bucket finished).
    assert_eq!(recovered_at, utc("2026-05-04T10:04:00Z"));
    assert!(recovered_at <= utc("2026-05-04T10:01:00Z") + REARM_AFTER_MS + 2 * 30_000);
    assert_eq!(
        fires,
        minutes("2026-05-04T10:00:00Z", "2026-05-04T10:10:00Z"),
        "10:01 ran once, nothing was missed"
    );
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.missed, d.skipped, d.failed), (11, 0, 0, 0));
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:11:00Z")));
    assert_eq!(schedule_timers(&e.store).len(), 1);
}

#[test]
fn a_claimer_failing_after_its_claim_gives_it_back_and_the_retried_timer_fires() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    drive_to(&e, "2026-05-04T10:00:30Z");
    // The tick at 10:01 starts the run of 10:01 (writing its own two
    // timers: its step's assessment and its approval's expiry), then fails
    // to arm 10:02.
    e.host.set(utc("2026-05-04T10:01:00Z"));
    e.store.fail(Op::Set, "timers:", 2, 1);
    let report = block_on(e.tick()).unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.schedules.started, 0, "counted once it is recorded");
    assert_eq!(runs_of(&e, "held").len(), 2, "10:01 started its run");
    let d = doc(&e, "every");
    assert_eq!(
        (d.next_fire_at_ms, d.fired),
        (Some(utc("2026-05-04T10:01:00Z")), 1),
        "the document did not move on without its next timer"
    );
    assert_eq!(
        claim(&e.store, "every", 1, "2026-05-04T10:01:00Z"),
        0,
        "given back"
    );
    // The tick puts the timer back; the next tick's retry claims it again,
    // finds the run started under its key, arms 10:02 and moves on.
    e.host.advance(30_000);
    let report = block_on(e.tick()).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!((report.schedules.started, report.schedules.rearmed), (1, 0));
    let runs = runs_of(&e, "held");
    assert_eq!(runs.len(), 2, "no second run for 10:01");
    let d = doc(&e, "every");
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:02:00Z")));
    assert_eq!(
        (d.fired, d.last_run_id.as_deref()),
        (2, Some(runs[1].id.as_str()))
    );
    assert_eq!(claim(&e.store, "every", 1, "2026-05-04T10:01:00Z"), 1);
    let mut rearmed = 0;
    drive(&e, utc("2026-05-04T10:10:00Z"), 30_000, |_, r| {
        rearmed += r.schedules.rearmed
    });
    assert_eq!(rearmed, 0, "nothing was lost");
    assert_eq!(
        fires_of(
            &runs_of(&e, "held"),
            "every",
            utc("2026-05-04T09:00:00Z"),
            now(&e)
        ),
        minutes("2026-05-04T10:00:00Z", "2026-05-04T10:10:00Z")
    );
    assert_eq!(doc(&e, "every").fired, 11);
    assert_eq!(counter(&e.store, "schedule_fires:started"), 11);
    assert_eq!(schedule_timers(&e.store).len(), 1);
}

#[test]
fn a_deleted_timer_is_rearmed_and_fires_too_late_to_catch_up_are_counted_missed() {
    // catch_up_secs 0: only fires at most a minute late still start.
    let (e, fires, _) = lose_a_timer(0, "2026-05-04T10:02:00Z", |e| {
        drive_to(e, "2026-05-04T10:01:00Z");
        let keys: Vec<String> = e
            .store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("timers:") && k != keys::TIMER_CURSOR)
            .filter(|k| {
                serde_json::from_slice::<Timer>(&e.store.raw(k).unwrap())
                    .is_ok_and(|t| t.kind == TimerKind::Schedule)
            })
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        block_on(e.store.delete(&keys[0])).unwrap();
    });
    // Re-armed at 10:04:30 and fired at 10:05:00: 10:04 and 10:05 are
    // within the minute, 10:02 and 10:03 missed.
    let mut want = minutes("2026-05-04T10:00:00Z", "2026-05-04T10:01:00Z");
    want.extend(minutes("2026-05-04T10:04:00Z", "2026-05-04T10:10:00Z"));
    assert_eq!(fires, want);
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.missed), (9, 2));
    assert_eq!(counter(&e.store, "schedule_fires:missed"), 2);
    assert_eq!(schedule_timers(&e.store).len(), 1);
}

#[test]
fn a_schedule_whose_workflow_was_deleted_keeps_going_and_starts_nothing() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    drive_to(&e, "2026-05-04T10:00:10Z");
    block_on(registry(&e).delete_workflow("held")).unwrap();
    let mut rearmed = 0;
    drive(&e, utc("2026-05-04T10:10:10Z"), 30_000, |_, r| {
        rearmed += r.schedules.rearmed
    });
    let d = doc(&e, "every");
    assert_eq!(
        d.last_fire_at_ms,
        Some(utc("2026-05-04T10:10:00Z")),
        "it kept firing"
    );
    assert_eq!(
        d.next_fire_at_ms,
        Some(utc("2026-05-04T10:11:00Z")),
        "not stuck"
    );
    assert_eq!(rearmed, 0, "its timer was never lost");
    assert_eq!((d.fired, d.failed, d.skipped), (1, 10, 0));
    assert_eq!(schedule_timers(&e.store).len(), 1);
    let logged = e
        .host
        .log_lines()
        .iter()
        .filter(|l| l.contains("schedule every") && l.contains("started nothing"))
        .count();
    assert_eq!(logged, 10, "{:?}", e.host.log_lines());
    // The workflow back: the next fire starts a run again.
    workflow(
        &e,
        json!({"name": "held", "steps": [{"id": "wait", "agent": "gate"}]}),
    );
    drive_to(&e, "2026-05-04T10:11:00Z");
    let fires = fires_of(
        &runs_of(&e, "held"),
        "every",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    assert_eq!(
        fires,
        [utc("2026-05-04T10:00:00Z"), utc("2026-05-04T10:11:00Z")]
    );
}

#[test]
fn fires_of_a_deleted_workflow_are_not_counted_as_overlap_skips() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    block_on(registry(&e).delete_workflow("held")).unwrap();
    let mut failed = 0;
    drive(&e, utc("2026-05-04T10:05:00Z"), 30_000, |_, r| {
        failed += r.schedules.failed;
        assert_eq!(r.schedules.skipped, 0, "{r:?}");
    });
    let d = doc(&e, "every");
    assert_eq!(d.skipped, 0, "{d:?}");
    assert_eq!(counter(&e.store, "schedule_fires:skipped"), 0);
    // 10:00 to 10:05: six fires that could start nothing.
    assert_eq!((d.failed, d.fired), (6, 0), "{d:?}");
    assert_eq!(failed, 6);
    assert_eq!(counter(&e.store, "schedule_fires:failed"), 6);
    assert_eq!(d.last_fire_at_ms, Some(utc("2026-05-04T10:05:00Z")));
}

/// A workflow that requires `{"ref": "<string>"}` of its trigger payload.
fn typed(e: &TestEngine) -> Value {
    let doc = json!({"name": "typed", "steps": [{"id": "wait", "agent": "gate"}],
        "input_schema": {"type": "object", "required": ["ref"],
            "properties": {"ref": {"type": "string"}}}});
    workflow(e, doc.clone());
    doc
}

#[test]
fn fires_whose_payload_the_workflow_now_refuses_are_counted_failed() {
    let e = engine_at("2026-05-04T09:59:30Z");
    let mut wf = typed(&e);
    put(
        &e,
        json!({"name": "every", "workflow": "typed", "cron": "* * * * *", "overlap": "allow",
            "payload": {"ref": "main"}}),
    );
    drive_to(&e, "2026-05-04T10:00:00Z");
    // The workflow's schema changes under the schedule: "ref" must be a
    // number now.
    wf["input_schema"]["properties"]["ref"] = json!({"type": "integer"});
    block_on(registry(&e).update_workflow("typed", serde_json::from_value(wf).unwrap())).unwrap();
    drive_to(&e, "2026-05-04T10:03:00Z");
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.failed, d.skipped), (1, 3, 0), "{d:?}");
    assert_eq!(counter(&e.store, "schedule_fires:failed"), 3);
    assert_eq!(runs_of(&e, "typed").len(), 1);
    assert!(
        e.host
            .log_lines()
            .iter()
            .any(|l| l.contains("schedule every") && l.contains("started nothing")),
        "{:?}",
        e.host.log_lines()
    );
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:04:00Z")));
}

#[test]
fn a_schedule_whose_payload_its_workflow_refuses_is_refused() {
    let e = engine_at("2026-05-04T09:59:30Z");
    typed(&e);
    for (payload, pointer) in [
        (json!(null), "/payload"),
        (json!({}), "/payload"),
        (json!({"ref": 3}), "/payload/ref"),
    ] {
        let err = block_on(e.put_schedule(
            spec(
                json!({"name": "s", "workflow": "typed", "cron": "* * * * *",
                "payload": payload}),
            ),
            true,
        ))
        .unwrap_err();
        match err {
            spindle_engine::registry::RegistryError::Invalid(v) => {
                assert_eq!(v.errors[0].pointer, pointer, "{payload}: {v:?}")
            }
            other => panic!("{payload}: {other:?}"),
        }
    }
    assert!(schedule_timers(&e.store).is_empty());
    assert!(
        block_on(e.store.get_raw(&keys::schedule("s")))
            .unwrap()
            .is_none()
    );
    // An update is checked the same way.
    put(
        &e,
        json!({"name": "s", "workflow": "typed", "cron": "* * * * *", "payload": {"ref": "main"}}),
    );
    let err = block_on(e.put_schedule(
        spec(
            json!({"name": "s", "workflow": "typed", "cron": "* * * * *",
            "payload": {"ref": false}}),
        ),
        false,
    ))
    .unwrap_err();
    assert!(
        matches!(&err, spindle_engine::registry::RegistryError::Invalid(v)
            if v.errors[0].pointer == "/payload/ref"),
        "{err:?}"
    );
    assert_eq!(doc(&e, "s").payload, json!({"ref": "main"}));
    assert_eq!(doc(&e, "s").epoch, 1);
}

#[test]
fn a_schedule_needs_an_existing_workflow() {
    let e = engine_at("2026-05-04T09:59:30Z");
    let err = block_on(e.put_schedule(
        spec(json!({"name": "s", "workflow": "nope", "cron": "* * * * *"})),
        true,
    ))
    .unwrap_err();
    match err {
        spindle_engine::registry::RegistryError::Invalid(v) => {
            assert_eq!(v.errors[0].pointer, "/workflow", "{v:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(schedule_timers(&e.store).is_empty());
}

#[test]
fn the_45th_run_does_not_break_the_tick() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    // 45 fires, 45 runs: counter:runs and the workflow's run counter hold 45.
    let mut failed = Vec::new();
    while doc(&e, "every").fired < 45 {
        e.host.advance(30_000);
        if let Err(err) = block_on(e.tick()) {
            failed.push(err.to_string());
            break;
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    e.host.advance(1_000);
    block_on(e.tick()).expect("a tick with 45 runs stored");
    block_on(e.list_runs(&RunFilter {
        limit: 10,
        ..RunFilter::default()
    }))
    .expect("a listing with 45 runs stored");
}

/// A tick coming back from a three-hour outage walks the timer buckets five
/// minutes per tick from where it stopped: an hourly schedule's timer
/// (11:00) is late, not lost, and is not re-armed again and again while
/// the tick catches up. (A per-minute schedule keeps the tick's cursor
/// close to the clock, as any activity does.)
#[test]
fn a_tick_catching_up_after_an_outage_does_not_rearm_a_timer_that_is_only_late() {
    let e = engine_at("2026-05-04T10:29:30Z");
    put(
        &e,
        json!({"name": "hourly", "workflow": "held", "cron": "0 * * * *", "overlap": "allow"}),
    );
    // Its runs would be many; its workflow is gone, so it fires, starting
    // nothing.
    workflow(
        &e,
        json!({"name": "gone", "steps": [{"id": "wait", "agent": "gate"}]}),
    );
    put(
        &e,
        json!({"name": "minutely", "workflow": "gone", "cron": "* * * * *"}),
    );
    block_on(registry(&e).delete_workflow("gone")).unwrap();
    drive_to(&e, "2026-05-04T10:30:00Z");
    e.host.set(utc("2026-05-04T13:30:00Z"));
    let (mut rearmed, mut most_timers) = (0, 0);
    drive(&e, utc("2026-05-04T14:30:00Z"), 30_000, |e, r| {
        rearmed += r.schedules.rearmed;
        most_timers = most_timers.max(schedule_timers(&e.store).len());
    });
    // 11:00, 12:00 and 13:00 were more than catch_up_secs late; 14:00 fired.
    let fires = fires_of(
        &runs_of(&e, "held"),
        "hourly",
        utc("2026-05-04T09:00:00Z"),
        now(&e),
    );
    assert_eq!(fires, [utc("2026-05-04T14:00:00Z")]);
    let d = doc(&e, "hourly");
    assert_eq!((d.fired, d.missed), (1, 3));
    assert_eq!(
        rearmed, 0,
        "re-armed while the tick caught up ({most_timers} schedule timers at once)"
    );
    assert!(most_timers <= 2, "{most_timers} schedule timers at once");
}

/// A store on a shared [`MemStore`] that runs a hook (another instance's
/// request) right before its next compare-and-swap of one key: a write
/// racing between a request's read and its swap.
struct Hooked {
    inner: Rc<MemStore>,
    /// The key, and the write to run before its next swap.
    before_swap: RefCell<Option<(String, Write)>>,
}

/// A request of another instance, run to completion where it races.
type Write = Pin<Box<dyn Future<Output = ()>>>;

impl Store for Hooked {
    type Cas = <MemStore as Store>::Cas;
    async fn get_raw(&self, key: &str) -> spindle_engine::store::Result<Option<Vec<u8>>> {
        self.inner.get_raw(key).await
    }
    async fn set_raw(&self, key: &str, value: &[u8]) -> spindle_engine::store::Result<()> {
        self.inner.set_raw(key, value).await
    }
    async fn delete(&self, key: &str) -> spindle_engine::store::Result<()> {
        self.inner.delete(key).await
    }
    async fn increment(&self, key: &str, delta: i64) -> spindle_engine::store::Result<i64> {
        self.inner.increment(key, delta).await
    }
    async fn counter(&self, key: &str) -> spindle_engine::store::Result<i64> {
        self.inner.counter(key).await
    }
    async fn watch(
        &self,
        key: &str,
    ) -> spindle_engine::store::Result<(Self::Cas, Option<Vec<u8>>)> {
        self.inner.watch(key).await
    }
    async fn swap(&self, cas: Self::Cas, value: &[u8]) -> spindle_engine::store::Result<bool> {
        let hook = {
            let mut armed = self.before_swap.borrow_mut();
            if armed.as_ref().is_some_and(|(key, _)| *key == cas.0) {
                armed.take()
            } else {
                None
            }
        };
        if let Some((_, write)) = hook {
            write.await;
        }
        self.inner.swap(cas, value).await
    }
}

/// A per-minute schedule (overlap skip) whose run of 10:00 is over; at
/// 10:01 the tick fires, and `write` (on a second instance) rewrites the
/// schedule between that fire's read of the document and its swap.
/// Returns the ticking instance and the run of 10:01.
fn a_write_races_the_fire_of_1001(
    write: impl FnOnce(SharedEngine) -> Write,
) -> (Engine<Hooked, FakeWorkers, TestHost>, Run) {
    let mut base = engine_at("2026-05-04T09:59:30Z");
    put(
        &base,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "skip",
            "payload": {"v": 1}}),
    );
    drive_to(&base, "2026-05-04T10:00:00Z");
    cancel(&base, &runs_of(&base, "held")[0].id);
    let store = Rc::new(std::mem::take(&mut base.store));
    let at = utc("2026-05-04T10:01:00Z");
    let other = Engine {
        store: Shared(store.clone()),
        workers: FakeWorkers::accepting(),
        host: TestHost::at(at),
        config: spindle_engine::testing::config(),
    };
    let e = Engine {
        store: Hooked {
            inner: store,
            before_swap: RefCell::new(Some((keys::schedule("every"), write(other)))),
        },
        workers: FakeWorkers::accepting(),
        host: TestHost::at(at),
        config: spindle_engine::testing::config(),
    };
    let report = block_on(e.tick()).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        e.store.before_swap.borrow().is_none(),
        "the write raced the fire's swap"
    );
    assert_eq!(report.schedules.started, 1, "{report:?}");
    let runs = runs_of(&e, "held");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].trigger.payload, json!({"v": 1}));
    (e, runs[1].clone())
}

fn tick_until(e: &Engine<Hooked, FakeWorkers, TestHost>, until: &str) {
    while e.host.now_ms() < utc(until) {
        e.host.advance(30_000);
        let report = block_on(e.tick()).unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(report.schedules.rearmed, 0, "{report:?}");
    }
}

#[test]
fn an_update_racing_a_fire_keeps_what_the_fire_recorded() {
    let (e, run) = a_write_races_the_fire_of_1001(|other| {
        Box::pin(async move {
            let updated = other
                .put_schedule(
                    spec(
                        json!({"name": "every", "workflow": "held", "cron": "* * * * *",
                        "overlap": "skip", "payload": {"v": 2}}),
                    ),
                    false,
                )
                .await
                .unwrap();
            // 10:01 is due and not handled yet as far as the update can
            // tell: it keeps it.
            assert_eq!(updated.next_fire_at_ms, Some(utc("2026-05-04T10:01:00Z")));
        })
    });
    // The fire's swap found epoch 2 and did not move the schedule on, but
    // recorded its run and fire.
    let d = doc(&e, "every");
    assert_eq!((d.epoch, d.payload.clone()), (2, json!({"v": 2})));
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:01:00Z")));
    assert_eq!(d.last_run_id.as_deref(), Some(run.id.as_str()));
    assert_eq!(d.last_fire_at_ms, Some(utc("2026-05-04T10:01:00Z")));
    assert_eq!((d.fired, d.skipped), (2, 0));
    // The update's timer of 10:01 finds it recorded and only moves on; at
    // 10:02 the run of 10:01 is still going, so the fire is skipped (it
    // would start a second run had the update lost the last run's id).
    tick_until(&e, "2026-05-04T10:02:00Z");
    let d = doc(&e, "every");
    assert_eq!(runs_of(&e, "held").len(), 2);
    assert_eq!((d.fired, d.skipped, d.missed), (2, 1, 0), "{d:?}");
    assert_eq!(d.last_run_id.as_deref(), Some(run.id.as_str()));
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:03:00Z")));
    assert_eq!(counter(&*e.store.inner, "schedule_fires:started"), 2);
    assert_eq!(counter(&*e.store.inner, "schedule_fires:skipped"), 1);
    // Once it is over, the next fire runs with the new payload.
    block_on(e.apply(
        &run.id,
        Event::Cancel {
            reason: "test".into(),
            by: None,
        },
    ))
    .unwrap();
    tick_until(&e, "2026-05-04T10:03:00Z");
    let runs = runs_of(&e, "held");
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[2].trigger.payload, json!({"v": 2}));
    assert_eq!(
        fires_of(&runs, "every", utc("2026-05-04T09:00:00Z"), e.host.now_ms()),
        minutes("2026-05-04T10:00:00Z", "2026-05-04T10:01:00Z")
            .into_iter()
            .chain([utc("2026-05-04T10:03:00Z")])
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_pause_racing_a_fire_keeps_what_the_fire_recorded() {
    let (e, run) = a_write_races_the_fire_of_1001(|other| {
        Box::pin(async move {
            other.pause_schedule("every", true).await.unwrap();
        })
    });
    let d = doc(&e, "every");
    assert!(d.paused);
    assert_eq!(d.next_fire_at_ms, None);
    assert_eq!(d.last_run_id.as_deref(), Some(run.id.as_str()));
    assert_eq!(
        (d.fired, d.last_fire_at_ms),
        (2, Some(utc("2026-05-04T10:01:00Z")))
    );
    // Resumed while that run is going: its next fire is skipped.
    e.host.set(utc("2026-05-04T10:05:10Z"));
    let resumed = block_on(e.pause_schedule("every", false)).unwrap();
    assert_eq!(resumed.next_fire_at_ms, Some(utc("2026-05-04T10:06:00Z")));
    tick_until(&e, "2026-05-04T10:06:00Z");
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.skipped), (2, 1), "{d:?}");
    assert_eq!(runs_of(&e, "held").len(), 2);
}

#[test]
fn an_update_keeps_a_fire_that_is_due_but_not_handled_yet() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow",
            "payload": {"v": 1}}),
    );
    drive_to(&e, "2026-05-04T10:00:00Z");
    // 10:01 is due; no tick has fired it yet when the update comes.
    e.host.set(utc("2026-05-04T10:01:10Z"));
    let updated = block_on(e.put_schedule(
        spec(
            json!({"name": "every", "workflow": "held", "cron": "* * * * *",
            "overlap": "allow", "payload": {"v": 2}}),
        ),
        false,
    ))
    .unwrap();
    assert_eq!(updated.next_fire_at_ms, Some(utc("2026-05-04T10:01:00Z")));
    let report = block_on(e.tick()).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.schedules.started, 1);
    let runs = runs_of(&e, "held");
    assert_eq!(
        fires_of(&runs, "every", utc("2026-05-04T09:00:00Z"), now(&e)),
        minutes("2026-05-04T10:00:00Z", "2026-05-04T10:01:00Z")
    );
    assert_eq!(runs[1].trigger.payload, json!({"v": 2}), "fired as updated");
    assert_eq!(
        doc(&e, "every").next_fire_at_ms,
        Some(utc("2026-05-04T10:02:00Z"))
    );
    // Long overdue (ticks stopped): the kept due time fires what the
    // catch-up window holds and counts the rest missed, with the new
    // pattern.
    e.host.set(utc("2026-05-04T10:12:10Z"));
    let updated = block_on(e.put_schedule(
        spec(
            json!({"name": "every", "workflow": "held", "cron": "*/2 * * * *",
            "overlap": "allow", "catch_up_secs": 300}),
        ),
        false,
    ))
    .unwrap();
    assert_eq!(updated.next_fire_at_ms, Some(utc("2026-05-04T10:02:00Z")));
    // The timer went to now's bucket; the tick's cursor, five minutes a
    // tick, reaches it on the third tick. Nothing is re-armed meanwhile.
    let mut sum = spindle_engine::schedules::ScheduleReport::default();
    for _ in 0..3 {
        let report = block_on(e.tick()).unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        sum.started += report.schedules.started;
        sum.missed += report.schedules.missed;
        sum.rearmed += report.schedules.rearmed;
    }
    // [10:07:10, 10:12:10] holds 10:08, 10:10 and 10:12; 10:02, 10:04 and
    // 10:06 were missed.
    assert_eq!((sum.started, sum.missed, sum.rearmed), (3, 3, 0));
    let d = doc(&e, "every");
    assert_eq!((d.fired, d.missed), (5, 3));
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:14:00Z")));
    // An update that pauses, or one of a schedule not due yet, does not.
    let paused = block_on(e.put_schedule(
        spec(
            json!({"name": "every", "workflow": "held", "cron": "* * * * *",
            "paused": true}),
        ),
        false,
    ))
    .unwrap();
    assert_eq!(paused.next_fire_at_ms, None);
    let resumed = block_on(e.put_schedule(
        spec(json!({"name": "every", "workflow": "held", "cron": "* * * * *"})),
        false,
    ))
    .unwrap();
    assert_eq!(resumed.next_fire_at_ms, Some(utc("2026-05-04T10:13:00Z")));
}

#[test]
fn a_corrupt_schedule_is_reported_and_the_check_goes_on() {
    let e = engine_at("2026-05-04T09:59:30Z");
    for name in ["a", "b"] {
        put(
            &e,
            json!({"name": name, "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
        );
    }
    drive_to(&e, "2026-05-04T10:00:30Z");
    // "a" no longer decodes; "b" loses its timer (both timers go, so only
    // the check looks at either).
    e.store.put(&keys::schedule("a"), b"{\"name\": 7");
    for k in e.store.keys() {
        if k.starts_with("timers:")
            && k != keys::TIMER_CURSOR
            && e.store
                .raw(&k)
                .and_then(|b| serde_json::from_slice::<Timer>(&b).ok())
                .is_some_and(|t| t.kind == TimerKind::Schedule)
        {
            block_on(e.store.delete(&k)).unwrap();
        }
    }
    block_on(e.store.delete(keys::SCHEDULE_CHECK_CURSOR)).unwrap();
    let mut rearmed = 0;
    while now(&e) < utc("2026-05-04T10:05:00Z") {
        e.host.advance(30_000);
        let report = block_on(e.tick()).unwrap();
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert!(
            report.errors[0].contains("schedule a") && report.errors[0].contains("corrupt"),
            "{report:?}"
        );
        rearmed += report.schedules.rearmed;
        let cursor: Option<String> = block_on(e.store.get(keys::SCHEDULE_CHECK_CURSOR)).unwrap();
        assert_eq!(cursor.as_deref(), Some("b"), "the check's cursor moved on");
    }
    assert_eq!(rearmed, 1, "b was re-armed");
    let d = doc(&e, "b");
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:06:00Z")));
    assert_eq!(d.last_fire_at_ms, Some(utc("2026-05-04T10:05:00Z")));
}

#[test]
fn a_failing_stage_of_the_tick_does_not_stop_the_others() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    block_on(e.store.set("scratch", &1)).unwrap();
    block_on(e.expire_at(&["scratch".to_owned()], now(&e))).unwrap();
    drive_to(&e, "2026-05-04T10:00:00Z");
    // Past the expiry bucket's end and grace: firing timers, retention and
    // the schedule check fail; the sweep still runs.
    e.host.set(utc("2026-05-04T11:06:00Z"));
    e.store.fail(Op::Get, "counter:timers:", 0, 1);
    e.store.fail(Op::Get, "counter:retention:", 0, 1);
    e.store.fail(Op::Get, keys::SCHEDULE_INDEX, 0, 1);
    let report = block_on(e.tick()).unwrap();
    let stages: Vec<&str> = report
        .errors
        .iter()
        .map(|m| m.split(':').next().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["timers", "retention", "schedule check"],
        "{report:?}"
    );
    assert_eq!(report.expired, 1, "{report:?}");
    assert!(block_on(e.store.get_raw("scratch")).unwrap().is_none());
    // The sweep failing does not stop the timers. (The fire reads the
    // expiry cursor first, registering its claim for deletion.)
    e.store.fail(Op::Get, keys::EXPIRY_CURSOR, 1, 1);
    e.host.advance(30_000);
    let report = block_on(e.tick()).unwrap();
    let stages: Vec<&str> = report
        .errors
        .iter()
        .map(|m| m.split(':').next().unwrap())
        .collect();
    assert_eq!(stages, ["expiry"], "{report:?}");
    assert!(report.schedules.started > 0, "{report:?}");
}

#[test]
fn catching_up_under_skip_or_cancel_previous_starts_only_the_newest_fire() {
    for overlap in ["skip", "cancel_previous"] {
        let e = engine_at("2026-05-04T09:59:30Z");
        put(
            &e,
            json!({"name": "every", "workflow": "held", "cron": "* * * * *",
                "catch_up_secs": 300, "overlap": overlap}),
        );
        drive_to(&e, "2026-05-04T10:00:00Z");
        let first = runs_of(&e, "held")[0].id.clone();
        if overlap == "skip" {
            cancel(&e, &first);
        }
        // Ticks stopped from 10:00 to 10:12:10: 10:08 to 10:12 are within
        // the window, 10:01 to 10:07 missed.
        e.host.set(utc("2026-05-04T10:12:10Z"));
        let report = block_on(e.tick()).unwrap();
        assert!(report.errors.is_empty(), "{overlap}: {report:?}");
        assert_eq!(
            (
                report.schedules.started,
                report.schedules.skipped,
                report.schedules.missed
            ),
            (1, 4, 7),
            "{overlap}: {report:?}"
        );
        let runs = runs_of(&e, "held");
        assert_eq!(
            fires_of(&runs, "every", utc("2026-05-04T09:00:00Z"), now(&e)),
            [utc("2026-05-04T10:00:00Z"), utc("2026-05-04T10:12:00Z")],
            "{overlap}"
        );
        assert_eq!(runs[0].status, RunStatus::Cancelled, "{overlap}");
        assert_eq!(runs[1].status, RunStatus::WaitingApproval, "{overlap}");
        let d = doc(&e, "every");
        assert_eq!((d.fired, d.skipped, d.missed), (2, 4, 7), "{overlap}");
        assert_eq!(d.last_run_id, Some(runs[1].id.clone()), "{overlap}");
        assert_eq!(d.last_fire_at_ms, Some(utc("2026-05-04T10:12:00Z")));
        assert_eq!(counter(&e.store, "schedule_fires:skipped"), 4);
    }
}

/// A timer lost during an outage is re-armed once while the tick's cursor
/// catches up, not on every tick until the cursor reaches the bucket the
/// re-armed timer went to.
#[test]
fn a_lost_timer_is_rearmed_once_while_the_tick_catches_up() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    drive_to(&e, "2026-05-04T10:00:30Z");
    for k in e.store.keys() {
        if k.starts_with("timers:") && k != keys::TIMER_CURSOR {
            block_on(e.store.delete(&k)).unwrap();
        }
    }
    assert!(schedule_timers(&e.store).is_empty());
    e.host.set(utc("2026-05-04T13:30:00Z"));
    let (mut rearmed, mut most_timers) = (0, 0);
    drive(&e, utc("2026-05-04T14:00:00Z"), 30_000, |e, r| {
        rearmed += r.schedules.rearmed;
        most_timers = most_timers.max(schedule_timers(&e.store).len());
    });
    assert_eq!(rearmed, 1, "{most_timers} schedule timers at once");
    assert_eq!(most_timers, 1);
    let d = doc(&e, "every");
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T14:01:00Z")));
    assert_eq!(d.last_fire_at_ms, Some(utc("2026-05-04T14:00:00Z")));
}

/// A workflow document that no longer decodes will not decode on a retry
/// either: its fires count as failed and the schedule goes on, rather than
/// retrying one fire for ever.
#[test]
fn fires_of_a_workflow_that_no_longer_decodes_fail_and_the_schedule_goes_on() {
    let e = engine_at("2026-05-04T09:59:30Z");
    put(
        &e,
        json!({"name": "every", "workflow": "held", "cron": "* * * * *", "overlap": "allow"}),
    );
    e.store.put(&keys::workflow("held"), b"{\"name\": 7");
    let mut failed = 0;
    drive(&e, utc("2026-05-04T10:03:00Z"), 30_000, |_, r| {
        failed += r.schedules.failed;
    });
    let d = doc(&e, "every");
    assert_eq!((d.failed, d.fired), (4, 0), "{d:?}");
    assert_eq!(failed, 4);
    assert_eq!(d.next_fire_at_ms, Some(utc("2026-05-04T10:04:00Z")));
}
