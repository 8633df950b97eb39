//! Health and metrics.
//!
//! - `GET /health/live`: the component runs at all (public).
//! - `GET /health/ready`: the store answers (public). Workers are checked
//!   and reported, but an unreachable pool does not make the app unready
//!   unless `ready_requires_worker` says so: webhooks, triggers and
//!   approvals are still taken while workers are down (runs wait for them),
//!   and taking the app out of a load balancer for it would lose them.
//! - `GET /health`: every dependency with its latency, each worker's
//!   circuit breaker, the version (viewer).
//! - `GET /metrics`: the Prometheus exposition (viewer, or the scrape token
//!   in `metrics_token`), a bounded number of store reads (see
//!   [`spindle_engine::metrics::gather`]).
//! - `GET /api/metrics/activity?days=N` and `GET /api/metrics/summary`:
//!   runs, events and errors per day, today's most frequent events
//!   (viewer).
//! - `GET /api/metrics/webhooks`: each webhook source's deliveries,
//!   accepted and rejected, by outcome, and its last delivery (viewer).

use std::time::Instant;

use spin_sdk::http::{FullBody, Method, Request};
use spin_sdk::http_service;
use spindle_auth::{Class, Role};
use spindle_core::metrics as m;
use spindle_spin::http::{Problem, Response, bad_query, json};
use spindle_spin::store::{Kv, Store, StoreExt};

/// How long a worker's `/health` may take before it counts as unreachable.
const WORKER_PROBE_MS: u64 = 1_000;

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("metrics", req, route).await
}

async fn route(req: Request) -> Result<Response, Problem> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(Problem::method_not_allowed("GET, HEAD"));
    }
    match req.uri().path() {
        "/health/live" => Ok(json(200, &serde_json::json!({"status": "ok"}))),
        "/health/ready" => ready().await,
        "/health" => {
            let kv = Kv::open("default").await.map_err(Problem::store)?;
            spindle_spin::auth::authorize(&req, &kv, Role::Viewer, Class::Read).await?;
            detail(kv).await
        }
        "/metrics" => {
            let kv = Kv::open("default").await.map_err(Problem::store)?;
            if !scrape_token_matches(&req).await? {
                spindle_spin::auth::authorize(&req, &kv, Role::Viewer, Class::Read).await?;
            }
            scrape(kv).await
        }
        "/api/metrics/activity" => {
            let kv = Kv::open("default").await.map_err(Problem::store)?;
            spindle_spin::auth::authorize(&req, &kv, Role::Viewer, Class::Read).await?;
            let days = days_param(req.uri().query().unwrap_or(""))?;
            let days = spindle_engine::metrics::activity(&kv, spindle_spin::now_ms(), days)
                .await
                .map_err(Problem::store)?;
            Ok(json(200, &serde_json::json!({ "days": days })))
        }
        "/api/metrics/summary" => {
            let kv = Kv::open("default").await.map_err(Problem::store)?;
            spindle_spin::auth::authorize(&req, &kv, Role::Viewer, Class::Read).await?;
            let summary = spindle_engine::metrics::summary(&kv, spindle_spin::now_ms())
                .await
                .map_err(Problem::store)?;
            Ok(json(200, &summary))
        }
        "/api/metrics/webhooks" => {
            let kv = Kv::open("default").await.map_err(Problem::store)?;
            spindle_spin::auth::authorize(&req, &kv, Role::Viewer, Class::Read).await?;
            let sources = spindle_engine::metrics::webhook_sources(&kv)
                .await
                .map_err(Problem::store)?;
            Ok(json(200, &serde_json::json!({ "sources": sources })))
        }
        other => Err(Problem::not_found(format!("nothing is served at {other}"))),
    }
}

/// `days` (1 to 90, default 7); any other parameter is refused.
fn days_param(query: &str) -> Result<u64, Problem> {
    let mut days = 7;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "days" => {
                days = v
                    .parse()
                    .ok()
                    .filter(|d| (1..=m::MAX_ACTIVITY_DAYS).contains(d))
                    .ok_or_else(|| {
                        bad_query(
                            "days",
                            format!("must be a whole number from 1 to {}", m::MAX_ACTIVITY_DAYS),
                        )
                    })?;
            }
            other => return Err(bad_query(other, "unknown parameter; use days")),
        }
    }
    Ok(days)
}

/// Whether the request carries the scrape token (`Authorization: Bearer`),
/// compared in constant time. An unset token lets nobody in this way; a
/// weak one is refused as a configuration error rather than trusted.
async fn scrape_token_matches(req: &Request) -> Result<bool, Problem> {
    let token = spin_sdk::variables::get("metrics_token")
        .await
        .unwrap_or_default();
    if token.is_empty() {
        return Ok(false);
    }
    if let Err(e) = spindle_core::secret::check_secret(&token) {
        spindle_spin::context::log(&format!("configuration: metrics_token {e}"));
        return Err(Problem::of(
            spindle_core::problem::ProblemKind::Configuration,
            "the scrape token is not usable; see the component's log",
        ));
    }
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    Ok(presented.is_some_and(|p| spindle_core::sign::secrets_equal(p, &token)))
}

/// The store answers a read (and how long it took).
async fn store_check(kv: &Kv) -> Result<u64, String> {
    let started = Instant::now();
    match kv.get_raw("health:probe").await {
        Ok(_) => Ok(started.elapsed().as_millis() as u64),
        Err(e) => Err(e.to_string()),
    }
}

/// How long a round of worker probes is reused: readiness and scrapes
/// come every few seconds from machines (and `/health/ready` from anyone),
/// and must not each send a request to every worker.
const PROBE_CACHE_MS: u64 = 5_000;

/// Where the last round of probes is kept.
const PROBE_CACHE: &str = "health:workers";

/// One worker's answer to `GET /health` (its URL without credentials).
#[derive(serde::Serialize, serde::Deserialize)]
struct Probe {
    url: String,
    reachable: bool,
    latency_ms: u64,
    error: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Probes {
    at_ms: u64,
    workers: Vec<String>,
    probes: Vec<Probe>,
}

async fn probe(worker: &str) -> Probe {
    let started = Instant::now();
    let result = async {
        let req = http::Request::get(format!("{worker}/health"))
            .body(FullBody::new(bytes::Bytes::new()))
            .map_err(|_| "invalid worker URL".to_owned())?;
        let resp = spindle_spin::engine::send_within(req, WORKER_PROBE_MS)
            .await
            .map_err(|e| format!("{e:?}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status().as_u16()))
        }
    }
    .await;
    Probe {
        url: m::redact_url(worker),
        reachable: result.is_ok(),
        latency_ms: started.elapsed().as_millis() as u64,
        error: result.err(),
    }
}

/// Every worker's probe, asked at once, or the round kept from the last
/// [`PROBE_CACHE_MS`] (for the same pool).
async fn probe_all(kv: &Kv, workers: &[String]) -> Vec<Probe> {
    let now = spindle_spin::now_ms();
    if let Ok(Some(kept)) = kv.get::<Probes>(PROBE_CACHE).await
        && kept.workers == workers
        && now.saturating_sub(kept.at_ms) < PROBE_CACHE_MS
    {
        return kept.probes;
    }
    let probes = futures::future::join_all(workers.iter().map(|w| probe(w))).await;
    let round = Probes {
        at_ms: now,
        workers: workers.to_vec(),
        probes,
    };
    if let Err(e) = kv.set(PROBE_CACHE, &round).await {
        spindle_spin::context::log(&format!("health: keeping the probes failed: {e}"));
    }
    round.probes
}

/// The worker pool and its breakers' settings (no secret).
async fn pool() -> Result<spindle_engine::Pool, Problem> {
    spindle_spin::engine::load_pool()
        .await
        .map_err(Problem::from)
}

/// Why the workers did not answer, in kinds and counts only
/// (`connection refused: 2`): which host said what is for `/health`.
fn why_not(probes: &[Probe]) -> String {
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in probes.iter().filter(|p| !p.reachable) {
        let e = p.error.as_deref().unwrap_or_default();
        let kind = if e.contains("ConnectionRefused") {
            "connection refused"
        } else if e.contains("Timeout") {
            "timed out"
        } else if e.contains("Dns") || e.contains("DestinationNotFound") {
            "name not resolved"
        } else if e.starts_with("answered ") {
            "answered an error"
        } else {
            "not reached"
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Readiness, for anyone: counts and kinds of failure, never which hosts
/// (that is in `/health`, for viewers, and in the log).
async fn ready() -> Result<Response, Problem> {
    let unavailable = |e: String| {
        spindle_spin::context::log(&format!("ready: the store does not answer: {e}"));
        json(
            503,
            &serde_json::json!({"status": "unavailable", "checks": {"store": "unavailable"}}),
        )
    };
    let kv = match Kv::open("default").await {
        Ok(kv) => kv,
        Err(e) => return Ok(unavailable(e.to_string())),
    };
    if let Err(e) = store_check(&kv).await {
        return Ok(unavailable(e));
    }
    let pool = pool().await?;
    let probes = probe_all(&kv, &pool.workers).await;
    let reachable = probes.iter().filter(|p| p.reachable).count();
    let workers = if reachable > 0 {
        format!("{reachable} of {} reachable", probes.len())
    } else {
        format!("none of {} reachable ({})", probes.len(), why_not(&probes))
    };
    let strict = spin_sdk::variables::get("ready_requires_worker")
        .await
        .is_ok_and(|v| v.trim() == "true");
    let (status, word) = match (reachable, strict) {
        (0, true) => (503, "unavailable"),
        (0, false) => (200, "degraded"),
        _ => (200, "ok"),
    };
    Ok(json(
        status,
        &serde_json::json!({"status": word, "checks": {"store": "ok", "workers": workers}}),
    ))
}

async fn detail(kv: Kv) -> Result<Response, Problem> {
    let store = store_check(&kv).await;
    let pool = pool().await?;
    let probes = probe_all(&kv, &pool.workers).await;
    let breakers = spindle_engine::breakers::views(&kv, &pool, spindle_spin::now_ms()).await;
    let reachable = probes.iter().filter(|p| p.reachable).count();
    let status = match (&store, reachable) {
        (Err(_), _) => "unavailable",
        (Ok(_), 0) => "degraded",
        _ => "ok",
    };
    let workers: Vec<serde_json::Value> = probes
        .iter()
        .zip(&breakers)
        .map(|(p, b)| {
            serde_json::json!({
                "url": p.url,
                "status": if p.reachable { "ok" } else { "unreachable" },
                "latency_ms": p.latency_ms,
                "error": p.error,
                "breaker": {
                    "state": b.state,
                    "since_ms": b.since_ms,
                    "opened_total": b.opened_total,
                    "recent_failures": b.recent_failures,
                    "error": b.error,
                },
            })
        })
        .collect();
    let store = match store {
        Ok(ms) => serde_json::json!({"status": "ok", "latency_ms": ms}),
        Err(e) => serde_json::json!({"status": "unavailable", "error": e}),
    };
    Ok(json(
        if status == "unavailable" { 503 } else { 200 },
        &serde_json::json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "checks": { "store": store, "workers": workers },
        }),
    ))
}

async fn scrape(kv: Kv) -> Result<Response, Problem> {
    let now = spindle_spin::now_ms();
    let (mut out, store_up) = match spindle_engine::metrics::gather(&kv, now).await {
        Ok(text) => (text, 1.0),
        Err(e) => {
            spindle_spin::context::log(&format!("metrics: the store failed: {e}"));
            (String::new(), 0.0)
        }
    };
    let pool = pool().await?;
    let probes = probe_all(&kv, &pool.workers).await;
    let breakers = spindle_engine::breakers::views(&kv, &pool, now).await;
    m::render_gauge(
        &mut out,
        "spindle_breaker_state",
        "A worker's circuit breaker: 0 closed, 1 half-open, 2 open.",
        &["worker"],
        &breakers
            .iter()
            .map(|b| {
                let v = match b.state {
                    spindle_core::breaker::BreakerState::Closed => 0.0,
                    spindle_core::breaker::BreakerState::HalfOpen => 1.0,
                    spindle_core::breaker::BreakerState::Open => 2.0,
                };
                (vec![m::redact_url(&b.worker)], v)
            })
            .collect::<Vec<_>>(),
    );
    m::render_computed(
        &mut out,
        m::Kind::Counter,
        "spindle_breaker_opened_total",
        "Times a worker's circuit breaker opened.",
        &["worker"],
        &breakers
            .iter()
            .map(|b| (vec![m::redact_url(&b.worker)], b.opened_total as f64))
            .collect::<Vec<_>>(),
    );
    m::render_gauge(
        &mut out,
        "spindle_worker_up",
        "Whether the worker answered GET /health at scrape time.",
        &["worker"],
        &probes
            .iter()
            .map(|p| (vec![p.url.clone()], f64::from(u8::from(p.reachable))))
            .collect::<Vec<_>>(),
    );
    m::render_gauge(
        &mut out,
        "spindle_store_up",
        "Whether the key-value store answered the scrape's reads.",
        &[],
        &[(vec![], store_up)],
    );
    m::render_gauge(
        &mut out,
        "spindle_build_info",
        "Spindle's version.",
        &["version"],
        &[(vec![env!("CARGO_PKG_VERSION").to_owned()], 1.0)],
    );
    http::Response::builder()
        .status(200)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(FullBody::new(bytes::Bytes::from(out)))
        .map_err(|e| Problem::internal(format!("building the answer: {e}")))
}
