//! Health endpoints (and, in later work, metrics).
//!
//! `/health/live` answers while the component can run at all; `/health/ready`
//! also proves the key-value store answers, so a load balancer stops sending
//! traffic when the store is gone.

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_spin::http::{Problem, Response, json};
use spindle_spin::store::{Kv, Store};

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve(req, health).await
}

async fn health(req: Request) -> Result<Response, Problem> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(Problem::method_not_allowed("GET, HEAD"));
    }
    match req.uri().path() {
        "/health/live" => Ok(json(200, &serde_json::json!({"status": "ok"}))),
        "/health/ready" => match ready().await {
            Ok(()) => Ok(json(
                200,
                &serde_json::json!({"status": "ok", "checks": {"store": "ok"}}),
            )),
            Err(e) => Err(Problem::store(e)),
        },
        other => Err(Problem::not_found(format!("no health endpoint at {other}"))),
    }
}

async fn ready() -> Result<(), spindle_spin::store::StoreError> {
    let kv = Kv::open("default").await?;
    kv.get_raw("health:probe").await?;
    Ok(())
}
