//! Webhook ingest: signed 1 KiB GitHub `push` deliveries per second, each
//! verified, deduplicated, matched to a subscription and turned into a run,
//! through the host (the `webhook` component) and through a native axum
//! server that runs the same core and engine code on the same SQLite store
//! implementation (`spindle_host::kv::SqliteKv`, same settings). Both are
//! measured on an empty store and again after many deliveries, so the
//! figures show the host's overhead and whether the cost stays flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use spindle_core::source::Source;
use spindle_core::webhook::Verification;
use spindle_engine::{Config, Engine, Sent, Store, StoreError, Workers};
use spindle_host::kv::SqliteKv;
use spindle_tests::{HostBuilder, free_port, root};

use crate::trigger::{Rate, instant_worker};

/// The webhook secret both servers verify with.
const SECRET: &str = "bench-webhook-secret-0123456789abcdef";

/// A signed push body of about 1 KiB for delivery `n`.
fn delivery(n: usize) -> (Vec<u8>, String, String) {
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": format!("{n:040x}"),
        "repository": {"full_name": "spindle/bench", "default_branch": "main"},
        "pusher": {"name": "bench", "email": "bench@example.invalid"},
        "sender": {"login": "bench"},
        "head_commit": {"id": format!("{n:040x}"), "message": "x".repeat(700)},
    });
    let body = serde_json::to_vec(&body).unwrap();
    let sig = Verification::github().sign(SECRET.as_bytes(), &body, 0);
    (body, sig, format!("bench-delivery-{n}"))
}

/// Sends deliveries `from..from + n` to `url` from `clients` clients.
async fn deliver(url: &str, from: usize, n: usize, clients: usize) -> Rate {
    let next = Arc::new(AtomicUsize::new(from));
    let end = from + n;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, next) = (url.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break errors;
                }
                let (body, sig, id) = delivery(i);
                let ok = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", id)
                    .header("x-hub-signature-256", sig)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 202);
                errors += usize::from(!ok);
            }
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

/// Measures `measure` deliveries, fills to `fill`, measures again.
async fn measure_fill(
    url: &str,
    measure: usize,
    fill: usize,
    clients: usize,
) -> anyhow::Result<(Rate, Rate)> {
    deliver(url, 0, 50, clients).await;
    let first = deliver(url, 50, measure, clients).await;
    anyhow::ensure!(
        first.errors == 0,
        "{} deliveries failed on {url}",
        first.errors
    );
    let mut made = 50 + measure;
    while made < fill {
        let batch = (fill - made).min(2_000);
        let r = deliver(url, made, batch, clients).await;
        made += batch;
        eprintln!("  {made} deliveries stored ({:.0}/s)", r.per_sec());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = deliver(url, made, measure, clients).await;
    Ok((first, last))
}

/// The workflow, agent and subscription every delivery matches.
fn registry() -> [(&'static str, serde_json::Value); 3] {
    [
        (
            "/api/agents",
            serde_json::json!({"name": "bench-agent", "command": ["true"]}),
        ),
        (
            "/api/workflows",
            serde_json::json!({"name": "bench", "steps": [{"id": "one", "agent": "bench-agent"}]}),
        ),
        (
            "/api/subscriptions",
            serde_json::json!({"name": "bench-push", "source": "github", "events": ["push"],
                "filters": [{"field": "ref", "glob": "refs/heads/*"},
                            {"field": "repository.full_name", "equals": "spindle/bench"}],
                "workflow": "bench"}),
        ),
    ]
}

/// Host and native figures: (host empty, host full, native empty, native full).
pub async fn bench(measure: usize, fill: usize, clients: usize) -> anyhow::Result<[Rate; 4]> {
    let (worker, _results) = instant_worker().await?;

    let port = free_port();
    let state = tempfile::tempdir()?;
    let host = HostBuilder::new(root().join("spin.toml"))
        .release()
        .port(port)
        .state_dir(state.path())
        .env("SPIN_VARIABLE_WORKERS", &worker)
        .env("SPIN_VARIABLE_WORKER_HOSTS", "http://127.0.0.1:*")
        .env("SPIN_VARIABLE_GITHUB_WEBHOOK_SECRET", SECRET)
        .env("SPIN_VARIABLE_RATE_LIMIT_WEBHOOK", "0")
        .env(
            "SPIN_VARIABLE_CALLBACK_URL",
            &format!("http://127.0.0.1:{port}"),
        )
        .start();
    let http = spindle_tests::client();
    for (path, body) in registry() {
        let r = http.post(host.url(path)).json(&body).send().await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    }
    eprintln!("host: measuring {measure} deliveries, filling to {fill} ({clients} clients)...");
    let (host_first, host_last) =
        measure_fill(&host.url("/webhooks/github"), measure, fill, clients).await?;
    drop(host);

    let native_state = tempfile::tempdir()?;
    let native = native_server(native_state.path(), &worker).await?;
    eprintln!("native: measuring {measure} deliveries, filling to {fill}...");
    let (native_first, native_last) =
        measure_fill(&format!("{native}/webhooks/github"), measure, fill, clients).await?;
    Ok([host_first, host_last, native_first, native_last])
}

/// The engine's store on the host's SQLite implementation.
#[derive(Clone)]
struct NativeStore(SqliteKv);

fn kv_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Store(e.to_string())
}

impl Store for NativeStore {
    type Cas = (String, Option<Vec<u8>>);

    async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get("default", key).await.map_err(kv_err)
    }
    async fn set_raw(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0
            .set("default", key, value.to_vec())
            .await
            .map_err(kv_err)
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete("default", key).await.map_err(kv_err)
    }
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        self.0
            .increment("default", key, delta)
            .await
            .map_err(kv_err)
    }
    async fn counter(&self, key: &str) -> Result<i64, StoreError> {
        match self.0.get("default", key).await.map_err(kv_err)? {
            None => Ok(0),
            Some(b) => spindle_engine::store::decode_counter(key, &b),
        }
    }
    async fn watch(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), StoreError> {
        let current = self.get_raw(key).await?;
        Ok(((key.to_owned(), current.clone()), current))
    }
    async fn swap(&self, cas: Self::Cas, value: &[u8]) -> Result<bool, StoreError> {
        self.0
            .compare_and_swap("default", &cas.0, cas.1, value.to_vec())
            .await
            .map_err(kv_err)
    }
}

/// Jobs go out over reqwest, as the host's outbound HTTP sends them.
#[derive(Clone)]
struct NativeWorkers(reqwest::Client);

impl Workers for NativeWorkers {
    async fn post(
        &self,
        url: &str,
        body: bytes::Bytes,
        headers: &[(&str, String)],
        timeout_ms: u64,
    ) -> Sent {
        let mut req = self
            .0
            .post(url)
            .timeout(Duration::from_millis(timeout_ms))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(r) => Sent::Answered(r.status().as_u16()),
            Err(e) if e.is_connect() => Sent::NotReached(e.to_string()),
            Err(e) => Sent::Unknown(e.to_string()),
        }
    }
}

#[derive(Clone)]
struct NativeHost;

impl spindle_engine::Host for NativeHost {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
    async fn sleep_ms(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    fn audit(&self, _line: &str) {}
    fn log(&self, _line: &str) {}
}

type NativeEngine = Engine<NativeStore, NativeWorkers, NativeHost>;

/// Starts the native server; its base URL.
async fn native_server(dir: &std::path::Path, worker: &str) -> anyhow::Result<String> {
    let kv = SqliteKv::open(&dir.join("spindle.db"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let config = Config::from_vars(|name| match name {
        "workers" => Some(worker.to_owned()),
        "callback_url" => Some(base.clone()),
        "callback_secret" => Some("bench-callback-secret-0123456789abcdef".into()),
        "worker_token" => Some("bench-worker-token-0123456789abcdef".into()),
        // spin.toml's defaults.
        "lease_ms" => Some("30000".into()),
        "max_output_bytes" => Some("1048576".into()),
        "dispatch_timeout_ms" => Some("5000".into()),
        "retention_days" => Some("30".into()),
        "breaker_failures" => Some("5".into()),
        "breaker_window_secs" => Some("120".into()),
        "breaker_open_secs" => Some("60".into()),
        "breaker_close_successes" => Some("3".into()),
        _ => None,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Arc::new(Engine {
        store: NativeStore(kv),
        workers: NativeWorkers(reqwest::Client::new()),
        host: NativeHost,
        config,
    });
    register(&engine).await?;
    // The host ticks every second (lease timers, retention, expiry); so
    // does the baseline, or it would skip work the host does.
    let ticker = engine.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = ticker.tick().await;
        }
    });
    let source = Arc::new(
        Source::builtin("github", vec![SECRET.to_owned()], None)
            .ok_or_else(|| anyhow::anyhow!("no github source"))?,
    );
    let results = engine.clone();
    let app = axum::Router::new()
        .route(
            "/webhooks/github",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (engine, source) = (engine.clone(), source.clone());
                async move { ingest(&engine, &source, &headers, &body).await }
            }),
        )
        // The worker's results come back here, as they do to the host's
        // `jobs` component, so both servers do the same work per run.
        .route(
            "/jobs/{job_id}/result",
            axum::routing::post(
                move |axum::extract::Path(job_id): axum::extract::Path<String>,
                      headers: HeaderMap,
                      body: Bytes| {
                    let engine = results.clone();
                    async move {
                        let sig = headers
                            .get(spindle_core::job::SIGNATURE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        match engine.job_result(&job_id, &body, sig.as_deref()).await {
                            Ok(_) => StatusCode::OK,
                            Err(_) => StatusCode::CONFLICT,
                        }
                    }
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Ok(base)
}

async fn register(engine: &NativeEngine) -> anyhow::Result<()> {
    let now = spindle_engine::Host::now_ms(&engine.host);
    let reg = spindle_engine::registry::Registry {
        store: &engine.store,
        now_ms: now,
    };
    let [(_, agent), (_, workflow), (_, sub)] = registry();
    let agent: spindle_core::AgentSpec = serde_json::from_value(agent)?;
    let agent = agent.into_agent(now).map_err(|e| anyhow::anyhow!("{e}"))?;
    spindle_engine::StoreExt::set(
        &engine.store,
        &spindle_core::keys::agent(&agent.name),
        &agent,
    )
    .await?;
    reg.agent_created(&agent.name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    spindle_engine::StoreExt::edit_index(
        &engine.store,
        spindle_core::keys::AGENT_INDEX,
        agent.name.as_str(),
        true,
    )
    .await?;
    reg.create_workflow(serde_json::from_value(workflow)?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    reg.put_subscription(serde_json::from_value(sub)?, true)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The webhook component's path, natively: verify, parse, describe,
/// ingest.
async fn ingest(
    engine: &NativeEngine,
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, String) {
    let header = |h: &str| -> Option<String> {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let secrets: Vec<&[u8]> = source.secrets.iter().map(|s| s.as_bytes()).collect();
    let now = spindle_engine::Host::now_ms(&engine.host);
    if let Err(r) = source.verification.verify(&header, body, &secrets, now) {
        return (StatusCode::UNAUTHORIZED, r.to_string());
    }
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (StatusCode::BAD_REQUEST, "not JSON".into());
    };
    let ev = match source.describe(&header, payload, body) {
        Ok(ev) => ev,
        Err(m) => return (StatusCode::BAD_REQUEST, m.detail),
    };
    let digest = spindle_core::sign::digest(body);
    match engine.ingest(ev, &digest, 7 * 24 * 3_600_000).await {
        Ok(spindle_engine::webhooks::Ingested::New(rec)) => (
            StatusCode::ACCEPTED,
            serde_json::to_string(&rec.starts).unwrap_or_default(),
        ),
        Ok(spindle_engine::webhooks::Ingested::Duplicate(rec)) => (
            StatusCode::OK,
            serde_json::to_string(&rec.starts).unwrap_or_default(),
        ),
        Ok(spindle_engine::webhooks::Ingested::Replay { .. }) => {
            (StatusCode::CONFLICT, "replay".into())
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
