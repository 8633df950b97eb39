//! Documentation pages: `GET /docs/problems` serves the problem catalogue
//! (`docs/problems.md`), the page every problem document's `type` URI
//! (`/docs/problems#<slug>`) points at, so that URI resolves on every
//! Spindle deployment.
//!
//! Least privilege: the page is built into the component, which opens no
//! store, reads no variable and makes no outbound request.

use spin_sdk::http::{FullBody, Method, Request};
use spin_sdk::http_service;
use spindle_spin::http::{Problem, Response};

/// The problem catalogue, one section per kind of `spindle_core::problem::ProblemKind`.
const PROBLEMS: &str = include_str!("../../../docs/problems.md");

/// The methods every page accepts.
const ALLOWED: &str = "GET, HEAD";

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("docs", req, |req| async move { page(&req) }).await
}

fn page(req: &Request) -> Result<Response, Problem> {
    let path = req.uri().path();
    let page = match path {
        "/docs/problems" => PROBLEMS,
        other => {
            return Err(Problem::not_found(format!(
                "no documentation page at {other}"
            )));
        }
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut problem = Problem::method_not_allowed(ALLOWED);
        problem.request_id = Some(spindle_spin::context::request_id());
        let mut resp = problem.response();
        resp.headers_mut()
            .insert("allow", http::HeaderValue::from_static(ALLOWED));
        return Ok(resp);
    }
    // The full page for HEAD too: the host sends only its headers.
    Ok(http::Response::builder()
        .status(200)
        .header("content-type", "text/markdown; charset=utf-8")
        // Public and the same for every caller until the app is upgraded.
        .header("cache-control", "public, max-age=300")
        .body(FullBody::new(bytes::Bytes::from_static(page.as_bytes())))
        .expect("valid response"))
}
