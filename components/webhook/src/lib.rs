//! `POST /webhooks/{source}`: signed deliveries from GitHub, Builder.io and
//! registered sources start the runs their subscriptions name.
//!
//! In this order, so nothing unverified is parsed and nothing is started
//! twice: find the source (a registered one, or `github` / `builder` with
//! secrets from Spin variables); read the body within the source's limit;
//! verify the signature (or shared token) in constant time against each
//! active secret; take the delivery from the source's rate budget; parse
//! the JSON and read the event type, action and delivery id; answer
//! GitHub's `ping`; then hand the event to the engine, which starts each
//! matching subscription's run once per delivery (its source and body: the
//! signature covers the body, not the delivery id) and remembers what it
//! started for the dedupe window. The answer never waits for a job.
//!
//! Every refusal is its own problem type and its own metric label
//! (`spindle_webhooks_received_total{source,outcome}`); failed verifications also
//! spend the client address's budget, so a flood of forgeries meets 429s.
//! Each delivery also rewrites its source's last-delivery document
//! (`GET /api/metrics/webhooks` shows it).

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spin_sdk::variables;
use spindle_auth::Class;
use spindle_core::keys;
use spindle_core::problem::ProblemKind;
use spindle_core::source::{DEFAULT_MAX_BODY, MAX_BODY_LIMIT, Source};
use spindle_core::webhook::Rejection;
use spindle_engine::webhooks::{DeliveryRecord, Ingested};
use spindle_spin::http::{Problem, Response, json, path_info, read_body};
use spindle_spin::store::{Kv, StoreExt};

/// How long a delivery is remembered when `webhook_dedupe_hours` is unset:
/// a week, longer than senders keep redelivering (GitHub offers
/// redelivery of the past three days).
const DEFAULT_DEDUPE_HOURS: u64 = 7 * 24;
/// Deliveries one source may send a minute when `rate_limit_webhook` is
/// unset.
const DEFAULT_SOURCE_RATE: u64 = 600;

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("webhook", req, route).await
}

/// The webhook settings, from the component's variables.
struct Settings {
    max_body: u64,
    dedupe_ms: u64,
    source_rate: u64,
    failed_rate: u64,
}

/// A variable's value, `None` when unset or blank. (Each call names its
/// variable literally: the manifest test checks every one is granted.)
fn set<E>(value: Result<String, E>) -> Option<String> {
    value
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn number(name: &str, value: Option<String>, default: u64, max: u64) -> Result<u64, Problem> {
    match value {
        None => Ok(default),
        Some(v) => v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| {
            spindle_spin::context::log(&format!(
                "configuration: variable {name} must be a whole number up to {max}"
            ));
            Problem::of(
                ProblemKind::Configuration,
                format!("variable {name} is not a whole number up to {max}"),
            )
        }),
    }
}

impl Settings {
    async fn load() -> Result<Self, Problem> {
        let hours = number(
            "webhook_dedupe_hours",
            set(variables::get("webhook_dedupe_hours").await),
            DEFAULT_DEDUPE_HOURS,
            24 * 365,
        )?;
        Ok(Settings {
            max_body: number(
                "webhook_max_body",
                set(variables::get("webhook_max_body").await),
                DEFAULT_MAX_BODY,
                MAX_BODY_LIMIT,
            )?,
            dedupe_ms: hours.max(1) * 3_600_000,
            source_rate: number(
                "rate_limit_webhook",
                set(variables::get("rate_limit_webhook").await),
                DEFAULT_SOURCE_RATE,
                u64::MAX,
            )?,
            failed_rate: number(
                "rate_limit_write",
                set(variables::get("rate_limit_write").await),
                120,
                u64::MAX,
            )?,
        })
    }
}

/// The source named `name`: registered, or built in with secrets from
/// variables.
async fn find_source(kv: &Kv, name: &str) -> Result<Option<Source>, Problem> {
    if let Some(s) = kv
        .get::<Source>(&keys::source(name))
        .await
        .map_err(Problem::store)?
    {
        return Ok(Some(s));
    }
    let source = match name {
        "github" => Source::builtin(
            "github",
            vec![
                set(variables::get("github_webhook_secret").await).unwrap_or_default(),
                set(variables::get("github_webhook_secret_previous").await).unwrap_or_default(),
            ],
            None,
        ),
        "builder" => Source::builtin(
            "builder",
            vec![
                set(variables::get("builder_webhook_secret").await).unwrap_or_default(),
                set(variables::get("builder_webhook_secret_previous").await).unwrap_or_default(),
            ],
            set(variables::get("builder_webhook_header").await).as_deref(),
        ),
        _ => None,
    };
    // Under Spin nothing checked these at start-up (Spindle's host does): a
    // weak secret would let anyone who guesses it start runs.
    if let Some(s) = &source {
        for secret in &s.secrets {
            if let Err(e) = spindle_core::secret::check_secret(secret) {
                spindle_spin::context::log(&format!(
                    "configuration: the {name} webhook secret variable {e}"
                ));
                return Err(Problem::of(
                    ProblemKind::Configuration,
                    "the webhook secret is not usable; see the component's log",
                ));
            }
        }
    }
    Ok(source)
}

/// Counts one delivery outcome for the metrics and keeps it as the
/// source's last delivery (best effort: the answer stands either way).
async fn count(kv: &Kv, source: &str, outcome: &str) {
    let _ =
        spindle_engine::metrics::record_webhook(kv, source, outcome, spindle_spin::now_ms()).await;
}

fn rejection_kind(r: &Rejection) -> ProblemKind {
    match r {
        Rejection::MissingSignature => ProblemKind::MissingSignature,
        Rejection::BadSignature => ProblemKind::BadSignature,
        Rejection::MissingTimestamp => ProblemKind::MissingTimestamp,
        Rejection::StaleTimestamp => ProblemKind::StaleTimestamp,
    }
}

async fn route(req: Request) -> Result<Response, Problem> {
    let path = path_info(&req);
    let name = path.trim_matches('/').to_owned();
    if name.is_empty() || name.contains('/') {
        return Err(Problem::not_found(format!(
            "no webhook endpoint at /webhooks{path}; post to /webhooks/<source>"
        )));
    }
    if req.method() != Method::POST {
        return Err(Problem::method_not_allowed("POST"));
    }
    let kv = Kv::open("default").await.map_err(Problem::store)?;
    let settings = Settings::load().await?;
    let now = spindle_spin::now_ms();
    let source = if spindle_core::agent::check_name(&name).is_ok() {
        find_source(&kv, &name).await?
    } else {
        None
    };
    let Some(source) = source else {
        count(&kv, "unknown", "unknown-source").await;
        if let Some(limited) = spindle_spin::auth::charge_address(
            spindle_spin::auth::client_addr(&req).as_deref(),
            &kv,
            settings.failed_rate,
            "deliveries to unknown sources",
            now,
        )
        .await
        {
            return Err(limited);
        }
        return Err(Problem::of(
            ProblemKind::UnknownSource,
            format!(
                "no webhook source named {name:?}: register it under /api/sources, or set the github_webhook_secret or builder_webhook_secret variable"
            ),
        ));
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let header = |h: &str| -> Option<String> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(h))
            .map(|(_, v)| v.clone())
    };
    let addr = spindle_spin::auth::client_addr(&req);
    let max = source.max_body_bytes.unwrap_or(settings.max_body);
    let body = match read_body(req, usize::try_from(max).unwrap_or(usize::MAX)).await {
        Ok(b) => b,
        Err(p) => {
            count(&kv, &source.name, "too-large").await;
            return Err(p);
        }
    };
    let secrets: Vec<&[u8]> = source.secrets.iter().map(|s| s.as_bytes()).collect();
    match source.verification.verify(&header, &body, &secrets, now) {
        Ok(_signed) => {
            spindle_spin::context::set_actor(format!("webhook:{}", source.name));
        }
        Err(r) => {
            count(&kv, &source.name, r.reason()).await;
            spindle_spin::context::log(&format!(
                "webhook {}: refused: {}",
                source.name,
                r.reason()
            ));
            if let Some(limited) = spindle_spin::auth::charge_address(
                addr.as_deref(),
                &kv,
                settings.failed_rate,
                "unverified deliveries",
                now,
            )
            .await
            {
                return Err(limited);
            }
            return Err(Problem::of(rejection_kind(&r), r.to_string()));
        }
    }
    let rate_key = format!("source:{}", source.name);
    if let Some(decision) =
        spindle_auth::ratelimit::take(&kv, Class::Trigger, &rate_key, settings.source_rate, now)
            .await
            .map_err(Problem::store)?
    {
        spindle_spin::context::set_rate(decision);
        if !decision.allowed {
            count(&kv, &source.name, "rate-limited").await;
            return Err(Problem::of(
                ProblemKind::RateLimited,
                format!(
                    "source {} may send {} deliveries a minute; retry in {} s",
                    source.name,
                    decision.limit,
                    decision.retry_after_s()
                ),
            ));
        }
    }
    let payload = match parse(&header, &body) {
        Ok(p) => p,
        Err(p) => {
            count(&kv, &source.name, "malformed").await;
            return Err(p);
        }
    };
    let ev = match source.describe(&header, payload, &body) {
        Ok(ev) => ev,
        Err(m) => {
            count(&kv, &source.name, "malformed").await;
            return Err(Problem::at(
                ProblemKind::MalformedPayload,
                m.pointer,
                m.detail,
            ));
        }
    };
    if source.kind == spindle_core::source::SourceKind::Github && ev.event == "ping" {
        count(&kv, &source.name, "ping").await;
        return Ok(json(
            200,
            &serde_json::json!({
                "pong": true,
                "source": source.name,
                "hook_id": ev.payload.get("hook_id"),
                "zen": ev.payload.get("zen"),
            }),
        ));
    }
    // A redelivery carries the same body (a timestamped sender signs it
    // anew); the same delivery id with another body is a replay.
    let digest = spindle_core::sign::digest(&body);
    let engine = spindle_spin::engine::open_on(kv).await?;
    // A delivery's runs may be removed by retention no earlier than its
    // window ends: retention deletes their idempotency records, and a copy
    // inside the window must still find them.
    let dedupe_ms = settings.dedupe_ms.min(engine.config.retention_ms);
    let (record, duplicate) = match engine.ingest(ev, &digest, dedupe_ms).await? {
        Ingested::New(record) => (record, false),
        Ingested::Duplicate(record) => (record, true),
        Ingested::Replay { delivery } => {
            count(&engine.store, &source.name, "replay").await;
            return Err(Problem::of(
                ProblemKind::Replay,
                format!("delivery {delivery:?} was received before with another body"),
            ));
        }
    };
    // A redelivery that still starts nothing failed again; one that found
    // its runs is a duplicate.
    let outcome = match (duplicate, record.outcome()) {
        (_, "failed") => "failed",
        (true, _) => "duplicate",
        (false, outcome) => outcome,
    };
    count(&engine.store, &source.name, outcome).await;
    answer(&record, duplicate)
}

/// What the sender sees: the runs started (202 when this delivery started
/// them, 200 for a redelivery), or, when every matching subscription
/// refused the payload, the problem saying why.
fn answer(record: &DeliveryRecord, duplicate: bool) -> Result<Response, Problem> {
    if record.outcome() == "failed" {
        let mut errors = Vec::new();
        for s in &record.starts {
            for e in &s.errors {
                errors.push(spindle_core::FieldError::new(
                    e.pointer.clone(),
                    format!("subscription {}: {}", s.subscription, e.detail),
                ));
            }
        }
        // The payload did not fit: the sender's (or the subscription's)
        // doing, a 400 naming the fields.
        if !errors.is_empty() {
            return Err(Problem::validation(spindle_core::ValidationError {
                errors,
            }));
        }
        // The workflow (or an agent) is gone: the delivery is fine, the
        // app's state is not; once it is fixed, a redelivery starts the runs.
        let why: Vec<String> = record
            .starts
            .iter()
            .map(|s| {
                format!(
                    "subscription {}: {}",
                    s.subscription,
                    s.error.as_deref().unwrap_or("not started")
                )
            })
            .collect();
        return Err(Problem::of(
            ProblemKind::Conflict,
            format!(
                "no run could be started ({}); redeliver once that is fixed",
                why.join("; ")
            ),
        ));
    }
    let runs: Vec<_> = record
        .starts
        .iter()
        .filter_map(|s| {
            let id = s.run_id.as_ref()?;
            Some(serde_json::json!({
                "subscription": s.subscription,
                "workflow": s.workflow,
                "run_id": id,
                "url": format!("/api/runs/{id}"),
            }))
        })
        .collect();
    let failed: Vec<_> = record
        .starts
        .iter()
        .filter(|s| s.run_id.is_none())
        .collect();
    Ok(json(
        if duplicate { 200 } else { 202 },
        &serde_json::json!({
            "source": record.source,
            "delivery": record.delivery,
            "event": record.event,
            "action": record.action,
            "outcome": record.outcome(),
            "duplicate": duplicate,
            "runs": runs,
            "failed": failed,
        }),
    ))
}

/// The JSON body. GitHub can also send form-encoded bodies; Spindle asks for
/// JSON rather than guess.
fn parse(
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<serde_json::Value, Problem> {
    if let Some(ct) = header("content-type") {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/json" && !media.ends_with("+json") {
            return Err(Problem::of(
                ProblemKind::MediaType,
                format!("the body is {media}; set the webhook's content type to application/json"),
            ));
        }
    }
    let payload: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Problem::at(
            ProblemKind::MalformedPayload,
            "",
            format!("the body is not JSON: {e}"),
        )
    })?;
    if let Some(pointer) =
        spindle_core::template::too_deep(&payload, spindle_core::template::MAX_VALUE_DEPTH)
    {
        return Err(Problem::at(
            ProblemKind::MalformedPayload,
            pointer,
            format!(
                "the body nests deeper than {} levels",
                spindle_core::template::MAX_VALUE_DEPTH
            ),
        ));
    }
    Ok(payload)
}
