//! `spindle export` and `spindle import` with the real host: a backup taken
//! while the app runs, restored into an empty state directory, serves the
//! same API answers; a store with data is not overwritten unless asked, and
//! a damaged backup writes nothing.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use spindle_tests::{HostBuilder, Worker, client, client_with, free_port, root, spindle_bin};

fn spindle(args: &[&str]) -> (bool, String) {
    let out = Command::new(spindle_bin())
        .args(args)
        .env_remove("SPINDLE_STATE_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn host_on(state: &Path, workers: &str, port: u16) -> spindle_tests::Host {
    HostBuilder::new(root().join("spin.toml"))
        .port(port)
        .state_dir(state)
        .env("SPIN_VARIABLE_WORKERS", workers)
        .env(
            "SPIN_VARIABLE_CALLBACK_URL",
            &format!("http://127.0.0.1:{port}"),
        )
        .arg("--tick-interval-ms")
        .arg("200")
        .start()
}

async fn get(host: &spindle_tests::Host, path: &str) -> Value {
    let resp = client().get(host.url(path)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.json().await.unwrap()
}

/// The answers an operator would compare after a restore.
async fn answers(host: &spindle_tests::Host, run: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/api/agents".to_owned(),
        "/api/workflows".to_owned(),
        "/api/runs".to_owned(),
        format!("/api/runs/{run}"),
        "/api/keys".to_owned(),
        "/api/policies/approvals".to_owned(),
    ] {
        out.push(get(host, &path).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_serving_restores_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let file = dir.path().join("spindle.backup");
    let file_s = file.to_str().unwrap();
    let worker = Worker::start(&[]);

    let port = free_port();
    let host = host_on(&a, &worker.base, port);
    let post = |path: &str, body: Value| {
        let url = host.url(path);
        async move {
            let resp = client().post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (st, v) = post(
        "/api/agents",
        json!({"name": "echo", "command": ["cat"], "retry": {"max_attempts": 1}}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = post(
        "/api/workflows",
        json!({"name": "one", "steps": [{"id": "echo", "agent": "echo", "input": {"n": "{{ trigger.payload.n }}"}}]}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, key) = post("/api/keys", json!({"name": "vic", "role": "viewer"})).await;
    assert_eq!(st, 201, "{key}");
    let viewer = key["key"].as_str().unwrap().to_owned();
    let (st, v) = post("/trigger/one", json!({"n": 7})).await;
    assert_eq!(st, 202, "{v}");
    let run = v["run_id"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        if get(&host, &format!("/api/runs/{run}")).await["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Taken while the app serves (and ticks).
    let (ok, err) = spindle(&["export", "--state-dir", a.to_str().unwrap(), "-o", file_s]);
    assert!(ok, "{err}");
    assert!(err.contains("exported"), "{err}");
    let before = answers(&host, &run).await;
    assert_eq!(before[3]["status"], "succeeded", "{:#}", before[3]);
    drop(host);

    let (ok, err) = spindle(&["import", file_s, "--state-dir", b.to_str().unwrap()]);
    assert!(ok, "{err}");
    // Again, onto the store it just filled: refused, unless asked.
    let (ok, err) = spindle(&["import", file_s, "--state-dir", b.to_str().unwrap()]);
    assert!(!ok && err.contains("--overwrite"), "{err}");
    let (ok, err) = spindle(&[
        "import",
        file_s,
        "--state-dir",
        b.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(ok && err.contains("replacing"), "{err}");

    let port = free_port();
    let restored = host_on(&b, &worker.base, port);
    let after = answers(&restored, &run).await;
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(x, y);
    }
    // Keys come along: the viewer's key works on the restored app.
    let who: Value = client_with(Some(&viewer))
        .get(restored.url("/api/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["name"], "vic", "{who}");
    // And it goes on from where it was: a new run gets a new id.
    let resp = client()
        .post(restored.url("/trigger/one"))
        .json(&json!({"n": 8}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_ne!(v["run_id"], run.as_str());

    // A damaged backup writes nothing.
    let text = std::fs::read_to_string(&file).unwrap();
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, text.replacen("echo", "ecko", 1)).unwrap();
    let c = dir.path().join("c");
    let (ok, err) = spindle(&[
        "import",
        damaged.to_str().unwrap(),
        "--state-dir",
        c.to_str().unwrap(),
    ]);
    assert!(!ok, "a damaged backup was imported");
    assert!(err.contains("not imported"), "{err}");
    if c.join("sqlite_key_value.db").exists() {
        let (ok, err) = spindle(&["export", "--state-dir", c.to_str().unwrap(), "-o", "-"]);
        assert!(ok && err.contains("exported 0 entries"), "{err}");
    }
    let (ok, err) = spindle(&[
        "export",
        "--state-dir",
        c.join("none").to_str().unwrap(),
        "-o",
        "-",
    ]);
    assert!(!ok && err.contains("no key-value store"), "{err}");
}
