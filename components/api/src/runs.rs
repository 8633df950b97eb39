//! `/api/runs`: list (filtered, paginated, newest first), read one with every
//! step's attempts, input and output, and cancel.

use serde_json::{Value, json as j};
use spin_sdk::http::Request;
use spindle_core::keys;
use spindle_core::run::{Run, RunStatus};
use spindle_engine::Engine;
use spindle_spin::http::{Problem, Response, json, read_body, require_json};

/// Default and largest page size.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

struct Filter {
    workflow: Option<String>,
    status: Option<RunStatus>,
    since: Option<u64>,
    until: Option<u64>,
    limit: usize,
    cursor: Option<String>,
}

fn bad_query(field: &str, detail: impl Into<String>) -> Problem {
    let detail = detail.into();
    let mut p = Problem::invalid("Invalid query", format!("/query/{field}"), detail.clone());
    p.detail = format!("{field}: {detail}");
    p
}

fn parse_filter(query: &str) -> Result<Filter, Problem> {
    let mut f = Filter {
        workflow: None,
        status: None,
        since: None,
        until: None,
        limit: DEFAULT_LIMIT,
        cursor: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "workflow" => {
                spindle_core::agent::check_name(v).map_err(|e| bad_query(k, e))?;
                f.workflow = Some(v.to_owned());
            }
            "status" => {
                f.status = Some(RunStatus::parse(v).ok_or_else(|| {
                    let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                    bad_query(k, format!("must be one of {}", names.join(", ")))
                })?);
            }
            "since" | "until" => {
                let ms: u64 = v
                    .parse()
                    .map_err(|_| bad_query(k, "must be milliseconds since the Unix epoch"))?;
                if k == "since" {
                    f.since = Some(ms);
                } else {
                    f.until = Some(ms);
                }
            }
            "limit" => {
                f.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad_query(k, format!("must be between 1 and {MAX_LIMIT}")))?;
            }
            "cursor" => {
                if !spindle_core::run::valid_run_id(v) {
                    return Err(bad_query(k, "must be a next_cursor from an earlier page"));
                }
                f.cursor = Some(v.to_owned());
            }
            other => {
                return Err(bad_query(
                    other,
                    "unknown parameter; use workflow, status, since, until, limit, cursor",
                ));
            }
        }
    }
    Ok(f)
}

fn summary(run: &Run) -> Value {
    j!({
        "id": run.id,
        "url": format!("/api/runs/{}", run.id),
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "status": run.status,
        "created_at_ms": run.created_at_ms,
        "started_at_ms": run.started_at_ms,
        "finished_at_ms": run.finished_at_ms,
        "error": run.error,
    })
}

pub async fn list(query: &str) -> Result<Response, Problem> {
    let f = parse_filter(query)?;
    let engine = Engine::open().await?;
    // The most selective index, newest first; the other filters re-check
    // each run (index documents may briefly lag the run documents).
    let sources: Vec<String> = if let Some(w) = &f.workflow {
        vec![keys::runs_by_workflow(w)]
    } else if let Some(s) = f.status {
        vec![keys::runs_by_status(s.as_str())]
    } else {
        let mut days = engine.index(keys::RUN_DAYS).await?;
        days.retain(|d| {
            f.since
                .is_none_or(|s| d.as_str() >= keys::utc_day(s).as_str())
                && f.until
                    .is_none_or(|u| d.as_str() <= keys::utc_day(u).as_str())
        });
        days.iter().rev().map(|d| keys::runs_by_day(d)).collect()
    };
    let mut runs = Vec::new();
    let mut more = false;
    'outer: for source in sources {
        let ids = engine.index(&source).await?;
        for id in ids.iter().rev() {
            if f.cursor.as_ref().is_some_and(|c| id >= c) {
                continue;
            }
            let created = keys::run_created_ms(id).unwrap_or(0);
            if f.since.is_some_and(|s| created < s) || f.until.is_some_and(|u| created > u) {
                continue;
            }
            let Ok(run) = engine.run(id).await else {
                continue;
            };
            if f.status.is_some_and(|s| run.status != s)
                || f.workflow.as_ref().is_some_and(|w| &run.workflow != w)
            {
                continue;
            }
            if runs.len() == f.limit {
                more = true;
                break 'outer;
            }
            runs.push(run);
        }
    }
    let next_cursor = more.then(|| runs.last().map(|r| r.id.clone())).flatten();
    Ok(json(
        200,
        &j!({
            "runs": runs.iter().map(summary).collect::<Vec<_>>(),
            "next_cursor": next_cursor,
        }),
    ))
}

pub async fn get(id: &str) -> Result<Response, Problem> {
    let engine = Engine::open().await?;
    let run = engine.run(id).await?;
    let mut steps = Vec::with_capacity(run.steps.len());
    for (state, plan) in run.steps.iter().zip(&run.plan) {
        let job = state.current().map(|a| a.job_id.clone());
        let input: Option<Value> = match &job {
            Some(job) => engine
                .kv
                .get(&keys::input(job))
                .await
                .map_err(crate::store_problem)?,
            None => None,
        };
        let output: Option<Value> = match state.output_job() {
            Some(job) => engine
                .kv
                .get(&keys::output(job))
                .await
                .map_err(crate::store_problem)?,
            None => None,
        };
        steps.push(j!({
            "id": state.id,
            "agent": plan.agent.name,
            "agent_version": plan.agent.version,
            "needs": plan.needs,
            "status": state.status,
            "attempts": state.attempts,
            "max_attempts": plan.retry.max_attempts,
            "timeout_secs": plan.timeout_secs,
            "lease_expires_at_ms": state.lease_expires_at_ms,
            "retry_at_ms": state.retry_at_ms,
            "input": input,
            "output": output,
            "output_bytes": state.output_bytes,
            "error": state.error,
        }));
    }
    let mut doc = summary(&run);
    doc["trigger"] = serde_json::to_value(&run.trigger).unwrap_or(Value::Null);
    doc["deadline_at_ms"] = j!(run.deadline_at_ms);
    doc["steps"] = Value::Array(steps);
    doc["events"] = serde_json::to_value(&run.events).unwrap_or(Value::Null);
    doc["revision"] = j!(run.revision);
    Ok(json(200, &doc))
}

pub async fn cancel(id: &str, req: Request) -> Result<Response, Problem> {
    // The body is optional; when there is one, it is JSON.
    if req.headers().contains_key("content-type") {
        require_json(&req)?;
    }
    let body = read_body(req, 4 << 10).await?;
    let reason = if body.is_empty() {
        "cancelled through the API".to_owned()
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| Problem::not_json(&e))?;
        match v.get("reason") {
            None => "cancelled through the API".to_owned(),
            Some(Value::String(s)) if s.len() <= 500 => s.clone(),
            Some(_) => {
                let mut p = Problem::invalid(
                    "Invalid request body",
                    "/reason",
                    "must be a string of at most 500 characters",
                );
                p.detail = "reason must be a string of at most 500 characters".into();
                return Err(p);
            }
        }
    };
    let engine = Engine::open().await?;
    let run = engine.cancel(id, &reason, spindle_spin::now_ms()).await?;
    Ok(json(200, &summary(&run)))
}
