//! What the host and the worker log: one JSON object per line with the
//! time, the level and the message, and the request id on every line about
//! a request, from the request that triggers a run through the audit lines
//! of the components to the worker that runs its job; text for people when
//! asked.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use spindle_tests::{TEST_ADMIN_KEY, Worker, client, root};

use crate::engine::{stack_around, step};

/// An RFC 3339 time in UTC, as the lines carry it.
fn rfc3339_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    ts.len() >= 20
        && ts.ends_with('Z')
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && ts[..4].bytes().all(|c| c.is_ascii_digit())
}

/// Checks the fields every line has; `who` names the process.
fn check_lines(who: &str, lines: &[Value]) {
    assert!(!lines.is_empty(), "{who} logged nothing");
    for l in lines {
        assert!(rfc3339_utc(l["ts"].as_str().unwrap()), "{who}: {l}");
        assert!(
            ["trace", "debug", "info", "warn", "error"].contains(&l["level"].as_str().unwrap()),
            "{who}: {l}"
        );
        assert!(l["target"].is_string(), "{who}: {l}");
        if let Some(id) = l.get("request_id") {
            assert!(
                id.as_str().is_some_and(spindle_core::ids::valid_request_id),
                "{who}: {l}"
            );
        }
    }
}

/// A client's request id on `POST /trigger/...` is on the host's line for
/// the request, on the audit lines the components print about the run
/// (forwarded by the host, embedded as objects), and on every worker line
/// about the job the request dispatched; and every line either process
/// wrote is a JSON object with the common fields.
#[tokio::test(flavor = "multi_thread")]
async fn a_triggered_runs_request_id_is_on_every_line_about_it() {
    let s = stack_around(vec![Worker::start(&[])]);
    s.agent("echo", "cat", json!({})).await;
    s.workflow(json!({"name": "logged", "steps": [{"id": "only", "agent": "echo"}]}))
        .await;
    let id = "trigger-log-test_1.a:b";
    let resp = client()
        .post(s.host.url("/trigger/logged"))
        .header("x-request-id", id)
        .json(&json!({"hello": "logs"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-request-id"], id);
    let run = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = s.finished(&run, 60).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let job_id = step(&done, "only")["attempts"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The host: its request line...
    s.host.log_line(|l| {
        l["msg"] == "request"
            && l["target"] == "spindle::request"
            && l["path"] == "/trigger/logged"
            && l["status"] == 202
            && l["component"] == "trigger"
            && l["request_id"] == id
            && l["duration_ms"].is_number()
    });
    let host = s.host.log();
    check_lines("the host", &host);
    // ... and the trigger component's audit lines, as objects.
    let audit: Vec<&Value> = host
        .iter()
        .filter(|l| l["msg"] == "audit" && l["record"]["run"] == run.as_str())
        .collect();
    let kinds: BTreeSet<&str> = audit
        .iter()
        .filter(|l| l["request_id"] == id)
        .map(|l| {
            assert_eq!(l["component"], "trigger", "{l}");
            assert_eq!(l["stream"], "stdout", "{l}");
            assert_eq!(l["record"]["request_id"], id, "{l}");
            l["record"]["audit"]["kind"].as_str().unwrap()
        })
        .collect();
    assert!(kinds.contains("step_dispatched"), "{audit:#?}");
    // Every component line names its component.
    for l in host.iter().filter(|l| l["target"] == "spindle::component") {
        assert!(l["component"].is_string() && l["stream"].is_string(), "{l}");
    }
    // The component's own log file has the same lines.
    let file = std::fs::read_to_string(s.host.state_dir.join("logs/trigger_stdout.txt")).unwrap();
    assert!(
        file.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["request_id"] == id && l["audit"]["kind"] == "step_dispatched"),
        "{file}"
    );

    // The worker: every line about the job names it, its run and the
    // request that dispatched it.
    s.workers[0].log_line(|l| l["msg"] == "job finished" && l["job_id"] == job_id.as_str());
    let worker = s.workers[0].log();
    check_lines("the worker", &worker);
    let about_job: Vec<&Value> = worker
        .iter()
        .filter(|l| l["job_id"] == job_id.as_str())
        .collect();
    let said: Vec<&str> = about_job
        .iter()
        .map(|l| l["msg"].as_str().unwrap())
        .collect();
    for msg in ["job offered", "job accepted", "job finished"] {
        assert!(said.contains(&msg), "no {msg:?} line: {worker:#?}");
    }
    for l in &about_job {
        assert_eq!(l["run_id"], run.as_str(), "{l}");
        assert_eq!(l["request_id"], id, "{l}");
    }
    assert!(
        worker
            .iter()
            .filter(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("job ")))
            .all(|l| l["job_id"].is_string()),
        "{worker:#?}"
    );
}

/// `--log-format text` (or `SPINDLE_LOG_FORMAT=text`) is for people.
#[tokio::test(flavor = "multi_thread")]
async fn text_logs_are_for_people() {
    let host = spindle_tests::HostBuilder::new(root().join("spin.toml"))
        .env("SPINDLE_LOG_FORMAT", "text")
        .arg("--tick-interval-ms")
        .arg("0")
        .start();
    let resp = client()
        .get(host.url("/api/whoami"))
        .header("x-request-id", "text-1")
        .bearer_auth(TEST_ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let worker = Worker::start(&["--log-format", "text"]);
    let worker_text = worker.stderr_with("worker ready");
    // The request line lands in the host's log a moment after the answer.
    let mut host_text = host.stderr();
    for _ in 0..200 {
        if host_text.contains("request_id=text-1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        host_text = host.stderr();
    }
    assert!(
        host_text
            .lines()
            .any(|l| l.contains(" request ") && l.contains("request_id=text-1")),
        "{host_text}"
    );
    for (who, text) in [("host", host_text), ("worker", worker_text)] {
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<Value>(l).is_err()),
            "{who}: {text}"
        );
    }
}
