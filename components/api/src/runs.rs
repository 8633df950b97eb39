//! `/api/runs`: list (filtered, paginated, newest first), read one with every
//! step's attempts, input and output, download one step's output, and
//! cancel.

use serde_json::{Value, json as j};
use spin_sdk::http::Request;
use spindle_core::keys;
use spindle_core::problem::ProblemKind;
use spindle_core::run::{MAX_GATHERED_BYTES, Run, RunStatus, StepStatus};
use spindle_engine::RunFilter;
use spindle_spin::http::{
    Problem, Response, bad_query, json, page_cursor, page_limit, read_body, require_json,
};
use spindle_spin::store::{Store, StoreExt};

/// Default and largest page size.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

fn parse_filter(query: &str) -> Result<RunFilter, Problem> {
    let mut f = RunFilter {
        limit: DEFAULT_LIMIT,
        ..RunFilter::default()
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
            "limit" => f.limit = page_limit(v, MAX_LIMIT)?,
            "cursor" => f.cursor = Some(page_cursor(v)?),
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
        "rerun_of": run.rerun_of,
        "trigger_kind": run.trigger.kind,
        "actor": run.trigger.actor,
    })
}

pub async fn list(query: &str) -> Result<Response, Problem> {
    let f = parse_filter(query)?;
    let engine = spindle_spin::engine::open().await?;
    let page = engine.list_runs(&f).await?;
    Ok(json(
        200,
        &j!({
            "runs": page.runs.iter().map(summary).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor,
        }),
    ))
}

/// The version of the run view: the run's revision (inputs and outputs are
/// immutable documents named by the jobs the run holds, so the revision
/// decides the whole view), and the view's own format.
fn view_etag(run: &Run) -> String {
    format!("\"{}-v1\"", run.revision)
}

/// `GET /api/runs/{id}`. A client polling a run sends the entity tag it
/// holds in `If-None-Match` and gets `304` for the price of one read while
/// the run has not moved, instead of every step's input and output.
pub async fn get(id: &str, req: &Request) -> Result<Response, Problem> {
    let engine = spindle_spin::engine::open().await?;
    let run = engine.run(id).await?;
    let etag = view_etag(&run);
    if spindle_spin::http::not_modified(req, &etag) {
        let mut resp = spindle_spin::http::no_content();
        *resp.status_mut() = http::StatusCode::NOT_MODIFIED;
        resp.headers_mut().insert(
            "etag",
            http::HeaderValue::from_str(&etag).map_err(|e| Problem::internal(e.to_string()))?,
        );
        return Ok(resp);
    }
    let mut steps = Vec::with_capacity(run.steps.len());
    for (state, plan) in run.steps.iter().zip(&run.plan) {
        let job = state.current().map(|a| a.job_id.clone());
        let input: Option<Value> = match &job {
            Some(job) => engine
                .store
                .get(&keys::input(job))
                .await
                .map_err(Problem::store)?,
            None => None,
        };
        let mut output: Option<Value> = match state.output_job() {
            Some(job) => engine
                .store
                .get(&keys::output(job))
                .await
                .map_err(Problem::store)?,
            None => None,
        };
        let mut output_note = None;
        if plan.for_each.is_some() && state.status == StepStatus::Succeeded {
            // A fan-out step's output is its items', gathered in order, as
            // its dependants read it; shown here while it stays small.
            let bytes: usize = state.items.iter().filter_map(|i| i.output_bytes).sum();
            if bytes <= MAX_GATHERED_SHOWN {
                let mut items = Vec::with_capacity(state.items.len());
                for i in &state.items {
                    items.push(match i.output_job() {
                        Some(job) => engine
                            .store
                            .get(&keys::output(job))
                            .await
                            .map_err(Problem::store)?
                            .unwrap_or(Value::Null),
                        None => Value::Null,
                    });
                }
                output = Some(Value::Array(items));
            } else {
                output_note = Some(format!(
                    "{bytes} bytes of item outputs: more than is shown here ({MAX_GATHERED_SHOWN})"
                ));
            }
        }
        // The agent it runs now: its own, or the fallback it moved to.
        let (agent, retry, timeout) = run
            .agent_for(&state.id)
            .map_or((&plan.agent, plan.retry, plan.timeout_secs), |a| a);
        let mut step = j!({
            "id": state.id,
            "agent": agent.name,
            "agent_version": agent.version,
            "needs": plan.needs,
            "status": state.status,
            "attempts": state.attempts,
            "max_attempts": retry.max_attempts,
            "timeout_secs": timeout,
            "lease_expires_at_ms": state.lease_expires_at_ms,
            "retry_at_ms": state.retry_at_ms,
            "input": input,
            "output": output,
            "output_bytes": state.output_bytes,
            "error": state.error,
        });
        let extra = [
            ("role", (!plan.role.is_normal()).then(|| j!(plan.role))),
            ("when", plan.when.as_ref().map(|w| j!(w))),
            ("compensate", plan.compensate.as_ref().map(|c| j!(c))),
            ("skip_reason", state.skip_reason.as_ref().map(|r| j!(r))),
            ("output_note", output_note.map(|n| j!(n))),
            ("done_at_ms", state.done_at_ms.map(|d| j!(d))),
            ("reused_from", state.reused_from.as_ref().map(|r| j!(r))),
            (
                "fallback",
                (!plan.fallbacks.is_empty()).then(|| {
                    j!(plan
                        .fallbacks
                        .iter()
                        .map(|f| f.agent.name.to_string())
                        .collect::<Vec<_>>())
                }),
            ),
            (
                "fallback_index",
                (state.fallback > 0).then(|| j!(state.fallback)),
            ),
            ("for_each", plan.for_each.as_ref().map(|f| j!(f))),
            (
                "items",
                plan.for_each.as_ref().map(|_| {
                    j!(state
                        .items
                        .iter()
                        .map(|i| j!({
                            "id": i.id,
                            "status": i.status,
                            "attempts": i.attempts,
                            "output_bytes": i.output_bytes,
                            "error": i.error,
                            "skip_reason": i.skip_reason,
                        }))
                        .collect::<Vec<_>>())
                }),
            ),
        ];
        for (k, v) in extra {
            if let Some(v) = v {
                step[k] = v;
            }
        }
        steps.push(step);
    }
    let mut doc = summary(&run);
    doc["trigger"] = serde_json::to_value(&run.trigger).unwrap_or(Value::Null);
    doc["deadline_at_ms"] = j!(run.deadline_at_ms);
    doc["steps"] = Value::Array(steps);
    doc["events"] = serde_json::to_value(&run.events).unwrap_or(Value::Null);
    doc["revision"] = j!(run.revision);
    if let Some(f) = &run.failure {
        doc["failure"] = j!(f);
    }
    let mut resp = json(200, &doc);
    if let Ok(v) = http::HeaderValue::from_str(&etag) {
        resp.headers_mut().insert("etag", v);
    }
    Ok(resp)
}

/// Most bytes of fan-out item outputs `GET /api/runs/{id}` gathers into a
/// step's `output`.
const MAX_GATHERED_SHOWN: usize = 1 << 20;

/// `GET /api/runs/{id}/steps/{step}/output`: the step's output as stored,
/// as a JSON file to save. A fan-out step's is its items' outputs gathered
/// in order (`null` for an item without one), as its dependants read it and
/// within the same bound ([`MAX_GATHERED_BYTES`]): the list is built in
/// memory.
pub async fn output(id: &str, step: &str) -> Result<Response, Problem> {
    let engine = spindle_spin::engine::open().await?;
    let run = engine.run(id).await?;
    let Some((state, plan)) = run.steps.iter().zip(&run.plan).find(|(s, _)| s.id == step) else {
        return Err(Problem::not_found(format!("run {id} has no step {step:?}")));
    };
    let none_yet = || {
        let status = j!(state.status);
        let status = status.as_str().unwrap_or("unknown");
        let why = match state.status {
            StepStatus::Succeeded => "its output is missing from the store".to_owned(),
            s if s.is_terminal() => format!("it ended {status}"),
            _ => format!("it is {status} and has not succeeded yet"),
        };
        Problem::not_found(format!("step {step:?} of run {id} has no output: {why}"))
    };
    let read = |job: String| {
        let store = &engine.store;
        async move {
            store
                .get_raw(&keys::output(&job))
                .await
                .map_err(Problem::store)
        }
    };
    let body = if plan.for_each.is_some() && state.status == StepStatus::Succeeded {
        // As `get` gathers it (an empty list's is `[]`).
        let bytes: usize = state.items.iter().filter_map(|i| i.output_bytes).sum();
        if bytes > MAX_GATHERED_BYTES {
            return Err(Problem::of(
                ProblemKind::Conflict,
                format!(
                    "step {step:?} gathers {bytes} bytes of item outputs, more than the {MAX_GATHERED_BYTES} a download holds"
                ),
            ));
        }
        let mut list = Vec::with_capacity(bytes + 2 * state.items.len() + 2);
        list.push(b'[');
        for (k, item) in state.items.iter().enumerate() {
            if k > 0 {
                list.push(b',');
            }
            let stored = match item.output_job() {
                Some(job) => read(job.to_owned()).await?,
                None => None,
            };
            list.extend_from_slice(stored.as_deref().unwrap_or(b"null"));
        }
        list.push(b']');
        list
    } else if let Some(job) = state.output_job() {
        read(job.to_owned()).await?.ok_or_else(none_yet)?
    } else {
        return Err(none_yet());
    };
    ::http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header(
            "content-disposition",
            format!("attachment; filename=\"{id}-{step}-output.json\""),
        )
        .body(spin_sdk::http::FullBody::new(bytes::Bytes::from(body)))
        .map_err(|e| Problem::internal(format!("building the answer: {e}")))
}

/// `POST /api/runs/{id}/rerun`: an optional body `{"from": "<step>"}`.
pub async fn rerun(id: &str, req: Request) -> Result<Response, Problem> {
    let body = optional_object(req, "{\"from\": \"verify\"}").await?;
    let from = match body.as_ref() {
        None => None,
        Some(v) => {
            if let Some(k) = v.keys().find(|k| k.as_str() != "from") {
                return Err(Problem::invalid(
                    "Invalid request body",
                    format!("/{k}"),
                    "unknown field; the body takes only \"from\"",
                ));
            }
            match v.get("from") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Err(Problem::invalid(
                        "Invalid request body",
                        "/from",
                        "must be the id of a step of the run",
                    ));
                }
            }
        }
    };
    let engine = spindle_spin::engine::open().await?;
    let actor = spindle_spin::context::actor();
    let run = engine.rerun(id, from.as_deref(), actor).await?;
    let mut doc = summary(&run);
    doc["rerun_of"] = j!(run.rerun_of);
    Ok(json(201, &doc))
}

/// An optional JSON object body (small: these bodies hold a word or two):
/// `None` when there is none.
async fn optional_object(
    req: Request,
    example: &str,
) -> Result<Option<serde_json::Map<String, Value>>, Problem> {
    if req.headers().contains_key("content-type") {
        require_json(&req)?;
    }
    let body = read_body(req, 4 << 10).await?;
    if body.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| Problem::not_json(&e))?;
    match v {
        Value::Object(v) => Ok(Some(v)),
        _ => Err(Problem::invalid(
            "Invalid request body",
            "",
            format!("must be a JSON object, such as {example}"),
        )),
    }
}

pub async fn cancel(id: &str, req: Request) -> Result<Response, Problem> {
    // The body is optional; when there is one, it is a JSON object.
    let body = optional_object(req, "{\"reason\": \"...\"}").await?;
    let reason = match body.as_ref().and_then(|v| v.get("reason")) {
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
    };
    let engine = spindle_spin::engine::open().await?;
    let actor = spindle_spin::context::actor();
    let run = engine.cancel(id, &reason, actor.as_deref()).await?;
    Ok(json(200, &summary(&run)))
}
