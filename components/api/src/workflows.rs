//! `/api/workflows`: create, read, list, update (versioned), delete.

use spin_sdk::http::Request;
use spindle_core::keys;
use spindle_core::workflow::{Workflow, WorkflowSpec};
use spindle_spin::http::{
    DEFAULT_MAX_BODY, Problem, Response, json, no_content, read_body, require_json,
};
use spindle_spin::store::StoreExt;

use crate::{check_path_name, load_indexed, registry, registry_problem, store};

async fn spec(req: Request) -> Result<WorkflowSpec, Problem> {
    require_json(&req)?;
    let body = read_body(req, DEFAULT_MAX_BODY).await?;
    WorkflowSpec::parse(&body).map_err(Problem::validation)
}

pub async fn create(req: Request) -> Result<Response, Problem> {
    let spec = spec(req).await?;
    let kv = store().await?;
    let wf = registry(&kv)
        .create_workflow(spec)
        .await
        .map_err(registry_problem)?;
    let mut resp = json(201, &wf);
    if let Ok(loc) = format!("/api/workflows/{}", wf.name).parse() {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

pub async fn get(name: &str) -> Result<Response, Problem> {
    check_path_name(name, "workflow")?;
    let kv = store().await?;
    match kv
        .get::<Workflow>(&keys::workflow(name))
        .await
        .map_err(Problem::store)?
    {
        Some(wf) => Ok(json(200, &wf)),
        None => Err(Problem::not_found(format!("no workflow named {name:?}"))),
    }
}

pub async fn update(name: &str, req: Request) -> Result<Response, Problem> {
    check_path_name(name, "workflow")?;
    let spec = spec(req).await?;
    let kv = store().await?;
    let wf = registry(&kv)
        .update_workflow(name, spec)
        .await
        .map_err(registry_problem)?;
    Ok(json(200, &wf))
}

pub async fn delete(name: &str) -> Result<Response, Problem> {
    check_path_name(name, "workflow")?;
    let kv = store().await?;
    registry(&kv)
        .delete_workflow(name)
        .await
        .map_err(registry_problem)?;
    Ok(no_content())
}

pub async fn list() -> Result<Response, Problem> {
    let kv = store().await?;
    let workflows: Vec<Workflow> =
        load_indexed(&kv, keys::WORKFLOW_INDEX, |n| Some(keys::workflow(n))).await?;
    Ok(json(200, &serde_json::json!({ "workflows": workflows })))
}
