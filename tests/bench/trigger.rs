//! The trigger path: runs started per second through the host, with one
//! worker that accepts every job at once and posts its (signed) result
//! straight back, measured over the first runs of an empty store and again
//! after many runs exist. The ratio says whether the cost of a run stays
//! flat in the number of runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use spindle_core::job::{Job, JobResult, JobStatus, SIGNATURE_HEADER};
use spindle_core::sign;
use spindle_tests::{HostBuilder, free_port, root};

/// What one measurement found.
pub struct Rate {
    pub runs: usize,
    pub secs: f64,
    pub errors: usize,
}

impl Rate {
    pub fn per_sec(&self) -> f64 {
        self.runs as f64 / self.secs
    }
}

/// A worker that takes every job and reports it done at once.
pub async fn instant_worker() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let results = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let done = results.clone();
    let app = axum::Router::new().route(
        "/jobs",
        axum::routing::post(move |body: Bytes| {
            let http = http.clone();
            let done = done.clone();
            async move {
                let Ok(job) = serde_json::from_slice::<Job>(&body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                tokio::spawn(async move {
                    let result = JobResult {
                        job_id: job.job_id.clone(),
                        worker: "bench".into(),
                        status: JobStatus::Succeeded,
                        output: Some(serde_json::json!({"ok": true})),
                        error: None,
                        exit_code: Some(0),
                        logs_tail: String::new(),
                        started_at_ms: 0,
                        finished_at_ms: 0,
                    };
                    let body = serde_json::to_vec(&result).unwrap();
                    let sig = sign::sign(&job.token, &body);
                    let sent = http
                        .post(format!("{}/result", job.callback_url))
                        .header("content-type", "application/json")
                        .header(SIGNATURE_HEADER, sig)
                        .body(body)
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Ok((url, results))
}

/// Triggers `n` runs of `url` from `clients` concurrent clients.
async fn trigger(url: &str, n: usize, clients: usize) -> Rate {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.to_owned();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            // As the test admin: the bench measures an authenticated
            // trigger, with its rate-limit count, as clients send it.
            let client = spindle_tests::client();
            let mut errors = 0;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let ok = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"bench": true}"#)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 202);
                errors += usize::from(!ok);
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    Rate {
        runs: n,
        secs: started.elapsed().as_secs_f64(),
        errors,
    }
}

/// Measures `measure` runs on an empty store, fills it to `fill` runs, and
/// measures `measure` runs again.
pub async fn bench(measure: usize, fill: usize, clients: usize) -> anyhow::Result<(Rate, Rate)> {
    let (worker, results) = instant_worker().await?;
    let port = free_port();
    let state = tempfile::tempdir()?;
    let host = HostBuilder::new(root().join("spin.toml"))
        .release()
        .port(port)
        .state_dir(state.path())
        .env("SPIN_VARIABLE_WORKERS", &worker)
        .env("SPIN_VARIABLE_WORKER_HOSTS", "http://127.0.0.1:*")
        .env(
            "SPIN_VARIABLE_CALLBACK_URL",
            &format!("http://127.0.0.1:{port}"),
        )
        .start();
    let http = spindle_tests::client();
    for (path, body) in [
        (
            "/api/agents",
            serde_json::json!({"name": "bench-agent", "command": ["true"]}),
        ),
        (
            "/api/workflows",
            serde_json::json!({"name": "bench", "steps": [{"id": "one", "agent": "bench-agent"}]}),
        ),
    ] {
        let r = http.post(host.url(path)).json(&body).send().await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    }
    let url = host.url("/trigger/bench");
    // Warm up instances and connections.
    trigger(&url, 50, clients).await;
    eprintln!("measuring the first {measure} runs ({clients} clients)...");
    let first = trigger(&url, measure, clients).await;
    let mut made = 50 + measure;
    let fill_started = Instant::now();
    while made < fill {
        let batch = (fill - made).min(2_000);
        let r = trigger(&url, batch, clients).await;
        made += batch;
        eprintln!(
            "  {made} runs stored ({:.0} runs/s, {} results in)",
            r.per_sec(),
            results.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "filled to {made} runs in {:.0} s; measuring {measure} more...",
        fill_started.elapsed().as_secs_f64()
    );
    // Let results of the fill settle so both measurements start alike.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = trigger(&url, measure, clients).await;
    drop(host);
    Ok((first, last))
}
