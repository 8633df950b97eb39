//! `POST /trigger/{workflow}`: starts a run by hand. The JSON body becomes the
//! trigger payload (`{{ trigger.payload... }}` in step inputs). Answers
//! `202 Accepted` with the run id and URL at once; an `Idempotency-Key`
//! header makes a repeated request return the same run.

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_auth::{Class, Role};
use spindle_core::problem::ProblemKind;
use spindle_core::run::{Trigger, TriggerKind};
use spindle_core::template;
use spindle_spin::http::{
    DEFAULT_MAX_BODY, Problem, Response, json, path_info, read_body, require_json,
};

/// Longest accepted Idempotency-Key.
const MAX_IDEMPOTENCY_KEY: usize = 255;

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("trigger", req, route).await
}

async fn route(req: Request) -> Result<Response, Problem> {
    // Authenticate before anything else: an unauthenticated caller learns
    // nothing about which workflows exist.
    let kv = spindle_spin::store::Kv::open("default")
        .await
        .map_err(Problem::store)?;
    let caller = spindle_spin::auth::authorize(&req, &kv, Role::Operator, Class::Trigger).await?;
    let path = path_info(&req);
    let workflow = path.trim_matches('/').to_owned();
    if workflow.is_empty() || workflow.contains('/') {
        return Err(Problem::not_found(format!(
            "no trigger at /trigger{path}; use /trigger/<workflow>"
        )));
    }
    if req.method() != Method::POST {
        return Err(Problem::method_not_allowed("POST"));
    }
    if spindle_core::agent::check_name(&workflow).is_err() {
        return Err(Problem::not_found(format!(
            "no workflow named {workflow:?}"
        )));
    }
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().map(str::trim).unwrap_or("");
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
                return Err(Problem::invalid(
                    "Invalid Idempotency-Key",
                    "/headers/idempotency-key",
                    format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                ));
            }
            Some(k.to_owned())
        }
    };
    let payload = payload(req).await?;
    let engine = spindle_spin::engine::open_on(kv).await?;
    let trigger = Trigger {
        kind: TriggerKind::Manual,
        payload,
        actor: Some(caller.actor()),
    };
    let (run, created) = engine
        .create_run(
            &workflow,
            trigger,
            key.map(|k| format!("manual:{k}")).as_deref(),
        )
        .await?;
    let url = format!("/api/runs/{}", run.id);
    let mut resp = json(
        202,
        &serde_json::json!({
            "run_id": run.id,
            "url": url,
            "status": run.status,
            "created": created,
        }),
    );
    if let Ok(loc) = url.parse() {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

/// The trigger payload: the JSON body, or `{}` when there is none.
///
/// A body must be declared JSON. A request that declares a body by its
/// `Content-Length` is checked before anything is read; a chunked body
/// carries no header the component can see (the host strips
/// `Transfer-Encoding`), so the body is read (bounded) and, when it turns
/// out not to be empty, must have come with `Content-Type:
/// application/json`. A body is never silently dropped.
async fn payload(req: Request) -> Result<serde_json::Value, Problem> {
    let declared_json = req.headers().contains_key("content-type");
    if declared_json {
        require_json(&req)?;
    }
    let announced = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    if announced && !declared_json {
        return Err(undeclared_body());
    }
    let body = read_body(req, DEFAULT_MAX_BODY).await?;
    if body.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    if !declared_json {
        return Err(undeclared_body());
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| Problem::not_json(&e))?;
    if let Some(pointer) = template::too_deep(&payload, template::MAX_VALUE_DEPTH) {
        return Err(Problem::invalid(
            "Invalid request body",
            pointer,
            format!(
                "the payload nests deeper than {} levels",
                template::MAX_VALUE_DEPTH
            ),
        ));
    }
    Ok(payload)
}

fn undeclared_body() -> Problem {
    Problem::of(
        ProblemKind::MediaType,
        "a request body must be sent as application/json (or send no body)",
    )
}
