use serde_json::{Value, json};
use spindle_tests::{HostBuilder, client, root};

fn app() -> HostBuilder {
    HostBuilder::new(root().join("spin.toml"))
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_registration_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let host = app().state_dir(state.path()).start();
    let c = client();
    let agent = json!({
        "name": "security-scanner",
        "image": "localhost/spindle/security-scanner:1",
        "command": ["scan"],
        "risk_level": "auto",
        "input_schema": {"type": "object"},
        "timeout_secs": 120
    });
    let resp = c
        .post(host.url("/api/agents"))
        .json(&agent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/api/agents/security-scanner");
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["version"], 1);
    assert_eq!(created["memory_mb"], 512, "default applied");

    // A second create of the same name conflicts and changes nothing.
    let resp = c
        .post(host.url("/api/agents"))
        .json(&agent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    assert_eq!(host.stop().code(), Some(0), "clean exit on SIGTERM");

    let host = app().state_dir(state.path()).start();
    let got: Value = c
        .get(host.url("/api/agents/security-scanner"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, created, "read back after restart");
    let list: Value = c
        .get(host.url("/api/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["agents"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_agent_inputs_get_problem_documents_and_change_nothing() {
    let host = app().start();
    let c = client();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.post(host.url("/api/agents"))
                .json(&json!({"name": "Bad Name", "timeout_secs": 0})),
            400,
            "/name",
        ),
        (
            c.post(host.url("/api/agents"))
                .json(&json!({"name": "a", "command": ["x"], "memory_mb": 1})),
            400,
            "/memory_mb",
        ),
        (
            c.post(host.url("/api/agents"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "",
        ),
        (
            c.post(host.url("/api/agents"))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "",
        ),
        (
            c.post(host.url("/api/agents"))
                .header("content-type", "application/json")
                .body(vec![b' '; (1 << 20) + 1]),
            413,
            "",
        ),
        (c.get(host.url("/api/agents/Not_Valid")), 400, ""),
        (c.get(host.url("/api/agents/nobody")), 404, ""),
        (c.delete(host.url("/api/agents")), 405, ""),
    ];
    for (req, status, pointer) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["status"], status);
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
        if !pointer.is_empty() {
            let pointers: Vec<&str> = problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["pointer"].as_str().unwrap())
                .collect();
            assert!(pointers.contains(&pointer), "{pointer} in {problem}");
        }
    }
    let list: Value = c
        .get(host.url("/api/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["agents"], json!([]), "no bad input was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_and_reserved_routes() {
    let host = app().start();
    let c = client();
    let live = c.get(host.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready: Value = c
        .get(host.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["store"], "ok");
    assert_eq!(
        c.get(host.url("/.well-known/spin/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(host.url("/nowhere")).send().await.unwrap().status(),
        404
    );
    let resp = c.post(host.url("/approvals/y")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // An unsigned delivery is refused before anything else.
    let resp = c.post(host.url("/webhooks/github")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // Startup printed the routes, as Spin does.
    let out = host.stdout();
    assert!(out.contains("Available Routes:"), "{out}");
    assert!(
        out.contains("api: http://127.0.0.1:") && out.contains("/api (wildcard)"),
        "{out}"
    );
    // One structured log line per request.
    host.log_line(|l| {
        l["msg"] == "request"
            && l["status"] == 200
            && l["component"] == "metrics"
            && l["request_id"].is_string()
    });
}
