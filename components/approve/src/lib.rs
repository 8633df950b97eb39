//! Endpoint family for human approval decisions for gated steps.
//!
//! Not built yet: the approvals issue adds its behaviour. Until then every
//! request from an approver is answered with a 501 problem document, so
//! clients get a clear, machine-readable answer rather than a 404 or a hang;
//! anyone else gets the 401 or 403 the finished routes will give.

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_auth::{Class, Role};
use spindle_spin::http::{Problem, Response};

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve(req, route).await
}

async fn route(req: Request) -> Result<Response, Problem> {
    let kv = spindle_spin::store::Kv::open("default")
        .await
        .map_err(Problem::store)?;
    let class = if req.method() == Method::GET {
        Class::Read
    } else {
        Class::Write
    };
    spindle_spin::auth::authorize(&req, &kv, Role::Approver, class).await?;
    Err(Problem::not_implemented(
        &req,
        "human approval decisions for gated steps",
    ))
}
