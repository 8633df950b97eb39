//! The registry API: agents, workflows, runs and API keys.
//!
//! Thin by design: authenticate, parse, call the core or the engine, answer.
//! Validation and the shape of every document live in `spindle-core`; the
//! rules that span documents (who uses an agent) and every run change live
//! in `spindle-engine`; who may do what in `spindle-auth`.

mod agents;
mod audit;
mod hooks;
mod keys;
mod policy;
mod runs;
mod schedules;
mod workflows;

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_auth::{Class, Role};
use spindle_core::problem::ProblemKind;
use spindle_engine::registry::{Registry, RegistryError};
use spindle_spin::http::{Problem, Response};
use spindle_spin::store::{Kv, StoreExt};

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("api", req, route).await
}

/// The role and rate-limit class an operation needs. One table, so the
/// rule for a route cannot drift from its handler; `docs/openapi.json`
/// states the same per operation and a test walks every one.
fn required(method: &Method, segs: &[&str]) -> (Role, Class) {
    match (method, segs) {
        (&Method::GET, ["keys", ..]) => (Role::Admin, Class::Read),
        (&Method::GET, _) => (Role::Viewer, Class::Read),
        (_, ["runs", _, "cancel"]) => (Role::Operator, Class::Write),
        (_, ["runs", _, "rerun"]) => (Role::Operator, Class::Write),
        _ => (Role::Admin, Class::Write),
    }
}

async fn route(req: Request) -> Result<Response, Problem> {
    let path = spindle_spin::http::path_info(&req);
    let segs = spindle_spin::http::segments(&path);
    let method = req.method().clone();
    // Authenticate before anything else, even a 404: an unauthenticated
    // caller learns nothing about what exists.
    let (need, class) = required(&method, &segs);
    let kv = store().await?;
    let caller = spindle_spin::auth::authorize(&req, &kv, need, class).await?;
    let writes = method != Method::GET;
    let result = dispatch(req, kv, method.clone(), &segs, &path, &caller).await;
    if writes {
        audit_change(&method, &path, &result).await;
    }
    result
}

async fn dispatch(
    req: Request,
    kv: Kv,
    method: Method,
    segs: &[&str],
    path: &str,
    caller: &spindle_auth::Caller,
) -> Result<Response, Problem> {
    match (method, segs) {
        (Method::GET, ["whoami"]) => Ok(spindle_spin::http::json(
            200,
            &serde_json::json!({
                "actor": caller.actor(),
                "name": caller.name,
                "role": caller.role,
            }),
        )),
        (_, ["whoami"]) => Err(Problem::method_not_allowed("GET")),

        (Method::POST, ["keys"]) => keys::create(req).await,
        (Method::GET, ["keys"]) => keys::list().await,
        (_, ["keys"]) => Err(Problem::method_not_allowed("GET, POST")),
        (Method::GET, ["keys", id]) => keys::get(id).await,
        (Method::DELETE, ["keys", id]) => keys::revoke(id).await,
        (_, ["keys", _]) => Err(Problem::method_not_allowed("GET, DELETE")),

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

        (Method::POST, ["sources"]) => hooks::create_source(&kv, req).await,
        (Method::GET, ["sources"]) => hooks::list_sources(&kv).await,
        (_, ["sources"]) => Err(Problem::method_not_allowed("GET, POST")),
        (Method::GET, ["sources", name]) => hooks::get_source(&kv, name).await,
        (Method::PUT, ["sources", name]) => hooks::update_source(&kv, name, req).await,
        (Method::DELETE, ["sources", name]) => hooks::delete_source(&kv, name).await,
        (_, ["sources", _]) => Err(Problem::method_not_allowed("GET, PUT, DELETE")),

        (Method::POST, ["subscriptions"]) => hooks::create_subscription(&kv, req).await,
        (Method::GET, ["subscriptions"]) => hooks::list_subscriptions(&kv).await,
        (_, ["subscriptions"]) => Err(Problem::method_not_allowed("GET, POST")),
        (Method::GET, ["subscriptions", name]) => hooks::get_subscription(&kv, name).await,
        (Method::PUT, ["subscriptions", name]) => hooks::update_subscription(&kv, name, req).await,
        (Method::DELETE, ["subscriptions", name]) => hooks::delete_subscription(&kv, name).await,
        (_, ["subscriptions", _]) => Err(Problem::method_not_allowed("GET, PUT, DELETE")),

        (Method::POST, ["schedules"]) => schedules::create(kv, req).await,
        (Method::GET, ["schedules"]) => schedules::list(&kv).await,
        (_, ["schedules"]) => Err(Problem::method_not_allowed("GET, POST")),
        (Method::GET, ["schedules", name]) => schedules::get(&kv, name).await,
        (Method::PUT, ["schedules", name]) => schedules::update(kv, name, req).await,
        (Method::DELETE, ["schedules", name]) => schedules::delete(kv, name).await,
        (_, ["schedules", _]) => Err(Problem::method_not_allowed("GET, PUT, DELETE")),
        (Method::POST, ["schedules", name, "pause"]) => schedules::pause(kv, name, true).await,
        (Method::POST, ["schedules", name, "resume"]) => schedules::pause(kv, name, false).await,
        (_, ["schedules", _, "pause" | "resume"]) => Err(Problem::method_not_allowed("POST")),

        (Method::GET, ["policies", "approvals"]) => policy::get(&kv).await,
        (Method::PUT, ["policies", "approvals"]) => policy::put(&kv, req).await,
        (Method::DELETE, ["policies", "approvals"]) => policy::reset(&kv).await,
        (_, ["policies", "approvals"]) => Err(Problem::method_not_allowed("GET, PUT, DELETE")),

        (Method::GET, ["audit"]) => audit::list(&kv, req.uri().query().unwrap_or("")).await,
        (_, ["audit"]) => Err(Problem::method_not_allowed("GET")),
        (Method::GET, ["runs"]) => runs::list(req.uri().query().unwrap_or("")).await,
        (_, ["runs"]) => Err(Problem::method_not_allowed("GET")),
        (Method::GET, ["runs", id]) => runs::get(id, &req).await,
        (_, ["runs", _]) => Err(Problem::method_not_allowed("GET")),
        (Method::POST, ["runs", id, "cancel"]) => runs::cancel(id, req).await,
        (_, ["runs", _, "cancel"]) => Err(Problem::method_not_allowed("POST")),
        (Method::POST, ["runs", id, "rerun"]) => runs::rerun(id, req).await,
        (_, ["runs", _, "rerun"]) => Err(Problem::method_not_allowed("POST")),
        (Method::GET, ["runs", id, "steps", step, "output"]) => runs::output(id, step).await,
        (_, ["runs", _, "steps", _, "output"]) => Err(Problem::method_not_allowed("GET")),
        _ => Err(Problem::not_found(format!("no API resource at {path}"))),
    }
}

/// One audit entry (in the store's audit trail, and a line on stdout, the
/// component's audit log) per change made through the API: who, what,
/// when, and how it ended. Run changes also land in the run's own trail.
async fn audit_change(method: &Method, path: &str, result: &Result<Response, Problem>) {
    let (status, location) = match result {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        Err(p) => (p.status, None),
    };
    if !(200..300).contains(&status) {
        return;
    }
    println!(
        "{}",
        serde_json::json!({
            "audit": {
                "kind": "api_change",
                "at_ms": spindle_spin::now_ms(),
                "method": method.as_str(),
                "path": format!("/api{path}"),
                "status": status,
                "created": location,
                "actor": spindle_spin::context::actor(),
            },
            "request_id": spindle_spin::context::request_id(),
        })
    );
    audit::record(method, path, status, location).await;
}

/// The `default` store.
pub(crate) async fn store() -> Result<Kv, Problem> {
    Kv::open("default").await.map_err(Problem::store)
}

/// The registry on `kv`, dated now.
pub(crate) fn registry(kv: &Kv) -> Registry<'_, Kv> {
    Registry {
        store: kv,
        now_ms: spindle_spin::now_ms(),
    }
}

/// The problem for a refused registry change.
pub(crate) fn registry_problem(e: RegistryError) -> Problem {
    match e {
        RegistryError::Invalid(v) => Problem::validation(v),
        RegistryError::NotFound(m) => Problem::not_found(m),
        e @ RegistryError::Exists(_) => Problem::of(ProblemKind::Exists, e.to_string()),
        e @ RegistryError::AgentDeleted(_) => Problem::of(ProblemKind::AgentDeleted, e.to_string()),
        RegistryError::AgentInUse(m) => Problem::of(ProblemKind::AgentInUse, m),
        RegistryError::Store(e) => Problem::store(e),
    }
}

/// Reads every document an index lists, skipping names whose document is
/// gone (the index may briefly lag a delete).
pub(crate) async fn load_indexed<T: serde::de::DeserializeOwned>(
    kv: &Kv,
    index: &str,
    key: impl Fn(&str) -> Option<String>,
) -> Result<Vec<T>, Problem> {
    let names: Vec<String> = kv
        .get(index)
        .await
        .map_err(Problem::store)?
        .unwrap_or_default();
    let mut docs = Vec::with_capacity(names.len());
    for name in names {
        let Some(k) = key(&name) else { continue };
        if let Some(doc) = kv.get::<T>(&k).await.map_err(Problem::store)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// A `PUT` body's name must be the path's (or absent: the path names it).
pub(crate) fn name_from_path(
    mut doc: serde_json::Value,
    name: &str,
) -> Result<serde_json::Value, Problem> {
    match doc.get("name") {
        None => {
            if let Some(obj) = doc.as_object_mut() {
                obj.insert("name".into(), name.into());
            }
        }
        Some(n) if n == name => {}
        Some(_) => {
            return Err(Problem::invalid(
                "Invalid request body",
                "/name",
                format!("must be {name:?}, the name in the path (names cannot change)"),
            ));
        }
    }
    Ok(doc)
}

/// A name in the path (`/api/<what>s/{name}`), by the naming rule of agents.
pub(crate) fn check_path_name(name: &str, what: &str) -> Result<(), Problem> {
    spindle_core::agent::check_name(name)
        .map_err(|e| Problem::invalid(&format!("Invalid {what} name"), "/path/name", e))
}

/// A JSON request body as a spec document. With `path_name` (a `PUT`), the
/// body's `name` may be left out and must otherwise be the path's.
pub(crate) async fn read_spec<T: serde::de::DeserializeOwned>(
    req: Request,
    path_name: Option<&str>,
) -> Result<T, Problem> {
    spindle_spin::http::require_json(&req)?;
    let body = spindle_spin::http::read_body(req, spindle_spin::http::DEFAULT_MAX_BODY).await?;
    let invalid =
        |e: serde_json::Error| Problem::validation(spindle_core::error::from_json_error(&e));
    match path_name {
        None => serde_json::from_slice(&body).map_err(invalid),
        Some(name) => {
            let doc = serde_json::from_slice(&body).map_err(|e| Problem::not_json(&e))?;
            serde_json::from_value(name_from_path(doc, name)?).map_err(invalid)
        }
    }
}
