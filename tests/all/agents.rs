//! The reference agents end to end, with their shipped definitions
//! (`agents/*.json`) and the example workflow (`examples/pr-checks.json`):
//! through the process executor, and through podman where it is installed.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spindle_tests::root;

use spindle_tests::Worker;

use crate::engine::{Stack, stack_around, stack_with, step};

const DIFF: &str = "diff --git a/config/app.env b/config/app.env\n--- a/config/app.env\n+++ b/config/app.env\n@@ -1,1 +1,3 @@\n HOST=example.org\n+password = \"hunter2hunter2\"\n+console.log(\"debug\") // TODO remove\n";

fn definition(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join(format!("agents/{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub(crate) async fn register_reference_agents(s: &Stack) {
    for name in [
        "security-scanner",
        "code-reviewer",
        "compliance-checker",
        "patcher",
        "notifier",
    ] {
        let (status, v) = s.post("/api/agents", &definition(name)).await;
        assert_eq!(status, 201, "{name}: {v}");
    }
}

/// A webhook receiver: every JSON body posted to it.
pub(crate) async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(v);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pr_checks_diamond_runs_the_reference_agents() {
    let s = stack_with(&[&[], &[]]);
    register_reference_agents(&s).await;
    let wf: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/pr-checks.json")).unwrap(),
    )
    .unwrap();
    s.workflow(wf).await;
    let (hook, seen) = webhook().await;
    let run = s
        .trigger(
            "pr-checks",
            json!({"diff": DIFF, "repository": "acme/app", "webhook_url": hook}),
        )
        .await;
    let v = s.finished(&run, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");

    let scan = &step(&v, "scan")["output"];
    assert_eq!(scan["summary"]["high"], 1, "{scan:#}");
    assert_eq!(scan["findings"][0]["rule"], "hardcoded-secret");
    assert_eq!(scan["findings"][0]["file"], "config/app.env");
    assert_eq!(step(&v, "compliance")["output"]["compliant"], false);
    assert_eq!(step(&v, "review")["output"]["verdict"], "request_changes");

    // The notification carries what the earlier steps found.
    let posted = seen.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "notified once: {posted:#?}");
    assert_eq!(
        posted[0]["text"],
        "acme/app: 1 high findings, compliant: false, review: request_changes"
    );
    assert_eq!(
        posted[0]["details"]["findings"][0]["rule"],
        "hardcoded-secret"
    );
    assert_eq!(step(&v, "notify")["output"]["status"], 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_patcher_waits_for_approval() {
    let s = stack_with(&[&[]]);
    register_reference_agents(&s).await;
    s.workflow(json!({"name": "fix", "steps": [
        {"id": "scan", "agent": "security-scanner", "input": {"diff": "{{ trigger.payload.diff }}"}},
        {"id": "patch", "agent": "patcher", "needs": ["scan"], "input": {"patch": "{{ trigger.payload.diff }}"}}
    ]}))
    .await;
    let run = s.trigger("fix", json!({"diff": DIFF})).await;
    let v = s
        .wait(&run, 30, |v| v["status"] == "waiting_approval")
        .await;
    assert_eq!(step(&v, "scan")["status"], "succeeded");
    assert_eq!(step(&v, "patch")["status"], "waiting_approval");
    assert_eq!(
        step(&v, "patch")["attempts"],
        json!([]),
        "nothing dispatched before approval"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_agent_input_is_refused_before_dispatch() {
    let s = stack_with(&[&[]]);
    register_reference_agents(&s).await;
    // The notifier's input schema wants a webhook URL; this one is not.
    s.workflow(json!({"name": "bad-notify", "steps": [
        {"id": "notify", "agent": "notifier", "input": {"webhook_url": "{{ trigger.payload.where }}"}}
    ]}))
    .await;
    let run = s.trigger("bad-notify", json!({"where": "not a url"})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "failed");
    let st = step(&v, "notify");
    assert_eq!(st["error"]["kind"], "invalid_input", "{st:#}");
    assert!(
        st["attempts"][0]["worker"].is_null(),
        "never sent to a worker"
    );
}

pub(crate) fn podman_ready() -> bool {
    let ok = std::process::Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "image",
            "exists",
            "localhost/spindle/agents:latest",
        ])
        .env("CONTAINERS_CONF", root().join("scripts/containers.conf"))
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!(
            "CI must run the container executor: podman or the agent image is missing (scripts/test builds both)"
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn the_podman_executor_runs_agents_in_containers_and_kills_them_at_the_timeout() {
    if !podman_ready() {
        eprintln!("podman or localhost/spindle/agents:latest not available; skipping");
        return;
    }
    let worker = Worker::start(&[
        "--executor",
        "podman",
        "--engine-arg=--runtime",
        "--engine-arg=runc",
    ]);
    containers_run_agents(worker, "podman").await;
}

/// The docker executor's command lines, run by a Docker-compatible CLI: no
/// Docker daemon runs here, so `docker` is podman behind a two-line shim.
#[tokio::test(flavor = "multi_thread")]
async fn the_docker_executor_runs_agents_through_a_docker_compatible_cli() {
    if !podman_ready() {
        eprintln!("podman or localhost/spindle/agents:latest not available; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("docker");
    std::fs::write(&shim, "#!/bin/sh\nexec podman --runtime runc \"$@\"\n").unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let worker = Worker::start_with_path(&["--executor", "docker"], Some(dir.path()));
    containers_run_agents(worker, "docker").await;
}

async fn containers_run_agents(worker: Worker, label: &str) {
    let s = stack_around(vec![worker]);
    register_reference_agents(&s).await;
    let (status, v) = s
        .post(
            "/api/agents",
            &json!({"name": "hang", "image": "localhost/spindle/agents:latest",
            "command": ["sleep", "60"], "timeout_secs": 2, "retry": {"max_attempts": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // Every reference agent that runs without an approval or a network,
    // under the executor's hardening (non-root, read-only, no capabilities).
    s.workflow(json!({"name": "contained", "steps": [
        {"id": "scan", "agent": "security-scanner", "input": {"diff": "{{ trigger.payload.diff }}"}},
        {"id": "compliance", "agent": "compliance-checker", "needs": ["scan"],
         "input": {"findings": "{{ steps.scan.output.findings }}", "diff": "{{ trigger.payload.diff }}"}},
        {"id": "review", "agent": "code-reviewer", "needs": ["scan"], "input": {"diff": "{{ trigger.payload.diff }}"}}
    ]}))
    .await;
    s.workflow(json!({"name": "hangs", "steps": [{"id": "hang", "agent": "hang"}]}))
        .await;

    let run = s.trigger("contained", json!({"diff": DIFF})).await;
    let v = s.finished(&run, 120).await;
    assert_eq!(
        v["status"],
        "succeeded",
        "{label}: {v:#}\n{}",
        s.workers[0].stderr()
    );
    assert_eq!(step(&v, "scan")["output"]["summary"]["high"], 1);
    assert_eq!(step(&v, "compliance")["output"]["compliant"], false);
    assert_eq!(step(&v, "review")["output"]["verdict"], "request_changes");

    let run = s.trigger("hangs", json!({})).await;
    let v = s.finished(&run, 120).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    let attempt = &step(&v, "hang")["attempts"][0];
    assert_eq!(attempt["error"]["kind"], "timeout", "{v:#}");
    let name = format!(
        "spindle-{}",
        attempt["job_id"].as_str().unwrap().replace('.', "-")
    );
    let ps = std::process::Command::new("podman")
        .args(["--runtime", "runc", "ps", "-a", "--format", "{{.Names}}"])
        .env("CONTAINERS_CONF", root().join("scripts/containers.conf"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !names.contains(&name),
        "container {name} outlived its timeout: {names}"
    );
}
