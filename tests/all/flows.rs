//! Workflows beyond the plain DAG, end to end: conditions, fan-out,
//! fallback agents, compensation and on-failure steps, re-runs and the
//! self-healing example, through the real host, components and workers
//! running real agents (the reference agents and shell scripts).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spindle_tests::{client_with, root};

use crate::engine::{Stack, stack_with, step};

/// Registers a reference agent from `agents/`.
async fn reference(s: &Stack, name: &str) {
    let text = std::fs::read_to_string(root().join(format!("agents/{name}.json"))).unwrap();
    let (st, v) = s
        .post("/api/agents", &serde_json::from_str(&text).unwrap())
        .await;
    assert_eq!(st, 201, "{name}: {v}");
}

/// An approver's key (runs are triggered as admin, who may not approve
/// their own runs).
async fn approver(s: &Stack) -> String {
    let (st, v) = s
        .post("/api/keys", &json!({"name": "alice", "role": "approver"}))
        .await;
    assert_eq!(st, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

/// A step of a run document, or an item of one of its fan-out steps.
fn unit_of<'a>(run: &'a Value, id: &str) -> &'a Value {
    let steps = run["steps"].as_array().unwrap();
    steps
        .iter()
        .chain(
            steps
                .iter()
                .flat_map(|s| s["items"].as_array().into_iter().flatten()),
        )
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no unit {id} in {run:#}"))
}

/// Approves the pending approval of `unit` in `run` as `key`.
async fn approve(s: &Stack, key: &str, run: &str, unit: &str) {
    s.wait(run, 30, |v| {
        unit_of(v, unit)["status"] == "waiting_approval"
    })
    .await;
    let (st, list) = s.get(&format!("/approvals?run={run}&status=pending")).await;
    assert_eq!(st, 200, "{list}");
    let id = list["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["step"] == unit)
        .unwrap_or_else(|| panic!("no pending approval for {unit}: {list:#}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = client_with(Some(key))
        .post(s.host.url(&format!("/approvals/{id}/decision")))
        .json(&json!({"decision": "approve", "comment": "looks right"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
}

const CLEAN_DIFF: &str = "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n # app\n+More words.\n";
const LEAKY_DIFF: &str = "diff --git a/config/app.env b/config/app.env\n--- a/config/app.env\n+++ b/config/app.env\n@@ -1 +1,2 @@\n HOST=example.org\n+AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP\n";
const FIX: &str = "diff --git a/config/app.env b/config/app.env\n--- a/config/app.env\n+++ b/config/app.env\n@@ -1,2 +1,2 @@\n HOST=example.org\n-AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP\n+AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_condition_skips_the_patcher_when_the_scan_is_clean_and_runs_it_when_not() {
    let s = stack_with(&[&[]]);
    reference(&s, "security-scanner").await;
    reference(&s, "patcher").await;
    let key = approver(&s).await;
    s.workflow(json!({"name": "scan-fix", "steps": [
        {"id": "scan", "agent": "security-scanner", "input": {"diff": "{{ trigger.payload.diff }}"}},
        {"id": "patch", "agent": "patcher", "needs": ["scan"],
         "when": "steps.scan.output.summary.high > 0",
         "input": {"patch": "{{ trigger.payload.fix }}",
                   "files": [{"path": "config/app.env",
                              "content": "HOST=example.org\nAWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP\n"}]}}
    ]}))
    .await;

    let clean = s
        .trigger("scan-fix", json!({"diff": CLEAN_DIFF, "fix": FIX}))
        .await;
    let v = s.finished(&clean, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let patch = step(&v, "patch");
    assert_eq!(patch["status"], "skipped", "{v:#}");
    assert!(
        patch["skip_reason"]
            .as_str()
            .unwrap()
            .contains("steps.scan.output.summary.high > 0"),
        "{patch:#}"
    );
    assert_eq!(patch["attempts"], json!([]), "the patcher never ran");

    let leaky = s
        .trigger("scan-fix", json!({"diff": LEAKY_DIFF, "fix": FIX}))
        .await;
    approve(&s, &key, &leaky, "patch").await;
    let v = s.finished(&leaky, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let out = &step(&v, "patch")["output"];
    assert_eq!(out["applied"], true, "{v:#}");
    assert!(
        out["changed"][0]["content"]
            .as_str()
            .unwrap()
            .contains("${AWS_ACCESS_KEY_ID}"),
        "{out:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_item_of_a_risky_fan_out_waits_for_its_own_approval_and_they_page() {
    let s = stack_with(&[&[]]);
    reference(&s, "patcher").await;
    let key = approver(&s).await;
    s.workflow(json!({"name": "patch-each", "steps": [
        {"id": "patch", "agent": "patcher", "for_each": "trigger.payload.files", "max_parallel": 3,
         "input": {"patch": "{{ trigger.payload.patch }}", "files": ["{{ item }}"]}}
    ]}))
    .await;
    let files: Vec<Value> = (0..3)
        .map(|_| json!({"path": "config/app.env", "content": ENV_BEFORE}))
        .collect();
    let run = s
        .trigger("patch-each", json!({"patch": ENV_PATCH, "files": files}))
        .await;
    s.wait(&run, 30, |v| {
        step(v, "patch")["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|u| u["status"] == "waiting_approval"))
    })
    .await;
    // Three approvals, newest first, two to a page.
    let (st, page) = s
        .get(&format!("/approvals?run={run}&status=pending&limit=2"))
        .await;
    assert_eq!(st, 200, "{page}");
    let first: Vec<&str> = page["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(first.len(), 2, "{page:#}");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = s
        .get(&format!(
            "/approvals?run={run}&status=pending&limit=2&cursor={cursor}"
        ))
        .await;
    let mut ids: Vec<String> = rest["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{rest:#}");
    assert!(rest["next_cursor"].is_null(), "{rest:#}");
    ids.extend(first.iter().map(|s| s.to_string()));
    ids.sort();
    let expected: Vec<String> = (0..3).map(|k| format!("{run}.patch_{k}")).collect();
    assert_eq!(ids, expected);
    for k in 0..3 {
        approve(&s, &key, &run, &format!("patch_{k}")).await;
    }
    let v = s.finished(&run, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let out = step(&v, "patch")["output"].as_array().unwrap().clone();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|o| o["applied"] == true), "{out:#?}");
}

/// Most intervals of `log` (lines `s <ns>` and `e <ns>`) open at once.
fn peak_overlap(log: &str) -> usize {
    let mut marks: Vec<(u128, i32)> = log
        .lines()
        .filter_map(|l| {
            let (kind, at) = l.split_once(' ')?;
            let at: u128 = at.trim().parse().ok()?;
            // Ends sort before starts at the same instant.
            Some((at, if kind == "s" { 1 } else { -1 }))
        })
        .collect();
    marks.sort();
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, d) in marks {
        open += d;
        peak = peak.max(open);
    }
    peak as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_of_twenty_never_runs_more_than_three_jobs_and_gathers_in_order() {
    // Two workers with two slots each: room for four, so the limit seen is
    // the step's, not the pool's.
    let s = stack_with(&[&[], &[]]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("jobs.log");
    let script = format!(
        r#"in=$(cat); echo "s $(date +%s%N)" >> {log}; sleep 0.3; echo "e $(date +%s%N)" >> {log}; printf '{{"seen":%s}}' "$in""#,
        log = log.display()
    );
    s.agent("per-file", &script, json!({})).await;
    s.agent("collect", "cat", json!({})).await;
    s.workflow(json!({"name": "each", "steps": [
        {"id": "files", "agent": "per-file", "for_each": "trigger.payload.files",
         "max_parallel": 3, "input": {"path": "{{ item }}", "index": "{{ item_index }}"}},
        {"id": "all", "agent": "collect", "needs": ["files"],
         "input": {"results": "{{ steps.files.output }}"}}
    ]}))
    .await;
    let files: Vec<String> = (0..20).map(|i| format!("src/f{i:02}.rs")).collect();
    let run = s.trigger("each", json!({"files": files})).await;
    let v = s.finished(&run, 120).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().count(),
        40,
        "every item ran exactly once:\n{text}"
    );
    let peak = peak_overlap(&text);
    assert!(peak <= 3, "{peak} jobs ran at once:\n{text}");
    assert!(peak >= 2, "the items did run in parallel:\n{text}");
    let fan = step(&v, "files");
    assert_eq!(fan["items"].as_array().unwrap().len(), 20, "{fan:#}");
    assert_eq!(
        fan["output"],
        step(&v, "all")["output"]["results"],
        "the run shows a fan-out's gathered output"
    );
    let results = step(&v, "all")["output"]["results"]
        .as_array()
        .unwrap()
        .clone();
    let seen: Vec<Value> = results.iter().map(|r| r["seen"].clone()).collect();
    let expected: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, f)| json!({"path": f, "index": i}))
        .collect();
    assert_eq!(seen, expected, "outputs gathered in list order");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_agent_takes_over_when_the_primary_cannot_start() {
    let s = stack_with(&[&[]]);
    // The primary's program is missing on the worker: with the process
    // executor this is what a missing image is to a container executor,
    // the executor cannot start the agent at all.
    let (st, v) = s
        .post(
            "/api/agents",
            &json!({"name": "primary", "image": "localhost/spindle/missing:latest",
                    "command": ["spindle-no-such-agent"], "timeout_secs": 10,
                    "retry": {"max_attempts": 1}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    s.agent(
        "backup",
        r#"cat >/dev/null; echo '{"by":"backup"}'"#,
        json!({}),
    )
    .await;
    s.workflow(json!({"name": "fb", "steps": [
        {"id": "work", "agent": "primary", "fallback": ["backup"]}
    ]}))
    .await;
    let run = s.trigger("fb", json!({})).await;
    let v = s.finished(&run, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let work = step(&v, "work");
    assert_eq!(work["output"], json!({"by": "backup"}));
    assert_eq!(work["agent"], "backup", "{work:#}");
    let attempts = work["attempts"].as_array().unwrap();
    let agents: Vec<&str> = attempts
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["primary", "backup"], "{work:#}");
    assert_eq!(attempts[0]["error"]["kind"], "executor_failed", "{work:#}");
    let events: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"step_fallback"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_agent_takes_over_when_the_primarys_image_is_missing() {
    if !crate::agents::podman_ready() {
        eprintln!("podman or localhost/spindle/agents:latest not available; skipping");
        return;
    }
    let s = stack_with(&[&[
        "--executor",
        "podman",
        "--engine-arg=--runtime",
        "--engine-arg=runc",
        "--run-arg=--pull=never",
    ]]);
    reference(&s, "security-scanner").await;
    let (st, v) = s
        .post(
            "/api/agents",
            &json!({"name": "scanner-next", "image": "localhost/spindle/missing:latest",
                    "command": ["spindle-agents", "security-scanner"], "timeout_secs": 30,
                    "retry": {"max_attempts": 2, "initial_backoff_ms": 200}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    s.workflow(json!({"name": "fb-image", "steps": [
        {"id": "scan", "agent": "scanner-next", "fallback": ["security-scanner"],
         "input": {"diff": "{{ trigger.payload.diff }}"}}
    ]}))
    .await;
    let run = s.trigger("fb-image", json!({"diff": LEAKY_DIFF})).await;
    let v = s.finished(&run, 120).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let scan = step(&v, "scan");
    assert_eq!(scan["output"]["summary"]["high"], 1, "{scan:#}");
    let attempts = scan["attempts"].as_array().unwrap();
    let agents: Vec<&str> = attempts
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    // The missing image is retried by its own policy, then given up on.
    assert_eq!(
        agents,
        ["scanner-next", "scanner-next", "security-scanner"],
        "{scan:#}"
    );
    for a in &attempts[..2] {
        assert_eq!(a["error"]["kind"], "executor_failed", "{scan:#}");
    }
}

/// A service for the self-healing example: `GET /health` answers with
/// `status`, `POST /hook` keeps what the notifier sends.
struct Service {
    port: u16,
    hooks: Arc<Mutex<Vec<Value>>>,
}

async fn service(status: u16) -> Service {
    let hooks: Arc<Mutex<Vec<Value>>> = Arc::default();
    let k = hooks.clone();
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || async move {
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    format!("status {status}"),
                )
            }),
        )
        .route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let k = k.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    k.lock().unwrap().push(v);
                    "ok"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Service { port, hooks }
}

const ENV_BEFORE: &str = "HOST=example.org\nPOOL_SIZE=1\n";
const ENV_PATCH: &str = "diff --git a/config/app.env b/config/app.env\n--- a/config/app.env\n+++ b/config/app.env\n@@ -1,2 +1,2 @@\n HOST=example.org\n-POOL_SIZE=1\n+POOL_SIZE=32\n";

async fn self_heal() -> (Stack, String) {
    let s = stack_with(&[&[]]);
    for name in ["http-check", "patcher", "notifier"] {
        reference(&s, name).await;
    }
    let key = approver(&s).await;
    let text = std::fs::read_to_string(root().join("examples/self-heal.json")).unwrap();
    s.workflow(serde_json::from_str(&text).unwrap()).await;
    (s, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_self_healing_example_rolls_the_patch_back_and_notifies_when_verification_fails() {
    let (s, key) = self_heal().await;
    // Unhealthy, and the patch does not help.
    let svc = service(503).await;
    let payload = json!({
        "url": format!("http://127.0.0.1:{}/health", svc.port),
        "patch": ENV_PATCH,
        "files": [{"path": "config/app.env", "content": ENV_BEFORE}],
        "notify_url": format!("http://127.0.0.1:{}/hook", svc.port),
    });
    let run = s.trigger("self-heal", payload).await;
    approve(&s, &key, &run, "patch").await;
    // The rollback changes code too: it waits for an approver as well.
    approve(&s, &key, &run, "rollback").await;
    let v = s.finished(&run, 120).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    assert_eq!(step(&v, "diagnose")["output"]["ok"], false, "{v:#}");
    assert_eq!(step(&v, "patch")["status"], "succeeded");
    assert_eq!(step(&v, "verify")["status"], "failed");
    let rollback = step(&v, "rollback");
    assert_eq!(rollback["status"], "succeeded", "{v:#}");
    assert_eq!(rollback["role"], "compensation");
    assert_eq!(rollback["output"]["reverted"], true, "{rollback:#}");
    assert_eq!(
        rollback["output"]["changed"][0]["content"], ENV_BEFORE,
        "the patcher undid its own change"
    );
    assert_eq!(step(&v, "notify")["status"], "succeeded", "{v:#}");
    assert_eq!(v["failure"]["step"], "verify", "{v:#}");
    let hooks = svc.hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    let said = hooks[0].to_string();
    assert!(
        said.contains("verify"),
        "the notifier got the failure: {said}"
    );
    // Compensation before notification, in the run's own trail.
    let events: Vec<(String, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["step"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let at = |kind: &str, unit: &str| {
        events
            .iter()
            .position(|(k, s)| k == kind && s == unit)
            .unwrap_or_else(|| panic!("no {kind} of {unit}: {events:?}"))
    };
    assert!(at("step_succeeded", "rollback") < at("step_dispatched", "notify"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_self_healing_example_does_nothing_for_a_healthy_service() {
    let (s, _) = self_heal().await;
    let svc = service(200).await;
    let run = s
        .trigger(
            "self-heal",
            json!({
                "url": format!("http://127.0.0.1:{}/health", svc.port),
                "patch": ENV_PATCH,
                "files": [{"path": "config/app.env", "content": ENV_BEFORE}],
                "notify_url": format!("http://127.0.0.1:{}/hook", svc.port),
            }),
        )
        .await;
    let v = s.finished(&run, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    for unit in ["patch", "verify"] {
        assert_eq!(step(&v, unit)["status"], "skipped", "{v:#}");
    }
    for unit in ["rollback", "notify"] {
        assert_eq!(
            step(&v, unit)["skip_reason"],
            "not needed: the run succeeded",
            "{v:#}"
        );
    }
    assert!(svc.hooks.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_reuses_what_succeeded_and_runs_the_rest() {
    let s = stack_with(&[&[]]);
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("fetch.count");
    let flag = dir.path().join("fixed");
    // `fetch` counts its runs; `build` fails until the flag file exists.
    s.agent(
        "fetch",
        &format!(
            r#"cat >/dev/null; echo x >> {}; echo '{{"sha":"abc123"}}'"#,
            count.display()
        ),
        json!({}),
    )
    .await;
    s.agent(
        "build",
        &format!(
            r#"in=$(cat); test -e {} || {{ echo broken >&2; exit 65; }}; printf '{{"built":%s}}' "$in""#,
            flag.display()
        ),
        json!({}),
    )
    .await;
    s.workflow(json!({"name": "ci", "steps": [
        {"id": "fetch", "agent": "fetch"},
        {"id": "build", "agent": "build", "needs": ["fetch"],
         "input": {"sha": "{{ steps.fetch.output.sha }}"}}
    ]}))
    .await;
    let first = s.trigger("ci", json!({"ref": "main"})).await;
    let v = s.finished(&first, 60).await;
    assert_eq!(v["status"], "failed", "{v:#}");

    std::fs::write(&flag, "").unwrap();
    let (st, again) = s
        .post(&format!("/api/runs/{first}/rerun"), &json!({}))
        .await;
    assert_eq!(st, 201, "{again}");
    assert_eq!(again["rerun_of"], first.as_str());
    let second = again["id"].as_str().unwrap().to_owned();
    let v = s.finished(&second, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    assert_eq!(v["trigger"]["payload"], json!({"ref": "main"}));
    let fetch = step(&v, "fetch");
    assert_eq!(
        fetch["reused_from"],
        format!("{first}.fetch.1"),
        "{fetch:#}"
    );
    assert_eq!(fetch["output"], json!({"sha": "abc123"}));
    assert_eq!(
        step(&v, "build")["output"],
        json!({"built": {"sha": "abc123"}})
    );
    let runs = std::fs::read_to_string(&count).unwrap();
    assert_eq!(runs.lines().count(), 1, "fetch ran once, in the first run");

    // From a named step: it and everything after it run again.
    let (st, third) = s
        .post(
            &format!("/api/runs/{second}/rerun"),
            &json!({"from": "fetch"}),
        )
        .await;
    assert_eq!(st, 201, "{third}");
    let v = s.finished(third["id"].as_str().unwrap(), 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);

    // Bad requests change nothing.
    for (body, pointer) in [
        (json!({"from": "ghost"}), "/from"),
        (json!({"from": 3}), "/from"),
        (json!({"form": "x"}), "/form"),
    ] {
        let (st, p) = s.post(&format!("/api/runs/{second}/rerun"), &body).await;
        assert_eq!(st, 400, "{p}");
        assert_eq!(p["errors"][0]["pointer"], pointer, "{p}");
    }
    let (st, p) = s
        .post("/api/runs/r0000000000001-000001/rerun", &json!({}))
        .await;
    assert_eq!(st, 404, "{p}");
    let (_, list) = s.get("/api/runs?workflow=ci").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 3, "{list:#}");

    // An agent deleted since is not run again.
    s.agent("fetch2", "cat", json!({})).await;
    let resp = spindle_tests::client()
        .put(s.host.url("/api/workflows/ci"))
        .json(&json!({"name": "ci", "steps": [{"id": "fetch", "agent": "fetch2"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = spindle_tests::client()
        .delete(s.host.url("/api/agents/build"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (st, p) = s
        .post(&format!("/api/runs/{first}/rerun"), &json!({}))
        .await;
    assert_eq!(st, 409, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("build"), "{p}");
    let (_, list) = s.get("/api/runs?workflow=ci").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 3, "nothing started");
}
