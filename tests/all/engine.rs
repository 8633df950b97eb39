//! The workflow engine end to end: the real host and components, real
//! `spindle-worker` processes running agents with the process executor, real
//! HTTP on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spindle_core::job::SIGNATURE_HEADER;
use spindle_core::sign;
use spindle_tests::{
    HostBuilder, TEST_CALLBACK_SECRET, Worker, anon_client, client, client_with, free_port, root,
};

/// A lease short enough that lost workers are noticed within seconds.
const LEASE_MS: &str = "3000";

pub(crate) struct Stack {
    pub host: spindle_tests::Host,
    pub workers: Vec<Worker>,
}

fn stack(workers: usize) -> Stack {
    stack_with(&vec![&[][..]; workers])
}

/// The real app with one worker per entry, each started with those
/// arguments.
pub(crate) fn stack_with(worker_args: &[&[&str]]) -> Stack {
    stack_full(worker_args, &[], &[])
}

/// The real app with real workers (one per entry of `worker_args`), extra
/// worker URLs in the pool (`pool`, e.g. a test's fake worker) and extra
/// host environment.
pub(crate) fn stack_full(worker_args: &[&[&str]], pool: &[String], env: &[(&str, &str)]) -> Stack {
    let workers: Vec<Worker> = worker_args.iter().map(|a| Worker::start(a)).collect();
    stack_of(workers, pool, env)
}

/// The real app around workers the caller started.
pub(crate) fn stack_around(workers: Vec<Worker>) -> Stack {
    stack_of(workers, &[], &[])
}

/// The real app around workers the caller started, with extra worker URLs
/// in the pool and extra host environment.
pub(crate) fn stack_of(workers: Vec<Worker>, pool: &[String], env: &[(&str, &str)]) -> Stack {
    let port = free_port();
    let mut urls: Vec<String> = workers.iter().map(|w| w.base.clone()).collect();
    urls.extend(pool.iter().cloned());
    let mut host = HostBuilder::new(root().join("spin.toml"))
        .port(port)
        .env("SPIN_VARIABLE_WORKERS", &urls.join(","))
        .env(
            "SPIN_VARIABLE_CALLBACK_URL",
            &format!("http://127.0.0.1:{port}"),
        )
        .env("SPIN_VARIABLE_LEASE_MS", LEASE_MS)
        .arg("--tick-interval-ms")
        .arg("200");
    for (k, v) in env {
        host = host.env(k, v);
    }
    Stack {
        host: host.start(),
        workers,
    }
}

impl Stack {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = client()
            .post(self.host.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = client().get(self.host.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Registers an agent run by `sh -c script`.
    pub async fn agent(&self, name: &str, script: &str, extra: Value) {
        let mut spec = json!({"name": name, "command": ["sh", "-c", script], "timeout_secs": 20,
            "retry": {"max_attempts": 1}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (s, v) = self.post("/api/agents", &spec).await;
        assert_eq!(s, 201, "agent {name}: {v}");
    }

    pub async fn workflow(&self, spec: Value) {
        let (s, v) = self.post("/api/workflows", &spec).await;
        assert_eq!(s, 201, "workflow: {v}");
    }

    pub async fn trigger(&self, workflow: &str, payload: Value) -> String {
        let (s, v) = self.post(&format!("/trigger/{workflow}"), &payload).await;
        assert_eq!(s, 202, "trigger: {v}");
        assert_eq!(
            v["url"],
            format!("/api/runs/{}", v["run_id"].as_str().unwrap())
        );
        v["run_id"].as_str().unwrap().to_owned()
    }

    /// Polls a run until `done` holds (or panics after `secs`).
    pub async fn wait(&self, run: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (s, v) = self.get(&format!("/api/runs/{run}")).await;
            assert_eq!(s, 200, "{v}");
            if done(&v) {
                return v;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.workers.iter().map(Worker::stderr).collect();
                panic!(
                    "run {run} did not get there in {secs} s: {v:#}\nhost: {}\nworkers: {logs:#?}",
                    self.host.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `step` runs on a worker; returns its job id.
    pub async fn running_job(&self, run: &str, id: &str) -> String {
        let v = self
            .wait(run, 20, |v| step(v, id)["status"] == "running")
            .await;
        step(&v, id)["attempts"][0]["job_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn finished(&self, run: &str, secs: u64) -> Value {
        self.wait(run, secs, |v| {
            ["succeeded", "failed", "cancelled", "timed_out"]
                .contains(&v["status"].as_str().unwrap())
        })
        .await
    }
}

pub(crate) fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

const ECHO: &str = "cat";
const SCAN: &str = r#"cat >/dev/null; echo '{"findings":[{"severity":"high","file":"src/app.py","rule":"secret"}]}'"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_single_step_run_stores_the_agents_output() {
    let s = stack(1);
    s.agent("echo", ECHO, json!({})).await;
    s.workflow(json!({"name": "one", "steps": [
        {"id": "echo", "agent": "echo", "input": {"repo": "{{ trigger.payload.repository.full_name }}", "n": 3}}
    ]}))
    .await;
    let run = s
        .trigger("one", json!({"repository": {"full_name": "acme/app"}}))
        .await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let st = step(&v, "echo");
    assert_eq!(st["input"], json!({"repo": "acme/app", "n": 3}));
    assert_eq!(st["output"], json!({"repo": "acme/app", "n": 3}));
    assert_eq!(st["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(st["attempts"][0]["exit_code"], 0);
    assert!(v["finished_at_ms"].as_u64() >= v["created_at_ms"].as_u64());

    // The audit trail also goes out as JSON lines in the components' logs
    // (the run's last lines just after the run document: wait for them).
    let read_audit = || {
        let mut audit = Vec::new();
        for entry in std::fs::read_dir(s.host.state_dir.join("logs")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            audit.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|l| l["run"] == run.as_str())
                    .map(|l| l["audit"]["kind"].as_str().unwrap_or("").to_owned()),
            );
        }
        audit
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut audit = read_audit();
    while !audit.iter().any(|k| k == "run_succeeded") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        audit = read_audit();
    }
    for kind in [
        "run_created",
        "run_started",
        "step_dispatched",
        "step_succeeded",
        "run_succeeded",
    ] {
        assert!(
            audit.iter().any(|k| k == kind),
            "{kind} missing from {audit:?}"
        );
    }

    // Listed by workflow and by status, with what started it and who.
    let (_, list) = s.get("/api/runs?workflow=one").await;
    assert_eq!(list["runs"][0]["id"], run.as_str());
    assert_eq!(list["runs"][0]["trigger_kind"], "manual", "{list}");
    assert_eq!(list["runs"][0]["actor"], "key:bootstrap", "{list}");
    assert_eq!(v["trigger_kind"], "manual");
    assert_eq!(v["actor"], "key:bootstrap");
    let (_, list) = s.get("/api/runs?status=succeeded").await;
    assert_eq!(list["runs"][0]["id"], run.as_str());
    let (_, list) = s.get("/api/runs?status=running").await;
    assert_eq!(list["runs"], json!([]));
}

/// A client polling a run revalidates it: `304` while the run has not
/// moved, the new view once it has.
#[tokio::test(flavor = "multi_thread")]
async fn a_polled_run_answers_not_modified_until_it_moves() {
    let s = stack(1);
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // Waits for the test's word, so the run is caught while it runs.
    s.agent(
        "waiter",
        &format!(
            "cat >/dev/null; while [ ! -e {} ]; do sleep 0.05; done; echo '{{}}'",
            go.display()
        ),
        json!({}),
    )
    .await;
    s.workflow(json!({"name": "wait", "steps": [{"id": "w", "agent": "waiter"}]}))
        .await;
    let run = s.trigger("wait", json!({})).await;
    s.wait(&run, 20, |v| step(v, "w")["status"] == "running")
        .await;
    let get = |etag: Option<String>| {
        let url = s.host.url(&format!("/api/runs/{run}"));
        async move {
            let mut req = client().get(url);
            if let Some(e) = etag {
                req = req.header("if-none-match", e);
            }
            let resp = req.send().await.unwrap();
            let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            (status, etag, body)
        }
    };
    let (st, etag, body) = get(None).await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(etag, format!("\"{}-v1\"", v["revision"]));
    // A stale or foreign tag gets the view.
    let (st, _, _) = get(Some("\"0-v1\"".into())).await;
    assert_eq!(st, 200);
    std::fs::write(&go, "").unwrap();
    let v = s.finished(&run, 20).await;
    assert_eq!(v["status"], "succeeded");
    let (st, new, body) = get(Some(etag.clone())).await;
    assert_eq!(st, 200, "the run moved");
    assert_ne!(new, etag);
    assert!(!body.is_empty());
    let (st, same, body) = get(Some(new.clone())).await;
    assert_eq!(st, 304, "nothing moved since");
    assert_eq!(same, new);
    assert!(body.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steps_output_downloads_as_the_stored_json_and_only_with_a_credential() {
    let s = stack(1);
    s.agent("echo", ECHO, json!({})).await;
    s.agent("fail", "cat >/dev/null; exit 3", json!({})).await;
    s.workflow(json!({"name": "dl", "steps": [
        {"id": "echo", "agent": "echo", "input": {"n": [1, 2.5, "\u{e9}", "{{ trigger.payload.repo }}"]}},
        {"id": "each", "agent": "echo", "needs": ["echo"], "for_each": "trigger.payload.files",
         "input": {"path": "{{ item }}", "i": "{{ item_index }}"}},
        {"id": "none", "agent": "echo", "for_each": "trigger.payload.nothing"},
        {"id": "after", "agent": "echo", "needs": ["each"], "when": "false"}
    ]}))
    .await;
    s.workflow(json!({"name": "broken", "steps": [{"id": "bad", "agent": "fail"}]}))
        .await;
    let run = s
        .trigger(
            "dl",
            json!({"repo": "acme/app", "files": ["a.rs", "b.rs"], "nothing": []}),
        )
        .await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let broken = s.trigger("broken", json!({})).await;
    let b = s.finished(&broken, 30).await;
    assert_eq!(b["status"], "failed", "{b:#}");

    let fetch = |http: reqwest::Client, path: String| {
        let url = s.host.url(&path);
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let header = |n: &str| {
                r.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let (ct, cd) = (header("content-type"), header("content-disposition"));
            let text = r.text().await.unwrap();
            (status, ct, cd, text)
        }
    };
    let path = |run: &str, step: &str| format!("/api/runs/{run}/steps/{step}/output");

    // One step's output and a fan-out step's gathered items, each equal
    // to the run's view of it, as a file to save.
    for id in ["echo", "each", "none"] {
        let (status, ct, cd, text) = fetch(client(), path(&run, id)).await;
        assert_eq!(status, 200, "{id}: {text}");
        assert_eq!(ct, "application/json", "{id}");
        assert_eq!(
            cd,
            format!("attachment; filename=\"{run}-{id}-output.json\"")
        );
        let got: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got, step(&v, id)["output"], "{id}");
    }
    let (_, _, _, text) = fetch(client(), path(&run, "each")).await;
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got[1], json!({"path": "b.rs", "i": 1}));
    let (_, _, _, text) = fetch(client(), path(&run, "none")).await;
    assert_eq!(text, "[]");
    // Exactly as stored: the bytes the worker's agent wrote, re-encoded
    // once by the app (compact JSON), not a pretty or reordered copy.
    let (_, _, _, text) = fetch(client(), path(&run, "echo")).await;
    assert_eq!(text, r#"{"n":[1,2.5,"é","acme/app"]}"#);

    // A viewer may read it; no credential, or a wrong one, may not.
    let (st, key) = s
        .post("/api/keys", &json!({"name": "dash", "role": "viewer"}))
        .await;
    assert_eq!(st, 201, "{key}");
    let viewer = client_with(Some(key["key"].as_str().unwrap()));
    let (status, _, _, text) = fetch(viewer, path(&run, "echo")).await;
    assert_eq!(status, 200, "{text}");
    for http in [
        anon_client(),
        client_with(Some("spk_nobody_0123456789abcdef0123456789abcdef")),
    ] {
        let (status, ct, _, text) = fetch(http, path(&run, "echo")).await;
        assert_eq!(status, 401, "{text}");
        assert_eq!(ct, "application/problem+json");
    }

    // What has no output is a 404 problem that says why.
    let cases = [
        (path("r0nosuchrun", "echo"), "no run"),
        (path(&run, "nope"), "has no step \"nope\""),
        (path(&run, "after"), "has no output: it ended skipped"),
        (path(&broken, "bad"), "has no output: it ended failed"),
    ];
    for (p, says) in cases {
        let (status, ct, _, text) = fetch(client(), p.clone()).await;
        assert_eq!(status, 404, "{p}: {text}");
        assert_eq!(ct, "application/problem+json", "{p}");
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["type"], "/docs/problems#not-found", "{p}: {text}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{p}: {text} should say {says:?}"
        );
    }
    let r = client()
        .delete(s.host.url(&path(&run, "echo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_carry_one_steps_output_into_the_next() {
    let s = stack(1);
    s.agent(
        "scanner",
        SCAN,
        json!({"output_schema": {"type": "object", "required": ["findings"]}}),
    )
    .await;
    s.agent("notifier", ECHO, json!({})).await;
    s.workflow(json!({"name": "scan-notify", "steps": [
        {"id": "scan", "agent": "scanner"},
        {"id": "notify", "agent": "notifier", "needs": ["scan"], "input": {
            "findings": "{{ steps.scan.output.findings }}",
            "summary": "{{ steps.scan.output.findings.0.severity }} finding in {{ trigger.payload.repo }}"}}
    ]}))
    .await;
    let run = s.trigger("scan-notify", json!({"repo": "acme/app"})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let out = &step(&v, "notify")["output"];
    assert_eq!(out["findings"][0]["file"], "src/app.py");
    assert_eq!(out["summary"], "high finding in acme/app");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diamond_joins_once_after_both_branches() {
    let s = stack(2);
    s.agent("scanner", SCAN, json!({})).await;
    s.agent(
        "compliance",
        r#"cat >/dev/null; sleep 0.3; echo '{"ok":true}'"#,
        json!({}),
    )
    .await;
    s.agent(
        "reviewer",
        r#"cat >/dev/null; echo '{"comments":2}'"#,
        json!({}),
    )
    .await;
    s.agent("notifier", ECHO, json!({})).await;
    s.workflow(json!({"name": "diamond", "steps": [
        {"id": "scan", "agent": "scanner"},
        {"id": "compliance", "agent": "compliance", "needs": ["scan"]},
        {"id": "review", "agent": "reviewer", "needs": ["scan"]},
        {"id": "notify", "agent": "notifier", "needs": ["compliance", "review"],
         "input": {"ok": "{{ steps.compliance.output.ok }}", "comments": "{{ steps.review.output.comments }}"}}
    ]}))
    .await;
    let run = s.trigger("diamond", json!({})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let notify = step(&v, "notify");
    assert_eq!(
        notify["attempts"].as_array().unwrap().len(),
        1,
        "notify starts once"
    );
    assert_eq!(notify["output"], json!({"ok": true, "comments": 2}));
    let started = notify["attempts"][0]["dispatched_at_ms"].as_u64().unwrap();
    for branch in ["compliance", "review"] {
        let done = step(&v, branch)["attempts"][0]["finished_at_ms"]
            .as_u64()
            .unwrap();
        assert!(started >= done, "notify started before {branch} finished");
    }
    let dispatched: Vec<&Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step_dispatched" && e["step"] == "notify")
        .collect();
    assert_eq!(dispatched.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_step_is_retried_with_backoff_then_fails_the_run() {
    let s = stack(1);
    s.agent(
        "flaky",
        "cat >/dev/null; echo boom >&2; exit 1",
        json!({
            "retry": {"max_attempts": 3, "initial_backoff_ms": 300, "max_backoff_ms": 1000}
        }),
    )
    .await;
    s.agent("notifier", ECHO, json!({})).await;
    s.workflow(json!({"name": "flaky", "steps": [
        {"id": "try", "agent": "flaky"},
        {"id": "after", "agent": "notifier", "needs": ["try"]}
    ]}))
    .await;
    let run = s.trigger("flaky", json!({})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    assert!(
        v["error"].as_str().unwrap().contains("after 3 attempts"),
        "{v:#}"
    );
    let st = step(&v, "try");
    let attempts = st["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for a in attempts {
        assert_eq!(a["error"]["kind"], "agent_failed");
        assert_eq!(a["exit_code"], 1);
        assert!(a["logs_tail"].as_str().unwrap().contains("boom"));
    }
    // Each retry waited at least half its exponential delay (300, 600 ms).
    for (i, min_wait) in [(1, 150), (2, 300)] {
        let prev = attempts[i - 1]["finished_at_ms"].as_u64().unwrap();
        let next = attempts[i]["dispatched_at_ms"].as_u64().unwrap();
        assert!(
            next - prev >= min_wait,
            "retry {i} came after {} ms",
            next - prev
        );
    }
    assert_eq!(step(&v, "after")["status"], "skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_step_is_timed_out() {
    let s = stack(1);
    s.agent("hang", "sleep 60", json!({"timeout_secs": 1}))
        .await;
    s.workflow(json!({"name": "hang", "steps": [{"id": "hang", "agent": "hang"}]}))
        .await;
    let run = s.trigger("hang", json!({})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    let a = &step(&v, "hang")["attempts"][0];
    assert_eq!(a["error"]["kind"], "timeout", "{v:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_job_leads_to_a_retry_on_another_worker() {
    let mut s = stack(2);
    s.agent(
        "slow",
        r#"cat >/dev/null; sleep 2; echo '{"done":true}'"#,
        json!({
            "retry": {"max_attempts": 3, "initial_backoff_ms": 100, "max_backoff_ms": 200}
        }),
    )
    .await;
    s.workflow(json!({"name": "slow", "steps": [{"id": "slow", "agent": "slow"}]}))
        .await;
    let run = s.trigger("slow", json!({})).await;
    let v = s
        .wait(&run, 20, |v| {
            step(v, "slow")["attempts"][0]["worker"].is_string()
        })
        .await;
    let first = step(&v, "slow")["attempts"][0]["worker"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim = s.workers.iter().position(|w| w.base == first).unwrap();
    s.workers[victim].kill();

    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let attempts = step(&v, "slow")["attempts"].as_array().unwrap().clone();
    assert!(attempts.len() >= 2, "{v:#}");
    assert_eq!(attempts[0]["error"]["kind"], "timeout");
    assert!(
        attempts[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lease expired")
    );
    let last = attempts.last().unwrap();
    assert_ne!(
        last["worker"],
        first.as_str(),
        "the retry ran on the other worker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_run_stops_its_running_job() {
    let s = stack(1);
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    s.agent(
        "sleeper",
        &format!("echo $$ > {}; exec sleep 60", pid_file.display()),
        json!({"timeout_secs": 120}),
    )
    .await;
    s.workflow(json!({"name": "sleepy", "steps": [{"id": "sleep", "agent": "sleeper"}]}))
        .await;
    let run = s.trigger("sleepy", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(&pid_file)
            && let Ok(p) = p.trim().parse::<u32>()
        {
            break p;
        }
        assert!(Instant::now() < deadline, "the agent never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alive = |pid: u32| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    assert!(alive(pid));

    let (status, v) = s
        .post(
            &format!("/api/runs/{run}/cancel"),
            &json!({"reason": "test"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the agent process {pid} still runs after cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = s.finished(&run, 5).await;
    assert_eq!(step(&v, "sleep")["status"], "cancelled");
    // Cancelling again is refused and changes nothing.
    let (status, v) = s.post(&format!("/api/runs/{run}/cancel"), &json!({})).await;
    assert_eq!(status, 409, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_runs_at_once_all_succeed() {
    let s = stack(2);
    s.agent("scanner", SCAN, json!({})).await;
    s.agent("notifier", ECHO, json!({})).await;
    s.workflow(json!({"name": "fan", "steps": [
        {"id": "a", "agent": "scanner"},
        {"id": "b", "agent": "notifier", "needs": ["a"], "input": {"f": "{{ steps.a.output.findings }}"}},
        {"id": "c", "agent": "notifier", "needs": ["a"], "input": {"n": "{{ trigger.payload.n }}"}},
        {"id": "d", "agent": "notifier", "needs": ["b", "c"], "input": {"n": "{{ steps.c.output.n }}"}}
    ]}))
    .await;
    let triggers = (0..10).map(|n| {
        let c = client();
        let url = s.host.url("/trigger/fan");
        async move {
            let r = c.post(url).json(&json!({"n": n})).send().await.unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    });
    let runs: Vec<String> = futures_join(triggers).await;
    let mut unique = runs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10, "every trigger made its own run");
    for (n, run) in runs.iter().enumerate() {
        let v = s.finished(run, 60).await;
        assert_eq!(v["status"], "succeeded", "{v:#}");
        assert_eq!(step(&v, "d")["output"]["n"], n);
        // Each step ran once. A full pool may have refused a job first:
        // such attempts never ran and end as no_worker.
        for st in v["steps"].as_array().unwrap() {
            let attempts = st["attempts"].as_array().unwrap();
            let (last, refused) = attempts.split_last().unwrap();
            assert!(last["error"].is_null(), "{v:#}");
            assert!(
                refused.iter().all(|a| a["error"]["kind"] == "no_worker"),
                "{v:#}"
            );
        }
    }
}

async fn futures_join<F: Future<Output = T> + Send + 'static, T: Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn signed_result(job_id: &str, output: Value) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(&json!({
        "job_id": job_id, "worker": "test", "status": "succeeded", "output": output,
        "exit_code": 0, "started_at_ms": 1, "finished_at_ms": 2
    }))
    .unwrap();
    let token = sign::job_token(TEST_CALLBACK_SECRET, job_id);
    let sig = sign::sign(&token, &body);
    (body, sig)
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_duplicated_results_race_without_double_dispatch() {
    let s = stack(1);
    s.agent(
        "sleeper",
        "cat >/dev/null; exec sleep 60",
        json!({"timeout_secs": 120}),
    )
    .await;
    s.agent("notifier", ECHO, json!({})).await;
    s.workflow(json!({"name": "race", "steps": [
        {"id": "first", "agent": "sleeper"},
        {"id": "next", "agent": "notifier", "needs": ["first"], "input": {"got": "{{ steps.first.output.v }}"}}
    ]}))
    .await;
    let run = s.trigger("race", json!({})).await;
    let job = s.running_job(&run, "first").await;

    let sends = (0..50).map(|i| {
        let c = client();
        let url = s.host.url(&format!("/jobs/{job}/result"));
        let (body, sig) = signed_result(&job, json!({"v": i}));
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, sig)
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    });
    let statuses = futures_join(sends).await;
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((accepted, refused), (1, 49), "{statuses:?}");

    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let next = step(&v, "next");
    assert_eq!(
        next["attempts"].as_array().unwrap().len(),
        1,
        "next dispatched once"
    );
    assert_eq!(
        next["output"]["got"],
        step(&v, "first")["output"]["v"],
        "no lost update"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_clear_errors_and_change_nothing() {
    let s = stack(1);
    s.agent("scanner", SCAN, json!({})).await;
    s.agent(
        "strict",
        r#"cat >/dev/null; echo '{"unexpected":1}'"#,
        json!({
            "output_schema": {"type": "object", "required": ["findings"]},
            "retry": {"max_attempts": 3}
        }),
    )
    .await;
    let (_, before_wf) = s.get("/api/workflows").await;

    // A cycle.
    let (st, v) = s
        .post(
            "/api/workflows",
            &json!({"name": "loop", "steps": [
                {"id": "a", "agent": "scanner", "needs": ["b"]},
                {"id": "b", "agent": "scanner", "needs": ["a"]}
            ]}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["errors"][0]["pointer"], "/steps/0/needs");
    assert!(v["errors"][0]["detail"].as_str().unwrap().contains("cycle"));
    // An unknown agent and a template reading a non-ancestor.
    let (st, v) = s
        .post(
            "/api/workflows",
            &json!({"name": "bad", "steps": [
                {"id": "a", "agent": "ghost"},
                {"id": "b", "agent": "scanner", "input": {"x": "{{ steps.a.output }}"}}
            ]}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let pointers: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/steps/0/agent", "/steps/1/input/x"]);
    // Oversized bodies.
    for path in ["/api/workflows", "/trigger/anything"] {
        let ct = [("content-type", "application/json")];
        assert_eq!(
            spindle_tests::oversized_status(&s.host.base, "POST", path, &ct, 2 << 20),
            413,
            "{path}"
        );
    }
    // Unknown workflow.
    let (st, _) = s.post("/trigger/ghost", &json!({})).await;
    assert_eq!(st, 404);
    let (_, after_wf) = s.get("/api/workflows").await;
    assert_eq!(
        before_wf, after_wf,
        "rejected workflows left nothing behind"
    );
    let (_, runs) = s.get("/api/runs").await;
    assert_eq!(runs["runs"], json!([]), "rejected triggers left no run");

    // An output that breaks the agent's schema fails the step, unretried.
    s.workflow(json!({"name": "strict", "steps": [{"id": "s", "agent": "strict"}]}))
        .await;
    let run = s.trigger("strict", json!({})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "failed");
    let st = step(&v, "s");
    assert_eq!(
        st["attempts"].as_array().unwrap().len(),
        1,
        "invalid output is not retried"
    );
    assert_eq!(st["error"]["kind"], "invalid_output");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap()
            .contains("findings"),
        "{st:#}"
    );
    assert_eq!(
        st["output"],
        Value::Null,
        "the invalid output is not stored"
    );

    // Wrong and missing callback signatures; unknown jobs.
    let job = st["attempts"][0]["job_id"].as_str().unwrap().to_owned();
    let revision = v["revision"].clone();
    let (body, _) = signed_result(&job, json!({"findings": []}));
    let wrong = sign::sign(&sign::job_token("not-the-secret", &job), &body);
    for sig in [Some(wrong.as_str()), None, Some("sha256=00")] {
        let mut r = client()
            .post(s.host.url(&format!("/jobs/{job}/result")))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(sig) = sig {
            r = r.header(SIGNATURE_HEADER, sig);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let (body, sig) = signed_result(&job, json!({"findings": []}));
    let r = client()
        .post(s.host.url(&format!("/jobs/{job}/result")))
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a finished job's result is refused");
    let ghost = format!("{run}.nope.1");
    let (body, sig) = signed_result(&ghost, json!({}));
    let r = client()
        .post(s.host.url(&format!("/jobs/{ghost}/result")))
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, v) = s.get(&format!("/api/runs/{run}")).await;
    assert_eq!(v["revision"], revision, "refused callbacks changed nothing");

    // The tick wants its secret.
    for auth in [None, Some("Bearer wrong")] {
        let mut r = client().post(s.host.url("/internal/tick"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        assert_eq!(r.send().await.unwrap().status(), 401);
    }

    // An agent in use cannot be deleted.
    let r = client()
        .delete(s.host.url("/api/agents/strict"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(s.get("/api/agents/strict").await.0 == 200);
}

/// A worker that takes a job but answers the dispatch only after Spindle has
/// stopped waiting; it heartbeats from the start and reports the result
/// later, as a real worker behind a slow network would.
async fn slow_worker(answer_after_ms: u64) -> (String, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let app = axum::Router::new().route(
        "/jobs",
        axum::routing::post(move |axum::Json(job): axum::Json<spindle_core::job::Job>| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(act_on(job));
                tokio::time::sleep(Duration::from_millis(answer_after_ms)).await;
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn act_on(job: spindle_core::job::Job) {
    let c = client();
    let post = |what: &'static str, body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        c.post(format!("{}/{what}", job.callback_url))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sign::sign(&job.token, &bytes))
            .body(bytes)
            .send()
    };
    for _ in 0..8 {
        let r = post("heartbeat", json!({"job_id": job.job_id, "worker": "slow"}))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = post(
        "result",
        json!({"job_id": job.job_id, "worker": "slow", "status": "succeeded",
        "output": {"echo": job.input}, "exit_code": 0, "started_at_ms": 1, "finished_at_ms": 2}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_without_an_answer_stays_in_flight_and_is_not_sent_twice() {
    let (url, received) = slow_worker(1_500).await;
    let s = stack_full(&[], &[url], &[("SPIN_VARIABLE_DISPATCH_TIMEOUT_MS", "300")]);
    s.agent(
        "remote",
        "cat",
        json!({"retry": {"max_attempts": 3, "initial_backoff_ms": 100}}),
    )
    .await;
    s.workflow(
        json!({"name": "slow-net", "steps": [{"id": "a", "agent": "remote", "input": {"x": 1}}]}),
    )
    .await;
    let run = s.trigger("slow-net", json!({})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let st = step(&v, "a");
    assert_eq!(st["attempts"].as_array().unwrap().len(), 1, "{st:#}");
    assert_eq!(st["output"], json!({"echo": {"x": 1}}));
    assert_eq!(received.load(Ordering::SeqCst), 1, "the job was sent once");
    // Spindle stopped waiting for the answer: the worker is known from its
    // heartbeats, not from an accepted dispatch.
    assert_eq!(st["attempts"][0]["worker"], "slow");
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"job_accepted"), "{kinds:?}");
    assert!(kinds.contains(&"step_running"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_shutting_down_finishes_or_hands_back_its_jobs() {
    // The first worker gets SIGTERM with a job running that outlasts its
    // grace period: the job is handed back and runs again on the second.
    let mut s = stack_with(&[&["--shutdown-grace-secs", "1"], &[]]);
    s.agent(
        "slow",
        "cat >/dev/null; sleep 4; echo '{\"done\":true}'",
        json!({
            "retry": {"max_attempts": 2, "initial_backoff_ms": 100, "max_backoff_ms": 200}
        }),
    )
    .await;
    s.workflow(json!({"name": "slow", "steps": [{"id": "a", "agent": "slow"}]}))
        .await;
    // Trigger until a job lands on the first worker.
    let target = s.workers[0].base.clone();
    let mut run = String::new();
    for _ in 0..20 {
        let r = s.trigger("slow", json!({})).await;
        let v = s
            .wait(&r, 20, |v| {
                step(v, "a")["attempts"][0]["worker"].is_string()
            })
            .await;
        if step(&v, "a")["attempts"][0]["worker"] == target.as_str() {
            run = r;
            break;
        }
    }
    assert!(!run.is_empty(), "no job landed on the first worker");
    let status = s.workers[0]
        .terminate(20)
        .expect("the worker exits after handing back");
    assert!(status.success(), "{status:?}");
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    let attempts = step(&v, "a")["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{v:#}");
    assert_eq!(attempts[0]["error"]["kind"], "executor_failed");
    assert!(
        attempts[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down")
    );
    assert_ne!(attempts[1]["worker"], target.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_deadline_times_out_and_stops_its_jobs() {
    let s = stack_with(&[&[]]);
    s.agent(
        "slow",
        "cat >/dev/null; sleep 30",
        json!({"timeout_secs": 60}),
    )
    .await;
    s.workflow(
        json!({"name": "late", "deadline_secs": 2, "steps": [{"id": "a", "agent": "slow"}]}),
    )
    .await;
    let run = s.trigger("late", json!({})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "timed_out", "{v:#}");
    assert_eq!(step(&v, "a")["status"], "cancelled");
    assert!(v["error"].as_str().unwrap().contains("deadline"));
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_over_the_cap_fail_the_step_cleanly() {
    let s = stack_full(&[&[]], &[], &[("SPIN_VARIABLE_MAX_OUTPUT_BYTES", "1000")]);
    // The worker enforces the cap it is given...
    s.agent(
        "chatty",
        r#"cat >/dev/null; printf '{"blob":"'; head -c 5000 /dev/zero | tr '\0' x; printf '"}'"#,
        json!({"retry": {"max_attempts": 3}}),
    )
    .await;
    s.workflow(json!({"name": "chatty", "steps": [{"id": "a", "agent": "chatty"}]}))
        .await;
    let run = s.trigger("chatty", json!({})).await;
    let v = s.finished(&run, 30).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    let st = step(&v, "a");
    assert_eq!(st["error"]["kind"], "output_too_large", "{st:#}");
    assert_eq!(st["attempts"].as_array().unwrap().len(), 1, "not retried");

    // ...and Spindle checks it again, whatever a worker claims.
    s.agent(
        "sleeper",
        "cat >/dev/null; exec sleep 60",
        json!({"timeout_secs": 120}),
    )
    .await;
    s.workflow(json!({"name": "liar", "steps": [{"id": "a", "agent": "sleeper"}]}))
        .await;
    let run = s.trigger("liar", json!({})).await;
    let job = s.running_job(&run, "a").await;
    let url = s.host.url(&format!("/jobs/{job}/result"));

    // A body naming another job is refused, naming the field.
    let (body, sig) = signed_result(&job, json!({}));
    let mut wrong: Value = serde_json::from_slice(&body).unwrap();
    wrong["job_id"] = json!(format!("{run}.other.1"));
    let wrong = serde_json::to_vec(&wrong).unwrap();
    let token = sign::job_token(TEST_CALLBACK_SECRET, &job);
    let r = client()
        .post(&url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, sign::sign(&token, &wrong))
        .body(wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["errors"][0]["pointer"], "/job_id");
    drop((body, sig));

    let (body, sig) = signed_result(&job, json!({"blob": "y".repeat(2000)}));
    let r = client()
        .post(&url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["step_status"], "failed");
    assert!(
        outcome["rejected_output"]
            .as_str()
            .unwrap()
            .contains("limit is 1000")
    );
    let v = s.finished(&run, 10).await;
    assert_eq!(step(&v, "a")["error"]["kind"], "output_too_large");
    assert_eq!(step(&v, "a")["output"], Value::Null);
}

/// A worker that refuses every job.
async fn refusing_worker() -> (String, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    let app = axum::Router::new().route(
        "/jobs",
        // It reads the job before refusing it, as spindle-worker does; a
        // server that answers before reading leaves the send ambiguous, and
        // Spindle rightly treats that as in flight.
        axum::routing::post(move |_job: axum::body::Bytes| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_worker_is_skipped_and_jobs_spread_over_the_rest() {
    let (refuser, asked) = refusing_worker().await;
    let s = stack_full(&[&[], &[]], std::slice::from_ref(&refuser), &[]);
    s.agent("echo", ECHO, json!({})).await;
    s.workflow(json!({"name": "spread", "steps": [{"id": "a", "agent": "echo"}]}))
        .await;
    // A job's first worker follows from a hash of its id: with one
    // refuser in three, 36 runs miss it with a chance of (2/3)^36 (under
    // one in two million); 12 missed it about once in 130 CI runs.
    let mut runs = Vec::new();
    for _ in 0..36 {
        runs.push(s.trigger("spread", json!({})).await);
    }
    let mut by_worker = std::collections::BTreeMap::new();
    for run in &runs {
        let v = s.finished(run, 30).await;
        assert_eq!(v["status"], "succeeded", "{v:#}");
        let attempts = step(&v, "a")["attempts"].as_array().unwrap().clone();
        assert_eq!(
            attempts.len(),
            1,
            "a refusal is not a failed attempt: {v:#}"
        );
        // Named by the URL it was sent to, or by the worker's own name
        // (`worker@<host:port>`) when its result was recorded first.
        let worker = attempts[0]["worker"].as_str().unwrap();
        let worker = match worker.strip_prefix("worker@") {
            Some(addr) => format!("http://{addr}"),
            None => worker.to_owned(),
        };
        assert_ne!(worker, refuser);
        *by_worker.entry(worker).or_insert(0) += 1;
    }
    assert_eq!(
        by_worker.len(),
        2,
        "jobs spread over both real workers: {by_worker:?}"
    );
    assert!(
        asked.load(Ordering::SeqCst) > 0,
        "the refusing worker was tried"
    );
}
