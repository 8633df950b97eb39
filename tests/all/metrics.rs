//! Metrics, activity and health through the real host: known traffic
//! (webhooks, runs that succeed and fail, refused credentials) gives known
//! numbers in `GET /metrics`, the exposition passes `promtool check
//! metrics`, and the scrape token, roles and health answers work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spindle_tests::{anon_client, client, client_with};

use crate::engine::stack_full;

/// A token Prometheus scrapes with (the `metrics_token` variable).
const SCRAPE_TOKEN: &str = "test-scrape-token-0123456789abcdefghijkl";

/// The samples of an exposition by `name{labels}`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn get(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

fn sum(s: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    s.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// `promtool check metrics` on a scrape: required where CI runs (the
/// test script installs Debian's `prometheus`), skipped with a note
/// elsewhere when promtool is missing.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is required under CI: {e}"
            );
            eprintln!("promtool not found ({e}): the exposition was not checked by it");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn known_traffic_gives_known_metrics_and_promtool_accepts_the_scrape() {
    let stack = stack_full(
        &[&[]],
        &[],
        &[("SPIN_VARIABLE_METRICS_TOKEN", SCRAPE_TOKEN)],
    );
    stack
        .agent("ok", "cat >/dev/null; echo '{}'", json!({}))
        .await;
    stack
        .agent("bad", "cat >/dev/null; exit 3", json!({}))
        .await;
    stack
        .workflow(json!({"name": "good", "steps": [{"id": "a", "agent": "ok"}]}))
        .await;
    stack
        .workflow(json!({"name": "broken", "steps": [{"id": "a", "agent": "bad"}]}))
        .await;
    let (m, k, w, f) = (4, 2, 3, 5);
    let mut runs = Vec::new();
    for _ in 0..m {
        runs.push(stack.trigger("good", json!({})).await);
    }
    for _ in 0..k {
        runs.push(stack.trigger("broken", json!({})).await);
    }
    for run in &runs {
        stack
            .wait(run, 60, |v| {
                v["status"] == "succeeded" || v["status"] == "failed"
            })
            .await;
    }
    // w webhooks GitHub would refuse: signed with the wrong secret.
    for i in 0..w {
        let r = anon_client()
            .post(stack.host.url("/webhooks/github"))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("d-{i}"))
            .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // f requests with a credential nobody issued.
    for _ in 0..f {
        let r = client_with(Some("spk_nobody_0123456789abcdef0123456789abcdef"))
            .get(stack.host.url("/api/runs"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }

    // The scrape token is enough; nothing else without a credential.
    let scrape = |token: Option<&'static str>| {
        let url = stack.host.url("/metrics");
        async move {
            let mut req = anon_client().get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, ctype, r.text().await.unwrap())
        }
    };
    assert_eq!(scrape(None).await.0, 401);
    assert_eq!(
        scrape(Some("not-the-token-0123456789abcdefghijklmno"))
            .await
            .0,
        401
    );
    let (status, ctype, text) = scrape(Some(SCRAPE_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        ctype.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_check(&text);
    let s = samples(&text);

    assert_eq!(
        get(&s, "spindle_runs_started_total{trigger=\"manual\"}"),
        (m + k) as f64
    );
    assert_eq!(
        get(&s, "spindle_runs_finished_total{status=\"succeeded\"}"),
        m as f64
    );
    assert_eq!(
        get(&s, "spindle_runs_finished_total{status=\"failed\"}"),
        k as f64
    );
    assert_eq!(
        get(
            &s,
            "spindle_run_duration_seconds_count{status=\"succeeded\"}"
        ),
        m as f64
    );
    assert_eq!(
        get(
            &s,
            "spindle_step_duration_seconds_count{agent=\"ok\",status=\"succeeded\"}"
        ),
        m as f64
    );
    assert_eq!(
        get(
            &s,
            "spindle_step_duration_seconds_count{agent=\"bad\",status=\"failed\"}"
        ),
        k as f64
    );
    let worker = &stack.workers[0].base;
    assert_eq!(
        get(
            &s,
            &format!("spindle_jobs_dispatched_total{{worker=\"{worker}\"}}")
        ),
        (m + k) as f64
    );
    assert_eq!(
        get(&s, &format!("spindle_worker_up{{worker=\"{worker}\"}}")),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "spindle_webhooks_received_total{source=\"github\",outcome=\"bad-signature\"}"
        ),
        w as f64
    );
    // The wrong scrape token was one more unknown credential.
    assert_eq!(
        get(&s, "spindle_auth_failures_total{reason=\"unknown\"}"),
        (f + 1) as f64
    );
    assert_eq!(
        get(&s, "spindle_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    // Every trigger answered 202 and was counted under its route template.
    assert_eq!(
        get(
            &s,
            "spindle_http_requests_total{component=\"trigger\",route=\"/trigger/{workflow}\",status=\"202\"}"
        ),
        (m + k) as f64
    );
    assert_eq!(
        get(
            &s,
            "spindle_http_requests_total{component=\"webhook\",route=\"/webhooks/{source}\",status=\"401\"}"
        ),
        w as f64
    );
    assert_eq!(get(&s, "spindle_store_up"), 1.0);
    assert_eq!(get(&s, "spindle_build_info{version=\"0.1.0\"}"), 1.0);
    // The host's tick runs every 200 ms here.
    assert!(get(&s, "spindle_tick_last_run_timestamp_seconds") > 1.7e9);
    // Health probes and scrapes are not counted.
    assert_eq!(
        sum(&s, "spindle_http_requests_total{component=\"metrics\""),
        0.0
    );

    // Activity and summary (viewer).
    let (status, activity) = stack.get("/api/metrics/activity?days=3").await;
    assert_eq!(status, 200, "{activity}");
    let days = activity["days"].as_array().unwrap();
    assert_eq!(days.len(), 3);
    let today = &days[2];
    assert_eq!(today["runs"], json!(m + k));
    assert!(today["errors"].as_u64().unwrap() >= k as u64, "{today}");
    let (status, summary) = stack.get("/api/metrics/summary").await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["runs"], json!(m + k));
    assert_eq!(summary["top_events_examined"], today["events"], "{summary}");
    let top: Vec<&Value> = summary["top_events"].as_array().unwrap().iter().collect();
    assert!(top.len() <= 10 && !top.is_empty());
    let started = top.iter().find(|e| e["type"] == "run_started").unwrap();
    assert_eq!(started["count"], json!(m + k));
    for bad in ["days=0", "days=91", "days=x", "weeks=2"] {
        let (status, p) = stack.get(&format!("/api/metrics/activity?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {p}");
        assert!(
            p["errors"][0]["pointer"]
                .as_str()
                .unwrap()
                .starts_with("/query/"),
            "{p}"
        );
    }
    let r = anon_client()
        .get(stack.host.url("/api/metrics/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_the_store_and_each_worker() {
    let dead = format!("http://127.0.0.1:{}", spindle_tests::free_port());
    let stack = stack_full(&[&[]], std::slice::from_ref(&dead), &[]);
    let live = anon_client()
        .get(stack.host.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready: Value = anon_client()
        .get(stack.host.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(ready["checks"]["workers"], "1 of 2 reachable", "{ready}");

    assert_eq!(
        anon_client()
            .get(stack.host.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "the detail names internal hosts: viewers only"
    );
    let detail: Value = client()
        .get(stack.host.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "ok", "{detail}");
    assert_eq!(detail["version"], "0.1.0");
    assert_eq!(detail["checks"]["store"]["status"], "ok");
    let workers = detail["checks"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0]["url"], stack.workers[0].base.as_str());
    assert_eq!(workers[0]["status"], "ok");
    assert_eq!(workers[1]["url"], dead.as_str());
    assert_eq!(workers[1]["status"], "unreachable");
    assert!(
        workers[1]["error"].as_str().unwrap().contains("Connection"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_without_a_worker_is_degraded_or_failing_as_configured() {
    let dead = format!("http://127.0.0.1:{}", spindle_tests::free_port());
    for (strict, status, word) in [("false", 200, "degraded"), ("true", 503, "unavailable")] {
        let stack = stack_full(
            &[],
            std::slice::from_ref(&dead),
            &[("SPIN_VARIABLE_READY_REQUIRES_WORKER", strict)],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = loop {
            let r = anon_client()
                .get(stack.host.url("/health/ready"))
                .send()
                .await
                .unwrap();
            if r.status() != 200 || Instant::now() > deadline || strict == "false" {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(r.status(), status, "ready_requires_worker={strict}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], word, "{body}");
        assert!(
            !body.to_string().contains("127.0.0.1"),
            "public readiness names no host: {body}"
        );
        assert!(
            body["checks"]["workers"].as_str().unwrap()
                == "none of 1 reachable (connection refused: 1)",
            "{body}"
        );
    }
}

/// The `route` label's templates are the documented API's paths.
#[test]
fn the_route_label_names_every_documented_path_and_no_other() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(spindle_tests::root().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    let mut documented: Vec<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort();
    let mut labelled: Vec<&str> = spindle_core::metrics::ROUTES.to_vec();
    labelled.sort();
    assert_eq!(labelled, documented);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_trail_answers_by_run_actor_and_type() {
    let stack = stack_full(&[&[]], &[], &[]);
    stack
        .agent("ok", "cat >/dev/null; echo '{}'", json!({}))
        .await;
    stack
        .workflow(json!({"name": "good", "steps": [{"id": "a", "agent": "ok"}]}))
        .await;
    let r = client()
        .post(stack.host.url("/trigger/good"))
        .header("x-request-id", "audit-test-0001")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run: Value = r.json().await.unwrap();
    let run = run["run_id"].as_str().unwrap().to_owned();
    stack.wait(&run, 60, |v| v["status"] == "succeeded").await;
    let (_, me) = stack.get("/api/whoami").await;
    let actor = me["actor"].as_str().unwrap().to_owned();

    // The run's last entries are written just after the run document: wait
    // for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (status, page) = stack.get(&format!("/api/audit?run={run}")).await;
        assert_eq!(status, 200, "{page}");
        if page["entries"][0]["type"] == "run_succeeded" || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entries = page["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"run_created"), "oldest last: {kinds:?}");
    assert_eq!(
        kinds.first(),
        Some(&"run_succeeded"),
        "newest first: {kinds:?}"
    );
    let created = entries.last().unwrap();
    assert_eq!(created["request_id"], "audit-test-0001");
    assert_eq!(created["actor"], actor.as_str());
    assert_eq!(created["workflow"], "good");

    let (_, page) = stack.get("/api/audit?type=agent_created").await;
    let agents = page["entries"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{page}");
    assert_eq!(agents[0]["actor"], actor.as_str());
    assert!(
        agents[0]["summary"]
            .as_str()
            .unwrap()
            .contains("POST /api/agents")
    );

    let (_, page) = stack
        .get(&format!(
            "/api/audit?actor={}&limit=2",
            actor.replace(':', "%3A")
        ))
        .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, older) = stack
        .get(&format!(
            "/api/audit?actor={actor}&limit=200&cursor={cursor}"
        ))
        .await;
    assert!(!older["entries"].as_array().unwrap().is_empty());
    assert!(
        older["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["seq"].as_u64() < page["entries"][1]["seq"].as_u64())
    );

    for bad in [
        "since=x",
        "run=nope!",
        "limit=0",
        "cursor=0",
        "since=5&until=4",
        "who=me",
    ] {
        let (status, p) = stack.get(&format!("/api/audit?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {p}");
        assert!(
            p["errors"][0]["pointer"]
                .as_str()
                .unwrap()
                .starts_with("/query/"),
            "{p}"
        );
    }
}
