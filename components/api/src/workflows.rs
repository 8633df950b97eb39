//! `/api/workflows`: create, read, list, update (versioned), delete.

use std::collections::BTreeSet;

use spin_sdk::http::Request;
use spindle_core::keys;
use spindle_core::workflow::{Workflow, WorkflowSpec};
use spindle_spin::http::{
    DEFAULT_MAX_BODY, Problem, Response, json, no_content, read_body, require_json,
};
use spindle_spin::store::{Kv, set_member};

use crate::{AgentUsers, index_edit, load_indexed, store_problem, update_problem};

fn not_found(name: &str) -> Problem {
    Problem::not_found(format!("no workflow named {name:?}"))
}

fn check_path_name(name: &str) -> Result<(), Problem> {
    spindle_core::agent::check_name(name)
        .map_err(|e| Problem::new(400, "validation", "Invalid workflow name", e))
}

/// Parses and validates a body against the registered agents.
async fn spec(kv: &Kv, req: Request) -> Result<WorkflowSpec, Problem> {
    require_json(&req)?;
    let body = read_body(req, DEFAULT_MAX_BODY).await?;
    let spec = WorkflowSpec::parse(&body).map_err(Problem::validation)?;
    let agents: BTreeSet<String> = kv
        .get::<Vec<String>>(keys::AGENT_INDEX)
        .await
        .map_err(store_problem)?
        .unwrap_or_default()
        .into_iter()
        .collect();
    spec.validate(|a| agents.contains(a))
        .map_err(Problem::validation)?;
    Ok(spec)
}

/// Records `workflow` as a user of each agent; refuses an agent that is
/// being deleted. On error, undoes what it added.
fn claim_agents(kv: &Kv, workflow: &str, agents: &BTreeSet<&str>) -> Result<(), Problem> {
    let mut claimed = Vec::new();
    for agent in agents {
        let r = kv.update::<AgentUsers, Problem>(&keys::agent_users(agent), |current| {
            let mut users = current.unwrap_or_default();
            if users.deleting {
                return Err(Problem::new(
                    409,
                    "agent-deleted",
                    "Agent is being deleted",
                    format!("agent {agent:?} is being deleted"),
                ));
            }
            Ok(set_member(&mut users.workflows, workflow, true).then_some(users))
        });
        if let Err(e) = r {
            release_agents(kv, workflow, claimed.iter().copied());
            return Err(update_problem(e));
        }
        claimed.push(*agent);
    }
    Ok(())
}

/// Removes `workflow` from each agent's users. Best effort: a leftover entry
/// only blocks deleting that agent, and rewriting the workflow repairs it.
fn release_agents<'a>(kv: &Kv, workflow: &str, agents: impl IntoIterator<Item = &'a str>) {
    for agent in agents {
        let _ = kv.update::<AgentUsers, Problem>(&keys::agent_users(agent), |current| {
            let Some(mut users) = current else {
                return Ok(None);
            };
            Ok(set_member(&mut users.workflows, workflow, false).then_some(users))
        });
    }
}

pub async fn create(req: Request) -> Result<Response, Problem> {
    let kv = Kv::open("default").await.map_err(store_problem)?;
    let spec = spec(&kv, req).await?;
    let wf = spec.into_workflow(spindle_spin::now_ms());
    let key = keys::workflow(&wf.name);
    if kv
        .get::<Workflow>(&key)
        .await
        .map_err(store_problem)?
        .is_some()
    {
        return Err(exists(&wf.name));
    }
    let agents = wf.agents();
    claim_agents(&kv, &wf.name, &agents)?;
    let created = kv.update::<Workflow, Problem>(&key, |current| match current {
        Some(_) => Err(exists(&wf.name)),
        None => Ok(Some(wf.clone())),
    });
    if let Err(e) = created {
        // Lost a race with another create of the same name: keep the claims
        // the winner needs, drop ours.
        let winner = kv.get::<Workflow>(&key).await.ok().flatten();
        let keep: BTreeSet<&str> = winner.as_ref().map(|w| w.agents()).unwrap_or_default();
        release_agents(
            &kv,
            &wf.name,
            agents.iter().copied().filter(|a| !keep.contains(a)),
        );
        return Err(update_problem(e));
    }
    index_edit(&kv, keys::WORKFLOW_INDEX, &wf.name, true)?;
    let mut resp = json(201, &wf);
    if let Ok(loc) = format!("/api/workflows/{}", wf.name).parse() {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

fn exists(name: &str) -> Problem {
    Problem::new(
        409,
        "conflict",
        "Workflow exists",
        format!("workflow {name:?} exists; update it with PUT"),
    )
}

pub async fn get(name: &str) -> Result<Response, Problem> {
    check_path_name(name)?;
    let kv = Kv::open("default").await.map_err(store_problem)?;
    match kv
        .get::<Workflow>(&keys::workflow(name))
        .await
        .map_err(store_problem)?
    {
        Some(wf) => Ok(json(200, &wf)),
        None => Err(not_found(name)),
    }
}

pub async fn update(name: &str, req: Request) -> Result<Response, Problem> {
    check_path_name(name)?;
    let kv = Kv::open("default").await.map_err(store_problem)?;
    let spec = spec(&kv, req).await?;
    let now = spindle_spin::now_ms();
    let key = keys::workflow(name);
    let Some(current) = kv.get::<Workflow>(&key).await.map_err(store_problem)? else {
        return Err(not_found(name));
    };
    let next = current
        .updated(spec.clone(), now)
        .map_err(Problem::validation)?;
    let new_agents = next.agents();
    claim_agents(&kv, name, &new_agents)?;
    let written = kv
        .update::<Workflow, Problem>(&key, |current| {
            let current = current.ok_or_else(|| not_found(name))?;
            current
                .updated(spec.clone(), now)
                .map(Some)
                .map_err(Problem::validation)
        })
        .map_err(update_problem)?
        .ok_or_else(|| not_found(name))?;
    let dropped: Vec<&str> = current
        .agents()
        .into_iter()
        .filter(|a| !new_agents.contains(a))
        .collect();
    release_agents(&kv, name, dropped);
    Ok(json(200, &written))
}

pub async fn delete(name: &str) -> Result<Response, Problem> {
    check_path_name(name)?;
    let kv = Kv::open("default").await.map_err(store_problem)?;
    let key = keys::workflow(name);
    let Some(wf) = kv.get::<Workflow>(&key).await.map_err(store_problem)? else {
        return Err(not_found(name));
    };
    kv.delete(&key).await.map_err(store_problem)?;
    index_edit(&kv, keys::WORKFLOW_INDEX, name, false)?;
    release_agents(&kv, name, wf.agents());
    Ok(no_content())
}

pub async fn list() -> Result<Response, Problem> {
    let kv = Kv::open("default").await.map_err(store_problem)?;
    let workflows: Vec<Workflow> =
        load_indexed(&kv, keys::WORKFLOW_INDEX, |n| Some(keys::workflow(n))).await?;
    Ok(json(200, &serde_json::json!({ "workflows": workflows })))
}
