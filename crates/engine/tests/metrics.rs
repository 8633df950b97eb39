//! Metrics: known traffic gives known numbers, the exposition parses, and
//! a scrape reads as much with ten thousand runs stored as with ten.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures::executor::block_on;
use serde_json::json;
use spindle_core::job::ErrorKind;
use spindle_core::run::RunStatus;
use spindle_engine::metrics;

/// A scrape's samples by `name{labels}` (labels as written, in order),
/// checked line by line against the text format: every sample belongs to a
/// family declared by `# HELP` and `# TYPE` before it, once.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            assert!(helped.insert(name.clone()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let name = series.split('{').next().unwrap();
        let family = typed
            .keys()
            .find(|f| {
                name == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{f}{s}") && typed[*f] == "histogram")
            })
            .unwrap_or_else(|| panic!("{name} has no TYPE before it"));
        if typed[family] == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter {family} without _total"
            );
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

fn scrape(e: &TestEngine) -> BTreeMap<String, f64> {
    parse(&block_on(metrics::gather(&e.store, now(e))).unwrap())
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {:#?}", samples.keys().collect::<Vec<_>>()))
}

#[test]
fn known_traffic_gives_known_numbers() {
    let e = engine();
    one_step(&e);
    let (n, k, c) = (7, 3, 2);
    for _ in 0..n {
        let id = start(&e, "one").id;
        e.host.advance(2_000);
        deliver(&e, &success(&format!("{id}.scan.1"), json!({"n": 1}))).unwrap();
    }
    // The one-step workflow's scanner has 2 attempts: fail both.
    for _ in 0..k {
        let id = start(&e, "one").id;
        e.host.advance(20_000);
        deliver(
            &e,
            &failure(&format!("{id}.scan.1"), ErrorKind::AgentFailed),
        )
        .unwrap();
        tick_until(&e, 250, 5_000, |e| {
            dispatched(e).contains(&format!("{id}.scan.2"))
        });
        deliver(
            &e,
            &failure(&format!("{id}.scan.2"), ErrorKind::AgentFailed),
        )
        .unwrap();
        assert_eq!(status(&e, &id), RunStatus::Failed);
    }
    for _ in 0..c {
        let id = start(&e, "one").id;
        block_on(e.cancel(&id, "test", None)).unwrap();
    }
    let s = scrape(&e);
    let all = (n + k + c) as f64;
    assert_eq!(
        value(&s, "spindle_runs_started_total{trigger=\"manual\"}"),
        all
    );
    assert_eq!(
        value(&s, "spindle_runs_finished_total{status=\"succeeded\"}"),
        n as f64
    );
    assert_eq!(
        value(&s, "spindle_runs_finished_total{status=\"failed\"}"),
        k as f64
    );
    assert_eq!(
        value(&s, "spindle_runs_finished_total{status=\"cancelled\"}"),
        c as f64
    );
    assert_eq!(
        value(
            &s,
            "spindle_run_duration_seconds_count{status=\"succeeded\"}"
        ),
        n as f64
    );
    // Each success took 2 s: all of them in the 5 s bucket, none in 1 s.
    assert_eq!(
        value(
            &s,
            "spindle_run_duration_seconds_bucket{status=\"succeeded\",le=\"1\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "spindle_run_duration_seconds_bucket{status=\"succeeded\",le=\"5\"}"
        ),
        n as f64
    );
    assert_eq!(
        value(&s, "spindle_run_duration_seconds_sum{status=\"succeeded\"}"),
        2.0 * n as f64
    );
    assert_eq!(
        value(
            &s,
            "spindle_step_duration_seconds_count{agent=\"scanner\",status=\"succeeded\"}"
        ),
        n as f64
    );
    assert_eq!(
        value(
            &s,
            "spindle_step_duration_seconds_count{agent=\"scanner\",status=\"failed\"}"
        ),
        k as f64
    );
    // Every attempt but the cancelled runs' first went to the one worker.
    let dispatched_total: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("spindle_jobs_dispatched_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(dispatched_total, (n + 2 * k + c) as f64);
    assert_eq!(value(&s, "spindle_approvals_expiring_soon"), 0.0);

    let days = block_on(metrics::activity(&e.store, now(&e), 7)).unwrap();
    assert_eq!(days.len(), 7);
    let today = days.last().unwrap();
    assert_eq!(today.day, "2026-11-22");
    assert_eq!(today.runs, (n + k + c) as u64);
    assert!(today.errors >= k as u64, "{today:?}");
    assert!(days[..6].iter().all(|d| d.events == 0 && d.runs == 0));

    let summary = block_on(metrics::summary(&e.store, now(&e))).unwrap();
    assert_eq!(summary.today, *today);
    let count = |kind: &str| {
        summary
            .top_events
            .iter()
            .find(|c| c.kind == kind)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count("run_started"), (n + k + c) as u64);
    assert_eq!(count("step_succeeded"), n as u64);
    assert!(summary.top_events.len() <= 10);
    assert_eq!(summary.top_events_examined, today.events);
    assert!((summary.error_rate - today.errors as f64 / today.events as f64).abs() < 1e-9);
}

#[test]
fn approvals_are_counted_from_request_to_decision() {
    let e = engine();
    agent(&e, "scanner", 2);
    agent_from(
        &e,
        json!({"name": "patcher", "command": ["patcher"], "risk_level": "approval_required",
               "timeout_secs": 10, "retry": {"max_attempts": 2, "initial_backoff_ms": 100}}),
    );
    workflow(
        &e,
        json!({"name": "fix", "steps": [
            {"id": "scan", "agent": "scanner"},
            {"id": "patch", "agent": "patcher", "needs": ["scan"], "input": {"x": 1}}
        ]}),
    );
    // Every level expires in half an hour: within the gauge's hour.
    let mut policy = spindle_core::risk::ApprovalPolicy::default();
    for level in [
        &mut policy.levels.low,
        &mut policy.levels.medium,
        &mut policy.levels.high,
        &mut policy.levels.critical,
    ] {
        level.expires_in_secs = 1_800;
    }
    block_on(e.put_approval_policy(&policy)).unwrap();
    let mut approvals = Vec::new();
    for _ in 0..3 {
        let id = start(&e, "fix").id;
        deliver(&e, &success(&format!("{id}.scan.1"), json!({}))).unwrap();
        approvals.push(format!("{id}.patch"));
    }
    let s = scrape(&e);
    let created: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("spindle_approvals_created_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(created, 3.0);
    assert_eq!(value(&s, "spindle_approvals_expiring_soon"), 3.0);
    let view = block_on(e.approval(&approvals[0])).unwrap();

    e.host.advance(90_000);
    for (id, verdict) in approvals[..2].iter().zip([
        spindle_core::approval::Verdict::Approve,
        spindle_core::approval::Verdict::Reject,
    ]) {
        block_on(e.decide(
            id,
            spindle_engine::DecisionRequest {
                decision: verdict,
                by: "key:alice".into(),
                role: Some("approver".into()),
                comment: String::new(),
                input_sha256: None,
                via_link: false,
            },
        ))
        .unwrap();
    }
    let s = scrape(&e);
    assert_eq!(value(&s, "spindle_approvals_expiring_soon"), 1.0);
    assert_eq!(
        value(&s, "spindle_approvals_decided_total{decision=\"approved\"}"),
        1.0
    );
    assert_eq!(
        value(&s, "spindle_approvals_decided_total{decision=\"rejected\"}"),
        1.0
    );
    // Waited 90 s: over the 60 s bucket, within 300 s.
    assert_eq!(
        value(
            &s,
            "spindle_approval_wait_seconds_bucket{outcome=\"approved\",le=\"60\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "spindle_approval_wait_seconds_bucket{outcome=\"approved\",le=\"300\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "spindle_approval_wait_seconds_sum{outcome=\"approved\"}"
        ),
        90.0
    );

    // The third expires unanswered when the tick passes its expiry.
    let expires = view.expires_at_ms.unwrap();
    e.host.set(expires - 1_000);
    let last = approvals[2].trim_end_matches(".patch").to_owned();
    tick_until(&e, 1_000, 600_000, |e| is_terminal(e, &last));
    let s = scrape(&e);
    assert_eq!(value(&s, "spindle_approvals_expired_total"), 1.0);
    assert_eq!(value(&s, "spindle_approvals_expiring_soon"), 0.0);
}

/// The number of store reads a scrape makes is set by the labels' values
/// (statuses, agents, workers), not by how many runs are stored.
#[test]
fn a_scrape_with_ten_thousand_runs_reads_no_more_than_with_ten() {
    let e = engine();
    one_step(&e);
    let run_some = |e: &TestEngine, n: usize| {
        for i in 0..n {
            let id = start(e, "one").id;
            if i % 5 == 0 {
                block_on(e.cancel(&id, "test", None)).unwrap();
            } else {
                deliver(e, &success(&format!("{id}.scan.1"), json!({"n": 1}))).unwrap();
            }
            e.host.advance(3);
            if i % 500 == 499 {
                block_on(e.tick()).unwrap();
            }
        }
    };
    let reads_of_a_scrape = |e: &TestEngine| {
        let before = e.store.reads();
        let text = block_on(metrics::gather(&e.store, now(e))).unwrap();
        (e.store.reads() - before, text)
    };
    run_some(&e, 10);
    let (ten, text) = reads_of_a_scrape(&e);
    assert_eq!(
        value(
            &parse(&text),
            "spindle_runs_started_total{trigger=\"manual\"}"
        ),
        10.0
    );
    run_some(&e, 9_990);
    let (many, text) = reads_of_a_scrape(&e);
    assert_eq!(
        value(
            &parse(&text),
            "spindle_runs_started_total{trigger=\"manual\"}"
        ),
        10_000.0
    );
    assert_eq!(
        many, ten,
        "a scrape read {ten} times at 10 runs, {many} at 10,000"
    );
    assert!(ten < 200, "a scrape reads {ten} documents");
}

#[test]
fn old_activity_is_swept_a_day_per_tick() {
    let e = engine();
    one_step(&e);
    start(&e, "one");
    let day = now(&e) / spindle_core::metrics::DAY_MS;
    let key = spindle_core::metrics::activity_key(day, "runs");
    use spindle_engine::Store;
    assert_eq!(block_on(e.store.counter(&key)).unwrap(), 1);
    block_on(e.tick()).unwrap();
    // 101 days later the day is past what is kept: the next ticks clear it.
    e.host.advance(101 * spindle_core::metrics::DAY_MS);
    // One day a tick, from a hundred days before the oldest day kept.
    for _ in 0..210 {
        let report = block_on(e.tick()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    assert_eq!(block_on(e.store.counter(&key)).unwrap(), 0);
    assert!(
        block_on(e.store.get_raw(&spindle_core::audit::day_key(day)))
            .unwrap()
            .is_none()
    );
}

/// Webhook deliveries recorded by source and outcome give the overview:
/// accepted and rejected counts, every outcome, the last delivery, sorted
/// by source; its reads are set by the sources and outcomes, not by how
/// many deliveries arrived.
#[test]
fn the_webhook_overview_counts_each_sources_outcomes_and_keeps_its_last_delivery() {
    let e = engine();
    assert_eq!(
        block_on(metrics::webhook_sources(&e.store)).unwrap(),
        vec![]
    );
    let deliveries = [
        ("github", "started", 1_000),
        ("github", "bad-signature", 2_000),
        ("github", "started", 3_000),
        ("github", "duplicate", 4_000),
        ("builder", "unmatched", 5_000),
        ("github", "ping", 6_000),
        ("unknown", "unknown-source", 7_000),
        ("github", "missing-signature", 8_000),
        ("github", "rate-limited", 9_000),
    ];
    for (source, outcome, at) in deliveries {
        block_on(metrics::record_webhook(&e.store, source, outcome, at)).unwrap();
    }
    let overview = |e: &TestEngine| {
        let before = e.store.reads();
        let v = block_on(metrics::webhook_sources(&e.store)).unwrap();
        (v, e.store.reads() - before)
    };
    let (sources, reads) = overview(&e);
    let v = serde_json::to_value(&sources).unwrap();
    assert_eq!(
        v,
        json!([
            {"source": "builder", "accepted": 1, "rejected": 0,
             "by_outcome": {"unmatched": 1},
             "last_delivery_at_ms": 5_000, "last_outcome": "unmatched"},
            {"source": "github", "accepted": 4, "rejected": 3,
             "by_outcome": {"bad-signature": 1, "duplicate": 1, "missing-signature": 1,
                            "ping": 1, "rate-limited": 1, "started": 2},
             "last_delivery_at_ms": 8_000, "last_outcome": "missing-signature"},
            // Counted, but not kept as a last delivery: floods of these
            // cost one write each.
            {"source": "unknown", "accepted": 0, "rejected": 1,
             "by_outcome": {"unknown-source": 1},
             "last_delivery_at_ms": null, "last_outcome": null},
        ])
    );
    // The index, a counter per series (8) and a document per source (3).
    assert_eq!(reads, 1 + 8 + 3);

    // A thousand more deliveries of the same kinds read no more.
    for i in 0..1_000u64 {
        let (source, outcome, _) = deliveries[(i % 9) as usize];
        block_on(metrics::record_webhook(
            &e.store,
            source,
            outcome,
            10_000 + i,
        ))
        .unwrap();
    }
    let (sources, more) = overview(&e);
    assert_eq!(more, reads);
    let github = sources.iter().find(|s| s.source == "github").unwrap();
    // Seven of every nine deliveries are github's; the last (i = 999) too.
    assert_eq!(github.accepted + github.rejected, 7 + 111 * 7 + 1);
    assert_eq!(github.last_delivery_at_ms, Some(10_999));
}
