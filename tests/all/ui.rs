//! The dashboard in a real browser: Debian's headless Chromium, driven by
//! `playwright-core` (`tests/ui/dashboard.test.mjs`), against the real host
//! serving `spin.toml` with a real worker running the reference agents.
//!
//! This side sets the scene through the API (keys of each role, the
//! reference agents, the diamond `pr-checks` workflow and a run of it, three
//! runs parked on a patcher approval, a schedule, a webhook delivery), runs
//! the browser script, and then checks through the API that what the user
//! did in the browser happened: the approved run finished, the rejected one
//! failed, the viewer's forced decision changed nothing. The script keeps a
//! screenshot of every page under `target/ui-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use spindle_tests::{client, client_with, root, target_dir};

use crate::agents::{register_reference_agents, webhook};
use crate::engine::{Stack, stack_with, step};

/// A patch of `config/app.env` that the patcher applies (medium risk: it
/// asks for an approval).
const PATCH: &str = "diff --git a/config/app.env b/config/app.env\n--- a/config/app.env\n+++ b/config/app.env\n@@ -1 +1,2 @@\n HOST=example.org\n+PORT=8080\n";

/// A patch that pipes a download into a shell: rules match, with reasons.
const RISKY: &str = "diff --git a/scripts/setup.sh b/scripts/setup.sh\n--- a/scripts/setup.sh\n+++ b/scripts/setup.sh\n@@ -1 +1,2 @@\n #!/bin/sh\n+curl -fsSL https://get.example.com/install.sh | sh\n";

/// What the pr-checks diamond scans: one high finding.
const DIFF: &str = "diff --git a/config/app.env b/config/app.env\n--- a/config/app.env\n+++ b/config/app.env\n@@ -1,1 +1,3 @@\n HOST=example.org\n+password = \"hunter2hunter2\"\n+console.log(\"debug\") // TODO remove\n";

/// Where the browser script and its packages live.
fn ui_dir() -> PathBuf {
    root().join("tests/ui")
}

/// The browser and the driver, or why the test cannot run: `scripts/test`
/// installs both, so on CI this never fails.
fn browser_tools() -> Result<(), String> {
    let chromium = std::env::var("SPINDLE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium}: `scripts/test` installs Debian's chromium package"
        ));
    }
    if !ui_dir().join("node_modules/playwright-core").exists() {
        return Err("tests/ui has no node_modules: `scripts/test` runs `npm ci` there".into());
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("no `node` on PATH: `scripts/test` installs Node.js".into()),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn key(s: &Stack, name: &str, role: &str) -> String {
    let (st, v) = s
        .post("/api/keys", &json!({"name": name, "role": role}))
        .await;
    assert_eq!(st, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

/// Triggers `fix` (scan, then patch) as `who` and waits for a step to park
/// on an approval (the patch; with a risky diff, already the scan that
/// reads it); the run id.
async fn parked(s: &Stack, who: &str, diff: &str) -> String {
    let resp = client_with(Some(who))
        .post(s.host.url("/trigger/fix"))
        .json(&json!({"diff": diff}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    let run = v["run_id"].as_str().unwrap().to_owned();
    s.wait(&run, 30, |v| v["status"] == "waiting_approval")
        .await;
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_runs_and_decides_approvals_in_a_real_browser() {
    if let Err(why) = browser_tools() {
        panic!("the browser test cannot run: {why}");
    }
    let s = stack_with(&[&[]]);
    register_reference_agents(&s).await;
    let wf: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/pr-checks.json")).unwrap(),
    )
    .unwrap();
    s.workflow(wf).await;
    s.workflow(json!({"name": "fix", "description": "Scan a patch, then apply it (behind approval).",
        "steps": [
        {"id": "scan", "agent": "security-scanner", "input": {"diff": "{{ trigger.payload.diff }}"}},
        {"id": "patch", "agent": "patcher", "needs": ["scan"],
         "input": {"patch": "{{ trigger.payload.diff }}",
                   "files": [{"path": "config/app.env", "content": "HOST=example.org\n"}]}}
    ]}))
    .await;
    let alice = key(&s, "alice", "approver").await;
    let vic = key(&s, "vic", "viewer").await;
    let carl = key(&s, "carl", "operator").await;

    // A finished diamond: scan, then compliance and review, then notify.
    let (hook, _seen) = webhook().await;
    let diamond = s
        .trigger(
            "pr-checks",
            json!({"diff": DIFF, "repository": "acme/app", "webhook_url": hook}),
        )
        .await;
    let v = s.finished(&diamond, 60).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");

    // A run with every shape the DAG draws apart: a fan-out of three, a
    // step skipped by its condition, a failure that runs the compensation
    // of the step before it and the workflow's on-failure step.
    s.agent(
        "echo",
        r#"in=$(cat); printf '{"seen":%s}' "$in""#,
        json!({}),
    )
    .await;
    s.agent(
        "fail",
        "cat >/dev/null; echo 'verification failed' >&2; exit 1",
        json!({}),
    )
    .await;
    s.workflow(json!({"name": "shapes", "on_failure": ["alert"], "steps": [
        {"id": "each", "agent": "echo", "for_each": "trigger.payload.files", "input": {"path": "{{ item }}"}},
        {"id": "optional", "agent": "echo", "needs": ["each"], "when": "trigger.payload.extra == true"},
        {"id": "apply", "agent": "echo", "needs": ["each"], "compensate": "undo"},
        {"id": "verify", "agent": "fail", "needs": ["apply"]},
        {"id": "undo", "agent": "echo"},
        {"id": "alert", "agent": "echo"}
    ]}))
    .await;
    let shapes = s
        .trigger(
            "shapes",
            json!({"files": ["a.rs", "b.rs", "c.rs"], "extra": false}),
        )
        .await;
    let v = s.finished(&shapes, 60).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    assert_eq!(step(&v, "undo")["status"], "succeeded", "{v:#}");
    assert_eq!(step(&v, "alert")["status"], "succeeded", "{v:#}");
    assert_eq!(step(&v, "optional")["status"], "skipped", "{v:#}");

    // Three runs parked on the patcher's approval, started by an operator:
    // one to approve, a risky one to reject, one for the viewer to look at,
    // one for the operator to cancel.
    let approve = parked(&s, &carl, PATCH).await;
    let reject = parked(&s, &carl, RISKY).await;
    let viewer_run = parked(&s, &carl, PATCH).await;
    let cancel = parked(&s, &carl, PATCH).await;

    // Something for the overview's other tables.
    let (st, v) = s
        .post(
            "/api/schedules",
            &json!({"name": "nightly", "workflow": "fix", "cron": "0 3 * * *", "timezone": "UTC",
                    "payload": {"diff": PATCH}, "paused": false}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let resp = client()
        .post(s.host.url("/webhooks/nosuch"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let shots = target_dir().join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::task::spawn_blocking({
        let envs = [
            ("SPINDLE_URL", s.host.url("")),
            ("APPROVER_KEY", alice.clone()),
            ("VIEWER_KEY", vic.clone()),
            ("OPERATOR_KEY", carl.clone()),
            ("DIAMOND_RUN", diamond.clone()),
            ("SHAPES_RUN", shapes.clone()),
            ("APPROVE_RUN", approve.clone()),
            ("REJECT_RUN", reject.clone()),
            ("VIEWER_RUN", viewer_run.clone()),
            ("CANCEL_RUN", cancel.clone()),
            ("SCREENSHOT_DIR", shots.display().to_string()),
        ];
        move || {
            Command::new("node")
                .arg("dashboard.test.mjs")
                .current_dir(ui_dir())
                .envs(envs)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}\nthe host's last log lines:\n{}",
        out.status,
        tail(&s.host.stderr(), 30)
    );

    // What the browser did, seen through the API.
    let v = s.finished(&approve, 30).await;
    assert_eq!(v["status"], "succeeded", "{v:#}");
    assert_eq!(step(&v, "patch")["status"], "succeeded");
    let v = s.finished(&reject, 30).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    let (st, list) = s
        .get(&format!("/approvals?run={reject}&status=rejected"))
        .await;
    assert_eq!(st, 200);
    let decision = &list["approvals"][0]["decisions"][0];
    assert_eq!(decision["by"], "key:alice", "{list:#}");
    assert_eq!(decision["comment"], "not this release", "{list:#}");
    let v = s.finished(&cancel, 30).await;
    assert_eq!(v["status"], "cancelled", "{v:#}");
    // The viewer's forced decision was refused and changed nothing.
    let (_, v) = s.get(&format!("/api/runs/{viewer_run}")).await;
    assert_eq!(v["status"], "waiting_approval", "{v:#}");

    for page in [
        "login",
        "runs",
        "run",
        "run-step-output",
        "run-shapes",
        "approvals",
        "approved-run",
        "overview",
        "workflow",
        "viewer-approvals",
        "cancelled-run",
        "runs-phone",
        "run-phone",
        "approvals-phone",
    ] {
        let shot = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot)
            .unwrap_or_else(|e| panic!("{}: {e}", shot.display()))
            .len();
        assert!(size > 2_000, "{} is only {size} bytes", shot.display());
    }
}

/// The dashboard's own answers, without a browser: the root sends a browser
/// to `/ui/`, every view's address is the page, the page and its assets
/// carry a strict policy and revalidate by entity tag, only the current
/// fingerprint is cached for long, and nothing but GET and HEAD is taken.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_with_a_strict_policy_and_revalidates() {
    let host = spindle_tests::HostBuilder::new(root().join("spin.toml")).start();
    let c = spindle_tests::anon_client();
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };

    let r = c.get(host.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(header(&r, "location"), "/ui/");

    let page = c.get(host.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let csp = header(&page, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let etag = header(&page, "etag");
    let body = page.text().await.unwrap();
    assert!(!body.contains("<script>"), "no inline script");
    assert!(!body.contains("style="), "no inline style");

    // Every view's address is the same page.
    for view in ["/ui/runs", "/ui/runs/r1-000001", "/ui/registry/workflows/x"] {
        let r = c.get(host.url(view)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{view}");
        assert_eq!(r.text().await.unwrap(), body, "{view}");
    }
    let r = c
        .get(host.url("/ui/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Each asset the page names, at its fingerprint: kept for a year.
    let mut named = 0;
    for (i, _) in body.match_indices("/ui/assets/") {
        let end = i + body[i..].find('"').unwrap();
        let url = &body[i..end];
        named += 1;
        let r = c.get(host.url(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(
            header(&r, "cache-control"),
            "public, max-age=31536000, immutable",
            "{url}"
        );
        let etag = header(&r, "etag");
        let r = c
            .get(host.url(url))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{url}");
        // Without the fingerprint (or with a stale one): revalidated.
        let bare = url.split('?').next().unwrap();
        let r = c
            .get(host.url(&format!("{bare}?v=stale")))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "cache-control"), "no-cache", "{bare}");
        assert!(
            header(&r, "content-security-policy").contains("sandbox"),
            "{bare}"
        );
    }
    assert_eq!(named, 4, "the icon twice, the style sheet and the script");

    let r = c.get(host.url("/ui/assets/nope.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    for (method, path) in [("POST", "/ui/"), ("DELETE", "/ui/runs"), ("POST", "/")] {
        let r = c
            .request(method.parse().unwrap(), host.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(header(&r, "allow"), "GET, HEAD", "{method} {path}");
    }
}
