//! `/api/agents`: create, read, list, update (versioned), delete (refused
//! while a workflow uses it). Creates and updates must also pass the
//! execution policy (`spindle_core::exec_policy`): the registries and
//! programs the operator allows.

use spin_sdk::http::Request;
use spindle_core::agent::{Agent, AgentName, AgentSpec};
use spindle_core::exec_policy::{self, ExecPolicy};
use spindle_core::keys;
use spindle_core::problem::ProblemKind;
use spindle_spin::http::{
    DEFAULT_MAX_BODY, Problem, Response, json, no_content, read_body, require_json,
};
use spindle_spin::store::{StoreExt, UpdateError};

use crate::{load_indexed, registry, registry_problem, store};

fn parse_name(name: &str) -> Result<AgentName, Problem> {
    AgentName::parse(name).map_err(|e| Problem::invalid("Invalid agent name", "/path/name", e))
}

fn update_problem(e: UpdateError<Problem>) -> Problem {
    match e {
        UpdateError::Store(e) => Problem::store(e),
        UpdateError::Rejected(p) => p,
    }
}

/// The execution policy from the component's variables; a missing or
/// malformed one is the operator's fault, a 500 naming it.
async fn policy() -> Result<ExecPolicy, Problem> {
    // Each name written out: a test holds spin.toml's grants to the
    // variables this crate reads, which it finds by their literal names.
    let values = [
        (
            exec_policy::ALLOWED_IMAGES,
            spin_sdk::variables::get("allowed_images").await.ok(),
        ),
        (
            exec_policy::REQUIRE_IMAGE_DIGEST,
            spin_sdk::variables::get("require_image_digest").await.ok(),
        ),
        (
            exec_policy::ALLOWED_COMMANDS,
            spin_sdk::variables::get("allowed_commands").await.ok(),
        ),
    ];
    ExecPolicy::from_vars(|name| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    })
    .map_err(|e| {
        // The caller may hear which setting is wrong: it is authenticated
        // by now, and the lists are no secret.
        spindle_spin::context::log(&format!("configuration: {e}"));
        Problem::of(ProblemKind::Configuration, e.to_string())
    })
}

/// The request's agent, valid and allowed by the policy. Nothing is
/// written before this passes, so a refused agent changes nothing.
async fn spec(req: Request) -> Result<AgentSpec, Problem> {
    // The policy first: a misconfigured app refuses every registration the
    // same way, whatever the body.
    let policy = policy().await?;
    require_json(&req)?;
    let body = read_body(req, DEFAULT_MAX_BODY).await?;
    let spec = AgentSpec::parse(&body).map_err(Problem::validation)?;
    policy.check(&spec).map_err(Problem::validation)?;
    Ok(spec)
}

pub async fn create(req: Request) -> Result<Response, Problem> {
    let agent = spec(req)
        .await?
        .into_agent(spindle_spin::now_ms())
        .map_err(Problem::validation)?;
    let kv = store().await?;
    // Create-if-absent by compare-and-swap: two racing creates of one name
    // cannot both succeed.
    kv.update::<Agent, Problem>(&keys::agent(&agent.name), |current| match current {
        Some(existing) => Err(Problem::of(
            ProblemKind::Exists,
            format!(
                "agent {:?} exists at version {}; update it with PUT",
                existing.name.as_str(),
                existing.version
            ),
        )),
        None => Ok(Some(agent.clone())),
    })
    .await
    .map_err(update_problem)?;
    registry(&kv)
        .agent_created(&agent.name)
        .await
        .map_err(registry_problem)?;
    // The index follows the document: a crash in between leaves a readable
    // agent missing from the list, never a listed agent that does not exist.
    kv.edit_index(keys::AGENT_INDEX, agent.name.as_str(), true)
        .await
        .map_err(Problem::store)?;
    let mut resp = json(201, &agent);
    if let Ok(loc) = format!("/api/agents/{}", agent.name).parse() {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

pub async fn get(name: &str) -> Result<Response, Problem> {
    let name = parse_name(name)?;
    let kv = store().await?;
    match kv
        .get::<Agent>(&keys::agent(&name))
        .await
        .map_err(Problem::store)?
    {
        Some(agent) => Ok(json(200, &agent)),
        None => Err(not_found(&name)),
    }
}

fn not_found(name: &AgentName) -> Problem {
    Problem::not_found(format!("no agent named {:?}", name.as_str()))
}

pub async fn update(name: &str, req: Request) -> Result<Response, Problem> {
    let name = parse_name(name)?;
    let spec = spec(req).await?;
    let now = spindle_spin::now_ms();
    let kv = store().await?;
    let updated = kv
        .update::<Agent, Problem>(&keys::agent(&name), |current| {
            let current = current.ok_or_else(|| not_found(&name))?;
            current
                .updated(spec.clone(), now)
                .map(Some)
                .map_err(Problem::validation)
        })
        .await
        .map_err(update_problem)?
        .ok_or_else(|| not_found(&name))?;
    Ok(json(200, &updated))
}

pub async fn delete(name: &str) -> Result<Response, Problem> {
    let name = parse_name(name)?;
    let kv = store().await?;
    registry(&kv)
        .delete_agent(&name)
        .await
        .map_err(registry_problem)?;
    Ok(no_content())
}

pub async fn list() -> Result<Response, Problem> {
    let kv = store().await?;
    let agents: Vec<Agent> = load_indexed(&kv, keys::AGENT_INDEX, |n| {
        AgentName::parse(n).ok().map(|n| keys::agent(&n))
    })
    .await?;
    Ok(json(200, &serde_json::json!({ "agents": agents })))
}
