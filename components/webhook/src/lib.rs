//! Endpoint family for signed webhooks from GitHub and Builder.io.
//!
//! Not built yet: the workflow engine issue adds its behaviour. Until then the
//! route answers every request with a 501 problem document, so clients get a
//! clear, machine-readable answer rather than a 404 or a hang.

use spin_sdk::http::Request;
use spin_sdk::http_service;
use spindle_spin::http::{Problem, Response};

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve(req, |req| async move {
        Err(Problem::not_implemented(
            &req,
            "signed webhooks from GitHub and Builder.io",
        ))
    })
    .await
}
