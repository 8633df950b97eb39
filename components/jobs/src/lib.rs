//! Worker callbacks: `POST /jobs/{job_id}/heartbeat` renews a job's lease,
//! `POST /jobs/{job_id}/result` delivers its result. Both are signed with
//! HMAC-SHA256 under the job's token; the signature is checked, in constant
//! time, before the body is parsed.

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_core::job::SIGNATURE_HEADER;
use spindle_spin::http::{Problem, Response, json, path_info, read_body, require_json};

/// Room for the result envelope (logs tail, timings) around the output.
const ENVELOPE_BYTES: usize = 64 << 10;

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("jobs", req, route).await
}

async fn route(req: Request) -> Result<Response, Problem> {
    let path = path_info(&req);
    let (job_id, action) = match spindle_spin::http::segments(&path).as_slice() {
        [job_id, action @ ("result" | "heartbeat")] => (job_id.to_string(), *action),
        _ => {
            return Err(Problem::not_found(format!(
                "no job endpoint at /jobs{path}"
            )));
        }
    };
    if req.method() != Method::POST {
        return Err(Problem::method_not_allowed("POST"));
    }
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    require_json(&req)?;
    let engine = spindle_spin::engine::open().await?;
    let max = engine
        .config
        .settings
        .max_output_bytes
        .saturating_add(ENVELOPE_BYTES);
    let body = read_body(req, max).await?;
    if action == "result" {
        let outcome = engine
            .job_result(&job_id, &body, signature.as_deref())
            .await?;
        Ok(json(200, &outcome))
    } else {
        let reply = engine
            .heartbeat(&job_id, &body, signature.as_deref())
            .await?;
        Ok(json(200, &reply))
    }
}
