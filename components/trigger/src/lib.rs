//! `POST /trigger/{workflow}`: starts a run by hand. The JSON body becomes the
//! trigger payload (`{{ trigger.payload... }}` in step inputs). Answers
//! `202 Accepted` with the run id and URL at once; an `Idempotency-Key`
//! header makes a repeated request return the same run.

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_core::run::{Trigger, TriggerKind};
use spindle_spin::http::{
    DEFAULT_MAX_BODY, Problem, Response, json, path_info, read_body, require_json,
};

/// Longest accepted Idempotency-Key.
const MAX_IDEMPOTENCY_KEY: usize = 255;

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::http::answer(route(req).await)
}

async fn route(req: Request) -> Result<Response, Problem> {
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
    let has_body = req
        .headers()
        .get("content-length")
        .is_some_and(|v| v.to_str().ok() != Some("0"))
        || req.headers().contains_key("content-type");
    let payload = if has_body {
        require_json(&req)?;
        let body = read_body(req, DEFAULT_MAX_BODY).await?;
        if body.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(&body).map_err(|e| Problem::not_json(&e))?
        }
    } else {
        serde_json::Value::Object(Default::default())
    };
    let engine = spindle_spin::engine::open().await?;
    let trigger = Trigger {
        kind: TriggerKind::Manual,
        payload,
    };
    let (run, created) = engine
        .create_run(&workflow, trigger, key.as_deref())
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
