//! Registry and run API behaviour: versioning, deletes, idempotency, listing.

use serde_json::{Value, json};
use spindle_tests::client;

use crate::engine::{stack_with, step};

#[tokio::test(flavor = "multi_thread")]
async fn a_run_keeps_the_agent_version_it_started_with() {
    let s = stack_with(&[&[]]);
    s.agent(
        "slow",
        "cat >/dev/null; sleep 1; echo '{\"v\":1}'",
        json!({}),
    )
    .await;
    s.workflow(json!({"name": "wf", "steps": [{"id": "a", "agent": "slow"}]}))
        .await;
    let first = s.trigger("wf", json!({})).await;

    // Update the agent while the first run is in flight.
    let spec = json!({"name": "slow", "command": ["sh", "-c", "cat >/dev/null; echo '{\"v\":2}'"],
        "retry": {"max_attempts": 1}});
    let r = client()
        .put(s.host.url("/api/agents/slow"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(
        updated["created_at_ms"],
        s.get("/api/agents/slow").await.1["created_at_ms"]
    );

    let second = s.trigger("wf", json!({})).await;
    let v1 = s.finished(&first, 30).await;
    let v2 = s.finished(&second, 30).await;
    assert_eq!(
        (
            step(&v1, "a")["agent_version"].clone(),
            step(&v1, "a")["output"]["v"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(
        (
            step(&v2, "a")["agent_version"].clone(),
            step(&v2, "a")["output"]["v"].clone()
        ),
        (json!(2), json!(2))
    );

    // Renaming through PUT is refused and changes nothing.
    let r = client()
        .put(s.host.url("/api/agents/slow"))
        .json(&json!({"name": "other", "command": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(s.get("/api/agents/slow").await.1["version"], 2);
    let r = client()
        .put(s.host.url("/api/agents/ghost"))
        .json(&json!({"name": "ghost", "command": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_are_versioned_and_agents_free_once_unused() {
    let s = stack_with(&[]);
    s.agent("a1", "cat", json!({})).await;
    s.agent("a2", "cat", json!({})).await;
    s.workflow(json!({"name": "wf", "steps": [{"id": "x", "agent": "a1"}]}))
        .await;
    let r = client()
        .put(s.host.url("/api/workflows/wf"))
        .json(&json!({"name": "wf", "steps": [{"id": "y", "agent": "a2"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let wf: Value = r.json().await.unwrap();
    assert_eq!(wf["version"], 2);
    assert_eq!(wf["steps"][0]["agent"], "a2");

    // a1 is no longer used, a2 is.
    assert_eq!(
        client()
            .delete(s.host.url("/api/agents/a1"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let r = client()
        .delete(s.host.url("/api/agents/a2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("wf"), "{p}");

    // A workflow may not use a deleted agent.
    let (st, v) = s
        .post(
            "/api/workflows",
            &json!({"name": "wf2", "steps": [{"id": "x", "agent": "a1"}]}),
        )
        .await;
    assert_eq!(st, 400, "{v}");

    // Deleting the workflow frees a2.
    assert_eq!(
        client()
            .delete(s.host.url("/api/workflows/wf"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(s.get("/api/workflows/wf").await.0, 404);
    assert_eq!(s.get("/api/workflows").await.1["workflows"], json!([]));
    assert_eq!(
        client()
            .delete(s.host.url("/api/agents/a2"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(s.get("/api/agents").await.1["agents"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_same_run() {
    let s = stack_with(&[&[]]);
    s.agent("echo", "cat", json!({})).await;
    s.workflow(json!({"name": "wf", "steps": [{"id": "a", "agent": "echo"}]}))
        .await;
    let send = |key: &'static str| {
        let c = client();
        let url = s.host.url("/trigger/wf");
        async move {
            let r = c
                .post(url)
                .header("idempotency-key", key)
                .json(&json!({"k": key}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()
        }
    };
    // Five at once with one key: one run, created once.
    let (a, b, c, d, e) = tokio::join!(send("k1"), send("k1"), send("k1"), send("k1"), send("k1"));
    let answers = [a, b, c, d, e];
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|a| a["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:#?}");
    assert_eq!(answers.iter().filter(|a| a["created"] == true).count(), 1);
    let other = send("k2").await;
    assert_ne!(other["run_id"], answers[0]["run_id"]);
    let (_, list) = s.get("/api/runs?workflow=wf").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 2);

    let r = client()
        .post(s.host.url("/trigger/wf"))
        .header("idempotency-key", "")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_list_newest_first_with_filters_and_pages() {
    let s = stack_with(&[&[]]);
    s.agent("echo", "cat", json!({})).await;
    s.agent("fail", "exit 1", json!({})).await;
    s.workflow(json!({"name": "good", "steps": [{"id": "a", "agent": "echo"}]}))
        .await;
    s.workflow(json!({"name": "bad", "steps": [{"id": "a", "agent": "fail"}]}))
        .await;
    let mut good = Vec::new();
    for _ in 0..5 {
        good.push(s.trigger("good", json!({})).await);
    }
    let bad = s.trigger("bad", json!({})).await;
    for r in good.iter().chain([&bad]) {
        s.finished(r, 30).await;
    }

    // Pages of two, newest first, by cursor.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let q = if cursor.is_empty() {
            "/api/runs?limit=2".to_owned()
        } else {
            format!("/api/runs?limit=2&cursor={cursor}")
        };
        let (st, page) = s.get(&q).await;
        assert_eq!(st, 200, "{page}");
        for r in page["runs"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let mut expected: Vec<String> = good.iter().chain([&bad]).cloned().collect();
    expected.reverse();
    assert_eq!(seen, expected);

    let (_, failed) = s.get("/api/runs?status=failed").await;
    assert_eq!(failed["runs"].as_array().unwrap().len(), 1);
    assert_eq!(failed["runs"][0]["id"], bad.as_str());
    let (_, good_ok) = s.get("/api/runs?workflow=good&status=succeeded").await;
    assert_eq!(good_ok["runs"].as_array().unwrap().len(), 5);
    let (_, none) = s.get("/api/runs?workflow=bad&status=succeeded").await;
    assert_eq!(none["runs"], json!([]));
    let created = s.get(&format!("/api/runs/{}", good[2])).await.1["created_at_ms"]
        .as_u64()
        .unwrap();
    let (_, since) = s
        .get(&format!("/api/runs?since={created}&workflow=good"))
        .await;
    assert_eq!(since["runs"].as_array().unwrap().len(), 3);

    for (q, field) in [
        ("status=sideways", "status"),
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("colour=red", "colour"),
        ("cursor=a.b", "cursor"),
    ] {
        let (st, p) = s.get(&format!("/api/runs?{q}")).await;
        assert_eq!(st, 400, "{q}");
        assert_eq!(p["errors"][0]["pointer"], format!("/query/{field}"), "{q}");
    }
    assert_eq!(s.get("/api/runs/r123-nope").await.0, 404);
}
