//! The registry API: agents (and, in later work, workflows and runs).
//!
//! Thin by design: parse, call the core, store, answer. Validation and the
//! shape of every document live in `spindle-core`.

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_core::agent::{Agent, AgentName, AgentSpec};
use spindle_core::keys;
use spindle_spin::http::{
    DEFAULT_MAX_BODY, Problem, Response, json, path_info, read_body, require_json,
};
use spindle_spin::store::{Kv, UpdateError};

#[http_service]
async fn handle(req: Request) -> Response {
    match route(req).await {
        Ok(resp) => resp,
        Err(problem) => problem.response(),
    }
}

async fn route(req: Request) -> Result<Response, Problem> {
    let path = path_info(&req);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["agents"]) => create_agent(req).await,
        (Method::GET, ["agents"]) => list_agents().await,
        (_, ["agents"]) => Err(Problem::method_not_allowed("GET, POST")),
        (Method::GET, ["agents", name]) => get_agent(name).await,
        (_, ["agents", _]) => Err(Problem::method_not_allowed("GET")),
        _ => Err(Problem::not_found(format!("no API resource at {path}"))),
    }
}

fn store_problem(e: impl std::fmt::Display) -> Problem {
    Problem::unavailable(format!("{e}"))
}

async fn create_agent(req: Request) -> Result<Response, Problem> {
    require_json(&req)?;
    let body = read_body(req, DEFAULT_MAX_BODY).await?;
    let spec = AgentSpec::parse(&body).map_err(Problem::validation)?;
    let agent = spec
        .into_agent(spindle_spin::now_ms())
        .map_err(Problem::validation)?;
    let kv = Kv::open("default").await.map_err(store_problem)?;
    let key = keys::agent(&agent.name);
    // Create-if-absent by compare-and-swap: two racing creates of one name
    // cannot both succeed.
    let created = kv.update::<Agent, Problem>(&key, |current| match current {
        Some(existing) => Err(Problem::new(
            409,
            "conflict",
            "Agent exists",
            format!(
                "agent {:?} exists at version {}; update it with PUT",
                existing.name.as_str(),
                existing.version
            ),
        )),
        None => Ok(Some(agent.clone())),
    });
    match created {
        Ok(_) => {}
        Err(UpdateError::Rejected(p)) => return Err(p),
        Err(UpdateError::Store(e)) => return Err(store_problem(e)),
    }
    // The index is written after the document: a crash in between leaves a
    // readable agent missing from the list, never a listed agent that does
    // not exist. Re-creating repairs the index.
    let name = agent.name.as_str().to_owned();
    kv.update::<Vec<String>, std::convert::Infallible>(keys::AGENT_INDEX, |current| {
        let mut names = current.unwrap_or_default();
        match names.binary_search(&name) {
            Ok(_) => Ok(None),
            Err(pos) => {
                names.insert(pos, name.clone());
                Ok(Some(names))
            }
        }
    })
    .map_err(|e| match e {
        UpdateError::Store(e) => store_problem(e),
        UpdateError::Rejected(never) => match never {},
    })?;
    let mut resp = json(201, &agent);
    if let Ok(loc) = format!("/api/agents/{}", agent.name).parse() {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

async fn get_agent(name: &str) -> Result<Response, Problem> {
    let name = AgentName::parse(name)
        .map_err(|e| Problem::new(400, "validation", "Invalid agent name", e))?;
    let kv = Kv::open("default").await.map_err(store_problem)?;
    match kv
        .get::<Agent>(&keys::agent(&name))
        .await
        .map_err(store_problem)?
    {
        Some(agent) => Ok(json(200, &agent)),
        None => Err(Problem::not_found(format!(
            "no agent named {:?}",
            name.as_str()
        ))),
    }
}

async fn list_agents() -> Result<Response, Problem> {
    let kv = Kv::open("default").await.map_err(store_problem)?;
    let names: Vec<String> = kv
        .get(keys::AGENT_INDEX)
        .await
        .map_err(store_problem)?
        .unwrap_or_default();
    let mut agents = Vec::with_capacity(names.len());
    for name in names {
        let Ok(name) = AgentName::parse(&name) else {
            continue;
        };
        if let Some(agent) = kv
            .get::<Agent>(&keys::agent(&name))
            .await
            .map_err(store_problem)?
        {
            agents.push(agent);
        }
    }
    Ok(json(200, &serde_json::json!({ "agents": agents })))
}
