//! The circuit breaker on dispatch, end to end: the real app with two real
//! workers; one is killed, runs keep succeeding on the other, its breaker
//! opens; it is restarted on its port, and trial jobs close the breaker
//! again. The breaker is read where it lives: its document in the host's
//! SQLite store.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spindle_core::keys;
use spindle_tests::Worker;

use crate::engine::{Stack, stack_of, step};

/// The breaker document of `worker`, if one was written.
fn breaker_doc(state_dir: &Path, worker: &str) -> Option<Value> {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("sqlite_key_value.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    let bytes: Vec<u8> = db
        .query_row(
            "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
            [keys::breaker(worker)],
            |r| r.get(0),
        )
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Everything the components logged.
fn component_logs(state_dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(state_dir.join("logs"))
        .into_iter()
        .flatten()
    {
        out.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    out
}

/// Triggers one run and waits for it to succeed; returns the worker that
/// ran its one job (a single attempt: no job is lost to the dead worker).
/// `GET /metrics` as the test admin.
async fn scrape(s: &Stack) -> String {
    let r = spindle_tests::client()
        .get(s.host.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// One sample's value in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

async fn one_run(s: &Stack) -> String {
    let run = s.trigger("one", json!({})).await;
    let v = s.finished(&run, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let attempts = step(&v, "echo")["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 1, "{v:#}");
    // The attempt names the worker by the URL it was sent to, or by the
    // name the worker reports itself with (`worker@<host:port>`) once its
    // heartbeat or result came first: one worker either way.
    let w = attempts[0]["worker"].as_str().unwrap();
    match w.strip_prefix("worker@") {
        Some(addr) => format!("http://{addr}"),
        None => w.to_owned(),
    }
}

/// Triggers runs, one after another, until the breaker document of
/// `worker` satisfies `done`; returns the workers that ran them.
async fn runs_until(
    s: &Stack,
    worker: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut ran = Vec::new();
    loop {
        if breaker_doc(&s.host.state_dir, worker).is_some_and(|d| done(&d)) {
            return ran;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker of {worker} never got {what} after {} runs: {:?}\nlogs: {}",
            ran.len(),
            breaker_doc(&s.host.state_dir, worker),
            component_logs(&s.host.state_dir)
        );
        ran.push(one_run(s).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_worker_is_taken_out_and_comes_back_through_trial_jobs() {
    let workers = vec![Worker::start(&[]), Worker::start(&[])];
    let dead = workers[0].base.clone();
    let alive = workers[1].base.clone();
    let port: u16 = dead.rsplit(':').next().unwrap().parse().unwrap();
    // A short open period, so the test sees it end; the rest as shipped.
    let mut s = stack_of(workers, &[], &[("SPIN_VARIABLE_BREAKER_OPEN_SECS", "2")]);
    s.agent("echo", "cat", json!({})).await;
    s.workflow(json!({"name": "one", "steps": [{"id": "echo", "agent": "echo"}]}))
        .await;
    one_run(&s).await;

    s.workers[0].kill();
    let ran = runs_until(&s, &dead, "open", |d| d["state"] == "open").await;
    assert!(ran.iter().all(|w| *w == alive), "{ran:?}");
    let doc = breaker_doc(&s.host.state_dir, &dead).unwrap();
    assert_eq!(doc["worker"], dead.as_str());
    assert_eq!(doc["opened_total"], 1);
    assert!(
        component_logs(&s.host.state_dir)
            .contains(&format!("worker {dead}: circuit breaker closed -> open")),
        "the transition is logged"
    );
    // Visible in the metrics and in health (open, or half-open already if
    // the short open period just ended).
    let metrics = scrape(&s).await;
    let state = sample(
        &metrics,
        &format!("spindle_breaker_state{{worker=\"{dead}\"}}"),
    );
    assert!(state >= 1.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            &format!("spindle_breaker_opened_total{{worker=\"{dead}\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("spindle_breaker_state{{worker=\"{alive}\"}}")
        ),
        0.0
    );
    let (_, health) = s.get("/health").await;
    let w = &health["checks"]["workers"][0];
    assert_eq!(w["url"], dead.as_str(), "{health}");
    assert!(
        ["open", "half_open"].contains(&w["breaker"]["state"].as_str().unwrap()),
        "{health}"
    );
    assert_eq!(w["breaker"]["opened_total"], 1);

    // Back on its port: once the open period is over, trial jobs go to
    // it, and three taken close the breaker.
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        match Worker::try_start_on(port, &[]) {
            Ok(w) => break w,
            Err(e) => {
                assert!(Instant::now() < deadline, "worker did not restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    s.workers[0] = back;
    // (A trial sent before the worker was listening again reopens it:
    // that only takes another period.)
    let ran = runs_until(&s, &dead, "closed", |d| {
        d["state"] == "closed" && d["opened_total"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        ran.iter().filter(|w| **w == dead).count() >= 3,
        "the trial jobs ran on the worker that came back: {ran:?}"
    );
    let metrics = scrape(&s).await;
    assert_eq!(
        sample(
            &metrics,
            &format!("spindle_breaker_state{{worker=\"{dead}\"}}")
        ),
        0.0,
        "{metrics}"
    );
    let logs = component_logs(&s.host.state_dir);
    for t in ["open -> half_open", "half_open -> closed"] {
        assert!(
            logs.contains(&format!("worker {dead}: circuit breaker {t}")),
            "{t} is logged"
        );
    }
}
