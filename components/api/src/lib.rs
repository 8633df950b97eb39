//! The registry API: agents, workflows and runs.
//!
//! Thin by design: parse, call the core, store, answer. Validation and the
//! shape of every document live in `spindle-core`; run changes go through
//! `spindle-engine`.

mod agents;
mod runs;
mod workflows;

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_spin::http::{Problem, Response};

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::http::answer(route(req).await)
}

async fn route(req: Request) -> Result<Response, Problem> {
    let path = spindle_spin::http::path_info(&req);
    let segs = spindle_spin::http::segments(&path);
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::POST, ["agents"]) => agents::create(req).await,
        (Method::GET, ["agents"]) => agents::list().await,
        (_, ["agents"]) => Err(Problem::method_not_allowed("GET, POST")),
        (Method::GET, ["agents", name]) => agents::get(name).await,
        (Method::PUT, ["agents", name]) => agents::update(name, req).await,
        (Method::DELETE, ["agents", name]) => agents::delete(name).await,
        (_, ["agents", _]) => Err(Problem::method_not_allowed("GET, PUT, DELETE")),

        (Method::POST, ["workflows"]) => workflows::create(req).await,
        (Method::GET, ["workflows"]) => workflows::list().await,
        (_, ["workflows"]) => Err(Problem::method_not_allowed("GET, POST")),
        (Method::GET, ["workflows", name]) => workflows::get(name).await,
        (Method::PUT, ["workflows", name]) => workflows::update(name, req).await,
        (Method::DELETE, ["workflows", name]) => workflows::delete(name).await,
        (_, ["workflows", _]) => Err(Problem::method_not_allowed("GET, PUT, DELETE")),

        (Method::GET, ["runs"]) => runs::list(req.uri().query().unwrap_or("")).await,
        (_, ["runs"]) => Err(Problem::method_not_allowed("GET")),
        (Method::GET, ["runs", id]) => runs::get(id).await,
        (_, ["runs", _]) => Err(Problem::method_not_allowed("GET")),
        (Method::POST, ["runs", id, "cancel"]) => runs::cancel(id, req).await,
        (_, ["runs", _, "cancel"]) => Err(Problem::method_not_allowed("POST")),
        _ => Err(Problem::not_found(format!("no API resource at {path}"))),
    }
}

/// 503 for a store failure.
pub(crate) fn store_problem(e: impl std::fmt::Display) -> Problem {
    Problem::unavailable(format!("{e}"))
}

/// Reads every document an index lists, skipping names whose document is
/// gone (the index may briefly lag a delete).
pub(crate) async fn load_indexed<T: serde::de::DeserializeOwned>(
    kv: &spindle_spin::store::Kv,
    index: &str,
    key: impl Fn(&str) -> Option<String>,
) -> Result<Vec<T>, Problem> {
    let names: Vec<String> = kv
        .get(index)
        .await
        .map_err(store_problem)?
        .unwrap_or_default();
    let mut docs = Vec::with_capacity(names.len());
    for name in names {
        let Some(k) = key(&name) else { continue };
        if let Some(doc) = kv.get::<T>(&k).await.map_err(store_problem)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Maps an update's error to a problem.
pub(crate) fn update_problem(e: spindle_spin::store::UpdateError<Problem>) -> Problem {
    match e {
        spindle_spin::store::UpdateError::Store(e) => store_problem(e),
        spindle_spin::store::UpdateError::Rejected(p) => p,
    }
}

/// Adds or removes `item` in the sorted list under `key`.
pub(crate) fn index_edit(
    kv: &spindle_spin::store::Kv,
    key: &str,
    item: &str,
    present: bool,
) -> Result<(), Problem> {
    kv.edit_index(key, item, present).map_err(store_problem)
}

/// The users of an agent: the workflows that use it, and whether it is
/// being deleted. Both sides compare-and-swap this one document, so an agent
/// cannot be deleted while a workflow starts using it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct AgentUsers {
    pub workflows: Vec<String>,
    #[serde(default)]
    pub deleting: bool,
}
