//! Documentation pages, all public (they hold no secret, and a client
//! needs them before it has a credential):
//!
//! - `GET /docs/problems`: the problem catalogue (`docs/problems.md`), the
//!   page every problem document's `type` URI (`/docs/problems#<slug>`)
//!   points at, so that URI resolves on every Spindle deployment;
//! - `GET /api/openapi.json`: the API's contract, `docs/openapi.json` byte
//!   for byte;
//! - `GET /api/docs`: that contract as a browsable HTML page, rendered at
//!   compile time by `build.rs`: no script, no outside fonts or styles, a
//!   Content-Security-Policy that lets nothing else load.
//!
//! Every page is built into the component, which opens no store, reads no
//! variable and makes no outbound request. Each answer carries an entity
//! tag, so a client revalidates with `If-None-Match` and gets `304`.

use spin_sdk::http::Request;
use spin_sdk::http_service;
use spindle_spin::http::{Builtin, INERT_CSP, Problem, Response, builtin};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

/// The problem catalogue, one section per kind of `spindle_core::problem::ProblemKind`.
const PROBLEMS: &str = include_str!("../../../docs/problems.md");

/// The OpenAPI document, served as it is in the repository.
const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// The OpenAPI document rendered as HTML by `build.rs`.
const API_DOCS: &str = include_str!(concat!(env!("OUT_DIR"), "/api-docs.html"));

/// One page and how it is answered.
struct Page {
    body: &'static str,
    content_type: &'static str,
    etag: &'static str,
    csp: &'static str,
}

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("docs", req, |req| async move { page(&req) }).await
}

fn lookup(path: &str) -> Option<Page> {
    Some(match path {
        "/docs/problems" => Page {
            body: PROBLEMS,
            content_type: "text/markdown; charset=utf-8",
            etag: generated::PROBLEMS_ETAG,
            csp: INERT_CSP,
        },
        "/api/openapi.json" => Page {
            body: OPENAPI,
            content_type: "application/json",
            etag: generated::OPENAPI_ETAG,
            csp: INERT_CSP,
        },
        "/api/docs" => Page {
            body: API_DOCS,
            content_type: "text/html; charset=utf-8",
            etag: generated::PAGE_ETAG,
            csp: generated::PAGE_CSP,
        },
        _ => return None,
    })
}

fn page(req: &Request) -> Result<Response, Problem> {
    let path = req.uri().path();
    let Some(page) = lookup(path) else {
        return Err(Problem::not_found(format!(
            "no documentation page at {path}"
        )));
    };
    Ok(builtin(
        req,
        &Builtin {
            body: page.body,
            content_type: page.content_type,
            etag: page.etag,
            // Public and the same for every caller until the app is
            // upgraded; the entity tag makes revalidation after that cheap.
            cache: "public, max-age=300",
            csp: page.csp,
        },
    ))
}
